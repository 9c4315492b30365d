// The viewer's protocol module (src/pcclog_server/static/protocol.js) under
// Node's test runner: no DOM, no WebSocket, every input with its own `now`.
// Run: node --test tests/node/  (tests/test_viewer_js.py runs it in `make test`)

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { levelTable } from '../../src/pcclog_server/static/levels.js';
import {
  BACKOFF_MAX,
  BACKOFF_MIN,
  BUFFER_MAX,
  CONNECT_TIMEOUT_MS,
  INITIAL_TAIL,
  MAX_RESUME_SUBS,
  PING_IDLE_MS,
  PING_TIMEOUT_MS,
  ViewerProtocol,
  backoffDelay,
  closeReason,
  entryKey,
} from '../../src/pcclog_server/static/protocol.js';

const TABLE = {
  levels: ['trace', 'debug', 'info', 'warn', 'error', 'fatal'],
  aliases: { warning: 'warn', err: 'error', critical: 'fatal', emerg: 'fatal', notice: 'info' },
};
const T0 = Date.parse('2025-01-01T00:00:00Z');

/** A protocol whose `io` records everything it is told. */
function harness({ table = TABLE, open = [] } = {}) {
  const rec = { sent: [], created: [], entries: [], changed: 0, renamed: [], authed: 0, signOut: [], problems: [] };
  const io = {
    send: (msg) => { rec.sent.push(msg); return true; },
    created: (s) => rec.created.push(s.id),
    entry: (s, e) => rec.entries.push([s.id, e]),
    changed: () => { rec.changed++; },
    gapRenamed: (e) => rec.renamed.push(e),
    authed: () => { rec.authed++; },
    signOut: (message) => rec.signOut.push(message),
    problem: (text) => rec.problems.push(text),
    priority: () => open,
  };
  const proto = new ViewerProtocol(io, { levels: levelTable(table), now: T0 });
  const feed = (msg, now = T0) => proto.receive(typeof msg === 'string' ? msg : JSON.stringify(msg), now);
  const shown = (id) => proto.sessions.get(id).entries;
  return { proto, rec, feed, shown };
}

function log(sessionId, seq, message, extra = {}) {
  return { type: 'log', sessionId, seq, timestamp: new Date(T0 + seq).toISOString(), level: 'info', message, ...extra };
}

/** Connect, authenticate and take the first replay of `id` (seq 1..n). */
function firstConnection(h, id, n) {
  h.proto.connecting(T0);
  h.proto.opened('tok', T0);
  h.feed({ type: 'sessions', sessions: [{ sessionId: id, status: 'running', metadata: {}, lastSeq: n }] });
  h.feed({ type: 'status', sessionId: id, status: 'running', metadata: {} });   // the snapshot
  for (let seq = 1; seq <= n; seq++) h.feed(log(id, seq, 'line ' + seq));
}

/** Drop the connection and open the next one; returns what it sent. */
function reconnect(h, now = T0 + 60_000) {
  h.proto.closed(1006, '', now);
  h.rec.sent.length = 0;
  h.proto.connecting(now);
  h.proto.opened('tok', now);
  return h.rec.sent;
}

describe('first connection', () => {
  test('authenticates, lists and subscribes to every session with a tail', () => {
    const h = harness();
    h.proto.connecting(T0);
    assert.equal(h.proto.opened('secret', T0), false);
    assert.deepEqual(h.rec.sent, [
      { type: 'auth', token: 'secret' },
      { type: 'list' },
      { type: 'subscribe', sessionId: '*', tail: INITIAL_TAIL },
    ]);
  });

  test('the first answer marks the connection authenticated, once', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed({ type: 'sessions', sessions: [] });
    h.feed({ type: 'pong' });
    assert.equal(h.rec.authed, 1);
    assert.equal(h.proto.authed, true);
    assert.equal(h.proto.everConnected, true);
  });

  test('non-text frames, bad JSON and non-objects are ignored', () => {
    const h = harness();
    h.proto.receive(new Uint8Array([1, 2]), T0);
    h.proto.receive('{not json', T0);
    h.proto.receive('42', T0);
    h.proto.receive('null', T0);
    assert.equal(h.rec.authed, 0);
    assert.equal(h.proto.sessions.size, 0);
  });
});

