"""The validator as pict-rs really calls it. Each request below is built the way pict-rs 0.5 sends it:

- robinst/pict-rs@31049d3 (0.5.16) src/ingest.rs:195-214: POST to the configured URL, `Content-Type` set
  to the stored media type, body `Body::wrap_stream(...)` of the stored file; any non-2xx fails the upload
  (`FailedExternalValidation`), a timeout or a closed connection too.
- src/lib.rs:1582-1592 `build_client()`: reqwest with `user_agent("pict-rs v0.5.0-main")`, rustls, no
  http2 feature (Cargo.toml:49): HTTP/1.1 only, pooled keep-alive connections (reqwest's defaults).
- hyperium/hyper@v1.3.1 src/proto/h1/role.rs:1355-1369: a body of unknown length is sent with
  `transfer-encoding: chunked` and no Content-Length; seanmonstar/reqwest@v0.12.4 adds `accept: */*`.
So: HTTP/1.1, chunked frames of a few KiB, no Content-Length, a second upload on the same connection.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest

from .conftest import run_cli
from .mediafiles import image_bytes
from .test_serve import TOKEN, Validator


class PictrsClient:
    """One pooled connection, as reqwest keeps it, speaking the bytes hyper writes."""

    def __init__(self, port: int, chunk: int = 4096) -> None:
        self.port, self.chunk = port, chunk
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def upload(self, data: bytes, media_type: str, token: str = TOKEN) -> tuple[int, dict, dict]:
        head = (
            f"POST /validate/{token} HTTP/1.1\r\ncontent-type: {media_type}\r\nuser-agent: pict-rs v0.5.0-main\r\n"
            f"accept: */*\r\ntransfer-encoding: chunked\r\nhost: 127.0.0.1:{self.port}\r\n\r\n"
        ).encode()
        frames = b"".join(
            b"%x\r\n" % len(data[i : i + self.chunk]) + data[i : i + self.chunk] + b"\r\n"
            for i in range(0, len(data), self.chunk)
        )
        self.sock.sendall(head + frames + b"0\r\n\r\n")
        return self.read_response()

    def read_response(self) -> tuple[int, dict, dict]:
        while b"\r\n\r\n" not in self.buffer:
            more = self.sock.recv(65536)
            if not more:
                raise ConnectionError("closed before an answer")
            self.buffer += more
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self.buffer += self.sock.recv(65536)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, json.loads(body) if body else {}

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listed_validator(tmp_path, tiny_bundle_master, write_policy):
    """A policy that clears everything and a hash list naming one picture: one upload is accepted, the
    other rejected, each after its body was read and hashed."""
    flagged = image_bytes("PNG", 71, size=(320, 240))
    listed = tmp_path / "list.csv"
    listed.write_text(f"type,hash\nsha256,{hashlib.sha256(flagged).hexdigest()}\n")
    assert run_cli("hashlist", "import", str(listed), "--name", "known", "--state", str(tmp_path / "state.db"),
                   check=True).returncode == 0  # fmt: skip
    clear = write_policy({"any": {"cartoon": 5.0}}, {"any": 1}, name="clear-everything")
    v = Validator(tmp_path, tiny_bundle_master, "--policy", str(clear), "--max-body-mb", "1")
    yield v, flagged
    v.stop()


def test_pictrs_chunked_uploads_on_one_keep_alive_connection_are_scored(listed_validator, tmp_path):
    v, flagged = listed_validator
    clean = image_bytes("JPEG", 72, size=(320, 240))
    client = PictrsClient(v.port)
    try:
        status, headers, body = client.upload(clean, "image/jpeg")
        assert status == 200 and body["sha256"] == hashlib.sha256(clean).hexdigest(), body
        assert headers.get("connection", "keep-alive").lower() != "close"  # pict-rs keeps it in its pool
        status, _, body = client.upload(flagged, "image/png")  # the same connection
        assert status == 406 and body["verdict"] == "rejected", body
        status, _, _ = client.upload(image_bytes("WEBP", 73), "image/webp")  # and a third
        assert status == 200
    finally:
        client.close()
    (item,) = list((tmp_path / "q" / "items").iterdir())
    assert (item / "data").read_bytes() == flagged  # the whole body, de-chunked, kept as evidence
    assert v.health()["inferred"] == 3  # every body was decoded and scored by the model (the list decided one)


def test_chunked_bodies_over_the_limit_and_framing_tricks_are_refused(listed_validator):
    v, _ = listed_validator
    client = PictrsClient(v.port, chunk=64 << 10)
    try:
        status, headers, _ = client.upload(b"\x89PNG" + b"\x00" * (2 << 20), "image/png")  # 2 MiB > 1 MiB
        assert status == 413 and headers.get("connection", "").lower() == "close"
    finally:
        client.close()
    for framing in (
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",  # both: request smuggling
        b"Transfer-Encoding: gzip, chunked\r\n",  # a coding we would not undo
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
    ):
        with socket.create_connection(("127.0.0.1", v.port), timeout=10) as sock:
            sock.sendall(b"POST /validate/" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n" + framing
                         + b"\r\n5\r\nhello\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # fmt: skip
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except TimeoutError:
                pass
        status = int(answer.split(b" ", 2)[1])
        assert status in (400, 501), (framing, answer[:200])
        assert answer.count(b"HTTP/1.") == 1, answer  # the rest was never taken for a request
    assert v.post(image_bytes("PNG", 74))[0] == 200  # still serving


def test_stalled_connections_from_pictrs_own_address_never_lock_pictrs_out(listed_validator):
    """128+ idle connections from 127.0.0.1 (where pict-rs connects from) and some that stall mid-head:
    real uploads still get through at once; the idle ones are closed after read_timeout_s."""
    v, _ = listed_validator
    idle = []
    try:
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", v.port), timeout=10)
            if i % 3 == 0:
                sock.sendall(b"POST /validate/" + TOKEN.encode()[:5])  # a head that never ends
            idle.append(sock)
        started = time.monotonic()
        client = PictrsClient(v.port)
        try:
            for seed in range(3):
                status, _, _ = client.upload(image_bytes("PNG", 80 + seed), "image/png")
                assert status == 200
        finally:
            client.close()
        assert time.monotonic() - started < 5
        health = v.health()
        assert health["dropped_connections"] >= 300 - 256  # past the cap, the oldest without the token went
    finally:
        for sock in idle:
            sock.close()
