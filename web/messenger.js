// The maxd messenger: login by phone and SMS code, the chat list, a conversation with
// live updates over /ws. Plain ES modules, no framework and no build step (docs/web.md).
//
// State: every chat remembers the last event seq it applied (`lastSeq`); the socket
// syncs from those, so after a network drop the server replays exactly what was missed.
// Messages are kept by seq, so a message seen twice (history page and live event) is
// shown once.

import { Api, ApiError, deviceName } from './api.js';
import { ChatSocket } from './chatsocket.js';
import { upload, pendingUploads, fingerprint, forgetUpload } from './tus.js';
import { VoiceRecorder, voicePlayer, fmtDuration } from './voice.js';
import { loadState, saveState, clearState, registerWorker, KEEP } from './cache.js';

const $ = (id) => document.getElementById(id);
const api = new Api();
let socket = null;

/** chat id -> chat state. */
const chats = new Map();
/** user id -> profile (display_name, online, last_seen). */
const users = new Map();
let me = null;
let current = null; // the open chat's id
let replyTo = null; // seq
let editing = null; // seq
const PAGE = 50;

// ---- small helpers ------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  for (const c of children) e.append(c);
  return e;
}

const fmtTime = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

function fmtSize(n) {
  const u = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function showError(where, e) {
  where.textContent = e ? (e instanceof ApiError || e.message ? e.message : String(e)) : '';
}

const clientId = () => `w-${crypto.randomUUID()}`;

// ---- login ----------------------------------------------------------------------------

let loginPhone = '';

function showLogin(step) {
  $('app').hidden = true;
  $('login').hidden = false;
  for (const f of ['phone-form', 'code-form', 'name-form']) $(f).hidden = f !== step;
  const first = $(step).querySelector('input');
  if (first) first.focus();
}

$('phone-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  showError($('login-error'));
  const btn = $('send-code');
  btn.disabled = true;
  try {
    const r = await Api.requestCode($('phone').value);
    loginPhone = r.phone;
    $('code-sent').textContent = `We sent a code to ${r.phone}. It is valid for ${Math.round(r.expires_in / 60)} minutes.`;
    $('code').value = '';
    await showDevHint();
    showLogin('code-form');
  } catch (err) {
    showError($('login-error'), err);
  } finally {
    btn.disabled = false;
  }
});

async function showDevHint() {
  try {
    const r = await fetch('/dev/info');
    if (!r.ok) return;
    const info = await r.json();
    if (!info.sms_file) return;
    $('dev-sms-file').textContent = info.sms_file;
    $('dev-sms-file2').textContent = info.sms_file;
    $('dev-sms').hidden = false;
  } catch {
    /* not a dev server */
  }
}

$('code-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  showError($('login-error'));
  $('verify').disabled = true;
  try {
    await api.verify(loginPhone, $('code').value.trim(), deviceName());
    await enter();
  } catch (err) {
    showError($('login-error'), err);
  } finally {
    $('verify').disabled = false;
  }
});

$('change-phone').addEventListener('click', () => showLogin('phone-form'));

$('name-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = $('display-name').value.trim();
  if (!name) return;
  try {
    me = await api.call('PATCH', '/api/me', { display_name: name });
    await enter();
  } catch (err) {
    showError($('login-error'), err);
  }
});

api.addEventListener('loggedout', () => {
  if (socket) socket.stop();
  socket = null;
  me = null;
  chats.clear();
  users.clear();
  // What this account had loaded does not stay on the device.
  clearTimeout(saveTimer);
  clearState();
  $('chat-list').replaceChildren();
  current = null;
  location.hash = '';
  showLogin('phone-form');
});

/** A network failure (fetch rejects), as opposed to an answer from the server. */
const offline = (e) => e instanceof TypeError;
let refreshOnSync = false;

/**
 * After login (or on load with a stored session): what this device kept (shown at
 * once, also offline), then profile and chats from the server, then the socket.
 */
async function enter() {
  showError($('login-error'));
  const kept = me ? null : await loadState(api.userId);
  if (kept) restore(kept);
  try {
    me = await api.get('/api/me');
  } catch (e) {
    if (!kept || !offline(e)) throw e;
    // Offline: the kept state until the socket is back (it syncs from the kept seqs).
    refreshOnSync = true;
    showApp();
    return;
  }
  if (!me.display_name) {
    showLogin('name-form');
    return;
  }
  try {
    await loadChats();
  } catch (e) {
    if (!offline(e)) throw e;
    refreshOnSync = true;
  }
  showApp();
}

function showApp() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = me.display_name;
  users.set(me.id, me);
  renderList();
  if (!socket) {
    socket = new ChatSocket(api, sinceList, onEvent);
    socket.addEventListener('state', (e) => showConn(e.detail));
    window.maxd.socket = socket;
  }
  socket.start();
  showConn(socket.state);
  route();
}

// ---- what this device keeps (cache.js) ------------------------------------------------

