"""pict-rs 0.5 as mirror-scan meets it, over a real object store and a real repo: the store is the directory a
real `rclone serve s3` serves (one folder per key), the repo is pict-rs's tables on a real PostgreSQL
(tests/lemmy_schema.py PICTRS_SCHEMA). pict-rs itself cannot be installed here; every answer follows
robinst/pict-rs at v0.5.17-pre.2 (commit 38a5b72), file by file:

- src/lib.rs:847-926 `async fn process` (GET /image/process.{ext}?src=ALIAS&thumbnail=N|resize=N): the
  variant path is the operations and the format (`thumbnail/256/webp`, src/processor.rs:91-126); a recorded
  variant is streamed from the store without reading the original; a missing one is generated from the
  original (src/generate.rs), stored under a new key and recorded (`relate_variant_identifier`). An unknown
  alias is 404 with an empty body. An object missing from the store is 500 `{"code":"not-found"}`
  (src/store.rs:71-80); a variant that cannot be generated because its original is missing times out in
  pict-rs after 7 x 5 s with 500 `{"code":"command-timeout"}`: answered here at once, with that body.
- src/lib.rs:1068-1099 GET /image/original/{alias}: the same store read (500 not-found when missing).
- src/lib.rs:1486-1510 POST /internal/purge?alias=: 404 `alias-not-found`, else the cleanup queued and 200
  `{"msg":"ok","aliases":[...]}` at once; src/queue/cleanup.rs: the aliases go, then the hash: every variant,
  the original and the motion still deleted from the store (a missing object ignored), their rows deleted.
- src/lib.rs:1355-1401 POST /internal/prune_missing[?force=true]: 200 `{"complete","progress","total"}`;
  the job (src/queue/cleanup.rs:291-360) HEADs each hash's original only, and cleans up (records and the
  variants' and still's objects) every hash whose original is missing.
- src/lib.rs:245-367 POST /internal/import (multipart field `images`, the file name kept as the alias): an
  alias in use is 400 `duplicate-alias`; bytes already stored attach the alias to their hash; 201
  `{"msg":"ok","files":[{"file","delete_token","details"}]}`.
- src/lib.rs:1535-1566 GET /internal/aliases?alias= (an unknown alias: an empty list) and
  GET /internal/identifier?alias= (404 `alias-not-found`).
- Keys: src/file_path.rs:20-37, ten folders of two hex digits from a UUIDv7, then twelve hex digits and the
  extension; hashes: base64 of sha256 + 6-byte size + a format byte (src/repo/hash.rs, src/formats.rs:76-90).
Every /internal route needs `X-Api-Token` (src/middleware/internal.rs): else 401 `invalid-api-token`.
Jobs run when the test says (`run_jobs()`), as pict-rs's workers would."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import io
import secrets
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from PIL import Image

from .loopback import LoopbackHTTP, send_json

FORMAT_BYTES = {"apng": 0, "gif": 2, "avif": 4, "jpeg": 5, "jxl": 6, "png": 7, "webp": 8, "mp4": 9, "webm": 10}
PILLOW_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG", "gif": "GIF"}


def new_key(ext: str) -> str:
    """src/file_path.rs: a UUIDv7's 32 hex digits, the first 20 as ten folders, the last 12 the name."""
    try:
        digits = uuid.uuid7().hex  # type: ignore[attr-defined]
    except AttributeError:
        digits = secrets.token_hex(16)
    return "/".join(digits[i : i + 2] for i in range(0, 20, 2)) + f"/{digits[20:]}.{ext}"


def pictrs_hash(data: bytes, fmt: str) -> str:
    return base64.b64encode(
        hashlib.sha256(data).digest() + len(data).to_bytes(6, "big") + bytes([FORMAT_BYTES[fmt]])
    ).decode()


