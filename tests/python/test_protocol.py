"""PROTOCOL.md checked by an independent client: Python's `websockets` package against the
real binary on loopback."""

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("MEDIARELAY_BIN", os.path.join(ROOT, "target", "debug", "mediarelay"))


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Relay:
    """The relay binary on loopback ports it picks itself (port 0), read from its log."""

    def __init__(self, tmp, extra_args=(), env=None):
        self.dir = tmp
        self.media = os.path.join(tmp, "media")
        self.tickets = os.path.join(tmp, "tickets.json")
        os.makedirs(self.media, exist_ok=True)
        log_path = os.path.join(tmp, "relay.log")
        self.log = open(log_path, "wb")
        env = dict(os.environ, MEDIARELAY_POLL_INTERVAL="50ms", **(env or {}))
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
             "--storage", self.media, "--tickets", self.tickets, "--workers", "2", *extra_args],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        deadline = time.time() + 20
        while time.time() < deadline:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                text = ANSI.sub("", f.read())
            found = re.search(r"mediarelay serving.*listen=127\.0\.0\.1:(\d+).*admin=127\.0\.0\.1:(\d+)", text)
            if found:
                self.port, self.admin = int(found.group(1)), int(found.group(2))
                plain = re.search(r"listen_plain=127\.0\.0\.1:(\d+)", text)
                self.plain_port = int(plain.group(1)) if plain else None
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited: {text}")
            time.sleep(0.02)
        else:
            raise RuntimeError("relay did not log its addresses")
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.02)
        raise RuntimeError("relay did not become ready")

    def entries(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("mediarelay_ticket_snapshot_entries "):
                    return int(line.split()[1])
        return 0

    def issue(self, streams, *extra):
        before = self.entries()
        out = subprocess.run(
            [BIN, "ticket", "issue", "--tickets", self.tickets, "--uid", "py", "--streams", streams, *extra],
            check=True, capture_output=True, text=True)
        deadline = time.time() + 5
        while self.entries() <= before and time.time() < deadline:
            time.sleep(0.02)
        return out.stdout.strip()

    def put(self, key, data):
        path = os.path.join(self.media, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), ".upload.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, path)

    def ws(self, ticket, query=False):
        url = f"ws://127.0.0.1:{self.port}/ws"
        if query:
            return connect(url + f"?ticket={ticket}", open_timeout=5, close_timeout=5)
        return connect(url, additional_headers={"Authorization": f"Bearer {ticket}"},
                       open_timeout=5, close_timeout=5)

    def metric(self, name, labels=""):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=2) as r:
            total = 0.0
            for line in r.read().decode().splitlines():
                if line.startswith(name) and labels in line and not line.startswith("#"):
                    total += float(line.split()[-1])
            return total

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=15)
        self.log.close()


@pytest.fixture
def relay():
    tmp = tempfile.mkdtemp()
    r = Relay(tmp)
    yield r
    r.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def media(msg):
    assert isinstance(msg, bytes)
    (n,) = struct.unpack(">I", msg[:4])
    return json.loads(msg[4:4 + n]), msg[4 + n:]


def test_auth_failures(relay):
    for ticket, error in [(None, "ticket_missing"), ("bogus", "ticket_invalid")]:
        url = f"ws://127.0.0.1:{relay.port}/ws"
        headers = {} if ticket is None else {"Authorization": f"Bearer {ticket}"}
        with pytest.raises(InvalidStatus) as e:
            connect(url, additional_headers=headers, open_timeout=5)
        assert e.value.response.status_code == 401
        assert json.loads(e.value.response.body) == {"error": error}


def test_get_and_errors(relay):
    relay.put("vod/a.m4s", b"x" * 70000)
    t = relay.issue("vod/*")
    with relay.ws(t, query=True) as ws:
        ws.send(json.dumps({"op": "get", "id": 41, "key": "vod/a.m4s"}))
        meta, body = media(ws.recv(timeout=5))
        assert meta["id"] == 41 and meta["key"] == "vod/a.m4s" and meta["size"] == 70000
        assert body == b"x" * 70000
        ws.send("{")
        err = json.loads(ws.recv(timeout=5))
        assert err["op"] == "error" and err["code"] == "bad_request"
        ws.send(json.dumps({"op": "get", "id": 42, "key": "live/x"}))
        assert json.loads(ws.recv(timeout=5))["code"] == "forbidden"
        ws.send(json.dumps({"op": "get", "id": 43, "key": "vod/../etc/passwd"}))
        assert json.loads(ws.recv(timeout=5)) | {"message": ""} == {
            "op": "error", "id": 43, "code": "bad_request", "message": ""}


def test_subscribe_sees_new_segments(relay):
    t = relay.issue("live/cam1")
    with relay.ws(t) as ws:
        ws.send(json.dumps({"op": "subscribe", "id": 1, "stream": "live/cam1"}))
        assert json.loads(ws.recv(timeout=5)) == {"op": "subscribed", "id": 1, "stream": "live/cam1", "seq": 1}
        for seq in (1, 2, 3):
            relay.put(f"live/cam1/seg-{seq:010d}.ts", bytes([seq]) * 1000)
            meta, body = media(ws.recv(timeout=5))
            assert meta["seq"] == seq and meta["stream"] == "live/cam1"
            assert meta["key"] == f"live/cam1/seg-{seq:010d}.ts"
            assert body == bytes([seq]) * 1000
        ws.send(json.dumps({"op": "unsubscribe", "id": 2, "stream": "live/cam1"}))
        assert json.loads(ws.recv(timeout=5)) == {"op": "unsubscribed", "id": 2, "stream": "live/cam1"}


def test_binary_frame_closes_1003(relay):
    t = relay.issue("*")
    with relay.ws(t) as ws:
        ws.send(b"\x00\x01")
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
        assert e.value.rcvd.code == 1003


def test_big_message_closes_1009(relay):
    t = relay.issue("*")
    with relay.ws(t) as ws:
        ws.send(" " * 5000)
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
        assert e.value.rcvd.code == 1009


def test_revocation_closes_4401(relay):
    t = relay.issue("*")
    with relay.ws(t) as ws:
        subprocess.run([BIN, "ticket", "revoke", "--tickets", relay.tickets, t], check=True,
                       capture_output=True)
        start = time.time()
        closing = json.loads(ws.recv(timeout=5))
        assert closing == {"op": "closing", "reason": "ticket_revoked"}
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
        assert e.value.rcvd.code == 4401
        assert time.time() - start < 2.5
