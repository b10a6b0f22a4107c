#!/usr/bin/env python3
"""`bucket scan` throughput on one machine: `--engine local` against `--engine ray` (a local Ray instance on
the same cores) over the same objects in a real `rclone serve s3` bucket on loopback, and the per-stage
costs that docs/scaling.md plans from:

- listing: objects listed per second (boto3 list_objects_v2, 1,000 keys per page);
- reading: objects/s and MB/s with boto3 (threads) and with pyarrow's S3 filesystem, the same objects;
- scanning: objects/s end to end, model load and actor start included (a Ray instance's own start is
  measured apart: a cluster is long-lived);
- per object: fetch, decode and infer seconds, summed over workers.

Target: ray >= 0.7x local here, where Ray can only add overhead (2 cores, one machine).

    python scripts/bench_bucket.py [--quick] [--json] [--objects N] [--tiny | --model DIR]
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchutil import REPO, bundle_for, emit, machine, parser

sys.path.insert(0, str(REPO))


def make_objects(root: Path, count: int) -> int:
    """Generated photos-like JPEGs (320x240 gradients and shapes), written straight into the served folder."""
    from mirror_scan.model.synthetic import generated_image

    total = 0
    for i in range(count):
        key = root / f"{i % 97:02x}" / f"{i:04x}" / f"object-{i:06d}"
        key.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        generated_image(i).save(buffer, "JPEG", quality=88)
        key.write_bytes(buffer.getvalue())
        total += len(buffer.getvalue())
    return total


def read_throughput(s3, keys: list[str], threads: int = 8) -> dict:
    from mirror_scan.bucket.s3 import Bucket

    bucket = Bucket(s3)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(lambda k: len(bucket.get(k, 1 << 30)), keys))
    boto_s = time.perf_counter() - started

    from pyarrow import fs

    arrow = fs.S3FileSystem(
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        endpoint_override=s3.endpoint,
        scheme="http",
        region=s3.region,
    )

    def arrow_get(key: str) -> int:
        with arrow.open_input_stream(f"{s3.bucket}/{key}") as stream:
            return len(stream.read())

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        arrow_sizes = list(pool.map(arrow_get, keys))
    arrow_s = time.perf_counter() - started
    assert sizes == arrow_sizes
    megabytes = sum(sizes) / 1e6
    return {
        "boto3_objects_per_s": round(len(keys) / boto_s, 1),
        "boto3_mb_per_s": round(megabytes / boto_s, 1),
        "pyarrow_objects_per_s": round(len(keys) / arrow_s, 1),
        "pyarrow_mb_per_s": round(megabytes / arrow_s, 1),
    }


def scan_once(engine: str, s3, bundle: Path, work: Path) -> dict:
    from mirror_scan.app.scanner import scan_config
    from mirror_scan.bucket.engine import RayPlan, scan_bucket
    from mirror_scan.bucket.stages import StageSpec
    from mirror_scan.model.bundle import load_bundle
    from mirror_scan.model.scoring import Scorer
    from mirror_scan.policy import load_policy
    from mirror_scan.scan.runner import Scan
    from mirror_scan.settings import resolve
    from mirror_scan.store.ledger import Ledger

    started = time.perf_counter()
    settings = resolve({"model": bundle, "state": work / f"{engine}.db", "quarantine": work / f"{engine}-q"})
    loaded = load_bundle(bundle)
    policy = load_policy(settings.policy)
    scorer = Scorer(loaded)
    config = scan_config(settings, 0.0, policy, loaded)
    spec = StageSpec(s3=s3, model_dir=str(bundle), limits=config.limits, batch_size=settings.batch_size)
    with Ledger(settings.state) as ledger:
        scan = Scan(ledger, loaded, scorer, policy, config, actor=None)
        progress, info = scan_bucket(scan, spec, "", work / f"{engine}-work", engine, RayPlan())
    wall = time.perf_counter() - started
    per_object = {k: round(v / max(1, progress.ingested), 4) for k, v in progress.stage_seconds.items()}
    return {
        "objects": progress.ingested,
        "errors": scan.counters.errors,
        "wall_s": round(wall, 2),
        "objects_per_s": round(progress.ingested / wall, 2),
        "per_object_s": per_object,
        "list_s": round(progress.list_seconds, 3),
        "ingest_per_object_s": round(progress.ingest_seconds / max(1, progress.ingested), 5),
        **{f"ray_{k}": v for k, v in info.items() if engine == "ray"},
    }


def main() -> None:
    p = parser("bucket scan: local engine against Ray on the same cores")
    p.add_argument("--objects", type=int, help="objects in the bucket (default 600; --quick 80)")
    args = p.parse_args()
    count = args.objects or (80 if args.quick else 600)
    bundle = bundle_for(args)
    from mirror_scan.bucket.s3 import Bucket, S3Settings
    from tests.s3server import BUCKET, S3Server

    with tempfile.TemporaryDirectory(prefix="bench-bucket-") as tmp:
        work = Path(tmp)
        server = S3Server(work / "s3")
        total_bytes = make_objects(work / "s3" / BUCKET, count)
        server.start()
        try:
            os.environ.update(server.env())
            s3 = S3Settings.from_rclone(server.remote)
            time.sleep(1.5)  # the server's 1 s directory cache
            started = time.perf_counter()
            keys = [obj.key for obj in Bucket(s3).list()]
            list_s = time.perf_counter() - started
            assert len(keys) == count, (len(keys), count)
            reads = read_throughput(s3, keys)
            local = scan_once("local", s3, bundle, work)
            # A Ray cluster is long-lived (`ray up`, KubeRay): its start is measured apart from the scan.
            from mirror_scan.bucket.engine import RayPlan, _ray_init

            started = time.perf_counter()
            _ray_init(RayPlan())
            ray_init_s = time.perf_counter() - started
            ray = scan_once("ray", s3, bundle, work)
        finally:
            server.stop()
    figures = {
        "benchmark": "bucket",
        "model": bundle.name,
        "objects": count,
        "mean_object_kb": round(total_bytes / count / 1024, 1),
        "listed_per_s": round(count / list_s, 1),
        **reads,
        "local": local,
        "ray": ray,
        "ray_init_s": round(ray_init_s, 2),
        "ray_over_local": round(ray["objects_per_s"] / local["objects_per_s"], 3),
        **machine(),
    }
    if not args.json:
        print(f"{count} objects ({figures['mean_object_kb']} KiB each) with {bundle.name} on {os.cpu_count()} CPUs")
        print(f"  listing: {figures['listed_per_s']} objects/s")
        print(
            f"  reading: boto3 {reads['boto3_objects_per_s']} objects/s ({reads['boto3_mb_per_s']} MB/s), "
            f"pyarrow {reads['pyarrow_objects_per_s']} objects/s ({reads['pyarrow_mb_per_s']} MB/s)"
        )
        for name, r in (("local", local), ("ray", ray)):
            print(
                f"  {name}: {r['objects_per_s']} objects/s ({r['wall_s']} s, model and actors' start included); "
                f"per object {r['per_object_s']}"
            )
        print(
            f"  ray / local: {figures['ray_over_local']} (target >= 0.7; Ray's own start, "
            f"{figures['ray_init_s']} s, apart)"
        )
    emit(figures, args.json)


if __name__ == "__main__":
    main()
