// A real OAuth 2.0 authorization server for sidekey's `kind: oauth2` issuer tests: oidc-provider
// (panva/node-oidc-provider) on plain HTTP on 127.0.0.1, with
//
// - the client credentials grant (`features.clientCredentials`);
// - resource indicators (RFC 8707, `features.resourceIndicators`): every access token is a JWT
//   signed ES256 with a key published at /jwks (so it has a `jti`), except for a resource or
//   audience containing the word `opaque`, which gets an opaque token;
// - an `audience` parameter (RFC 8693 style) for both grants: it goes into the JWT's `aud`;
// - RFC 8693 token exchange (`urn:ietf:params:oauth:grant-type:token-exchange`): the
//   `subject_token` (and optional `actor_token`) must be a JWT signed by a trusted identity key
//   (OAUTH2_IDENTITY_KEYS_FILE) or by a key of a trusted JWKS URL (POST /_trust_jwks: how
//   sidekey's task assertions are trusted, with the JWKS its admin listener serves). Per RFC
//   8693 §4.1 the issued token's `sub` is the subject token's `sub`, and its `act` names the
//   actor token's `sub` (when one is given) with the subject token's own `act` chain nested
//   inside: {sub: <actor>, act: <subject token's act>}; without an actor token, the subject
//   token's `act` as it is;
// - clients `sidekey-basic` (client_secret_basic), `sidekey-post` (client_secret_post) and
//   `sidekey-pkjwt` (private_key_jwt with the public keys the test gives, only when given), all
//   allowed both grants; and `sidekey-public` (no client authentication), token exchange only.
//   Each secret client must use its own method (oidc-provider alone would take either);
// - GET /_stats: what reached the token endpoint (counts per grant, every request's parameters
//   with secrets removed, which client authentication was used); POST /_stats/reset clears it;
// - POST /_trust_jwks {"jwks_url": URL, "issuer": ISS (optional), "audience": AUD (optional)}:
//   from now on, subject and actor tokens may also be signed by a key of that JWKS (fetched
//   when a token names a kid not seen yet, as an authorization server does with a trusted
//   issuer's jwks_uri); such a token must carry `iss` = ISS when given, and `aud` = AUD
//   (default: this server's token endpoint URL, RFC 7523 style).
//
// Usage: node server.mjs [PORT]   (PORT, else $OAUTH2_PORT, else 0 = a free port)
// Prints one line on stdout when it listens:
//   {"event":"ready","port":P,"issuer":"http://127.0.0.1:P","token_url":".../token","jwks_url":".../jwks"}
// and one JSON line per token request on stderr (no secrets).
//
// Environment (all optional):
//   OAUTH2_ACCESS_TOKEN_TTL   access token lifetime in seconds (default 300)
//   OAUTH2_CLIENT_SECRET      secret of sidekey-basic and sidekey-post (default "sidekey-test-secret")
//   OAUTH2_CLIENT_KEYS_FILE   public keys of sidekey-pkjwt: a JSON JWK set {"keys":[...]}, or a JSON
//                             list [{"kid": "...", "pem": "-----BEGIN PUBLIC KEY-----..."}]
//   OAUTH2_IDENTITY_KEYS_FILE PEM file with one or more public keys (SPKI) trusted to sign subject
//                             and actor tokens (token exchange is refused without it)
//   OAUTH2_IDENTITY_AUDIENCE  if set, subject/actor tokens must have this `aud`
//   OAUTH2_IDENTITY_ISSUER    if set, subject/actor tokens must have this `iss`
//   OAUTH2_SIGNING_KEY_FILE   where the server's signing key (private JWK) lives: loaded if the file
//                             exists, else generated and written there, so a restarted server keeps
//                             its JWKS (default: a fresh key in memory)

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as querystring from 'node:querystring';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const TOKEN_TYPE_JWT = 'urn:ietf:params:oauth:token-type:jwt';
const TOKEN_TYPE_ACCESS = 'urn:ietf:params:oauth:token-type:access_token';
const TOKEN_TYPE_ID = 'urn:ietf:params:oauth:token-type:id_token';
const SUBJECT_TOKEN_TYPES = new Set([TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS, TOKEN_TYPE_ID]);
/** The resource a request without `resource` and `audience` gets a token for. */
const DEFAULT_RESOURCE = 'https://default.test.local/';
/** Prefix of the resource indicator made up for a request with `audience` and no `resource`. */
const AUDIENCE_RESOURCE = 'urn:sidekey-test:audience:';
const SIGNING_KID = 'sidekey-test-oauth2';
/** Clients with a secret, and the one way each may send it. */
const SECRET_CLIENT_METHODS = { 'sidekey-basic': 'client_secret_basic', 'sidekey-post': 'client_secret_post' };