let saveTimer = null;
/** Saves the state soon (changes come in bursts). */
function scheduleSave() {
  if (!me) return;
  window.maxd.saving = true;
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => {
    // Taken in the event chain, so it is the state after whole events.
    chain = chain.then(() => me && saveState(me.id, snapshot())).catch(() => {}).then(() => {
      window.maxd.saving = false;
      window.maxd.saved++;
    });
  }, 300);
}

function snapshot() {
  return {
    me,
    users: [...users.values()],
    chats: [...chats.values()].map((c) => {
      const all = [...c.messages.values()].filter((m) => m.seq).sort((a, b) => a.seq - b.seq);
      const messages = all.slice(-KEEP);
      // Older pages come from the server by cursor, from the oldest kept message on.
      let nextBefore = messages.length ? messages[0].seq : undefined;
      if (messages.length === all.length && c.nextBefore === null) nextBefore = null;
      return {
        id: c.id, kind: c.kind, title: c.title, role: c.role, lastSeq: c.lastSeq, readSeq: c.readSeq,
        unread: c.unread, memberCount: c.memberCount, peerId: c.peer && c.peer.id, peerRead: c.peerRead,
        peerDelivered: c.peerDelivered, last: c.last, myReactions: [...c.myReactions], messages, nextBefore,
      };
    }),
  };
}

function restore(s) {
  me = s.me;
  for (const u of s.users) users.set(u.id, u);
  for (const k of s.chats) {
    const c = newChat({ id: k.id, kind: k.kind, title: k.title, role: k.role, last_seq: k.lastSeq, read_seq: k.readSeq, unread: k.unread, member_count: k.memberCount });
    Object.assign(c, { peer: users.get(k.peerId) || null, peerRead: k.peerRead, peerDelivered: k.peerDelivered, last: k.last, myReactions: new Set(k.myReactions), nextBefore: k.nextBefore });
    for (const m of k.messages) c.messages.set(m.seq, m);
    chats.set(c.id, c);
  }
}

function showConn(state) {
  $('conn').textContent = state === 'live' ? '' : state === 'connecting' ? 'Connecting…' : navigator.onLine ? 'Reconnecting…' : 'Offline';
  document.body.dataset.conn = state;
}

// ---- chats ----------------------------------------------------------------------------

function newChat(info) {
  return {
    id: info.id,
    kind: info.kind,
    title: info.title,
    role: info.role,
    lastSeq: info.last_seq,
    readSeq: info.read_seq,
    readSent: info.read_seq, // the latest read receipt sent
    unread: info.unread,
    memberCount: info.member_count,
    peer: null,
    messages: new Map(),
    nextBefore: undefined, // undefined: history not loaded; null: all loaded
    peerRead: 0,
    peerDelivered: 0,
    typing: new Map(),
    myReactions: new Set(),
    last: null, // the newest message, for the list
    li: null,
  };
}

async function loadChats() {
  const { chats: list } = await api.get('/api/chats');
  for (const info of list) {
    const c = chats.get(info.id);
    if (c) {
      Object.assign(c, { title: info.title, role: info.role, memberCount: info.member_count });
      continue;
    }
    chats.set(info.id, newChat(info));
  }
  await Promise.all([...chats.values()].map((c) => describe(c)));
  renderList();
  scheduleSave();
}

/** A chat's peer (dialogs) and last message, for the list. */
async function describe(c, withLast = true) {
  const jobs = [];
  if (c.kind !== 'channel') {
    // The peer of a dialog, and how far the others have read (also after a reload).
    jobs.push(api.get(`/api/chats/${c.id}/members`).then(async ({ members }) => {
      const other = members.find((m) => m.user_id !== me.id);
      if (c.kind === 'dialog' && other && !c.peer) c.peer = await user(other.user_id);
      peerReceipts(c, members);
    }));
  }
  if (withLast && !c.last && c.lastSeq > 0) {
    jobs.push(api.get(`/api/chats/${c.id}/messages?limit=1`).then(({ messages }) => {
      if (messages[0] && (!c.last || messages[0].seq > c.last.seq)) c.last = messages[0];
    }));
  }
  await Promise.all(jobs);
}

/** Read and delivery positions of the other members, when the server tells them. */
function peerReceipts(c, members) {
  for (const m of members) {
    if (m.user_id === me.id) continue;
    c.peerRead = Math.max(c.peerRead, m.read_seq || 0);
    c.peerDelivered = Math.max(c.peerDelivered, m.delivered_seq || 0, m.read_seq || 0);
  }
}

const userFetches = new Map();
/** A user's profile, fetched once. */
async function user(id) {
  if (users.has(id)) return users.get(id);
  if (!userFetches.has(id)) {
    userFetches.set(id, api.get(`/api/users/${id}`).then((u) => {
      users.set(id, u);
      return u;
    }).finally(() => userFetches.delete(id)));
  }
  return userFetches.get(id);
}

const chatName = (c) => (c.kind === 'dialog' ? (c.peer && (c.peer.display_name || c.peer.phone)) || 'Dialog' : c.title || 'Group');

