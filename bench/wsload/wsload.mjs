#!/usr/bin/env node
// wsload: a second, independent load client for mediarelay's wire contract
// (/work/shared/PROTOCOL.md v1.1), on Node.js + the `ws` package, plain text and TLS.
// Every scenario is bounded (--duration and/or --count) and stops by itself, then prints
// one JSON object on stdout (field names as mediarelay-load's where the meaning is the same).
// Progress lines go to stderr. See README.md.
//
//   node wsload.mjs --addr 127.0.0.1:8443 --tls --ca ca.pem --servername localhost \
//       --ticket-file ticket --server-pid 1234 vod --connections 100 --inflight 4 \
//       --prefix vod/large/ --keys 64 --duration 20

import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import net from 'node:net';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import WebSocket from 'ws';

const require = createRequire(import.meta.url);
const WS_VERSION = require('ws/package.json').version;

// ---------------------------------------------------------------------------------------
// options

const USAGE = `usage: node wsload.mjs [common options] SCENARIO [scenario options]

common options:
  --addr HOST:PORT        relay address (default 127.0.0.1:8080)
  --tls                   wss:// instead of ws:// (also implied by --ca)
  --ca FILE               trust this CA (PEM) for wss
  --servername NAME       TLS SNI / certificate name (default: the host of --addr)
  --insecure              do not verify the server certificate
  --tls-ciphers LIST      TLS 1.3 suites to offer, e.g. TLS_AES_128_GCM_SHA256 (default: Node's)
  --tls-max-version V     e.g. TLSv1.2
  --ticket T | --ticket-file FILE (first line)
  --auth query|header     ?ticket=T (default) or Authorization: Bearer T
  --path /ws              upgrade path
  --server-pid PID[,PID]  report server CPU seconds (utime+stime), CPU-s per GB, RSS
  --quiet                 no progress lines on stderr

scenarios:
  vod      --connections N (100) --inflight K (4) --prefix P (vod/) --suffix S (.bin)
           --keys N (64) --count N (0 = unbounded) --duration S (20) [--verify-storage DIR]
           [--http: plain HTTP/1.1 GET /PREFIX{k}SUFFIX instead of WebSocket gets, --inflight
           pipelined per keep-alive connection (https:// with --tls/--ca); for web servers
           such as nginx; no ticket needed; received_bytes counts body bytes only]
  fanout   --subscribers N (1000) --storage DIR --stream S (live/wsload) --size BYTES (65536)
           --rate R per s (25) --count N (500) --duration S (120, upper bound)
           --drain S (10: wait after the last segment for stragglers)
  idle     --connections N (1000) --hold S (5) --concurrency N (256) --timeout S (120)
  connect  --count N (5000) --concurrency N (32) --bad-share F (0) --close rst|fin|ws (rst)
`;

function parseArgs(argv) {
  const opts = {};
  let scenario = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') {
      process.stdout.write(USAGE);
      process.exit(0);
    }
    if (a.startsWith('--')) {
      const key = a.slice(2);
      const flags = new Set(['tls', 'insecure', 'quiet', 'json', 'http']);
      if (flags.has(key)) opts[key] = true;
      else {
        if (i + 1 >= argv.length) die(`missing value for ${a}`);
        opts[key] = argv[++i];
      }
    } else if (!scenario) scenario = a;
    else die(`unexpected argument ${a}`);
  }
  if (!scenario) die(USAGE);
  return { scenario, opts };
}

function die(msg) {
  process.stderr.write(msg.endsWith('\n') ? msg : msg + '\n');
  process.exit(2);
}

const { scenario, opts } = parseArgs(process.argv.slice(2));
const num = (k, d) => (opts[k] === undefined ? d : Number(opts[k]));
const str = (k, d) => (opts[k] === undefined ? d : String(opts[k]));

const addr = str('addr', '127.0.0.1:8080');
const host = addr.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
const useTls = Boolean(opts.tls || opts.ca);
const ca = opts.ca ? fs.readFileSync(opts.ca) : undefined;
const servername = str('servername', host);
let ticket = opts.ticket;
if (!ticket && opts['ticket-file']) ticket = fs.readFileSync(opts['ticket-file'], 'utf8').split('\n')[0].trim();
const useHttp = Boolean(opts.http);
if (useHttp && scenario !== 'vod') die('--http is only for the vod scenario');
if (!ticket && !useHttp) die('need --ticket or --ticket-file');
const authMode = str('auth', 'query');
const wsPath = str('path', '/ws');
const serverPids = opts['server-pid'] ? String(opts['server-pid']).split(',').map(Number) : [];
const quiet = Boolean(opts.quiet);

