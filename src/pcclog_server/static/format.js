/* pcclog viewer: how entries and states read as text (pure, no DOM). */

export function safeJson(v) {
  try { return JSON.stringify(v); } catch { return String(v); }
}

const p2 = (n) => (n < 10 ? '0' : '') + n;
const p3 = (n) => (n < 10 ? '00' : n < 100 ? '0' : '') + n;

/** HH:MM:SS.mmm of a timestamp in this browser's time zone. */
export function fmtTime(ts) {
  const d = new Date(ts);
  const t = d.getTime();
  if (t !== t) return typeof ts === 'string' ? ts.slice(0, 12) : '';
  return p2(d.getHours()) + ':' + p2(d.getMinutes()) + ':' + p2(d.getSeconds()) + '.' + p3(d.getMilliseconds());
}

/** "12s ago", "3m 4s ago", … for a time in ms since the epoch (0: no output). */
export function fmtAgo(ms, now = Date.now()) {
  if (!ms) return 'no output';
  let s = Math.floor((now - ms) / 1000);
  if (s < 1) return 'just now';
  if (s < 60) return s + 's ago';
  let m = Math.floor(s / 60); s %= 60;
  if (m < 60) return m + 'm ' + s + 's ago';
  const hr = Math.floor(m / 60); m %= 60;
  if (hr < 48) return hr + 'h ' + m + 'm ago';
  return Math.floor(hr / 24) + 'd ago';
}

export function plural(n, one, many) { return n + ' ' + (n === 1 ? one : many); }

/** An entry's `data` as one string, computed once per entry. */
export function dataString(e) {
  if (e._ds === undefined) {
    if (e.data === undefined || e.data === null) e._ds = '';
    else {
      try { e._ds = typeof e.data === 'string' ? e.data : JSON.stringify(e.data); }
      catch { e._ds = String(e.data); }
    }
  }
  return e._ds;
}

export function statusLabel(status, metadata) {
  const code = metadata && metadata.exitCode;
  const hasCode = code !== undefined && code !== null && code !== '';
  if (status === 'stopped') return hasCode ? 'stopped (exit ' + code + ')' : 'stopped';
  if (status === 'error') return hasCode ? 'error (exit ' + code + ')' : 'error';
  if (status === 'running') return 'running';
  return status || 'unknown';
}

export function gapText(e) {
  return plural(e.count, 'line', 'lines') + ' missed (' + e.reason + ')';
}

export const GAP_HELP = {
  evicted: 'older than the server\'s history for this session',
  slow_consumer: 'this viewer fell behind and the server dropped lines for it',
  'not received': 'the sequence numbers jumped without a gap notice',
};

/** One entry as a line of text (copy and download). */
export function entryLine(e) {
  if (e.kind === 'note') return '--- ' + e.text + ' ---';
  if (e.kind === 'gap') return '--- ' + gapText(e) + ' [seq ' + e.fromSeq + '..' + e.toSeq + '] ---';
  if (e.kind === 'status') {
    return (e.timestamp || '') + ' STATUS ' + statusLabel(e.status, e.metadata) +
      (e.metadata && Object.keys(e.metadata).length ? ' ' + safeJson(e.metadata) : '');
  }
  const ds = dataString(e);
  return (e.timestamp || '') + ' ' + e.level.toUpperCase() + ' ' + e.message + (ds ? ' ' + ds : '');
}