function preview(m) {
  if (!m) return '';
  if (m.deleted) return 'Message deleted';
  if (m.text) return m.text;
  if (m.attachments && m.attachments.length) {
    const a = m.attachments[0];
    return a.duration_ms !== undefined ? `🎤 Voice message ${fmtDuration(a.duration_ms)}` : `📎 ${a.name}`;
  }
  if (m.call) return '📞 Call';
  return '';
}

function renderList() {
  const list = $('chat-list');
  const sorted = [...chats.values()].sort((a, b) => ((b.last && b.last.date) || 0) - ((a.last && a.last.date) || 0) || b.id - a.id);
  const items = sorted.map((c) => {
    const li = c.li || el('li', { className: 'chat-item' });
    c.li = li;
    const a = el('a', { href: `#/chat/${c.id}`, className: 'chat-link' });
    if (c.id === current) a.setAttribute('aria-current', 'page');
    a.dataset.chat = c.id;
    const name = el('span', { className: 'name', textContent: chatName(c) });
    if (c.kind === 'dialog' && c.peer && c.peer.online) name.append(el('span', { className: 'online', title: 'online', ariaLabel: 'online' }));
    const typing = typingText(c);
    const last = el('span', { className: `last${typing ? ' typing' : ''}`, textContent: typing || preview(c.last) });
    const time = el('time', { textContent: c.last ? fmtTime(c.last.date) : '' });
    const badge = el('span', { className: 'unread', textContent: c.unread ? String(c.unread) : '' });
    badge.hidden = !c.unread;
    if (c.unread) badge.ariaLabel = `${c.unread} unread`;
    a.append(name, time, last, badge);
    li.replaceChildren(a);
    return li;
  });
  list.replaceChildren(...items);
  $('no-chats').hidden = chats.size > 0;
}

function sinceList() {
  return [...chats.values()].map((c) => ({ chat_id: c.id, seq: c.lastSeq }));
}

// ---- events from the socket -------------------------------------------------------------

let chain = Promise.resolve();
const STORED = new Set(['message', 'message_edited', 'message_deleted', 'reaction', 'chat_created', 'member_added', 'member_removed', 'member_left', 'role_changed', 'chat_renamed']);

async function onEvent(f) {
  if (f.type === 'synced') {
    // Chats this device has not seen yet (made while it was away), before any later
    // event; after a start offline, everything the list shows.
    const unknown = f.chats.filter((x) => !chats.has(x.chat_id));
    if (current && viewing(chats.get(current))) markRead(chats.get(current));
    if (unknown.length || refreshOnSync) {
      refreshOnSync = false;
      chain = chain.then(loadChats).catch(() => {});
      return chain;
    }
    return;
  }
  if (STORED.has(f.type)) return stored(f);
  if (f.type === 'typing') return typing(f);
  if (f.type === 'receipt') return receipt(f);
  if (f.type === 'presence') return presence(f);
  if (f.type === 'message_hidden') {
    const c = chats.get(f.chat_id);
    if (c) removeMessage(c, f.seq ?? f.message_seq);
  }
}

/** Stored events are applied one at a time, in order (some need a REST call first). */
function stored(f) {
  chain = chain.then(() => applyStored(f)).catch(() => {});
  return chain;
}

async function applyStored(f) {
  let c = chats.get(f.chat_id);
  if (!c) {
    // A chat this device did not know: its info, then the event (if not already in it).
    // Made live (this event is its first we see): nothing before it to count or show.
    const info = await api.get(`/api/chats/${f.chat_id}`);
    c = newChat({ ...info, last_seq: f.seq - 1, unread: 0 });
    chats.set(c.id, c);
    await describe(c, false);
  }
  if (f.seq <= c.lastSeq) return; // already applied
  c.lastSeq = f.seq;
  switch (f.type) {
    case 'message': {
      const m = f.message;
      const mine = m.sender_id === me.id;
      c.typing.delete(m.sender_id);
      putMessage(c, m);
      if (!c.last || m.seq >= c.last.seq) c.last = m;
      if (!mine) {
        socket.notify({ type: 'delivered', chat_id: c.id, seq: m.seq });
        if (viewing(c)) markRead(c);
        else c.unread++;
      }
      break;
    }
    case 'message_edited':
      if (c.messages.has(f.message.seq)) putMessage(c, { ...c.messages.get(f.message.seq), ...f.message });
      if (c.last && c.last.seq === f.message.seq) c.last = { ...c.last, ...f.message };
      break;
    case 'message_deleted': {
      const old = c.messages.get(f.message_seq);
      const del = { ...(old || { chat_id: c.id, seq: f.message_seq, sender_id: f.by, date: 0 }), deleted: true, text: undefined, attachments: [] };
      if (old) putMessage(c, del);
      if (c.last && c.last.seq === f.message_seq) c.last = del;
      break;
    }
    case 'reaction': {
      const m = c.messages.get(f.message_seq);
      const key = `${f.message_seq}|${f.emoji}`;
      if (f.user_id === me.id) f.added ? c.myReactions.add(key) : c.myReactions.delete(key);
      if (m) {
        const r = { ...(m.reactions || {}) };
        r[f.emoji] = Math.max(0, (r[f.emoji] || 0) + (f.added ? 1 : -1));
        if (!r[f.emoji]) delete r[f.emoji];
        putMessage(c, { ...m, reactions: r });
      }
      break;
    }
    case 'chat_renamed':
      c.title = f.title;
      break;
    default:
      break;
  }
  renderList();
  if (c.id === current) renderHeader(c);
  scheduleSave();
}

