"""`state check`, `state recover`, `state rebuild`: the ledger itself."""

from __future__ import annotations

import os
import time

import typer

from mirror_scan.cli.console import confirm, err, out, print_json
from mirror_scan.cli.options import (
    ConfigOpt,
    IdentityOpt,
    ImportRootOpt,
    JsonOpt,
    QuarantineOpt,
    StateOpt,
    YesOpt,
    open_writer,
    require_state,
)
from mirror_scan.cli.views import with_progress
from mirror_scan.errors import UsageError
from mirror_scan.settings import resolve

# The states in which an item keeps its bytes (a purge deletes them; a move in flight is its owner's).
BYTES_KEPT = ("quarantined", "upstream_pending", "restored")
state_app = typer.Typer(help="Check, recover or rebuild the state database.", no_args_is_help=True)


@state_app.command("check")
def check(
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    identity: IdentityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Read-only health check of the state database (SQLite's integrity check, tables, unfinished moves) and
    of the bytes each item holds: present and hashing to what was written; with an identity (--identity or
    seal_identity), every sealed item decrypted in memory and checked against its sha256."""
    from mirror_scan.app.workspace import refuse_lost_state
    from mirror_scan.store.content import ItemContent
    from mirror_scan.store.ledger import Ledger, StateDamaged
    from mirror_scan.store.sealing import Identity

    settings = resolve({"state": state, "quarantine": quarantine, "seal_identity": identity}, config)
    require_state(settings)
    refuse_lost_state(settings)
    opener = Identity.from_file(settings.seal_identity) if settings.seal_identity else None
    item_problems: list[str] = []
    try:
        with Ledger(settings.state, readonly=True) as ledger:
            problems = ledger.check()
            moves = ledger.unfinished_moves()
            files, rows = ledger.file_count(), ledger.items()
            items, sealed = len(rows), sum(1 for r in rows if r.sealed_to)
            content = ItemContent(settings.quarantine / "items", ledger)
            busy = {m.item for m in moves}
            for row in with_progress([r for r in rows if r.state in BYTES_KEPT and r.id not in busy],
                                     "checking items", json_out):  # fmt: skip
                problem = content.problem(row, opener)
                if problem:
                    item_problems.append(f"item {row.id}: {problem}")
    except StateDamaged:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to read it is the answer
        raise UsageError(f"state database {settings.state} cannot be read: {error}") from None
    if problems:
        for problem in problems:
            err.print(f"problem: {problem}")
        raise UsageError(
            f"state database {settings.state} is damaged",
            hint=f"`mirror-scan state rebuild --state {settings.state}` rebuilds it from the quarantine's metadata",
        )
    opened = "decrypted and verified" if opener else "not decrypted: give --identity to check that they open"
    if json_out:
        print_json({"state": str(settings.state), "ok": not item_problems, "files": files, "items": items,
                    "sealed_items": sealed, "sealed_decrypted": bool(opener and sealed),
                    "item_problems": item_problems, "unfinished_moves": len(moves)})  # fmt: skip
    else:
        for problem in item_problems:
            err.print(f"problem: {problem}", markup=False)
        out.print(f"{settings.state}: {'ok' if not item_problems else 'ITEMS DAMAGED'}, {files} file(s), {items} "
                  f"quarantine item(s), {len(moves)} unfinished move(s)"
                  + (f"; {sealed} sealed ({opened})" if sealed else ""))  # fmt: skip
    if item_problems:
        raise typer.Exit(2)


@state_app.command("recover")
def recover(state: StateOpt = None, quarantine: QuarantineOpt = None, config: ConfigOpt = None) -> None:
    """Finish or roll back every move whose process died (every writing command does this when it starts;
    moves a live process owns are left to it)."""
    settings = resolve({"state": state, "quarantine": quarantine}, config)
    require_state(settings, hint="nothing to recover; check --state")
    from mirror_scan.store.recovery import NOT_RECOVERED

    with open_writer(settings, quiet=True, recover=False) as workspace:
        notes = workspace.quarantine.recover()
    left = [note for note in notes if NOT_RECOVERED in note]
    for note in notes:
        if note in left:
            err.print(f"left: {note}", markup=False)
        else:
            out.print(f"recovered: {note}")
    out.print(f"{len(notes) - len(left)} move(s) recovered" + (f", {len(left)} left for later" if left else ""))
    if left:
        raise typer.Exit(1)


@state_app.command("rebuild")
def rebuild(
    mirror_root: ImportRootOpt = None,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    yes: YesOpt = False,
) -> None:
    """Start a new state database: the damaged one is kept beside it (renamed), the quarantine index and
    the allowlist (restored items) come back from the items' metadata files, and the next scan reads
    every file again."""
    from mirror_scan.kinds import ItemState

    settings = resolve({"state": state, "quarantine": quarantine}, config)
    if not settings.quarantine.is_dir():
        raise UsageError(f"no quarantine at {settings.quarantine}", hint="pass --quarantine DIR")
    if settings.state.exists() and not yes:
        if not confirm(f"Set {settings.state} aside and rebuild it from {settings.quarantine}?", default=False):
            raise typer.Exit(1)
    kept = None
    if settings.state.exists():
        kept = settings.state.with_name(f"{settings.state.name}.damaged-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            source = settings.state.with_name(settings.state.name + suffix)
            if source.exists():
                os.replace(source, kept.with_name(kept.name + suffix))
    with open_writer(settings, quiet=True, recover=False, rebuilding=True) as workspace:
        count, problems = workspace.quarantine.reindex(os.fsencode(mirror_root.resolve()) if mirror_root else None)
        restored = [i for i in workspace.ledger.items() if i.state == ItemState.RESTORED]
        for item in restored:
            workspace.ledger.allow(item.sha256, note=f"restored from quarantine item {item.id} (rebuilt)")
    for problem in problems:
        err.print(f"skipped: {problem}")
    if kept:
        out.print(f"the old database is kept as {kept}")
    out.print(f"rebuilt {settings.state}: {count} quarantine item(s), {len(restored)} allowlisted; scan to refill it")


def register(app: typer.Typer) -> None:
    app.add_typer(state_app, name="state")
