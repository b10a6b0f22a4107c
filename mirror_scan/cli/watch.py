"""`watch` (the daemon) and `status`."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from mirror_scan.cli.console import err, out, print_json, setup_logging
from mirror_scan.cli.durations import parse_interval
from mirror_scan.cli.options import (
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    JsonOpt,
    ModelOpt,
    PolicyOpt,
    PrecisionOpt,
    QuarantineOpt,
    RcloneOpt,
    RemoteOpt,
    SeverityOpt,
    StateOpt,
    new_state,
    parse_listen,
)
from mirror_scan.errors import UsageError
from mirror_scan.settings import resolve

STATUS_KEYS = ("mirror", "model", "provider", "policy", "observer", "remote")
LEDGER_KEYS = ("files", "flagged", "errors", "items_quarantined", "items_upstream_pending", "items_restored",
               "items_purged", "items_damaged")  # fmt: skip
LABELS = {
    "daemon": "watch daemon",
    "flagged_not_acted_on": "flagged, not acted on (apply/scan)",
    "items_in_the_clear": "items held in the clear",
    "queue_depth": "files waiting",
    "skipped_unchanged": "skipped (unchanged)",
    "reused_by_hash": "reused (same bytes)",
    "dropped_events": "dropped events (reconcile finds them)",
    "inotify_overflows": "inotify overflows",
    "upstream_pending": "upstream removals pending",
    "upstream_breakers": "upstream circuit breakers",
    "last_pull_unixtime": "last pull",
    "last_pull_error": "last pull failed",
    "last_pull_failed_unixtime": "last pull failed at",
    "last_reconcile_unixtime": "last reconcile",
    "files": "files recorded",
    "errors": "files that could not be checked",
    "items_quarantined": "items quarantined",
    "items_upstream_pending": "items waiting for upstream removal",
    "items_restored": "items restored",
    "items_purged": "items purged",
    "items_damaged": "items damaged",
    "pictrs_uploads": "quarantined as",
    "age_seconds": "status age (s)",
}


def _shown(key: str, data: dict) -> bool:
    return key in data and not ((key.startswith("last_pull_fail") or key == "last_pull_error") and not data[key])


def _value(key: str, value) -> str:
    if key.endswith("unixtime"):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "never"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return str(value)


def register(app: typer.Typer) -> None:
    @app.command("watch")
    def watch(
        mirror: Annotated[Path, typer.Option("--mirror", help="The mirrored bucket directory to watch.")],
        remote: RemoteOpt = None,
        pull_every: Annotated[str, typer.Option("--pull-every", help="Pull interval with --remote (60s).")] = "60s",
        observer: Annotated[str, typer.Option("--observer", help="auto, inotify, polling or none.")] = "auto",
        reconcile_every: Annotated[str, typer.Option("--reconcile-every", help="Stat-only walk interval.")] = "10m",
        poll_every: Annotated[
            str,
            typer.Option(
                "--poll-every",
                help="With the polling observer (mounts, network filesystems): how often it walks the mirror. "
                "Each walk lists every directory (from rclone's dir cache on a mount).",
            ),
        ] = "2s",
        retry_errors_after: Annotated[
            str,
            typer.Option(
                "--retry-errors-after",
                help="Retry files that could not be read after this, doubling per failure (at most a day).",
            ),
        ] = "60s",
        settle: Annotated[
            float,
            typer.Option("--settle", help="Seconds a file written in place must stay unchanged before it is scanned."),
        ] = 1.0,
        metrics: Annotated[str | None, typer.Option("--metrics", help="Serve Prometheus metrics on HOST:PORT.")] = None,
        dry_run: DryRunOpt = False,
        model: ModelOpt = None,
        policy: PolicyOpt = None,
        severity: SeverityOpt = None,
        state: StateOpt = None,
        quarantine: QuarantineOpt = None,
        rclone: RcloneOpt = None,
        device: DeviceOpt = None,
        precision: PrecisionOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Scan a mirrored disk continuously: new files are scored within a second or so, flagged ones
        quarantined (and removed upstream with --remote). Every other command (restore, allowlist, purge,
        apply, rescore, serve) works beside it on the same state. Pending upstream removals are retried
        with backoff. SIGTERM/SIGINT stop cleanly; a restart picks up exactly where it stopped."""
        setup_logging(events=True)  # a service logs each event that matters (quarantined, error, ...)
        from mirror_scan.app.daemon import WatchDaemon, WatchOptions

        if observer not in ("auto", "inotify", "polling", "none"):
            raise UsageError(f"--observer {observer!r}", hint="use auto, inotify, polling or none")
        if not mirror.is_dir():
            raise UsageError(f"mirror {mirror} is not a directory", hint="create it, or pull into it first")
        options = WatchOptions(
            mirror=mirror.resolve(),
            observer=observer,
            pull_interval=parse_interval(pull_every),
            reconcile_interval=parse_interval(reconcile_every),
            error_retry_s=parse_interval(retry_errors_after),
            poll_s=parse_interval(poll_every),
            settle_s=settle,
            metrics=parse_listen(metrics) if metrics else None,
            dry_run=dry_run,
        )
        settings = resolve(
            {
                "remote": remote,
                "rclone": rclone,
                "model": model,
                "policy": policy,
                "severity": severity,
                "state": state,
                "quarantine": quarantine,
                "device": device,
                "precision": precision,
            },
            config,
        )
        if not settings.state.exists():
            new_state(settings)  # a wrong --state is refused, not taken for a first start
        daemon = WatchDaemon(settings, options)
        stopping: list[int] = []
        started = False

        def stop(signum, frame) -> None:
            if not stopping:
                stopping.append(signum)
                if started:
                    daemon.stop()

        # Before start: a SIGTERM that arrives while the daemon starts stops it cleanly once it has started.
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        daemon.start(say=err.print)
        started = True
        if stopping:
            daemon.stop()
        counters = daemon.join()
        err.print(f"stopped cleanly: {counters.scored} scanned, {counters.flagged} flagged, {counters.errors} errors")

    @app.command("health")
    def health_cmd(
        url: Annotated[
            str | None,
            typer.Option("--url", help="Also ask this page (the validator's /healthz, the console's /login)."),
        ] = None,
        max_age: Annotated[
            float, typer.Option("--max-age", help="A watch daemon's status file older than this (s) is stale.")
        ] = 60.0,
        state: StateOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """For a container's or a supervisor's health check: exit 0 when a watch daemon or an upload
        validator runs on the state database (a watch daemon's status written within --max-age), and the
        --url page answers 200; else exit 1, saying what is missing. Reads only."""
        import urllib.error
        import urllib.request

        from mirror_scan.app.daemon import read_status_file, running_daemons
        from mirror_scan.app.validator import running_validators

        settings = resolve({"state": state}, config)
        problems = []
        there = settings.state.parent.exists()
        daemons = running_daemons(settings.state) if there else []
        validators = running_validators(settings.state) if there else []
        if daemons:
            updated = (read_status_file(settings.state) or {}).get("updated_unixtime", 0)
            if time.time() - updated > max_age:
                problems.append(f"the watch daemon's status is {time.time() - updated:.0f} s old (stalled?)")
        elif not validators and url is None:
            problems.append(f"no watch daemon and no validator runs on {settings.state}")
        if url is not None:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - the operator's own URL
                    if answer.status != 200:
                        problems.append(f"{url} answered {answer.status}")
            except (urllib.error.URLError, OSError) as error:
                problems.append(f"{url}: {getattr(error, 'reason', error)}")
        if problems:
            err.print("unhealthy: " + "; ".join(problems), markup=False, highlight=False)
            raise typer.Exit(1)
        out.print("healthy: " + ", ".join([*daemons, *validators, *([url] if url else [])]), markup=False)

    @app.command("status")
    def status_cmd(
        state: StateOpt = None,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Where things stand: with a watch daemon running, its queue, last pull and reconcile, counts,
        upstream retries, model and provider; without one, what the ledger holds (files, flagged, errors,
        quarantine items, pending upstream removals), marked "not running". Reads only: never waits."""
        from mirror_scan.app.daemon import COUNTER_KEYS, read_status_file, running_daemons
        from mirror_scan.store.ledger import Ledger

        settings = resolve({"state": state}, config)
        running = running_daemons(settings.state) if settings.state.parent.exists() else []
        data: dict = {}
        if running:
            data = read_status_file(settings.state) or {}
            data["age_seconds"] = round(time.time() - data.get("updated_unixtime", time.time()), 1)
        elif not settings.state.exists():
            raise UsageError(
                f"no watch daemon runs on {settings.state}, and it holds nothing yet",
                hint="start one with `mirror-scan watch --mirror DIR`, or run `mirror-scan scan` first",
            )
        from mirror_scan.moderation.uploads import upload_mode

        data["daemon"] = "running" if running else "not running"
        data["daemons"] = running
        data["pictrs_uploads"] = upload_mode(settings)
        if settings.state.exists():
            with Ledger(settings.state, readonly=True) as ledger:
                data["upstream_pending"] = ledger.upstream_pending_count()
                data["flagged_not_acted_on"] = ledger.unacted_count()
                data["items_in_the_clear"] = ledger.items_in_the_clear()
                if not running:
                    data.update(ledger.summary_counts())
        if json_out:
            print_json(data)
            return
        printed: set[str] = set()

        def show(keys: tuple[str, ...], heading: str | None = None) -> None:
            """One section: each key once, under its heading when it has one (a daemon's counters since it
            started and the state database's totals share names: never printed as one list)."""
            rows = [k for k in keys if k not in printed and _shown(k, data)]
            if heading and rows:
                out.print(heading)
            for key in rows:
                printed.add(key)
                label = LABELS.get(key, key.replace("_", " "))
                value = _value(key, data.get(key))
                out.print(f"  {label:34s} {value}" if heading else f"{label:36s} {value}")

        if data.get("remote"):  # pulling, and none has worked yet: said ("never"), not left out
            data.setdefault("last_pull_unixtime", None)
        show(("daemon", *STATUS_KEYS))
        if running:
            show((*COUNTER_KEYS, "last_pull_error", "last_pull_failed_unixtime", "upstream_breakers"),
                 "since the daemon started:")  # fmt: skip
        show((*LEDGER_KEYS, "flagged_not_acted_on", "upstream_pending"), "in the state database:")
        data["sealing"] = f"to {settings.seal_to}" if settings.seal_to else "off (items are kept in the clear)"
        show(("sealing", "items_in_the_clear"), "the quarantine at rest:")
        show(("pictrs_uploads", "age_seconds"))
        for who in running:
            out.print(f"{'':34s} ({who})")