// ---------------------------------------------------------------------------------------
// helpers

const nowMs = () => performance.now();
const unixMicros = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const round = (x, d) => (Number.isFinite(x) ? Math.round(x * 10 ** d) / 10 ** d : null);
const log = (m) => { if (!quiet) process.stderr.write(m + '\n'); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Samples {
  constructor() { this.a = new Float64Array(1024); this.n = 0; }
  push(v) {
    if (this.n === this.a.length) { const b = new Float64Array(this.a.length * 2); b.set(this.a); this.a = b; }
    this.a[this.n++] = v;
  }
  summary() {
    const s = this.a.slice(0, this.n).sort();
    const q = (p) => (s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))] : null);
    return { count: s.length, max: round(q(1), 3), p50: round(q(0.5), 3), p90: round(q(0.9), 3), p99: round(q(0.99), 3), p999: round(q(0.999), 3) };
  }
}

function bump(obj, k, n = 1) { obj[k] = (obj[k] || 0) + n; }

// Bytes of a server-to-client WebSocket frame carrying `len` payload bytes (unmasked,
// unfragmented), so received_bytes matches the relay's bytes sent after the upgrade.
const frameBytes = (len) => len + 2 + (len >= 65536 ? 8 : len >= 126 ? 2 : 0);

// --- server-side sampling (/proc) ------------------------------------------------------
const CLK_TCK = 100; // getconf CLK_TCK on Linux x86_64/arm64
function serverSample() {
  if (!serverPids.length) return null;
  let ticks = 0, rss = 0, anon = 0;
  for (const pid of serverPids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14, 15)
      const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      const m = /VmRSS:\s+(\d+)/.exec(st);
      if (m) rss += Number(m[1]);
      const a = /RssAnon:\s+(\d+)/.exec(st);
      if (a) anon += Number(a[1]);
    } catch (e) {
      return { error: `pid ${pid}: ${e.code || e.message}` };
    }
  }
  return { cpu: ticks / CLK_TCK, rss, anon };
}
// The whole machine's busy CPU (/proc/stat), so that a report shows what else ran: on a
// shared 2-core machine other_cpu_seconds = busy - server - this client.
function machineBusy() {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / CLK_TCK; // user nice system irq softirq steal
  } catch { return null; }
}
function addMachine(report, m0) {
  const m1 = machineBusy();
  if (m0 === null || m1 === null) return;
  report.machine_busy_cpu_seconds = round(m1 - m0, 2);
  if (report.server_cpu_seconds !== undefined && report.client_cpu_seconds !== undefined)
    report.other_cpu_seconds = round(m1 - m0 - report.server_cpu_seconds - report.client_cpu_seconds, 2);
}
function addServer(report, before, after, bytes) {
  if (!before || !after) return;
  if (before.error || after.error) { report.server_error = before.error || after.error; return; }
  const cpu = after.cpu - before.cpu;
  report.server_cpu_seconds = round(cpu, 2);
  if (bytes > 0) report.server_cpu_seconds_per_gb = round(cpu / (bytes / 1e9), 4);
  report.server_rss_kib = after.rss;
}
function clientCpu(start) {
  const u = process.cpuUsage(start);
  return round((u.user + u.system) / 1e6, 2);
}

// --- connecting ------------------------------------------------------------------------
function wsUrl(t) {
  const base = `${useTls ? 'wss' : 'ws'}://${addr}${wsPath}`;
  return authMode === 'query' ? `${base}?ticket=${encodeURIComponent(t)}` : base;
}
let tlsInfo = null;
// Open one WebSocket; resolves {ws, ms} on 'open', rejects with {kind, status}.
function connect(t = ticket, extra = {}) {
  const t0 = nowMs();
  const o = {
    perMessageDeflate: false,
    maxPayload: 1 << 30,
    handshakeTimeout: 30000,
    ...extra,
  };
  if (authMode === 'header') o.headers = { Authorization: `Bearer ${t}` };
  if (useTls) {
    o.ca = ca;
    o.servername = servername;
    o.rejectUnauthorized = !opts.insecure;
    if (opts['tls-ciphers']) o.ciphers = opts['tls-ciphers']; // OpenSSL list; TLS 1.3 suites are named TLS_...
    if (opts['tls-max-version']) o.maxVersion = opts['tls-max-version'];
    // No agent, no session cache: a full handshake each time. TLS over a TCP socket of our
    // own, so that `connect --close rst` can reset it (resetAndDestroy needs the TCP handle).
    o.createConnection = (co) => tls.connect({ ...co, socket: net.connect({ host: co.host, port: Number(co.port) }) });
  }
  return new Promise((resolve, reject) => {
    let ws;
    try { ws = new WebSocket(wsUrl(t), o); } catch (e) { reject({ kind: 'url', message: e.message }); return; }
    let done = false;
    ws.on('open', () => {
      done = true;
      if (useTls && !tlsInfo && ws._socket && ws._socket.getProtocol) {
        const c = ws._socket.getCipher();
        tlsInfo = { protocol: ws._socket.getProtocol(), cipher: c && c.name, session_reused: ws._socket.isSessionReused() };
      }
      resolve({ ws, ms: nowMs() - t0 });
    });
    ws.on('unexpected-response', (req, res) => {
      done = true;
      reject({ kind: `http_${res.statusCode}`, status: res.statusCode, ws, req, res });
      res.resume();
      req.destroy();
    });
    ws.on('error', (e) => {
      if (done) return;
      done = true;
      reject({ kind: e.code || 'error', message: e.message, ws });
    });
  });
}

