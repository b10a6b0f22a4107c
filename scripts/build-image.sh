#!/usr/bin/env bash
# Builds mirror-scan's runtime image with podman (or CONTAINER_TOOL=docker) and no network inside the build:
#   1. a wheelhouse on the host: `pip wheel` of the package with its extras (pdqhash builds from source
#      here, so the host needs g++), with the host's Python, which must be the base's (3.11 for bookworm);
#   2. a base image with python3 and venv: --base IMAGE (any local one), else the local
#      mirror-scan-base:bookworm, else made from Debian's packages (mmdebstrap + import; as root);
#   3. `build --network=none` of the Containerfile from the wheelhouse alone.
# Usage: bash scripts/build-image.sh [--cuda] [--base IMAGE] [--tag TAG] [--python PYTHON] [--uid UID] [--base-only]
#   mirror-scan:cpu by default; --cuda builds mirror-scan:cuda ([gpu,rclone]: onnxruntime-gpu and the CUDA
#   libraries its wheels bring, nvImageCodec). --uid: the service user's id (1000; 991 to watch pict-rs's
#   own volume, pict-rs's user); --base-only: make the base (if missing) and stop. The model bundle is
#   mounted at run time, never built in.
set -euo pipefail
cd "$(dirname "$0")/.."

tool="${CONTAINER_TOOL:-podman}"
flavour=cpu
extras="cpu,rclone"
base=""
tag=""
python="${PYTHON:-}"
uid=1000
base_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) flavour=cuda; extras="gpu,nvjpeg,rclone" ;;
    --base) base="$2"; shift ;;
    --tag) tag="$2"; shift ;;
    --python) python="$2"; shift ;;
    --uid) uid="$2"; shift ;;
    --base-only) base_only=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
tag="${tag:-mirror-scan:${flavour}}"
if ! command -v "$tool" >/dev/null 2>&1; then
  echo "error: $tool is not installed (Debian: apt-get install podman runc; or CONTAINER_TOOL=docker)" >&2
  exit 2
fi
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
have_image() { "$tool" image exists "$1" 2>/dev/null || "$tool" image inspect "$1" >/dev/null 2>&1; }

# 2. The base first: its Python decides the wheels' tags.
if [ -z "$base" ]; then
  base=localhost/mirror-scan-base:bookworm
  if ! have_image "$base"; then
    if ! command -v mmdebstrap >/dev/null 2>&1; then
      echo "error: no base image and no mmdebstrap to make one (apt-get install mmdebstrap), or pass --base IMAGE" >&2
      exit 2
    fi
    echo "making the base image from Debian's packages (mmdebstrap, about 2 minutes) ..." >&2
    rootfs="$(mktemp -d)/rootfs.tar"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs"
    "$tool" import --change 'CMD ["/bin/bash"]' "$rootfs" "$base" >/dev/null
    rm -rf "$(dirname "$rootfs")"
  fi
fi
if [ "$base_only" = "1" ]; then  # scripts/install.sh makes the base once, outside the test suite's time
  echo "base image: $base" >&2
  exit 0
fi
base_python="$("$tool" run --rm --network=none --entrypoint python3 "$base" -c \
  'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null)" || {
  echo "error: the base image $base has no python3 (it needs python3 and its venv module)" >&2; exit 2; }
host_python="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
if [ "$base_python" != "$host_python" ]; then
  echo "error: the base has Python $base_python, the wheelhouse would be built with $host_python ($python)" >&2
  echo "  -> pass --python with a Python $base_python, or --base an image with Python $host_python" >&2
  exit 2
fi

# 1. The wheelhouse: the package and every dependency as wheels, built or fetched here, on the host.
context="build/image-${flavour}"
rm -rf "$context"
mkdir -p "$context/wheels"
echo "building the wheelhouse ($extras) with $python ..." >&2
# (pip's notes on index locations this machine's pip.conf names are left out; its errors are not)
if ! "$python" -m pip wheel --quiet --wheel-dir "$context/wheels" ".[${extras}]" 2>&1 \
    | { grep -v "^WARNING: Location '" || true; } >&2; then
  echo "error: the wheelhouse could not be built (pip's message above)" >&2
  exit 1
fi
if ls "$context/wheels" | grep -Eiq '^(torch|open_clip)'; then
  echo "error: torch or open_clip in the wheelhouse: the runtime image must not have them" >&2
  exit 1
fi

# 3. The image, from the wheelhouse alone.
echo "building $tag from $base ..." >&2
"$tool" build --network=none --file Containerfile --build-arg "BASE=$base" --build-arg "EXTRAS=$extras" --build-arg "UID=$uid" \
  --tag "$tag" "$context"
echo "built $tag" >&2
