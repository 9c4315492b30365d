/* pcclog browser log viewer.
 *
 * Plain modern JavaScript, no build step, no external requests.
 *
 * Message flow (SPEC.md section 3):
 *   open  -> {"type":"auth","token":T}
 *         -> {"type":"list"}                        (reply `sessions` = auth ok)
 *   first connection:
 *         -> {"type":"subscribe","sessionId":"*","tail":500}
 *   reconnect (sessions already known), once the `sessions` reply is in:
 *         -> {"type":"subscribe","sessionId":ID,"since":lastSeq-1} per known session
 *            (one entry of overlap: if the server's entry at lastSeq is not the
 *            one this page has, the server restarted and its numbering started
 *            again; the page then re-subscribes with since 0 and marks the spot)
 *         -> {"type":"subscribe","sessionId":ID,"tail":500}        per listed, unseen one
 *         -> {"type":"subscribe","sessionId":"*","tail":0}         later sessions
 *   Entries with seq <= the highest seq seen for their session are dropped,
 *   so a duplicate delivery can never show twice.
 *
 * Rendering: every incoming entry goes to a bounded per-session buffer
 * (BUFFER_MAX) and, if the session has an open pane, to that pane's queue.
 * Once per animation frame each pane appends its queue as one
 * DocumentFragment and trims to ROWS_MAX rows; scrolling happens after all
 * DOM writes. Log text only ever goes through textContent / text nodes.
 */
'use strict';

