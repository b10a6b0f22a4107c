"""The one way mirror-scan makes HTTP requests to services an admin configured (pict-rs, Lemmy, a
webhook): urllib without redirects. urllib follows a redirect with the request's headers, so a 30x from
a misconfigured or compromised service would carry the pict-rs key or the bot's token to another host;
here a redirect is an error that names where it pointed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from .errors import MirrorScanError


class Unreachable(MirrorScanError):
    """No HTTP answer: connection refused, DNS, TLS, timeout. The message is the low-level reason."""


class Redirected(MirrorScanError):
    """A 30x answer, deliberately not followed."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        return None  # urllib then raises HTTPError with the 30x status


_OPENER = urllib.request.build_opener(_NoRedirect)


def open_url(request: urllib.request.Request, timeout: float) -> Any:
    return _OPENER.open(request, timeout=timeout)


def redirect_note(status: int, location: str | None) -> str | None:
    """For a 30x answer: a sentence saying it was not followed, naming only the target's host."""
    if not 300 <= status < 400:
        return None
    host = urlsplit(location or "").netloc.rsplit("@", 1)[-1] or "an unnamed place"
    return f"it answered {status}, a redirect to {host}, which is not followed (credentials would travel with it)"


def exchange(
    method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float, limit: int = 4_000_000
) -> tuple[int, Any]:
    """One request: (status, the JSON answer or None). Raises Unreachable or Redirected; callers turn
    them into their own errors (and scrub their own secrets from the reason)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with open_url(request, timeout=timeout) as response:
            status, raw = response.status, response.read(limit)
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read(min(limit, 100_000))
        note = redirect_note(status, err.headers.get("Location"))
        if note:
            raise Redirected(note) from None
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        raise Unreachable(str(getattr(err, "reason", err))) from None
    try:
        return status, json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return status, None
