"""Who posted a quarantined image, where and when: object key -> pict-rs aliases -> Lemmy uploader, posts,
comments and private messages.

    object key --(pict-rs repo: hashes.identifier / motion_identifier, or variants.identifier)--> hash
    hash --(aliases.hash)--> aliases             [fallback without the repo: sha256 against /internal/hashes]
    alias --(Lemmy: image_upload 0.19.0-3 | local_image.local_user_id 0.19.4+ | local_image.person_id 1.0)--> uploader
    alias --(post.url, post.thumbnail_url, post.body, comment.content, private_message.content)--> uses

Lemmy's schema is told apart by its columns (ap_id/actor_id, published_at/published), not by a version
string. Everything is read-only. What cannot be found is recorded in `unknown` with the reason; a source
that is down marks the attribution for a retry (`retry: true`), one that answers but cannot serve (wrong
database, missing grant) does not. Attribution never blocks or changes the quarantine itself.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from mirror_scan.clients.pgsource import PgSource, SourceUnavailable, SourceUnusable
from mirror_scan.errors import MirrorScanError

MAX_USES = 200  # posts/comments/messages listed per image: a spam wave can reuse one image thousands of times


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _days_between(start: str | None, end: str | None) -> float | None:
    if not start:
        return None
    try:
        begin = dt.datetime.fromisoformat(start)
        finish = dt.datetime.fromisoformat(end) if end else dt.datetime.now(dt.UTC)
    except ValueError:
        return None
    return round((finish - begin).total_seconds() / 86400, 1)


@dataclass
class PictrsRepo:
    source: PgSource

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The pict-rs record of an object key: {hash, identifier, created_at, aliases, variant, motion,
        proxied_from}; None when pict-rs has no record of the key."""
        src = self.source
        with src.connect() as conn:
            found = src.rows(
                conn,
                "SELECT hash::text AS hash, identifier, created_at, NULL AS variant, "
                "(motion_identifier = %(key)s) AS motion FROM hashes "
                "WHERE identifier = %(key)s OR motion_identifier = %(key)s "
                "UNION ALL "
                "SELECT h.hash::text, h.identifier, h.created_at, v.variant, false FROM variants v "
                "JOIN hashes h ON h.hash = v.hash WHERE v.identifier = %(key)s LIMIT 1",
                {"key": key},
            )
            if not found:
                return None
            record = found[0]
            aliases = [
                r["alias"]
                for r in src.rows(
                    conn,
                    "SELECT a.alias FROM aliases a JOIN hashes h ON h.hash = a.hash WHERE h.identifier = %s "
                    "ORDER BY a.alias",
                    (record["identifier"],),
                )
            ]
            objects = [  # the upload's other objects: what its item holds besides the flagged one
                {"key": r["identifier"], "variant": r["variant"]}
                for r in src.rows(
                    conn,
                    "SELECT v.identifier, v.variant FROM variants v JOIN hashes h ON h.hash = v.hash "
                    "WHERE h.identifier = %s ORDER BY v.variant",
                    (record["identifier"],),
                )
            ]
            proxied = []
            if aliases and "proxies" in src.columns(conn):
                proxied = [
                    r["url"] for r in src.rows(conn, "SELECT url FROM proxies WHERE alias = ANY(%s)", (aliases,))
                ]
        return {
            "hash": record["hash"],
            "identifier": record["identifier"],
            "created_at": record["created_at"],
            "variant": record["variant"],
            "motion": bool(record["motion"]),
            "aliases": aliases,
            "proxied_from": proxied,
            "objects": objects,
        }