describe('resume positions after a reconnect', () => {
  test('a known session resumes with since lastSeq-1 (one entry of overlap)', () => {
    const h = harness();
    firstConnection(h, 'a', 3);
    const sent = reconnect(h);
    assert.equal(h.proto.resume, true);
    assert.deepEqual(sent, [{ type: 'auth', token: 'tok' }, { type: 'list' }]);
    sent.length = 0;
    h.feed({ type: 'sessions', sessions: [{ sessionId: 'a', status: 'running', lastSeq: 5 }, { sessionId: 'b', lastSeq: 2 }] });
    assert.deepEqual(sent, [
      { type: 'subscribe', sessionId: 'a', since: 2 },
      { type: 'subscribe', sessionId: 'b', tail: INITIAL_TAIL },   // listed, never seen
      { type: 'subscribe', sessionId: '*', tail: 0 },
    ]);
    assert.equal(h.proto.sessions.get('a').verifySeq, 3);
  });

  test('open panes resume first; sessions the server no longer lists are skipped', () => {
    const h = harness({ open: ['c'] });
    h.proto.opened('t', T0);
    for (const id of ['a', 'b', 'c']) h.feed(log(id, 1, 'x'));
    const sent = reconnect(h);
    sent.length = 0;
    h.feed({ type: 'sessions', sessions: [{ sessionId: 'a' }, { sessionId: 'c' }] });
    assert.deepEqual(sent.map((m) => m.sessionId), ['c', 'a', '*']);
    assert.equal(h.proto.sessions.get('b').gone, true);
  });

  test('without a `sessions` reply, resubscribe(null) resumes what is not gone', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed(log('a', 1, 'x'));
    h.feed(log('b', 4, 'y'));
    h.proto.sessions.get('b').gone = true;
    const sent = reconnect(h);
    sent.length = 0;
    h.proto.resubscribe(null);
    assert.deepEqual(sent, [{ type: 'subscribe', sessionId: 'a', since: 0 }, { type: 'subscribe', sessionId: '*', tail: 0 }]);
    sent.length = 0;
    h.proto.resubscribe(null);   // a late timer, or the reply after all: nothing twice
    h.feed({ type: 'sessions', sessions: [] });
    assert.deepEqual(sent, []);
  });

  test('an error without a session id during the wait resumes at once', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed(log('a', 2, 'x'));
    const sent = reconnect(h);
    sent.length = 0;
    h.feed({ type: 'error', code: 'BAD_MESSAGE', message: 'unknown type list' });
    assert.deepEqual(sent.map((m) => m.sessionId), ['a', '*']);
    assert.deepEqual(h.rec.problems, ['BAD_MESSAGE: unknown type list']);
  });

  test(`at most ${MAX_RESUME_SUBS} sessions resume with their own subscription`, () => {
    const h = harness();
    h.proto.opened('t', T0);
    for (let i = 0; i < MAX_RESUME_SUBS + 20; i++) h.feed(log('s' + i, 1, 'x'));
    const sent = reconnect(h);
    sent.length = 0;
    h.proto.resubscribe(null);
    assert.equal(sent.length, MAX_RESUME_SUBS + 1);
    assert.deepEqual(sent.at(-1), { type: 'subscribe', sessionId: '*', tail: 0 });
  });

  test('a session whose last entry was a gap resumes with since lastSeq, unverified', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed(log('a', 1, 'x'));
    h.feed({ type: 'gap', sessionId: 'a', fromSeq: 2, toSeq: 9, count: 8, reason: 'evicted' });
    const sent = reconnect(h);
    sent.length = 0;
    h.feed({ type: 'sessions', sessions: [{ sessionId: 'a', lastSeq: 12 }] });
    assert.deepEqual(sent[0], { type: 'subscribe', sessionId: 'a', since: 9 });
    assert.equal(h.proto.sessions.get('a').verifySeq, 0);
  });
});

