#!/usr/bin/env python3
"""The container image: its size (and the base's), and its start-up beside the same commands on the host,
measured in one run: `mirror-scan --version` (the interpreter and the package importing), and `serve` from
start to its /healthz answering (the model loaded: the figure an admin waits for after `compose up`).
The image is the one scripts/build-image.sh built (mirror-scan:cpu, or --image). Needs podman; as root on
these machines with the containers.conf the tests use (runc, lower ulimits: CONTAINERS_CONF).

    python scripts/bench_image.py [--quick] [--json] [--image IMAGE] [--model DIR | --tiny]
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchutil import bundle_for, emit, machine, parser


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=600)


def size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def timed(argv: list[str], runs: int) -> float:
    """Median wall seconds of a command that exits by itself."""
    took = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, timeout=600)
        took.append(time.perf_counter() - start)
    return statistics.median(took)


def until_healthy(url: str, start: float, proc: subprocess.Popen, deadline_s: float = 300.0) -> float:
    while time.perf_counter() - start < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback
                if answer.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {deadline_s:g} s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_ready(image: str | None, bundle: Path, work: Path) -> float:
    """Seconds from starting `serve` to its /healthz answering: in the image, or on the host (None)."""
    token = work / "token"
    token.write_text(secrets.token_urlsafe(24))
    token.chmod(0o600)
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    state = work / ("state-image" if image else "state-host")
    state.mkdir()
    if image:
        os.chown(state, 1000, 1000)
        os.chown(token, 1000, 1000)
        argv = ["podman", "run", "--rm", "--network=host", "--user", "1000:1000", "-v", f"{bundle}:/models/bundle:ro",
                "-v", f"{state}:/var/lib/mirror-scan", "-v", f"{token}:/etc/mirror-scan/token:ro", image,
                "serve", "--listen", f"127.0.0.1:{port}", "--token-file", "/etc/mirror-scan/token"]  # fmt: skip
    else:
        argv = [sys.executable, "-m", "mirror_scan.cli", "serve", "--listen", f"127.0.0.1:{port}", "--token-file",
                str(token), "--model", str(bundle), "--state", str(state / "state.db"), "--quarantine",
                str(state / "q")]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        return until_healthy(url, start, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--image", default="localhost/mirror-scan:cpu", help="the image to measure")
    args = p.parse_args()
    bundle = bundle_for(args)
    runs = 1 if args.quick else 5
    image = args.image
    probe = "import importlib.util as u; print(u.find_spec('torch') is not None)"
    python = ("--entrypoint", "/opt/mirror-scan/bin/python")
    has_torch = podman("run", "--rm", "--network=none", *python, image, "-c", probe).stdout.strip()
    version_image = timed(["podman", "run", "--rm", "--network=none", image, "--version"], runs)
    version_host = timed([sys.executable, "-m", "mirror_scan.cli", "--version"], runs)
    with tempfile.TemporaryDirectory() as tmp:
        ready_image, ready_host = [], []
        for i in range(runs):  # interleaved: a noisy moment weighs on both
            for where, into in ((image, ready_image), (None, ready_host)):
                work = Path(tmp) / f"{'image' if where else 'host'}-{i}"
                work.mkdir()
                into.append(serve_ready(where, bundle, work))
        ready_image, ready_host = statistics.median(ready_image), statistics.median(ready_host)
    base = podman("image", "inspect", "--format", "{{.Size}}", "localhost/mirror-scan-base:bookworm", check=False)
    figures = {
        "image": image,
        "image_mb": round(size(image) / 1e6, 1),
        "base_mb": round(int(base.stdout.strip()) / 1e6, 1) if base.returncode == 0 else None,
        "torch_in_image": has_torch == "True",
        "version_s_image": round(version_image, 2),
        "version_s_host": round(version_host, 2),
        "version_image_over_host": round(version_image / version_host, 2),
        "serve_ready_s_image": round(ready_image, 2),
        "serve_ready_s_host": round(ready_host, 2),
        "serve_ready_image_over_host": round(ready_image / ready_host, 2),
        "bundle": bundle.name,
        "runs": runs,
        **machine(),
    }
    if not args.json:
        for key, value in figures.items():
            print(f"{key:30s} {value}")
    emit(figures, args.json)


if __name__ == "__main__":
    main()
