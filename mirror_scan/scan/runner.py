"""The scan runner: discover -> read and decode (worker processes) -> batch -> infer -> decide -> record
and act (record.py).

One direction and bounded in-flight work: discovery runs ahead in a thread into a bounded queue; at
most `max_in_flight` files are being read and decoded at once; decoded files wait in the batcher
until a batch is full; the main thread infers, then hands the scores to the Decider and the
FileRecorder (record.py), the one path to a verdict on record. Nothing per file is kept after it is
recorded, so memory stays flat on any tree size. Each stage is timed.
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

from mirror_scan.kinds import DECIDED_STATUSES, FileStatus, FileVerdict
from mirror_scan.model.bundle import Bundle
from mirror_scan.model.scoring import Scorer, result_model_id
from mirror_scan.policy import Policy
from mirror_scan.scan.act import Actor
from mirror_scan.scan.decoders.decode import Limits, decode
from mirror_scan.scan.decoders.decodepool import decoders
from mirror_scan.scan.read import Changed, Failed, Outcome, Reused, ToScore, Vanished, fetch
from mirror_scan.scan.record import Counters, Decider, FileRecorder, Picture
from mirror_scan.scan.report import ReportWriter
from mirror_scan.store.discover import Found, Unscannable, discover
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.rows import path_key

__all__ = ["Counters", "Scan", "ScanConfig"]


@dataclass
class ScanConfig:
    severity: float = 0.0
    batch_size: int = 16
    workers: int = 2  # decode threads, and decoder worker processes with decoders="process"
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
        take_companion: Callable[[bytes, bytes], str | None] | None = None,
    ) -> None:
        self.ledger = ledger
        # (path, mirror root) -> the item that took it: an object of an upload held in quarantine (a thumbnail
        # pict-rs made of it) joins its item instead of being scored (None: dry runs, bucket scans).
        self.take_companion = take_companion
        self.bundle = bundle
        self.scorer = scorer
        self.policy = policy
        self.config = config
        self.progress = progress
        self.on_batch = on_batch  # called with each inference batch's seconds
        self.in_flight = 0
        self.listing_done = False  # discovery has listed everything: counters.listed is the total
        self.model_id = result_model_id(bundle, scorer, config.limits)
        self.counters = Counters()
        self.decider = Decider(ledger, bundle, policy, config.severity, self.model_id, scorer.device)
        self.recorder = FileRecorder(ledger, policy, config.severity, actor, report, self.counters, on_verdict)
        self._decoder = decode  # replaced by a worker-process pool for the length of a run
        self._batch: list[ToScore] = []
        self._batch_frames = 0
        self._twins: dict[str, list[Found]] = {}  # sha256 in the batch -> other files with the same bytes
        self._batch_since = 0.0
        self._last_commit = time.monotonic()

    # ------------------------------------------------------------------ stages

    @contextmanager
    def _decoders(self) -> Iterator[None]:
        with decoders(self.config.decoders, self.config.workers, self.config.decode_timeout_s) as decoder:
            self._decoder = decoder
            try:
                yield
            finally:
                self._decoder = decode

    def _fetch(self, found: Found) -> tuple[Outcome, float]:
        started = time.perf_counter()
        outcome = fetch(
            found,
            prep=self.bundle.preprocess,
            limits=self.config.limits,
            max_bytes=self.config.max_bytes,
            lookup_result=lambda sha256: self.decider.result_for(sha256, conn=self.ledger.reader()),
            read_timeout_s=self.config.read_timeout_s,
            decoder=self._decoder,
        )
        return outcome, time.perf_counter() - started

    def skip_unchanged(self, found: Found) -> bool:
        """Take a file that is as last scanned with this model without reading it (True): reported as
        skipped, or, under another policy or severity (or a list imported since), re-decided from its
        stored result. False: it must be read and scored."""
        row = self.ledger.file_row(path_key(found.path))
        if row is None:
            return False
        if (row.size, row.mtime_ns, row.model_id) != (found.size, found.mtime_ns, self.model_id):
            return False
        if found.etag is not None and row.etag != found.etag:
            return False  # an object in a bucket: same ETag, same bytes
        if row.status not in DECIDED_STATUSES or row.result_id is None:
            return False  # errors are retried: a permission fix does not change the mtime
        self.counters.unchanged += 1
        if (row.policy_id, row.severity) != (self.policy.policy_id, self.config.severity) or (
            row.verdict != FileVerdict.FLAGGED and self.decider.listed(row.sha256)
        ):
            self._from_stored(found, row.sha256, row.result_id, FileStatus(row.status), row.format, "skipped")
        else:
            self.recorder.unchanged(found, row)
        self._maybe_commit()
        return True

    def _flush(self) -> None:
        if not self._batch:
            return
        items, self._batch, self._batch_frames = self._batch, [], 0
        cpu_started = time.thread_time()
        pixels = np.concatenate([item.pixels for item in items])
        self.counters.add_cpu({"batch": time.thread_time() - cpu_started})
        self._commit()  # inference can take seconds on a CPU: never with the write lock held
        started = time.perf_counter()
        embeddings, sims = self.scorer(pixels)
        seconds = time.perf_counter() - started
        self.counters.stage_seconds["infer"] += seconds
        if self.on_batch:
            self.on_batch(seconds)
        self.record_scored(
            [item.found for item in items],
            [item.picture for item in items],
            [len(item.pixels) for item in items],
            embeddings,
            sims,
        )

    def record_scored(
        self,
        found: list[Found],
        pictures: list[Picture],
        frames: list[int],
        embeddings: np.ndarray,
        sims: np.ndarray,
        model_id: str | None = None,
    ) -> None:
        """Decide, record and act on a batch the model has scored: rows of `embeddings` and `sims` belong
        to the files in order, frames[i] rows each. The bucket ingest feeds this with what its workers
        computed (model_id: what they ran), so its verdicts come from exactly the code a mirrored scan runs."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        self.counters.frames += int(sum(frames))
        decisions = self.decider.scored(pictures, frames, embeddings, sims, model_id)
        for where, picture, decision in zip(found, pictures, decisions, strict=True):
            self.counters.scored += 1
            self.recorder.verdict(where, picture.sha256, FileStatus.SCORED, decision.verdict, decision.result_id,
                                  picture.format, model_id or self.model_id)  # fmt: skip
            self._maybe_commit()
            for twin in self._twins.pop(picture.sha256, []):
                self._reuse(Reused(twin, picture.sha256, decision.result_id))
        self._commit()  # per batch (one WAL fsync): a killed scan resumes after the last batch
        self.counters.stage_seconds["record"] += time.perf_counter() - started
        self.counters.add_cpu({"record": time.thread_time() - cpu_started})

    def record_error(
        self,
        path: str,
        reason: str,
        size: int | None,
        mtime_ns: int | None,
        sha256: str | None,
        found: Found | None = None,
    ) -> None:
        self.recorder.error(path, reason, size, mtime_ns, sha256, self.model_id, found)
        self._maybe_commit()

    def _from_stored(
        self, found: Found, sha256: str, result_id: int, status: FileStatus, fmt: str | None, report_status: str
    ) -> None:
        verdict = self.decider.stored(sha256, result_id)
        self.recorder.verdict(found, sha256, status, verdict, result_id, fmt, self.model_id, report_status)
        self._maybe_commit()

    def _taken(self, found: Found) -> bool:
        """An object of an upload held in quarantine: taken into its item, never scored as a stranger."""
        if self.take_companion is None or not found.root:
            return False
        item_id = self.take_companion(path_key(found.path), path_key(found.root))
        if item_id is None:
            return False
        self.counters.taken += 1
        self.recorder.note(found.path, f"an object of the upload held as quarantine item {item_id}: taken into it")
        return True

    def _reuse(self, item: Reused) -> None:
        """Bytes already scored (a copy, or a twin in this batch): decided from the stored result."""
        self.counters.reused += 1
        self._from_stored(item.found, item.sha256, item.result_id, FileStatus.REUSED, None, FileStatus.REUSED)

    def _handle(self, outcome: Outcome, retry: list[Found], final: bool) -> None:
        if isinstance(outcome, ToScore):
            if self._seen_twice(outcome.found):
                return  # a second event for a file read while its first was in flight: decided once
            # Same bytes as a file decided moments ago (not yet visible to the workers) or waiting in this batch:
            # reuse, never infer twice.
            sha256 = outcome.picture.sha256
            result_id = self.decider.result_for(sha256)
            if result_id is not None:
                self._reuse(Reused(outcome.found, sha256, result_id))
            elif sha256 in self._twins:
                self._twins[sha256].append(outcome.found)
            else:
                self.counters.add_cpu(outcome.cpu_s)
                self._twins[sha256] = []
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
                self.recorder.note(outcome.found.path, "still changing; the next scan takes it")
            else:
                retry.append(outcome.found)
        elif isinstance(outcome, Vanished):
            self.counters.vanished += 1

    def _seen_twice(self, found: Found) -> bool:
        """The same file, unchanged, already decided by this run's model or waiting in this batch: what a
        second event for a path whose first was still being read brings (the path queue holds a path once
        while it waits, not while it is read)."""
        if any(item.found.path == found.path for item in self._batch):
            return True
        row = self.ledger.file_row(path_key(found.path))
        return (
            row is not None
            and row.status in DECIDED_STATUSES
            and (row.size, row.mtime_ns, row.model_id) == (found.size, found.mtime_ns, self.model_id)
        )

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
                            self.counters.listed += 1  # the progress display's total, ahead of the work
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                    note(listing["path"])  # progress: the clock restarts
            finally:
                self.listing_done = True
                found_queue.put(None)

        def stalled() -> str | None:
            """Discovery blocked in one listing or stat for longer than a read may take (a stalled mount):
            the rest of the tree is given up on, loudly, instead of the scan hanging for ever."""
            limit = self.config.read_timeout_s
            if limit is None or not producer.is_alive() or time.monotonic() - listing["since"] < limit:
                return None
            return listing["path"]

        producer = threading.Thread(target=produce, name="discover", daemon=True)  # joined below
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
                    again.put(None)
                    self._pump(pool, again, max_in_flight, [], final=True)
                self._flush()
        finally:
            stop.set()
            if stalled() is None:  # a producer stuck in a stalled mount's listing is left behind, by design
                producer.join()
            self.counters.seconds = time.monotonic() - started
            self.ledger.commit()
        return self.counters

    def run_stream(self, source) -> Counters:
        """Watch mode: take Found items from `source` (a queue-like object whose get(timeout) raises
        queue.Empty) until it yields None, the end of the stream; drain, flush and commit before returning."""
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
                    self.in_flight = len(self._batch)  # what waits while we wait (0 when idle, for the gauge)
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
                if item is None:
                    exhausted = True
                elif isinstance(item, Unscannable):
                    self.counters.discovered += 1
                    self.record_error(item.path, item.reason, None, None, None)
                else:
                    self.counters.discovered += 1
                    if not self.skip_unchanged(item) and not self._taken(item):
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
                self.progress(self.counters, exhausted or self.listing_done)
                last_progress = now
        self._flush()
        if self.progress:
            self.progress(self.counters, True)
