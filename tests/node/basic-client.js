// The seed README's "Basic Client Connection" example, unchanged except that
// the URL, the session and the token come from argv (or the environment)
// instead of being written into the source:
//
//   node basic-client.js ws://127.0.0.1:8080 my-session-123 my-auth-token
//
// tests/test_seed_examples.py runs it against a real `pcclog serve`.
const WebSocket = require('ws');

const url = process.argv[2] || process.env.PCCLOG_URL || 'ws://localhost:8080';
const sessionId = process.argv[3] || process.env.PCCLOG_SESSION || 'my-session-123';
const token = process.argv[4] || process.env.PCCLOG_TOKEN || 'my-auth-token';

const ws = new WebSocket(url);

ws.on('open', () => {
  console.log('Connected to WebSocket server');
  
  // Subscribe to a session
  ws.send(JSON.stringify({
    type: 'subscribe',
    sessionId: sessionId,
    auth: { token: token }
  }));
});

ws.on('message', (data) => {
  const message = JSON.parse(data);
  
  switch (message.type) {
    case 'log':
      console.log(`[${message.sessionId}] ${message.message}`);
      break;
    case 'status':
      console.log(`Session ${message.sessionId} status: ${message.status}`);
      break;
    case 'error':
      console.error(`Error: ${message.message}`);
      break;
  }
});

ws.on('close', () => {
  console.log('Disconnected from WebSocket server');
});
