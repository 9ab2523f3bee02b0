// The `/rtc` protocol client (docs/protocol.md): one WebSocket for signalling, a
// publisher RTCPeerConnection (we offer) and a subscriber RTCPeerConnection (the server
// offers, we answer with its offer_id). Reconnects by itself: `resume` within the
// server's resume window, ICE restart on either connection when ICE goes bad.
//
// No framework: a `Call` is an EventTarget. Events (all `CustomEvent`):
//   state        detail: 'connecting' | 'joined' | 'reconnecting' | 'left' | 'failed'
//   participants the room's participants or their tracks changed
//   tracks       remote media tracks came or went
//   local        our own media changed (mute, screen share)
//   speakers     detail: [{participant_id, level}]
//   quality      detail: [{participant_id, quality, loss}]
//   error        detail: {code, message}

// Simulcast layers of the camera, lowest first. The server orders layers by these rid
// names (q < h < f); see docs/protocol.md "Simulcast and layers".
export const CAMERA_LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

const ANSWER_TIMEOUT_MS = 10_000;
const PING_EVERY_MS = 5_000;
// No message at all (not even `pong`) for this long: the WebSocket is taken as dead.
const SILENCE_LIMIT_MS = 12_000;
// ICE `disconnected` often heals by itself; restart only if it lasts this long.
const ICE_DISCONNECTED_GRACE_MS = 1_500;
const ICE_RESTART_RETRY_MS = 5_000;
// A full re-join after the resume window keeps being tried this long.
const REJOIN_FOR_MS = 120_000;

function wsUrl(token, room) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = new URLSearchParams({ access_token: token });
  if (room) q.set('room', room);
  return `${proto}//${location.host}/rtc?${q}`;
}

