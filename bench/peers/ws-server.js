// Node.js `ws` peer: the `get` and `subscribe` workloads of PROTOCOL.md on the `ws` library,
// written the way its documentation recommends: `noServer` with the ticket checked in the
// HTTP `upgrade` handler, no permessage-deflate, one frame built per segment and sent to
// every subscriber, and subscribers whose `bufferedAmount` is over the send queue skipped
// (the library buffers without bound otherwise).
'use strict';

const http = require('node:http');
const { WebSocketServer } = require('ws');
const c = require('./common');

const args = c.parseArgs();
const tickets = c.loadTickets(args.tickets);
const objects = new c.ObjectCache(args.storage);
const streams = new Map(); // stream -> { watch, subscribers: Set<WebSocket> }

const server = http.createServer((req, res) => {
  if (req.url === '/healthz' || req.url === '/readyz') {
    res.end('ok');
  } else {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not_found"}');
  }
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 4096 });

server.on('upgrade', (req, socket, head) => {
  // Until `ws` owns the socket, its errors (a client resetting a refused upgrade) are ours.
  socket.on('error', () => socket.destroy());
  if (!req.url.startsWith('/ws') || !c.ticketOk(tickets, req.headers.authorization, req.url)) {
    socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-length: 26\r\n\r\n{"error":"ticket_invalid"}');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

function subscribe(ws, stream) {
  let s = streams.get(stream);
  if (!s) {
    const subscribers = new Set();
    const watch = c.watchStream(args.storage, stream, (frame) => {
      for (const sub of subscribers) {
        if (sub.bufferedAmount > args.sendQueue) continue; // slow: drop this one for it
        sub.send(frame, { binary: true });
      }
    });
    s = { watch, subscribers };
    streams.set(stream, s);
  }
  s.subscribers.add(ws);
  return s.watch.next();
}

wss.on('connection', (ws) => {
  const mine = [];
  ws.on('message', async (data, isBinary) => {
    if (isBinary) return ws.close(1003);
    const req = c.parseRequest(data.toString());
    if (!req) return ws.send(c.errorReply(undefined, 'bad_request', 'not a JSON object'));
    if (req.op === 'get') {
      const buf = await objects.get(req.key);
      if (!buf) return ws.send(c.errorReply(req.id, 'not_found', 'no such object'));
      ws.send(c.mediaFrame({ id: req.id, key: req.key, size: buf.length }, buf), { binary: true });
    } else if (req.op === 'subscribe' && typeof req.stream === 'string') {
      const seq = subscribe(ws, req.stream);
      mine.push(req.stream);
      ws.send(JSON.stringify({ op: 'subscribed', id: req.id, stream: req.stream, seq }));
    } else {
      ws.send(c.errorReply(req.id, 'bad_request', 'unsupported op'));
    }
  });
  ws.on('close', () => {
    for (const stream of mine) streams.get(stream)?.subscribers.delete(ws);
  });
  ws.on('error', () => {});
});

server.listen(args.port, '127.0.0.1', () => console.log(`ws peer on 127.0.0.1:${args.port}`));
