"""`mirror pull` and `pictrs check`: the bucket side."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from mirror_scan.cli.console import current, err, out, print_json
from mirror_scan.cli.options import ConfigOpt, JsonOpt, QuarantineOpt, RcloneOpt, StateOpt, new_state
from mirror_scan.errors import UsageError
from mirror_scan.settings import resolve

mirror_app = typer.Typer(help="Pull the bucket into the local mirror with rclone.", no_args_is_help=True)
pictrs_app = typer.Typer(help="pict-rs's internal API: check the URL and key.", no_args_is_help=True)


@mirror_app.command("pull")
def pull(
    to: Annotated[Path, typer.Option("--to", help="Local mirror directory.")],
    remote: Annotated[str | None, typer.Option("--remote", help="rclone remote of the bucket (NAME:bucket).")] = None,
    max_age: Annotated[
        str | None, typer.Option("--max-age", help="Only objects newer than this (rclone syntax: 1h, 7d).")
    ] = None,
    rclone: RcloneOpt = None,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the arrived keys as JSON.")] = False,
    list_paths: Annotated[bool, typer.Option("--list", help="Print the path of every file that arrived.")] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="A progress bar (files, bytes, rate, time left); default: at a terminal."
        ),
    ] = None,
) -> None:
    """One-way copy of new objects from the bucket into the mirror. Never deletes or replaces a local
    file, and never brings back what is quarantined. Says how many arrived (--list: each path)."""
    from mirror_scan.app.workspace import Workspace
    from mirror_scan.clients.rclone import Rclone

    settings = resolve({"remote": remote, "rclone": rclone, "state": state, "quarantine": quarantine}, config)
    if not settings.remote:
        raise UsageError("no remote to pull from", hint="pass --remote NAME:bucket or set `remote` in the config")
    if not settings.state.exists():
        new_state(settings)  # a wrong --state would forget what is quarantined: refused, not made
    with Workspace.writer(settings) as workspace:
        workspace.bind_mirror(to, settings.remote, "mirror pull", record=False)  # another bucket: refused
        excluded = workspace.ledger.excluded_keys(settings.remote, os.fsencode(os.path.abspath(to)))
    tool = Rclone.locate(settings.rclone)
    shown = (err.is_terminal and not json_out) if progress is None else progress
    with pull_progress(f"pulling {settings.remote}", shown) as on_stats:
        keys = tool.pull(settings.remote, to, max_age=max_age, exclude=excluded, on_stats=on_stats)
    removed = []
    with Workspace.writer(settings) as workspace:
        workspace.bind_mirror(to, settings.remote, "mirror pull")  # it worked: the mirror is this bucket's now
        # Items another process began quarantining while rclone ran were not excluded: copies of them
        # the pull wrote back after they were removed are removed again (their bytes are in the items).
        mirror = os.fsencode(os.path.abspath(to))
        held = set(workspace.ledger.excluded_keys(settings.remote, mirror)) - set(excluded)
        for key in keys:
            if key in held and workspace.quarantine.drop_returned_copy(os.path.join(mirror, os.fsencode(key)), mirror):
                removed.append(key)
    keys = [key for key in keys if key not in removed]
    if json_out:
        print_json(
            {"remote": settings.remote, "to": str(to), "arrived": keys, "excluded": len(excluded), "removed": removed}
        )
        return
    if list_paths:
        for key in keys:
            out.print(str(to / key))
    out.print(
        f"{len(keys)} new file(s); {len(excluded)} quarantined key(s) excluded"
        + (f"; {len(removed)} copy(ies) of files quarantined meanwhile removed again" if removed else "")
    )


@contextmanager
def pull_progress(what: str, shown: bool):
    """A progress bar fed by rclone's stats (files and bytes so far, of what it has listed), or None."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    if not shown:
        yield None
        return
    columns = (TextColumn(what), BarColumn(), TextColumn("{task.fields[files]}"), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=current().err, transient=True) as bar:
        task = bar.add_task(what, total=None, files="listing")

        def update(stats: dict) -> None:
            total = stats.get("totalBytes") or None
            files = f"{stats.get('transfers', 0)}/{stats.get('totalTransfers', 0)} file(s)"
            bar.update(task, completed=stats.get("bytes", 0), total=total, files=files)

        yield update


