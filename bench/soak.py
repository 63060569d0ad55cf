#!/usr/bin/env python3
"""Soak test: a moderate mixed load against a running relay for --minutes, sampling the
relay's resident memory, open fds, CPU and a few metrics every 10 s, then writing a report
(Markdown) and a plot. bench/soak.sh starts the relay and runs this.

    bench/soak.py --minutes 30 --addr 127.0.0.1:18080 --admin 127.0.0.1:19090 --ticket T \\
        --pid PID --relay-bin target/release/mediarelay --storage DIR --tickets FILE \\
        --log RELAY_LOG --csv OUT.csv --md bench/SOAK.md --png bench/soak.png

The load (threads, Python's `websockets` sync client; loopback only; every loop ends with
the run):
- a producer writing 64 KiB segments, 2 per second, into each of live/s0 and live/s1
  (temporary name, then rename to seg-<10 digits>.m4s; an init.mp4 first; only the newest
  60 segments of each stream are kept, as a live packager's window would);
- 50 VOD objects of 256 KiB under vod/;
- 40 viewers looping: connect, subscribe to a random live stream, read 2-10 s, `get` 3
  random VOD keys, close;
- 20 stalled viewers (raw sockets: handshake, subscribe, never read), replaced every 2 min;
- every ~12 s a fresh ticket: issue, connect and subscribe with it, revoke, and expect
  close code 4401 within 2 s of the revoke command returning;
- a SIGHUP to the relay every 3 minutes.
"""

import argparse
import base64
import collections
import csv
import json
import os
import platform
import random
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

TICK = os.sysconf("SC_CLK_TCK")
SEG_SIZE = 64 * 1024
SEG_PER_S = 2
STREAMS = ["live/s0", "live/s1"]
KEEP_SEGMENTS = 60
VOD_COUNT = 50
VOD_SIZE = 256 * 1024
VIEWERS = 40
STALLED = 20
STALLED_EVERY = 120
REVOKE_EVERY = 12
REVOKE_DEADLINE = 2.0
HUP_EVERY = 180
SAMPLE_EVERY = 10
WARMUP = 180

FIELDS = ["t_s", "rss_mb", "fds", "threads", "cpu_s", "cpu_cores", "connections",
          "send_queue_bytes", "live_streams", "cache_bytes", "skipped_total",
          "tickets_file_bytes", "sessions", "errors", "revoked_on_time", "revoked_late"]


# ---------------------------------------------------------------- /proc and /metrics

def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    return out


def metrics(admin):
    sums = collections.defaultdict(float)
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=3) as r:
        for line in r.read().decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            try:
                sums[name] += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return sums


def metric_lines(admin, names):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=3) as r:
        return [l for l in r.read().decode().splitlines()
                if l and not l.startswith("#") and l.split("{", 1)[0].split(" ", 1)[0] in names]


