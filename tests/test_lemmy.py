"""Attribution and moderation (issue 14) against a real PostgreSQL server holding pict-rs's and Lemmy's
schemas (each supported shape, generated rows) and a server following Lemmy's HTTP contract; all
through the real CLI. Verdicts come from the policy (severity -1 flags every readable file)."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import secrets
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import run_cli, wait_until
from .lemmy_schema import PICTRS_SCHEMA, SHAPES, lemmy_grants, lemmy_schema, pictrs_grants, upload_row
from .lemmy_server import FakeLemmy
from .mediafiles import image_bytes
from .pgserver import PostgresServer, free_port

_names = itertools.count(1)
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


class World:
    """One instance: pict-rs's and Lemmy's databases, read-only roles, a mirror, a config file."""

    KEYS = {
        "img": "aa/bb/0197a5c3d2e1.png",  # used by two posts and a comment, uploaded by alice
        "thumb": "cc/dd/5e6f7a8b9c0d.webp",  # a thumbnail variant of orig
        "orphan": "ee/ff/1a2b3c4d5e6f.png",  # pict-rs knows it; Lemmy has no upload record
    }

    def __init__(self, pg: PostgresServer, shape: str, base: Path, bundle: Path) -> None:
        n = next(_names)
        self.pg, self.shape, self.base, self.bundle = pg, shape, base, bundle
        self.pictrs_db, self.lemmy_db, self.role = f"pictrs_{n}", f"lemmy_{n}", f"scanner_{n}"
        self.role_password = secrets.token_hex(10)
        self.mirror, self.state, self.quarantine = base / "mirror", base / "state.db", base / "quarantine"
        self.secrets_dir = base / "secrets"
        self.secrets_dir.mkdir(parents=True)
        (self.secrets_dir / "db").write_text(self.role_password + "\n")
        pg.execute(f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.role_password}'")
        pg.create_database(self.pictrs_db, PICTRS_SCHEMA + pictrs_grants(self.role))
        pg.create_database(self.lemmy_db, lemmy_schema(shape) + lemmy_grants(shape, self.role))
        self.files = {}
        for i, (name, key) in enumerate(self.KEYS.items()):
            (self.mirror / key).parent.mkdir(parents=True, exist_ok=True)
            data = image_bytes("PNG" if key.endswith(".png") else "WEBP", 10 + i)
            (self.mirror / key).write_bytes(data)
            self.files[name] = data
        self._seed()
        self.config = base / "config.toml"
        self.write_config()

    def _seed(self) -> None:
        pictrs = [
            (
                "INSERT INTO hashes (hash, identifier) VALUES ('h-img', %s), ('h-orig', 'ab/cd/7f8e9d0c1b2a.jpeg'), "
                "('h-orphan', %s)",
                (self.KEYS["img"], self.KEYS["orphan"]),
            ),
            (
                "INSERT INTO aliases VALUES ('img1alias.png', 'h-img', 't1'), ('img2alias.png', 'h-img', 't2'), "
                "('orig2.jpeg', 'h-orig', 't3'), ('orphan.png', 'h-orphan', 't4')",
                None,
            ),
            (
                "INSERT INTO variants (hash, variant, identifier) VALUES ('h-orig', 'thumbnail256.webp', %s)",
                (self.KEYS["thumb"],),
            ),
        ]
        for sql, params in pictrs:
            self.pg.execute(sql, self.pictrs_db, params)
        new = self.shape == "1.0"
        pub, actor = ("published_at", "ap_id") if new else ("published", "actor_id")
        three_days_ago = (NOW - dt.timedelta(days=3)).isoformat()
        an_hour_ago = (NOW - dt.timedelta(hours=1)).isoformat()
        lemmy = [
            ("INSERT INTO instance (id, domain) VALUES (1, 'lemmy.test'), (2, 'remote.example')", None),
            (
                f"INSERT INTO person (id, name, {actor}, {pub}, local, instance_id) VALUES "
                "(1, 'alice', 'https://lemmy.test/u/alice', %s, true, 1), "
                "(2, 'bob', 'https://remote.example/u/bob', '2020-01-01T00:00:00Z', false, 2), "
                "(3, 'boss', 'https://lemmy.test/u/boss', '2020-01-01T00:00:00Z', true, 1)",
                (three_days_ago,),
            ),
            (
                "INSERT INTO local_user (id, person_id, password_encrypted, email) VALUES "
                "(11, 1, 'secret-hash', 'alice@example.org'), (13, 3, 'secret-hash', 'boss@example.org')",
                None,
            ),
            (
                f"INSERT INTO community (id, name, title, {actor}, instance_id) VALUES "
                "(1, 'pics', 'Pictures', 'https://lemmy.test/c/pics', 1), "
                "(2, 'memes', 'Memes', 'https://remote.example/c/memes', 2)",
                None,
            ),
            (
                f"INSERT INTO post (id, name, url, body, creator_id, community_id, {pub}, ap_id) VALUES "
                "(1, 'my picture', 'https://lemmy.test/pictrs/image/img1alias.png', NULL, 1, 1, %(t)s, "
                "'https://lemmy.test/post/1'), "
                "(2, 'look at this', NULL, 'see ![](https://lemmy.test/pictrs/image/img2alias.png?format=webp)', "
                "2, 2, %(t)s, 'https://remote.example/post/2'), "
                "(3, 'thumbed', 'https://lemmy.test/pictrs/image/orig2.jpeg', NULL, 1, 1, %(t)s, "
                "'https://lemmy.test/post/3'), "
                "(4, 'unrelated', 'https://example.org/x.png', 'nothing here', 3, 1, %(t)s, "
                "'https://lemmy.test/post/4')",
                {"t": an_hour_ago},
            ),
            (
                f"INSERT INTO comment (id, creator_id, post_id, content, {pub}, ap_id) VALUES "
                "(1, 1, 4, 'again ![](https://lemmy.test/pictrs/image/img1alias.png)', %s, "
                "'https://lemmy.test/comment/1')",
                (an_hour_ago,),
            ),
        ]
        for alias, person, local_user in (("img1alias.png", 1, 11), ("img2alias.png", 1, 11), ("orig2.jpeg", 1, 11)):
            lemmy.append(upload_row(self.shape, alias, person, local_user, (NOW - dt.timedelta(hours=2)).isoformat()))
        for sql, params in lemmy:
            self.pg.execute(sql, self.lemmy_db, params)

    def write_config(self, *, lemmy_db_port: int | None = None, extra: str = "") -> None:
        db = self.secrets_dir / "db"
        self.config.write_text(
            f"""
