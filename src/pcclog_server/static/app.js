/* pcclog browser log viewer: the wiring.
 *
 * Plain modern JavaScript modules, no build step, no external requests
 * (everything is served flat from /static/ by the pcclog server):
 *   protocol.js  what is sent and how replies are taken (pure; tested in Node)
 *   levels.js    the level table, fetched from GET /levels.json
 *   format.js    entries and states as text (pure)
 *   store.js     Web Storage (token, theme)
 *   dom.js       DOM helpers, toasts, clipboard, download
 *   pane.js      one log pane
 *   render.js    session list, pane grid, frame loop
 *   app.js       this file: the WebSocket, timers, views, keyboard, sign-in
 *
 * The page connects only once it has the level table; if GET /levels.json
 * fails, that counts as a failed connection attempt (shown as
 * "reconnecting" with the reason, retried on the usual backoff).
 */

import { $, toast } from './dom.js';
import { loadLevels } from './levels.js';
import { LIST_WAIT_MS, ViewerProtocol } from './protocol.js';
import { renameGapRow } from './pane.js';
import { createView } from './render.js';
import { clearToken, getTheme, getToken, getWsOverride, setTheme, setToken } from './store.js';

// ---------------------------------------------------------------- DOM refs
const connStateEl = $('conn-state');
const connDetailEl = $('conn-detail');
const retryBtn = $('retry-now');
const signinView = $('signin-view');
const appView = $('app-view');
const signinForm = $('signin-form');
const tokenInput = $('token-input');
const authErrorEl = $('auth-error');
const signOutBtn = $('sign-out');
const themeBtn = $('theme-toggle');

// ---------------------------------------------------------------- state
let levels = null;          // the server's level table, once loaded
let levelsLoading = null;   // the pending load, if any

// The socket, its timers and the page's connection state; the protocol's
// own state lives in `proto`.
const conn = { ws: null, gen: 0, state: 'signed-out', timer: 0, listTimer: 0, retryAt: 0, why: '' };

const proto = new ViewerProtocol({
  send,
  created(s) { view.insertItem(s); view.markDirty(s); view.updateSummary(); },
  entry(s, e) { view.enqueue(s, e); },
  changed(s) { view.markDirty(s); },
  gapRenamed: renameGapRow,
  authed() { setConnState('connected', ''); },
  signOut,
  problem(text) { toast(text, 'error'); },
  priority() { return view.panes.keys(); },
}, { now: Date.now() });

const view = createView({
  sessions: proto.sessions,
  ensureSession: (id) => proto.ensureSession(id),
  levels: () => levels,
});