def sniff(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as img:
        return {"PNG": "png", "WEBP": "webp", "JPEG": "jpeg", "GIF": "gif"}[img.format]


class PictrsFake(LoopbackHTTP):
    def __init__(self, api_key: str, store: Path, pg, database: str) -> None:
        self.api_key, self.store, self.pg, self.database = api_key, store, pg, database
        self.jobs: list[tuple[str, str]] = []  # ("hash", HASH) cleanups and ("prune", "") queued
        self.prune_started = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _json(self, status: int, body: dict | None) -> None:
                send_json(self, status, body)

            def _bytes(self, data: bytes, fmt: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"image/{fmt}")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _internal(self) -> bool:
                if self.headers.get("X-Api-Token", "") != outer.api_key:
                    self._json(401, {"msg": "Invalid API Key", "code": "invalid-api-token"})
                    return False
                return True

            def do_GET(self):  # noqa: N802
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path.startswith("/image/original/"):
                    return self._serve(outer.original_key(unquote(url.path.rsplit("/", 1)[1])))
                if url.path.startswith("/image/process."):
                    return self._process(url.path.rsplit(".", 1)[1], query)
                if not url.path.startswith("/internal/") or not self._internal():
                    return None if url.path.startswith("/internal/") else self._json(404, None)
                alias = query.get("alias", "")
                if url.path == "/internal/aliases":
                    found = outer.hash_of(alias)
                    return self._json(200, {"msg": "ok", "aliases": outer.aliases_of_hash(found) if found else []})
                if url.path == "/internal/identifier":
                    key = outer.original_key(alias)
                    if key is None:
                        return self._json(
                            404, {"msg": "Requested a file that doesn't exist", "code": "alias-not-found"}
                        )
                    return self._json(200, {"msg": "ok", "identifier": key})
                return self._json(404, None)

            def _serve(self, key: str | None, fmt: str | None = None) -> None:
                if key is None:
                    return self._json(404, None)
                data = outer.read(key)
                if data is None:
                    return self._json(500, {"msg": "Object at location not found", "code": "not-found"})
                return self._bytes(data, fmt or key.rsplit(".", 1)[-1])

            def _process(self, ext: str, query: dict) -> None:
                alias = query.get("src") or query.get("alias", "")
                found = outer.hash_of(alias)
                if found is None:
                    return self._json(404, None)
                ext = "jpeg" if ext == "jpg" else ext
                ops = [(name, query[name]) for name in query if name in ("thumbnail", "resize")]
                variant = "/".join(f"{name}/{value}" for name, value in ops) + f"/{ext}"
                key = outer.variant_key(found, variant)
                if key is not None:
                    return self._serve(key, ext)
                key = outer.generate(found, variant, ops, ext)
                if key is None:
                    return self._json(500, {"msg": "Timed out while waiting for media processing",
                                            "code": "command-timeout"})  # fmt: skip
                return self._serve(key, ext)

            def do_POST(self):  # noqa: N802
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if not url.path.startswith("/internal/"):
                    return self._json(404, None)
                if not self._internal():
                    return None
                if url.path == "/internal/purge":
                    found = outer.hash_of(query.get("alias", ""))
                    if found is None:
                        return self._json(
                            404, {"msg": "Requested a file that doesn't exist", "code": "alias-not-found"}
                        )
                    outer.jobs.append(("hash", found))
                    return self._json(200, {"msg": "ok", "aliases": outer.aliases_of_hash(found)})
                if url.path == "/internal/prune_missing":
                    total = len(outer.repo("SELECT hash FROM hashes"))
                    if not outer.prune_started or query.get("force") == "true":
                        outer.prune_started = True
                        outer.jobs.append(("prune", ""))
                    return self._json(200, {"complete": False, "progress": 0, "total": total})
                if url.path == "/internal/import":
                    length = int(self.headers.get("Content-Length", "0"))
                    body = self.rfile.read(length)
                    return self._import(self.headers.get("Content-Type", ""), body)
                return self._json(404, None)

            def _import(self, content_type: str, body: bytes) -> None:
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {content_type}\r\n\r\n".encode() + body
                )
                parts = [
                    p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "images"
                ]
                if len(parts) != 1:
                    return self._json(400, {"msg": "Missing images", "code": "no-files"})
                alias = parts[0].get_filename() or ""
                if outer.hash_of(alias) is not None:
                    return self._json(400, {"msg": "Tried to save an image with an already-taken name",
                                            "code": "duplicate-alias"})  # fmt: skip
                data = parts[0].get_payload(decode=True)
                fmt = sniff(data)
                outer.add_upload(data, fmt, alias)
                details = {"width": 0, "height": 0, "frames": None, "content_type": f"image/{fmt}",
                           "created_at": "2026-12-06T00:00:00Z", "format": "Image"}  # fmt: skip
                with Image.open(io.BytesIO(data)) as img:
                    details["width"], details["height"] = img.size
                return self._json(
                    201, {"msg": "ok", "files": [{"file": alias, "delete_token": "tok", "details": details}]}
                )

        self._listen(Handler)

    # ------------------------------------------------------------------ the store and the repo

    def repo(self, sql: str, params=None) -> list:
        return self.pg.execute(sql, self.database, params)

    def read(self, key: str) -> bytes | None:
        path = self.store / key
        return path.read_bytes() if path.is_file() else None

    def write(self, key: str, data: bytes) -> None:
        path = self.store / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def delete(self, key: str) -> None:
        (self.store / key).unlink(missing_ok=True)  # a missing object is ignored (cleanup.rs:95-108)

    def hash_of(self, alias: str) -> str | None:
        rows = self.repo("SELECT hash FROM aliases WHERE alias = %s", (alias,))
        return rows[0][0] if rows else None

    def aliases_of_hash(self, found: str) -> list[str]:
        return [a for (a,) in self.repo("SELECT alias FROM aliases WHERE hash = %s ORDER BY alias", (found,))]

    def original_key(self, alias: str) -> str | None:
        rows = self.repo("SELECT h.identifier FROM aliases a JOIN hashes h ON h.hash = a.hash WHERE a.alias = %s",
                         (alias,))  # fmt: skip
        return rows[0][0] if rows else None

    def variant_key(self, found: str, variant: str) -> str | None:
        rows = self.repo("SELECT identifier FROM variants WHERE hash = %s AND variant = %s", (found, variant))
        return rows[0][0] if rows else None

    def add_upload(self, data: bytes, fmt: str, alias: str | None = None) -> str:
        """An upload as pict-rs's ingest stores it (src/ingest.rs): the bytes under a new key, the hash, an
        alias (the same bytes again: the alias joins the hash, the new object is dropped). Returns the alias."""
        found = pictrs_hash(data, fmt)
        alias = alias or f"{uuid.uuid4()}.{fmt}"
        if not self.repo("SELECT 1 FROM hashes WHERE hash = %s", (found,)):
            key = new_key(fmt)
            self.write(key, data)
            self.repo("INSERT INTO hashes (hash, identifier) VALUES (%s, %s)", (found, key))
        self.repo("INSERT INTO aliases (alias, hash, token) VALUES (%s, %s, %s)", (alias, found, secrets.token_hex(8)))
        return alias

    def generate(self, found: str, variant: str, ops: list[tuple[str, str]], ext: str) -> str | None:
        """src/generate.rs: the variant made from the original in the store (None: the original is missing),
        stored under a new key and recorded."""
        (original,) = self.repo("SELECT identifier FROM hashes WHERE hash = %s", (found,))[0]
        data = self.read(original)
        if data is None:
            return None
        with Image.open(io.BytesIO(data)) as img:
            picture = img.convert("RGB")
        for name, value in ops:
            size = int(value)
            if name == "thumbnail":
                picture.thumbnail((size, size))
            else:
                picture = picture.resize((size, max(1, round(picture.height * size / picture.width))))
        buf = io.BytesIO()
        picture.save(buf, format=PILLOW_FORMATS[ext])
        key = new_key(ext)
        self.write(key, buf.getvalue())
        self.repo("INSERT INTO variants (hash, variant, identifier) VALUES (%s, %s, %s)", (found, variant, key))
        return key

    def add_motion(self, alias: str, data: bytes, fmt: str = "webp") -> str:
        """The still of an animation (src/generate.rs ensure_motion_identifier): stored, recorded on the hash."""
        key = new_key(fmt)
        self.write(key, data)
        self.repo("UPDATE hashes SET motion_identifier = %s WHERE hash = %s", (key, self.hash_of(alias)))
        return key

    def keys_of(self, alias: str) -> list[str]:
        """Every key of an upload in the store: its original, its variants and its still."""
        found = self.hash_of(alias)
        if found is None:
            return []
        (original, motion) = self.repo("SELECT identifier, motion_identifier FROM hashes WHERE hash = %s", (found,))[0]
        variants = [
            k for (k,) in self.repo("SELECT identifier FROM variants WHERE hash = %s ORDER BY variant", (found,))
        ]
        return [original, *variants, *([motion] if motion else [])]

    # ------------------------------------------------------------------ the workers

    def run_jobs(self) -> None:
        while self.jobs:
            kind, found = self.jobs.pop(0)
            if kind == "hash":
                self._cleanup_hash(found)
            else:
                for each, original in self.repo("SELECT hash, identifier FROM hashes"):
                    if self.read(original) is None:  # store.len: a HEAD on the original only
                        self._cleanup_hash(each)

    def _cleanup_hash(self, found: str) -> None:
        """src/queue/cleanup.rs: the aliases (and proxies), then every object of the hash, then its rows."""
        self.repo("DELETE FROM proxies WHERE alias IN (SELECT alias FROM aliases WHERE hash = %s)", (found,))
        self.repo("DELETE FROM aliases WHERE hash = %s", (found,))
        rows = self.repo("SELECT identifier, motion_identifier FROM hashes WHERE hash = %s", (found,))
        if not rows:
            return
        keys = [rows[0][0], *([rows[0][1]] if rows[0][1] else [])]
        keys += [k for (k,) in self.repo("SELECT identifier FROM variants WHERE hash = %s", (found,))]
        for key in keys:
            self.delete(key)
        self.repo("DELETE FROM variants WHERE hash = %s", (found,))
        self.repo("DELETE FROM hashes WHERE hash = %s", (found,))


def http_get(url: str) -> tuple[int, bytes]:
    """A plain GET as Lemmy's pages make them: (status, body)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback test server
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
