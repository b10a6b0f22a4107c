"""The one way mirror-scan makes HTTP requests to services an admin configured (pict-rs, Lemmy, a
webhook): urllib without redirects and with a total deadline.

urllib follows a redirect with the request's headers, so a 30x from a misconfigured or compromised
service would carry the pict-rs key or the bot's token to another host; here a redirect is an error that
names where it pointed. A socket timeout restarts with every byte, so a server that trickles its answer
(one byte every few seconds) would hold a command for ever: every exchange here has one deadline for the
whole of it (connect, send, answer), after which its sockets are shut down."""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from mirror_scan.errors import MirrorScanError
from mirror_scan.text import peer_json


class Unreachable(MirrorScanError):
    """No HTTP answer: connection refused, DNS, TLS, timeout. The message is the low-level reason."""


class Redirected(MirrorScanError):
    """A 30x answer, deliberately not followed."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        return None  # urllib then raises HTTPError with the 30x status


class Deadline:
    """One exchange's deadline: when it passes, every socket the exchange opened is shut down, which ends
    any read or write blocked on it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                sock.shutdown(socket.SHUT_RDWR)
            self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cancel(self) -> None:
        self._timer.cancel()


_CURRENT = threading.local()  # the deadline of the exchange this thread is making


def _watched(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
    class Connection(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            deadline = getattr(_CURRENT, "deadline", None)
            if deadline is not None and self.sock is not None:
                deadline.watch(self.sock)

    return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):  # noqa: ANN001, ANN201
        return self.do_open(_watched(http.client.HTTPConnection), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):  # noqa: ANN001, ANN201
        return self.do_open(_watched(http.client.HTTPSConnection), req, context=self._context)


_OPENER = urllib.request.build_opener(_NoRedirect, _HTTPHandler, _HTTPSHandler)


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
    """One request, all of it within `timeout` seconds: (status, the JSON answer or None). Raises
    Unreachable or Redirected; callers turn them into their own errors (and scrub their own secrets from
    the reason)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    deadline = Deadline(timeout)
    _CURRENT.deadline = deadline
    try:
        with open_url(request, timeout=timeout) as response:
            status, raw = response.status, response.read(limit)
    except urllib.error.HTTPError as err:
        try:
            status, raw = err.code, err.read(min(limit, 100_000))
        except OSError:
            status, raw = err.code, b""
        note = redirect_note(status, err.headers.get("Location"))
        if note:
            raise Redirected(note) from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError, ValueError) as err:
        if deadline.expired:
            raise Unreachable(f"no complete answer within {timeout:g} s") from None
        raise Unreachable(str(getattr(err, "reason", err))) from None
    finally:
        deadline.cancel()
        _CURRENT.deadline = None
    if deadline.expired:
        raise Unreachable(f"no complete answer within {timeout:g} s")  # cut off mid-body: not an answer
    return status, peer_json(raw) if raw else None


def exchange_with(
    service: str,
    section: str,
    base_url: str,
    refused: type[MirrorScanError],
    unavailable: type[MirrorScanError],
    secrets: list[str],
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    timeout: float,
) -> tuple[int, Any]:
    """exchange(), its failures told as the service's own errors: a redirect is a setup problem (`refused`:
    point [section] url at the final address), no answer a passing one (`unavailable`), secrets scrubbed."""
    from mirror_scan.redact import scrub

    try:
        return exchange(method, url, headers, body, timeout)
    except Redirected as err:
        raise refused(f"{service} at {base_url}: {err}", hint=f"set [{section}] url to the final address") from None
    except Unreachable as err:
        raise unavailable(
            f"{service} at {base_url} is unreachable: {scrub(str(err), secrets)}",
            hint=f"check [{section}] url and that {service} is running",
        ) from None
