/* pcclog viewer protocol: what the page sends and how it takes what comes
 * back. Pure: no DOM, no WebSocket object, no timers, no clock of its own
 * (every input carries `now`), so Node's test runner imports it as is.
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
 *   so a duplicate delivery can never show twice; a seq that jumps ahead with
 *   no `gap` notice gets a synthetic gap entry ("not received").
 *
 * `ViewerProtocol` holds the sessions (state, seq bookkeeping, a bounded
 * buffer of entries) and the connection's protocol state. It talks to the
 * page through `io`, an object of callbacks:
 *   send(msg)        a message to send now (dropped when the socket is not open)
 *   created(s)       a session was seen for the first time
 *   entry(s, e)      an entry was appended to s.entries
 *   changed(s)       a session's state or counts changed
 *   gapRenamed(e)    a synthetic gap entry got its real reason from the server
 *   authed()         the first answer of this connection (auth accepted)
 *   signOut(message) the token was refused: forget everything
 *   problem(text)    an error the server reported, for the user
 *   priority()       ids of the sessions to resume first (the open panes)
 * Reconnect timing is data too: `closed()` says whether to sign out or retry
 * and why, `nextRetry()` gives the delay, `tick()` the keepalive's verdict.
 */

import { safeJson } from './format.js';

export const INITIAL_TAIL = 500;
export const MAX_RESUME_SUBS = 100;     // server default MAX_SUBSCRIPTIONS is 128
export const BUFFER_MAX = 5000;         // entries kept per session (download source)
export const BACKOFF_MIN = 500;
export const BACKOFF_MAX = 10000;
export const LIST_WAIT_MS = 3000;       // wait this long for `sessions` before resuming anyway
export const CONNECT_TIMEOUT_MS = 15000;
export const PING_IDLE_MS = 25000;
export const PING_TIMEOUT_MS = 10000;
const SKEW_WINDOW_MS = 30000;
const GAP_LOOKBACK = 2000;              // entries searched for the synthetic gap a notice names
const ATTEMPT_MAX = 30;

/** A session as the page knows it; `item` is the page's list entry (render.js). */
export function newSession(id) {
  return {
    id, status: 'unknown', metadata: {}, lastSeq: 0, serverLastSeq: 0, entries: [],
    lastKey: null, verifySeq: 0, resync: false,
    lines: 0, errors: 0, lastOutput: 0, gone: false, item: null,
  };
}

/** What identifies an entry across replays of the same server history. */
export function entryKey(m) {
  return m.type === 'status' ? 'S' + m.status + '\u0000' + safeJson(m.metadata)
    : 'L' + m.timestamp + '\u0000' + m.level + '\u0000' + m.message + '\u0000' + safeJson(m.data);
}

/** Delay before reconnect attempt `attempt` (0-based): exponential from
 *  BACKOFF_MIN to BACKOFF_MAX, jittered into [base/2, base]; `random` in [0, 1). */
export function backoffDelay(attempt, random) {
  const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * Math.pow(2, attempt));
  return Math.round(base / 2 + random * base / 2);
}

/** Why a connection closed, in words, from its close code and reason. */
export function closeReason(code, reason) {
  return code === 1001 ? 'server restarting' : code === 1013 ? 'viewer too slow'
    : code === 1006 ? 'connection lost' : 'closed (' + code + (reason ? ' ' + reason : '') + ')';
}

export class ViewerProtocol {
  /** `levels`: a table from levels.js (`levelTable`); it may be set later,
   *  before the first `receive`. `now`: the time the page started. */
  constructor(io, { levels = null, now = 0 } = {}) {
    this.io = io;
    this.levels = levels;
    /** @type {Map<string, any>} */
    this.sessions = new Map();
    this.authed = false;        // this connection got its first answer
    this.subscribed = false;    // this connection's subscriptions are sent
    this.resume = false;        // this connection resumes known sessions
    this.everConnected = false;
    this.attempt = 0;           // reconnect attempts since the last good connection
    this.startedAt = 0;
    this.openedAt = 0;
    this.lastRx = 0;
    this.pingSentAt = 0;
    this.skew = { cur: Infinity, prev: Infinity, since: now };   // min(arrival - timestamp) per 30 s window
  }

