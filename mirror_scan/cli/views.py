"""How quarantine items are shown: one line each, labels by gravity, paths shortened to fit, bulk work
with a progress display. Pure formatting (and rich's progress), no state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mirror_scan.cli.console import current, err


def count_by(entries: list[dict], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in entries:
        counts[str(e[key])] = counts.get(str(e[key]), 0) + 1
    return counts


def item_reason(reason) -> str:
    from mirror_scan.scan.decide import short_reason

    return short_reason(reason) if reason else ""


def label_text(labels: list[str]) -> str:
    """The gravest label and how many more (csam+2), "-" for none; "subject" (a context label) is left out."""
    from mirror_scan.scan.decide import gravest_first

    shown = gravest_first(labels)
    if not shown:
        return "-"
    return (shown[0] + (f"+{len(shown) - 1}" if len(shown) > 1 else ""))[:12]


STATE_SHORT = {"upstream_pending": "pending", "quarantining": "moving"}


def fit_left(text: str, room: int) -> str:
    """A path that fits `room` columns: its end kept (the file name), the start replaced by an ellipsis."""
    room = max(room, 8)
    return text if len(text) <= room else "\u2026" + text[-(room - 1) :]


@contextmanager
def counting(total: int, what: str, quiet: bool) -> Iterator[Callable[[], None] | None]:
    """A progress display for `total` steps at a terminal (more than a few): yields the step callback, or
    None where there is nothing to show (quiet, few steps, not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if quiet or total < 5 or not err.is_terminal:
        yield None
        return
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=current().err, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


def with_progress(entries: list[dict], what: str, quiet: bool):
    """Bulk work over `entries`, each counted on the display `counting` shows."""
    with counting(len(entries), what, quiet) as tick:
        for entry in entries:
            yield entry
            if tick:
                tick()


def _when(iso_at: str | None) -> str:
    return (iso_at or "?").replace("T", " ").replace("+00:00", " UTC")


def _attribution_text(attribution: dict | None) -> str:
    from mirror_scan.moderation.attribution import summary

    if not attribution:
        return "not looked up (attribution needs [pictrs] or [lemmy] in the config)"
    brief = summary(attribution)
    return f"{brief['uploader']}; used in: {brief['where']}"


def item_summary(record: dict) -> list[str]:
    """`quarantine show` without --json: what a person reads first (the record, `item_record`, in a few
    lines); the whole of it is --json's. Never anything from the file's content."""
    ledger = record.get("ledger") or {}
    verdict = record.get("verdict") or {}
    lines = [
        f"item       {record.get('id')}",
        f"state      {ledger.get('state') or record.get('state')} (quarantined {_when(record.get('quarantined_at'))})",
        f"file       {ledger.get('original') or record.get('original')} ({record.get('size', '?')} bytes)",
    ]
    if ledger.get("remote"):
        lines.append(f"upstream   {ledger['remote']}/{ledger.get('key') or ''}")
    lines.append(f"sha256     {ledger.get('sha256') or record.get('sha256')}")
    sealed = ledger.get("sealed_to") or (record.get("sealed") or {}).get("to")
    lines.append(f"at rest    {'sealed to ' + sealed if sealed else 'in the clear (0600)'}")
    labels = [x for x in verdict.get("labels", []) if x != "match"]
    frames = f", frame {verdict['frame']} of {verdict['frames']}" if verdict.get("frames", 1) > 1 else ""
    lines.append(f"verdict    {'flagged' if verdict.get('flagged') else 'not flagged'}: "
                 f"{', '.join(labels) or '-'}{frames}")  # fmt: skip
    for group, checks in (verdict.get("checks") or {}).items():
        for c in checks if isinstance(checks, list) else []:
            lines.append(f"             {group}: {c.get('prompt')} {c.get('similarity', 0):+.3f} "
                         f"(threshold {c.get('threshold', 0):+.3f})")  # fmt: skip
    if record.get("hash_match") or verdict.get("hash_match"):
        lines.append(f"hash list  {record.get('hash_match') or verdict.get('hash_match')}")
    lines.append(f"made by    model {record.get('model_id', '?')}, policy {record.get('policy_id', '?')}, "
                 f"severity {record.get('severity', 0):+g}")  # fmt: skip
    lines.append(f"uploader   {_attribution_text(record.get('attribution'))}")
    if record.get("hold"):
        lines.append(f"hold       {record['hold']['says']}")
    if ledger.get("objects"):
        lines.append(f"objects    {len(ledger['objects'])} more of the upload held with it "
                     f"({', '.join(sorted({o.get('role') or '?' for o in ledger['objects']}))})")  # fmt: skip
    for a in record.get("actions", []):
        lines.append(f"action     {a['action']}: {a['state']}" + (f" ({a['error']})" if a.get("error") else ""))
    for d in record.get("decisions", []):
        note = f" - {d['note']}" if d.get("note") else ""
        lines.append(f"decision   {_when(d['at'])}  {d['decision']} by {d['who']} via {d['via']}: {d['outcome']}"
                     f"{note}")  # fmt: skip
    lines.append("history")
    lines += [f"  {_when(h['at'])}  {h['state']}" for h in record.get("history", [])]
    lines.append(f"the whole record: mirror-scan quarantine show {record.get('id')} --json")
    return lines
