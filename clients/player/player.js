// mediarelay player page: plays a live fMP4 stream from a relay with Media Source Extensions.
// Plain ES module, no build step; the relay serves it at /player/player.js next to the client
// library at /player/mediarelay.js.
//
// URL: /player?ticket=T&stream=live/cam1[&relay=ws://host:port/ws]
//   relay defaults to ws(s)://<this page's host>/ws. Without ticket and stream a form asks.
//
// For tests, window.playerState = {state, received, skipped, lastLagMs, error, ...} is kept up
// to date. state: idle | connecting | waiting | playing | reconnecting | stopped | error | failed.

import { MediaRelayClient, findCodec } from './mediarelay.js';

const LIVE_BACK_BUFFER_S = 30; // keep about this much played media in the SourceBuffer
const SEEK_BEHIND_S = 3; // further behind the live edge than this: jump to end - 1 s
const CATCH_UP_BEHIND_S = 1.5; // between this and SEEK_BEHIND_S: play slightly faster
const CATCH_UP_RATE = 1.1;
const BITRATE_WINDOW_MS = 5000;
const MAX_QUEUED_SEGMENTS = 30; // media segments waiting to be appended
const CONNECT_ATTEMPTS = 3; // first connection: attempts before giving up

const $ = (id) => document.getElementById(id);
const video = /** @type {HTMLVideoElement} */ ($('video'));
const statsEl = $('stats');
const messageEl = $('message');

const state = {
  state: 'idle',
  connection: 'idle', // the client's state: connecting | open | reconnecting | closed
  received: 0, // media segments received (init segments not counted)
  inits: 0, // init segments received
  skipped: 0, // media segments the relay dropped for us or that were missing (gaps)
  lastSeq: null,
  lastLagMs: null, // delivery lag of the last segment: now - meta.ts
  bitrate: 0, // bits/s over the last BITRATE_WINDOW_MS
  bufferSec: 0, // buffered media ahead of the playhead
  behindSec: 0, // distance from the live edge (buffered end)
  currentTime: 0,
  codec: null,
  reconnects: 0,
  lastClose: null, // {code, reason} of the last WebSocket close (failed reconnect attempts too)
  closes: [], // the last close codes, oldest first
  error: null, // MSE / decode errors (and fatal setup errors)
  message: null, // what #message shows
};
window.playerState = state;

const params = new URLSearchParams(location.search);
const ticket = params.get('ticket') || '';
const stream = params.get('stream') || '';
const relayUrl = (params.get('relay') || `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`)
  .replace(/^http(s?):/i, 'ws$1:');

function showMessage(text) {
  state.message = text;
  messageEl.textContent = text;
  messageEl.hidden = !text;
}

function setState(s) {
  state.state = s;
  renderStats();
}

function fail(text, { mse = true } = {}) {
  if (state.state === 'stopped') return;
  console.error('player:', text);
  if (mse) state.error = text;
  setState(mse ? 'error' : 'failed');
  showMessage(text);
  stop();
}

// ---------------------------------------------------------------------------------------
// Small fMP4 helpers: timescale from the init segment, baseMediaDecodeTime from a fragment.
// Used to notice time going backwards (an encoder restart behind a replaced init segment)
// and move the new media after what is buffered instead of over it.

