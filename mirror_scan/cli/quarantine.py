"""`quarantine ...` and `allowlist ...`: list, show, restore, purge, export hashes, reindex."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Annotated

import typer

from mirror_scan.cli.console import confirm, current, err, out, print_json
from mirror_scan.cli.durations import parse_duration, parse_since
from mirror_scan.cli.options import (
    STATE_HINT,
    ConfigOpt,
    IdentityOpt,
    ImportRootOpt,
    JsonOpt,
    QuarantineOpt,
    RcloneOpt,
    StateOpt,
    YesOpt,
    open_reader,
    open_writer,
    require_state,
)
from mirror_scan.cli.views import (
    STATE_SHORT,
    count_by,
    fit_left,
    item_reason,
    item_summary,
    label_text,
    with_progress,
)
from mirror_scan.errors import MirrorScanError, UsageError
from mirror_scan.kinds import EXPORTED_STATES
from mirror_scan.settings import resolve
from mirror_scan.store.lifecycle import PURGEABLE_STATES
from mirror_scan.store.selection import select_items
from mirror_scan.text import one_line

SHA256 = re.compile(r"^[0-9a-f]{64}$")
quarantine_app = typer.Typer(help="Inspect the quarantine, restore false positives, purge.", no_args_is_help=True)
allowlist_app = typer.Typer(help="sha256s that are never flagged (restores add to it).", no_args_is_help=True)


def _reader(state, quarantine, config, need_state=True):
    """need_state: the command reads items a scan recorded; a state database that is not there is a wrong
    path, said as such (never `0 item(s)`)."""
    settings = resolve({"state": state, "quarantine": quarantine}, config)
    if need_state:
        require_state(settings, hint=STATE_HINT)
    return open_reader(settings)


def _writer(state, quarantine, config, quiet=False, rclone=None, need_state=False, rebuilding=False, identity=None):
    """need_state: the command acts on items a scan recorded (a missing database is never made for it);
    rebuilding: reindex, which makes one for the items a quarantine holds; identity: --identity."""
    settings = resolve({"state": state, "quarantine": quarantine, "rclone": rclone, "seal_identity": identity},
                       config)  # fmt: skip
    if need_state:
        require_state(settings, hint=STATE_HINT)
    return open_writer(settings, quiet=quiet, rebuilding=rebuilding)


def _known_id(workspace, typed: str) -> list[str]:
    """One item's id as typed (whole, short form or a unique part), refused when no item has it."""
    from mirror_scan.store.selection import expand_ids

    (item_id,) = expand_ids([typed], (r.id for r in workspace.ledger.items()))
    if workspace.ledger.item(item_id) is None:
        raise UsageError(f"no quarantine item {typed!r}", hint="see `mirror-scan quarantine list`")
    return [item_id]


def _opening(workspace):
    """A way out run from a shell: a sealed item's identity may be typed when none was given."""
    from mirror_scan.app.workspace import allow_asking

    allow_asking(workspace)
    return workspace


def _ops(workspace):
    """The item operations as whoever runs the command; what they cause is said on stderr."""
    from mirror_scan.app.item_ops import ItemOps, shell_by

    return ItemOps(workspace, shell_by(), say=lambda note: err.print(note))


