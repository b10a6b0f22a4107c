"""`watch` (the daemon) and `status`."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated

import typer

from .cli_scan import (
    ConfigOpt,
    DeviceOpt,
    ModelOpt,
    PolicyOpt,
    PrecisionOpt,
    QuarantineOpt,
    RcloneOpt,
    RemoteOpt,
    SeverityOpt,
    StateOpt,
    load_scanner,
    open_state,
    scan_config,
)
from .console import err, out, print_json
from .errors import UsageError
from .settings import resolve

FLUSH_AFTER_S = 0.25  # a partial batch waits at most this long: a quiet instance still gets fast verdicts
COUNTER_KEYS = (
    "queue_depth",
    "scanned",
    "skipped_unchanged",
    "reused_by_hash",
    "flagged",
    "errors",
    "dropped_events",
    "inotify_overflows",
    "last_pull_unixtime",
    "last_reconcile_unixtime",
)


def status_path(state: Path) -> Path:
    return state.with_name(state.name + ".status.json")


def write_status_file(path: Path, status: dict) -> None:
    """Atomic (readers never see half a file) but not fsynced: it is rewritten every second and worth
    nothing after a crash, and an fsync per second competes with the durable commits of quarantine moves."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(status), encoding="utf-8")
    os.replace(tmp, path)


def parse_interval(text: str) -> float:
    from .cli_quarantine import parse_duration

    return float(parse_duration(text))


def prometheus(status: dict) -> str:
    lines = []
    for key in (*COUNTER_KEYS, "up_since_unixtime"):
        value = status.get(key)
        if isinstance(value, (int, float)):
            lines.append(f"mirror_scan_{key} {value}")
    lines.append(
        f'mirror_scan_info{{provider="{status.get("provider")}",model="{status.get("model")}",'
        f'policy="{status.get("policy")}",observer="{status.get("observer")}"}} 1'
    )
    return "\n".join(lines) + "\n"