@dataclass
class LemmyRepo:
    source: PgSource

    @staticmethod
    def shape(columns: dict[str, set[str]]) -> str:
        image = columns.get("local_image", set())
        if "person_id" in image:
            return "1.0 (local_image.person_id)"
        if "local_user_id" in image:
            return "0.19.4+ (local_image.local_user_id)"
        if "local_user_id" in columns.get("image_upload", set()):
            return "0.19.0-0.19.3 (image_upload)"
        if "post" in columns and "person" in columns:
            return "older than 0.19 (no upload records)"
        raise SourceUnusable(
            "the Lemmy database has no post or person table", hint="is [lemmy] database_url really Lemmy's database?"
        )

    def lookup(
        self, aliases: list[str], uploaded_since: str | None, proxied: list[str] | None = None
    ) -> dict[str, Any]:
        """proxied: the remote URLs pict-rs proxies this upload for (its `proxies` table). Lemmy keeps those
        URLs in posts (and, with image proxying on, its own proxy URL carrying them URL-encoded:
        `/api/v4/image/proxy?url=...` in 1.0, `/api/v3/image_proxy?url=...` in 0.19: LemmyNet/lemmy
        1.0.0-beta.1 crates/api/api_utils/src/utils.rs:895-963), never the alias: they are searched too."""
        src = self.source
        needles = [f"/{alias}" for alias in aliases]
        for url in proxied or []:
            needles += [url, "url=" + urllib.parse.quote(url, safe="")]
        with src.connect() as conn:
            cols = src.columns(conn)
            shape = self.shape(cols)
            pub = {t: "published_at" if "published_at" in cols.get(t, ()) else "published" for t in cols}
            ap = {t: "ap_id" if "ap_id" in cols.get(t, ()) else "actor_id" for t in cols}
            uploads = self._uploads(conn, cols, pub, aliases)
            since = min([u["uploaded_at"] for u in uploads if u.get("uploaded_at")] or [uploaded_since or ""]) or None
            posts = self._posts(conn, cols, pub, needles, since, uploads)
            comments = self._comments(conn, pub, needles, since)
            messages = self._messages(conn, pub, needles, since)
            person_ids = {u["person_id"] for u in uploads if u.get("person_id") is not None}
            person_ids |= {p["creator_id"] for p in posts} | {c["creator_id"] for c in comments}
            person_ids |= {m["creator_id"] for m in messages} | {m["recipient_id"] for m in messages}
            people = self._people(conn, pub, ap, sorted(person_ids))
            community_ids = sorted({p["community_id"] for p in posts} | {c["community_id"] for c in comments})
            communities = self._communities(conn, ap, community_ids)
        return {
            "shape": shape,
            "uploads": uploads,
            "posts": posts,
            "comments": comments,
            "private_messages": messages,
            "people": people,
            "communities": communities,
        }

    def _uploads(self, conn, cols, pub, aliases) -> list[dict[str, Any]]:
        src = self.source
        image = cols.get("local_image", set())
        if "person_id" in image:  # 1.0: alpha.5 still says `published`, alpha.6 on `published_at`
            sql = (
                f"SELECT pictrs_alias AS alias, {pub.get('local_image', 'published_at')} AS uploaded_at, "  # noqa: S608
                "person_id, thumbnail_for_post_id FROM local_image WHERE pictrs_alias = ANY(%s)"
            )
        elif "local_user_id" in image or "local_user_id" in cols.get("image_upload", set()):
            table = "local_image" if "local_user_id" in image else "image_upload"
            stamp = pub.get(table, "published")
            sql = (
                f"SELECT i.pictrs_alias AS alias, i.{stamp} AS uploaded_at, lu.person_id, "  # noqa: S608 - names from the schema
                f"NULL::int AS thumbnail_for_post_id FROM {table} i LEFT JOIN local_user lu ON lu.id = i.local_user_id "
                "WHERE i.pictrs_alias = ANY(%s)"
            )
        else:
            return []
        return src.rows(conn, sql + " ORDER BY 2", (aliases,))

    def _posts(self, conn, cols, pub, needles, since, uploads) -> list[dict[str, Any]]:
        stamp = pub.get("post", "published")
        by_id: dict[int, dict[str, Any]] = {}
        thumb_of = {u["thumbnail_for_post_id"] for u in uploads if u.get("thumbnail_for_post_id")}
        for needle in needles:
            rows = self.source.rows(
                conn,
                f"SELECT id, name AS title, url, thumbnail_url, creator_id, community_id, {stamp} AS published, "  # noqa: S608
                "removed, deleted, ap_id, strpos(coalesce(url, ''), %(n)s) > 0 AS in_url, "
                "strpos(coalesce(thumbnail_url, ''), %(n)s) > 0 AS in_thumbnail, "
                "strpos(coalesce(body, ''), %(n)s) > 0 AS in_body FROM post "
                f"WHERE ({stamp} >= %(since)s::timestamptz - interval '1 day' OR %(since)s::timestamptz IS NULL "
                "OR id = ANY(%(thumb)s::int[])) AND (strpos(coalesce(url, ''), %(n)s) > 0 "
                "OR strpos(coalesce(thumbnail_url, ''), %(n)s) > 0 OR strpos(coalesce(body, ''), %(n)s) > 0 "
                "OR id = ANY(%(thumb)s::int[])) ORDER BY id LIMIT %(limit)s",
                {"n": needle, "since": since, "thumb": sorted(thumb_of), "limit": MAX_USES},
            )
            for row in rows:
                post = by_id.setdefault(row["id"], {**row, "uses": []})
                uses = [name for name in ("url", "thumbnail", "body") if row.pop(f"in_{name}")]
                if row["id"] in thumb_of:
                    uses.append("generated thumbnail")
                for flag in ("in_url", "in_thumbnail", "in_body"):
                    post.pop(flag, None)
                post["uses"] = sorted(set(post["uses"]) | set(uses))
        return [by_id[k] for k in sorted(by_id)]

    def _comments(self, conn, pub, needles, since) -> list[dict[str, Any]]:
        stamp = pub.get("comment", "published")
        found: dict[int, dict[str, Any]] = {}
        for needle in needles:
            for row in self.source.rows(
                conn,
                f"SELECT c.id, c.post_id, c.creator_id, c.{stamp} AS published, c.removed, c.deleted, c.ap_id, "  # noqa: S608
                "p.community_id, p.name AS post_title FROM comment c JOIN post p ON p.id = c.post_id "
                f"WHERE (c.{stamp} >= %(since)s::timestamptz - interval '1 day' OR %(since)s::timestamptz IS NULL) "
                "AND strpos(c.content, %(n)s) > 0 ORDER BY c.id LIMIT %(limit)s",
                {"n": needle, "since": since, "limit": MAX_USES},
            ):
                found[row["id"]] = row
        return [found[k] for k in sorted(found)]

    def _messages(self, conn, pub, needles, since) -> list[dict[str, Any]]:
        stamp = pub.get("private_message", "published")
        found: dict[int, dict[str, Any]] = {}
        for needle in needles:
            for row in self.source.rows(
                conn,
                f"SELECT id, creator_id, recipient_id, {stamp} AS published, deleted, ap_id FROM private_message "  # noqa: S608
                f"WHERE ({stamp} >= %(since)s::timestamptz - interval '1 day' OR %(since)s::timestamptz IS NULL) "
                "AND strpos(content, %(n)s) > 0 ORDER BY id LIMIT %(limit)s",
                {"n": needle, "since": since, "limit": MAX_USES},
            ):
                found[row["id"]] = row
        return [found[k] for k in sorted(found)]

    def _people(self, conn, pub, ap, ids) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        rows = self.source.rows(
            conn,
            f"SELECT p.id, p.name, p.display_name, p.{ap.get('person', 'actor_id')} AS actor, "  # noqa: S608
            f"p.{pub.get('person', 'published')} AS account_created, p.local, p.bot_account AS bot, p.deleted, "
            "i.domain AS instance FROM person p LEFT JOIN instance i ON i.id = p.instance_id WHERE p.id = ANY(%s)",
            (ids,),
        )
        return {row["id"]: row for row in rows}

    def _communities(self, conn, ap, ids) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        rows = self.source.rows(
            conn,
            f"SELECT c.id, c.name, c.title, c.{ap.get('community', 'actor_id')} AS actor, i.domain AS instance "  # noqa: S608
            "FROM community c LEFT JOIN instance i ON i.id = c.instance_id WHERE c.id = ANY(%s)",
            (ids,),
        )
        return {row["id"]: row for row in rows}