const env = process.env;
const requestedPort = Number(process.argv[2] ?? env.OAUTH2_PORT ?? 0);
const accessTokenTTL = Number(env.OAUTH2_ACCESS_TOKEN_TTL ?? 300);
const clientSecret = env.OAUTH2_CLIENT_SECRET ?? 'sidekey-test-secret';
if (!Number.isInteger(accessTokenTTL) || accessTokenTTL <= 0) {
  throw new Error(`OAUTH2_ACCESS_TOKEN_TTL must be a positive integer, got ${env.OAUTH2_ACCESS_TOKEN_TTL}`);
}

function log(obj) {
  process.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), ...obj })}\n`);
}

// --- keys ---------------------------------------------------------------------------------------

function signingKey() {
  const file = env.OAUTH2_SIGNING_KEY_FILE;
  if (file && fs.existsSync(file)) {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  }
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: SIGNING_KID, alg: 'ES256', use: 'sig' };
  if (file) {
    fs.writeFileSync(file, JSON.stringify(jwk), { mode: 0o600 });
  }
  return jwk;
}

function pemBlocks(text) {
  return text.match(/-----BEGIN [A-Z ]+-----[\s\S]+?-----END [A-Z ]+-----/g) ?? [];
}

/** The private_key_jwt client's public keys, as a JWK list. */
function clientKeys() {
  const file = env.OAUTH2_CLIENT_KEYS_FILE;
  if (!file) return [];
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (Array.isArray(doc?.keys)) return doc.keys;
  return doc.map(({ kid, pem }) => {
    const jwk = crypto.createPublicKey(pem).export({ format: 'jwk' });
    return kid ? { ...jwk, kid } : jwk;
  });
}

/** Public keys trusted to sign subject and actor tokens. */
function identityKeys() {
  const file = env.OAUTH2_IDENTITY_KEYS_FILE;
  if (!file) return [];
  return pemBlocks(fs.readFileSync(file, 'utf8')).map((pem) => crypto.createPublicKey(pem));
}

const trustedIdentityKeys = identityKeys();

/** Trusted JWKS URLs (POST /_trust_jwks): [{ url, keys, options }]. */
const trustedJwks = [];
/** This server's token endpoint URL, once it listens. */
let tokenUrl;

// --- stats --------------------------------------------------------------------------------------

const MAX_RECORDS = 500;
let stats;
function resetStats() {
  stats = { token_requests: 0, issued: {}, failed: {}, requests: [] };
}
resetStats();

function decodeJwtParts(token) {
  try {
    return { header: jose.decodeProtectedHeader(token), claims: jose.decodeJwt(token) };
  } catch (e) {
    return { error: `not a JWT: ${e.message}` };
  }
}

/**
 * What a token request carried, without secrets: client_secret, the Basic credentials, and the
 * JWTs (client_assertion, subject_token, actor_token) are replaced by what the tests assert on.
 */
function describeTokenRequest(req, rawBody) {
  const body = querystring.parse(rawBody);
  const params = {};
  const out = { time: Date.now() / 1000, content_type: req.headers['content-type'] ?? null };
  for (const [k, v] of Object.entries(body)) {
    if (k === 'client_secret') {
      out.client_secret_present = true;
      out.client_secret_matches = v === clientSecret;
    } else if (k === 'client_assertion' || k === 'subject_token' || k === 'actor_token') {
      const one = Array.isArray(v) ? v[0] : v;
      const { header, claims, error } = decodeJwtParts(one);
      out[`${k}_header`] = header ?? null;
      out[`${k}_claims`] = claims ?? null;
      if (error) out[`${k}_error`] = error;
    } else {
      params[k] = v;
    }
  }
  out.params = params;
  out.grant_type = typeof body.grant_type === 'string' ? body.grant_type : null;

  const auth = req.headers.authorization;
  if (auth !== undefined) {
    out.authorization_scheme = auth.split(' ')[0];
    const m = /^basic\s+(\S+)$/i.exec(auth);
    if (m) {
      const decoded = Buffer.from(m[1], 'base64').toString('utf8');
      const i = decoded.indexOf(':');
      const rawId = i === -1 ? decoded : decoded.slice(0, i);
      const rawSecret = i === -1 ? '' : decoded.slice(i + 1);
      let secret;
      try {
        secret = decodeURIComponent(rawSecret.replace(/\+/g, '%20'));
      } catch {
        secret = undefined;
      }
      out.basic_client_id = rawId;
      // RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
      out.basic_secret_matches = secret === clientSecret;
      out.basic_secret_raw_matches = rawSecret === clientSecret;
    }
  }

  if (auth !== undefined && /^basic\s/i.test(auth)) out.client_auth = 'client_secret_basic';
  else if (body.client_secret !== undefined) out.client_auth = 'client_secret_post';
  else if (body.client_assertion !== undefined) out.client_auth = body.client_assertion_type === JWT_BEARER ? 'private_key_jwt' : 'client_assertion (bad type)';
  else out.client_auth = 'none';
  out.client_id = out.basic_client_id ?? body.client_id ?? out.client_assertion_claims?.sub ?? null;
  return out;
}

function recordTokenResponse(entry, status, bodyText) {
  entry.status = status;
  let body = {};
  try {
    body = JSON.parse(bodyText);
  } catch {
    body = {};
  }
  const grant = entry.grant_type ?? '(none)';
  if (status === 200 && body.access_token) {
    stats.issued[grant] = (stats.issued[grant] ?? 0) + 1;
    const jwt = decodeJwtParts(body.access_token);
    entry.response = {
      token_type: body.token_type,
      expires_in: body.expires_in,
      scope: body.scope ?? null,
      issued_token_type: body.issued_token_type ?? null,
      format: jwt.claims ? 'jwt' : 'opaque',
      jti: jwt.claims?.jti ?? null,
      sub: jwt.claims?.sub ?? null,
      act: jwt.claims?.act ?? null,
      aud: jwt.claims?.aud ?? null,
      exp: jwt.claims?.exp ?? null,
      token_sha256: crypto.createHash('sha256').update(body.access_token).digest('hex'),
    };
  } else {
    stats.failed[grant] = (stats.failed[grant] ?? 0) + 1;
    entry.error = body.error ?? `http ${status}`;
    entry.error_description = body.error_description ?? null;
  }
  stats.requests.push(entry);
  if (stats.requests.length > MAX_RECORDS) stats.requests.shift();
  log({
    msg: 'token request',
    grant_type: entry.grant_type,
    client_auth: entry.client_auth,
    client_id: entry.client_id,
    params: entry.params,
    status,
    error: entry.error ?? null,
    error_detail: entry.error_detail ?? null,
  });
}

// --- audience / resource ------------------------------------------------------------------------

function list(v) {
  if (v === undefined || v === null || v === '') return [];
  return Array.isArray(v) ? v : [v];
}

/** `aud` of the token: the `audience` values, then the `resource` values (or the default). */
function tokenAudience(body) {
  const aud = [...list(body.audience), ...list(body.resource)];
  if (aud.length === 0) return DEFAULT_RESOURCE;
  return aud.length === 1 ? aud[0] : aud;
}

function resourceServerInfo(ctx, indicator) {
  const body = ctx.oidc.body ?? {};
  const names = [indicator, ...list(body.audience), ...list(body.resource)];
  const opaque = names.some((n) => String(n).includes('opaque'));
  // Grant whatever scope was asked for.
  const requested = typeof body.scope === 'string' ? body.scope : '';
  const info = {
    scope: requested,
    audience: indicator.startsWith(AUDIENCE_RESOURCE)
      ? decodeURIComponent(indicator.slice(AUDIENCE_RESOURCE.length))
      : indicator,
    accessTokenTTL,
    accessTokenFormat: opaque ? 'opaque' : 'jwt',
  };
  if (!opaque) info.jwt = { sign: { alg: 'ES256', kid: SIGNING_KID } };
  return info;
}

function defaultResourceFor(ctx) {
  const aud = list(ctx.oidc.body?.audience);
  if (aud.length) return AUDIENCE_RESOURCE + encodeURIComponent(aud[0]);
  return DEFAULT_RESOURCE;
}

// --- token exchange -----------------------------------------------------------------------------

async function verifyIdentityToken(token, what) {
  if (!trustedIdentityKeys.length && !trustedJwks.length) {
    const err = new errors.InvalidGrant(`${what}: no identity keys configured (OAUTH2_IDENTITY_KEYS_FILE, POST /_trust_jwks)`);
    err.error_description = err.error_detail;
    throw err;
  }
  const options = { clockTolerance: 5 };
  if (env.OAUTH2_IDENTITY_AUDIENCE) options.audience = env.OAUTH2_IDENTITY_AUDIENCE;
  if (env.OAUTH2_IDENTITY_ISSUER) options.issuer = env.OAUTH2_IDENTITY_ISSUER;
  const candidates = [
    ...trustedIdentityKeys.map((key) => ({ key, options })),
    ...trustedJwks.map(({ keys, options: o }) => ({ key: keys, options: o })),
  ];
  // The error to report: one about the claims of a token whose signature verified says more
  // than another key's signature mismatch; otherwise the last one.
  let last;
  for (const { key, options } of candidates) {
    try {
      const { payload } = await jose.jwtVerify(token, key, options);
      if (typeof payload.sub !== 'string' || !payload.sub) {
        throw claimsError('no sub claim');
      }
      if (payload.exp === undefined) {
        throw claimsError('no exp claim');
      }
      if (payload.act !== undefined && !isActClaim(payload.act)) {
        throw claimsError('act is not an RFC 8693 actor claim ({"sub": ..., "act": ...})');
      }
      return payload;
    } catch (e) {
      if (!(last && aboutClaims(last) && !aboutClaims(e))) last = e;
    }
  }
  const err = new errors.InvalidGrant(`${what} rejected: ${last?.code ?? ''} ${last?.message ?? ''}`.trim());
  // Say which token failed and why (a real IdP's description is this specific, too).
  err.error_description = err.error_detail;
  throw err;
}

function claimsError(message) {
  return Object.assign(new Error(message), { code: 'ERR_CLAIMS' });
}

/** Whether `e` is about a token whose signature verified (its claims), not about the key. */
function aboutClaims(e) {
  return ['ERR_CLAIMS', 'ERR_JWT_EXPIRED', 'ERR_JWT_CLAIM_VALIDATION_FAILED'].includes(e?.code);
}

/** An RFC 8693 §4.1 `act` claim: an object with a string `sub`, its own `act` nested likewise. */
function isActClaim(act) {
  if (act === null || typeof act !== 'object' || Array.isArray(act)) return false;
  if (typeof act.sub !== 'string' || !act.sub) return false;
  return act.act === undefined || isActClaim(act.act);
}

/**
 * The `act` of the issued token (RFC 8693 §4.1): the actor token's subject is the current actor,
 * and the chain the subject token carries (prior actors) is nested inside it.
 */
function issuedAct(subject, actor) {
  if (!actor) return subject.act;
  return subject.act === undefined ? { sub: actor.sub } : { sub: actor.sub, act: subject.act };
}

function single(params, name) {
  const v = params[name];
  if (Array.isArray(v)) throw new errors.InvalidRequest(`${name} must be given once`);
  return v;
}

/** RFC 8693 §2.1 / §2.2. */
function tokenExchangeHandler(provider) {
  return async function tokenExchange(ctx) {
    const { params, client } = ctx.oidc;
    const subjectToken = single(params, 'subject_token');
    const subjectType = single(params, 'subject_token_type');
    if (!subjectToken) throw new errors.InvalidRequest('missing required parameter subject_token');
    if (!subjectType) throw new errors.InvalidRequest('missing required parameter subject_token_type');
    if (!SUBJECT_TOKEN_TYPES.has(subjectType)) {
      throw new errors.InvalidRequest(`unsupported subject_token_type ${subjectType}`);
    }
    const requestedType = single(params, 'requested_token_type');
    if (requestedType !== undefined && requestedType !== TOKEN_TYPE_ACCESS && requestedType !== TOKEN_TYPE_JWT) {
      throw new errors.InvalidRequest(`unsupported requested_token_type ${requestedType}`);
    }
    const subject = await verifyIdentityToken(subjectToken, 'subject_token');

    const actorToken = single(params, 'actor_token');
    const actorType = single(params, 'actor_token_type');
    let actor;
    if (actorToken) {
      if (!actorType) throw new errors.InvalidRequest('actor_token_type is required with actor_token');
      if (!SUBJECT_TOKEN_TYPES.has(actorType)) {
        throw new errors.InvalidRequest(`unsupported actor_token_type ${actorType}`);
      }
      actor = await verifyIdentityToken(actorToken, 'actor_token');
    } else if (actorType) {
      throw new errors.InvalidRequest('actor_token_type given without actor_token');
    }

    const resources = list(params.resource);
    for (const r of resources) {
      const href = URL.parse(r)?.href;
      if (!href || href.includes('#')) {
        throw new errors.InvalidTarget('resource must be an absolute URI without a fragment');
      }
    }
    const indicator = resources[0] ?? defaultResourceFor(ctx);
    const info = resourceServerInfo(ctx, indicator);
    const token = new provider.ClientCredentials({
      client,
      scope: typeof params.scope === 'string' && params.scope ? params.scope : undefined,
    });
    token.resourceServer = new provider.ResourceServer(indicator, info);
    ctx.sidekeyExchange = { sub: subject.sub, act: issuedAct(subject, actor) };

    ctx.oidc.entity('ClientCredentials', token);
    const value = await token.save();
    ctx.body = {
      access_token: value,
      issued_token_type: TOKEN_TYPE_ACCESS,
      token_type: token.tokenType,
      expires_in: token.expiration,
      ...(token.scope ? { scope: token.scope } : {}),
    };
  };
}

// --- provider -----------------------------------------------------------------------------------

function buildProvider(issuer) {
  const clientDefaults = {
    grant_types: ['client_credentials', TOKEN_EXCHANGE],
    response_types: [],
    redirect_uris: [],
  };
  const clients = [
    { ...clientDefaults, client_id: 'sidekey-basic', client_secret: clientSecret, token_endpoint_auth_method: 'client_secret_basic' },
    { ...clientDefaults, client_id: 'sidekey-post', client_secret: clientSecret, token_endpoint_auth_method: 'client_secret_post' },
  ];
  // A public client (no client authentication), for token exchange only.
  clients.push({
    ...clientDefaults,
    grant_types: [TOKEN_EXCHANGE],
    client_id: 'sidekey-public',
    token_endpoint_auth_method: 'none',
  });
  const keys = clientKeys();
  if (keys.length) {
    clients.push({
      ...clientDefaults,
      client_id: 'sidekey-pkjwt',
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys },
    });
  }

  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [signingKey()] },
    clientDefaults: { id_token_signed_response_alg: 'ES256' },
    cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx) => defaultResourceFor(ctx),
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => resourceServerInfo(ctx, indicator),
      },
    },
    ttl: {
      ClientCredentials: accessTokenTTL,
      AccessToken: accessTokenTTL,
    },
    formats: {
      customizers: {
        jwt(ctx, token, jwt) {
          jwt.payload.aud = tokenAudience(ctx?.oidc?.body ?? {});
          const ex = ctx?.sidekeyExchange;
          if (ex) {
            jwt.payload.sub = ex.sub;
            if (ex.act) jwt.payload.act = ex.act;
          }
        },
      },
    },
  });
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    tokenExchangeHandler(provider),
    ['audience', 'resource', 'scope', 'requested_token_type', 'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type'],
    ['audience', 'resource'],
  );
  provider.on('grant.error', (ctx, err) => {
    if (ctx.sidekeyStats) ctx.sidekeyStats.error_detail = err.error_detail ?? err.error_description ?? err.message;
  });
  provider.on('server_error', (ctx, err) => {
    log({ msg: 'server_error', error: String(err?.stack ?? err) });
  });
  return provider;
}

// --- HTTP ---------------------------------------------------------------------------------------

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res, status, obj) {
  const text = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

let providerCallback;
let providerRef;

const server = http.createServer(async (req, res) => {
  try {
    const path = req.url.split('?')[0];
    if (req.method === 'GET' && path === '/_stats') {
      sendJson(res, 200, { ...stats, last: stats.requests.at(-1) ?? null });
      return;
    }
    if (req.method === 'POST' && path === '/_stats/reset') {
      resetStats();
      sendJson(res, 200, { ok: true });
      return;
    }
    if (req.method === 'POST' && path === '/_trust_jwks') {
      let doc;
      try {
        doc = JSON.parse(await readBody(req));
      } catch {
        doc = null;
      }
      const url = URL.parse(doc?.jwks_url ?? '');
      if (!url) {
        sendJson(res, 400, { error: 'jwks_url must be an absolute URL' });
        return;
      }
      const options = { clockTolerance: 5, audience: doc.audience ?? tokenUrl };
      if (doc.issuer) options.issuer = doc.issuer;
      trustedJwks.push({ url: url.href, keys: jose.createRemoteJWKSet(url), options });
      log({ msg: 'trusting a JWKS', url: url.href, issuer: doc.issuer ?? null, audience: options.audience });
      sendJson(res, 200, { ok: true, trusted: trustedJwks.map(({ url: u, options: o }) => ({ jwks_url: u, issuer: o.issuer ?? null, audience: o.audience })) });
      return;
    }
    if (req.method === 'GET' && path === '/_health') {
      sendJson(res, 200, { ok: true });
      return;
    }
    if (req.method === 'POST' && path === '/token') {
      // Read the body here to record it; oidc-provider then uses `req.body` (its documented
      // fallback for an already-read body).
      const raw = await readBody(req);
      req.body = raw;
      const entry = describeTokenRequest(req, raw);
      stats.token_requests += 1;
      const chunks = [];
      const origWrite = res.write.bind(res);
      const origEnd = res.end.bind(res);
      res.write = (chunk, ...rest) => {
        if (chunk) chunks.push(Buffer.from(chunk));
        return origWrite(chunk, ...rest);
      };
      res.end = (chunk, ...rest) => {
        if (chunk && typeof chunk !== 'function') chunks.push(Buffer.from(chunk));
        recordTokenResponse(entry, res.statusCode, Buffer.concat(chunks).toString('utf8'));
        return origEnd(chunk, ...rest);
      };
      req.sidekeyStats = entry;
      // oidc-provider lets a client_secret_basic client use client_secret_post and vice versa;
      // this server holds each client to its registered method, as strict servers do.
      const registered = SECRET_CLIENT_METHODS[entry.client_id];
      if (registered && entry.client_auth !== registered && entry.client_auth.startsWith('client_secret_')) {
        entry.error_detail = `${entry.client_id} is registered for ${registered}, not ${entry.client_auth}`;
        sendJson(res, 401, { error: 'invalid_client', error_description: entry.error_detail });
        return;
      }
    }
    providerCallback(req, res);
  } catch (e) {
    log({ msg: 'handler error', error: String(e?.stack ?? e) });
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
  }
});

server.listen(requestedPort, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  tokenUrl = `${issuer}/token`;
  providerRef = buildProvider(issuer);
  // Hand the stats entry to the provider's ctx (for the error detail of a failed grant).
  providerRef.use(async (ctx, next) => {
    ctx.sidekeyStats = ctx.req.sidekeyStats;
    await next();
  });
  providerCallback = providerRef.callback();
  process.stdout.write(`${JSON.stringify({
    event: 'ready',
    port,
    issuer,
    token_url: `${issuer}/token`,
    jwks_url: `${issuer}/jwks`,
  })}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