[pictrs]
database_url = "{self.pg.url(self.pictrs_db, self.role)}"
database_password_file = "{db}"

[lemmy]
database_url = "postgresql://{self.role}@127.0.0.1:{lemmy_db_port or self.pg.port}/{self.lemmy_db}"
database_password_file = "{db}"
{extra}
"""
        )

    def cli(self, *args: str, env: dict | None = None):
        return run_cli(
            *args,
            "--state",
            str(self.state),
            "--quarantine",
            str(self.quarantine),
            "--config",
            str(self.config),
            env=env,
        )

    def check(self):
        return run_cli("lemmy", "check", "--config", str(self.config))

    def scan(self, *args: str, env: dict | None = None):
        return self.cli("scan", str(self.mirror), "--model", str(self.bundle), "--severity=-1", *args, env=env)

    def items(self) -> dict[str, dict]:
        """key -> `quarantine list` entry."""
        proc = self.cli("quarantine", "list", "--json")
        assert proc.returncode == 0, proc.stderr
        return {os.path.relpath(e["original"], self.mirror): e for e in json.loads(proc.stdout)}

    def show(self, item_id: str) -> dict:
        proc = self.cli("quarantine", "show", item_id, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


@pytest.fixture
def world(postgres, tmp_path, tiny_bundle_master):
    return lambda shape="0.19.5": World(postgres, shape, tmp_path / "site", tiny_bundle_master)


@pytest.mark.parametrize("shape", SHAPES)
def test_attribution_through_each_schema_shape(world, shape):
    w = world(shape)
    proc = w.scan()
    assert proc.returncode == 1, proc.stderr
    assert "attributed" in proc.stderr
    items = w.items()
    assert set(items) == set(World.KEYS.values())
    img = items[World.KEYS["img"]]
    assert img["uploader"] == "alice@lemmy.test"
    assert img["where"] == "post 1 in !pics, post 2 in !memes, comment 1"

    shown = w.show(img["id"])
    data = shown["attribution"]
    assert data["pictrs"]["source"] == "database" and data["aliases"] == ["img1alias.png", "img2alias.png"]
    assert data["lemmy_schema"].startswith(shape.rsplit(".", 1)[0] if shape != "0.19.5" else "0.19.4+")
    uploader = data["uploads"][0]["uploader"]
    assert uploader["name"] == "alice" and uploader["instance"] == "lemmy.test" and uploader["local"] is True
    assert 2.8 < uploader["account_age_days"] < 3.0  # account made 3 days ago, upload 2 hours ago
    assert "password_encrypted" not in json.dumps(data) and "alice@example.org" not in json.dumps(data)
    posts = {p["id"]: p for p in data["posts"]}
    assert sorted(posts) == [1, 2]
    assert posts[1]["uses"] == ["url"] and posts[1]["community"]["name"] == "pics"
    assert posts[2]["uses"] == ["body"] and posts[2]["creator"]["name"] == "bob"
    assert posts[2]["creator"]["instance"] == "remote.example" and posts[2]["link"] == "https://remote.example/post/2"
    assert [c["id"] for c in data["comments"]] == [1] and data["comments"][0]["post_title"] == "unrelated"
    assert data["unknown"] == [] and data["retry"] is False
    report = run_cli("report", "--flagged", "--state", str(w.state), "--config", str(w.config)).stdout
    report = [json.loads(line) for line in report.splitlines()]
    by_item = {r.get("item"): r for r in report}
    assert by_item[img["id"]]["uploader"] == "alice@lemmy.test" and by_item[img["id"]]["where"] == img["where"]
    assert shown["actions"][0]["action"] == "attribute" and shown["actions"][0]["state"] == "done"
    meta = json.loads((w.quarantine / "items" / img["id"] / "meta.json").read_text())
    assert meta["attribution"]["posts"] == data["posts"]  # the item describes itself too
    assert any(h["state"].startswith("attributed: uploader alice@lemmy.test") for h in meta["history"])

    # A thumbnail variant leads to its original's aliases and the post using the original.
    thumb = w.show(items[World.KEYS["thumb"]]["id"])["attribution"]
    assert thumb["pictrs"]["variant"] == "thumbnail256.webp" and thumb["aliases"] == ["orig2.jpeg"]
    assert "variant" in thumb["pictrs"]["note"] and [p["id"] for p in thumb["posts"]] == [3]

    # pict-rs knows the orphan, Lemmy has no upload record and nothing uses it: recorded as unknown.
    orphan = w.show(items[World.KEYS["orphan"]]["id"])["attribution"]
    assert orphan["uploads"] == [] and orphan["retry"] is False
    assert {u["part"] for u in orphan["unknown"]} == {"uploader", "uses"}
    assert items[World.KEYS["orphan"]]["uploader"] == "unknown"


def test_database_down_quarantines_anyway_and_attribution_is_filled_in_later(world):
    w = world("1.0")
    w.write_config(lemmy_db_port=free_port())  # nothing listens there
    proc = w.scan()
    assert proc.returncode == 1, proc.stderr
    items = w.items()
    assert len(items) == 3 and {e["state"] for e in items.values()} == {"quarantined"}
    assert not (w.mirror / World.KEYS["img"]).exists()  # the quarantine did not wait for attribution
    shown = w.show(items[World.KEYS["img"]]["id"])
    assert shown["attribution"]["retry"] is True and shown["attribution"]["aliases"]  # pict-rs part is there
    assert "cannot be reached" in shown["attribution"]["unknown"][0]["reason"]
    attribute = shown["actions"][0]
    assert attribute["state"] == "pending" and attribute["attempts"] == 1 and "cannot be reached" in attribute["error"]
    # The first failure is remembered for the round: later items did not wait out a timeout each.
    reasons = {w.show(e["id"])["attribution"]["unknown"][0]["reason"] for e in items.values()}
    assert len(reasons) == 1

    w.write_config()  # the database is back
    proc = w.cli("quarantine", "attribute", "--all", "--missing")
    assert proc.returncode == 0, proc.stderr
    assert f"{items[World.KEYS['img']]['id']}: uploader alice@lemmy.test" in proc.stdout
    shown = w.show(items[World.KEYS["img"]]["id"])
    assert shown["attribution"]["retry"] is False and shown["actions"][0]["state"] == "done"
    # A lost ledger's attributions come back from the items' own metadata.
    with sqlite3.connect(w.state) as db:
        db.execute("DELETE FROM attributions")
    assert w.show(items[World.KEYS["img"]]["id"])["attribution"] is None
    assert w.cli("quarantine", "reindex").returncode == 0
    assert w.show(items[World.KEYS["img"]]["id"])["attribution"] == shown["attribution"]


class Webhook:
    def __init__(self) -> None:
        self.token = secrets.token_hex(12)
        self.received: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.received.append((self.path, body))
                self.send_response(204)
                self.end_headers()

            def do_GET(self):  # noqa: N802 - only a redirect would send a GET here
                outer.received.append((self.path, {"authorization": self.headers.get("Authorization")}))
                self.send_response(404)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{self.token}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lemmy_and_hook():
    started = []

    def make(api: str, version: str, **kwargs) -> tuple[FakeLemmy, Webhook, str]:
        bot_password = secrets.token_hex(10)
        lemmy = FakeLemmy(
            api=api,
            version=version,
            users={
                "modbot": {"id": 900, "password": bot_password, "admin": True},
                "boss": {"id": 3, "password": "x" * 12, "admin": True},
            },
            **kwargs,
        ).start()
        hook = Webhook()
        started.extend([lemmy, hook])
        return lemmy, hook, bot_password

    yield make
    for server in started:
        server.stop()


def _moderation_config(w: World, lemmy: FakeLemmy, hook: Webhook, bot_password: str, dry_run: bool = False) -> dict:
    (w.secrets_dir / "bot").write_text(bot_password)
    w.write_config(
        extra=f"""url = "{lemmy.url}"
