"""Small helpers shared by the benchmarks: argument parsing, the bundle they measure, output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_OUT = REPO / "bench-out"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="finish in under a minute (fewer, shorter runs)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--model", type=Path, help="bundle to measure (default: a random ViT-B-32, exported once)")
    p.add_argument("--tiny", action="store_true", help="measure the tiny test bundle instead of ViT-B-32")
    return p


def machine() -> dict:
    """Where the figures come from: the same code runs 3x slower on another CPU class, and int8's fidelity
    depends on the CPU's features (see mirror_scan/int8check.py)."""
    from mirror_scan.model.cpu import cpu_info

    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "node": platform.node(),
        **cpu_info().as_dict(),
    }


def bundle_for(args) -> Path:
    """The bundle to measure, exported by the project's own export code when missing."""
    if args.model:
        return args.model
    arch, out = ("tiny-test", BENCH_OUT / "tiny-test") if args.tiny else ("ViT-B-32", BENCH_OUT / "vit-b-32")
    if not (out / "manifest.json").exists():
        print(f"exporting a random-weight {arch} bundle to {out} (once) ...", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mirror_scan.cli",
                "model",
                "export",
                "--arch",
                arch,
                "--pretrained",
                "none",
                "--out",
                str(out),
                "--quantize",
                "int8",
                "--force",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


def emit(figures: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, sort_keys=True))