// Parse a binary media frame: u32 BE meta length N, N bytes JSON meta, payload.
function parseMedia(buf) {
  if (buf.length < 4) return null;
  const n = buf.readUInt32BE(0);
  if (4 + n > buf.length) return null;
  let meta;
  try { meta = JSON.parse(buf.toString('utf8', 4, 4 + n)); } catch { return null; }
  return { meta, payloadOffset: 4 + n, payloadLength: buf.length - 4 - n };
}

function progress(fn) {
  if (quiet) return { stop() {} };
  const t0 = nowMs();
  const h = setInterval(() => log(`[${((nowMs() - t0) / 1000).toFixed(1).padStart(5)}s] ${fn()}`), 1000);
  return { stop() { clearInterval(h); } };
}

const base = () => ({
  client: `wsload (node ${process.version}, ws ${WS_VERSION})`,
  transport: useHttp ? (useTls ? 'http+tls' : 'http') : useTls ? 'websocket+tls' : 'websocket',
});

// ---------------------------------------------------------------------------------------
// vod

async function vod() {
  if (useHttp) return vodHttp();
  const N = num('connections', 100), K = num('inflight', 4);
  const prefix = str('prefix', 'vod/'), suffix = str('suffix', '.bin'), keys = num('keys', 64);
  const count = num('count', 0), duration = num('duration', 20);
  const verifyDir = opts['verify-storage'];
  const verified = new Set();
  const errors = {}, latency = new Samples(), handshakes = new Samples();
  let failed = 0, issued = 0, replies = 0, bytes = 0, payloadBytes = 0, wrongBytes = 0;
  const closes = {};

  // Connect everyone first (not timed into the throughput).
  const conns = [];
  await Promise.all(Array.from({ length: N }, async () => {
    try { const { ws, ms } = await connect(); handshakes.push(ms); conns.push(ws); }
    catch (e) { failed++; bump(errors, e.kind); }
  }));
  log(`${conns.length} connections open, ${failed} failed`);
  if (!conns.length) die(`vod: no connection to ${addr} opened (${JSON.stringify(errors)})`);

  const before = serverSample();
  const cpu0 = process.cpuUsage();
  const m0 = machineBusy();
  const start = nowMs();
  const deadline = start + duration * 1000;
  let lastReply = start;
  let finish;
  const finished = new Promise((r) => { finish = r; });
  let stopping = false;
  const checkDone = () => {
    if (!stopping && ((count && replies >= count) || nowMs() >= deadline)) { stopping = true; finish(); }
  };
  const timer = setTimeout(() => { stopping = true; finish(); }, duration * 1000 + 5);

  for (const ws of conns) {
    const sent = new Map(); // id -> [t, key]
    let nextId = 1;
    const sendOne = () => {
      if (stopping || (count && issued >= count) || nowMs() >= deadline) return;
      const id = nextId++ >>> 0;
      const key = prefix + Math.floor(Math.random() * keys) + suffix;
      sent.set(id, [nowMs(), key]);
      issued++;
      ws.send(`{"op":"get","id":${id},"key":${JSON.stringify(key)}}`);
    };
    ws.on('message', (data, isBinary) => {
      bytes += frameBytes(data.length);
      if (stopping) return;
      if (isBinary) {
        const m = parseMedia(data);
        if (!m) { bump(errors, 'bad_frame'); return; }
        const s = sent.get(m.meta.id);
        if (!s) { bump(errors, 'unexpected_id'); return; }
        sent.delete(m.meta.id);
        if (m.meta.size !== m.payloadLength || m.meta.key !== s[1]) bump(errors, 'wrong_size_or_key');
        if (verifyDir && !verified.has(s[1])) {
          verified.add(s[1]);
          const want = fs.readFileSync(path.join(verifyDir, s[1]));
          if (!want.equals(data.subarray(m.payloadOffset))) { wrongBytes++; bump(errors, 'wrong_bytes'); }
        }
        const t = nowMs();
        latency.push(t - s[0]);
        replies++;
        payloadBytes += m.payloadLength;
        lastReply = t;
        checkDone();
        sendOne();
      } else {
        let msg;
        try { msg = JSON.parse(data.toString()); } catch { bump(errors, 'bad_text'); return; }
        if (msg.op === 'error') {
          bump(errors, msg.code || 'error');
          if (msg.id !== undefined) sent.delete(msg.id);
          // rate_limited (the relay's per-connection request budget, 1000/s by default, or
          // max_pending_gets): back off instead of flooding (a flood is closed with 1008).
          if (msg.code === 'rate_limited') setTimeout(sendOne, 20);
          else sendOne();
        } else bump(errors, `op_${msg.op}`);
      }
    });
    ws.on('close', (code) => { if (!stopping) bump(closes, String(code)); });
    ws.on('error', (e) => bump(errors, `ws_${e.code || 'error'}`));
    for (let i = 0; i < K; i++) sendOne();
  }
  const p = progress(() => `replies ${replies}  ${((bytes / ((nowMs() - start) / 1000)) / 1e9).toFixed(2)} GB/s`);
  await finished;
  clearTimeout(timer);
  p.stop();
  const elapsed = (Math.min(nowMs(), Math.max(lastReply, start + 1)) - start) / 1000;
  const after = serverSample();
  const cc = clientCpu(cpu0);
  for (const ws of conns) ws.terminate();
  const report = {
    scenario: 'vod', ...base(), connections: conns.length, failed_connections: failed, inflight: K,
    errors, closes, handshake_ms: handshakes.summary(), latency_ms: latency.summary(),
    received_bytes: bytes, payload_bytes: payloadBytes,
    received_bytes_per_s: round(bytes / elapsed, 0), received_gbit_per_s: round((bytes * 8) / elapsed / 1e9, 3),
    replies, replies_per_s: round(replies / elapsed, 1), seconds: round(elapsed, 3),
    client_cpu_seconds: cc,
  };
  if (verifyDir) { report.verified_keys = verified.size; report.wrong_bytes = wrongBytes; }
  if (tlsInfo) report.tls = tlsInfo;
  addServer(report, before, after, bytes);
  addMachine(report, m0);
  return report;
}

