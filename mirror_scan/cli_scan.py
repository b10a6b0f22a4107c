"""`scan`, `apply`, `rescore`, `report` and `config`: the commands that read and write the state."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .console import err, out, print_json, setup_logging
from .errors import MirrorScanError, UsageError
from .settings import Settings, describe, resolve

log = logging.getLogger("mirror_scan")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Config file (default: the user config dir's mirror-scan/config.toml).")
]
ModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help="Model bundle directory.")]
PolicyOpt = Annotated[
    str | None, typer.Option("--policy", "-p", help="Built-in policy (horde-v2, horde-v1) or a policy file.")
]
SeverityOpt = Annotated[
    str | None, typer.Option("--severity", "-s", help="strict, default, lenient, or a number added to every threshold.")
]
StateOpt = Annotated[Path | None, typer.Option("--state", help="SQLite state database.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto (CUDA only if it really runs), cuda, cpu.")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, int8 (faster on CPU; moves similarities ~1e-3).",
    ),
]
QuarantineOpt = Annotated[Path | None, typer.Option("--quarantine", help="Quarantine directory (private, 0700).")]
RemoteOpt = Annotated[
    str | None,
    typer.Option(
        "--remote",
        help="rclone remote of the bucket (NAME:bucket): quarantining also removes the object there (reversibly).",
    ),
]
RcloneOpt = Annotated[str | None, typer.Option("--rclone", help="rclone binary (default: the venv's, then PATH).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary; exit code only.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")]


def _settings(config: Path | None, **flags) -> Settings:
    return resolve(flags, config)


def _load_model_and_policy(settings: Settings):
    from .bundle import load_bundle
    from .policy import load_policy, resolve_severity
    from .scoring import require_prompts

    policy = load_policy(settings.policy)
    severity = resolve_severity(policy, settings.severity)
    if not (settings.model / "manifest.json").exists() and not settings.model.exists():
        raise UsageError(
            f"no model bundle at {settings.model} (from {settings.sources['model']})",
            hint="pass --model DIR, or export one: mirror-scan model export --out DIR",
        )
    bundle = load_bundle(settings.model)
    require_prompts(bundle, policy)
    return bundle, policy, severity


def load_scanner(settings: Settings, *, warm_up: bool = False):
    """Bundle, policy, severity offset and a ready scorer: the start of `scan`, `serve` and `watch`.
    Long-running services warm the session up, so the first file or upload pays no session setup."""
    import numpy as np

    from .scoring import Scorer

    bundle, policy, offset = _load_model_and_policy(settings)
    scorer = Scorer(bundle, device=settings.device, precision=settings.precision)
    if warm_up:
        height, width = bundle.preprocess.size
        scorer(np.zeros((1, 3, height, width), dtype=np.float32))
    return bundle, policy, offset, scorer


def open_state(settings: Settings, *, quiet: bool = False):
    """Open the ledger for writing (taking the single-writer lock) and the quarantine, and finish or
    roll back any move a crash left unfinished: every state-writing command starts here."""
    from .quarantine import Quarantine
    from .state import Ledger

    ledger = Ledger(settings.state)
    try:
        ledger.lock()
        upstream = None
        if settings.remote:
            from .quarantine import Upstream
            from .rclone import Rclone

            upstream = Upstream.rclone(settings.remote, Rclone.locate(settings.rclone))
        quarantine = Quarantine(settings.quarantine, ledger, upstream)
        for note in quarantine.recover():
            if not quiet:
                err.print(f"recovered: {note}")
    except BaseException:
        ledger.close()
        raise
    return ledger, quarantine


def scan_config(settings: Settings, severity: float, **overrides):
    """The runner's settings, the same for `scan` and `watch`."""
    from .decode import Limits
    from .pipeline import ScanConfig

    return ScanConfig(
        severity=severity,
        batch_size=settings.batch_size,
        workers=settings.workers,
        limits=Limits(settings.max_pixels, settings.max_frames),
        max_bytes=settings.max_file_mb << 20,
        **overrides,
    )


def _progress_enabled(quiet: bool, json_out: bool) -> bool:
    return not quiet and not json_out and sys.stderr.isatty()