  // ------------------------------------------------------------ connection

  /** A new WebSocket is being opened. */
  connecting(now) {
    this.subscribed = false;
    this.startedAt = now;
  }

  /** The socket is open: authenticate and subscribe. Returns true when the
   *  page should call `resubscribe(null)` after LIST_WAIT_MS unless the
   *  `sessions` reply comes first. */
  opened(token, now) {
    this.openedAt = now;
    this.lastRx = now;
    this.pingSentAt = 0;
    this.resume = this.sessions.size > 0;
    this.subscribed = !this.resume;
    const io = this.io;
    io.send({ type: 'auth', token });
    if (!this.resume) {
      io.send({ type: 'list' });
      io.send({ type: 'subscribe', sessionId: '*', tail: INITIAL_TAIL });
      return false;
    }
    // Wait for the `sessions` reply so each known session can resume with
    // `since` before the wildcard covers it; fall back after a while.
    io.send({ type: 'list' });
    return true;
  }

  /** Subscribe again after a reconnect; `listed`: the ids the server listed,
   *  or null if it did not answer `list`. Does nothing the second time. */
  resubscribe(listed) {
    if (this.subscribed) return;
    this.subscribed = true;
    const sessions = this.sessions;
    const order = [...this.io.priority()];
    const first = new Set(order);
    for (const id of sessions.keys()) if (!first.has(id)) order.push(id);
    let n = 0;
    for (const id of order) {
      const s = sessions.get(id);
      if (!s || (listed && !listed.has(id)) || (!listed && s.gone)) continue;
      if (n++ >= MAX_RESUME_SUBS) break;   // the rest resume live through `*` (a gap marker shows the hole)
      if (s.lastSeq > 0) {
        s.verifySeq = s.lastKey !== null ? s.lastSeq : 0;
        this.io.send({ type: 'subscribe', sessionId: id, since: s.lastSeq - (s.verifySeq ? 1 : 0) });
      }
      else this.io.send({ type: 'subscribe', sessionId: id, tail: INITIAL_TAIL });
    }
    this.io.send({ type: 'subscribe', sessionId: '*', tail: 0 });
  }

  /** The socket closed: `{signOut: message}` when the server refused the
   *  token, else `{retry: why}` (reconnect after `nextRetry()`). */
  closed(code, reason, now) {
    const wasAuthed = this.authed;
    const lived = this.openedAt ? now - this.openedAt : 0;
    const opened = this.openedAt >= this.startedAt;
    this.authed = false;
    if (code === 1008 && opened && (!wasAuthed || /token|auth|expir|credential/i.test(reason || ''))) {
      return { signOut: 'The server refused the connection' + (reason ? ': ' + reason : ' (token rejected or expired)') + '.' };
    }
    if (wasAuthed && lived > 5000) this.attempt = 0;
    return { retry: closeReason(code, reason) };
  }

  /** The delay before the next attempt (counts the attempt). */
  nextRetry(random) {
    const delay = backoffDelay(this.attempt, random);
    this.attempt = Math.min(this.attempt + 1, ATTEMPT_MAX);
    return delay;
  }

  /** The keepalive, every few seconds; `socket` is 'none', 'connecting',
   *  'open', 'closing' or 'closed'. Sends an application ping on an idle connection
   *  (the server's WebSocket pings are invisible to a page); returns why to
   *  reconnect, or null. */
  tick(now, socket) {
    if (socket === 'connecting' && now - this.startedAt > CONNECT_TIMEOUT_MS) return 'connect timeout';
    if (socket !== 'open') return null;
    if (this.pingSentAt && this.lastRx < this.pingSentAt && now - this.pingSentAt > PING_TIMEOUT_MS) {
      this.authed = false;
      return 'no answer to ping';
    }
    if (now - this.lastRx > PING_IDLE_MS && (!this.pingSentAt || this.lastRx >= this.pingSentAt)) {
      this.pingSentAt = now;
      this.io.send({ type: 'ping' });
    }
    return null;
  }

