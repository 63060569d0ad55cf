"""PROTOCOL.md v1.1 TLS, checked with Python's `ssl` and `websockets` against the real
binary: TLS 1.3 and 1.2 with a certificate from a test CA (trustme), the same bytes as in
plain text, certificate reload on SIGHUP (good and broken), plain HTTP sent to the TLS
port, a stalled handshake, and the drain over TLS."""

import os
import shutil
import signal
import socket
import ssl
import tempfile
import time

import pytest
import trustme
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from test_protocol import Relay, media


def write_cert(ca, dir, name):
    cert = ca.issue_cert("localhost", "127.0.0.1", common_name=name)
    chain, key = os.path.join(dir, "cert.pem"), os.path.join(dir, "key.pem")
    # Write through temporary names and rename, as an operator's renewal would.
    for path, blob in ((chain, b"".join(c.bytes() for c in cert.cert_chain_pems)),
                       (key, cert.private_key_pem.bytes())):
        with open(path + ".tmp", "wb") as f:
            f.write(blob)
        os.rename(path + ".tmp", path)
    return chain, key


@pytest.fixture
def tls_relay():
    tmp = tempfile.mkdtemp()
    ca = trustme.CA()
    chain, key = write_cert(ca, tmp, "first")
    r = Relay(tmp, ["--tls-cert", chain, "--tls-key", key, "--listen-plain", "127.0.0.1:0"],
              env={"MEDIARELAY_HANDSHAKE_TIMEOUT": "1s"})
    r.ca = ca
    yield r
    r.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def client_context(r, version=None):
    ctx = ssl.create_default_context()
    r.ca.configure_trust(ctx)
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def wss(r, ticket, version=None):
    ctx = client_context(r, version)
    return connect(f"wss://127.0.0.1:{r.port}/ws?ticket={ticket}", ssl=ctx,
                   server_hostname="localhost", open_timeout=5, close_timeout=5,
                   max_size=None)


