"""The review console (issue 29) through the real CLI: `mirror-scan console` on a real state whose items came
from a real `rclone serve s3` bucket, met by a plain HTTP client as a moderator and as an attacker; Lemmy
logins against the Lemmy test server (tests/lemmy_server.py follows LemmyNet/lemmy 0.19.3 and 1.0.0-beta.1)
with attribution from a real PostgreSQL holding Lemmy's schema (tests/test_lemmy.py's World)."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mirror_scan.review.people import LoginBrake, Reviewer, why_not_allowed

from .conftest import run_cli
from .console_client import PASSWORD, Client, ConsoleServer, add_user
from .lemmy_server import FakeLemmy
from .mediafiles import image_bytes
from .s3server import BUCKET

HOSTILE_KEY = '"><svg onload=alert(1)>[x](javascript:alert(2)).png'


# ---------------------------------------------------------------------- who may decide what


def _attribution(*communities: str) -> dict:
    return {"posts": [{"id": i, "community": {"actor": url}} for i, url in enumerate(communities)]}


def test_who_may_decide_what():
    pics, memes = "https://lemmy.test/c/pics", "https://remote.example/c/memes"
    admin = Reviewer("boss", "lemmy", admin=True)
    moderator = Reviewer("mod", "lemmy", admin=False, communities=frozenset({pics}))
    assert why_not_allowed(admin, None) is None and why_not_allowed(admin, _attribution(memes), "ban") is None
    assert why_not_allowed(moderator, _attribution(pics), "confirm") is None
    assert why_not_allowed(moderator, _attribution(pics, pics), "confirm") is None
    assert "do not moderate" in why_not_allowed(moderator, _attribution(pics, memes), "confirm")  # not theirs alone
    assert "no community" in why_not_allowed(moderator, None, "confirm")  # unattributed: an admin's
    assert "not fully known" in why_not_allowed(moderator, {"private_messages": [{"id": 1}]}, "confirm")
    assert "admin" in why_not_allowed(moderator, _attribution(pics), "ban")  # site bans are an admin's
    # A restore allowlists the picture everywhere: a moderator's only where admins allow it, never a list match.
    assert "allowlists" in why_not_allowed(moderator, _attribution(pics), "restore")
    assert why_not_allowed(moderator, _attribution(pics), "restore", {}, moderators_may_restore=True) is None
    listed = {"hash_list": "ncmec"}
    assert "hash list" in why_not_allowed(moderator, _attribution(pics), "restore", listed, moderators_may_restore=True)
    # Where it was used must be fully known: a use without its community, a message, unknown parts, a cap.
    for partial in ({"posts": [{"id": 1, "community": {"actor": pics}}, {"id": 2, "community": None}]},
                    {**_attribution(pics), "private_messages": [{"id": 3}]},
                    {**_attribution(pics), "unknown": [{"part": "lemmy", "reason": "down"}]},
                    {**_attribution(pics), "retry": True},
                    _attribution(*[pics] * 200)):  # fmt: skip
        assert "not fully known" in why_not_allowed(moderator, partial, "confirm"), partial


def test_the_login_brake_counts_attempts_as_they_start():
    brake = LoginBrake(per_account_and_client=3, per_account=6, per_client=5, window_s=60)
    stamps = [brake.attempt("Alice", "10.0.0.1") for _ in range(3)]  # in flight together: all counted
    assert all(wait == 0 for wait, _ in stamps)
    assert brake.attempt(" alice", "10.0.0.1")[0] > 0  # any case, any spacing: the same account
    assert brake.attempt("alice", "10.0.0.9")[0] == 0  # failing alice's logins elsewhere does not lock her out
    assert brake.attempt("bob", "10.0.0.1")[0] == 0  # the client may still try another account...
    assert brake.attempt("carol", "10.0.0.1")[0] == 0  # (a refused attempt is not one more)
    assert brake.attempt("erin", "10.0.0.1")[0] > 0  # ...until it has tried five
    for client in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        brake.attempt("alice", client)
    assert brake.attempt("alice", "10.0.0.5")[0] > 0  # many addresses guessing one account: slowed too
    brake = LoginBrake(per_account_and_client=2, window_s=60)
    wait, stamp = brake.attempt("dave", "10.0.0.1")
    brake.succeeded("dave", "10.0.0.1", stamp)  # a success takes its attempt back
    assert brake.attempt("dave", "10.0.0.1")[0] == 0 and brake.attempt("dave", "10.0.0.1")[0] == 0


# ---------------------------------------------------------------------- a bucket, a state, a console


class Site:
    """Objects in a real bucket, mirrored, scanned with a policy that flags them all, removed upstream."""

    def __init__(self, tmp, s3, bundle, policy, count: int = 4) -> None:
        self.tmp, self.s3 = tmp, s3
        self.state, self.quarantine, self.mirror = tmp / "state.db", tmp / "q", tmp / "mirror"
        self.objects = {f"pic-{i}.png": image_bytes("PNG", 40 + i, size=(40, 30)) for i in range(count - 1)}
        self.objects[HOSTILE_KEY] = image_bytes("PNG", 99, size=(40, 30))
        for key, data in self.objects.items():
            (tmp / "s3" / BUCKET / key).write_bytes(data)
        assert self.cli("mirror", "pull", "--remote", s3.remote, "--to", str(self.mirror)).returncode == 0
        proc = self.cli("scan", str(self.mirror), "--model", str(bundle), "--policy", str(policy), "--remote",
                        s3.remote)  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert s3.keys() == set()  # every object was quarantined and removed upstream

    def cli(self, *args: str):
        return run_cli(*args, "--state", str(self.state), "--quarantine", str(self.quarantine), env=self.s3.env())

    def people(self, *args: str):
        """`console user|token ...`: they touch the state only."""
        return run_cli(*args, "--state", str(self.state))

    def items(self) -> dict[str, dict]:
        """object key -> `quarantine list` entry"""
        return {e["key"]: e for e in json.loads(self.cli("quarantine", "list", "--json").stdout)}

    def console(self, *args: str) -> ConsoleServer:
        return ConsoleServer(self.state, self.quarantine, *args, env=self.s3.env())


@pytest.fixture
def site(tmp_path, s3, tiny_bundle_master, flag_all):
    return Site(tmp_path, s3, tiny_bundle_master, flag_all)


def test_nobody_can_log_in_is_said_before_serving(tmp_path):
    proc = run_cli("console", "--listen", "127.0.0.1:1", "--state", str(tmp_path / "state.db"), "--quarantine",
                   str(tmp_path / "q"))  # fmt: skip
    assert proc.returncode == 2 and "console user add" in proc.stderr, proc.stderr


def test_a_reviewer_restores_and_confirms_and_the_ledger_says_who(site, tmp_path):
    add_user(site.people, "alice", tmp_path)
    made = site.people("console", "token", "create", "nightly")
    assert made.returncode == 0 and made.stdout.startswith("msk_"), made.stderr
    token = made.stdout.strip()
    assert token not in site.people("console", "token", "list").stdout  # shown once, kept hashed
    items = site.items()
    server = site.console()
    try:
        alice = Client(server)
        answer = alice.login("alice")
        assert answer.status == 303 and answer.headers["Location"] == "/"
        cookie = next(h for h in alice.set_cookie_headers if h.startswith("ms_session="))
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        queue = alice.get("/")
        assert queue.status == 200 and all(items[k]["short_id"] in queue.body for k in items)
        assert "default-src 'none'" in queue.headers["Content-Security-Policy"]
        assert queue.headers["Cache-Control"] == "no-store" and queue.headers["X-Frame-Options"] == "DENY"
        # the hostile object key is text: no tag, no link (the path is shown as it is, escaped)
        assert "<svg" not in queue.body and 'href="javascript' not in queue.body
        assert "&lt;svg onload=alert(1)&gt;[x](javascript:alert(2)).png" in queue.body

        # Filters: by state and by age; a label no item has gives nothing.
        assert "Nothing matches" in alice.get("/?label=csam").body
        assert all(items[k]["short_id"] in alice.get("/?state=quarantined&age=1d").body for k in items)

        # Restore one from the queue's selection: back in the mirror and in the bucket, allowlisted.
        restored = items["pic-0.png"]
        # A decision is confirmed first (issue 45): the page lists what it acts on and asks for a note.
        asked = alice.post("/decide", {"csrf": queue.csrf(), "decision": "restore", "item": [restored["id"]]})
        assert asked.status == 200 and "Restore 1 item?" in asked.body and 'id="note"' in asked.body, asked.body
        assert "outcome-" not in asked.body and not (site.mirror / "pic-0.png").exists()  # nothing done yet
        note = "a comic strip <b>not</b> [x](http://e.x)"
        page = alice.post("/decide", {"csrf": queue.csrf(), "decision": "restore", "item": [restored["id"]],
                                      "confirmed": "yes", "note": note})  # fmt: skip
        assert page.status == 200 and "outcome-done" in page.body, page.body
        assert (site.mirror / "pic-0.png").read_bytes() == site.objects["pic-0.png"]
        assert site.s3.get("pic-0.png") == site.objects["pic-0.png"]
        sha = hashlib.sha256(site.objects["pic-0.png"]).hexdigest()
        assert sha in site.cli("allowlist", "list").stdout

        # Confirm another through the API with the token.
        confirmed = items["pic-1.png"]
        api = {"Authorization": f"Bearer {token}"}
        answer = Client(server).request("POST", f"/api/items/{confirmed['id']}/confirm", headers=api)
        assert answer.status == 200 and answer.json()["outcome"] == "done", answer.body
        listed = Client(server).request("GET", "/api/items?state=quarantined", headers=api).json()
        assert {i["id"] for i in listed["items"]} == {items[k]["id"] for k in items if k != "pic-0.png"}
        shown = Client(server).request("GET", f"/api/items/{confirmed['id']}", headers=api).json()
        assert shown["confirmed"] is True and shown["decisions"][0]["who"] == "nightly (api token)"
        again = Client(server).request("POST", f"/api/items/{restored['id']}/restore", headers=api)
        assert again.status == 409 and "cannot be restored" in again.json()["detail"]

        # The history, in the console and in `quarantine show`, names who did what.
        history = alice.get("/history").body
        assert "alice (local account)" in history and "nightly (api token)" in history
        for item, decision, who in ((restored, "restore", "alice (local account)"),
                                    (confirmed, "confirm", "nightly (api token)")):  # fmt: skip
            decisions = json.loads(site.cli("quarantine", "show", item["id"], "--json").stdout)["decisions"]
            assert [(d["decision"], d["who"], d["outcome"]) for d in decisions] == [(decision, who, "done")]
            if decision == "restore":  # the reviewer's note, kept as inert text (no markup, no link)
                kept = decisions[0]["note"]
                assert kept.startswith("a comic strip") and "http" not in kept and "[" not in kept, decisions
            assert f"{decision} by {who}" in (site.quarantine / "items" / item["id"] / "meta.json").read_text()
        # Confirmed items are what `hashlist export --confirmed` shares.
        exported = site.cli("hashlist", "export", "--confirmed", "--format", "csv").stdout
        assert hashlib.sha256(site.objects["pic-1.png"]).hexdigest() in exported
        assert hashlib.sha256(site.objects["pic-2.png"]).hexdigest() not in exported
        assert "not used" in alice.get("/dashboard").body or "per-day" in alice.get("/dashboard").body

        # Logging out ends the session.
        alice.post("/logout", {"csrf": alice.get("/").csrf()})
        assert alice.get("/").status == 303
    finally:
        log = server.stop()
    assert token not in log and PASSWORD not in log
    assert "alice (local account) restore item" in log


def test_attacks_on_the_console_are_refused(site, tmp_path):
    add_user(site.people, "alice", tmp_path)
    add_user(site.people, "bob", tmp_path, password="bobs own long password")
    item = site.items()["pic-0.png"]
    server = site.console()
    try:
        stranger = Client(server)
        for path in ("/", f"/items/{item['id']}", "/history", "/dashboard", f"/items/{item['id']}/ban"):
            answer = stranger.get(path)
            assert answer.status == 303 and answer.headers["Location"] == "/login", path
            assert item["id"] not in answer.body
        for path in ("/api/items", f"/api/items/{item['id']}"):
            assert stranger.get(path).status == 401
            assert stranger.get(path, Authorization="Bearer msk_not-a-token").status == 401
        assert stranger.post("/decide", {"decision": "restore", "item": item["id"]}).status == 403
        assert stranger.request("POST", f"/api/items/{item['id']}/restore").status == 401
        # A forged session cookie is no session.
        stranger.cookies["ms_session"] = "A" * 43
        assert stranger.get("/").status == 303

        alice = Client(server)
        assert alice.login("alice").status == 303
        csrf = alice.get("/").csrf()
        # A form without its CSRF token, with another session's token, or sent from another site.
        assert alice.post("/decide", {"decision": "restore", "item": item["id"]}).status == 403
        assert alice.post("/decide", {"csrf": "x" * 43, "decision": "restore", "item": item["id"]}).status == 403
        other_site = alice.post("/decide", {"csrf": csrf, "decision": "restore", "item": item["id"]},
                                Origin="https://evil.example")  # fmt: skip
        assert other_site.status == 403
        # The login form itself without its double-submit token.
        assert Client(server).post("/login", {"username": "alice", "password": PASSWORD}).status == 403
        assert site.items()["pic-0.png"]["state"] == "quarantined"  # nothing was decided

        # Bodies that are not forms: a plain refusal with the same headers, before and after login.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/login", body=b"username=%ff%fe&password=x",
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=bogus"})  # fmt: skip
        broken = conn.getresponse()
        assert broken.status == 400 and "default-src 'none'" in broken.headers["Content-Security-Policy"]
        conn.close()
        headers = {"Cookie": f"ms_session={alice.cookies['ms_session']}", "Content-Type": "multipart/form-data"}
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/decide", body=b"--x\r\ntruncated", headers=headers)
        assert conn.getresponse().status == 400
        conn.close()
        # An Origin of this host but another scheme is another origin.
        assert alice.post("/decide", {"csrf": csrf, "decision": "confirm", "item": item["id"]},
                          Origin=f"https://127.0.0.1:{server.port}").status == 403  # fmt: skip

        # Brute force: guesses sent all at once are counted as they start: at most five are checked.
        def guess(i: int) -> int:
            return Client(server).login("bob", f"guess {i}").status

        started = time.monotonic()
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(guess, range(24)))
        assert answers.count(401) <= 5 and answers.count(429) >= 19, answers
        guesser = Client(server)
        braked = guesser.login("bob", "bobs own long password")  # even the right password waits now
        assert braked.status == 429 and int(braked.headers["Retry-After"]) > 60
        assert "ms_session" not in guesser.cookies
        assert time.monotonic() - started < 60  # refused at once, not slowed into a timeout
        assert Client(server).login("alice").status == 303  # another account from the same client still can
        # Unknown names fail the same way (no account oracle).
        assert Client(server).login("nobody", "whatever").status == 401
        # A new password ends the account's sessions.
        assert alice.get("/history").status == 200
        add_user(site.people, "alice", tmp_path, password="a brand new passphrase")
        assert alice.get("/history").status == 303
    finally:
        log = server.stop()
    assert "bobs own long password" not in log and "failed login for 'bob'" in log


# ---------------------------------------------------------------------- Lemmy logins and moderators


@pytest.mark.parametrize(("api", "version", "shape"), [("v3", "0.19.5", "0.19.5"), ("v4", "1.0.0", "1.0")])
def test_lemmy_moderators_decide_only_their_communities_items(postgres, tmp_path, tiny_bundle_master, api, version,
                                                              shape):  # fmt: skip
    from .test_lemmy import World

    w = World(postgres, shape, tmp_path / "site", tiny_bundle_master)
    pics = {"id": 1, "name": "pics", "url": "https://lemmy.test/c/pics"}
    lemmy = FakeLemmy(api=api, version=version, users={
        "modbot": {"id": 900, "password": "bot password 123", "admin": True},
        "boss": {"id": 3, "password": "boss password 123", "admin": True},
        "picsmod": {"id": 4, "password": "picsmod password", "admin": False, "moderates": [pics]},
        "alice": {"id": 1, "password": "alice password 12", "admin": False},
        "banned": {"id": 5, "password": "banned password", "admin": True, "banned": True},
    }).start()  # fmt: skip
    try:
        (w.secrets_dir / "bot").write_text("bot password 123")
        w.write_config(extra=f'url = "{lemmy.url}"\nusername = "modbot"\npassword_file = "{w.secrets_dir / "bot"}"\n')
        assert w.scan().returncode == 1
        items = w.items()  # img: used in !pics and !memes; thumb: only in !pics; orphan: nowhere
        server = ConsoleServer(w.state, w.quarantine, "--config", str(w.config))
        try:
            mod = Client(server)
            assert mod.login("picsmod", "picsmod password").status == 303
            assert "picsmod (lemmy moderator)" in mod.get("/").body
            queue = mod.get("/")
            assert items[World.KEYS["thumb"]]["short_id"] in queue.body
            assert items[World.KEYS["img"]]["short_id"] not in queue.body  # also used outside their community
            assert items[World.KEYS["orphan"]]["short_id"] not in queue.body  # tied to no community
            assert mod.get(f"/items/{items[World.KEYS['img']]['id']}").status == 404
            others = [items[World.KEYS["img"]]["id"], items[World.KEYS["orphan"]]["id"]]
            refused = mod.post("/decide", {"csrf": queue.csrf(), "decision": "restore", "item": others,
                                           "confirmed": "yes"})  # fmt: skip
            assert refused.body.count("outcome-refused") == 2, refused.body
            assert mod.get(f"/items/{items[World.KEYS['thumb']]['id']}/ban").status == 200
            ban = mod.post(f"/items/{items[World.KEYS['thumb']]['id']}/ban",
                           {"csrf": queue.csrf(), "confirm": "yes", "reason": "spam"})  # fmt: skip
            assert "outcome-refused" in ban.body and "admin" in ban.body and lemmy.bans == []
            done = mod.post("/decide", {"csrf": queue.csrf(), "decision": "confirm", "confirmed": "yes",
                                        "item": items[World.KEYS["thumb"]]["id"]})  # fmt: skip
            assert "outcome-done" in done.body
            # Lemmy was asked with their own login, which was ended again at once.
            # 0.19 ends each console login in Lemmy; 1.0 counts a logout against the logins' own rate bucket,
            # so there the token (never kept) expires instead, and a login costs one of the ten an hour.
            assert bool(lemmy.calls("POST", "/user/logout")) == (api == "v3")
            assert not lemmy.calls("POST", "/account/auth/logout")
            # Neither a plain user nor (in 0.19) a banned admin gets in; a wrong password is a failure.
            assert Client(server).login("alice", "alice password 12").status == 403
            assert Client(server).login("picsmod", "wrong").status == 401
            # A banned admin: 0.19 refuses the login (site_ban); 1.0 lets it in, banned, and the console does not.
            assert Client(server).login("banned", "banned password").status == 401
            asked = lemmy.calls("POST", "/account/auth/login" if api == "v4" else "/user/login")
            assert [c.body["username_or_email"] for c in asked] == ["picsmod", "alice", "picsmod", "banned"]

            boss = Client(server)
            assert boss.login("boss", "boss password 123").status == 303
            img = items[World.KEYS["img"]]
            page = boss.get(f"/items/{img['id']}")
            assert page.status == 200 and "alice@lemmy.test" in page.body and "!memes@remote.example" in page.body
            ban_page = boss.get(f"/items/{img['id']}/ban")
            assert "alice@lemmy.test" in ban_page.body and f"item {img['id']}" in ban_page.body  # who and why first
            unticked = boss.post(f"/items/{img['id']}/ban", {"csrf": ban_page.csrf(), "reason": "spam"})
            assert unticked.status == 400 and lemmy.bans == []
            banned = boss.post(f"/items/{img['id']}/ban", {"csrf": ban_page.csrf(), "confirm": "yes",
                                                           "reason": "CSAM spam wave"})  # fmt: skip
            assert "outcome-done" in banned.body and lemmy.bans == [(1, True, "CSAM spam wave")]
            history = boss.get("/history").body
            assert "boss (lemmy admin)" in history and "picsmod (lemmy moderator)" in history
            assert mod.get("/dashboard").status == 403 and boss.get("/dashboard").status == 200
            # Lemmy rate-limiting logins: the login cannot be checked, and the page does not say where Lemmy is.
            lemmy.logins_allowed = lemmy.logins
            limited = Client(server).login("boss", "boss password 123")
            assert limited.status == 503 and lemmy.url not in limited.body and "127.0.0.1" not in limited.body
            lemmy.logins_allowed = None
        finally:
            log = server.stop()
        # Where the admins allow it, a moderator restores what the model (not a hash list) flagged in their
        # community; the picture is allowlisted instance-wide, as every restore is.
        thumb = items[World.KEYS["thumb"]]
        env = {"MIRROR_SCAN_CONSOLE_MODERATORS_MAY_RESTORE": "true"}
        server = ConsoleServer(w.state, w.quarantine, "--config", str(w.config), env=env)
        try:
            mod = Client(server)
            assert mod.login("picsmod", "picsmod password").status == 303
            page = mod.get(f"/items/{thumb['id']}")
            done = mod.post("/decide", {"csrf": page.csrf(), "decision": "restore", "item": thumb["id"],
                                        "confirmed": "yes"})  # fmt: skip
            assert "outcome-done" in done.body, done.body
            assert (w.mirror / World.KEYS["thumb"]).read_bytes() == w.files["thumb"]
        finally:
            log += server.stop()
        for secret in ("picsmod password", "boss password 123", "bot password 123", w.role_password):
            assert secret not in log
    finally:
        lemmy.stop()


@pytest.mark.parametrize(("api", "version"), [("v3", "0.19.20"), ("v4", "1.0.0")])
def test_console_logins_through_lemmy_leave_the_bot_its_login_budget(postgres, tmp_path, tiny_bundle_master, api,
                                                                       version, private_data_dir):  # fmt: skip
    """Lemmy's default "register" bucket is 10 an hour per address (both versions, the bot's logins and the
    console's moderators' share it when they come from one machine; 1.0 counts logouts too). Measured with the
    fake counting as Lemmy does: 10 console logins an hour, then "try later"; the bot, whose token is kept,
    keeps acting without logging in again."""
    from .test_lemmy import World

    w = World(postgres, "1.0" if api == "v4" else "0.19.5", tmp_path / "site", tiny_bundle_master)
    private_data_dir.mkdir(parents=True, exist_ok=True)  # where the bot's token is kept, beside the state
    pics = {"id": 1, "name": "pics", "url": "https://lemmy.test/c/pics"}
    lemmy = FakeLemmy(api=api, version=version, logins_allowed=10, users={
        "modbot": {"id": 900, "password": "bot password 123", "admin": True},
        "picsmod": {"id": 4, "password": "picsmod password", "admin": False, "moderates": [pics]},
    }).start()  # fmt: skip
    try:
        (w.secrets_dir / "bot").write_text("bot password 123")
        w.write_config(extra=f'url = "{lemmy.url}"\nusername = "modbot"\npassword_file = "{w.secrets_dir / "bot"}"\n')
        assert w.check().returncode == 0  # the bot logs in once; its token is kept beside the state
        assert lemmy.register_hits == 1
        server = ConsoleServer(w.state, w.quarantine, "--config", str(w.config))
        try:
            answers = [Client(server).login("picsmod", "picsmod password").status for _ in range(10)]
        finally:
            server.stop()
        assert answers == [303] * 9 + [503], answers  # 9 left after the bot's: nine console logins, then "later"
        assert lemmy.register_hits == 10 + 1  # the refused one counted too, as Lemmy counts it
        assert w.check().returncode == 0  # the bot still acts: no login needed
        assert lemmy.logins == 11
    finally:
        lemmy.stop()
