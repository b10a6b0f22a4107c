"""Options and small helpers shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Config file (default: the user config dir's mirror-scan/config.toml).")
]
ModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help="Model bundle directory.")]
PolicyOpt = Annotated[
    str | None, typer.Option("--policy", "-p", help="Built-in policy (horde-v2, horde-v1) or a policy file.")
]
SeverityOpt = Annotated[
    str | None,
    typer.Option(
        "--severity",
        "-s",
        help="strict, default, lenient, or a number added to every threshold (-1: every threshold crossable; 1: none).",
    ),
]
StateOpt = Annotated[Path | None, typer.Option("--state", help="SQLite state database.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto (CUDA only if it really runs), cuda, cpu.")]
BundleDirOpt = Annotated[Path, typer.Option("--model", "-m", help="Model bundle directory (from `model export`).")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, int8 (faster on CPU; moves similarities ~1e-3).",
    ),
]
QuarantineOpt = Annotated[Path | None, typer.Option("--quarantine", help="Quarantine directory (private, 0700).")]
ImportRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--mirror-root",
        help="Import only items that came from this mirror (an edited metadata file cannot point elsewhere).",
    ),
]
RemoteOpt = Annotated[
    str | None,
    typer.Option(
        "--remote",
        help="rclone remote of the bucket (NAME:bucket): quarantining also removes the object there (reversibly).",
    ),
]
RcloneOpt = Annotated[str | None, typer.Option("--rclone", help="rclone binary (default: the venv's, then PATH).")]
IdentityOpt = Annotated[
    Path | None,
    typer.Option(
        "--identity",
        help="The age identity file that opens a sealed quarantine (default: seal_identity; asked at a terminal).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary; exit code only.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Record verdicts; act on nothing.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts).")]


def parse_listen(text: str) -> tuple[str, int]:
    from mirror_scan.errors import UsageError

    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:14051")
    return host, int(port)


def open_writer(settings, *, quiet: bool = False, recover: bool = True, rebuilding: bool = False):
    """The workspace of a state-writing command: recovered moves are reported on stderr unless quiet. A
    state database that is not there yet is made only where that cannot be a typo (see new_state)."""
    from mirror_scan.app.workspace import Workspace
    from mirror_scan.cli.console import err

    if not settings.state.exists():
        new_state(settings, rebuilding)
    return Workspace.writer(
        settings, recover=recover, on_recovered=None if quiet else lambda note: err.print(f"recovered: {note}")
    )


def new_state(settings, rebuilding: bool = False) -> None:
    """Before a command makes a state database: a wrong path is refused, not taken for a first start (a new
    database would forget the allowlist and rescan everything). Refused: a directory that does not exist
    for a path someone set (the default's is made), or a quarantine that already holds items (the database
    that indexes them is elsewhere, or lost: `quarantine reindex` rebuilds it, and is the one command
    allowed to). Otherwise the new database is said, with where its path came from."""
    from mirror_scan.cli.console import err
    from mirror_scan.errors import UsageError

    source = settings.sources.get("state", "default")
    if source != "default" and not settings.state.parent.is_dir():
        raise UsageError(
            f"state database {settings.state} ({source}): its directory {settings.state.parent} does not exist",
            hint=f"{STATE_WHERE}; for a new one, create the directory first (mkdir -m 700)",
        )
    try:
        held = sum(1 for _ in (settings.quarantine / "items").iterdir())
    except OSError:
        held = 0
    if held and not rebuilding:
        raise UsageError(
            f"state database {settings.state} ({source}) does not exist, while the quarantine {settings.quarantine} "
            f"holds {held} item(s): a new one would forget them and the allowlist",
            hint=f"{STATE_WHERE}; if the database was lost, `mirror-scan quarantine reindex` rebuilds it from the "
            "quarantine",
        )
    err.print(f"new state database {settings.state} ({source}): nothing recorded before, every file is new",
              markup=False, highlight=False)  # fmt: skip


STATE_WHERE = "check --state (or MIRROR_SCAN_STATE, or the config file's state): `mirror-scan config` shows it"
STATE_HINT = f"{STATE_WHERE}; a lost database is rebuilt from the quarantine by `quarantine reindex`"


def require_state(settings, hint: str = "run mirror-scan scan first") -> None:
    """Commands that read what a scan recorded refuse a state database that is not there."""
    from mirror_scan.errors import UsageError

    if not settings.state.exists():
        raise UsageError(f"state database {settings.state} does not exist", hint=hint)


def open_reader(settings):
    """The read-only workspace of a command that only reads (no lock, no recovery)."""
    from mirror_scan.app.workspace import Workspace

    return Workspace.reader(settings)
