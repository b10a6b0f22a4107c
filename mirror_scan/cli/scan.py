"""`scan`, `apply`, `rescore`, `report` and `config`: the commands that read and write the state."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mirror_scan.cli.console import confirm, current, err, interactive, out, print_json, setup_logging
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
    RemoteOpt,
    SeverityOpt,
    StateOpt,
    YesOpt,
    open_reader,
    open_writer,
    require_state,
)
from mirror_scan.cli.views import counting
from mirror_scan.errors import UsageError
from mirror_scan.scan.decide import short_reason
from mirror_scan.settings import Settings, config_file, describe, resolve
from mirror_scan.store.rows import display_path

log = logging.getLogger("mirror_scan")


def _settings(config: Path | None, **flags) -> Settings:
    return resolve(flags, config)


def _report_summary(settings: Settings) -> None:
    """calibrate's rates and margins over every decided file of the ledger (stored results, no image read)."""
    from mirror_scan.app.calibration import stored_calibration
    from mirror_scan.cli.calibrate import print_margins, print_rates

    found = stored_calibration(settings)
    if found is None:
        raise UsageError("nothing decided in this state database yet", hint="run mirror-scan scan first")
    result, offsets, policy_id = found
    out.print(f"{result.pictures} decided file(s), policy {policy_id}, severity {result.current:+g}")
    print_rates(result, offsets)
    print_margins(result, offsets)


APPLY_ASKS_OVER = 10  # at a terminal, apply lists and asks before acting on more files than this
APPLY_LISTS = 20


def _labels_of(rows) -> dict[str, int]:
    import json

    counts: dict[str, int] = {}
    for row in rows:
        try:
            labels = (json.loads(row.reason) if row.reason else {}).get("labels") or ["?"]
        except (ValueError, AttributeError):
            labels = ["?"]
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
    return counts


def _progress_enabled(quiet: bool, json_out: bool) -> bool:
    return not quiet and not json_out and sys.stderr.isatty()


