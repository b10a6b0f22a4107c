"""Upload-time validation for pict-rs's `[media] external_validation`.

pict-rs 0.5 POSTs each processed upload to `/validate/<token>` the way its HTTP client (reqwest on
hyper, HTTP/1.1 only) sends a streamed body: `Transfer-Encoding: chunked`, no Content-Length,
`Content-Type` = the stored media type, on pooled keep-alive connections (robinst/pict-rs@31049d3,
src/ingest.rs:195-214, src/lib.rs:1582-1592). Any 2xx accepts; anything else, a timeout or a closed
connection rejects (pict-rs fails closed).

The HTTP side is aiohttp (its C parser refuses Transfer-Encoding with Content-Length, duplicate or
malformed lengths); on top of it, every body, chunked or sized, is read under one byte limit and
deadlines, and connections are guarded without a per-address cap (pict-rs connects from one address,
which a cap would let an attacker exhaust): a connection that has not sent a request with the token
within `read_timeout_s` is closed, and past `max_unauthenticated` such connections the oldest is
dropped, so stalled sockets can never crowd pict-rs out.

Requests are read and decoded concurrently in a thread pool, then handed to the batcher
(scan/uploads.py), which decides and answers.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mirror_scan.hashing import sha256_bytes
from mirror_scan.logs import notice
from mirror_scan.redact import redact
from mirror_scan.scan.decoders.decode import decode
from mirror_scan.scan.record import picture_of
from mirror_scan.scan.uploads import Batcher, Job, ServeConfig

log = logging.getLogger(__name__)


class RedactingLog(logging.Filter):
    """aiohttp's own log lines (a malformed request, a dropped connection) one line each, the token
    redacted, no traceback: the request line may hold the token, and an attacker chooses the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        from mirror_scan.text import one_line

        message = one_line(redact(record.getMessage()))
        if record.exc_info and record.exc_info[1] is not None:
            message += (
                f": {one_line(redact(str(record.exc_info[1]).splitlines()[0] if str(record.exc_info[1]) else ''))}"
            )
        record.msg, record.args, record.exc_info, record.exc_text = message, (), None, None
        if record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class TooLarge(Exception):
    pass


