// mediarelay.js: a dependency-free client for the mediarelay wire contract v1.1
// (see PROTOCOL.md). One ES module; works in browsers and in Node (pass a WebSocket
// constructor with the `WebSocket` option where there is no global one).
//
// Exports:
//   MediaRelayClient   the connection: get, subscribe, unsubscribe, refresh, events, reconnect
//   Subscription       what subscribe() returns: an async iterator of segments
//   MediaRelayError    rejections and error events (`code` is the protocol error code)
//   parseMediaFrame    pure helper: binary media frame -> {meta, payload} without copying
//   findCodec          pure helper, exported for the player page: fMP4 init segment -> codec string
//   CLOSE_CODES        the close codes of PROTOCOL.md

/** Close codes named by PROTOCOL.md v1.1. */
export const CLOSE_CODES = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  INVALID_UTF8: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  TICKET: 4401,
  IDLE_TIMEOUT: 4402,
  SLOW_CONSUMER: 4408,
});

// Close codes after which reconnecting would only repeat a client bug.
const NO_RECONNECT = new Set([1002, 1003, 1007, 1009]);

const OPEN = 1;

/**
 * An error from the relay (`code` is one of PROTOCOL.md's error codes such as `not_found`,
 * `forbidden`, `ticket_invalid`) or from this library (`bad_frame`, `timeout`, `aborted`,
 * `disconnected`, `closed`, `connect_failed`, `no_websocket`).
 */
export class MediaRelayError extends Error {
  /**
   * @param {string} code
   * @param {string} [message]
   * @param {{id?: number, closeCode?: number, details?: any}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'MediaRelayError';
    /** @type {string} */
    this.code = code;
    /** @type {number|undefined} */
    this.id = extra.id;
    /** @type {number|undefined} */
    this.closeCode = extra.closeCode;
    this.details = extra.details;
  }
}

const textDecoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Parse one binary media frame: u32 big-endian meta length N, N bytes of UTF-8 JSON meta,
 * then the payload. The payload is a Uint8Array view over the same memory (no copy).
 *
 * @param {ArrayBuffer | ArrayBufferView} data
 * @returns {{meta: Record<string, any>, payload: Uint8Array}}
 * @throws {MediaRelayError} code `bad_frame` when the frame is malformed
 */
export function parseMediaFrame(data) {
  let buffer, offset, length;
  if (data instanceof ArrayBuffer || Object.prototype.toString.call(data) === '[object ArrayBuffer]') {
    buffer = /** @type {ArrayBuffer} */ (data);
    offset = 0;
    length = buffer.byteLength;
  } else if (ArrayBuffer.isView(data)) {
    buffer = data.buffer;
    offset = data.byteOffset;
    length = data.byteLength;
  } else {
    throw new MediaRelayError('bad_frame', 'media frame is not an ArrayBuffer or a view');
  }
  if (length < 4) throw new MediaRelayError('bad_frame', 'media frame shorter than 4 bytes');
  const n = new DataView(buffer, offset, 4).getUint32(0, false);
  if (n > length - 4) throw new MediaRelayError('bad_frame', `meta length ${n} exceeds frame`);
  let meta;
  try {
    meta = JSON.parse(textDecoder.decode(new Uint8Array(buffer, offset + 4, n)));
  } catch (e) {
    throw new MediaRelayError('bad_frame', 'media frame meta is not UTF-8 JSON');
  }
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta)) {
    throw new MediaRelayError('bad_frame', 'media frame meta is not a JSON object');
  }
  const payload = new Uint8Array(buffer, offset + 4 + n, length - 4 - n);
  return { meta, payload };
}

// ---------------------------------------------------------------------------------------
// Codec string from an fMP4 init segment. EXPORTED FOR THE PLAYER PAGE (MediaSource needs
// `video/mp4; codecs="..."`).

const fourcc = (b, at) => String.fromCharCode(b[at], b[at + 1], b[at + 2], b[at + 3]);
const hex2 = (v) => v.toString(16).padStart(2, '0');
const dec2 = (v) => String(v).padStart(2, '0');

/** Iterate the boxes in bytes[start, end): yields {type, start (payload), end}. */
function* boxes(b, start, end) {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let at = start;
  while (at + 8 <= end) {
    let size = dv.getUint32(at);
    const type = fourcc(b, at + 4);
    let header = 8;
    if (size === 1) {
      if (at + 16 > end) return;
      size = dv.getUint32(at + 8) * 2 ** 32 + dv.getUint32(at + 12);
      header = 16;
    } else if (size === 0) {
      size = end - at;
    }
    if (size < header || at + size > end) return;
    yield { type, start: at + header, end: at + size };
    at += size;
  }
}

