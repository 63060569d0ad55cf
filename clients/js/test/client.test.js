// MediaRelayClient against the real relay binary on loopback, over the test-only
// RFC 6455 client in ws-node.js.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MediaRelayClient, MediaRelayError, connect } from '../mediarelay.js';
import { NodeWebSocket } from './ws-node.js';
import { Relay, within, until, sleep, segmentBytes } from './relay.js';

const STREAM = 'live/cam1';
const cleanups = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) {
    try { await fn(); } catch { /* best effort */ }
  }
});

async function newRelay(env) {
  const relay = new Relay(env);
  cleanups.push(() => relay.dispose());
  await relay.start();
  return relay;
}

function client(relay, ticket, options = {}) {
  const c = new MediaRelayClient(relay.url, {
    ticket, WebSocket: NodeWebSocket, initialDelay: 50, maxDelay: 400, ...options,
  });
  cleanups.push(() => c.close());
  return c;
}

/** Collect events of the given types into arrays. */
function record(c, ...types) {
  const seen = {};
  for (const t of types) {
    seen[t] = [];
    c.on(t, (ev) => seen[t].push(ev));
  }
  return seen;
}

/** Read n media segments (seq > 0) from a subscription iterator, bounded. */
async function take(sub, n, ms = 8000) {
  const out = [];
  await within((async () => {
    while (out.length < n) {
      const { value, done } = await sub.next();
      if (done) throw new Error('subscription ended early');
      if (value.seq > 0) out.push(value);
    }
  })(), ms, `receiving ${n} segments`);
  return out;
}

/** A NodeWebSocket that records the client's text messages (parsed) in `sent`. */
function recordingSocket(sent) {
  return class extends NodeWebSocket {
    send(data) {
      if (typeof data === 'string') sent.push(JSON.parse(data));
      super.send(data);
    }
  };
}

const bytesEqual = (a, b) => a.length === b.length && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

test('no WebSocket available: connect rejects with no_websocket', async () => {
  const saved = globalThis.WebSocket;
  try {
    globalThis.WebSocket = undefined;
    const c = new MediaRelayClient('ws://127.0.0.1:1/ws', { ticket: 'x' });
    await assert.rejects(c.connect(), (e) => e instanceof MediaRelayError && e.code === 'no_websocket');
  } finally {
    globalThis.WebSocket = saved;
  }
});

test('get: object byte-identical; missing key, forbidden and bad keys reject with protocol codes', async () => {
  const relay = await newRelay();
  const big = new Uint8Array(200 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + 3) & 0xff;
  relay.put('vod/movie/seg-0000000001.m4s', big);
  relay.put('vod/empty.bin', new Uint8Array(0));
  const ticket = await relay.issue('vod/*');
  const c = await within(connect(relay.url, { ticket, WebSocket: NodeWebSocket }), 5000, 'connect');
  cleanups.push(() => c.close());
  assert.equal(c.ws.url.includes(`?ticket=${ticket}`), true, 'ticket travels as the query parameter');

  const { meta, payload } = await within(c.get('vod/movie/seg-0000000001.m4s'), 5000, 'get');
  assert.equal(meta.key, 'vod/movie/seg-0000000001.m4s');
  assert.equal(meta.size, big.length);
  assert.equal(typeof meta.id, 'number');
  assert.ok(payload instanceof Uint8Array);
  assert.ok(bytesEqual(payload, big), 'payload byte-identical');
  // a view, not a copy: the payload sits at the end of the received frame's buffer
  assert.equal(payload.byteOffset + payload.byteLength, payload.buffer.byteLength);
  assert.ok(payload.byteOffset > 4);

  const empty = await within(c.get('vod/empty.bin'), 5000, 'get empty');
  assert.equal(empty.payload.byteLength, 0);

  const codeOf = (p) => within(p.then(() => 'resolved', (e) => {
    assert.ok(e instanceof MediaRelayError);
    return e.code;
  }), 5000, 'get error');
  assert.equal(await codeOf(c.get('vod/missing.m4s')), 'not_found');
  assert.equal(await codeOf(c.get('live/cam1/init.mp4')), 'forbidden');
  assert.equal(await codeOf(c.get('vod/../etc/passwd')), 'bad_request');

  // many gets at once: each answer goes to its own request
  const keys = ['vod/movie/seg-0000000001.m4s', 'vod/empty.bin', 'vod/movie/seg-0000000001.m4s'];
  const all = await within(Promise.all(keys.map((k) => c.get(k))), 5000, 'parallel gets');
  assert.deepEqual(all.map((r) => r.meta.key), keys);
  assert.equal(c.connected, true, 'errors leave the connection open');
});