export class Call extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.token access token for the room
   * @param {string} o.room the room the token opens
   * @param {MediaStream|null} o.media camera/microphone to publish (may be null)
   */
  constructor({ token, room, media }) {
    super();
    this.token = token;
    this.room = room;
    this.media = media;
    this.state = 'idle';
    this.me = null;
    this.sessionId = null;
    this.resumeWindowMs = 10_000;
    /** participant id -> {id, identity, name, tracks: Map<track id, TrackInfo>} */
    this.participants = new Map();
    /** track id -> {track: MediaStreamTrack, participantId, kind, mid} */
    this.remote = new Map();
    /** source -> {source, track, transceiver, trackId, muted} */
    this.local = new Map();
    /** subscriber mid -> {track_id, participant_id} (from the server's offers) */
    this.midMap = new Map();
    /** track id -> last set_quality sent ('low'|'medium'|'high'|'paused') */
    this.wantedQuality = new Map();
    this.quality = new Map();
    this.speakers = [];
    this.ws = null;
    this.pub = null;
    this.sub = null;
    this.pubChain = Promise.resolve();
    this.subChain = Promise.resolve();
    this.pubPending = null; // {resolve, reject, msg} while a publisher offer awaits its answer
    this.lastAnswer = null; // {offer_id, sdp} of the last subscriber answer
    this.iceTimers = { publisher: null, subscriber: null };
    this.pendingSubRestart = false;
    this.disconnectedAt = 0;
    this.reconnectTimer = null;
    this.reconnectAttempt = 0;
    this.pingTimer = null;
    this.lastHeard = 0;
    this.leaving = false;
    this.counters = { resumes: 0, rejoins: 0, iceRestarts: { publisher: 0, subscriber: 0 } };
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  /** Opens the WebSocket and joins; resolves on `joined`, rejects if the join is refused. */
  join() {
    this.setState('connecting');
    return new Promise((resolve, reject) => {
      this.firstJoin = { resolve, reject };
      this.openWs(false);
    });
  }

  // ---- WebSocket -------------------------------------------------------------------

  openWs(resume) {
    const ws = new WebSocket(wsUrl(this.token, this.room));
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastHeard = performance.now();
      this.sendOn(ws, resume ? { type: 'resume', session_id: this.sessionId } : { type: 'join', auto_subscribe: true });
    };
    ws.onmessage = (e) => {
      if (this.ws !== ws) return;
      this.lastHeard = performance.now();
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      this.onMessage(msg);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onWsClosed(e);
    };
  }

  sendOn(ws, msg) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  /** Sends on the current WebSocket if it is joined; returns whether it was sent. */
  send(msg) {
    return this.state === 'joined' && this.sendOn(this.ws, msg);
  }

  startPing() {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      if (performance.now() - this.lastHeard > SILENCE_LIMIT_MS) {
        // Half-open connection (e.g. the network went away without a FIN): drop it.
        const ws = this.ws;
        this.ws = null;
        ws.close();
        this.onWsClosed({ code: 4000, reason: 'silent' });
        return;
      }
      this.sendOn(this.ws, { type: 'ping' });
    }, PING_EVERY_MS);
  }

  onWsClosed(e) {
    if (this.leaving || this.state === 'left' || this.state === 'failed') return;
    if (this.firstJoin) {
      // Never joined: nothing to resume.
      const j = this.firstJoin;
      this.firstJoin = null;
      this.setState('failed');
      j.reject(new Error(`connection closed before joining (${e.code || 'no code'})`));
      return;
    }
    if (this.state !== 'reconnecting') {
      this.disconnectedAt = performance.now();
      this.reconnectAttempt = 0;
      this.setState('reconnecting');
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    clearTimeout(this.reconnectTimer);
    const delay = Math.min(250 * 2 ** this.reconnectAttempt, 2_000);
    this.reconnectAttempt++;
    this.reconnectTimer = setTimeout(() => {
      if (this.leaving) return;
      const elapsed = performance.now() - this.disconnectedAt;
      if (this.sessionId && elapsed + 500 < this.resumeWindowMs) {
        this.openWs(true);
      } else if (elapsed < this.resumeWindowMs + REJOIN_FOR_MS) {
        this.rejoin();
      } else {
        this.setState('failed');
        this.emit('error', { code: 'reconnect', message: 'could not reconnect' });
      }
    }, delay);
  }

  /** The session is gone (resume window passed): join again from scratch. */
  rejoin() {
    this.counters.rejoins++;
    this.sessionId = null;
    this.closePeers();
    const screen = this.local.get('screen_share');
    if (screen) {
      screen.track.stop();
      this.local.delete('screen_share');
    }
    for (const l of this.local.values()) {
      l.transceiver = null;
      l.trackId = null;
    }
    this.participants.clear();
    this.remote.clear();
    this.midMap.clear();
    this.wantedQuality.clear();
    this.emit('participants');
    this.emit('tracks');
    this.openWs(false);
  }

  // ---- messages --------------------------------------------------------------------

  onMessage(msg) {
    switch (msg.type) {
      case 'joined':
        return this.onJoined(msg);
      case 'answer':
        if (this.pubPending) {
          const p = this.pubPending;
          this.pubPending = null;
          p.resolve(msg.sdp);
        }
        return;
      case 'offer':
        return this.onServerOffer(msg);
      case 'trickle': {
        const pc = msg.pc === 'publisher' ? this.pub : this.sub;
        if (pc) pc.addIceCandidate({ candidate: msg.candidate, sdpMLineIndex: 0 }).catch(() => {});
        return;
      }
      case 'participant_joined':
        this.addParticipant(msg.participant);
        return this.emit('participants');
      case 'participant_left':
        this.participants.delete(msg.participant_id);
        this.quality.delete(msg.participant_id);
        for (const [id, r] of this.remote) if (r.participantId === msg.participant_id) this.remote.delete(id);
        this.emit('tracks');
        return this.emit('participants');
      case 'track_published':
        return this.onTrackPublished(msg.track);
      case 'track_unpublished': {
        const p = this.participants.get(msg.participant_id);
        if (p) p.tracks.delete(msg.track_id);
        if (this.remote.delete(msg.track_id)) this.emit('tracks');
        return this.emit('participants');
      }
      case 'track_muted': {
        const p = this.participants.get(msg.participant_id);
        const t = p && p.tracks.get(msg.track_id);
        if (t) t.muted = msg.muted;
        return this.emit('participants');
      }
      case 'speakers':
        this.speakers = msg.speakers;
        return this.emit('speakers', msg.speakers);
      case 'connection_quality':
        for (const u of msg.updates) this.quality.set(u.participant_id, u);
        return this.emit('quality', msg.updates);
      case 'subscribed_quality':
      case 'pong':
        return;
      case 'error':
        return this.onError(msg);
      case 'left':
        // After our own `leave` this is the expected answer; otherwise the server ended
        // the session (duplicate identity, room full, media failure).
        if (!this.leaving) this.emit('error', { code: 'left', message: `the server ended the session: ${msg.reason}` });
        this.leaving = true;
        return this.teardown('left');
      default:
        return;
    }
  }

  onError(msg) {
    if (msg.code === 'not_found' && this.state === 'reconnecting') {
      // The session to resume is gone: join again.
      return this.rejoin();
    }
    if (this.pubPending && (msg.code === 'bad_sdp' || msg.code === 'not_allowed' || msg.code === 'bad_state')) {
      const p = this.pubPending;
      this.pubPending = null;
      p.reject(new Error(`${msg.code}: ${msg.message}`));
    }
    if (this.firstJoin && (msg.code === 'room_full' || msg.code === 'bad_state')) {
      const j = this.firstJoin;
      this.firstJoin = null;
      j.reject(new Error(msg.message));
    }
    this.emit('error', msg);
  }

  addParticipant(p) {
    this.participants.set(p.id, { id: p.id, identity: p.identity, name: p.name, tracks: new Map(p.tracks.map((t) => [t.id, t])) });
  }

  onJoined(msg) {
    const resumed = msg.resumed;
    this.me = msg.participant;
    this.sessionId = msg.session_id;
    this.resumeWindowMs = (msg.resume_window_secs || 10) * 1000;
    // The room as it is now (on resume too: anything missed while away is in here).
    const before = new Set(this.participants.keys());
    this.participants.clear();
    for (const p of msg.participants) this.addParticipant(p);
    for (const id of before) {
      if (!this.participants.has(id)) {
        for (const [tid, r] of this.remote) if (r.participantId === id) this.remote.delete(tid);
      }
    }
    for (const t of msg.participant.tracks) this.onOwnTrack(t);
    this.reconnectAttempt = 0;
    this.setState('joined');
    this.startPing();
    this.emit('participants');
    this.emit('tracks');
    if (this.firstJoin) {
      const j = this.firstJoin;
      this.firstJoin = null;
      j.resolve(msg);
    }
    if (resumed) {
      this.counters.resumes++;
      // A publisher offer whose answer was lost with the old WebSocket: send it again.
      if (this.pubPending) this.sendOn(this.ws, this.pubPending.msg);
      if (this.pendingSubRestart) this.restartIce('subscriber');
      for (const kind of ['publisher', 'subscriber']) this.checkIce(kind);
    } else {
      this.publish().catch((e) => this.emit('error', { code: 'publish', message: String(e) }));
    }
  }

  onTrackPublished(track) {
    if (this.me && track.participant_id === this.me.id) {
      this.onOwnTrack(track);
      return;
    }
    const p = this.participants.get(track.participant_id);
    if (p) p.tracks.set(track.id, track);
    this.emit('participants');
  }

  /** Our own track got its id: remember it, and tell the server a mute made before. */
  onOwnTrack(track) {
    const l = this.local.get(track.source);
    if (!l) return;
    l.trackId = track.id;
    if (l.muted !== track.muted) this.send({ type: 'mute', track_id: track.id, muted: l.muted });
    this.emit('local');
  }

  // ---- publisher -------------------------------------------------------------------

  newPc(kind) {
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    pc.addEventListener('iceconnectionstatechange', () => this.checkIce(kind));
    return pc;
  }

  async publish() {
    if (!this.pub) this.pub = this.newPc('publisher');
    const stream = this.media;
    if (!stream) return;
    const audio = stream.getAudioTracks()[0];
    const video = stream.getVideoTracks()[0];
    if (audio) this.addLocal('microphone', audio, { direction: 'sendonly', streams: [stream] });
    if (video) {
      const tr = this.addLocal('camera', video, { direction: 'sendonly', streams: [stream], sendEncodings: CAMERA_LAYERS.map((l) => ({ ...l })) });
      preferVp8(tr);
    }
    await this.negotiatePublisher(false);
  }

  addLocal(source, track, init) {
    const prev = this.local.get(source);
    const muted = prev ? prev.muted : false;
    const transceiver = this.pub.addTransceiver(track, init);
    if (muted) transceiver.sender.replaceTrack(null);
    this.local.set(source, { source, track, transceiver, trackId: null, muted });
    return transceiver;
  }

  /** Publisher offer -> answer, one at a time. */
  negotiatePublisher(iceRestart) {
    const run = () => this.doNegotiatePublisher(iceRestart);
    this.pubChain = this.pubChain.then(run, run);
    return this.pubChain;
  }

  async doNegotiatePublisher(iceRestart) {
    const pc = this.pub;
    if (!pc || pc.signalingState === 'closed') return;
    const offer = await pc.createOffer({ iceRestart });
    await pc.setLocalDescription(offer);
    const tracks = [];
    for (const l of this.local.values()) {
      const mid = l.transceiver && l.transceiver.mid;
      if (mid != null && !l.transceiver.stopped) tracks.push({ mid, source: l.source });
    }
    const msg = { type: 'offer', sdp: offer.sdp, tracks };
    const answered = new Promise((resolve, reject) => {
      this.pubPending = { resolve, reject, msg };
    });
    this.send(msg); // if the WebSocket is down, sent again on resume
    let sdp;
    try {
      sdp = await answered;
    } catch (e) {
      if (pc.signalingState === 'have-local-offer') await pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
      throw e;
    }
    if (pc.signalingState === 'have-local-offer') await pc.setRemoteDescription({ type: 'answer', sdp });
  }

  async setMuted(source, muted) {
    const l = this.local.get(source);
    if (!l || l.muted === muted) return;
    l.muted = muted;
    // Stop sending altogether (no silence/black frames), and tell the server so it stops
    // forwarding and tells everyone.
    l.track.enabled = !muted;
    if (l.transceiver) await l.transceiver.sender.replaceTrack(muted ? null : l.track);
    if (l.trackId) this.send({ type: 'mute', track_id: l.trackId, muted });
    this.emit('local');
  }

  isMuted(source) {
    const l = this.local.get(source);
    return !l || l.muted;
  }

  async startScreenShare() {
    if (this.local.has('screen_share') || !this.pub) return;
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio: false });
    const track = stream.getVideoTracks()[0];
    if ('contentHint' in track) track.contentHint = 'detail';
    track.addEventListener('ended', () => this.stopScreenShare());
    this.addLocal('screen_share', track, { direction: 'sendonly', streams: [stream] });
    this.emit('local');
    await this.negotiatePublisher(false);
  }

  async stopScreenShare() {
    const l = this.local.get('screen_share');
    if (!l) return;
    this.local.delete('screen_share');
    l.track.stop();
    if (l.trackId) this.send({ type: 'unpublish', track_id: l.trackId });
    if (l.transceiver) {
      await l.transceiver.sender.replaceTrack(null);
      l.transceiver.direction = 'inactive';
    }
    this.emit('local');
  }

  // ---- subscriber ------------------------------------------------------------------

  onServerOffer(msg) {
    const run = async () => {
      if (this.lastAnswer && this.lastAnswer.offer_id === msg.offer_id) {
        // Re-sent after a resume, already answered: send the same answer.
        this.send({ type: 'answer', sdp: this.lastAnswer.sdp, offer_id: msg.offer_id });
        return;
      }
      if (!this.sub) this.sub = this.newPc('subscriber');
      const pc = this.sub;
      this.midMap = new Map(msg.tracks.map((t) => [t.mid, t]));
      await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      this.lastAnswer = { offer_id: msg.offer_id, sdp: answer.sdp };
      this.send({ type: 'answer', sdp: answer.sdp, offer_id: msg.offer_id });
      this.syncRemote();
    };
    this.subChain = this.subChain.then(run, run).catch((e) => this.emit('error', { code: 'subscriber', message: String(e) }));
  }

  /** Which received track each transceiver carries, from the offer's `tracks`. */
  syncRemote() {
    const seen = new Set();
    for (const tr of this.sub.getTransceivers()) {
      const m = tr.mid != null && this.midMap.get(tr.mid);
      if (!m || tr.stopped || tr.currentDirection === 'inactive') continue;
      seen.add(m.track_id);
      const cur = this.remote.get(m.track_id);
      if (!cur || cur.track !== tr.receiver.track) {
        this.remote.set(m.track_id, { track: tr.receiver.track, participantId: m.participant_id, kind: tr.receiver.track.kind, mid: tr.mid });
      }
    }
    for (const id of [...this.remote.keys()]) if (!seen.has(id)) this.remote.delete(id);
    this.emit('tracks');
  }

  /** Highest simulcast layer wanted for a remote video track, or 'paused'. */
  setQuality(trackId, q) {
    if (this.wantedQuality.get(trackId) === q) return;
    if (!this.remote.has(trackId)) return;
    const msg = q === 'paused' ? { type: 'set_quality', track_id: trackId, max_quality: 'low', paused: true } : { type: 'set_quality', track_id: trackId, max_quality: q, paused: false };
    if (this.send(msg)) this.wantedQuality.set(trackId, q);
  }

  // ---- ICE -------------------------------------------------------------------------

  checkIce(kind) {
    const pc = kind === 'publisher' ? this.pub : this.sub;
    if (!pc || this.leaving) return;
    const s = pc.iceConnectionState;
    this.emit('ice', { pc: kind, state: s });
    if (s === 'disconnected' || s === 'failed') {
      if (this.iceTimers[kind]) return;
      const delay = s === 'failed' ? 0 : ICE_DISCONNECTED_GRACE_MS;
      this.iceTimers[kind] = setTimeout(() => {
        this.iceTimers[kind] = null;
        const now = pc.iceConnectionState;
        if (now !== 'disconnected' && now !== 'failed') return;
        this.restartIce(kind);
        // Still not connected after a while: try again.
        this.iceTimers[kind] = setTimeout(() => {
          this.iceTimers[kind] = null;
          this.checkIce(kind);
        }, ICE_RESTART_RETRY_MS);
      }, delay);
    } else if (s === 'connected' || s === 'completed') {
      clearTimeout(this.iceTimers[kind]);
      this.iceTimers[kind] = null;
    }
  }

  restartIce(kind) {
    this.counters.iceRestarts[kind]++;
    if (kind === 'publisher') {
      this.negotiatePublisher(true).catch((e) => this.emit('error', { code: 'ice_restart', message: String(e) }));
    } else {
      this.pendingSubRestart = !this.send({ type: 'ice_restart' });
    }
  }

  // ---- leaving ---------------------------------------------------------------------

  async leave() {
    if (this.state === 'left') return;
    this.leaving = true;
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: 'leave' }));
      // The server answers `left` and closes; don't wait long for it.
      await new Promise((resolve) => {
        const t = setTimeout(resolve, 1_000);
        ws.addEventListener('close', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    this.teardown('left');
  }

  closePeers() {
    for (const k of ['publisher', 'subscriber']) {
      clearTimeout(this.iceTimers[k]);
      this.iceTimers[k] = null;
    }
    if (this.pub) this.pub.close();
    if (this.sub) this.sub.close();
    this.pub = null;
    this.sub = null;
    this.lastAnswer = null;
    if (this.pubPending) {
      this.pubPending.reject(new Error('connection closed'));
      this.pubPending = null;
    }
  }

  teardown(state) {
    clearInterval(this.pingTimer);
    clearTimeout(this.reconnectTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close();
    }
    this.closePeers();
    for (const l of this.local.values()) if (l.source === 'screen_share') l.track.stop();
    this.remote.clear();
    this.setState(state);
    this.emit('tracks');
  }

  // ---- statistics (for the UI and the tests) ---------------------------------------

  /** Per received track: bytes, packets, decoded frames, size. */
  async inboundStats() {
    if (!this.sub) return [];
    const report = await this.sub.getStats();
    const out = [];
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const m = this.midMap.get(s.mid);
      if (!m) return;
      out.push({
        participantId: m.participant_id,
        trackId: m.track_id,
        kind: s.kind,
        bytesReceived: s.bytesReceived || 0,
        packetsReceived: s.packetsReceived || 0,
        framesDecoded: s.framesDecoded || 0,
        frameWidth: s.frameWidth || 0,
        frameHeight: s.frameHeight || 0,
      });
    });
    return out;
  }

  /** Per sent stream (one per simulcast layer): rid, bytes, size. */
  async outboundStats() {
    if (!this.pub) return [];
    const report = await this.pub.getStats();
    const out = [];
    report.forEach((s) => {
      if (s.type !== 'outbound-rtp') return;
      out.push({ mid: s.mid, rid: s.rid || null, kind: s.kind, bytesSent: s.bytesSent || 0, frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0, active: s.active });
    });
    return out;
  }
}

/** Puts VP8 first for a camera transceiver (simulcast works with it everywhere). */
function preferVp8(transceiver) {
  if (!transceiver.setCodecPreferences || !RTCRtpSender.getCapabilities) return;
  const caps = RTCRtpSender.getCapabilities('video');
  if (!caps) return;
  const vp8 = caps.codecs.filter((c) => c.mimeType.toLowerCase() === 'video/vp8');
  const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== 'video/vp8');
  if (vp8.length) transceiver.setCodecPreferences([...vp8, ...rest]);
}
