"""The stages both engines run, as callables over column batches (dicts of equal-length lists or arrays):

    fetch + decode (CPU): key, size, etag, mtime_ns -> + sha256, error, format, frames, pixels, detail, md5, pdq
    infer (the model, one onnxruntime session per instance): -> + sims, embedding, model_id (pixels dropped)

The local engine calls them in one process; Ray Data runs them as actor pools (`map_batches` with a
class), so the decoder pool and the onnxruntime session are opened once per actor, never per batch.
Every value is plain (bytes, str, int): batches cross process and machine boundaries as Arrow.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mirror_scan.bucket.s3 import Bucket, S3Settings
from mirror_scan.hashing import sha256_bytes
from mirror_scan.scan.decoders.decode import Limits
from mirror_scan.scan.record import Picture, picture_of


def picture_columns(picture: Picture) -> dict[str, Any]:
    """A Picture as columns of a result row (JSON text for the nested values)."""
    return {
        "format": picture.format,
        "detail": json.dumps(picture.detail) if picture.detail else None,
        "md5": picture.md5,
        "pdq": json.dumps(picture.pdq),
        "pdq_variants": json.dumps(picture.pdq_variants),
        "vpdq": json.dumps(picture.vpdq),
        # The thumbnail DeepDanbooru may need (scan/anime.py): raw RGB bytes and their shape, or none.
        "dd_view": picture.dd_view.tobytes() if picture.dd_view is not None else None,
        "dd_shape": json.dumps(list(picture.dd_view.shape)) if picture.dd_view is not None else None,
    }


def picture_of_row(row: dict[str, Any]) -> Picture:
    """The Picture a result row carries (the inverse of picture_columns)."""
    return Picture(
        row["sha256"],
        row["format"],
        json.loads(row["detail"]) if row["detail"] else None,
        row["md5"],
        [tuple(p) for p in json.loads(row["pdq"] or "[]")],
        json.loads(row["pdq_variants"] or "[]"),
        [tuple(f) for f in json.loads(row.get("vpdq") or "[]")],
        np.frombuffer(row["dd_view"], np.uint8).reshape(json.loads(row["dd_shape"])) if row.get("dd_view") else None,
    )


RESULT_COLUMNS = (
    "key",
    "size",
    "etag",
    "mtime_ns",
    "sha256",
    "error",
    "format",
    "frames",
    "detail",
    "md5",
    "pdq",
    "pdq_variants",
    "vpdq",
    "dd_view",
    "dd_shape",
    "sims",
    "embedding",
    "model_id",
    "fetch_s",
    "decode_s",
    "infer_s",
)


@dataclass(frozen=True)
class StageSpec:
    """What a worker needs to build its stages (picklable)."""

    s3: S3Settings
    model_dir: str
    device: str = "auto"
    precision: str = "auto"
    limits: Limits = Limits()
    max_bytes: int = 512 << 20
    decoders: str = "process"
    decode_timeout_s: float = 60.0
    batch_size: int = 16
    infer_threads: int = 0  # onnxruntime intra-op threads (0: all cores; Ray actors: their CPU share)
    fetch_threads: int = 8  # GETs in flight per fetch-decode instance


def rows_of(batch: Any) -> list[dict[str, Any]]:
    """A batch (an Arrow table, or a dict of equal-length columns) as rows of plain values."""
    if hasattr(batch, "to_pylist"):
        return batch.to_pylist()
    names = list(batch)
    count = len(batch[names[0]]) if names else 0
    return [{name: _plain(batch[name][i]) for name in names} for i in range(count)]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _table(rows: list[dict[str, Any]], names: tuple[str, ...]) -> Any:
    """Rows -> an Arrow table with typed columns (None stays None: numpy would make an empty text column NaN)."""
    import pyarrow as pa

    return pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in names}, schema=_schema(names))


def _schema(names: tuple[str, ...]) -> Any:
    import pyarrow as pa

    types = {
        "key": pa.string(),
        "size": pa.int64(),
        "etag": pa.string(),
        "mtime_ns": pa.int64(),
        "sha256": pa.string(),
        "error": pa.string(),
        "format": pa.string(),
        "frames": pa.int64(),
        "detail": pa.string(),
        "md5": pa.string(),
        "pdq": pa.string(),
        "pdq_variants": pa.string(),
        "vpdq": pa.string(),
        "dd_view": pa.binary(),
        "dd_shape": pa.string(),
        "sims": pa.binary(),
        "embedding": pa.binary(),
        "model_id": pa.string(),
        "fetch_s": pa.float64(),
        "decode_s": pa.float64(),
        "infer_s": pa.float64(),
        "pixels": pa.binary(),
    }
    return pa.schema([(name, types[name]) for name in names])


class FetchDecode:
    def __init__(self, spec: StageSpec) -> None:
        from mirror_scan.model.bundle import load_bundle

        _test_hook_placed("FetchDecode")
        self.spec = spec
        self.bucket = Bucket(spec.s3)
        self.prep = load_bundle(spec.model_dir, verify=False).preprocess
        from mirror_scan.scan.decoders.decodepool import decoders

        self._decoders = contextlib.ExitStack()
        # one worker process: a file that crashes a decoder costs that worker
        self.decode = self._decoders.enter_context(decoders(spec.decoders, 1, spec.decode_timeout_s))
        self.fetcher = ThreadPoolExecutor(spec.fetch_threads, thread_name_prefix="get")

    def _decode(self, data: bytes):
        return self.decode(data, self.prep, self.spec.limits)

    def __call__(self, batch: Any) -> Any:
        _test_hooks()
        rows = rows_of(batch)
        started = time.perf_counter()
        datas = list(self.fetcher.map(lambda row: self.bucket.get(row["key"], self.spec.max_bytes), rows))
        fetch_s = (time.perf_counter() - started) / max(1, len(rows))
        out = []
        for row, data in zip(rows, datas, strict=True):
            started = time.perf_counter()
            row = {**row, "frames": 0, "pixels": b"", "fetch_s": fetch_s}
            if isinstance(data, str):
                out.append({**row, "error": data})
                continue
            row["sha256"] = sha256_bytes(data)
            if len(data) != row["size"]:
                out.append({**row, "error": "changed since it was listed (size differs); scanned next time"})
                continue
            decoded = self._decode(data)
            row["decode_s"] = time.perf_counter() - started
            if isinstance(decoded, str):
                out.append({**row, "error": decoded})
                continue
            pixels = np.ascontiguousarray(decoded.pixels, dtype=np.float32)
            picture = picture_of(row["sha256"], data, decoded)
            out.append({**row, **picture_columns(picture), "frames": int(pixels.shape[0]), "pixels": pixels.tobytes()})
        return _table(out, (*RESULT_COLUMNS[: RESULT_COLUMNS.index("sims")], "fetch_s", "decode_s", "pixels"))

    def close(self) -> None:
        self._decoders.close()
        self.fetcher.shutdown(wait=False)


class Infer:
    def __init__(self, spec: StageSpec, bundle: Any = None, scorer: Any = None) -> None:
        """bundle and scorer: the driver's own, in the local engine (one session per process, not two)."""
        from mirror_scan.model.bundle import load_bundle
        from mirror_scan.model.scoring import Scorer, result_model_id

        if bundle is None:
            _test_hook_placed("Infer")
        self.spec = spec
        self.bundle = bundle or load_bundle(spec.model_dir)
        self.scorer = scorer or Scorer(
            self.bundle, device=spec.device, precision=spec.precision, threads=spec.infer_threads
        )
        self.model_id = result_model_id(self.bundle, self.scorer, spec.limits)
        height, width = self.bundle.preprocess.size
        self.shape = (3, height, width)

    def __call__(self, batch: Any) -> Any:
        rows = rows_of(batch)
        scored = [row for row in rows if not row.get("error") and row["frames"]]
        started = time.perf_counter()
        if scored:
            pixels = np.concatenate(
                [np.frombuffer(row["pixels"], np.float32).reshape(row["frames"], *self.shape) for row in scored]
            )
            embeddings, sims = [], []
            for start in range(0, len(pixels), self.spec.batch_size):
                emb, sim = self.scorer(pixels[start : start + self.spec.batch_size])
                embeddings.append(emb)
                sims.append(sim)
            embedding, similarity = np.concatenate(embeddings), np.concatenate(sims)
            offset = 0
            for row in scored:
                own = slice(offset, offset + row["frames"])
                row["sims"] = np.ascontiguousarray(similarity[own], np.float32).tobytes()
                row["embedding"] = np.ascontiguousarray(embedding[own], np.float16).tobytes()
                offset += row["frames"]
        infer_s = (time.perf_counter() - started) / max(1, len(scored))
        scored_ids = {id(row) for row in scored}
        for row in rows:
            row["model_id"] = self.model_id
            row["infer_s"] = infer_s if id(row) in scored_ids else 0.0
            row.pop("pixels", None)
        return _table(rows, RESULT_COLUMNS)


def _test_hook_placed(stage: str) -> None:
    """Tests lose the node that holds a given stage: MIRROR_SCAN_TEST_PLACEMENT=<directory> makes each Ray
    actor write its Ray node's id there, in a file named after its stage and process."""
    where = os.environ.get("MIRROR_SCAN_TEST_PLACEMENT")
    if where:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
        Path(where, f"{stage}-{os.getpid()}").write_text(node)


def _test_hooks() -> None:
    """Tests kill a worker mid-run for real: MIRROR_SCAN_TEST_KILL_WORKER=<marker file> makes the first
    fetch-decode call that finds no marker create it and end its process at once (like an OOM kill); and
    they lose a node mid-scan: MIRROR_SCAN_TEST_SLOW_BATCH=<seconds> makes each fetch-decode call take that
    much longer, so a scan of a few objects lasts long enough to lose one."""
    slow = os.environ.get("MIRROR_SCAN_TEST_SLOW_BATCH")
    if slow:
        time.sleep(float(slow))
    marker = os.environ.get("MIRROR_SCAN_TEST_KILL_WORKER")
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return
        os._exit(1)
