// One HTTP request with undici (Node), through a ProxyAgent when --proxy is given, trusting
// --cacert. Redirects are not followed. Prints one JSON object:
//   {"status", "http_version", "headers": [[name, value]...], "body", "chunks": [[t, data]...],
//    "t_end"}   or   {"error", "error_type"}
// Times are seconds since the request started. Used by tests/common/clients.rs.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Agent, ProxyAgent, request } from 'undici';

const { values: args } = parseArgs({
  options: {
    method: { type: 'string', default: 'GET' },
    url: { type: 'string' },
    header: { type: 'string', multiple: true, default: [] },
    data: { type: 'string' },
    http2: { type: 'boolean', default: false },
    stream: { type: 'boolean', default: false },
    proxy: { type: 'string' },
    cacert: { type: 'string' },
  },
});

const tls = args.cacert ? { ca: readFileSync(args.cacert, 'utf8') } : {};
const dispatcher = args.proxy
  ? new ProxyAgent({ uri: args.proxy, requestTls: tls })
  : new Agent({ connect: tls, allowH2: args.http2 });

const headers = {};
for (const h of args.header) {
  const i = h.indexOf(':');
  headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
}

const start = performance.now();
const since = () => (performance.now() - start) / 1000;
let out;
try {
  const res = await request(args.url, {
    method: args.method,
    headers,
    body: args.data?.startsWith('@') ? readFileSync(args.data.slice(1)) : args.data,
    dispatcher,
    headersTimeout: 30000,
    bodyTimeout: 30000,
  });
  const chunks = [];
  const parts = [];
  for await (const chunk of res.body) {
    chunks.push([since(), chunk.toString('utf8')]);
    parts.push(chunk);
  }
  const flat = [];
  for (const [k, v] of Object.entries(res.headers)) {
    for (const one of Array.isArray(v) ? v : [v]) flat.push([k, String(one)]);
  }
  out = {
    status: res.statusCode,
    http_version: 'HTTP/1.1',
    headers: flat,
    body: Buffer.concat(parts).toString('utf8'),
    t_end: since(),
  };
  if (args.stream) out.chunks = chunks;
} catch (e) {
  const cause = e.cause ? ` (cause: ${e.cause.code || ''} ${e.cause.message || e.cause})` : '';
  out = { error: `${e.name}: ${e.message}${cause}`, error_type: e.code || e.name };
}
await dispatcher.close().catch(() => {});
process.stdout.write(JSON.stringify(out) + '\n');