@dataclass
class Attributor:
    """The sources an installation has; each may be None (not configured)."""

    pictrs_repo: PictrsRepo | None = None
    pictrs_api: Any = None  # pictrs.Pictrs: the fallback from sha256 to aliases
    lemmy_repo: LemmyRepo | None = None
    # Sources that were unavailable in this round of follow-ups: later items skip them (recorded for a
    # retry) instead of waiting out a connect timeout each. The runner clears it every round.
    down: dict[str, str] = field(default_factory=dict)

    def _ask(self, source: str, fn, *args):
        if source in self.down:
            raise SourceUnavailable(self.down[source])
        try:
            return fn(*args)
        except SourceUnavailable as err:
            self.down[source] = str(err).splitlines()[0]
            raise

    @property
    def configured(self) -> bool:
        return any((self.pictrs_repo, self.pictrs_api, self.lemmy_repo))

    def attribute(self, key: str | None, sha256: str, origin: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "at": _now(),
            "key": key,
            "pictrs": None,
            "aliases": [],
            "uploads": [],
            "posts": [],
            "comments": [],
            "private_messages": [],
            "unknown": [],
            "retry": False,
        }

        def unknown(part: str, err: Exception | str) -> None:
            data["unknown"].append({"part": part, "reason": str(err).splitlines()[0]})
            if isinstance(err, SourceUnavailable):
                data["retry"] = True

        if origin == "upload":
            unknown("all", "rejected at upload: pict-rs never stored it, so no post or user is linked to it")
            return data
        if not self.configured:
            unknown("all", "no attribution source is configured ([pictrs] database_url, [lemmy] database_url)")
            return data
        self._pictrs(key, sha256, data, unknown)
        if not data["aliases"]:
            unknown("aliases", "no pict-rs alias is known for this object, so Lemmy cannot be searched")
            return data
        if self.lemmy_repo is None:
            unknown("lemmy", "[lemmy] database_url is not configured")
            return data
        try:
            pictrs = data["pictrs"] or {}
            found = self._ask(
                "lemmy", self.lemmy_repo.lookup, data["aliases"], pictrs.get("created_at"), pictrs.get("proxied_from")
            )
        except MirrorScanError as err:
            unknown("lemmy", err)
            return data
        _assemble(data, found, unknown)
        return data

    def _pictrs(self, key, sha256, data, unknown) -> None:
        if self.pictrs_repo is not None and key:
            try:
                record = self._ask("pictrs", self.pictrs_repo.lookup, key)
            except MirrorScanError as err:
                unknown("pictrs", err)
            else:
                if record is None:
                    unknown("pictrs", f"pict-rs's database has no record of the object key {key}")
                else:
                    data["pictrs"] = {"source": "database", **record}
                    data["aliases"] = record["aliases"]
                    if record["variant"]:
                        data["pictrs"]["note"] = (
                            f"this object is a variant ({record['variant']}) of {record['identifier']}; "
                            "the original and its other variants are held in the same item where pict-rs's "
                            "repo is configured"
                        )
                    return
        elif key is None:
            unknown("pictrs", "the item has no object key")
        if self.pictrs_api is not None and not data["aliases"]:
            try:
                found = self._ask("pictrs api", self._api_aliases, sha256)
            except MirrorScanError as err:
                unknown("pictrs api", err)
                return
            if found:
                data["pictrs"] = {"source": "api", "aliases": found}
                data["aliases"] = found

    def _api_aliases(self, sha256: str) -> list[str]:
        try:
            return self.pictrs_api.aliases_for([sha256]).get(sha256, [])
        except MirrorScanError as err:  # pict-rs down, or refusing the key: both retried later
            raise SourceUnavailable(str(err).splitlines()[0]) from None