function typing(f) {
  const c = chats.get(f.chat_id);
  if (!c || f.user_id === me.id) return;
  clearTimeout(c.typing.get(f.user_id));
  c.typing.set(f.user_id, setTimeout(() => {
    c.typing.delete(f.user_id);
    renderList();
    if (c.id === current) renderHeader(c);
  }, 5_000));
  renderList();
  if (c.id === current) renderHeader(c);
}

function typingText(c) {
  if (!c.typing.size) return '';
  const names = [...c.typing.keys()].map((id) => (users.get(id) && users.get(id).display_name) || 'Someone');
  return `${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} typing…`;
}

function receipt(f) {
  const c = chats.get(f.chat_id);
  if (!c || f.user_id === me.id) return;
  if (f.kind === 'read') c.peerRead = Math.max(c.peerRead, f.seq);
  c.peerDelivered = Math.max(c.peerDelivered, f.seq);
  if (c.id === current) for (const m of c.messages.values()) if (m.sender_id === me.id) renderTicks(c, m);
  scheduleSave();
}

function presence(f) {
  const u = users.get(f.user_id);
  if (!u) return;
  u.online = f.online;
  u.last_seen = f.last_seen;
  renderList();
  if (current && chats.get(current).peer === u) renderHeader(chats.get(current));
}

// ---- the open chat ----------------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/chat\/(\d+)$/);
  const id = m ? Number(m[1]) : null;
  if (id && chats.has(id)) openChat(id);
  else closeChat();
}
window.addEventListener('hashchange', () => me && route());

function closeChat() {
  current = null;
  document.body.classList.remove('chat-open');
  $('chat').hidden = true;
  $('empty').hidden = false;
  renderList();
}

async function openChat(id) {
  const c = chats.get(id);
  const switching = current !== id;
  current = id;
  document.body.classList.add('chat-open');
  $('chat').hidden = false;
  $('empty').hidden = true;
  if (switching) {
    cancelReply();
    $('message-list').replaceChildren();
    $('history-start').hidden = true;
    for (const m of [...c.messages.values()].sort((a, b) => a.seq - b.seq)) renderMessage(c, m);
    renderUploads();
  }
  renderHeader(c);
  renderList();
  if (c.nextBefore === undefined) await loadOlder(c).catch(() => {}); // offline: what is kept
  scrollToEnd();
  markRead(c);
  if (switching && matchMedia('(min-width: 720px)').matches) $('text').focus();
}

function renderHeader(c) {
  $('chat-title').textContent = chatName(c);
  let status = typingText(c);
  if (!status && c.kind === 'dialog' && c.peer) {
    if (c.peer.online) status = 'online';
    else if (typeof c.peer.last_seen === 'number' && c.peer.last_seen > 0) status = `last seen ${new Date(c.peer.last_seen).toLocaleString([], { dateStyle: 'short', timeStyle: 'short' })}`;
  } else if (!status) {
    status = `${c.memberCount} members`;
  }
  $('chat-status').textContent = status;
}

const viewing = (c) => c.id === current && document.visibilityState === 'visible';

function markRead(c) {
  const latest = Math.max(0, ...[...c.messages.values()].filter((m) => m.sender_id !== me.id).map((m) => m.seq));
  c.unread = 0;
  renderList();
  if (latest > c.readSeq) {
    c.readSeq = latest;
    scheduleSave();
  }
  // A read receipt that could not go (offline) goes on the next markRead: after `synced`.
  if (latest > c.readSent && socket.notify({ type: 'read', chat_id: c.id, seq: latest })) c.readSent = latest;
}
document.addEventListener('visibilitychange', () => current && viewing(chats.get(current)) && markRead(chats.get(current)));

let loading = false;
async function loadOlder(c) {
  if (loading || c.nextBefore === null) return;
  loading = true;
  try {
    const q = c.nextBefore ? `before=${c.nextBefore}&` : '';
    const r = await api.get(`/api/chats/${c.id}/messages?${q}limit=${PAGE}`);
    const box = $('messages');
    const fromBottom = box.scrollHeight - box.scrollTop;
    for (const m of r.messages) if (!c.messages.has(m.seq)) putMessage(c, m);
    c.nextBefore = r.next_before;
    if (c.id === current) {
      $('history-start').hidden = c.nextBefore !== null;
      box.scrollTop = box.scrollHeight - fromBottom; // keep what the reader looks at in place
    }
    scheduleSave();
  } finally {
    loading = false;
  }
}

