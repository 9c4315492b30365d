// The viewer's text forms (src/pcclog_server/static/format.js): what the
// badges say, and the lines that copy and download write.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { dataString, entryLine, fmtAgo, gapText, plural, statusLabel } from '../../src/pcclog_server/static/format.js';

test('status labels carry the exit code', () => {
  assert.equal(statusLabel('stopped', { exitCode: 0 }), 'stopped (exit 0)');
  assert.equal(statusLabel('error', { exitCode: 137 }), 'error (exit 137)');
  assert.equal(statusLabel('stopped', { exitCode: '' }), 'stopped');
  assert.equal(statusLabel('running', { exitCode: 1 }), 'running');
  assert.equal(statusLabel('', {}), 'unknown');
  assert.equal(statusLabel('paused', null), 'paused');
});

test('entry lines for copy and download', () => {
  const logEntry = { kind: 'log', timestamp: '2025-01-01T00:00:00Z', level: 'warn', message: 'disk low', data: { free: 3 } };
  assert.equal(entryLine(logEntry), '2025-01-01T00:00:00Z WARN disk low {"free":3}');
  assert.equal(entryLine({ kind: 'log', timestamp: 't', level: 'info', message: 'm', data: 'raw' }), 't INFO m raw');
  assert.equal(entryLine({ kind: 'status', timestamp: 't', status: 'stopped', metadata: { exitCode: 0 } }),
    't STATUS stopped (exit 0) {"exitCode":0}');
  assert.equal(entryLine({ kind: 'gap', fromSeq: 2, toSeq: 4, count: 3, reason: 'evicted' }),
    '--- 3 lines missed (evicted) [seq 2..4] ---');
  assert.equal(entryLine({ kind: 'note', text: 'sequence restarted: x' }), '--- sequence restarted: x ---');
});

test('data is stringified once, cycles included', () => {
  const cyclic = {};
  cyclic.self = cyclic;
  const e = { data: cyclic };
  assert.equal(dataString(e), '[object Object]');
  e.data = 'changed';
  assert.equal(dataString(e), '[object Object]');   // cached
  assert.equal(dataString({ data: null }), '');
});

test('ages and counts', () => {
  const now = 1_000_000_000;
  assert.equal(fmtAgo(0, now), 'no output');
  assert.equal(fmtAgo(now - 500, now), 'just now');
  assert.equal(fmtAgo(now - 42_000, now), '42s ago');
  assert.equal(fmtAgo(now - 185_000, now), '3m 5s ago');
  assert.equal(fmtAgo(now - 3 * 3_600_000 - 60_000, now), '3h 1m ago');
  assert.equal(fmtAgo(now - 72 * 3_600_000, now), '3d ago');
  assert.equal(plural(1, 'line', 'lines'), '1 line');
  assert.equal(gapText({ count: 1, reason: 'slow_consumer' }), '1 line missed (slow_consumer)');
});
