// Resumable uploads to the relay over tus 1.0 (docs/relay.md, "HTTP fallback"). The
// upload URL of every unfinished upload is kept in localStorage under the file's
// fingerprint (name, size, modification time), so after a reload or a crash choosing
// the same file again continues where the relay's `Upload-Offset` says.

const KEY = 'maxd.uploads';
const CHUNK = 4 * 1024 * 1024;

/** Unfinished uploads: `[{fp, url, chatId, name, size, type, offset}]`. */
export function pendingUploads() {
  try {
    return JSON.parse(localStorage.getItem(KEY)) || [];
  } catch {
    return [];
  }
}

function savePending(list) {
  localStorage.setItem(KEY, JSON.stringify(list));
}

function remember(entry) {
  savePending([...pendingUploads().filter((u) => u.fp !== entry.fp), entry]);
}

export function forgetUpload(fp) {
  savePending(pendingUploads().filter((u) => u.fp !== fp));
}

export function fingerprint(file) {
  return `${file.name}|${file.size}|${file.lastModified}`;
}

const b64 = (s) => btoa(String.fromCharCode(...new TextEncoder().encode(s)));

/** One XHR (fetch cannot report upload progress): resolves with the XHR when done. */
function xhr(method, url, headers, body, onProgress, signal) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open(method, url);
    for (const [k, v] of Object.entries(headers)) x.setRequestHeader(k, v);
    if (onProgress) x.upload.onprogress = (e) => onProgress(e.loaded);
    x.onload = () => resolve(x);
    x.onerror = () => reject(new Error('network error'));
    x.onabort = () => reject(new DOMException('aborted', 'AbortError'));
    if (signal) signal.addEventListener('abort', () => x.abort(), { once: true });
    x.send(body);
  });
}

function failure(x) {
  let body = {};
  try {
    body = JSON.parse(x.responseText);
  } catch {
    /* not JSON */
  }
  return Object.assign(new Error(body.message || `upload failed (${x.status})`), { code: body.error, status: x.status });
}

/**
 * Uploads `file` (resuming a stored upload of the same file), calling
 * `onProgress(bytesDone, size)`. `token()` gives a current access token; `chatId` is
 * kept with the stored upload. Resolves with the relay's file id.
 */
export async function upload(file, { token, chatId, onProgress = () => {}, signal }) {
  const fp = fingerprint(file);
  let entry = pendingUploads().find((u) => u.fp === fp);
  const auth = async () => ({ authorization: `Bearer ${await token()}`, 'tus-resumable': '1.0.0' });
  let offset = 0;
  if (entry) {
    const x = await xhr('HEAD', entry.url, await auth(), null, null, signal);
    if (x.status === 200 || x.status === 204) {
      offset = Number(x.getResponseHeader('upload-offset')) || 0;
    } else {
      forgetUpload(fp); // expired or unknown: start again
      entry = null;
    }
  }
  if (!entry) {
    const meta = `filename ${b64(file.name)},filetype ${b64(file.type || 'application/octet-stream')}`;
    const x = await xhr('POST', '/files', { ...(await auth()), 'upload-length': String(file.size), 'upload-metadata': meta }, null, null, signal);
    if (x.status !== 201) throw failure(x);
    const url = new URL(x.getResponseHeader('location'), location.href).pathname;
    entry = { fp, url, chatId, name: file.name, size: file.size, type: file.type, offset: 0 };
    remember(entry);
  }
  onProgress(offset, file.size);
  while (offset < file.size) {
    const end = Math.min(offset + CHUNK, file.size);
    const x = await xhr(
      'PATCH',
      entry.url,
      { ...(await auth()), 'content-type': 'application/offset+octet-stream', 'upload-offset': String(offset) },
      file.slice(offset, end),
      (n) => onProgress(offset + n, file.size),
      signal,
    );
    if (x.status === 409) {
      // Our idea of the offset is stale (another tab, a lost answer): ask again.
      const h = await xhr('HEAD', entry.url, await auth(), null, null, signal);
      offset = Number(h.getResponseHeader('upload-offset')) || 0;
      continue;
    }
    if (x.status !== 204) throw failure(x);
    offset = Number(x.getResponseHeader('upload-offset'));
    remember({ ...entry, offset });
    onProgress(offset, file.size);
  }
  forgetUpload(fp);
  return entry.url.split('/').pop();
}
