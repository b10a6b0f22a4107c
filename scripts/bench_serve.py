#!/usr/bin/env python3
"""Upload validator under load, from loopback: N concurrent clients POST JPEGs (unique bytes, so no
answer comes from the result cache) for a bounded time, at 1, 8 and 32 clients. Prints throughput,
p50/p99 latency and the server's RSS per level, and the model-only batched throughput of the same
bundle measured in the same run (target at 8 clients: >= 0.8x of it). The policy flags nothing, so the
figures are the validation path itself, not quarantine writes.

    python scripts/bench_serve.py [--quick] [--json] [--model DIR | --tiny]
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

from mirror_scan.bundle import load_bundle
from mirror_scan.infer import ImageEncoder
from mirror_scan.preprocess import to_model_input
from mirror_scan.synthetic import generated_image

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


def load_level(url: str, clients: int, seconds: float, payloads: list[bytes], counter: list[int]) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                counter[0] += 1
                n = counter[0]
            body = payloads[n % len(payloads)] + n.to_bytes(8, "big")  # after the JPEG end: unique, same decode
            request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "image/jpeg"})
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
                    ok = response.status == 200
            except (urllib.error.URLError, OSError):
                ok = False
            elapsed = time.perf_counter() - started
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1

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


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
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
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mirror_scan.cli",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--token-file",
            str(work / "token"),
            "--model",
            str(bundle_dir),
            "--policy",
            str(policy),
            "--state",
            str(work / "s.db"),
            "--quarantine",
            str(work / "q"),
            "--batch-size",
            str(args.batch_size),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MIRROR_SCAN_DATA_DIR": str(work)},
    )
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        process = psutil.Process(server.pid)
        url = f"http://127.0.0.1:{port}/validate/{TOKEN}"
        counter = [0]
        load_level(url, 2, 1.0, payloads, counter)  # warm-up
        figures: dict = {
            "bench": "serve",
            "arch": bundle.manifest["model"]["arch"],
            "batch_size": args.batch_size,
            "model_only_batched_per_s": round(model_rate, 2),
            **machine(),
            "quick": args.quick,
        }
        rss = []
        for clients in (1, 8, 32):
            level = load_level(url, clients, seconds, payloads, counter)
            rss.append(process.memory_info().rss / 2**20)
            level["server_rss_mb"] = round(rss[-1], 1)
            figures[f"c{clients}"] = level
            print(
                f"{clients:2d} clients: {level['throughput']:7.2f} uploads/s, p50 {level['p50_ms']} ms, "
                f"p99 {level['p99_ms']} ms, errors {level['errors']}, server RSS {level['server_rss_mb']} MB"
            )
        ratio = figures["c8"]["throughput"] / model_rate
        figures["c8_over_model_only"] = round(ratio, 3)
        figures["rss_growth_c1_to_c32"] = round(rss[-1] / rss[0], 3)
        print(f"model-only batched: {model_rate:.2f} images/s; at 8 clients the validator reaches {ratio:.2f}x")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
