"""`console`: the review console in a browser (beside watch and serve, on the same state), and its people:
local accounts and API tokens."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from mirror_scan.cli.console import err, interactive, out, print_json, setup_logging
from mirror_scan.cli.options import ConfigOpt, JsonOpt, QuarantineOpt, StateOpt, open_reader, open_writer, parse_listen
from mirror_scan.errors import UsageError
from mirror_scan.settings import resolve

console_app = typer.Typer(invoke_without_command=True)  # its help is the callback's docstring
user_app = typer.Typer(help="Local console accounts (where Lemmy logins are not used).", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for scripts (`Authorization: Bearer`).", no_args_is_help=True)
console_app.add_typer(user_app, name="user")
console_app.add_typer(token_app, name="token")

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        raise UsageError(f"{name!r} is not a name", hint="letters, digits, '_', '.' and '-', at most 64")
    return name


@console_app.callback()
def console(
    ctx: typer.Context,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT (default [console] listen, 127.0.0.1:8731).")
    ] = None,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the review console (`console --listen 127.0.0.1:8731`): the quarantine queue, each item's
    context (never the picture), restore, confirm and ban, who decided what, a dashboard. Put it behind the
    instance's reverse proxy with TLS (docs/console.md); set [console] trusted_proxies to the proxy's
    address. People log in with their Lemmy account (admins, and moderators for their communities' items)
    or with a local account (`console user add NAME`); scripts use `console token create NAME`."""
    if ctx.invoked_subcommand is not None:
        return
    setup_logging(events=True)
    from mirror_scan.moderation.actions import build_lemmy
    from mirror_scan.review.people import lemmy_login
    from mirror_scan.review.web import Console, run_console

    settings = resolve({"state": state, "quarantine": quarantine, "console_listen": listen}, config)
    host, port = parse_listen(settings.console_listen)
    login = lemmy_login(settings.lemmy_url) if settings.lemmy_url and settings.console_lemmy_login else None
    with open_reader(settings) as workspace:
        users = workspace.ledger.reviews.users()
        tokens = workspace.ledger.reviews.tokens()
    if login is None and not users and not tokens:
        raise UsageError(
            "nobody could use the console: no local account, no API token and no Lemmy login",
            hint="add one with `mirror-scan console user add NAME` (or `console token create NAME` for scripts), "
            "or set [lemmy] url",
        )
    if login is None and not users:
        err.print("note: only API tokens can use this console (no local account, no Lemmy login): the pages "
                  "need `mirror-scan console user add NAME`", markup=False)  # fmt: skip
    if settings.lemmy_url:
        try:
            build_lemmy(settings)
        except Exception as error:  # bans need the bot: said now, the console still serves  # noqa: BLE001
            err.print(f"note: bans from the console will be refused: {error}")
    console_service = Console(settings, lemmy_login=login)
    run_console(
        console_service, host, port, ready=lambda bound: err.print(f"console listening on http://{host}:{bound}/")
    )
    err.print("console stopped")


def _password(password_file: Path | None) -> str:
    env = os.environ.get("MIRROR_SCAN_CONSOLE_PASSWORD")
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise UsageError(f"password file {password_file} cannot be read: {error.strerror}") from None
    elif env:
        text = env.strip()
    elif interactive():
        text = getpass.getpass("Password: ")
        if text != getpass.getpass("Again: "):
            raise UsageError("the two passwords differ")
    else:
        raise UsageError("no password given", hint="use --password-file FILE or MIRROR_SCAN_CONSOLE_PASSWORD")
    if len(text) < 12 or len(set(text)) < 6:
        raise UsageError("a console password has at least 12 characters, and at least 6 different ones")
    return text


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    password_file: Annotated[
        Path | None, typer.Option("--password-file", help="A file holding the password (else asked at a terminal).")
    ] = None,
    state: StateOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Add a local account, or set its password (argon2-hashed; never on the command line). Local accounts
    decide every item, as an admin does."""
    from mirror_scan.review.people import hash_password

    _name(name)
    hashed = hash_password(_password(password_file))
    with open_writer(resolve({"state": state}, config), quiet=True) as workspace:
        workspace.ledger.reviews.put_user(name, hashed)
    out.print(f"console account {name} saved")


@user_app.command("list")
def user_list(state: StateOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The local accounts."""
    import datetime as dt

    with open_reader(resolve({"state": state}, config)) as workspace:
        users = workspace.ledger.reviews.users()
    rows = [
        {"name": n, "created": dt.datetime.fromtimestamp(c, dt.UTC).isoformat(timespec="seconds")} for n, c in users
    ]
    if json_out:
        print_json(rows)
        return
    for row in rows:
        out.print(f"{row['name']}  (since {row['created']})")
    out.print(f"{len(rows)} account(s)")


@user_app.command("remove")
def user_remove(name: str, state: StateOpt = None, config: ConfigOpt = None) -> None:
    """Remove a local account (its sessions end)."""
    with open_writer(resolve({"state": state}, config), quiet=True) as workspace:
        if not workspace.ledger.reviews.remove_user(name):
            raise UsageError(f"no console account {name!r}", hint="see `mirror-scan console user list`")
    out.print(f"console account {name} removed")


@token_app.command("create")
def token_create(
    name: Annotated[
        str, typer.Argument(help="What the token is for (a script's name); replaces a token of that name.")
    ],
    state: StateOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Make an API token and print it once (only its hash is kept). It decides every item, as an admin."""
    from mirror_scan.review.people import new_token, token_hash

    _name(name)
    token = new_token()
    with open_writer(resolve({"state": state}, config), quiet=True) as workspace:
        workspace.ledger.reviews.put_token(name, token_hash(token))
    err.print(f"API token {name!r} (shown once; send it as 'Authorization: Bearer TOKEN'):")
    sys.stdout.write(token + "\n")


@token_app.command("list")
def token_list(state: StateOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The API tokens by name, with when each was made and last used (never the tokens)."""
    import datetime as dt

    def iso(t: float | None) -> str | None:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds") if t else None

    with open_reader(resolve({"state": state}, config)) as workspace:
        rows = [{"name": n, "created": iso(c), "last_used": iso(u)} for n, c, u in workspace.ledger.reviews.tokens()]
    if json_out:
        print_json(rows)
        return
    for row in rows:
        out.print(f"{row['name']}  made {row['created']}, last used {row['last_used'] or 'never'}")
    out.print(f"{len(rows)} token(s)")


@token_app.command("revoke")
def token_revoke(name: str, state: StateOpt = None, config: ConfigOpt = None) -> None:
    """Revoke an API token."""
    with open_writer(resolve({"state": state}, config), quiet=True) as workspace:
        if not workspace.ledger.reviews.remove_token(name):
            raise UsageError(f"no API token {name!r}", hint="see `mirror-scan console token list`")
    out.print(f"API token {name} revoked")


def register(app: typer.Typer) -> None:
    app.add_typer(console_app, name="console")
