// The maxd web client: lobby (room + name), then the call view (grid of tiles,
// controls). Protocol and reconnection live in rtc.js.

import { Call } from './rtc.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

/** Join-click to first remote frame, for docs/benchmarks.md and the tests. */
const metrics = { joinClickAt: 0, joinedAt: 0, firstRemoteFrameAt: 0 };
let call = null;
let localStream = null;

// A small debugging / test surface. Nothing here is needed by the UI itself.
window.maxd = {
  get call() {
    return call;
  },
  metrics,
  inboundStats: () => (call ? call.inboundStats() : []),
  outboundStats: () => (call ? call.outboundStats() : []),
  /** Drops the signalling WebSocket as a network blip would (the client resumes). */
  dropSignalling() {
    if (call && call.ws) call.ws.close(4000, 'test blip');
  },
};

// ---- lobby -------------------------------------------------------------------------

const ROOM_RE = /^[A-Za-z0-9._-]{1,64}$/;

function lobbyError(text) {
  $('lobby-error').textContent = text || '';
}

$('room').value = params.get('room') || localStorage.getItem('maxd.room') || '';
$('name').value = localStorage.getItem('maxd.name') || '';
if (params.get('token')) {
  $('token').value = params.get('token');
  $('token-box').open = true;
}

async function devToken(room, name) {
  const r = await fetch('/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ room, name }),
  });
  if (r.status === 404) throw new Error('this server does not issue tokens (not in dev mode): paste an access token');
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `token request failed (${r.status})`);
  return body.token;
}

/** Camera and microphone, falling back to whatever is available. */
async function getMedia() {
  const [w, h] = (params.get('video') || '1280x720').split('x').map(Number);
  const video = { width: { ideal: w || 1280 }, height: { ideal: h || 720 }, frameRate: { ideal: 30 } };
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  for (const c of [{ audio, video }, { audio }, { video }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(c);
    } catch (e) {
      console.warn('getUserMedia', c, e.name);
    }
  }
  return null; // receive only
}

$('join-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  metrics.joinClickAt = performance.now();
  metrics.joinedAt = 0;
  metrics.firstRemoteFrameAt = 0;
  const room = $('room').value.trim();
  const name = $('name').value.trim();
  if (!ROOM_RE.test(room)) return lobbyError('Room: 1-64 letters, digits, "-", "_" or "."');
  if (!name || name.length > 64) return lobbyError('Name: 1-64 characters');
  lobbyError('');
  localStorage.setItem('maxd.room', room);
  localStorage.setItem('maxd.name', name);
  $('join').disabled = true;
  try {
    const pasted = $('token').value.trim();
    const [token, media] = await Promise.all([pasted || devToken(room, name), getMedia()]);
    localStream = media;
    call = new Call({ token, room, media });
    wire(call);
    showCall(room);
    await call.join();
    metrics.joinedAt = performance.now();
  } catch (err) {
    stopLocal();
    showLobby();
    lobbyError(String(err.message || err));
  } finally {
    $('join').disabled = false;
  }
});

function showCall(room) {
  $('lobby').hidden = true;
  $('call').hidden = false;
  $('room-label').textContent = room;
  setStatus('Connecting…');
  render();
}

function showLobby() {
  $('call').hidden = true;
  $('lobby').hidden = false;
  $('grid').replaceChildren();
  $('audio').replaceChildren();
  tiles.clear();
}

function stopLocal() {
  if (localStream) for (const t of localStream.getTracks()) t.stop();
  localStream = null;
}

let statusTimer = null;
function setStatus(text, warn = false, forMs = 0) {
  const s = $('status');
  s.textContent = text;
  s.classList.toggle('warn', warn);
  clearTimeout(statusTimer);
  if (forMs) statusTimer = setTimeout(() => setStatus(call && call.state === 'joined' ? '' : s.textContent), forMs);
}

function wire(c) {
  c.addEventListener('state', (e) => {
    if (c !== call) return;
    const s = e.detail;
    if (s === 'joined') setStatus('');
    else if (s === 'reconnecting') setStatus('Reconnecting…', true);
    else if (s === 'failed') setStatus('Connection lost', true);
    else if (s === 'left') {
      stopLocal();
      showLobby();
    }
    render();
  });
  for (const ev of ['participants', 'tracks', 'local', 'speakers', 'quality']) c.addEventListener(ev, () => c === call && render());
  c.addEventListener('error', (e) => {
    if (c !== call) return;
    const { code, message } = e.detail;
    console.warn('maxd', code, message);
    if (code === 'left') lobbyError(message);
    else setStatus(message, true, 5000);
  });
}

