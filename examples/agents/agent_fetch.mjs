// An agent using Node's fetch through sidekey: no credential anywhere in the code.
//
//   npm install undici
//   HTTPS_PROXY=http://127.0.0.1:15080 HTTP_PROXY=http://127.0.0.1:15080 \
//   NODE_EXTRA_CA_CERTS=/var/run/sidekey/ca.pem node agent_fetch.mjs URL
//
// Node's built-in fetch ignores HTTPS_PROXY before Node 24 (there: NODE_USE_ENV_PROXY=1).
// undici's EnvHttpProxyAgent reads HTTPS_PROXY / HTTP_PROXY / NO_PROXY; NODE_EXTRA_CA_CERTS
// adds sidekey's CA to Node's roots at start (the plain certificate, ca.pem, not the bundle).
import { EnvHttpProxyAgent, fetch, setGlobalDispatcher } from "undici";

setGlobalDispatcher(new EnvHttpProxyAgent());

const url = process.argv[2] ?? "https://slack.com/api/chat.postMessage";
const res = await fetch(url, {
  method: "POST",
  headers: { "content-type": "application/json; charset=utf-8" },
  body: JSON.stringify({ channel: "C0123456789", text: "report ready" }),
});
console.log(res.status, res.headers.get("content-type"));
console.log(await res.text());
