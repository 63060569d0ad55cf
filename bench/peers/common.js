// What the three peer servers share, so each peer file holds only its own stack's code:
// command-line flags, the ticket check against the same tickets.json the relay reads,
// the media frame of PROTOCOL.md, an in-memory object cache for `get`, and segment
// discovery in a live stream's directory.
//
// The peers implement the subset of PROTOCOL.md the benchmark workloads use: `get`
// (binary reply: u32 meta length, meta JSON, payload) and `subscribe` (`subscribed`, then
// every new segment with a meta `ts`). They are minimal on purpose, not relays.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

/**
 * `--port N --storage DIR --tickets FILE [--send-queue BYTES] [--tls-cert PEM --tls-key PEM]`
 * (the TLS flags only where the peer serves TLS: `parseArgs({ tls: true })`).
 */
function parseArgs({ tls = false } = {}, argv = process.argv.slice(2)) {
  const out = {
    port: 8080, storage: './media', tickets: './tickets.json', sendQueue: 8 << 20, tlsCert: null, tlsKey: null,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (v === undefined) throw new Error(`missing value for ${k}`);
    if (k === '--port') out.port = Number(v);
    else if (k === '--storage') out.storage = v;
    else if (k === '--tickets') out.tickets = v;
    else if (k === '--send-queue') out.sendQueue = Number(v);
    else if (tls && k === '--tls-cert') out.tlsCert = v;
    else if (tls && k === '--tls-key') out.tlsKey = v;
    else throw new Error(`unknown flag ${k}`);
  }
  if (!out.tlsCert !== !out.tlsKey) throw new Error('--tls-cert and --tls-key go together');
  return out;
}

/** Ticket ids (SHA-256 hex of the bearer) from the relay's ticket file, with their expiry. */
function loadTickets(file) {
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  const ids = new Map();
  for (const [id, rec] of Object.entries(doc.tickets || {})) {
    if (!rec.revoked) ids.set(id, Date.parse(rec.expiresAt));
  }
  return ids;
}

/** The bearer from `Authorization: Bearer T` or `?ticket=T`; true when it is valid. */
function ticketOk(tickets, authorization, url) {
  let t = null;
  if (authorization && authorization.startsWith('Bearer ')) t = authorization.slice(7);
  else if (url && url.includes('ticket=')) t = new URL(url, 'http://x').searchParams.get('ticket');
  if (!t) return false;
  const until = tickets.get(crypto.createHash('sha256').update(t).digest('hex'));
  return until !== undefined && Date.now() < until;
}

/** One binary frame's payload: u32 big-endian meta length, meta JSON, payload. */
function mediaFrame(meta, payload) {
  const m = Buffer.from(JSON.stringify(meta));
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(m.length, 0);
  return Buffer.concat([head, m, payload]);
}

/** Objects read from disk once and kept in memory (the relay's cache does the same). */
class ObjectCache {
  constructor(root) {
    this.root = path.resolve(root);
    this.objects = new Map();
  }

  /** Resolves to the object's bytes, or null when the key is bad or absent. */
  async get(key) {
    const hit = this.objects.get(key);
    if (hit) return hit;
    if (typeof key !== 'string' || key.startsWith('/') || key.split('/').includes('..')) {
      return null;
    }
    try {
      const buf = await fs.promises.readFile(path.join(this.root, key));
      this.objects.set(key, buf);
      return buf;
    } catch {
      return null;
    }
  }
}

const SEGMENT = /^seg-(\d{10})\.[A-Za-z0-9]+$/;

/**
 * Calls `onSegment(frame, seq)` for every new segment of `stream` (files renamed into
 * place as `seg-<10 digits>.<ext>`), in order, with the frame built once for everyone.
 * Returns a function that stops watching.
 */
function watchStream(root, stream, onSegment) {
  const dir = path.join(root, stream);
  fs.mkdirSync(dir, { recursive: true });
  let last = 0;
  for (const name of fs.readdirSync(dir)) {
    const m = SEGMENT.exec(name);
    if (m) last = Math.max(last, Number(m[1]));
  }
  let busy = Promise.resolve();
  const watcher = fs.watch(dir, (_event, name) => {
    const m = name && SEGMENT.exec(name);
    if (!m || Number(m[1]) <= last) return;
    const seq = Number(m[1]);
    last = seq;
    busy = busy.then(async () => {
      let payload;
      try {
        payload = await fs.promises.readFile(path.join(dir, name));
      } catch {
        return;
      }
      const key = `${stream}/${name}`;
      const ts = Math.round(Number(process.hrtime.bigint() - HR0) / 1000) + T0_US;
      onSegment(mediaFrame({ stream, seq, key, size: payload.length, ts }, payload), seq);
    });
  });
  return {
    next: () => last + 1,
    close: () => watcher.close(),
  };
}

// Wall-clock microseconds from a monotonic base (Date.now() has millisecond resolution).
const HR0 = process.hrtime.bigint();
const T0_US = Date.now() * 1000;

/** Parses a client text message; null when it is not a JSON object. */
function parseRequest(text) {
  try {
    const v = JSON.parse(text);
    return v && typeof v === 'object' && !Array.isArray(v) ? v : null;
  } catch {
    return null;
  }
}

function errorReply(id, code, message) {
  return JSON.stringify({ op: 'error', id, code, message });
}

module.exports = {
  parseArgs,
  loadTickets,
  ticketOk,
  mediaFrame,
  ObjectCache,
  watchStream,
  parseRequest,
  errorReply,
};