@quarantine_app.command("list")
def q_list(
    since: Annotated[
        str | None, typer.Option(help="Only items quarantined since a date (2026-11-01) or for a duration (7d).")
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="Only items flagged with this label.")] = None,
    item_state: Annotated[
        str | None,
        typer.Option("--state-is", help="Only items in this state: quarantined, upstream_pending, restored, purged."),
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Only items from: mirror, bucket (bucket scan), upload (serve).")
    ] = None,
    uploader: Annotated[
        str | None, typer.Option("--uploader", help="Only items uploaded by this person (name or name@instance).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many (the newest).", min=1)] = None,
    oldest_first: Annotated[bool, typer.Option("--oldest-first", help="Oldest first (default: newest).")] = False,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Items in the quarantine, one line each: short id (accepted wherever an id is), when, state, labels,
    uploader when known, and the original path (shortened from the left to fit). `quarantine show ID` has
    the rest. Reads only: works while the daemon runs."""
    from mirror_scan.moderation.attribution import summary
    from mirror_scan.store.selection import short_id

    with _reader(state, quarantine, config) as workspace:
        entries = list(workspace.quarantine.entries(parse_since(since) if since else None))
        for e in entries:
            e.update(summary(workspace.ledger.follow_ups.attribution(e["id"])))
            e["short_id"] = short_id(e["id"])
            e["labels"] = list((e["reason"] or {}).get("labels") or [])
    if item_state is not None:
        entries = [e for e in entries if e["state"] == item_state]
    if label is not None:
        entries = [e for e in entries if label in e["labels"]]
    if source is not None:
        entries = [e for e in entries if e["source"] == source]
    if uploader is not None:
        entries = [e for e in entries if e["uploader"] == uploader or e["uploader"].split("@")[0] == uploader]
    entries.sort(key=lambda e: e["quarantined_at"], reverse=not oldest_first)
    if limit is not None:
        entries = entries[:limit]
    if json_out:
        print_json(entries)
        return
    attributed = any(e["uploader"] for e in entries)
    width = max(60, out.size.width if out.is_terminal else 120)
    for e in entries:
        when = e["quarantined_at"][:16].replace("T", " ")
        labels = one_line(label_text(e["labels"]))  # one line per item, whatever names and labels hold
        who = f"{one_line(e['uploader'])[:16]:16s}  " if attributed else ""
        head = f"{e['short_id']:13s}  {when}  {STATE_SHORT.get(e['state'], e['state']):11s}  {labels:12s}  {who}"
        out.print(head + fit_left(one_line(e["original"]), width - len(head)))
    out.print(f"{len(entries)} item(s)")


def item_record(workspace, item_id: str) -> dict:
    """Everything known of an item, as `quarantine show --json` prints it and `extract` writes it: the
    metadata file, with the ledger's record (the authority), attribution, actions, decisions and history."""
    from mirror_scan.moderation.catalogue import describe_action
    from mirror_scan.review.views import decision_json
    from mirror_scan.store.rows import display_path

    row = workspace.ledger.item(item_id)
    meta = workspace.quarantine.read_meta(item_id)
    attribution = workspace.ledger.follow_ups.attribution(item_id)
    follow_ups = workspace.ledger.follow_ups.followups(item_id)
    decisions = workspace.ledger.reviews.decisions(item_id)
    history = workspace.quarantine.history(item_id)
    objects = workspace.ledger.objects.of(item_id)
    meta.pop("attribution", None)  # the ledger's copy (the authority) is shown below
    meta["attribution"] = attribution
    meta["history"] = [{"state": h["event"], "at": h["at"]} for h in history]  # the ledger's, with older lines
    meta["actions"] = [
        {
            "action": describe_action(f.action, f.target),
            "state": f.state,
            "attempts": f.attempts,
            **({"result": f.result} if f.result else {}),
            **({"error": f.error} if f.error else {}),
            "updated": dt.datetime.fromtimestamp(f.updated, dt.UTC).isoformat(timespec="seconds"),
        }
        for f in follow_ups
    ]
    meta["decisions"] = [decision_json(d) for d in decisions]
    meta["hold"] = None
    if row is not None:
        from mirror_scan.store.holds import item_hold

        hold = item_hold(workspace.ledger, row, workspace.settings)
        meta["hold"] = None if hold is None else {"until": hold.until, "why": hold.why, "says": hold.says()}
    if row is not None:
        meta["ledger"] = {
            "state": row.state,
            "sha256": row.sha256,
            "original": display_path(row.original),
            "remote": row.remote,
            "key": row.key,
            "seen_count": row.seen_count,
            "md5": row.md5,
            "sealed_to": row.sealed_to,
            "sealed_sha256": row.sealed_sha256,
            # The other objects of the upload held with it (thumbnails, resizes, the still of an animation).
            "objects": [
                {"key": o.key, "role": o.role, "variant": o.variant, "sha256": o.sha256, "state": o.state}
                for o in objects
            ],
        }
    else:
        meta["ledger"] = None
    return meta