// ---- controls ----------------------------------------------------------------------

$('mic').addEventListener('click', () => call && call.setMuted('microphone', !call.isMuted('microphone')));
$('cam').addEventListener('click', () => call && call.setMuted('camera', !call.isMuted('camera')));
$('screen').addEventListener('click', async () => {
  if (!call) return;
  try {
    if (call.local.has('screen_share')) await call.stopScreenShare();
    else await call.startScreenShare();
  } catch (err) {
    if (err.name !== 'NotAllowedError') setStatus(`Screen share: ${err.message || err}`, true, 5000);
  }
});
$('leave').addEventListener('click', async () => {
  if (!call) return;
  const c = call;
  await c.leave();
  stopLocal();
  showLobby();
});

function renderControls() {
  const mic = $('mic');
  const cam = $('cam');
  const scr = $('screen');
  const hasMic = call && call.local.has('microphone');
  const hasCam = call && call.local.has('camera');
  mic.disabled = !hasMic;
  cam.disabled = !hasCam;
  const micMuted = !hasMic || call.isMuted('microphone');
  const camMuted = !hasCam || call.isMuted('camera');
  mic.textContent = micMuted ? 'Unmute' : 'Mute';
  mic.setAttribute('aria-pressed', String(micMuted));
  cam.textContent = camMuted ? 'Start video' : 'Stop video';
  cam.setAttribute('aria-pressed', String(camMuted));
  const sharing = call && call.local.has('screen_share');
  scr.textContent = sharing ? 'Stop sharing' : 'Share screen';
  scr.setAttribute('aria-pressed', String(!!sharing));
  scr.disabled = !call || !navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia;
}

// ---- the grid ----------------------------------------------------------------------

/** tile key -> {el, video, trackId} */
const tiles = new Map();

/** Layer for a rendered height in device pixels; layers are 1/4, 1/2 and full size. */
function qualityFor(cssHeight) {
  const px = cssHeight * (window.devicePixelRatio || 1);
  if (px < 2) return 'paused';
  if (px <= 200) return 'low';
  if (px <= 400) return 'medium';
  return 'high';
}

const resizes = new ResizeObserver((entries) => {
  for (const e of entries) {
    const t = tiles.get(e.target.closest('.tile').dataset.key);
    if (t) t.height = e.contentRect.height;
    applyQuality(e.target.closest('.tile'), e.contentRect.height);
  }
});

function applyQuality(el, height) {
  if (!call || !el) return;
  const trackId = el.dataset.track;
  if (trackId) call.setQuality(trackId, qualityFor(height));
}

function makeTile(key) {
  const el = document.createElement('div');
  el.className = 'tile';
  el.dataset.key = key;
  el.innerHTML = '<video autoplay playsinline muted></video><div class="avatar"></div>' +
    '<div class="label"><span class="name"></span><span class="mic-off" hidden>muted</span><span class="q"></span></div>';
  const video = el.querySelector('video');
  const t = { key, el, video };
  tiles.set(key, t);
  return t;
}

function attach(t, track, remote) {
  const cur = t.video.srcObject && t.video.srcObject.getVideoTracks()[0];
  if (cur === track) return;
  if (!track) {
    t.video.srcObject = null;
    return;
  }
  t.video.srcObject = new MediaStream([track]);
  t.video.play().catch(() => {});
  if (remote) watchFirstFrame(t.video);
}

function watchFirstFrame(video) {
  const mark = () => {
    if (!metrics.firstRemoteFrameAt && metrics.joinClickAt) metrics.firstRemoteFrameAt = performance.now();
  };
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(mark);
  else video.addEventListener('loadeddata', mark, { once: true });
}

function initials(name) {
  return (name || '?').trim().slice(0, 1).toUpperCase();
}

