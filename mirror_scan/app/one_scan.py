"""`scan` as an application object: a one-off scan of directories or files (a mirror, a backup) into the
ledger, acting on what is flagged unless it is a dry run. The command parses flags, shows progress and
prints the summary; this checks the paths, loads the model, ties the mirror to its remote, wires the
runner, the actor and the report, and runs the follow-ups of what it quarantined."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror_scan.errors import UsageError
from mirror_scan.settings import Settings


@dataclass
class ScanRun:
    summary: dict[str, Any]
    exit_code: int  # 1 when something was flagged
    failures: int  # flagged files that could not be quarantined (they stay; `apply` retries them)


class OneScan:
    def __init__(
        self,
        settings: Settings,
        paths: list[Path],
        *,
        dry_run: bool = False,
        report: Path | None = None,
        report_format: str = "jsonl",
    ) -> None:
        from mirror_scan.app.scanner import load_scanner, scan_config

        for path in paths:
            if not os.path.lexists(path):
                raise UsageError(f"{path} does not exist", hint="pass the mirror directory or a backup directory")
        self.settings, self.paths, self.dry_run = settings, paths, dry_run
        self.report, self.report_format = report, report_format
        self.bundle, self.policy, self.offset, self.scorer = load_scanner(settings)
        self.config = scan_config(settings, self.offset, self.policy, self.bundle)

    def describe(self) -> list[str]:
        from mirror_scan.scan.anime import anime_check_said

        place = self.scorer.placement
        lines = [
            f"model {self.bundle.manifest['model']['arch']} on {place.provider} ({place.precision}): {place.note}",
            f"policy {self.policy.policy_id}, severity {self.offset:+g}" + (", dry run" if self.dry_run else ""),
        ]
        said = anime_check_said(self.policy, self.bundle)
        return [*lines, said] if said else lines

    def run(
        self,
        workspace,
        progress: Callable[[Any, bool], None] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> ScanRun:
        """progress(counters, discovery_done) as the scan goes; say(note) for follow-up notes."""
        from mirror_scan.scan.act import QuarantineActor
        from mirror_scan.scan.report import ReportWriter
        from mirror_scan.scan.runner import Scan

        settings = self.settings
        if settings.remote:  # each mirror is tied to its bucket: another --remote is refused, not obeyed
            for path in self.paths:
                mirror = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
                workspace.bind_mirror(mirror, settings.remote, "scan --remote")
        actor = None if self.dry_run else QuarantineActor(workspace.quarantine)
        writer = ReportWriter(self.report, self.report_format) if self.report else None
        runner = Scan(workspace.ledger, self.bundle, self.scorer, self.policy, self.config, actor=actor,
                      report=writer, progress=progress,
                      take_companion=None if self.dry_run else workspace.quarantine.take_companion)  # fmt: skip
        try:
            counters = runner.run([str(p) for p in self.paths])
        finally:
            if writer:
                writer.close()
        if actor is not None:
            workspace.run_follow_ups(say=say)
        place = self.scorer.placement
        summary = counters.as_dict() | {
            "provider": place.provider,
            "precision": place.precision,
            "policy": self.policy.policy_id,
            "severity": self.offset,
            "dry_run": self.dry_run,
        }
        return ScanRun(summary, counters.exit_code, actor.failures if actor is not None else 0)
