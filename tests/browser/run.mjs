// Drives headless Chromium through the maxd web client, the way a person would: open
// the page, type room and name, click Join. Run by tests/browser.rs, which starts maxd.
//
//   node run.mjs call    three browsers in one room (media, grid, simulcast, mute,
//                        screen share, reconnect, leave, screenshot, join-to-first-frame)
//   node run.mjs whip    a page publishes with WHIP, another plays with WHEP ($WHIP_TOKEN,
//                        $WHEP_TOKEN), standard RTCPeerConnection code only
//   node run.mjs mixed   one browser in a room with a non-browser client named $PEER_NAME;
//                        prints {"event":"ready"} and stays until a line "done" on stdin
//   node run.mjs blip    two browsers; the caller cuts the media port off ("blocked" on
//                        stdin) and restores it ("unblocked"): both recover by themselves
//
// Environment: MAXD_URL (http://127.0.0.1:PORT), ARTIFACT_DIR (screenshots), WORK_DIR
// (browser profiles and TMPDIR), ROOM, PEER_NAME, SAMPLES, CHROMIUM (/usr/bin/chromium).
// Output: one JSON object per line on stdout; exit status 0 only if every check passed.
// Every wait polls with a deadline; nothing sleeps to synchronise.

import { mkdirSync, mkdtempSync } from 'node:fs';
import { join as pathJoin } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const URL_BASE = process.env.MAXD_URL;
const ARTIFACT_DIR = process.env.ARTIFACT_DIR || '.';
const WORK_DIR = process.env.WORK_DIR || process.env.TMPDIR || '/tmp';
const ROOM = process.env.ROOM || 'browser-test';
const SAMPLES = Number(process.env.SAMPLES || 5);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Small fake video keeps three encoders and six decoders within two cores.
const VIDEO = process.env.VIDEO || '320x180';

const FLAGS = [
  '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  // Chromium sends fewer simulcast layers than asked for below 960x540 unless told not to;
  // the small test video should still go out as three layers.
  '--force-fieldtrials=WebRTC-LegacySimulcastLayerLimit/Disabled/',
];

const started = Date.now();
function out(event, data = {}) {
  console.log(JSON.stringify({ event, t_ms: Date.now() - started, ...data }));
}

class Failure extends Error {}
function check(cond, what) {
  if (!cond) throw new Failure(what);
}