// ---------------------------------------------------------------------------------------
// vod --http: HTTP/1.1 keep-alive GETs, pipelined --inflight deep per connection (for web
// servers such as nginx; mediarelay-load's `vod --http` does the same). Responses are framed
// by Content-Length only: a chunked (or unframed) response fails the run. received_bytes
// counts body bytes only (header_bytes: the response heads, reported apart).

function openHttp() {
  const port = Number(addr.slice(addr.lastIndexOf(':') + 1));
  const t0 = nowMs();
  return new Promise((resolve, reject) => {
    let s;
    const fail = (e) => { s.destroy(); reject({ kind: e.code || 'error', message: e.message }); };
    const ok = () => {
      s.removeListener('error', fail);
      s.on('error', () => {}); // until vodHttp counts them
      if (useTls && !tlsInfo) {
        const c = s.getCipher();
        tlsInfo = { protocol: s.getProtocol(), cipher: c && c.name, session_reused: s.isSessionReused(), alpn: s.alpnProtocol || null };
      }
      resolve({ s, ms: nowMs() - t0 });
    };
    if (useTls) {
      const o = { host, port, ca, servername, rejectUnauthorized: !opts.insecure, ALPNProtocols: ['http/1.1'] };
      if (opts['tls-ciphers']) o.ciphers = opts['tls-ciphers'];
      if (opts['tls-max-version']) o.maxVersion = opts['tls-max-version'];
      s = tls.connect(o, ok);
    } else s = net.connect({ host, port }, ok);
    s.setNoDelay(true);
    s.once('error', fail);
    s.setTimeout(30000, () => fail({ code: 'connect_timeout', message: 'connect timed out' }));
    s.once(useTls ? 'secureConnect' : 'connect', () => s.setTimeout(0));
  });
}

