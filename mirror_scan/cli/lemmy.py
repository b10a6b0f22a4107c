"""`lemmy check` and `lemmy ban`: what the attribution sources and the moderation bot can do, and the one
action that is never automatic."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mirror_scan.cli.console import confirm, err, out, print_json
from mirror_scan.cli.options import STATE_HINT, ConfigOpt, JsonOpt, QuarantineOpt, StateOpt, YesOpt, require_state
from mirror_scan.errors import MirrorScanError, UsageError
from mirror_scan.moderation.grants import SECRET_COLUMNS
from mirror_scan.settings import resolve

lemmy_app = typer.Typer(
    help="Lemmy and pict-rs: check attribution sources and the moderation bot; ban an uploader.",
    no_args_is_help=True,
)


def _check_sources(settings) -> list[dict[str, Any]]:
    from mirror_scan.moderation.actions import Webhook, build_attributor, build_lemmy
    from mirror_scan.moderation.attribution import LemmyRepo

    checks: list[dict[str, Any]] = []

    def record(name: str, configured: bool, fn) -> None:
        if not configured:
            checks.append({"source": name, "ok": None, "detail": "not configured"})
            return
        try:
            checks.append({"source": name, "ok": True, "detail": fn()})
        except MirrorScanError as error:
            checks.append({"source": name, "ok": False, "detail": str(error).splitlines()[0], "hint": error.hint})

    try:
        attributor = build_attributor(settings)
    except MirrorScanError as error:
        raise UsageError(str(error), hint=error.hint) from None

    def pictrs_db() -> str:
        src = attributor.pictrs_repo.source  # type: ignore[union-attr]
        with src.connect() as conn:
            src.require_tables(conn, ("hashes", "aliases", "variants"), "pict-rs's repo")
            count = src.rows(conn, "SELECT count(*) AS n FROM hashes")[0]["n"]
            exposed = src.readable_secrets(conn, SECRET_COLUMNS["pictrs"])
        return _with_secrets(f"{src.shown}: pict-rs repo, {count} stored files", exposed, "pict-rs")

    def lemmy_db() -> str:
        src = attributor.lemmy_repo.source  # type: ignore[union-attr]
        with src.connect() as conn:
            src.require_tables(conn, ("person", "post", "comment", "community", "private_message"), "Lemmy's database")
            shape = LemmyRepo.shape(src.columns(conn))
            exposed = src.readable_secrets(conn, SECRET_COLUMNS["lemmy"])
        return _with_secrets(f"{src.shown}: Lemmy schema {shape}; the role can read what attribution needs",
                             exposed, "lemmy")  # fmt: skip

    def pictrs_api() -> str:
        result = attributor.pictrs_api.check()  # type: ignore[union-attr]
        return f"{result['url']}: API key accepted (fallback: aliases by sha256)"

    def lemmy_api() -> str:
        lemmy = build_lemmy(settings)
        assert lemmy is not None
        api, version = lemmy.detect()
        me = lemmy.me()
        rights = (
            "admin: may remove, report and ban anywhere"
            if me["admin"]
            else (
                f"moderator of {', '.join(me['moderates'])}"
                if me["moderates"]
                else "neither admin nor moderator: may report and send messages only"
            )
        )
        notes = [f"{settings.lemmy_url}: Lemmy {version} (/api/{api}), bot {me['name']} logged in, {rights}"]
        if _cleartext(settings.lemmy_url):
            notes.append("WARNING: plain http to another host: the bot's password and token travel unencrypted")
        for admin in settings.lemmy_notify:
            lemmy.person_id(admin)
        if settings.lemmy_notify:
            notes.append(f"notify: {', '.join(settings.lemmy_notify)} found")
        return "; ".join(notes)

    record("pict-rs database", bool(settings.pictrs_database_url), pictrs_db)
    record("pict-rs API", bool(settings.pictrs_url and settings.pictrs_api_key), pictrs_api)
    record("Lemmy database", bool(settings.lemmy_database_url), lemmy_db)
    record("Lemmy API (bot)", bool(settings.lemmy_url), lemmy_api)
    checks.append(
        {
            "source": "webhook",
            "ok": None,
            "detail": f"{Webhook(settings.notify_webhook).shown} (not called by a check)"
            if settings.notify_webhook
            else "not configured",
        }
    )
    actions = "; ".join(f"{label}: {', '.join(names)}" for label, names in settings.actions.items())
    checks.append(
        {
            "source": "actions",
            "ok": None,
            "detail": (actions or "none (attribution only)") + (" [dry run]" if settings.actions_dry_run else ""),
        }
    )
    return checks


def _with_secrets(detail: str, exposed: list[str], which: str) -> str:
    """A check that passes, but says loudly what the role can read and must not."""
    if not exposed:
        return detail + "; no secret column readable"
    return (
        f"{detail}; WARNING: this role can read secrets: {', '.join(exposed)} (delete tokens, signing keys, "
        f"password hashes): grant only the columns `mirror-scan lemmy grants --{which}` prints"
    )


def _cleartext(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "") not in ("localhost", "127.0.0.1", "::1")


@lemmy_app.command("check")
def check(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Say what mirror-scan can reach (pict-rs's and Lemmy's databases, pict-rs's API, Lemmy's API with the
    bot account), which versions, and what the bot may do. Exit 1 if something configured fails."""
    settings = resolve({}, config)
    checks = _check_sources(settings)
    if json_out:
        print_json(checks)
    else:
        for c in checks:
            mark = {True: "ok  ", False: "FAIL", None: "    "}[c["ok"]]
            out.print(f"{mark} {c['source']}: {c['detail']}")
            if c.get("hint"):
                out.print(f"       hint: {c['hint']}")
        if all(c["detail"] == "not configured" for c in checks[:4]):
            out.print("nothing to check: set [pictrs] database_url, [lemmy] database_url and url (README: Lemmy)")
    if any(c["ok"] is False for c in checks):
        raise typer.Exit(1)