def register(app: typer.Typer) -> None:
    @app.command("scan")
    def scan(
        paths: Annotated[list[Path], typer.Argument(help="Directories or files to scan (a mirror, a backup).")],
        model: ModelOpt = None,
        policy: PolicyOpt = None,
        severity: SeverityOpt = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Record verdicts; act on nothing.")] = False,
        state: StateOpt = None,
        quarantine: Annotated[Path | None, typer.Option("--quarantine", help="Quarantine directory.")] = None,
        remote: RemoteOpt = None,
        rclone: RcloneOpt = None,
        report: Annotated[Path | None, typer.Option("--report", help="Write one record per file here.")] = None,
        report_format: Annotated[str, typer.Option("--report-format", help="jsonl or csv.")] = "jsonl",
        batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per inference batch.")] = None,
        workers: Annotated[int | None, typer.Option("--workers", help="Decode threads.")] = None,
        device: DeviceOpt = None,
        precision: PrecisionOpt = None,
        config: ConfigOpt = None,
        quiet: QuietOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Scan files once: score every new or changed file, skip unchanged ones, reuse results for
        copies. Exit 0: nothing flagged; 1: something flagged; 2: the scan could not run."""
        from .act import QuarantineActor
        from .pipeline import Scan
        from .report import ReportWriter

        if quiet or json_out:
            setup_logging(quiet=True)
        settings = _settings(
            config,
            remote=remote,
            rclone=rclone,
            model=model,
            policy=policy,
            severity=severity,
            state=state,
            quarantine=quarantine,
            batch_size=batch_size,
            workers=workers,
            device=device,
            precision=precision,
        )
        for path in paths:
            if not os.path.lexists(path):
                raise UsageError(f"{path} does not exist", hint="pass the mirror directory or a backup directory")
        bundle, loaded_policy, offset, scorer = load_scanner(settings)
        place = scorer.placement
        if not quiet and not json_out:
            err.print(f"model {bundle.manifest['model']['arch']} on {place.provider} ({place.precision}): {place.note}")
            err.print(f"policy {loaded_policy.policy_id}, severity {offset:+g}" + (", dry run" if dry_run else ""))
        writer = ReportWriter(report, report_format) if report else None
        ledger, quarantine_store = open_state(settings, quiet=quiet or json_out)
        with ledger:
            actor = None if dry_run else QuarantineActor(ledger, quarantine_store)
            runner = Scan(
                ledger,
                bundle,
                scorer,
                loaded_policy,
                scan_config(settings, offset),
                actor=actor,
                report=writer,
            )
            try:
                if _progress_enabled(quiet, json_out):
                    with Progress(
                        TextColumn("scanning"),
                        BarColumn(),
                        MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} img/s"),
                        TimeElapsedColumn(),
                        TimeRemainingColumn(),
                        console=err,
                        transient=True,
                    ) as bar:
                        task = bar.add_task("scan", total=None, rate="-")

                        def show(counters, discovery_done):
                            rate = counters.scored / max(counters.seconds or 1e-9, 1e-9)
                            bar.update(
                                task,
                                completed=counters.done,
                                total=counters.discovered if discovery_done else None,
                                rate=f"{counters.stage_seconds['infer'] and rate:.1f}",
                            )

                        runner.progress = show
                        counters = runner.run([str(p) for p in paths])
                else:
                    counters = runner.run([str(p) for p in paths])
            finally:
                if writer:
                    writer.close()
        summary = counters.as_dict() | {
            "provider": place.provider,
            "precision": place.precision,
            "policy": loaded_policy.policy_id,
            "severity": offset,
            "dry_run": dry_run,
        }
        if json_out:
            print_json(summary)
        elif not quiet:
            table = Table(title="scan summary", show_header=False)
            for label, key in (
                ("scanned", "scanned"),
                ("skipped (unchanged)", "skipped_unchanged"),
                ("reused (same bytes)", "reused_by_hash"),
                ("flagged", "flagged"),
                ("errors", "errors"),
                ("still changing (next scan)", "pending_changed"),
                ("images/s", "images_per_s"),
                ("seconds", "seconds"),
            ):
                table.add_row(label, str(summary[key]))
            out.print(table)
            if summary["errors"]:
                out.print("errors are listed by: mirror-scan report --errors")
            if summary["flagged"] and dry_run:
                out.print("dry run: nothing was acted on; act on these verdicts with: mirror-scan apply")
            elif summary["flagged"]:
                out.print(
                    f"flagged files were moved to the quarantine ({settings.quarantine}); "
                    "see: mirror-scan quarantine list"
                )
            if actor is not None and actor.failures:
                out.print(
                    f"{actor.failures} flagged file(s) could not be quarantined (see the log); "
                    "they stay in place and `mirror-scan apply` retries them"
                )
        raise typer.Exit(1 if counters.flagged else 0)

    @app.command("apply")
    def apply(
        state: StateOpt = None,
        quarantine: QuarantineOpt = None,
        remote: RemoteOpt = None,
        rclone: RcloneOpt = None,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Quarantine the files flagged earlier (by a dry run or a rescore) and not yet acted on, without
        running the model again."""
        from .act import QuarantineActor
        from .rescore import apply_verdicts

        settings = _settings(config, state=state, quarantine=quarantine, remote=remote, rclone=rclone)
        if not settings.state.exists():
            raise UsageError(f"state database {settings.state} does not exist", hint="run mirror-scan scan first")
        ledger, quarantine_store = open_state(settings, quiet=json_out)
        with ledger:
            acted = apply_verdicts(ledger, QuarantineActor(ledger, quarantine_store))
        if json_out:
            print_json({"acted": acted})
        else:
            out.print(f"quarantined {acted} flagged file(s)")

    @app.command("rescore")
    def rescore_cmd(
        policy: PolicyOpt = None,
        severity: SeverityOpt = None,
        state: StateOpt = None,
        model: ModelOpt = None,
        quarantine: QuarantineOpt = None,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Re-decide every stored file from stored similarities (or stored embeddings when the policy's
        prompts changed) with no image read; report how many verdicts changed each way."""
        from .bundle import load_bundle
        from .policy import load_policy, resolve_severity
        from .rescore import rescore

        settings = _settings(config, policy=policy, severity=severity, state=state, model=model, quarantine=quarantine)
        if not settings.state.exists():
            raise UsageError(f"state database {settings.state} does not exist", hint="run mirror-scan scan first")
        loaded = load_policy(settings.policy)
        offset = resolve_severity(loaded, settings.severity)
        bundle = load_bundle(settings.model) if (settings.model / "manifest.json").exists() else None
        ledger, _ = open_state(settings, quiet=json_out)
        with ledger:
            summary = rescore(ledger, loaded, offset, bundle)
        result = summary.as_dict() | {"policy": loaded.policy_id, "severity": offset}
        if json_out:
            print_json(result)
        else:
            out.print(
                f"rescored {summary.files} file(s) with {loaded.policy_id}, severity {offset:+g} in "
                f"{summary.seconds:.2f}s: {summary.to_flagged} clean -> flagged, {summary.to_clean} flagged -> "
                f"clean, {summary.still_flagged} still flagged, {summary.still_clean} still clean"
            )
            if summary.to_flagged:
                out.print("act on the newly flagged files with: mirror-scan apply")

    @app.command("report")
    def report_cmd(
        fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
        flagged: Annotated[bool, typer.Option("--flagged", help="Only flagged files.")] = False,
        errors: Annotated[bool, typer.Option("--errors", help="Only files that could not be scanned.")] = False,
        output: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
        state: StateOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """One record per file: path, sha256, status, verdict, reason, size, format, action."""
        from .report import ReportWriter, ledger_records
        from .state import Ledger

        settings = _settings(config, state=state)
        with Ledger(settings.state, readonly=True) as ledger:
            writer = ReportWriter(output, fmt)
            try:
                for rec in ledger_records(ledger, flagged=flagged, errors=errors):
                    writer.write(rec)
            finally:
                writer.close()

    @app.command("config")
    def config_cmd(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """Show every setting, its value, and where it came from (flag, env, config file, default)."""
        settings = _settings(config)
        rows = describe(settings)
        if json_out:
            print_json({name: {"value": value, "source": source} for name, value, source in rows})
            return
        table = Table("setting", "value", "from")
        for row in rows:
            table.add_row(*row)
        out.print(table)


__all__ = ["register", "MirrorScanError"]
