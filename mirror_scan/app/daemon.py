"""The watch daemon as an object: start, stop, join, status, metrics.

    watchdog observer ─┐
    rclone pull (every N s, arrived keys) ─┼─> PathQueue (dedup by path, bounded) ─> runner thread (stream mode)
    reconciliation walk (stat vs ledger) ──┘
    retry worker (every second): finishes moves whose owner died, retries pending upstream removals and
                                 restores behind a half-opening breaker
    status worker (every second): status file, gauges, restore latency
    follow-up worker (every 2 s, when pict-rs/Lemmy sources are configured): attribution of new items,
                                 moderation actions and their undo after restores (moderation/actions.py)

The daemon is one writer among others: `quarantine restore`, `allowlist`, `purge`, `apply`, `rescore`
and `serve` write the same ledger while it runs. Its runner and its retry worker have their own ledger
connections; item locks keep any two of them off the same quarantine item. Every thread it starts is
joined by `join()`, after its queue is drained.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mirror_scan.app.workspace import Workspace
from mirror_scan.atomic import atomic_write_bytes
from mirror_scan.errors import MirrorScanError
from mirror_scan.logs import notice
from mirror_scan.settings import Settings
from mirror_scan.store.rows import display_path
from mirror_scan.text import one_line

log = logging.getLogger(__name__)

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
    "upstream_pending",
    "last_pull_unixtime",
    "last_reconcile_unixtime",
)


@contextlib.contextmanager
def daemon_lock(state: Path, mirror: Path) -> Iterator[None]:
    """One watch daemon per mirror: two would race for every file ("not quarantined: No such file" for what
    the other moved), and two with separate states would quarantine the same files twice. The state's lock
    names the other daemon on the same state; the mirror directory's lock refuses one on another state."""
    import hashlib

    from mirror_scan.store.locks import directory_lock, exclusive

    tag = hashlib.sha256(os.fsencode(os.path.realpath(mirror))).hexdigest()[:12]
    with (
        exclusive(
            state.with_name(f"{state.name}.watch-{tag}.lock"),
            f"another `mirror-scan watch` of {mirror} on {state} is running",
            hint="stop it first (`mirror-scan status` shows it), or give this one another --state",
            mirror=str(mirror),
        ),
        directory_lock(
            Path(mirror),
            f"another `mirror-scan watch` of {mirror} is running, with another state database: two would "
            "quarantine the same files twice",
            hint="stop it first (`mirror-scan status --state ITS_STATE` shows it), or watch another mirror",
        ),
    ):
        yield


def status_path(state: Path) -> Path:
    return state.with_name(state.name + ".status.json")


def write_status_file(path: Path, status: dict) -> None:
    """Atomic (readers never see half a file) but not fsynced: it is rewritten every second and worth
    nothing after a crash, and an fsync per second competes with the durable commits of quarantine moves."""
    atomic_write_bytes(path, json.dumps(status).encode(), 0o600, durable=False)


def running_daemons(state: Path) -> list[str]:
    """The watch daemons running on this state database now, by their lock (one per mirror)."""
    from mirror_scan.store.locks import holder_of

    held = (holder_of(path) for path in sorted(state.parent.glob(f"{state.name}.watch-*.lock")))
    return [who for who in held if who is not None]


def read_status_file(state: Path) -> dict | None:
    path = status_path(state)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class WatchOptions:
    mirror: Path
    observer: str = "auto"
    pull_interval: float = 60.0
    reconcile_interval: float = 600.0
    settle_s: float = 1.0
    metrics: tuple[str, int] | None = None
    dry_run: bool = False
    retry_interval: float = 1.0
    error_retry_s: float = 60.0  # an unreadable file is retried after this, doubling per failure (cap 1 day)
    poll_s: float = 2.0  # the polling observer's walk interval (mounts, network filesystems)