  /** Signed out: forget every session and the connection's history. */
  reset() {
    this.sessions.clear();
    this.authed = false;
    this.attempt = 0;
    this.everConnected = false;
  }

  // ------------------------------------------------------------ messages

  /** One WebSocket message (text frames only; anything else is ignored). */
  receive(raw, now) {
    this.lastRx = now;
    if (typeof raw !== 'string') return;
    let m;
    try { m = JSON.parse(raw); } catch { return; }
    if (!m || typeof m !== 'object') return;
    if (m.type === 'error') { this.onError(m); return; }
    this.markAuthed();
    switch (m.type) {
      case 'log': this.onLog(m, now); break;
      case 'status': this.onStatus(m, now); break;
      case 'gap': this.onGap(m); break;
      case 'sessions': this.onSessions(m); break;
      default: break;   // pong and anything newer
    }
  }

  markAuthed() {
    if (this.authed) return;
    this.authed = true;
    this.everConnected = true;
    this.io.authed();
  }

  ensureSession(id) {
    let s = this.sessions.get(id);
    if (s) return s;
    s = newSession(id);
    this.sessions.set(id, s);
    this.io.created(s);
    return s;
  }

  onError(m) {
    const code = String(m.code || 'ERROR');
    const sid = typeof m.sessionId === 'string' ? m.sessionId : null;
    if (code === 'UNAUTHORIZED' && (!this.authed || !sid || sid === '*')) {
      this.io.signOut(m.message ? 'Unauthorized: ' + m.message : 'Unauthorized: the token was rejected.');
      return;
    }
    this.markAuthed();
    const failed = sid ? this.sessions.get(sid) : null;
    if (failed && failed.resync) failed.resync = false;   // the re-subscription did not happen
    if (code === 'SESSION_NOT_FOUND' && sid) {
      const s = this.sessions.get(sid);
      if (s) { s.gone = true; this.io.changed(s); }
      return;   // the server keeps the subscription pending; nothing to tell the user
    }
    if (this.resume && !this.subscribed && !sid) this.resubscribe(null);   // e.g. a server without `list`
    this.io.problem(code + (sid ? ' [' + sid + ']' : '') + ': ' + (m.message || ''));
  }

  onSessions(m) {
    const list = Array.isArray(m.sessions) ? m.sessions : [];
    const listed = new Set();
    for (const info of list) {
      if (!info || typeof info.sessionId !== 'string') continue;
      listed.add(info.sessionId);
      const s = this.ensureSession(info.sessionId);
      if (typeof info.status === 'string') s.status = info.status;
      if (info.metadata && typeof info.metadata === 'object') s.metadata = info.metadata;
      if (typeof info.lastSeq === 'number') {
        s.serverLastSeq = info.lastSeq;
        if (info.lastSeq < s.lastSeq) this.resetSeq(s, 'the server has fewer entries than this page saw (restarted?)');
      }
      s.gone = false;
      this.io.changed(s);
    }
    for (const s of this.sessions.values()) {
      if (!listed.has(s.id) && !s.gone) { s.gone = true; this.io.changed(s); }
    }
    if (this.resume && !this.subscribed) this.resubscribe(listed);
  }

  /** Whether entry `m` (with a seq) is new for `s`; books its seq. */
  acceptSeq(s, m) {
    const seq = m.seq;
    if (typeof seq !== 'number') return true;
    if (s.resync) return false;                              // stale; a fresh replay follows its snapshot
    if (s.verifySeq && seq >= s.verifySeq) {
      const overlap = seq === s.verifySeq;
      s.verifySeq = 0;
      if (overlap) {
        if (entryKey(m) === s.lastKey) return false;         // same history: resume after it
        // Same seq, another entry: a restarted server numbered a new history.
        this.resetSeq(s, 'the server restarted');
        s.resync = true;
        this.io.send({ type: 'subscribe', sessionId: s.id, since: 0 });
        return false;
      }
    }
    if (seq === 1 && s.lastSeq >= 1) this.resetSeq(s, 'the session started again on the server');
    if (seq <= s.lastSeq) return false;                      // duplicate (resume overlap)
    if (s.lastSeq > 0 && seq > s.lastSeq + 1) {              // hole nobody announced
      this.pushEntry(s, { kind: 'gap', fromSeq: s.lastSeq + 1, toSeq: seq - 1, count: seq - 1 - s.lastSeq, reason: 'not received', synthetic: true });
    }
    s.lastSeq = seq;
    s.lastKey = entryKey(m);
    return true;
  }

