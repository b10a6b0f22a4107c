"""record: the one path from a model's scores, fresh or stored, to a verdict on record.

    Picture (what is known of a file's bytes) + the model's rows
        -> Decider: the facts for the batch gathered first (allowlist, hash-list matches, stored results),
           then one pure decision (decide.decide_files), what the model computed stored
        -> FileRecorder: the file's row, the act (the quarantine writes `files.action`), the report line

The scan, the watch daemon, the validator, the bucket ingest and rescore all decide through
decide.decide_files / decide.verdict_for; this module is where the scan, the daemon, the validator and
the bucket ingest do it. Rescore evaluates whole chunks at once, then calls the same per-file function.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mirror_scan.hashing import md5_bytes
from mirror_scan.kinds import FileAction, FileStatus
from mirror_scan.lists.hashes import queries
from mirror_scan.lists.live import LiveMatcher
from mirror_scan.logs import notice
from mirror_scan.model.bundle import Bundle
from mirror_scan.model.scoring import columns, policy_sims
from mirror_scan.policy import Policy
from mirror_scan.scan.act import Flagged
from mirror_scan.scan.anime import AnimeCheck, per_row, stored_scores, with_outcome
from mirror_scan.scan.decide import Facts, Verdict, decide_files, short_reason
from mirror_scan.scan.decoders.decode import Decoded, decode_detail
from mirror_scan.scan.report import ReportWriter, record
from mirror_scan.store.discover import Found
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.rows import path_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Picture:
    """What is known of one file's bytes besides their pixels: what a decision and its record need."""

    sha256: str
    format: str | None = None
    detail: dict | None = None  # the decode's row labels and notes, kept with the result
    md5: str | None = None  # many shared hash lists are md5
    pdq: list[tuple[str, int]] | None = None  # per scored frame: PDQ hash and quality
    pdq_variants: list[str] | None = None  # rotations and mirror images of every frame, for matching
    vpdq: list[tuple[str, int, float]] | None = None  # videos and animations: a PDQ per second
    dd_view: np.ndarray | None = None  # the thumbnail DeepDanbooru sees, if the policy may ask (anime.py)


def picture_of(sha256: str, data: bytes, decoded: Decoded) -> Picture:
    """The one way a decoded file becomes a Picture (the scan, the validator and the bucket workers)."""
    return Picture(sha256, decoded.format, decode_detail(decoded), md5_bytes(data), decoded.pdq,
                   decoded.pdq_variants, decoded.vpdq, decoded.dd_view)  # fmt: skip


@dataclass(frozen=True)
class Decision:
    result_id: int
    verdict: Verdict