username = "modbot"
password_file = "{w.secrets_dir / "bot"}"
notify = ["boss"]

[notify]
webhook = "{hook.url}"

[actions]
csam = ["remove", "report", "notify"]
dry_run = {str(dry_run).lower()}
"""
    )
    return {}


@pytest.mark.parametrize(("api", "version", "shape"), [("v3", "0.19.5", "0.19.5"), ("v4", "1.0.0", "1.0")])
def test_actions_happen_on_lemmy_and_a_restore_undoes_them(world, lemmy_and_hook, api, version, shape):
    w = world(shape)
    lemmy, hook, bot_password = lemmy_and_hook(api, version)
    _moderation_config(w, lemmy, hook, bot_password)
    # The poster chose this title: it must not become an image or a link in the admins' message.
    hostile = "my picture ![x](https://evil.example/t.png) [click](javascript:alert(1))\n# HEADING"
    w.pg.execute("UPDATE post SET name = %s WHERE id = 1", w.lemmy_db, (hostile,))
    # Private messages with the image: one to alice (the bot may not report it: only the recipient may),
    # one to the bot itself (which it may).
    pub, actor = ("published_at", "ap_id") if shape == "1.0" else ("published", "actor_id")
    w.pg.execute(f"INSERT INTO person (id, name, {actor}, local, instance_id) VALUES "
                 "(900, 'modbot', 'https://lemmy.test/u/modbot', true, 1)", w.lemmy_db)  # fmt: skip
    w.pg.execute(
        f"INSERT INTO private_message (id, creator_id, recipient_id, content, {pub}, ap_id) VALUES "
        "(5, 2, 1, 'look ![](https://lemmy.test/pictrs/image/img1alias.png)', now(), 'https://remote.example/pm/5'), "
        "(6, 2, 900, 'you too https://lemmy.test/pictrs/image/img2alias.png', now(), 'https://remote.example/pm/6')",
        w.lemmy_db,
    )
    lemmy.pm_recipients.update({5: 1, 6: 900})
    outputs = []
    proc = w.scan()
    outputs.append(proc.stdout + proc.stderr)
    assert proc.returncode == 1, proc.stderr
    item = w.items()[World.KEYS["img"]]["id"]

    # Posts 1 and 2 and comment 1 use the image: removed, with a public reason that accuses nobody and
    # names no label (the modlog is public and federated), only the item for the admins.
    removals = {
        (r.path.rsplit("/", 2)[-2], r.body.get("post_id") or r.body.get("comment_id")): r.body
        for r in lemmy.calls("POST")
        if r.path.endswith("/remove")
    }
    assert {("post", 1), ("post", 2), ("comment", 1), ("post", 3)} <= set(removals)
    assert all(b["removed"] is True for b in removals.values())
    assert removals[("post", 1)]["reason"] == f"Removed pending review by this instance's admins (ref {item})"
    assert all("csam" not in b["reason"] and "nsfw" not in b["reason"] for b in removals.values())
    assert all(r.authorized for r in lemmy.requests if not r.path.endswith(("/site", "/login")))
    assert len(lemmy.calls("POST", "/account/auth/login" if api == "v4" else "/user/login")) == 1  # one login
    assert lemmy.removed[("post", 1)] is True and lemmy.removed[("comment", 1)] is True
    # Only what Lemmy accepts: removed posts are not reported (Lemmy refuses it from 0.19.4), the message
    # to alice is not reported (only its recipient may), the one to the bot is.
    reported = {(v["kind"], v["object_id"]) for v in lemmy.reports.values()}
    assert reported == {("private_message", 6)}
    assert not [r for r in lemmy.requests if r.path.endswith("/report") and r.body.get("private_message_id") == 5]
    # The admin got a private message naming the uploader and the item; the webhook a JSON notice.
    to_boss = [content for recipient, content in lemmy.messages if recipient == 3 and item in content]
    assert len(to_boss) == 1 and "alice@lemmy.test" in to_boss[0] and "post 1" in to_boss[0]
    assert "my picture" in to_boss[0] and "https://lemmy.test/post/1" in to_boss[0]
    for injected in ("![", "](", "https://evil", "(javascript", "\n# "):
        assert injected not in to_boss[0]
    notices = [body for path, body in hook.received if body["item"] == item]
    assert notices[0]["event"] == "quarantined" and notices[0]["uploader"] == "alice@lemmy.test"
    assert {p["id"] for p in notices[0]["posts"]} == {1, 2}
    shown = w.show(item)
    states = {a["action"]: a for a in shown["actions"]}
    assert states["remove post 1"]["state"] == "done" and states["notify boss"]["state"] == "done"
    assert states["report post 1"]["state"] == "skipped" and "removed instead" in states["report post 1"]["error"]
    assert states["report private message 5"]["state"] == "skipped"
    assert "only the recipient" in states["report private message 5"]["error"]
    assert states["report private message 6"]["state"] == "done"
    history = [h["state"] for h in json.loads((w.quarantine / "items" / item / "meta.json").read_text())["history"]]
    assert "remove post 1: done" in history
    assert any(h.startswith("report private message 6: done (report ") for h in history)

    # The restore undoes it: posts and the comment restored, reports resolved, admins and webhook told.
    before = len(lemmy.requests)
    proc = w.cli("quarantine", "restore", item)
    outputs.append(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert lemmy.removed[("post", 1)] is False and lemmy.removed[("post", 2)] is False
    assert lemmy.removed[("comment", 1)] is False and lemmy.removed[("post", 3)] is True  # another item's post
    restorations = [r.body for r in lemmy.calls("POST") if r.path.endswith("/remove") and not r.body["removed"]]
    assert restorations and all(b["reason"] == f"Restored after review by this instance's admins (ref {item})"
                                for b in restorations)  # fmt: skip
    assert all(report["resolved"] for report in lemmy.reports.values())
    assert any("false positive" in content and item in content for _, content in lemmy.messages)
    assert [body["event"] for _, body in hook.received if body["item"] == item] == ["quarantined", "restored"]
    undo = {a["action"]: a["state"] for a in w.show(item)["actions"]}
    assert undo["restore post 1"] == "done" and undo["tell boss about the restore"] == "done"
    assert len(lemmy.requests) > before

    # Secrets: the database password, the bot's password, its token and the webhook token appear nowhere.
    outputs.append(w.cli("config", "--json").stdout)
    check = w.check()
    assert check.returncode == 0 and "bot modbot logged in" in check.stdout
    outputs.append(check.stdout + check.stderr)
    stored = [p.read_text() for p in w.quarantine.rglob("meta.json")]
    with sqlite3.connect(w.state) as db:
        for table in ("followups", "attributions"):
            stored += [json.dumps(row) for row in db.execute(f"SELECT * FROM {table}")]  # noqa: S608
    tokens = list(lemmy.tokens)
    for text in outputs + stored:
        for secret in (w.role_password, bot_password, hook.token, *tokens):
            assert secret not in text


def test_bot_refused_and_lemmy_down_never_touch_the_quarantine(world, lemmy_and_hook):
    w = world("0.19.5")
    lemmy, hook, bot_password = lemmy_and_hook("v3", "0.19.5", refuse={"POST /post/remove": "not_a_moderator"})
    _moderation_config(w, lemmy, hook, bot_password)
    assert w.scan().returncode == 1
    items = w.items()
    item = items[World.KEYS["img"]]["id"]
    assert (w.quarantine / "items" / item / "data").read_bytes() == w.files["img"]
    actions = {a["action"]: a for a in w.show(item)["actions"]}
    assert actions["remove post 1"]["state"] == "refused" and "not_a_moderator" in actions["remove post 1"]["error"]
    assert actions["report post 1"]["state"] == "done"  # refused a removal, the bot reports it instead
    # Refused actions wait for the admin: `lemmy retry` after the bot got its rights.
    lemmy.refuse.clear()
    proc = w.cli("lemmy", "retry", item)
    assert proc.returncode == 0, proc.stderr
    assert lemmy.removed[("post", 1)] is True
    assert {a["action"]: a["state"] for a in w.show(item)["actions"]}["remove post 1"] == "done"

    # Lemmy down (503): the actions wait with a backoff; the quarantine is untouched.
    lemmy.unavailable = 1000
    assert w.cli("quarantine", "restore", item).returncode == 0
    undo = [a for a in w.show(item)["actions"] if a["action"].startswith(("restore ", "resolve ", "tell "))]
    assert undo and all(a["state"] == "pending" and "503" in a["error"] for a in undo)
    # One call found Lemmy down; the others of that round waited without a call of their own.
    assert sorted(a["attempts"] for a in undo) == [0] * (len(undo) - 1) + [1]
    lemmy.unavailable = 0
    assert w.cli("lemmy", "retry").returncode == 0
    assert lemmy.removed[("post", 1)] is False


def test_dry_run_plans_and_sends_nothing(world, lemmy_and_hook):
    w = world("1.0")
    lemmy, hook, bot_password = lemmy_and_hook("v4", "1.0.0")
    _moderation_config(w, lemmy, hook, bot_password, dry_run=True)
    assert w.scan().returncode == 1
    item = w.items()[World.KEYS["img"]]["id"]
    actions = {a["action"]: a["state"] for a in w.show(item)["actions"]}
    assert actions["remove post 1"] == "dry_run" and actions["notify boss"] == "dry_run"
    assert not [r for r in lemmy.requests if r.method != "GET"] and hook.received == []
    proc = w.cli("quarantine", "attribute", item, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would: remove post 1; remove post 2; remove comment 1; notify boss" in proc.stdout
    assert "would not: report post 1: not reported: removed instead" in proc.stdout


def test_lemmy_check_and_an_explicit_ban(world, lemmy_and_hook):
    w = world("1.0")
    lemmy, hook, bot_password = lemmy_and_hook("v4", "1.0.0")
    _moderation_config(w, lemmy, hook, bot_password)
    proc = w.check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pict-rs repo, 3 stored files" in proc.stdout
    assert "Lemmy schema 1.0 (local_image.person_id)" in proc.stdout
    assert "Lemmy 1.0.0 (/api/v4), bot modbot logged in, admin" in proc.stdout and "notify: boss found" in proc.stdout
    assert lemmy.bans == []  # nothing automatic, not even with actions configured
    w.scan()
    item = w.items()[World.KEYS["img"]]["id"]
    assert lemmy.bans == []
    assert w.cli("lemmy", "ban", item).returncode == 1  # asks first; no answer is no
    proc = w.cli("lemmy", "ban", item, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert lemmy.bans == [(1, True, f"mirror-scan: uploaded quarantined image (item {item})")]
    assert w.cli("lemmy", "ban", item, "--undo", "--yes").returncode == 0
    assert lemmy.bans[-1][:2] == (1, False)
    states = {a["action"]: a["state"] for a in w.show(item)["actions"]}
    assert states["ban 1"] == "done" and states["unban 1"] == "done"

    # A wrong bot password and a wrong database password are said, never echoed.
    wrong = secrets.token_hex(8)
    (w.secrets_dir / "bot").write_text(wrong)
    (w.secrets_dir / "db").write_text(wrong)
    proc = w.check()
    assert proc.returncode == 1
    assert "refused the login of bot account 'modbot'" in proc.stdout
    assert "password authentication failed" in proc.stdout
    assert wrong not in proc.stdout + proc.stderr


def test_kill_9_between_the_quarantine_and_its_attribution_loses_nothing(world):
    w = world("0.19.3")
    proc = w.scan(env={"MIRROR_SCAN_KILL_AT": "quarantine:placed"})
    assert proc.returncode == -9
    with sqlite3.connect(w.state) as db:
        queued = db.execute("SELECT item FROM followups WHERE action='attribute' AND state='pending'").fetchall()
    assert len(queued) == 1  # queued with the item, in the same transaction
    killed = queued[0][0]
    proc = w.scan()  # the next start finishes the move, then carries out the follow-up
    assert proc.returncode in (0, 1), proc.stderr
    items = w.items()
    assert len(items) == 3 and {e["state"] for e in items.values()} == {"quarantined"}
    shown = w.show(killed)
    assert shown["attribution"]["aliases"] and shown["actions"][0]["state"] == "done"
    assert items[World.KEYS["img"]]["uploader"] == "alice@lemmy.test"


def test_settings_refuse_passwords_in_config_and_unknown_actions(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[lemmy]\npassword = "hunter2hunter2"\n')
    proc = run_cli("config", "--config", str(config))
    assert proc.returncode == 2 and "does not belong in a config file" in proc.stderr
    assert "hunter2hunter2" not in proc.stdout + proc.stderr
    config.write_text('[actions]\ncsam = ["remove", "ban"]\n')
    proc = run_cli("config", "--config", str(config))
    assert proc.returncode == 2 and "unknown action 'ban'" in proc.stderr and "lemmy ban" in proc.stderr
    # A password inside a database URL is refused like one in the config file (issue 31), never printed.
    for url in ("postgresql://u:topsecretpw@db/pictrs", "postgresql://u@db/pictrs?password=topsecretpw",
                "host=db user=u password=topsecretpw dbname=pictrs"):  # fmt: skip
        config.write_text(f'[pictrs]\ndatabase_url = "{url}"\n')
        proc = run_cli("config", "--config", str(config))
        assert proc.returncode == 2 and "holds a password" in proc.stderr, proc.stderr
        assert "topsecretpw" not in proc.stdout + proc.stderr
    proc = run_cli("config", env={"MIRROR_SCAN_LEMMY_DATABASE_URL": "postgresql://u:topsecretpw@db/lemmy"})
    assert proc.returncode == 2 and "holds a password" in proc.stderr and "topsecretpw" not in proc.stderr
    config.write_text(
        '[pictrs]\ndatabase_url = "postgresql://u@db/pictrs"\n[notify]\nwebhook = '
        '"https://hooks.example/T0K3N-abcdef"\n'
    )
    shown = json.loads(run_cli("config", "--config", str(config), "--json").stdout)
    assert shown["pictrs_database_url"]["value"] == "postgresql://u@db/pictrs"
    assert shown["notify_webhook"]["value"] == "***"
    env = {"MIRROR_SCAN_ACTIONS": "csam=remove+report;nsfw=report"}
    shown = json.loads(run_cli("config", "--json", env=env).stdout)
    assert shown["actions"]["value"] == {"csam": ["remove", "report"], "nsfw": ["report"]}  # typed (issue 26)


def test_planning_and_undo_are_pure():
    from mirror_scan.moderation.catalogue import undo_rows
    from mirror_scan.moderation.plan import REMOVED_INSTEAD, plan

    data = {
        "posts": [{"id": 1}, {"id": 2, "removed": True}],
        "comments": [{"id": 7}],
        "private_messages": [{"id": 9}],
    }
    actions = {"csam": ("remove", "report", "notify"), "hash_list": ("report",)}
    data["private_messages"] = [{"id": 9, "recipient_id": 4}, {"id": 10, "recipient_id": 900}]
    assert plan(["nsfw"], data, actions, ("boss",), True).rows == []
    # Reports only: posts and comments reported; of the messages only the one the bot (900) received,
    # and the admins hear of the other one since it cannot be reported.
    reports = plan(["hash list"], data, actions, ("boss",), True, reporter=900)
    assert reports.rows == [("report_post", "1"), ("report_comment", "7"), ("report_private_message", "10"),
                            ("notify", "boss"), ("webhook", "")]  # fmt: skip
    assert [(a, t) for a, t, _ in reports.skipped] == [("report_private_message", "9")]
    assert plan(["hash list"], data, actions, (), False).skipped[1][:2] == ("report_private_message", "10")
    # Remove and report: removed, not reported (Lemmy refuses reports of removed posts and resolves the
    # open ones when it removes).
    both = plan(["csam"], data, actions, ("boss", "root"), True, reporter=900)
    assert both.rows[:2] == [("remove_post", "1"), ("remove_comment", "7")]
    assert ("report_post", "1") not in both.rows and ("report_post", "1", REMOVED_INSTEAD) in both.skipped
    assert both.rows[-3:] == [("notify", "boss"), ("notify", "root"), ("webhook", "")]
    assert undo_rows(
        [
            ("remove_post", "1", None),
            ("report_post", "1", "501"),
            ("report_comment", "7", None),
            ("notify", "boss", None),
            ("ban", "1", None),
        ]
    ) == [("restore_post", "1"), ("resolve_post_report", "501"), ("notify_restored", "boss")]
    assert os.environ.get("MIRROR_SCAN_ACTIONS") is None


def test_watch_attributes_and_acts_and_a_restore_beside_it_undoes(world, lemmy_and_hook, tmp_path):
    from .test_watch import Watcher

    w = world("1.0")
    lemmy, hook, bot_password = lemmy_and_hook("v4", "1.0.0")
    _moderation_config(w, lemmy, hook, bot_password)
    held = tmp_path / "held"
    w.mirror.rename(held)
    w.quarantine = w.base / "q"  # where the Watcher puts it
    watcher = Watcher(w.base, w.bundle, "horde-v2", "--severity=-1", "--config", str(w.config), mirror=w.mirror)
    try:
        (w.mirror / "aa" / "bb").mkdir(parents=True)
        (held / World.KEYS["img"]).rename(w.mirror / World.KEYS["img"])
        watcher.wait_for(lambda: lemmy.removed.get(("post", 1)) is True, 60, "the daemon to remove post 1")
        item = w.items()[World.KEYS["img"]]
        assert item["uploader"] == "alice@lemmy.test"
        watcher.wait_for(lambda: any(item["id"] in c for _, c in lemmy.messages), 30, "the admin's message")
        proc = w.cli("quarantine", "restore", item["id"])  # beside the running daemon
        assert proc.returncode == 0, proc.stderr
        assert lemmy.removed[("post", 1)] is False
        assert (w.mirror / World.KEYS["img"]).read_bytes() == w.files["img"]
    finally:
        code, stderr = watcher.stop()
    assert code == 0, stderr


def test_redirects_are_not_followed_with_credentials(world, lemmy_and_hook):
    """urllib follows a 302 with the request's headers: the bot's token would reach whatever host the
    redirect names."""
    w = world("0.19.5")
    lemmy, hook, bot_password = lemmy_and_hook("v3", "0.19.5")
    _moderation_config(w, lemmy, hook, bot_password)
    lemmy.redirect = hook.url  # the "other host" records anything that arrives
    proc = w.check()
    assert proc.returncode == 1
    assert "a redirect to 127.0.0.1" in proc.stdout and "not followed" in proc.stdout
    assert hook.received == [] and hook.token not in proc.stdout


def test_serve_notifies_the_admins_of_a_rejected_upload(world, lemmy_and_hook):
    """An upload rejected at validation was never stored, so nothing links to it; the admins still hear
    of the attempt (from the validator's own follow-up thread)."""
    from .test_serve import Validator

    w = world("1.0")
    lemmy, hook, bot_password = lemmy_and_hook("v4", "1.0.0")
    _moderation_config(w, lemmy, hook, bot_password)
    w.quarantine = w.base / "q"  # where the Validator puts it
    validator = Validator(w.base, w.bundle, "--severity=-1", "--config", str(w.config))
    try:
        status, _ = validator.post(w.files["img"])
        assert status == 406
        wait_until(lambda: len(lemmy.messages) == 1 and hook.received, 30, "the admins' notice")
    finally:
        code, stderr = validator.stop()
    assert code == 0, stderr
    (item,) = w.items().values()
    shown = w.show(item["id"])
    assert shown["attribution"]["unknown"][0]["reason"].startswith("rejected at upload")
    assert {a["action"]: a["state"] for a in shown["actions"]} == {
        "attribute": "done",
        "notify boss": "done",
        "post to the webhook": "done",
    }
    assert not [r for r in lemmy.requests if r.path.endswith("/remove")]


@pytest.mark.parametrize("shape", SHAPES)
def test_the_documented_role_reads_everything_attribution_needs_and_no_secret(world, shape):
    """A role made with exactly `mirror-scan lemmy grants` (what the README shows) runs every lookup and
    cannot select a delete token, a signing key, a password hash or an e-mail; `lemmy check` says so, and
    warns loudly about a role that can."""
    import psycopg

    from mirror_scan.moderation.grants import SECRET_COLUMNS

    from .lemmy_schema import GRANT_SHAPE

    w = world(shape)
    proc = w.scan()
    assert proc.returncode == 1, proc.stderr
    assert w.items()[World.KEYS["img"]]["uploader"] == "alice@lemmy.test"  # every lookup ran as the role
    for database, kind in ((w.pictrs_db, "pictrs"), (w.lemmy_db, "lemmy")):
        url = w.pg.url(database, w.role)
        present = {(t, c) for t, c in w.pg.execute("SELECT table_name, column_name FROM information_schema.columns "
                                                  "WHERE table_schema = 'public'", database)}  # fmt: skip
        secrets_here = [(t, c) for t, c in SECRET_COLUMNS[kind] if (t, c) in present]
        assert secrets_here, kind  # the test schemas carry the secrets
        for table, column in secrets_here:
            with psycopg.connect(url, password=w.role_password, autocommit=True) as conn:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT {column} FROM {table} LIMIT 1")  # noqa: S608
    check = w.check()
    assert check.returncode == 0, check.stdout
    assert check.stdout.count("no secret column readable") == 2, check.stdout
    # The README shows exactly these grants.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    grants = run_cli("lemmy", "grants", "--pictrs", "--lemmy", GRANT_SHAPE[shape], check=True).stdout
    for line in grants.splitlines():
        if line.startswith("GRANT"):
            assert line in readme, line
    # A role given whole tables (the old README) is warned about, naming what it can read.
    w.pg.execute(f"GRANT SELECT ON community, local_user TO {w.role}", w.lemmy_db)
    w.pg.execute(f"GRANT SELECT ON aliases TO {w.role}", w.pictrs_db)
    check = w.check()
    assert "WARNING: this role can read secrets: aliases.token" in check.stdout
    assert "community.private_key" in check.stdout and "local_user.password_encrypted" in check.stdout


def test_a_role_without_grants_is_told_permission_denied(world):
    w = world("0.19.5")
    w.pg.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {w.role}", w.lemmy_db)
    check = w.check()
    assert check.returncode == 1
    assert "Lemmy database" in check.stdout and "permission denied on table person, post, comment" in check.stdout
    assert "not pict-rs's repo" not in check.stdout and "really" not in check.stdout


def test_a_rate_limited_login_is_retried_and_the_token_is_kept_between_commands(world, lemmy_and_hook):
    """Lemmy 0.19 answers a rate-limited login with 400 rate_limit_error (not 429); logins share the small
    register bucket from 0.19.4, so the bot logs in once and keeps its token for the next commands."""
    w = world("0.19.5")
    lemmy, hook, bot_password = lemmy_and_hook("v3", "0.19.5", logins_allowed=0)
    _moderation_config(w, lemmy, hook, bot_password)
    assert w.scan().returncode == 1
    item = w.items()[World.KEYS["img"]]["id"]
    actions = {a["action"]: a for a in w.show(item)["actions"]}
    remove = actions["remove post 1"]
    assert remove["state"] == "pending" and "rate_limit_error" in remove["error"], remove  # retried, not refused
    lemmy.logins_allowed = lemmy.logins + 1  # the bucket refills: one more login
    assert w.cli("lemmy", "retry").returncode == 0
    assert lemmy.removed[("post", 1)] is True
    assert w.cli("quarantine", "restore", item).returncode == 0  # another command: no new login needed
    assert lemmy.removed[("post", 1)] is False
    assert lemmy.logins == lemmy.logins_allowed  # exactly one successful login across the commands
    token_file = w.state.with_name(w.state.name + ".lemmy-token")
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    # A token Lemmy no longer accepts (1.0's expire after a week): one login more, then the action.
    lemmy.tokens.clear()
    lemmy.logins_allowed += 1
    assert w.cli("lemmy", "ban", item, "--yes").returncode == 0
    assert lemmy.bans[-1][:2] == (1, True) and lemmy.logins == lemmy.logins_allowed


@pytest.mark.parametrize(("api", "version", "shape"), [("v3", "0.19.5", "0.19.5"), ("v4", "1.0.0", "1.0")])
def test_reports_stay_with_the_admins_on_1_0_and_its_purge_goes_through_lemmy(world, lemmy_and_hook, api, version,
                                                                              shape):  # fmt: skip
    """Lemmy 1.0's own tools (issue 39): a report that violates the instance's rules stays with the local
    admins and is never federated; `quarantine purge --pictrs` goes through `DELETE /api/v4/image`, which has
    pict-rs purge the upload and deletes Lemmy's local_image rows (0.19: pict-rs's purge, as before)."""
    from .pictrs_server import PictrsContractServer

    w = world(shape)
    api_key = secrets.token_hex(8)
    img_sha = hashlib.sha256(w.files["img"]).hexdigest()
    pictrs = PictrsContractServer(api_key, {img_sha: ["img1alias.png", "img2alias.png"]}).start()
    lemmy, hook, bot_password = lemmy_and_hook(api, version)
    lemmy.pictrs = (pictrs.url, api_key)
    deleted: list[str] = []

    def delete_rows(aliases: list[str]) -> None:  # what Lemmy 1.0 does after pict-rs answers (request.rs:402-431)
        deleted.extend(aliases)
        w.pg.execute("DELETE FROM local_image WHERE pictrs_alias = ANY(%s)", w.lemmy_db, (aliases,))

    lemmy.local_image_rows = delete_rows
    (w.secrets_dir / "bot").write_text(bot_password)
    w.write_config(extra=f"""url = "{lemmy.url}"
username = "modbot"
password_file = "{w.secrets_dir / "bot"}"

[actions]
csam = ["report"]
""")  # fmt: skip
    try:
        env = {"MIRROR_SCAN_PICTRS_API_KEY": api_key, "MIRROR_SCAN_PICTRS_URL": pictrs.url}
        assert w.scan(env=env).returncode == 1
        reports = [r for r in lemmy.calls("POST") if r.path.endswith(("/post/report", "/comment/report"))]
        assert {(r.path.rsplit("/", 2)[-2], r.body.get("post_id") or r.body.get("comment_id")) for r in reports} >= {
            ("post", 1), ("post", 2), ("comment", 1)}  # fmt: skip
        if api == "v4":
            assert all(r.body["violates_instance_rules"] is True for r in reports)
            kept = [rep for rep in lemmy.reports.values() if rep["kind"] != "private_message"]
            assert kept and all(rep["violates_instance_rules"] for rep in kept)
        else:  # 0.19 has no such field: none is sent
            assert all("violates_instance_rules" not in r.body for r in reports)

        item = w.items()[World.KEYS["img"]]["id"]
        rows = lambda: w.pg.execute("SELECT pictrs_alias FROM local_image ORDER BY 1", w.lemmy_db)  # noqa: E731
        assert ("img1alias.png",) in rows()
        proc = w.cli("quarantine", "purge", item, "--pictrs", "--yes", env=env)
        assert proc.returncode == 0, proc.stderr
        assert pictrs.purged == ["img1alias.png"]
        history = " ".join(h["state"] for h in w.show(item)["history"])
        if api == "v4":
            assert len(lemmy.calls("DELETE", "/image")) == 1 and lemmy.calls("DELETE", "/image")[0].body == {
                "filename": "img1alias.png"}  # fmt: skip
            assert deleted == ["img1alias.png", "img2alias.png"] and ("img1alias.png",) not in rows()
            assert "purged through Lemmy 1.0" in history
        else:
            assert ("img1alias.png",) in rows() and "purge queued by pict-rs" in history
    finally:
        pictrs.stop()


@pytest.mark.parametrize("shape", ["0.19.5", "1.0"])
def test_a_proxied_image_is_found_where_lemmy_keeps_its_remote_url(world, shape):
    """Lemmy stores a remote image's URL, never pict-rs's alias for the proxied copy; with image proxying on,
    in its own proxy URL with the remote URL encoded (LemmyNet/lemmy 1.0.0-beta.1
    crates/api/api_utils/src/utils.rs:895-963: /api/v4/image/proxy?url=; 0.19.20
    crates/api_common/src/utils.rs:913-996: /api/v3/image_proxy?url=). pict-rs's `proxies` table links the
    remote URL to the alias of its copy (robinst/pict-rs v0.5.17-pre.2 migrations)."""
    import urllib.parse

    w = world(shape)
    remote = "https://remote.example/pics/cat.png"
    key = "11/22/33/44/55/66/77/88/99/aa/0a0b0c0d0e0f.png"
    (w.mirror / key).parent.mkdir(parents=True, exist_ok=True)
    (w.mirror / key).write_bytes(image_bytes("PNG", 77))
    w.pg.execute("INSERT INTO hashes (hash, identifier) VALUES ('h-proxied', %s)", w.pictrs_db, (key,))
    w.pg.execute("INSERT INTO aliases VALUES ('proxied1.png', 'h-proxied', 't9')", w.pictrs_db)
    w.pg.execute("INSERT INTO proxies (url, alias) VALUES (%s, 'proxied1.png')", w.pictrs_db, (remote,))
    pub = "published_at" if shape == "1.0" else "published"
    route = "/api/v4/image/proxy" if shape == "1.0" else "/api/v3/image_proxy"
    proxy_url = f"https://lemmy.test{route}?url={urllib.parse.quote(remote, safe='')}"
    w.pg.execute(
        f"INSERT INTO post (id, name, url, creator_id, community_id, {pub}, ap_id) VALUES "
        "(20, 'federated cat', %s, 2, 2, now(), 'https://remote.example/post/20')",
        w.lemmy_db,
        (proxy_url,),
    )
    w.pg.execute(
        f"INSERT INTO comment (id, creator_id, post_id, content, {pub}, ap_id) VALUES "
        "(20, 2, 4, %s, now(), 'https://remote.example/comment/20')", w.lemmy_db, (f"![]({remote})",))  # fmt: skip
    assert w.scan().returncode == 1
    item = w.items()[key]["id"]
    attribution = w.show(item)["attribution"]
    assert attribution["pictrs"]["proxied_from"] == [remote]
    assert [p["id"] for p in attribution["posts"]] == [20]
    assert [c["id"] for c in attribution["comments"]] == [20]
