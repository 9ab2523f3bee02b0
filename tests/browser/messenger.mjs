// Drives headless Chromium through the maxd messenger (web/index.html at `/`) as people
// would: log in with a phone number and the SMS code, open a dialog, write. Run by
// tests/browser.rs, which starts maxd with the signalling and relay roles.
//
//   node messenger.mjs chat   two users (a phone-sized and a desktop-sized window):
//                             login, dialog, messages with typing and ticks, reply,
//                             edit, reaction, delete; one goes offline, the other writes,
//                             it comes back and shows exactly what it missed; history by
//                             cursor; devices and log out; screenshots
//   node messenger.mjs file   a file sent in a dialog, the upload cut by a page reload
//                             and resumed, downloaded bit-exact by the other user; a
//                             voice message recorded (fake microphone) and played
//
//   node messenger.mjs refresh  with access tokens of a few seconds (the server's
//                             access_ttl): two tabs of one login keep working across
//                             several refreshes, never presenting a rotated refresh
//                             token (which would revoke the session)
//
// Environment: MAXD_URL, DATA_DIR (the server's data directory: the dev SMS provider's
// codes), ARTIFACT_DIR, WORK_DIR, CHROMIUM, FILE_MIB (size of the file scenario's file).
// Output: one JSON object per line on stdout; exit status 0 only if every check passed.
// Every wait polls a condition with a deadline; nothing sleeps to synchronise.

import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { join as pathJoin } from 'node:path';
import { chromium } from 'playwright-core';

const URL_BASE = process.env.MAXD_URL;
const DATA_DIR = process.env.DATA_DIR;
const ARTIFACT_DIR = process.env.ARTIFACT_DIR || '.';
const WORK_DIR = process.env.WORK_DIR || process.env.TMPDIR || '/tmp';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FILE_MIB = Number(process.env.FILE_MIB || 8);

const FLAGS = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
  // A fake microphone (a beep) for voice messages; playing needs no gesture.
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--autoplay-policy=no-user-gesture-required'];

const started = Date.now();
function out(event, data = {}) {
  console.log(JSON.stringify({ event, t_ms: Date.now() - started, ...data }));
}

class Failure extends Error {}
function check(cond, what) {
  if (!cond) throw new Failure(what);
}

async function until(what, ms, fn, everyMs = 50) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Failure(`timed out after ${ms} ms waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const contexts = [];
const people = [];

/** A browser of its own (profile, storage) for one person, with a window size. */
async function launch(name, phone, viewport) {
  const tmp = mkdtempSync(pathJoin(WORK_DIR, `${name}-`));
  const profile = pathJoin(tmp, 'profile');
  mkdirSync(profile);
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport,
    acceptDownloads: true,
    env: { ...process.env, TMPDIR: tmp },
  });
  contexts.push(ctx);
  const page = ctx.pages()[0] || (await ctx.newPage());
  const p = { name, phone, ctx, page, logs: [], tmp };
  people.push(p);
  // Console lines are kept for a failure report only: the client logs no message text.
  page.on('console', (m) => {
    p.logs.push(`${m.type()}: ${m.text()}`);
    if (p.logs.length > 100) p.logs.shift();
  });
  page.on('pageerror', (e) => p.logs.push(`pageerror: ${e.message}`));
  await page.goto(`${URL_BASE}/`);
  return p;
}

/** The latest code the dev SMS provider wrote for `e164`. */
function smsCode(e164) {
  const lines = readFileSync(pathJoin(DATA_DIR, 'sms-codes.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const hit = lines.reverse().find((l) => l.to === e164);
  return hit && hit.code;
}

/** Logs in through the UI: phone, the code, a display name. */
async function login(p) {
  const { page } = p;
  await page.fill('#phone', p.phone);
  await page.click('#send-code');
  await page.waitForSelector('#code-form:not([hidden])', { timeout: 10_000 });
  // The dev server says where its codes are.
  const hint = await page.textContent('#dev-sms');
  check(hint.includes('sms-codes.jsonl'), `dev hint names the codes file: ${hint}`);
  const e164 = (await page.textContent('#code-sent')).match(/\+\d+/)[0];
  const code = await until(`the SMS code for ${p.name}`, 5_000, () => smsCode(e164));
  await page.fill('#code', code);
  await page.click('#verify');
  await page.waitForSelector('#name-form:not([hidden])', { timeout: 10_000 });
  await page.fill('#display-name', p.name);
  await page.click('#save-name');
  await page.waitForSelector('#app:not([hidden])', { timeout: 10_000 });
  await live(p);
  p.userId = await page.evaluate(() => JSON.parse(localStorage.getItem('maxd.session')).user_id);
}

async function live(p, ms = 10_000) {
  try {
    return await until(`${p.name}'s socket live`, ms, () => p.page.evaluate(() => window.maxd.socket && window.maxd.socket.state === 'live'));
  } catch (e) {
    // The report says in what state the page was: socket, logged in, what it shows.
    const state = await p.page.evaluate(() => [window.maxd.socket && window.maxd.socket.state, JSON.stringify(window.maxd.socket && window.maxd.socket.counters),
      !!localStorage.getItem('maxd.session'), document.getElementById('conn').textContent, document.getElementById('login-error').textContent].join(' | '));
    throw new Failure(`${e.message}; page: ${state}`);
  }
}