class Decider:
    """Decisions for batches of pictures: facts gathered up front, one pure decision, results stored.
    Reads and writes the ledger; the caller commits."""

    def __init__(
        self, ledger: Ledger, bundle: Bundle, policy: Policy, severity: float, model_id: str, device: str = "auto"
    ) -> None:
        self.ledger, self.bundle, self.policy, self.severity = ledger, bundle, policy, severity
        self.model_id = model_id
        self.anime = AnimeCheck(bundle, policy, device)  # DeepDanbooru for the pictures the policy calls anime
        self.prompt_set = ledger.results.ensure_prompt_set(bundle.concepts.prompts)
        self.lists = LiveMatcher(ledger)  # imported hash lists decide before the model
        self.policy_columns = columns(bundle.concepts.prompts, policy)

    def result_for(self, sha256: str, conn=None) -> int | None:
        """The result already stored for these bytes with this model, or None."""
        return self.ledger.results.result_id_for(sha256, self.model_id, conn=conn)

    def listed(self, sha256: str) -> bool:
        """On an imported hash list (a list imported after the file was decided applies now). The built-in
        canary list was there when the file was decided: with no list imported, nothing can have changed,
        and an unchanged tree is rescanned without reading any stored hash."""
        return self.lists.has_imported and self.lists.match_stored(sha256) is not None

    def scored(
        self,
        pictures: list[Picture],
        frames: list[int],
        embeddings: np.ndarray,
        sims: np.ndarray,
        model_id: str | None = None,
    ) -> list[Decision]:
        """Rows of `embeddings`/`sims` (all prompts of the bundle) belong to the pictures in order,
        frames[i] rows each. model_id: what scored them, when not this process's session (bucket workers)."""
        matcher = self.lists.refresh()  # a list imported while a daemon runs applies from this batch on
        facts = [
            Facts(
                p.detail,
                self.ledger.allowlisted(p.sha256),
                matcher.match(p.sha256, p.md5, queries(p.pdq, p.pdq_variants), p.vpdq) if matcher else None,
            )
            for p in pictures
        ]
        chosen = sims[:, self.policy_columns]
        needed = self.anime.needed(chosen, frames, self.severity)
        scores = self.anime.scores([p.dd_view for p in pictures], needed)
        details = [with_outcome(p.detail, one, need) for p, one, need in zip(pictures, scores, needed, strict=True)]
        facts = [Facts(detail, f.allowlisted, f.match) for detail, f in zip(details, facts, strict=True)]
        dd_rows = per_row(scores, frames) if self.anime.active else None
        verdicts = decide_files(self.policy, chosen, frames, self.severity, facts, dd_rows)
        decisions, ends = [], np.cumsum(frames)
        for index, (picture, verdict) in enumerate(zip(pictures, verdicts, strict=True)):
            rows = slice(int(ends[index]) - frames[index], int(ends[index]))
            result_id = self.ledger.results.put_result(picture.sha256, model_id or self.model_id, self.prompt_set,
                                               sims[rows], embeddings[rows], details[index])  # fmt: skip
            self.ledger.lists.put_picture_hashes(picture.sha256, picture.md5, picture.pdq, picture.pdq_variants,
                                           picture.vpdq)  # fmt: skip
            decisions.append(Decision(result_id, verdict))
        return decisions

    def stored(self, sha256: str, result_id: int) -> Verdict:
        """Decide from a stored result (copies of bytes already scored, unchanged files under a new policy
        or severity, cached uploads): the stored similarities, decode notes and picture hashes."""
        stored = self.ledger.results.get_result(result_id)
        sims = policy_sims(
            stored.sims, stored.embedding, self.ledger.results.prompt_set(stored.prompt_set), self.policy, self.bundle
        )
        facts = Facts(stored.detail, self.ledger.allowlisted(sha256), self.lists.match_stored(sha256))
        scores = stored_scores(stored.detail)  # DeepDanbooru is never run again on stored results
        dd_rows = per_row([scores], [len(sims)]) if self.anime.active else None
        (verdict,) = decide_files(self.policy, sims, [len(sims)], self.severity, [facts], dd_rows)
        return verdict


@dataclass
class Counters:
    listed: int = 0  # found by discovery (it runs ahead of the work)
    discovered: int = 0  # taken from discovery for work
    scored: int = 0
    unchanged: int = 0
    reused: int = 0
    flagged: int = 0
    errors: int = 0
    pending: int = 0  # still changing after a retry: the next scan takes them
    vanished: int = 0
    quarantined: int = 0  # acted on in this run: moved to the quarantine, removed upstream
    upstream_pending: int = 0  # acted on in this run: bytes safe in the quarantine, the removal waits
    taken: int = 0  # objects of uploads held in quarantine (their thumbnails), taken into the items unscored
    frames: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "infer": 0.0, "record": 0.0})
    # CPU seconds of the scored files by stage, in whichever process ran it (read, hash, decode, pdq, view,
    # normalise, pipe; batch and record on the main thread): where a picture's CPU goes (the benchmarks).
    stage_cpu: dict[str, float] = field(default_factory=dict)

    def add_cpu(self, spent: dict[str, float]) -> None:
        for stage, seconds in spent.items():
            self.stage_cpu[stage] = self.stage_cpu.get(stage, 0.0) + seconds

    @property
    def done(self) -> int:
        return self.scored + self.unchanged + self.reused + self.errors + self.pending + self.vanished + self.taken

    @property
    def exit_code(self) -> int:
        """1: something was flagged (whatever else happened, so alerts fire); 2: nothing flagged, but some
        files could not be checked (unreadable, undecodable: as clamscan says it); 0: all checked, clean."""
        return 1 if self.flagged else 2 if self.errors else 0

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
            "quarantined": self.quarantined,
            # not "upstream_pending": the daemon's status has that name for the whole ledger's count
            "quarantined_upstream_pending": self.upstream_pending,
            "taken_into_items": self.taken,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(rate, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "stage_cpu_s": {k: round(v, 4) for k, v in sorted(self.stage_cpu.items())},
        }


