"""`hashlist import|list|show|remove|export`: known material by hash, shared between instances."""

from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from mirror_scan.cli.console import err, out, print_json
from mirror_scan.cli.options import ConfigOpt, JsonOpt, QuarantineOpt, StateOpt, open_reader, open_writer, require_state
from mirror_scan.errors import UsageError
from mirror_scan.hashing import md5_bytes, sha256_bytes
from mirror_scan.settings import resolve
from mirror_scan.text import csv_cell

log = logging.getLogger(__name__)
hashlist_app = typer.Typer(
    help="Hash lists: flag known pictures by PDQ (re-encoded copies too), sha256 or md5, and share yours.",
    no_args_is_help=True,
)


def _reader(state: Path | None, config: Path | None):
    return open_reader(resolve({"state": state}, config))


@hashlist_app.command("import")
def import_cmd(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV type,hash[,quality,note,source]; ThreatExchange's dataset CSV; or 'TYPE VALUE' lines."
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="The list's name (shown in every reason it causes).")],
    action: Annotated[str, typer.Option("--action", help="flag (act on matches) or review (record only).")] = "flag",
    replace: Annotated[bool, typer.Option("--replace", help="Replace a list of the same name.")] = False,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Import a shared list. Every line is checked first: on any bad line nothing is imported and every
    bad line is reported with its number. A running watch or serve applies it from its next batch; a scan
    applies it to unchanged files too."""
    from mirror_scan.lists.formats import merge_duplicates, parse

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
    parsed = parse(text)
    entries, errors = parsed.entries, parsed.errors
    if errors:
        for problem in errors[:50]:
            err.print(f"{file}: {problem}")
        more = f" (and {len(errors) - 50} more)" if len(errors) > 50 else ""
        raise UsageError(
            f"{len(errors)} bad line(s) in {file}{more}: nothing imported", hint="fix them and import again"
        )
    for kind, count in parsed.skipped.items():
        err.print(f"{file}: {count:,} {kind} row(s) skipped: not a picture hash")
    if not entries:
        raise UsageError(f"{file} holds no hashes: nothing imported")
    entries, merged = merge_duplicates(entries)
    with open_writer(resolve({"state": state, "quarantine": quarantine}, config), quiet=True) as workspace:
        ledger = workspace.ledger
        with ledger.transaction():  # a replacement is one step: never a moment without the list
            if ledger.lists.has_hash_list(name):
                if not replace:
                    raise UsageError(
                        f"a hash list named {name!r} exists", hint="--replace replaces it, or pick another --name"
                    )
                ledger.lists.remove_hash_list(name)
            ledger.lists.import_hash_list(name, action, str(file), entries)
    kinds = {kind: sum(1 for e in entries if e[0] == kind) for kind in ("pdq", "sha256", "md5", "vpdq")}
    summary = ", ".join(f"{count:,} {kind}" for kind, count in kinds.items() if count)
    duplicates = f" ({merged:,} duplicate(s) merged)" if merged else ""
    log.info("imported hash list %r (%s) from %s: %s", name, action, file, summary)
    if json_out:
        print_json({"name": name, "action": action, "entries": kinds, "duplicates_merged": merged})
        return
    out.print(f"imported hash list {name!r} ({action}): {summary}{duplicates}")


@hashlist_app.command("list")
def list_cmd(state: StateOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The imported lists: name, action, entries, when and from where."""
    with _reader(state, config) as workspace:
        rows = workspace.ledger.lists.hash_lists()
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
        if not workspace.ledger.lists.has_hash_list(name):
            raise UsageError(f"no hash list named {name!r}", hint="see: mirror-scan hashlist list")
        rows = workspace.ledger.lists.hash_list_rows(name)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["type", "hash", "note", "source"])
    writer.writerows([csv_cell(cell) for cell in row] for row in rows)  # notes come from other people


@hashlist_app.command("remove")
def remove_cmd(name: Annotated[str, typer.Argument()], state: StateOpt = None, config: ConfigOpt = None) -> None:
    """Remove an imported list (verdicts it caused stay until the next scan or rescore)."""
    with _reader(state, config) as workspace:  # a name that is not there creates nothing
        if not workspace.ledger.lists.has_hash_list(name):
            raise UsageError(f"no hash list named {name!r}", hint="see: mirror-scan hashlist list")
    with open_writer(resolve({"state": state}, config), quiet=True) as workspace:
        workspace.ledger.lists.remove_hash_list(name)
    out.print(f"removed hash list {name!r}")


