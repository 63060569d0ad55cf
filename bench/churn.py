#!/usr/bin/env python3
"""Subscription churn against a running relay, as the adversarial review ran it: clients
that connect, subscribe to 16 stream names nothing was ever written to, and leave, again
and again. Reports the relay's CPU (cores, from /proc) during the churn and in the
10 seconds after it, its resident memory before and after, and the streams it still follows.

    bench/churn.py --addr 127.0.0.1:18080 --admin 127.0.0.1:19090 --ticket T --pid PID \\
        [--duration 20] [--rate 300] [--threads 8]

Loopback only; bounded by --duration. Uses Python's `websockets` (tests/python/requirements.txt).
"""

import argparse
import json
import os
import threading
import time
import urllib.request

from websockets.sync.client import connect

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metric(admin, name):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=2) as r:
        total = 0.0
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--ticket", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--rate", type=float, default=300, help="sessions per second, all threads")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--after", type=float, default=10)
    a = ap.parse_args()

    stop = time.monotonic() + a.duration
    sessions = [0] * a.threads
    errors = [0] * a.threads
    per_thread = a.rate / a.threads

    def churn(t):
        n = 0
        start = time.monotonic()
        while time.monotonic() < stop:
            due = start + n / per_thread
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            try:
                with connect(f"ws://{a.addr}/ws?ticket={a.ticket}", open_timeout=5) as ws:
                    for i in range(16):
                        ws.send(json.dumps({"op": "subscribe", "id": i,
                                            "stream": f"churn/{t}/{n}/{i}"}))
                sessions[t] += 1
            except Exception:
                errors[t] += 1
            n += 1

    rss0 = rss_mb(a.pid)
    cpu0, t0 = cpu_seconds(a.pid), time.monotonic()
    threads = [threading.Thread(target=churn, args=(t,)) for t in range(a.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    cpu1, t1 = cpu_seconds(a.pid), time.monotonic()
    rss1 = rss_mb(a.pid)
    streams_at_end = metric(a.admin, "mediarelay_live_streams")
    time.sleep(a.after)
    cpu2, t2 = cpu_seconds(a.pid), time.monotonic()
    print(json.dumps({
        "sessions": sum(sessions),
        "errors": sum(errors),
        "sessions_per_s": round(sum(sessions) / (t1 - t0), 1),
        "relay_cores_during": round((cpu1 - cpu0) / (t1 - t0), 3),
        "relay_cores_after": round((cpu2 - cpu1) / (t2 - t1), 3),
        "rss_mb_before": round(rss0, 1),
        "rss_mb_end_of_churn": round(rss1, 1),
        "rss_mb_after": round(rss_mb(a.pid), 1),
        "live_streams_at_end": streams_at_end,
        "live_streams_after": metric(a.admin, "mediarelay_live_streams"),
    }))


if __name__ == "__main__":
    main()
