// uWebSockets.js peer: the `get` and `subscribe` workloads of PROTOCOL.md on uWebSockets.js,
// using its documented fast paths: the ticket checked in the `upgrade` handler, no
// compression, `publish` to a topic per stream (uWS frames the message once and drops it for
// sockets over `maxBackpressure`), `cork` around every send, and `get` replies held back
// while a socket is over its backpressure limit and resumed from `drain`.
// With `--tls-cert PEM --tls-key PEM` it starts as `SSLApp` (wss://, https://) on --port.
'use strict';

const uWS = require('@trufflesuite/uws-js-unofficial');
const c = require('./common');

const args = c.parseArgs({ tls: true });
const tickets = c.loadTickets(args.tickets);
const objects = new c.ObjectCache(args.storage);
const watches = new Map(); // stream -> watcher
const app = args.tlsCert
  ? uWS.SSLApp({ cert_file_name: args.tlsCert, key_file_name: args.tlsKey })
  : uWS.App();

function watch(stream) {
  let w = watches.get(stream);
  if (!w) {
    w = c.watchStream(args.storage, stream, (frame) => app.publish(stream, frame, true));
    watches.set(stream, w);
  }
  return w.next();
}

function sendGet(ws, req, buf) {
  const frame = c.mediaFrame({ id: req.id, key: req.key, size: buf.length }, buf);
  ws.cork(() => ws.send(frame, true));
}

app.ws('/ws', {
  compression: uWS.DISABLED,
  maxPayloadLength: 4096,
  maxBackpressure: args.sendQueue,
  closeOnBackpressureLimit: false,
  idleTimeout: 0,
  upgrade: (res, req, context) => {
    const ok = c.ticketOk(tickets, req.getHeader('authorization'), `/ws?${req.getQuery() || ''}`);
    if (!ok) {
      res.writeStatus('401 Unauthorized').end('{"error":"ticket_invalid"}');
      return;
    }
    res.upgrade(
      { pending: [], open: true },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  message: async (ws, message, isBinary) => {
    if (isBinary) return ws.end(1003);
    const req = c.parseRequest(Buffer.from(message).toString());
    const u = ws.getUserData();
    if (!req) return ws.send(c.errorReply(undefined, 'bad_request', 'not a JSON object'));
    if (req.op === 'get') {
      const buf = await objects.get(req.key);
      if (!u.open) return;
      if (!buf) return ws.send(c.errorReply(req.id, 'not_found', 'no such object'));
      if (u.pending.length > 0 || ws.getBufferedAmount() > args.sendQueue) {
        u.pending.push([req, buf]);
      } else {
        sendGet(ws, req, buf);
      }
    } else if (req.op === 'subscribe' && typeof req.stream === 'string') {
      const seq = watch(req.stream);
      ws.subscribe(req.stream);
      ws.send(JSON.stringify({ op: 'subscribed', id: req.id, stream: req.stream, seq }));
    } else {
      ws.send(c.errorReply(req.id, 'bad_request', 'unsupported op'));
    }
  },
  drain: (ws) => {
    const u = ws.getUserData();
    while (u.pending.length > 0 && ws.getBufferedAmount() <= args.sendQueue) {
      const [req, buf] = u.pending.shift();
      sendGet(ws, req, buf);
    }
  },
  close: (ws) => {
    ws.getUserData().open = false;
  },
});
app.get('/healthz', (res) => res.end('ok'));
app.get('/readyz', (res) => res.end('ok'));
app.any('/*', (res) => res.writeStatus('404 Not Found').end('{"error":"not_found"}'));

app.listen('127.0.0.1', args.port, (sock) => {
  if (!sock) {
    console.error(`uws peer: cannot listen on ${args.port}`);
    process.exit(1);
  }
  console.log(`uws peer on ${args.tlsCert ? 'https' : 'http'}://127.0.0.1:${args.port}`);
});