class FileRecorder:
    """A file's verdict or error on record: its row, the act on a flagged file, the report line, the counts.
    The actor (the quarantine) is the only writer of `files.action`."""

    def __init__(
        self,
        ledger: Ledger,
        policy: Policy,
        severity: float,
        actor,
        report: ReportWriter | None,
        counters: Counters,
        on_verdict: Callable[[int], None] | None = None,
    ) -> None:
        self.ledger, self.policy, self.severity = ledger, policy, severity
        self.actor = actor  # None: dry run, record verdicts and act on nothing
        self.report, self.counters = report, counters
        self.on_verdict = on_verdict  # called with the file's mtime (ns) as each verdict is recorded
        self._flagged_paths: set[bytes] = set()  # each file counts once as flagged, however often it is seen

    def verdict(
        self,
        found: Found,
        sha256: str,
        status: FileStatus,
        verdict: Verdict,
        result_id: int,
        fmt: str | None,
        model_id: str,
        report_status: str | None = None,
    ) -> None:
        key = path_key(found.path)
        action, root = self.ledger.record_file(
            key,
            root=path_key(found.root) if found.root else None,
            size=found.size,
            mtime_ns=found.mtime_ns,
            sha256=sha256,
            status=status,
            verdict=verdict.label,
            reason=verdict.reason_json(),
            result_id=result_id,
            model_id=model_id,
            policy_id=self.policy.policy_id,
            severity=self.severity,
            fmt=fmt,
            etag=found.etag,
            origin=found.origin,
        )
        if self.on_verdict and found.mtime_ns:
            self.on_verdict(found.mtime_ns)
        if not verdict.flagged:
            action = None
        else:
            self.count_flagged(key)
            # An action kept from an earlier run on the same bytes stands; otherwise the actor acts. A file
            # quarantined before that is here again (it was read just now) is a copy that came back.
            moved = None
            flagged = Flagged(key, root, sha256, verdict.reason, model_id, self.policy.policy_id, self.severity)
            if self.actor is not None and action is None:
                moved = self.actor.act(flagged)
            elif self.actor is not None and action == FileAction.QUARANTINED:
                moved = self.actor.act_on_returned(flagged)
            if moved is not None:
                action = self._count_act(found, moved, verdict.reason)
        self.write_report(found.path, sha256, report_status or status, verdict.label, verdict.reason, found.size,
                          fmt, action)  # fmt: skip

    def unchanged(self, found: Found, row) -> None:
        """A file as last decided, under the same inputs: counted and reported, not decided again. A flagged
        one no action was taken on (its quarantine was rolled back after a kill, or a dry run flagged it) is
        acted on now, as `apply` would: a later scan or the daemon never leaves it public."""
        action = row.action
        if row.verdict == "flagged":
            self.count_flagged(path_key(found.path))
            if action is None and self.actor is not None and row.sha256:
                moved = self.actor.act(Flagged.recorded(row.path, row.root, row.sha256, row.reason, row.model_id,
                                                        row.policy_id, row.severity))  # fmt: skip
                if moved is not None:
                    action = self._count_act(found, moved, row.reason)
        self.write_report(found.path, row.sha256, "skipped", row.verdict, row.reason, found.size, row.format,
                          action)  # fmt: skip

    def _count_act(self, found: Found, moved, reason) -> FileAction:
        action = FileAction(moved.state)
        if action == FileAction.UPSTREAM_PENDING:
            self.counters.upstream_pending += 1
        else:
            self.counters.quarantined += 1
        notice(log, "quarantined %s (%s): %s", found.path, action, short_reason(reason))
        return action

    def error(
        self,
        path: str,
        reason: str,
        size: int | None,
        mtime_ns: int | None,
        sha256: str | None,
        model_id: str,
        found: Found | None = None,
    ) -> None:
        self.counters.errors += 1
        log.info("could not check %s: %s", path, reason)
        self.ledger.record_file(
            path_key(path),
            root=path_key(found.root) if found and found.root else None,
            size=size,
            mtime_ns=mtime_ns,
            sha256=sha256,
            status=FileStatus.ERROR,
            reason=json.dumps({"error": reason}),
            model_id=model_id,
            etag=found.etag if found else None,
            origin=found.origin if found else None,
        )
        self.write_report(path, sha256, "error", None, reason, size)

    def note(self, path: str, reason: str) -> None:
        """A report line for a file left for the next scan (still changing)."""
        self.write_report(path, None, "skipped", None, reason, None)

    def count_flagged(self, key: bytes) -> None:
        if key not in self._flagged_paths:
            self._flagged_paths.add(key)
            self.counters.flagged += 1

    def write_report(
        self,
        path: str,
        sha256: str | None,
        status: str,
        verdict: str | None,
        reason: Any,
        size: int | None,
        fmt: str | None = None,
        action: str | None = None,
    ) -> None:
        if self.report:
            self.report.write(record(path, sha256=sha256, status=status, verdict=verdict, reason=reason, size=size,
                                     fmt=fmt, action=action))  # fmt: skip
