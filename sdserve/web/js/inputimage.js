// The input image for image-to-image and inpainting: chosen, dropped, or taken from a result;
// sent as a data URI with the mask painted over it (if any).

import { MaskPainter } from "./mask.js";

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

export class InputImage {
  constructor(onError) {
    this.onError = onError;
    this.dataUrl = null;
    this.zone = document.getElementById("drop-zone");
    this.editor = document.getElementById("init-editor");
    this.preview = document.getElementById("init-preview");
    this.painter = new MaskPainter(document.getElementById("mask-canvas"));
    this.wireInputs();
    this.wireTools();
  }

  wireInputs() {
    const file = document.getElementById("init-file");
    file.addEventListener("change", () => {
      if (file.files.length) this.load(file.files[0]);
      file.value = "";
    });
    this.zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      this.zone.classList.add("dragging");
    });
    this.zone.addEventListener("dragleave", () => this.zone.classList.remove("dragging"));
    this.zone.addEventListener("drop", (event) => {
      event.preventDefault();
      this.zone.classList.remove("dragging");
      const dropped = event.dataTransfer.files[0];
      if (dropped) this.load(dropped);
    });
  }

  wireTools() {
    for (const radio of document.querySelectorAll('input[name="mask-mode"]')) {
      radio.addEventListener("change", () => { this.painter.mode = radio.value; });
    }
    const brush = document.getElementById("brush-size");
    brush.addEventListener("input", () => { this.painter.brush = Number(brush.value); });
    this.painter.brush = Number(brush.value);
    document.getElementById("clear-mask").addEventListener("click", () => this.painter.clear());
    document.getElementById("remove-init").addEventListener("click", () => this.remove());
    const strength = document.getElementById("prompt_strength");
    const shown = document.getElementById("strength-value");
    strength.addEventListener("input", () => { shown.textContent = strength.value; });
  }

  /** Use an image file or blob as the input; the mask starts empty. */
  async load(blob) {
    if (!blob.type.startsWith("image/")) {
      this.onError(`${blob.name || "that file"} is not an image`);
      return;
    }
    const dataUrl = await readAsDataUrl(blob);
    const image = new Image();
    image.src = dataUrl;
    try {
      await image.decode();
    } catch {
      this.onError("this browser cannot read that image");
      return;
    }
    this.dataUrl = dataUrl;
    this.preview.src = dataUrl;
    this.painter.reset(image.naturalWidth, image.naturalHeight);
    this.editor.hidden = false;
    this.zone.hidden = true;
  }

  remove() {
    this.dataUrl = null;
    this.preview.removeAttribute("src");
    this.painter.reset(0, 0);
    this.editor.hidden = true;
    this.zone.hidden = false;
  }

  /** `{initImage, mask}` for the request (mask null when nothing is painted), or null. */
  current() {
    if (!this.dataUrl) return null;
    return {
      initImage: this.dataUrl,
      mask: this.painter.isEmpty() ? null : this.painter.toDataUrl(),
    };
  }
}
