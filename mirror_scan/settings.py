"""Every setting in one table. Resolution order: command-line flag, then environment
(MIRROR_SCAN_<NAME>), then the config file (--config, or config.toml in the user's config dir), then
the default (paths under the user's data dir)."""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import platformdirs

from mirror_scan.errors import UsageError
from mirror_scan.redact import redact_url, remember, scrub

APP = "mirror-scan"


def data_dir() -> Path:
    return Path(os.environ.get("MIRROR_SCAN_DATA_DIR") or platformdirs.user_data_dir(APP))


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def _age_recipient(value: object) -> str:
    text = str(value).strip()
    if not (text.startswith("age1") and len(text) == 62 and text.isalnum()):
        raise ValueError("expected an age X25519 public key (age1... , 62 characters)")
    return text


def _positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("must be a whole number, e.g. 16") from None
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


def _positive_seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds, e.g. 120") from None
    if not number > 0:
        raise ValueError("must be more than 0 seconds")
    return number


def _remote(value: Any) -> str:
    text = str(value)
    if ":" not in text or text.startswith(":"):
        raise ValueError("must be an rclone remote NAME:bucket (connection strings would echo secrets in errors)")
    return text


def _names(value: Any) -> tuple[str, ...]:
    """A list from the config file, or a comma-separated string from a flag or the environment."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,255}", name):
            raise ValueError(f"{name!r} is not a user name")
    return names


def _hours(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of hours, e.g. 24 (0: never)") from None
    if number < 0:
        raise ValueError("must be 0 or more hours")
    return number


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _actions(value: Any) -> dict[str, tuple[str, ...]]:
    """Label -> actions. From the config file's [actions] table (csam = ["remove", "report", "notify"]) or,
    in the environment, 'csam=remove+report+notify;nsfw=report'."""
    from mirror_scan.kinds import ACTION_NAMES

    if isinstance(value, str):
        table: dict[str, Any] = {}
        for part in filter(str.strip, value.split(";")):
            label, _, names = part.partition("=")
            table[label.strip()] = [n for n in re.split(r"[+,\s]+", names) if n]
        value = table
    if not isinstance(value, dict):
        raise ValueError('must be a table of label = ["remove", "report", "notify"]')
    actions: dict[str, tuple[str, ...]] = {}
    for label, names in value.items():
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ValueError(f'{label}: must be a list such as ["report"]')
        unknown = [n for n in names if n not in ACTION_NAMES]
        if unknown:
            raise ValueError(
                f"{label}: unknown action {unknown[0]!r} (known: {', '.join(ACTION_NAMES)}; bans are "
                "never automatic: see `mirror-scan lemmy ban`)"
            )
        actions[str(label).replace(" ", "_")] = tuple(dict.fromkeys(names))
    return actions


def _reason(value: Any) -> str:
    text = " ".join(str(value).split())
    if not text or len(text) > 500:
        raise ValueError("must be a line of text of at most 500 characters")
    return text


def _database_url(value: Any) -> str:
    """A PostgreSQL URL (or libpq keyword string) with no password in it: a URL is shown, logged and kept in
    config files that more people read than the password should reach."""
    from urllib.parse import parse_qs, urlsplit

    text = str(value).strip()
    try:
        parts = urlsplit(text)
        in_url = bool(parts.password) or "password" in {k.lower() for k in parse_qs(parts.query)}
    except ValueError:
        raise ValueError("is not a URL") from None
    if in_url or re.search(r"(^|\s)password\s*=", text, re.IGNORECASE):
        raise ValueError(
            "holds a password: keep the URL without it (postgresql://user@host/db) and put the password in "
            "the matching *_database_password_file setting (a file only the service user can read) or the "
            "MIRROR_SCAN_*_DATABASE_PASSWORD environment variable"
        )
    return text


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value)
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


@dataclass(frozen=True)
class Spec:
    parse: Callable[[Any], Any]
    default: Callable[[], Any]
    help: str


SPECS: dict[str, Spec] = {
    "model": Spec(Path, lambda: data_dir() / "model", "model bundle directory"),
    "policy": Spec(str, lambda: "horde-v2", "built-in policy name or policy file"),
    "severity": Spec(str, lambda: "default", "strict, default, lenient, or a threshold offset"),
    "state": Spec(Path, lambda: data_dir() / "state.db", "SQLite state database"),
    "quarantine": Spec(Path, lambda: data_dir() / "quarantine", "quarantine directory"),
    "batch_size": Spec(_positive_int, lambda: 16, "images per inference batch"),
    "workers": Spec(
        _positive_int,
        lambda: max(1, os.cpu_count() or 1),
        "decode threads (and decoder processes with decoders=process)",
    ),
    "device": Spec(_choice("auto", "cuda", "cpu"), lambda: "auto", "auto, cuda or cpu"),
    "precision": Spec(_choice("auto", "fp32", "fp16", "int8"), lambda: "auto", "image encoder precision"),
    "max_pixels": Spec(_positive_int, lambda: 64_000_000, "refuse images with more pixels (decompression bombs)"),
    "max_frames": Spec(
        _positive_int, lambda: 32, "distinct frames (or pictures) scored per animation, video or multi-picture file"
    ),
    "max_decoded_frames": Spec(
        _positive_int, lambda: 3000, "frames read per animation or video to find them (longer videos: keyframes)"
    ),
    "max_file_mb": Spec(_positive_int, lambda: 512, "refuse files larger than this (MiB)"),
    "read_timeout": Spec(
        _positive_seconds, lambda: 120.0, "seconds a file read may take before it is an error, retried (stalled mounts)"
    ),
    "decoders": Spec(
        _choice("process", "thread"),
        lambda: "process",
        "process: decoders run in worker processes (a crashing or hanging file costs one worker); thread: in-process",
    ),
    "decode_timeout": Spec(
        _positive_seconds, lambda: 60.0, "seconds one file's decode may take (with decoders=process)"
    ),
    "resize": Spec(
        _choice("exact", "reduced", "thumbnail512"),
        lambda: "exact",
        "the model's view: exact (open_clip's bicubic from the whole picture), reduced (a box reduction first, "
        "about a third of the resize CPU) or thumbnail512 (fedi-safety's path: Pillow's thumbnail to fit "
        "512x512 first, large JPEGs decoded at reduced size, then open_clip's transform: the pixels fedi-safety "
        "scores with horde-safety's thresholds); each stores its results apart",
    ),
    "jpeg_decoder": Spec(
        _choice("pillow", "auto", "nvimgcodec"),
        lambda: "pillow",
        "who decodes JPEGs: pillow (the CPU), nvimgcodec (NVIDIA's nvJPEG on the GPU, PyPI nvidia-nvimgcodec-cu12 "
        "and nvidia-nvjpeg-cu12; an error without them) or auto (nvJPEG when it works here); anything nvJPEG "
        "declines falls back to Pillow (with decoders = process only)",
    ),
    "remote": Spec(_remote, lambda: None, "rclone remote of the bucket (NAME:bucket); enables upstream removal"),
    "rclone": Spec(str, lambda: None, "rclone binary (default: the venv's, then PATH)"),
    "pictrs_url": Spec(str, lambda: None, "pict-rs base URL, e.g. http://127.0.0.1:8080"),
    "pictrs_api_key": Spec(str, lambda: None, "pict-rs [server] api_key (prefer the environment variable)"),
    "pictrs_database_url": Spec(
        _database_url,
        lambda: None,
        "pict-rs's PostgreSQL repo, postgresql://user@host/db (read-only role; attribution)",
    ),
    "pictrs_database_password_file": Spec(Path, lambda: None, "file holding that database's password"),
    "pictrs_database_password": Spec(str, lambda: None, "that password (environment only, preferably a file)"),
    "lemmy_database_url": Spec(
        _database_url,
        lambda: None,
        "Lemmy's PostgreSQL database, postgresql://user@host/lemmy (read-only role; attribution)",
    ),
    "lemmy_database_password_file": Spec(Path, lambda: None, "file holding that database's password"),
    "lemmy_database_password": Spec(str, lambda: None, "that password (environment only, preferably a file)"),
    "lemmy_url": Spec(str, lambda: None, "Lemmy's base URL for the moderation bot, e.g. https://lemmy.example"),
    "lemmy_username": Spec(str, lambda: None, "the bot account that removes, reports and notifies"),
    "lemmy_password_file": Spec(Path, lambda: None, "file holding the bot's password"),
    "lemmy_password": Spec(str, lambda: None, "the bot's password (environment only, preferably a file)"),
    "lemmy_notify": Spec(_names, lambda: (), "admins the bot sends a private message to (action 'notify')"),
    "lemmy_removal_reason": Spec(
        _reason,
        lambda: "Removed pending review by this instance's admins (ref {item})",
        "the public reason of a removal (modlog, federated): {item} is the quarantine item; never the label",
    ),
    "lemmy_restore_reason": Spec(
        _reason,
        lambda: "Restored after review by this instance's admins (ref {item})",
        "the public reason when a restore puts a post or comment back",
    ),
    "notify_webhook": Spec(str, lambda: None, "JSON webhook for action 'notify' (a Matrix or Slack bridge); secret"),
    "actions": Spec(_actions, lambda: {}, "per label: remove, report, notify (default: none, attribution only)"),
    "actions_dry_run": Spec(_flag, lambda: False, "plan and record actions, send nothing"),
    "canary_dry_run": Spec(
        _flag, lambda: True, "the canary's actions are planned and recorded, not sent (false: sent like any label's)"
    ),
    "canary_purge_hours": Spec(
        _hours, lambda: 24.0, "a canary item's bytes are purged this long after its quarantine (0: kept)"
    ),
    "hold_labels": Spec(
        _names, lambda: (), "labels whose items are held from purge (a legal hold) for hold_days from their quarantine"
    ),
    "hold_days": Spec(_positive_int, lambda: 365, "how long hold_labels hold an item (days from its quarantine)"),
    "seal_to": Spec(
        _age_recipient,
        lambda: None,
        "seal quarantined bytes to this age public key (age1...): the quarantining processes can seal, never "
        "read; `mirror-scan quarantine keygen` makes the key pair",
    ),
    "seal_identity": Spec(
        Path,
        lambda: None,
        "the age identity file (0600, the admin's) that opens sealed items for restore, extract and report; "
        "keep it out of the watch daemon's config",
    ),
    "console_listen": Spec(str, lambda: "127.0.0.1:8731", "where the review console listens, HOST:PORT"),
    "console_trusted_proxies": Spec(
        _names, lambda: (), "reverse proxies whose X-Forwarded-For/-Proto the console believes, e.g. 127.0.0.1"
    ),
    "console_moderators_may_restore": Spec(
        _flag, lambda: False, "Lemmy moderators may restore their communities' items (allowlisted instance-wide)"
    ),
    "console_lemmy_login": Spec(_flag, lambda: True, "let Lemmy admins and moderators log in to the console"),
    "console_session_hours": Spec(_positive_seconds, lambda: 12.0, "how long a console login lasts (hours)"),
}


SECRET_SETTINGS = (
    "pictrs_api_key",
    "pictrs_database_password",
    "lemmy_database_password",
    "lemmy_password",
    "notify_webhook",  # webhook URLs carry their token
)
URL_SETTINGS = ("pictrs_database_url", "lemmy_database_url")  # may hold a password: shown without it
ENV_ONLY = ("pictrs_database_password", "lemmy_database_password", "lemmy_password")


@dataclass(frozen=True)
class Settings:
    model: Path
    policy: str
    severity: str
    state: Path
    quarantine: Path
    batch_size: int
    workers: int
    device: str
    precision: str
    max_pixels: int
    max_frames: int
    max_decoded_frames: int
    max_file_mb: int
    read_timeout: float
    decoders: str
    decode_timeout: float
    resize: str
    jpeg_decoder: str
    remote: str | None
    rclone: str | None
    pictrs_url: str | None
    pictrs_api_key: str | None
    pictrs_database_url: str | None
    pictrs_database_password_file: Path | None
    pictrs_database_password: str | None
    lemmy_database_url: str | None
    lemmy_database_password_file: Path | None
    lemmy_database_password: str | None
    lemmy_url: str | None
    lemmy_username: str | None
    lemmy_password_file: Path | None
    lemmy_password: str | None
    lemmy_notify: tuple[str, ...]
    lemmy_removal_reason: str
    lemmy_restore_reason: str
    notify_webhook: str | None
    actions: dict[str, tuple[str, ...]]
    actions_dry_run: bool
    canary_dry_run: bool
    canary_purge_hours: float
    hold_labels: tuple[str, ...]
    hold_days: int
    seal_to: str | None
    seal_identity: Path | None
    console_listen: str
    console_trusted_proxies: tuple[str, ...]
    console_moderators_may_restore: bool
    console_lemmy_login: bool
    console_session_hours: float
    sources: dict[str, str]  # setting -> "flag" | "env" | "config FILE" | "default"


def config_file(path: Path | str | None = None) -> Path:
    """The config file every command reads: --config, else MIRROR_SCAN_CONFIG, else the default."""
    return Path(path) if path else Path(os.environ.get("MIRROR_SCAN_CONFIG") or default_config_path())


def _read_config(path: Path | None) -> tuple[dict[str, Any], str]:
    explicit = path is not None
    path = config_file(path)
    if not path.exists():
        if explicit:
            raise UsageError(f"config file {path} does not exist")
        return {}, ""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"config file {path} cannot be read: {err}") from None
    tables = {"scan", "actions", *SECTIONS}
    for name, value in data.items():  # a misspelled [section] would otherwise be ignored without a word
        if isinstance(value, dict) and name not in tables:
            close = difflib.get_close_matches(name, sorted(tables), n=1)
            hint = f"did you mean [{close[0]}]?" if close else f"known sections: {', '.join(sorted(tables))}"
            raise UsageError(f"config file {path}: unknown section [{name}]", hint=hint)
    scan = dict(data.get("scan", data))  # settings may sit at the top level or under [scan]
    for section in SECTIONS:  # [pictrs] url / api_key, [lemmy] url, [notify] webhook
        table = data.get(section) or {}
        if not isinstance(table, dict):
            raise UsageError(f"config file {path}: [{section}] must be a table")
        for key, value in table.items():
            scan[f"{section}_{key}"] = value
    actions = data.get("actions")
    if actions is not None:  # [actions] csam = ["remove", "report", "notify"], dry_run = true
        if not isinstance(actions, dict):
            raise UsageError(f"config file {path}: [actions] must be a table of label = [actions]")
        actions = dict(actions)
        if "dry_run" in actions:
            scan["actions_dry_run"] = actions.pop("dry_run")
        if "canary_dry_run" in actions:  # [actions] canary_dry_run = false: the canary's actions are sent
            scan["canary_dry_run"] = actions.pop("canary_dry_run")
        scan["actions"] = actions
    for key in ENV_ONLY:
        if key in scan:
            raise UsageError(
                f"config file {path}: '{key}' does not belong in a config file",
                hint=f"use '{key}_file' (a file only the service user can read) or MIRROR_SCAN_{key.upper()}",
            )
    for key in scan:
        if key not in SPECS and not isinstance(scan[key], dict):
            close = difflib.get_close_matches(key, list(SPECS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known settings: {', '.join(SPECS)}"
            raise UsageError(f"config file {path}: unknown setting '{key}'", hint=hint)
    return {k: v for k, v in scan.items() if k in SPECS}, f"config {path}"


def resolve(flags: dict[str, Any] | None = None, config: Path | None = None) -> Settings:
    """Settings from flags (None = not given), environment, config file and defaults."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    file_values, file_label = _read_config(config)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, spec in SPECS.items():
        env_name = f"MIRROR_SCAN_{name.upper()}"
        if name in flags:
            raw, source = flags[name], "flag"
        elif os.environ.get(env_name):
            raw, source = os.environ[env_name], f"env {env_name}"
        elif name in file_values:
            raw, source = file_values[name], file_label
        else:
            raw, source = spec.default(), "default"
        try:
            values[name] = None if raw is None else spec.parse(raw)
        except (TypeError, ValueError) as err:
            display = "***" if name in SECRET_SETTINGS + URL_SETTINGS else scrub(repr(raw))
            raise UsageError(f"setting '{name}' from {source}: {display} {err}") from None
        if name in ENV_ONLY and source == "flag":
            raise UsageError(f"'{name}' is not taken from the command line", hint=f"use {name}_file")
        if isinstance(values[name], Path):
            values[name] = values[name].expanduser()
        sources[name] = source
    remember(*(values[name] for name in SECRET_SETTINGS))  # never printed, whichever message carries one
    return Settings(**values, sources=sources)


