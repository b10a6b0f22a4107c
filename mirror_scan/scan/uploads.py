"""The validator's batcher: uploads read and decoded by the HTTP side (intake/http.py) wait here until a
batch is full or a short window passes, so a burst costs one inference per batch. One thread runs the
model; it decides through record.Decider (the scan's own path), keeps rejected bytes in the quarantine
as evidence, and answers each upload's future with (flagged, reason)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from mirror_scan.model.bundle import Bundle
from mirror_scan.model.scoring import Scorer, result_model_id
from mirror_scan.policy import Policy
from mirror_scan.scan.decide import Verdict
from mirror_scan.scan.decoders.decode import Limits
from mirror_scan.scan.record import Decider, Picture
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.quarantine import Quarantine

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
    read_timeout_s: float = 10.0  # no request head, or no body bytes, for this long: the connection is closed
    body_deadline_s: float = 25.0  # the whole body must arrive within this (pict-rs gives up at 30 s)
    max_unauthenticated: int = 256  # connections without a request bearing the token yet; past it, the oldest goes
    keepalive_s: float = 120.0  # pict-rs's pool keeps idle connections 90 s
    limits: Limits = field(default_factory=Limits)


@dataclass
class Job:
    """An upload read and decoded, waiting for the batcher; its future gets (flagged, reason)."""

    picture: Picture
    data: bytes
    content_type: str
    pixels: np.ndarray
    future: Future = field(default_factory=Future)


class Batcher(threading.Thread):
    """The only thread that runs the model; it decides through record.Decider (the scan's own path)
    and keeps rejected bytes in the quarantine. The follow-up worker writes follow-ups beside it."""

    def __init__(
        self,
        ledger: Ledger,
        quarantine: Quarantine,
        bundle: Bundle,
        scorer: Scorer,
        policy: Policy,
        config: ServeConfig,
    ) -> None:
        super().__init__(name="batcher")  # joined by the validator service at shutdown
        self.ledger, self.quarantine, self.bundle = ledger, quarantine, bundle
        self.scorer, self.policy, self.config = scorer, policy, config
        self.model_id = result_model_id(bundle, scorer, config.limits)
        # Re-uploads of what was purged elsewhere, re-encoded or not, are refused by the imported lists.
        self.decider = Decider(ledger, bundle, policy, config.severity, self.model_id, scorer.device)
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
        to_infer: list[Job] = []
        for job in batch:
            result_id = self.decider.result_for(job.picture.sha256)
            if result_id is None:
                to_infer.append(job)
                continue
            self.stats["cached"] += 1
            self._answer(job, self.decider.stored(job.picture.sha256, result_id))
        if to_infer:
            embeddings, sims = self.scorer(np.concatenate([job.pixels for job in to_infer]))
            self.stats["batches"] += 1
            self.stats["inferred"] += len(to_infer)
            pictures = [job.picture for job in to_infer]
            decisions = self.decider.scored(pictures, [len(job.pixels) for job in to_infer], embeddings, sims)
            for job, decision in zip(to_infer, decisions, strict=True):
                self._answer(job, decision.verdict)
        self.ledger.commit()

    def _answer(self, job: Job, verdict: Verdict) -> None:
        if verdict.flagged:
            evidence = {
                "verdict": verdict.reason,
                "content_type": job.content_type,
                "model_id": self.model_id,
                "policy_id": self.policy.policy_id,
                "severity": self.config.severity,
            }
            item_id = self.quarantine.keep_upload(job.data, job.picture.sha256, evidence)
            verdict.reason["quarantine_item"] = item_id
            self.stats["rejected"] += 1
        else:
            self.stats["accepted"] += 1
        job.future.set_result((verdict.flagged, verdict.reason))
