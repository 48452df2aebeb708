// A WebSocket agent for tests/websocket.rs on Node's `ws`: connects to --url (the route
// listener: no proxy, no CA), sends each --send message in turn and waits for its answer,
// then closes with --close (default 1000) and prints one JSON object: the handshake status,
// what it received and the close code the peer answered.
import WebSocket from 'ws';

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const url = opt('--url');
const sends = args.flatMap((a, i) => (a === '--send' ? [args[i + 1]] : []));
const closeCode = Number(opt('--close') ?? 1000);
const out = { received: [] };

const ws = new WebSocket(url, { perMessageDeflate: true });
ws.on('unexpected-response', (_req, res) => {
  out.status = res.statusCode;
  console.log(JSON.stringify(out));
  process.exit(0);
});
ws.on('upgrade', (res) => {
  out.status = res.statusCode;
  out.extensions = res.headers['sec-websocket-extensions'] ?? null;
});
ws.on('error', (e) => {
  out.error = String(e);
  console.log(JSON.stringify(out));
  process.exit(0);
});
ws.on('open', () => {
  let i = 0;
  const next = () => {
    if (i < sends.length) ws.send(sends[i++]);
    else ws.close(closeCode, 'done');
  };
  ws.on('message', (data, isBinary) => {
    out.received.push(isBinary ? { bytes: data.length } : { text: data.toString() });
    next();
  });
  next();
});
ws.on('close', (code) => {
  out.close_code = code;
  console.log(JSON.stringify(out));
  process.exit(0);
});
setTimeout(() => {
  out.error = 'timeout';
  console.log(JSON.stringify(out));
  process.exit(1);
}, 20000);