/** Wanted tiles from the call's state: [{key, participantId, name, track, trackId, self, screen, micMuted, camOn}] */
function wantedTiles() {
  const out = [];
  if (!call || !call.me) return out;
  const cam = call.local.get('camera');
  const mic = call.local.get('microphone');
  out.push({
    key: 'self', participantId: call.me.id, name: `${call.me.name} (you)`, track: cam ? cam.track : null,
    self: true, screen: false, micMuted: !mic || mic.muted, camOn: !!cam && !cam.muted,
  });
  const scr = call.local.get('screen_share');
  if (scr) out.push({ key: 'self:screen', participantId: call.me.id, name: `${call.me.name} (your screen)`, track: scr.track, self: true, screen: true, micMuted: false, camOn: true });
  for (const p of call.participants.values()) {
    const infos = [...p.tracks.values()];
    const micInfo = infos.find((i) => i.source === 'microphone');
    const camInfo = infos.find((i) => i.source === 'camera');
    const camRemote = camInfo && call.remote.get(camInfo.id);
    out.push({
      key: p.id, participantId: p.id, name: p.name, track: camRemote ? camRemote.track : null, trackId: camInfo && camInfo.id,
      self: false, screen: false, micMuted: !micInfo || micInfo.muted, camOn: !!camRemote && !camInfo.muted,
    });
    for (const s of infos.filter((i) => i.source === 'screen_share')) {
      const r = call.remote.get(s.id);
      if (r) out.push({ key: `${p.id}:${s.id}`, participantId: p.id, name: `${p.name} (screen)`, track: r.track, trackId: s.id, self: false, screen: true, micMuted: false, camOn: !s.muted });
    }
  }
  return out;
}

function render() {
  renderControls();
  const grid = $('grid');
  const want = call && call.state !== 'left' ? wantedTiles() : [];
  const speaking = new Set(call ? call.speakers.map((s) => s.participant_id) : []);
  const keys = new Set(want.map((w) => w.key));
  for (const [key, t] of tiles) {
    if (!keys.has(key)) {
      resizes.unobserve(t.video);
      t.video.srcObject = null;
      t.el.remove();
      tiles.delete(key);
    }
  }
  want.forEach((w, i) => {
    const t = tiles.get(w.key) || makeTile(w.key);
    const el = t.el;
    el.dataset.participant = w.participantId;
    el.dataset.name = w.name;
    el.classList.toggle('self', w.self && !w.screen);
    el.classList.toggle('screen', w.screen);
    el.classList.toggle('speaking', !w.screen && speaking.has(w.participantId));
    el.classList.toggle('has-video', w.camOn && !!w.track);
    el.querySelector('.name').textContent = w.name;
    el.querySelector('.avatar').textContent = initials(w.name);
    el.querySelector('.mic-off').hidden = !w.micMuted || w.screen;
    const q = call.quality.get(w.participantId);
    const qe = el.querySelector('.q');
    qe.dataset.quality = q ? q.quality : '';
    qe.title = q ? `connection: ${q.quality}, loss ${(q.loss * 100).toFixed(1)}%` : '';
    attach(t, w.track, !w.self);
    if (w.trackId) el.dataset.track = w.trackId;
    else delete el.dataset.track;
    // Sent once per track and layer (the call skips repeats); resizes send changes.
    if (!w.self && w.track) applyQuality(el, t.height ?? t.video.getBoundingClientRect().height);
    if (grid.children[i] !== el) grid.insertBefore(el, grid.children[i] || null);
    if (!w.self && !t.observed) {
      resizes.observe(t.video);
      t.observed = true;
    }
  });
  layout(want.length);
  renderAudio();
}

function layout(n) {
  const grid = $('grid');
  const narrow = grid.clientWidth < 600;
  const cols = narrow ? (n <= 2 ? 1 : 2) : Math.max(1, Math.ceil(Math.sqrt(n)));
  grid.style.setProperty('--cols', String(cols));
}
window.addEventListener('resize', () => layout(tiles.size));

/** One <audio> element per received audio track. */
function renderAudio() {
  const box = $('audio');
  const want = new Map();
  if (call) for (const [id, r] of call.remote) if (r.kind === 'audio') want.set(id, r.track);
  for (const el of [...box.children]) {
    if (!want.has(el.dataset.track)) {
      el.srcObject = null;
      el.remove();
    }
  }
  for (const [id, track] of want) {
    let el = box.querySelector(`audio[data-track="${CSS.escape(id)}"]`);
    if (!el) {
      el = document.createElement('audio');
      el.autoplay = true;
      el.dataset.track = id;
      box.append(el);
    }
    const cur = el.srcObject && el.srcObject.getAudioTracks()[0];
    if (cur !== track) {
      el.srcObject = new MediaStream([track]);
      el.play().catch(() => {});
    }
  }
}