  /** The server lost this session's history (restart, or the id was evicted
   *  and reused): seq numbers start again, so forget ours and mark the spot. */
  resetSeq(s, why) {
    s.lastSeq = 0;
    s.lastKey = null;
    this.pushEntry(s, { kind: 'note', text: 'sequence restarted: ' + why });
  }

  onLog(m, now) {
    if (typeof m.sessionId !== 'string') return;
    const s = this.ensureSession(m.sessionId);
    if (!this.acceptSeq(s, m)) return;
    const levels = this.levels;
    m.kind = 'log';
    m.level = levels.normalize(m.level);
    m._lv = levels.rank[m.level];
    if (typeof m.message !== 'string') m.message = m.message == null ? '' : safeJson(m.message);
    s.lines++;
    if (m._lv >= levels.error) s.errors++;
    const ts = Date.parse(m.timestamp);
    let t = now;
    if (ts === ts) {
      // Server time -> this browser's clock, so "time since last output" is
      // right even if the two clocks disagree (replayed lines keep their age).
      const skew = this.skew;
      const d = now - ts;
      if (d < skew.cur) skew.cur = d;
      if (now - skew.since > SKEW_WINDOW_MS) { skew.prev = skew.cur; skew.cur = d; skew.since = now; }
      t = Math.min(now, ts + Math.min(skew.cur, skew.prev));
    }
    if (t > s.lastOutput) s.lastOutput = t;
    this.pushEntry(s, m);
    this.io.changed(s);
  }

  onStatus(m, now) {
    if (typeof m.sessionId !== 'string') return;
    const s = this.ensureSession(m.sessionId);
    if (typeof m.seq === 'number') {
      if (!this.acceptSeq(s, m)) return;
      m.kind = 'status';
      if (typeof m.timestamp !== 'string') m.timestamp = new Date(now).toISOString();   // status entries carry no time; use arrival
      this.pushEntry(s, m);
    } else s.resync = false;   // a snapshot: a (re-)subscription's replay starts here
    if (typeof m.status === 'string') s.status = m.status;
    if (m.metadata && typeof m.metadata === 'object') s.metadata = m.metadata;
    s.gone = false;
    this.io.changed(s);
  }

  onGap(m) {
    if (typeof m.sessionId !== 'string') return;
    const s = this.ensureSession(m.sessionId);
    const from = Number(m.fromSeq);
    const to = Number(m.toSeq);
    if (!(to >= from)) return;
    const reason = String(m.reason || 'unknown');
    if (s.resync) return;
    if (s.verifySeq && to >= s.verifySeq) s.verifySeq = 0;   // the overlap entry is gone: cannot check
    if (to <= s.lastSeq) {
      // Already past it: if a synthetic marker covers this range, name the reason.
      for (let i = s.entries.length - 1, k = 0; i >= 0 && k < GAP_LOOKBACK; i--, k++) {
        const e = s.entries[i];
        if (e.kind === 'gap' && e.synthetic && e.fromSeq <= to && e.toSeq >= from) {
          e.reason = reason;
          e.synthetic = false;
          this.io.gapRenamed(e);
          break;
        }
      }
      return;
    }
    const start = Math.max(from, s.lastSeq + 1);
    this.pushEntry(s, { kind: 'gap', fromSeq: start, toSeq: to, count: to - start + 1, reason });
    s.lastSeq = to;
    s.lastKey = null;
    this.io.changed(s);
  }

  pushEntry(s, e) {
    const ents = s.entries;
    ents.push(e);
    if (ents.length > BUFFER_MAX + 500) ents.splice(0, ents.length - BUFFER_MAX);
    this.io.entry(s, e);
  }
}
