"""`hashlist import|list|show|remove|export`: known material by hash, shared between instances."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .cli_options import ConfigOpt, JsonOpt, QuarantineOpt, StateOpt, open_writer
from .console import err, out, print_json
from .errors import UsageError
from .hashing import md5_bytes, sha256_bytes
from .settings import resolve
from .text import csv_cell

hashlist_app = typer.Typer(
    help="Hash lists: flag known pictures by PDQ (re-encoded copies too), sha256 or md5, and share yours.",
    no_args_is_help=True,
)


def _reader(state: Path | None, config: Path | None):
    from .app.workspace import Workspace

    return Workspace.reader(resolve({"state": state}, config))


@hashlist_app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="CSV with a header: type,hash[,note,source] (or HMA/ThreatExchange).")],
    name: Annotated[str, typer.Option("--name", help="The list's name (shown in every reason it causes).")],
    action: Annotated[str, typer.Option("--action", help="flag (act on matches) or review (record only).")] = "flag",
    replace: Annotated[bool, typer.Option("--replace", help="Replace a list of the same name.")] = False,
    state: StateOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Import a shared list. Every line is checked first: on any bad line nothing is imported and every
    bad line is reported with its number. A running watch or serve applies it from its next batch; a scan
    applies it to unchanged files too."""
    from .hashes import merge_duplicates, parse_list

    if action not in ("flag", "review"):
        raise UsageError(f"--action {action!r}", hint="use flag or review")
    if not name or "/" in name or len(name) > 100:
        raise UsageError(f"list name {name!r}", hint="a short name without '/'")
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read {file}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{file} is not UTF-8 text", hint="save the list as a UTF-8 CSV file") from None
    entries, errors = parse_list(text)
    if errors:
        for problem in errors[:50]:
            err.print(f"{file}: {problem}")
        more = f" (and {len(errors) - 50} more)" if len(errors) > 50 else ""
        raise UsageError(
            f"{len(errors)} bad line(s) in {file}{more}: nothing imported", hint="fix them and import again"
        )
    if not entries:
        raise UsageError(f"{file} holds no hashes: nothing imported")
    entries, merged = merge_duplicates(entries)
    with open_writer(resolve({"state": state}, config), quiet=True) as workspace:
        ledger = workspace.ledger
        with ledger.transaction():  # a replacement is one step: never a moment without the list
            if ledger.has_hash_list(name):
                if not replace:
                    raise UsageError(
                        f"a hash list named {name!r} exists", hint="--replace replaces it, or pick another --name"
                    )
                ledger.remove_hash_list(name)
            ledger.import_hash_list(name, action, str(file), entries)
    kinds = {kind: sum(1 for e in entries if e[0] == kind) for kind in ("pdq", "sha256", "md5")}
    summary = ", ".join(f"{count:,} {kind}" for kind, count in kinds.items() if count)
    duplicates = f" ({merged:,} duplicate(s) merged)" if merged else ""
    out.print(f"imported hash list {name!r} ({action}): {summary}{duplicates}")


@hashlist_app.command("list")
def list_cmd(state: StateOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The imported lists: name, action, entries, when and from where."""
    with _reader(state, config) as workspace:
        rows = workspace.ledger.hash_lists()
    data = [
        {
            "name": n,
            "action": a,
            "entries": c,
            "imported": time.strftime("%Y-%m-%d %H:%M", time.localtime(t)),
            "source": s,
        }
        for n, a, t, s, c in rows
    ]
    if json_out:
        print_json(data)
        return
    if not data:
        out.print("no hash lists (import one: mirror-scan hashlist import FILE --name NAME)")
    for row in data:
        out.print(
            f"{row['name']:24s} {row['action']:7s} {row['entries']:>10,} entries  {row['imported']}  {row['source']}"
        )


@hashlist_app.command("show")
def show_cmd(name: Annotated[str, typer.Argument()], state: StateOpt = None, config: ConfigOpt = None) -> None:
    """One list's entries as CSV (type,hash,note,source)."""
    with _reader(state, config) as workspace:
        if not workspace.ledger.has_hash_list(name):
            raise UsageError(f"no hash list named {name!r}", hint="see: mirror-scan hashlist list")
        rows = workspace.ledger.hash_list_rows(name)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["type", "hash", "note", "source"])
    writer.writerows([csv_cell(cell) for cell in row] for row in rows)  # notes come from other people


@hashlist_app.command("remove")
def remove_cmd(name: Annotated[str, typer.Argument()], state: StateOpt = None, config: ConfigOpt = None) -> None:
    """Remove an imported list (verdicts it caused stay until the next scan or rescore)."""
    with _reader(state, config) as workspace:  # a name that is not there creates nothing
        if not workspace.ledger.has_hash_list(name):
            raise UsageError(f"no hash list named {name!r}", hint="see: mirror-scan hashlist list")
    with open_writer(resolve({"state": state}, config), quiet=True) as workspace:
        workspace.ledger.remove_hash_list(name)
    out.print(f"removed hash list {name!r}")