/** Polls `fn` (async) until it returns a truthy value; fails after `ms` naming `what`. */
async function until(what, ms, fn, everyMs = 100) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Failure(`timed out after ${ms} ms waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const browsers = [];
const pages = [];

async function launch(name) {
  const tmp = mkdtempSync(pathJoin(WORK_DIR, `${name}-`));
  const profile = pathJoin(tmp, 'profile');
  mkdirSync(profile);
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 960, height: 540 },
    env: { ...process.env, TMPDIR: tmp },
  });
  browsers.push(ctx);
  const page = ctx.pages()[0] || (await ctx.newPage());
  const b = { name, ctx, page, logs: [] };
  pages.push(b);
  page.on('console', (m) => {
    b.logs.push(`${m.type()}: ${m.text()}`);
    if (b.logs.length > 200) b.logs.shift();
  });
  page.on('pageerror', (e) => b.logs.push(`pageerror: ${e.message}`));
  await page.goto(`${URL_BASE}/?video=${VIDEO}`);
  return b;
}

/** Types room and name and clicks Join, as a person would. */
async function join(b, room = ROOM) {
  await b.page.fill('#room', room);
  await b.page.fill('#name', b.name);
  await b.page.click('#join');
  await until(`${b.name} joined`, 10_000, () => b.page.evaluate(() => window.maxd.call && window.maxd.call.state === 'joined'));
  b.id = await b.page.evaluate(() => window.maxd.call.me.id);
}

const inbound = (b) => b.page.evaluate(() => window.maxd.inboundStats());

/** Sum of a stat over what `b` receives from participant `from` of `kind`. */
async function received(b, from, kind, field) {
  const s = await inbound(b);
  return s.filter((x) => x.participantId === from && x.kind === kind).reduce((a, x) => a + x[field], 0);
}

/** Waits until `b` decodes video frames from and receives audio bytes from each of `others`. */
async function waitMediaFrom(b, others, ms) {
  return until(`${b.name} decoding video and receiving audio from ${others.map((o) => o.name)}`, ms, async () => {
    const s = await inbound(b);
    const ok = others.every((o) => s.some((x) => x.participantId === o.id && x.kind === 'video' && x.framesDecoded > 0) &&
      s.some((x) => x.participantId === o.id && x.kind === 'audio' && x.bytesReceived > 0));
    return ok && s;
  });
}

/** Names shown in `b`'s grid. */
const gridNames = (b) => b.page.$$eval('#grid .tile', (els) => els.map((e) => e.dataset.name));

/** Waits until the audio bytes `b` receives from `from` stop growing (stay put for 1.5 s). */
async function audioStops(b, from, ms) {
  let last = -1;
  let since = Date.now();
  return until(`audio from ${from.name} stopping at ${b.name}`, ms, async () => {
    const v = await received(b, from.id, 'audio', 'bytesReceived');
    if (v !== last) {
      last = v;
      since = Date.now();
      return false;
    }
    return Date.now() - since >= 1_500 && v;
  }, 250);
}

async function audioGrows(b, from, ms) {
  const base = await received(b, from.id, 'audio', 'bytesReceived');
  return until(`audio from ${from.name} flowing at ${b.name}`, ms, async () => (await received(b, from.id, 'audio', 'bytesReceived')) > base + 2_000);
}

function percentile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function scenarioCall() {
  const [alice, bob, carol] = await Promise.all(['Alice', 'Bob', 'Carol'].map(launch));
  const all = [alice, bob, carol];
  out('launched');
  // Alice first (her tracks become the first m-lines of the others' subscriber
  // connections, which her leaving later must not break), then Bob and Carol together.
  const clicked = Date.now();
  await join(alice);
  await Promise.all([bob, carol].map((b) => join(b)));
  await Promise.all(all.map((b) => waitMediaFrom(b, all.filter((o) => o !== b), 10_000 - (Date.now() - clicked))));
  out('media_flowing', { ms_since_join_click: Date.now() - clicked });

  for (const b of all) {
    const names = await until(`${b.name}'s grid showing three people`, 5_000, async () => {
      const n = await gridNames(b);
      return n.length === 3 && n;
    });
    check(names.some((n) => n.startsWith(`${b.name} (you)`)), `${b.name} sees own preview: ${names}`);
    for (const o of all.filter((o) => o !== b)) check(names.includes(o.name), `${b.name} sees ${o.name}: ${names}`);
  }
  // Every tile shows decoded video before the screenshot.
  await until('all tiles rendering video', 10_000, () => alice.page.$$eval('#grid .tile', (els) => els.every((e) => e.classList.contains('has-video') && e.querySelector('video').videoWidth > 0)));
  const shot = pathJoin(ARTIFACT_DIR, 'three-person-call.png');
  await alice.page.screenshot({ path: shot });
  out('screenshot', { path: shot });

  // Simulcast: the camera goes out as three layers (rids q, h, f).
  const layers = await until('Bob sending three simulcast layers', 10_000, async () => {
    const o = await bob.page.evaluate(() => window.maxd.outboundStats());
    const v = o.filter((x) => x.kind === 'video' && x.bytesSent > 0 && x.frameHeight > 0);
    return v.length === 3 && v;
  });
  out('simulcast', { layers: layers.map((l) => ({ rid: l.rid, w: l.frameWidth, h: l.frameHeight })) });

  // set_quality follows the rendered size: a tiny tile gets the lowest layer.
  const bobCamAtCarol = async () => {
    const s = await inbound(carol);
    return s.find((x) => x.participantId === bob.id && x.kind === 'video');
  };
  // A tile about 260 px high asks for the middle layer (`medium`), and gets it.
  const heights = layers.map((l) => l.frameHeight).sort((a, b) => a - b);
  check(heights.length === 3, `three layers sent: ${heights}`);
  const before = await until(`Carol receiving Bob's middle layer (${heights[1]} px high)`, 15_000, async () => {
    const s = await bobCamAtCarol();
    return s && s.frameHeight === heights[1] && s;
  });
  await carol.page.evaluate((id) => {
    const v = document.querySelector(`#grid .tile[data-participant="${id}"] video`);
    v.style.cssText = 'width:60px;height:34px;position:absolute';
  }, bob.id);
  const small = await until('Carol receiving the low layer of Bob after shrinking his tile', 10_000, async () => {
    const s = await bobCamAtCarol();
    return s && s.frameHeight === heights[0] && s;
  });
  out('set_quality', { before: [before.frameWidth, before.frameHeight], small: [small.frameWidth, small.frameHeight] });
  await carol.page.evaluate((id) => {
    document.querySelector(`#grid .tile[data-participant="${id}"] video`).style.cssText = '';
  }, bob.id);

  // Bob mutes his microphone: his audio bytes stop at Alice and Carol.
  await audioGrows(alice, bob, 5_000);
  await bob.page.click('#mic');
  await until('mic button showing muted', 2_000, async () => (await bob.page.getAttribute('#mic', 'aria-pressed')) === 'true');
  await Promise.all([alice, carol].map((b) => audioStops(b, bob, 8_000)));
  await until('Alice showing Bob muted', 5_000, () => alice.page.$eval(`#grid .tile[data-participant="${bob.id}"] .mic-off`, (e) => !e.hidden));
  out('mute_stops_audio');
  await bob.page.click('#mic');
  await Promise.all([alice, carol].map((b) => audioGrows(b, bob, 8_000)));
  out('unmute_resumes_audio');

  // Bob shares his screen: the others get a tile of its own and decode it; when he
  // stops, the tile goes.
  await bob.page.click('#screen');
  for (const b of [alice, carol]) {
    const id = await until(`${b.name} showing Bob's screen`, 10_000, () => b.page.evaluate(() => {
      const t = document.querySelector('#grid .tile.screen[data-name="Bob (screen)"]');
      return t && t.dataset.track;
    }));
    await until(`${b.name} decoding Bob's screen`, 10_000, async () => (await inbound(b)).some((x) => x.trackId === id && x.framesDecoded > 0));
  }
  await bob.page.click('#screen');
  await Promise.all([alice, carol].map((b) => until(`${b.name} dropping Bob's screen tile`, 5_000, async () => !(await gridNames(b)).includes('Bob (screen)'))));
  out('screen_share');

  // A network blip on Carol's signalling: she resumes the session by herself.
  await carol.page.evaluate(() => window.maxd.dropSignalling());
  await until('Carol resumed', 10_000, () => carol.page.evaluate(() => window.maxd.call.state === 'joined' && window.maxd.call.counters.resumes === 1));
  check((await gridNames(bob)).includes('Carol'), 'Bob still sees Carol after her blip');
  check(carol.id === (await carol.page.evaluate(() => window.maxd.call.me.id)), 'same participant after resume');
  // ICE restart on both of her connections keeps media flowing both ways.
  await carol.page.evaluate(() => {
    window.maxd.call.restartIce('publisher');
    window.maxd.call.restartIce('subscriber');
  });
  await audioGrows(bob, carol, 8_000);
  await audioGrows(carol, bob, 8_000);
  out('resume_and_ice_restart', { participant: carol.id });

  // A session the server no longer has (as after the resume window): the resume is
  // refused and Carol joins again from scratch, as a new participant with media.
  await carol.page.evaluate(() => {
    window.maxd.call.sessionId = 'gone';
    window.maxd.dropSignalling();
  });
  await until('Carol joined again', 10_000, () => carol.page.evaluate(() => window.maxd.call.state === 'joined' && window.maxd.call.counters.rejoins === 1));
  const carolOld = carol.id;
  carol.id = await carol.page.evaluate(() => window.maxd.call.me.id);
  check(carol.id !== carolOld, 'a new participant after the re-join');
  await Promise.all([alice, bob].map((b) => waitMediaFrom(b, [carol], 10_000)));
  await waitMediaFrom(carol, [alice, bob], 10_000);
  await until("Bob's grid with the new Carol only", 5_000, () => bob.page.evaluate((id) => {
    const tiles = [...document.querySelectorAll('#grid .tile')];
    return tiles.length === 3 && tiles.some((t) => t.dataset.participant === id);
  }, carol.id));
  out('rejoin_after_lost_session', { participant: carol.id });

  // Alice, who joined first, leaves: the others' grids drop her tile, and they go on
  // hearing each other.
  await alice.page.click('#leave');
  await Promise.all([bob, carol].map((b) => until(`${b.name}'s grid without Alice`, 5_000, async () => {
    const n = await gridNames(b);
    return n.length === 2 && !n.includes('Alice');
  })));
  check(await alice.page.isVisible('#join'), 'Alice is back in the lobby');
  check((await alice.page.textContent('#lobby-error')) === '', 'no error shown after leaving');
  await audioGrows(bob, carol, 5_000);
  await audioGrows(carol, bob, 5_000);
  out('leave_updates_grids');

  // Join-click to first remote frame: Alice joins the call of Bob and Carol again.
  const samples = [];
  const joined = [];
  for (let i = 0; i < SAMPLES; i++) {
    await join(alice);
    const m = await until('Alice decoding a remote frame', 10_000, () => alice.page.evaluate(() => window.maxd.metrics.firstRemoteFrameAt && window.maxd.metrics));
    samples.push(m.firstRemoteFrameAt - m.joinClickAt);
    // Click to `joined` (token, camera and microphone, WebSocket, join).
    if (m.joinedAt) joined.push(m.joinedAt - m.joinClickAt);
    await alice.page.click('#leave');
    await until("Bob's grid without Alice", 5_000, async () => (await gridNames(bob)).length === 2);
  }
  out('join_to_first_frame', { samples_ms: samples.map((x) => Math.round(x)), p50_ms: Math.round(percentile(samples, 50)), max_ms: Math.round(Math.max(...samples)), joined_p50_ms: joined.length ? Math.round(percentile(joined, 50)) : null });
}

