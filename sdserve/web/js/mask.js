// The inpainting mask: a canvas laid over the input image, painted with the pointer. The canvas
// has the image's own pixel size; what is painted on it is the area to repaint.

const INK = "#ffffff"; // shown in difference blend (app.css): visible over any colour

export class MaskPainter {
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.mode = "paint";
    this.brush = 24; // in screen pixels: the same feel whatever the image's size
    this.last = null;
    canvas.addEventListener("pointerdown", (event) => this.down(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    canvas.addEventListener("pointerup", () => this.up());
    canvas.addEventListener("pointercancel", () => this.up());
  }

  /** A fresh, empty mask for an image of `width` x `height` pixels. */
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.clear();
  }

  clear() {
    this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  /** The pointer's position in the canvas' pixels, and how many of them a screen pixel is. */
  locate(event) {
    const box = this.canvas.getBoundingClientRect();
    const scale = this.canvas.width / box.width;
    return {
      x: (event.clientX - box.left) * scale,
      y: (event.clientY - box.top) * scale,
      scale,
    };
  }

  pen() {
    const context = this.context;
    context.globalCompositeOperation = this.mode === "erase" ? "destination-out" : "source-over";
    context.strokeStyle = INK;
    context.fillStyle = INK;
    context.lineCap = "round";
    context.lineJoin = "round";
    return context;
  }

  down(event) {
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    const point = this.locate(event);
    const context = this.pen();
    context.beginPath();
    context.arc(point.x, point.y, (this.brush * point.scale) / 2, 0, 2 * Math.PI);
    context.fill();
    this.last = point;
  }

  move(event) {
    if (!this.last) return;
    const point = this.locate(event);
    const context = this.pen();
    context.lineWidth = this.brush * point.scale;
    context.beginPath();
    context.moveTo(this.last.x, this.last.y);
    context.lineTo(point.x, point.y);
    context.stroke();
    this.last = point;
  }

  up() {
    this.last = null;
  }

  isEmpty() {
    const { width, height } = this.canvas;
    if (!width || !height) return true;
    const pixels = this.context.getImageData(0, 0, width, height).data;
    for (let i = 3; i < pixels.length; i += 4) {
      if (pixels[i] !== 0) return false;
    }
    return true;
  }

  /** The mask as a PNG data URI in RunPod's convention: black is repainted, white is kept. */
  toDataUrl() {
    const out = document.createElement("canvas");
    out.width = this.canvas.width;
    out.height = this.canvas.height;
    const context = out.getContext("2d");
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, out.width, out.height);
    context.globalCompositeOperation = "destination-out";
    context.drawImage(this.canvas, 0, 0); // the painted area becomes transparent...
    context.globalCompositeOperation = "destination-over";
    context.fillStyle = "#000000";
    context.fillRect(0, 0, out.width, out.height); // ...and then black
    return out.toDataURL("image/png");
  }
}