test('subscribe: init then segments in order with their meta; unsubscribe ends the iterator', async () => {
  const relay = await newRelay();
  const ticket = await relay.issue('live/cam1');
  const initBytes = new Uint8Array([0, 0, 0, 8, 0x66, 0x74, 0x79, 0x70]);
  relay.put(`${STREAM}/init.mp4`, initBytes);
  const c = client(relay, ticket);
  const seen = record(c, 'segment', 'unsubscribed', 'error');
  await within(c.connect(), 5000, 'connect');

  const sub = c.subscribe(STREAM, { from: 'start' });
  const { seq } = await within(sub.ready, 5000, 'subscribed');
  assert.equal(seq, 1);
  assert.throws(() => c.subscribe(STREAM), (e) => e.code === 'bad_request');

  const first = await within(sub.next(), 5000, 'init');
  assert.equal(first.value.seq, 0);
  assert.equal(first.value.init, true);
  assert.equal(first.value.key, `${STREAM}/init.mp4`);
  assert.ok(bytesEqual(first.value.payload, initBytes));

  const before = Date.now() * 1000;
  for (let s = 1; s <= 5; s++) relay.putSegment(STREAM, s, segmentBytes(s, 1000 + s));
  const segs = await take(sub, 5);
  assert.deepEqual(segs.map((s) => s.seq), [1, 2, 3, 4, 5]);
  for (const s of segs) {
    assert.equal(s.stream, STREAM);
    assert.equal(s.key, `${STREAM}/seg-${String(s.seq).padStart(10, '0')}.m4s`);
    assert.equal(s.size, 1000 + s.seq);
    assert.equal(s.meta.size, s.size);
    assert.equal(typeof s.ts, 'number');
    assert.ok(s.ts >= before - 5e6 && s.ts <= Date.now() * 1000 + 5e6, 'ts is unix microseconds');
    assert.ok(bytesEqual(s.payload, segmentBytes(s.seq, 1000 + s.seq)));
  }
  assert.equal(sub.lastSeq, 5);
  assert.equal(seen.segment.filter((s) => s.seq > 0).length, 5, 'segment events too');

  await within(c.unsubscribe(STREAM), 5000, 'unsubscribe');
  assert.equal(sub.ended, true);
  assert.deepEqual(await within(sub.next(), 1000, 'ended'), { value: undefined, done: true });
  relay.putSegment(STREAM, 6, segmentBytes(6));
  await sleep(400);
  assert.equal(seen.segment.filter((s) => s.seq === 6).length, 0, 'nothing after unsubscribe');
  assert.deepEqual(seen.error, []);

  // subscribe again (from a number) and leave with `break`
  const again = c.subscribe(STREAM, { from: 6 });
  for await (const s of again) {
    if (s.seq === 6) break;
  }
  assert.equal(again.ended, true);
  await until(() => seen.unsubscribed.length >= 2, 3000, 'break unsubscribes');
  assert.equal(c.subscriptions.size, 0);
});

test('subscribe: live default waits for the next segment; forbidden stream fails the iterator', async () => {
  const relay = await newRelay();
  relay.putSegment(STREAM, 1, segmentBytes(1));
  relay.putSegment(STREAM, 2, segmentBytes(2));
  const ticket = await relay.issue('live/cam1');
  const c = client(relay, ticket);
  await within(c.connect(), 5000, 'connect');
  const sub = c.subscribe(STREAM);
  const { seq } = await within(sub.ready, 5000, 'subscribed');
  assert.ok(seq === 2 || seq === 3, `live starts at the newest complete segment (got ${seq})`);
  relay.putSegment(STREAM, 3, segmentBytes(3));
  const got = await take(sub, 1);
  assert.equal(got[0].seq, seq);

  const denied = c.subscribe('live/cam10');
  await assert.rejects(within(denied.ready, 5000, 'forbidden'), (e) => e.code === 'forbidden');
  await assert.rejects(within(denied.next(), 1000, 'iterator'), (e) => e.code === 'forbidden');
  assert.equal(c.connected, true);
});