def peer_name(r):
    """The common name of the certificate the relay presents to a new connection."""
    ctx = client_context(r)
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            return subject.get("commonName")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_get_and_subscribe_over_tls_match_plain_text(tls_relay, version):
    r = tls_relay
    t = r.issue("*")
    blob = os.urandom(300_000)
    r.put("vod/a.bin", blob)
    with wss(r, t, version) as ws:
        assert ws.socket.version() == {ssl.TLSVersion.TLSv1_3: "TLSv1.3",
                                       ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
        ws.send('{"op":"get","id":1,"key":"vod/a.bin"}')
        meta, payload = media(ws.recv(timeout=5))
        assert meta["size"] == len(blob) and payload == blob
        ws.send('{"op":"subscribe","id":2,"stream":"live/tls"}')
        with connect(f"ws://127.0.0.1:{r.plain_port}/ws?ticket={t}", open_timeout=5,
                     max_size=None) as plain:
            plain.send('{"op":"subscribe","id":2,"stream":"live/tls"}')
            assert '"subscribed"' in ws.recv(timeout=5)
            assert '"subscribed"' in plain.recv(timeout=5)
            for seq in range(1, 4):
                seg = os.urandom(70_000)
                r.put(f"live/tls/seg-{seq:010d}.m4s", seg)
                m1, p1 = media(ws.recv(timeout=5))
                m2, p2 = media(plain.recv(timeout=5))
                assert (m1["seq"], p1) == (seq, seg)
                assert (m2["seq"], p2) == (seq, seg)
                assert m1["ts"] == m2["ts"]
    version_label = "TLSv1.3" if version == ssl.TLSVersion.TLSv1_3 else "TLSv1.2"
    assert r.metric("mediarelay_tls_handshakes_total", f'version="{version_label}"') >= 1


def test_sighup_reloads_the_certificate_and_keeps_open_connections(tls_relay):
    r = tls_relay
    t = r.issue("*")
    assert peer_name(r) == "first"
    ws = wss(r, t)
    ws.send('{"op":"subscribe","id":1,"stream":"live/reload"}')
    assert '"subscribed"' in ws.recv(timeout=5)
    # A new certificate: new connections get it, the open one keeps streaming.
    write_cert(r.ca, r.dir, "second")
    r.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while peer_name(r) != "second":
        assert time.time() < deadline, "the new certificate was not used"
        time.sleep(0.05)
    r.put("live/reload/seg-0000000001.m4s", b"after reload")
    assert media(ws.recv(timeout=5)) [1] == b"after reload"
    # A broken one: an error in the log, nothing changes.
    with open(os.path.join(r.dir, "cert.pem"), "wb") as f:
        f.write(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    r.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "TLS certificate not reloaded" not in open(os.path.join(r.dir, "relay.log"), errors="replace").read():
        assert time.time() < deadline, "no error logged for the broken certificate"
        time.sleep(0.05)
    assert peer_name(r) == "second"
    r.put("live/reload/seg-0000000002.m4s", b"still here")
    assert media(ws.recv(timeout=5))[1] == b"still here"
    ws.close()


def test_plain_http_to_the_tls_port_and_a_stalled_handshake_are_closed(tls_relay):
    r = tls_relay
    t = r.issue("*")
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = s.recv(4096)
        # No HTTP answer: a TLS alert at most, then the end of the stream.
        assert not got.startswith(b"HTTP/")
        while got:
            got = s.recv(4096)
    stalled = socket.create_connection(("127.0.0.1", r.port), timeout=5)
    stalled.sendall(b"\x16\x03\x01\x00\xff")  # the start of a ClientHello, then silence
    started = time.time()
    with wss(r, t) as ws:  # others are served meanwhile
        ws.send('{"op":"get","id":1,"key":"nothing"}')
        assert '"not_found"' in ws.recv(timeout=5)
    assert stalled.recv(4096) == b""
    assert time.time() - started < 4, "closed after the 1 s handshake timeout"
    stalled.close()
    assert r.metric("mediarelay_tls_handshakes_total", 'result="failed"') >= 1
    assert r.metric("mediarelay_tls_handshakes_total", 'result="timeout"') >= 1


def test_drain_over_tls_closes_with_1001(tls_relay):
    r = tls_relay
    t = r.issue("*")
    ws = wss(r, t)
    r.proc.send_signal(signal.SIGTERM)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    r.proc.wait(timeout=15)


def test_a_certificate_that_does_not_load_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate")
    import subprocess
    from test_protocol import BIN
    out = subprocess.run([BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                          "--storage", str(tmp_path / "media"), "--tickets", str(tmp_path / "t.json"),
                          "--tls-cert", str(bad), "--tls-key", str(bad)],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "tls.cert" in lines[0], out.stderr


def test_revocation_and_header_tickets_over_tls(tls_relay):
    r = tls_relay
    t = r.issue("*")
    ctx = client_context(r)
    with connect(f"wss://127.0.0.1:{r.port}/ws", ssl=ctx, server_hostname="localhost",
                 additional_headers={"Authorization": f"Bearer {t}"},
                 open_timeout=5, close_timeout=5) as ws:
        ws.send('{"op":"subscribe","id":1,"stream":"live/rev"}')
        assert '"subscribed"' in ws.recv(timeout=5)
        started = time.time()
        import subprocess
        from test_protocol import BIN
        subprocess.run([BIN, "ticket", "revoke", "--tickets", r.tickets, t], check=True,
                       capture_output=True)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                msg = ws.recv(timeout=5)
                if '"closing"' in msg:
                    assert '"ticket_revoked"' in msg
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert time.time() - started < 3


def read_http_response(s):
    """Status code and body of one HTTP/1.1 answer (Content-Length or none) from `s`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before the answer's head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        body += s.recv(65536)
    return int(lines[0].split()[1]), body[:length]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_ingest_over_tls_takes_large_chunked_bodies_on_one_connection(tls_relay, version):
    # Bodies of many TLS records, sent in pieces that do not line up with records, two
    # requests on one kept-alive connection: what arrives is stored byte for byte.
    r = tls_relay
    t = r.issue("*", "--publish", "up/*")
    blobs = [os.urandom(1_000_003), os.urandom(70_001)]
    ctx = client_context(r, version)
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            for i, blob in enumerate(blobs):
                s.sendall((f"PUT /ingest/up/b{i}.bin HTTP/1.1\r\nHost: x\r\n"
                           f"Authorization: Bearer {t}\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n").encode())
                for at in range(0, len(blob), 23_456):
                    piece = blob[at:at + 23_456]
                    s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                s.sendall(b"0\r\n\r\n")
                status, _ = read_http_response(s)
                assert status == 201
    for i, blob in enumerate(blobs):
        with open(os.path.join(r.media, "up", f"b{i}.bin"), "rb") as f:
            assert f.read() == blob
    with wss(r, t, version) as ws:
        ws.send('{"op":"get","id":1,"key":"up/b0.bin"}')
        meta, payload = media(ws.recv(timeout=5))
        assert payload == blobs[0]


def test_a_tls13_session_is_resumed_with_a_ticket(tls_relay):
    r = tls_relay
    ctx = client_context(r, ssl.TLSVersion.TLSv1_3)

    def handshake(session=None):
        with socket.create_connection(("127.0.0.1", r.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                # The tickets come after the handshake: an answer read makes sure they did.
                s.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _ = read_http_response(s)
                assert status == 404
                return s.session, s.session_reused

    first, reused = handshake()
    assert not reused and first is not None and first.has_ticket
    _, reused = handshake(first)
    assert reused