/** Opens (or creates) the dialog with `other` from the New chat dialog. */
async function openDialogWith(p, other) {
  await p.page.click('#new-chat');
  await p.page.fill('#new-phones', other.phone);
  await p.page.click('#new-chat-go');
  await until(`${p.name}'s dialog with ${other.name} open`, 10_000, async () => (await p.page.isVisible('#chat')) && (await p.page.textContent('#chat-title')) === other.name);
}

/** Opens the chat named `name` from the list (on a phone the list is its own screen). */
async function openChat(p, name) {
  if (await p.page.isVisible('#back')) {
    if (await p.page.isVisible('#chat')) await p.page.click('#back');
  }
  await p.page.click(`#chat-list .chat-link:has(.name:text-is("${name}"))`);
  await until(`${p.name} in the chat with ${name}`, 10_000, async () => (await p.page.isVisible('#chat')) && (await p.page.textContent('#chat-title')) === name);
}

async function send(p, text) {
  await p.page.fill('#text', text);
  await p.page.press('#text', 'Enter');
}

/** Texts of the message rows, oldest first. */
const texts = (p) => p.page.$$eval('#message-list li.msg .body', (els) => els.map((e) => e.textContent));

async function waitText(p, text, ms = 10_000) {
  return until(`${p.name} showing "${text}"`, ms, async () => (await texts(p)).includes(text));
}

const row = (text) => `#message-list li.msg:has(.body:text-is("${text}"))`;

async function tick(p, text) {
  return p.page.getAttribute(`${row(text)} .ticks`, 'data-state');
}

async function menu(p, text, act, emoji) {
  await p.page.click(`${row(text)} .more`);
  await p.page.click(emoji ? `#menu [data-act=${act}][data-emoji="${emoji}"]` : `#menu [data-act=${act}]`);
}

async function shot(p, file) {
  const path = pathJoin(ARTIFACT_DIR, file);
  await p.page.screenshot({ path });
  out('screenshot', { path, who: p.name, size: p.page.viewportSize() });
}

async function twoUsers() {
  const [alice, bob] = await Promise.all([
    launch('Alice', '+7 916 100-00-01', { width: 390, height: 844 }),
    launch('Bob', '+7 916 100-00-02', { width: 1280, height: 720 }),
  ]);
  await Promise.all([login(alice), login(bob)]);
  out('logged_in');
  return [alice, bob];
}

