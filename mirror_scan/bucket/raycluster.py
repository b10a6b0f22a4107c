"""The bucket scan's side of a Ray cluster: which cluster (as Ray's own tools name it), connecting within a
bounded time or saying why not, keeping Ray's chatter out of the scan's output, and giving up, with exit 2,
when the pipeline stops because the cluster lost what its stages need (issue 43).

Which cluster: `--ray-address` wins over `RAY_ADDRESS` (Ray's own rule: `auto` is also overridden by it);
neither: a local instance of the scan's own, stopped when the scan ends.

Stalls: Ray Data waits for an actor it cannot place (its node died and no other has the CPUs) for ever,
warning once that "the job may hang forever". The driver reads results through a queue with a deadline:
nothing ingested for `stall_after_s` while the cluster has fewer resources than the stages hold is a
`RayStalled` error (exit 2) that says what is missing; a rerun resumes (every ingested result is in the
ledger, a written result part is ingested first). While the resources are there, a slow scan is waited
for: large objects and a cold model are not a stall."""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mirror_scan.errors import MirrorScanError
from mirror_scan.text import one_line

log = logging.getLogger(__name__)

GCS_DEFAULT_PORT = 6379
CLIENT_DEFAULT_PORT = 10001
CONNECT_PROBE_S = 5.0  # a TCP connection to the head's port, before Ray is asked to connect
CONNECT_DEADLINE_S = 60.0  # ray.init against a head that answers
POLL_S = 2.0


class RayUnavailable(MirrorScanError):
    """The cluster named cannot be reached or joined (exit 2)."""


class RayStalled(MirrorScanError):
    """The pipeline stopped: the cluster lacks what its stages need (exit 2; a rerun resumes)."""


@dataclass
class Need:
    """What the stages hold on the cluster: actors and their resources."""

    fetch_actors: int
    infer_actors: int
    infer_cpus: float
    gpus: int

    @property
    def cpus(self) -> float:
        return self.fetch_actors + self.infer_actors * self.infer_cpus

    def describe(self) -> str:
        gpu = f" and {self.gpus} GPU(s)" if self.gpus else ""
        return (f"{self.cpus:g} CPU(s){gpu} ({self.fetch_actors} fetch-and-decode actor(s) with 1 CPU each, "
                f"{self.infer_actors} inference actor(s) with {self.infer_cpus:g})")  # fmt: skip


def resolve_address(given: str | None) -> str | None:
    """The cluster to join: --ray-address, else RAY_ADDRESS, else None (a local instance of our own)."""
    if given:
        return given
    return os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None, *, deadline_s: float = CONNECT_DEADLINE_S) -> bool:
    """Join the cluster at `address` (or start a local instance); True when the instance is the scan's own.
    Raises RayUnavailable, with what to do, for an address nothing answers at, Ray Client not installed
    for ray://, token authentication the driver lacks, or a connection that does not finish in time."""
    import ray

    if ray.is_initialized():
        return False
    quiet_ray_messages()
    _no_auto_connect()
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is None:
        # "local": a new instance even where `ray start` left one on this machine (Ray would join that one
        # and refuse num_cpus), and whatever an empty RAY_ADDRESS says.
        ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)
        return True
    _check_reachable(address)
    try:
        with _deadline(deadline_s):
            ray.init(address=address, **kwargs)
    except _Late:
        _disconnect()
        raise RayUnavailable(
            f"the Ray cluster at {address} answered but the driver could not join it within {deadline_s:.0f} s",
            hint="check that the address is the head's GCS port (6379 by default; `ray status` on the head "
            "shows it) and that this machine's Ray version matches the cluster's",
        ) from None
    except Exception as err:  # noqa: BLE001 - Ray raises many kinds here; each becomes one clear message
        _disconnect()
        raise _why_not(address, err) from None
    return False


def _no_auto_connect() -> None:
    """A Ray call after the driver left (Ray Data's executor thread, still running when a stall is given
    up on) would start a local instance of its own (RAY_ENABLE_AUTO_CONNECT, read when Ray is imported)."""
    try:
        import ray._private.auto_init_hook as hook
    except ImportError:  # pragma: no cover - another Ray layout: its default stays
        return
    hook.enable_auto_connect = False