# ---------------------------------------------------------------- shared counters

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()
        self.errors = collections.Counter()
        self.revoke_latency = []
        self.revoke_detail = collections.Counter()

    def add(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def error(self, kind):
        with self.lock:
            self.errors[kind] += 1


def parse_media(frame):
    n = struct.unpack(">I", frame[:4])[0]
    meta = json.loads(frame[4:4 + n])
    return meta, len(frame) - 4 - n


# ---------------------------------------------------------------- load parts

def write_atomic(path, data):
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def producer(a, stop, stats):
    for s in STREAMS:
        os.makedirs(os.path.join(a.storage, s), exist_ok=True)
        write_atomic(os.path.join(a.storage, s, "init.mp4"), os.urandom(1024))
    payload = os.urandom(SEG_SIZE)
    seq = 1
    start = time.monotonic()
    while not stop.is_set():
        due = start + (seq - 1) / SEG_PER_S
        if stop.wait(max(0.0, due - time.monotonic())):
            break
        for s in STREAMS:
            d = os.path.join(a.storage, s)
            write_atomic(os.path.join(d, f"seg-{seq:010d}.m4s"),
                         struct.pack(">Q", seq) + payload[8:])
            old = seq - KEEP_SEGMENTS
            if old >= 1:
                try:
                    os.unlink(os.path.join(d, f"seg-{old:010d}.m4s"))
                except FileNotFoundError:
                    pass
        stats.add("segments_written", len(STREAMS))
        seq += 1


def viewer(a, stop, stats, n):
    rng = random.Random(n)
    url = f"ws://{a.addr}/ws?ticket={a.ticket}"
    while not stop.is_set():
        req = 0
        try:
            with connect(url, open_timeout=5, close_timeout=2, max_size=1 << 24,
                         compression=None) as ws:
                req += 1
                ws.send(json.dumps({"op": "subscribe", "id": req, "stream": rng.choice(STREAMS)}))
                deadline = time.monotonic() + rng.uniform(2, 10)
                while not stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        msg = ws.recv(timeout=min(left, 1.0))
                    except TimeoutError:
                        continue
                    handle(msg, stats, None)
                want = {}
                for _ in range(3):
                    req += 1
                    k = rng.randrange(VOD_COUNT)
                    want[req] = f"vod/obj-{k:02d}.bin"
                    ws.send(json.dumps({"op": "get", "id": req, "key": want[req]}))
                deadline = time.monotonic() + 10
                while want and not stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        stats.error("get_timeout")
                        break
                    try:
                        msg = ws.recv(timeout=min(left, 1.0))
                    except TimeoutError:
                        continue
                    handle(msg, stats, want)
            if not stop.is_set():
                stats.add("sessions")
        except ConnectionClosed as e:
            if not stop.is_set():
                code = e.rcvd.code if e.rcvd else None
                stats.error(f"closed_{code}")
        except Exception as e:  # noqa: BLE001 - counted by kind
            if not stop.is_set():
                stats.error(type(e).__name__)
                stop.wait(0.5)


def handle(msg, stats, want):
    if isinstance(msg, bytes):
        meta, size = parse_media(msg)
        if size != meta.get("size"):
            stats.error("size_mismatch")
        if "id" in meta and want is not None and meta["id"] in want:
            if meta.get("key") != want.pop(meta["id"]) or size != VOD_SIZE:
                stats.error("vod_mismatch")
            stats.add("vod_gets")
        elif "seq" in meta:
            stats.add("segments_received")
            stats.add("bytes_received", size)
        return
    m = json.loads(msg)
    op = m.get("op")
    if op == "subscribed":
        stats.add("subscribed")
    elif op == "skipped":
        stats.add("skipped_events")
    elif op == "error":
        stats.error(f"error_{m.get('code')}")
        if want is not None:
            want.pop(m.get("id"), None)
    elif op == "closing":
        stats.error(f"closing_{m.get('reason')}")
    elif op == "expiring":
        stats.add("expiring_notices")


def stalled_open(a, rng):
    """A WebSocket by hand: upgrade, subscribe, then never read again."""
    s = socket.create_connection(tuple(a.addr.rsplit(":", 1)), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws?ticket={a.ticket} HTTP/1.1\r\nHost: {a.addr}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Key: {key}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    payload = json.dumps({"op": "subscribe", "id": 1, "stream": rng.choice(STREAMS)}).encode()
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask
              + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return s


def stalled(a, stop, stats):
    rng = random.Random(1234)
    socks = []
    while not stop.is_set():
        for s in socks:
            s.close()
        socks = []
        for _ in range(STALLED):
            try:
                socks.append(stalled_open(a, rng))
                stats.add("stalled_opened")
            except Exception as e:  # noqa: BLE001
                if not stop.is_set():
                    stats.error(f"stalled_{type(e).__name__}")
        stop.wait(STALLED_EVERY)
    for s in socks:
        s.close()


def run_cli(a, *args):
    return subprocess.run([a.relay_bin, "ticket", *args, "--tickets", a.tickets],
                          check=True, capture_output=True, text=True, timeout=20).stdout.strip()


def revoker(a, stop, stats):
    while not stop.wait(REVOKE_EVERY):
        try:
            t = run_cli(a, "issue", "--uid", "soak", "--streams", "*", "--ttl", "1h")
        except Exception as e:  # noqa: BLE001
            stats.error(f"ticket_issue_{type(e).__name__}")
            continue
        ws = None
        for _ in range(20):  # the relay may see the new ticket a moment later
            try:
                ws = connect(f"ws://{a.addr}/ws?ticket={t}", open_timeout=5, close_timeout=2,
                             max_size=1 << 24, compression=None)
                break
            except Exception:  # noqa: BLE001
                with stats.lock:
                    stats.revoke_detail["connect_retries"] += 1
                if stop.wait(0.25):
                    break
        if ws is None:
            if not stop.is_set():
                stats.error("revoke_viewer_connect")
            continue
        try:
            ws.send(json.dumps({"op": "subscribe", "id": 1, "stream": STREAMS[0]}))
            ws.recv(timeout=5)
            t0 = time.monotonic()
            run_cli(a, "revoke", t)
            t1 = time.monotonic()
            code, reason = None, None
            while time.monotonic() < t1 + 5:
                try:
                    msg = ws.recv(timeout=0.5)
                except TimeoutError:
                    continue
                except ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd else None
                    break
                if isinstance(msg, str) and json.loads(msg).get("op") == "closing":
                    reason = json.loads(msg).get("reason")
            t2 = time.monotonic()
            with stats.lock:
                if code == 4401:
                    lat = t2 - t1
                    stats.revoke_latency.append((lat, t2 - t0))
                    stats.c["revoked_on_time" if lat <= REVOKE_DEADLINE else "revoked_late"] += 1
                    if reason != "ticket_revoked":
                        stats.revoke_detail[f"closing_reason_{reason}"] += 1
                else:
                    stats.c["revoked_late"] += 1
                    stats.revoke_detail[f"not_closed_4401_code_{code}"] += 1
        except Exception as e:  # noqa: BLE001
            if not stop.is_set():
                stats.error(f"revoke_{type(e).__name__}")
        finally:
            ws.close()


def hupper(a, stop, stats):
    while not stop.wait(HUP_EVERY):
        os.kill(a.pid, signal.SIGHUP)
        stats.add("sighups")


# ---------------------------------------------------------------- sampling and report

def sample(a, t_start, prev, stats):
    now = time.monotonic()
    st = proc_status(a.pid)
    cpu = proc_stat(a.pid)
    m = metrics(a.admin)
    with stats.lock:
        c = dict(stats.c)
        errs = sum(stats.errors.values())
    row = {
        "t_s": round(now - t_start, 1),
        "rss_mb": round(st["rss_mb"], 2),
        "fds": len(os.listdir(f"/proc/{a.pid}/fd")),
        "threads": st["threads"],
        "cpu_s": round(cpu, 2),
        "cpu_cores": round((cpu - prev[0]) / (now - prev[1]), 3) if prev else 0.0,
        "connections": int(m["mediarelay_connections"]),
        "send_queue_bytes": int(m["mediarelay_send_queue_bytes"]),
        "live_streams": int(m["mediarelay_live_streams"]),
        "cache_bytes": int(m["mediarelay_cache_bytes"]),
        "skipped_total": int(m["mediarelay_skipped_total"]),
        "tickets_file_bytes": os.path.getsize(a.tickets),
        "sessions": c.get("sessions", 0),
        "errors": errs,
        "revoked_on_time": c.get("revoked_on_time", 0),
        "revoked_late": c.get("revoked_late", 0),
    }
    return row, (cpu, now)


def fit_per_hour(rows, key):
    import numpy as np
    pts = [(r["t_s"], r[key]) for r in rows if r["t_s"] >= WARMUP]
    if len(pts) < 3:
        return float("nan")
    x = np.array([p[0] for p in pts], dtype=float)
    y = np.array([p[1] for p in pts], dtype=float)
    return float(np.polyfit(x, y, 1)[0] * 3600)


def at(rows, t):
    return min(rows, key=lambda r: abs(r["t_s"] - t))


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "mem": mem}


def plot(rows, path, minutes):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [r["t_s"] / 60 for r in rows]
    panels = [("rss_mb", "relay RSS (MB)"), ("fds", "open fds"),
              ("send_queue_bytes", "queued bytes (send queues, MiB)"),
              ("connections", "connections")]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    for ax, (k, label) in zip(axes, panels):
        y = [r[k] / 2**20 if k == "send_queue_bytes" else r[k] for r in rows]
        ax.plot(t, y, lw=1.2, marker=".", ms=3)
        ax.set_ylabel(label)
        ax.axvline(WARMUP / 60, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0].set_title(f"mediarelay soak, {minutes:g} min (dashed: end of 3-min warm-up)")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(a, rows, stats, info, started, wall):
    first, warm, last = rows[0], at(rows, WARMUP), rows[-1]
    rss_h, fds_h = fit_per_hour(rows, "rss_mb"), fit_per_hour(rows, "fds")
    thr_h = fit_per_hour(rows, "threads")
    c = stats.c
    lats = sorted(l for l, _ in stats.revoke_latency)
    lat_txt = "n/a"
    if lats:
        lat_txt = (f"median {lats[len(lats) // 2] * 1000:.0f} ms, "
                   f"max {lats[-1] * 1000:.0f} ms (from the revoke command's return)")
    post = [r for r in rows if r["t_s"] >= WARMUP] or rows
    cores = (last["cpu_s"] - first["cpu_s"]) / max(1e-9, last["t_s"] - first["t_s"])
    peak = max(r["cpu_cores"] for r in rows)
    try:
        final_m = metric_lines(a.admin, {
            "mediarelay_closes_total", "mediarelay_slow_consumer_closes_total",
            "mediarelay_revocation_closes_total", "mediarelay_upgrades_total",
            "mediarelay_cache_evictions_total", "mediarelay_segments_published_total",
            "mediarelay_ticket_snapshot_entries", "mediarelay_buffer_pool_idle_bytes",
            "mediarelay_cache_entries", "mediarelay_live_subscribers"})
    except Exception as e:  # noqa: BLE001
        final_m = [f"(metrics unavailable: {e})"]
    log_lines = []
    try:
        with open(a.log, errors="replace") as f:
            log_lines = f.read().splitlines()
    except OSError:
        pass
    msgs = collections.Counter()
    for l in log_lines:
        # strip the timestamp, keep level and message start
        parts = l.split(" ", 1)
        msgs[(parts[1] if len(parts) > 1 else l)[:140]] += 1

    L = []
    w = L.append
    w("# Soak test")
    w("")
    w(f"**This run lasted {a.minutes:g} minutes** (`RELAY_BIN=target/release/mediarelay "
      f"bench/soak.sh {a.minutes:g}`); the script's default is 30 minutes. "
      f"Started {started} (UTC), {wall / 60:.1f} min of wall time including the final sample.")
    w("")
    w("## How to run it")
    w("")
    w("```sh")
    w("RELAY_BIN=target/release/mediarelay bench/soak.sh [MINUTES]   # default 30")
    w("```")
    w("")
    w("`bench/soak.sh` starts the relay on 127.0.0.1:18080 (admin 127.0.0.1:19090) with "
      "`MEDIARELAY_LOG_LEVEL=warn MEDIARELAY_CACHE_SIZE=64MiB`, a scratch storage directory "
      "and ticket file, waits for `/readyz`, runs `bench/soak.py` and stops the relay. Without "
      "`RELAY_BIN` it first runs `cargo build --release --locked`. It writes this file and "
      "`bench/soak.png`; the 10-second samples go to `$SOAK_CSV` (default "
      "`/tmp/mediarelay-soak-samples.csv`) and the relay's log to `$SOAK_LOG` (default "
      "`/tmp/mediarelay-soak-relay.log`).")
    w("")
    w("## Machine")
    w("")
    w(f"- `nproc`: {info['nproc']}; CPU: {info['cpu']}; kernel {info['kernel']}; "
      f"memory {info['mem']}")
    w(f"- load average at start {info['load_start']}, at end {info['load_end']} (the machine "
      "is shared: the load generator runs on it too, and other work may have)")
    w(f"- relay: `{a.relay_bin}`, its default worker count for this machine")
    w("")
    w("## Parameters")
    w("")
    w(f"- producer: {SEG_SIZE // 1024} KiB segments, {SEG_PER_S}/s into each of "
      f"{', '.join('`' + s + '`' for s in STREAMS)} (written to a temporary name, renamed to "
      f"`seg-<10 digits>.m4s`, seq from 1), `init.mp4` once per stream; only the newest "
      f"{KEEP_SEGMENTS} segments of a stream are kept on disk")
    w(f"- VOD: {VOD_COUNT} objects of {VOD_SIZE // 1024} KiB, `vod/obj-NN.bin`")
    w(f"- {VIEWERS} viewers (Python `websockets` sync client, one thread each) looping: connect "
      "with the ticket, subscribe to a random live stream, read for a random 2-10 s, `get` 3 "
      "random VOD keys, close, reconnect")
    w(f"- {STALLED} stalled viewers (raw sockets: upgrade, subscribe, never read), replaced "
      f"every {STALLED_EVERY // 60} min")
    w(f"- every {REVOKE_EVERY} s: `mediarelay ticket issue`, a viewer connects and subscribes "
      "with the new ticket, `mediarelay ticket revoke`, and the viewer must see close code 4401 "
      f"within {REVOKE_DEADLINE:g} s of the revoke command returning")
    w(f"- SIGHUP to the relay every {HUP_EVERY // 60} min ({c.get('sighups', 0)} sent)")
    w(f"- a sample every {SAMPLE_EVERY} s: VmRSS, entries of /proc/PID/fd, threads, utime+stime, "
      "and from /metrics the sums of `mediarelay_connections`, `mediarelay_send_queue_bytes`, "
      "`mediarelay_live_streams`, `mediarelay_cache_bytes`, `mediarelay_skipped_total`")
    w("")
    w("## Results")
    w("")
    w("| | start | after warm-up (3 min) | end | growth per hour (least squares, after warm-up) |")
    w("| --- | ---: | ---: | ---: | ---: |")
    w(f"| RSS (MB) | {first['rss_mb']:.1f} | {warm['rss_mb']:.1f} | {last['rss_mb']:.1f} | "
      f"{rss_h:+.1f} MB/h |")
    w(f"| open fds | {first['fds']} | {warm['fds']} | {last['fds']} | {fds_h:+.1f} /h |")
    w(f"| threads | {first['threads']} | {warm['threads']} | {last['threads']} | "
      f"{thr_h:+.1f} /h |")
    w("")
    w(f"- post-warm-up range: RSS {min(r['rss_mb'] for r in post):.1f}-"
      f"{max(r['rss_mb'] for r in post):.1f} MB, fds {min(r['fds'] for r in post)}-"
      f"{max(r['fds'] for r in post)}, connections {min(r['connections'] for r in post)}-"
      f"{max(r['connections'] for r in post)}, queued bytes up to "
      f"{max(r['send_queue_bytes'] for r in post) / 1024:.0f} KiB, cache up to "
      f"{max(r['cache_bytes'] for r in post) / 2**20:.1f} MiB")
    w(f"- relay CPU: {cores:.3f} cores on average over the run, {peak:.3f} at the busiest "
      "10-s sample")
    w(f"- viewer sessions completed: {c.get('sessions', 0)}; live segments received "
      f"{c.get('segments_received', 0)} ({c.get('bytes_received', 0) / 2**30:.2f} GiB); VOD "
      f"`get`s answered {c.get('vod_gets', 0)}; `skipped` events seen by viewers "
      f"{c.get('skipped_events', 0)}; segments written {c.get('segments_written', 0)}; "
      f"stalled viewers opened {c.get('stalled_opened', 0)}")
    w(f"- revocations: **{c.get('revoked_on_time', 0)} on time, {c.get('revoked_late', 0)} late "
      f"or not closed with 4401**; latency {lat_txt}"
      + (f"; {dict(stats.revoke_detail)}" if stats.revoke_detail else ""))
    errs = sum(stats.errors.values())
    w(f"- errors (anything but a clean session; the end of the run is not counted): "
      f"**{errs}**" + (f" — {dict(stats.errors.most_common())}" if errs else ""))
    w(f"- relay log (warn and above): {len(log_lines)} lines"
      + ("" if not msgs else "; most frequent:"))
    for m_, n in msgs.most_common(5):
        w(f"  - {n} × `{m_}`")
    w("")
    w("Relay counters at the end:")
    w("")
    w("```")
    L.extend(final_m)
    w("```")
    w("")
    w("## Samples, one a minute")
    w("")
    w("| min | RSS MB | fds | threads | CPU cores | conns | queued KiB | live streams | "
      "cache MiB | skipped | sessions | errors | revoked ok/late |")
    w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    shown = []
    for mnt in range(0, int(last["t_s"] // 60) + 1):
        r = at(rows, mnt * 60)
        if r not in shown:
            shown.append(r)
    if last not in shown:
        shown.append(last)
    for r in shown:
        w(f"| {r['t_s'] / 60:.1f} | {r['rss_mb']:.1f} | {r['fds']} | {r['threads']} | "
          f"{r['cpu_cores']:.3f} | {r['connections']} | {r['send_queue_bytes'] / 1024:.0f} | "
          f"{r['live_streams']} | {r['cache_bytes'] / 2**20:.1f} | {r['skipped_total']} | "
          f"{r['sessions']} | {r['errors']} | {r['revoked_on_time']}/{r['revoked_late']} |")
    w("")
    w("![RSS, open fds, queued bytes and connections over the run](soak.png)")
    w("")
    with open(a.md, "w") as f:
        f.write("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--ticket", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--relay-bin", required=True)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--tickets", required=True)
    ap.add_argument("--log", default="")
    ap.add_argument("--csv", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png", required=True)
    a = ap.parse_args()

    info = machine()
    info["load_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())

    os.makedirs(os.path.join(a.storage, "vod"), exist_ok=True)
    for k in range(VOD_COUNT):
        write_atomic(os.path.join(a.storage, "vod", f"obj-{k:02d}.bin"), os.urandom(VOD_SIZE))

    stats = Stats()
    stop = threading.Event()
    t_start = time.monotonic()
    end = t_start + a.minutes * 60
    rows = []
    row, prev = sample(a, t_start, None, stats)
    rows.append(row)

    threads = [threading.Thread(target=producer, args=(a, stop, stats), daemon=True),
               threading.Thread(target=stalled, args=(a, stop, stats), daemon=True),
               threading.Thread(target=revoker, args=(a, stop, stats), daemon=True),
               threading.Thread(target=hupper, args=(a, stop, stats), daemon=True)]
    threads += [threading.Thread(target=viewer, args=(a, stop, stats, n), daemon=True)
                for n in range(VIEWERS)]
    for th in threads:
        th.start()
        time.sleep(0.05)

    with open(a.csv, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=FIELDS)
        out.writeheader()
        out.writerow(row)
        k = 1
        while True:
            due = t_start + k * SAMPLE_EVERY
            if due > end + 0.5:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                row, prev = sample(a, t_start, prev, stats)
            except Exception as e:  # noqa: BLE001
                stats.error(f"sample_{type(e).__name__}")
                k += 1
                continue
            rows.append(row)
            out.writerow(row)
            f.flush()
            print(f"[{row['t_s'] / 60:5.1f} min] rss {row['rss_mb']:.1f} MB  fds {row['fds']}  "
                  f"conns {row['connections']}  queued {row['send_queue_bytes'] // 1024} KiB  "
                  f"cpu {row['cpu_cores']:.3f}  sessions {row['sessions']}  "
                  f"errors {row['errors']}  revoked {row['revoked_on_time']}/"
                  f"{row['revoked_late']}", flush=True)
            k += 1

    stop.set()
    join_by = time.monotonic() + 15
    for th in threads:
        th.join(timeout=max(0.1, join_by - time.monotonic()))
    wall = time.monotonic() - t_start
    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    plot(rows, a.png, a.minutes)
    report(a, rows, stats, info, started, wall)
    print(json.dumps({"sessions": stats.c.get("sessions", 0),
                      "errors": dict(stats.errors),
                      "revoked_on_time": stats.c.get("revoked_on_time", 0),
                      "revoked_late": stats.c.get("revoked_late", 0),
                      "rss_mb": [rows[0]["rss_mb"], at(rows, WARMUP)["rss_mb"], rows[-1]["rss_mb"]],
                      "fds": [rows[0]["fds"], at(rows, WARMUP)["fds"], rows[-1]["fds"]],
                      "rss_mb_per_h": round(fit_per_hour(rows, "rss_mb"), 2),
                      "fds_per_h": round(fit_per_hour(rows, "fds"), 2)}))


if __name__ == "__main__":
    main()