async function scenarioMixed() {
  const peerName = process.env.PEER_NAME;
  const b = await launch('Browser');
  await join(b);
  const peer = await until(`${peerName} in the room`, 10_000, () => b.page.evaluate((n) => {
    const p = [...window.maxd.call.participants.values()].find((x) => x.identity === n || x.name === n);
    return p && p.id;
  }, peerName));
  // The non-browser peer sends synthetic payloads: the browser receives its audio and
  // video RTP (it cannot decode them into pictures).
  await until(`browser receiving audio and video from ${peerName}`, 10_000, async () => {
    const s = await inbound(b);
    return ['audio', 'video'].every((k) => s.some((x) => x.participantId === peer && x.kind === k && x.packetsReceived > 20));
  });
  out('browser_receives', { from: peer });
  out('ready', { participant: b.id });
  await expectLine('done');
  await b.page.click('#leave');
}

/** Reads lines from stdin, one at a time, for scenarios the Rust side steers. */
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function expectLine(want) {
  const { value, done } = await stdinLines.next();
  check(!done && value.trim() === want, `expected "${want}" on stdin, got ${done ? 'EOF' : JSON.stringify(value)}`);
}

const iceOf = (b) => b.page.evaluate(() => ({
  publisher: window.maxd.call.pub && window.maxd.call.pub.iceConnectionState,
  subscriber: window.maxd.call.sub && window.maxd.call.sub.iceConnectionState,
  restarts: window.maxd.call.counters.iceRestarts,
}));