test('subscribe from a number older than storage: segments from the oldest, the hole reported as a gap', async () => {
  const relay = await newRelay();
  for (const s of [3, 4, 5]) relay.putSegment('live/old', s, segmentBytes(s));
  const ticket = await relay.issue('*');
  const c = client(relay, ticket);
  const seen = record(c, 'skipped');
  await within(c.connect(), 5000, 'connect');
  const sub = c.subscribe('live/old', { from: 1 });
  await within(sub.ready, 5000, 'subscribed'); // the relay answers seq 1 here (see the report), not 3
  const got = await take(sub, 3);
  assert.deepEqual(got.map((s) => s.seq), [3, 4, 5]);
  assert.deepEqual(seen.skipped, [{ stream: 'live/old', from: 1, to: 2, gap: true }]);
});

test('refresh: new ticket replaces the old one; bad tickets reject; narrower scope ends streams', async () => {
  const relay = await newRelay();
  const t1 = await relay.issue('*', 'u');
  const c = client(relay, t1);
  const seen = record(c, 'refreshed', 'close', 'closing', 'unsubscribed');
  await within(c.connect(), 5000, 'connect');
  const sub = c.subscribe(STREAM, { from: 'start' });
  await within(sub.ready, 5000, 'subscribed');

  await assert.rejects(within(c.refresh('bogus-ticket'), 5000, 'refresh bogus'), (e) => e.code === 'ticket_invalid');
  const other = await relay.issue('*', 'someone-else');
  await assert.rejects(within(c.refresh(other), 5000, 'refresh other uid'), (e) => e.code === 'forbidden');
  assert.equal(c.ticket, t1, 'old ticket stays after a failed refresh');

  const t2 = await relay.issue('*', 'u', '2h');
  const r = await within(c.refresh(t2), 5000, 'refresh');
  assert.ok(!Number.isNaN(Date.parse(r.expiresAt)), `expiresAt is RFC 3339: ${r.expiresAt}`);
  assert.equal(c.ticket, t2);
  assert.equal(seen.refreshed.length, 1);

  // the old ticket no longer matters for this connection
  relay.revoke(t1);
  await sleep(2500);
  assert.equal(seen.close.length, 0, 'revoking the replaced ticket does not close the connection');
  relay.putSegment(STREAM, 1, segmentBytes(1));
  assert.equal((await take(sub, 1))[0].seq, 1);

  // a narrower ticket ends the streams it does not cover
  const t3 = await relay.issue('live/cam2', 'u');
  await within(c.refresh(t3), 5000, 'refresh narrower');
  await assert.rejects(within(sub.next(), 5000, 'forbidden end'), (e) => e.code === 'forbidden');
  assert.deepEqual(seen.unsubscribed.map((u) => [u.stream, u.reason]), [[STREAM, 'forbidden']]);
});

