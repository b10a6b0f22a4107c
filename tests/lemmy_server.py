"""A small HTTP server that follows Lemmy's documented HTTP contract for the calls mirror-scan makes
(Lemmy cannot be installed here): 0.19's /api/v3 or 1.0's /api/v4, JWT login, removals (1.0 requires a
reason), reports and their resolution, private messages, person lookup, bans. It records every request
so tests check exactly what was sent, and can refuse the bot like a Lemmy whose bot lacks a right."""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Request:
    method: str
    path: str
    query: dict
    body: dict | None
    authorized: bool


@dataclass
class FakeLemmy:
    api: str = "v3"  # v3 = Lemmy 0.19, v4 = Lemmy 1.0
    version: str = "0.19.5"
    users: dict = field(default_factory=dict)  # name -> {"id", "password", "admin"}
    refuse: dict = field(default_factory=dict)  # "POST /post/remove" -> Lemmy error name (HTTP 400)
    unavailable: int = 0  # answer the next N authenticated calls with 503
    redirect: str | None = None  # answer every authenticated call with a 302 to this URL
    requests: list = field(default_factory=list)
    reports: dict = field(default_factory=dict)  # id -> {"kind", "object_id", "resolved"}
    removed: dict = field(default_factory=dict)  # ("post", id) -> removed flag
    messages: list = field(default_factory=list)  # (recipient_id, content)
    bans: list = field(default_factory=list)  # (person_id, ban, reason)

    def __post_init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._next_report = 500
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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
                status, answer = outer.route(method, path[len(prefix) :], parse_qs(url.query), body, user)
                return self._reply(status, answer)

            def do_GET(self):  # noqa: N802
                self._handle("GET")

            def do_POST(self):  # noqa: N802
                self._handle("POST")

            def do_PUT(self):  # noqa: N802
                self._handle("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeLemmy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ the contract

    def _person(self, name: str) -> dict:
        user = self.users[name]
        return {"id": user["id"], "name": name, "local": True}

    def route(self, method: str, path: str, query: dict, body, user: str | None):
        v4 = self.api == "v4"
        login_path = "/account/auth/login" if v4 else "/user/login"
        if (method, path) == ("GET", "/site"):
            answer = {"version": self.version, "admins": []}
            if user and not v4:
                answer["my_user"] = self._my_user(user)
            return 200, answer
        if (method, path) == ("POST", login_path):
            name = (body or {}).get("username_or_email")
            if name in self.users and self.users[name]["password"] == (body or {}).get("password"):
                token = secrets.token_hex(16)
                self.tokens[token] = name
                return 200, {"jwt": token, "registration_created": False, "verify_email_sent": False}
            return 400, {"error": "incorrect_login"}
        if user is None:
            return 401, {"error": "not_logged_in"}
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
            if name not in self.users:
                return 404, {"error": "not_found"}
            return 200, {"person_view": {"person": self._person(name)}}
        for kind in ("post", "comment"):
            if (method, path) == ("POST", f"/{kind}/remove"):
                if v4 and not (body or {}).get("reason"):
                    return 400, {"error": "reason_required"}  # 1.0: reason required on removals
                self.removed[(kind, body[f"{kind}_id"])] = bool(body["removed"])
                return 200, {f"{kind}_view": {kind: {"id": body[f"{kind}_id"], "removed": body["removed"]}}}
        for kind in ("post", "comment", "private_message"):
            if (method, path) == ("POST", f"/{kind}/report"):
                self._next_report += 1
                rid = self._next_report
                self.reports[rid] = {"kind": kind, "object_id": body[f"{kind}_id"], "resolved": False}
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
        return 404, {"error": "not_found"}

    def _my_user(self, name: str) -> dict:
        return {
            "local_user_view": {"person": self._person(name), "local_user": {"admin": self.users[name]["admin"]}},
            "moderates": [],
        }

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        prefix = f"/api/{self.api}"
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or r.path == prefix + path)
        ]