async function scenarioChat() {
  const [alice, bob] = await twoUsers();
  await openDialogWith(alice, bob);
  await send(alice, 'Hello Bob 👋');
  await until("Alice's message acknowledged", 10_000, async () => (await tick(alice, 'Hello Bob 👋')) !== 'pending');

  // Bob sees the new chat with its last message and an unread count, then opens it.
  await until("Bob's list showing the dialog with one unread", 10_000, () => bob.page.evaluate(() => {
    const a = document.querySelector('#chat-list .chat-link');
    return a && a.querySelector('.name').textContent === 'Alice' && a.querySelector('.unread').textContent === '1' &&
      a.querySelector('.last').textContent === 'Hello Bob 👋';
  }));
  check(await alice.page.isVisible('#chat-status'), 'status line');
  await until("Alice's tick: delivered", 10_000, async () => (await tick(alice, 'Hello Bob 👋')) === 'delivered');
  await openChat(bob, 'Alice');
  await waitText(bob, 'Hello Bob 👋');
  await until("Alice's tick: read", 10_000, async () => (await tick(alice, 'Hello Bob 👋')) === 'read');
  await until("Bob's unread badge cleared", 5_000, async () => (await bob.page.textContent('#chat-list .unread')) === '');
  out('message_delivered_and_read');

  // Typing.
  await bob.page.fill('#text', 'Hi Ali');
  await until('Alice seeing Bob typing', 5_000, async () => (await alice.page.textContent('#chat-status')) === 'Bob is typing…');
  // A reply.
  await bob.page.fill('#text', '');
  await menu(bob, 'Hello Bob 👋', 'reply');
  await send(bob, 'Hi Alice!');
  await waitText(alice, 'Hi Alice!');
  await until('the reply quoting the message at Alice', 5_000, async () => (await alice.page.textContent(`${row('Hi Alice!')} .quote`)) === 'Hello Bob 👋');
  await until('Alice no longer seeing Bob typing', 6_000, async () => (await alice.page.textContent('#chat-status')) !== 'Bob is typing…');
  out('typing_and_reply');

  // Edit, reaction, delete.
  await send(alice, 'A typo hree');
  await waitText(bob, 'A typo hree');
  await menu(alice, 'A typo hree', 'edit');
  check((await alice.page.inputValue('#text')) === 'A typo hree', 'the edited text in the composer');
  await alice.page.fill('#text', 'A typo here');
  await alice.page.press('#text', 'Enter');
  await waitText(bob, 'A typo here');
  check(await bob.page.isVisible(`${row('A typo here')} .edited`), 'edited mark at Bob');
  await menu(bob, 'A typo here', 'react', '👍');
  await until('the reaction at Alice', 5_000, async () => (await alice.page.$$eval(`${row('A typo here')} .reaction`, (els) => els.map((e) => e.textContent))).includes('👍 1'));
  await send(alice, 'Delete me');
  await waitText(bob, 'Delete me');
  await menu(alice, 'Delete me', 'delete');
  await until('the deletion at Bob', 5_000, async () => !(await texts(bob)).includes('Delete me') && (await texts(bob)).includes('Message deleted'));
  out('edit_react_delete');

  // Bob's network goes away. Alice writes; Bob writes too (his outbox keeps it).
  const before = await texts(bob);
  await bob.ctx.setOffline(true);
  await until("Bob's socket down", 10_000, () => bob.page.evaluate(() => window.maxd.socket.state !== 'live'));
  const missed = ['While you were away 1', 'While you were away 2', 'While you were away 3'];
  for (const t of missed) await send(alice, t);
  for (const t of missed) await until(`"${t}" acknowledged`, 10_000, async () => (await tick(alice, t)) === 'sent');
  await send(bob, 'Sent while offline');
  check((await tick(bob, 'Sent while offline')) === 'pending', 'an offline message waits as pending');
  check(JSON.stringify(await texts(bob)) === JSON.stringify([...before, 'Sent while offline']), 'nothing arrives while offline');
  await shot(bob, 'messenger-offline-1280x720.png');
  await bob.ctx.setOffline(false);
  await live(bob, 20_000);
  const want = [...before, ...missed, 'Sent while offline'];
  const got = await until('Bob showing exactly what he missed', 10_000, async () => {
    const t = await texts(bob);
    return t.length >= want.length && missed.every((m) => t.includes(m)) && t;
  });
  check(JSON.stringify([...got].sort()) === JSON.stringify([...want].sort()), `Bob's messages after the drop: ${JSON.stringify(got)}`);
  check(got.filter((t) => t === 'Sent while offline').length === 1, 'his offline message once');
  await waitText(alice, 'Sent while offline');
  check((await texts(alice)).filter((t) => t === 'Sent while offline').length === 1, 'Alice got it once');
  await until("Bob's offline message acknowledged", 5_000, async () => (await tick(bob, 'Sent while offline')) !== 'pending');
  await until('Alice seeing the missed messages read', 10_000, async () => (await tick(alice, missed[2])) === 'read');
  const counters = await bob.page.evaluate(() => window.maxd.socket.counters);
  check(counters.syncs >= 2, `Bob synced again: ${JSON.stringify(counters)}`);
  out('offline_and_back', { missed: missed.length, bob_messages: got.length, counters });

  // A reload keeps the read ticks (from the members list) and shows the history.
  await alice.page.reload();
  await live(alice);
  await until("Alice's dialog open after the reload", 10_000, () => alice.page.isVisible('#chat'));
  await waitText(alice, missed[2]);
  check((await tick(alice, missed[2])) === 'read', 'read tick after a reload');
  out('reload_keeps_ticks');

  // Offline-first: Bob's page reloads without a network and shows what it had; back
  // online it gets what came meanwhile, nothing twice.
  await until("Bob's app and history kept for offline use", 10_000, () => bob.page.evaluate(async () => !!navigator.serviceWorker.controller &&
    !!(await caches.match('/messenger.js')) && window.maxd.saved > 0 && !window.maxd.saving));
  const had = await texts(bob);
  await bob.ctx.setOffline(true);
  await bob.page.reload();
  await until("Bob's kept history shown offline", 10_000, async () => JSON.stringify(await texts(bob).catch(() => [])) === JSON.stringify(had));
  check((await bob.page.textContent('#conn')) === 'Offline', `says offline: ${await bob.page.textContent('#conn')}`);
  await send(alice, 'After your offline reload');
  await until('acknowledged', 10_000, async () => (await tick(alice, 'After your offline reload')) === 'sent');
  await bob.ctx.setOffline(false);
  await live(bob, 20_000);
  await waitText(bob, 'After your offline reload');
  const after = await texts(bob);
  check(JSON.stringify(after) === JSON.stringify([...had, 'After your offline reload']), `after the offline reload: ${JSON.stringify(after)}`);
  out('offline_reload');

  // History by cursor: 150 more messages (over REST, 75 each: within the per-user
  // rate limit's burst). Bob reloads: the newest 100 are kept on the device; scrolling
  // up loads the rest from the server by cursor.
  const bulk = (p, from, to) => p.page.evaluate(async ([chat, from, to]) => {
    const token = JSON.parse(localStorage.getItem('maxd.session')).access_token;
    for (let i = from; i <= to; i++) {
      const r = await fetch(`/api/chats/${chat}/messages`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ client_id: `bulk-${i}`, text: `bulk ${i}` }),
      });
      if (!r.ok) throw new Error(`send ${i}: ${r.status}`);
    }
  }, [Number(p.page.url().match(/chat\/(\d+)/)[1]), from, to]);
  await bulk(alice, 1, 75);
  await bulk(bob, 76, 150);
  await waitText(bob, 'bulk 150');
  await waitText(alice, 'bulk 150');
  await until("Bob's history kept", 10_000, () => bob.page.evaluate(() => !window.maxd.saving));
  await bob.page.reload();
  await live(bob);
  await waitText(bob, 'bulk 150');
  const first = (await texts(bob)).length;
  check(first === 100, `the kept newest 100 first: ${first}`);
  await until('all history loaded by scrolling up', 20_000, async () => {
    await bob.page.$eval('#messages', (e) => { e.scrollTop = 0; });
    return bob.page.isVisible('#history-start');
  }, 200);
  const all = await texts(bob);
  check(all[0] === 'Hello Bob 👋' && all.at(-1) === 'bulk 150', `history in order: ${all[0]} … ${all.at(-1)}`);
  check(all.length === 159, `the whole history (9 + 150): ${all.length}`);
  check(new Set(all.filter((t) => t !== 'Message deleted')).size === all.length - 1, 'no message twice in the history');
  out('history_by_cursor', { first_page: first, total: all.length });

  // Screenshots: the chat on a desktop and on a phone, the phone's chat list.
  await bob.page.$eval('#messages', (e) => { e.scrollTop = e.scrollHeight; });
  await shot(bob, 'messenger-chat-1280x720.png');
  await shot(alice, 'messenger-chat-390x844.png');
  await alice.page.click('#back');
  await alice.page.waitForSelector('#chat-list:visible');
  await shot(alice, 'messenger-list-390x844.png');

  // A group: Alice makes one with Bob; each sees the other's messages with their name.
  await alice.page.click('#new-chat');
  await alice.page.check('input[name=kind][value=group]');
  await alice.page.fill('#new-title', 'Team');
  await alice.page.fill('#new-phones', bob.phone);
  await alice.page.click('#new-chat-go');
  await until("Alice in the group", 10_000, async () => (await alice.page.isVisible('#chat')) && (await alice.page.textContent('#chat-title')) === 'Team');
  check((await alice.page.textContent('#chat-status')) === '2 members', 'the group has two members');
  await send(alice, 'Hello team');
  await openChat(bob, 'Team');
  await waitText(bob, 'Hello team');
  await until("Alice's name on her message at Bob", 5_000, async () => (await bob.page.textContent(`${row('Hello team')} .sender`)) === 'Alice');
  await send(bob, 'Hi all');
  await waitText(alice, 'Hi all');
  await until("Bob's name on his message at Alice", 5_000, async () => (await alice.page.textContent(`${row('Hi all')} .sender`)) === 'Bob');
  out('group');

  // Alice forwards Bob's group message to their dialog.
  await menu(alice, 'Hi all', 'forward');
  await alice.page.click('#forward-list button:text-is("Bob")');
  await until('Alice in the dialog with the forward', 10_000, async () => (await alice.page.textContent('#chat-title')) === 'Bob' && (await texts(alice)).includes('Hi all'));
  await openChat(bob, 'Alice');
  await waitText(bob, 'Hi all');
  check((await bob.page.textContent(`${row('Hi all')} .fwd`)) === 'Forwarded from Bob', 'the forward names its author');
  out('forward');

  // Read while offline: the read receipt goes when the network is back.
  await openChat(alice, 'Team');
  await send(alice, 'Read me later');
  await until("'Read me later' delivered to Bob", 10_000, async () => (await tick(alice, 'Read me later')) === 'delivered');
  await bob.ctx.setOffline(true);
  await until("Bob's socket down", 10_000, () => bob.page.evaluate(() => window.maxd.socket.state !== 'live'));
  await openChat(bob, 'Team');
  await waitText(bob, 'Read me later');
  check((await tick(alice, 'Read me later')) === 'delivered', 'not read while Bob is offline');
  await bob.ctx.setOffline(false);
  await live(bob, 20_000);
  await until("Alice's tick: read, once Bob is back", 10_000, async () => (await tick(alice, 'Read me later')) === 'read');
  out('read_offline');

  // Devices: Bob logs in on a second browser, sees two devices, ends the other one; that
  // one is logged out.
  // (The test server's code cooldown is 1 s, so the number gets a second code at once.)
  const bob2 = await launch('Bob2', bob.phone, { width: 390, height: 844 });
  await bob2.page.fill('#phone', bob.phone);
  await bob2.page.click('#send-code');
  await bob2.page.waitForSelector('#code-form:not([hidden])', { timeout: 10_000 });
  const e164 = (await bob2.page.textContent('#code-sent')).match(/\+\d+/)[0];
  await bob2.page.fill('#code', await until('the second code', 5_000, () => smsCode(e164)));
  await bob2.page.click('#verify');
  await bob2.page.waitForSelector('#app:not([hidden])', { timeout: 10_000 });
  await bob.page.click('#open-settings');
  await until('two devices listed', 5_000, async () => (await bob.page.$$('#sessions li')).length === 2);
  check((await bob.page.textContent('#sessions')).includes('(this device)'), 'this device marked');
  await bob.page.click('#sessions li button.danger');
  await bob2.page.waitForSelector('#phone-form:not([hidden])', { timeout: 10_000 });
  await until('one device left', 5_000, async () => (await bob.page.$$('#sessions li')).length === 1);
  await bob.page.click('#logout');
  await bob.page.waitForSelector('#phone-form:not([hidden])', { timeout: 10_000 });
  // Logging out leaves neither tokens nor kept messages on the device.
  const left = await until('the device cleared', 5_000, () => bob.page.evaluate(async () => {
    const count = (name, store) => new Promise((resolve) => {
      const r = indexedDB.open(name);
      r.onsuccess = () => {
        const d = r.result;
        if (!d.objectStoreNames.contains(store)) return resolve(0);
        const q = d.transaction(store).objectStore(store).count();
        q.onsuccess = () => resolve(q.result);
      };
    });
    const n = (await count('maxd-cache', 'state')) + (await count('maxd', 'kv')) + (localStorage.getItem('maxd.session') ? 1 : 0);
    return n === 0 && 'empty';
  }));
  check(left === 'empty', 'nothing kept after log-out');
  out('devices_and_logout');
}

