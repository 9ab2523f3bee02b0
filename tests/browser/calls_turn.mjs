// A call whose media can only go through TURN: headless Chromium, forced to
// iceTransportPolicy 'relay', publishes into the call's SFU room with WHIP and plays it
// back with WHEP, with the call token and the TURN credentials maxd's signalling minted.
// Run by tests/calls_turn.rs, which starts coturn and maxd and cuts the direct path to
// the media port with nftables.
//
// Environment: MAXD_URL, ROOM, WHIP_TOKEN, WHEP_TOKEN, ICE_GOOD, ICE_WRONG, ICE_EXPIRED
// (JSON iceServers lists), WORK_DIR, CHROMIUM.
// Output: one JSON object per line; exit status 0 only if every check passed. Every
// wait polls with a deadline; nothing sleeps to synchronise.

import { mkdirSync, mkdtempSync } from 'node:fs';
import { join as pathJoin } from 'node:path';
import { chromium } from 'playwright-core';

const env = process.env;
const WORK_DIR = env.WORK_DIR || env.TMPDIR || '/tmp';
const started = Date.now();
const out = (event, data = {}) => console.log(JSON.stringify({ event, t_ms: Date.now() - started, ...data }));

// The whole run may take this long; then it fails rather than hang the test.
setTimeout(() => { out('failed', { error: 'overall deadline' }); process.exit(1); }, 90_000).unref();

const tmp = mkdtempSync(pathJoin(WORK_DIR, 'turn-'));
const profile = pathJoin(tmp, 'profile');
mkdirSync(profile);
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream'],
  env: { ...env, TMPDIR: tmp },
});
const page = ctx.pages()[0] || (await ctx.newPage());
const logs = [];
page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
let ok = false;
try {
  await page.goto(`${env.MAXD_URL}/`);
  const result = await page.evaluate(async (cfg) => {
    const until = async (what, ms, fn) => {
      const deadline = Date.now() + ms;
      for (;;) {
        const v = await fn();
        if (v) return v;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    // Relay candidates gathered with the given credentials.
    const relayCandidates = async (iceServers) => {
      const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
      const found = [];
      pc.onicecandidate = (e) => { if (e.candidate && e.candidate.type === 'relay') found.push(e.candidate.address); };
      pc.addTransceiver('audio');
      await pc.setLocalDescription(await pc.createOffer());
      await until('gathering complete', 20_000, () => pc.iceGatheringState === 'complete');
      pc.close();
      return found.length;
    };
    const gathered = {
      good: await relayCandidates(cfg.good),
      wrong: await relayCandidates(cfg.wrong),
      expired: await relayCandidates(cfg.expired),
    };
    // The selected candidate pair's local and remote types.
    const pairTypes = async (pc) => {
      const stats = await pc.getStats();
      let pair;
      stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
      if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
      if (!pair) return null;
      return { local: stats.get(pair.localCandidateId).candidateType, remote: stats.get(pair.remoteCandidateId).candidateType };
    };
    // WHIP/WHEP: offer after gathering, so the relay candidates are in the SDP.
    const negotiate = async (pc, path, token) => {
      await pc.setLocalDescription(await pc.createOffer());
      await until('gathering complete', 20_000, () => pc.iceGatheringState === 'complete');
      const r = await fetch(path, { method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` }, body: pc.localDescription.sdp });
      if (r.status !== 201) throw new Error(`${path}: ${r.status} ${await r.text()}`);
      await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
    };
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 180 } });
    const pub = new RTCPeerConnection({ iceServers: cfg.good, iceTransportPolicy: 'relay' });
    for (const t of stream.getTracks()) pub.addTransceiver(t, { direction: 'sendonly' });
    await negotiate(pub, `/whip/${cfg.room}`, cfg.whip);
    await until('publisher connected', 20_000, () => pub.connectionState === 'connected');
    const sub = new RTCPeerConnection({ iceServers: cfg.good, iceTransportPolicy: 'relay' });
    sub.addTransceiver('audio', { direction: 'recvonly' });
    sub.addTransceiver('video', { direction: 'recvonly' });
    await negotiate(sub, `/whep/${cfg.room}`, cfg.whep);
    await until('player connected', 20_000, () => sub.connectionState === 'connected');
    const decoded = await until('video decoded through TURN', 30_000, async () => {
      let frames = 0;
      (await sub.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0; });
      return frames >= 10 && frames;
    });
    return { gathered, publisher: await pairTypes(pub), player: await pairTypes(sub), decoded };
  }, { room: env.ROOM, whip: env.WHIP_TOKEN, whep: env.WHEP_TOKEN, good: JSON.parse(env.ICE_GOOD), wrong: JSON.parse(env.ICE_WRONG), expired: JSON.parse(env.ICE_EXPIRED) });
  out('result', result);
  ok = true;
} catch (e) {
  out('failed', { error: String(e && e.message || e), logs: logs.slice(-20) });
} finally {
  await ctx.close();
}
process.exit(ok ? 0 : 1);
