// server.js - the OAuth2 authorization server of the system tests:
// oauth2-mock-server issues the access tokens (RS256 JWTs, keys at /jwks);
// a front of the tests' own checks what the mock does not:
//   - client authentication: client_secret_basic, client_secret_post, or
//     private_key_jwt (a client assertion signed with the client's key);
//   - the RFC 7523 jwt-bearer grant: the assertion's signature, iss, sub,
//     aud and exp, before the mock issues a token for it;
//   - token lifetime (--ttl seconds, to the millisecond in exp);
// and counts every token request (GET /stats). POST /control {"failing":
// true} makes the token endpoint answer 503 until set back.
//
//   node server.js --port P --ttl 2 --client id:secret ... --client-ttl id:3600 \
//                  --key-client id --public-key client.pub.pem --assertion-aud URL
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const express = require('express');
const jose = require('jose');
const { OAuth2Server } = require('oauth2-mock-server');

function args() {
  const a = { clients: {}, ttls: {}, ttl: 3600 };
  const v = process.argv.slice(2);
  for (let i = 0; i < v.length; i += 2) {
    const k = v[i], x = v[i + 1];
    if (k === '--port') a.port = Number(x);
    else if (k === '--ttl') a.ttl = Number(x);
    else if (k === '--client') { const j = x.indexOf(':'); a.clients[x.slice(0, j)] = x.slice(j + 1); }
    else if (k === '--client-ttl') { const j = x.indexOf(':'); a.ttls[x.slice(0, j)] = Number(x.slice(j + 1)); }
    else if (k === '--key-client') a.keyClient = x;
    else if (k === '--public-key') a.publicKey = fs.readFileSync(x, 'utf8');
    else if (k === '--assertion-aud') a.assertionAud = x;
    else throw new Error('unknown option ' + k);
  }
  return a;
}

async function main() {
  const opt = args();
  const mock = new OAuth2Server();
  await mock.issuer.keys.generate('RS256');
  const base = `http://127.0.0.1:${opt.port}`;
  mock.issuer.url = base;
  const tokenUrl = base + '/token';
  const pub = opt.publicKey ? await jose.importSPKI(opt.publicKey, 'RS256').catch(
    () => jose.importSPKI(opt.publicKey, 'ES256')) : null;

  const stats = { requests: 0, issued: 0, refused: 0, by_grant: {}, by_method: {}, by_client: {},
    assertions: [] };
  let failing = false;

  const ttlOf = (client) => (client in opt.ttls ? opt.ttls[client] : opt.ttl);
  mock.service.on('beforeTokenSigning', (token, req) => {
    const now = Date.now() / 1000;
    token.payload.iat = now;
    token.payload.nbf = now - 10;
    token.payload.exp = now + ttlOf(req.pb_client);
    token.payload.client_id = req.pb_client || 'none';
  });
  mock.service.on('beforeResponse', (resp, req) => {
    resp.body.expires_in = Math.round(ttlOf(req.pb_client));
    if (resp.statusCode === 200) {
      stats.issued++;
      stats.by_client[req.pb_client] = (stats.by_client[req.pb_client] || 0) + 1;
    }
  });

  async function verify(jwt, want) {
    const { payload } = await jose.jwtVerify(jwt, pub, { audience: want.aud, clockTolerance: 5 });
    if (want.iss && payload.iss !== want.iss) throw new Error('iss ' + payload.iss);
    if (want.sub && payload.sub !== want.sub) throw new Error('sub ' + payload.sub);
    if (!payload.exp || payload.exp - Date.now() / 1000 > 3600) throw new Error('exp');
    if (!payload.jti) throw new Error('no jti');
    return payload;
  }

  function refuse(res, status, error, why) {
    stats.refused++;
    res.status(status).json({ error, error_description: why });
  }

  const app = express();
  app.get('/stats', (req, res) => res.json(stats));
  app.post('/control', express.json(), (req, res) => {
    if ('failing' in req.body) failing = !!req.body.failing;
    if (req.body.reset) {
      stats.requests = stats.issued = stats.refused = 0;
      stats.by_grant = {}; stats.by_method = {}; stats.by_client = {}; stats.assertions = [];
    }
    res.json({ failing });
  });
  app.post('/token', express.urlencoded({ extended: false }), async (req, res, next) => {
    stats.requests++;
    const b = req.body;
    stats.by_grant[b.grant_type] = (stats.by_grant[b.grant_type] || 0) + 1;
    if (failing) return refuse(res, 503, 'temporarily_unavailable', 'down for the test');
    let client = null, method = 'none';
    try {
      const h = req.headers.authorization || '';
      if (h.startsWith('Basic ')) {
        const pair = Buffer.from(h.slice(6), 'base64').toString();
        const j = pair.indexOf(':');
        const id = decodeURIComponent(pair.slice(0, j).replace(/\+/g, ' '));
        const secret = decodeURIComponent(pair.slice(j + 1).replace(/\+/g, ' '));
        if (opt.clients[id] !== secret) return refuse(res, 401, 'invalid_client', 'bad secret');
        client = id; method = 'client_secret_basic';
      } else if (b.client_assertion) {
        if (b.client_assertion_type !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer')
          return refuse(res, 400, 'invalid_request', 'client_assertion_type');
        await verify(b.client_assertion, { aud: tokenUrl, iss: opt.keyClient, sub: opt.keyClient });
        if (b.client_id && b.client_id !== opt.keyClient) return refuse(res, 401, 'invalid_client', 'id');
        client = opt.keyClient; method = 'private_key_jwt';
      } else if (b.client_secret) {
        if (opt.clients[b.client_id] !== b.client_secret) return refuse(res, 401, 'invalid_client', 'bad secret');
        client = b.client_id; method = 'client_secret_post';
      }
      if (b.grant_type === 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
        const p = await verify(b.assertion, { aud: opt.assertionAud || tokenUrl, iss: opt.keyClient });
        stats.assertions.push(p);
        client = client || p.iss;
        req.body.grant_type = 'client_credentials';
      } else if (!client) {
        return refuse(res, 401, 'invalid_client', 'no client authentication');
      }
    } catch (e) {
      return refuse(res, 400, 'invalid_grant', String(e.message || e).slice(0, 80));
    }
    stats.by_method[method] = (stats.by_method[method] || 0) + 1;
    req.pb_client = client;
    next();
  });
  app.use(mock.service.requestHandler);
  http.createServer(app).listen(opt.port, '127.0.0.1', () => console.log(`listening ${base}`));
}

main().catch((e) => { console.error(e); process.exit(1); });