def _assemble(data: dict[str, Any], found: dict[str, Any], unknown) -> None:
    """Resolve ids to people and communities, and say what is missing."""
    people, communities = found["people"], found["communities"]
    data["lemmy_schema"] = found["shape"]

    def person(pid: int | None, at: str | None = None) -> dict[str, Any] | None:
        if pid is None or pid not in people:
            return None
        who = dict(people[pid])
        who["account_age_days"] = _days_between(who.get("account_created"), at)
        return who

    def community(cid: int | None) -> dict[str, Any] | None:
        return communities.get(cid) if cid is not None else None

    for upload in found["uploads"]:
        data["uploads"].append(
            {
                "alias": upload["alias"],
                "uploaded_at": upload.get("uploaded_at"),
                "uploader": person(upload.get("person_id"), upload.get("uploaded_at")),
                "thumbnail_for_post_id": upload.get("thumbnail_for_post_id"),
            }
        )
    for post in found["posts"]:
        data["posts"].append(
            {
                **{k: post[k] for k in ("id", "title", "published", "removed", "deleted", "uses")},
                "link": post.get("ap_id"),
                "community": community(post["community_id"]),
                "creator": person(post["creator_id"], post.get("published")),
            }
        )
    for comment in found["comments"]:
        data["comments"].append(
            {
                **{k: comment[k] for k in ("id", "post_id", "post_title", "published", "removed", "deleted")},
                "link": comment.get("ap_id"),
                "community": community(comment["community_id"]),
                "creator": person(comment["creator_id"], comment.get("published")),
            }
        )
    for message in found["private_messages"]:
        data["private_messages"].append(
            {
                **{k: message[k] for k in ("id", "published", "deleted")},
                "creator": person(message["creator_id"], message.get("published")),
                "recipient": person(message["recipient_id"]),
            }
        )
    known_aliases = {u["alias"] for u in found["uploads"]}
    for alias in data["aliases"]:
        if alias not in known_aliases:
            unknown(
                "uploader",
                f"Lemmy has no upload record for {alias} (uploaded through another app, or Lemmy older than 0.19)",
            )
    for upload in data["uploads"]:
        if upload["uploader"] is None and not upload["thumbnail_for_post_id"]:
            unknown("uploader", f"the upload record of {upload['alias']} names no user (a generated thumbnail?)")
    if not (data["posts"] or data["comments"] or data["private_messages"]):
        unknown("uses", "no post, comment or private message links to this image")


