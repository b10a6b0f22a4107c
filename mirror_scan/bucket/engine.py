"""The bucket scan's driver: list into manifest shards, keep what is new, run the stages on an engine,
write each result batch as Parquet, ingest it into the ledger (the single writer), act.

    listing --shards--> filter (ledger: same key, ETag, size and model: skipped) --> engine
    engine local: FetchDecode -> Infer, in this process
    engine ray:   Ray Data: read_parquet(todo shards) -> map_batches(FetchDecode) -> map_batches(Infer)
    each result batch --> results/part-N.parquet (durable) --> ingest (idempotent) --> part removed

A driver that dies leaves result parts: the next run ingests them first, then lists again and skips
what the ledger already has. Ray itself retries the tasks of a worker that dies; a cluster that lost
what the stages need is given up on after a deadline (raycluster.py).
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mirror_scan.atomic import atomic_write
from mirror_scan.bucket.manifest import read_shard, write_manifest, write_shard
from mirror_scan.bucket.s3 import Bucket, Listed
from mirror_scan.bucket.stages import FetchDecode, Infer, StageSpec, picture_of_row, rows_of
from mirror_scan.faults import checkpoint
from mirror_scan.scan.runner import Scan
from mirror_scan.store.discover import Found

RAY_WAVE_SHARDS = 16  # todo shards per Ray Data run: the scan starts while the listing goes on


@dataclass
class Progress:
    listed: int = 0
    skipped: int = 0
    submitted: int = 0
    ingested: int = 0
    # Results an interrupted run had computed and not ingested, ingested first by this one: their objects
    # are then listed and skipped as unchanged, so they are counted here and not as scanned by this run.
    recovered: int = 0
    recovered_scored: int = 0
    recovered_errors: int = 0
    started: float = field(default_factory=time.monotonic)
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"fetch": 0.0, "decode": 0.0, "infer": 0.0})
    list_seconds: float = 0.0
    ingest_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {
            "listed": self.listed,
            "skipped_unchanged": self.skipped,
            "submitted": self.submitted,
            "ingested": self.ingested,
            "recovered_from_interrupted_run": self.recovered,
            "seconds": round(elapsed, 3),
            "objects_per_s": round(self.ingested / elapsed, 2) if elapsed else 0.0,
            "list_seconds": round(self.list_seconds, 3),
            "ingest_seconds": round(self.ingest_seconds, 3),
            # summed over workers: per-object costs for planning, not wall time
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


def workdir_for(state: Path, remote: str) -> Path:
    return state.parent / "bucket-scans" / re.sub(r"[^A-Za-z0-9._-]+", "_", remote)


class Ingest:
    """Result batches -> the ledger, through the mirrored scan's own decide-and-record code."""

    def __init__(self, scan: Scan, remote: str, results_dir: Path, progress: Progress) -> None:
        self.scan, self.remote, self.results, self.progress = scan, remote, results_dir, progress
        self.results.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._part = 0

    def found(self, obj: Listed) -> Found:
        return Found(f"{self.remote}/{obj.key}", obj.size, obj.mtime_ns, self.remote, obj.etag, "bucket")

    def leftovers(self) -> None:
        """Parts a dead driver wrote and did not ingest."""
        for part in sorted(self.results.glob("part-*.parquet")):
            import pyarrow.parquet as pq

            self._ingest(pq.read_table(part))
            part.unlink()

    def __call__(self, table: Any) -> None:
        """One result batch (an Arrow table): made durable as a part file, ingested, then the part removed."""
        import pyarrow.parquet as pq

        part = self.results / f"part-{os.getpid()}-{self._part:08d}.parquet"
        self._part += 1
        atomic_write(part, lambda tmp: pq.write_table(table, tmp), mode=0o600)
        checkpoint("bucket:part-written")
        self._ingest(table)
        part.unlink()

    def _ingest(self, table: Any) -> None:
        started = time.perf_counter()
        scan = self.scan
        found, pictures, frames, embeddings, sims, model_ids = [], [], [], [], [], set()
        rows = rows_of(table)
        for row in rows:
            for stage in ("fetch", "decode", "infer"):
                self.progress.stage_seconds[stage] += float(row.get(f"{stage}_s") or 0.0)
            where = self.found(Listed(row["key"], row["size"], row["etag"], row["mtime_ns"]))
            if row["error"]:
                scan.record_error(where.path, row["error"], row["size"], row["mtime_ns"], row["sha256"], found=where)
                continue
            count = int(row["frames"])
            found.append(where)
            frames.append(count)
            sims.append(np.frombuffer(row["sims"], np.float32).reshape(count, -1))
            embeddings.append(np.frombuffer(row["embedding"], np.float16).reshape(count, -1).astype(np.float32))
            model_ids.add(row["model_id"])
            pictures.append(picture_of_row(row))
        if found:
            if len(model_ids) != 1:
                raise RuntimeError(f"one batch scored by several models: {sorted(model_ids)}")
            # what the workers ran (their precision on their device)
            scan.record_scored(found, pictures, frames, np.concatenate(embeddings), np.concatenate(sims),
                               model_id=model_ids.pop())  # fmt: skip
        scan.ledger.commit()
        self.progress.ingested += len(rows)
        self.progress.ingest_seconds += time.perf_counter() - started