@mirror_app.command("remote")
def remote_cmd(
    mirror: Annotated[Path, typer.Argument(help="The mirror directory.")],
    set_to: Annotated[
        str | None, typer.Option("--set", help="Record another remote (the bucket really moved).")
    ] = None,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The bucket a mirror mirrors (recorded by the first `mirror pull` or scan with --remote): removals
    only ever go there. --set records another one, deliberately."""
    import datetime as dt

    from mirror_scan.app.workspace import Workspace

    settings = resolve({"state": state, "quarantine": quarantine}, config)
    root = os.fsencode(os.path.abspath(mirror))
    if set_to is not None:
        if ":" not in set_to:
            raise UsageError(f"{set_to!r} is not an rclone remote", hint="NAME:bucket, e.g. pictrs:media")
        if not settings.state.exists():
            new_state(settings)
        with Workspace.writer(settings) as workspace:
            workspace.ledger.rebind_mirror(root, set_to, "mirror remote --set")
        out.print(f"{mirror}: mirrors {set_to.rstrip('/')}")
        return
    with Workspace.reader(settings) as workspace:
        bound = workspace.ledger.mirror_remote(root)
    if bound is None:
        out.print(f"{mirror}: no remote recorded yet (the first `mirror pull` or scan with --remote records it)")
        return
    remote, when, by = bound
    out.print(f"{mirror}: mirrors {remote} (recorded by `{by}` on {dt.datetime.fromtimestamp(when, dt.UTC):%Y-%m-%d})")


@pictrs_app.command("check")
def pictrs_check(
    url: Annotated[str | None, typer.Option("--url", help="pict-rs base URL.")] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Test the pict-rs URL and API key (the key comes from MIRROR_SCAN_PICTRS_API_KEY or [pictrs] api_key)."""
    from mirror_scan.clients.pictrs import Pictrs

    settings = resolve({"pictrs_url": url}, config)
    if not settings.pictrs_url or not settings.pictrs_api_key:
        raise UsageError(
            "pict-rs is not configured",
            hint="set [pictrs] url and api_key in the config, or MIRROR_SCAN_PICTRS_URL and MIRROR_SCAN_PICTRS_API_KEY",
        )
    result = Pictrs(settings.pictrs_url, settings.pictrs_api_key).check()
    if json_out:
        print_json({"url": result["url"], "reachable": True, "api_key_accepted": True})
        return
    out.print(f"pict-rs at {result['url']}: reachable, API key accepted")


def rclone_passthrough(
    ctx: typer.Context,
    rclone: RcloneOpt = None,
) -> None:
    """Run the rclone that mirror-scan uses (the one its install brought, which pipx does not put on PATH)
    with the arguments that follow: `mirror-scan rclone config`, `mirror-scan rclone lsd pictrs:`."""
    import subprocess

    from mirror_scan.clients.rclone import find_rclone

    if ctx.args in ([], ["--help"], ["-h"]):
        out.print(ctx.get_help(), markup=False, highlight=False)
        out.print("rclone's own help: mirror-scan rclone help")
        return
    binary = find_rclone(resolve({"rclone": rclone}).rclone)
    # An argument list, never a shell; the terminal is rclone's (`rclone config` asks questions), and its
    # exit code is this command's.
    raise typer.Exit(subprocess.run([binary, *ctx.args], check=False).returncode)


def register(app: typer.Typer) -> None:
    app.command(
        "rclone",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )(rclone_passthrough)
    app.add_typer(mirror_app, name="mirror")
    app.add_typer(pictrs_app, name="pictrs")
