// Test helper: runs the real relay binary on loopback and writes media into its storage.
// Not a test file itself (no tests are declared here).

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.MEDIARELAY_BIN || path.resolve(here, '../../../target/debug/mediarelay');

const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;
const READY = /mediarelay serving.*listen=(\S+):(\d+).*admin=(\S+):(\d+)/;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rejects after ms with a message (to bound awaits in tests). */
export function within(promise, ms, what = 'operation') {
  let t;
  return Promise.race([
    promise,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`${what} timed out after ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

/** Wait until cond() is truthy (polling), bounded. */
export async function until(cond, ms = 5000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what} not met within ${ms} ms`);
    await sleep(20);
  }
}

function httpGet(port, p) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, timeout: 2000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

export class Relay {
  /** @param {Record<string,string>} [env] extra environment (e.g. MEDIARELAY_EXPIRING_NOTICE) */
  constructor(env = {}) {
    this.env = env;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mr-js-'));
    this.media = path.join(this.dir, 'media');
    this.tickets = path.join(this.dir, 'tickets.json');
    fs.mkdirSync(this.media, { recursive: true });
    this.proc = null;
    this.port = 0;
    this.adminPort = 0;
    this._n = 0;
  }

  /** Start the relay; port 0 picks a free one. Resolves when it logged its addresses and is ready. */
  async start(port = 0) {
    const log = [];
    const proc = spawn(BIN, [
      'serve', '--listen', `127.0.0.1:${port}`, '--admin', '127.0.0.1:0',
      '--storage', this.media, '--tickets', this.tickets, '--workers', '2', '--log-format', 'text',
    ], { env: { ...process.env, MEDIARELAY_POLL_INTERVAL: '50ms', NO_COLOR: '1', ...this.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    this.log = log;
    const ready = new Promise((resolve, reject) => {
      let text = '';
      const onData = (chunk) => {
        const s = chunk.toString('utf8');
        log.push(s);
        text += s.replace(ANSI, '');
        const m = READY.exec(text);
        if (m) resolve({ port: Number(m[2]), admin: Number(m[4]) });
      };
      proc.stdout.on('data', onData);
      proc.stderr.on('data', onData);
      proc.on('exit', (code, sig) => reject(new Error(`relay exited (${code ?? sig}) before ready:\n${text}`)));
      proc.on('error', reject);
    });
    const { port: p, admin } = await within(ready, 15000, 'relay start');
    this.port = p;
    this.adminPort = admin;
    await until(async () => {
      try {
        return (await httpGet(admin, '/readyz')).status === 200;
      } catch {
        return false;
      }
    }, 10000, 'relay /readyz');
    return this;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  async snapshotEntries() {
    const { body } = await httpGet(this.adminPort, '/metrics');
    for (const line of body.split('\n')) {
      if (line.startsWith('mediarelay_ticket_snapshot_entries ')) return Number(line.split(/\s+/)[1]);
    }
    return 0;
  }

  /** Issue a ticket; when the relay runs, wait until its snapshot holds it. */
  async issue(streams = '*', uid = 'u', ttl = '1h') {
    const before = this.proc ? await this.snapshotEntries() : 0;
    const t = execFileSync(BIN, ['ticket', 'issue', '--tickets', this.tickets, '--uid', uid,
      '--streams', streams, '--ttl', ttl], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    if (this.proc) await until(async () => (await this.snapshotEntries()) > before, 5000, 'ticket in snapshot');
    return t;
  }

  revoke(ticket) {
    execFileSync(BIN, ['ticket', 'revoke', '--tickets', this.tickets, '--', ticket], { encoding: 'utf8', stdio: 'pipe' });
  }

  /** Write an object atomically (temporary name, then rename). */
  put(key, data) {
    const file = path.join(this.media, key);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = path.join(path.dirname(file), `.upload-${process.pid}-${this._n++}.tmp`);
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  }

  putSegment(stream, seq, data, ext = 'm4s') {
    this.put(`${stream}/seg-${String(seq).padStart(10, '0')}.${ext}`, data);
  }

  /** Stop the relay (SIGKILL by default: an abrupt crash). */
  async stop(signal = 'SIGKILL') {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill(signal);
    try {
      await within(exited, 10000, 'relay exit');
    } catch {
      proc.kill('SIGKILL');
      await within(exited, 5000, 'relay exit after SIGKILL');
    }
  }

  async dispose() {
    await this.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Deterministic test bytes for a segment. */
export function segmentBytes(seq, size = 3000) {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = (seq * 31 + i) & 0xff;
  return b;
}