async function scenarioBlip() {
  const [a, b] = await Promise.all(['Ann', 'Ben'].map(launch));
  await join(a);
  await join(b);
  await Promise.all([waitMediaFrom(a, [b], 10_000), waitMediaFrom(b, [a], 10_000)]);
  out('ready');
  // The Rust side drops every packet to and from the media port (UDP and ICE-TCP).
  await expectLine('blocked');
  for (const x of [a, b]) {
    // ICE goes `disconnected`, and once that has lasted the client restarts ICE on both
    // connections (which cannot complete yet).
    await until(`${x.name}'s connections noticing the outage and restarting ICE`, 20_000, async () => {
      const s = await iceOf(x);
      const bad = (st) => st === 'disconnected' || st === 'failed' || st === 'checking';
      return bad(s.publisher) && bad(s.subscriber) && s.restarts.publisher >= 1 && s.restarts.subscriber >= 1 && s;
    }, 250);
  }
  out('media_down');
  await expectLine('unblocked');
  // Both recover by themselves over the restarted ICE; media flows again.
  for (const x of [a, b]) {
    const s = await until(`${x.name} reconnecting`, 20_000, async () => {
      const s = await iceOf(x);
      const ok = (st) => st === 'connected' || st === 'completed';
      return ok(s.publisher) && ok(s.subscriber) && s;
    }, 250);
    out('reconnected', { who: x.name, ice_restarts: s.restarts });
  }
  await audioGrows(a, b, 10_000);
  await audioGrows(b, a, 10_000);
  const frames = async (x, from) => received(x, from.id, 'video', 'framesDecoded');
  const base = await frames(a, b);
  await until('Ann decoding Ben again', 10_000, async () => (await frames(a, b)) > base + 10);
  check(a.id === (await a.page.evaluate(() => window.maxd.call.me.id)), 'same session, no re-join');
}