function* boxes(b, start, end) {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let at = start;
  while (at + 8 <= end) {
    let size = dv.getUint32(at);
    const type = String.fromCharCode(b[at + 4], b[at + 5], b[at + 6], b[at + 7]);
    let header = 8;
    if (size === 1) {
      if (at + 16 > end) return;
      size = dv.getUint32(at + 8) * 2 ** 32 + dv.getUint32(at + 12);
      header = 16;
    } else if (size === 0) size = end - at;
    if (size < header || at + size > end) return;
    yield { type, start: at + header, end: at + size, dv };
    at += size;
  }
}
function child(b, box, type) {
  for (const c of boxes(b, box.start, box.end)) if (c.type === type) return c;
  return null;
}
function timescaleOf(init) {
  try {
    const moov = child(init, { start: 0, end: init.byteLength }, 'moov');
    for (const trak of moov ? boxes(init, moov.start, moov.end) : []) {
      if (trak.type !== 'trak') continue;
      const mdhd = child(init, child(init, trak, 'mdia') || { start: 0, end: 0 }, 'mdhd');
      if (!mdhd) continue;
      const v = init[mdhd.start];
      return mdhd.dv.getUint32(mdhd.start + (v === 1 ? 20 : 12));
    }
  } catch (e) { /* not fMP4 */ }
  return null;
}
function decodeTimeOf(seg) {
  try {
    for (const moof of boxes(seg, 0, seg.byteLength)) {
      if (moof.type !== 'moof') continue;
      const traf = child(seg, moof, 'traf');
      const tfdt = traf && child(seg, traf, 'tfdt');
      if (!tfdt) return null;
      const v = seg[tfdt.start];
      return v === 1
        ? tfdt.dv.getUint32(tfdt.start + 4) * 2 ** 32 + tfdt.dv.getUint32(tfdt.start + 8)
        : tfdt.dv.getUint32(tfdt.start + 4);
    }
  } catch (e) { /* not fMP4 */ }
  return null;
}
function sameBytes(a, b) {
  if (!a || !b || a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

// ---------------------------------------------------------------------------------------
// MSE: one SourceBuffer in 'segments' mode fed from a queue (never appendBuffer while updating).

let mediaSource = null;
let sourceBuffer = null;
let mime = null;
let timescale = null;
let lastInit = null; // bytes of the init segment last queued
const queue = []; // {init: bool, payload: Uint8Array, seq}
let appendedEnd = null; // presentation end (s) of the last appended media segment
let appendedEndPending = false; // a media append is in flight
let stopped = false;
let started = false; // first frame seeked to
let client = null;
const arrivals = []; // {t, bytes} for the bitrate

function codecFromContentType(meta) {
  const ct = meta && typeof meta.contentType === 'string' ? meta.contentType : '';
  const m = /codecs\s*=\s*"?([^";]+)"?/i.exec(ct);
  return m ? m[1].trim() : null;
}

function onInit(seg) {
  state.inits += 1;
  const payload = seg.payload;
  if (sameBytes(payload, lastInit)) return; // sent again after a resubscribe: nothing new
  const codec = findCodec(payload) || codecFromContentType(seg.meta);
  if (!codec) return fail('No video codec found in the init segment (not fMP4 H.264/VP9/AV1?)');
  const type = `video/mp4; codecs="${codec}"`;
  if (!('MediaSource' in window)) return fail('This browser has no Media Source Extensions');
  if (!MediaSource.isTypeSupported(type)) return fail(`This browser cannot play ${type}`);
  state.codec = codec;
  const ts = timescaleOf(payload);
  if (!sourceBuffer) {
    try {
      sourceBuffer = mediaSource.addSourceBuffer(type);
      sourceBuffer.mode = 'segments';
    } catch (e) {
      return fail(`addSourceBuffer(${type}) failed: ${e.message || e}`);
    }
    sourceBuffer.addEventListener('updateend', onUpdateEnd);
    sourceBuffer.addEventListener('error', () => fail('SourceBuffer error while appending media'));
    mime = type;
  } else if (type !== mime) {
    // a replaced init segment with another codec (encoder reconfigured)
    if (typeof sourceBuffer.changeType !== 'function') return fail(`codec changed to ${codec}: not supported here`);
    queue.push({ changeType: type });
    mime = type;
  }
  lastInit = payload.slice(); // keep a copy: the frame's buffer is the client's
  queue.push({ init: true, payload, seq: 0, timescale: ts });
  pump();
}

function onMedia(seg) {
  state.received += 1;
  state.lastSeq = seg.seq;
  if (typeof seg.ts === 'number') state.lastLagMs = Math.max(0, Math.round((Date.now() * 1000 - seg.ts) / 1000));
  const now = performance.now();
  arrivals.push({ t: now, bytes: seg.payload.byteLength });
  if (!sourceBuffer) return; // nothing decodable before the init segment
  queue.push({ init: false, payload: seg.payload, seq: seg.seq });
  // Appends fell far behind (e.g. a throttled background tab): drop the oldest media segments
  // (never an init segment) and let tick() jump to the live edge.
  let media = 0;
  for (const q of queue) if (q.payload && !q.init) media += 1;
  for (let i = 0; media > MAX_QUEUED_SEGMENTS && i < queue.length;) {
    if (queue[i].payload && !queue[i].init) {
      queue.splice(i, 1);
      media -= 1;
      state.skipped += 1;
    } else i += 1;
  }
  pump();
}

function bufferedEnd() {
  const b = sourceBuffer ? sourceBuffer.buffered : video.buffered;
  return b.length ? b.end(b.length - 1) : null;
}

