"""pict-rs's uploads as the quarantine asks about them (store/companions.UploadSource).

From its Postgres repo (read-only, the columns `lemmy grants --pictrs` grants): the upload an object key
belongs to, and every object of it: the original (`hashes.identifier`), each variant (`variants.identifier`:
thumbnails, resizes, other formats) and the still of an animation or video (`hashes.motion_identifier`). The
schema is pict-rs 0.5's (robinst/pict-rs v0.5.17-pre.2, migrations V0001-V0014: hashes(hash, identifier
UNIQUE, motion_identifier UNIQUE), variants(hash, variant, identifier), aliases(alias, hash)). A sled repo
cannot be read from outside pict-rs: then only the API answers, which says whether an alias still resolves
(`/internal/identifier`) but lists no variants. The API also uploads again (`/internal/import`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mirror_scan.clients.pgsource import PgSource
from mirror_scan.store.companions import Companion, Upload


@dataclass
class PictrsUploads:
    source: PgSource | None = None  # the Postgres repo
    api: Any = None  # clients.pictrs.Pictrs: the internal API

    def upload_of(self, key: str) -> Upload | None:
        src = self.source
        if src is None:
            return None
        with src.connect() as conn:
            found = src.rows(
                conn,
                "SELECT hash::text AS hash, identifier, motion_identifier FROM hashes "
                "WHERE identifier = %(key)s OR motion_identifier = %(key)s "
                "UNION ALL "
                "SELECT h.hash::text, h.identifier, h.motion_identifier FROM variants v "
                "JOIN hashes h ON h.hash = v.hash WHERE v.identifier = %(key)s LIMIT 1",
                {"key": key},
            )
            if not found:
                return None
            return self._uploads(conn, found)[0]

    def uploads_of(self, hashes: list[str]) -> list[Upload]:
        src = self.source
        if src is None or not hashes:
            return []
        with src.connect() as conn:
            found = src.rows(
                conn,
                "SELECT hash::text AS hash, identifier, motion_identifier FROM hashes WHERE hash::text = ANY(%s)",
                (hashes,),
            )
            return self._uploads(conn, found) if found else []

    def served(self, key: str | None, aliases: list[str]) -> bool | None:
        src = self.source
        if src is not None and (key is not None or aliases):
            with src.connect() as conn:
                if key is not None:  # by the object's own key: the same bytes uploaded again are another upload
                    return bool(src.rows(
                        conn, "SELECT 1 FROM hashes WHERE identifier = %(k)s OR motion_identifier = %(k)s "
                        "UNION ALL SELECT 1 FROM variants WHERE identifier = %(k)s", {"k": key}))  # fmt: skip
                return bool(src.rows(conn, "SELECT 1 FROM aliases WHERE alias = ANY(%s)", (aliases,)))
        if self.api is not None and aliases:  # a sled repo: whether pict-rs still resolves an alias of it
            return any(self.api.identifier(alias) is not None for alias in aliases)
        return None

    def recorded(self, keys: list[str]) -> set[str] | None:
        src = self.source
        if src is None or not keys:
            return None if src is None else set()
        with src.connect() as conn:
            rows = src.rows(
                conn,
                "SELECT identifier AS k FROM hashes WHERE identifier = ANY(%(k)s) "
                "UNION SELECT motion_identifier FROM hashes WHERE motion_identifier = ANY(%(k)s) "
                "UNION SELECT identifier FROM variants WHERE identifier = ANY(%(k)s)",
                {"k": keys},
            )
        return {r["k"] for r in rows}

    def alias_hash(self, alias: str) -> str | None:
        src = self.source
        if src is None:
            from mirror_scan.errors import MirrorScanError

            raise MirrorScanError("whose upload an alias names is read from pict-rs's repo ([pictrs] database_url)")
        with src.connect() as conn:
            rows = src.rows(conn, "SELECT hash::text AS hash FROM aliases WHERE alias = %s", (alias,))
        return rows[0]["hash"] if rows else None

    def reimport(self, alias: str, data: bytes) -> str:
        if self.api is None:
            from mirror_scan.errors import UsageError

            raise UsageError("uploading again through pict-rs needs its API", hint="set [pictrs] url and api_key")
        details = self.api.import_file(alias, data)
        return f"imported again through pict-rs as {details.get('file') or alias}"

    def _uploads(self, conn: Any, records: list[dict[str, Any]]) -> list[Upload]:
        src = self.source
        hashes = [r["hash"] for r in records]
        variants: dict[str, list[Companion]] = {h: [] for h in hashes}
        for row in src.rows(  # never another upload's original, whatever a variant row says
            conn,
            "SELECT hash::text AS hash, variant, identifier FROM variants WHERE hash::text = ANY(%s) "
            "AND identifier NOT IN (SELECT identifier FROM hashes) ORDER BY hash, variant",
            (hashes,),
        ):
            variants[row["hash"]].append(Companion(row["identifier"], "variant", row["variant"]))
        aliases: dict[str, list[str]] = {h: [] for h in hashes}
        for row in src.rows(
            conn, "SELECT hash::text AS hash, alias FROM aliases WHERE hash::text = ANY(%s) ORDER BY alias", (hashes,)
        ):
            aliases[row["hash"]].append(row["alias"])
        uploads = []
        for record in records:
            companions = list(variants[record["hash"]])
            if record.get("motion_identifier"):
                companions.append(Companion(record["motion_identifier"], "motion"))
            uploads.append(Upload(record["hash"], record["identifier"], tuple(companions),
                                  tuple(aliases[record["hash"]])))  # fmt: skip
        return uploads


@dataclass
class LazyUploads:
    """The source built on first use: a password file that cannot be read fails the lookup (said, and
    retried by the next attempt), never the opening of every command."""

    make: Any
    _made: PictrsUploads | None = None

    def _source(self) -> PictrsUploads:
        if self._made is None:
            self._made = self.make()
        return self._made

    def upload_of(self, key: str) -> Upload | None:
        return self._source().upload_of(key)

    def uploads_of(self, hashes: list[str]) -> list[Upload]:
        return self._source().uploads_of(hashes)

    def served(self, key: str | None, aliases: list[str]) -> bool | None:
        return self._source().served(key, aliases)

    def recorded(self, keys: list[str]) -> set[str] | None:
        return self._source().recorded(keys)

    def alias_hash(self, alias: str) -> str | None:
        return self._source().alias_hash(alias)

    def reimport(self, alias: str, data: bytes) -> str:
        return self._source().reimport(alias, data)


def upload_source(settings) -> LazyUploads | None:
    """pict-rs where it is configured: its repo ([pictrs] database_url), its API ([pictrs] url and api_key),
    or both; None when neither is."""
    from mirror_scan.clients.pgsource import read_secret_file

    if not settings.pictrs_database_url and not (settings.pictrs_url and settings.pictrs_api_key):
        return None

    def make() -> PictrsUploads:
        source = api = None
        if settings.pictrs_database_url:
            password = settings.pictrs_database_password or read_secret_file(
                settings.pictrs_database_password_file, "[pictrs] database"
            )
            source = PgSource(settings.pictrs_database_url, password, "pict-rs database")
        if settings.pictrs_url and settings.pictrs_api_key:
            from mirror_scan.clients.pictrs import Pictrs

            api = Pictrs(settings.pictrs_url, settings.pictrs_api_key)
        return PictrsUploads(source, api)

    return LazyUploads(make)


def upload_mode(settings) -> str:
    """What a quarantine can find of an upload here, in words for `status`, `selftest` and `lemmy check`."""
    if settings.pictrs_database_url:
        return ("whole uploads: pict-rs's Postgres repo lists each upload's variants and still, which leave and "
                "come back with it")  # fmt: skip
    if settings.pictrs_url and settings.pictrs_api_key:
        return ("originals only: pict-rs's API lists no variants (a sled repo, or [pictrs] database_url unset): "
                "the thumbnails of a quarantined upload stay in the bucket; restores ask the API first")  # fmt: skip
    return ("originals only: pict-rs is not configured ([pictrs] database_url): the thumbnails of a quarantined "
            "upload stay in the bucket, and a restore cannot check that pict-rs still knows it")  # fmt: skip