function child(b, box, type) {
  for (const c of boxes(b, box.start, box.end)) if (c.type === type) return c;
  return null;
}

// Size of a VisualSampleEntry's fixed fields before its child boxes (ISO/IEC 14496-12).
const VISUAL_SAMPLE_ENTRY_FIELDS = 78;

function codecOfSampleEntry(b, entry) {
  const kids = { start: entry.start + VISUAL_SAMPLE_ENTRY_FIELDS, end: entry.end };
  if (kids.start > kids.end) return null;
  switch (entry.type) {
    case 'avc1':
    case 'avc3': {
      const c = child(b, kids, 'avcC');
      if (!c || c.end - c.start < 4) return null;
      // configurationVersion, AVCProfileIndication, profile_compatibility, AVCLevelIndication
      return `${entry.type}.${hex2(b[c.start + 1])}${hex2(b[c.start + 2])}${hex2(b[c.start + 3])}`;
    }
    case 'vp09': {
      const c = child(b, kids, 'vpcC'); // full box: version+flags, profile, level, bitDepth<<4|...
      if (!c || c.end - c.start < 7) return null;
      const profile = b[c.start + 4];
      const level = b[c.start + 5];
      const bitDepth = b[c.start + 6] >> 4;
      return `vp09.${dec2(profile)}.${dec2(level)}.${dec2(bitDepth)}`;
    }
    case 'av01': {
      const c = child(b, kids, 'av1C');
      if (!c || c.end - c.start < 4) return null;
      const profile = b[c.start + 1] >> 5;
      const level = b[c.start + 1] & 0x1f;
      const flags = b[c.start + 2];
      const tier = flags & 0x80 ? 'H' : 'M';
      const high = (flags & 0x40) !== 0;
      const twelve = (flags & 0x20) !== 0;
      const depth = high ? (twelve ? 12 : 10) : 8;
      return `av01.${profile}.${dec2(level)}${tier}.${dec2(depth)}`;
    }
    default:
      return null;
  }
}

/**
 * EXPORTED FOR THE PLAYER PAGE. Find the video codec string of an fMP4 init segment by
 * walking moov/trak/mdia/minf/stbl/stsd: `avc1.PPCCLL` (or `avc3.`) from avcC, `vp09.PP.LL.DD`
 * from vpcC, `av01.P.LLT.DD` from av1C. The first track with a recognised sample entry wins.
 *
 * @param {ArrayBuffer | ArrayBufferView} init the init segment (e.g. a `seq: 0` segment's payload)
 * @returns {string | null} the codec string, or null when none is recognised
 */
