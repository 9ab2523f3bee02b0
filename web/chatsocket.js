// The chat WebSocket `/ws` (docs/chat.md): authenticate in the first frame, `sync` from
// the last event seq of every known chat (the server replays what was missed, then goes
// live: nothing skipped, nothing repeated), reconnect with backoff, and an outbox that
// sends again, with the same `client_id`, what was not acknowledged (the server answers
// a retry as a duplicate and stores nothing).

const PING_EVERY = 15_000;
const PONG_WITHIN = 10_000;

export class ChatSocket extends EventTarget {
  /**
   * `api`: the Api (tokens); `since()`: `[{chat_id, seq}]` to sync from;
   * `onEvent(frame)`: every server event (stored and ephemeral), in order.
   */
  constructor(api, since, onEvent) {
    super();
    this.api = api;
    this.since = since;
    this.onEvent = onEvent;
    this.ws = null;
    this.state = 'closed'; // closed | connecting | live
    this.nextReq = 1;
    this.pending = new Map(); // req_id -> {resolve, reject, frame}
    this.outbox = new Map(); // client_id -> send frame, until acked
    this.backoff = 500;
    this.timer = null;
    this.stopped = true;
    this.counters = { connects: 0, syncs: 0 };
    window.addEventListener('online', () => this.stopped || this.reconnectSoon(0));
    // Offline: nothing can arrive, so the socket is given up at once (its close
    // handshake may never complete); `online` connects again and syncs.
    window.addEventListener('offline', () => this.ws && this.lost(this.ws, 4999));
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    if (this.ws) this.ws.close(1000, 'bye');
    this.ws = null;
    this.setState('closed');
  }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.dispatchEvent(new CustomEvent('state', { detail: s }));
  }

  async open() {
    clearTimeout(this.timer);
    if (this.stopped || (this.ws && this.ws.readyState <= 1)) return;
    if (!navigator.onLine) {
      this.setState('closed');
      return; // the `online` event reconnects
    }
    this.setState('connecting');
    let token;
    try {
      token = await this.api.accessToken();
    } catch (e) {
      if (this.api.loggedIn) this.reconnectSoon();
      return;
    }
    const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
    this.ws = ws;
    let lastFrame = Date.now();
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', access_token: token, req_id: 0 }));
    ws.onmessage = (m) => {
      lastFrame = Date.now();
      let f;
      try {
        f = JSON.parse(m.data);
      } catch {
        return;
      }
      this.frame(ws, f, token);
    };
    ws.onclose = (e) => this.lost(ws, e.code);
    // Application pings: a connection that a dead network left open is noticed.
    clearInterval(this.pinger);
    this.pinger = setInterval(() => {
      if (ws.readyState !== 1) return;
      if (Date.now() - lastFrame > PING_EVERY + PONG_WITHIN) {
        ws.close(4998, 'no pong');
        return;
      }
      if (Date.now() - lastFrame > PING_EVERY - 1000) ws.send('{"type":"ping"}');
    }, 5_000);
  }

  /** `ws` is gone (closed by either side, or given up). */
  lost(ws, code) {
    if (this.ws !== ws) return;
    this.ws = null;
    this.ready = false;
    ws.onclose = null;
    ws.onmessage = null;
    if (ws.readyState <= 1) ws.close(4999, 'offline');
    clearInterval(this.pinger);
    // Sends stay in the outbox (and their promises wait); other requests fail now.
    for (const [id, p] of this.pending) {
      if (p.frame.type === 'send') continue;
      p.reject(new Error('disconnected'));
      this.pending.delete(id);
    }
    this.setState('closed');
    if (code === 4001) {
      this.api.forget();
      return;
    }
    if (!this.stopped) this.reconnectSoon();
  }

  async frame(ws, f, token) {
    if (f.type === 'authenticated') {
      this.counters.connects++;
      this.ready = true;
      ws.send(JSON.stringify({ type: 'sync', since: this.since() }));
      return;
    }
    if (f.type === 'error' && f.req_id === 0) {
      // The auth frame was refused: an expired token is refreshed, anything else ends
      // the session.
      if (f.code === 'token_expired') {
        try {
          await this.api.refresh(token);
        } catch {
          /* logged out, or the next attempt says why */
        }
      } else if (f.code === 'session_revoked' || f.code === 'token_invalid') {
        this.api.forget();
      }
      return;
    }
    if (f.type === 'synced') {
      this.counters.syncs++;
      this.backoff = 500;
      this.setState('live');
      this.onEvent(f);
      // What was sent but not acknowledged goes again (same client_id: no duplicate).
      for (const frame of this.outbox.values()) this.write(frame);
      return;
    }
    if (f.req_id !== undefined && f.req_id !== null && this.pending.has(f.req_id)) {
      const p = this.pending.get(f.req_id);
      this.pending.delete(f.req_id);
      if (f.type === 'error') p.reject(Object.assign(new Error(f.message || f.code), { code: f.code }));
      else p.resolve(f);
    }
    if (f.type === 'ack') this.outbox.delete(f.client_id);
    if (f.type === 'error' && f.req_id !== undefined) {
      // A refused send is not retried.
      for (const [cid, fr] of this.outbox) if (fr.req_id === f.req_id) this.outbox.delete(cid);
    }
    if (f.type !== 'pong') this.onEvent(f);
  }

  reconnectSoon(ms) {
    clearTimeout(this.timer);
    const wait = ms ?? this.backoff * (0.75 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, 10_000);
    this.timer = setTimeout(() => this.open(), wait);
  }

  write(frame) {
    // After `authenticated`: receipts for replayed events go before `synced` arrives.
    if (this.ws && this.ws.readyState === 1 && this.ready) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  /** A request answered by `ok`/`ack` or `error`; rejects at once when offline. */
  request(frame) {
    const req_id = this.nextReq++;
    const f = { ...frame, req_id };
    return new Promise((resolve, reject) => {
      this.pending.set(req_id, { resolve, reject, frame: f });
      if (!this.write(f)) {
        this.pending.delete(req_id);
        reject(new Error('offline'));
      }
    });
  }

  /** Sends a message now or after reconnecting; resolves with the server's `ack`. */
  send(chatId, clientId, content) {
    const req_id = this.nextReq++;
    const frame = { type: 'send', chat_id: chatId, client_id: clientId, ...content, req_id };
    this.outbox.set(clientId, frame);
    return new Promise((resolve, reject) => {
      this.pending.set(req_id, { resolve, reject, frame });
      this.write(frame);
    });
  }

  /** Fire-and-forget frames (typing, receipts): dropped when offline; whether sent. */
  notify(frame) {
    return this.write(frame);
  }
}
