// The server's public API, called as any client calls it: RunPod's job calls under /v2 (and a
// job's server-sent events), OpenAI's GET /v1/models for the models and their defaults,
// GET /v1/loras.
// Paths are relative to the page, so the playground works behind a proxy's path prefix too.

/** The server wants a key (401): none was given, or it is not one of the server's. */
export class Unauthorized extends Error {}

/** Any other refused call: `fields` maps a request field (`width`) to its rule. */
export class ApiError extends Error {
  constructor(status, message, fields = {}) {
    super(message);
    this.status = status;
    this.fields = fields;
  }
}

/** The absolute URL of an API path, as a copied curl call needs it. */
export function absoluteUrl(path) {
  return new URL(path, document.baseURI).href;
}

/** An endpoint (model) name in a path: it may hold slashes, which stay as they are. */
function endpointPath(endpoint) {
  return endpoint.split("/").map(encodeURIComponent).join("/");
}

/** The message of an error body, in whichever dialect's shape it came. */
function errorOf(status, body) {
  if (body && typeof body.error === "string") {
    const fields = {};
    for (const { field, message } of body.errors || []) {
      fields[field.replace(/^input\./, "")] = message;
    }
    return new ApiError(status, body.error, fields);
  }
  if (body && body.error && body.error.message) {
    const fields = body.error.param ? { [body.error.param]: body.error.message } : {};
    return new ApiError(status, body.error.message, fields);
  }
  return new ApiError(status, `the server answered ${status}`);
}

export class Api {
  /** `getKey` returns the API key to send (or "" for none). */
  constructor(getKey) {
    this.getKey = getKey;
  }

  headers(json) {
    const headers = {};
    const key = this.getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (json) headers["Content-Type"] = "application/json";
    return headers;
  }

  async call(method, path, body) {
    const response = await fetch(path, {
      method,
      headers: this.headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await response.json().catch(() => null);
    if (response.status === 401) {
      throw new Unauthorized(answer?.error?.message || answer?.error || "API key needed");
    }
    if (!response.ok) {
      const error = errorOf(response.status, answer);
      error.retryAfter = Number(response.headers.get("Retry-After")) || 0;
      throw error;
    }
    return answer;
  }

  /** Every model name and alias, with its family, defaults and size rules. */
  async models() {
    return (await this.call("GET", "v1/models")).data;
  }

  /** The installed LoRAs' names. */
  async loras() {
    return (await this.call("GET", "v1/loras")).loras.map((lora) => lora.name);
  }

  runPath(endpoint, call, id = "") {
    return `v2/${endpointPath(endpoint)}/${call}${id ? `/${encodeURIComponent(id)}` : ""}`;
  }

  /** Queue a job; answers `{id, status}` at once. */
  run(endpoint, input) {
    return this.call("POST", this.runPath(endpoint, "run"), { input });
  }

  /** A job's state: `output.progress` ("3/25") while it runs, its images once done. */
  status(endpoint, id) {
    return this.call("GET", this.runPath(endpoint, "status", id));
  }

  cancel(endpoint, id) {
    return this.call("POST", this.runPath(endpoint, "cancel", id));
  }

  /**
   * A job's server-sent events (`GET /v2/{endpoint}/events/{id}`) as `{event, data}` with
   * `data` decoded, until the stream ends. Read through fetch, not EventSource, which cannot
   * send the API key.
   */
  async *events(endpoint, id) {
    const response = await fetch(this.runPath(endpoint, "events", id), {
      headers: this.headers(false),
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => null);
      if (response.status === 401) throw new Unauthorized(answer?.error || "API key needed");
      throw errorOf(response.status, answer);
    }
    const lines = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    let event = "message";
    let data = [];
    for (;;) {
      const { value, done } = await lines.read();
      if (done) return;
      buffered += value;
      const parts = buffered.split(/\r?\n/);
      buffered = parts.pop();
      for (const line of parts) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        else if (line === "" && data.length) {
          yield { event, data: JSON.parse(data.join("\n")) };
          event = "message";
          data = [];
        }
      }
    }
  }
}
