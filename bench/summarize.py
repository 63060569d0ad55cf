#!/usr/bin/env python3
"""Turns bench/compare.sh's raw reports (one JSON line per run) into bench/RESULTS.md:
the machine, every command, medians and min-max per server and workload, each peer's
figure as a ratio to mediarelay's, and the issue's targets checked against the medians.

    python3 bench/summarize.py bench/results/runs.jsonl bench/RESULTS.md --machine ... --versions ...
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

SERVERS = ["mediarelay", "nginx", "uws", "ws", "nest", "iperf3", "send"]
NAMES = {
    "mediarelay": "mediarelay",
    "nginx": "nginx (sendfile, HTTP/1.1)",
    "uws": "uWebSockets.js",
    "ws": "Node.js ws",
    "nest": "NestJS + socket.io",
    "iperf3": "iperf3",
    "send": "send(2) in a loop",
}

# workload -> (title, [(metric path, label, unit scale, lower is better)])
WORKLOADS = {
    "vod-1m": ("vod, 100 connections x 2 in flight, cached 1 MiB objects", [
        ("received_bytes_per_s", "GB/s", 1e-9, False),
        ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
        ("latency_ms.p99", "latency p99 ms", 1, True),
        ("server_rss_kib", "server RSS MiB", 1 / 1024, True),
    ]),
    "vod-64k": ("vod, 100 connections x 2 in flight, cached 64 KiB objects", [
        ("received_bytes_per_s", "GB/s", 1e-9, False),
        ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
        ("latency_ms.p99", "latency p99 ms", 1, True),
        ("server_rss_kib", "server RSS MiB", 1 / 1024, True),
    ]),
    "fanout-64k": ("fanout, 1,000 subscribers, 64 KiB segments at 50/s", [
        ("received_bytes_per_s", "GB/s", 1e-9, False),
        ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
        ("lag_ms.p50", "lag p50 ms", 1, True),
        ("lag_ms.p99", "lag p99 ms", 1, True),
        ("e2e_lag_ms.p50", "end-to-end lag p50 ms", 1, True),
        ("e2e_lag_ms.p99", "end-to-end lag p99 ms", 1, True),
        ("delivered_share", "segments delivered", 1, False),
        ("server_rss_kib", "server RSS MiB", 1 / 1024, True),
    ]),
    "fanout-1m": ("fanout, 1,000 subscribers, 1 MiB segments at 20/s", [
        ("received_bytes_per_s", "GB/s", 1e-9, False),
        ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
        ("lag_ms.p50", "lag p50 ms", 1, True),
        ("lag_ms.p99", "lag p99 ms", 1, True),
        ("e2e_lag_ms.p50", "end-to-end lag p50 ms", 1, True),
        ("e2e_lag_ms.p99", "end-to-end lag p99 ms", 1, True),
        ("delivered_share", "segments delivered", 1, False),
        ("server_rss_kib", "server RSS MiB", 1 / 1024, True),
    ]),
    "fanout-half": ("fanout, 1,000 subscribers, 64 KiB at half the rate mediarelay delivered in fanout-64k", [
        ("rate_per_s", "segments/s", 1, False),
        ("received_bytes_per_s", "GB/s", 1e-9, False),
        ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
        ("lag_ms.p50", "lag p50 ms", 1, True),
        ("lag_ms.p99", "lag p99 ms", 1, True),
        ("e2e_lag_ms.p99", "end-to-end lag p99 ms", 1, True),
    ]),
    "mixed": ("mixed, 900 normal + 50 slow (256 KiB/s) + 50 stalled subscribers, 64 KiB at 25/s", [
        ("normal_unaffected", "normal unaffected (share of runs)", 1, False),
        ("delivered_share", "normal: segments delivered", 1, False),
        ("lag_ms.p99", "normal: lag p99 ms", 1, True),
        ("e2e_lag_ms.p99", "normal: end-to-end lag p99 ms", 1, True),
        ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
        ("slow.skipped_messages", "slow: skipped messages", 1, False),
        ("server_rss_kib", "server RSS MiB", 1 / 1024, True),
    ]),
    "idle": ("idle authenticated connections", [
        ("connections", "connections", 1, False),
        ("server_kib_per_connection", "server KiB/connection", 1, True),
    ]),
    "connect": ("connect: upgrades with ticket check, 64 concurrent, 10% bad tickets", [
        ("handshakes_per_s", "handshakes/s", 1, False),
        ("server_cpu_us_per_handshake", "server CPU us/handshake", 1, True),
        ("client_cpu_us_per_handshake", "load client CPU us/handshake", 1, True),
        ("handshake_ms.p99", "handshake p99 ms", 1, True),
    ]),
    "wss-vod-1m": ("vod over TLS (wss://; nginx: https:// with --http), 100 connections x 2 in flight, cached 1 MiB objects", [
        ("received_bytes_per_s", "GB/s", 1e-9, False),
        ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
        ("latency_ms.p99", "latency p99 ms", 1, True),
        ("server_rss_kib", "server RSS MiB", 1 / 1024, True),
    ]),
    "wss-vod-64k": ("vod over TLS (wss://; nginx: https:// with --http), 100 connections x 2 in flight, cached 64 KiB objects", [
        ("received_bytes_per_s", "GB/s", 1e-9, False),
        ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
        ("latency_ms.p99", "latency p99 ms", 1, True),
        ("server_rss_kib", "server RSS MiB", 1 / 1024, True),
    ]),
    "wss-fanout-64k": ("fanout over TLS, 1,000 wss subscribers, 64 KiB segments at 50/s (more than TLS delivers: the maximum)", [
        ("received_bytes_per_s", "GB/s", 1e-9, False),
        ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
        ("lag_ms.p99", "lag p99 ms", 1, True),
        ("delivered_share", "segments delivered", 1, False),
        ("server_rss_kib", "server RSS MiB", 1 / 1024, True),
    ]),
    "wss-fanout-half": ("fanout over TLS, 1,000 wss subscribers, 64 KiB at half the rate mediarelay delivered in wss-fanout-64k", [
        ("rate_per_s", "segments/s", 1, False),
        ("received_bytes_per_s", "GB/s", 1e-9, False),
        ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
        ("delivered_share", "segments delivered", 1, False),
        ("lag_ms.p50", "lag p50 ms", 1, True),
        ("lag_ms.p99", "lag p99 ms", 1, True),
        ("e2e_lag_ms.p99", "end-to-end lag p99 ms", 1, True),
    ]),
    "wss-connect": ("connect over TLS: full TLS 1.3 handshakes + upgrade with ticket check, 64 concurrent, 10% bad tickets", [
        ("handshakes_per_s", "handshakes/s", 1, False),
        ("server_cpu_us_per_handshake", "server CPU us/handshake", 1, True),
        ("client_cpu_us_per_handshake", "load client CPU us/handshake", 1, True),
        ("handshake_ms.p99", "handshake p99 ms", 1, True),
    ]),
    "wss-connect-resume": ("wss-connect with TLS session resumption (--tls-resume)", [
        ("handshakes_per_s", "handshakes/s", 1, False),
        ("server_cpu_us_per_handshake", "server CPU us/handshake", 1, True),
        ("client_cpu_us_per_handshake", "load client CPU us/handshake", 1, True),
        ("handshake_ms.p99", "handshake p99 ms", 1, True),
    ]),
    "iperf3-P1": ("iperf3 over loopback, one stream", [("received_bytes_per_s", "GB/s", 1e-9, False)]),
    "iperf3-P4": ("iperf3 over loopback, -P 4", [("received_bytes_per_s", "GB/s", 1e-9, False)]),
    "loopback-1m": ("the kernel's cost of send(2) through one loopback connection, 1 MiB writes (bench/loopback_copy.py)", [
        ("received_bytes_per_s", "GB/s", 1e-9, False),
        ("server_cpu_seconds_per_gb", "sender CPU-s/GB", 1, True),
    ]),
}


def get(report, path):
    if path == "delivered_share":
        exp = report.get("segments_expected") or 0
        return report.get("segments_delivered", 0) / exp if exp else None
    if path == "segments_produced_per_s":
        secs = report.get("seconds") or 0
        return report.get("segments_produced", 0) / secs if secs else None
    v = report
    for part in path.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    return v


def fmt(v):
    if v is None:
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("out")
    ap.add_argument("--machine", default="?")
    ap.add_argument("--versions", default="?")
    ap.add_argument("--runs", default="?")
    ap.add_argument("--quick", default="0")
    a = ap.parse_args()

    rows = [json.loads(line) for line in Path(a.raw).read_text().splitlines() if line.strip()]
    by = defaultdict(list)  # (workload, server) -> [report]
    args = {}
    failures = defaultdict(int)
    for r in rows:
        key = (r["workload"], r["server"])
        if r.get("error"):
            failures[key] += 1
            continue
        by[key].append(r["report"])
        args.setdefault(key, r.get("args", ""))

    def stats(workload, server, path, scale):
        vals = [get(rep, path) for rep in by.get((workload, server), [])]
        vals = [v * scale for v in vals if v is not None]
        if not vals:
            return None
        return statistics.median(vals), min(vals), max(vals), len(vals)

    out = []
    w = out.append
    w("# mediarelay side by side: results\n")
    if a.quick == "1":
        w("**Quick smoke run (small N, one round): not a measurement.**\n")
    w("Written by `bench/compare.sh` (summary by `bench/summarize.py`); raw reports, one JSON line per run, in")
    w(f"`bench/results/`. Every figure is the median of {a.runs} runs, with min-max; the servers ran")
    w("alternately (the order rotates each round), each restarted at the start of every round, all")
    w("driven by the same load client (`mediarelay-load`) on the same machine, over loopback.")
    w("CPU-s/GB is the server's own CPU (utime + stime of its processes, from /proc) per GB the")
    w("client received; the load client shares the machine, so throughput alone may measure the")
    w("client. Ratios are peer / mediarelay. Delivery lag is the client's clock at the last byte")
    w("of a segment minus the meta `ts` the server stamped when it had the segment ready to send")
    w("(PROTOCOL.md); end-to-end lag starts instead when the load client's producer renamed the")
    w("segment into the storage directory, so it also counts the server's discovery, its read of")
    w("the file, and any backlog it holds before stamping `ts`.\n")
    w(f"- Machine: {a.machine}")
    w(f"- Versions: {a.versions}")
    w("- Servers: mediarelay with its defaults (8 MiB send queue, 512 MiB cache), the peers in")
    w("  `bench/peers/` with the same 8 MiB per-connection send limit; nginx: `sendfile on`,")
    w("  `tcp_nopush on`, `open_file_cache`, `worker_processes auto`, access log off (the config")
    w("  is written by `bench/compare.sh`).\n")

    for workload, (title, metrics) in WORKLOADS.items():
        servers = [s for s in SERVERS if (workload, s) in by or (workload, s) in failures]
        if not servers:
            continue
        w(f"## {workload}: {title}\n")
        head = "| server | " + " | ".join(f"{label}" for _, label, _, _ in metrics) + " |"
        w(head)
        w("|" + "---|" * (len(metrics) + 1))
        for s in servers:
            cells = []
            for path, _, scale, _ in metrics:
                st = stats(workload, s, path, scale)
                if st is None:
                    cells.append("n/a")
                    continue
                med, lo, hi, n = st
                cell = f"{fmt(med)} ({fmt(lo)}-{fmt(hi)})" if n > 1 else fmt(med)
                base = stats(workload, "mediarelay", path, scale)
                if s != "mediarelay" and base and base[0]:
                    cell += f" x{med / base[0]:.2f}"
                cells.append(cell)
            fail = f" ({failures[(workload, s)]} failed runs)" if failures.get((workload, s)) else ""
            w(f"| {NAMES.get(s, s)}{fail} | " + " | ".join(cells) + " |")
        w("")
        reference = workload.startswith(("iperf3", "loopback"))
        if reference:
            w("Commands:\n")
        else:
            w("Commands (`mediarelay-load --addr 127.0.0.1:PORT --ticket-file T --server-pid PIDS --json` plus):\n")
        for s in servers:
            if (workload, s) in args:
                cmd = args[(workload, s)]
                if workload.startswith("iperf3"):
                    w(f"- {NAMES.get(s, s)}: `iperf3 {cmd}` (server: `iperf3 -s -B 127.0.0.1 -1`)")
                else:
                    w(f"- {NAMES.get(s, s)}: `{cmd}`")
        w("")

    # Targets.
    def med(workload, server, path, scale=1):
        st = stats(workload, server, path, scale)
        return st[0] if st else None

    checks = []

    def check(text, ok, detail):
        checks.append((text, ok, detail))

    for wl in ["vod-1m", "vod-64k"]:
        m_cpu, m_bps = med(wl, "mediarelay", "server_cpu_seconds_per_gb"), med(wl, "mediarelay", "received_bytes_per_s")
        for peer, factor in [("nginx", 1.0), ("uws", 0.7)]:
            p_cpu, p_bps = med(wl, peer, "server_cpu_seconds_per_gb"), med(wl, peer, "received_bytes_per_s")
            if None in (m_cpu, p_cpu, m_bps, p_bps):
                continue
            check(f"{wl}: CPU-s/GB <= {factor} x {NAMES[peer]}", m_cpu <= factor * p_cpu,
                  f"{fmt(m_cpu)} vs {fmt(factor * p_cpu)}")
            check(f"{wl}: bytes/s >= {NAMES[peer]}", m_bps >= p_bps,
                  f"{fmt(m_bps / 1e9)} vs {fmt(p_bps / 1e9)} GB/s")
    for wl, lag_limit in [("fanout-64k", 10.0), ("fanout-1m", 100.0)]:
        m_cpu = med(wl, "mediarelay", "server_cpu_seconds_per_gb")
        for peer in ["ws", "uws"]:
            p_cpu = med(wl, peer, "server_cpu_seconds_per_gb")
            if None not in (m_cpu, p_cpu):
                check(f"{wl}: CPU-s/GB <= 0.5 x {NAMES[peer]}", m_cpu <= 0.5 * p_cpu,
                      f"{fmt(m_cpu)} vs {fmt(0.5 * p_cpu)}")
        lag = med(wl, "mediarelay", "lag_ms.p99")
        if lag is not None:
            check(f"{wl}: p99 delivery lag <= {fmt(lag_limit)} ms", lag <= lag_limit, f"{fmt(lag)} ms")
    lag = med("fanout-half", "mediarelay", "lag_ms.p99")
    if lag is not None:
        check("fanout at half the maximum rate: p99 lag <= 5 ms", lag <= 5.0, f"{fmt(lag)} ms")
    m_idle, u_idle = med("idle", "mediarelay", "server_kib_per_connection"), med("idle", "uws", "server_kib_per_connection")
    if None not in (m_idle, u_idle):
        check("idle: KiB per connection <= uWebSockets.js", m_idle <= u_idle, f"{fmt(m_idle)} vs {fmt(u_idle)} KiB")
    hs = med("connect", "mediarelay", "handshakes_per_s")
    if hs is not None:
        check(">= 20,000 upgrades/s with the ticket check", hs >= 20000, f"{fmt(hs)}/s")
    for p in ["iperf3-P1", "iperf3-P4"]:
        v = med(p, "iperf3", "received_bytes_per_s")
        if v is not None:
            check(f"{p} measured in the same run (reference)", True, f"{fmt(v / 1e9)} GB/s")

    w("## Targets (from the medians above)\n")
    w("| target | result | figure |")
    w("|---|---|---|")
    for text, ok, detail in checks:
        w(f"| {text} | {'met' if ok else '**missed**'} | {detail} |")
    w("")
    notes = Path(__file__).with_name("NOTES.md")
    if notes.exists() and a.quick != "1":
        w(notes.read_text())
    Path(a.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
