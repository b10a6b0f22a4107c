"""Redaction: secrets never reach a log line, a report or an error message. The one place that knows
what a secret looks like: environment variables that hold one (their values are replaced wherever they
appear), key=value pairs in connection strings, passwords in URLs, and the validator's URL token."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

SECRET_ENV = re.compile(
    r"^(RCLONE_CONFIG_\w+_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|PASS|PASSWORD|TOKEN|SESSION_TOKEN|"
    r"KEY|CLIENT_SECRET|SAS_URL)|MIRROR_SCAN_(PICTRS_API_KEY|PICTRS_DATABASE_PASSWORD|LEMMY_DATABASE_PASSWORD|"
    r"LEMMY_PASSWORD|NOTIFY_WEBHOOK)|PGPASSWORD|AWS_SECRET_ACCESS_KEY|"
    r"AWS_ACCESS_KEY_ID|AWS_SESSION_TOKEN)$"
)
# key=value pairs inside connection strings (:s3,secret_access_key=...:bucket) and URLs with passwords
SECRET_PARAM = re.compile(
    r"((?:secret_access_key|access_key_id|session_token|pass|password|token|key)\s*=\s*)"
    r"('[^']*'|\"[^\"]*\"|[^,:\s]+)",
    re.IGNORECASE,
)


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    return sorted({v for k, v in env.items() if SECRET_ENV.match(k) and len(v) >= 4}, key=len, reverse=True)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every known secret value, and secret-looking key=value pairs, with ***."""
    for secret in [*secret_values(), *(s for s in extra if s and len(s) >= 4)]:
        text = text.replace(secret, "***")
    return SECRET_PARAM.sub(lambda m: m.group(1) + "***", text)


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