def register(app: typer.Typer) -> None:
    @app.command("scan")
    def scan(
        paths: Annotated[list[Path], typer.Argument(help="Directories or files to scan (a mirror, a backup).")],
        model: ModelOpt = None,
        policy: PolicyOpt = None,
        severity: SeverityOpt = None,
        dry_run: DryRunOpt = False,
        state: StateOpt = None,
        quarantine: QuarantineOpt = None,
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
        copies. Exit 0: every file checked, nothing flagged; 1: something flagged; 2: nothing flagged but
        some files could not be checked (see `report --errors`), or the scan could not run."""
        from mirror_scan.app.one_scan import OneScan

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
        job = OneScan(settings, paths, dry_run=dry_run, report=report, report_format=report_format)
        if not quiet and not json_out:
            for line in job.describe():
                err.print(line)
        say = None if quiet or json_out else err.print
        with open_writer(settings, quiet=quiet or json_out) as workspace:
            if _progress_enabled(quiet, json_out):
                with Progress(
                    TextColumn("scanning"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[found]}"),
                    TextColumn("{task.fields[rate]} files/s"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=current().err,
                    transient=True,
                ) as bar:
                    task = bar.add_task("scan", total=None, rate="-", found="")
                    started = time.monotonic()

                    def show(counters, discovery_done):
                        # The rate from the wall clock (the runner's own clock is set when it ends); the total
                        # once discovery is done, the count found so far until then.
                        elapsed = time.monotonic() - started
                        bar.update(
                            task,
                            completed=counters.done,
                            total=max(counters.listed, counters.done) if discovery_done else None,
                            rate=f"{counters.done / elapsed:.1f}" if elapsed > 0.5 else "-",
                            found="" if discovery_done else f"({counters.listed} found so far)",
                        )

                    run = job.run(workspace, progress=show, say=say)
            else:
                run = job.run(workspace, say=say)
        summary = run.summary
        if json_out:
            print_json(summary)
        elif not quiet:
            table = Table(title="scan summary", show_header=False)
            for label, key in (
                ("scanned", "scanned"),
                ("skipped (unchanged)", "skipped_unchanged"),
                ("reused (same bytes)", "reused_by_hash"),
                ("flagged", "flagged"),
                ("moved to the quarantine", "quarantined"),
                ("in quarantine, upstream removal pending", "quarantined_upstream_pending"),
                ("could not be checked (errors)", "errors"),
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
            else:
                if summary["quarantined"]:
                    out.print(
                        f"{summary['quarantined']} flagged file(s) moved to the quarantine ({settings.quarantine}); "
                        "see: mirror-scan quarantine list"
                    )
                if pending := summary["quarantined_upstream_pending"]:
                    out.print(
                        f"{pending} flagged file(s) are safe in the quarantine but still in the "
                        "mirror and the bucket: the bucket did not take the removal; `mirror-scan watch` (or the "
                        "next command) retries it"
                    )
            if run.failures:
                out.print(
                    f"{run.failures} flagged file(s) could not be quarantined (see the log); "
                    "they stay in place and `mirror-scan apply` retries them"
                )
        raise typer.Exit(run.exit_code)

    @app.command("apply")
    def apply(
        state: StateOpt = None,
        quarantine: QuarantineOpt = None,
        remote: RemoteOpt = None,
        rclone: RcloneOpt = None,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="List what would be quarantined, by label; act on nothing.")
        ] = False,
        yes: YesOpt = False,
    ) -> None:
        """Quarantine the files flagged earlier (by a dry run or a rescore) and not yet acted on, without
        running the model again. With --remote NAME:bucket, also the objects `bucket scan` flagged in that
        bucket: each is read into the quarantine, verified, and removed upstream. At a terminal, more than
        a handful are listed first and it asks (--yes does not ask)."""
        from mirror_scan.app.item_ops import ItemOps, shell_by

        settings = _settings(config, state=state, quarantine=quarantine, remote=remote, rclone=rclone)
        require_state(settings)
        bucket_root = settings.remote.rstrip("/").encode() if settings.remote else None
        with open_reader(settings) as reader:
            todo = list(reader.ledger.flagged_unacted())
            if bucket_root is not None:
                todo += [row for row in reader.ledger.flagged_unacted("bucket") if row.root == bucket_root]
        by_label = _labels_of(todo)
        if dry_run or (len(todo) > APPLY_ASKS_OVER and not yes and interactive() and not json_out):
            if json_out:
                files = [display_path(row.path) for row in todo]
                print_json({"would_act": len(todo), "by_label": by_label, "files": files})
                return
            for row in todo[:APPLY_LISTS]:
                out.print(f"{display_path(row.path)}  {short_reason(row.reason)}")
            if len(todo) > APPLY_LISTS:
                out.print(f"... and {len(todo) - APPLY_LISTS} more (all of them: mirror-scan report --flagged)")
            labels = ", ".join(f"{label} {n}" for label, n in sorted(by_label.items())) or "none"
            out.print(f"{len(todo)} flagged file(s) not yet acted on; by label: {labels}")
            if dry_run:
                return
            if not confirm(f"Quarantine these {len(todo)} file(s)?", default=False):
                raise typer.Exit(1)
        with open_writer(settings, quiet=json_out) as workspace, counting(len(todo), "quarantining", json_out) as tick:
            if settings.remote:
                for root in {row.root for row in workspace.ledger.flagged_unacted() if row.root}:
                    workspace.bind_mirror(os.fsdecode(root), settings.remote, "apply --remote")
            with ItemOps(workspace, shell_by(), say=None if json_out else lambda note: err.print(note)) as ops:
                acted = ops.apply(bucket_root, on_each=tick)
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
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Show how many verdicts would change, by label; write nothing.")
        ] = False,
        write: Annotated[
            bool,
            typer.Option(
                "--write",
                help="Also store this severity in the config file (with a comment saying when and why), so watch, "
                "scan and serve use it from now on.",
            ),
        ] = False,
    ) -> None:
        """Re-decide every stored file from stored similarities (or stored embeddings when the policy's
        prompts changed) with no image read; report how many verdicts changed each way. The verdicts are
        recorded in the state database; the config file (what watch, scan and serve use) changes only with
        --write."""
        from mirror_scan.model.bundle import load_bundle
        from mirror_scan.policy import load_policy, resolve_severity
        from mirror_scan.scan.rescore import rescore

        if write and dry_run:
            raise UsageError("--write stores what a rescore recorded: not with --dry-run")
        settings = _settings(config, policy=policy, severity=severity, state=state, model=model, quarantine=quarantine)
        require_state(settings)
        loaded = load_policy(settings.policy)
        offset = resolve_severity(loaded, settings.severity)
        daemons = _settings(config)  # what watch, scan and serve use: the same, less this command's flags
        bundle = load_bundle(settings.model) if (settings.model / "manifest.json").exists() else None
        opened = open_reader(settings) if dry_run else open_writer(settings, quiet=json_out)
        with opened as workspace:
            summary = rescore(workspace.ledger, loaded, offset, bundle, dry_run=dry_run)
        result = summary.as_dict() | {"policy": loaded.policy_id, "severity": offset}
        persisted = [] if dry_run else _persist_rescore(config, daemons, loaded, offset, summary.files, write)
        result["written"] = str(config_file(config)) if write else None
        if json_out:
            print_json(result)
        else:
            out.print(
                f"{'would rescore' if dry_run else 'rescored'} {summary.files} file(s) with {loaded.policy_id}, "
                f"severity {offset:+g} in {summary.seconds:.2f}s: {summary.to_flagged} clean -> flagged, "
                f"{summary.to_clean} flagged -> clean, {summary.still_flagged} still flagged, "
                f"{summary.still_clean} still clean"
            )
            if summary.newly_flagged_by_label:
                labels = ", ".join(f"{label} {n}" for label, n in sorted(summary.newly_flagged_by_label.items()))
                out.print(f"newly flagged by label: {labels}")
            for line in persisted:
                out.print(line)
            if dry_run:
                out.print("dry run: no verdict was changed; run it again without --dry-run to record them")
            elif summary.to_flagged:
                out.print("act on the newly flagged files with: mirror-scan apply --dry-run, then mirror-scan apply")

    def _persist_rescore(config, daemons, loaded, offset: float, files: int, write: bool) -> list[str]:
        """What a rescore leaves for the daemons: with --write the severity in the config file; without, a
        line saying the verdicts are recorded and what watch and scan keep using (never left to guess)."""
        import datetime as dt

        from mirror_scan.cli.calibrate import write_severity
        from mirror_scan.policy import load_policy, resolve_severity

        same_policy = load_policy(daemons.policy).policy_id == loaded.policy_id
        used = resolve_severity(loaded, daemons.severity) if same_policy else None
        lines = [f"recorded {files} verdict(s) in the state database {daemons.state}"]
        if write:
            target = config_file(config)
            provenance = f"rescored {dt.date.today().isoformat()}: policy {loaded.policy_id}, {files} file(s)"
            write_severity(target, offset, provenance)
            lines.append(f"severity {offset:+g} written to {target}: watch, scan and serve use it when they start")
            if daemons.sources["severity"].startswith("env"):
                lines.append(f"note: {daemons.sources['severity']} is set and overrides the config file")
            if not same_policy:
                lines.append(f"note: the config uses policy {daemons.policy}, not {loaded.policy_id}: set policy "
                             "in the config file too")  # fmt: skip
        elif used is None or used != offset:
            now, source = (
                (f"policy {daemons.policy}", daemons.sources["policy"])
                if used is None
                else (f"severity {used:+g}", daemons.sources["severity"])
            )
            lines.append(f"watch, scan and serve keep using {now} ({source}); --write stores severity {offset:+g} "
                         "in the config file")  # fmt: skip
        return lines

    @app.command("report")
    def report_cmd(
        fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
        flagged: Annotated[bool, typer.Option("--flagged", help="Only flagged files.")] = False,
        errors: Annotated[bool, typer.Option("--errors", help="Only files that could not be scanned.")] = False,
        output: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
        state: StateOpt = None,
        quarantine: QuarantineOpt = None,  # noqa: ARG001 - accepted like every command's (unused: the ledger has it)
        config: ConfigOpt = None,
        summary: Annotated[
            bool,
            typer.Option(
                "--summary",
                help="Instead of records: how many of the scanned files each severity would flag, with a "
                "95% interval, and their margins (calibrate's view, over what was scanned).",
            ),
        ] = False,
        policy: PolicyOpt = None,
        severity: SeverityOpt = None,
        model: ModelOpt = None,
    ) -> None:
        """One record per file: path, sha256, status, verdict, reason, size, format, action."""
        from mirror_scan.scan.report import ReportWriter, ledger_records
        from mirror_scan.store.ledger import Ledger

        settings = _settings(config, state=state, policy=policy, severity=severity, model=model)
        require_state(settings)
        if summary:
            _report_summary(settings)
            return
        with Ledger(settings.state, readonly=True) as ledger:
            writer = ReportWriter(output, fmt)
            count = 0
            try:
                for rec in ledger_records(ledger, flagged=flagged, errors=errors):
                    writer.write(rec)
                    count += 1
            finally:
                writer.close()
        if count == 0:  # said on stderr (the records' stream stays clean): an empty answer is not a silent one
            what = "file that could not be scanned" if errors else "flagged file" if flagged else "file"
            err.print(f"no {what} recorded in {settings.state}", markup=False, highlight=False)

    config_app = typer.Typer(
        help="Show every setting and where it came from; `config init` writes a commented file to start from.",
        invoke_without_command=True,
    )
    app.add_typer(config_app, name="config")

    @config_app.callback()
    def config_cmd(ctx: typer.Context, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """Show every setting, its value, and where it came from (flag, env, config file, default)."""
        if ctx.invoked_subcommand is not None:
            return
        from mirror_scan.settings import typed

        settings = _settings(config)
        rows = describe(settings)
        if json_out:
            print_json(
                {name: {"value": typed(name, getattr(settings, name)), "source": source} for name, _, source in rows}
            )
            return
        table = Table("setting", "value", "from")
        for row in rows:
            table.add_row(*row)
        out.print(table)

    @config_app.command("init")
    def config_init(
        path: Annotated[
            Path | None, typer.Option("--out", help="Where to write it (default: the user config file).")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace a file that exists.")] = False,
        seal: Annotated[
            bool | None,
            typer.Option(
                "--seal/--no-seal",
                help="Seal the quarantine at rest (recommended): make an age key pair, set seal_to to its public "
                "key and seal_identity to its file. Asked at a terminal when not given.",
            ),
        ] = None,
        identity_out: Annotated[
            Path | None,
            typer.Option("--identity-out", help="Where the identity goes (default: quarantine-key.txt beside it)."),
        ] = None,
    ) -> None:
        """Write a commented config file: every setting at its default, commented out, with what it does;
        with --seal, the quarantine sealed to a new key pair."""
        import sys

        from mirror_scan.atomic import atomic_write_bytes
        from mirror_scan.settings import commented_config, default_config_path

        target = path or default_config_path()
        if target.exists() and not force:
            raise UsageError(f"{target} exists; nothing was written", hint="pass --force to replace it, or --out PATH")
        if seal is None:
            seal = sys.stdin.isatty() and typer.confirm(
                "Seal the quarantine at rest (recommended: a stolen disk or a backup then carries nothing readable)?",
                default=True,
            )
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        chosen: dict[str, object] = {}
        suggested: dict[str, object] = {}
        if seal:
            from mirror_scan.store.sealing import generate_identity

            key_file = identity_out or target.with_name("quarantine-key.txt")
            key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            chosen = {"seal_to": generate_identity(key_file)}
            # The file every process reads never names the identity: the daemons seal with the public key
            # alone; the ways out are given it (--identity, or seal_identity where a shell restores).
            suggested = {"seal_identity": key_file}
        atomic_write_bytes(target, commented_config(chosen, suggested).encode(), 0o600)
        out.print(f"wrote {target}: uncomment what you change; `mirror-scan config` shows the result")
        if seal:
            out.print(
                f"the quarantine is sealed to {chosen['seal_to']}; its identity is {suggested['seal_identity']} "
                "(0600). Keep a copy of it offline: without it no sealed item can be restored or reported. Restores "
                f"take it with --identity {suggested['seal_identity']} (or MIRROR_SCAN_SEAL_IDENTITY in your "
                "shell); the watch daemon and the validator never read it."
            )


__all__ = ["register"]