export function findCodec(init) {
  let b;
  if (init instanceof ArrayBuffer) b = new Uint8Array(init);
  else if (ArrayBuffer.isView(init)) b = new Uint8Array(init.buffer, init.byteOffset, init.byteLength);
  else return null;
  try {
    const top = { start: 0, end: b.byteLength };
    const moov = child(b, top, 'moov');
    if (!moov) return null;
    for (const trak of boxes(b, moov.start, moov.end)) {
      if (trak.type !== 'trak') continue;
      const mdia = child(b, trak, 'mdia');
      const minf = mdia && child(b, mdia, 'minf');
      const stbl = minf && child(b, minf, 'stbl');
      const stsd = stbl && child(b, stbl, 'stsd');
      if (!stsd) continue;
      // full box (version + flags) then entry_count, then the sample entries
      for (const entry of boxes(b, stsd.start + 8, stsd.end)) {
        const codec = codecOfSampleEntry(b, entry);
        if (codec) return codec;
      }
    }
  } catch (e) {
    return null;
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// A minimal event emitter (same in browsers and Node; no `error` event special case).

class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }
  /** Add a listener; returns a function that removes it. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }
  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }
  once(type, fn) {
    const off = this.on(type, (ev) => {
      off();
      fn(ev);
    });
    return off;
  }
  _emit(type, ev) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(ev);
      } catch (e) {
        // A throwing listener must not break the connection's message handling.
        if (typeof queueMicrotask === 'function') queueMicrotask(() => { throw e; });
      }
    }
  }
}

// ---------------------------------------------------------------------------------------

/**
 * One live stream followed by a client. An async iterator of segments: `for await (const
 * seg of sub)`. Breaking out of the loop unsubscribes.
 */
export class Subscription {
  /** @param {MediaRelayClient} client @param {string} stream @param {any} from */
  constructor(client, stream, from) {
    this._client = client;
    /** The stream name. */
    this.stream = stream;
    /** The `from` of the original subscribe. */
    this.from = from;
    /** Sequence number of the last media segment delivered (init segments, seq 0, excluded). */
    this.lastSeq = null;
    /** The sequence number the next subscribe (after a reconnect) asks for. */
    this.nextSeq = null;
    /** true once ended (unsubscribed, failed or the client closed). */
    this.ended = false;
    this._queue = [];
    this._waiters = [];
    this._error = null;
    this._requestId = null;
    this._resubscribeFrom = null;
    let resolve, reject;
    /** Resolves with {seq} on the first `subscribed` reply; rejects if the subscribe fails. */
    this.ready = new Promise((res, rej) => { resolve = res; reject = rej; });
    this.ready.catch(() => {}); // the iterator reports the error too
    this._resolveReady = resolve;
    this._rejectReady = reject;
  }

  /** Stop following the stream; resolves once the relay confirms (or at once when offline). */
  unsubscribe() {
    return this._client.unsubscribe(this.stream);
  }

  _push(segment) {
    if (this.ended) return;
    const w = this._waiters.shift();
    if (w) w.resolve({ value: segment, done: false });
    else this._queue.push(segment);
  }

  _end(error) {
    if (this.ended) return;
    this.ended = true;
    this._error = error || null;
    if (error) this._rejectReady(error);
    for (const w of this._waiters.splice(0)) {
      if (error) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  /** @returns {Promise<IteratorResult<Segment>>} */
  next() {
    if (this._queue.length) return Promise.resolve({ value: this._queue.shift(), done: false });
    if (this.ended) {
      if (this._error) {
        const e = this._error;
        this._error = null; // report once, then done
        return Promise.reject(e);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  /** Called by `break` in for-await: unsubscribes. */
  async return() {
    if (!this.ended) this.unsubscribe().catch(() => {});
    this._queue.length = 0;
    this._end(null);
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

/**
 * @typedef {Object} Segment
 * @property {string} stream
 * @property {number} seq      0 for the init segment
 * @property {string} key
 * @property {number} size
 * @property {number} [ts]     relay unix time in microseconds when the segment was ready
 * @property {boolean} init    seq === 0
 * @property {Record<string, any>} meta  the whole meta object
 * @property {Uint8Array} payload        a view over the received frame (no copy)
 */

/**
 * @typedef {Object} ClientOptions
 * @property {string} [ticket]                 the ticket (sent as `?ticket=`)
 * @property {any} [WebSocket]                 WebSocket constructor (default globalThis.WebSocket)
 * @property {boolean} [reconnect=true]        reconnect after unexpected closes
 * @property {number} [initialDelay=250]       first backoff delay, ms
 * @property {number} [maxDelay=30000]         largest backoff delay, ms
 * @property {number} [backoffFactor=2]
 * @property {number} [maxRetries=Infinity]    consecutive failed attempts before giving up
 * @property {number} [connectTimeout=10000]   ms for one connection attempt to open
 * @property {number} [requestTimeout=30000]   ms for get/refresh/unsubscribe replies (0: none)
 * @property {(reason: string) => (string|null|undefined|Promise<string|null|undefined>)} [onTicketExpired]
 *   called after close 4401 (reason `ticket_revoked` / `ticket_expired`), and on `expiring` when
 *   autoRefresh is set; return a new ticket to go on, or null to stop.
 * @property {boolean} [autoRefresh=false]     on `expiring`, refresh with onTicketExpired('expiring')
 * @property {() => number} [random]           jitter source (default Math.random)
 */

/**
 * A connection to a relay's `/ws` endpoint. Events (subscribe with `on(type, fn)`):
 * `open` {reconnected}, `close` {code, reason, closingReason, willReconnect},
 * `reconnecting` {attempt, delay}, `segment` Segment, `skipped` {stream, from, to},
 * `expiring` {expiresAt}, `closing` {reason}, `refreshed` {expiresAt},
 * `unsubscribed` {stream, reason}, `error` MediaRelayError.
 */
export class MediaRelayClient extends Emitter {
  /**
   * @param {string} url  e.g. `wss://relay.example/ws`
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = {
      reconnect: true,
      initialDelay: 250,
      maxDelay: 30000,
      backoffFactor: 2,
      maxRetries: Infinity,
      connectTimeout: 10000,
      requestTimeout: 30000,
      autoRefresh: false,
      random: Math.random,
      ...options,
    };
    /** The ticket in use (replaced by a successful refresh or onTicketExpired). */
    this.ticket = options.ticket;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    /** @type {any} */
    this.ws = null;
    /** `idle` | `connecting` | `open` | `reconnecting` | `closed` */
    this.state = 'idle';
    /** @type {Map<string, Subscription>} */
    this.subscriptions = new Map();
    this._pending = new Map(); // id -> {msg, resolve, reject, timer, kind, resend}
    this._nextId = 1;
    this._attempt = 0;
    this._timer = null;
    this._closingReason = null;
    this._everOpened = false;
  }

  /** Open the connection. Resolves when open; rejects when the first attempt fails. */
  connect() {
    if (this.state === 'open') return Promise.resolve();
    if (this._connectPromise) return this._connectPromise;
    if (!this.WebSocket) {
      return Promise.reject(new MediaRelayError('no_websocket',
        'no WebSocket: pass the WebSocket option (Node 20 has no global WebSocket)'));
    }
    this.state = 'connecting';
    this._connectPromise = new Promise((resolve, reject) => {
      this._connectResolve = resolve;
      this._connectReject = reject;
    });
    this._open();
    return this._connectPromise;
  }

  /** True while a WebSocket is open. */
  get connected() {
    return this.state === 'open';
  }

  _socketUrl() {
    const u = new URL(this.url, globalThis.location ? globalThis.location.href : undefined);
    if (this.ticket != null) u.searchParams.set('ticket', this.ticket);
    return u.toString();
  }

  _open() {
    let ws;
    try {
      ws = new this.WebSocket(this._socketUrl());
    } catch (e) {
      this._onSocketClosed(null, { code: 1006, reason: String(e && e.message) });
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this._closingReason = null;
    let opened = false;
    const connectTimer = this.options.connectTimeout > 0 ? setTimeout(() => {
      if (!opened && this.ws === ws) {
        try { ws.close(); } catch (e) { /* ignore */ }
        this._onSocketClosed(ws, { code: 1006, reason: 'connect timeout' });
      }
    }, this.options.connectTimeout) : null;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      clearTimeout(connectTimer);
      this._onSocketOpen();
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this._onMessage(ev.data);
    };
    ws.onerror = () => {
      // browsers give no detail; the close event that follows does the work
    };
    ws.onclose = (ev) => {
      clearTimeout(connectTimer);
      this._onSocketClosed(ws, { code: ev.code, reason: ev.reason });
    };
  }

  _onSocketOpen() {
    const reconnected = this._everOpened;
    this._everOpened = true;
    this.state = 'open';
    this._attempt = 0;
    // Follow every stream again, each from the sequence after the last one received.
    for (const sub of this.subscriptions.values()) {
      if (sub.ended) continue;
      const from = sub.nextSeq != null ? sub.nextSeq : sub.from;
      sub._resubscribeFrom = typeof from === 'number' ? from : null;
      this._sendSubscribe(sub, from);
    }
    // Requests that never got their answer (gets are idempotent) go again.
    for (const [id, p] of this._pending) if (p.resend) this._send(p.msg);
    this._emit('open', { reconnected });
    if (this._connectResolve) {
      this._connectResolve();
      this._connectResolve = this._connectReject = null;
      this._connectPromise = null;
    }
  }

  _onSocketClosed(ws, { code, reason }) {
    if (ws && this.ws !== ws) return;
    this.ws = null;
    if (this.state === 'closed') return;
    const closingReason = this._closingReason;
    // Requests that cannot be resent fail now.
    for (const [id, p] of this._pending) {
      if (!p.resend) this._settle(id, new MediaRelayError('disconnected', 'connection closed', { id, closeCode: code }));
    }
    const firstAttempt = !this._everOpened && this._connectReject;
    if (firstAttempt) {
      const reject = this._connectReject;
      this._connectResolve = this._connectReject = null;
      this._connectPromise = null;
      const err = new MediaRelayError('connect_failed', `could not connect (close ${code})`, { closeCode: code });
      this._final(code, reason, closingReason, err);
      reject(err);
      return;
    }
    if (code === CLOSE_CODES.TICKET) {
      const cb = this.options.onTicketExpired;
      if (this.options.reconnect && cb) {
        this.state = 'reconnecting';
        this._emit('close', { code, reason, closingReason, willReconnect: true });
        Promise.resolve()
          .then(() => cb(closingReason || 'ticket_expired'))
          .then((ticket) => {
            if (this.state !== 'reconnecting') return;
            if (!ticket) return this._final(code, reason, closingReason, null, true);
            this.ticket = ticket;
            this._scheduleReconnect();
          }, (e) => {
            if (this.state !== 'reconnecting') return;
            this._emit('error', e);
            this._final(code, reason, closingReason, null, true);
          });
        return;
      }
      this._final(code, reason, closingReason);
      return;
    }
    if (!this.options.reconnect || NO_RECONNECT.has(code) || this._attempt >= this.options.maxRetries) {
      this._final(code, reason, closingReason);
      return;
    }
    this.state = 'reconnecting';
    this._emit('close', { code, reason, closingReason, willReconnect: true });
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    const o = this.options;
    if (this._attempt >= o.maxRetries) {
      this._final(1006, 'gave up reconnecting', null, null, true);
      return;
    }
    const base = Math.min(o.maxDelay, o.initialDelay * o.backoffFactor ** this._attempt);
    const delay = Math.round(base / 2 + (base / 2) * o.random()); // "equal jitter"
    this._attempt += 1;
    this._emit('reconnecting', { attempt: this._attempt, delay });
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this.state !== 'reconnecting') return;
      this._open();
    }, delay);
  }

  _final(code, reason, closingReason, error, alreadyEmittedClose) {
    this.state = 'closed';
    clearTimeout(this._timer);
    this._timer = null;
    const userClose = this._userClosed;
    for (const [id] of this._pending) {
      this._settle(id, new MediaRelayError('closed', 'client closed', { id, closeCode: code }));
    }
    const endError = userClose ? null : (error || new MediaRelayError(closingReason || 'closed',
      `connection closed (${code}${closingReason ? ', ' + closingReason : ''})`, { closeCode: code }));
    for (const sub of this.subscriptions.values()) sub._end(endError);
    this.subscriptions.clear();
    if (!alreadyEmittedClose) this._emit('close', { code, reason, closingReason, willReconnect: false });
    else this._emit('close', { code, reason, closingReason, willReconnect: false, final: true });
  }

  /** Close for good (no reconnect). Subscriptions end (their iterators finish). */
  close(code = 1000, reason = '') {
    if (this.state === 'closed') return;
    this._userClosed = true;
    const ws = this.ws;
    this.ws = null;
    if (this._connectReject) {
      const reject = this._connectReject;
      this._connectResolve = this._connectReject = null;
      this._connectPromise = null;
      reject(new MediaRelayError('closed', 'closed before it opened'));
    }
    if (ws) {
      try { ws.close(code, reason); } catch (e) { /* ignore */ }
    }
    this._final(code, reason, null);
  }

  _send(msg) {
    const ws = this.ws;
    if (!ws || this.state !== 'open' || ws.readyState !== OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  _id() {
    const id = this._nextId;
    this._nextId = this._nextId >= 0xffffffff ? 1 : this._nextId + 1;
    return id;
  }

  _request(msg, { resend, timeout, signal, kind }) {
    if (this.state === 'closed' || this.state === 'idle') {
      return Promise.reject(new MediaRelayError('closed', 'client is not connected'));
    }
    if (signal && signal.aborted) return Promise.reject(new MediaRelayError('aborted', 'aborted'));
    const id = this._id();
    msg.id = id;
    return new Promise((resolve, reject) => {
      const p = { msg, resolve, reject, timer: null, resend, kind, signal, onAbort: null };
      const ms = timeout != null ? timeout : this.options.requestTimeout;
      if (ms > 0) {
        p.timer = setTimeout(() => this._settle(id, new MediaRelayError('timeout', `${msg.op} timed out`, { id })), ms);
      }
      if (signal) {
        p.onAbort = () => this._settle(id, new MediaRelayError('aborted', 'aborted', { id }));
        signal.addEventListener('abort', p.onAbort, { once: true });
      }
      this._pending.set(id, p);
      if (!this._send(msg) && !resend) {
        this._settle(id, new MediaRelayError('disconnected', 'not connected', { id }));
      }
    });
  }

  _settle(id, error, value) {
    const p = this._pending.get(id);
    if (!p) return null;
    this._pending.delete(id);
    clearTimeout(p.timer);
    if (p.signal && p.onAbort) p.signal.removeEventListener('abort', p.onAbort);
    if (error) p.reject(error);
    else p.resolve(value);
    return p;
  }

  /**
   * Fetch one object. Resolves with {meta, payload} (payload: a Uint8Array view, no copy).
   * Rejects with MediaRelayError (code `not_found`, `forbidden`, `too_large`, ...). A get that
   * is in flight when the connection drops is sent again after the reconnect.
   * @param {string} key
   * @param {{timeout?: number, signal?: AbortSignal}} [opts]
   */
  get(key, opts = {}) {
    return this._request({ op: 'get', key }, { ...opts, resend: true, kind: 'get' });
  }

  /**
   * Follow a live stream. Returns a Subscription at once (an async iterator of segments;
   * `await sub.ready` for the relay's `subscribed` answer). `from`: `"live"` (default),
   * `"start"` or a sequence number. After a reconnect the stream is followed again from the
   * sequence after the last one received.
   * @param {string} stream
   * @param {{from?: 'live'|'start'|number, onSegment?: (s: Segment) => void}} [opts]
   */
  subscribe(stream, opts = {}) {
    if (this.state === 'closed' || this.state === 'idle') {
      throw new MediaRelayError('closed', 'client is not connected');
    }
    const existing = this.subscriptions.get(stream);
    if (existing && !existing.ended) {
      throw new MediaRelayError('bad_request', `already subscribed to ${stream}`);
    }
    const from = opts.from === undefined ? 'live' : opts.from;
    const sub = new Subscription(this, stream, from);
    if (opts.onSegment) sub._onSegment = opts.onSegment;
    this.subscriptions.set(stream, sub);
    if (typeof from === 'number') sub._resubscribeFrom = from;
    if (this.state === 'open') this._sendSubscribe(sub, from);
    return sub;
  }

  _sendSubscribe(sub, from) {
    sub._requestId = this._id();
    const msg = { op: 'subscribe', id: sub._requestId, stream: sub.stream };
    if (from !== undefined && from !== 'live') msg.from = from;
    this._send(msg);
  }

  /**
   * Stop following a stream. Resolves when the relay answers `unsubscribed` (or at once when
   * not connected). The subscription's iterator finishes.
   * @param {string} stream
   */
  unsubscribe(stream) {
    const sub = this.subscriptions.get(stream);
    if (sub) {
      this.subscriptions.delete(stream);
      sub._end(null);
    }
    if (this.state !== 'open') return Promise.resolve();
    return this._request({ op: 'unsubscribe', stream }, { resend: false, kind: 'unsubscribe' })
      .then(() => undefined, (e) => {
        if (e.code === 'disconnected' || e.code === 'closed') return undefined;
        throw e;
      });
  }

  /**
   * Replace the connection's ticket (same uid) before it expires. Resolves with
   * {expiresAt}; rejects with `ticket_invalid`, `ticket_expired`, `ticket_revoked`,
   * `tickets_unavailable` or `forbidden` (the old ticket then stays in force).
   * @param {string} ticket
   * @param {{timeout?: number}} [opts]
   */
  refresh(ticket, opts = {}) {
    return this._request({ op: 'refresh', ticket }, { ...opts, resend: false, kind: 'refresh' })
      .then((reply) => {
        this.ticket = ticket;
        const ev = { expiresAt: reply.expiresAt };
        this._emit('refreshed', ev);
        return ev;
      });
  }

  _onMessage(data) {
    if (typeof data === 'string') {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch (e) {
        this._emit('error', new MediaRelayError('bad_message', 'relay sent a text frame that is not JSON'));
        return;
      }
      this._onText(msg);
      return;
    }
    let frame;
    try {
      frame = parseMediaFrame(data);
    } catch (e) {
      this._emit('error', e);
      return;
    }
    this._onMedia(frame.meta, frame.payload);
  }

  _onMedia(meta, payload) {
    if (typeof meta.stream === 'string' && typeof meta.seq === 'number') {
      const sub = this.subscriptions.get(meta.stream);
      if (!sub || sub.ended) return; // late frame after unsubscribe
      const seg = {
        stream: meta.stream, seq: meta.seq, key: meta.key, size: meta.size, ts: meta.ts,
        init: meta.seq === 0, meta, payload,
      };
      if (meta.seq > 0) {
        if (sub.lastSeq != null && meta.seq <= sub.lastSeq) return; // duplicate after a resume
        if (sub.nextSeq != null && meta.seq > sub.nextSeq) {
          // a hole the relay did not announce (e.g. asked for segments no longer in storage)
          this._emit('skipped', { stream: sub.stream, from: sub.nextSeq, to: meta.seq - 1, gap: true });
        }
        sub.lastSeq = meta.seq;
        sub.nextSeq = meta.seq + 1;
      }
      sub._push(seg);
      if (sub._onSegment) sub._onSegment(seg);
      this._emit('segment', seg);
      return;
    }
    if (typeof meta.id === 'number') {
      const p = this._pending.get(meta.id);
      if (p && p.kind === 'get') this._settle(meta.id, null, { meta, payload });
      return;
    }
    this._emit('error', new MediaRelayError('bad_frame', 'media frame with neither stream nor id', { details: meta }));
  }

  _subByRequest(id, stream) {
    const sub = stream != null ? this.subscriptions.get(stream) : null;
    if (sub && (id == null || sub._requestId === id)) return sub;
    if (id != null) for (const s of this.subscriptions.values()) if (s._requestId === id) return s;
    return null;
  }

  _onText(msg) {
    switch (msg.op) {
      case 'subscribed': {
        const sub = this._subByRequest(msg.id, msg.stream);
        if (!sub) return;
        const seq = msg.seq;
        if (typeof seq === 'number') {
          const wanted = sub._resubscribeFrom;
          if (wanted != null && seq > wanted) {
            // asked for `wanted` (a number, or the resume point), the relay starts later
            this._emit('skipped', { stream: sub.stream, from: wanted, to: seq - 1, gap: true });
          }
          if (sub.nextSeq == null || seq > sub.nextSeq) sub.nextSeq = seq;
        }
        sub._resubscribeFrom = null;
        sub._resolveReady({ seq });
        return;
      }
      case 'unsubscribed': {
        if (msg.id != null && this._pending.has(msg.id)) this._settle(msg.id, null, msg);
        const sub = this.subscriptions.get(msg.stream);
        if (sub && msg.reason) {
          // ended by the relay (e.g. `forbidden` after a refresh to a narrower ticket)
          this.subscriptions.delete(msg.stream);
          sub._end(new MediaRelayError(msg.reason, `unsubscribed: ${msg.reason}`));
        }
        this._emit('unsubscribed', { stream: msg.stream, reason: msg.reason });
        return;
      }
      case 'skipped': {
        const sub = this.subscriptions.get(msg.stream);
        if (sub && typeof msg.to === 'number' && (sub.nextSeq == null || msg.to + 1 > sub.nextSeq)) {
          sub.nextSeq = msg.to + 1; // dropped for us: do not ask for them again after a reconnect
        }
        this._emit('skipped', { stream: msg.stream, from: msg.from, to: msg.to });
        return;
      }
      case 'error': {
        const err = new MediaRelayError(msg.code || 'error', msg.message || msg.code, { id: msg.id });
        if (msg.id != null && this._pending.has(msg.id)) {
          this._settle(msg.id, err);
          return;
        }
        const sub = msg.id != null ? this._subByRequest(msg.id, null) : null;
        if (sub) {
          this.subscriptions.delete(sub.stream);
          sub._end(err);
          return;
        }
        this._emit('error', err);
        return;
      }
      case 'closing':
        this._closingReason = msg.reason;
        this._emit('closing', { reason: msg.reason });
        return;
      case 'refreshed':
        if (msg.id != null) this._settle(msg.id, null, msg);
        return;
      case 'expiring':
        this._emit('expiring', { expiresAt: msg.expiresAt });
        if (this.options.autoRefresh && this.options.onTicketExpired) {
          Promise.resolve()
            .then(() => this.options.onTicketExpired('expiring'))
            .then((t) => (t ? this.refresh(t) : null))
            .catch((e) => this._emit('error', e));
        }
        return;
      default:
        // unknown ops are ignored (forward compatibility)
        return;
    }
  }
}

/**
 * Create a client and connect it.
 * @param {string} url
 * @param {ClientOptions} [options]
 * @returns {Promise<MediaRelayClient>}
 */
export async function connect(url, options) {
  const client = new MediaRelayClient(url, options);
  await client.connect();
  return client;
}