async function vodHttp() {
  const N = num('connections', 100), K = num('inflight', 4);
  const prefix = str('prefix', 'vod/'), suffix = str('suffix', '.bin'), keys = num('keys', 64);
  const count = num('count', 0), duration = num('duration', 20);
  if (opts['verify-storage']) die('--verify-storage is not supported with --http');
  const errors = {}, closes = {}, latency = new Samples(), handshakes = new Samples();
  let failed = 0, issued = 0, replies = 0, responses = 0, bytes = 0, headBytes = 0;
  let fatal = null;

  const conns = [];
  await Promise.all(Array.from({ length: N }, async () => {
    try { const { s, ms } = await openHttp(); handshakes.push(ms); conns.push(s); }
    catch (e) { failed++; bump(errors, e.kind); }
  }));
  log(`${conns.length} connections open, ${failed} failed`);
  if (!conns.length) die(`vod --http: no connection to ${addr} opened (${JSON.stringify(errors)})`);

  const before = serverSample();
  const cpu0 = process.cpuUsage();
  const m0 = machineBusy();
  const start = nowMs();
  const deadline = start + duration * 1000;
  let lastReply = start;
  let finish;
  const finished = new Promise((r) => { finish = r; });
  let stopping = false;
  let live = conns.length;
  const stop = () => { if (!stopping) { stopping = true; finish(); } };
  const checkDone = () => { if ((count && replies >= count) || nowMs() >= deadline) stop(); };
  const timer = setTimeout(stop, duration * 1000 + 5);
  const hostHeader = addr;

  for (const s of conns) {
    const sent = []; // FIFO of [t, key]: responses come back in request order
    let head = null; // bytes of a response head not yet complete
    let bodyLeft = 0, status = 0, inBody = false;
    // Requests to send once this chunk is parsed (one write per chunk).
    const request = (out) => {
      if (stopping || (count && issued >= count) || nowMs() >= deadline) return out;
      issued++;
      const key = prefix + Math.floor(Math.random() * keys) + suffix;
      sent.push([nowMs(), key]);
      return out + `GET /${key} HTTP/1.1\r\nHost: ${hostHeader}\r\nConnection: keep-alive\r\n\r\n`;
    };
    const complete = (out) => {
      const r = sent.shift();
      const t = nowMs();
      responses++;
      lastReply = t;
      if (status === 200) {
        if (r) latency.push(t - r[0]);
        replies++;
      } else bump(errors, `http_${status}`);
      checkDone();
      return request(out);
    };
    const broken = (msg) => {
      fatal = fatal || msg;
      bump(errors, 'bad_response');
      s.destroy();
      stop();
    };
    s.on('data', (chunk) => {
      if (stopping) return;
      let out = '';
      let off = 0;
      while (off < chunk.length) {
        if (inBody) {
          const n = Math.min(bodyLeft, chunk.length - off);
          bodyLeft -= n;
          bytes += n;
          off += n;
          if (bodyLeft === 0) { inBody = false; out = complete(out); }
          continue;
        }
        // A response head, which may span chunks.
        const rest = chunk.subarray(off);
        const buf = head ? Buffer.concat([head, rest]) : rest;
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) {
          if (buf.length > 65536) return broken('response head over 64 KiB');
          head = Buffer.from(buf);
          break;
        }
        const consumed = end + 4 - (head ? head.length : 0);
        const text = buf.toString('latin1', 0, end);
        head = null;
        off += consumed;
        headBytes += end + 4;
        const lines = text.split('\r\n');
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
        if (!m) return broken(`bad status line: ${JSON.stringify(lines[0].slice(0, 80))}`);
        status = Number(m[1]);
        let len = null, chunked = false;
        for (const l of lines.slice(1)) {
          const i = l.indexOf(':');
          if (i < 0) continue;
          const k = l.slice(0, i).trim().toLowerCase(), v = l.slice(i + 1).trim();
          if (k === 'content-length') len = Number(v);
          else if (k === 'transfer-encoding' && v.toLowerCase() !== 'identity') chunked = true;
        }
        if (chunked) return broken(`status ${status}: Transfer-Encoding (chunked) responses are not supported, only Content-Length`);
        if (len === null || !Number.isSafeInteger(len) || len < 0) {
          if (status === 204 || status === 304 || (status >= 100 && status < 200)) len = 0;
          else return broken(`status ${status}: response without a valid Content-Length`);
        }
        if (status >= 100 && status < 200) continue; // interim response, the real one follows
        if (len === 0) out = complete(out);
        else { bodyLeft = len; inBody = true; }
      }
      if (out) s.write(out);
    });
    s.on('close', () => {
      if (stopping) return;
      bump(closes, sent.length ? 'closed_with_requests_outstanding' : 'closed');
      if (sent.length) bump(errors, 'closed_by_server');
      if (--live === 0) stop();
    });
    s.on('error', (e) => { if (!stopping) bump(errors, `socket_${e.code || 'error'}`); });
    let out = '';
    for (let i = 0; i < K; i++) out = request(out);
    if (out) s.write(out);
  }
  const p = progress(() => `replies ${replies}  ${((bytes / ((nowMs() - start) / 1000)) / 1e9).toFixed(2)} GB/s (bodies)`);
  await finished;
  clearTimeout(timer);
  p.stop();
  const elapsed = (Math.min(nowMs(), Math.max(lastReply, start + 1)) - start) / 1000;
  const after = serverSample();
  const cc = clientCpu(cpu0);
  for (const s of conns) s.destroy();
  if (fatal) die(`vod --http: ${fatal}`);
  if (!replies) die(`vod --http: no 200 response (errors ${JSON.stringify(errors)}, closes ${JSON.stringify(closes)})`);
  const report = {
    scenario: 'vod', ...base(), connections: conns.length, failed_connections: failed, inflight: K,
    errors, closes, handshake_ms: handshakes.summary(), latency_ms: latency.summary(),
    received_bytes: bytes, payload_bytes: bytes, header_bytes: headBytes,
    received_bytes_per_s: round(bytes / elapsed, 0), received_gbit_per_s: round((bytes * 8) / elapsed / 1e9, 3),
    replies, responses, replies_per_s: round(replies / elapsed, 1), seconds: round(elapsed, 3),
    client_cpu_seconds: cc,
  };
  if (tlsInfo) report.tls = tlsInfo;
  addServer(report, before, after, bytes);
  addMachine(report, m0);
  return report;
}

