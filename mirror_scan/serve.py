"""Upload-time validation for pict-rs's `[media] external_validation`.

pict-rs POSTs each processed upload (body = the media, Content-Type = its type) to
`/validate/<token>`; any 2xx accepts, anything else rejects (pict-rs fails closed on timeouts too).
Handler threads read and decode (in parallel); one batcher thread owns the model and the state
database: it collects requests for up to `max_wait` or a full batch, so a burst costs one inference
per batch, decides, keeps rejected bytes in the quarantine as evidence, and answers each request.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import re
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from .bundle import Bundle
from .decide import complete, decide
from .decode import Limits, decode, decode_detail
from .hashes import LiveMatcher, queries
from .hashing import md5_bytes, sha256_bytes
from .policy import Policy
from .quarantine import Quarantine
from .scoring import Scorer, columns, policy_sims, result_model_id
from .state import Ledger

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    token: str
    severity: float = 0.0
    batch_size: int = 16
    max_wait_s: float = 0.005  # gathering window once nothing else is being decoded
    max_gather_s: float = 0.05  # longest a batch waits for uploads still being decoded
    max_body_bytes: int = 64 << 20
    max_in_flight: int = 64
    answer_within_s: float = 20.0  # well inside pict-rs's 30 s default timeout
    on_error: str = "reject"  # "reject" | "accept" for files that cannot be decoded
    on_overload: str = "reject"  # "reject" (503) | "accept" (the watch daemon scores it from the mirror later)
    read_timeout_s: float = 10.0  # a client that stalls mid-headers or mid-body is cut off after this
    max_connections_per_client: int = 128
    limits: Limits = field(default_factory=Limits)


@dataclass
class Job:
    sha256: str
    data: bytes
    content_type: str
    pixels: np.ndarray
    detail: dict | None = None  # the decode's row labels and notes
    md5: str | None = None
    pdq: list[tuple[str, int]] | None = None
    pdq_variants: list[str] | None = None
    future: Future = field(default_factory=Future)


class Batcher(threading.Thread):
    """The only thread that runs the model and touches the state database."""

    def __init__(
        self,
        ledger: Ledger,
        quarantine: Quarantine,
        bundle: Bundle,
        scorer: Scorer,
        policy: Policy,
        config: ServeConfig,
    ) -> None:
        super().__init__(name="batcher", daemon=True)
        self.ledger, self.quarantine, self.bundle = ledger, quarantine, bundle
        self.scorer, self.policy, self.config = scorer, policy, config
        self.model_id = result_model_id(bundle, scorer, config.limits)
        self.prompt_set = ledger.ensure_prompt_set(bundle.concepts.prompts)
        # Re-uploads of what was purged elsewhere, re-encoded or not, are refused by the imported lists.
        self.lists = LiveMatcher(ledger)
        self.policy_columns = columns(bundle.concepts.prompts, policy)
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self._decoding = 0  # uploads read and being decoded by handler threads: they will join a batch soon
        self._decoding_lock = threading.Lock()
        self.stats = {"accepted": 0, "rejected": 0, "errors": 0, "batches": 0, "inferred": 0, "cached": 0}

    def decoding(self, delta: int) -> None:
        with self._decoding_lock:
            self._decoding += delta

    def submit(self, job: Job) -> Future:
        self.jobs.put(job)
        return job.future

    def stop(self) -> None:
        self.jobs.put(None)

    def run(self) -> None:
        stopping = False
        while not stopping:
            first = self.jobs.get()
            if first is None:
                break
            batch, frames = [first], len(first.pixels)
            started = time.monotonic()
            deadline = started + self.config.max_wait_s
            while frames < self.config.batch_size:
                # While other uploads are still being decoded, wait for them (up to max_gather_s): a burst of
                # concurrent uploads becomes one batch instead of several small ones.
                if self._decoding > 0:
                    deadline = max(
                        deadline, min(time.monotonic() + self.config.max_wait_s, started + self.config.max_gather_s)
                    )
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    if self._decoding > 0 and time.monotonic() < started + self.config.max_gather_s:
                        continue
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
                frames += len(job.pixels)
            try:
                self._decide(batch)
            except Exception as err:  # noqa: BLE001 - a failure answers the batch, never kills the thread
                log.exception("validation batch failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
        self.ledger.commit()

    def _decide(self, batch: list[Job]) -> None:
        self.lists.refresh()  # a list imported while serving applies from this batch on
        to_infer: list[Job] = []
        for job in batch:
            if self.ledger.allowlisted(job.sha256):
                job.future.set_result((False, {"allowlisted": True}))
                continue
            result_id = self.ledger.result_id_for(job.sha256, self.model_id)
            if result_id is None:
                to_infer.append(job)
                continue
            stored = self.ledger.get_result(result_id)
            sims = policy_sims(
                stored.sims, stored.embedding, self.ledger.prompt_set(stored.prompt_set), self.policy, self.bundle
            )
            self.stats["cached"] += 1
            self._answer(job, sims, stored.detail)
        if to_infer:
            pixels = np.concatenate([job.pixels for job in to_infer])
            embeddings, sims = self.scorer(pixels)
            self.stats["batches"] += 1
            self.stats["inferred"] += len(to_infer)
            start = 0
            for job in to_infer:
                rows = slice(start, start + len(job.pixels))
                start += len(job.pixels)
                self.ledger.put_result(
                    job.sha256, self.model_id, self.prompt_set, sims[rows], embeddings[rows], job.detail
                )
                self._answer(job, sims[rows][:, self.policy_columns], job.detail)
        self.ledger.commit()

    def _answer(self, job: Job, sims: np.ndarray, detail: dict | None) -> None:
        (verdict,) = decide(self.policy, sims, [len(sims)], self.config.severity)
        self.ledger.put_picture_hashes(job.sha256, job.md5, job.pdq, job.pdq_variants)
        matcher = self.lists.matcher
        match = matcher.match(job.sha256, job.md5, queries(job.pdq, job.pdq_variants)) if matcher else None
        verdict = complete(verdict, detail, match, allowlisted=False)  # allowlisted uploads never get here
        if verdict.flagged:
            evidence = {
                "verdict": verdict.reason,
                "content_type": job.content_type,
                "model_id": self.model_id,
                "policy_id": self.policy.policy_id,
                "severity": self.config.severity,
            }
            item_id = self.quarantine.keep_upload(job.data, job.sha256, evidence)
            verdict.reason["quarantine_item"] = item_id
            self.stats["rejected"] += 1
        else:
            self.stats["accepted"] += 1
        job.future.set_result((verdict.flagged, verdict.reason))


CONTENT_LENGTH = re.compile(r"^[0-9]{1,15}$")
TOKEN_IN_PATH = re.compile(r"/validate/[^\s?#]*")


def redact(text: str) -> str:
    """The URL token never reaches a log line: every /validate/<token> becomes /validate/***."""
    return TOKEN_IN_PATH.sub("/validate/***", text)


class ValidationServer(ThreadingHTTPServer):
    """The standard library's threading server, hardened where it is lax by default: strict framing
    (Content-Length must be a plain non-negative integer within the limit), a read timeout on every
    socket, the connection closed after any early answer (the unread body is never parsed as a request),
    a slot taken only once the whole body has arrived, and a cap on connections per client address."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], batcher: Batcher, config: ServeConfig, info: dict[str, Any], decoder=decode
    ):
        self.batcher, self.config, self.info = batcher, config, info
        self.decode = decoder  # a worker-process pool's decode in production (see decodepool.py)
        self.slots = threading.BoundedSemaphore(config.max_in_flight)
        self._per_client: dict[str, int] = {}
        self._clients_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request, client_address) -> None:
        host = client_address[0]
        with self._clients_lock:
            if self._per_client.get(host, 0) >= self.config.max_connections_per_client:
                log.warning("refused a connection from %s: %d already open", host, self._per_client[host])
                self.shutdown_request(request)
                return
            self._per_client[host] = self._per_client.get(host, 0) + 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._clients_lock:
                self._per_client[client_address[0]] -= 1
                if not self._per_client[client_address[0]]:
                    del self._per_client[client_address[0]]


class Handler(BaseHTTPRequestHandler):
    server: ValidationServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.config.read_timeout_s  # StreamRequestHandler applies it to the socket
        super().setup()

    def log_message(self, fmt: str, *args) -> None:  # the request line only; never bodies or tokens
        log.debug("%s %s", self.address_string(), redact(fmt % args))

    def log_error(self, fmt: str, *args) -> None:
        log.info("%s %s", self.address_string(), redact(fmt % args))

    def _reply(self, status: int, body: dict[str, Any], close: bool = False) -> None:
        data = json.dumps(body).encode()
        if close:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _early(self, status: int, body: dict[str, Any]) -> None:
        """An answer before the body was read: close the connection, so the unread body can never be
        taken for the next request (request desync)."""
        self._reply(status, body, close=True)

    def _token_ok(self) -> bool:
        prefix = "/validate/"
        path = self.path.split("?", 1)[0]
        if not path.startswith(prefix):
            return False
        return hmac.compare_digest(path[len(prefix) :].encode(), self.server.config.token.encode())

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] == "/healthz":
            self._reply(
                200,
                {
                    "status": "ok",
                    **self.server.info,
                    **self.server.batcher.stats,
                    "queue": self.server.batcher.jobs.qsize(),
                },
            )
        elif self.path.startswith("/validate/"):
            self._early(405, {"error": "use POST with the media as the body"})
        else:
            self._early(404, {"error": "not found"})

    def do_PUT(self) -> None:  # noqa: N802
        self._early(405, {"error": "use POST"})

    do_DELETE = do_PATCH = do_PUT  # noqa: N815

    def _body_length(self) -> int | None:
        """The declared body length, or None after answering 400/411/413 (and closing)."""
        if self.headers.get("Transfer-Encoding"):
            self._early(411, {"error": "send the body with a Content-Length (no Transfer-Encoding)"})
            return None
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self._early(411, {"error": "Content-Length required"})
            return None
        if len(set(values)) != 1 or not CONTENT_LENGTH.match(values[0].strip()):
            self._early(400, {"error": "Content-Length must be one non-negative integer"})
            return None
        length = int(values[0])
        if length > self.server.config.max_body_bytes:
            log.warning("rejected an upload of %d bytes (limit %d)", length, self.server.config.max_body_bytes)
            self._early(413, {"error": f"body over {self.server.config.max_body_bytes} bytes"})
            return None
        return length

    def do_POST(self) -> None:  # noqa: N802
        if not self.path.startswith("/validate/"):
            return self._early(404, {"error": "not found"})
        if not self._token_ok():
            log.warning("validation request with a wrong token from %s", self.address_string())
            return self._early(403, {"error": "wrong token"})
        length = self._body_length()
        if length is None:
            return None
        try:
            data = self.rfile.read(length)  # bounded in time by the socket's read timeout
        except (TimeoutError, OSError):
            self.close_connection = True
            log.info("an upload from %s stalled; connection closed", self.address_string())
            return None
        if len(data) != length:
            self.close_connection = True  # the client went away mid-body
            return None
        # A slot is taken only now, with the whole body here: stalled clients never hold one.
        if not self.server.slots.acquire(timeout=self.server.config.answer_within_s / 2):
            return self._overloaded("too many uploads in flight")
        try:
            return self._validate(data)
        finally:
            self.server.slots.release()

    def _overloaded(self, why: str) -> None:
        if self.server.config.on_overload == "accept":
            log.warning("accepted an upload unchecked (%s); the watch daemon scores it from the mirror", why)
            return self._reply(200, {"verdict": "accepted", "note": f"not checked: {why}"})
        return self._reply(503, {"error": why})

    def _validate(self, data: bytes) -> None:
        config = self.server.config
        content_type = self.headers.get("Content-Type", "application/octet-stream")
        sha256 = sha256_bytes(data)
        self.server.batcher.decoding(+1)
        try:
            decoded = self.server.decode(data, self.server.batcher.bundle.preprocess, config.limits)
        finally:
            self.server.batcher.decoding(-1)
        if isinstance(decoded, str):
            log.warning("upload %s (%s, %d bytes) cannot be decoded: %s", sha256[:12], content_type, len(data), decoded)
            if config.on_error == "accept":
                return self._reply(200, {"verdict": "accepted", "note": f"not decodable: {decoded}"})
            return self._reply(415, {"verdict": "rejected", "error": f"not decodable: {decoded}"})
        job = Job(
            sha256,
            data,
            content_type,
            decoded.pixels,
            decode_detail(decoded),
            md5_bytes(data),
            decoded.pdq,
            decoded.pdq_variants,
        )
        future = self.server.batcher.submit(job)
        try:
            flagged, reason = future.result(timeout=config.answer_within_s)
        except FutureTimeout:
            return self._overloaded("validation timed out")
        except Exception:  # noqa: BLE001
            return self._reply(500, {"error": "validation failed"})
        if flagged:
            log.warning("rejected upload %s (%s): %s", sha256[:12], content_type, ",".join(reason.get("labels", [])))
            return self._reply(406, {"verdict": "rejected", "sha256": sha256})
        return self._reply(200, {"verdict": "accepted", "sha256": sha256})
