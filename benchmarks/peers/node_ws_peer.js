#!/usr/bin/env node
// Benchmark peer: the original server's stack, Node + the `ws` package.
//
// Usage: node benchmarks/peers/node_ws_peer.js PORT [HOST]
//
// Same protocol subset as websockets_peer.py: subscribe -> a status snapshot then live
// entries; log from a producer -> relayed to every subscriber with a per-session seq
// starting at 1; ping -> pong. Tokens are accepted, not checked. Keepalive follows the
// seed's WS_PING_INTERVAL / WS_PING_TIMEOUT (ms), with the isAlive pattern from the ws
// README. Idiomatic: JSON.stringify once per entry, ws.send() to each subscriber, no
// backpressure (ws buffers without bound for a viewer that stops reading).
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2]);
const host = process.argv[3] || '127.0.0.1';
const pingInterval = Number(process.env.WS_PING_INTERVAL || 30000);
const pingTimeout = Number(process.env.WS_PING_TIMEOUT || 5000);

const sessions = new Map();

function getSession(id) {
  let s = sessions.get(id);
  if (!s) {
    s = { id, seq: 0, status: 'running', metadata: {}, subscribers: new Set() };
    sessions.set(id, s);
  }
  return s;
}

const wss = new WebSocketServer({ host, port, perMessageDeflate: false });

wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.subscribed = new Set();
  ws.on('pong', () => {
    ws.isAlive = true;
  });
  ws.on('message', (data) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      ws.send(JSON.stringify({ type: 'error', code: 'INVALID_MESSAGE' }));
      return;
    }
    switch (msg.type) {
      case 'log': {
        const s = getSession(msg.sessionId);
        s.seq += 1;
        const entry = {
          type: 'log',
          sessionId: s.id,
          timestamp: msg.timestamp || new Date().toISOString(),
          level: msg.level || 'info',
          message: msg.message || '',
          seq: s.seq,
        };
        if (msg.data !== undefined) entry.data = msg.data;
        const payload = JSON.stringify(entry);
        for (const client of s.subscribers) {
          if (client.readyState === WebSocket.OPEN) client.send(payload);
        }
        break;
      }
      case 'subscribe': {
        const s = getSession(msg.sessionId);
        ws.send(
          JSON.stringify({ type: 'status', sessionId: s.id, status: s.status, metadata: s.metadata }),
        );
        s.subscribers.add(ws);
        ws.subscribed.add(s);
        break;
      }
      case 'unsubscribe': {
        const s = getSession(msg.sessionId);
        s.subscribers.delete(ws);
        ws.subscribed.delete(s);
        break;
      }
      case 'ping':
        ws.send('{"type":"pong"}');
        break;
      default:
        // "auth" and anything else: accepted silently.
        break;
    }
  });
  ws.on('close', () => {
    for (const s of ws.subscribed) s.subscribers.delete(ws);
    ws.subscribed.clear();
  });
  ws.on('error', () => {});
});

const keepalive = setInterval(() => {
  for (const ws of wss.clients) {
    ws.isAlive = false;
    ws.ping();
  }
  setTimeout(() => {
    for (const ws of wss.clients) {
      if (!ws.isAlive) ws.terminate();
    }
  }, pingTimeout);
}, pingInterval);

function shutdown() {
  clearInterval(keepalive);
  for (const ws of wss.clients) ws.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
