"""`bucket scan`: score a bucket in place, on this machine or a Ray cluster, into the same ledger."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from mirror_scan.cli.console import err, out, print_json, setup_logging
from mirror_scan.cli.options import (
    ConfigOpt,
    DeviceOpt,
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
from mirror_scan.errors import UsageError
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
            help="auto (the cluster this machine belongs to) or ray://HOST:10001; default: a local Ray instance.",
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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Record verdicts; act on nothing.")] = False,
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
    Exit 0: nothing flagged; 1: something flagged; 2: the scan could not run."""
    from mirror_scan.app.scanner import load_scanner, scan_config
    from mirror_scan.bucket.engine import RayPlan, scan_bucket, workdir_for
    from mirror_scan.bucket.s3 import S3Settings
    from mirror_scan.bucket.stages import StageSpec
    from mirror_scan.clients.rclone import Rclone
    from mirror_scan.scan.act import BucketActor
    from mirror_scan.scan.runner import Scan

    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine!r} is not known", hint="local or ray")
    import importlib.util

    needed = ("boto3", "pyarrow", *(("ray",) if engine == "ray" else ()))
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"bucket scan needs {', '.join(missing)}",
            hint="pip install 'mirror-scan[bucket]' (boto3, pyarrow, ray[data])",
        )
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
    s3 = S3Settings.from_rclone(remote, Rclone.locate(settings.rclone), max_connections=max(16, fetch_threads * 2))
    bundle, loaded_policy, offset, scorer = load_scanner(settings)
    config_ = scan_config(settings, offset, loaded_policy)
    spec = StageSpec(
        s3=s3,
        model_dir=str(settings.model),
        device=settings.device,
        precision=settings.precision,
        limits=config_.limits,
        max_bytes=config_.max_bytes,
        decoders=settings.decoders,
        decode_timeout_s=settings.decode_timeout,
        batch_size=settings.batch_size,
        fetch_threads=fetch_threads,
    )
    show = not quiet and not json_out
    if show:
        err.print(
            f"bucket {s3.remote}{'/' + prefix if prefix else ''}: engine {engine}, model "
            f"{bundle.manifest['model']['arch']}, policy {loaded_policy.policy_id}" + (", dry run" if dry_run else "")
        )
    with open_writer(settings, quiet=quiet or json_out) as workspace:
        actor = None if dry_run else BucketActor(workspace.ledger, workspace.quarantine)
        runner = Scan(workspace.ledger, bundle, scorer, loaded_policy, config_, actor=actor)

        def tick(progress) -> None:
            if show and sys.stderr.isatty():
                c = runner.counters
                err.print(
                    f"\rlisted {progress.listed}  skipped {progress.skipped}  scored {c.scored}  flagged "
                    f"{c.flagged}  errors {c.errors}  {progress.as_dict()['objects_per_s']} objects/s",
                    end="",
                )

        progress, info = scan_bucket(
            runner,
            spec,
            prefix,
            workdir_for(settings.state, s3.remote),
            engine,
            RayPlan(address=ray_address, wave_shards=wave_shards),
            on_batch=tick,
            shard_rows=shard_rows,
        )
        if not dry_run:
            workspace.run_follow_ups(say=lambda note: err.print(note) if show else None)
    counters = runner.counters
    summary = {
        **progress.as_dict(),
        # Of this run's listing: listed = skipped_unchanged + scanned + errors (results recovered from an
        # interrupted run are counted apart, their objects among the skipped).
        "scanned": counters.scored - progress.recovered_scored,
        "flagged": counters.flagged,
        "errors": counters.errors - progress.recovered_errors,
        "engine": engine,
        **{f"ray_{k}": v for k, v in info.items()},
        "dry_run": dry_run,
    }
    if json_out:
        print_json(summary)
    elif not quiet:
        if sys.stderr.isatty():
            err.print()
        table = Table(title=f"bucket scan of {s3.remote}", show_header=False)
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
        if counters.flagged and dry_run:
            out.print(f"dry run: act on these verdicts with: mirror-scan apply --remote {s3.remote}")
    raise typer.Exit(counters.exit_code)


def register(app: typer.Typer) -> None:
    app.add_typer(bucket_app, name="bucket")


__all__ = ["register"]
