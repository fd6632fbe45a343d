// One job on the page: its progress and previews from its server-sent events
// (`GET /v2/{endpoint}/events/{id}`), or, where the stream breaks, its state polled from
// `GET /v2/{endpoint}/status/{id}` until it ends; cancel, and its images once done.

import { Unauthorized } from "./api.js";
import { ImageView } from "./images.js";

const POLL_MS = 300;
const FINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]);
const LABELS = {
  IN_QUEUE: "queued",
  IN_PROGRESS: "running",
  COMPLETED: "done",
  FAILED: "failed",
  CANCELLED: "cancelled",
  TIMED_OUT: "timed out",
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class JobCard {
  /**
   * `job`: `{id, endpoint, submittedAt}`; `app`: what a card asks of the page: `api`, `key()`,
   * `unauthorized(message)`, `forget(id)`, `reuse(endpoint, input)`, `reuseSeed(seed)`,
   * `useAsInput(blob)`.
   */
  constructor(job, app) {
    this.job = job;
    this.app = app;
    this.status = null;
    this.input = null;
    this.stopped = false;
    this.element = document.getElementById("job-template").content.firstElementChild
      .cloneNode(true);
    this.element.dataset.jobId = job.id;
    this.part(".job-id").textContent = `${job.endpoint} · ${job.id}`;
    this.part(".job-time").textContent = new Date(job.submittedAt).toLocaleString();
    this.part(".cancel").addEventListener("click", () => this.cancel());
    this.part(".dismiss").addEventListener("click", () => this.dismiss());
    this.part(".reuse").addEventListener("click", () => {
      if (this.input) app.reuse(job.endpoint, this.input);
    });
    this.part(".reuse").hidden = true;
  }

  part(selector) {
    return this.element.querySelector(selector);
  }

  /** Follow the job until it ends (or the card is removed, or the key is refused): its
   * events while the stream lasts, then polls. */
  async watch() {
    try {
      for await (const { event, data } of this.app.api.events(this.job.endpoint, this.job.id)) {
        if (this.stopped) return;
        if (event === "progress") {
          this.setStatus(data.status);
          if (data.total) this.setProgress(data.step, data.total);
        } else if (event === "preview") {
          this.showPreview(`data:${data.media_type};base64,${data.image}`);
        } else if (event === "done") {
          this.update(data);
        }
      }
    } catch (error) {
      if (this.refused(error)) return;
    }
    while (!this.stopped && !FINAL.has(this.status)) {
      let wait = POLL_MS;
      try {
        this.update(await this.app.api.status(this.job.endpoint, this.job.id));
      } catch (error) {
        if (this.refused(error)) return;
        // A passing failure (the server restarting, a rate limit): say so, try again.
        this.part(".progress-text").textContent = `${error.message}; retrying`;
        wait = Math.max(1000, (error.retryAfter || 0) * 1000);
      }
      if (!FINAL.has(this.status)) await sleep(wait);
    }
  }

  /** Whether `error` ends this card's polling: the key was refused, or the job is gone. */
  refused(error) {
    if (error instanceof Unauthorized) {
      this.app.unauthorized(error.message);
      return true;
    }
    if (error.status === 404) {
      // Expired on the server (or never this key's): nothing left to show.
      this.dismiss();
      return true;
    }
    return false;
  }

  /** Show a status object of RunPod's shape. */
  update(state) {
    this.input = state.input || this.input;
    this.part(".reuse").hidden = !this.input;
    if (this.input) this.part(".job-prompt").textContent = this.input.prompt;
    this.setStatus(state.status);
    const output = state.output;
    if (state.status === "IN_PROGRESS" && output && output.progress) {
      const [step, total] = output.progress.split("/").map(Number);
      this.setProgress(step, total);
    }
    if (state.status === "COMPLETED" && Array.isArray(output)) this.showImages(output, state);
    if (state.error) {
      const error = this.part(".job-error");
      error.textContent = state.error;
      error.hidden = false;
    }
  }

  setStatus(status) {
    this.status = status;
    this.element.dataset.status = status;
    this.part(".status").textContent = LABELS[status] || status;
    const active = !FINAL.has(status);
    this.element.toggleAttribute("data-active", active);
    this.part(".cancel").hidden = !active;
    if (status === "IN_QUEUE") this.part(".progress-text").textContent = "waiting for a worker";
  }

  setProgress(step, total) {
    const bar = this.part("progress");
    bar.max = total;
    bar.value = step;
    this.part(".progress-text").textContent = `${step}/${total} steps`;
  }

  /** Show an image of the job while it forms (a data URI or URL); hidden once it is done. */
  showPreview(src) {
    if (FINAL.has(this.status)) return;
    const preview = this.part(".preview");
    preview.src = src;
    preview.hidden = false;
  }

  showImages(output, state) {
    const images = this.part(".images");
    if (images.childElementCount) return;
    this.part(".preview").hidden = true;
    const seconds = (state.executionTime / 1000).toFixed(1);
    this.part(".job-time").textContent += ` · ran ${seconds} s`;
    for (const { image, seed } of output) {
      const view = new ImageView(this, image, seed);
      images.append(view.element);
      view.load();
    }
  }

  async cancel() {
    this.part(".cancel").disabled = true;
    try {
      const answer = await this.app.api.cancel(this.job.endpoint, this.job.id);
      this.setStatus(answer.status);
    } catch (error) {
      if (!this.refused(error)) this.app.showError(error.message);
    } finally {
      this.part(".cancel").disabled = false;
    }
  }

  dismiss() {
    this.stopped = true;
    this.element.remove();
    this.app.forget(this.job.id);
  }
}