$('messages').addEventListener('scroll', () => {
  const c = current && chats.get(current);
  if (c && $('messages').scrollTop < 200) loadOlder(c).catch(() => {});
});

function scrollToEnd() {
  const box = $('messages');
  box.scrollTop = box.scrollHeight;
}

function putMessage(c, m) {
  c.messages.set(m.seq, m);
  if (c.id === current) renderMessage(c, m);
}

function removeMessage(c, seq) {
  c.messages.delete(seq);
  const li = document.querySelector(`#message-list li[data-seq="${seq}"]`);
  if (li) li.remove();
}

/** Inserts or updates the message's row, in seq order. */
function renderMessage(c, m) {
  const list = $('message-list');
  const key = m.seq ? String(m.seq) : `p-${m.client_id}`;
  let li = list.querySelector(`li[data-key="${key}"]`);
  const box = $('messages');
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  if (!li) {
    // A stored message replaces its pending row.
    const pending = m.seq && m.client_id && list.querySelector(`li[data-key="p-${CSS.escape(m.client_id)}"]`);
    if (pending) pending.remove();
    li = $('message-tpl').content.firstElementChild.cloneNode(true);
    li.dataset.key = key;
    if (m.seq) li.dataset.seq = m.seq;
    let before = null;
    if (m.seq) {
      for (const other of list.children) {
        if (other.dataset.seq && Number(other.dataset.seq) > m.seq) {
          before = other;
          break;
        }
        if (!other.dataset.seq) {
          before = other; // pending rows stay last
          break;
        }
      }
    }
    list.insertBefore(li, before);
  }
  const mine = m.sender_id === me.id;
  li.classList.toggle('mine', mine);
  li.classList.toggle('deleted', !!m.deleted);
  li.classList.toggle('pending', !m.seq);
  const sender = li.querySelector('.sender');
  sender.hidden = mine || c.kind === 'dialog';
  if (!sender.hidden) {
    const u = users.get(m.sender_id);
    sender.textContent = (u && u.display_name) || '…';
    // A group member not seen yet: the name follows once the profile is here.
    if (!u) user(m.sender_id).then(() => c.id === current && c.messages.get(m.seq) === m && renderMessage(c, m)).catch(() => {});
  }
  const fwd = li.querySelector('.fwd');
  fwd.hidden = !m.forwarded;
  if (m.forwarded) {
    const u = users.get(m.forwarded.sender_id);
    fwd.textContent = `Forwarded from ${(u && u.display_name) || '…'}`;
    if (!u) user(m.forwarded.sender_id).then(() => c.id === current && c.messages.get(m.seq) === m && renderMessage(c, m)).catch(() => {});
  }
  const quote = li.querySelector('.quote');
  quote.hidden = !m.reply_to;
  if (m.reply_to) {
    const q = c.messages.get(m.reply_to);
    quote.textContent = q ? preview(q) : 'an earlier message';
  }
  li.querySelector('.body').textContent = m.deleted ? 'Message deleted' : m.text || '';
  const files = li.querySelector('.files');
  files.replaceChildren(...(m.deleted ? [] : (m.attachments || []).map(fileLink)));
  li.querySelector('.edited').hidden = !m.edited_at;
  const t = li.querySelector('time');
  if (m.date) {
    t.textContent = fmtTime(m.date);
    t.dateTime = new Date(m.date).toISOString();
  }
  const rx = li.querySelector('.reactions');
  rx.replaceChildren(...Object.entries(m.reactions || {}).map(([emoji, n]) => {
    const b = el('button', { type: 'button', className: 'reaction', textContent: `${emoji} ${n}` });
    b.dataset.emoji = emoji;
    b.ariaPressed = String(c.myReactions.has(`${m.seq}|${emoji}`));
    b.ariaLabel = `${emoji} ${n}: react`;
    return b;
  }));
  li.querySelector('.more').hidden = !m.seq || !!m.deleted;
  renderTicks(c, m, li);
  if (atEnd || mine) scrollToEnd();
}

function renderTicks(c, m, li) {
  li = li || document.querySelector(`#message-list li[data-key="${m.seq}"]`);
  if (!li || m.sender_id !== me.id) return;
  const t = li.querySelector('.ticks');
  const state = !m.seq ? 'pending' : c.peerRead >= m.seq ? 'read' : c.peerDelivered >= m.seq ? 'delivered' : 'sent';
  t.dataset.state = state;
  t.textContent = { pending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓' }[state];
  t.ariaLabel = state;
  t.title = state;
}

/** A relay file as a Blob, fetched with the bearer header. */
async function fetchFile(id) {
  const r = await fetch(`/files/${encodeURIComponent(id)}`, { headers: { authorization: `Bearer ${await api.accessToken()}` } });
  if (!r.ok) throw new Error(`download failed (${r.status})`);
  return r.blob();
}

/** Images up to this size get a preview above their link. */
const PREVIEW_MAX = 10 * 1024 * 1024;

/** Fetches a preview's image once it scrolls into view. */
const previews = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (!e.isIntersecting) continue;
    previews.unobserve(e.target);
    fetchFile(e.target.dataset.file)
      .then((blob) => {
        e.target.src = URL.createObjectURL(blob);
      })
      .catch(() => e.target.remove());
  }
}, { rootMargin: '200px' });

