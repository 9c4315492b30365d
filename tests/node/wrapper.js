// A stand-in for the original container wrapper, written from the wire
// shapes in SPEC §3 (its dialect): it connects to
// ws://HOST:PORT/?token=T&containerID=C and sends envelopes
// {"type": "LOG|STATUS|ERROR|COMPLETE|HEARTBEAT", containerID, timestamp, data}.
//
//   node wrapper.js ws://127.0.0.1:8080 TOKEN CONTAINER_ID
//
// TOKEN "" (or "-") leaves the token out of the URL. Also from the
// environment: WRAPPER_BIG_BYTES (length of the long LOG line, default
// 102400), WRAPPER_EXIT_CODE (the COMPLETE's exitCode, default 0),
// WRAPPER_BASE_TIME (ISO time of the first envelope; each next one is a
// second later; default now).
//
// Run: STATUS starting, a LOG naming its own URL (as the original did), STATUS
// running, LOG lines at info/warn/debug, the long LOG line, an ERROR, two
// HEARTBEATs (each reply must carry data.timestamp), one more LOG, COMPLETE,
// close. stdout says what happened, one line per event:
//   sent TYPE TIMESTAMP / heartbeat TIMESTAMP / server-error JSON / closed CODE
// Exit status: 0 done; 2 refused at the handshake (HTTP status on stderr);
// 1 any other failure (connection error, closed early, a HEARTBEAT reply
// without data.timestamp, an error message from the server); 5 overall timeout.
const WebSocket = require('ws');

const base = (process.argv[2] || process.env.WRAPPER_URL || 'ws://127.0.0.1:8080').replace(/\/+$/, '');
const rawToken = process.argv[3] !== undefined ? process.argv[3] : process.env.WRAPPER_TOKEN || '';
const token = rawToken === '-' ? '' : rawToken;
const containerID = process.argv[4] || process.env.WRAPPER_CONTAINER_ID || 'wrapper-1';
const bigBytes = Number(process.env.WRAPPER_BIG_BYTES || 102400);
const exitCode = Number(process.env.WRAPPER_EXIT_CODE || 0);
const baseTime = process.env.WRAPPER_BASE_TIME ? Date.parse(process.env.WRAPPER_BASE_TIME) : Date.now();

const query = token ? `token=${encodeURIComponent(token)}&` : '';
const url = `${base}/?${query}containerID=${encodeURIComponent(containerID)}`;
const started = Date.now();
let sent = 0;
let errors = 0;
let done = false; // COMPLETE sent
let finished = false;

function fail(code, why) {
  if (finished) return;
  finished = true;
  console.error(`wrapper: ${why}`);
  process.exit(code);
}

setTimeout(() => fail(5, 'timed out'), 15000).unref();

const ws = new WebSocket(url, { maxPayload: 0 });

function send(type, data) {
  const timestamp = new Date(baseTime + 1000 * sent++).toISOString();
  ws.send(JSON.stringify({ type, containerID, timestamp, data }));
  console.log(`sent ${type} ${timestamp}`);
}

// Replies the wrapper waits for: HEARTBEAT answers, in order.
const waiting = [];
function heartbeat() {
  return new Promise((resolve, reject) => {
    waiting.push({ resolve, reject });
    send('HEARTBEAT', { uptime: Date.now() - started });
  });
}

ws.on('unexpected-response', (req, res) => {
  // The server refused the upgrade (401 without a valid token): fail fast.
  fail(2, `refused: HTTP ${res.statusCode}`);
});

ws.on('error', (err) => fail(1, `connection error: ${err.message}`));

ws.on('message', (raw) => {
  const message = JSON.parse(raw.toString());
  if (message.type === 'HEARTBEAT') {
    const next = waiting.shift();
    const ts = message.data && message.data.timestamp;
    if (!next) return fail(1, 'unexpected HEARTBEAT');
    if (typeof ts !== 'string' || Number.isNaN(Date.parse(ts))) {
      return next.reject(new Error(`HEARTBEAT reply without data.timestamp: ${raw}`));
    }
    console.log(`heartbeat ${ts}`);
    return next.resolve();
  }
  if (message.type === 'error') {
    errors += 1;
    console.log(`server-error ${JSON.stringify(message)}`);
  }
});

ws.on('close', (code) => {
  console.log(`closed ${code}`);
  if (!done) return fail(1, `closed ${code} before COMPLETE`);
  if (errors) return fail(1, `the server sent ${errors} error message(s)`);
  finished = true;
  process.exit(0);
});

ws.on('open', async () => {
  try {
    send('STATUS', { status: 'starting', message: 'container starting' });
    send('LOG', { level: 'info', message: `Connecting to ${url}`, metadata: { source: 'wrapper' } });
    send('STATUS', { status: 'running', message: 'agent running' });
    send('LOG', { level: 'info', message: 'hello from the agent', metadata: { step: 1 } });
    send('LOG', { level: 'warn', message: 'disk almost full', metadata: { step: 2 } });
    send('LOG', { level: 'debug', message: 'debug detail', metadata: { step: 3 } });
    send('LOG', { level: 'info', message: 'x'.repeat(bigBytes), metadata: { step: 4 } });
    send('ERROR', { error: 'tool call failed', code: 'E_TOOL', details: { attempt: 1 } });
    await heartbeat();
    await heartbeat();
    send('LOG', { level: 'info', message: 'after the heartbeats', metadata: { step: 5 } });
    send('COMPLETE', { exitCode, message: 'agent finished', duration: Date.now() - started });
    done = true;
    ws.close(1000);
  } catch (err) {
    fail(1, err.message);
  }
});
