#!/usr/bin/env python3
"""Draw docs/img/dashboard.png: the main panels of deploy/grafana/mediarelay.json from a
real run, without Grafana or Prometheus.

Starts the release relay on loopback with a scratch storage directory and ticket store,
drives it with mediarelay-load for about a minute (a live fanout, rounds of `gets` over a
VOD set with some missing keys, and handshake bursts with a share of bad tickets), samples
/metrics every 2 s into a CSV, and plots the panels with matplotlib, computing rates and
ratios from the samples the way the recording rules in deploy/prometheus do.

    scripts/dashboard-snapshot.py [--relay target/release/mediarelay]
        [--load target/release/mediarelay-load] [--duration 60] [--out docs/img/dashboard.png]
        [--csv /tmp/mediarelay-metrics.csv]

Needs matplotlib (pip install matplotlib). Loopback only; uses about one core while it runs.
"""

import argparse
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def start_relay(relay, work):
    media = os.path.join(work, "media")
    os.makedirs(os.path.join(media, "vod"))
    for i in range(250):  # VOD set: keys 250..299 of the gets rounds are not_found
        with open(os.path.join(media, "vod", f"k{i}.bin"), "wb") as f:
            f.write(os.urandom(64 * 1024))
    tickets = os.path.join(work, "tickets.json")
    ticket = subprocess.run(
        [relay, "ticket", "issue", "--tickets", tickets, "--uid", "snapshot", "--streams", "*", "--ttl", "1h"],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    log = open(os.path.join(work, "relay.log"), "w")
    proc = subprocess.Popen(
        [relay, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--storage", media,
         "--tickets", tickets], stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(100):
        text = ANSI.sub("", open(log.name).read())
        m = re.search(r"mediarelay serving.*listen=(\S+) admin=(\S+)", text)
        if m:
            return proc, ticket, m.group(1), m.group(2), media
        if proc.poll() is not None:
            sys.exit("relay exited:\n" + text)
        time.sleep(0.1)
    proc.kill()
    sys.exit("relay did not start")


def sampler(admin, rows, stop, t0):
    while not stop.is_set():
        t = time.time() - t0
        try:
            body = urllib.request.urlopen(f"http://{admin}/metrics", timeout=2).read().decode()
            for line in body.splitlines():
                m = SAMPLE.match(line)
                if m:
                    rows.append((round(t, 2), m.group(1), m.group(2) or "", float(m.group(3))))
        except OSError:
            pass
        stop.wait(max(0.0, 2.0 - (time.time() - t0 - t)))


def drive(load, addr, ticket, media, duration):
    base = [load, "--addr", addr, "--ticket", ticket, "--threads", "1"]
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen(base + [
        "fanout", "--subscribers", "40", "--streams", "2", "--storage", media, "--stream", "live/snap",
        "--size", "131072", "--rate", "4", "--count", str(int(4 * (duration - 10)))], **quiet)]
    plan = [(8, "gets"), (15, "connect"), (24, "gets"), (36, "connect"), (40, "gets")]
    t0 = time.time()
    for at, what in plan:
        if at > duration - 5:
            break
        time.sleep(max(0.0, at - (time.time() - t0)))
        if what == "gets":
            args = ["gets", "--prefix", "vod/k", "--suffix", ".bin", "--count", "300", "--connections", "4"]
        else:
            args = ["connect", "--count", "3000", "--concurrency", "8", "--bad-share", "0.2"]
        procs.append(subprocess.Popen(base + args, **quiet))
    time.sleep(max(0.0, duration - (time.time() - t0)))
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def series(rows):
    """{(name, labels): [(t, v)]}"""
    out = defaultdict(list)
    for t, name, labels, v in rows:
        out[(name, labels)].append((t, v))
    return out


def label(labels, key):
    m = re.search(key + r'="([^"]*)"', labels)
    return m.group(1) if m else ""


def rate(points, window=6.0):
    """Per-second rate over about `window` seconds, like rate() over a short range."""
    ts, out = [p[0] for p in points], []
    for i, (t, v) in enumerate(points):
        j = i
        while j > 0 and t - ts[j - 1] <= window + 0.5:
            j -= 1
        if j < i:
            out.append((t, (v - points[j][1]) / (t - ts[j])))
    return out


def summed(s, name, by=None, window=6.0):
    """Rates of a counter summed by one label: {label_value: [(t, rate)]}."""
    groups = defaultdict(lambda: defaultdict(float))
    for (n, labels), pts in s.items():
        if n != name:
            continue
        for t, r in rate(pts, window):
            groups[label(labels, by) if by else ""][t] += r
    return {k: sorted(v.items()) for k, v in groups.items()}


def quantile(q, s, window=10.0):
    buckets = {}
    for (n, labels), pts in s.items():
        if n == "mediarelay_origin_fetch_seconds_bucket":
            le = label(labels, "le")
            buckets[float("inf") if le == "+Inf" else float(le)] = dict(rate(pts, window))
    bounds = sorted(buckets)
    out = []
    for t in sorted(buckets[bounds[-1]]) if bounds else []:
        counts = [buckets[b].get(t, 0.0) for b in bounds]
        total = counts[-1]
        if total <= 0:
            continue
        rank, prev_b, prev_c = q * total, 0.0, 0.0
        for b, c in zip(bounds, counts):
            if c >= rank:
                if b == float("inf"):
                    b = prev_b
                    out.append((t, b))
                else:
                    out.append((t, prev_b + (b - prev_b) * (rank - prev_c) / max(c - prev_c, 1e-12)))
                break
            prev_b, prev_c = b, c
    return out


def plot(rows, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = series(rows)
    fig, axes = plt.subplots(2, 4, figsize=(16, 10), dpi=100)
    fig.suptitle("mediarelay — panels of deploy/grafana/mediarelay.json from a 1-minute loopback run "
                 "(release build, mediarelay-load fanout + gets + connect)", fontsize=12)

    def panel(ax, title, lines, ylabel="", fmt=None):
        for name, pts in lines:
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1.4)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("seconds", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if any(pts for _, pts in lines):
            ax.legend(fontsize=8, loc="upper left")
        if fmt:
            ax.yaxis.set_major_formatter(fmt)

    sent = summed(s, "mediarelay_sent_bytes_total").get("", [])
    panel(axes[0][0], "Delivered (mediarelay:sent_bytes:rate1m)",
          [("MB/s", [(t, v / 1e6) for t, v in sent])], "MB/s")
    conns = [(f"worker {label(l, 'worker')}", pts) for (n, l), pts in sorted(s.items())
             if n == "mediarelay_connections"]
    panel(axes[0][1], "Connections per worker (mediarelay_connections)", conns, "connections")
    origin = summed(s, "mediarelay_origin_requests_total", "result")
    panel(axes[0][2], "Origin reads/s by result", sorted(origin.items()), "reads/s")
    panel(axes[0][3], "Origin fetch latency (histogram)",
          [("p50", [(t, v * 1e3) for t, v in quantile(0.5, s)]),
           ("p99", [(t, v * 1e3) for t, v in quantile(0.99, s)])], "ms")

    hits = dict(summed(s, "mediarelay_cache_hits_total", window=10).get("", []))
    gets = defaultdict(float)
    for n in ("mediarelay_cache_hits_total", "mediarelay_cache_misses_total", "mediarelay_cache_coalesced_total"):
        for t, r in summed(s, n, window=10).get("", []):
            gets[t] += r
    ratio = [(t, 100 * hits.get(t, 0) / g) for t, g in sorted(gets.items()) if g > 0]
    cache_mib = [(t, v / 2**20) for t, v in s.get(("mediarelay_cache_bytes", ""), [])]
    ax = axes[1][0]
    panel(ax, "Cache hit ratio (10 s windows) and bytes", [("hit ratio %", ratio)], "% of gets")
    ax.set_ylim(0, 105)
    ax2 = ax.twinx()
    ax2.plot([p[0] for p in cache_mib], [p[1] for p in cache_mib], color="tab:gray", linestyle="--",
             label="cache MiB")
    ax2.set_ylabel("MiB", fontsize=9)
    ax2.tick_params(labelsize=8)
    ax2.legend(fontsize=8, loc="lower right")

    up = summed(s, "mediarelay_upgrades_total", "result")
    panel(axes[1][1], "Upgrades/s by result", [(k, v) for k, v in sorted(up.items()) if any(x[1] for x in v)],
          "upgrades/s")
    panel(axes[1][2], "Slow viewers",
          [("skipped/s", summed(s, "mediarelay_skipped_total").get("", [])),
           ("4408 closes/s", summed(s, "mediarelay_slow_consumer_closes_total").get("", [])),
           ("live subscribers", s.get(("mediarelay_live_subscribers", ""), []))], "per s / count")
    panel(axes[1][3], "Ticket snapshot age (alert > 60 s)",
          [("age s", s.get(("mediarelay_ticket_snapshot_age_seconds", ""), [])),
           ("entries", s.get(("mediarelay_ticket_snapshot_entries", ""), []))], "seconds / tickets")

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--relay", default=os.path.join(root, "target/release/mediarelay"))
    ap.add_argument("--load", default=os.path.join(root, "target/release/mediarelay-load"))
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--out", default=os.path.join(root, "docs/img/dashboard.png"))
    ap.add_argument("--csv", default="/tmp/mediarelay-metrics.csv")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="mediarelay-snapshot.")
    proc = None
    try:
        proc, ticket, addr, admin, media = start_relay(args.relay, work)
        print(f"relay on {addr}, admin {admin}; driving load for {args.duration:.0f} s")
        rows, stop, t0 = [], threading.Event(), time.time()
        th = threading.Thread(target=sampler, args=(admin, rows, stop, t0), daemon=True)
        th.start()
        drive(args.load, addr, ticket, media, args.duration)
        time.sleep(4)  # two more samples after the load stops
        stop.set()
        th.join()
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t", "name", "labels", "value"])
            w.writerows(rows)
        print(f"{len(rows)} samples in {args.csv}")
        plot(rows, args.out)
    finally:
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