function fileLink(a) {
  if (a.duration_ms !== undefined) return voicePlayer(a, () => fetchFile(a.file_id));
  if (/^image\/(png|jpeg|gif|webp|avif)$/.test(a.mime || '') && a.size <= PREVIEW_MAX) {
    const box = el('figure', { className: 'preview' });
    const img = el('img', { alt: a.name, decoding: 'async' });
    img.dataset.file = a.file_id;
    previews.observe(img);
    box.append(img, el('figcaption', {}, fileAnchor(a)));
    return box;
  }
  return fileAnchor(a);
}

function fileAnchor(a) {
  const link = el('a', { className: 'file', textContent: `📄 ${a.name} (${fmtSize(a.size)})` });
  link.download = a.name;
  link.dataset.file = a.file_id;
  link.href = `/files/${encodeURIComponent(a.file_id)}`;
  // The token goes in the URL only at the moment of the click: a download link
  // cannot send a header, and a token in the page would expire.
  link.addEventListener('click', async (e) => {
    if (link.dataset.ready) {
      delete link.dataset.ready;
      return;
    }
    e.preventDefault();
    const token = await api.accessToken();
    link.href = `/files/${encodeURIComponent(a.file_id)}?access_token=${encodeURIComponent(token)}`;
    link.dataset.ready = '1';
    link.click();
    link.href = `/files/${encodeURIComponent(a.file_id)}`;
  });
  return link;
}

// ---- writing --------------------------------------------------------------------------

$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  sendText();
});

$('text').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    sendText();
  } else if (e.key === 'Escape') {
    cancelReply();
  }
});

let lastTyping = 0;
$('text').addEventListener('input', () => {
  const ta = $('text');
  ta.style.height = 'auto';
  ta.style.height = `${Math.min(ta.scrollHeight, 160)}px`;
  if (current && Date.now() - lastTyping > 3_000 && ta.value) {
    lastTyping = Date.now();
    socket.notify({ type: 'typing', chat_id: current });
  }
});

async function sendText() {
  const c = chats.get(current);
  const text = $('text').value.trim();
  if (!c || !text) return;
  $('text').value = '';
  $('text').style.height = 'auto';
  lastTyping = 0;
  if (editing) {
    const seq = editing;
    cancelReply();
    try {
      await socket.request({ type: 'edit', chat_id: c.id, seq, text });
    } catch (err) {
      flash(err);
    }
    return;
  }
  const content = { text };
  if (replyTo) content.reply_to = replyTo;
  cancelReply();
  await sendContent(c, content);
}

async function sendContent(c, content) {
  const cid = clientId();
  const pending = { chat_id: c.id, seq: 0, client_id: cid, sender_id: me.id, date: Date.now(), ...content };
  if (c.id === current) renderMessage(c, pending);
  try {
    await socket.send(c.id, cid, content);
  } catch (err) {
    const li = document.querySelector(`#message-list li[data-key="p-${CSS.escape(cid)}"]`);
    if (li) li.classList.add('failed');
    flash(err);
  }
}

function flash(err) {
  $('conn').textContent = err.message || String(err);
}

function cancelReply() {
  replyTo = null;
  if (editing) $('text').value = '';
  editing = null;
  $('reply-box').hidden = true;
}

// ---- message actions --------------------------------------------------------------------

let menuFor = null;
$('message-list').addEventListener('click', async (e) => {
  const li = e.target.closest('li.msg');
  if (!li || !li.dataset.seq) return;
  const c = chats.get(current);
  const seq = Number(li.dataset.seq);
  if (e.target.closest('.more')) {
    openMenu(li, seq, e.target.closest('.more'));
    return;
  }
  const r = e.target.closest('.reaction');
  if (r) react(c, seq, r.dataset.emoji).catch(flash);
});

function openMenu(li, seq, button) {
  const c = chats.get(current);
  const m = c.messages.get(seq);
  const menu = $('menu');
  menuFor = seq;
  menu.querySelector('[data-act=edit]').hidden = m.sender_id !== me.id || !m.text;
  menu.querySelector('[data-act=delete]').textContent = m.sender_id === me.id || c.role !== 'member' ? 'Delete for everyone' : 'Delete for me';
  li.append(menu);
  menu.hidden = false;
  button.ariaExpanded = 'true';
  menu.querySelector('button').focus();
}

function closeMenu() {
  const menu = $('menu');
  if (menu.hidden) return;
  menu.hidden = true;
  const b = menu.parentElement.querySelector('.more');
  if (b) {
    b.ariaExpanded = 'false';
    b.focus();
  }
  document.body.append(menu);
  menuFor = null;
}

document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') closeMenu();
});
document.addEventListener('click', (e) => {
  if (!e.target.closest('#menu') && !e.target.closest('.more')) closeMenu();
});

