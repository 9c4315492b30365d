/* pcclog viewer: the level table, served by the server (GET /levels.json).
 *
 * The names, their order and the aliases are defined once, in the core
 * (pcclog_core._levels); the viewer keeps no copy. `loadLevels()` fetches the
 * table before the first WebSocket connection; if the fetch fails the viewer
 * does not connect: it shows "reconnecting" with the reason and tries again on
 * its usual backoff (see app.js). There is deliberately no built-in fallback
 * table, so a viewer can never disagree with its server.
 *
 * The server normalises every level before it stores an entry, so what
 * arrives is one of the names; `normalize` is only a guard (an alias maps to
 * its level, anything else becomes the default, "info", as in the core).
 */

/** A level table from the JSON the server serves: `{"levels": [...], "aliases": {...}}`.
 *  Throws if the JSON is not such a table. */
export function levelTable(json) {
  const names = json && json.levels;
  if (!Array.isArray(names) || !names.length || !names.every((n) => typeof n === 'string' && n)) {
    throw new Error('no list of level names');
  }
  for (const needed of ['info', 'error']) {   // the default, and what counts as an error
    if (!names.includes(needed)) throw new Error('no "' + needed + '" level');
  }
  const rank = Object.create(null);
  names.forEach((name, i) => { rank[name] = i; });
  const alias = Object.create(null);
  const aliases = json.aliases && typeof json.aliases === 'object' ? json.aliases : {};
  for (const key of Object.keys(aliases)) {
    const level = aliases[key];
    if (typeof level === 'string' && level in rank) alias[key.toLowerCase()] = level;
  }
  for (const name of names) alias[name] = name;

  /** `value` as one of the names: a name, an alias (any case), else "info". */
  function normalize(value) {
    if (typeof value !== 'string') return 'info';
    if (value in rank) return value;   // the common case
    const level = alias[value.trim().toLowerCase()];
    return level === undefined ? 'info' : level;
  }

  return Object.freeze({
    names: Object.freeze([...names]),
    rank: Object.freeze(rank),
    normalize,
    error: rank.error,
  });
}

/** Fetches and checks the server's table; rejects with a short reason. */
export async function loadLevels(fetchImpl = globalThis.fetch, url = '/levels.json') {
  let response;
  try {
    response = await fetchImpl(url, { cache: 'no-cache', credentials: 'same-origin' });
  } catch (err) {
    throw new Error('cannot load the level table (' + url + '): ' + ((err && err.message) || err));
  }
  if (!response.ok) throw new Error('cannot load the level table (' + url + '): HTTP ' + response.status);
  let json;
  try { json = await response.json(); } catch {
    throw new Error('the level table (' + url + ') is not JSON');
  }
  try { return levelTable(json); } catch (err) {
    throw new Error('the level table (' + url + ') is not valid: ' + err.message);
  }
}
