"""The review console's HTTP side (aiohttp, server-side Jinja pages, no scripts): login, the queue, an item,
decisions, the history, the dashboard, and a JSON API under /api/ for scripts.

Rules every request goes through (the middlewares below):
- No page or API answer without a session (a cookie: HttpOnly, SameSite=Strict, Secure behind TLS) or an
  API token (`Authorization: Bearer`, API only). The login page and the stylesheet are the only exceptions.
- Every form carries its session's CSRF token and a POST without it is refused; the login form uses a
  double-submit cookie (there is no session yet). A POST whose Origin is another site is refused as well.
- Failed logins are braked per account and per client (people.LoginBrake); behind a reverse proxy the
  client is the proxy's X-Forwarded-For, believed only from `[console] trusted_proxies`.
- Pages forbid scripts, images, frames and foreign forms (Content-Security-Policy) and are never cached.
- The ledger is touched from two threads only: one writer (decisions, sessions) and one reader (pages),
  each with its own connection, so a slow restore never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web

from mirror_scan.app.item_ops import ItemOps, Outcome, default_ban_reason
from mirror_scan.errors import MirrorScanError
from mirror_scan.intake.guard import ConnectionGuard
from mirror_scan.moderation.attribution import sole_uploader
from mirror_scan.review.decisions import ReviewerPermits, by
from mirror_scan.review.people import LoginBrake, Reviewer, password_matches, token_hash
from mirror_scan.review.views import Filters, Views, inert
from mirror_scan.settings import Settings
from mirror_scan.store.review_tables import Session
from mirror_scan.text import one_line

log = logging.getLogger("mirror_scan")

SESSION_COOKIE = "ms_session"
LOGIN_COOKIE = "ms_login"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PUBLIC = frozenset({"/login", "/static/console.css"})
LEMMY_SESSION_S = 3600.0
NOTE_LIMIT = 300  # a reviewer's note on a decision, as the history shows it
DECISIONS = ("restore", "confirm")  # what a selection may take; bans are one item at a time, explicitly

LemmyLogin = Callable[[str, str, str], "Reviewer | None"]  # (name, password, 2fa code) -> reviewer, or refused


class BadForm(Exception):
    """A request body that is not a readable form (bad encoding, broken multipart)."""


BODY_S = 30.0  # a form trickled slower than this is cut off (408)


async def read_form(request: web.Request):
    try:
        return await asyncio.wait_for(request.post(), BODY_S)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the form took too long to arrive") from None
    except web.HTTPException:
        raise
    except Exception as error:  # aiohttp raises ValueError, LookupError, UnicodeDecodeError...  # noqa: BLE001
        raise BadForm(str(error)) from None


class LoginUnavailable(MirrorScanError):
    """The login could not be checked (Lemmy unreachable): not a failed attempt."""


class Console:
    def __init__(
        self,
        settings: Settings,
        *,
        lemmy_login: LemmyLogin | None = None,
        brake: LoginBrake | None = None,
    ) -> None:
        self.settings = settings
        self.trusted = frozenset(settings.console_trusted_proxies)
        self.session_s = settings.console_session_hours * 3600
        self.lemmy_login = lemmy_login
        self.brake = brake or LoginBrake()
        self.connections = ConnectionGuard(cap=256, head_s=10.0, what="the console")
        self._checking: asyncio.Semaphore | None = None  # at most a few password checks at once (argon2, Lemmy)
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="console-writer")
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="console-reader")
        self._writer: Any = None
        self._reader: Any = None
        self._summary: tuple[float, Any] = (0.0, None)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("mirror_scan.review", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["inert"] = inert
        self.templates.filters["line"] = one_line
        self.templates.globals["query"] = lambda **kw: urlencode({k: v for k, v in kw.items() if v not in ("", None)})

    # ------------------------------------------------------------------ threads and workspaces

    def open(self) -> None:
        """Open the writer (it recovers what a dead process left half done) and then the reader."""
        from mirror_scan.app.workspace import Workspace

        self._writer = self._writer_pool.submit(Workspace.writer, self.settings).result()
        self._reader = self._reader_pool.submit(Workspace.reader, self.settings).result()

    def close(self) -> None:
        for pool, workspace in ((self._writer_pool, self._writer), (self._reader_pool, self._reader)):
            if workspace is not None:
                pool.submit(workspace.close).result()
            pool.shutdown(wait=True)
        self._writer = self._reader = None

    async def _write(self, fn: Callable[[Any], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, fn, self._writer)

    async def _read(self, fn: Callable[[Any], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, self._reader)

    # ------------------------------------------------------------------ the application

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=256 * 1024)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/", self.queue)
        app.router.add_get("/items/{id}", self.item_page)
        app.router.add_post("/decide", self.decide)
        app.router.add_get("/items/{id}/ban", self.ban_page)
        app.router.add_post("/items/{id}/ban", self.ban)
        app.router.add_get("/history", self.history)
        app.router.add_get("/dashboard", self.dashboard)
        app.router.add_get("/static/console.css", self.stylesheet)
        app.router.add_get("/api/items", self.api_items)
        app.router.add_get("/api/items/{id}", self.api_item)
        app.router.add_post("/api/items/{id}/restore", self.api_restore)
        app.router.add_post("/api/items/{id}/confirm", self.api_confirm)
        app.router.add_post("/api/items/{id}/purge", self.api_purge)
        return app

    # ------------------------------------------------------------------ who is asking

    def _client(self, request: web.Request) -> str:
        peer = request.remote or "?"
        if peer in self.trusted:
            hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
            if hops:
                return hops[-1][:64]
        return peer

    def _https(self, request: web.Request) -> bool:
        if (request.remote or "") in self.trusted:
            return request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        return request.secure

    async def _session(self, request: web.Request) -> Session | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie or len(cookie) > 200:
            return None
        return await self._read(lambda ws: ws.ledger.reviews.session(token_hash(cookie)))

    async def _token_reviewer(self, request: web.Request) -> Reviewer | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or len(token) > 200:
            return None
        name = await self._read(lambda ws: ws.ledger.reviews.token_name(token_hash(token.strip())))
        if name is None:
            return None
        self._writer_pool.submit(lambda: self._writer.ledger.reviews.token_used(name))  # not awaited: best effort
        return Reviewer(name, "token", admin=True)

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        self.connections.head_arrived(request.protocol)
        try:
            response = await self._checked(request, handler)
        except web.HTTPException as answer:
            response = answer
        except BadForm:
            response = self._page("error.html", request, status=400, message="The form could not be read.")
        except Exception:  # answered as a page with the same headers; the log has what happened
            log.exception("console: %s %s failed", request.method, one_line(request.path)[:200])
            response = self._page("error.html", request, status=500, message="Something went wrong (see the log).")
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make browsers send Origin: null
        response.headers["Cache-Control"] = "no-store"
        if isinstance(response, web.HTTPException) and response.status >= 400 and response.text is None:
            response.text = f"{response.status} {response.reason}"
        response.force_close()  # one request per connection: every request head is timed (ConnectionGuard)
        return response

    async def _checked(self, request: web.Request, handler) -> web.StreamResponse:
        if request.method == "POST" and not self._same_origin(request):
            return self._page("error.html", request, status=403, message="This form was sent from another site.")
        if request.path.startswith("/api/"):
            reviewer = await self._token_reviewer(request)
            if reviewer is None:
                return web.json_response(
                    {"error": "an API token is needed: Authorization: Bearer TOKEN (mirror-scan console token create)"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="mirror-scan"'},
                )
            request["reviewer"] = reviewer
            return await handler(request)
        if request.path in PUBLIC:
            return await handler(request)
        session = await self._session(request)
        if session is None:
            if request.method == "GET":
                raise web.HTTPSeeOther("/login")
            return self._page("error.html", request, status=403, message="Your session has ended: log in again.")
        request["session"] = session
        request["reviewer"] = Reviewer(session.who, session.kind, session.admin, session.communities)
        if request.method == "POST":
            form = await read_form(request)
            if not hmac.compare_digest(str(form.get("csrf", "")).encode(), session.csrf.encode()):
                log.warning("console: a form without its CSRF token was refused (%s)", one_line(request.path))
                return self._page("error.html", request, status=403, message="The form's CSRF token is missing.")
            request["form"] = form
        return await handler(request)

    def _same_origin(self, request: web.Request) -> bool:
        """No Origin (older clients; the CSRF token still decides) or this very origin, scheme and host (the
        scheme as the browser sees it: https behind a trusted TLS proxy); "null" and other sites are refused."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        parts = urlsplit(origin)
        scheme = "https" if self._https(request) else "http"
        return parts.scheme == scheme and parts.netloc.lower() == request.host.lower() and not parts.path

    # ------------------------------------------------------------------ rendering

    def _page(self, template: str, request: web.Request, status: int = 200, **values: Any) -> web.Response:
        session = request.get("session")
        body = self.templates.get_template(template).render(
            reviewer=request.get("reviewer"), csrf=session.csrf if session else "", **values
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    async def stylesheet(self, request: web.Request) -> web.Response:
        css = resources.files("mirror_scan.review").joinpath("static/console.css").read_text(encoding="utf-8")
        return web.Response(text=css, content_type="text/css", headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------------ login

    async def login_page(self, request: web.Request, error: str = "", status: int = 200) -> web.Response:
        nonce = secrets.token_urlsafe(24)
        response = self._page("login.html", request, status=status, login_csrf=nonce, error=error,
                              lemmy=self.lemmy_login is not None)  # fmt: skip
        response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", secure=self._https(request),
                            path="/login", max_age=3600)  # fmt: skip
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(request)
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        sent = str(form.get("login_csrf", ""))
        if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
            return await self.login_page(request, "The login form had expired: try again.", status=403)
        name = str(form.get("username", "")).strip()[:100]
        password = str(form.get("password", ""))[:1024]
        code = str(form.get("totp", "")).strip()[:16]
        client = self._client(request)
        wait, stamp = self.brake.attempt(name, client)  # counted now: parallel guesses are counted too
        if wait > 0:
            log.warning("console: login of %r from %s refused: too many attempts", one_line(name)[:64], client)
            response = await self.login_page(
                request, f"Too many failed logins: try again in {max(1, round(wait / 60))} minute(s).", status=429
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        if self._checking is None:
            self._checking = asyncio.Semaphore(4)
        try:
            async with self._checking:
                reviewer = await self._credentials(name, password, code)
        except LoginUnavailable as error:
            log.warning("console: the login of %r cannot be checked: %s", one_line(name)[:64], error)
            return await self.login_page(request, "The login cannot be checked now: try again later.", status=503)
        if reviewer is None:
            log.warning("console: failed login for %r from %s", one_line(name)[:64], client)
            return await self.login_page(request, "Wrong name or password.", status=401)
        if reviewer.kind == "lemmy" and not reviewer.admin and not reviewer.communities:
            return await self.login_page(
                request, "Only the instance's admins and community moderators may use this console.", status=403
            )
        self.brake.succeeded(name, client, stamp)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        # Lemmy rights (admin, moderated communities) are read at login: such a session is short, so a
        # demoted moderator's rights end within the hour.
        lasts = min(self.session_s, LEMMY_SESSION_S) if reviewer.kind == "lemmy" else self.session_s
        session = Session(reviewer.name, reviewer.kind, reviewer.admin, reviewer.communities, csrf,
                          time.time() + lasts)  # fmt: skip
        await self._write(lambda ws: ws.ledger.reviews.open_session(token_hash(token), session))
        log.info("console: %s logged in from %s", one_line(reviewer.who), client)
        response = web.HTTPSeeOther("/")
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=self._https(request),
                            path="/", max_age=int(lasts))  # fmt: skip
        response.del_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def _credentials(self, name: str, password: str, code: str) -> Reviewer | None:
        """A local account of that name (in any case) is checked alone, no fallback to Lemmy; else Lemmy,
        when allowed."""
        if not name or not password:
            return None
        found = await self._read(lambda ws: ws.ledger.reviews.user_hash(name))
        loop = asyncio.get_running_loop()
        if found is not None or self.lemmy_login is None:
            stored_name, stored = found or (name, None)
            ok = await loop.run_in_executor(None, password_matches, stored, password)
            return Reviewer(stored_name, "local", admin=True) if ok else None
        try:
            return await loop.run_in_executor(None, self.lemmy_login, name, password, code)
        except MirrorScanError as error:
            raise LoginUnavailable(str(error).splitlines()[0]) from None

    async def logout(self, request: web.Request) -> web.StreamResponse:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        await self._write(lambda ws: ws.ledger.reviews.close_session(token_hash(cookie)))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ pages

    async def queue(self, request: web.Request) -> web.Response:
        filters = Filters.from_query(request.query)
        view = await self._read(lambda ws: Views(ws).queue(request["reviewer"], filters, time.time()))
        return self._page("queue.html", request, **view)

    async def item_page(self, request: web.Request) -> web.Response:
        item = await self._read(lambda ws: Views(ws).item(request["reviewer"], request.match_info["id"]))
        if item is None:
            return self._page("error.html", request, status=404, message="No such item (or not one of yours).")
        return self._page("item.html", request, item=item)

    async def history(self, request: web.Request) -> web.Response:
        rows = await self._read(lambda ws: Views(ws).history(request["reviewer"]))
        return self._page("history.html", request, decisions=rows)

    async def dashboard(self, request: web.Request) -> web.Response:
        if not request["reviewer"].admin:  # instance-wide counts and scores are the admins'
            return self._page("error.html", request, status=403, message="The dashboard is for the instance's admins.")
        view = await self._read(lambda ws: Views(ws).dashboard(time.time()))
        return self._page("dashboard.html", request, view=view, scores=await self._scores())

    async def _scores(self) -> list[str]:
        """calibrate's view of what was scanned (report --summary), computed at most every five minutes."""
        made, lines = self._summary
        if lines is not None and time.monotonic() - made < 300:
            return lines

        def compute(_workspace) -> list[str]:
            from mirror_scan.app.calibration import stored_calibration
            from mirror_scan.scan.calibrate import margin_lines, rate_lines

            try:
                found = stored_calibration(self.settings)
            except MirrorScanError as error:
                return [f"not available: {error}"]
            if found is None:
                return ["nothing was scanned yet"]
            result, offsets, policy_id = found
            head = f"{result.pictures} decided file(s), policy {policy_id}, severity {result.current:+g}"
            return [head, *rate_lines(result), *margin_lines(result, offsets)]

        lines = await self._read(compute)
        self._summary = (time.monotonic(), lines)
        return lines

    # ------------------------------------------------------------------ decisions

    def _ops(self, workspace, reviewer: Reviewer, via: str, note: str = "") -> ItemOps:
        """The item operations as this reviewer, with their permits; follow-ups logged (undo of moderation)."""
        permits = ReviewerPermits(reviewer, bool(self.settings.console_moderators_may_restore))
        return ItemOps(workspace, by(reviewer, via, note), permits, say=lambda note: log.info("console: %s", note))

    async def _decide(
        self, reviewer: Reviewer, decision: str, item_ids: list[str], via: str, note: str = ""
    ) -> list[Outcome]:
        def run(workspace) -> list[Outcome]:
            with self._ops(workspace, reviewer, via, note) as ops:
                return [getattr(ops, decision)(item_id) for item_id in item_ids]

        outcomes = await self._write(run)
        for outcome in outcomes:
            log.info("console: %s %s item %s: %s%s", one_line(reviewer.who), decision, outcome.item, outcome.outcome,
                     f" ({one_line(outcome.detail)})" if outcome.detail else "")  # fmt: skip
        return outcomes

    async def decide(self, request: web.Request) -> web.Response:
        form = request["form"]
        decision = str(form.get("decision", ""))
        item_ids = [str(i) for i in form.getall("item", [])][:500]
        if decision not in DECISIONS or not item_ids:
            return self._page("error.html", request, status=400, message="Choose items and a decision.")
        if form.get("confirmed") != "yes":  # every decision is confirmed first, with room for a note
            chosen = await self._read(lambda ws: Views(ws).chosen(request["reviewer"], item_ids))
            return self._page("confirm.html", request, decision=decision, items=chosen)
        note = inert(form.get("note", ""), NOTE_LIMIT)
        outcomes = await self._decide(request["reviewer"], decision, item_ids, "console", note)
        return self._page("decided.html", request, decision=decision, outcomes=outcomes)

    async def ban_page(self, request: web.Request) -> web.Response:
        item = await self._read(lambda ws: Views(ws).item(request["reviewer"], request.match_info["id"]))
        if item is None:
            return self._page("error.html", request, status=404, message="No such item (or not one of yours).")
        person = await self._read(lambda ws: sole_uploader(ws.ledger.follow_ups.attribution(item["id"])))
        return self._page("ban.html", request, item=item, person=person, reason=default_ban_reason(item["id"]))

    async def ban(self, request: web.Request) -> web.Response:
        from mirror_scan.moderation.actions import build_lemmy

        item_id = request.match_info["id"]
        form = request["form"]
        if form.get("confirm") != "yes":
            return self._page("error.html", request, status=400, message="Tick the box to confirm the ban.")

        def run(workspace) -> Outcome:
            try:
                lemmy = build_lemmy(self.settings)
            except MirrorScanError as error:
                return Outcome(item_id, "ban", "refused", str(error))
            with self._ops(workspace, request["reviewer"], "console") as ops:
                return ops.ban(item_id, str(form.get("reason", "")), lemmy)

        outcome = await self._write(run)
        log.info("console: %s ban (item %s): %s", one_line(request["reviewer"].who), item_id, outcome.outcome)
        return self._page("decided.html", request, decision="ban", outcomes=[outcome])

    # ------------------------------------------------------------------ the JSON API

    async def api_items(self, request: web.Request) -> web.Response:
        filters = Filters.from_query(request.query)
        view = await self._read(lambda ws: Views(ws).queue(request["reviewer"], filters, time.time()))
        return web.json_response({"items": view["items"], "total": view["total"]})

    async def api_item(self, request: web.Request) -> web.Response:
        item = await self._read(lambda ws: Views(ws).item(request["reviewer"], request.match_info["id"]))
        if item is None:
            return web.json_response({"error": "no such item"}, status=404)
        return web.json_response(item)

    async def _api_decision(self, request: web.Request, decision: str) -> web.Response:
        (outcome,) = await self._decide(request["reviewer"], decision, [request.match_info["id"]], "api")
        status = {"done": 200, "pending": 202, "refused": 409, "failed": 502}[outcome.outcome]
        return web.json_response(outcome.as_json(), status=status)

    async def api_restore(self, request: web.Request) -> web.Response:
        return await self._api_decision(request, "restore")

    async def api_confirm(self, request: web.Request) -> web.Response:
        return await self._api_decision(request, "confirm")

    async def api_purge(self, request: web.Request) -> web.Response:
        """The bytes deleted for good (admins only; the pages offer no button for it): for scripts that
        keep a retention period, the same purge as `quarantine purge`."""
        return await self._api_decision(request, "purge")


class _GuardedRunner(web.AppRunner):
    """aiohttp's runner, its server's connections bounded and timed by a ConnectionGuard."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self):  # noqa: ANN202 - aiohttp's own Server
        server = await super()._make_server()
        self.guard.attach(server)
        return server


def run_console(console: Console, host: str, port: int, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; the workspaces are opened first and closed last."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = _GuardedRunner(console.app(), console.connections, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise MirrorScanError(f"the console cannot listen on {host}:{port}: {error.strerror}") from None
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if ready:
            ready(sockets[0].getsockname()[1] if sockets else port)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    console.open()
    try:
        asyncio.run(main())
    finally:
        console.close()
