#!/usr/bin/env python3
"""The contract findings of issue 18, checked against a relay binary given as the argument:
request smuggling shapes, the exact head bound, `.` keys, big numbers, a late init segment,
the failure limiter and colour codes in a log file. Starts the relay on 127.0.0.1:18181 /
19191 with a scratch directory; prints one line per finding.

    python3 bench/contract_checks.py target/release/mediarelay
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import json

from websockets.sync.client import connect

BIN = sys.argv[1]
tmp = tempfile.mkdtemp(); media = os.path.join(tmp, "media"); os.makedirs(media + "/vod")
open(media + "/vod/a.bin", "wb").write(b"A" * 10)
tickets = os.path.join(tmp, "t.json")
t = subprocess.run([BIN, "ticket", "issue", "--tickets", tickets, "--uid", "u", "--streams", "*", "--ttl", "1h"], capture_output=True, text=True).stdout.strip()
log = open(os.path.join(tmp, "log"), "wb")
p = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:18181", "--admin", "127.0.0.1:19191", "--storage", media, "--tickets", tickets, "--workers", "1"], stderr=log, env=dict(os.environ, MEDIARELAY_POLL_INTERVAL="50ms"))
for _ in range(100):
    try:
        urllib.request.urlopen("http://127.0.0.1:19191/readyz"); break
    except Exception: time.sleep(0.05)
def raw(req):
    s = socket.create_connection(("127.0.0.1", 18181)); s.settimeout(3); s.sendall(req)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d: break
            out += d
    except Exception: pass
    return out.split(b"\r\n")[0].decode(errors="replace")
res = {}
res["CL 0 then CL 30"] = raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 30\r\nConnection: close\r\n\r\n")
res["two Host"] = raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n")
h = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-F: "; h = h + b"a" * (16385 - 4 - len(h)) + b"\r\n\r\n"
res["16,385-byte head"] = raw(h)
ws = connect(f"ws://127.0.0.1:18181/ws?ticket={t}")
ws.send(json.dumps({"op": "get", "id": 1, "key": "vod/./a.bin"})); r = ws.recv()
res["get vod/./a.bin"] = "media frame (served)" if isinstance(r, bytes) else json.loads(r).get("code")
ws.send('{"op":"x","id":5,"n":123456789012345678901234567890}'); r = json.loads(ws.recv())
res["big number, id 5"] = f"id={r.get('id')} message={r.get('message')}"
ws.send(json.dumps({"op": "subscribe", "id": 2, "stream": "live/late"})); ws.recv()
os.makedirs(media + "/live/late")
open(media + "/live/late/init.mp4", "wb").write(b"INIT")
time.sleep(0.2)
open(media + "/live/late/.t", "wb").write(b"S1"); os.rename(media + "/live/late/.t", media + "/live/late/seg-0000000001.m4s")
first = ws.recv(timeout=3)
res["late init before seg 1"] = "yes" if b"init.mp4" in first[:200] else "no (first frame: seg 1)"
for _ in range(21):
    raw(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer wrong\r\n\r\n")
try:
    connect(f"ws://127.0.0.1:18181/ws?ticket={t}").close(); res["valid ticket after 21 bad ones"] = "101"
except Exception as e:
    res["valid ticket after 21 bad ones"] = str(e)[:60]
p.terminate(); p.wait()
res["ANSI codes in log file"] = "yes" if b"\x1b[" in open(os.path.join(tmp, "log"), "rb").read() else "no"
for k, v in res.items(): print(f"{k}: {v}")