describe('duplicates after a reconnect', () => {
  test('the overlap entry is checked and dropped; later ones are shown once', () => {
    const h = harness();
    firstConnection(h, 'a', 3);
    reconnect(h);
    h.feed({ type: 'sessions', sessions: [{ sessionId: 'a', lastSeq: 5 }] });
    h.feed({ type: 'status', sessionId: 'a', status: 'running', metadata: {} });
    for (let seq = 3; seq <= 5; seq++) h.feed(log('a', seq, 'line ' + seq));
    h.feed(log('a', 5, 'line 5'));   // delivered twice
    h.feed(log('a', 4, 'line 4'));   // late
    const lines = h.shown('a').filter((e) => e.kind === 'log').map((e) => e.seq);
    assert.deepEqual(lines, [1, 2, 3, 4, 5]);
    assert.equal(h.shown('a').filter((e) => e.kind !== 'log').length, 0);
    assert.equal(h.proto.sessions.get('a').lastSeq, 5);
  });

  test('another entry at the overlap seq: the server restarted; re-subscribe from 0', () => {
    const h = harness();
    firstConnection(h, 'a', 3);
    const sent = reconnect(h);
    h.feed({ type: 'sessions', sessions: [{ sessionId: 'a', lastSeq: 5 }] });
    sent.length = 0;
    h.feed(log('a', 3, 'new 3'));
    h.feed(log('a', 4, 'new 4'));   // the rest of the stale replay
    assert.deepEqual(sent, [{ type: 'subscribe', sessionId: 'a', since: 0 }]);
    const s = h.proto.sessions.get('a');
    assert.equal(s.resync, true);
    h.feed({ type: 'status', sessionId: 'a', status: 'running', metadata: {} });   // the fresh replay's snapshot
    for (let seq = 1; seq <= 5; seq++) h.feed(log('a', seq, 'new ' + seq));
    const kinds = h.shown('a').map((e) => (e.kind === 'log' ? e.message : e.kind + ':' + (e.text || '')));
    assert.deepEqual(kinds, [
      'line 1', 'line 2', 'line 3',
      'note:sequence restarted: the server restarted',
      'new 1', 'new 2', 'new 3', 'new 4', 'new 5',
    ]);
    assert.equal(s.lastSeq, 5);
  });

  test('the server listing fewer entries than seen resets the numbering', () => {
    const h = harness();
    firstConnection(h, 'a', 3);
    reconnect(h);
    h.feed({ type: 'sessions', sessions: [{ sessionId: 'a', lastSeq: 1 }] });
    const s = h.proto.sessions.get('a');
    assert.equal(s.lastSeq, 0);
    assert.match(h.shown('a').at(-1).text, /fewer entries/);
    h.feed(log('a', 1, 'after'));
    assert.equal(h.shown('a').at(-1).message, 'after');
  });

  test('seq 1 again on a live connection: the session started again', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed(log('a', 1, 'one'));
    h.feed(log('a', 2, 'two'));
    h.feed(log('a', 1, 'one again'));
    assert.deepEqual(h.shown('a').map((e) => e.kind), ['log', 'log', 'note', 'log']);
    assert.equal(h.proto.sessions.get('a').lastSeq, 1);
  });

  test('entryKey tells log and status entries apart by content', () => {
    const a = { type: 'log', timestamp: 't', level: 'info', message: 'm', data: { x: 1 } };
    assert.equal(entryKey(a), entryKey({ ...a }));
    assert.notEqual(entryKey(a), entryKey({ ...a, message: 'n' }));
    assert.notEqual(entryKey({ type: 'status', status: 'running', metadata: {} }),
      entryKey({ type: 'status', status: 'stopped', metadata: {} }));
  });
});

