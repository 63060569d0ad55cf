// NestJS + socket.io peer: the stack mediarelay replaces. A WebSocket gateway with
// `@SubscribeMessage('get')` and `@SubscribeMessage('subscribe')` handlers, socket.io rooms
// per stream, the WebSocket transport only (no polling), no compression, the ticket
// checked in engine.io's `allowRequest`, and live segments sent with socket.io's `volatile`
// flag (dropped for clients that are not ready to take them). Plain JavaScript: the
// decorators are applied with `Reflect.decorate`, as a TypeScript build would.
//
// On the wire (Engine.IO 4): the client connects to
// `/socket.io/?EIO=4&transport=websocket`, answers the open packet with `40`, sends
// requests as `42["get",{"id":1,"key":"..."}]` and receives each media frame as an event
// with one binary attachment (`451-["media",{"_placeholder":true,"num":0}]` followed by a
// binary WebSocket frame holding PROTOCOL.md's media frame).
'use strict';

require('reflect-metadata');
const { Module } = require('@nestjs/common');
const { NestFactory } = require('@nestjs/core');
const { WebSocketGateway, WebSocketServer, SubscribeMessage } = require('@nestjs/websockets');
const { IoAdapter } = require('@nestjs/platform-socket.io');
const c = require('./common');

const args = c.parseArgs();
const tickets = c.loadTickets(args.tickets);
const objects = new c.ObjectCache(args.storage);

class MediaGateway {
  constructor() {
    this.watches = new Map();
  }

  async onGet(client, req) {
    const buf = req && (await objects.get(req.key));
    if (!buf) {
      client.emit('error_reply', { op: 'error', id: req?.id, code: 'not_found' });
      return;
    }
    client.emit('media', c.mediaFrame({ id: req.id, key: req.key, size: buf.length }, buf));
  }

  onSubscribe(client, req) {
    const stream = req?.stream;
    if (typeof stream !== 'string') {
      client.emit('error_reply', { op: 'error', id: req?.id, code: 'bad_request' });
      return;
    }
    let w = this.watches.get(stream);
    if (!w) {
      w = c.watchStream(args.storage, stream, (frame) =>
        this.server.to(stream).volatile.emit('media', frame),
      );
      this.watches.set(stream, w);
    }
    client.join(stream);
    client.emit('subscribed', { op: 'subscribed', id: req.id, stream, seq: w.next() });
  }
}

const proto = MediaGateway.prototype;
Reflect.decorate([WebSocketServer()], proto, 'server', undefined);
for (const [method, event] of [
  ['onGet', 'get'],
  ['onSubscribe', 'subscribe'],
]) {
  const desc = Object.getOwnPropertyDescriptor(proto, method);
  Object.defineProperty(proto, method, Reflect.decorate([SubscribeMessage(event)], proto, method, desc));
}
const Gateway = Reflect.decorate(
  [
    WebSocketGateway({
      transports: ['websocket'],
      perMessageDeflate: false,
      maxHttpBufferSize: 4096,
      allowRequest: (req, done) => done(null, c.ticketOk(tickets, req.headers.authorization, req.url)),
    }),
  ],
  MediaGateway,
);

class AppModule {}
const App = Reflect.decorate([Module({ providers: [Gateway] })], AppModule);

async function main() {
  const app = await NestFactory.create(App, { logger: ['error', 'warn'] });
  app.useWebSocketAdapter(new IoAdapter(app));
  await app.listen(args.port, '127.0.0.1');
  console.log(`nest peer on 127.0.0.1:${args.port}`);
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