def serve_metrics(listen: str, read_status) -> ThreadingHTTPServer:
    from .cli_serve import parse_listen

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = prometheus(read_status()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(parse_listen(listen), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def register(app: typer.Typer) -> None:
    @app.command("watch")
    def watch(
        mirror: Annotated[Path, typer.Option("--mirror", help="The mirrored bucket directory to watch.")],
        remote: RemoteOpt = None,
        pull_every: Annotated[str, typer.Option("--pull-every", help="Pull interval with --remote (60s).")] = "60s",
        observer: Annotated[str, typer.Option("--observer", help="auto, inotify, polling or none.")] = "auto",
        reconcile_every: Annotated[str, typer.Option("--reconcile-every", help="Stat-only walk interval.")] = "10m",
        settle: Annotated[
            float,
            typer.Option("--settle", help="Seconds a file written in place must stay unchanged before it is scanned."),
        ] = 1.0,
        metrics: Annotated[str | None, typer.Option("--metrics", help="Serve Prometheus metrics on HOST:PORT.")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Record verdicts; act on nothing.")] = False,
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
        quarantined (and removed upstream with --remote). SIGTERM/SIGINT stop cleanly; a restart picks up
        exactly where it stopped, including files that arrived meanwhile."""
        from .act import QuarantineActor
        from .pipeline import Scan
        from .rclone import Rclone
        from .watch import (
            MirrorEvents,
            OverflowSignal,
            PathQueue,
            Periodic,
            Settler,
            choose_observer,
            excluded_keys,
            reconcile,
            start_observer,
        )

        if observer not in ("auto", "inotify", "polling", "none"):
            raise UsageError(f"--observer {observer!r}", hint="use auto, inotify, polling or none")
        if not mirror.is_dir():
            raise UsageError(f"mirror {mirror} is not a directory", hint="create it, or pull into it first")
        pull_interval, reconcile_interval = parse_interval(pull_every), parse_interval(reconcile_every)
        mirror = mirror.resolve()
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
        bundle, loaded, offset, scorer = load_scanner(settings, warm_up=True)
        ledger, store = open_state(settings)
        queue_ = PathQueue(mirror)
        settler = Settler(queue_, settle_s=settle)
        kind, why = choose_observer(mirror, observer)
        err.print(f"observer: {kind} ({why})")
        status: dict = {
            "mirror": str(mirror),
            "model": bundle.manifest["model"]["arch"],
            "provider": scorer.placement.provider,
            "policy": loaded.policy_id,
            "observer": kind,
            "up_since_unixtime": time.time(),
            "remote": settings.remote,
        }
        workers: list[Periodic] = []
        tool = Rclone.locate(settings.rclone) if settings.remote else None

        def pull() -> None:
            arrived = tool.pull(settings.remote, mirror, exclude=excluded_keys(settings.state))
            for key in arrived:
                queue_.offer(str(mirror / key))
            status["last_pull_unixtime"] = time.time()
            status["last_pull_arrived"] = len(arrived)

        def walk() -> None:
            status["last_reconcile_queued"] = reconcile(mirror, settings.state, queue_)
            status["last_reconcile_unixtime"] = time.time()

        runner = Scan(
            ledger,
            bundle,
            scorer,
            loaded,
            scan_config(settings, offset, flush_after_s=FLUSH_AFTER_S),
            actor=None if dry_run else QuarantineActor(ledger, store),
        )

        def write_status() -> None:
            status.update(
                runner.counters.as_dict(),
                queue_depth=queue_.qsize(),
                dropped_events=queue_.dropped,
                updated_unixtime=time.time(),
                inotify_overflows=overflow.count,
                pid=os.getpid(),
            )
            write_status_file(status_path(settings.state), status)

        stopping = threading.Event()

        def stop(signum, frame) -> None:
            if not stopping.is_set():
                stopping.set()
                threading.Thread(target=queue_.close, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        settler.start()
        observer_handle = start_observer(kind, mirror, MirrorEvents(queue_, settler))
        workers.append(Periodic("status", 1.0, write_status))
        reconciler = Periodic("reconcile", reconcile_interval, walk)
        workers.append(reconciler)
        overflow = OverflowSignal(reconciler.trigger).install()
        if tool:
            workers.append(Periodic("pull", pull_interval, pull))
        for worker in workers:
            worker.start()
        metrics_server = serve_metrics(metrics, lambda: status) if metrics else None
        err.print(
            f"watching {mirror} with {status['model']} on {status['provider']}, policy {loaded.policy_id}"
            + (", dry run" if dry_run else "")
        )
        try:
            counters = runner.run_stream(queue_)
        finally:
            for worker in workers:
                worker.stop()
            settler.stop_event.set()
            if observer_handle is not None:
                observer_handle.stop()
                observer_handle.join(timeout=10)
            if metrics_server is not None:
                metrics_server.shutdown()
            write_status()
            ledger.close()
        err.print(f"stopped cleanly: {counters.scored} scanned, {counters.flagged} flagged, {counters.errors} errors")

    @app.command("status")
    def status_cmd(
        state: StateOpt = None,
        config: ConfigOpt = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """The watch daemon's queue depth, last pull, last reconcile, counts, model and provider."""
        settings = resolve({"state": state}, config)
        path = status_path(settings.state)
        if not path.exists():
            raise UsageError(f"no watch status at {path}", hint="is `mirror-scan watch` running with this --state?")
        data = json.loads(path.read_text())
        age = time.time() - data.get("updated_unixtime", 0)
        data["age_seconds"] = round(age, 1)
        if json_out:
            print_json(data)
            return
        for key in (
            "mirror",
            "model",
            "provider",
            "policy",
            "observer",
            *COUNTER_KEYS,
            "age_seconds",
        ):
            if key in data:
                value = data[key]
                if key.endswith("unixtime") and value:
                    value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
                out.print(f"{key:24s} {value}")
        if age > 10:
            out.print(f"(last update {age:.0f}s ago: the daemon may not be running)")
