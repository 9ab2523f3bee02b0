// Voice messages: recorded with MediaRecorder (Opus in WebM, or what the browser has),
// with a waveform sampled while recording (up to 128 values 0-255, as docs/chat.md
// describes the attachment), and a player that fetches the file with the bearer header.

const SAMPLE_MS = 50;
const MAX_SAMPLES = 128;

function pickType() {
  for (const t of ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/mp4', 'audio/webm']) {
    if (window.MediaRecorder && MediaRecorder.isTypeSupported(t)) return t;
  }
  return '';
}

export class VoiceRecorder {
  /** Starts recording from the microphone; `onTick(ms)` while it runs. */
  static async start(onTick) {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
    return new VoiceRecorder(stream, onTick);
  }

  constructor(stream, onTick) {
    this.stream = stream;
    const type = pickType();
    this.rec = new MediaRecorder(stream, type ? { mimeType: type, audioBitsPerSecond: 32_000 } : {});
    this.chunks = [];
    this.rec.ondataavailable = (e) => e.data.size && this.chunks.push(e.data);
    this.levels = [];
    this.ctx = new AudioContext();
    const src = this.ctx.createMediaStreamSource(stream);
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 1024;
    src.connect(this.analyser);
    const buf = new Uint8Array(this.analyser.fftSize);
    this.startedAt = performance.now();
    this.timer = setInterval(() => {
      this.analyser.getByteTimeDomainData(buf);
      let sum = 0;
      for (const v of buf) sum += (v - 128) * (v - 128);
      this.levels.push(Math.sqrt(sum / buf.length) / 128);
      onTick(performance.now() - this.startedAt);
    }, SAMPLE_MS);
    this.rec.start(250);
  }

  /** Stops; resolves `{file, duration_ms, waveform}` (or null when cancelled). */
  stop(cancel = false) {
    clearInterval(this.timer);
    const duration = Math.round(performance.now() - this.startedAt);
    return new Promise((resolve) => {
      this.rec.onstop = () => {
        for (const t of this.stream.getTracks()) t.stop();
        this.ctx.close();
        if (cancel) return resolve(null);
        const type = (this.rec.mimeType || 'audio/webm').split(';')[0];
        const ext = type.includes('ogg') ? 'ogg' : type.includes('mp4') ? 'm4a' : 'webm';
        const file = new File(this.chunks, `voice-${new Date().toISOString().replace(/[:.]/g, '-')}.${ext}`, { type });
        resolve({ file, duration_ms: duration, waveform: waveform(this.levels) });
      };
      this.rec.stop();
    });
  }
}

/** `levels` (0..1) down to at most 128 values 0..255, scaled to the loudest. */
export function waveform(levels) {
  if (!levels.length) return [];
  const n = Math.min(MAX_SAMPLES, levels.length);
  const out = [];
  for (let i = 0; i < n; i++) {
    const a = Math.floor((i * levels.length) / n);
    const b = Math.max(a + 1, Math.floor(((i + 1) * levels.length) / n));
    out.push(Math.max(...levels.slice(a, b)));
  }
  const top = Math.max(...out) || 1;
  return out.map((v) => Math.round((v / top) * 255));
}

const fmt = (ms) => `${Math.floor(ms / 60_000)}:${String(Math.floor(ms / 1000) % 60).padStart(2, '0')}`;
export { fmt as fmtDuration };

/**
 * A voice message player: a play button, the waveform (bars), the duration.
 * `fetchBlob()` fetches the audio (with the bearer header); it is fetched at the
 * first play only.
 */
export function voicePlayer(a, fetchBlob) {
  const box = document.createElement('div');
  box.className = 'voice';
  const play = document.createElement('button');
  play.type = 'button';
  play.className = 'play';
  play.textContent = '▶';
  play.ariaLabel = `Play voice message, ${fmt(a.duration_ms || 0)}`;
  const bars = document.createElement('span');
  bars.className = 'wave';
  bars.setAttribute('aria-hidden', 'true');
  for (const v of a.waveform && a.waveform.length ? a.waveform : [128]) {
    const bar = document.createElement('i');
    bar.style.height = `${Math.max(8, Math.round((v / 255) * 100))}%`;
    bars.append(bar);
  }
  const time = document.createElement('span');
  time.className = 'dur';
  time.textContent = fmt(a.duration_ms || 0);
  const audio = document.createElement('audio');
  audio.preload = 'none';
  let loaded = null;
  play.addEventListener('click', async () => {
    if (!audio.paused) {
      audio.pause();
      return;
    }
    if (!loaded) {
      play.disabled = true;
      try {
        loaded = URL.createObjectURL(await fetchBlob());
        audio.src = loaded;
      } finally {
        play.disabled = false;
      }
    }
    await audio.play();
  });
  audio.addEventListener('play', () => {
    play.textContent = '⏸';
    box.classList.add('playing');
  });
  audio.addEventListener('pause', () => {
    play.textContent = '▶';
    box.classList.remove('playing');
  });
  audio.addEventListener('timeupdate', () => {
    time.textContent = fmt(audio.currentTime * 1000);
    const done = audio.duration && Number.isFinite(audio.duration) ? audio.currentTime / audio.duration : 0;
    const k = Math.floor(done * bars.children.length);
    [...bars.children].forEach((b, i) => b.classList.toggle('done', i < k));
  });
  audio.addEventListener('ended', () => {
    time.textContent = fmt(a.duration_ms || 0);
    box.dataset.played = '1';
  });
  box.append(play, bars, time, audio);
  return box;
}
