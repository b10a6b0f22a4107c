"""Redaction: secrets never reach a log line, a report or an error message. The one place that knows
what a secret looks like: environment variables that hold one and every secret the process read from a
file or its settings (`remember`; their values are replaced wherever they appear), key=value pairs in
connection strings, passwords in URLs, and the validator's URL token. The console and the log formatters
replace the known values in everything they write, so a peer that echoes a token in its error (an HMA
proxy, a webhook) never gets it printed, whichever message carries it."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

SECRET_ENV = re.compile(
    r"^(RCLONE_CONFIG_\w+_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|PASS|PASSWORD|TOKEN|SESSION_TOKEN|"
    r"KEY|CLIENT_SECRET|SAS_URL)|MIRROR_SCAN_(PICTRS_API_KEY|PICTRS_DATABASE_PASSWORD|LEMMY_DATABASE_PASSWORD|"
    r"LEMMY_PASSWORD|NOTIFY_WEBHOOK|HMA_TOKEN)|PGPASSWORD|AWS_SECRET_ACCESS_KEY|"
    r"AWS_ACCESS_KEY_ID|AWS_SESSION_TOKEN)$"
)
# key=value pairs inside connection strings (:s3,secret_access_key=...:bucket) and URLs with passwords
SECRET_PARAM = re.compile(
    r"((?:secret_access_key|access_key_id|session_token|pass|password|token|key)\s*=\s*)"
    r"('[^']*'|\"[^\"]*\"|[^,:\s]+)",
    re.IGNORECASE,
)


# An age identity (the key that opens a sealed quarantine), wherever it was pasted by mistake.
AGE_SECRET = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+", re.IGNORECASE)


_REMEMBERED: set[str] = set()  # secrets this process read (files, settings): scrubbed from all it writes


def remember(*secrets: str | None) -> None:
    """Secrets read from a file or the settings: every output replaces them from now on."""
    _REMEMBERED.update(s for s in secrets if s and len(s) >= 4)


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    found = {v for k, v in env.items() if SECRET_ENV.match(k) and len(v) >= 4} | _REMEMBERED
    return sorted(found, key=len, reverse=True)


def scrub_known(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every known secret value with *** (nothing else: safe on any text a person reads)."""
    for secret in [*secret_values(), *(s for s in extra if s and len(s) >= 4)]:
        if secret in text:
            text = text.replace(secret, "***")
    return AGE_SECRET.sub("AGE-SECRET-KEY-***", text)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every known secret value, and secret-looking key=value pairs, with ***."""
    return SECRET_PARAM.sub(lambda m: m.group(1) + "***", scrub_known(text, extra))


def redact_url(url: str | None) -> str:
    """A URL without its password (user:***@host) or, for secrets in the query or path, only its origin."""
    if not url:
        return str(url)
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable URL)"
    user = f"{parts.username}{':***' if parts.password else ''}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


TOKEN_IN_PATH = re.compile(r"/validate/[^\s?#\"']*")


def redact(text: str) -> str:
    """The URL token never reaches a log line: every /validate/<token> becomes /validate/***."""
    return TOKEN_IN_PATH.sub("/validate/***", text)