function pump() {
  if (stopped || !sourceBuffer || sourceBuffer.updating || mediaSource.readyState !== 'open') return;
  // Trim what was played long ago (the live edge only moves forward).
  const b = sourceBuffer.buffered;
  if (b.length && video.currentTime - b.start(0) > LIVE_BACK_BUFFER_S + 5) {
    try {
      sourceBuffer.remove(0, video.currentTime - LIVE_BACK_BUFFER_S);
      return; // updateend calls pump again
    } catch (e) { /* try again later */ }
  }
  const item = queue.shift();
  if (!item) return;
  try {
    if (item.changeType) {
      sourceBuffer.changeType(item.changeType);
      return pump();
    }
    if (item.init) {
      if (item.timescale) timescale = item.timescale;
    } else if (timescale) {
      // Time going backwards (encoder restart): continue after what is buffered.
      const dt = decodeTimeOf(item.payload);
      if (dt != null && appendedEnd != null) {
        const at = dt / timescale + sourceBuffer.timestampOffset;
        if (at < appendedEnd - 0.5) sourceBuffer.timestampOffset = appendedEnd - dt / timescale;
      }
    }
    sourceBuffer.appendBuffer(item.payload);
    if (!item.init) appendedEndPending = true;
  } catch (e) {
    if (e && e.name === 'QuotaExceededError') {
      queue.unshift(item);
      const t = video.currentTime;
      try { sourceBuffer.remove(0, Math.max(0, t - 2)); } catch (e2) { /* later */ }
      return;
    }
    fail(`appendBuffer failed: ${e && e.message ? e.message : e}`);
  }
}
function onUpdateEnd() {
  if (appendedEndPending) {
    appendedEndPending = false;
    appendedEnd = bufferedEnd();
    if (!started) startPlayback();
  }
  pump();
}

function startPlayback() {
  const b = sourceBuffer.buffered;
  if (!b.length) return;
  started = true;
  // from 'live' the first segment is the newest one: begin at its start
  if (video.currentTime < b.start(0) || video.currentTime > b.end(b.length - 1)) video.currentTime = b.start(0);
  tryPlay();
  setState('playing');
}

function tryPlay() {
  video.muted = true;
  const p = video.play();
  if (p && p.catch) p.catch((e) => console.warn('player: play() refused:', e.message || e));
}

// Follow the live edge, jump over gaps, keep stats fresh. Runs a few times a second.
function tick() {
  if (stopped || !sourceBuffer) return renderStats();
  const b = sourceBuffer.buffered;
  const t = video.currentTime;
  if (b.length) {
    const end = b.end(b.length - 1);
    let inside = -1;
    for (let i = 0; i < b.length; i++) if (t >= b.start(i) - 0.05 && t < b.end(i)) { inside = i; break; }
    let next = null;
    for (let i = 0; i < b.length; i++) if (b.start(i) > t + 0.05) { next = b.start(i); break; }
    // Not in buffered media (the start, or a hole left by skipped or missing segments), or
    // about to stall at the end of a range with more media after a hole: jump forward.
    if (next != null && (inside === -1 || b.end(inside) - t < 0.25)) {
      video.currentTime = next + 0.05;
      if (started) tryPlay();
    }
    const behind = end - video.currentTime;
    if (behind > SEEK_BEHIND_S) {
      video.currentTime = Math.max(b.start(b.length - 1), end - 1);
      video.playbackRate = 1;
    } else if (behind > CATCH_UP_BEHIND_S) {
      if (video.playbackRate !== CATCH_UP_RATE) video.playbackRate = CATCH_UP_RATE;
    } else if (video.playbackRate !== 1) {
      video.playbackRate = 1;
    }
    state.behindSec = Math.max(0, end - video.currentTime);
    state.bufferSec = state.behindSec;
    if (started && video.paused && !stopped) tryPlay();
  }
  renderStats();
}

function renderStats() {
  const now = performance.now();
  while (arrivals.length && now - arrivals[0].t > BITRATE_WINDOW_MS) arrivals.shift();
  let bytes = 0;
  for (const a of arrivals) bytes += a.bytes;
  const span = Math.min(BITRATE_WINDOW_MS, Math.max(1000, now - (arrivals.length ? arrivals[0].t : now)));
  state.bitrate = arrivals.length ? Math.round((bytes * 8 * 1000) / span) : 0;
  state.currentTime = video.currentTime;
  if (client) state.connection = client.state;
  const kbps = (state.bitrate / 1000).toFixed(0);
  statsEl.textContent = [
    `state      ${state.state} (${state.connection})`,
    `lag        ${state.lastLagMs == null ? '-' : state.lastLagMs + ' ms'}`,
    `bitrate    ${kbps} kbit/s`,
    `segments   ${state.received} received, ${state.skipped} skipped`,
    `buffer     ${state.bufferSec.toFixed(1)} s`,
    `codec      ${state.codec || '-'}`,
    `reconnects ${state.reconnects}`,
  ].join('\n');
}

