// The generation form: the server's models with their defaults, and the RunPod `input` it makes.

const NUMBER_FIELDS = ["width", "height", "num_inference_steps", "guidance_scale", "num_outputs"];
/** Fields a job's settings can be copied back from into the form. */
const REUSED_FIELDS = ["prompt", "negative_prompt", "scheduler", "seed", "lora", "lora_scale",
  ...NUMBER_FIELDS];

export class GenerationForm {
  constructor(form) {
    this.form = form;
    this.models = new Map();
    form.elements.model.addEventListener("change", () => this.applyDefaults());
  }

  field(name) {
    return this.form.elements.namedItem(name);
  }

  get endpoint() {
    return this.field("model").value;
  }

  /** Fill the model list from `GET /v1/models`, keeping the choice made if it still exists. */
  setModels(models) {
    const select = this.field("model");
    const chosen = select.value;
    this.models = new Map(models.map((model) => [model.id, model]));
    select.replaceChildren(
      ...models.map((model) => {
        const label = model.id === model.root
          ? `${model.id} (${model.family_title})`
          : `${model.id} (alias of ${model.root})`;
        return new Option(label, model.id);
      }),
    );
    if (this.models.has(chosen)) select.value = chosen;
    this.applyDefaults();
  }

  setLoras(names) {
    const select = this.field("lora");
    const chosen = select.value;
    select.replaceChildren(new Option("none", ""), ...names.map((name) => new Option(name, name)));
    if (names.includes(chosen)) select.value = chosen;
  }

  /** The chosen model's defaults and rules: size, steps, guidance, its schedulers. */
  applyDefaults() {
    const model = this.models.get(this.endpoint);
    if (!model) return;
    for (const name of ["width", "height"]) {
      const input = this.field(name);
      input.value = model[name];
      input.step = model.size_step;
      input.max = model.max_size;
    }
    this.field("num_inference_steps").value = model.num_inference_steps;
    this.field("guidance_scale").value = model.guidance_scale;
    const scheduler = this.field("scheduler");
    scheduler.replaceChildren(...model.schedulers.map((name) => new Option(name, name)));
    scheduler.value = model.scheduler;
    document.getElementById("negative-field").hidden = !model.negative_prompt;
    document.getElementById("model-facts").textContent =
      `${model.family_title}: ${model.width}x${model.height}, ${model.num_inference_steps} steps,` +
      ` guidance ${model.guidance_scale}, ${model.scheduler} by default`;
  }

  /** The RunPod `input` the form describes; `image` is `{initImage, mask}` or null. */
  input(image) {
    const value = (name) => this.field(name).value.trim();
    const input = { prompt: this.field("prompt").value };
    const model = this.models.get(this.endpoint);
    if (value("negative_prompt") && (!model || model.negative_prompt)) {
      input.negative_prompt = this.field("negative_prompt").value;
    }
    for (const name of NUMBER_FIELDS) {
      if (value(name) !== "") input[name] = Number(value(name));
    }
    if (value("scheduler")) input.scheduler = value("scheduler");
    if (value("seed") !== "") input.seed = Number(value("seed"));
    if (value("lora")) {
      input.lora = value("lora");
      input.lora_scale = Number(value("lora_scale"));
    }
    if (image) {
      input.init_image = image.initImage;
      if (image.mask) input.mask = image.mask;
      input.prompt_strength = Number(value("prompt_strength"));
    }
    return input;
  }

  setSeed(seed) {
    this.field("seed").value = seed;
  }

  /** Copy a job's settings back (its endpoint and `input` as the server echoes it). */
  reuse(endpoint, input) {
    if (this.models.has(endpoint)) {
      this.field("model").value = endpoint;
      this.applyDefaults();
    }
    for (const name of REUSED_FIELDS) {
      const field = this.field(name);
      if (field && input[name] !== undefined && input[name] !== null) field.value = input[name];
    }
  }

  /** Mark the fields the server refused, each with its rule; `{}` clears the marks. */
  showFieldErrors(fields) {
    for (const old of this.form.querySelectorAll(".field .error")) old.remove();
    for (const marked of this.form.querySelectorAll("[aria-invalid]")) {
      marked.removeAttribute("aria-invalid");
    }
    for (const [name, message] of Object.entries(fields)) {
      const field = this.field(name);
      if (!(field instanceof HTMLElement)) continue;
      field.setAttribute("aria-invalid", "true");
      const note = document.createElement("small");
      note.className = "error";
      note.textContent = message;
      field.closest(".field")?.append(note);
    }
  }
}