/**
 * WHIP from one page and WHEP in another, with nothing but `RTCPeerConnection` and
 * `fetch` (no maxd code): the player decodes the publisher's video at the published
 * size. The player's page comes from another origin (localhost vs 127.0.0.1), so its
 * requests go through CORS preflight as a browser-based WHEP tool's would.
 */
async function scenarioWhip() {
  const [pub, view] = await Promise.all(['whip', 'whep'].map(launch));
  await pub.page.goto(`${URL_BASE}/healthz`);
  await view.page.goto(`${URL_BASE.replace('127.0.0.1', 'localhost')}/healthz`);
  const [w, h] = VIDEO.split('x').map(Number);
  // POSTs the local offer to `url`; applies the answer; keeps the session for DELETE.
  const exchange = async ({ base, path, token }) => {
    const pc = window.pc;
    await pc.setLocalDescription(await pc.createOffer());
    const r = await fetch(`${base}${path}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
    const body = await r.text();
    if (r.status !== 201) throw new Error(`POST ${path}: ${r.status} ${body}`);
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    window.session = { location: new URL(r.headers.get('Location'), base).href, token };
    return { status: r.status, location: r.headers.get('Location'), etag: r.headers.get('ETag') };
  };
  const created = await pub.page.evaluate(async ({ w, h, args, exchange }) => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: { exact: w }, height: { exact: h } } });
    window.pc = new RTCPeerConnection();
    for (const t of stream.getTracks()) window.pc.addTransceiver(t, { direction: 'sendonly' });
    return (0, eval)(`(${exchange})`)(args);
  }, { w, h, args: { base: URL_BASE, path: `/whip/${ROOM}`, token: process.env.WHIP_TOKEN }, exchange: exchange.toString() });
  out('whip_created', created);
  const played = await view.page.evaluate(async ({ args, exchange }) => {
    window.pc = new RTCPeerConnection();
    window.pc.addTransceiver('audio', { direction: 'recvonly' });
    window.pc.addTransceiver('video', { direction: 'recvonly' });
    return (0, eval)(`(${exchange})`)(args);
  }, { args: { base: URL_BASE, path: `/whep/${ROOM}`, token: process.env.WHEP_TOKEN }, exchange: exchange.toString() });
  out('whep_created', played);
  const got = await until(`the WHEP page decoding ${w}x${h} video and receiving audio`, 15_000, () => view.page.evaluate(async ({ w, h }) => {
    const stats = await window.pc.getStats();
    let v;
    let a;
    stats.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      if (s.kind === 'video') v = s;
      else a = s;
    });
    return v && a && v.framesDecoded > 10 && v.frameWidth === w && v.frameHeight === h && a.bytesReceived > 1000 &&
      { framesDecoded: v.framesDecoded, frameWidth: v.frameWidth, frameHeight: v.frameHeight, audioBytes: a.bytesReceived };
  }, { w, h }));
  out('whep_decodes', got);
  for (const b of [view, pub]) {
    const status = await b.page.evaluate(async () => (await fetch(window.session.location, {
      method: 'DELETE', headers: { Authorization: `Bearer ${window.session.token}` },
    })).status);
    check(status === 200, `${b.name} DELETE answered ${status}`);
  }
  out('deleted');
}

async function main() {
  const which = process.argv[2];
  if (which === 'call') await scenarioCall();
  else if (which === 'mixed') await scenarioMixed();
  else if (which === 'blip') await scenarioBlip();
  else if (which === 'whip') await scenarioWhip();
  else throw new Failure(`unknown scenario ${which}`);
}

let code = 0;
try {
  await main();
  out('passed');
} catch (e) {
  code = 1;
  console.error(e instanceof Failure ? `FAILED: ${e.message}` : e);
  for (const b of pages) console.error(`--- ${b.name}'s console (last ${b.logs.length}):\n${b.logs.join('\n')}`);
} finally {
  await Promise.all(browsers.map((c) => c.close().catch(() => {})));
}
process.exit(code);
