#!/usr/bin/env python3
"""The kernel's own cost of pushing bytes through one loopback TCP connection with send(2):
one sender process writing the same buffer over and over (the kernel copies it into its
socket buffers each time), one receiver process draining into a reused buffer. The figure
is the sender's CPU seconds (user + system, from os.times()) per GB received, the measure
bench/compare.sh reports for the servers. On loopback the receiving side's TCP processing
runs in the sender's context (softirq), so this is the floor for any server on this machine
that hands the kernel each byte with a copying send: what is left of a server's CPU-s/GB
above it is the server's own.

    python3 bench/loopback_copy.py --size 1048576 --total-mb 2048 --run 1

prints one JSON line in bench/compare.sh's raw-report format.
"""
import argparse
import json
import multiprocessing as mp
import os
import socket
import time


def drain(port, ready):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    ready.put(True)
    conn, _ = srv.accept()
    buf = memoryview(bytearray(1 << 20))
    while conn.recv_into(buf):
        pass


def measure(size, count, port):
    ready = mp.Queue()
    rx = mp.Process(target=drain, args=(port, ready))
    rx.start()
    ready.get()
    sock = socket.create_connection(("127.0.0.1", port))
    data = os.urandom(size)
    t0, w0 = os.times(), time.monotonic()
    for _ in range(count):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    rx.join()
    t1, w1 = os.times(), time.monotonic()
    sock.close()
    gb = size * count / 1e9
    user, system = t1.user - t0.user, t1.system - t0.system
    return {
        "message_bytes": size,
        "received_bytes_per_s": round(gb * 1e9 / (w1 - w0), 0),
        "server_cpu_seconds_per_gb": round((user + system) / gb, 4),
        "kernel_cpu_seconds_per_gb": round(system / gb, 4),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1 << 20, help="bytes per write")
    ap.add_argument("--total-mb", type=int, default=2048, help="MiB to send")
    ap.add_argument("--run", type=int, default=1, help="round number for the report")
    ap.add_argument("--port", type=int, default=15301)
    a = ap.parse_args()
    count = max(1, (a.total_mb << 20) // a.size)
    workload = f"loopback-{a.size >> 10}k" if a.size < (1 << 20) else f"loopback-{a.size >> 20}m"
    report = measure(a.size, count, a.port)
    print(json.dumps({
        "workload": workload,
        "server": "send",
        "run": a.run,
        "args": f"python3 bench/loopback_copy.py --size {a.size} --total-mb {a.total_mb}",
        "report": report,
    }), flush=True)


if __name__ == "__main__":
    main()
