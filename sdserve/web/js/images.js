// One finished image: shown, with its seed and parameters read from the PNG itself, a download
// link, "reuse seed", "use as input", and the curl call that makes it again.

import { curlCommand, shortened, singleImageInput } from "./curl.js";
import { parseParameters, readPngText } from "./png.js";

/** An `output[].image`: a URL, or the PNG as bare base64 (`--output-format base64`). */
function imageUrl(image) {
  return /^(https?:|\/|data:)/.test(image) ? image : `data:image/png;base64,${image}`;
}

async function copyText(text, fallback) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (a page served over plain HTTP on another host): select it instead.
    fallback.open = true;
    window.getSelection().selectAllChildren(fallback.querySelector("pre"));
    return false;
  }
}

export class ImageView {
  constructor(card, image, seed) {
    this.card = card;
    this.url = imageUrl(image);
    this.seed = seed;
    this.blob = null;
    this.element = document.getElementById("image-template").content.firstElementChild
      .cloneNode(true);
    this.element.dataset.seed = seed;
    this.command = curlCommand(card.app.api, card.job.endpoint,
      singleImageInput(card.input || {}, seed), card.app.key());
    this.part(".curl-text").textContent = shortened(this.command);
    this.wireButtons();
  }

  part(selector) {
    return this.element.querySelector(selector);
  }

  wireButtons() {
    const app = this.card.app;
    this.part(".reuse-seed").addEventListener("click", () => app.reuseSeed(this.seed));
    this.part(".use-input").addEventListener("click", () => {
      if (this.blob) app.useAsInput(this.blob);
    });
    const copy = this.part(".copy-curl");
    copy.addEventListener("click", async () => {
      const copied = await copyText(this.command, this.part(".curl"));
      copy.textContent = copied ? "Copied" : "Selected: press Ctrl+C";
      setTimeout(() => { copy.textContent = "Copy curl"; }, 2000);
    });
  }

  /** Fetch the PNG once: shown and downloaded from memory, its text chunks read. */
  async load() {
    const picture = this.part(".picture");
    const download = this.part(".download");
    download.download = `sdserve-${this.card.job.id.slice(0, 8)}-${this.seed}.png`;
    try {
      const response = await fetch(this.url);
      if (!response.ok) throw new Error(`the image answered ${response.status}`);
      this.blob = await response.blob();
    } catch {
      // Another origin's storage that does not allow reading: show it, without its metadata.
      picture.src = download.href = this.url;
      this.part(".use-input").disabled = true;
      this.showParameters(null);
      return;
    }
    picture.src = download.href = URL.createObjectURL(this.blob);
    const texts = await readPngText(await this.blob.arrayBuffer());
    this.showParameters(texts.get("parameters") || null);
  }

  showParameters(text) {
    const rows = [];
    if (text === null) {
      rows.push(["Seed", String(this.seed)]);
    } else {
      const { prompt, negativePrompt, fields } = parseParameters(text);
      rows.push(["Prompt", prompt]);
      if (negativePrompt) rows.push(["Negative", negativePrompt]);
      rows.push(...Object.entries(fields));
    }
    this.part(".params").replaceChildren(...rows.flatMap(([name, value]) => {
      const term = document.createElement("dt");
      term.textContent = name;
      const detail = document.createElement("dd");
      detail.textContent = value;
      detail.dataset.param = name;
      return [term, detail];
    }));
  }
}
