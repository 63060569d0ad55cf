#!/usr/bin/env python3
"""Turns bench/compare.sh's raw reports (one JSON line per run) into bench/RESULTS.md:
the machine, every command, medians and min-max per workload, load client and server
(one table per client), each peer's figure as a ratio to mediarelay's as measured by the
same client, and the targets checked against the medians, for each client separately.
Raw lines without a "client" field count as mediarelay-load's (older reports).

    python3 bench/summarize.py bench/results/runs.jsonl bench/RESULTS.md --machine ... --versions ...
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

SERVERS = ["mediarelay", "mediarelay-writev", "nginx", "uws", "ws", "nest", "iperf3", "send"]
NAMES = {
    "mediarelay": "mediarelay",
    "mediarelay-writev": "mediarelay (writev)",
    "nginx": "nginx (sendfile, HTTP/1.1)",
    "uws": "uWebSockets.js",
    "ws": "Node.js ws",
    "nest": "NestJS + socket.io",
    "iperf3": "iperf3",
    "send": "send(2) in a loop",
}

CLIENTS = ["mediarelay-load", "wsload"]
CLIENT_NAMES = {
    "mediarelay-load": "mediarelay-load (Rust)",
    "wsload": "wsload (Node.js + ws)",
}
# What each client's command line starts with (the raw reports hold the rest).
CLIENT_COMMANDS = {
    "mediarelay-load": "mediarelay-load --addr 127.0.0.1:PORT --ticket-file T --server-pid PIDS --json",
    "wsload": "node bench/wsload/wsload.mjs --addr 127.0.0.1:PORT --ticket-file T --server-pid PIDS --quiet",
}
DEFAULT_CLIENT = "mediarelay-load"

FANOUT_METRICS = [
    ("received_bytes_per_s", "GB/s", 1e-9, False),
    ("server_cpu_seconds_per_gb", "server CPU-s/GB", 1, True),
    ("lag_ms.p50", "lag p50 ms", 1, True),
    ("lag_ms.p99", "lag p99 ms", 1, True),
    ("e2e_lag_ms.p50", "end-to-end lag p50 ms", 1, True),
    ("e2e_lag_ms.p99", "end-to-end lag p99 ms", 1, True),
    ("delivered_share", "segments delivered", 1, False),
    ("server_rss_kib", "server RSS MiB", 1 / 1024, True),
]

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
    "fanout-64k": ("fanout, 1,000 subscribers, 64 KiB segments at 50/s (3.3 GB/s asked)", FANOUT_METRICS),
    "fanout-1m": ("fanout, 1,000 subscribers, 1 MiB segments at 20/s (21 GB/s asked: overload)", FANOUT_METRICS),
    "fanout-half": ("fanout, 1,000 subscribers, 64 KiB segments at a fixed 25/s (half of fanout-64k's rate, 1.6 GB/s asked)",
                    FANOUT_METRICS),
    "fanout-1m-light": ("fanout, 1,000 subscribers, 1 MiB segments at 2/s (light: 2.1 GB/s asked)", FANOUT_METRICS),
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
    "wss-idle": ("idle authenticated connections over TLS (wss://)", [
        ("connections", "connections", 1, False),
        ("server_kib_per_connection", "server KiB/connection", 1, True),
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
    by = defaultdict(list)  # (workload, client, server) -> [report]
    args = {}
    failures = defaultdict(int)
    for r in rows:
        key = (r["workload"], r.get("client") or DEFAULT_CLIENT, r["server"])
        if r.get("error"):
            failures[key] += 1
            continue
        by[key].append(r["report"])
        args.setdefault(key, r.get("args", ""))
    seen_clients = {k[1] for k in list(by) + list(failures)}
    clients = [c for c in CLIENTS if c in seen_clients] + sorted(seen_clients - set(CLIENTS))

    def stats(workload, client, server, path, scale):
        vals = [get(rep, path) for rep in by.get((workload, client, server), [])]
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
    w("alternately (the order rotates each round), each restarted at the start of every round, on")
    w("the same machine, over loopback. Two load clients drive them: `mediarelay-load` (Rust, every")
    w("workload) and `wsload` (`bench/wsload/`, Node.js + `ws`, one thread: vod and fanout, each run")
    w("right after mediarelay-load's with the same parameters; nginx over HTTP/1.1 with `wsload --http`;")
    w("not NestJS, whose socket.io it does not speak). Each workload has one table per client, and")
    w("ratios (peer / mediarelay) compare figures measured by the same client only. wsload often")
    w("cannot take what the servers send (see its `client_cpu_seconds` in the raw reports): where it")
    w("is the bottleneck its figures measure it as much as the server.")
    w("CPU-s/GB is the server's own CPU (utime + stime of its processes, from /proc) per GB the")
    w("client received (mediarelay-load: every byte read, HTTP heads included; wsload: WebSocket")
    w("frame bytes, or HTTP body bytes only); the load client shares the machine, so throughput")
    w("alone may measure the client. Delivery lag is the client's clock at the last byte")
    w("of a segment minus the meta `ts` the server stamped when it had the segment ready to send")
    w("(PROTOCOL.md); end-to-end lag starts instead when the load client's producer renamed the")
    w("segment into the storage directory, so it also counts the server's discovery, its read of")
    w("the file, and any backlog it holds before stamping `ts`.\n")
    w(f"- Machine: {a.machine}")
    w(f"- Versions: {a.versions}")
    w("- Servers: mediarelay with its defaults (8 MiB send queue, 512 MiB cache; payloads leave")
    w("  plain-text connections by `sendfile`), mediarelay (writev): the same binary with")
    w("  `MEDIARELAY_SEND_PATH=writev` (its copying send path); the peers in")
    w("  `bench/peers/` with the same 8 MiB per-connection send limit; nginx: `sendfile on`,")
    w("  `tcp_nopush on`, `open_file_cache`, `worker_processes auto`, access log off (the config")
    w("  is written by `bench/compare.sh`).\n")

    for workload, (title, metrics) in WORKLOADS.items():
        present = [c for c in clients if any((workload, c, s) in by or (workload, c, s) in failures for s in SERVERS)]
        if not present:
            continue
        w(f"## {workload}: {title}\n")
        reference = workload.startswith(("iperf3", "loopback"))
        for client in present:
            servers = [s for s in SERVERS if (workload, client, s) in by or (workload, client, s) in failures]
            if not reference:
                w(f"### {workload} with {CLIENT_NAMES.get(client, client)}\n")
            head = "| server | " + " | ".join(f"{label}" for _, label, _, _ in metrics) + " |"
            w(head)
            w("|" + "---|" * (len(metrics) + 1))
            for s in servers:
                cells = []
                for path, _, scale, _ in metrics:
                    st = stats(workload, client, s, path, scale)
                    if st is None:
                        cells.append("n/a")
                        continue
                    med, lo, hi, n = st
                    cell = f"{fmt(med)} ({fmt(lo)}-{fmt(hi)})" if n > 1 else fmt(med)
                    base = stats(workload, client, "mediarelay", path, scale)
                    if s != "mediarelay" and base and base[0]:
                        cell += f" x{med / base[0]:.2f}"
                    cells.append(cell)
                nf = failures.get((workload, client, s))
                fail = f" ({nf} failed runs)" if nf else ""
                w(f"| {NAMES.get(s, s)}{fail} | " + " | ".join(cells) + " |")
            w("")
            if reference:
                w("Commands:\n")
            else:
                cmd = CLIENT_COMMANDS.get(client, client)
                w(f"Commands (`{cmd}` plus):\n")
            for s in servers:
                if (workload, client, s) in args:
                    cmd = args[(workload, client, s)]
                    if workload.startswith("iperf3"):
                        w(f"- {NAMES.get(s, s)}: `iperf3 {cmd}` (server: `iperf3 -s -B 127.0.0.1 -1`)")
                    else:
                        w(f"- {NAMES.get(s, s)}: `{cmd}`")
            w("")

    # Targets, for each client separately.
    def med(workload, client, server, path, scale=1):
        st = stats(workload, client, server, path, scale)
        return st[0] if st else None

    checks = []  # (target, client, result, figure); result: True, False or a word

    def check(text, client, ok, detail):
        checks.append((text, client, ok, detail))

    def best(workload, client, peers, path, lowest):
        """The best (lowest or highest) median among peers: (value, peer) or None."""
        vals = [(v, p) for p in peers if (v := med(workload, client, p, path)) is not None]
        if not vals:
            return None
        return min(vals) if lowest else max(vals)

    for client in clients:
        for wl in ["vod-1m", "vod-64k"]:
            m_cpu, n_cpu = med(wl, client, "mediarelay", "server_cpu_seconds_per_gb"), med(wl, client, "nginx", "server_cpu_seconds_per_gb")
            if None not in (m_cpu, n_cpu):
                check(f"{wl}: CPU-s/GB <= 0.8 x nginx's", client, m_cpu <= 0.8 * n_cpu, f"{fmt(m_cpu)} vs {fmt(0.8 * n_cpu)}")
        for wl, what in [("fanout-half", "64 KiB at 25/s"), ("fanout-1m-light", "1 MiB at 2/s")]:
            peers = ["uws", "ws"]
            m_cpu = med(wl, client, "mediarelay", "server_cpu_seconds_per_gb")
            b = best(wl, client, peers, "server_cpu_seconds_per_gb", lowest=True)
            if m_cpu is not None and b:
                check(f"{wl} ({what}): CPU-s/GB <= 0.5 x the best peer's (uWebSockets.js, Node.js ws)", client,
                      m_cpu <= 0.5 * b[0], f"{fmt(m_cpu)} vs {fmt(0.5 * b[0])} (0.5 x {NAMES[b[1]]})")
            m_lag = med(wl, client, "mediarelay", "lag_ms.p99")
            b = best(wl, client, peers, "lag_ms.p99", lowest=True)
            if m_lag is not None and b:
                check(f"{wl} ({what}): lag p99 <= the best peer's", client, m_lag <= b[0],
                      f"{fmt(m_lag)} vs {fmt(b[0])} ms ({NAMES[b[1]]})")
        for wl, what in [("fanout-64k", "64 KiB at 50/s"), ("fanout-1m", "1 MiB at 20/s")]:
            peers = ["uws", "ws", "nest"]
            m_bps = med(wl, client, "mediarelay", "received_bytes_per_s")
            b = best(wl, client, peers, "received_bytes_per_s", lowest=False)
            if m_bps is not None and b:
                check(f"{wl} ({what}, overload): delivered GB/s >= the best peer's", client, m_bps >= b[0],
                      f"{m_bps / 1e9:.3f} vs {b[0] / 1e9:.3f} GB/s ({NAMES[b[1]]})")
            e2e = med(wl, client, "mediarelay", "e2e_lag_ms.p99")
            if e2e is not None:
                check(f"{wl} ({what}, overload): end-to-end lag p99 <= 1,000 ms", client, e2e <= 1000.0, f"{fmt(e2e)} ms")
        m_idle = med("idle", client, "mediarelay", "server_kib_per_connection")
        if m_idle is not None:
            check("idle: KiB per connection <= 0.8", client, m_idle <= 0.8, f"{fmt(m_idle)} KiB")
        hs = med("connect", client, "mediarelay", "handshakes_per_s")
        if hs is not None:
            check(">= 20,000 upgrades/s with the ticket check", client, hs >= 20000, f"{fmt(hs)}/s")
    # Issue 13 (wss): measured with mediarelay-load only.
    client = "mediarelay-load"
    for wl, plain in [("wss-vod-1m", "vod-1m"), ("wss-vod-64k", "vod-64k")]:
        m_cpu = med(wl, client, "mediarelay", "server_cpu_seconds_per_gb")
        p_cpu = med(plain, client, "mediarelay", "server_cpu_seconds_per_gb")
        if None not in (m_cpu, p_cpu):
            check(f"{wl}: CPU-s/GB <= 2 x mediarelay's plain-text {plain}", client, m_cpu <= 2 * p_cpu,
                  f"{fmt(m_cpu)} vs {fmt(2 * p_cpu)} (x{m_cpu / p_cpu:.2f})")
        for peer in ["nginx", "uws"]:
            p_cpu = med(wl, client, peer, "server_cpu_seconds_per_gb")
            if None not in (m_cpu, p_cpu):
                check(f"{wl}: CPU-s/GB <= {NAMES[peer]}'s", client, m_cpu <= p_cpu, f"{fmt(m_cpu)} vs {fmt(p_cpu)}")
    hs = med("wss-connect", client, "mediarelay", "handshakes_per_s")
    if hs is not None:
        check(">= 3,000 full TLS 1.3 handshakes + ticket checks/s", client, hs >= 3000, f"{fmt(hs)}/s")
    m_idle, p_idle = med("wss-idle", client, "mediarelay", "server_kib_per_connection"), med("idle", client, "mediarelay", "server_kib_per_connection")
    if m_idle is not None:
        plain = f", plain text {fmt(p_idle)} KiB" if p_idle is not None else ""
        check("wss-idle: KiB per idle TLS connection (reported next to plain text)", client, "info", f"{fmt(m_idle)} KiB{plain}")
    for client in clients:
        for p in ["iperf3-P1", "iperf3-P4"]:
            v = med(p, client, "iperf3", "received_bytes_per_s")
            if v is not None:
                check(f"{p} measured in the same run (reference)", "-", True, f"{fmt(v / 1e9)} GB/s")
    # Informational: the send paths side by side (not a target).
    for client in clients:
        for wl in ["vod-1m", "vod-64k", "fanout-64k", "fanout-1m", "fanout-half", "fanout-1m-light"]:
            m_cpu = med(wl, client, "mediarelay", "server_cpu_seconds_per_gb")
            v_cpu = med(wl, client, "mediarelay-writev", "server_cpu_seconds_per_gb")
            if None not in (m_cpu, v_cpu):
                ratio = f" (writev x{v_cpu / m_cpu:.2f})" if m_cpu else ""
                check(f"{wl}: mediarelay (sendfile) vs mediarelay (writev) CPU-s/GB", client, "info",
                      f"{fmt(m_cpu)} vs {fmt(v_cpu)}{ratio}")

    w("## Targets (from the medians above, for each load client separately)\n")
    w("| target | client | result | figure |")
    w("|---|---|---|---|")
    for text, client, ok, detail in checks:
        result = ok if isinstance(ok, str) else ("met" if ok else "**missed**")
        w(f"| {text} | {client} | {result} | {detail} |")
    w("")
    notes = Path(__file__).with_name("NOTES.md")
    if notes.exists() and a.quick != "1":
        w(notes.read_text())
    Path(a.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
