#!/usr/bin/env python3
"""Upload validator under load, from loopback: N concurrent clients POST JPEGs (unique bytes, so no
answer comes from the result cache) for a bounded time, at 1, 8 and 32 clients. Prints throughput,
p50/p99 latency and the server's RSS per level, and the model-only batched throughput of the same
bundle measured in the same run (target at 8 clients: >= 0.8x of it). The policy flags nothing, so the
figures are the validation path itself, not quarantine writes.

Each client keeps one connection open and sends the way pict-rs 0.5 does (HTTP/1.1 keep-alive, with
--chunked: `Transfer-Encoding: chunked` in 8 KiB frames, no Content-Length). With --baseline-tree DIR
(a checkout of an earlier commit, e.g. `git worktree add /tmp/old ff1c9dd`) the same load runs against
that tree's validator too (sized bodies: the old one refuses chunked ones), levels interleaved, and the
ratios new/old are printed.

    python scripts/bench_serve.py [--quick] [--json] [--model DIR | --tiny] [--chunked] [--baseline-tree DIR]
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
from benchutil import bundle_for, emit, machine, parser

from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.infer import ImageEncoder
from mirror_scan.model.preprocess import to_model_input
from mirror_scan.model.synthetic import generated_image

TOKEN = "bench-token-0123456789abcdef"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_only(bundle, batch: int, seconds: float) -> float:
    encoder = ImageEncoder(bundle, device="auto")
    pixels = np.stack([to_model_input(generated_image(i, 320, 240), bundle.preprocess) for i in range(batch)])
    encoder(pixels)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encoder(pixels)
        done += batch
    return done / (time.perf_counter() - start)


def load_level(port: int, clients: int, seconds: float, payloads: list[bytes], counter: list[int],
               chunked: bool = False) -> dict:  # fmt: skip
    import http.client

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    path = f"/validate/{TOKEN}"

    def frames(body: bytes):
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                counter[0] += 1
                n = counter[0]
            body = payloads[n % len(payloads)] + n.to_bytes(8, "big")  # after the JPEG end: unique, same decode
            headers = {"Content-Type": "image/jpeg", "User-Agent": "pict-rs v0.5.0-main"}
            started = time.perf_counter()
            try:
                if chunked:
                    conn.request("POST", path, body=frames(body), headers=headers, encode_chunked=True)
                else:
                    conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                if response.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
            elapsed = time.perf_counter() - started
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors[0],
        "throughput": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }


class Server:
    """A validator subprocess: this tree's, or (PYTHONPATH) another checkout's."""

    def __init__(self, work: Path, bundle_dir: Path, policy: Path, batch_size: int, tree: Path | None = None):
        self.port = free_port()
        env = {**os.environ, "MIRROR_SCAN_DATA_DIR": str(work)}
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        name = "old" if tree else "new"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirror_scan.cli", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--token-file", str(work / "token"), "--model", str(bundle_dir), "--policy", str(policy),
             "--state", str(work / f"{name}.db"), "--quarantine", str(work / f"{name}-q"),
             "--batch-size", str(batch_size)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=str(work),
        )  # fmt: skip
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        self.process = psutil.Process(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunked", action="store_true", help="send as pict-rs does: chunked, no Content-Length")
    p.add_argument("--baseline-tree", type=Path, help="also measure this checkout's validator (sized bodies)")
    args = p.parse_args()
    bundle_dir = bundle_for(args)
    bundle = load_bundle(bundle_dir)
    seconds = 4.0 if args.quick else 15.0
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    (work / "token").write_text(TOKEN)
    policy = work / "flag-nothing.json"
    policy.write_text(
        json.dumps({"rule": "groups", "groups": {"none": {"cartoon": 1.0}}, "parameters": {"flag_when": {"none": 1}}})
    )
    payloads = []
    for i in range(64):
        buf = io.BytesIO()
        generated_image(i, 640, 480).save(buf, format="JPEG", quality=85)
        payloads.append(buf.getvalue())
    model_rate = model_only(bundle, args.batch_size, 3.0 if args.quick else 8.0)
    servers = {"new": Server(work, bundle_dir, policy, args.batch_size)}
    if args.baseline_tree:
        servers["old"] = Server(work, bundle_dir, policy, args.batch_size, args.baseline_tree)
    figures: dict = {
        "bench": "serve",
        "arch": bundle.manifest["model"]["arch"],
        "batch_size": args.batch_size,
        "chunked": args.chunked,
        "model_only_batched_per_s": round(model_rate, 2),
        **machine(),
        "quick": args.quick,
    }
    counter = [0]
    try:
        for name, server in servers.items():
            load_level(server.port, 2, 1.0, payloads, counter, chunked=args.chunked and name == "new")  # warm-up
        rss: dict[str, list[float]] = {name: [] for name in servers}
        for clients in (1, 8, 32):
            for name, server in servers.items():  # interleaved: both see the same machine
                level = load_level(server.port, clients, seconds, payloads, counter,
                                   chunked=args.chunked and name == "new")  # fmt: skip
                rss[name].append(server.process.memory_info().rss / 2**20)
                level["server_rss_mb"] = round(rss[name][-1], 1)
                key = f"c{clients}" if name == "new" else f"old_c{clients}"
                figures[key] = level
                print(
                    f"{name} {clients:2d} clients: {level['throughput']:7.2f} uploads/s, p50 {level['p50_ms']} ms, "
                    f"p99 {level['p99_ms']} ms, errors {level['errors']}, server RSS {level['server_rss_mb']} MB"
                )
            if "old" in servers and figures[f"old_c{clients}"]["throughput"]:
                figures[f"c{clients}_new_over_old"] = round(
                    figures[f"c{clients}"]["throughput"] / figures[f"old_c{clients}"]["throughput"], 3
                )
                old_p99, new_p99 = figures[f"old_c{clients}"]["p99_ms"], figures[f"c{clients}"]["p99_ms"]
                if old_p99 and new_p99:
                    figures[f"c{clients}_p99_new_over_old"] = round(new_p99 / old_p99, 3)
        ratio = figures["c8"]["throughput"] / model_rate
        figures["c8_over_model_only"] = round(ratio, 3)
        figures["rss_growth_c1_to_c32"] = round(rss["new"][-1] / rss["new"][0], 3)
        print(f"model-only batched: {model_rate:.2f} images/s; at 8 clients the validator reaches {ratio:.2f}x")
        for clients in (1, 8, 32):
            if f"c{clients}_new_over_old" in figures:
                print(f"{clients:2d} clients: new/old throughput {figures[f'c{clients}_new_over_old']}, "
                      f"p99 {figures.get(f'c{clients}_p99_new_over_old')}")  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    emit(figures, args.json)


if __name__ == "__main__":
    main()