// ---------------------------------------------------------------------------------------
// fanout

function nextSeq(dir) {
  let max = 0;
  for (const f of fs.readdirSync(dir)) {
    const m = /^seg-(\d{10})\.[A-Za-z0-9]+$/.exec(f);
    if (m) max = Math.max(max, Number(m[1]));
  }
  return max + 1;
}

async function fanout() {
  const N = num('subscribers', 1000), size = num('size', 65536), rate = num('rate', 25);
  const count = num('count', 500), duration = num('duration', 120), drain = num('drain', 10);
  const storage = opts.storage || die('fanout needs --storage DIR');
  const stream = str('stream', 'live/wsload');
  const dir = path.join(storage, stream);
  fs.mkdirSync(dir, { recursive: true });
  const first = nextSeq(dir);
  const renamedAt = new Float64Array(count); // unix µs of each rename
  const errors = {}, closes = {}, lag = new Samples(), e2e = new Samples(), handshakes = new Samples();
  let failed = 0, subscribed = 0, delivered = 0, skipped = 0, skippedSegs = 0, bytes = 0, wrong = 0, inits = 0, produced = 0;
  let lastDelivery = 0;
  let producing = false;

  const conns = [];
  await Promise.all(Array.from({ length: N }, async (_, i) => {
    let ws;
    try { const r = await connect(); ws = r.ws; handshakes.push(r.ms); }
    catch (e) { failed++; bump(errors, e.kind); return; }
    conns.push(ws);
    ws.on('message', (data, isBinary) => {
      bytes += frameBytes(data.length);
      if (isBinary) {
        const t = unixMicros();
        const m = parseMedia(data);
        if (!m) { bump(errors, 'bad_frame'); return; }
        const seq = m.meta.seq;
        if (seq === 0) { inits++; return; }
        const idx = seq - first;
        if (idx < 0 || idx >= count) { bump(errors, 'unexpected_seq'); return; }
        if (m.payloadLength !== size || m.meta.size !== size) { wrong++; bump(errors, 'wrong_size'); }
        // Payload starts with the seq as a big-endian u64: wrong bytes / wrong order show here.
        else if (Number(data.readBigUInt64BE(m.payloadOffset)) !== seq) { wrong++; bump(errors, 'wrong_bytes'); }
        delivered++;
        lag.push((t - m.meta.ts) / 1000);
        if (renamedAt[idx]) e2e.push((t - renamedAt[idx]) / 1000);
        lastDelivery = nowMs();
      } else {
        let msg;
        try { msg = JSON.parse(data.toString()); } catch { bump(errors, 'bad_text'); return; }
        if (msg.op === 'subscribed') subscribed++;
        else if (msg.op === 'skipped') { skipped++; skippedSegs += msg.to - msg.from + 1; }
        else if (msg.op === 'error') bump(errors, msg.code || 'error');
        else if (msg.op === 'closing') bump(errors, `closing_${msg.reason}`);
        else bump(errors, `op_${msg.op}`);
      }
    });
    ws.on('close', (code) => { if (producing !== 'done') bump(closes, String(code)); });
    ws.on('error', (e) => bump(errors, `ws_${e.code || 'error'}`));
    ws.send(JSON.stringify({ op: 'subscribe', id: i + 1, stream, from: first }));
  }));
  const t0 = nowMs();
  while (subscribed + Object.keys(errors).length < conns.length && subscribed < conns.length && nowMs() - t0 < 60000) await sleep(20);
  log(`${subscribed} subscribers ready (${failed} failed); first seq ${first}`);

  const payload = randomBytes(size);
  const before = serverSample();
  const cpu0 = process.cpuUsage();
  const m0 = machineBusy();
  const start = nowMs();
  const deadline = start + duration * 1000;
  producing = true;
  const expected = count * subscribed;
  const p = progress(() => `produced ${produced}/${count}  delivered ${delivered}/${expected}  skipped ${skipped}  ${((bytes / ((nowMs() - start) / 1000)) / 1e9).toFixed(2)} GB/s`);
  for (let i = 0; i < count && nowMs() < deadline; i++) {
    const due = start + (i * 1000) / rate;
    const w = due - nowMs();
    if (w > 0) await sleep(w);
    const seq = first + i;
    payload.writeBigUInt64BE(BigInt(seq), 0);
    const name = `seg-${String(seq).padStart(10, '0')}.bin`;
    const tmp = path.join(dir, `.seg-${seq}-${process.pid}.tmp`);
    fs.writeFileSync(tmp, payload);
    renamedAt[i] = unixMicros();
    fs.renameSync(tmp, path.join(dir, name));
    produced++;
  }
  const producedAt = nowMs();
  while (delivered + skippedSegs < expected && nowMs() < deadline && nowMs() - producedAt < drain * 1000) await sleep(10);
  p.stop();
  const end = delivered + skippedSegs >= expected ? Math.max(lastDelivery, producedAt) : nowMs();
  const elapsed = (end - start) / 1000;
  const after = serverSample();
  const cc = clientCpu(cpu0);
  producing = 'done';
  for (const ws of conns) ws.terminate();
  const report = {
    scenario: 'fanout', ...base(), streams: 1, subscribers: subscribed, failed_connections: failed,
    segment_size: size, rate_per_s: rate, segments_produced: produced,
    segments_expected: produced * subscribed, segments_delivered: delivered,
    skipped_messages: skipped, skipped_segments: skippedSegs, wrong_segments: wrong, init_segments: inits,
    errors, closes, handshake_ms: handshakes.summary(), lag_ms: lag.summary(), e2e_lag_ms: e2e.summary(),
    received_bytes: bytes, received_bytes_per_s: round(bytes / elapsed, 0),
    received_gbit_per_s: round((bytes * 8) / elapsed / 1e9, 3),
    segments_per_s: round(delivered / elapsed, 1), seconds: round(elapsed, 3), client_cpu_seconds: cc,
  };
  if (tlsInfo) report.tls = tlsInfo;
  addServer(report, before, after, bytes);
  addMachine(report, m0);
  return report;
}

