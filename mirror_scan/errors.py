"""User-facing errors. Each carries one clear message and an exit code; the CLI prints it without a
traceback, because every one of these is something the admin can fix (a path, a file, a flag)."""

from __future__ import annotations

from pathlib import Path


class MirrorScanError(Exception):
    """Base class: `str(err)` is the whole message shown to the user."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  -> {hint}")


class BundleError(MirrorScanError):
    """A model bundle is missing, incomplete, tampered with, or from a newer mirror-scan."""

    def __init__(self, path: Path | str, problem: str, hint: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(f"model bundle {path}: {problem}", hint=hint)


class PolicyError(MirrorScanError):
    """A policy file or name that cannot be used."""

    def __init__(self, source: str, problem: str, hint: str | None = None) -> None:
        self.source = source
        super().__init__(f"policy {source}: {problem}", hint=hint)


class DeviceError(MirrorScanError):
    """The requested execution device cannot run the model."""


class ExportError(MirrorScanError):
    """The model export failed or its parity check did not pass."""


class UsageError(MirrorScanError):
    """Flags or arguments that do not make sense together."""


class NoAnswer(UsageError):
    """A question got no answer (standard input ended): nothing was done, as for "no" (exit 1)."""

    exit_code = 1


def install_hint(extra: str) -> str:
    """How to add an extra to the installation this process runs from. mirror-scan is installed from a
    wheel built from its checkout (it is not on PyPI): the extra's packages are named, as its metadata
    lists them, for the way it was installed (pipx inject, or this environment's pip)."""
    import re
    import sys
    from importlib import metadata

    try:
        wanted = [
            r.split(";")[0].strip()
            for r in metadata.requires("mirror-scan") or []
            if re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", r)
        ]
    except metadata.PackageNotFoundError:
        wanted = []
    if not wanted:
        return f"install mirror-scan's '{extra}' extra (see the README's install section)"
    packages = " ".join(f"'{p}'" if any(c in p for c in "[]<>=!~ ") else p for p in wanted)
    if "pipx" in Path(sys.prefix).parts:
        return f"pipx inject mirror-scan {packages}  (the '{extra}' extra)"
    return f"{sys.executable} -m pip install {packages}  (the '{extra}' extra)"
