// The `curl` call that makes one image again: the job's input with that image's seed, one image,
// through RunPod's synchronous call.

import { absoluteUrl } from "./api.js";

/** `text` as one single-quoted shell word. */
function quoted(text) {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

/** The input that makes only the image of `seed` (image i of a request is seed + i). */
export function singleImageInput(input, seed) {
  return { ...input, seed, num_outputs: 1 };
}

export function curlCommand(api, endpoint, input, key) {
  const lines = [
    `curl -s -X POST ${quoted(absoluteUrl(api.runPath(endpoint, "runsync")))}`,
    `  -H 'Content-Type: application/json'`,
  ];
  if (key) lines.push(`  -H ${quoted(`Authorization: Bearer ${key}`)}`);
  lines.push(`  -d ${quoted(JSON.stringify({ input }))}`);
  return lines.join(" \\\n");
}

/** The command as shown on the page: long data URIs cut short (the copy keeps them whole). */
export function shortened(command) {
  return command.replace(/data:image\/[a-z]+;base64,[A-Za-z0-9+/=]{64,}/g, (uri) =>
    `${uri.slice(0, 40)}…(${Math.round(uri.length / 1024)} KB)`);
}
