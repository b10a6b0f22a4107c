"""`bucket scan` as an application object: settings and options in, a finished run and its summary out.
The command parses flags and prints; this checks what the engine needs, builds the stage spec from the
settings, wires the runner, the actor and the engine, and runs the follow-ups of what it quarantined."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror_scan.errors import UsageError, install_hint
from mirror_scan.settings import Settings

ENGINES = ("local", "ray")


@dataclass
class BucketScanOptions:
    remote: str  # NAME:bucket
    prefix: str = ""
    engine: str = "local"
    ray_address: str | None = None
    shard_rows: int = 10_000
    wave_shards: int = 16
    fetch_threads: int = 8
    dry_run: bool = False
    report: Path | None = None  # one record per object, like `scan --report`
    report_format: str = "jsonl"
    stall_after_s: float = 300.0  # Ray: give up when the cluster lost what the stages need for this long


@dataclass
class BucketScanRun:
    remote: str  # as resolved from rclone.conf or the environment
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0  # 1 when something was flagged


def check_engine(engine: str) -> None:
    """The engine is known and its libraries are installed (before anything is loaded)."""
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r} is not known", hint="local or ray")
    needed = ("boto3", "pyarrow", *(("ray",) if engine == "ray" else ()))
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"bucket scan needs {', '.join(missing)}",
            hint=install_hint("bucket"),
        )


class BucketScan:
    def __init__(self, settings: Settings, options: BucketScanOptions) -> None:
        from mirror_scan.app.scanner import load_scanner, scan_config
        from mirror_scan.bucket.s3 import S3Settings
        from mirror_scan.bucket.stages import StageSpec
        from mirror_scan.clients.rclone import Rclone

        check_engine(options.engine)
        self.settings, self.options = settings, options
        self.s3 = S3Settings.from_rclone(
            options.remote, Rclone.locate(settings.rclone), max_connections=max(16, options.fetch_threads * 2)
        )
        self.bundle, self.policy, offset, self.scorer = load_scanner(settings)
        self.config = scan_config(settings, offset, self.policy, self.bundle)
        self.spec = StageSpec(
            s3=self.s3,
            model_dir=str(settings.model),
            device=settings.device,
            precision=settings.precision,
            limits=self.config.limits,
            max_bytes=self.config.max_bytes,
            decoders=settings.decoders,
            decode_timeout_s=settings.decode_timeout,
            batch_size=settings.batch_size,
            fetch_threads=options.fetch_threads,
        )

    def describe(self) -> str:
        options = self.options
        where = self.s3.remote + (f"/{options.prefix}" if options.prefix else "")
        return (
            f"bucket {where}: engine {options.engine}, model {self.bundle.manifest['model']['arch']}, "
            f"policy {self.policy.policy_id}" + (", dry run" if options.dry_run else "")
        )

    def run(
        self,
        workspace,
        on_progress: Callable[[Any, Any], None] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> BucketScanRun:
        """on_progress(progress, counters) after each ingested batch; say(note) for follow-up notes."""
        from mirror_scan.scan.act import BucketActor
        from mirror_scan.scan.report import ReportWriter
        from mirror_scan.scan.runner import Scan

        options = self.options
        actor = None if options.dry_run else BucketActor(workspace.quarantine)
        writer = ReportWriter(options.report, options.report_format) if options.report else None
        runner = Scan(workspace.ledger, self.bundle, self.scorer, self.policy, self.config, actor=actor, report=writer)
        try:
            progress, info = self._scan(runner, on_progress)
        finally:
            if writer:
                writer.close()
        if not options.dry_run:
            workspace.run_follow_ups(say=say or (lambda note: None))
        return self._summary(runner, progress, info)

    def _scan(self, runner, on_progress) -> tuple[Any, dict]:
        from mirror_scan.bucket.engine import RayPlan, scan_bucket, workdir_for

        options = self.options
        return scan_bucket(
            runner,
            self.spec,
            options.prefix,
            workdir_for(self.settings.state, self.s3.remote),
            options.engine,
            RayPlan(address=options.ray_address, wave_shards=options.wave_shards, stall_after_s=options.stall_after_s),
            on_batch=(lambda p: on_progress(p, runner.counters)) if on_progress else None,
            shard_rows=options.shard_rows,
        )

    def _summary(self, runner, progress, info: dict) -> BucketScanRun:
        options, counters = self.options, runner.counters
        summary = {
            **progress.as_dict(),
            # Of this run's listing: listed = skipped_unchanged + scanned + errors (results recovered from an
            # interrupted run are counted apart, their objects among the skipped).
            "scanned": counters.scored - progress.recovered_scored,
            "flagged": counters.flagged,
            "errors": counters.errors - progress.recovered_errors,
            "engine": options.engine,
            **{f"ray_{k}": v for k, v in info.items()},
            "dry_run": options.dry_run,
        }
        return BucketScanRun(self.s3.remote, summary, counters.exit_code)