class Metrics:
    """Prometheus metrics through prometheus-client: counters and gauges read from the daemon's status at
    scrape time, histograms observed as things happen."""

    def __init__(self, daemon: WatchDaemon) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.daemon = daemon
        self.registry.register(self)
        self.landing_to_verdict = Histogram(
            "mirror_scan_landing_to_verdict_seconds",
            "From a file's mtime in the mirror to its verdict.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.inference_batch = Histogram(
            "mirror_scan_inference_batch_seconds",
            "One inference batch.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.restore_latency = Histogram(
            "mirror_scan_restore_seconds",
            "A restore from its intent to done (restores done by any process on this state).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 60),
            registry=self.registry,
        )

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        status = self.daemon.status()
        for key, help_text in (
            ("scanned", "Files scored by the model."),
            ("skipped_unchanged", "Files seen again unchanged."),
            ("reused_by_hash", "Files whose bytes were scored before."),
            ("flagged", "Files flagged."),
            ("errors", "Files that could not be scanned."),
            ("dropped_events", "Paths dropped by a full queue (the next walk finds them)."),
            ("inotify_overflows", "Kernel inotify queue overflows."),
        ):
            yield CounterMetricFamily(f"mirror_scan_{key}", help_text, value=status.get(key, 0))
        for key, help_text in (
            ("queue_depth", "Paths waiting to be scanned."),
            ("in_flight", "Files being read, decoded or waiting for a batch."),
            ("upstream_pending", "Quarantined items whose upstream removal is waiting for a retry."),
            ("last_pull_unixtime", "When the last pull finished."),
            ("last_reconcile_unixtime", "When the last reconciliation walk finished."),
            ("up_since_unixtime", "When the daemon started."),
        ):
            if isinstance(status.get(key), (int, float)):
                yield GaugeMetricFamily(f"mirror_scan_{key}", help_text, value=status[key])
        info = InfoMetricFamily("mirror_scan", "Model, provider, policy and observer.")
        info.add_metric([], {k: str(status.get(k)) for k in ("model", "provider", "policy", "observer")})
        yield info