def shown(name: str, value: Any) -> str:
    """How a setting may be displayed: secrets as ***, database URLs without their password."""
    if value is None:
        return "None"
    if name in SECRET_SETTINGS:
        return "***"
    if name in URL_SETTINGS:
        return redact_url(value)
    return str(value)


def typed(name: str, value: Any) -> Any:
    """A setting's value for JSON: numbers and flags as themselves, paths as text, tuples as lists, None
    as null; secrets as *** and database URLs without their password, as everywhere."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if name in SECRET_SETTINGS:
        return "***"
    if name in URL_SETTINGS:
        return redact_url(value)
    if isinstance(value, tuple | list):
        return list(value)
    if isinstance(value, dict):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
    return str(value)


SECTIONS = ("pictrs", "lemmy", "notify", "console")  # [pictrs] url = ... is the setting pictrs_url
# What an unset setting looks like when set, for `config init` (each parses as its setting).
EXAMPLES = {
    "seal_to": "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",  # keygen prints yours
    "seal_identity": "/root/.config/mirror-scan/quarantine-key.txt",
    "hold_labels": ["csam"],  # reported material is kept a year in the US (18 U.S.C. 2258A, the REPORT Act)
    "remote": "pictrs:pictrs-bucket",
    "rclone": "/usr/bin/rclone",
    "pictrs_url": "http://127.0.0.1:8080",
    "pictrs_database_url": "postgresql://mirror_scan_ro@127.0.0.1/pictrs",
    "pictrs_database_password_file": "/etc/mirror-scan/pictrs-db-password",
    "lemmy_database_url": "postgresql://mirror_scan_ro@127.0.0.1/lemmy",
    "lemmy_database_password_file": "/etc/mirror-scan/lemmy-db-password",
    "lemmy_url": "https://lemmy.example",
    "lemmy_username": "mirror-scan-bot",
    "lemmy_password_file": "/etc/mirror-scan/lemmy-password",
    "lemmy_notify": ["admin"],
}


def commented_config(chosen: dict[str, object] | None = None, suggested: dict[str, object] | None = None) -> str:
    """A config file to start from: every setting that may live in a file, commented out at its default,
    with what it does; those in `chosen` set (config init's choices), those in `suggested` commented out with
    that value. Secrets are shown where they go but belong in files or the environment."""
    chosen, suggested = chosen or {}, suggested or {}
    lines = [
        "# mirror-scan configuration. Precedence: command-line flag > MIRROR_SCAN_* environment > this file >",
        "# default. Uncomment what you change; `mirror-scan config` shows every value and where it came from.",
        "# Passwords never go here: use the *_password_file settings or MIRROR_SCAN_* environment variables.",
        "",
        "[scan]",
    ]
    sectioned: dict[str, list[str]] = {section: [] for section in SECTIONS}
    for name, spec in SPECS.items():
        if name in ENV_ONLY or name in ("actions", "actions_dry_run", "canary_dry_run"):
            continue
        default = spec.default()
        value = suggested.get(name, EXAMPLES.get(name, "")) if default in (None, ()) else default
        value = list(value) if isinstance(value, tuple) else value
        rendered = json.dumps(str(value) if isinstance(value, Path) else value, ensure_ascii=False)
        section = next((s for s in SECTIONS if name.startswith(f"{s}_")), None)
        key = name.removeprefix(f"{section}_") if section else name
        target = sectioned[section] if section else lines
        if name in SECRET_SETTINGS:  # no value line: a secret belongs in the environment
            target.append(f"# {key}: {spec.help}; secret: set MIRROR_SCAN_{name.upper()} in the environment")
            continue
        target.append(f"# {key}: {spec.help}")
        if name in chosen:
            target.append(f"{key} = {json.dumps(str(chosen[name]), ensure_ascii=False)}")
            continue
        target.append(f"# {key} = {rendered}")
    for section in SECTIONS:
        lines += ["", f"[{section}]", *sectioned[section]]
    lines += [
        "",
        "[actions]",
        "# What follows a quarantine, per label (remove, report, notify); none by default (attribution only).",
        '# csam = ["remove", "report", "notify"]',
        '# "*" = ["report"]',
        "# dry_run = false   # true: plan and record actions, send nothing",
        '# canary = ["notify"]   # what follows the canary (`mirror-scan canary make`); notify by default',
        "# canary_dry_run = true   # the canary's actions are planned, not sent, unless this is false",
        "",
    ]
    return "\n".join(lines)


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    return [
        (f.name, shown(f.name, getattr(settings, f.name)), settings.sources[f.name])
        for f in fields(settings)
        if f.name != "sources"
    ]