describe('gaps', () => {
  test('a gap notice becomes one gap entry and moves lastSeq', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed(log('a', 1, 'x'));
    h.feed({ type: 'gap', sessionId: 'a', fromSeq: 2, toSeq: 5, count: 4, reason: 'slow_consumer' });
    h.feed(log('a', 6, 'y'));
    const gap = h.shown('a')[1];
    assert.deepEqual({ ...gap }, { kind: 'gap', fromSeq: 2, toSeq: 5, count: 4, reason: 'slow_consumer' });
    assert.equal(h.proto.sessions.get('a').lastSeq, 6);
    assert.equal(h.shown('a').length, 3);
  });

  test('a gap overlapping what was seen starts after it', () => {
    const h = harness();
    h.proto.opened('t', T0);
    for (let seq = 1; seq <= 3; seq++) h.feed(log('a', seq, 'x'));
    h.feed({ type: 'gap', sessionId: 'a', fromSeq: 2, toSeq: 7, reason: 'evicted' });
    assert.deepEqual([h.shown('a').at(-1).fromSeq, h.shown('a').at(-1).count], [4, 4]);
  });

  test('a seq jump with no notice gets a synthetic gap, named by a late notice', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed(log('a', 1, 'x'));
    h.feed(log('a', 4, 'y'));
    const gap = h.shown('a')[1];
    assert.deepEqual([gap.kind, gap.fromSeq, gap.toSeq, gap.count, gap.reason, gap.synthetic],
      ['gap', 2, 3, 2, 'not received', true]);
    h.feed({ type: 'gap', sessionId: 'a', fromSeq: 2, toSeq: 3, reason: 'slow_consumer' });
    assert.equal(gap.reason, 'slow_consumer');
    assert.equal(gap.synthetic, false);
    assert.deepEqual(h.rec.renamed, [gap]);
    assert.equal(h.shown('a').length, 3);   // no second marker
  });

  test('nonsense gaps (to < from, not numbers) are ignored', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed(log('a', 1, 'x'));
    h.feed({ type: 'gap', sessionId: 'a', fromSeq: 5, toSeq: 2 });
    h.feed({ type: 'gap', sessionId: 'a', fromSeq: 'x', toSeq: 'y' });
    assert.equal(h.shown('a').length, 1);
  });

  test('a gap that swallows the overlap entry turns its check off', () => {
    const h = harness();
    firstConnection(h, 'a', 3);
    reconnect(h);
    h.feed({ type: 'sessions', sessions: [{ sessionId: 'a', lastSeq: 900 }] });
    h.feed({ type: 'gap', sessionId: 'a', fromSeq: 1, toSeq: 800, reason: 'evicted' });
    assert.equal(h.proto.sessions.get('a').verifySeq, 0);
    h.feed(log('a', 801, 'kept'));
    assert.equal(h.shown('a').at(-1).message, 'kept');
  });
});