test('reconnect: relay killed and restarted on the same port; resumes from lastSeq+1 with nothing missing', async () => {
  const relay = await newRelay();
  const ticket = await relay.issue('live/cam1');
  relay.put(`${STREAM}/init.mp4`, new Uint8Array([1, 2, 3]));
  const sent = [];
  const c = client(relay, ticket, { WebSocket: recordingSocket(sent) });
  const seen = record(c, 'open', 'close', 'reconnecting', 'skipped', 'segment');
  await within(c.connect(), 5000, 'connect');
  const sub = c.subscribe(STREAM, { from: 'start' });
  await within(sub.ready, 5000, 'subscribed');
  for (let s = 1; s <= 3; s++) relay.putSegment(STREAM, s, segmentBytes(s));
  const all = await take(sub, 3);

  const port = relay.port;
  await relay.stop('SIGKILL');
  await until(() => seen.close.length >= 1, 5000, 'close seen');
  assert.equal(seen.close[0].willReconnect, true);
  // segments written while the relay is down
  for (let s = 4; s <= 6; s++) relay.putSegment(STREAM, s, segmentBytes(s));
  await sleep(300); // let a few reconnect attempts fail
  await until(async () => {
    try { await relay.start(port); return true; } catch { await sleep(100); return false; }
  }, 15000, 'relay restart on the same port');
  await until(() => seen.open.length >= 2, 10000, 'reconnected');
  assert.equal(seen.open[1].reconnected, true);
  assert.ok(seen.reconnecting.length >= 1);
  for (let s = 7; s <= 8; s++) relay.putSegment(STREAM, s, segmentBytes(s));
  all.push(...(await take(sub, 5)));
  assert.deepEqual(all.map((s) => s.seq), [1, 2, 3, 4, 5, 6, 7, 8], 'in order, nothing missing, no duplicates');
  for (const s of all) assert.ok(bytesEqual(s.payload, segmentBytes(s.seq)));
  assert.deepEqual(seen.skipped, []);
  const subs = sent.filter((m) => m.op === 'subscribe');
  assert.equal(subs.length, 2);
  assert.equal(subs[0].from, 'start');
  assert.equal(subs[1].from, 4, 'resubscribed from lastSeq + 1');
  // the relay sends the init segment again after the resubscribe; no media segment twice
  const media = seen.segment.filter((s) => s.seq > 0).map((s) => s.seq);
  assert.deepEqual(media, [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(seen.segment.filter((s) => s.seq === 0).length, 2);

  // backoff delays grow and stay within maxDelay
  const delays = seen.reconnecting.map((r) => r.delay);
  for (const d of delays) assert.ok(d >= 25 && d <= 400, `delay ${d}`);
});

test('gets in flight during a reconnect are sent again', async () => {
  const relay = await newRelay();
  relay.put('vod/a.bin', segmentBytes(9, 5000));
  const ticket = await relay.issue('*');
  const c = client(relay, ticket);
  await within(c.connect(), 5000, 'connect');
  const port = relay.port;
  await relay.stop('SIGKILL');
  await until(() => c.state === 'reconnecting', 5000, 'reconnecting');
  const pending = c.get('vod/a.bin', { timeout: 15000 });
  await until(async () => {
    try { await relay.start(port); return true; } catch { await sleep(100); return false; }
  }, 15000, 'relay restart');
  const { payload } = await within(pending, 15000, 'get after reconnect');
  assert.ok(bytesEqual(payload, segmentBytes(9, 5000)));
});

test('revocation: closing then 4401, no reconnect without onTicketExpired', async () => {
  const relay = await newRelay();
  const ticket = await relay.issue('*');
  const c = client(relay, ticket);
  const seen = record(c, 'closing', 'close', 'reconnecting', 'open');
  await within(c.connect(), 5000, 'connect');
  const sub = c.subscribe(STREAM, { from: 'start' });
  await within(sub.ready, 5000, 'subscribed');
  const t0 = Date.now();
  relay.revoke(ticket);
  await until(() => seen.close.length >= 1, 5000, 'close after revoke');
  assert.ok(Date.now() - t0 < 3000, 'closed within the 2 s the protocol allows (+ slack)');
  assert.deepEqual(seen.closing, [{ reason: 'ticket_revoked' }]);
  assert.equal(seen.close[0].code, 4401);
  assert.equal(seen.close[0].closingReason, 'ticket_revoked');
  assert.equal(seen.close[0].willReconnect, false);
  assert.equal(c.state, 'closed');
  await assert.rejects(within(sub.next(), 1000, 'iterator'), (e) => e.code === 'ticket_revoked' && e.closeCode === 4401);
  await sleep(800);
  assert.equal(seen.reconnecting.length, 0, 'no reconnect');
  assert.equal(seen.open.length, 1);
  await assert.rejects(c.get('vod/x'), (e) => e.code === 'closed');
});

test('revocation with onTicketExpired: reconnects with the new ticket and resumes', async () => {
  const relay = await newRelay();
  const t1 = await relay.issue('*');
  const t2 = await relay.issue('*');
  const reasons = [];
  const c = client(relay, t1, {
    onTicketExpired: async (reason) => {
      reasons.push(reason);
      return t2;
    },
  });
  const seen = record(c, 'closing', 'close', 'open');
  await within(c.connect(), 5000, 'connect');
  const sub = c.subscribe(STREAM, { from: 'start' });
  await within(sub.ready, 5000, 'subscribed');
  relay.putSegment(STREAM, 1, segmentBytes(1));
  const got = await take(sub, 1);
  relay.revoke(t1);
  await until(() => seen.open.length >= 2, 8000, 'reconnect with the new ticket');
  assert.deepEqual(reasons, ['ticket_revoked']);
  assert.equal(c.ticket, t2);
  assert.equal(seen.close[0].code, 4401);
  assert.equal(seen.close[0].willReconnect, true);
  relay.putSegment(STREAM, 2, segmentBytes(2));
  got.push(...(await take(sub, 1)));
  assert.deepEqual(got.map((s) => s.seq), [1, 2]);
});

test('first connect with a bad ticket rejects (no retry loop)', async () => {
  const relay = await newRelay();
  const c = client(relay, 'not-a-ticket');
  const seen = record(c, 'reconnecting');
  await assert.rejects(within(c.connect(), 5000, 'connect'), (e) => e.code === 'connect_failed');
  assert.equal(c.state, 'closed');
  assert.equal(seen.reconnecting.length, 0);
});

test('expiring: autoRefresh gets a new ticket from onTicketExpired and the connection outlives the old one', async () => {
  const relay = await newRelay({ MEDIARELAY_EXPIRING_NOTICE: '3s' });
  const short = await relay.issue('*', 'u', '4s');
  const long = await relay.issue('*', 'u', '1h');
  const asked = [];
  const c = client(relay, short, {
    autoRefresh: true,
    onTicketExpired: (reason) => { asked.push(reason); return long; },
  });
  const seen = record(c, 'expiring', 'refreshed', 'close', 'closing');
  await within(c.connect(), 5000, 'connect');
  await until(() => seen.refreshed.length === 1, 5000, 'expiring + refresh');
  assert.equal(seen.expiring.length, 1);
  assert.ok(!Number.isNaN(Date.parse(seen.expiring[0].expiresAt)));
  assert.deepEqual(asked, ['expiring']);
  assert.equal(c.ticket, long);
  await sleep(4500); // past the short ticket's expiry
  assert.deepEqual(seen.close, []);
  assert.equal(c.connected, true);
});

test('expiry without refresh: closing ticket_expired, 4401, no reconnect', async () => {
  const relay = await newRelay({ MEDIARELAY_EXPIRING_NOTICE: '1s' });
  const short = await relay.issue('*', 'u', '2s');
  const c = client(relay, short);
  const seen = record(c, 'expiring', 'close', 'closing', 'reconnecting');
  await within(c.connect(), 5000, 'connect');
  await until(() => seen.close.length === 1, 6000, 'closed at expiry');
  assert.equal(seen.expiring.length, 1);
  assert.deepEqual(seen.closing, [{ reason: 'ticket_expired' }]);
  assert.equal(seen.close[0].code, 4401);
  assert.equal(seen.close[0].willReconnect, false);
  await sleep(500);
  assert.equal(seen.reconnecting.length, 0);
});

test('keepalive: relay pings are answered, the connection outlives idle_timeout', async () => {
  const relay = await newRelay({ MEDIARELAY_PING_INTERVAL: '100ms', MEDIARELAY_IDLE_TIMEOUT: '600ms' });
  const ticket = await relay.issue('*');
  const c = client(relay, ticket);
  const seen = record(c, 'close');
  await within(c.connect(), 5000, 'connect');
  const ws = c.ws;
  await sleep(1500);
  assert.deepEqual(seen.close, []);
  assert.ok(ws.pingsAnswered >= 3, `pings answered: ${ws.pingsAnswered}`);
});

// --- without a relay: a scripted fake WebSocket --------------------------------------------

class FakeSocket {
  static instances = [];
  static autoOpen = true;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.instances.push(this);
    if (FakeSocket.autoOpen) setTimeout(() => this.open(), 0);
  }
  open() {
    if (this.readyState !== 0) return;
    this.readyState = 1;
    this.onopen?.({});
  }
  send(d) { this.sent.push(JSON.parse(d)); }
  close(code = 1000) { this.serverClose(code); }
  serverText(m) { this.onmessage?.({ data: JSON.stringify(m) }); }
  serverMedia(meta, payload = new Uint8Array(1)) {
    const m = new TextEncoder().encode(JSON.stringify(meta));
    const b = new Uint8Array(4 + m.length + payload.length);
    new DataView(b.buffer).setUint32(0, m.length);
    b.set(m, 4);
    b.set(payload, 4 + m.length);
    this.onmessage?.({ data: b.buffer });
  }
  serverClose(code, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }
}

test('fake socket: skipped moves the resume point; backoff grows with jitter inside bounds', async () => {
  FakeSocket.instances = [];
  let r = 0;
  const rand = [0, 1, 0.5, 0, 1, 0, 1];
  const c = new MediaRelayClient('ws://relay.invalid/ws?x=1', {
    ticket: 'a b&c', WebSocket: FakeSocket, initialDelay: 10, maxDelay: 40, random: () => rand[r++ % rand.length],
  });
  const seen = record(c, 'skipped', 'reconnecting', 'open');
  await c.connect();
  const ws = FakeSocket.instances[0];
  assert.equal(new URL(ws.url).searchParams.get('ticket'), 'a b&c');
  assert.equal(new URL(ws.url).searchParams.get('x'), '1');
  const sub = c.subscribe('live/a', { from: 'start' });
  assert.deepEqual(ws.sent[0], { op: 'subscribe', id: ws.sent[0].id, stream: 'live/a', from: 'start' });
  ws.serverText({ op: 'subscribed', id: ws.sent[0].id, stream: 'live/a', seq: 1 });
  ws.serverMedia({ stream: 'live/a', seq: 1, key: 'k1', size: 1, ts: 1 });
  ws.serverText({ op: 'skipped', stream: 'live/a', from: 2, to: 7 });
  ws.serverMedia({ stream: 'live/a', seq: 8, key: 'k8', size: 1, ts: 2 });
  ws.serverText({ op: 'skipped', stream: 'live/a', from: 9, to: 12 });
  assert.deepEqual(seen.skipped, [{ stream: 'live/a', from: 2, to: 7 }, { stream: 'live/a', from: 9, to: 12 }]);
  assert.equal(sub.lastSeq, 8);
  assert.equal(sub.nextSeq, 13);

  // two failed attempts, then success
  FakeSocket.autoOpen = false;
  ws.serverClose(1006);
  await until(() => FakeSocket.instances.length === 2, 1000, 'attempt 1');
  FakeSocket.instances[1].serverClose(1006);
  await until(() => FakeSocket.instances.length === 3, 1000, 'attempt 2');
  FakeSocket.instances[2].serverClose(1006);
  await until(() => FakeSocket.instances.length === 4, 1000, 'attempt 3');
  FakeSocket.instances[3].open();
  FakeSocket.autoOpen = true;
  await until(() => seen.open.length === 2, 1000, 'reopened');
  // base 10, 20, 40 (capped); delay = base/2 + base/2 * random
  assert.deepEqual(seen.reconnecting.map((x) => x.delay), [5, 20, 30]);
  const ws4 = FakeSocket.instances.at(-1);
  const resub = ws4.sent.find((m) => m.op === 'subscribe');
  assert.equal(resub.from, 13, 'resume after the skipped range');
  // the relay no longer has 13..19: reported as a local skipped event
  ws4.serverText({ op: 'subscribed', id: resub.id, stream: 'live/a', seq: 20 });
  assert.deepEqual(seen.skipped.at(-1), { stream: 'live/a', from: 13, to: 19, gap: true });
  // a duplicate older segment is dropped, the next one delivered
  ws4.serverMedia({ stream: 'live/a', seq: 8, key: 'k8', size: 1 });
  ws4.serverMedia({ stream: 'live/a', seq: 20, key: 'k20', size: 1 });
  const seqs = [];
  for (let i = 0; i < 3; i++) seqs.push((await sub.next()).value.seq);
  assert.deepEqual(seqs, [1, 8, 20]);
  c.close();
  assert.deepEqual(await sub.next(), { value: undefined, done: true });
});

test('fake socket: no reconnect after protocol-error closes; maxRetries gives up', async () => {
  FakeSocket.instances = [];
  const c = new MediaRelayClient('ws://relay.invalid/ws', { ticket: 't', WebSocket: FakeSocket, initialDelay: 1, maxRetries: 2 });
  const seen = record(c, 'close', 'reconnecting');
  await c.connect();
  FakeSocket.instances[0].serverClose(1003);
  await until(() => seen.close.length === 1, 1000, 'close');
  assert.equal(seen.close[0].willReconnect, false);
  assert.equal(c.state, 'closed');

  FakeSocket.instances = [];
  const d = new MediaRelayClient('ws://relay.invalid/ws', { ticket: 't', WebSocket: FakeSocket, initialDelay: 1, maxRetries: 2 });
  const seen2 = record(d, 'close', 'reconnecting');
  await d.connect();
  const fail = () => FakeSocket.instances.at(-1).serverClose(1006);
  FakeSocket.autoOpen = false;
  FakeSocket.instances[0].serverClose(1001);
  await until(() => FakeSocket.instances.length === 2, 1000, 'attempt 1');
  fail();
  await until(() => FakeSocket.instances.length === 3, 1000, 'attempt 2');
  fail();
  await until(() => d.state === 'closed', 1000, 'gave up');
  assert.equal(seen2.reconnecting.length, 2);
  assert.equal(seen2.close.at(-1).willReconnect, false);
  FakeSocket.autoOpen = true;
});
