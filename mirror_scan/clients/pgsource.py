"""Read-only PostgreSQL access for attribution (pict-rs's repo, Lemmy's database).

A short-lived connection per lookup, never a pooled one held open: the databases belong to other
services, restart on their own schedule, and an attribution is a handful of queries. Every session is
read-only (`default_transaction_read_only`) and bounded (connect timeout, statement timeout), so a slow
or hostile database costs seconds, never a hang. Passwords come from a file or the environment and never
appear in messages: errors are scrubbed of them and of the URL's own password.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror_scan.errors import MirrorScanError
from mirror_scan.redact import redact_url, remember, scrub

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 20_000


class SourceUnavailable(MirrorScanError):
    """The database cannot be reached now (down, timeout): worth retrying later."""


class SourceUnusable(MirrorScanError):
    """The database answered but cannot serve the lookup (wrong database, missing grant): not retried
    until the configuration changes."""


def read_secret_file(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MirrorScanError(
            f"{what} password file {path} cannot be read ({getattr(err, 'strerror', None) or err})",
            hint="the file must be readable by the user mirror-scan runs as (and nobody else)",
        ) from None
    secret = text.strip("\r\n") or None
    remember(secret)  # never printed, whichever message carries it
    return secret


@dataclass
class PgSource:
    """One database: `what` names it in messages ("pict-rs database", "Lemmy database")."""

    url: str
    password: str | None
    what: str

    @property
    def shown(self) -> str:
        return redact_url(self.url)

    def _scrub(self, text: str) -> str:
        from urllib.parse import urlsplit

        secrets = [self.password or ""]
        with contextlib.suppress(ValueError):
            secrets.append(urlsplit(self.url).password or "")
        return scrub(text, secrets).strip().splitlines()[0] if text.strip() else "no detail"

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        import psycopg
        from psycopg.rows import dict_row

        extra: dict[str, Any] = {"password": self.password} if self.password else {}
        try:
            conn = psycopg.connect(
                self.url,
                connect_timeout=CONNECT_TIMEOUT_S,
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c default_transaction_read_only=on",
                application_name="mirror-scan",
                autocommit=True,
                row_factory=dict_row,
                **extra,
            )
        except psycopg.ProgrammingError as err:  # a malformed URL
            raise SourceUnusable(
                f"{self.what} URL is not usable: {self._scrub(str(err))}",
                hint="use postgresql://USER@HOST:PORT/DATABASE and put the password in a file",
            ) from None
        except psycopg.OperationalError as err:
            text = self._scrub(str(err))
            unusable = any(w in text for w in ("password authentication", "does not exist", "no password"))
            raise (SourceUnusable if unusable else SourceUnavailable)(
                f"{self.what} at {self.shown} cannot be reached: {text}",
                hint="check the URL, the password file and that the role may log in from this host",
            ) from None
        try:
            yield conn
        finally:
            conn.close()

    def rows(self, conn: Any, sql: str, params: Any = None) -> list[dict[str, Any]]:
        import psycopg

        try:
            return [_plain(row) for row in conn.execute(sql, params).fetchall()]
        except psycopg.errors.InsufficientPrivilege as err:
            raise SourceUnusable(
                f"{self.what}: the role may not read what attribution needs: {self._scrub(str(err))}",
                hint="GRANT SELECT on the tables listed in the README's Lemmy section to this read-only role",
            ) from None
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as err:
            raise SourceUnusable(
                f"{self.what} does not have the expected tables: {self._scrub(str(err))}",
                hint=f"is {self.shown} really the {self.what}? (`mirror-scan lemmy check` shows what was found)",
            ) from None
        except psycopg.errors.QueryCanceled:
            raise SourceUnavailable(
                f"{self.what}: a lookup took longer than {STATEMENT_TIMEOUT_MS // 1000} s"
            ) from None
        except psycopg.OperationalError as err:
            raise SourceUnavailable(f"{self.what} failed during a lookup: {self._scrub(str(err))}") from None
        except psycopg.Error as err:  # a type or shape we did not expect: a person must look
            raise SourceUnusable(f"{self.what}: a lookup failed: {self._scrub(str(err))}") from None

    def table_access(self, conn: Any, tables: tuple[str, ...]) -> dict[str, str]:
        """table -> "ok", "denied" (it exists; this role may read none of its columns) or "missing". From the
        catalogue, which every role may read: information_schema lists only what a role may read, so a role
        without grants would see no tables at all."""
        found = {}
        for table in tables:
            row = self.rows(
                conn,
                "SELECT to_regclass(%(t)s) IS NOT NULL AS present, CASE WHEN to_regclass(%(t)s) IS NOT NULL "
                "THEN has_any_column_privilege(to_regclass(%(t)s), 'SELECT') END AS readable",
                {"t": table},
            )[0]
            found[table] = "missing" if not row["present"] else ("ok" if row["readable"] else "denied")
        return found

    def require_tables(self, conn: Any, tables: tuple[str, ...], kind: str) -> None:
        """SourceUnusable naming what is wrong: tables missing (not this database) or not granted."""
        access = self.table_access(conn, tables)
        denied = [t for t, a in access.items() if a == "denied"]
        missing = [t for t, a in access.items() if a == "missing"]
        if denied:
            raise SourceUnusable(
                f"{self.what} at {self.shown}: permission denied on table {', '.join(denied)}",
                hint="GRANT SELECT on the columns listed in the README's Lemmy section to this read-only role",
            )
        if missing:
            raise SourceUnusable(
                f"{self.what} at {self.shown} has no {', '.join(missing)} table: is it really {kind}?",
                hint="check the database name in the URL",
            )

    def readable_secrets(self, conn: Any, pairs: tuple[tuple[str, str], ...]) -> list[str]:
        """The secret `table.column`s that exist here and this role may read (it should read none); from the
        catalogue, which any role may read."""
        readable = []
        for table, column in pairs:
            row = self.rows(
                conn,
                "SELECT a.attname IS NOT NULL AND has_column_privilege(to_regclass(%(t)s), %(c)s, 'SELECT') AS ok "
                "FROM (SELECT 1) one LEFT JOIN pg_attribute a ON a.attrelid = to_regclass(%(t)s) "
                "AND a.attname = %(c)s AND NOT a.attisdropped",
                {"t": table, "c": column},
            )[0]
            if row["ok"]:
                readable.append(f"{table}.{column}")
        return readable

    def columns(self, conn: Any) -> dict[str, set[str]]:
        """table -> columns of the public schema (how the schema version is told apart)."""
        found: dict[str, set[str]] = {}
        for row in self.rows(
            conn,
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()",
        ):
            found.setdefault(row["table_name"], set()).add(row["column_name"])
        return found


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready values: timestamps as ISO 8601 in UTC, bytes as hex."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dt.datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
            value = value.isoformat(timespec="seconds")
        elif isinstance(value, bytes | memoryview):
            value = bytes(value).hex()
        out[key] = value
    return out
