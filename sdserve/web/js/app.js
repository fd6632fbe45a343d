// The playground page: wires the form, the input image, the API key and the jobs together.

import { Api, Unauthorized } from "./api.js";
import { GenerationForm } from "./form.js";
import { InputImage } from "./inputimage.js";
import { JobCard } from "./jobs.js";
import * as storage from "./storage.js";

class Playground {
  constructor() {
    this.apiKey = storage.loadKey();
    this.api = new Api(() => this.apiKey);
    this.form = new GenerationForm(document.getElementById("generate-form"));
    this.image = new InputImage((message) => this.showError(message));
    this.cards = new Map();
    this.list = document.getElementById("jobs");
    this.keyForm = document.getElementById("key-form");
    this.keyInput = document.getElementById("api-key");
    this.keyInput.value = this.apiKey;
    this.wire();
  }

  wire() {
    this.keyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.useKey(this.keyInput.value.trim());
    });
    this.form.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.generate();
    });
    document.getElementById("random-seed").addEventListener("click", () => this.form.setSeed(""));
    this.form.field("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) this.generate();
    });
    // A file dropped beside the drop zone must not replace the page.
    for (const type of ["dragover", "drop"]) {
      window.addEventListener(type, (event) => event.preventDefault());
    }
  }

  key() {
    return this.apiKey;
  }

  /** Read the models and LoRAs, then show this key's recent jobs (again, after a new key). */
  async start() {
    for (const card of this.cards.values()) {
      card.stopped = true;
      card.element.remove();
    }
    this.cards.clear();
    try {
      const [models, loras] = await Promise.all([this.api.models(), this.api.loras()]);
      this.form.setModels(models);
      this.form.setLoras(loras);
    } catch (error) {
      if (error instanceof Unauthorized) this.unauthorized(error.message);
      else this.showError(`cannot read the server's models: ${error.message}`);
      return;
    }
    this.keyForm.hidden = !this.apiKey;
    document.getElementById("key-message").textContent = "";
    this.clearError();
    for (const job of storage.recentJobs(this.apiKey)) this.addCard(job, false).watch();
    this.updateEmpty();
  }

  useKey(key) {
    this.apiKey = key;
    storage.saveKey(key);
    this.start();
  }

  /** A call answered 401: ask for a key (or another one). */
  unauthorized(message) {
    this.keyForm.hidden = false;
    document.getElementById("key-message").textContent = this.apiKey
      ? `the server refused this key (${message})`
      : "this server needs an API key";
    this.keyInput.focus();
  }

  addCard(job, onTop) {
    const card = new JobCard(job, this);
    this.cards.set(job.id, card);
    if (onTop) this.list.prepend(card.element);
    else this.list.append(card.element);
    while (this.cards.size > storage.MAX_JOBS) {
      // The oldest is the one at the bottom; the browser keeps no more than that either.
      const oldest = this.cards.get(this.list.lastElementChild.dataset.jobId);
      oldest.stopped = true;
      oldest.element.remove();
      this.cards.delete(oldest.job.id);
    }
    this.updateEmpty();
    return card;
  }

  async generate() {
    this.clearError();
    this.form.showFieldErrors({});
    if (!this.form.field("prompt").value.trim()) {
      this.form.showFieldErrors({ prompt: "write what the image should show" });
      return;
    }
    const endpoint = this.form.endpoint;
    const input = this.form.input(this.image.current());
    const button = document.getElementById("generate");
    button.disabled = true;
    let answer;
    try {
      answer = await this.api.run(endpoint, input);
    } catch (error) {
      if (error instanceof Unauthorized) {
        this.unauthorized(error.message);
      } else {
        this.showError(error.message);
        this.form.showFieldErrors(error.fields || {});
      }
      return;
    } finally {
      button.disabled = false;
    }
    const job = { id: answer.id, endpoint, submittedAt: Date.now() };
    storage.rememberJob(this.apiKey, job);
    const card = this.addCard(job, true);
    card.update({ status: answer.status, input });
    card.watch();
  }

  forget(id) {
    storage.forgetJob(this.apiKey, id);
    this.cards.delete(id);
    this.updateEmpty();
  }

  reuse(endpoint, input) {
    this.form.reuse(endpoint, input);
    this.form.form.scrollIntoView({ behavior: "smooth" });
  }

  reuseSeed(seed) {
    this.form.setSeed(seed);
  }

  useAsInput(blob) {
    this.image.load(blob);
    document.getElementById("init-editor").scrollIntoView({ behavior: "smooth" });
  }

  updateEmpty() {
    document.getElementById("no-jobs").hidden = this.cards.size > 0;
  }

  showError(message) {
    const box = document.getElementById("form-error");
    box.textContent = message;
    box.hidden = false;
  }

  clearError() {
    document.getElementById("form-error").hidden = true;
  }
}

const playground = new Playground();
window.playground = playground; // for a console, or a script that feeds previews
playground.start();
