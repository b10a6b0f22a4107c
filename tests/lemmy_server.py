"""A small HTTP server answering the calls mirror-scan makes the way Lemmy does (Lemmy cannot be installed
here): 0.19's /api/v3 or 1.0's /api/v4. It records every request, so tests check exactly what was sent,
and can refuse the bot like a Lemmy whose bot lacks a right. Each rule below is Lemmy's, from
LemmyNet/lemmy at the tag named:

- Status codes (crates/utils/src/error.rs:57-71 @0.19.3, :226-237 @1.0.0-beta.1): `incorrect_login` is 401,
  not found 404, every other error 400 (rate limits included, in 0.19), body `{"error": name}`; 1.0
  alpha.18+ adds `"cause"`. A missing or invalid token is 401 `incorrect_login` (the session middleware
  ignores a bad JWT, then the user extractor fails: crates/db_views/src/local_user_view.rs:123 @0.19.3).
- Rate limits (crates/utils/src/rate_limit/mod.rs:184-200 @0.19.3): 0.19 answers 400
  `{"error":"rate_limit_error"}`; 1.0 answers 429 `{"error":"too_many_requests"}` (alpha.10+,
  crates/utils/src/response.rs). Login is in the "register" bucket from 0.19.4 (commit 49bb17b58).
- Private message reports (crates/api/src/private_message_report/create.rs:34-37 @0.19.3; 1.0
  crates/api/api/src/reports/private_message_report/create.rs:43-46): only the recipient may report; 400
  `couldnt_create_report` (0.19), `couldnt_create` (1.0).
- Reports (crates/api/src/lib.rs:65-76 check_report_reason): the reason trimmed must be non-empty
  (`report_reason_required`) and at most 1000 characters (`report_too_long`); from 0.19.4 a removed post or
  comment cannot be reported (400 `deleted`, crates/api_common/src/utils.rs:258-272), and a removal
  resolves its open reports (crates/api_crud/src/post/remove.rs:62 @0.19.20).
- The logged-in user (GET /api/v3/site's `my_user` in 0.19, GET /api/v4/account in 1.0: MyUserInfo,
  crates/api_common/src/site.rs:311 @0.19.3, crates/db_views/site/src/api.rs:464 @1.0.0-beta.1):
  `local_user_view {local_user {admin}, person}` and `moderates: [{community, moderator}]`; a community's
  URL is `actor_id` in 0.19, `ap_id` in 1.0; 1.0 moved `banned` to LocalUserView. Login refuses a banned
  person in 0.19 (400 `site_ban`, crates/api_common/src/utils.rs:148 check_user_valid) but not in 1.0.
  Logout: POST /api/v3/user/logout, /api/v4/account/auth/logout invalidate the token (`{"success":true}`).
- Removals in 1.0 (alpha.9+) need a `reason` field (a missing one is a deserialise error: 400
  `{"error":"unknown","message":"Json deserialize error: missing field `reason`"}`; "" is accepted).
- Reports in 1.0 take `violates_instance_rules` (crates/db_views/report_combined/src/api.rs:65-137
  @1.0.0-beta.1): kept with the report; 0.19's structs have no such field and serde ignores it.
- `DELETE /api/v4/image {"filename"}` (crates/routes/src/images/delete.rs:142-154 @1.0.0-beta.1): admins
  only (400 `not_an_admin`), in the "image" rate bucket (6 an hour by default); it POSTs pict-rs's
  `/internal/purge?alias=` (api_utils request.rs:402-431): a non-2xx answer is 400 `unknown`, a `msg` other
  than "ok" 400 `pictrs_purge_response_error`; then deletes the `local_image` rows of every alias pict-rs
  returned; `{"success":true}`. 0.19 has no such route.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from .loopback import LoopbackHTTP, send_json


@dataclass
class Request:
    method: str
    path: str
    query: dict
    body: dict | None
    authorized: bool


@dataclass
class FakeLemmy(LoopbackHTTP):
    api: str = "v3"  # v3 = Lemmy 0.19, v4 = Lemmy 1.0
    version: str = "0.19.5"
    users: dict = field(default_factory=dict)  # name -> {"id", "password", "admin", "moderates", "banned"}
    refuse: dict = field(default_factory=dict)  # "POST /post/remove" -> Lemmy error name (HTTP 400)
    unavailable: int = 0  # answer the next N authenticated calls with 503
    redirect: str | None = None  # answer every authenticated call with a 302 to this URL
    requests: list = field(default_factory=list)
    reports: dict = field(default_factory=dict)  # id -> {"kind", "object_id", "resolved"}
    removed: dict = field(default_factory=dict)  # ("post", id) -> removed flag
    messages: list = field(default_factory=list)  # (recipient_id, content)
    bans: list = field(default_factory=list)  # (person_id, ban, reason)
    pm_recipients: dict = field(default_factory=dict)  # private message id -> its recipient's person id
    # The "register" rate bucket: after this many hits, rate limited. 0.19 counts logins in it
    # (src/api_routes_http.rs:279-281 @0.19.20); 1.0 every POST under /account/auth/, logout included
    # (crates/api/routes/src/lib.rs:342-358 @1.0.0-beta.1); 10 an hour per IP by default in both
    # (migrations/2025-04-07-100344_registration-rate-limit).
    logins_allowed: int | None = None
    register_hits: int = 0
    logins: int = 0
    images_allowed: int | None = None  # the "image" rate bucket (1.0's image delete): after this many, limited
    image_hits: int = 0
    pictrs: tuple | None = None  # (url, api_key) of the pict-rs this Lemmy purges through
    local_image_rows: object = None  # deletes local_image rows of aliases: a callable(list[str])

    def __post_init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._next_report = 500
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body) -> None:
                send_json(self, status, body)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    return self._reply(400, {"error": "invalid_body"})
                auth = self.headers.get("Authorization", "")
                user = outer.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
                prefix = f"/api/{outer.api}"
                path = url.path
                with outer._lock:
                    outer.requests.append(Request(method, path, parse_qs(url.query), body, user is not None))
                if not path.startswith(prefix):
                    return self._reply(404, None)
                if outer.redirect and user is not None:
                    self.send_response(302)
                    self.send_header("Location", outer.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                token = auth.removeprefix("Bearer ")
                status, answer = outer.route(method, path[len(prefix) :], parse_qs(url.query), body, user, token)
                return self._reply(status, answer)

            def do_GET(self):  # noqa: N802
                self._handle("GET")

            def do_POST(self):  # noqa: N802
                self._handle("POST")

            def do_PUT(self):  # noqa: N802
                self._handle("PUT")

            def do_DELETE(self):  # noqa: N802
                self._handle("DELETE")

        self._listen(Handler)

    # ------------------------------------------------------------------ the contract

    def _person(self, name: str) -> dict:
        user = self.users[name]
        return {"id": user["id"], "name": name, "local": True}

    def route(self, method: str, path: str, query: dict, body, user: str | None, token: str = ""):
        v4 = self.api == "v4"
        login_path = "/account/auth/login" if v4 else "/user/login"
        if (method, path) == ("GET", "/site"):
            answer = {"version": self.version, "admins": []}
            if user and not v4:
                answer["my_user"] = self._my_user(user)
            return 200, answer
        limited = (429, {"error": "too_many_requests"}) if v4 else (400, {"error": "rate_limit_error"})
        if (method, path) == ("POST", login_path):
            self.logins += 1
            self.register_hits += 1
            if self.logins_allowed is not None and self.register_hits > self.logins_allowed:
                return limited
            name = (body or {}).get("username_or_email")
            if name in self.users and self.users[name]["password"] == (body or {}).get("password"):
                if self.users[name].get("banned") and not v4:
                    return self._error(400, "site_ban")
                token = secrets.token_hex(16)
                self.tokens[token] = name
                return 200, {"jwt": token, "registration_created": False, "verify_email_sent": False}
            return self._error(401, "incorrect_login")
        if user is None:
            return self._error(401, "incorrect_login")
        if (method, path) == ("POST", "/account/auth/logout" if v4 else "/user/logout"):
            if v4:
                self.register_hits += 1
                if self.logins_allowed is not None and self.register_hits > self.logins_allowed:
                    return limited
            self.tokens = {t: u for t, u in self.tokens.items() if t != token}
            return 200, {"success": True}
        key = f"{method} {path}"
        if key in self.refuse:
            return 400, {"error": self.refuse[key]}
        if self.unavailable > 0:
            self.unavailable -= 1
            return 503, None
        if v4 and (method, path) == ("GET", "/account"):
            return 200, self._my_user(user)
        if (method, path) == ("GET", "/person" if v4 else "/user"):
            name = query.get("username", [""])[0]
            if name not in self.users:  # 0.19: couldnt_find_person (crates/api_crud/src/user/read.rs); 1.0: not_found
                return self._error(404, "not_found") if v4 else self._error(400, "couldnt_find_person")
            return 200, {"person_view": {"person": self._person(name)}}
        for kind in ("post", "comment"):
            if (method, path) == ("POST", f"/{kind}/remove"):
                if v4 and "reason" not in (body or {}):  # 1.0: a required field ("" is accepted)
                    return 400, {"error": "unknown", "message": "Json deserialize error: missing field `reason`"}
                self.removed[(kind, body[f"{kind}_id"])] = bool(body["removed"])
                if body["removed"] and self._at_least("0.19.4"):  # a removal resolves its open reports
                    for report in self.reports.values():
                        if (report["kind"], report["object_id"]) == (kind, body[f"{kind}_id"]):
                            report["resolved"] = True
                return 200, {f"{kind}_view": {kind: {"id": body[f"{kind}_id"], "removed": body["removed"]}}}
        for kind in ("post", "comment", "private_message"):
            if (method, path) == ("POST", f"/{kind}/report"):
                reason = str((body or {}).get("reason") or "").strip()
                if not reason:
                    return self._error(400, "report_reason_required")
                if len(reason) > 1000:
                    return self._error(400, "report_too_long")
                if kind == "private_message":
                    if self.pm_recipients.get(body["private_message_id"]) != self.users[user]["id"]:
                        return self._error(400, "couldnt_create" if v4 else "couldnt_create_report")
                elif self.removed.get((kind, body[f"{kind}_id"])) and self._at_least("0.19.4"):
                    return self._error(400, "deleted")
                self._next_report += 1
                rid = self._next_report
                self.reports[rid] = {
                    "kind": kind,
                    "object_id": body[f"{kind}_id"],
                    "resolved": False,
                    "violates_instance_rules": bool(v4 and body.get("violates_instance_rules")),
                }
                return 200, {f"{kind}_report_view": {f"{kind}_report": {"id": rid, "reason": body["reason"]}}}
            if (method, path) == ("PUT", f"/{kind}/report/resolve"):
                report = self.reports.get(body["report_id"])
                if report is None or report["kind"] != kind:
                    return 404, {"error": "not_found"}
                report["resolved"] = bool(body["resolved"])
                return 200, {f"{kind}_report_view": {f"{kind}_report": {"id": body["report_id"]}}}
        if (method, path) == ("POST", "/private_message"):
            self.messages.append((body["recipient_id"], body["content"]))
            return 200, {"private_message_view": {}}
        if (method, path) == ("POST", "/admin/ban" if v4 else "/user/ban"):
            self.bans.append((body["person_id"], body["ban"], body.get("reason")))
            return 200, {"person_view": {}, "banned": body["ban"]}
        if v4 and (method, path) == ("DELETE", "/image"):
            return self._delete_image(str((body or {}).get("filename") or ""), user)
        return 404, {"error": "not_found"}

    def _delete_image(self, alias: str, user: str) -> tuple[int, dict]:
        import urllib.error
        import urllib.parse
        import urllib.request

        self.image_hits += 1
        if self.images_allowed is not None and self.image_hits > self.images_allowed:
            return 429, {"error": "too_many_requests"}
        if not self.users[user]["admin"]:
            return self._error(400, "not_an_admin")
        url, key = self.pictrs
        request = urllib.request.Request(f"{url}/internal/purge?alias={urllib.parse.quote(alias)}", data=b"",
                                         headers={"x-api-token": key}, method="POST")  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
                purged = json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as err:
            return 400, {"error": "unknown", "message": f"HTTP status client error ({err.code})"}
        if purged.get("msg") != "ok":
            return self._error(400, "pictrs_purge_response_error")
        if self.local_image_rows is not None:
            self.local_image_rows(purged.get("aliases") or [])
        return 200, {"success": True}

    def _at_least(self, version: str) -> bool:
        if self.api == "v4":
            return True
        have = tuple(int(p) for p in self.version.split("-")[0].split(".")[:3])
        return have >= tuple(int(p) for p in version.split("."))

    def _error(self, status: int, name: str) -> tuple[int, dict]:
        body = {"error": name}
        if self.api == "v4":
            body["cause"] = "".join(part.title() for part in name.split("_"))  # 1.0 alpha.18+
        return status, body

    def _my_user(self, name: str) -> dict:
        user = self.users[name]
        url_field = "ap_id" if self.api == "v4" else "actor_id"
        view = {"person": self._person(name), "local_user": {"admin": user["admin"]}}
        if self.api == "v4":
            view["banned"] = bool(user.get("banned"))
        else:
            view["person"]["banned"] = bool(user.get("banned"))
        moderates = [
            {"community": {"id": c["id"], "name": c["name"], url_field: c["url"]}, "moderator": self._person(name)}
            for c in user.get("moderates", [])
        ]
        return {"local_user_view": view, "moderates": moderates}

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        prefix = f"/api/{self.api}"
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or r.path == prefix + path)
        ]