describe('entries and sessions', () => {
  test('levels are normalised through the table it is given', () => {
    const h = harness({
      table: { levels: ['debug', 'info', 'notice', 'error', 'fatal'], aliases: { warning: 'notice', crit: 'fatal' } },
    });
    h.proto.opened('t', T0);
    const levels = ['debug', 'WARNING', ' crit ', 'notice', 'trace', 50, null, 'error'];
    levels.forEach((level, i) => h.feed(log('a', i + 1, 'm' + i, { level })));
    const got = h.shown('a').map((e) => [e.level, e._lv]);
    assert.deepEqual(got, [
      ['debug', 0], ['notice', 2], ['fatal', 4], ['notice', 2],
      ['info', 1], ['info', 1], ['info', 1],   // unknown to this table: the default
      ['error', 3],
    ]);
    assert.equal(h.proto.sessions.get('a').errors, 2);   // error and above, by the table's order
    assert.equal(h.proto.sessions.get('a').lines, levels.length);
  });

  test('messages and data of any type are kept as text', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed(log('a', 1, { nested: true }));
    h.feed(log('a', 2, null));
    assert.deepEqual(h.shown('a').map((e) => e.message), ['{"nested":true}', '']);
  });

  test('status entries update the session; snapshots end a resync', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed({ type: 'status', sessionId: 'a', seq: 1, status: 'stopped', metadata: { exitCode: 0 } }, T0 + 5);
    const s = h.proto.sessions.get('a');
    assert.equal(s.status, 'stopped');
    assert.deepEqual(s.metadata, { exitCode: 0 });
    assert.equal(s.entries[0].kind, 'status');
    assert.equal(s.entries[0].timestamp, new Date(T0 + 5).toISOString());   // arrival time
    s.resync = true;
    h.feed({ type: 'status', sessionId: 'a', status: 'running', metadata: {} });
    assert.equal(s.resync, false);
    assert.equal(s.entries.length, 1);   // a snapshot is not an entry
  });

  test('the buffer keeps the newest BUFFER_MAX entries', () => {
    const h = harness();
    h.proto.opened('t', T0);
    for (let seq = 1; seq <= BUFFER_MAX + 501; seq++) h.feed(log('a', seq, 'x'));
    const ents = h.shown('a');
    assert.equal(ents.length, BUFFER_MAX);
    assert.equal(ents.at(-1).seq, BUFFER_MAX + 501);
    assert.equal(h.rec.entries.length, BUFFER_MAX + 501);   // every entry reached the page once
  });

  test('last output is on the browser clock, even with a skewed server clock', () => {
    const h = harness();
    h.proto.opened('t', T0);
    const serverAhead = 3_600_000;
    h.feed({ ...log('a', 1, 'x'), timestamp: new Date(T0 + serverAhead).toISOString() }, T0);
    assert.equal(h.proto.sessions.get('a').lastOutput, T0);
  });

  test('SESSION_NOT_FOUND marks the session gone, quietly', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed(log('a', 1, 'x'));
    h.feed({ type: 'error', code: 'SESSION_NOT_FOUND', sessionId: 'a', message: 'no such session' });
    assert.equal(h.proto.sessions.get('a').gone, true);
    assert.deepEqual(h.rec.problems, []);
  });

  test('UNAUTHORIZED before the first answer signs out; for one session it is shown', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed({ type: 'error', code: 'UNAUTHORIZED', message: 'bad token' });
    assert.deepEqual(h.rec.signOut, ['Unauthorized: bad token']);

    const h2 = harness();
    h2.proto.opened('t', T0);
    h2.feed({ type: 'sessions', sessions: [] });
    h2.feed({ type: 'error', code: 'UNAUTHORIZED', sessionId: 'secret', message: 'not yours' });
    assert.deepEqual(h2.rec.signOut, []);
    assert.deepEqual(h2.rec.problems, ['UNAUTHORIZED [secret]: not yours']);
  });

  test('reset forgets every session', () => {
    const h = harness();
    h.proto.opened('t', T0);
    h.feed(log('a', 1, 'x'));
    h.proto.attempt = 4;
    h.proto.reset();
    assert.equal(h.proto.sessions.size, 0);
    assert.equal(h.proto.attempt, 0);
    assert.equal(h.proto.everConnected, false);
    assert.equal(h.proto.opened('t', T0), false);   // a first connection again
  });
});