// ---------------------------------------------------------------------------------------
// idle

async function idle() {
  const N = num('connections', 1000), hold = num('hold', 5), conc = num('concurrency', 256), timeout = num('timeout', 120);
  const errors = {}, closes = {}, handshakes = new Samples();
  const before = serverSample();
  const cpu0 = process.cpuUsage();
  const m0 = machineBusy();
  const start = nowMs();
  const conns = [];
  let next = 0, failed = 0, holding = true;
  const p = progress(() => `connected ${conns.length} failed ${failed}`);
  await Promise.all(Array.from({ length: Math.min(conc, N) }, async () => {
    while (next < N && nowMs() - start < timeout * 1000) {
      next++;
      try {
        const { ws, ms } = await connect();
        handshakes.push(ms);
        conns.push(ws);
        ws.on('close', (code) => { if (holding) bump(closes, String(code)); });
        ws.on('error', (e) => bump(errors, `ws_${e.code || 'error'}`));
        ws.on('message', (d, bin) => bump(errors, bin ? 'unexpected_binary' : 'unexpected_text'));
      } catch (e) { failed++; bump(errors, e.kind); }
    }
  }));
  const openFor = (nowMs() - start) / 1000;
  p.stop();
  log(`${conns.length} open in ${openFor.toFixed(2)} s; holding ${hold} s`);
  await sleep(hold * 1000);
  const during = serverSample();
  const cc = clientCpu(cpu0);
  const clientRss = Math.round(process.memoryUsage().rss / 1024);
  holding = false;
  const stillOpen = conns.filter((w) => w.readyState === WebSocket.OPEN).length;
  for (const ws of conns) ws.terminate();
  const report = {
    scenario: 'idle', ...base(), connections: conns.length, failed, still_open: stillOpen,
    open_seconds: round(openFor, 3), connections_per_s: round(conns.length / openFor, 1),
    errors, closes, handshake_ms: handshakes.summary(), client_cpu_seconds: cc, client_rss_kib: clientRss,
  };
  if (tlsInfo) report.tls = tlsInfo;
  if (before && during && !before.error && !during.error) {
    report.server_rss_before_kib = before.rss;
    report.server_rss_during_kib = during.rss;
    report.server_rss_anon_before_kib = before.anon;
    report.server_rss_anon_during_kib = during.anon;
    report.server_kib_per_connection = round((during.rss - before.rss) / Math.max(1, conns.length), 3);
    report.server_cpu_seconds = round(during.cpu - before.cpu, 2);
  }
  addMachine(report, m0);
  return report;
}