(() => {
  // ---------------------------------------------------------------- constants
  const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];
  const LEVEL_NUM = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };
  const LEVEL_ALIASES = {
    warning: 'warn', err: 'error', critical: 'fatal', crit: 'fatal', panic: 'fatal',
    emerg: 'fatal', emergency: 'fatal', alert: 'fatal', notice: 'info',
    information: 'info', informational: 'info', verbose: 'debug', dbg: 'debug', trc: 'trace',
  };
  const LEVEL_LABEL = { trace: 'TRACE', debug: 'DEBUG', info: 'INFO ', warn: 'WARN ', error: 'ERROR', fatal: 'FATAL' };
  const PINO_LEVELS = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' };
  const BUFFER_MAX = 5000;          // entries kept per session (download source)
  const ROWS_MAX = 1000;            // DOM rows per following pane
  const PAUSED_ROWS_MAX = 2000;     // a paused pane keeps appending up to this, then freezes
  const INITIAL_TAIL = 500;
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 10000;
  const MAX_RESUME_SUBS = 100;      // server default MAX_SUBSCRIPTIONS is 128
  const LIST_WAIT_MS = 3000;
  const CONNECT_TIMEOUT_MS = 15000;
  const PING_IDLE_MS = 25000;
  const PING_TIMEOUT_MS = 10000;
  const MSG_DISPLAY_MAX = 8000;     // characters of a message shown in a row (copy/download keep all)
  const DATA_DISPLAY_MAX = 2000;
  const CHUNK = 50;
  const MAX_FRAME_GAP_MS = 200;
  const FOLLOW_BATCH_MAX = 150;     // rows drawn per pane per frame while following                 // rows per content-visibility chunk
  const MAX_MARKS = 200;
  const TOKEN_KEY = 'pcclog.token';
  const THEME_KEY = 'pcclog.theme';
  const WS_OVERRIDE_KEY = 'pcclogWsUrl';

  // ---------------------------------------------------------------- helpers
  const $ = (id) => document.getElementById(id);

  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    if (props) {
      for (const k of Object.keys(props)) {
        const v = props[k];
        if (v == null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of kids) if (c != null) el.append(c);
    return el;
  }

  function storageGet(store, key) {
    try { return store.getItem(key); } catch { return null; }
  }
  function storageSet(store, key, value) {
    try { store.setItem(key, value); } catch { /* storage disabled */ }
  }
  function storageDel(store, key) {
    try { store.removeItem(key); } catch { /* storage disabled */ }
  }
  const getToken = () => storageGet(sessionStorage, TOKEN_KEY);
  const setToken = (t) => storageSet(sessionStorage, TOKEN_KEY, t);
  const clearToken = () => storageDel(sessionStorage, TOKEN_KEY);

  function normLevel(level) {
    if (typeof level === 'number') return PINO_LEVELS[level] || 'info';
    if (typeof level !== 'string' || !level) return 'info';
    const l = level.toLowerCase();
    if (LEVEL_NUM[l]) return l;
    return LEVEL_ALIASES[l] || l;
  }
  const levelNum = (l) => LEVEL_NUM[l] || LEVEL_NUM.info;

  const p2 = (n) => (n < 10 ? '0' : '') + n;
  const p3 = (n) => (n < 10 ? '00' : n < 100 ? '0' : '') + n;
  function fmtTime(ts) {
    const d = new Date(ts);
    const t = d.getTime();
    if (t !== t) return typeof ts === 'string' ? ts.slice(0, 12) : '';
    return p2(d.getHours()) + ':' + p2(d.getMinutes()) + ':' + p2(d.getSeconds()) + '.' + p3(d.getMilliseconds());
  }

  function fmtAgo(ms) {
    if (!ms) return 'no output';
    let s = Math.floor((Date.now() - ms) / 1000);
    if (s < 1) return 'just now';
    if (s < 60) return s + 's ago';
    let m = Math.floor(s / 60); s %= 60;
    if (m < 60) return m + 'm ' + s + 's ago';
    const hr = Math.floor(m / 60); m %= 60;
    if (hr < 48) return hr + 'h ' + m + 'm ago';
    return Math.floor(hr / 24) + 'd ago';
  }

  function plural(n, one, many) { return n + ' ' + (n === 1 ? one : many); }

  function dataString(e) {
    if (e._ds === undefined) {
      if (e.data === undefined || e.data === null) e._ds = '';
      else {
        try { e._ds = typeof e.data === 'string' ? e.data : JSON.stringify(e.data); }
        catch { e._ds = String(e.data); }
      }
    }
    return e._ds;
  }

  function statusLabel(status, metadata) {
    const code = metadata && metadata.exitCode;
    const hasCode = code !== undefined && code !== null && code !== '';
    if (status === 'stopped') return hasCode ? 'stopped (exit ' + code + ')' : 'stopped';
    if (status === 'error') return hasCode ? 'error (exit ' + code + ')' : 'error';
    if (status === 'running') return 'running';
    return status || 'unknown';
  }

  function gapText(e) {
    return plural(e.count, 'line', 'lines') + ' missed (' + e.reason + ')';
  }
  const GAP_HELP = {
    evicted: 'older than the server\'s history for this session',
    slow_consumer: 'this viewer fell behind and the server dropped lines for it',
    'not received': 'the sequence numbers jumped without a gap notice',
  };

  function entryLine(e) {
    if (e.kind === 'note') return '--- ' + e.text + ' ---';
    if (e.kind === 'gap') return '--- ' + gapText(e) + ' [seq ' + e.fromSeq + '..' + e.toSeq + '] ---';
    if (e.kind === 'status') {
      return (e.timestamp || '') + ' STATUS ' + statusLabel(e.status, e.metadata) +
        (e.metadata && Object.keys(e.metadata).length ? ' ' + safeJson(e.metadata) : '');
    }
    const ds = dataString(e);
    return (e.timestamp || '') + ' ' + e.level.toUpperCase() + ' ' + e.message + (ds ? ' ' + ds : '');
  }
  function safeJson(v) { try { return JSON.stringify(v); } catch { return String(v); } }

  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

  // ---------------------------------------------------------------- toasts
  const toastsEl = $('toasts');
  const toastByText = new Map();
  function toast(text, kind) {
    const prev = toastByText.get(text);
    if (prev) {
      prev.count++;
      prev.el.firstChild.textContent = text + ' (×' + prev.count + ')';
      clearTimeout(prev.timer);
      prev.timer = setTimeout(() => dropToast(text), 6000);
      return;
    }
    const el = h('div', { class: 'toast toast-' + (kind || 'info'), 'data-testid': 'toast', role: kind === 'error' ? 'alert' : null },
      h('span', { text }),
      h('button', { class: 'toast-close', type: 'button', 'aria-label': 'Dismiss', onclick: () => dropToast(text) }));
    toastsEl.append(el);
    const rec = { el, count: 1, timer: setTimeout(() => dropToast(text), 6000) };
    toastByText.set(text, rec);
    while (toastsEl.childElementCount > 4) {
      const first = toastsEl.firstElementChild;
      for (const [k, v] of toastByText) if (v.el === first) { clearTimeout(v.timer); toastByText.delete(k); }
      first.remove();
    }
  }
  function dropToast(text) {
    const rec = toastByText.get(text);
    if (!rec) return;
    clearTimeout(rec.timer);
    rec.el.remove();
    toastByText.delete(text);
  }

  // ---------------------------------------------------------------- clipboard / download
  async function copyText(text) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        return true;
      }
    } catch { /* fall back below */ }
    const active = document.activeElement;
    const ta = h('textarea', { class: 'offscreen', readonly: true, 'aria-hidden': 'true' });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    ta.remove();
    if (active && typeof active.focus === 'function') active.focus({ preventScroll: true });
    return ok;
  }

  function downloadSession(s) {
    const head = '# pcclog session ' + s.id + ' - ' + statusLabel(s.status, s.metadata) +
      ' - ' + s.entries.length + ' buffered entries (at most ' + BUFFER_MAX + '), saved ' +
      new Date().toISOString();
    const lines = [head];
    for (const e of s.entries) lines.push(entryLine(e));
    const blob = new Blob([lines.join('\n') + '\n'], { type: 'text/plain;charset=utf-8' });
    const url = URL.createObjectURL(blob);
    const safe = s.id.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80) || 'session';
    const stamp = new Date().toISOString().replace(/[:]/g, '').replace(/\..*$/, '');
    const a = h('a', { href: url, download: safe + '-' + stamp + '.log', class: 'offscreen' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  }

  // ---------------------------------------------------------------- state
  /** @type {Map<string, any>} */
  const sessions = new Map();
  /** @type {Map<string, Pane>} */
  const panes = new Map();
  const dirtySessions = new Set();
  let maximizedId = null;
  let activePaneId = null;
  let rafId = 0;

  const conn = {
    ws: null, gen: 0, state: 'signed-out', attempt: 0, timer: 0, listTimer: 0,
    authed: false, subscribed: false, resume: false, everConnected: false,
    startedAt: 0, openedAt: 0, lastRx: 0, pingSentAt: 0, retryAt: 0,
  };

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
  const listEl = $('session-list');
  const noSessionsEl = $('no-sessions');
  const summaryEl = $('session-summary');
  const filterEl = $('session-filter');
  const panesEl = $('panes');
  const noPanesEl = $('no-panes');

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
    storageSet(localStorage, THEME_KEY, next);
    applyTheme(next);
  });
  applyTheme(storageGet(localStorage, THEME_KEY) || 'auto');

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

  // ---------------------------------------------------------------- connection
  function wsUrl() {
    const o = storageGet(localStorage, WS_OVERRIDE_KEY);   // debugging only, never from the URL
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
    conn.authed = false;
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
    conn.subscribed = false;
    conn.startedAt = Date.now();
    setConnState('reconnecting', conn.everConnected ? 'reconnecting…' : 'connecting…');
    let ws;
    try { ws = new WebSocket(wsUrl()); } catch (err) {
      scheduleReconnect('cannot open WebSocket: ' + (err && err.message));
      return;
    }
    conn.ws = ws;
    ws.onopen = () => { if (gen === conn.gen) onOpen(token); };
    ws.onmessage = (ev) => { if (gen === conn.gen) onRaw(ev.data); };
    ws.onclose = (ev) => { if (gen === conn.gen) onClose(ev); };
    ws.onerror = () => { /* a close event follows */ };
  }

  function onOpen(token) {
    const now = Date.now();
    conn.openedAt = now;
    conn.lastRx = now;
    conn.pingSentAt = 0;
    conn.resume = sessions.size > 0;
    conn.subscribed = !conn.resume;
    setConnState('reconnecting', 'authenticating…');
    send({ type: 'auth', token });
    if (!conn.resume) {
      send({ type: 'list' });
      send({ type: 'subscribe', sessionId: '*', tail: INITIAL_TAIL });
    } else {
      // Wait for the `sessions` reply so each known session can resume with
      // `since` before the wildcard covers it; fall back after a while.
      conn.listTimer = setTimeout(() => resubscribe(null), LIST_WAIT_MS);
      send({ type: 'list' });
    }
  }

  function resubscribe(listed) {
    if (conn.subscribed) return;
    conn.subscribed = true;
    clearTimeout(conn.listTimer);
    conn.listTimer = 0;
    const order = [...panes.keys()];
    for (const id of sessions.keys()) if (!panes.has(id)) order.push(id);
    let n = 0;
    for (const id of order) {
      const s = sessions.get(id);
      if (!s || (listed && !listed.has(id)) || (!listed && s.gone)) continue;
      if (n++ >= MAX_RESUME_SUBS) break;   // the rest resume live through `*` (a gap marker shows the hole)
      if (s.lastSeq > 0) {
        s.verifySeq = s.lastKey !== null ? s.lastSeq : 0;
        send({ type: 'subscribe', sessionId: id, since: s.lastSeq - (s.verifySeq ? 1 : 0) });
      }
      else send({ type: 'subscribe', sessionId: id, tail: INITIAL_TAIL });
    }
    send({ type: 'subscribe', sessionId: '*', tail: 0 });
  }

  function markAuthed() {
    if (conn.authed) return;
    conn.authed = true;
    conn.everConnected = true;
    setConnState('connected', '');
  }

  function onClose(ev) {
    const wasAuthed = conn.authed;
    const lived = conn.openedAt ? Date.now() - conn.openedAt : 0;
    const opened = conn.openedAt >= conn.startedAt;
    conn.ws = null;
    conn.authed = false;
    clearTimeout(conn.listTimer);
    if (ev.code === 1008 && opened && (!wasAuthed || /token|auth|expir|credential/i.test(ev.reason || ''))) {
      signOut('The server refused the connection' + (ev.reason ? ': ' + ev.reason : ' (token rejected or expired)') + '.');
      return;
    }
    if (wasAuthed && lived > 5000) conn.attempt = 0;
    const why = ev.code === 1001 ? 'server restarting' : ev.code === 1013 ? 'viewer too slow'
      : ev.code === 1006 ? 'connection lost' : 'closed (' + ev.code + (ev.reason ? ' ' + ev.reason : '') + ')';
    scheduleReconnect(why);
  }

  function scheduleReconnect(why) {
    teardownSocket();
    clearTimeout(conn.timer);
    const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * Math.pow(2, conn.attempt));
    const delay = Math.round(base / 2 + Math.random() * base / 2);   // jitter in [base/2, base]
    conn.attempt = Math.min(conn.attempt + 1, 30);
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
  document.addEventListener('visibilitychange', () => { if (!document.hidden) { retryNow(); scheduleFrame(); } });

  function signOut(message) {
    clearToken();
    clearTimeout(conn.timer);
    conn.timer = 0;
    conn.gen++;
    teardownSocket();
    conn.attempt = 0;
    conn.everConnected = false;
    setConnState('signed-out', '');
    resetData();
    showSignIn(message);
  }

  function resetData() {
    for (const p of [...panes.values()]) p.destroy();
    panes.clear();
    sessions.clear();
    dirtySessions.clear();
    listEl.replaceChildren();
    maximizedId = null;
    activePaneId = null;
    layoutPanes();
    updateSummary();
  }

  // Keepalive: the server pings at the WebSocket level, which a page cannot
  // see; an idle connection gets an application ping so a dead link is noticed.
  setInterval(() => {
    const ws = conn.ws;
    const now = Date.now();
    if (ws && ws.readyState === WebSocket.CONNECTING && now - conn.startedAt > CONNECT_TIMEOUT_MS) {
      scheduleReconnect('connect timeout');
      return;
    }
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (conn.pingSentAt && conn.lastRx < conn.pingSentAt && now - conn.pingSentAt > PING_TIMEOUT_MS) {
      conn.authed = false;
      scheduleReconnect('no answer to ping');
      return;
    }
    if (now - conn.lastRx > PING_IDLE_MS && (!conn.pingSentAt || conn.lastRx >= conn.pingSentAt)) {
      conn.pingSentAt = now;
      send({ type: 'ping' });
    }
  }, 5000);

  // ---------------------------------------------------------------- messages
  function onRaw(raw) {
    conn.lastRx = Date.now();
    stats.messages++;
    if (typeof raw !== 'string') return;
    let m;
    try { m = JSON.parse(raw); } catch { return; }
    if (!m || typeof m !== 'object') return;
    if (m.type === 'error') { onError(m); return; }
    markAuthed();
    switch (m.type) {
      case 'log': onLog(m); break;
      case 'status': onStatus(m); break;
      case 'gap': onGap(m); break;
      case 'sessions': onSessions(m); break;
      default: break;   // pong and anything newer
    }
  }

  function onError(m) {
    const code = String(m.code || 'ERROR');
    const sid = typeof m.sessionId === 'string' ? m.sessionId : null;
    if (code === 'UNAUTHORIZED' && (!conn.authed || !sid || sid === '*')) {
      signOut(m.message ? 'Unauthorized: ' + m.message : 'Unauthorized: the token was rejected.');
      return;
    }
    markAuthed();
    const failed = sid ? sessions.get(sid) : null;
    if (failed && failed.resync) failed.resync = false;   // the re-subscription did not happen
    if (code === 'SESSION_NOT_FOUND' && sid) {
      const s = sessions.get(sid);
      if (s) { s.gone = true; markDirty(s); }
      return;   // the server keeps the subscription pending; nothing to tell the user
    }
    if (conn.resume && !conn.subscribed && !sid) resubscribe(null);   // e.g. a server without `list`
    toast(code + (sid ? ' [' + sid + ']' : '') + ': ' + (m.message || ''), 'error');
  }

  function onSessions(m) {
    const list = Array.isArray(m.sessions) ? m.sessions : [];
    const listed = new Set();
    for (const info of list) {
      if (!info || typeof info.sessionId !== 'string') continue;
      listed.add(info.sessionId);
      const s = ensureSession(info.sessionId);
      if (typeof info.status === 'string') s.status = info.status;
      if (info.metadata && typeof info.metadata === 'object') s.metadata = info.metadata;
      if (typeof info.lastSeq === 'number') {
        s.serverLastSeq = info.lastSeq;
        if (info.lastSeq < s.lastSeq) resetSeq(s, 'the server has fewer entries than this page saw (restarted?)');
      }
      s.gone = false;
      markDirty(s);
    }
    for (const s of sessions.values()) {
      if (!listed.has(s.id) && !s.gone) { s.gone = true; markDirty(s); }
    }
    if (conn.resume && !conn.subscribed) resubscribe(listed);
  }

  function newSession(id) {
    return {
      id, status: 'unknown', metadata: {}, lastSeq: 0, serverLastSeq: 0, entries: [],
      lastKey: null, verifySeq: 0, resync: false,
      lines: 0, errors: 0, lastOutput: 0, gone: false, item: null,
    };
  }

  function ensureSession(id) {
    let s = sessions.get(id);
    if (s) return s;
    s = newSession(id);
    sessions.set(id, s);
    insertItem(s);
    markDirty(s);
    updateSummary();
    return s;
  }

  const skew = { cur: Infinity, prev: Infinity, since: Date.now() };   // min(arrival - timestamp) per 30 s window

  // What identifies an entry across replays of the same server history.
  function entryKey(m) {
    return m.type === 'status' ? 'S' + m.status + '\u0000' + safeJson(m.metadata)
      : 'L' + m.timestamp + '\u0000' + m.level + '\u0000' + m.message + '\u0000' + safeJson(m.data);
  }

  function acceptSeq(s, m) {
    const seq = m.seq;
    if (typeof seq !== 'number') return true;
    if (s.resync) return false;                              // stale; a fresh replay follows its snapshot
    if (s.verifySeq && seq >= s.verifySeq) {
      const overlap = seq === s.verifySeq;
      s.verifySeq = 0;
      if (overlap) {
        if (entryKey(m) === s.lastKey) return false;         // same history: resume after it
        // Same seq, another entry: a restarted server numbered a new history.
        resetSeq(s, 'the server restarted');
        s.resync = true;
        send({ type: 'subscribe', sessionId: s.id, since: 0 });
        return false;
      }
    }
    if (seq === 1 && s.lastSeq >= 1) resetSeq(s, 'the session started again on the server');
    if (seq <= s.lastSeq) return false;                      // duplicate (resume overlap)
    if (s.lastSeq > 0 && seq > s.lastSeq + 1) {              // hole nobody announced
      pushEntry(s, { kind: 'gap', fromSeq: s.lastSeq + 1, toSeq: seq - 1, count: seq - 1 - s.lastSeq, reason: 'not received', synthetic: true });
    }
    s.lastSeq = seq;
    s.lastKey = entryKey(m);
    return true;
  }

  // The server lost this session's history (restart, or the id was evicted
  // and reused): seq numbers start again, so forget ours and mark the spot.
  function resetSeq(s, why) {
    s.lastSeq = 0;
    s.lastKey = null;
    pushEntry(s, { kind: 'note', text: 'sequence restarted: ' + why });
  }

  function onLog(m) {
    if (typeof m.sessionId !== 'string') return;
    const s = ensureSession(m.sessionId);
    if (!acceptSeq(s, m)) return;
    m.kind = 'log';
    m.level = normLevel(m.level);
    m._lv = levelNum(m.level);
    if (typeof m.message !== 'string') m.message = m.message == null ? '' : safeJson(m.message);
    s.lines++;
    if (m._lv >= LEVEL_NUM.error) s.errors++;
    const now = Date.now();
    const ts = Date.parse(m.timestamp);
    let t = now;
    if (ts === ts) {
      // Server time -> this browser's clock, so "time since last output" is
      // right even if the two clocks disagree (replayed lines keep their age).
      const d = now - ts;
      if (d < skew.cur) skew.cur = d;
      if (now - skew.since > 30000) { skew.prev = skew.cur; skew.cur = d; skew.since = now; }
      t = Math.min(now, ts + Math.min(skew.cur, skew.prev));
    }
    if (t > s.lastOutput) s.lastOutput = t;
    pushEntry(s, m);
    markDirty(s);
  }

  function onStatus(m) {
    if (typeof m.sessionId !== 'string') return;
    const s = ensureSession(m.sessionId);
    if (typeof m.seq === 'number') {
      if (!acceptSeq(s, m)) return;
      m.kind = 'status';
      if (typeof m.timestamp !== 'string') m.timestamp = new Date().toISOString();   // status entries carry no time; use arrival
      pushEntry(s, m);
    } else s.resync = false;   // a snapshot: a (re-)subscription's replay starts here
    if (typeof m.status === 'string') s.status = m.status;
    if (m.metadata && typeof m.metadata === 'object') s.metadata = m.metadata;
    s.gone = false;
    markDirty(s);
  }

  function onGap(m) {
    if (typeof m.sessionId !== 'string') return;
    const s = ensureSession(m.sessionId);
    const from = Number(m.fromSeq);
    const to = Number(m.toSeq);
    if (!(to >= from)) return;
    const reason = String(m.reason || 'unknown');
    if (s.resync) return;
    if (s.verifySeq && to >= s.verifySeq) s.verifySeq = 0;   // the overlap entry is gone: cannot check
    if (to <= s.lastSeq) {
      // Already past it: if a synthetic marker covers this range, name the reason.
      for (let i = s.entries.length - 1, k = 0; i >= 0 && k < 2000; i--, k++) {
        const e = s.entries[i];
        if (e.kind === 'gap' && e.synthetic && e.fromSeq <= to && e.toSeq >= from) {
          e.reason = reason;
          e.synthetic = false;
          if (e._el) { e._el.textContent = gapText(e); e._el.title = GAP_HELP[reason] || ''; }
          break;
        }
      }
      return;
    }
    const start = Math.max(from, s.lastSeq + 1);
    pushEntry(s, { kind: 'gap', fromSeq: start, toSeq: to, count: to - start + 1, reason });
    s.lastSeq = to;
    s.lastKey = null;
    markDirty(s);
  }

  function pushEntry(s, e) {
    const ents = s.entries;
    ents.push(e);
    if (ents.length > BUFFER_MAX + 500) ents.splice(0, ents.length - BUFFER_MAX);
    const p = panes.get(s.id);
    if (p) p.enqueue(e);
  }

  function markDirty(s) {
    dirtySessions.add(s);
    scheduleFrame();
  }

  // ---------------------------------------------------------------- session list
  function insertItem(s) {
    const badge = h('span', { class: 'badge', 'data-testid': 'status-badge' });
    const name = h('span', { class: 'si-name', text: s.id });
    const lines = h('span', { class: 'si-lines' });
    const errors = h('span', { class: 'si-errors' });
    const ago = h('span', { class: 'si-ago' });
    const btn = h('button', {
      class: 'session-item', type: 'button', 'data-testid': 'session-item',
      'aria-pressed': 'false', title: s.id,
    },
    h('span', { class: 'si-top' }, name, badge),
    h('span', { class: 'si-meta' }, lines, ' · ', errors, ' · ', ago));
    btn.dataset.sessionId = s.id;
    btn.dataset.status = s.status;
    btn.addEventListener('click', () => togglePane(s.id));
    const li = h('li', { class: 'session-li' }, btn);
    s.item = { li, btn, badge, lines, errors, ago, agoText: '', linesText: '', errorsText: '', label: '' };
    renderCounts(s);
    // keep the list sorted by id (natural order)
    let before = null;
    for (const child of listEl.children) {
      if (collator.compare(child.firstChild.dataset.sessionId, s.id) > 0) { before = child; break; }
    }
    listEl.insertBefore(li, before);
    applyFilterTo(li, s.id);
    noSessionsEl.hidden = true;
  }

  // Status (badge, data-status) is rendered on the next frame; counts and
  // "time since last output" at most once a second: a text change in the
  // sidebar or a pane header re-lays out the pane grid, so it is kept rare.
  function renderStatus(s) {
    const it = s.item;
    const label = statusLabel(s.status, s.metadata);
    if (it) {
      const full = label + (s.gone ? ' · ended' : '') + (panes.has(s.id) ? ', pane open' : '');
      if (it.btn.dataset.status !== s.status) it.btn.dataset.status = s.status;
      if (it.label !== full) {
        it.label = full;
        if (it.badge.textContent !== label) it.badge.textContent = label;
        it.badge.dataset.status = s.status;
        it.btn.classList.toggle('gone', s.gone);
        it.btn.setAttribute('aria-label', s.id + ', ' + full);
      }
    }
    const p = panes.get(s.id);
    if (p) p.renderStatus();
  }

  function renderCounts(s) {
    const it = s.item;
    if (it) {
      const lines = plural(s.lines, 'line', 'lines');
      const errors = plural(s.errors, 'error', 'errors');
      const ago = fmtAgo(s.lastOutput);
      if (it.linesText !== lines) { it.linesText = lines; it.lines.textContent = lines; }
      if (it.errorsText !== errors) {
        it.errorsText = errors;
        it.errors.textContent = errors;
        it.errors.classList.toggle('has-errors', s.errors > 0);
      }
      if (it.agoText !== ago) { it.agoText = ago; it.ago.textContent = ago; }
    }
    const p = panes.get(s.id);
    if (p) p.renderMeta();
  }

  function updateSummary() {
    let running = 0;
    for (const s of sessions.values()) if (s.status === 'running') running++;
    const text = sessions.size ? '(' + sessions.size + ', ' + running + ' running)' : '';
    if (summaryEl.textContent !== text) summaryEl.textContent = text;
    if (noSessionsEl.hidden !== sessions.size > 0) noSessionsEl.hidden = sessions.size > 0;
  }

  function applyFilterTo(li, id) {
    const q = filterEl.value.trim().toLowerCase();
    li.hidden = !!q && !id.toLowerCase().includes(q);
  }
  filterEl.addEventListener('input', () => {
    for (const s of sessions.values()) if (s.item) applyFilterTo(s.item.li, s.id);
  });

  $('open-running').addEventListener('click', () => {
    let n = 0;
    for (const s of sessions.values()) {
      if (s.status === 'running' && !panes.has(s.id) && !(s.item && s.item.li.hidden) && panes.size < 16) { openPane(s.id); n++; }
    }
    if (!n) toast('No other running session to open.');
  });
  $('close-all').addEventListener('click', () => {
    for (const id of [...panes.keys()]) closePane(id);
  });

  // ---------------------------------------------------------------- panes
  let paneSeq = 0;

  class Pane {
    constructor(s) {
      this.session = s;
      this.id = s.id;
      this.uid = 'p' + (++paneSeq);
      this.rows = 0;
      this.pending = [];
      this.full = true;
      this.frozen = false;
      this.sparse = false;      // some pending lines were skipped while following (overload)
      this.keepOffset = null;   // after a re-render, keep this distance from the end
      this.settle = 0;          // frames left to re-scroll to the end after a re-render
      this.follow = true;
      this.needScroll = true;
      this.newWhilePaused = 0;
      this.minLevel = 0;
      this.re = null;        // test regex (no g flag)
      this.reG = null;       // highlight regex (g flag)
      this.intentAt = 0;
      this.headerText = '';
      this.followText = '';
      this.build();
    }

    build() {
      const s = this.session;
      this.badge = h('span', { class: 'badge', 'data-testid': 'status-badge' });
      this.meta = h('span', { class: 'pane-meta', 'data-testid': 'pane-meta' });
      this.maxBtn = h('button', {
        class: 'btn btn-icon', type: 'button', 'data-testid': 'maximize', 'aria-pressed': 'false',
        'aria-label': 'Full screen ' + s.id, title: 'Full screen (m) / back to grid (Esc)',
      });
      this.maxBtn.addEventListener('click', () => toggleMaximize(this.id));
      const closeBtn = h('button', {
        class: 'btn btn-icon btn-close', type: 'button', 'data-testid': 'close-pane',
        'aria-label': 'Close pane ' + s.id, title: 'Close pane',
      });
      closeBtn.addEventListener('click', () => closePane(this.id));

      this.levelSel = h('select', { class: 'input', 'data-testid': 'level-filter', 'aria-label': 'Minimum level for ' + s.id, title: 'Minimum level' });
      for (const l of LEVELS) this.levelSel.append(h('option', { value: l, text: l === 'trace' ? 'all levels' : l + '+' }));
      this.levelSel.addEventListener('change', () => {
        this.minLevel = this.levelSel.value === 'trace' ? 0 : levelNum(this.levelSel.value);
        this.rerender();
      });

      this.searchEl = h('input', {
        class: 'input search', type: 'search', 'data-testid': 'search', placeholder: 'Search… (/)',
        'aria-label': 'Search the log of ' + s.id, spellcheck: 'false', autocomplete: 'off',
        title: 'Shows matching lines only. Case-insensitive unless the query has a capital letter.',
        'aria-describedby': this.uid + '-searcherr',
      });
      this.regexBox = h('input', { type: 'checkbox', 'data-testid': 'regex-toggle', 'aria-label': 'Regular expression' });
      this.searchErr = h('span', { class: 'search-error', id: this.uid + '-searcherr', 'data-testid': 'search-error', role: 'status' });
      let debounce = 0;
      const onSearch = () => { clearTimeout(debounce); debounce = setTimeout(() => this.applySearch(), 120); };
      this.searchEl.addEventListener('input', onSearch);
      this.regexBox.addEventListener('change', () => this.applySearch());
      this.searchEl.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') { clearTimeout(debounce); this.applySearch(); }
        if (e.key === 'Escape' && maximizedId === null) {
          if (this.searchEl.value) { this.searchEl.value = ''; this.applySearch(); } else this.logEl.focus();
          e.stopPropagation();
        }
      });

      this.followBtn = h('button', {
        class: 'btn btn-follow', type: 'button', 'data-testid': 'follow', 'aria-pressed': 'true',
        title: 'Follow new lines / pause (f)',
      });
      this.followBtn.addEventListener('click', () => this.setFollow(!this.follow));
      const dlBtn = h('button', {
        class: 'btn', type: 'button', 'data-testid': 'download', 'aria-label': 'Download the buffered log of ' + s.id,
        title: 'Download the buffered log (up to ' + BUFFER_MAX + ' entries) as text', text: 'Download',
      });
      dlBtn.addEventListener('click', () => downloadSession(this.session));

      this.logEl = h('div', {
        class: 'log', tabindex: '0', role: 'log', 'aria-live': 'off', 'data-testid': 'log',
        'aria-label': 'Log lines of ' + s.id + ' (arrow keys pick a line, c copies it)',
      });
      this.copyBtn = h('button', { class: 'copy-btn', type: 'button', 'data-testid': 'copy-line', 'aria-label': 'Copy line', title: 'Copy line' });
      this.copyBtn.addEventListener('click', (e) => { e.stopPropagation(); this.copyRow(this.copyBtn.parentNode); });

      const title = h('h3', { class: 'pane-title', title: s.id, text: s.id });
      this.el = h('section', { class: 'pane', 'data-testid': 'pane', 'aria-label': 'Logs of ' + s.id },
        h('header', { class: 'pane-head' }, title, this.badge, this.meta, h('span', { class: 'spacer' }), this.maxBtn, closeBtn),
        h('div', { class: 'pane-tools', role: 'toolbar', 'aria-label': 'Tools for ' + s.id },
          this.levelSel,
          h('span', { class: 'search-wrap' }, this.searchEl,
            h('label', { class: 'regex-label', title: 'Regular expression' }, this.regexBox, h('span', { 'aria-hidden': 'true', text: '.*' }))),
          this.followBtn, dlBtn, this.searchErr),
        // The log is absolutely positioned inside a wrapper that takes the
        // pane's remaining height: appending rows then never re-lays out the
        // pane, the grid or the other panes (the wrapper is a layout boundary).
        h('div', { class: 'log-wrap' }, this.logEl));
      this.el.dataset.sessionId = s.id;
      this.el.dataset.following = 'true';

      const lg = this.logEl;
      const intent = () => { this.intentAt = performance.now(); };
      lg.addEventListener('wheel', intent, { passive: true });
      lg.addEventListener('touchmove', intent, { passive: true });
      lg.addEventListener('pointerdown', intent);
      lg.addEventListener('pointermove', (e) => { if (e.buttons) intent(); });
      lg.addEventListener('keydown', (e) => { intent(); this.onLogKey(e); });
      lg.addEventListener('scroll', () => this.onScroll(), { passive: true });
      lg.addEventListener('mouseover', (e) => {
        const row = e.target.closest && e.target.closest('.row-log');
        if (row && lg.contains(row) && this.copyBtn.parentNode !== row) row.append(this.copyBtn);
      });
      lg.addEventListener('focusin', (e) => {
        const row = e.target;
        if (row.classList && row.classList.contains('row-log') && this.copyBtn.parentNode !== row) row.append(this.copyBtn);
      });
      this.el.addEventListener('focusin', () => setActivePane(this.id));
      this.el.addEventListener('pointerdown', () => setActivePane(this.id));
      this.renderHeader();
    }

    destroy() { this.el.remove(); }

    renderStatus() {
      const s = this.session;
      const label = statusLabel(s.status, s.metadata);
      if (this.badge.dataset.status !== s.status || this.badge.textContent !== label) {
        this.badge.textContent = label;
        this.badge.dataset.status = s.status;
        this.el.dataset.status = s.status;
      }
    }

    renderMeta() {
      const s = this.session;
      const text = plural(s.lines, 'line', 'lines') + ' · ' + plural(s.errors, 'error', 'errors') + ' · ' + fmtAgo(s.lastOutput);
      if (text !== this.headerText) { this.headerText = text; this.meta.textContent = text; }
      this.renderFollow();
    }

    renderFollow() {
      const ft = this.follow ? 'Following' : 'Paused' + (this.newWhilePaused ? ' · ' + this.newWhilePaused + ' new' : '');
      if (ft !== this.followText) { this.followText = ft; this.followBtn.textContent = ft; }
    }

    renderHeader() {
      this.renderStatus();
      this.renderMeta();
    }

    applySearch() {
      const q = this.searchEl.value;
      const isRe = this.regexBox.checked;
      this.re = this.reG = null;
      this.searchEl.classList.remove('invalid');
      this.searchEl.removeAttribute('aria-invalid');
      this.searchErr.textContent = '';
      if (q) {
        const flags = /[A-Z]/.test(q) ? '' : 'i';   // smart case
        const src = isRe ? q : q.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
        try {
          this.re = new RegExp(src, flags);
          this.reG = new RegExp(src, flags + 'g');
        } catch (err) {
          this.re = this.reG = null;
          this.searchEl.classList.add('invalid');
          this.searchEl.setAttribute('aria-invalid', 'true');
          this.searchErr.textContent = 'Invalid regex: ' + String((err && err.message) || err).replace(/^Invalid regular expression: /, '');
        }
      }
      this.el.classList.toggle('searching', !!this.re);
      this.rerender();
    }

    matches(e) {
      if (e.kind !== 'log') return true;
      if (e._lv < this.minLevel) return false;
      if (this.re) {
        if (this.re.test(e.message)) return true;
        const ds = dataString(e);
        return ds ? this.re.test(ds) : false;
      }
      return true;
    }

    enqueue(e) {
      if (!this.follow && e.kind === 'log') this.newWhilePaused++;
      if (this.full || this.frozen) return;
      this.pending.push(e);
      if (this.pending.length > PAUSED_ROWS_MAX) {
        // The page was hidden (no frames): drop the queue, re-render from the buffer.
        this.pending.length = 0;
        if (this.follow) this.full = true; else this.frozen = true;
      }
      scheduleFrame();
    }

    rerender() {
      this.full = true;
      this.needScroll = true;
      scheduleFrame();
    }

    /** Writes this pane's DOM for the frame; returns true if it must scroll to the end.
     *  Rows live in chunks of CHUNK rows with `content-visibility: auto`, so a
     *  layout only walks the chunks on screen, not every row of the pane. */
    flush() {
      const lg = this.logEl;
      if (this.full) {
        this.full = false;
        this.frozen = false;
        this.pending.length = 0;
        const ents = this.session.entries;
        const pick = [];
        for (let i = ents.length - 1; i >= 0 && pick.length < ROWS_MAX; i--) {
          if (this.matches(ents[i])) pick.push(ents[i]);
        }
        const frag = document.createDocumentFragment();
        let chunk = null;
        for (let i = pick.length - 1; i >= 0; i--) {
          if (!chunk || chunk._n >= CHUNK) { chunk = newChunk(); frag.append(chunk); }
          chunk.append(this.renderRow(pick[i]));
          chunk._n++;
        }
        lg.replaceChildren(frag);
        this.rows = pick.length;
        this.sparse = false;
        // Off-screen chunks start with an estimated height; once the end is
        // drawn the real heights replace it, so scroll to the end again for
        // a few frames.
        this.settle = 3;
        lg.dataset.empty = this.re || this.minLevel ? 'No matching lines.' : 'No log lines yet.';
        this.needScroll = false;
        return true;
      }
      let scroll = (this.needScroll || this.settle > 0) && this.follow;
      this.needScroll = false;
      if (this.settle > 0) { this.settle--; scheduleFrame(); }
      const pend = this.pending;
      if (!pend.length || this.frozen) { pend.length = 0; return scroll; }
      this.pending = [];
      let start = 0;
      if (this.follow && pend.length > FOLLOW_BATCH_MAX) {
        // Overload valve: lines arrive faster than frames; while following
        // only the newest are drawn. Pausing re-renders the buffer in full.
        start = pend.length - FOLLOW_BATCH_MAX;
        for (let i = 0; i < start && !this.sparse; i++) if (this.matches(pend[i])) this.sparse = true;
      }
      let chunk = lg.lastElementChild;
      let chunkFrag = null;          // rows for the chunk already in the DOM
      let newChunks = null;          // chunks created this frame
      let added = 0;
      for (let i = start; i < pend.length; i++) {
        const e = pend[i];
        if (!this.matches(e)) continue;
        if (!this.follow && this.rows + added >= PAUSED_ROWS_MAX) { this.frozen = true; break; }
        if (!chunk || chunk._n >= CHUNK) {
          chunk = newChunk();
          if (!newChunks) newChunks = document.createDocumentFragment();
          newChunks.append(chunk);
        }
        const row = this.renderRow(e);
        if (chunk.isConnected) {
          if (!chunkFrag) chunkFrag = document.createDocumentFragment();
          chunkFrag.append(row);
        } else chunk.append(row);
        chunk._n++;
        added++;
      }
      if (chunkFrag) lg.lastElementChild.append(chunkFrag);
      if (newChunks) lg.append(newChunks);
      if (added) {
        this.rows += added;
        if (this.follow) scroll = true;
      }
      if (this.follow && this.rows > ROWS_MAX) {
        let excess = this.rows - ROWS_MAX;
        this.rows = ROWS_MAX;
        while (excess > 0) {
          const first = lg.firstElementChild;
          if (!first) break;
          if (first._n <= excess) {
            excess -= first._n;
            first.remove();
          } else {
            const r = document.createRange();
            r.setStart(first, 0);
            r.setEnd(first, excess);
            r.deleteContents();
            first._n -= excess;
            excess = 0;
          }
        }
      }
      return scroll;
    }

    renderRow(e) {
      if (e.kind === 'note') {
        const row = document.createElement('div');
        row.className = 'row row-gap row-note';
        row.setAttribute('data-testid', 'note-row');
        row.setAttribute('role', 'separator');
        row.textContent = e.text;
        return row;
      }
      if (e.kind === 'gap') {
        const row = document.createElement('div');
        row.className = 'row row-gap';
        row.setAttribute('data-testid', 'gap-row');
        row.setAttribute('role', 'separator');
        row.dataset.fromSeq = e.fromSeq;
        row.dataset.toSeq = e.toSeq;
        row.dataset.count = e.count;
        row.dataset.reason = e.reason;
        row.textContent = gapText(e);
        row.title = GAP_HELP[e.reason] || '';
        e._el = row;
        return row;
      }
      if (e.kind === 'status') {
        const row = document.createElement('div');
        row.className = 'row row-status';
        row.setAttribute('data-testid', 'status-row');
        row.dataset.seq = e.seq;
        row.dataset.status = e.status;
        const ts = document.createElement('span');
        ts.className = 'ts';
        ts.textContent = fmtTime(e.timestamp);
        const lv = document.createElement('span');
        lv.className = 'lv';
        lv.textContent = 'STATE';
        const body = document.createElement('span');
        body.className = 'body';
        body.textContent = 'status → ' + statusLabel(e.status, e.metadata);
        row.append(ts, ' ', lv, ' ', body);
        return row;
      }
      const row = document.createElement('div');
      row.className = 'row row-log lv-' + (LEVEL_NUM[e.level] ? e.level : 'other');
      row.setAttribute('data-testid', 'log-row');
      if (e.seq != null) row.dataset.seq = e.seq;
      row.dataset.level = e.level;
      row.tabIndex = -1;
      row._entry = e;
      const ts = document.createElement('span');
      ts.className = 'ts';
      ts.textContent = fmtTime(e.timestamp);
      const lv = document.createElement('span');
      lv.className = 'lv';
      lv.textContent = LEVEL_LABEL[e.level] || e.level.toUpperCase().slice(0, 5).padEnd(5);
      const body = document.createElement('span');
      body.className = 'body';
      const msg = e.message.length > MSG_DISPLAY_MAX ? e.message.slice(0, MSG_DISPLAY_MAX) + ' …[' + (e.message.length - MSG_DISPLAY_MAX) + ' more chars]' : e.message;
      appendMarked(body, msg, this.reG);
      const ds = dataString(e);
      if (ds) {
        const d = document.createElement('span');
        d.className = 'data';
        appendMarked(d, ds.length > DATA_DISPLAY_MAX ? ds.slice(0, DATA_DISPLAY_MAX) + ' …' : ds, this.reG);
        body.append(' ', d);
      }
      row.append(ts, ' ', lv, ' ', body);
      return row;
    }

    setFollow(on) {
      if (this.follow === on) return;
      this.follow = on;
      if (!on && this.sparse) {
        // Some lines were skipped while following fast: draw the whole
        // buffer, keeping the reader's distance from the end.
        const lg = this.logEl;
        this.keepOffset = Math.max(0, lg.scrollHeight - lg.scrollTop - lg.clientHeight);
        this.full = true;
        scheduleFrame();
      }
      this.followBtn.setAttribute('aria-pressed', on ? 'true' : 'false');
      this.el.dataset.following = on ? 'true' : 'false';
      this.followBtn.classList.toggle('paused', !on);
      if (on) {
        this.newWhilePaused = 0;
        this.rerender();
      }
      this.renderHeader();
    }

    onScroll() {
      if (performance.now() - this.intentAt > 1000) return;   // our own scroll-to-end
      const lg = this.logEl;
      const atEnd = lg.scrollHeight - lg.scrollTop - lg.clientHeight < 8;
      if (this.follow && !atEnd) this.setFollow(false);
      else if (!this.follow && atEnd && !this.frozen) this.setFollow(true);
    }

    onLogKey(e) {
      const lg = this.logEl;
      const row = e.target !== lg && e.target.closest ? e.target.closest('.row') : null;
      if (e.key === 'ArrowUp' || e.key === 'ArrowDown') {
        e.preventDefault();
        const up = e.key === 'ArrowUp';
        let next = row ? siblingRow(row, up) : (lg.lastElementChild && lg.lastElementChild.lastElementChild);
        while (next && !next.classList.contains('row-log')) next = siblingRow(next, up);
        if (next) {
          if (this.follow) this.setFollow(false);
          next.focus();
        }
      } else if (row && row.classList.contains('row-log') && (e.key === 'c' || e.key === 'Enter') && !e.ctrlKey && !e.metaKey && !e.altKey) {
        e.preventDefault();
        e.stopPropagation();
        this.copyRow(row);
      } else if (e.key === 'PageUp' || e.key === 'Home') {
        if (this.follow) this.setFollow(false);
      }
    }

    async copyRow(row) {
      if (!row || !row._entry) return;
      const ok = await copyText(entryLine(row._entry));
      this.copyBtn.classList.toggle('copied', ok);
      toast(ok ? 'Line copied.' : 'Copy failed: the browser refused clipboard access.', ok ? 'info' : 'error');
      setTimeout(() => this.copyBtn.classList.remove('copied'), 1200);
    }
  }

  function newChunk() {
    const c = document.createElement('div');
    c.className = 'chunk';
    c._n = 0;
    return c;
  }

  // Row navigation across chunks.
  function siblingRow(row, up) {
    let el = up ? row.previousElementSibling : row.nextElementSibling;
    if (!el) {
      const chunk = row.parentNode;
      const other = chunk && (up ? chunk.previousElementSibling : chunk.nextElementSibling);
      el = other ? (up ? other.lastElementChild : other.firstElementChild) : null;
    }
    while (el && !(el.classList && el.classList.contains('row'))) {
      el = up ? el.previousElementSibling : el.nextElementSibling;
    }
    return el;
  }

  function appendMarked(parent, text, reG) {
    if (!reG || !text) { parent.textContent = text; return; }
    reG.lastIndex = 0;
    let last = 0;
    let n = 0;
    let m;
    while ((m = reG.exec(text)) !== null) {
      const i = m.index;
      const j = i + m[0].length;
      if (j === i) { reG.lastIndex = i + 1; continue; }   // empty match: step on
      if (i > last) parent.append(text.slice(last, i));
      const mark = document.createElement('mark');
      mark.textContent = m[0];
      parent.append(mark);
      last = j;
      if (++n >= MAX_MARKS) break;
    }
    if (last < text.length) parent.append(text.slice(last));
  }

  function openPane(id) {
    if (panes.has(id)) return panes.get(id);
    const s = ensureSession(id);
    const p = new Pane(s);
    panes.set(id, p);
    panesEl.append(p.el);
    if (s.item) { s.item.btn.setAttribute('aria-pressed', 'true'); s.item.btn.classList.add('open'); s.item.label = ''; }
    layoutPanes();
    setActivePane(id);
    markDirty(s);
    p.rerender();
    return p;
  }

  function closePane(id) {
    const p = panes.get(id);
    if (!p) return;
    const hadFocus = p.el.contains(document.activeElement);
    p.destroy();
    panes.delete(id);
    const s = sessions.get(id);
    if (s && s.item) { s.item.btn.setAttribute('aria-pressed', 'false'); s.item.btn.classList.remove('open'); s.item.label = ''; markDirty(s); }
    if (maximizedId === id) maximizedId = null;
    if (activePaneId === id) activePaneId = null;
    layoutPanes();
    if (hadFocus && s && s.item) s.item.btn.focus();
  }

  function togglePane(id) {
    if (panes.has(id)) closePane(id);
    else {
      const p = openPane(id);
      if (maximizedId !== null && maximizedId !== id) toggleMaximize(id);
      return p;
    }
    return null;
  }

  function toggleMaximize(id) {
    if (maximizedId === id || id === null) maximizedId = null;
    else if (panes.has(id)) maximizedId = id;
    for (const p of panes.values()) {
      const on = p.id === maximizedId;
      p.el.classList.toggle('maximized', on);
      p.maxBtn.setAttribute('aria-pressed', on ? 'true' : 'false');
      p.maxBtn.setAttribute('aria-label', (on ? 'Leave full screen ' : 'Full screen ') + p.id);
      p.settle = 3;
    }
    panesEl.classList.toggle('has-max', maximizedId !== null);
    document.documentElement.classList.toggle('pane-maximized', maximizedId !== null);
    if (maximizedId !== null) setActivePane(maximizedId);
    scheduleFrame();
  }

  function setActivePane(id) {
    if (activePaneId === id) return;
    const prev = activePaneId !== null ? panes.get(activePaneId) : null;
    if (prev) prev.el.classList.remove('active');
    activePaneId = id;
    const p = panes.get(id);
    if (p) p.el.classList.add('active');
  }

  function activePane() {
    if (maximizedId !== null && panes.has(maximizedId)) return panes.get(maximizedId);
    if (activePaneId !== null && panes.has(activePaneId)) return panes.get(activePaneId);
    const first = panes.values().next();
    return first.done ? null : first.value;
  }

  function layoutPanes() {
    const n = panes.size;
    noPanesEl.hidden = n > 0;
    let cols = n <= 3 ? Math.max(n, 1) : n === 4 ? 2 : n <= 9 ? 3 : 4;
    const room = Math.max(1, Math.floor((window.innerWidth - 300) / 380));
    cols = Math.max(1, Math.min(cols, room));
    const rows = Math.max(1, Math.ceil(n / cols));
    panesEl.style.setProperty('--cols', String(cols));
    panesEl.style.setProperty('--rows', String(rows));
    panesEl.dataset.count = String(n);
    for (const p of panes.values()) p.settle = 3;
    scheduleFrame();
  }
  let resizeTimer = 0;
  window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(layoutPanes, 100); });

  // ---------------------------------------------------------------- frame loop
  // DOM work runs at most once per animation frame, and is spaced out when
  // it gets expensive: after a frame whose writes + layout took C ms the next
  // one waits ~2C (capped), so rendering never takes more than about a third
  // of the main thread however fast lines arrive.
  const stats = { frames: 0, frameMs: 0, frameMaxMs: 0, messages: 0 };
  let nextFrameAt = 0;
  let frameTimer = 0;
  function scheduleFrame() {
    if (rafId || frameTimer) return;
    const wait = nextFrameAt - performance.now();
    if (wait > 4) {
      frameTimer = setTimeout(() => { frameTimer = 0; rafId = requestAnimationFrame(frame); }, wait);
    } else rafId = requestAnimationFrame(frame);
  }

  function frame() {
    rafId = 0;
    const t0 = performance.now();
    const scroll = [];
    for (const p of panes.values()) if (p.flush()) scroll.push(p);
    if (dirtySessions.size) {
      for (const s of dirtySessions) renderStatus(s);
      dirtySessions.clear();
      updateSummary();
    }
    // All writes are done; scroll last so layout is computed once.
    for (const p of scroll) {
      const lg = p.logEl;
      if (p.keepOffset != null) {
        lg.scrollTop = lg.scrollHeight - lg.clientHeight - p.keepOffset;
        p.keepOffset = null;
      } else lg.scrollTop = lg.scrollHeight;
    }
    const cost = performance.now() - t0;
    nextFrameAt = t0 + Math.min(MAX_FRAME_GAP_MS, cost * 3);
    stats.frames++;
    stats.frameMs += cost;
    if (cost > stats.frameMaxMs) stats.frameMaxMs = cost;
  }

  // Time since last output, once a second.
  setInterval(() => {
    for (const s of sessions.values()) renderCounts(s);
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
      if (maximizedId !== null) {
        const id = maximizedId;
        toggleMaximize(null);
        const p = panes.get(id);
        if (p && isTyping(e.target)) p.logEl.focus();
        e.preventDefault();
      }
      return;
    }
    if (isTyping(e.target)) return;
    const p = activePane();
    if (e.key === '/') {
      e.preventDefault();
      if (p) { p.searchEl.focus(); p.searchEl.select(); } else filterEl.focus();
    } else if (e.key === 'f' && p) {
      e.preventDefault();
      p.setFollow(!p.follow);
    } else if (e.key === 'm' && p) {
      e.preventDefault();
      toggleMaximize(p.id);
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
    conn.attempt = 0;
    connect();
  }

  takeTokenFromUrl();
  if (getToken() !== null) start();
  else { setConnState('signed-out', ''); showSignIn(null); }

  // For automated tests and debugging (read-only view of the state).
  window.pcclog = Object.freeze({
    state: () => ({
      conn: conn.state, attempt: conn.attempt, sessions: sessions.size, panes: [...panes.keys()],
      lastSeq: Object.fromEntries([...sessions.values()].map((s) => [s.id, s.lastSeq])),
      stats: { ...stats },
    }),
  });
})();
