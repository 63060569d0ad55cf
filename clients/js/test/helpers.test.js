// Pure helpers: parseMediaFrame and findCodec (no relay needed).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseMediaFrame, findCodec, MediaRelayError } from '../mediarelay.js';

function frame(meta, payload) {
  const m = new TextEncoder().encode(JSON.stringify(meta));
  const out = new Uint8Array(4 + m.length + payload.length);
  new DataView(out.buffer).setUint32(0, m.length, false);
  out.set(m, 4);
  out.set(payload, 4 + m.length);
  return out;
}

test('parseMediaFrame: meta and a payload view without copying', () => {
  const payload = new Uint8Array([1, 2, 3, 250, 251]);
  const bytes = frame({ stream: 'live/cam1', seq: 42, key: 'live/cam1/seg-0000000042.m4s', size: 5, ts: 1 }, payload);
  const { meta, payload: p } = parseMediaFrame(bytes.buffer);
  assert.deepEqual(meta, { stream: 'live/cam1', seq: 42, key: 'live/cam1/seg-0000000042.m4s', size: 5, ts: 1 });
  assert.deepEqual([...p], [...payload]);
  assert.equal(p.buffer, bytes.buffer, 'payload is a view over the received buffer');
  assert.equal(p.byteOffset, bytes.length - payload.length);
});

test('parseMediaFrame: works on a view with an offset, and an empty payload', () => {
  const inner = frame({ id: 7, key: 'k', size: 0 }, new Uint8Array(0));
  const big = new Uint8Array(inner.length + 10);
  big.set(inner, 5);
  const { meta, payload } = parseMediaFrame(big.subarray(5, 5 + inner.length));
  assert.deepEqual(meta, { id: 7, key: 'k', size: 0 });
  assert.equal(payload.byteLength, 0);
  assert.equal(payload.buffer, big.buffer);
});

test('parseMediaFrame: malformed frames throw bad_frame', () => {
  const bad = [
    new Uint8Array([0, 0, 0]),
    new Uint8Array([0, 0, 0, 9, 123]),
    (() => { const b = frame({}, new Uint8Array(1)); b[4] = 0x5b; return b; })(), // '[' -> not JSON
    frame([1, 2], new Uint8Array(0)), // JSON but not an object
    (() => { const b = new Uint8Array(6); b[3] = 2; b[4] = 0xff; b[5] = 0xfe; return b; })(), // not UTF-8
  ];
  for (const b of bad) {
    assert.throws(() => parseMediaFrame(b), (e) => e instanceof MediaRelayError && e.code === 'bad_frame');
  }
  assert.throws(() => parseMediaFrame('text'), (e) => e.code === 'bad_frame');
});

// --- a tiny hand-built fMP4 init segment -------------------------------------------------

function box(type, ...parts) {
  const body = parts.map((p) => (p instanceof Uint8Array ? p : new Uint8Array(p)));
  const size = 8 + body.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(size);
  new DataView(out.buffer).setUint32(0, size);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  let at = 8;
  for (const p of body) { out.set(p, at); at += p.length; }
  return out;
}

function visualSampleEntry(type, ...children) {
  const fields = new Uint8Array(78);
  fields[7] = 1; // data_reference_index
  new DataView(fields.buffer).setUint16(24, 640); // width
  new DataView(fields.buffer).setUint16(26, 360); // height
  return box(type, fields, ...children);
}

function init(entry, { extraTraks = [] } = {}) {
  const stsd = box('stsd', [0, 0, 0, 0, 0, 0, 0, 1], entry);
  const trak = box('trak', box('tkhd', new Uint8Array(84)),
    box('mdia', box('mdhd', new Uint8Array(24)), box('hdlr', new Uint8Array(25)),
      box('minf', box('vmhd', new Uint8Array(12)), box('stbl', stsd, box('stts', new Uint8Array(8))))));
  const ftyp = box('ftyp', [0x69, 0x73, 0x6f, 0x36, 0, 0, 0, 1]);
  const moov = box('moov', box('mvhd', new Uint8Array(100)), ...extraTraks, trak, box('mvex', box('trex', new Uint8Array(24))));
  const out = new Uint8Array(ftyp.length + moov.length);
  out.set(ftyp, 0);
  out.set(moov, ftyp.length);
  return out;
}

test('findCodec: avc1 from avcC profile/compat/level', () => {
  const avcC = box('avcC', [1, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0, 0]);
  const seg = init(visualSampleEntry('avc1', avcC, box('pasp', [0, 0, 0, 1, 0, 0, 0, 1])));
  assert.equal(findCodec(seg), 'avc1.64001f');
  assert.equal(findCodec(seg.buffer), 'avc1.64001f');
  const baseline = init(visualSampleEntry('avc3', box('avcC', [1, 0x42, 0xc0, 0x1e])));
  assert.equal(findCodec(baseline), 'avc3.42c01e');
});

test('findCodec: vp09 and av01', () => {
  const vpcC = box('vpcC', [1, 0, 0, 0, /* profile */ 0, /* level */ 31, /* bitDepth 8, 4:2:0 */ 0x82, 1, 1, 1, 0, 0]);
  assert.equal(findCodec(init(visualSampleEntry('vp09', vpcC))), 'vp09.00.31.08');
  // marker|version, profile 0 level 8, tier M, 8 bit
  const av1C = box('av1C', [0x81, 0x08, 0x0c, 0x00]);
  assert.equal(findCodec(init(visualSampleEntry('av01', av1C))), 'av01.0.08M.08');
  // profile 1, level 13, tier H, 10 bit
  const av1Chi = box('av1C', [0x81, (1 << 5) | 13, 0x80 | 0x40, 0x00]);
  assert.equal(findCodec(init(visualSampleEntry('av01', av1Chi))), 'av01.1.13H.10');
});

test('findCodec: skips unknown tracks; null when nothing is recognised or the data is junk', () => {
  // an audio track (mp4a) first, then the video track
  const audioStsd = box('stsd', [0, 0, 0, 0, 0, 0, 0, 1], box('mp4a', new Uint8Array(28)));
  const audio = box('trak', box('mdia', box('minf', box('stbl', audioStsd))));
  const seg = init(visualSampleEntry('avc1', box('avcC', [1, 0x4d, 0x40, 0x28])), { extraTraks: [audio] });
  assert.equal(findCodec(seg), 'avc1.4d4028');
  assert.equal(findCodec(init(visualSampleEntry('hvc1', box('hvcC', new Uint8Array(23))))), null);
  assert.equal(findCodec(init(visualSampleEntry('avc1'))), null); // no avcC
  assert.equal(findCodec(new Uint8Array([0, 0, 0, 8, 0x6d, 0x6f, 0x6f])), null);
  assert.equal(findCodec(new Uint8Array(0)), null);
  const truncated = init(visualSampleEntry('avc1', box('avcC', [1, 0x64, 0, 0x1f])));
  assert.equal(findCodec(truncated.subarray(0, truncated.length - 20)), null);
  assert.equal(findCodec('nope'), null);
});
