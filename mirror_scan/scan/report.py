"""Per-file report records (JSONL or CSV), streamed: one record per file, nothing held in memory."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mirror_scan.errors import UsageError
from mirror_scan.kinds import FileAction
from mirror_scan.scan.decide import reason_text
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.rows import display_path
from mirror_scan.text import csv_cell, printable

FIELDS = ("path", "sha256", "status", "verdict", "reason", "size", "format", "action", "item", "uploader", "where")
FORMATS = ("jsonl", "csv")


class ReportWriter:
    def __init__(self, target: Path | str | None, fmt: str = "jsonl") -> None:
        if fmt not in FORMATS:
            raise UsageError(f"report format {fmt!r} is not supported", hint="use jsonl or csv")
        self.fmt = fmt
        self._own = target not in (None, "-")
        self.handle: IO[str] = open_private(Path(target)) if self._own else sys.stdout  # type: ignore[arg-type]
        self._csv = csv.DictWriter(self.handle, FIELDS, extrasaction="ignore") if fmt == "csv" else None
        if self._csv:
            self._csv.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        if self._csv:
            self._csv.writerow({k: csv_cell(v) for k, v in record.items()})  # names are chosen by uploaders
        else:
            self.handle.write(printable(json.dumps(record, ensure_ascii=False)) + "\n")

    def close(self) -> None:
        if self._own:
            self.handle.close()
        else:
            self.handle.flush()


def open_private(target: Path) -> IO[str]:
    """A report is 0600 whatever the umask (it names files, hashes and uploaders), like the state."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode otherwise
    return open(fd, "w", encoding="utf-8", newline="")  # noqa: SIM115


def record(
    path: bytes | str,
    *,
    sha256: str | None,
    status: str,
    verdict: str | None,
    reason: Any,
    size: int | None,
    fmt: str | None = None,
    action: str | None = None,
) -> dict[str, Any]:
    return {
        "path": display_path(path)
        if isinstance(path, bytes)
        else path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
        "sha256": sha256,
        "status": status,
        "verdict": verdict,
        "reason": reason_text(reason) or None,
        "size": size,
        "format": fmt,
        "action": action,
    }


def ledger_records(ledger: Ledger, flagged: bool = False, errors: bool = False) -> Iterator[dict[str, Any]]:
    from mirror_scan.moderation.attribution import summary

    for row in ledger.report_rows(flagged=flagged, errors=errors):
        rec = record(
            row["path"],
            sha256=row["sha256"],
            status=row["status"],
            verdict=row["verdict"],
            reason=row["reason"],
            size=row["size"],
            fmt=row["format"],
            action=row["action"],
        )
        if row["action"] in (FileAction.QUARANTINED, FileAction.UPSTREAM_PENDING):
            item = ledger.latest_item_for(row["path"])
            if item is not None:  # who posted it, where (when attribution is configured)
                rec["item"] = item
                data = ledger.follow_ups.attribution(item)
                if data is not None:
                    rec.update(summary(data))
        yield rec
