"""A small HTTP server answering pict-rs's internal API the way pict-rs 0.5 does (pict-rs itself cannot be
installed here). Taken from robinst/pict-rs (the GitHub mirror of asonix's repository) at 31049d3, 0.5.16:

- src/middleware/internal.rs:12-43,74-88: every /internal route needs `X-Api-Token`; a missing or wrong
  key is 401 `{"msg":"Invalid API Key","code":"invalid-api-token"}`.
- src/lib.rs:640-735 `GET /internal/hashes?limit=N[&slug=S]`: `{"msg":"ok","page":{"limit","current",
  "prev","next","hashes":[{"hex","aliases","details"}]}}`, newest first, `limit` not capped, `prev`/`next`
  omitted when absent; a slug is the URL-safe base64 of the hash bytes (src/repo.rs:561-563); `hex` is
  the 39-byte hash: sha256 + 6-byte big-endian size + 1 format byte = 78 hex digits (src/repo/hash.rs).
- src/lib.rs:1487-1512 `POST /internal/purge?alias=`: queues a cleanup job (src/queue.rs:85-89) and
  answers 200 `{"msg":"ok","aliases":[every alias of the file]}` at once; until the job runs the alias
  still resolves and a second purge answers the same. An unknown alias: 404 `{"msg":"Requested a file
  that doesn't exist","code":"alias-not-found"}` from 0.5.7 (commit 3ecefcb), 400 `{"msg":"No images
  associated with provided alias"}` in 0.5.0-0.5.6 (07d6231 src/lib.rs:1431-1435).
It records every purge it receives; `run_jobs()` plays pict-rs's cleanup worker."""

from __future__ import annotations

import base64
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from .loopback import LoopbackHTTP, send_json


class PictrsContractServer(LoopbackHTTP):
    def __init__(
        self, api_key: str, files: dict[str, list[str]], page_size: int | None = None, version: str = "0.5.16"
    ) -> None:
        """files: sha256 of the stored file -> its aliases (listed newest first in that order). page_size:
        a cap on pages (pict-rs has none), to make the client page."""
        self.api_key = api_key
        self.files = dict(files)
        self.version = version
        self.purged: list[str] = []
        self.queued: list[str] = []  # sha256s whose cleanup job has not run yet
        self.seen_tokens: list[str] = []
        outer = self

        def hash_hex(sha: str) -> str:
            return sha + (1234).to_bytes(6, "big").hex() + "01"

        def slug(sha: str) -> str:
            return base64.urlsafe_b64encode(bytes.fromhex(hash_hex(sha))).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict | None) -> None:
                send_json(self, status, body)

            def _authorised(self) -> bool:
                token = self.headers.get("X-Api-Token", "")
                outer.seen_tokens.append(token)
                if token != outer.api_key:
                    self._send(401, {"msg": "Invalid API Key", "code": "invalid-api-token"})
                    return False
                return True

            def do_GET(self):  # noqa: N802
                url = urlparse(self.path)
                if not url.path.startswith("/internal/"):
                    return self._send(404, None)
                if not self._authorised():
                    return None
                if url.path != "/internal/hashes":
                    return self._send(404, None)
                query = parse_qs(url.query)
                limit = int(query.get("limit", ["20"])[0])
                if page_size is not None:
                    limit = min(limit, page_size)
                entries = list(outer.files.items())
                slugs = [slug(sha) for sha, _ in entries]
                start = slugs.index(query["slug"][0]) if "slug" in query and query["slug"][0] in slugs else 0
                chosen = entries[start : start + limit]
                page: dict = {"limit": limit, "hashes": [
                    {"hex": hash_hex(sha), "aliases": aliases, "details": None} for sha, aliases in chosen
                ]}  # fmt: skip
                if chosen:
                    page["current"] = slugs[start]
                if start + limit < len(entries):
                    page["next"] = slugs[start + limit]
                if start > 0:
                    page["prev"] = slugs[max(0, start - limit)]
                self._send(200, {"msg": "ok", "page": page})
                return None

            def do_POST(self):  # noqa: N802
                url = urlparse(self.path)
                if not url.path.startswith("/internal/"):
                    return self._send(404, None)
                if not self._authorised():
                    return None
                if url.path != "/internal/purge":
                    return self._send(404, None)
                alias = parse_qs(url.query).get("alias", [""])[0]
                for sha, aliases in outer.files.items():
                    if alias in aliases:
                        outer.purged.append(alias)
                        if sha not in outer.queued:
                            outer.queued.append(sha)
                        return self._send(200, {"msg": "ok", "aliases": aliases})
                if tuple(int(p) for p in outer.version.split(".")[:3]) >= (0, 5, 7):
                    return self._send(404, {"msg": "Requested a file that doesn't exist", "code": "alias-not-found"})
                return self._send(400, {"msg": "No images associated with provided alias"})

        self._listen(Handler)

    def run_jobs(self) -> None:
        """pict-rs's cleanup worker: the queued purges happen (src/queue/cleanup.rs)."""
        for sha in self.queued:
            self.files.pop(sha, None)
        self.queued.clear()