def _check_reachable(address: str) -> None:
    if address == "auto":
        return  # Ray finds the cluster this machine runs (or says there is none: _why_not)
    client = address.startswith("ray://")
    if client:
        import importlib.util

        if importlib.util.find_spec("grpc") is None:
            version = _ray_version()
            raise RayUnavailable(
                f"{address} is a Ray Client address, and Ray Client is not installed",
                hint=f"install it beside mirror-scan: pip install 'ray[client]=={version}' in its environment "
                f"(pipx: pipx inject mirror-scan 'ray[client]=={version}'), or give the head's GCS address "
                "HOST:6379 from a machine that has joined the cluster",
            )
    host, port = _host_port(address.removeprefix("ray://"), CLIENT_DEFAULT_PORT if client else GCS_DEFAULT_PORT)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_PROBE_S):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else one_line(err.strerror or str(err))
        raise RayUnavailable(
            f"no Ray cluster answers at {address} ({reason})",
            hint="start the head there (ray start --head), or fix --ray-address / RAY_ADDRESS; a firewall "
            f"must let this machine reach port {port}",
        ) from None


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:PORT
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RayUnavailable(f"{text!r} is not HOST:PORT", hint="e.g. --ray-address 10.0.0.5:6379")
    return host, int(port)


def _why_not(address: str, err: BaseException) -> RayUnavailable:
    said = one_line(str(err))[:300]
    chain, seen = [], err
    while seen is not None and len(chain) < 8:  # Ray wraps the cause ("Failed to connect to Ray cluster")
        chain.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    lowered = " ".join(chain).lower()
    if "authenticationerror" in lowered or "auth token" in lowered or "invalidauthtoken" in lowered:
        return RayUnavailable(
            f"the Ray cluster at {address} requires token authentication, and this driver has no token for it",
            hint="give the scan what every node has: RAY_AUTH_MODE=token, and the token in ~/.ray/auth_token "
            "(or RAY_AUTH_TOKEN)",
        )
    if "could not find any running ray instance" in lowered:
        return RayUnavailable(
            "--ray-address auto: this machine runs no Ray cluster node",
            hint="start or join one (ray start --head / ray start --address HEAD:6379), or name the head",
        )
    if "version" in lowered and "mismatch" in lowered:
        return RayUnavailable(f"the Ray cluster at {address} runs another Ray version: {said}",
                              hint=f"this driver has Ray {_ray_version()}: install the cluster's version")  # fmt: skip
    return RayUnavailable(f"could not join the Ray cluster at {address}: {said}",
                          hint="check the address (ray status on the head) and the logs under /tmp/ray")  # fmt: skip


def _ray_version() -> str:
    import ray

    return ray.__version__


def _disconnect() -> None:
    import ray

    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - a half-made connection: nothing more to do with it
        log.debug("ray.shutdown after a failed connection", exc_info=True)


class _Late(Exception):
    pass


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise _Late in the main thread after `seconds` (Ray's connection waits in Python loops; elsewhere,
    or off the main thread, no deadline is set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def late(signum, frame) -> None:
        raise _Late()

    previous = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class RayMessages:
    """What Ray would have printed to the driver's terminal (its error and autoscaler messages), kept for
    the log at debug level and for the stall error to quote."""

    last: list[str] = field(default_factory=list)

    def keep(self, text: str) -> None:
        self.last = ([*self.last, text])[-5:]


MESSAGES = RayMessages()


def quiet_ray_messages() -> None:
    """Ray prints the cluster's error messages (a dead worker's log, the autoscaler's "cannot be scheduled")
    on the driver's stdout or stderr whatever log_to_driver says; and Ray Data logs at INFO. Both go to the
    debug log here: the scan says itself what matters (a stall, with Ray's last words)."""
    try:
        import ray._private.worker as ray_worker
    except ImportError:  # pragma: no cover - Ray is there when this is called
        return

    def to_log(data: dict, ignore_prefix: bool = False) -> None:
        del ignore_prefix
        for line in data.get("lines", []):
            text = one_line(str(line))[:500]
            MESSAGES.keep(text)
            log.debug("ray (%s): %s", data.get("pid", "?"), text)

    ray_worker.print_to_stdstream = to_log
    logging.getLogger("ray").setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR)


def quiet_ray_data() -> None:
    """Ray Data logs its plans, progress and its own threads' tracebacks to the terminal through a handler
    of its own (and to ray-data.log in the session's folder): the terminal one is removed, unless the log
    is at debug level (-vv)."""
    import ray.data  # noqa: F401 - configures the "ray.data" logger on import

    if log.isEnabledFor(logging.DEBUG):
        return
    logger = logging.getLogger("ray.data")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)


