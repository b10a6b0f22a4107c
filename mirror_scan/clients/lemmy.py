"""Lemmy's HTTP API for the moderation bot (stdlib HTTP): version detection, login, remove and restore
posts and comments, reports and their resolution, private messages, bans.

Contract (LemmyNet/lemmy, lemmy-js-client):
- 0.19, `/api/v3`: `POST /user/login {username_or_email, password}` -> `{jwt}`, then `Authorization:
  Bearer`; `POST /post/remove {post_id, removed, reason}`, `POST /comment/remove {comment_id, ...}`;
  `POST /post/report {post_id, reason}` -> `{post_report_view: {post_report: {id}}}` and
  `PUT /post/report/resolve {report_id, resolved}` (comments and private messages alike);
  `POST /private_message {content, recipient_id}`; `GET /user?username=` -> `{person_view: {person}}`;
  `POST /user/ban {person_id, ban, reason}`; `GET /site` -> `{version, my_user, admins}`.
- 1.0, `/api/v4`: `POST /account/auth/login`; `reason` required on removals; `GET /person?username=`;
  `POST /admin/ban {person_id, ban, reason}`; `GET /account` -> my user; `GET /site` -> `{version}`.
The version comes from `GET /api/v4/site` (1.0; it also serves v3), else `GET /api/v3/site`.

Failures are sorted for the retry logic: `LemmyRefused` (a 4xx with Lemmy's error, e.g. not_a_moderator:
retrying will not help) and `LemmyUnavailable` (network, timeout, 5xx, and rate limits: 0.19 answers them
400 `{"error":"rate_limit_error"}`, 1.0 answers 429; retried with backoff). Status codes as Lemmy sends
them (crates/utils/src/error.rs): 401 `incorrect_login` for a bad login or a missing/invalid token, 404
for what is not found, 400 for everything else.

The bot logs in once and its token is kept (0600, beside the state database) for the next commands:
0.19 puts logins in its "register" rate bucket (3 an hour by default before 0.19.11, 10 after:
LemmyNet/lemmy commit 49bb17b58, migrations/2025-04-07-100344_registration-rate-limit), so logging in
afresh per command would soon be refused. A 401 drops the token and logs in again once (1.0's tokens
expire after a week). The password and the token never appear in messages.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror_scan.atomic import atomic_write_bytes
from mirror_scan.clients.http import exchange_with
from mirror_scan.errors import MirrorScanError
from mirror_scan.redact import scrub


class LemmyUnavailable(MirrorScanError):
    """Lemmy could not be reached or failed for a passing reason; retried later."""


class LemmyRefused(MirrorScanError):
    """Lemmy refused the request (permissions, unknown object, bad login): not retried by itself."""


@dataclass
class Lemmy:
    url: str
    username: str
    password: str = field(repr=False)
    timeout: float = 15.0
    api: str | None = None  # "v3" | "v4", detected on first use
    version: str | None = None
    token_file: Path | None = None  # where the bot's token is kept between commands (private)
    totp: str = field(default="", repr=False)  # a person's two-factor code (the console's Lemmy login)
    _jwt: str | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ transport

    def _scrub(self, text: str) -> str:
        return scrub(text, [self.password, self._jwt or ""])

    def _send(
        self, method: str, path: str, body: dict | None = None, query: dict | None = None, auth: bool = True
    ) -> tuple[int, Any]:
        url = f"{self.url.rstrip('/')}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "User-Agent": "mirror-scan"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if auth and self._jwt:
            headers["Authorization"] = f"Bearer {self._jwt}"
        secrets = [self.password, self._jwt or ""]
        return exchange_with("Lemmy", "lemmy", self.url, LemmyRefused, LemmyUnavailable, secrets,
                             method, url, headers, data, self.timeout)  # fmt: skip

    def _call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> Any:
        """An authenticated call on the detected API; logs in first, and once more if the token expired."""
        api, _ = self.detect()  # a kept token skips the login, not the version
        self.login()
        prefix = f"/api/{api}"
        status, payload = self._send(method, prefix + path, body, query)
        if status == 401:  # expired or revoked (1.0 tokens last a week): log in once more
            with self._lock:
                self._jwt = None
                self._forget_token()
            self.login()
            status, payload = self._send(method, prefix + path, body, query)
        return self._result(f"{method} {prefix}{path}", status, payload)

    def _result(self, what: str, status: int, payload: Any) -> Any:
        if 200 <= status < 300:
            return payload
        error = payload.get("error") if isinstance(payload, dict) else None
        detail = self._scrub(str(error or (payload.get("message") if isinstance(payload, dict) else "") or ""))
        if _passing(status, error):
            raise LemmyUnavailable(f"Lemmy answered {status} to {what}" + (f" ({detail})" if detail else ""))
        raise LemmyRefused(
            f"Lemmy refused {what}: {status}" + (f" {detail}" if detail else ""),
            hint="the bot account needs to be an admin (or a moderator of the communities concerned)",
        )

    # ------------------------------------------------------------------ session

    def detect(self) -> tuple[str, str]:
        """(api, version): v4 for Lemmy 1.0, v3 for 0.19."""
        if self.api is None:
            for api in ("v4", "v3"):
                status, payload = self._send("GET", f"/api/{api}/site", auth=False)
                if status == 200 and isinstance(payload, dict) and "version" in payload:
                    self.api, self.version = api, str(payload["version"])
                    break
                error = payload.get("error") if isinstance(payload, dict) else None
                if _passing(status, error):
                    raise LemmyUnavailable(f"Lemmy answered {status} to GET /api/{api}/site" + _named(error))
            else:
                raise LemmyRefused(
                    f"{self.url} does not answer like Lemmy (no /api/v4/site or /api/v3/site)",
                    hint="[lemmy] url is the instance's address, e.g. https://lemmy.example",
                )
        return self.api, self.version or "?"

    def login(self) -> None:
        with self._lock:
            if self._jwt or self._load_token():
                return
            api, _ = self.detect()
            path = "/api/v4/account/auth/login" if api == "v4" else "/api/v3/user/login"
            body = {"username_or_email": self.username, "password": self.password}
            if self.totp:
                body["totp_2fa_token"] = self.totp
            status, payload = self._send("POST", path, body, auth=False)
            if status == 200 and isinstance(payload, dict) and payload.get("jwt"):
                self._jwt = str(payload["jwt"])
                self._save_token()
                return
            error = payload.get("error") if isinstance(payload, dict) else None
            if _passing(status, error):
                raise LemmyUnavailable(
                    f"Lemmy answered {status} to the bot's login" + _named(error),
                    hint="Lemmy rate-limits logins (its register bucket): retried later" if error else None,
                )
            raise LemmyRefused(
                f"Lemmy refused the login of bot account {self.username!r}"
                + (f" ({self._scrub(str(error))})" if error else f" ({status})"),
                hint="check [lemmy] username and password_file (a bot with 2FA cannot log in)",
            )

    # ------------------------------------------------------------------ the kept token

    def _load_token(self) -> bool:
        if self.token_file is None:
            return False
        try:
            kept = json.loads(self.token_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if isinstance(kept, dict) and kept.get("url") == self.url and kept.get("username") == self.username:
            jwt = kept.get("jwt")
            if isinstance(jwt, str) and jwt:
                self._jwt = jwt
                return True
        return False

    def _save_token(self) -> None:
        if self.token_file is None:
            return
        data = json.dumps({"url": self.url, "username": self.username, "jwt": self._jwt}).encode()
        with contextlib.suppress(OSError):  # not kept: the next command logs in again
            atomic_write_bytes(self.token_file, data, 0o600, durable=False)

    def _forget_token(self) -> None:
        if self.token_file is not None:
            self.token_file.unlink(missing_ok=True)

    def me(self) -> dict[str, Any]:
        """{name, admin, moderates: [community names], moderates_actors: [their actor URLs]} of the account
        (MyUserInfo: GET /api/v3/site's my_user in 0.19, GET /api/v4/account in 1.0; admin is
        local_user.admin in both; a community's URL is actor_id in 0.19, ap_id in 1.0)."""
        if self.detect()[0] == "v4":
            info = self._call("GET", "/account") or {}
        else:
            info = (self._call("GET", "/site") or {}).get("my_user") or {}
        view = info.get("local_user_view") or {}
        return {
            "name": (view.get("person") or {}).get("name", self.username),
            "admin": bool((view.get("local_user") or {}).get("admin") or (view.get("person") or {}).get("admin")),
            "banned": bool(view.get("banned") or (view.get("person") or {}).get("banned")),  # 1.0 | 0.19
            "moderates": sorted(
                str((m.get("community") or {}).get("name")) for m in info.get("moderates") or [] if m.get("community")
            ),
            "moderates_actors": sorted(
                str(c.get("actor_id") or c.get("ap_id"))
                for c in ((m.get("community") or {}) for m in info.get("moderates") or [])
                if c.get("actor_id") or c.get("ap_id")
            ),
        }

    def logout(self) -> None:
        """End this login in Lemmy (0.19: POST /api/v3/user/logout; 1.0: /api/v4/account/auth/logout
        invalidate the token in Lemmy's database); best effort."""
        if not self._jwt:
            return
        api, _ = self.detect()
        path = "/api/v4/account/auth/logout" if api == "v4" else "/api/v3/user/logout"
        with contextlib.suppress(MirrorScanError):
            self._send("POST", path, {})
        self._jwt = None

    # ------------------------------------------------------------------ actions

    def remove(self, kind: str, object_id: int, removed: bool, reason: str) -> None:
        """kind: post | comment. removed=False restores."""
        self._call("POST", f"/{kind}/remove", {f"{kind}_id": object_id, "removed": removed, "reason": reason})

    def report(self, kind: str, object_id: int, reason: str) -> str | None:
        """kind: post | comment | private_message. Returns the report's id (to resolve it on restore). On 1.0
        a post or comment report says it violates the instance's rules: it goes to the local admins only and
        is never federated (report_combined/src/api.rs:65-137, post_report/create.rs:85-95 @1.0.0-beta.1),
        which is where a report about CSAM belongs. 0.19 has no such field (it would ignore it and federate
        the report to the community's instance anyway)."""
        body: dict[str, Any] = {f"{kind}_id": object_id, "reason": reason}
        if kind in ("post", "comment") and self.detect()[0] == "v4":
            body["violates_instance_rules"] = True
        payload = self._call("POST", f"/{kind}/report", body) or {}
        view = payload.get(f"{kind}_report_view") or {}
        report = view.get(f"{kind}_report") or {}
        return str(report["id"]) if "id" in report else None

    def resolve_report(self, kind: str, report_id: int, resolved: bool = True) -> None:
        self._call("PUT", f"/{kind}/report/resolve", {"report_id": report_id, "resolved": resolved})

    def person_id(self, username: str) -> int:
        path = "/person" if self.detect()[0] == "v4" else "/user"
        payload = self._call("GET", path, query={"username": username}) or {}
        person = (payload.get("person_view") or {}).get("person") or {}
        if "id" not in person:
            raise LemmyRefused(f"Lemmy has no user {username!r}", hint="check [lemmy] notify")
        return int(person["id"])

    def private_message(self, username: str, content: str) -> None:
        self._call("POST", "/private_message", {"content": content, "recipient_id": self.person_id(username)})

    def delete_image(self, alias: str) -> None:
        """Lemmy 1.0's admin image purge: `DELETE /api/v4/image {"filename"}` has pict-rs purge the upload
        (`/internal/purge`) and deletes Lemmy's `local_image` rows of every alias pict-rs names, which a
        purge in pict-rs alone leaves behind (routes/src/images/delete.rs:142-154, api_utils request.rs:402-431
        @1.0.0-beta.1). In the "image" rate bucket (6 an hour per address by default): a rate limit is
        LemmyUnavailable. 0.19 has no such route (LemmyRefused)."""
        if self.detect()[0] != "v4":
            raise LemmyRefused("Lemmy 0.19 has no image purge of its own; pict-rs's is used")
        self._call("DELETE", "/image", {"filename": alias})

    def ban(self, person_id: int, reason: str, ban: bool = True) -> None:
        path = "/admin/ban" if self.detect()[0] == "v4" else "/user/ban"
        self._call("POST", path, {"person_id": person_id, "ban": ban, "reason": reason})


def person_login(url: str, username: str, password: str, totp: str = "", timeout: float = 15.0) -> dict | None:
    """Check a person's own Lemmy credentials (the review console's login): their `me()`, or None when Lemmy
    refuses the login (wrong password, 2FA code missing or wrong, banned, unverified). Raises
    LemmyUnavailable when Lemmy cannot answer. Nothing is kept: the login is ended in Lemmy at once."""
    client = Lemmy(url, username, password, timeout=timeout, totp=totp)
    try:
        client.login()
    except LemmyRefused:
        return None
    try:
        return client.me()
    finally:
        # 0.19 ends the login (its logout is in the message bucket). 1.0 counts a logout against the same
        # "register" bucket as logins (10 an hour per address by default, shared with the bot when both
        # come from this machine: crates/api/routes/src/lib.rs:342-358 @1.0.0-beta.1): there the token,
        # never kept or shown anywhere, simply expires, so a console login costs one of the ten, not two.
        if client.api != "v4":
            client.logout()


def _passing(status: int, error: object) -> bool:
    """A failure that passes by itself: the server (5xx) or a rate limit (0.19: 400 rate_limit_error;
    1.0: 429, body {"error":"too_many_requests"} from alpha.10, empty before)."""
    return status == 429 or status >= 500 or error in ("rate_limit_error", "too_many_requests")


def _named(error: object) -> str:
    return f" ({error})" if error else ""