@hashlist_app.command("export")
def export_cmd(
    source: Annotated[str, typer.Option("--from", help="quarantine: what this instance quarantined.")] = "quarantine",
    since: Annotated[str | None, typer.Option("--since", help="Only items quarantined within this (e.g. 30d).")] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="csv (ours: type,hash,quality), te (ThreatExchange's dataset CSV) or local (ThreatExchange's "
            "local-file exchange: 'TYPE VALUE' lines). HMA takes hashes through its API: `hashlist push`.",
        ),
    ] = "csv",
    unreviewed: UnreviewedOpt = False,
    confirmed: ConfirmedOpt = True,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """What this instance quarantined, a person reviewed and confirmed (console, `quarantine confirm`), for
    other instances and tools to import: PDQ of quality 50 and more, vPDQ of videos, sha256 and md5. Hashes
    only: no paths, names, keys or dates. --unreviewed adds what nobody reviewed yet (not restored either):
    the scanner's guesses, false positives included, which make others block benign pictures."""
    from mirror_scan.cli.durations import parse_since
    from mirror_scan.lists.formats import write

    if source != "quarantine":
        raise UsageError(f"--from {source!r}", hint="only --from quarantine is supported")
    if fmt == "hma":
        raise UsageError(
            "HMA has no hash-list file format",
            hint="push to an HMA bank with `mirror-scan hashlist push`, or use --format te",
        )
    if fmt not in ("csv", "te", "local"):
        raise UsageError(f"--format {fmt!r}", hint="use csv, te or local")
    cutoff = parse_since(since) if since else None
    with _reader(state, config) as workspace:
        pictures = workspace.ledger.lists.quarantined_pictures(cutoff, confirmed_only=not unreviewed)
    _say_what_is_shared(len(pictures), unreviewed)
    counts = write(export_signals(pictures), fmt, sys.stdout)
    if counts["no_upstream_type"]:
        err.print(
            f"{counts['no_upstream_type']} md5/sha256 value(s) of pictures left out: ThreatExchange and HMA have "
            "no photo md5 or sha256 type (their PDQ is in)"
        )


UnreviewedOpt = Annotated[
    bool,
    typer.Option(
        "--unreviewed",
        help="Also share what nobody reviewed yet (the scanner's guesses, false positives included): others "
        "would block those pictures too.",
    ),
]
# The default since issue 45; still accepted so scripts written for the old default keep working.
ConfirmedOpt = Annotated[bool, typer.Option("--confirmed", hidden=True, help="Only confirmed items (the default).")]


def _say_what_is_shared(count: int, unreviewed: bool) -> None:
    if unreviewed:
        err.print(
            "warning: --unreviewed shares the scanner's verdicts nobody confirmed; a false positive among them "
            "makes other instances block a benign picture. Confirm items first (console, `quarantine confirm`)."
        )
    elif count == 0:
        err.print(
            "no confirmed item to share: items are shared once a person confirms them (the review console, or "
            "`mirror-scan quarantine confirm ID`); --unreviewed shares every held item, reviewed or not"
        )


def export_signals(pictures: list[dict]):
    """Each picture's values once: PDQ of quality 50 and more (a flat frame's hash matches anything), its
    vPDQ, then its sha256 and md5."""
    from mirror_scan.lists.formats import MIN_QUALITY, Signal, degenerate, encode_vpdq

    seen: set[tuple[str, str]] = set()
    for picture in pictures:
        values = [
            Signal("pdq", h, picture["video"], q) for h, q in picture["pdq"] if q >= MIN_QUALITY and not degenerate(h)
        ]
        if picture["vpdq"] and any(q >= MIN_QUALITY for _, q, _ in picture["vpdq"]):
            values.append(Signal("vpdq", encode_vpdq(picture["vpdq"]), picture["video"]))
        values += [
            Signal(k, v, picture["video"]) for k, v in (("sha256", picture["sha256"]), ("md5", picture["md5"])) if v
        ]
        for signal in values:
            if (signal.kind, signal.value) not in seen:
                seen.add((signal.kind, signal.value))
                yield signal


