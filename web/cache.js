// Offline-first: what the messenger has loaded (profile, chats, the newest messages of
// each chat, the last event seq it applied) is kept in IndexedDB, per account, so a page
// opened without a network shows it at once; when the network is back the socket syncs
// from the kept seqs and the server replays what came meanwhile. Cleared at log-out.
//
// The kept state is always one the client had applied events up to its `lastSeq`, so
// the replay after it changes nothing twice.

const DB = 'maxd-cache';
const STORE = 'state';
/** Messages kept per chat. */
export const KEEP = 100;

let db = null;
function open() {
  db = db || new Promise((resolve, reject) => {
    const r = indexedDB.open(DB, 1);
    r.onupgradeneeded = () => r.result.createObjectStore(STORE);
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
  return db;
}

function tx(mode, fn) {
  return open().then((d) => new Promise((resolve, reject) => {
    const t = d.transaction(STORE, mode);
    const q = fn(t.objectStore(STORE));
    t.oncomplete = () => resolve(q && q.result);
    t.onerror = () => reject(t.error);
  }));
}

export const loadState = (userId) => tx('readonly', (s) => s.get(`user:${userId}`)).catch(() => null);
export const saveState = (userId, state) => tx('readwrite', (s) => s.put(state, `user:${userId}`));
export const clearState = () => tx('readwrite', (s) => s.clear()).catch(() => {});

/** Registers the service worker that keeps the app's own files for offline loads. */
export function registerWorker() {
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('/sw.js').catch(() => {});
}