def _todo(shards: Iterable[Path], ingest: Ingest, scan: Scan, progress: Progress, todo_dir: Path) -> Iterator[Path]:
    """Manifest shards -> shards of what needs scanning (unchanged objects are skipped, re-decided from
    their stored result when the policy changed: the mirrored scan's own rule)."""
    todo_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in todo_dir.glob("*.parquet"):
        old.unlink()
    for shard in shards:
        rows = read_shard(shard)
        progress.listed += len(rows)
        keep = [obj for obj in rows if not scan.skip_unchanged(ingest.found(obj))]
        scan.ledger.commit()
        progress.skipped += len(rows) - len(keep)
        if keep:
            progress.submitted += len(keep)
            yield write_shard(todo_dir / shard.name, keep)


def _timed_listing(bucket: Bucket, prefix: str, progress: Progress) -> Iterator[Listed]:
    iterator = iter(bucket.list(prefix))
    while True:
        started = time.perf_counter()
        try:
            obj = next(iterator)
        except StopIteration:
            progress.list_seconds += time.perf_counter() - started
            return
        progress.list_seconds += time.perf_counter() - started
        yield obj


def run_local(spec: StageSpec, todo: Iterable[Path], sink: Callable[[dict], None], scan: Scan) -> None:
    fetch_decode, infer = FetchDecode(spec), Infer(spec, scan.bundle, scan.scorer)
    try:
        for shard in todo:
            rows = read_shard(shard)
            for start in range(0, len(rows), spec.batch_size):
                chunk = rows[start : start + spec.batch_size]
                batch = {
                    "key": [r.key for r in chunk],
                    "size": [r.size for r in chunk],
                    "etag": [r.etag for r in chunk],
                    "mtime_ns": [r.mtime_ns for r in chunk],
                }
                sink(infer(fetch_decode(batch)))
    finally:
        fetch_decode.close()


@dataclass
class RayPlan:
    address: str | None = None  # None: RAY_ADDRESS, else a local Ray instance; HOST:6379, auto, ray://HOST:10001
    stall_after_s: float = 300.0  # nothing ingested this long while the cluster lacks what the stages hold
    fetch_actors: int | None = None  # default: the cluster's CPUs minus the inference actors' share
    infer_actors: int | None = None  # default: one per GPU, or one on a CPU-only cluster
    infer_cpus: float = 1.0
    wave_shards: int = RAY_WAVE_SHARDS  # todo shards per Ray Data run (actors start once per run)


def run_ray(
    spec: StageSpec, todo: Iterable[Path], sink: Callable[[dict], None], plan: RayPlan, ingested=lambda: 0
) -> dict:

    from mirror_scan.bucket.raycluster import connect, leave, native_stderr_filtered, resolve_address

    address = resolve_address(plan.address)
    with native_stderr_filtered():
        own = connect(address)
        try:
            info = _run_ray_waves(spec, todo, sink, plan, ingested)
        finally:
            leave(own, address)
    return {**info, "cluster": address or "local"}


