"""`bucket scan`: score a bucket in place, on this machine or a Ray cluster, into the same ledger."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mirror_scan.cli.console import err, out, print_json, setup_logging
from mirror_scan.cli.options import (
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    JsonOpt,
    ModelOpt,
    PolicyOpt,
    PrecisionOpt,
    QuarantineOpt,
    QuietOpt,
    RcloneOpt,
    SeverityOpt,
    StateOpt,
    open_writer,
)
from mirror_scan.settings import resolve

bucket_app = typer.Typer(help="Scan a bucket in place (no mirror), on this machine or a Ray cluster.")


@bucket_app.command("scan")
def scan(
    remote: Annotated[
        str,
        typer.Argument(help="The rclone remote and bucket, NAME:bucket (from rclone.conf or RCLONE_CONFIG_NAME_*)."),
    ],
    prefix: Annotated[str, typer.Option("--prefix", help="Only keys starting with this.")] = "",
    engine: Annotated[
        str, typer.Option("--engine", help="local: this process; ray: Ray Data on a local instance or a cluster.")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="The Ray cluster: HOST:6379 (its head), auto (the cluster this machine belongs to) or "
            "ray://HOST:10001 (Ray Client); default: RAY_ADDRESS, else a local Ray instance of the scan's own.",
        ),
    ] = None,
    shard_rows: Annotated[int, typer.Option("--shard-rows", help="Objects per manifest shard.", min=1)] = 10_000,
    wave_shards: Annotated[
        int,
        typer.Option(
            "--wave-shards", help="Ray: shards per Ray Data run (its actors load the model once per run).", min=1
        ),
    ] = 16,
    fetch_threads: Annotated[int, typer.Option("--fetch-threads", help="GETs in flight per worker.", min=1)] = 8,
    stall_timeout: Annotated[
        str,
        typer.Option(
            "--stall-timeout",
            help="Ray: give up (exit 2; a rerun resumes) when nothing comes back for this long while the cluster "
            "lacks the CPUs or GPUs the scan's stages hold (a node lost); 30s, 5m, 1h.",
        ),
    ] = "5m",
    dry_run: DryRunOpt = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write one record per object here.")] = None,
    report_format: Annotated[str, typer.Option("--report-format", help="jsonl or csv.")] = "jsonl",
    model: ModelOpt = None,
    policy: PolicyOpt = None,
    severity: SeverityOpt = None,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    rclone: RcloneOpt = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Objects per batch.")] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """List the bucket into manifest shards (Parquet, while the listing streams), skip objects already
    scored with this model (same ETag), read the rest with an S3 client, score them, and record them in the
    ledger like mirrored files (path NAME:bucket/KEY): `report`, `rescore`, `apply --remote` and `quarantine`
    work on them. Flagged objects are quarantined (read, verified, removed from the bucket) unless --dry-run.
    Exit 0: every object checked, nothing flagged; 1: something flagged; 2: nothing flagged but some objects
    could not be checked, or the scan could not run."""
    from mirror_scan.app.bucket_scan import BucketScan, BucketScanOptions, check_engine
    from mirror_scan.cli.durations import parse_duration

    check_engine(engine)
    stall_after_s = parse_duration(stall_timeout)
    if quiet or json_out:
        setup_logging(quiet=True)
    settings = resolve(
        {
            "model": model,
            "policy": policy,
            "severity": severity,
            "state": state,
            "quarantine": quarantine,
            "rclone": rclone,
            "batch_size": batch_size,
            "device": device,
            "precision": precision,
        },
        config,
    )
    options = BucketScanOptions(remote, prefix, engine, ray_address, shard_rows, wave_shards, fetch_threads, dry_run,
                                report, report_format, stall_after_s)  # fmt: skip
    bucket_scan = BucketScan(settings, options)
    show = not quiet and not json_out
    if show:
        err.print(bucket_scan.describe())

    def tick(progress, counters) -> None:
        if show and sys.stderr.isatty():
            err.print(
                f"\rlisted {progress.listed}  skipped {progress.skipped}  scored {counters.scored}  flagged "
                f"{counters.flagged}  errors {counters.errors}  {progress.as_dict()['objects_per_s']} objects/s",
                end="",
            )

    with open_writer(settings, quiet=quiet or json_out) as workspace:
        run = bucket_scan.run(workspace, on_progress=tick, say=lambda note: err.print(note) if show else None)
    summary = run.summary
    if json_out:
        print_json(summary)
    elif not quiet:
        if sys.stderr.isatty():
            err.print()
        table = Table(title=f"bucket scan of {run.remote}", show_header=False)
        for label, key in (
            ("listed", "listed"),
            ("skipped (same ETag, scored before)", "skipped_unchanged"),
            ("scanned", "scanned"),
            ("recovered from an interrupted run", "recovered_from_interrupted_run"),
            ("flagged", "flagged"),
            ("errors", "errors"),
            ("objects/s", "objects_per_s"),
            ("seconds", "seconds"),
        ):
            table.add_row(label, str(summary[key]))
        out.print(table)
        stages = summary["stage_seconds"]
        out.print(
            f"per-stage seconds (summed over workers): list {summary['list_seconds']}, fetch {stages['fetch']}, "
            f"decode {stages['decode']}, infer {stages['infer']}, ingest {summary['ingest_seconds']}"
        )
        if summary["flagged"] and dry_run:
            out.print(f"dry run: act on these verdicts with: mirror-scan apply --remote {run.remote}")
    raise typer.Exit(run.exit_code)


def register(app: typer.Typer) -> None:
    app.add_typer(bucket_app, name="bucket")


__all__ = ["register"]