def _guarded_server_class():
    from aiohttp import web

    class GuardedServer(web.Server):
        """aiohttp's low-level server, told of every connection: those that have not yet sent a request with
        the token are timed (`read_timeout_s` to send it) and capped (past the cap the oldest is dropped)."""

        def __init__(self, handler, *, head_timeout_s: float, max_unauthenticated: int, **kwargs) -> None:
            super().__init__(handler, **kwargs)
            self.head_timeout_s, self.max_unauthenticated = head_timeout_s, max_unauthenticated
            self.unauthenticated: collections.OrderedDict = collections.OrderedDict()
            self.dropped = 0

        def connection_made(self, handler, transport) -> None:
            super().connection_made(handler, transport)
            loop = asyncio.get_running_loop()
            self.unauthenticated[handler] = loop.call_later(self.head_timeout_s, self._drop, handler, "no request")
            while len(self.unauthenticated) > self.max_unauthenticated:
                self._drop(next(iter(self.unauthenticated)), "too many connections without the token")

        def connection_lost(self, handler, exc) -> None:
            timer = self.unauthenticated.pop(handler, None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(handler, exc)

        def trust(self, handler) -> None:
            """The connection sent a request with the right token: it is pict-rs's, and stays."""
            timer = self.unauthenticated.pop(handler, None)
            if timer is not None:
                timer.cancel()

        def in_progress(self, handler) -> None:
            """A request head arrived: its body has its own deadlines, the head timer is done."""
            timer = self.unauthenticated.get(handler)
            if timer is not None:
                timer.cancel()

        def _drop(self, handler, why: str) -> None:
            timer = self.unauthenticated.pop(handler, None)
            if timer is not None:
                timer.cancel()
            self.dropped += 1
            log.info("closed a connection from %s: %s", (handler.peername or ("?",))[0], why)
            if handler.transport is not None:
                handler.transport.abort()

    return GuardedServer


class ValidationServer:
    """The HTTP side: routes, framing checks, body limits and deadlines, slots, and the answer."""

    def __init__(self, batcher: Batcher, config: ServeConfig, info: dict[str, Any], decoder=decode, metrics=None):
        self.batcher, self.config, self.info = batcher, config, info
        self.decode = decoder  # a worker-process pool's decode in production (see decodepool.py)
        self.metrics = metrics  # ServeMetrics, or None
        self.slots: asyncio.Semaphore | None = None
        # Hashing and decoding block: they run here, never on the event loop.
        self.pool = ThreadPoolExecutor(max(4, config.max_in_flight), thread_name_prefix="validate")
        self.in_flight = 0
        self.server = None

    def make_server(self):
        from aiohttp import web

        logger = logging.getLogger("mirror_scan.intake.http.aiohttp")
        if not any(isinstance(f, RedactingLog) for f in logger.filters):
            logger.addFilter(RedactingLog())
        self.slots = asyncio.Semaphore(self.config.max_in_flight)
        self.server = _guarded_server_class()(
            self.handle,
            head_timeout_s=self.config.read_timeout_s,
            max_unauthenticated=self.config.max_unauthenticated,
            keepalive_timeout=self.config.keepalive_s,
            access_log=None,
            logger=logger,
            max_line_size=8190,
            max_field_size=8190,
            max_headers=64,
        )
        _ = web  # the class above is a web.Server
        return self.server

    def close(self) -> None:
        """Decodes not begun are cancelled; those in flight end when the decoders are closed (their workers
        killed), which the caller does first: a clean stop never waits for a hung decoder."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    # ---------------------------------------------------------------- answers

    @staticmethod
    def _json(status: int, body: dict[str, Any], close: bool = False):
        from aiohttp import web

        response = web.json_response(body, status=status)
        if close:
            response.force_close()
        return response

    def _early(self, status: int, body: dict[str, Any]):
        """An answer before the body was read: the connection is closed after it, so the unread body can
        never be taken for the next request (request desync)."""
        return self._json(status, body, close=True)

    def _token_ok(self, path: str) -> bool:
        prefix = "/validate/"
        return path.startswith(prefix) and hmac.compare_digest(
            path[len(prefix) :].encode("utf-8", "surrogateescape"), self.config.token.encode()
        )

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.uploads.labels(outcome).inc()

    # ---------------------------------------------------------------- requests

    async def handle(self, request):
        self.server.in_progress(request.protocol)
        path = request.raw_path.split("?", 1)[0]
        if path == "/healthz" and request.method in ("GET", "HEAD"):
            return self._json(200, self.health())
        if not path.startswith("/validate/"):
            return self._early(404, {"error": "not found"})
        if request.method != "POST":
            return self._early(405, {"error": "use POST with the media as the body"})
        if not self._token_ok(path):
            log.warning("validation request with a wrong token from %s", request.remote)
            return self._early(403, {"error": "wrong token"})
        self.server.trust(request.protocol)
        coding = request.headers.get("Transfer-Encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            return self._early(501, {"error": "only the chunked transfer coding is understood"})
        length = request.content_length
        if coding is None and length is None:
            return self._early(411, {"error": "send a body: chunked, or with a Content-Length"})
        limit = self.config.max_body_bytes
        if length is not None and length > limit:
            log.warning("rejected an upload of %d bytes (limit %d)", length, limit)
            self._count("too_large")
            return self._early(413, {"error": f"body over {limit} bytes"})
        started = time.monotonic()
        try:
            data = await asyncio.wait_for(self._read_body(request, limit), self.config.body_deadline_s)
        except TooLarge:
            log.warning("rejected a chunked upload over %d bytes", limit)
            self._count("too_large")
            return self._early(413, {"error": f"body over {limit} bytes"})
        except TimeoutError:
            log.info("an upload from %s stalled; connection closed", request.remote)
            self._count("stalled")
            return self._early(408, {"error": "the body did not arrive in time"})
        except Exception:  # noqa: BLE001 - the client went away mid-body, or sent broken chunks
            log.info("an upload from %s broke off mid-body; connection closed", request.remote)
            return self._early(400, {"error": "incomplete body"})
        # A slot is taken only now, with the whole body here: stalled clients never hold one.
        try:
            await asyncio.wait_for(self.slots.acquire(), self.config.answer_within_s / 2)
        except TimeoutError:
            return self._overloaded("too many uploads in flight")
        self.in_flight += 1
        try:
            return await self._validate(request, data, started)
        finally:
            self.in_flight -= 1
            self.slots.release()

    async def _read_body(self, request, limit: int) -> bytes:
        """The body, chunked or sized, never more than `limit` bytes; each piece must come within
        read_timeout_s (and the whole within body_deadline_s, around this)."""
        chunks, total = [], 0
        while True:
            chunk = await asyncio.wait_for(request.content.readany(), self.config.read_timeout_s)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                raise TooLarge
            chunks.append(chunk)

    def _overloaded(self, why: str):
        self._count("overloaded")
        if self.config.on_overload == "accept":
            log.warning("accepted an upload unchecked (%s); the watch daemon scores it from the mirror", why)
            return self._json(200, {"verdict": "accepted", "note": f"not checked: {why}"})
        return self._json(503, {"error": why})

    def _prepare(self, data: bytes, content_type: str) -> Job | str:
        """In a pool thread: hash and decode (never on the event loop)."""
        sha256 = sha256_bytes(data)
        self.batcher.decoding(+1)
        try:
            decoded = self.decode(data, self.batcher.bundle.preprocess, self.config.limits)
        finally:
            self.batcher.decoding(-1)
        if isinstance(decoded, str):
            log.warning("upload %s (%s, %d bytes) cannot be decoded: %s", sha256[:12], content_type, len(data), decoded)
            return decoded
        return Job(picture_of(sha256, data, decoded), data, content_type, decoded.pixels)

    async def _validate(self, request, data: bytes, started: float):
        config = self.config
        content_type = request.headers.get("Content-Type", "application/octet-stream")
        loop = asyncio.get_running_loop()
        remaining = max(0.001, config.answer_within_s - (time.monotonic() - started))
        try:  # the answer's deadline holds for the decode too: a hung decoder never holds an upload's answer
            job = await asyncio.wait_for(asyncio.shield(loop.run_in_executor(self.pool, self._prepare, data,
                                                                             content_type)), remaining)  # fmt: skip
        except TimeoutError:
            return self._overloaded("decoding took too long")
        if isinstance(job, str):
            self._count("undecodable")
            if config.on_error == "accept":
                return self._json(200, {"verdict": "accepted", "note": f"not decodable: {job}"})
            return self._json(415, {"verdict": "rejected", "error": f"not decodable: {job}"})
        future = self.batcher.submit(job)
        remaining = max(0.001, config.answer_within_s - (time.monotonic() - started))
        try:
            # shield: a timeout here must not cancel the batcher's future under it
            flagged, reason = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), remaining)
        except TimeoutError:
            return self._overloaded("validation timed out")
        except Exception:  # noqa: BLE001
            self._count("failed")
            return self._json(500, {"error": "validation failed"})
        if self.metrics is not None:
            self.metrics.latency.observe(time.monotonic() - started)
        if flagged:
            notice(log, "rejected upload %s (%s): %s", job.picture.sha256[:12], content_type,
                   ",".join(reason.get("labels", [])))  # fmt: skip
            self._count("rejected")
            return self._json(406, {"verdict": "rejected", "sha256": job.picture.sha256})
        self._count("accepted")
        return self._json(200, {"verdict": "accepted", "sha256": job.picture.sha256})

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            **self.info,
            **self.batcher.stats,
            "queue": self.batcher.jobs.qsize(),
            "in_flight": self.in_flight,
            "connections": len(self.server.connections) if self.server is not None else 0,
            "dropped_connections": self.server.dropped if self.server is not None else 0,
        }


class ServeMetrics:
    """Prometheus metrics of the validator (like `watch --metrics`): uploads by outcome, the time from
    the request to its verdict, and gauges read at scrape time."""

    def __init__(self, server: ValidationServer) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.server = server
        self.uploads = Counter("mirror_scan_uploads", "Uploads by outcome.", ["outcome"], registry=self.registry)
        self.latency = Histogram(
            "mirror_scan_validation_seconds",
            "From an upload's request to its verdict (body, decode, batch, inference).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20),
            registry=self.registry,
        )
        self.registry.register(self)

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        health = self.server.health()
        for key, help_text in (
            ("queue", "Uploads decoded and waiting for the model."),
            ("in_flight", "Uploads being decoded or judged."),
            ("connections", "Open connections."),
            ("dropped_connections", "Connections closed for sending no request with the token in time."),
        ):
            yield GaugeMetricFamily(f"mirror_scan_validator_{key}", help_text, value=health[key])