@hashlist_app.command("subscribe")
def subscribe_cmd(
    name: Annotated[str, typer.Argument(help="The list's name (shown in every reason it causes).")],
    exchange: Annotated[
        str,
        typer.Option(
            "--exchange",
            help="local_file, sample, fb_threatexchange, ncmec, stop_ncii or tat (python-threatexchange's).",
        ),
    ],
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="KEY=VALUE of the exchange's collaboration config (e.g. filename=/abs/f.txt)."),
    ] = None,
    action: Annotated[str, typer.Option("--action", help="flag (act on matches) or review (record only).")] = "flag",
    state: StateOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Subscribe to a signal exchange: its hashes become the list NAME, renewed by `hashlist fetch`.
    Credentials are python-threatexchange's own (environment variables or files it names), never options."""
    import json

    from mirror_scan.clients.exchanges import collab_config

    if action not in ("flag", "review"):
        raise UsageError(f"--action {action!r}", hint="use flag or review")
    options = {}
    for pair in option or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {pair!r}", hint="KEY=VALUE")
        if any(word in key.lower() for word in ("token", "password", "secret", "credential", "key")):
            raise UsageError(
                f"--option {key}: credentials are not options",
                hint="python-threatexchange reads them from its environment variables or files (see `--help`)",
            )
        options[key] = value
    collab_config(exchange, name, options)  # checked now, by the exchange's own config class
    with open_writer(resolve({"state": state}, config), quiet=True) as workspace:
        ledger = workspace.ledger
        if any(s["name"] == name for s in ledger.lists.subscriptions()) or ledger.lists.has_hash_list(name):
            raise UsageError(f"a list or subscription named {name!r} exists", hint="pick another name")
        ledger.lists.put_subscription(name, exchange, json.dumps(options), action)
    out.print(f"subscribed {name!r} to {exchange}; fetch it with: mirror-scan hashlist fetch {name}")


@hashlist_app.command("fetch")
def fetch_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="Subscriptions to fetch (default: all).")] = None,
    state: StateOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Fetch what changed in each subscribed exchange and replace its list in one step (a running watch or
    serve applies it from its next batch). Run it from a timer (systemd, cron)."""
    from mirror_scan.clients.exchanges import fetch
    from mirror_scan.errors import MirrorScanError

    results, failed = [], 0
    with open_writer(resolve({"state": state}, config), quiet=True) as workspace:
        ledger = workspace.ledger
        chosen = [s for s in ledger.lists.subscriptions() if not names or s["name"] in names]
        missing = sorted(set(names or []) - {s["name"] for s in chosen})
        if missing:
            raise UsageError(f"no subscription named {missing[0]!r}", hint="see: mirror-scan hashlist subscriptions")
        for sub in chosen:
            try:
                entries, checkpoint, fetched_state, counts = fetch(sub)
            except MirrorScanError as error:
                failed += 1
                err.print(f"error: {sub['name']}: {error}")
                continue
            ledger.lists.replace_hash_list(sub["name"], sub["action"], f"exchange {sub['api']}", entries)
            note = f"{counts['kept']} signal(s) kept, {counts['refused']} refused (degenerate or invalid)"
            ledger.lists.save_fetch(sub["name"], checkpoint, fetched_state, note)
            results.append({"name": sub["name"], **counts})
    if json_out:
        print_json(results)
    elif not chosen:
        err.print("no subscriptions in this state; add one with: mirror-scan hashlist subscribe NAME --exchange ...")
    else:
        for r in results:
            out.print(f"{r['name']}: {r['kept']} signal(s), {r['refused']} refused, {r['fetched']} update(s) fetched")
    if failed:
        raise typer.Exit(1)


@hashlist_app.command("subscriptions")
def subscriptions_cmd(state: StateOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The subscribed exchanges: name, exchange, action, when last fetched and what came."""
    with _reader(state, config) as workspace:
        rows = workspace.ledger.lists.subscriptions()
    data = [
        {
            "name": r["name"],
            "exchange": r["api"],
            "action": r["action"],
            "fetched": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["fetched"])) if r["fetched"] else "never",
            "note": r["note"] or "",
        }
        for r in rows
    ]
    if json_out:
        print_json(data)
        return
    if not data:
        out.print("no subscriptions (mirror-scan hashlist subscribe NAME --exchange ...)")
    for r in data:
        out.print(f"{r['name']:24s} {r['exchange']:18s} {r['action']:7s} fetched {r['fetched']}  {r['note']}")


@hashlist_app.command("unsubscribe")
def unsubscribe_cmd(name: Annotated[str, typer.Argument()], state: StateOpt = None, config: ConfigOpt = None) -> None:
    """Stop a subscription and remove its list (verdicts it caused stay until the next scan or rescore)."""
    with open_writer(resolve({"state": state}, config), quiet=True) as workspace:
        if not workspace.ledger.lists.remove_subscription(name):
            raise UsageError(f"no subscription named {name!r}", hint="see: mirror-scan hashlist subscriptions")
        workspace.ledger.lists.remove_hash_list(name)
    out.print(f"unsubscribed {name!r}")


