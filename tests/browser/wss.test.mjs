// A real browser over wss://: headless Chromium (Debian's) opens the relay's TLS listener
// (a certificate from a CA made here with openssl; certificate errors are ignored for this
// browser only), loads the client module from https://.../player/mediarelay.js, gets an
// object and three live segments, byte-identical to what storage holds.
//
//   node --test tests/browser/wss.test.mjs      (MEDIARELAY_BIN, CHROMIUM as in player.test.mjs)

import { after, before, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const BIN = path.resolve(root, process.env.MEDIARELAY_BIN || 'target/debug/mediarelay');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

let dir, relay, browser, addr, ticket;

function put(key, bytes) {
  const file = path.join(dir, 'media', key);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(`${file}.tmp`, bytes);
  fs.renameSync(`${file}.tmp`, file);
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mediarelay-wss-'));
  const ssl = (args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  ssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=mediarelay test CA']);
  ssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', 'key.pem', '-out', 'req.csr', '-subj', '/CN=localhost']);
  fs.writeFileSync(path.join(dir, 'ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  ssl(['x509', '-req', '-in', 'req.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'cert.pem', '-days', '2', '-extfile', 'ext']);
  fs.mkdirSync(path.join(dir, 'media'));
  const tickets = path.join(dir, 'tickets.json');
  ticket = execFileSync(BIN, ['ticket', 'issue', '--tickets', tickets, '--uid', 'browser',
    '--streams', '*', '--ttl', '1h']).toString().trim();
  relay = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0',
    '--storage', path.join(dir, 'media'), '--tickets', tickets,
    '--tls-cert', path.join(dir, 'cert.pem'), '--tls-key', path.join(dir, 'key.pem')], {
    env: { ...process.env, MEDIARELAY_POLL_INTERVAL: '50ms', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  addr = await new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`relay did not start: ${text}`)), 20000);
    for (const s of [relay.stdout, relay.stderr]) {
      s.on('data', (d) => {
        text += d;
        const m = /mediarelay serving.*listen=(\S+)/.exec(text);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
    }
    relay.on('exit', (code) => reject(new Error(`relay exited ${code}: ${text}`)));
  });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox'],
  });
});

after(async () => {
  await browser?.close();
  relay?.kill('SIGTERM');
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

it('gets an object and three live segments over wss:// in Chromium', async () => {
  const object = crypto.randomBytes(200_000);
  put('vod/a.bin', object);
  const segments = [1, 2, 3].map(() => crypto.randomBytes(50_000));
  // Certificate errors ignored for this context only (the test CA is not the browser's).
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const port = addr.split(':').pop();
  await page.goto(`https://localhost:${port}/player/`);
  const started = page.evaluate(async ({ ticket, port }) => {
    const m = await import('/player/mediarelay.js');
    const client = await m.connect(`wss://localhost:${port}/ws`, { ticket, reconnect: false });
    const hex = (u8) => Array.from(u8, (b) => b.toString(16).padStart(2, '0')).join('');
    const got = await client.get('vod/a.bin');
    const sub = client.subscribe('live/wss', { from: 1 });
    await sub.ready;
    window.segmentsSeen = [];
    for await (const seg of sub) {
      if (seg.seq === 0) continue;
      window.segmentsSeen.push({ seq: seg.seq, hex: hex(seg.payload) });
      if (window.segmentsSeen.length === 3) break;
    }
    client.close();
    return { object: hex(got.payload), segments: window.segmentsSeen };
  }, { ticket, port });
  // Segments appear while the page is subscribed.
  for (const [i, s] of segments.entries()) {
    await new Promise((r) => setTimeout(r, 300));
    put(`live/wss/seg-${String(i + 1).padStart(10, '0')}.m4s`, s);
  }
  const result = await started;
  assert.equal(result.object, object.toString('hex'));
  assert.deepEqual(result.segments.map((s) => s.seq), [1, 2, 3]);
  for (const [i, s] of result.segments.entries()) {
    assert.equal(s.hex, segments[i].toString('hex'), `segment ${i + 1}`);
  }
  await context.close();
});