@hashlist_app.command("export")
def export_cmd(
    source: Annotated[str, typer.Option("--from", help="quarantine: what this instance quarantined.")] = "quarantine",
    since: Annotated[str | None, typer.Option("--since", help="Only items quarantined within this (e.g. 30d).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv (type,hash) or hma (signal_type,signal_value).")] = "csv",
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """What this instance quarantined and did not restore, as PDQ + sha256 + md5, for other instances to
    import. Hashes only: no paths, names, keys or dates."""
    from .durations import parse_since

    if source != "quarantine":
        raise UsageError(f"--from {source!r}", hint="only --from quarantine is supported")
    if fmt not in ("csv", "hma"):
        raise UsageError(f"--format {fmt!r}", hint="use csv or hma")
    cutoff = parse_since(since) if since else None
    with _reader(state, config) as workspace:
        rows = workspace.ledger.quarantined_hashes(cutoff)
    seen: set[tuple[str, str]] = set()
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["type", "hash"] if fmt == "csv" else ["signal_type", "signal_value"])
    for sha256, md5, pdq in rows:
        for kind, value in (("pdq", pdq), ("sha256", sha256), ("md5", md5)):
            if value and (kind, value) not in seen:
                seen.add((kind, value))
                writer.writerow([kind, value])


@hashlist_app.command("backfill")
def backfill_cmd(
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Hash what was scanned before hashes were kept: reads only the pictures that lack them, from the
    mirror or from the quarantine (bytes are hashed, never shown or re-encoded). Verdicts do not change;
    the next scan matches them against the lists."""
    import os
    from contextlib import nullcontext

    from .bundle import Preprocess
    from .decode import Limits, decode
    from .decodepool import DecoderPool
    from .quarantine import DATA
    from .state import HELD_STATES

    settings = resolve({"state": state, "quarantine": quarantine}, config)
    if not settings.state.exists():
        raise UsageError(f"state database {settings.state} does not exist", hint="run mirror-scan scan first")
    # The scan's geometry (224 px), so a backfilled hash is the hash a scan would have stored.
    prep = Preprocess(size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", resize_mode="shortest")
    limits = Limits(max_pixels=settings.max_pixels, max_frames=settings.max_frames)
    counts = {"hashed": 0, "missing": 0, "changed": 0, "undecodable": 0}
    pool = DecoderPool(1, settings.decode_timeout) if settings.decoders == "process" else nullcontext()
    with open_writer(settings, quiet=json_out) as workspace, pool:
        decoder = pool.decode if isinstance(pool, DecoderPool) else decode
        ledger = workspace.ledger
        wanted: dict[str, list[bytes]] = {}
        for sha256, path in ledger.files_lacking_hashes():
            wanted.setdefault(sha256, []).append(path)
        for item in ledger.items(states=tuple(HELD_STATES)):
            if item.sha256 in wanted or not ledger.picture_hashes(item.sha256)[0]:
                wanted.setdefault(item.sha256, []).append(os.path.join(item.dir, DATA.encode()))
        for sha256, paths in wanted.items():
            found = [_read_if_same(path, sha256, settings.max_file_mb << 20) for path in paths]
            data = next((d for d in found if isinstance(d, bytes)), None)
            if data is None:
                counts["changed" if "changed" in found else "missing"] += 1
                continue
            decoded = decoder(data, prep, limits)
            if isinstance(decoded, str):
                counts["undecodable"] += 1
                continue
            ledger.put_picture_hashes(sha256, md5_bytes(data), decoded.pdq)
            ledger.commit()
            counts["hashed"] += 1
    if json_out:
        print_json(counts)
    else:
        out.print(
            f"hashed {counts['hashed']} picture(s); {counts['missing']} no longer readable, {counts['changed']} "
            f"changed since scanned, {counts['undecodable']} undecodable"
        )


def _read_if_same(path: bytes, sha256: str, max_bytes: int) -> bytes | str:
    """The file's bytes if they are still the bytes that were scanned; else "missing" or "changed". Read
    the scanner's way (no symlink followed, no FIFO waited on, change detection)."""
    import os

    from .discover import Found
    from .fetch import read_stable

    try:
        st = os.lstat(path)
    except OSError:
        return "missing"
    data = read_stable(Found(os.fsdecode(path), st.st_size, st.st_mtime_ns, None), max_bytes)
    if not isinstance(data, bytes):
        return "missing"
    return data if sha256_bytes(data) == sha256 else "changed"