class WatchDaemon:
    def __init__(self, settings: Settings, options: WatchOptions) -> None:
        self.settings = settings
        self.options = options
        self._status: dict = {}
        self._status_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._workers: list = []
        self._runner_thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self.counters = None
        self.runner = None  # the Scan, once start() has loaded the model
        self.metrics: Metrics | None = None
        self._metrics_server = None
        self._last_restore_move = 0  # restores begun after this move are the daemon's to see
        self._restores_seen: set[int] = set()
        self._returned: set[str] = set()  # pulled keys of quarantined items, for the retry thread to remove
        self._returned_lock = threading.Lock()
        self._bound = False  # the mirror's bucket recorded (--remote: once a pull has worked)

    # ------------------------------------------------------------------ lifecycle

    def start(self, say=print) -> None:
        """Refused (locks.Held) while another daemon watches the same mirror (on this state or another)."""
        options, settings = self.options, self.settings
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(daemon_lock(settings.state, options.mirror))
        try:
            self._start(say)
        except BaseException:
            self._lock.close()
            raise

    def _start(self, say) -> None:
        from mirror_scan.app.periodic import Periodic
        from mirror_scan.app.scanner import load_scanner, scan_config
        from mirror_scan.clients.rclone import Rclone
        from mirror_scan.intake.pathqueue import PathQueue
        from mirror_scan.intake.watch import MirrorEvents, OverflowSignal, Settler, choose_observer, start_observer
        from mirror_scan.scan.act import QuarantineActor
        from mirror_scan.scan.runner import Scan

        options, settings = self.options, self.settings
        bundle, policy, offset, scorer = load_scanner(settings, warm_up=True)
        self.workspace = Workspace.writer(settings, on_recovered=lambda note: say(f"recovered: {note}"), opens=False)
        if settings.remote:  # checked now, recorded once a pull has worked (an unreachable typo binds nothing)
            self.workspace.bind_mirror(options.mirror, settings.remote, "watch --remote", record=False)
        self.retry_workspace = Workspace.writer(settings, recover=False, opens=False)
        self._last_restore_move = self.retry_workspace.ledger.last_move_id()  # only restores from now on
        self.queue = PathQueue(options.mirror)
        self.settler = Settler(self.queue, settle_s=options.settle_s)
        kind, why = choose_observer(options.mirror, options.observer)
        say(f"observer: {kind} ({why})")
        self._status.update(
            mirror=str(options.mirror),
            model=bundle.manifest["model"]["arch"],
            provider=scorer.placement.provider,
            policy=policy.policy_id,
            observer=kind,
            up_since_unixtime=time.time(),
            remote=settings.remote,
            pid=os.getpid(),
        )
        self.metrics = Metrics(self)
        self.runner = Scan(
            self.workspace.ledger,
            bundle,
            scorer,
            policy,
            scan_config(settings, offset, policy, bundle, flush_after_s=FLUSH_AFTER_S, commit_every_s=0.2),
            actor=None if options.dry_run else QuarantineActor(self.workspace.quarantine),
            on_verdict=self._observe_verdict,
            on_batch=self.metrics.inference_batch.observe,
            take_companion=None if options.dry_run else self.workspace.quarantine.take_companion,
        )
        reconciler = Periodic("reconcile", options.reconcile_interval, self._walk)
        self.overflow = OverflowSignal(reconciler.trigger).install()
        self._workers = [
            Periodic("status", 1.0, self._write_status),
            reconciler,
        ]
        self._retrier = Periodic("retry", options.retry_interval, self._retry)
        self._workers.append(self._retrier)
        self.follow_up_workspace = None
        if self.workspace.follows_up:
            # Its own ledger connection: a slow database or Lemmy delays only this thread.
            self.follow_up_workspace = Workspace.writer(settings, recover=False, opens=False)
            self._workers.append(Periodic("follow-ups", 2.0, self._follow_up))
        if settings.remote:
            self.rclone = Rclone.locate(settings.rclone)
            self._workers.append(Periodic("pull", options.pull_interval, self._pull))
        self.settler.start()
        self.observer = start_observer(
            kind, options.mirror, MirrorEvents(self.queue, self.settler), poll_s=options.poll_s
        )
        for worker in self._workers:
            worker.start()
        if options.metrics:
            from prometheus_client import start_http_server

            host, port = options.metrics
            self._metrics_server, thread = start_http_server(port, host, registry=self.metrics.registry)
            self._threads.append(thread)
        self._runner_thread = threading.Thread(target=self._run, name="runner")
        self._runner_thread.start()
        say(
            f"watching {options.mirror} with {self._status['model']} on {self._status['provider']}, "
            f"policy {policy.policy_id}" + (", dry run" if options.dry_run else "")
        )

    def _run(self) -> None:
        try:
            self.counters = self.runner.run_stream(self.queue)
        except BaseException as err:  # noqa: BLE001 - surfaced by join()
            self._failure = err
            log.exception("the scan runner stopped")

    def stop(self) -> None:
        """Ask for a clean stop: the queue closes, the runner finishes what it holds. Safe from a signal:
        closing may wait for room in a full queue, so it runs on its own thread, joined by join()."""
        closer = threading.Thread(target=self.queue.close, name="stop")
        self._threads.append(closer)
        closer.start()

    def join(self, poll_s: float = 0.5):
        """Wait for the runner to finish (after stop()), then stop and join every other thread. Returns the
        runner's counters."""
        assert self._runner_thread is not None
        while self._runner_thread.is_alive():
            self._runner_thread.join(poll_s)
        for worker in self._workers:
            worker.stop()
        for worker in self._workers:
            worker.join()
        self.settler.stop_event.set()
        self.settler.join()
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=10)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self.overflow.uninstall()
        self._write_status()
        self.retry_workspace.close()
        if self.follow_up_workspace is not None:
            self.follow_up_workspace.close()
        self.workspace.close()
        self._lock.close()
        if self._failure is not None:
            raise self._failure
        return self.counters

    # ------------------------------------------------------------------ work

    def _pull(self) -> None:
        ledger = self.retry_workspace.ledger  # read on this thread's own connection: the retry worker writes on it
        excluded = ledger.excluded_keys(self.settings.remote, os.fsencode(self.options.mirror), ledger.reader())
        breaker = self._remote_breaker()
        try:
            arrived = self.rclone.pull(self.settings.remote, self.options.mirror, exclude=excluded)
        except MirrorScanError as error:
            why = one_line(str(error).splitlines()[0])
            if breaker is not None:  # the remote is down for the removals too: `status` says so
                breaker.failure(why)
            self._set(last_pull_error=why, last_pull_failed_unixtime=time.time(), upstream_breakers=self._breakers())
            raise  # Periodic logs it with the reason, and retries
        if breaker is not None:
            breaker.success()
        if not self._bound:  # the first pull that worked records the mirror's bucket
            self.retry_workspace.bind_mirror(self.options.mirror, self.settings.remote, "watch --remote")
            self._bound = True
        # Items that began quarantining while rclone ran: their keys were not excluded, and the pull may
        # have written them back after they were removed. Not scanned again: the retry thread removes them.
        held: set[str] = set()
        if not self.options.dry_run:  # a dry run changes nothing, copies that came back included
            held = set(ledger.excluded_keys(self.settings.remote, os.fsencode(self.options.mirror), ledger.reader()))
        returned = [key for key in arrived if key in held]
        for key in arrived:
            if key not in held:
                self.queue.offer(str(self.options.mirror / key))
        if returned:
            with self._returned_lock:
                self._returned.update(returned)
            self._retrier.trigger()
        self._set(last_pull_unixtime=time.time(), last_pull_arrived=len(arrived) - len(returned), last_pull_error=None)
        (log.info if arrived else log.debug)(
            "pulled %d new file(s) from %s", len(arrived) - len(returned), self.settings.remote
        )

    def _breakers(self) -> dict[str, str]:
        return {u.remote: u.breaker.state for u in self.retry_workspace.quarantine.upstreams.known()}

    def _remote_breaker(self):
        """The breaker of the remote the daemon pulls from (shared with its removals and restores)."""
        try:
            return self.retry_workspace.quarantine.upstreams.get(self.settings.remote).breaker
        except MirrorScanError:
            return None

    def _walk(self) -> None:
        from mirror_scan.intake.watch import reconcile

        queued = reconcile(self.options.mirror, self.settings.state, self.queue, self.options.error_retry_s,
                           act=not self.options.dry_run)  # fmt: skip
        self._set(last_reconcile_queued=queued, last_reconcile_unixtime=time.time())

    def _retry(self) -> None:
        """Live retries: finish moves whose owner died (a restore killed in another shell), retry pending
        upstream removals and restores. Each remote's breaker spaces the calls out while it is down."""
        quarantine = self.retry_workspace.quarantine
        with self._returned_lock:
            returned, self._returned = self._returned, set()
        mirror = os.fsencode(self.options.mirror)
        for key in sorted(returned):
            quarantine.drop_returned_copy(os.path.join(mirror, os.fsencode(key)), mirror)
        for note in quarantine.recover():
            log.warning("recovered: %s", note)
        for item in quarantine.expire_canaries(self.settings.canary_purge_hours * 3600):
            log.info("canary %s purged (%g h after its quarantine)", item, self.settings.canary_purge_hours)
        pending = self.retry_workspace.ledger.upstream_pending_count()
        self._set(upstream_pending=pending, upstream_breakers=self._breakers())

    def _follow_up(self) -> None:
        workspace = self.follow_up_workspace
        notes = workspace.run_follow_ups(say=lambda note: log.info("%s", note), budget_s=None)
        self._set(follow_ups_pending=workspace.ledger.follow_ups.pending_followup_count(), last_follow_ups=notes[-5:])

    def _observe_verdict(self, mtime_ns: int) -> None:
        if self.metrics is not None:
            self.metrics.landing_to_verdict.observe(max(0.0, time.time() - mtime_ns / 1e9))

    def _write_status(self) -> None:
        self._see_restores()
        write_status_file(status_path(self.settings.state), self.status())

    def _see_restores(self) -> None:
        """A line for every restore finished while the daemon runs, whoever made it (a shell, the console):
        the journal tells every picture put back, as it tells every one taken away. Restores finish out of
        the order they began, so each is seen by its id, once."""
        ledger = self.retry_workspace.ledger
        for move_id, item, target, seconds in ledger.finished_restores_since(self._last_restore_move, ledger.reader()):
            if move_id in self._restores_seen:
                continue
            self._restores_seen.add(move_id)
            where = display_path(target) if target else "(allowlisted)"
            notice(log, "quarantine item %s was restored to %s (%.1f s)", item, where, seconds)
            self._set(restores_seen=len(self._restores_seen))
            if self.metrics is not None:
                self.metrics.restore_latency.observe(seconds)

    # ------------------------------------------------------------------ status

    def _set(self, **values) -> None:
        with self._status_lock:
            self._status.update(values)

    def status(self) -> dict:
        with self._status_lock:
            status = dict(self._status)
        if self.runner is not None:
            status.update(self.runner.counters.as_dict())
            status.update(
                queue_depth=self.queue.qsize(),
                in_flight=self.runner.in_flight,
                dropped_events=self.queue.dropped,
                inotify_overflows=self.overflow.count,
            )
        status["updated_unixtime"] = time.time()
        return status
