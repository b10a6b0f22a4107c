"""`canary`: a harmless test picture that proves the whole chain (upload or arrival -> flagged -> quarantined
-> removed upstream -> attributed -> actions -> notified) without waiting for real abuse."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from mirror_scan.cli.console import out, print_json
from mirror_scan.cli.options import (
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    PolicyOpt,
    QuarantineOpt,
    RcloneOpt,
    RemoteOpt,
    SeverityOpt,
    StateOpt,
    open_reader,
)
from mirror_scan.errors import UsageError
from mirror_scan.settings import resolve

canary_app = typer.Typer(
    help="A harmless picture every mirror-scan flags (like EICAR for virus scanners): make it, upload it, "
    "follow it through every step.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(canary_app, name="canary")

    @app.command("selftest")
    def selftest(
        model: ModelOpt = None,
        policy: PolicyOpt = None,
        severity: SeverityOpt = None,
        device: DeviceOpt = None,
        remote: RemoteOpt = None,
        rclone: RcloneOpt = None,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Run the chain locally, without the instance: the configured model and policy scan a temporary
        mirror holding the canary and a benign picture; the canary must be flagged, quarantined (verified)
        and restored byte-identical. The configured remote is listed (nothing written or removed), Lemmy is
        asked who the bot is, and the canary's actions are planned, never sent. Each stage with its time;
        exit 0 when every stage passed or was skipped, 2 otherwise. Your state and quarantine are untouched."""
        from mirror_scan.app.selftest import SelfTest

        settings = resolve(
            {"model": model, "policy": policy, "severity": severity, "device": device, "remote": remote,
             "rclone": rclone},
            config,
        )  # fmt: skip
        stages = SelfTest(settings).run()
        if json_out:
            print_json([s.as_json() for s in stages])
        else:
            for stage in stages:
                mark = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}[stage.outcome]
                out.print(f"{mark:8s} {stage.seconds * 1000:8.0f} ms  {stage.name}: {stage.detail}")
        if any(s.outcome == "failed" for s in stages):
            raise typer.Exit(2)


@canary_app.command("make")
def make(
    path: Annotated[Path, typer.Argument(help="Where to write the canary picture.")],
    fmt: Annotated[str, typer.Option("--format", help="png or jpeg.")] = "png",
    force: Annotated[bool, typer.Option("--force", help="Replace a file that exists.")] = False,
) -> None:
    """Write the canary: abstract shapes and "MIRROR-SCAN CANARY" in the pixels. Its hashes are on a built-in
    list, so scan, watch, serve and bucket scan flag it whatever the model says (label "canary"; choose
    what follows with `[actions] canary = [...]`). Upload it through Lemmy, then `mirror-scan canary status`.
    It is never exported to hash lists."""
    from mirror_scan.atomic import atomic_write_bytes
    from mirror_scan.lists.canary import canary_bytes

    kind = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}.get(fmt.lower())
    if kind is None:
        raise UsageError(f"--format {fmt!r}", hint="png or jpeg")
    if path.exists() and not force:
        raise UsageError(f"{path} exists; nothing written", hint="pass --force, or another path")
    atomic_write_bytes(path, canary_bytes(kind), 0o644)
    out.print(f"wrote the mirror-scan canary to {path}: upload it, then run `mirror-scan canary status`")


@canary_app.command("status")
def status(
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Every canary seen, newest first, with the time of each step it went through (quarantined, removed
    upstream or pending, attributed, each action and notice) and what failed."""
    from mirror_scan.lists.canary import CANARY_LIST

    with open_reader(resolve({"state": state, "quarantine": quarantine}, config)) as workspace:
        seen = []
        for entry in workspace.quarantine.entries():
            if (entry["reason"] or {}).get("hash_list") != CANARY_LIST:
                continue
            steps = _trail(workspace, entry)
            # Arrival and verdict come first whatever their clocks say (a file row is stamped when its
            # batch commits, after the quarantine's own history line); the rest in time order.
            steps.sort(key=lambda s: (s["step"] not in ARRIVAL, s["at"] or ""))
            once: dict[str, dict] = {}  # an action is in the item's history and in the follow-up journal
            for step in steps:
                kept = once.setdefault(step["step"], step)
                if step.get("error") and not kept.get("error"):
                    once[step["step"]] = step
            steps = list(once.values())
            keep = ("id", "state", "source", "quarantined_at", "original")
            seen.append({**{key: entry[key] for key in keep}, "steps": steps})
    seen.sort(key=lambda c: c["quarantined_at"], reverse=True)
    if json_out:
        print_json(seen)
        return
    if not seen:
        out.print("no canary seen yet: `mirror-scan canary make canary.png`, upload it, and look again")
        return
    for canary in seen:
        out.print(f"{canary['id']}  {canary['state']}  from {canary['source']}: {canary['original']}")
        for step in canary["steps"]:
            failed = f"  ({step['error']})" if step.get("error") else ""
            out.print(f"  {(step['at'] or '?')[:19].replace('T', ' ')}  {step['step']}{failed}")


ARRIVAL = ("landed", "flagged", "validated (upload rejected)")


def _iso(seconds: float | None) -> str | None:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds") if seconds else None


def _trail(workspace, entry: dict) -> list[dict]:
    """Each step a canary went through, with its time: landed (or validated, for an upload) and flagged
    (the ledger's file row), quarantined and what its history says, removed upstream (the quarantine move),
    and each follow-up (attribution, actions, notices) with its state and error."""
    from mirror_scan.kinds import MoveKind, Step
    from mirror_scan.moderation.catalogue import describe_action
    from mirror_scan.store.items import file_key

    ledger = workspace.ledger
    row = ledger.item(entry["id"])
    steps: list[dict] = []
    if row is not None:
        times = ledger.file_times(file_key(row)) if file_key(row) else None
        if entry["source"] == "upload":
            steps.append({"step": "validated (upload rejected)", "at": _iso(row.created)})
        elif times is not None:
            steps.append({"step": "landed", "at": _iso(times[0])})
            if times[1]:
                steps.append({"step": "flagged", "at": _iso(times[1])})
        for move in ledger.moves_of(row.id):
            if move.kind != MoveKind.QUARANTINE or not row.remote:
                continue
            if move.step == Step.DONE:
                steps.append({"step": f"removed upstream from {row.remote}", "at": _iso(move.updated)})
            elif move.step != Step.ROLLED_BACK:
                steps.append({"step": f"upstream removal pending ({move.step})", "at": _iso(move.updated),
                              **({"error": move.note} if move.note else {})})  # fmt: skip
    steps += [{"step": h["event"], "at": h["at"]} for h in workspace.quarantine.history(entry["id"])]
    for f in ledger.follow_ups.followups(entry["id"]):
        steps.append({"step": f"{describe_action(f.action, f.target)}: {f.state}", "at": _iso(f.updated),
                      **({"error": f.error} if f.error else {})})  # fmt: skip
    return steps