async function scenarioFile() {
  const [alice, bob] = await twoUsers();
  await openDialogWith(alice, bob);
  await send(alice, 'A file follows');
  await openChat(bob, 'Alice');
  await waitText(bob, 'A file follows');

  const size = FILE_MIB * 1024 * 1024 + 12345; // not a multiple of anything
  const path = pathJoin(WORK_DIR, 'report.bin');
  const fd = openSync(path, 'w');
  for (let done = 0; done < size;) {
    const n = Math.min(1 << 20, size - done);
    writeSync(fd, randomBytes(n));
    done += n;
  }
  closeSync(fd);
  const sha = createHash('sha256').update(readFileSync(path)).digest('hex');

  // The third chunk (of 4 MiB) is held, so the page reloads mid-upload; after the
  // reload everything goes through.
  let patches = 0;
  let held = null;
  let released = false;
  const heldNow = new Promise((r) => { held = r; });
  await alice.page.route('**/files/*', (route) => {
    if (released || route.request().method() !== 'PATCH') return route.continue();
    patches++;
    if (patches < 3) return route.continue();
    held();
    return undefined; // never answered: the reload cuts it
  });
  const t0 = Date.now();
  await alice.page.setInputFiles('#file', path);
  await heldNow;
  const shown = await until('the progress bar showing the first chunks', 5_000, async () => {
    const v = await alice.page.$eval('#uploads progress', (e) => e.value).catch(() => 0);
    return v >= 8 * 1024 * 1024 && v;
  });
  await alice.page.reload();
  released = true;
  await alice.page.unroute('**/files/*');
  const offsets = [];
  const heads = [];
  alice.page.on('request', (r) => {
    if (r.method() === 'PATCH') offsets.push(Number(r.headers()['upload-offset']));
  });
  alice.page.on('response', (r) => {
    if (r.request().method() === 'HEAD' && r.url().includes('/files/')) heads.push(Number(r.headers()['upload-offset']));
  });
  await live(alice);
  await until("Alice's dialog open after the reload", 10_000, () => alice.page.isVisible('#chat'));
  // The interrupted upload is listed with its progress, asking for the file again.
  const paused = await alice.page.waitForSelector('#uploads .upload.paused', { timeout: 10_000 });
  const pct = await paused.$eval('.pct', (e) => e.textContent);
  check(parseInt(pct, 10) > 0, `paused upload shows its progress: ${pct}`);
  out('reloaded_mid_upload', { shown_bytes: shown, pct });
  await alice.page.setInputFiles('#uploads .upload.paused input[type=file]', path);
  // The relay has at least the two chunks that went through (and maybe verified groups
  // of the held one, if it was let go as the page unloaded); the upload goes on from
  // the offset the relay answers, not from 0.
  const resumedFrom = await until('the upload resuming', 10_000, () => offsets.length && offsets[0]);
  check(heads.length >= 1 && resumedFrom === heads[0] && resumedFrom >= 8 * 1024 * 1024 && resumedFrom < size,
    `resumed at the relay's offset: HEAD ${heads}, PATCH offsets ${offsets}`);

  // Bob gets the message with the file and downloads it.
  const link = `#message-list a.file`;
  await bob.page.waitForSelector(link, { timeout: 30_000 });
  const uploadMs = Date.now() - t0;
  check(!(await alice.page.$('#uploads .upload')), 'no upload left after completion');
  const [download] = await Promise.all([bob.page.waitForEvent('download', { timeout: 30_000 }), bob.page.click(link)]);
  const saved = pathJoin(WORK_DIR, 'downloaded.bin');
  await download.saveAs(saved);
  const got = createHash('sha256').update(readFileSync(saved)).digest('hex');
  check(got === sha, `downloaded file matches: ${got} vs ${sha}`);
  check(download.suggestedFilename() === 'report.bin', `file name ${download.suggestedFilename()}`);
  await shot(bob, 'messenger-file-1280x720.png');
  out('file_bit_exact', { bytes: size, upload_ms: uploadMs, resumed_from: resumedFrom });
  writeFileSync(path, ''); // free the space early

  // A voice message: Alice records about a second and a half from the (fake) microphone.
  await alice.page.click('#record');
  await alice.page.waitForSelector('#recording:not([hidden])', { timeout: 10_000 });
  await until('a recording of 0:01', 10_000, async () => (await alice.page.textContent('#rec-time')) >= '0:01');
  await alice.page.click('#record');
  const voice = await bob.page.waitForSelector('#message-list .voice', { timeout: 20_000 });
  const bars = await voice.$$eval('.wave i', (els) => els.length);
  const label = await voice.$eval('.play', (e) => e.ariaLabel);
  check(bars >= 10, `a waveform: ${bars} bars`);
  check(/0:0[1-9]/.test(label), `its duration: ${label}`);
  // Bob plays it to the end: the browser decodes what the other one recorded.
  await voice.$eval('.play', (e) => e.click());
  await until('the voice message played to its end', 15_000, () => voice.evaluate((e) => e.dataset.played === '1'));
  const played = await voice.$eval('audio', (a) => a.currentTime);
  check(played >= 0.5, `played ${played} s of about a second`);
  out('voice_message', { bars, label, played_s: played });

  // A picture (a screenshot of Alice's window) shows as a preview at Bob's.
  const png = pathJoin(WORK_DIR, 'picture.png');
  writeFileSync(png, await alice.page.screenshot());
  await alice.page.setInputFiles('#file', png);
  const img = await bob.page.waitForSelector('#message-list figure.preview img', { timeout: 20_000 });
  const natural = await until('the preview decoded', 10_000, () => img.evaluate((e) => e.complete && e.naturalWidth > 0 && [e.naturalWidth, e.naturalHeight]));
  check(natural[0] === 390 && natural[1] === 844, `the picture at its size: ${natural}`);
  check((await img.getAttribute('alt')) === 'picture.png', 'the preview has the file name as text');
  await shot(bob, 'messenger-files-1280x720.png');
  await shot(alice, 'messenger-files-390x844.png');
  out('image_preview', { size: natural });
}