def _run_ray_waves(spec: StageSpec, todo: Iterable[Path], sink: Callable[[dict], None], plan: RayPlan,
                   ingested: Callable[[], int]) -> dict:  # fmt: skip
    import ray
    import ray.data

    from mirror_scan.bucket.raycluster import Need, quiet_ray_data, watched

    quiet_ray_data()
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    infer_actors = plan.infer_actors or max(1, gpus)
    infer_cpus = plan.infer_cpus if not gpus else 1.0
    fetch_actors = plan.fetch_actors or max(1, cpus - int(infer_actors * infer_cpus))
    # On GPUs the session's CPU threads hardly matter. On a CPU-only cluster the model is most of the work
    # (decoding ~15% with ViT-B-32, see docs/scaling.md): the session takes every core of its node (0 =
    # onnxruntime's default) and shares them with the decoders, as the local engine does.
    infer_spec = StageSpec(**{**spec.__dict__, "infer_threads": 1 if gpus else 0})
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = os.environ.get("MIRROR_SCAN_RAY_PROGRESS") == "1"
    waves = 0
    shards = iter(todo)
    while True:
        wave = [str(p) for _, p in zip(range(plan.wave_shards), shards, strict=False)]
        if not wave:
            break
        waves += 1
        # The wave's todo shards (which the driver has just written) go in as Arrow tables: read tasks would
        # each want a CPU slot, and on a small machine the actor pools hold every slot (a deadlock).
        import pyarrow.parquet as pq

        # Blocks of a few batches each: Ray hands a block's results back when the whole block is done, so
        # small blocks keep results (and their ingest) streaming and spread the work over the actors.
        step = spec.batch_size * 4
        blocks = [t.slice(i, step) for t in (pq.read_table(path) for path in wave) for i in range(0, t.num_rows, step)]
        ds = ray.data.from_arrow(blocks)
        ds = ds.map_batches(
            FetchDecode,
            fn_constructor_args=(spec,),
            batch_size=spec.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=fetch_actors),
            num_cpus=1,
        )
        ds = ds.map_batches(
            Infer,
            fn_constructor_args=(infer_spec,),
            batch_size=spec.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=infer_actors),
            num_cpus=infer_cpus,
            num_gpus=1 if gpus else 0,
        )
        need = Need(fetch_actors, infer_actors, infer_cpus, 1 if gpus else 0)
        batches = functools.partial(ds.iter_batches, batch_size=None, batch_format="pyarrow")
        for batch in watched(batches, need, plan.stall_after_s, ingested):
            sink(batch)
    return {"cpus": cpus, "gpus": gpus, "fetch_actors": fetch_actors, "infer_actors": infer_actors, "waves": waves}


def scan_bucket(
    scan: Scan,
    spec: StageSpec,
    prefix: str,
    workdir: Path,
    engine: str,
    ray_plan: RayPlan | None = None,
    on_batch: Callable[[Progress], None] | None = None,
    shard_rows: int = 10_000,
) -> tuple[Progress, dict]:
    with _exclusive(workdir, spec.s3.remote):
        return _scan_bucket(scan, spec, prefix, workdir, engine, ray_plan, on_batch, shard_rows)


def _exclusive(workdir: Path, remote: str):
    """One bucket scan per bucket and state at a time: they share the work folder (manifest, todo shards,
    result parts), and a second one would delete the first's shards and ingest its parts under it."""
    from mirror_scan.store.locks import exclusive

    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return exclusive(
        workdir / "lock",
        f"another bucket scan of {remote} on this state database is running",
        hint="wait for it to finish (the kernel frees its lock when it ends, however it ends)",
        remote=remote,
    )


def _scan_bucket(scan, spec, prefix, workdir, engine, ray_plan, on_batch, shard_rows) -> tuple[Progress, dict]:
    progress = Progress()
    remote = spec.s3.remote
    ingest = Ingest(scan, remote, workdir / "results", progress)
    scored, errors = scan.counters.scored, scan.counters.errors
    ingest.leftovers()
    progress.recovered = progress.ingested
    progress.recovered_scored = scan.counters.scored - scored
    progress.recovered_errors = scan.counters.errors - errors

    def sink(batch: dict) -> None:
        ingest(batch)
        if on_batch:
            on_batch(progress)

    listing = _timed_listing(Bucket(spec.s3), prefix, progress)
    shards = write_manifest(listing, workdir / "manifest", shard_rows)
    todo = _todo(shards, ingest, scan, progress, workdir / "todo")
    if engine == "ray":
        info = run_ray(spec, todo, sink, ray_plan or RayPlan(), ingested=lambda: progress.ingested)
    else:
        run_local(spec, todo, sink, scan)
        info = {"cpus": os.cpu_count()}
    return progress, info
