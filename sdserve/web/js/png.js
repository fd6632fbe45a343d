// Reads a PNG's text chunks (tEXt, zTXt, iTXt) and A1111's `parameters` text in them, which
// the server writes into every image it makes: prompt, negative prompt, steps, sampler, seed...

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const latin1 = new TextDecoder("latin1");
const utf8 = new TextDecoder("utf-8");

async function inflate(bytes) {
  // "deflate" is the zlib format, as PNG's compressed text chunks hold it.
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** The index of the first zero byte at or after `from` (the end if none). */
function nul(bytes, from) {
  const at = bytes.indexOf(0, from);
  return at < 0 ? bytes.length : at;
}

async function textChunk(type, data) {
  const end = nul(data, 0);
  const keyword = latin1.decode(data.subarray(0, end));
  if (type === "tEXt") return [keyword, latin1.decode(data.subarray(end + 1))];
  if (type === "zTXt") return [keyword, latin1.decode(await inflate(data.subarray(end + 2)))];
  // iTXt: compression flag, method, language tag\0, translated keyword\0, then the text.
  const compressed = data[end + 1] === 1;
  const languageEnd = nul(data, end + 3);
  const textStart = nul(data, languageEnd + 1) + 1;
  const text = data.subarray(textStart);
  return [keyword, utf8.decode(compressed ? await inflate(text) : text)];
}

/** Every text chunk of a PNG, keyword -> text; empty for anything that is not a PNG. */
export async function readPngText(buffer) {
  const bytes = new Uint8Array(buffer);
  const texts = new Map();
  if (!SIGNATURE.every((byte, i) => bytes[i] === byte)) return texts;
  const view = new DataView(buffer);
  let at = SIGNATURE.length;
  while (at + 8 <= bytes.length) {
    const length = view.getUint32(at);
    const type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    if (type === "IEND") break;
    if (type === "tEXt" || type === "zTXt" || type === "iTXt") {
      const [keyword, text] = await textChunk(type, data);
      texts.set(keyword, text);
    }
    at += 12 + length;
  }
  return texts;
}

// A1111's own pattern for the `Key: value, Key: "quoted, value"` line.
const FIELD = /\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;

function fieldsOf(line) {
  const fields = {};
  for (const [, key, raw] of line.matchAll(FIELD)) {
    let value = raw.trim();
    if (value.startsWith('"')) {
      try {
        value = JSON.parse(value);
      } catch {
        // left as written
      }
    }
    fields[key.trim()] = value;
  }
  return fields;
}

/** A1111's `parameters` text: `{prompt, negativePrompt, fields: {Steps, Sampler, Seed, ...}}`. */
export function parseParameters(text) {
  const lines = text.trim().split("\n");
  let fields = {};
  if (lines.length > 0 && /(^|, )Steps: /.test(lines[lines.length - 1])) {
    fields = fieldsOf(lines.pop());
  }
  const prompt = [];
  const negative = [];
  let target = prompt;
  for (const line of lines) {
    if (line.startsWith("Negative prompt:")) {
      target = negative;
      target.push(line.slice("Negative prompt:".length).trim());
    } else {
      target.push(line);
    }
  }
  return { prompt: prompt.join("\n"), negativePrompt: negative.join("\n"), fields };
}