function stop({ closeAfterMs = 0 } = {}) {
  if (stopped) return;
  stopped = true;
  queue.length = 0;
  try { video.pause(); } catch (e) { /* ignore */ }
  if (client) {
    if (closeAfterMs > 0) {
      // the relay closes (4401) right after its `closing`: close ourselves only if it does not
      setTimeout(() => client.close(), closeAfterMs);
    } else client.close();
  }
  renderStats();
}

// `closing` ticket_revoked/ticket_expired, then close 4401 (no reconnect after it).
function stopForTicket(reason, fromClosing = false) {
  if (stopped && state.state === 'stopped') return;
  const text = reason === 'ticket_expired' ? 'Ticket expired — playback stopped'
    : reason === 'ticket_revoked' ? 'Ticket revoked — playback stopped'
      : 'Ticket revoked or expired — playback stopped';
  state.state = 'stopped';
  showMessage(text);
  stop({ closeAfterMs: fromClosing ? 3000 : 0 });
}

// ---------------------------------------------------------------------------------------

async function play() {
  $('title').textContent = stream;
  document.title = `${stream} — mediarelay player`;
  video.muted = true;
  video.addEventListener('error', () => {
    const e = video.error;
    fail(`Video error${e ? ` ${e.code}: ${e.message || ''}` : ''}`.trim());
  });

  mediaSource = new MediaSource();
  video.src = URL.createObjectURL(mediaSource);
  await new Promise((resolve) => mediaSource.addEventListener('sourceopen', resolve, { once: true }));

  client = new MediaRelayClient(relayUrl, { ticket });
  let everOpen = false;
  client.on('open', ({ reconnected }) => {
    everOpen = true;
    if (reconnected) state.reconnects += 1;
    if (state.state === 'reconnecting' || state.state === 'connecting') setState(started ? 'playing' : 'waiting');
  });
  client.on('reconnecting', () => { if (!stopped) setState('reconnecting'); });
  client.on('close', ({ code, closingReason, willReconnect }) => {
    state.lastClose = { code, reason: closingReason };
    state.closes.push(code);
    if (state.closes.length > 20) state.closes.shift();
    console.info(`player: connection closed ${code}${closingReason ? ` (${closingReason})` : ''}${willReconnect ? ', reconnecting' : ''}`);
    if (!everOpen) return; // a failed first attempt: play() tries again
    if (code === 4401) return stopForTicket(closingReason);
    if (willReconnect) { if (!stopped) setState('reconnecting'); return; }
    if (!stopped) {
      setState('closed');
      showMessage(`Connection closed (${code}${closingReason ? ', ' + closingReason : ''})`);
    }
  });
  client.on('closing', ({ reason }) => {
    if (reason === 'ticket_revoked' || reason === 'ticket_expired') stopForTicket(reason, true);
  });
  client.on('skipped', ({ from, to }) => {
    state.skipped += Math.max(0, to - from + 1); // tick() seeks over the hole
  });

  // Browsers do not say why an upgrade was refused (401 for a bad ticket, 503 for a relay at
  // its limit): try a few times, then say what it may be.
  setState('connecting');
  for (let attempt = 1; ; attempt++) {
    try {
      await client.connect();
      break;
    } catch (e) {
      if (stopped) return;
      if (attempt >= CONNECT_ATTEMPTS) {
        return fail(`Could not connect to ${relayUrl}: the ticket may be invalid, expired or revoked, or the relay unreachable`, { mse: false });
      }
      await new Promise((r) => setTimeout(r, 1000 * attempt));
    }
  }
  setState('waiting');
  const sub = client.subscribe(stream, { from: 'live' });
  try {
    for await (const seg of sub) {
      if (stopped) break;
      if (seg.init) onInit(seg);
      else onMedia(seg);
    }
  } catch (e) {
    if (e && e.closeCode === 4401) return stopForTicket(e.code);
    if (!stopped) fail(`Subscription to ${stream} ended: ${e && e.code ? e.code : e}`, { mse: false });
  }
}

setInterval(tick, 250);

if (!ticket || !stream) {
  const form = $('setup');
  form.hidden = false;
  if (stream) $('f-stream').value = stream;
  if (params.get('relay')) $('f-relay').value = params.get('relay');
  form.addEventListener('submit', () => {
    // leave an empty relay out of the URL (default: this page's host)
    const relay = $('f-relay');
    if (!relay.value.trim()) relay.disabled = true;
  });
  setState('idle');
} else {
  play().catch((e) => fail(`Player failed: ${e && e.message ? e.message : e}`));
}

window.addEventListener('pagehide', () => { if (client) client.close(); });
