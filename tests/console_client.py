"""The review console as the tests meet it: the real `mirror-scan console` in a subprocess on a real state,
and a plain HTTP client (http.client, its own cookie jar, no redirects followed) that sees every answer."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

from .conftest import CLI, run_cli
from .s3server import free_port

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')
PASSWORD = "correct horse battery staple"


class ConsoleServer:
    def __init__(self, state: Path, quarantine: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.log = state.with_name("console.log")
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [*CLI, "console", "--listen", f"127.0.0.1:{self.port}", "--state", str(state),
             "--quarantine", str(quarantine), *args],
            stdout=self._log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the console exited: {self.log.read_text()}")
            try:
                http.client.HTTPConnection("127.0.0.1", self.port, timeout=2).request("GET", "/login")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the console did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.log.read_text()


class Answer:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read().decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def csrf(self) -> str:
        found = CSRF.search(self.body)
        assert found, self.body[:500]
        return found.group(1)


class Client:
    def __init__(self, server: ConsoleServer) -> None:
        self.server = server
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    def request(self, method: str, path: str, fields: dict | list | None = None, headers: dict | None = None) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if fields is not None:
            body = urlencode(fields, doseq=True)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=sent)
        answer = Answer(conn.getresponse())
        conn.close()
        for header in answer.headers.get_all("Set-Cookie") or []:
            self.set_cookie_headers.append(header)
            for name, morsel in SimpleCookie(header).items():
                if morsel.value and morsel["max-age"] != "0":
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return answer

    def get(self, path: str, **headers) -> Answer:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, fields: dict | list, **headers) -> Answer:
        return self.request("POST", path, fields, headers=headers)

    def login(self, name: str, password: str = PASSWORD, totp: str = "") -> Answer:
        page = self.get("/login")
        nonce = LOGIN_CSRF.search(page.body).group(1)
        return self.post("/login", {"login_csrf": nonce, "username": name, "password": password, "totp": totp})


def add_user(cli, name: str, tmp: Path, password: str = PASSWORD) -> None:
    secret = tmp / f"{name}.password"
    secret.write_text(password + "\n")
    proc = cli("console", "user", "add", name, "--password-file", str(secret))
    assert proc.returncode == 0, proc.stderr


@contextlib.contextmanager
def signed_in(state: Path, quarantine: Path, tmp: Path, name: str = "ana"):
    """A console on this state with one local account, logged in: yields that reviewer's Client."""
    add_user(lambda *args: run_cli(*args, "--state", str(state)), name, tmp)
    server = ConsoleServer(state, quarantine)
    try:
        reviewer = Client(server)
        assert reviewer.login(name).status == 303
        yield reviewer
    finally:
        server.stop()