# A line of Ray's C++ logging: "[2026-12-06 20:16:30,804 E 10984 11090] core_worker.cc:2465: ..."
RAY_NATIVE_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] ")
MAX_HELD = 1 << 16  # a line starting like Ray's held back at most this long before it is let through


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Ray's C++ code (the driver's core worker) writes its error lines to file descriptor 2 besides its
    log files: inside the block, descriptor 2 is a pipe whose lines in Ray's log format go to the debug log
    and everything else (the scan's own messages, the progress line) on to the real stderr as it comes."""
    try:
        saved = os.dup(2)
        reading, writing = os.pipe()
    except OSError:  # no descriptors to spare: Ray's lines are shown, nothing else changes
        yield
        return
    os.dup2(writing, 2)
    os.close(writing)

    def forward() -> None:
        held = b""
        while chunk := os.read(reading, 65536):
            held += chunk
            while held:
                if held.startswith(b"["):
                    end = held.find(b"\n")
                    if end < 0 and len(held) < MAX_HELD:
                        break  # perhaps a Ray line: wait for its end
                    line, held = (held[: end + 1], held[end + 1 :]) if end >= 0 else (held, b"")
                    if RAY_NATIVE_LINE.match(line):
                        log.debug("ray: %s", line.decode("utf-8", "replace").rstrip())
                        continue
                    _write_all(saved, line)
                    continue
                end = held.find(b"\n")
                line, held = (held[: end + 1], held[end + 1 :]) if end >= 0 else (held, b"")
                _write_all(saved, line)
        if held:
            _write_all(saved, held)

    thread = threading.Thread(target=forward, name="mirror-scan-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        os.dup2(saved, 2)  # the pipe's last writer closed: the forwarder reads to its end and stops
        thread.join(timeout=5)
        os.close(reading)
        os.close(saved)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def leave(own: bool, address: str | None) -> None:
    """The driver leaves: the scan's own instance stops; on a cluster the driver's job ends and its actors
    with it (Ray Data's shared system actors, detached, stay: other jobs on that cluster use them). Ray
    Data's executor thread may still be running (a stall given up on): its last words go nowhere."""
    import ray

    logger = logging.getLogger("ray.data")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(logging.NullHandler())  # with no handler at all, Python's last resort prints to stderr
    logger.propagate = False
    if own or address is not None:
        ray.shutdown()


def resources_now() -> tuple[float, float, int, int]:
    """(CPUs, GPUs, alive nodes, known nodes) of the cluster as Ray sees it now."""
    import ray

    total = ray.cluster_resources()
    nodes = ray.nodes()
    alive = sum(1 for n in nodes if n.get("Alive"))
    return float(total.get("CPU", 0)), float(total.get("GPU", 0)), alive, len(nodes)


def watched(
    batches: Callable[[], Iterator[Any]],
    need: Need,
    stall_after_s: float,
    ingested: Callable[[], int],
    resources: Callable[[], tuple[float, float, int, int]] = resources_now,
) -> Iterator[Any]:
    """The batches of `batches()`, read in a thread and handed over here (the ledger's writer stays this
    thread); raises RayStalled when nothing came for `stall_after_s` while the cluster has fewer resources
    than `need`. `ingested()` is the run's count so far, for the message."""
    handed: queue.Queue = queue.Queue(maxsize=2)
    done = object()

    def read() -> None:
        try:
            for batch in batches():
                handed.put(("batch", batch))
            handed.put(("end", done))
        except BaseException as err:  # noqa: BLE001 - handed over, raised in the driver's thread
            handed.put(("error", err))

    reader = threading.Thread(target=read, name="mirror-scan-ray-reader", daemon=True)
    reader.start()
    last = time.monotonic()
    while True:
        try:
            kind, item = handed.get(timeout=POLL_S)
        except queue.Empty:
            quiet_for = time.monotonic() - last
            if quiet_for < stall_after_s:
                continue
            cpus, gpus, alive, known = resources()
            if cpus >= need.cpus and gpus >= need.gpus:
                continue  # everything the stages need is there: slow, not stalled
            raise RayStalled(
                f"the Ray cluster lost what the scan needs: nothing came back for {quiet_for:.0f} s, and the "
                f"cluster now has {cpus:g} CPU(s){f' and {gpus:g} GPU(s)' if need.gpus else ''} on {alive} "
                f"node(s) alive of {known}, while the stages hold {need.describe()}; "
                f"{ingested()} object(s) of this run are in the ledger"
                + (f". Ray said: {MESSAGES.last[-1]}" if MESSAGES.last else ""),
                hint="bring the node back or add one, then run the same command again: it resumes (what is in "
                "the ledger is skipped); --stall-timeout sets how long to wait",
            ) from None
        if kind == "end":
            return
        if kind == "error":
            raise item
        last = time.monotonic()
        yield item