@lemmy_app.command("grants")
def grants(
    pictrs: Annotated[bool, typer.Option("--pictrs", help="The grants in pict-rs's database.")] = False,
    lemmy: Annotated[
        str | None, typer.Option("--lemmy", help="The grants in Lemmy's database: 0.19.0-0.19.3, 0.19.4+ or 1.0.")
    ] = None,
    role: Annotated[str, typer.Option("--role", help="The read-only role's name.")] = "mirror_scan_ro",
) -> None:
    """The SQL that gives a read-only role exactly the columns attribution reads (never a delete token,
    signing key, password hash or e-mail). Run it as the databases' owner; `lemmy check` then confirms."""
    import re

    from mirror_scan.moderation.grants import LEMMY_SHAPES, PICTRS_COLUMNS, grant_sql, lemmy_columns, lemmy_shape

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise UsageError(f"--role {role!r}", hint="a plain PostgreSQL role name (lowercase letters, digits, _)")
    if not pictrs and lemmy is None:
        raise UsageError("choose --pictrs or --lemmy VERSION", hint=f"VERSION: {', '.join(LEMMY_SHAPES)}")
    shape = None if lemmy is None else lemmy_shape(lemmy)
    if lemmy is not None and shape is None:
        raise UsageError(
            f"--lemmy {lemmy!r}: not a Lemmy version whose tables are known (0.19.x or 1.0.x)",
            hint=f"the version your instance runs, e.g. 0.19.5, or one of {', '.join(LEMMY_SHAPES)} "
            "(`mirror-scan lemmy check` says which one runs)",
        )
    if pictrs:
        out.print(f"-- in pict-rs's database\n{grant_sql(PICTRS_COLUMNS, role)}")
    if shape is not None:
        sql = grant_sql(lemmy_columns(shape), role)
        out.print(f"-- in Lemmy's database (Lemmy {lemmy}: its {shape} tables)\n{sql}")


