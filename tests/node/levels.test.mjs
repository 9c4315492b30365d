// The viewer's level table (src/pcclog_server/static/levels.js): built from
// what GET /levels.json serves, with no copy of its own.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { levelTable, loadLevels } from '../../src/pcclog_server/static/levels.js';

const SERVED = {
  levels: ['trace', 'debug', 'info', 'warn', 'error', 'fatal'],
  aliases: { trace: 'trace', warning: 'warn', Err: 'error', emerg: 'fatal', bogus: 'loud', n: 3 },
};

function response(status, body) {
  return { ok: status >= 200 && status < 300, status, json: async () => (typeof body === 'string' ? JSON.parse(body) : body) };
}

test('the order and ranks are the served ones', () => {
  const t = levelTable(SERVED);
  assert.deepEqual(t.names, SERVED.levels);
  assert.equal(t.rank.trace, 0);
  assert.equal(t.rank.fatal, 5);
  assert.equal(t.error, 4);
  assert.ok(Object.isFrozen(t) && Object.isFrozen(t.names));
});

test('normalize: names, aliases in any case, else info', () => {
  const t = levelTable(SERVED);
  assert.equal(t.normalize('warn'), 'warn');
  assert.equal(t.normalize('WARNING'), 'warn');
  assert.equal(t.normalize(' err '), 'error');
  assert.equal(t.normalize('emerg'), 'fatal');
  assert.equal(t.normalize('loud'), 'info');       // an alias to no level is dropped
  assert.equal(t.normalize('bogus'), 'info');
  assert.equal(t.normalize('constructor'), 'info');
  assert.equal(t.normalize('__proto__'), 'info');
  assert.equal(t.normalize(40), 'info');           // the server maps numbers before sending
  assert.equal(t.normalize(undefined), 'info');
});

test('a table without names, info or error is refused', () => {
  assert.throws(() => levelTable(null), /no list of level names/);
  assert.throws(() => levelTable({ levels: [] }), /no list/);
  assert.throws(() => levelTable({ levels: ['a', 3] }), /no list/);
  assert.throws(() => levelTable({ levels: ['debug', 'error'] }), /"info"/);
  assert.throws(() => levelTable({ levels: ['debug', 'info'] }), /"error"/);
  assert.deepEqual(levelTable({ levels: ['info', 'error'] }).names, ['info', 'error']);   // aliases optional
});

test('loadLevels fetches /levels.json and checks it', async () => {
  const asked = [];
  const t = await loadLevels(async (url, init) => { asked.push([url, init.cache]); return response(200, SERVED); });
  assert.deepEqual(asked, [['/levels.json', 'no-cache']]);
  assert.equal(t.normalize('warning'), 'warn');
});

test('loadLevels rejects with a reason the page can show', async () => {
  await assert.rejects(loadLevels(async () => response(404, {})), /level table \(\/levels\.json\): HTTP 404/);
  await assert.rejects(loadLevels(async () => { throw new TypeError('Failed to fetch'); }), /Failed to fetch/);
  await assert.rejects(loadLevels(async () => response(200, '<html>')), /not JSON/);
  await assert.rejects(loadLevels(async () => response(200, { levels: 'info' })), /not valid: no list/);
});