@hashlist_app.command("push")
def push_cmd(
    hma: Annotated[str, typer.Option("--hma", help="HMA's base URL, e.g. https://hma.internal:5000.")],
    bank: Annotated[str, typer.Option("--bank", help="The bank (UPPER_WITH_UNDERSCORE).")],
    create: Annotated[bool, typer.Option("--create", help="Create the bank if HMA has none of that name.")] = False,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="A bearer token for a proxy in front of HMA (file).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be pushed; send nothing.")] = False,
    unreviewed: UnreviewedOpt = False,
    confirmed: ConfirmedOpt = True,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Push what this instance quarantined and a person confirmed into an HMA bank (--unreviewed: also what
    nobody reviewed yet): PDQ of quality 50 and more, and the md5 of videos (HMA's video_md5), one content
    item per picture with the quarantine item in its note. What was pushed is recorded: a second push sends
    only what is new."""
    import os

    from mirror_scan.clients.hma import BANK_NAME, HMA, contents
    from mirror_scan.clients.pgsource import read_secret_file
    from mirror_scan.kinds import ItemState

    if not BANK_NAME.match(bank):
        raise UsageError(f"--bank {bank!r}", hint="HMA bank names are UPPER_WITH_UNDERSCORE, e.g. MIRROR_SCAN_CSAM")
    token = os.environ.get("MIRROR_SCAN_HMA_TOKEN") or (
        read_secret_file(token_file, "HMA token") if token_file else None
    )
    settings = resolve({"state": state, "quarantine": quarantine}, config)
    target = f"hma {hma.rstrip('/')} {bank}"
    with open_writer(settings, quiet=True) as workspace:
        ledger = workspace.ledger
        held = (ItemState.QUARANTINED, ItemState.UPSTREAM_PENDING, ItemState.PURGED)
        ids = {row.sha256: row.id for row in ledger.items(states=tuple(map(str, held)))}
        done = ledger.lists.pushed(target)
        pictures = ledger.lists.quarantined_pictures(confirmed_only=not unreviewed)
        _say_what_is_shared(len(pictures), unreviewed)
        todo = [c for c in contents(pictures, ids) if c[0] not in done]
        if dry_run:
            for _, signals, note in todo:
                out.print(f"would push {', '.join(signals)} ({note})")
            out.print(f"{len(todo)} content item(s) would be pushed to {bank}")
            return
        client = HMA(hma, token)
        if create:
            client.create_bank(bank)
        if not todo:
            out.print(f"nothing new to push to {bank} ({len(done)} content item(s) pushed before)")
            return
        pushed = refused = 0
        for key, signals, note in todo:
            content_id, why = client.add_signals(bank, signals, note)
            if why and len(signals) > 1:  # a type this bank does not take (video_md5 disabled): the rest alone
                kept = {k: v for k, v in signals.items() if k not in why}
                if kept and kept != signals:
                    content_id, why = client.add_signals(bank, kept, note)
            if content_id is None:
                refused += 1
                err.print(f"refused by HMA: {', '.join(signals)} ({note}): {why}")
                continue
            ledger.lists.record_push(target, key, content_id)
            pushed += 1
    out.print(f"pushed {pushed} content item(s) to {bank}" + (f", {refused} refused" if refused else ""))
    if refused:
        raise typer.Exit(1)


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

    from mirror_scan.kinds import HELD_STATES
    from mirror_scan.model.bundle import Preprocess
    from mirror_scan.scan.decoders.decode import Limits
    from mirror_scan.scan.decoders.decodepool import decoders
    from mirror_scan.store.items import DATA

    settings = resolve({"state": state, "quarantine": quarantine}, config)
    require_state(settings)
    # PDQ is taken from the picture as stored, whatever the model's size: this one only shapes the rows.
    prep = Preprocess(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", resize_mode="shortest")
    limits = Limits(max_pixels=settings.max_pixels, max_frames=settings.max_frames)
    counts = {"hashed": 0, "missing": 0, "changed": 0, "undecodable": 0}
    with (
        open_writer(settings, quiet=json_out) as workspace,
        decoders(settings.decoders, 1, settings.decode_timeout) as decoder,
    ):
        ledger = workspace.ledger
        wanted: dict[str, list[bytes]] = {}
        for sha256, path in ledger.lists.files_lacking_hashes():
            wanted.setdefault(sha256, []).append(path)
        for item in ledger.items(states=tuple(HELD_STATES)):
            if item.sealed_to:
                continue  # sealed: this command never opens the quarantine (its hashes were kept at its scan)
            md5, pdqs, variants = ledger.lists.picture_hashes(item.sha256)
            if item.sha256 in wanted or not md5 or (pdqs and variants is None):
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
            ledger.lists.put_picture_hashes(sha256, md5_bytes(data), decoded.pdq, decoded.pdq_variants, decoded.vpdq)
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

    from mirror_scan.scan.read import read_stable
    from mirror_scan.store.discover import Found

    try:
        st = os.lstat(path)
    except OSError:
        return "missing"
    data = read_stable(Found(os.fsdecode(path), st.st_size, st.st_mtime_ns, None), max_bytes)
    if not isinstance(data, bytes):
        return "missing"
    return data if sha256_bytes(data) == sha256 else "changed"