@lemmy_app.command("ban")
def ban(
    item_id: Annotated[str, typer.Argument(help="The quarantine item whose uploader is banned.")],
    reason: Annotated[
        str | None, typer.Option("--reason", help="Shown in the modlog (default names the item).")
    ] = None,
    undo: Annotated[bool, typer.Option("--undo", help="Lift a ban made by this command.")] = False,
    yes: YesOpt = False,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ban the uploader of a quarantined image from the instance (never automatic): shows who, asks, bans
    with a reason naming the item, and records it in the item's history."""
    from mirror_scan.app.item_ops import ItemOps, default_ban_reason, shell_by
    from mirror_scan.app.workspace import Workspace
    from mirror_scan.moderation.actions import build_lemmy
    from mirror_scan.moderation.attribution import sole_uploader, summary

    settings = resolve({"state": state, "quarantine": quarantine}, config)
    require_state(settings, hint=STATE_HINT)  # acts on recorded items: a wrong path is said, nothing made
    with Workspace.writer(settings) as workspace:
        from mirror_scan.store.selection import expand_ids

        (item_id,) = expand_ids([item_id], (row.id for row in workspace.ledger.items()))
        item = workspace.ledger.item(item_id)
        if item is None:
            raise UsageError(f"no quarantine item {item_id}", hint="see `mirror-scan quarantine list`")
        data = workspace.ledger.follow_ups.attribution(item_id) or {}
        if not any(u.get("uploader") for u in data.get("uploads", [])):
            raise UsageError(
                f"item {item_id} has no known uploader",
                hint=f"run `mirror-scan quarantine attribute {item_id}` first",
            )
        person = sole_uploader(data)
        if person is None:
            raise UsageError(f"item {item_id} has several uploaders; ban them in Lemmy itself")
        who = f"{person['name']}@{person.get('instance') or '?'} (person {person['id']})"
        brief = summary(data)
        lemmy = build_lemmy(settings)  # before asking: a question that cannot be acted on wastes a decision
        if lemmy is None:
            raise UsageError("[lemmy] url and the bot account are not configured", hint="see `mirror-scan lemmy check`")
        verb = "Unban" if undo else "Ban"
        out.print(f"{verb} {who}: uploader of item {item_id} ({brief['where']})")
        if not yes and not confirm(f"{verb} {who} from the instance?", default=False):
            raise typer.Exit(1)
        with ItemOps(workspace, shell_by(), say=lambda note: out.print(note)) as ops:
            done = ops.ban(item_id, reason or default_ban_reason(item_id), lemmy, undo=undo)
        if not done.ok:
            err.print(f"error: {done.detail}")
            raise typer.Exit(2)
    out.print(f"{'unbanned' if undo else 'banned'} {who}")


@lemmy_app.command("retry")
def retry(
    item_id: Annotated[str | None, typer.Argument(help="One item (default: every item).")] = None,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Retry attribution and moderation actions now: those waiting for a backoff, and those Lemmy refused
    (after giving the bot the rights it lacked)."""
    from mirror_scan.app.workspace import Workspace

    settings = resolve({"state": state, "quarantine": quarantine}, config)
    require_state(settings, hint=STATE_HINT)  # acts on recorded items: a wrong path is said, nothing made
    with Workspace.writer(settings) as workspace:
        count = workspace.ledger.follow_ups.retry_followups(item_id)
        notes = workspace.run_follow_ups(say=lambda note: out.print(note))
    if not count:
        out.print("nothing is waiting or refused")
    elif not notes:
        out.print(f"{count} follow-up(s) queued; none could run here (see `mirror-scan lemmy check`)")


def register(app: typer.Typer) -> None:
    app.add_typer(lemmy_app, name="lemmy")


__all__ = ["register"]