$('menu').addEventListener('click', async (e) => {
  const b = e.target.closest('button');
  if (!b || menuFor === null) return;
  const c = chats.get(current);
  const seq = menuFor;
  const m = c.messages.get(seq);
  closeMenu();
  try {
    if (b.dataset.act === 'reply') {
      replyTo = seq;
      editing = null;
      $('reply-label').textContent = `Reply to: ${preview(m)}`;
      $('reply-box').hidden = false;
      $('text').focus();
    } else if (b.dataset.act === 'forward') {
      openForward(c.id, seq);
    } else if (b.dataset.act === 'edit') {
      editing = seq;
      replyTo = null;
      $('reply-label').textContent = 'Editing';
      $('reply-box').hidden = false;
      $('text').value = m.text;
      $('text').focus();
    } else if (b.dataset.act === 'delete') {
      const everyone = m.sender_id === me.id || c.role !== 'member';
      await socket.request({ type: 'delete', chat_id: c.id, seq, for_everyone: everyone });
      if (!everyone) removeMessage(c, seq);
    } else if (b.dataset.act === 'react') {
      await react(c, seq, b.dataset.emoji);
    }
  } catch (err) {
    flash(err);
  }
});

/** The Forward dialog: one button per chat; the message goes there as a forward. */
function openForward(chatId, seq) {
  const list = [...chats.values()].filter((c) => c.kind !== 'channel' || c.role !== 'member');
  $('forward-list').replaceChildren(...list.map((c) => {
    const b = el('button', { type: 'button', className: 'forward-to', textContent: chatName(c) });
    b.addEventListener('click', async () => {
      $('forward-dialog').close();
      location.hash = `#/chat/${c.id}`;
      await sendContent(c, { forward_from: { chat_id: chatId, seq } });
    });
    return el('li', {}, b);
  }));
  $('forward-dialog').showModal();
}
$('forward-cancel').addEventListener('click', () => $('forward-dialog').close());

async function react(c, seq, emoji) {
  const remove = c.myReactions.has(`${seq}|${emoji}`);
  await socket.request({ type: 'react', chat_id: c.id, seq, emoji, remove });
}

$('reply-cancel').addEventListener('click', cancelReply);

// ---- files ------------------------------------------------------------------------------

/** Uploads under way on this page: fingerprint -> {name, size, done, chatId}. */
const active = new Map();

$('file').addEventListener('change', () => {
  const file = $('file').files[0];
  $('file').value = '';
  if (file && current) sendFile(chats.get(current), file);
});

/** Uploads `file` and sends it as a message; `extra` adds to the attachment (voice). */
async function sendFile(c, file, extra = {}) {
  const fp = fingerprint(file);
  if (active.has(fp)) return;
  const stored = pendingUploads().find((u) => u.fp === fp);
  const chatId = stored ? stored.chatId : c.id;
  active.set(fp, { name: file.name, size: file.size, done: stored ? stored.offset : 0, chatId });
  renderUploads();
  try {
    const id = await upload(file, {
      token: () => api.accessToken(),
      chatId,
      onProgress: (done) => {
        active.get(fp).done = done;
        renderUploads();
      },
    });
    active.delete(fp);
    renderUploads();
    await sendContent(chats.get(chatId), { attachments: [{ file_id: id, name: file.name, size: file.size, mime: file.type || 'application/octet-stream', ...extra }] });
  } catch (err) {
    active.delete(fp);
    renderUploads();
    flash(err);
  }
}

/** Progress of this chat's uploads, and those a reload interrupted (to resume). */
function renderUploads() {
  const box = $('uploads');
  if (!current) return;
  const rows = [];
  const here = [...active.entries()].filter(([, u]) => u.chatId === current);
  for (const [fp, u] of here) rows.push(uploadRow(fp, u, false));
  for (const u of pendingUploads()) {
    if (u.chatId !== current || active.has(u.fp)) continue;
    rows.push(uploadRow(u.fp, { name: u.name, size: u.size, done: u.offset }, true));
  }
  box.replaceChildren(...rows);
}

function uploadRow(fp, u, paused) {
  const row = el('div', { className: `upload${paused ? ' paused' : ''}` });
  row.dataset.fp = fp;
  const pct = u.size ? Math.floor((u.done / u.size) * 100) : 100;
  const bar = el('progress', { max: u.size || 1, value: u.done });
  bar.ariaLabel = `Uploading ${u.name}`;
  row.append(el('span', { className: 'name', textContent: u.name }), bar, el('span', { className: 'pct', textContent: `${pct}%` }));
  if (paused) {
    const pick = el('label', { className: 'button resume' }, `Choose ${u.name} again to resume`);
    const input = el('input', { type: 'file', className: 'sr' });
    input.addEventListener('change', () => {
      const f = input.files[0];
      if (!f) return;
      if (fingerprint(f) !== fp) {
        flash(new Error(`that is not ${u.name}: choose the same file`));
        return;
      }
      sendFile(chats.get(current), f);
    });
    pick.append(input);
    const drop = el('button', { type: 'button', className: 'link', textContent: 'Discard' });
    drop.addEventListener('click', () => {
      forgetUpload(fp);
      renderUploads();
    });
    row.append(pick, drop);
  }
  return row;
}