// ---------------------------------------------------------------- theme
const THEMES = ['auto', 'light', 'dark'];
function applyTheme(t) {
  if (!THEMES.includes(t)) t = 'auto';
  if (t === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  themeBtn.textContent = 'Theme: ' + t;
  themeBtn.setAttribute('aria-label', t === 'auto' ? 'Colour theme: follow the system (click for light)'
    : 'Colour theme: ' + t + ' (click to change)');
  themeBtn.dataset.theme = t;
}
themeBtn.addEventListener('click', () => {
  const cur = themeBtn.dataset.theme || 'auto';
  const next = THEMES[(THEMES.indexOf(cur) + 1) % THEMES.length];
  setTheme(next);
  applyTheme(next);
});
applyTheme(getTheme() || 'auto');

// ---------------------------------------------------------------- views
function showSignIn(message) {
  appView.hidden = true;
  signinView.hidden = false;
  signOutBtn.hidden = true;
  retryBtn.hidden = true;
  if (message) {
    authErrorEl.textContent = message;
    authErrorEl.hidden = false;
    tokenInput.setAttribute('aria-invalid', 'true');
  } else {
    authErrorEl.textContent = '';
    authErrorEl.hidden = true;
    tokenInput.removeAttribute('aria-invalid');
  }
  tokenInput.value = '';
  tokenInput.focus();
}
function showApp() {
  signinView.hidden = true;
  appView.hidden = false;
  signOutBtn.hidden = false;
}

function setConnState(state, detail) {
  conn.state = state;
  if (connStateEl.textContent !== state) connStateEl.textContent = state;
  connStateEl.dataset.state = state;
  connDetailEl.textContent = detail || '';
  document.documentElement.dataset.conn = state;
  retryBtn.hidden = !(state === 'reconnecting' && conn.timer);
}

// ---------------------------------------------------------------- level table
/** The level table, fetched once; a failed fetch is forgotten so the next
 *  connection attempt fetches again. */
function needLevels() {
  if (!levelsLoading) {
    levelsLoading = loadLevels().then(
      (table) => { levels = table; proto.levels = table; return table; },
      (err) => { levelsLoading = null; throw err; });
  }
  return levelsLoading;
}
needLevels().catch(() => { /* connect() reports it */ });

// ---------------------------------------------------------------- connection
function wsUrl() {
  const o = getWsOverride();   // debugging only, never from the URL
  if (o && /^wss?:\/\/[^\s]+$/i.test(o)) return o;
  return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/';
}

function send(obj) {
  const ws = conn.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  try { ws.send(JSON.stringify(obj)); return true; } catch { return false; }
}

function teardownSocket() {
  clearTimeout(conn.listTimer);
  conn.listTimer = 0;
  const ws = conn.ws;
  conn.ws = null;
  proto.authed = false;
  if (ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(1000, 'bye'); } catch { /* already closed */ }
  }
}

function connect() {
  clearTimeout(conn.timer);
  conn.timer = 0;
  const token = getToken();
  if (token === null) { signOut(null); return; }
  teardownSocket();
  const gen = ++conn.gen;
  proto.connecting(Date.now());
  setConnState('reconnecting', proto.everConnected ? 'reconnecting…' : 'connecting…');
  if (!levels) {
    needLevels().then(
      () => { if (gen === conn.gen) connect(); },
      (err) => { if (gen === conn.gen) scheduleReconnect(err.message); });
    return;
  }
  let ws;
  try { ws = new WebSocket(wsUrl()); } catch (err) {
    scheduleReconnect('cannot open WebSocket: ' + (err && err.message));
    return;
  }
  conn.ws = ws;
  ws.onopen = () => { if (gen === conn.gen) onOpen(token); };
  ws.onmessage = (ev) => {
    if (gen !== conn.gen) return;
    view.stats.messages++;
    proto.receive(ev.data, Date.now());
  };
  ws.onclose = (ev) => { if (gen === conn.gen) onClose(ev); };
  ws.onerror = () => { /* a close event follows */ };
}

function onOpen(token) {
  setConnState('reconnecting', 'authenticating…');
  if (proto.opened(token, Date.now())) {
    conn.listTimer = setTimeout(() => proto.resubscribe(null), LIST_WAIT_MS);
  }
}

function onClose(ev) {
  conn.ws = null;
  clearTimeout(conn.listTimer);
  const next = proto.closed(ev.code, ev.reason, Date.now());
  if (next.signOut) signOut(next.signOut);
  else scheduleReconnect(next.retry);
}

function scheduleReconnect(why) {
  teardownSocket();
  clearTimeout(conn.timer);
  const delay = proto.nextRetry(Math.random());
  conn.retryAt = Date.now() + delay;
  conn.timer = setTimeout(connect, delay);
  conn.why = why || '';
  updateRetryDetail();
}

function updateRetryDetail() {
  if (conn.state === 'signed-out' || !conn.timer) return;
  const left = Math.max(0, conn.retryAt - Date.now());
  setConnState('reconnecting', (conn.why ? conn.why + ' · ' : '') + 'retry in ' + Math.ceil(left / 1000) + ' s');
}

function retryNow() {
  if (conn.timer && getToken() !== null) connect();
}
retryBtn.addEventListener('click', retryNow);
window.addEventListener('online', retryNow);
document.addEventListener('visibilitychange', () => { if (!document.hidden) { retryNow(); view.scheduleFrame(); } });

