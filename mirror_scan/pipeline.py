"""The scan runner: discover -> decode (thread pool) -> batch -> infer -> decide -> act -> record.

One direction and bounded in-flight work: discovery runs ahead in a thread into a bounded queue; at
most `max_in_flight` files are being read and decoded at once; decoded files wait in the batcher
until a batch is full; the main thread infers, decides, acts and records. Nothing per file is kept
after it is recorded, so memory stays flat on any tree size. Each stage is timed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .act import Actor
from .bundle import Bundle
from .decide import Verdict, complete, decide
from .decode import Limits, decode
from .discover import Found, Unscannable, discover
from .fetch import Changed, Decoded, Failed, Outcome, Reused, Vanished, fetch
from .hashes import LiveMatcher, queries
from .policy import Policy
from .report import ReportWriter, record
from .scoring import Scorer, columns, policy_sims, result_model_id
from .state import Ledger, path_key

_END = END = object()


@dataclass
class Counters:
    discovered: int = 0
    scored: int = 0
    unchanged: int = 0
    reused: int = 0
    flagged: int = 0
    errors: int = 0
    pending: int = 0  # still changing after a retry: the next scan takes them
    vanished: int = 0
    frames: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "infer": 0.0, "record": 0.0})

    @property
    def done(self) -> int:
        return self.scored + self.unchanged + self.reused + self.errors + self.pending + self.vanished

    def as_dict(self) -> dict:
        rate = self.scored / self.seconds if self.seconds else 0.0
        return {
            "discovered": self.discovered,
            "scanned": self.scored,
            "skipped_unchanged": self.unchanged,
            "reused_by_hash": self.reused,
            "flagged": self.flagged,
            "errors": self.errors,
            "pending_changed": self.pending,
            "vanished": self.vanished,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(rate, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


@dataclass
class ScanConfig:
    severity: float = 0.0
    batch_size: int = 16
    workers: int = 2
    limits: Limits = field(default_factory=Limits)
    max_bytes: int = 512 << 20
    read_timeout_s: float | None = 120.0  # a read on a stalled mount gives up (an error, retried) after this
    decoders: str = "process"  # "process": crash- and hang-proof worker processes; "thread": in-process
    decode_timeout_s: float = 60.0  # with "process": a decode that takes longer is stopped (an error, retried)
    retry_delay_s: float = 0.5
    flush_after_s: float | None = None  # watch mode: a partial batch waits at most this long
    commit_every_s: float = 1.0  # other writers wait for our open transaction at most about this long


class Scan:
    def __init__(
        self,
        ledger: Ledger,
        bundle: Bundle,
        scorer: Scorer,
        policy: Policy,
        config: ScanConfig,
        actor: Actor | None,
        report: ReportWriter | None = None,
        progress: Callable[[Counters, bool], None] | None = None,
        on_verdict: Callable[[int], None] | None = None,
        on_batch: Callable[[float], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.bundle = bundle
        self.scorer = scorer
        self.policy = policy
        self.config = config
        self.actor = actor  # None: dry run, record verdicts and act on nothing
        self.report = report
        self.progress = progress
        self.on_verdict = on_verdict  # called with the file's mtime (ns) as each verdict is recorded
        self.on_batch = on_batch  # called with each inference batch's seconds
        self.in_flight = 0
        self.model_id = result_model_id(bundle, scorer, config.limits)
        self.prompt_set = ledger.ensure_prompt_set(bundle.concepts.prompts)
        self.lists = LiveMatcher(ledger)  # imported hash lists decide before the model
        self.policy_columns = columns(bundle.concepts.prompts, policy)
        self.counters = Counters()
        self._decoder = decode  # replaced by a worker-process pool for the length of a run
        self._batch: list[Decoded] = []
        self._batch_frames = 0
        self._twins: dict[str, list[Found]] = {}  # sha256 in the batch -> other files with the same bytes
        self._batch_since = 0.0
        self._last_commit = time.monotonic()
        self._flagged_paths: set[bytes] = set()  # each file counts once as flagged, however often it is seen

    # ------------------------------------------------------------------ stages

    def _lookup(self, sha256: str) -> int | None:
        return self.ledger.result_id_for(sha256, self.model_id, conn=self.ledger.reader())

    @contextmanager
    def _decoders(self) -> Iterator[None]:
        """Worker processes for decoding, for the length of a run (see decodepool.py)."""
        if self.config.decoders != "process":
            yield
            return
        from .decodepool import DecoderPool

        with DecoderPool(self.config.workers, self.config.decode_timeout_s) as pool:
            self._decoder = pool.decode
            try:
                yield
            finally:
                self._decoder = decode

    def _listed(self, sha256: str) -> bool:
        """On an imported hash list (a list imported after the file was scanned applies now)."""
        return self.lists.match_stored(sha256) is not None

    def _fetch(self, found: Found) -> tuple[Outcome, float]:
        started = time.perf_counter()
        outcome = fetch(
            found,
            prep=self.bundle.preprocess,
            limits=self.config.limits,
            max_bytes=self.config.max_bytes,
            lookup_result=self._lookup,
            read_timeout_s=self.config.read_timeout_s,
            decoder=self._decoder,
        )
        return outcome, time.perf_counter() - started

    def unchanged(self, found: Found) -> bool:
        """True if the file is as last scanned with this model: it is not read again. Under another policy
        or severity its verdict is re-decided from the stored result (no image read)."""
        row = self.ledger.file_row(path_key(found.path))
        if row is None:
            return False
        if (row.size, row.mtime_ns, row.model_id) != (found.size, found.mtime_ns, self.model_id):
            return False
        if found.etag is not None and row.etag != found.etag:
            return False  # an object in a bucket: same ETag, same bytes
        if row.status not in ("scored", "reused") or row.result_id is None:
            return False  # errors are retried: a permission fix does not change the mtime
        sha256, verdict, reason, fmt, action = row.sha256, row.verdict, row.reason, row.format, row.action
        result_id, status = row.result_id, row.status
        policy_id, severity = row.policy_id, row.severity
        self.counters.unchanged += 1
        if (policy_id, severity) != (self.policy.policy_id, self.config.severity) or (
            verdict != "flagged" and self._listed(sha256)
        ):
            self._redecide(found, sha256, result_id, status, fmt, count_as=None)
            return True
        if verdict == "flagged":
            self._count_flagged(path_key(found.path))
        if self.report:
            self.report.write(
                record(
                    found.path,
                    sha256=sha256,
                    status="skipped",
                    verdict=verdict,
                    reason=reason,
                    size=found.size,
                    fmt=fmt,
                    action=action,
                )
            )
        return True

    def _flush(self) -> None:
        if not self._batch:
            return
        items, self._batch, self._batch_frames = self._batch, [], 0
        pixels = np.concatenate([item.pixels for item in items])
        self._commit()  # inference can take seconds on a CPU: never with the write lock held
        started = time.perf_counter()
        embeddings, sims = self.scorer(pixels)
        seconds = time.perf_counter() - started
        self.counters.stage_seconds["infer"] += seconds
        if self.on_batch:
            self.on_batch(seconds)
        self.record_scored(items, [len(item.pixels) for item in items], embeddings, sims)

    def record_scored(self, items: list[Decoded], frames: list[int], embeddings: np.ndarray, sims: np.ndarray) -> None:
        """Decide, record (and act on) a batch the model has scored: rows of `embeddings` and `sims` belong to
        the items in order, `frames[i]` rows each. The bucket scan feeds this with what its workers
        computed, so its verdicts come from exactly the code a mirrored scan runs."""
        matcher = self.lists.refresh()  # a list imported while a daemon runs applies from this batch on
        self.counters.frames += int(sum(frames))
        allowlisted = [self.ledger.allowlisted(item.sha256) for item in items]
        verdicts = decide(self.policy, sims[:, self.policy_columns], frames, self.config.severity, allowlisted)
        started = time.perf_counter()
        ends = np.cumsum(frames)
        for index, (item, verdict) in enumerate(zip(items, verdicts, strict=True)):
            rows = slice(int(ends[index]) - frames[index], int(ends[index]))
            result_id = self.ledger.put_result(
                item.sha256, self.model_id, self.prompt_set, sims[rows], embeddings[rows], item.detail
            )
            self.ledger.put_picture_hashes(item.sha256, item.md5, item.pdq, item.pdq_variants, item.vpdq)
            match = (
                matcher.match(item.sha256, item.md5, queries(item.pdq, item.pdq_variants), item.vpdq)
                if matcher
                else None
            )
            verdict = complete(verdict, item.detail, match, allowlisted[index])
            self.counters.scored += 1
            self._record_verdict(item.found, item.sha256, "scored", verdict, result_id, item.format)
            for twin in self._twins.pop(item.sha256, []):
                self._reuse(Reused(twin, item.sha256, result_id))
        self._commit()  # per batch (one WAL fsync): a killed scan resumes after the last batch
        self.counters.stage_seconds["record"] += time.perf_counter() - started

    def _record_verdict(
        self,
        found: Found,
        sha256: str,
        status: str,
        verdict: Verdict,
        result_id: int,
        fmt: str | None,
        report_status: str | None = None,
    ) -> None:
        key = path_key(found.path)
        self.ledger.record_file(
            key,
            root=path_key(found.root) if found.root else None,
            size=found.size,
            mtime_ns=found.mtime_ns,
            sha256=sha256,
            status=status,
            verdict=verdict.label,
            reason=verdict.reason_json(),
            result_id=result_id,
            model_id=self.model_id,
            policy_id=self.policy.policy_id,
            severity=self.config.severity,
            fmt=fmt,
            etag=found.etag,
            origin=found.origin,
        )
        action = None
        if self.on_verdict and found.mtime_ns:
            self.on_verdict(found.mtime_ns)
        if verdict.flagged:
            self._count_flagged(key)
            action = self.ledger.file_row(key).action  # kept from an earlier run when the bytes are the same
            if self.actor is not None and action is None:
                action = self.actor.act(key)
                if action:
                    self.ledger.mark_action(key, action)
        if self.report:
            self.report.write(
                record(
                    found.path,
                    sha256=sha256,
                    status=report_status or status,
                    verdict=verdict.label,
                    reason=verdict.reason,
                    size=found.size,
                    fmt=fmt,
                    action=action,
                )
            )
        self._maybe_commit()

    def _count_flagged(self, key: bytes) -> None:
        if key not in self._flagged_paths:
            self._flagged_paths.add(key)
            self.counters.flagged += 1

    def record_error(
        self,
        path: str,
        reason: str,
        size: int | None,
        mtime_ns: int | None,
        sha256: str | None,
        found: Found | None = None,
    ) -> None:
        import json

        self.counters.errors += 1
        self.ledger.record_file(
            path_key(path),
            root=path_key(found.root) if found and found.root else None,
            size=size,
            mtime_ns=mtime_ns,
            sha256=sha256,
            status="error",
            reason=json.dumps({"error": reason}),
            model_id=self.model_id,
            etag=found.etag if found else None,
            origin=found.origin if found else None,
        )
        if self.report:
            self.report.write(record(path, sha256=sha256, status="error", verdict=None, reason=reason, size=size))
        self._maybe_commit()

    def _redecide(
        self, found: Found, sha256: str, result_id: int, status: str, fmt: str | None, count_as: str | None
    ) -> None:
        """Decide from a stored result: for copies of bytes already scored, and for unchanged files
        under a new policy or severity."""
        stored = self.ledger.get_result(result_id)
        sims = policy_sims(
            stored.sims, stored.embedding, self.ledger.prompt_set(stored.prompt_set), self.policy, self.bundle
        )
        allowlisted = self.ledger.allowlisted(sha256)
        (verdict,) = decide(self.policy, sims, [len(sims)], self.config.severity, [allowlisted])
        verdict = complete(verdict, stored.detail, self.lists.match_stored(sha256), allowlisted)
        if count_as == "reused":
            self.counters.reused += 1
        self._record_verdict(
            found, sha256, status, verdict, result_id, fmt, report_status="skipped" if count_as is None else status
        )

    def _reuse(self, item: Reused) -> None:
        self._redecide(item.found, item.sha256, item.result_id, "reused", None, count_as="reused")

    def _handle(self, outcome: Outcome, retry: list[Found], final: bool) -> None:
        if isinstance(outcome, Decoded):
            # Same bytes as a file decided moments ago (not yet visible to the workers) or waiting in this batch:
            # reuse, never infer twice.
            result_id = self.ledger.result_id_for(outcome.sha256, self.model_id)
            if result_id is not None:
                self._reuse(Reused(outcome.found, outcome.sha256, result_id))
            elif outcome.sha256 in self._twins:
                self._twins[outcome.sha256].append(outcome.found)
            else:
                self._twins[outcome.sha256] = []
                if not self._batch:
                    self._batch_since = time.monotonic()
                self._batch.append(outcome)
                self._batch_frames += len(outcome.pixels)
                if self._batch_frames >= self.config.batch_size:
                    self._flush()
        elif isinstance(outcome, Reused):
            self._reuse(outcome)
        elif isinstance(outcome, Failed):
            f = outcome.found
            self.record_error(f.path, outcome.reason, f.size, f.mtime_ns, outcome.sha256)
        elif isinstance(outcome, Changed):
            if final:
                self.counters.pending += 1
                if self.report:
                    self.report.write(
                        record(
                            outcome.found.path,
                            sha256=None,
                            status="skipped",
                            verdict=None,
                            reason="still changing; the next scan takes it",
                            size=None,
                        )
                    )
            else:
                retry.append(outcome.found)
        elif isinstance(outcome, Vanished):
            self.counters.vanished += 1

    def _maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self.config.commit_every_s:
            self._commit()

    def _commit(self) -> None:
        self.ledger.commit()
        self._last_commit = time.monotonic()

    # ------------------------------------------------------------------ loop

    def run(self, roots: list[str]) -> Counters:
        started = time.monotonic()
        found_queue: queue.Queue = queue.Queue(maxsize=4096)
        stop = threading.Event()
        listing = {"path": "", "since": time.monotonic()}  # where discovery is, and since when

        def note(path: str) -> None:
            listing["path"], listing["since"] = path, time.monotonic()

        def produce() -> None:
            try:
                for item in discover(roots, note):
                    while not stop.is_set():
                        try:
                            found_queue.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                    note(listing["path"])  # progress: the clock restarts
            finally:
                found_queue.put(_END)

        def stalled() -> str | None:
            """Discovery blocked in one listing or stat for longer than a read may take (a stalled mount):
            the rest of the tree is given up on, loudly, instead of the scan hanging for ever."""
            limit = self.config.read_timeout_s
            if limit is None or not producer.is_alive() or time.monotonic() - listing["since"] < limit:
                return None
            return listing["path"]

        producer = threading.Thread(target=produce, name="discover", daemon=True)
        producer.start()
        max_in_flight = max(self.config.batch_size * 2, self.config.workers * 4)
        retry: list[Found] = []
        try:
            with self._decoders(), ThreadPoolExecutor(self.config.workers, thread_name_prefix="decode") as pool:
                self._pump(pool, found_queue, max_in_flight, retry, final=False, stalled=stalled)
                if retry:
                    time.sleep(self.config.retry_delay_s)
                    again: queue.Queue = queue.Queue()
                    for found in retry:
                        try:
                            st = os.lstat(found.path)
                            again.put(Found(found.path, st.st_size, st.st_mtime_ns, found.root))
                        except FileNotFoundError:
                            self.counters.vanished += 1
                    again.put(_END)
                    self._pump(pool, again, max_in_flight, [], final=True)
                self._flush()
        finally:
            stop.set()
            self.counters.seconds = time.monotonic() - started
            self.ledger.commit()
        return self.counters

    def run_stream(self, source) -> Counters:
        """Watch mode: take Found items from `source` (a queue-like object whose get(timeout) raises
        queue.Empty) until it yields the end marker `END`; drain, flush and commit before returning."""
        started = time.monotonic()
        max_in_flight = max(self.config.batch_size * 2, self.config.workers * 4)
        try:
            with self._decoders(), ThreadPoolExecutor(self.config.workers, thread_name_prefix="decode") as pool:
                self._pump(pool, source, max_in_flight, [], final=True)
        finally:
            self.counters.seconds = time.monotonic() - started
            self.ledger.commit()
        return self.counters

    def _pump(
        self,
        pool: ThreadPoolExecutor,
        source: queue.Queue,
        max_in_flight: int,
        retry: list[Found],
        final: bool,
        stalled: Callable[[], str | None] | None = None,
    ) -> None:
        in_flight: set[Future] = set()
        exhausted = False
        last_progress = 0.0
        while True:
            while not exhausted and len(in_flight) < max_in_flight:
                # Never block here while decodes are in flight (the wait below paces the loop): a steady
                # trickle of arrivals would otherwise keep this loop pulling and starve the batch flush.
                timeout = 0 if in_flight else (0.05 if self._batch else (1.0 if stalled else None))
                if timeout != 0:
                    self._commit()  # never wait for work holding the write lock: other writers need it
                try:
                    item = source.get(timeout=timeout) if timeout != 0 else source.get_nowait()
                except queue.Empty:
                    if stalled and not in_flight and (where := stalled()) is not None:
                        self.counters.discovered += 1
                        limit = self.config.read_timeout_s
                        self.record_error(
                            where, f"listing stalled for over {limit:g} s (stalled mount?): the rest of the tree "
                            "was not scanned this time", None, None, None,
                        )  # fmt: skip
                        exhausted = True
                    break
                if item is _END:
                    exhausted = True
                elif isinstance(item, Unscannable):
                    self.counters.discovered += 1
                    self.record_error(item.path, item.reason, None, None, None)
                else:
                    self.counters.discovered += 1
                    if not self.unchanged(item):
                        in_flight.add(pool.submit(self._fetch, item))
            self.in_flight = len(in_flight) + len(self._batch)
            if in_flight:
                if exhausted:
                    self._commit()  # the wait below may be long (a slow decode)
                done, in_flight = wait(in_flight, timeout=None if exhausted else 0.05, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome, seconds = future.result()
                    self.counters.stage_seconds["decode"] += seconds
                    self._handle(outcome, retry, final)
            elif exhausted:
                break
            if exhausted and not in_flight:
                break
            now = time.monotonic()
            flush_after = self.config.flush_after_s
            if self._batch and flush_after is not None and now - self._batch_since >= flush_after:
                self._flush()  # a quiet instance still gets fast verdicts
            if self.progress and now - last_progress > 0.1:
                self.progress(self.counters, exhausted)
                last_progress = now
        self._flush()
        if self.progress:
            self.progress(self.counters, True)
