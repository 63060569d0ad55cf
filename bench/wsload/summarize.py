#!/usr/bin/env python3
"""Medians (min-max) of bench/wsload/run.sh's raw reports, one Markdown table per workload."""
import json, statistics, sys
from collections import defaultdict

FIELDS = {
    "vod-1m": [("received_bytes_per_s", 1e9, "GB/s"), ("replies_per_s", 1, "replies/s"),
               ("server_cpu_seconds_per_gb", 1, "server CPU-s/GB"), ("latency_ms.p50", 1, "lat p50 ms"),
               ("latency_ms.p99", 1, "lat p99 ms"), ("client_cpu_seconds", 1, "client CPU-s"),
               ("_nonserver", 1, "non-relay CPU-s")],
    "fanout": [("received_bytes_per_s", 1e9, "GB/s"), ("segments_delivered", 1, "delivered"),
               ("segments_expected", 1, "expected"), ("skipped_messages", 1, "skipped"),
               ("server_cpu_seconds_per_gb", 1, "server CPU-s/GB"), ("lag_ms.p50", 1, "lag p50"),
               ("lag_ms.p90", 1, "lag p90"), ("lag_ms.p99", 1, "lag p99"), ("lag_ms.max", 1, "lag max"),
               ("e2e_lag_ms.p99", 1, "e2e p99"), ("client_cpu_seconds", 1, "client CPU-s"),
               ("_nonserver", 1, "non-relay CPU-s")],
    "idle": [("connections", 1, "conns"), ("server_rss_before_kib", 1, "RSS before KiB"),
             ("server_rss_during_kib", 1, "RSS during KiB"), ("server_kib_per_connection", 1, "KiB/conn"),
             ("server_rss_anon_during_kib", 1, "anon during KiB"), ("connections_per_s", 1, "conns/s")],
    "connect": [("handshakes_per_s", 1, "handshakes/s"), ("handshake_ms.p50", 1, "p50 ms"),
                ("handshake_ms.p99", 1, "p99 ms"), ("server_cpu_us_per_handshake", 1, "server µs/hs"),
                ("client_cpu_us_per_handshake", 1, "client µs/hs")],
}
FIELDS["vod-64k"] = FIELDS["vod-1m"]
FIELDS["fanout-light"] = FIELDS["fanout"]


def get(r, path):
    for k in path.split("."):
        if not isinstance(r, dict) or k not in r:
            return None
        r = r[k]
    return r


runs = defaultdict(list)
for line in open(sys.argv[1]):
    j = json.loads(line)
    if j.get("error"):
        print(f"failed: {j['workload']} {j['client']} {j['transport']} round {j['round']}")
        continue
    r = j["report"]
    # CPU the machine spent outside the relay during the run (the client and anything else).
    if "machine_busy_cpu_seconds" in j and "server_cpu_seconds" in r:
        r["_nonserver"] = j["machine_busy_cpu_seconds"] - r["server_cpu_seconds"]
    runs[(j["workload"], j["client"], j["transport"])].append(r)
for w, fields in FIELDS.items():
    keys = [k for k in runs if k[0] == w]
    if not keys:
        continue
    print(f"\n### {w}\n")
    print("| client | transport | runs | " + " | ".join(f[2] for f in fields) + " |")
    print("|---|---|---:|" + "---:|" * len(fields))
    for k in sorted(keys):
        cells = []
        for path, div, _ in fields:
            v = [get(r, path) for r in runs[k]]
            v = [x / div for x in v if isinstance(x, (int, float))]
            if not v:
                cells.append("-")
                continue
            m = statistics.median(v)
            fmt = (lambda x: f"{x:.3g}") if abs(m) < 100 else (lambda x: f"{x:,.0f}")
            cells.append(fmt(m) + (f" ({fmt(min(v))}–{fmt(max(v))})" if len(v) > 1 else ""))
        print(f"| {k[1]} | {k[2]} | {len(runs[k])} | " + " | ".join(cells) + " |")
