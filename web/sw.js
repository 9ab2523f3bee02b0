// The messenger's service worker: its own files (the page, scripts, styles) are fetched
// from the network first, as without it (so a new version shows at once), and kept;
// when the network is down the kept copy is used, so the messenger opens offline and
// shows the history it has (web/cache.js). Nothing else (APIs, /ws, files, the room
// page) is touched.

const CACHE = 'maxd-app-v1';
const SHELL = ['/', '/messenger.js', '/api.js', '/chatsocket.js', '/tus.js', '/voice.js', '/cache.js', '/messenger.css'];

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (e) => {
  e.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener('fetch', (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== 'GET' || url.origin !== location.origin) return;
  // `/` with a query may be an old room link, redirected by the server: not ours.
  const path = url.pathname === '/index.html' ? '/' : url.pathname;
  if (!SHELL.includes(path) || (path === '/' && url.search)) return;
  e.respondWith((async () => {
    const cache = await caches.open(CACHE);
    try {
      const r = await fetch(e.request);
      if (r.ok) await cache.put(path, r.clone());
      return r;
    } catch (err) {
      const kept = await cache.match(path);
      if (kept) return kept;
      throw err;
    }
  })());
});
