// Test-only RFC 6455 client over `net`, offering the subset of the browser WebSocket
// interface that mediarelay.js uses (Node 20 has no global WebSocket client). Not part of
// the library. Supports ws:// only, masked client frames, fragmented text/binary messages,
// ping/pong and the closing handshake.

import net from 'node:net';
import crypto from 'node:crypto';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export class NodeWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor(url) {
    this.CONNECTING = 0;
    this.OPEN = 1;
    this.CLOSING = 2;
    this.CLOSED = 3;
    this.url = String(url);
    this.readyState = 0;
    this.binaryType = 'blob'; // as in browsers; the library sets 'arraybuffer'
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    /** HTTP status of a refused upgrade (not in the browser API; for tests). */
    this.httpStatus = null;
    this.httpBody = null;
    this._listeners = {};
    this._buf = Buffer.alloc(0);
    this._fragments = null;
    this._fragOpcode = 0;
    this._closeSent = false;
    this._closeEmitted = false;
    this._closeInfo = null;
    /** Counts pings answered (for tests). */
    this.pingsAnswered = 0;

    const u = new URL(this.url);
    if (u.protocol !== 'ws:') throw new SyntaxError('only ws:// is supported by the test client');
    this._key = crypto.randomBytes(16).toString('base64');
    const socket = net.connect({ host: u.hostname, port: Number(u.port || 80) });
    this._socket = socket;
    socket.setNoDelay(true);
    socket.on('connect', () => {
      socket.write(
        `GET ${u.pathname}${u.search} HTTP/1.1\r\n` +
          `Host: ${u.host}\r\n` +
          'Upgrade: websocket\r\n' +
          'Connection: Upgrade\r\n' +
          `Sec-WebSocket-Key: ${this._key}\r\n` +
          'Sec-WebSocket-Version: 13\r\n\r\n',
      );
    });
    socket.on('data', (chunk) => this._onData(chunk));
    socket.on('error', () => {
      if (this.readyState !== 3) this._fireError();
    });
    socket.on('close', () => this._finish(1006, ''));
  }

  addEventListener(type, fn) {
    (this._listeners[type] ||= new Set()).add(fn);
  }

  removeEventListener(type, fn) {
    this._listeners[type]?.delete(fn);
  }

  _dispatch(type, ev) {
    ev.type = type;
    ev.target = this;
    const handler = this['on' + type];
    if (typeof handler === 'function') handler.call(this, ev);
    for (const fn of [...(this._listeners[type] || [])]) fn.call(this, ev);
  }

  _fireError() {
    this._dispatch('error', {});
  }

  _onData(chunk) {
    this._buf = this._buf.length ? Buffer.concat([this._buf, chunk]) : chunk;
    if (this.readyState === 0) {
      const end = this._buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = this._buf.subarray(0, end).toString('latin1');
      const rest = this._buf.subarray(end + 4);
      const lines = head.split('\r\n');
      const status = Number(lines[0].split(' ')[1]);
      const headers = {};
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      const accept = crypto.createHash('sha1').update(this._key + GUID).digest('base64');
      if (status !== 101 || headers['sec-websocket-accept'] !== accept) {
        this.httpStatus = status;
        this.httpBody = rest.toString('utf8');
        this._buf = Buffer.alloc(0);
        this._fireError();
        this._socket.destroy();
        return;
      }
      this._buf = rest;
      this.readyState = 1;
      this._dispatch('open', {});
    }
    this._parseFrames();
  }

  _parseFrames() {
    for (;;) {
      const b = this._buf;
      if (b.length < 2) return;
      const fin = (b[0] & 0x80) !== 0;
      const opcode = b[0] & 0x0f;
      const masked = (b[1] & 0x80) !== 0;
      let len = b[1] & 0x7f;
      let at = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        at = 10;
      }
      let mask = null;
      if (masked) {
        if (b.length < at + 4) return;
        mask = b.subarray(at, at + 4);
        at += 4;
      }
      if (b.length < at + len) return;
      let payload = Buffer.from(b.subarray(at, at + len));
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
      this._buf = b.subarray(at + len);
      if (masked) return this._protocolError(); // servers must not mask
      this._onFrame(fin, opcode, payload);
      if (this.readyState === 3) return;
    }
  }

  _protocolError() {
    this._sendFrame(0x8, closePayload(1002, ''));
    this._closeSent = true;
    this._socket.destroy();
    this._finish(1002, '');
  }

  _onFrame(fin, opcode, payload) {
    switch (opcode) {
      case 0x0: // continuation
        if (!this._fragments) return this._protocolError();
        this._fragments.push(payload);
        if (fin) {
          const whole = Buffer.concat(this._fragments);
          const op = this._fragOpcode;
          this._fragments = null;
          this._deliver(op, whole);
        }
        return;
      case 0x1:
      case 0x2:
        if (this._fragments) return this._protocolError();
        if (!fin) {
          this._fragments = [payload];
          this._fragOpcode = opcode;
          return;
        }
        this._deliver(opcode, payload);
        return;
      case 0x8: {
        let code = 1005;
        let reason = '';
        if (payload.length >= 2) {
          code = payload.readUInt16BE(0);
          reason = payload.subarray(2).toString('utf8');
        }
        this._closeInfo = { code, reason };
        if (!this._closeSent) {
          this._sendFrame(0x8, payload.length >= 2 ? closePayload(code, '') : Buffer.alloc(0));
          this._closeSent = true;
        }
        this.readyState = 2;
        this._socket.end();
        // the server closes the TCP connection; 'close' then finishes with this code
        setTimeout(() => this._socket.destroy(), 1000).unref();
        return;
      }
      case 0x9: // ping
        this._sendFrame(0xa, payload);
        this.pingsAnswered += 1;
        return;
      case 0xa: // pong
        return;
      default:
        this._protocolError();
    }
  }

  _deliver(opcode, payload) {
    if (this.readyState !== 1) return;
    let data;
    if (opcode === 0x1) {
      data = new TextDecoder('utf-8', { fatal: true }).decode(payload);
    } else if (this.binaryType === 'arraybuffer') {
      // an ArrayBuffer of exactly this message (Buffers may share a pooled ArrayBuffer)
      data = payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.byteLength);
    } else {
      data = new Blob([payload]);
    }
    this._dispatch('message', { data });
  }

  _sendFrame(opcode, payload) {
    if (this._socket.destroyed) return;
    const len = payload.length;
    let header;
    if (len < 126) {
      header = Buffer.alloc(2);
      header[1] = 0x80 | len;
    } else if (len < 65536) {
      header = Buffer.alloc(4);
      header[1] = 0x80 | 126;
      header.writeUInt16BE(len, 2);
    } else {
      header = Buffer.alloc(10);
      header[1] = 0x80 | 127;
      header.writeBigUInt64BE(BigInt(len), 2);
    }
    header[0] = 0x80 | opcode;
    const mask = crypto.randomBytes(4);
    const body = Buffer.from(payload);
    for (let i = 0; i < body.length; i++) body[i] ^= mask[i & 3];
    this._socket.write(Buffer.concat([header, mask, body]));
  }

  send(data) {
    if (this.readyState === 0) throw new Error('InvalidStateError: still connecting');
    if (this.readyState !== 1) return;
    if (typeof data === 'string') this._sendFrame(0x1, Buffer.from(data, 'utf8'));
    else if (data instanceof ArrayBuffer) this._sendFrame(0x2, Buffer.from(data));
    else if (ArrayBuffer.isView(data)) this._sendFrame(0x2, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    else throw new TypeError('unsupported data');
  }

  close(code, reason = '') {
    if (this.readyState >= 2) return;
    if (this.readyState === 0) {
      this._socket.destroy();
      this._finish(1006, '');
      return;
    }
    this.readyState = 2;
    this._sendFrame(0x8, code == null ? Buffer.alloc(0) : closePayload(code, reason));
    this._closeSent = true;
    setTimeout(() => this._socket.destroy(), 2000).unref();
  }

  /** Test helper: drop the TCP connection without a closing handshake. */
  terminate() {
    this._socket.destroy();
  }

  _finish(code, reason) {
    if (this._closeEmitted) return;
    this._closeEmitted = true;
    this.readyState = 3;
    const info = this._closeInfo || { code, reason };
    this._dispatch('close', { code: info.code, reason: info.reason, wasClean: !!this._closeInfo });
  }
}

function closePayload(code, reason) {
  const r = Buffer.from(reason, 'utf8');
  const b = Buffer.alloc(2 + r.length);
  b.writeUInt16BE(code, 0);
  r.copy(b, 2);
  return b;
}

export default NodeWebSocket;
