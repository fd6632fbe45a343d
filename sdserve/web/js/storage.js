// What the playground keeps in this browser (localStorage): the API key, and each key's recent
// jobs (ids and endpoints only; everything else is read back from the server).

const KEY_ITEM = "sdserve.apiKey";
const JOBS_ITEM = "sdserve.jobs.";
const MAX_JOBS = 20;

export function loadKey() {
  return localStorage.getItem(KEY_ITEM) || "";
}

export function saveKey(key) {
  if (key) localStorage.setItem(KEY_ITEM, key);
  else localStorage.removeItem(KEY_ITEM);
}

/** A short tag of a key (FNV-1a), so each key's jobs are listed apart, without the key. */
function tagOf(key) {
  if (!key) return "open";
  let hash = 0x811c9dc5;
  for (const char of key) {
    hash ^= char.codePointAt(0);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash.toString(16);
}

/** This key's recent jobs, newest first: `[{id, endpoint, submittedAt}]`. */
export function recentJobs(key) {
  try {
    const jobs = JSON.parse(localStorage.getItem(JOBS_ITEM + tagOf(key)) || "[]");
    return Array.isArray(jobs) ? jobs.filter((job) => job && job.id && job.endpoint) : [];
  } catch {
    return [];
  }
}

function saveJobs(key, jobs) {
  localStorage.setItem(JOBS_ITEM + tagOf(key), JSON.stringify(jobs.slice(0, MAX_JOBS)));
}

export function rememberJob(key, job) {
  saveJobs(key, [job, ...recentJobs(key).filter((known) => known.id !== job.id)]);
}

export function forgetJob(key, id) {
  saveJobs(key, recentJobs(key).filter((known) => known.id !== id));
}

export { MAX_JOBS };