@quarantine_app.command("show")
def q_show(
    item_id: str,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """An item's metadata (never opens or renders the quarantined file): the ledger's record, which is the
    authority, and the item's own metadata file. A summary; --json prints the whole record."""
    from mirror_scan.store.selection import expand_ids

    with _reader(state, quarantine, config) as workspace:
        (item_id,) = expand_ids([item_id], (r.id for r in workspace.ledger.items()))
        meta = item_record(workspace, item_id)
    if json_out:
        print_json(meta)
        return
    for line in item_summary(meta):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def _incomplete(data: dict | None) -> bool:
    return data is None or bool(data.get("retry") or data.get("unknown"))


@quarantine_app.command("attribute")
def q_attribute(
    item_ids: Annotated[list[str] | None, typer.Argument(help="Item ids (from `quarantine list`).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every held item (quarantined or upstream pending).")] = False,
    missing: Annotated[
        bool, typer.Option("--missing", help="With --all: only items with no or incomplete attribution.")
    ] = False,
    actions: Annotated[
        bool,
        typer.Option(
            "--actions",
            help="Also plan the [actions] configured for the items' labels (normally only "
            "items quarantined while actions were configured get them).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Look up and print; store nothing, plan and send nothing.")
    ] = False,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find (or refresh) who uploaded items, and the posts, comments and messages using them, from
    pict-rs's and Lemmy's databases. Fills in what was unknown at quarantine time (a database was down)."""
    from mirror_scan.app.workspace import Workspace
    from mirror_scan.errors import MirrorScanError
    from mirror_scan.kinds import HELD_STATES
    from mirror_scan.moderation.actions import follow_up_enabled
    from mirror_scan.moderation.attribution import summary
    from mirror_scan.moderation.catalogue import describe_action

    if not item_ids and not every:
        raise UsageError("name items to attribute, or pass --all")
    settings = resolve({"state": state, "quarantine": quarantine}, config)
    if not follow_up_enabled(settings):
        raise UsageError(
            "no attribution source is configured",
            hint="set [pictrs] database_url and [lemmy] database_url (see the README's Lemmy section), then "
            "`mirror-scan lemmy check`",
        )
    opener = Workspace.reader if dry_run else Workspace.writer
    results = []
    with opener(settings) as workspace:
        if every:
            chosen = [row.id for row in workspace.ledger.items(states=HELD_STATES)]
            if missing:
                chosen = [i for i in chosen if _incomplete(workspace.ledger.follow_ups.attribution(i))]
        else:
            from mirror_scan.store.selection import expand_ids

            chosen = expand_ids(list(item_ids or []), (row.id for row in workspace.ledger.items()))
        moderation = workspace.moderation
        for item_id in chosen:
            item = workspace.ledger.item(item_id)
            if item is None:
                raise UsageError(f"no quarantine item {item_id}", hint="see `mirror-scan quarantine list`")
            if dry_run:
                data = moderation.look_up(item)
                planned = moderation.planned_actions(item, data)
                would = [describe_action(a, t) for a, t in planned.rows]
                skipped = [f"{describe_action(a, t)}: {why}" for a, t, why in planned.skipped]
                results.append(
                    {"id": item_id, **summary(data), "would": would, "skipped": skipped, "attribution": data}
                )
                continue
            try:
                data = moderation.attribute_now(item_id, plan=actions)
            except MirrorScanError as error:
                err.print(f"error: {item_id}: {error}")
                continue
            results.append({"id": item_id, **summary(data), "unknown": data.get("unknown", [])})
        if not dry_run:
            workspace.run_follow_ups(say=lambda note: err.print(note))
    if json_out:
        print_json(results)
        return
    for r in results:
        out.print(f"{r['id']}: uploader {r['uploader']}; {r['where']}")
        for gap in r.get("unknown") or r.get("attribution", {}).get("unknown", []):
            out.print(f"  unknown {gap['part']}: {gap['reason']}")
        if dry_run:
            out.print("  would: " + ("; ".join(r["would"]) if r["would"] else "nothing ([actions] for its labels)"))
            for line in r.get("skipped", []):
                out.print(f"  would not: {line}")
    if not results:
        out.print("nothing to attribute")


@quarantine_app.command("restore")
def q_restore(
    item_ids: Annotated[list[str] | None, typer.Argument(help="Item ids (from `quarantine list`).")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Every item quarantined since a date (2026-11-01) or duration (7d).")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Only items flagged with this label (csam, nsfw, ...).")
    ] = None,
    from_file: Annotated[
        str | None, typer.Option("--from-file", help="A file of item ids, one per line ('-': standard input).")
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Restore to this path instead of the original one (a directory: the file's own name in it)."
        ),
    ] = None,
    no_upstream: Annotated[bool, typer.Option("--no-upstream", help="Do not put the object back upstream.")] = False,
    reimport: Annotated[
        bool,
        typer.Option(
            "--reimport",
            help="For an upload pict-rs no longer records (purged, pruned, its user's content removed): upload it "
            "again through pict-rs under its alias, so the posts' URLs work again (needs [pictrs] url and api_key).",
        ),
    ] = False,
    remote: Annotated[
        str | None, typer.Option("--remote", help="Check that the items came from this remote (optional).")
    ] = None,
    rclone: RcloneOpt = None,
    identity: IdentityOpt = None,
    yes: YesOpt = False,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Put items back, byte-identical, where they came from (the mirror, and the bucket each item records),
    and allowlist their sha256 so they are never flagged again. Works while the watch daemon runs. Refuses
    to overwrite a different file (use --to). A selection (--since, --label, --from-file) is listed first
    and asks before it acts."""
    from mirror_scan.store.lifecycle import RESTORABLE_STATES

    explicit = list(item_ids or [])
    if from_file is not None:
        try:
            lines = current().stdin.read() if from_file == "-" else Path(from_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(
                f"--from-file {from_file}: cannot be read ({error})", hint="one item id per line; '-' reads stdin"
            ) from None
        explicit += [line.strip() for line in lines.splitlines() if line.strip() and not line.startswith("#")]
    if not explicit and since is None and label is None:
        raise UsageError("name items to restore, or select them with --since, --label or --from-file")
    if to is not None and (len(explicit) != 1 or since or label):
        raise UsageError("--to takes exactly one item")
    if to is not None and to.endswith("/") and not Path(to).is_dir():
        raise UsageError(f"--to {to}: no such directory", hint="create it first, or name a file")
    if reimport and (to is not None or no_upstream):
        raise UsageError("--reimport puts the upload back through pict-rs: not with --to or --no-upstream")
    results: dict[str, list] = {"restored": [], "pending": [], "failed": []}
    # The writer first: it finishes or rolls back a restore a killed process left, so an item that was
    # `restoring` is chosen as what it is now.
    with (
        _writer(state, quarantine, config, quiet=True, rclone=rclone, need_state=True, identity=identity) as workspace,
        _ops(_opening(workspace)) as ops,
    ):
        entries = list(workspace.quarantine.entries(parse_since(since) if since else None))
        chosen = select_items(
            entries, RESTORABLE_STATES, ids=explicit, label=label, remote=remote,
            hint="see `mirror-scan quarantine list` (restored and purged items cannot be restored)",
        )  # fmt: skip
        if not chosen:
            if json_out:
                print_json(results)
            else:
                out.print("nothing to restore")
            return
        if since is not None or label is not None or from_file is not None:  # a selection: show it, then ask
            if json_out and not yes:
                raise UsageError("--json leaves nobody to ask: pass --yes as well",
                                 hint="or leave out --json to be asked")  # fmt: skip
            for e in [] if yes else chosen:
                out.print(f"{e['id']}  {e['original']}  {item_reason(e['reason'])}  {e['state']}")
            if not yes and not confirm(f"Restore these {len(chosen)} item(s)?", default=False):
                raise typer.Exit(1)
        target = None if to is None else _restore_target(to, chosen[0])
        for entry in with_progress(chosen, "restoring", json_out):
            done = ops.restore(entry["id"], to=target, upstream=not no_upstream, reimport=reimport)
            if done.ok:
                results["restored"].append({"id": entry["id"], "path": done.target, "upstream": done.detail})
                if not json_out:
                    also = f"; {done.detail}" if done.detail else ""
                    out.print(f"restored {entry['id']} -> {done.target} (sha256 allowlisted{also})")
            elif done.outcome == "pending":
                results["pending"].append({"id": entry["id"], "why": done.detail})
                err.print(f"pending: {entry['id']}: {done.detail}")
            else:
                results["failed"].append({"id": entry["id"], "why": done.detail})
                err.print(f"error: {entry['id']}: {done.detail}")
    if json_out:
        print_json(results)
    if results["failed"] or results["pending"]:
        raise typer.Exit(2 if results["failed"] else 1)


def _restore_target(to: str, entry: dict) -> Path:
    """--to: a file path, or an existing directory (or one named with a trailing slash) to restore into
    under the file's own name, as cp and rsync read a directory."""
    from mirror_scan.store.extract import file_name

    target = Path(to)
    if target.is_dir():
        name = file_name(os.fsencode(entry["original"]))
        return target / (name if name != "data" else entry["id"])
    return target


@quarantine_app.command("extract")
def q_extract(
    item_id: Annotated[str, typer.Argument(help="The item's id, or a unique part of it (from `quarantine list`).")],
    to: Annotated[Path, typer.Option("--to", help="An existing directory; the copy goes into a private one in it.")],
    identity: IdentityOpt = None,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Take a copy of an item's bytes and its record (what `show --json` prints) without restoring it: for a
    report to the authorities or another lawful request. The copy lands in <DIR>/mirror-scan-<id>/ (0700,
    files 0600), verified against the recorded sha256; the item stays in quarantine, nothing is allowlisted,
    and its history records who took the copy and where. Nothing is displayed."""

    with (
        _writer(state, quarantine, config, quiet=True, need_state=True, identity=identity) as workspace,
        _ops(_opening(workspace)) as ops,
    ):
        (item_id,) = _known_id(workspace, item_id)
        done = ops.extract(item_id, to, item_record(workspace, item_id))
    if json_out:
        print_json({**done.as_json(), "path": done.target})
    elif done.ok:
        out.print(f"copied {item_id} -> {done.target}/ (still in quarantine; the history records the copy)")
    if not done.ok:
        if not json_out:
            err.print(f"error: {done.detail}", markup=False)
        raise typer.Exit(2 if done.outcome == "failed" else 1)


@quarantine_app.command("report")
def q_report(
    item_id: Annotated[str, typer.Argument(help="The item's id, or a unique part of it.")],
    to: Annotated[Path, typer.Option("--to", help="An existing directory; the package goes into a private one in it.")],
    hotline: Annotated[str, typer.Option("--hotline", help="ncmec (CyberTipline) or generic.")] = "ncmec",
    identity: IdentityOpt = None,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A report package for a hotline, filed by hand: `extract`'s private directory (the bytes, verified, and
    the record) with hashes.txt (sha256, md5, PDQ) and report.txt (the form's sections in order: the upload's
    time, the uploader's account and instance, the posts and communities that used it, what was done),
    ready to paste. The item is held until you record the report: `quarantine reported ID --reference N`.
    Nothing is sent or displayed."""
    from mirror_scan.app.report_package import HOTLINES, hashes_text, report_text
    from mirror_scan.atomic import fsync_dir
    from mirror_scan.store.extract import RECORD, write_private

    if hotline not in HOTLINES:
        raise UsageError(f"--hotline {hotline!r}", hint=f"one of {', '.join(HOTLINES)}")
    with (
        _writer(state, quarantine, config, quiet=True, need_state=True, identity=identity) as workspace,
        _ops(_opening(workspace)) as ops,
    ):
        (item_id,) = _known_id(workspace, item_id)
        record = item_record(workspace, item_id)
        done = ops.extract(item_id, to, record)
        if not done.ok:
            err.print(f"error: {done.detail}", markup=False)
            raise typer.Exit(2 if done.outcome == "failed" else 1)
        md5, pdqs, _ = workspace.ledger.lists.picture_hashes(record["sha256"])
        package = Path(done.target)
        name = next(p.name for p in package.iterdir() if p.name != RECORD)
        write_private(package / "hashes.txt", hashes_text(record, md5, list(pdqs)).encode())
        write_private(package / "report.txt", report_text(record, hotline, md5, list(pdqs), name).encode())
        fsync_dir(package)
        if ops.held(item_id) is None:  # kept until the report is recorded (`reported` holds it a year)
            ops.hold(item_id, None, f"report package prepared for {hotline}; held until reported")
    out.print(f"report package for {item_id} in {package}/ (report.txt, hashes.txt, the file, item.json); "
              f"after filing: mirror-scan quarantine reported {item_id} --reference NUMBER")  # fmt: skip


@quarantine_app.command("confirm")
def q_confirm(
    item_ids: Annotated[list[str], typer.Argument(help="Item ids (from `quarantine list`).")],
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Confirm items after review: they stay in quarantine and their hashes are shared by
    `hashlist export` and `hashlist push` (confirmed items only, unless --unreviewed). Recorded with who
    confirmed them."""
    from mirror_scan.store.selection import expand_ids

    with _writer(state, quarantine, config, quiet=True, need_state=True) as workspace, _ops(workspace) as ops:
        ids = expand_ids(item_ids, (r.id for r in workspace.ledger.items()))
        outcomes = [ops.confirm(item_id) for item_id in ids]
    if json_out:
        print_json([o.as_json() for o in outcomes])
    else:
        for o in outcomes:
            out.print(f"{o.item}: {'confirmed' if o.ok else o.outcome}" + (f" ({o.detail})" if o.detail else ""))
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


@quarantine_app.command("hold")
def q_hold(
    item_ids: Annotated[list[str] | None, typer.Argument(help="Item ids (from `quarantine list`).")] = None,
    label: Annotated[str | None, typer.Option("--label", help="Every held item flagged with this label.")] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="A date (2027-12-31) or a duration from now (365d); none: until released."),
    ] = None,
    why: Annotated[str, typer.Option("--why", help="Why (a report's reference, a request): kept in the history.")] = "",
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A legal hold: purge (and the daily purge timer) refuse the items until the hold ends. Recorded in each
    item's history with who and why. `hold_labels` in the config holds every item of those labels for
    `hold_days` from its quarantine without this command."""
    from mirror_scan.store.holds import stamp
    from mirror_scan.store.selection import expand_ids

    if not item_ids and label is None:
        raise UsageError("name items to hold, or select them with --label")
    if not why.strip():
        raise UsageError("a hold needs --why TEXT (a report's reference, the request it answers)")
    ends = None if until is None else _until(until)
    with _writer(state, quarantine, config, quiet=True, need_state=True) as workspace, _ops(workspace) as ops:
        ids = expand_ids(item_ids, (r.id for r in workspace.ledger.items())) if item_ids else []
        if label is not None:
            ids += [e["id"] for e in workspace.quarantine.entries() if e["state"] in PURGEABLE_STATES
                    and label in ((e["reason"] or {}).get("labels") or []) and e["id"] not in ids]  # fmt: skip
        outcomes = [ops.hold(item_id, ends, why) for item_id in ids]
    for o in outcomes:
        (out if o.ok else err).print(f"{o.item}: {o.detail}", markup=False)
    if not outcomes:
        out.print("nothing to hold")
    elif ends is not None:
        out.print(f"{sum(o.ok for o in outcomes)} item(s) held until {stamp(ends)}")
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def _until(text: str) -> float:
    """--until: a date (the end of that day, UTC) or a duration from now; never in the past."""
    now = dt.datetime.now(dt.UTC).timestamp()
    try:
        day = dt.date.fromisoformat(text)
        ends = dt.datetime.combine(day, dt.time(23, 59, 59), dt.UTC).timestamp()
    except ValueError:
        ends = now + parse_duration(text)
    if ends <= now:
        raise UsageError(
            f"--until {text} is not in the future", hint="a date to come (2027-12-31) or a duration (365d)"
        )
    return ends


@quarantine_app.command("reported")
def q_reported(
    item_ids: Annotated[list[str], typer.Argument(help="Item ids (from `quarantine list`).")],
    reference: Annotated[
        str, typer.Option("--reference", help="The report's reference (the CyberTipline report number, ...).")
    ],
    to: Annotated[str, typer.Option("--to", help="Whom it was reported to.")] = "NCMEC CyberTipline",
    keep: Annotated[str, typer.Option("--keep", help="How long the report binds the item (a hold).")] = "365d",
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Record that items were reported (to whom, the report's reference) and hold them for --keep (a year by
    default: what the US requires since the REPORT Act of 2024; check your country's rule)."""

    if not reference.strip():
        raise UsageError("--reference names the report (its number): it is what a later request quotes")
    ends = _until(keep)
    why = f"reported to {to}, reference {reference}"
    _on_each(state, quarantine, config, item_ids, lambda ops, item: ops.hold(item, ends, why), said=f"{why}; ")


def _on_each(state, quarantine, config, item_ids: list[str], act, said: str = "") -> None:
    """One decision on each named item (any unique part of an id), each outcome said; exit 1 if any failed."""
    from mirror_scan.store.selection import expand_ids

    with _writer(state, quarantine, config, quiet=True, need_state=True) as workspace, _ops(workspace) as ops:
        outcomes = [act(ops, i) for i in expand_ids(item_ids, (r.id for r in workspace.ledger.items()))]
    for o in outcomes:
        (out if o.ok else err).print(f"{o.item}: {said}{o.detail}", markup=False)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


@quarantine_app.command("release")
def q_release(
    item_ids: Annotated[list[str], typer.Argument(help="Item ids (from `quarantine list`).")],
    why: Annotated[str, typer.Option("--why", help="Why the hold ends early: kept in the history.")] = "",
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """End a hold early (an explicit one or the configured one), with who and why in the history; the item
    can then be purged."""
    if not why.strip():
        raise UsageError("a release needs --why TEXT")
    _on_each(state, quarantine, config, item_ids, lambda ops, item: ops.release(item, why))


@quarantine_app.command("purge")
def q_purge(
    item_ids: Annotated[list[str] | None, typer.Argument(help="Item ids; or use --older-than.")] = None,
    older_than: Annotated[str | None, typer.Option("--older-than", help="Every item older than this (90d).")] = None,
    pictrs: Annotated[
        bool,
        typer.Option(
            "--pictrs",
            help="Purge the items from pict-rs (all aliases, variants and "
            "records; irreversible) instead of deleting the quarantined bytes.",
        ),
    ] = False,
    yes: YesOpt = False,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete quarantined bytes permanently (a metadata tombstone stays), or with --pictrs purge the
    items from pict-rs. Nothing else ever deletes: check your reporting and preservation duties first."""
    if not item_ids and not older_than:
        raise UsageError("name items to purge, or pass --older-than DURATION")
    if json_out and not yes:
        raise UsageError("--json leaves nobody to ask: pass --yes as well", hint="or leave out --json to be asked")
    settings = resolve({"state": state, "quarantine": quarantine}, config)
    with _writer(state, quarantine, config, need_state=True) as workspace:
        store = workspace.quarantine
        cutoff = dt.datetime.now(dt.UTC).timestamp() - parse_duration(older_than) if older_than else None
        states = EXPORTED_STATES if pictrs else PURGEABLE_STATES
        if item_ids and not pictrs:  # a rerun of a purge cut short: those done already are said, not refused
            states = (*PURGEABLE_STATES, "purged")
        chosen = select_items(
            store.entries(),
            states,
            ids=item_ids,
            older_than_ts=cutoff,
            what="purgeable",
            expected="purgeable",
            # Irreversible: a unique part of an id, as show and restore take, only when the items are listed
            # and confirmed; with --yes a whole id or the short one, never a fragment that happens to fit.
            fragments=not yes,
        )
        already = [e["id"] for e in chosen if e["state"] == "purged" and not pictrs]
        chosen = [e for e in chosen if e["id"] not in already]
        if already and not json_out:
            out.print(f"already purged: {', '.join(already)}")
        ops = _ops(workspace)
        if older_than:  # a selection (the daily timer's): held items are kept and said, never an error
            holds = {e["id"]: ops.held(e["id"]) for e in chosen}
            kept = [e for e in chosen if holds[e["id"]] is not None]
            chosen = [e for e in chosen if holds[e["id"]] is None]
            for e in kept if not json_out else []:
                out.print(f"kept {e['id']}: {holds[e['id']].says()}")
        if not chosen:
            if json_out:
                print_json({"purged": [], **({"already_purged": already} if already else {})})
                return
            out.print("nothing to purge")
            return
        if pictrs:
            _purge_pictrs(workspace, chosen, settings, yes=yes)
            return
        if not yes:
            for e in chosen:  # what is about to go, the one irreversible action: listed, never just counted
                out.print(
                    f"{e['id']}  {e['state']:16s} {e['quarantined_at'][:10]}  {e['original'] or e.get('key') or ''}"
                )
            states = ", ".join(f"{count} {state}" for state, count in count_by(chosen, "state").items())
            question = f"Permanently delete the bytes of these {len(chosen)} item(s) ({states})?"
            if not confirm(question, default=False):
                raise typer.Exit(1)
        with ops:
            outcomes = [ops.purge(e["id"]) for e in with_progress(chosen, "purging", json_out)]
    for o in outcomes:
        if not o.ok:
            err.print(f"error: {o.item}: {o.detail}")
    purged = [o.item for o in outcomes if o.ok]
    if json_out:
        failed = [o.as_json() for o in outcomes if not o.ok]
        print_json({"purged": purged, **({"already_purged": already} if already else {}),
                    **({"failed": failed} if failed else {})})  # fmt: skip
    else:
        out.print(f"purged {len(purged)} item(s)")
    if len(purged) < len(outcomes):
        raise typer.Exit(2)


def _purge_pictrs(workspace, chosen: list[dict], settings, yes: bool) -> None:
    from mirror_scan.clients.pictrs import Pictrs
    from mirror_scan.errors import MirrorScanError
    from mirror_scan.moderation.actions import build_lemmy

    if not settings.pictrs_url or not settings.pictrs_api_key:
        raise UsageError(
            "pict-rs is not configured", hint="set [pictrs] url and api_key, then `mirror-scan pictrs check`"
        )
    client = Pictrs(settings.pictrs_url, settings.pictrs_api_key)
    known = {e["id"]: workspace.ledger.objects.aliases_of(e["id"]) for e in chosen}
    unknown = [e["sha256"] for e in chosen if not known[e["id"]]]
    found_by_sha = client.aliases_for(unknown) if unknown else {}  # /internal/hashes, where no repo named them
    plan = [(e, known[e["id"]] or found_by_sha.get(e["sha256"], [])) for e in chosen]
    for e, found in plan:
        out.print(f"{e['id']}: {', '.join(found) if found else 'no alias found in pict-rs'}")
    # One purge per file: pict-rs removes every alias of the file it names (robinst/pict-rs src/lib.rs:1487).
    targets = [(e, found[0]) for e, found in plan if found]
    if not targets:
        out.print("nothing to purge in pict-rs")
        return
    if not yes and not confirm(
        f"Purge {len(targets)} file(s) ({sum(len(f) for _, f in plan)} alias(es)) from pict-rs? This deletes the "
        "files, their variants and records and cannot be undone.",
        default=False,
    ):
        raise typer.Exit(1)
    try:
        lemmy = build_lemmy(settings)  # Lemmy 1.0 purges through pict-rs and deletes its own rows too
    except MirrorScanError as error:
        err.print(f"note: the Lemmy bot is not used for the purge: {error}")
        lemmy = None
    with _ops(workspace) as ops:
        for e, alias in targets:
            done = ops.purge_from_pictrs(e["id"], alias, client, lemmy)
            (out if done.ok else err).print(f"{e['id']}: {alias}: {done.detail}")


@quarantine_app.command("export-hashes")
def q_export_hashes(
    fmt: Annotated[str, typer.Option("--format", help="txt (one sha256 per line) or csv.")] = "txt",
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The sha256 list of every held item, reviewed or not (restored items excluded), for this instance's
    own use. To share with others, use `mirror-scan hashlist export`: confirmed items only, with PDQ
    (re-encoded copies match) and md5, in formats other tools read."""
    if fmt not in ("txt", "csv"):
        raise UsageError(f"format {fmt!r} is not supported", hint="use txt or csv")
    with _reader(state, quarantine, config) as workspace:
        entries = [e for e in workspace.quarantine.entries() if e["state"] in EXPORTED_STATES]
    if fmt == "csv":
        out.print("sha256,size,quarantined_at")
        for e in entries:
            out.print(f"{e['sha256']},{e['size']},{e['quarantined_at']}")
    else:
        for sha in sorted({e["sha256"] for e in entries}):
            out.print(sha)


@quarantine_app.command("keygen")
def q_keygen(
    out_file: Annotated[Path, typer.Option("--out", help="Where the identity goes (a new file, 0600).")],
) -> None:
    """Make an age key pair for sealing the quarantine: the identity (AGE-SECRET-KEY-1...) into a new file
    only you can read, and the public key printed, for seal_to. Keep a copy of the identity offline:
    without it no sealed item can be restored, extracted or reported. age's own tools read it too
    (`age -d -i FILE data.age`)."""
    from mirror_scan.store.sealing import generate_identity

    recipient = generate_identity(out_file)
    out.print(f"wrote {out_file} (0600). Public key: {recipient}")
    out.print(f'set seal_to = "{recipient}" in the config of every process that quarantines, and '
              f'seal_identity = "{out_file}" where you restore (never in the watch daemon\'s); then '
              "`mirror-scan quarantine seal --all` seals what the quarantine already holds")  # fmt: skip


@quarantine_app.command("seal")
def q_seal(
    item_ids: Annotated[list[str] | None, typer.Argument(help="Item ids (default with --all: every item).")] = None,
    all_items: Annotated[bool, typer.Option("--all", help="Every item held in the clear.")] = False,
    yes: YesOpt = False,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Seal items held in the clear (a quarantine made before seal_to was set) to seal_to: each file sealed,
    read back and verified, recorded, and only then its clear copy removed; safe to interrupt and run
    again. Works while the watch daemon runs (items being moved are left for the next run). The identity
    is not needed."""

    if not item_ids and not all_items:
        raise UsageError("name items to seal, or --all")
    done: dict[str, list] = {"sealed": [], "skipped": [], "failed": []}
    with _writer(state, quarantine, config, quiet=True, need_state=True) as workspace:
        content = workspace.quarantine.journal.content
        if content.sealer is None:
            raise UsageError(
                "seal_to is not set: there is no key to seal to",
                hint="`mirror-scan quarantine keygen --out FILE` makes one and says what to set",
            )
        rows = workspace.ledger.items()
        if item_ids:
            wanted = {item_id for typed in item_ids for item_id in _known_id(workspace, typed)}
            rows = [r for r in rows if r.id in wanted]
        plain = [r for r in rows if not r.sealed_to and r.state not in ("purged", "quarantining", "restoring")]
        if not plain:
            if json_out:
                print_json(done)
            else:
                out.print("nothing to seal")
            return
        if (
            all_items
            and not yes
            and not json_out
            and not confirm(
                f"Seal {len(plain)} item(s) to {content.sealer.recipient}? Only its identity opens them afterwards.",
                default=True,
            )
        ):
            raise typer.Exit(1)
        for row in with_progress(plain, "sealing", json_out):
            try:
                with workspace.quarantine.item_lock(row.id, wait_s=5.0):
                    current_row = workspace.ledger.item(row.id)
                    if current_row is None or workspace.ledger.unfinished_moves(row.id) or current_row.sealed_to:
                        done["skipped"].append({"id": row.id, "why": "being moved, or sealed meanwhile"})
                        continue
                    workspace.quarantine.restorer.checked_item(row.id)  # a metadata file that disagrees refuses
                    content.seal(current_row)
                    workspace.quarantine.journal.sync_meta(row.id)
                done["sealed"].append(row.id)
            except (MirrorScanError, OSError) as error:
                done["failed"].append({"id": row.id, "why": str(error).splitlines()[0]})
                err.print(f"error: {row.id}: {str(error).splitlines()[0]}", markup=False)
    if json_out:
        print_json(done)
    else:
        out.print(f"sealed {len(done['sealed'])} item(s) to {content.sealer.recipient}; "
                  f"{len(done['skipped'])} left for the next run, {len(done['failed'])} failed")  # fmt: skip
    if done["failed"]:
        raise typer.Exit(2)


@quarantine_app.command("reindex")
def q_reindex(
    mirror_root: ImportRootOpt = None,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Index items the ledger does not know from their metadata files (after losing the state database).
    Items the ledger knows stay as it records them; a metadata file that disagrees is reported."""
    import os

    with _writer(state, quarantine, config, rebuilding=True) as workspace:
        count, problems = workspace.quarantine.reindex(os.fsencode(mirror_root.resolve()) if mirror_root else None)
    for problem in problems:
        err.print(f"skipped: {problem}")
    out.print(f"indexed {count} item(s)")


@allowlist_app.command("list")
def a_list(
    state: StateOpt = None, quarantine: QuarantineOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False
) -> None:
    """sha256s that are never flagged."""
    with _reader(state, quarantine, config, need_state=False) as workspace:
        rows = workspace.ledger.allowlist()
    if json_out:
        print_json(
            [{"sha256": s, "added": dt.datetime.fromtimestamp(a, dt.UTC).isoformat(), "note": n} for s, a, n in rows]
        )
        return
    for sha, added, note in rows:
        out.print(f"{sha}  {dt.datetime.fromtimestamp(added, dt.UTC):%Y-%m-%d %H:%M}  {note or ''}")


def _sha(text: str) -> str:
    sha = text.strip().lower()
    if not SHA256.match(sha):
        raise UsageError(f"{text!r} is not a sha256", hint="64 hex characters, as in `mirror-scan report`")
    return sha


@allowlist_app.command("add")
def a_add(
    sha256: str,
    note: Annotated[str, typer.Option(help="Why (shown in `allowlist list`).")] = "",
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Never flag these bytes again; recorded flagged verdicts for them become clean."""
    with _writer(state, quarantine, config, rebuilding=True) as workspace:
        workspace.ledger.allow(_sha(sha256), note=note or "added by hand")
    out.print(f"allowlisted {sha256.lower()}")


@allowlist_app.command("remove")
def a_remove(sha256: str, state: StateOpt = None, quarantine: QuarantineOpt = None, config: ConfigOpt = None) -> None:
    """Stop allowlisting these bytes (takes effect at the next scan or rescore)."""
    with _writer(state, quarantine, config, rebuilding=True) as workspace:
        removed = workspace.ledger.disallow(_sha(sha256))
    if not removed:
        raise UsageError(f"{sha256} is not on the allowlist")
    out.print(f"removed {sha256.lower()} from the allowlist")


def register(app: typer.Typer) -> None:
    app.add_typer(quarantine_app, name="quarantine")
    app.add_typer(allowlist_app, name="allowlist")


__all__ = ["register"]