// ---------------------------------------------------------------------------------------
// connect

async function connectScenario() {
  const N = num('count', 5000), conc = num('concurrency', 32), bad = num('bad-share', 0);
  const closeMode = str('close', 'rst');
  const statuses = {}, errors = {}, handshakes = new Samples();
  let next = 0, badSent = 0;
  const before = serverSample();
  const cpu0 = process.cpuUsage();
  const m0 = machineBusy();
  const start = nowMs();
  const kill = (ws) => {
    const s = ws && ws._socket;
    if (closeMode === 'ws') ws.close(1000);
    else if (closeMode === 'rst' && s) {
      // RST (SO_LINGER 0) like mediarelay-load: no TIME_WAIT pile-up on the client.
      // For TLS the reset goes to the TCP socket under the TLS one.
      const raw = s._parent || s;
      if (typeof raw.resetAndDestroy === 'function' && raw._handle) { try { raw.resetAndDestroy(); } catch { s.destroy(); } }
      else s.destroy();
      s.destroy();
    } else ws.terminate();
  };
  const p = progress(() => `handshakes ${handshakes.n}/${N}`);
  await Promise.all(Array.from({ length: Math.min(conc, N) }, async () => {
    while (next < N) {
      const i = next++;
      const isBad = bad > 0 && Math.floor((i + 1) * bad) > Math.floor(i * bad); // evenly spread
      const t = isBad ? randomBytes(32).toString('base64url') : ticket;
      if (isBad) badSent++;
      const t0 = nowMs();
      try {
        const { ws } = await connect(t);
        handshakes.push(nowMs() - t0);
        bump(statuses, '101');
        kill(ws);
      } catch (e) {
        if (e.status) { handshakes.push(nowMs() - t0); bump(statuses, String(e.status)); }
        else bump(errors, e.kind);
        if (e.ws) e.ws.terminate();
      }
    }
  }));
  p.stop();
  const elapsed = (nowMs() - start) / 1000;
  const after = serverSample();
  const cc = clientCpu(cpu0);
  const report = {
    scenario: 'connect', ...base(), attempts: N, bad_tickets: badSent, close: closeMode, statuses, errors,
    handshake_ms: handshakes.summary(), handshakes_per_s: round(handshakes.n / elapsed, 1), seconds: round(elapsed, 3),
    client_cpu_seconds: cc, client_cpu_us_per_handshake: round((cc * 1e6) / Math.max(1, handshakes.n), 1),
  };
  if (tlsInfo) report.tls = tlsInfo;
  if (before && after && !before.error && !after.error) {
    report.server_cpu_seconds = round(after.cpu - before.cpu, 2);
    report.server_cpu_us_per_handshake = round(((after.cpu - before.cpu) * 1e6) / Math.max(1, handshakes.n), 1);
    report.server_rss_kib = after.rss;
  }
  addMachine(report, m0);
  return report;
}

// ---------------------------------------------------------------------------------------

const scenarios = { vod, fanout, idle, connect: connectScenario };
if (!scenarios[scenario]) die(`unknown scenario ${scenario}\n${USAGE}`);
const report = await scenarios[scenario]();
report.args = process.argv.slice(2).filter((a, i, all) => all[i - 1] !== '--ticket').join(' ');
process.stdout.write(JSON.stringify(report) + '\n');
process.exit(0);
