// End-to-end test of the player page (clients/player) in Chromium against the real relay:
// live fMP4 from ffmpeg (scripts/make-test-media.sh --live) -> storage -> relay -> WebSocket ->
// clients/js/mediarelay.js -> Media Source Extensions.
//
//   cd tests/browser && npm install && cd ../.. && node --test tests/browser/
//
// Environment:
//   MEDIARELAY_BIN   the relay binary (default target/debug/mediarelay in the repository)
//   CHROMIUM         the browser (default /usr/bin/chromium)
//   PLAYER_STATIC=1  serve the page from a small static server here instead of the relay's own
//                    GET /player (the page then gets relay=ws://<relay>/ws)
//   SCREENSHOT=1     copy the screenshot taken while playing to docs/img/player.png
//   KEEP_TMP=1       keep the temporary directory (media, tickets, logs, screenshot)

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { once } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import crypto from 'node:crypto';

const execFileP = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const BIN = path.resolve(root, process.env.MEDIARELAY_BIN || 'target/debug/mediarelay');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const STATIC = process.env.PLAYER_STATIC === '1';
const STREAM = 'live/demo';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, { timeout = 10000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last instanceof Error ? `: ${last.message}` : ''}`);
    }
    await sleep(interval);
  }
}

const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

// ---------------------------------------------------------------------------------------
// Child processes

const children = new Set();

/** Start the relay; resolves with {proc, listen, admin, lines} once it logs `mediarelay serving`. */
async function startRelay({ listen = '127.0.0.1:0', storage, tickets, logFile }) {
  const proc = spawn(BIN, ['serve', '--listen', listen, '--admin', '127.0.0.1:0', '--storage', storage, '--tickets', tickets], {
    env: { ...process.env, MEDIARELAY_POLL_INTERVAL: '100ms' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(proc);
  proc.on('exit', () => children.delete(proc));
  const out = fs.createWriteStream(logFile, { flags: 'a' });
  const lines = [];
  let resolveServing, rejectServing;
  const serving = new Promise((res, rej) => { resolveServing = res; rejectServing = rej; });
  for (const s of [proc.stdout, proc.stderr]) {
    let buf = '';
    s.on('data', (d) => {
      out.write(d);
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        lines.push(line);
        if (lines.length > 500) lines.shift();
        const m = /mediarelay serving\b.*\blisten=(\S+).*\badmin=(\S+)/.exec(line.replace(/\x1b\[[0-9;]*m/g, ''));
        if (m) resolveServing({ listen: m[1], admin: m[2] });
      }
    });
  }
  proc.on('exit', (code, sig) => rejectServing(new Error(`relay exited (${code ?? sig}) before serving:\n${lines.slice(-20).join('\n')}`)));
  proc.on('error', rejectServing);
  const timer = setTimeout(() => rejectServing(new Error(`relay did not log "mediarelay serving" within 15 s:\n${lines.slice(-20).join('\n')}`)), 15000);
  try {
    const addrs = await serving;
    return { proc, lines, ...addrs };
  } finally {
    clearTimeout(timer);
  }
}

async function stopProcess(proc, { group = false, timeout = 10000, signal = 'SIGTERM' } = {}) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = once(proc, 'exit');
  const kill = (sig) => {
    try {
      if (group) process.kill(-proc.pid, sig);
      else proc.kill(sig);
    } catch (e) { /* gone */ }
  };
  kill(signal);
  const t = setTimeout(() => kill('SIGKILL'), timeout);
  await exited;
  clearTimeout(t);
}

/** One upgrade attempt: the HTTP status (101 when the relay accepts the ticket). */
function upgradeStatus(addr, ticket) {
  return new Promise((resolve, reject) => {
    const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
    const req = http.request({
      host, port, path: `/ws?ticket=${encodeURIComponent(ticket)}`,
      headers: {
        Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': crypto.randomBytes(16).toString('base64'),
      },
      timeout: 3000,
    });
    req.on('upgrade', (res, socket) => { socket.destroy(); resolve(res.statusCode); });
    req.on('response', (res) => { res.resume(); resolve(res.statusCode); });
    req.on('timeout', () => req.destroy(new Error('upgrade timed out')));
    req.on('error', reject);
    req.end();
  });
}

function httpGet(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: 3000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on('timeout', () => req.destroy(new Error('GET timed out')));
    req.on('error', reject);
  });
}

/** PLAYER_STATIC=1: clients/player/* and clients/js/mediarelay.js under /player/. */
async function startStaticServer() {
  const files = {
    '/player': ['clients/player/index.html', 'text/html; charset=utf-8'],
    '/player/': ['clients/player/index.html', 'text/html; charset=utf-8'],
    '/player/index.html': ['clients/player/index.html', 'text/html; charset=utf-8'],
    '/player/player.js': ['clients/player/player.js', 'text/javascript; charset=utf-8'],
    '/player/mediarelay.js': ['clients/js/mediarelay.js', 'text/javascript; charset=utf-8'],
  };
  const server = http.createServer(async (req, res) => {
    const f = files[new URL(req.url, 'http://x').pathname];
    if (!f || req.method !== 'GET') {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not_found"}');
      return;
    }
    try {
      const body = await fsp.readFile(path.join(root, f[0]));
      res.writeHead(200, { 'content-type': f[1], 'cache-control': 'no-store' }).end(body);
    } catch (e) {
      res.writeHead(500).end(String(e));
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

// ---------------------------------------------------------------------------------------

describe('player page (Chromium, MSE) against the relay', { timeout: 180000 }, () => {
  let tmp, storage, tickets, relayLog;
  let relay, media, staticServer, browser, page, ticket, pageUrl;
  let chromium;
  const pageLog = [];

  const state = () => page.evaluate(() => ({ ...window.playerState, currentTime: document.getElementById('video').currentTime, paused: document.getElementById('video').paused }));

  async function diagnostics(e) {
    const lines = [`--- ${e && e.message}`];
    try { lines.push(`playerState: ${JSON.stringify(await state())}`); } catch (x) { /* no page */ }
    lines.push('--- page console (last 30):', ...pageLog.slice(-30));
    if (relay) lines.push('--- relay log (last 30):', ...relay.lines.slice(-30));
    console.error(lines.join('\n'));
  }

  /** Wait until playback is going and currentTime advances by `seconds` within `within` ms. */
  async function expectAdvance(seconds, within, what) {
    const start = (await state()).currentTime;
    const started = Date.now();
    await waitFor(`${what}: currentTime to advance by ${seconds} s (from ${start.toFixed(2)})`, async () => {
      const s = await state();
      assert.equal(s.error, null, `player error: ${s.error}`);
      return s.currentTime - start >= seconds;
    }, { timeout: within, interval: 200 });
    const s = await state();
    log(`${what}: currentTime ${start.toFixed(2)} -> ${s.currentTime.toFixed(2)} in ${((Date.now() - started) / 1000).toFixed(1)} s; lag ${s.lastLagMs} ms; received ${s.received}, skipped ${s.skipped}`);
    return s;
  }

  before(async () => {
    assert.ok(fs.existsSync(BIN), `relay binary ${BIN} not found (build it, or set MEDIARELAY_BIN)`);
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found (apt-get install chromium, or set CHROMIUM)`);
    ({ chromium } = await import('playwright-core'));
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'mediarelay-player-'));
    storage = path.join(tmp, 'media');
    tickets = path.join(tmp, 'tickets.json');
    relayLog = path.join(tmp, 'relay.log');
    await fsp.mkdir(storage);
    log(`tmp ${tmp}, relay ${BIN}, page from ${STATIC ? 'a static server (PLAYER_STATIC=1)' : 'the relay (GET /player)'}`);

    // A live stream: about one 1 s segment per second, until killed.
    media = spawn('bash', [path.join(root, 'scripts/make-test-media.sh'), '--live', storage, STREAM], {
      stdio: ['ignore', 'ignore', fs.openSync(path.join(tmp, 'media.log'), 'a')],
      detached: true, // its own process group: ffmpeg goes with it
    });
    children.add(media);
    media.on('exit', () => children.delete(media));
    await waitFor('the first live segments', () => fs.existsSync(path.join(storage, STREAM, 'init.mp4'))
      && fs.existsSync(path.join(storage, STREAM, 'seg-0000000002.m4s')), { timeout: 20000 });
    log('media: init.mp4 and 2 segments written');

    relay = await startRelay({ storage, tickets, logFile: relayLog });
    log(`relay serving listen=${relay.listen} admin=${relay.admin}`);

    ticket = (await execFileP(BIN, ['ticket', 'issue', '--tickets', tickets, '--uid', 'viewer', '--streams', STREAM, '--ttl', '1h'])).stdout.trim();
    assert.ok(ticket.length > 20, 'ticket issue printed a ticket');
    // The relay re-reads the tickets file on its own: poll until an upgrade with the ticket works.
    await waitFor('the relay to accept the new ticket', async () => (await upgradeStatus(relay.listen, ticket)) === 101,
      { timeout: 10000, interval: 250 });
    log('relay accepts the ticket');

    const q = `ticket=${encodeURIComponent(ticket)}&stream=${encodeURIComponent(STREAM)}`;
    if (STATIC) {
      staticServer = await startStaticServer();
      pageUrl = `http://127.0.0.1:${staticServer.address().port}/player?${q}&relay=${encodeURIComponent(`ws://${relay.listen}/ws`)}`;
    } else {
      pageUrl = `http://${relay.listen}/player?${q}`;
      const r = await httpGet(`http://${relay.listen}/player`);
      assert.equal(r.status, 200, `GET /player on the relay: ${r.status} ${r.body.slice(0, 200)} (PLAYER_STATIC=1 serves the page without the relay)`);
      assert.match(String(r.headers['content-type']), /^text\/html/, 'GET /player is HTML');
      for (const js of ['/player/player.js', '/player/mediarelay.js']) {
        const m = await httpGet(`http://${relay.listen}${js}`);
        assert.equal(m.status, 200, `GET ${js} on the relay: ${m.status}`);
        // browsers refuse module scripts without a JavaScript MIME type
        assert.match(String(m.headers['content-type']), /^(text|application)\/javascript\b/, `GET ${js} Content-Type`);
      }
      // The relay embeds the files when it is built: say so when it serves other bytes.
      for (const [url, file] of [['/player', 'clients/player/index.html'], ['/player/player.js', 'clients/player/player.js'],
        ['/player/mediarelay.js', 'clients/js/mediarelay.js']]) {
        const served = (await httpGet(`http://${relay.listen}${url}`)).body;
        if (served !== await fsp.readFile(path.join(root, file), 'utf8')) {
          log(`WARNING: the relay serves a different ${file} than the one on disk at ${url} (rebuild the relay)`);
        }
      }
    }

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--autoplay-policy=no-user-gesture-required', '--no-sandbox'],
      timeout: 30000,
    });
    page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
    page.setDefaultTimeout(15000);
    page.on('console', (m) => pageLog.push(`[${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => pageLog.push(`[pageerror] ${e.message}`));
  });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    if (staticServer) staticServer.close();
    for (const c of [...children]) await stopProcess(c, { group: c === media });
    if (tmp && process.env.KEEP_TMP !== '1') await fsp.rm(tmp, { recursive: true, force: true });
    else if (tmp) log(`kept ${tmp}`);
  });

  it('plays the live stream: currentTime advances, no MSE error, lag in the overlay', { timeout: 60000 }, async () => {
    try {
      const types = await page.evaluate(() => Object.fromEntries(['avc1.64001f', 'avc1.4d401e', 'vp09.00.10.08', 'av01.0.04M.08']
        .map((c) => [c, MediaSource.isTypeSupported(`video/mp4; codecs="${c}"`)])));
      log(`MediaSource.isTypeSupported: ${JSON.stringify(types)}`);
      const opened = Date.now();
      await page.goto(pageUrl, { waitUntil: 'load' });
      await waitFor('playerState.state === "playing"', async () => {
        const s = await state();
        assert.equal(s.error, null, `player error: ${s.error}`);
        return s.state === 'playing' && !s.paused;
      }, { timeout: 15000, interval: 100 });
      log(`playing ${Date.now() - opened} ms after the page was opened; codec ${(await state()).codec}`);
      await expectAdvance(4, 8000, 'first play');
      const s = await state();
      assert.equal(s.error, null);
      assert.ok(s.received >= 3, `received ${s.received} segments`);
      assert.equal(typeof s.lastLagMs, 'number');
      const stats = await page.textContent('#stats');
      assert.match(stats, /lag\s+\d+ ms/, `overlay shows a lag: ${stats}`);
      assert.match(stats, /bitrate\s+[1-9]\d* kbit\/s/, `overlay shows a bitrate: ${stats}`);
      assert.equal(await page.isVisible('#message'), false, 'no message while playing');

      const shot = path.join(tmp, 'player.png');
      await page.screenshot({ path: shot });
      if (process.env.SCREENSHOT === '1') {
        await fsp.mkdir(path.join(root, 'docs/img'), { recursive: true });
        await fsp.copyFile(shot, path.join(root, 'docs/img/player.png'));
        log('screenshot written to docs/img/player.png');
      }
    } catch (e) {
      await diagnostics(e);
      throw e;
    }
  });

  for (const [how, signal] of [['drains (SIGTERM)', 'SIGTERM'], ['crashes (SIGKILL)', 'SIGKILL']]) {
    it(`resumes after the relay ${how} and restarts on the same port`, { timeout: 60000 }, async () => {
      try {
        const before = await state();
        const listen = relay.listen;
        const killedAt = Date.now();
        await stopProcess(relay.proc, { signal });
        log(`relay stopped (${signal}) in ${Date.now() - killedAt} ms (player: ${(await state()).state})`);
        await sleep(500);
        relay = await startRelay({ listen, storage, tickets, logFile: relayLog });
        assert.equal(relay.listen, listen, 'the relay listens on the same address again');
        log(`relay restarted on ${relay.listen}, ${Date.now() - killedAt} ms after the stop`);
        await waitFor('the player to reconnect', async () => {
          const s = await state();
          assert.equal(s.error, null, `player error: ${s.error}`);
          return s.reconnects > before.reconnects && s.state === 'playing';
        }, { timeout: 15000, interval: 100 });
        log(`reconnected ${Date.now() - killedAt} ms after the stop; close codes the player saw: ${JSON.stringify((await state()).closes)}`);
        const s = await expectAdvance(3, 10000, `after the restart (${signal})`);
        assert.ok(s.received > before.received, 'segments arrive again');
        assert.ok(s.lastSeq > before.lastSeq, 'the stream continues with later segments');
      } catch (e) {
        await diagnostics(e);
        throw e;
      }
    });
  }

  it('stops with a visible message when the ticket is revoked', { timeout: 30000 }, async () => {
    try {
      const revokedAt = Date.now();
      await execFileP(BIN, ['ticket', 'revoke', '--tickets', tickets, ticket]);
      await waitFor('#message to show the revocation', async () => {
        if (!(await page.isVisible('#message'))) return false;
        return /revoked/i.test(await page.textContent('#message'));
      }, { timeout: 10000, interval: 100 });
      const text = await page.textContent('#message');
      let s = await state();
      log(`"${text}" ${Date.now() - revokedAt} ms after the revoke`);
      await waitFor('close 4401 (ticket_revoked)', async () => {
        const c = (await state()).lastClose;
        return c && c.code === 4401 && c.reason === 'ticket_revoked';
      }, { timeout: 3000, interval: 100 });
      s = await state();
      assert.equal(s.state, 'stopped');
      assert.equal(s.error, null, 'a revocation is not an MSE error');
      const t1 = s.currentTime;
      await sleep(1500);
      s = await state();
      assert.ok(s.paused, 'the video is paused');
      assert.equal(s.currentTime, t1, 'playback does not go on');
      assert.equal(s.connection, 'closed', 'the client does not reconnect after 4401');
    } catch (e) {
      await diagnostics(e);
      throw e;
    }
  });

  it('asks for ticket and stream without them, and says so when a ticket is refused', { timeout: 30000 }, async () => {
    try {
      const base = pageUrl.slice(0, pageUrl.indexOf('?'));
      const relayParam = STATIC ? `&relay=${encodeURIComponent(`ws://${relay.listen}/ws`)}` : '';
      await page.goto(base, { waitUntil: 'load' });
      assert.equal(await page.isVisible('#setup'), true, 'the form is shown');
      assert.equal((await state()).state, 'idle');

      const started = Date.now();
      await page.goto(`${base}?ticket=not-a-ticket&stream=${encodeURIComponent(STREAM)}${relayParam}`, { waitUntil: 'load' });
      await waitFor('#message to say the connection failed', async () => (await page.isVisible('#message'))
        && /could not connect/i.test(await page.textContent('#message')), { timeout: 15000, interval: 200 });
      const s = await state();
      log(`unknown ticket: "${s.message}" after ${Date.now() - started} ms`);
      assert.equal(s.state, 'failed');
      assert.equal(s.received, 0);
    } catch (e) {
      await diagnostics(e);
      throw e;
    }
  });
});
