"""A small HTTP server following pict-rs's documented internal API contract (pict-rs itself cannot be
installed here): X-Api-Token check (401), paged GET /internal/hashes, POST /internal/purge?alias=
(404 for an unknown alias). It records every purge it receives."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class PictrsContractServer:
    def __init__(self, api_key: str, files: dict[str, list[str]], page_size: int = 2) -> None:
        """files: sha256 of the stored file -> its aliases."""
        self.api_key = api_key
        self.files = dict(files)
        self.purged: list[str] = []
        self.seen_tokens: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                token = self.headers.get("X-Api-Token", "")
                outer.seen_tokens.append(token)
                if token != outer.api_key:
                    self._send(401, {"msg": "Invalid API token"})
                    return False
                return True

            def do_GET(self):  # noqa: N802
                url = urlparse(self.path)
                if url.path != "/internal/hashes":
                    return self._send(404, {"msg": "not found"})
                if not self._authorised():
                    return None
                query = parse_qs(url.query)
                limit = int(query.get("limit", ["20"])[0])
                start = int(query.get("slug", ["0"])[0])
                entries = sorted(outer.files.items())
                page = entries[start : start + min(limit, page_size)]
                nxt = start + len(page)
                self._send(
                    200,
                    {
                        "msg": "ok",
                        "page": {
                            "limit": limit,
                            "current": str(start),
                            "next": str(nxt) if nxt < len(entries) else None,
                            "hashes": [
                                {"hex": sha + "00" * 9, "aliases": aliases, "details": None} for sha, aliases in page
                            ],
                        },
                    },
                )
                return None

            def do_POST(self):  # noqa: N802
                url = urlparse(self.path)
                if url.path != "/internal/purge":
                    return self._send(404, {"msg": "not found"})
                if not self._authorised():
                    return None
                alias = parse_qs(url.query).get("alias", [""])[0]
                for sha, aliases in list(outer.files.items()):
                    if alias in aliases:
                        del outer.files[sha]
                        outer.purged.append(alias)
                        return self._send(200, {"msg": "ok", "aliases": aliases})
                self._send(404, {"msg": "Alias not found"})
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PictrsContractServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
