"""The upload validator as a service: start, serve until stopped, stop in order. `serve` only parses and
prints.

    decoder pool (worker processes) <- request handlers (aiohttp, one event loop) -> batcher thread
    follow-up worker (when pict-rs/Lemmy sources are configured): admins hear of rejected uploads
    metrics server (with --metrics)

Shutdown (SIGTERM/SIGINT): stop accepting, let requests in flight finish (up to `drain_s`), then stop
and join the batcher, the follow-up worker and the metrics server, close the ledger and the pool.
Every thread it starts is joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from mirror_scan.app.workspace import Workspace
from mirror_scan.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ValidatorOptions:
    host: str
    port: int
    token: str
    on_error: str = "reject"
    on_overload: str = "reject"
    answer_within_s: float = 20.0
    max_body_bytes: int = 64 << 20
    metrics: tuple[str, int] | None = None
    drain_s: float = 30.0


class ValidatorService:
    def __init__(self, settings: Settings, options: ValidatorOptions) -> None:
        self.settings, self.options = settings, options
        self.stats: dict = {}
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, say=print) -> dict:
        """Serve until SIGTERM/SIGINT (or stop()); returns the batcher's totals. A lock beside the state says
        a validator runs (the review console's dashboard shows it)."""
        from mirror_scan.store.locks import exclusive

        state, port = self.settings.state, self.options.port
        with exclusive(
            state.with_name(f"{state.name}.serve-{port}.lock"),
            f"another `mirror-scan serve` on port {port} with {state} is running",
            hint="stop it first, or give this one another --listen port",
            listen=f"{self.options.host}:{port}",
        ):
            return asyncio.run(self._main(say))

    def stop(self) -> None:
        """Ask for a clean stop; safe from another thread or a signal handler."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _main(self, say) -> dict:
        from mirror_scan.app.periodic import Periodic
        from mirror_scan.app.scanner import decode_limits, load_scanner
        from mirror_scan.intake.http import ServeMetrics, ValidationServer
        from mirror_scan.scan.uploads import Batcher, ServeConfig

        settings, options = self.settings, self.options
        bundle, policy, offset, scorer = load_scanner(settings, warm_up=True)
        workspace = Workspace.writer(settings, on_recovered=lambda note: say(f"recovered: {note}"), opens=False)
        threads: list[threading.Thread] = []
        decoders = follow_ups = follow_up_workspace = metrics_server = None
        batcher = None
        try:
            config = ServeConfig(
                token=options.token,
                severity=offset,
                batch_size=settings.batch_size,
                max_body_bytes=options.max_body_bytes,
                on_error=options.on_error,
                on_overload=options.on_overload,
                answer_within_s=options.answer_within_s,
                limits=decode_limits(settings, policy, bundle),
            )
            from mirror_scan.scan.decoders.decodepool import decoders as choose_decoders

            decoders = contextlib.ExitStack()
            decode = decoders.enter_context(
                choose_decoders(settings.decoders, settings.workers, settings.decode_timeout)
            )

            batcher = Batcher(workspace.ledger, workspace.quarantine, bundle, scorer, policy, config)
            info = {
                "model": bundle.manifest["model"]["arch"],
                "provider": scorer.placement.provider,
                "policy": policy.policy_id,
                "severity": offset,
            }
            http = ValidationServer(batcher, config, info, decode)
            if options.metrics:
                from prometheus_client import start_http_server

                http.metrics = ServeMetrics(http)
                metrics_server, thread = start_http_server(
                    options.metrics[1], options.metrics[0], registry=http.metrics.registry
                )
                threads.append(thread)
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                listener = await self._loop.create_server(http.make_server(), options.host, options.port, backlog=256)
            except OSError as error:
                from mirror_scan.errors import UsageError

                raise UsageError(f"cannot listen on {options.host}:{options.port}: {error.strerror}") from None
            batcher.start()
            if workspace.follows_up:  # a rejected upload's notices (admins, webhook) go out from here too
                follow_up_workspace = Workspace.writer(settings, recover=False, opens=False)
                follow_ups = Periodic("follow-ups", 5.0, lambda: follow_up_workspace.run_follow_ups(budget_s=None))
                follow_ups.start()
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self._stop.set)
            port = listener.sockets[0].getsockname()[1]
            say(
                f"validating uploads on http://{options.host}:{port}/validate/<token> with {info['model']} on "
                f"{info['provider']}, policy {policy.policy_id}"
            )
            await self._stop.wait()
            listener.close()  # no new connections; requests in flight finish
            await listener.wait_closed()
            await http.server.shutdown(options.drain_s)
            decoders.close()  # hung decoders' workers killed first: the pool's threads then end at once
            http.close()
        finally:
            if batcher is not None and batcher.is_alive():
                batcher.stop()
                batcher.join()
            if follow_ups is not None:
                follow_ups.stop()
                follow_ups.join()
            if follow_up_workspace is not None:
                follow_up_workspace.close()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            for thread in threads:
                thread.join(timeout=10)
            workspace.close()
            if decoders is not None:
                decoders.close()
        return dict(batcher.stats)


def running_validators(state: Path) -> list[str]:
    """The upload validators (`serve`) running on this state database now, by their lock (one per port)."""
    from mirror_scan.store.locks import holder_of

    held = (holder_of(path) for path in sorted(state.parent.glob(f"{state.name}.serve-*.lock")))
    return [who for who in held if who is not None]