const session = (page) => page.evaluate(() => JSON.parse(localStorage.getItem('maxd.session')));

async function scenarioRefresh() {
  const [alice, bob] = await twoUsers();
  await openDialogWith(alice, bob);
  await openChat(bob, 'Alice');
  // A second tab of Alice's, sharing her login (localStorage) and her session.
  const tab2 = await alice.ctx.newPage();
  tab2.on('pageerror', (e) => alice.logs.push(`tab2 pageerror: ${e.message}`));
  await tab2.goto(alice.page.url());
  await until("Alice's second tab live", 10_000, () => tab2.evaluate(() => window.maxd.socket && window.maxd.socket.state === 'live'));
  await until("the second tab's dialog open", 10_000, () => tab2.isVisible('#chat'));
  const first = await session(alice.page);
  check(first.access_ttl_ms <= 5_000, `short access tokens in this test: ${first.access_ttl_ms} ms`);
  const refreshes = new Set([first.refresh_token]);
  for (let round = 1; round <= 3; round++) {
    // Wait for the access token to be due for a refresh (the client's own rule); then
    // the network drops and comes back, and both tabs reconnect at once, both needing
    // a fresh token for their socket's auth frame at the same moment.
    const due = await session(alice.page);
    await until(`round ${round}: the access token due`, 10_000, async () => Date.now() > due.access_expires_at - due.access_ttl_ms / 3 + 50, 100);
    await alice.ctx.setOffline(true);
    await until("Alice's sockets down", 10_000, async () => (await alice.page.evaluate(() => window.maxd.socket.state !== 'live')) &&
      tab2.evaluate(() => window.maxd.socket.state !== 'live'));
    await alice.ctx.setOffline(false);
    await live(alice, 20_000);
    await until('the second tab live again', 20_000, () => tab2.evaluate(() => window.maxd.socket.state === 'live'));
    const now = await session(alice.page);
    check(now && now.refresh_token !== due.refresh_token, `round ${round}: the tokens were rotated`);
    refreshes.add(now.refresh_token);
    const t1 = `tab one, round ${round}`;
    const t2 = `tab two, round ${round}`;
    await Promise.all([send(alice, t1), tab2.fill('#text', t2).then(() => tab2.press('#text', 'Enter'))]);
    await waitText(bob, t1);
    await waitText(bob, t2);
  }
  check(await alice.page.isVisible('#app') && await tab2.isVisible('#app'), 'both tabs still logged in');
  const sessions = await alice.page.evaluate(async () => {
    const token = JSON.parse(localStorage.getItem('maxd.session')).access_token;
    const r = await fetch('/api/sessions', { headers: { authorization: `Bearer ${token}` } });
    return r.status === 200 && (await r.json()).sessions.length;
  });
  check(sessions === 1, `one session for both tabs, not revoked: ${sessions}`);
  out('refreshed_in_two_tabs', { rotations: refreshes.size - 1 });
}

async function main() {
  const which = process.argv[2];
  if (which === 'chat') await scenarioChat();
  else if (which === 'file') await scenarioFile();
  else if (which === 'refresh') await scenarioRefresh();
  else throw new Failure(`unknown scenario ${which}`);
}

let code = 0;
try {
  await main();
  out('passed');
} catch (e) {
  code = 1;
  console.error(e instanceof Failure ? `FAILED: ${e.message}` : e);
  for (const p of people) console.error(`--- ${p.name}'s console (last ${p.logs.length}):\n${p.logs.join('\n')}`);
} finally {
  await Promise.all(contexts.map((c) => c.close().catch(() => {})));
}
process.exit(code);