describe('reconnect logic', () => {
  test('backoff doubles from BACKOFF_MIN to BACKOFF_MAX, jittered into [base/2, base]', () => {
    assert.equal(backoffDelay(0, 0), BACKOFF_MIN / 2);
    assert.equal(backoffDelay(0, 0.999999), BACKOFF_MIN);
    assert.equal(backoffDelay(3, 1), BACKOFF_MIN * 8);
    assert.equal(backoffDelay(30, 1), BACKOFF_MAX);
    assert.equal(backoffDelay(30, 0), BACKOFF_MAX / 2);
  });

  test('nextRetry counts attempts; a connection that lived resets them', () => {
    const h = harness();
    const delays = [0, 1, 2, 3].map(() => h.proto.nextRetry(1));
    assert.deepEqual(delays, [500, 1000, 2000, 4000]);
    h.proto.connecting(T0);
    h.proto.opened('t', T0);
    h.feed({ type: 'sessions', sessions: [] });
    assert.deepEqual(h.proto.closed(1006, '', T0 + 1000), { retry: 'connection lost' });
    assert.equal(h.proto.attempt, 4);   // it lived 1 s: not long enough
    h.proto.connecting(T0 + 2000);
    h.proto.opened('t', T0 + 2000);
    h.feed({ type: 'sessions', sessions: [] });
    assert.deepEqual(h.proto.closed(1001, 'bye', T0 + 9000), { retry: 'server restarting' });
    assert.equal(h.proto.attempt, 0);
  });

  test('a 1008 close about the token signs out; other closes retry', () => {
    const h = harness();
    h.proto.connecting(T0);
    h.proto.opened('t', T0);
    assert.deepEqual(h.proto.closed(1008, '', T0 + 10),
      { signOut: 'The server refused the connection (token rejected or expired).' });
    h.proto.connecting(T0 + 20);
    h.proto.opened('t', T0 + 20);
    h.feed({ type: 'sessions', sessions: [] });
    assert.deepEqual(h.proto.closed(1008, 'token expired', T0 + 30),
      { signOut: 'The server refused the connection: token expired.' });
    h.proto.connecting(T0 + 40);
    h.proto.opened('t', T0 + 40);
    h.feed({ type: 'sessions', sessions: [] });
    assert.deepEqual(h.proto.closed(1008, 'too many subscriptions', T0 + 50),
      { retry: 'closed (1008 too many subscriptions)' });
    h.proto.connecting(T0 + 60);   // never opened: a 1008 from a proxy, say
    assert.deepEqual(h.proto.closed(1008, '', T0 + 70), { retry: 'closed (1008)' });
    assert.equal(h.proto.authed, false);
  });

  test('close reasons in words', () => {
    assert.equal(closeReason(1013, ''), 'viewer too slow');
    assert.equal(closeReason(4001, 'dropped'), 'closed (4001 dropped)');
  });

  test('keepalive: ping when idle, reconnect when the ping goes unanswered', () => {
    const h = harness();
    h.proto.connecting(T0);
    assert.equal(h.proto.tick(T0 + CONNECT_TIMEOUT_MS, 'connecting'), null);
    assert.equal(h.proto.tick(T0 + CONNECT_TIMEOUT_MS + 1, 'connecting'), 'connect timeout');
    h.proto.opened('t', T0);
    h.rec.sent.length = 0;
    assert.equal(h.proto.tick(T0 + PING_IDLE_MS, 'open'), null);
    assert.deepEqual(h.rec.sent, []);
    const pingAt = T0 + PING_IDLE_MS + 1;
    assert.equal(h.proto.tick(pingAt, 'open'), null);
    assert.deepEqual(h.rec.sent, [{ type: 'ping' }]);
    assert.equal(h.proto.tick(pingAt + 5000, 'open'), null);   // waiting, no second ping
    assert.equal(h.rec.sent.length, 1);
    h.feed({ type: 'pong' }, pingAt + 6000);                 // answered
    assert.equal(h.proto.tick(pingAt + PING_TIMEOUT_MS + 1, 'open'), null);
    const again = pingAt + 6000 + PING_IDLE_MS + 1;
    h.proto.tick(again, 'open');
    assert.equal(h.rec.sent.length, 2);
    assert.equal(h.proto.tick(again + PING_TIMEOUT_MS + 1, 'open'), 'no answer to ping');
    assert.equal(h.proto.tick(again + PING_TIMEOUT_MS + 1, 'closed'), null);
  });
});
