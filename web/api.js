// The chat REST API (docs/chat.md): the login session in localStorage, the bearer
// header, and refresh-token rotation shared safely between tabs.
//
// A refresh token may be used once: presenting a rotated one revokes the session
// (`refresh_reused`). Tabs of one browser share the session, so a refresh runs under a
// Web Lock and first looks whether another tab has rotated the tokens meanwhile. That
// look goes to IndexedDB, not localStorage: Chromium propagates a localStorage write to
// other tabs' processes asynchronously, so a tab could still read the rotated token
// after the lock is released, while an IndexedDB read sees every committed write.

const KEY = 'maxd.session';

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || body.error || `HTTP ${status}`);
    this.status = status;
    this.code = body.error || 'http_error';
    this.retryAfter = body.retry_after;
  }
}

/** Codes after which the session is gone for good: log in again. */
const FATAL = new Set(['refresh_invalid', 'refresh_reused', 'session_revoked']);

export class Api extends EventTarget {
  constructor() {
    super();
    this.session = load();
    // Another tab refreshed, logged in or out.
    window.addEventListener('storage', (e) => {
      if (e.key !== KEY) return;
      const was = this.session;
      this.session = load();
      if (was && !this.session) this.dispatchEvent(new Event('loggedout'));
    });
  }

  get loggedIn() {
    return !!this.session;
  }

  get userId() {
    return this.session && this.session.user_id;
  }

  get sessionId() {
    return this.session && this.session.session_id;
  }

  /**
   * An access token valid for a while yet (30 s, or a third of its lifetime if that is
   * shorter), refreshing first if needed.
   */
  async accessToken() {
    if (!this.session) throw new ApiError(401, { error: 'token_missing', message: 'not logged in' });
    if (!fresh(this.session)) await this.refresh(this.session.access_token);
    return this.session.access_token;
  }

  /**
   * Rotates the tokens. `stale` is the access token the caller found lacking: if another
   * tab already replaced it, its result is used instead of a second rotation.
   */
  async refresh(stale) {
    const run = async () => {
      const now = (await idbGet(KEY).catch(() => null)) || load();
      if (!now) {
        this.session = null;
        throw new ApiError(401, { error: 'refresh_invalid', message: 'logged out' });
      }
      if (now.access_token !== stale && fresh(now)) {
        this.session = now;
        localStorage.setItem(KEY, JSON.stringify(now));
        return;
      }
      const r = await fetch('/api/auth/refresh', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ refresh_token: now.refresh_token }),
      });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) {
        const e = new ApiError(r.status, body);
        if (FATAL.has(e.code)) this.forget();
        throw e;
      }
      await this.store(body);
    };
    if (navigator.locks) await navigator.locks.request('maxd.refresh', run);
    else await run();
  }

  /** Keeps new tokens: localStorage (read at start-up) and IndexedDB (read in the lock). */
  async store(auth) {
    this.session = {
      user_id: auth.user_id,
      session_id: auth.session_id,
      access_token: auth.access_token,
      refresh_token: auth.refresh_token,
      access_expires_at: Date.now() + auth.access_expires_in * 1000,
      access_ttl_ms: auth.access_expires_in * 1000,
    };
    localStorage.setItem(KEY, JSON.stringify(this.session));
    await idbPut(KEY, this.session).catch(() => {});
  }

  forget() {
    const had = !!this.session;
    this.session = null;
    localStorage.removeItem(KEY);
    idbPut(KEY, undefined).catch(() => {});
    if (had) this.dispatchEvent(new Event('loggedout'));
  }

  /** `fetch` with the bearer token and JSON; refreshes once on `token_expired`. */
  async call(method, path, body) {
    for (let attempt = 0; ; attempt++) {
      const token = await this.accessToken();
      const r = await fetch(path, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
      const text = await r.text();
      let json = {};
      try {
        json = text ? JSON.parse(text) : {};
      } catch {
        json = { error: 'http_error', message: `${method} ${path}: HTTP ${r.status}` };
      }
      if (r.ok) return json;
      const e = new ApiError(r.status, json);
      if (e.code === 'token_expired' && attempt === 0) {
        await this.refresh(token);
        continue;
      }
      if (FATAL.has(e.code)) this.forget();
      throw e;
    }
  }

  get(path) {
    return this.call('GET', path);
  }

  post(path, body = {}) {
    return this.call('POST', path, body);
  }

  // ---- login ------------------------------------------------------------------------

  static async requestCode(phone) {
    return plain('/api/auth/code', { phone });
  }

  async verify(phone, code, deviceName) {
    const body = await plain('/api/auth/verify', { phone, code, device_name: deviceName });
    await this.store(body);
    return body;
  }

  async logout(everywhere = false) {
    try {
      await this.post(everywhere ? '/api/auth/logout_all' : '/api/auth/logout');
    } finally {
      this.forget();
    }
  }
}

async function plain(path, body) {
  const r = await fetch(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, json);
  return json;
}

let db = null;
function openDb() {
  db = db || new Promise((resolve, reject) => {
    const r = indexedDB.open('maxd', 1);
    r.onupgradeneeded = () => r.result.createObjectStore('kv');
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
  return db;
}

async function idbGet(key) {
  const d = await openDb();
  return new Promise((resolve, reject) => {
    const q = d.transaction('kv').objectStore('kv').get(key);
    q.onsuccess = () => resolve(q.result);
    q.onerror = () => reject(q.error);
  });
}

/** Writes (or with `undefined` deletes) `key`; resolves once committed. */
async function idbPut(key, value) {
  const d = await openDb();
  return new Promise((resolve, reject) => {
    const t = d.transaction('kv', 'readwrite');
    if (value === undefined) t.objectStore('kv').delete(key);
    else t.objectStore('kv').put(value, key);
    t.oncomplete = () => resolve();
    t.onerror = () => reject(t.error);
  });
}

/** Whether the session's access token has enough lifetime left to be used. */
function fresh(s) {
  const margin = Math.min(30_000, (s.access_ttl_ms || 900_000) / 3);
  return s.access_expires_at - Date.now() > margin;
}

function load() {
  try {
    const s = JSON.parse(localStorage.getItem(KEY));
    return s && s.access_token && s.refresh_token ? s : null;
  } catch {
    return null;
  }
}

/** "Chrome on Linux": a device name for the sessions list, from the user agent. */
export function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? 'Edge' : /Firefox\//.test(ua) ? 'Firefox' : /Chrom/.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'Browser';
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Mac OS/.test(ua) ? 'macOS' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : '';
  return os ? `${browser} on ${os}` : browser;
}