// ---- voice messages ----------------------------------------------------------------------

let recorder = null;

$('record').addEventListener('click', async () => {
  if (!current) return;
  if (!recorder) {
    try {
      recorder = await VoiceRecorder.start((ms) => {
        $('rec-time').textContent = fmtDuration(ms);
      });
    } catch (err) {
      flash(new Error(`no microphone: ${err.message}`));
      return;
    }
    recorder.chatId = current;
    $('rec-time').textContent = '0:00';
    $('recording').hidden = false;
    $('record').ariaPressed = 'true';
    $('record').ariaLabel = 'Stop and send the voice message';
    return;
  }
  const r = recorder;
  recorder = null;
  resetRecording();
  const voice = await r.stop();
  if (voice) await sendFile(chats.get(r.chatId), voice.file, { duration_ms: voice.duration_ms, waveform: voice.waveform });
});

$('rec-cancel').addEventListener('click', () => {
  if (recorder) recorder.stop(true);
  recorder = null;
  resetRecording();
});

function resetRecording() {
  $('recording').hidden = true;
  $('record').ariaPressed = 'false';
  $('record').ariaLabel = 'Record a voice message';
}

// ---- new chat -------------------------------------------------------------------------

$('new-chat').addEventListener('click', () => {
  $('new-chat-error').textContent = '';
  $('new-chat-form').reset();
  syncKind();
  $('new-chat-dialog').showModal();
  $('new-phones').focus();
});
$('new-chat-cancel').addEventListener('click', () => $('new-chat-dialog').close());
const syncKind = () => {
  const group = $('new-chat-form').kind.value === 'group';
  for (const e of document.querySelectorAll('.group-only')) e.hidden = !group;
};
for (const r of document.querySelectorAll('input[name=kind]')) r.addEventListener('change', syncKind);

$('new-chat-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const kind = $('new-chat-form').kind.value;
  const phones = $('new-phones').value.split(/[\n,;]+/).map((s) => s.trim()).filter(Boolean);
  try {
    if (!phones.length) throw new Error('type a phone number');
    const found = [];
    for (const phone of phones) {
      try {
        found.push(await api.post('/api/users/lookup', { phone }));
      } catch (err) {
        throw new Error(err.code === 'not_found' ? `nobody with ${phone} can be found` : err.message);
      }
    }
    for (const u of found) users.set(u.id, u);
    const info = kind === 'dialog'
      ? await api.post('/api/dialogs', { user_id: found[0].id })
      : await api.post('/api/chats', { kind: 'group', title: $('new-title').value.trim() || 'Group', members: found.map((u) => u.id) });
    if (!chats.has(info.id)) {
      const c = newChat(info);
      chats.set(c.id, c);
      await describe(c);
    }
    $('new-chat-dialog').close();
    location.hash = `#/chat/${info.id}`;
  } catch (err) {
    showError($('new-chat-error'), err);
  }
});

// ---- devices ----------------------------------------------------------------------------

$('open-settings').addEventListener('click', async () => {
  $('settings').showModal();
  await renderSessions();
});
$('settings-close').addEventListener('click', () => $('settings').close());

async function renderSessions() {
  const { sessions } = await api.get('/api/sessions');
  $('sessions').replaceChildren(...sessions.map((s) => {
    const li = el('li', { className: 'session' });
    li.append(el('span', { textContent: `${s.device_name || 'Unnamed device'}${s.current ? ' (this device)' : ''}` }),
      el('time', { textContent: `active ${new Date(s.last_used_at || s.created_at).toLocaleString([], { dateStyle: 'short', timeStyle: 'short' })}` }));
    if (!s.current) {
      const b = el('button', { type: 'button', className: 'danger', textContent: 'End' });
      b.ariaLabel = `End the session of ${s.device_name || 'this device'}`;
      b.addEventListener('click', async () => {
        await api.call('DELETE', `/api/sessions/${encodeURIComponent(s.id)}`);
        await renderSessions();
      });
      li.append(b);
    }
    return li;
  }));
}

$('logout').addEventListener('click', () => {
  $('settings').close();
  api.logout(false).catch(() => {});
});
$('logout-all').addEventListener('click', () => {
  $('settings').close();
  api.logout(true).catch(() => {});
});

// ---- start --------------------------------------------------------------------------------

// For tests and debugging only: connection state, never message contents or tokens.
window.maxd = {
  socket: null,
  saving: false,
  saved: 0,
  get chatCount() {
    return chats.size;
  },
};

registerWorker();
if (api.loggedIn) {
  enter().catch((e) => {
    if (!api.loggedIn) showLogin('phone-form');
    else showError($('login-error'), e);
  });
} else {
  showLogin('phone-form');
}
