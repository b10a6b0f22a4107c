"""The bucket's manifest: (key, size, etag, mtime_ns) as Parquet shards written while the listing streams,
so no listing is ever held in memory and no engine expands paths itself (Ray's own path expansion takes
hours on 100M keys). Each shard is written to a temporary name and renamed: a shard on disk is whole."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from mirror_scan.atomic import atomic_write
from mirror_scan.bucket.s3 import Listed

SHARD_ROWS = 10_000


def _schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("size", pa.int64()), ("etag", pa.string()), ("mtime_ns", pa.int64())])


def write_shard(path: Path, rows: list[Listed]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict(
        {
            "key": [r.key for r in rows],
            "size": [r.size for r in rows],
            "etag": [r.etag for r in rows],
            "mtime_ns": [r.mtime_ns for r in rows],
        },
        schema=_schema(),
    )
    atomic_write(path, lambda tmp: pq.write_table(table, tmp), mode=0o600)
    return path


def write_manifest(listing: Iterable[Listed], directory: Path, shard_rows: int = SHARD_ROWS) -> Iterator[Path]:
    """Shards as the listing streams: each path is yielded as soon as its shard is on disk, so the scan
    starts before the listing ends."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in directory.glob("*.parquet"):
        old.unlink()
    rows: list[Listed] = []
    index = 0
    for obj in listing:
        rows.append(obj)
        if len(rows) >= shard_rows:
            yield write_shard(directory / f"shard-{index:06d}.parquet", rows)
            rows, index = [], index + 1
    if rows:
        yield write_shard(directory / f"shard-{index:06d}.parquet", rows)


def read_shard(path: Path) -> list[Listed]:
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pydict()
    return [
        Listed(k, int(s), e, int(m))
        for k, s, e, m in zip(table["key"], table["size"], table["etag"], table["mtime_ns"], strict=True)
    ]