function signOut(message) {
  clearToken();
  clearTimeout(conn.timer);
  conn.timer = 0;
  conn.gen++;
  teardownSocket();
  proto.reset();
  setConnState('signed-out', '');
  view.reset();
  showSignIn(message);
}

const SOCKET_STATES = ['connecting', 'open', 'closing', 'closed'];   // by WebSocket.readyState

// Keepalive: the server pings at the WebSocket level, which a page cannot
// see; an idle connection gets an application ping so a dead link is noticed.
setInterval(() => {
  const ws = conn.ws;
  const why = proto.tick(Date.now(), ws ? SOCKET_STATES[ws.readyState] : 'none');
  if (why) scheduleReconnect(why);
}, 5000);

// Time since last output, once a second.
setInterval(() => {
  view.renderAllCounts();
  if (conn.state === 'reconnecting' && conn.timer) updateRetryDetail();
}, 1000);

// ---------------------------------------------------------------- keyboard
function isTyping(t) {
  if (!t || !t.tagName) return false;
  const tag = t.tagName;
  return tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT' || t.isContentEditable;
}

document.addEventListener('keydown', (e) => {
  if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
  if (appView.hidden) return;
  if (e.key === 'Escape') {
    const id = view.maximized();
    if (id !== null) {
      view.toggleMaximize(null);
      const p = view.panes.get(id);
      if (p && isTyping(e.target)) p.logEl.focus();
      e.preventDefault();
    }
    return;
  }
  if (isTyping(e.target)) return;
  const p = view.activePane();
  if (e.key === '/') {
    e.preventDefault();
    if (p) { p.searchEl.focus(); p.searchEl.select(); } else view.focusFilter();
  } else if (e.key === 'f' && p) {
    e.preventDefault();
    p.setFollow(!p.follow);
  } else if (e.key === 'm' && p) {
    e.preventDefault();
    view.toggleMaximize(p.id);
  }
});

// ---------------------------------------------------------------- sign-in
signinForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const token = tokenInput.value.trim();
  if (!token) {
    authErrorEl.textContent = 'Enter an access token.';
    authErrorEl.hidden = false;
    tokenInput.setAttribute('aria-invalid', 'true');
    tokenInput.focus();
    return;
  }
  setToken(token);
  tokenInput.value = '';
  start();
});
signOutBtn.addEventListener('click', () => signOut(null));

function takeTokenFromUrl() {
  let url;
  try { url = new URL(location.href); } catch { return; }
  let token = null;
  let changed = false;
  if (url.hash.length > 1) {
    const hp = new URLSearchParams(url.hash.slice(1));
    if (hp.has('token')) {
      token = hp.get('token');
      hp.delete('token');
      const rest = hp.toString();
      url.hash = rest ? '#' + rest : '';
      changed = true;
    }
  }
  if (url.searchParams.has('token')) {
    const q = url.searchParams.get('token');
    if (token === null) token = q;
    url.searchParams.delete('token');
    changed = true;
  }
  if (changed) {
    try { history.replaceState(history.state, '', url.pathname + url.search + url.hash); } catch { /* ignore */ }
  }
  if (token) setToken(token.trim());
}

function start() {
  showApp();
  authErrorEl.hidden = true;
  proto.attempt = 0;
  connect();
}

takeTokenFromUrl();
if (getToken() !== null) start();
else { setConnState('signed-out', ''); showSignIn(null); }

// For automated tests and debugging (read-only view of the state).
window.pcclog = Object.freeze({
  state: () => ({
    conn: conn.state, attempt: proto.attempt, sessions: proto.sessions.size, panes: [...view.panes.keys()],
    lastSeq: Object.fromEntries([...proto.sessions.values()].map((s) => [s.id, s.lastSeq])),
    levels: levels ? [...levels.names] : null,
    stats: { ...view.stats },
  }),
});