def summary(data: dict[str, Any] | None) -> dict[str, str]:
    """One-line fields for `quarantine list`: uploader and where the image was used."""
    if not data:
        return {"uploader": "", "where": ""}
    uploaders = [u["uploader"] for u in data.get("uploads", []) if u.get("uploader")]
    who = uploaders[0] if uploaders else next((p["creator"] for p in data.get("posts", []) if p.get("creator")), None)
    uploader = f"{who['name']}@{who.get('instance') or '?'}" if who else "unknown"
    places = [
        f"post {p['id']}" + (f" in !{p['community']['name']}" if p.get("community") else "")
        for p in data.get("posts", [])
    ]
    places += [f"comment {c['id']}" for c in data.get("comments", [])]
    places += [f"message {m['id']}" for m in data.get("private_messages", [])]
    where = ", ".join(places[:3]) + (f" (+{len(places) - 3})" if len(places) > 3 else "")
    return {"uploader": uploader, "where": where or ("unknown" if data.get("unknown") else "not used")}


def sole_uploader(attribution: dict | None) -> dict | None:
    """The one uploader of an item (person dict: id, name, instance), or None when none or several are
    known (a ban needs exactly one)."""
    uploaders = {
        u["uploader"]["id"]: u["uploader"] for u in (attribution or {}).get("uploads", []) if u.get("uploader")
    }
    return next(iter(uploaders.values())) if len(uploaders) == 1 else None
