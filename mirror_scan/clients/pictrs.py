"""pict-rs internal API client (stdlib HTTP): check the URL and key, find the aliases of quarantined
bytes, purge them. The API key travels only in the X-Api-Token header and never appears in logs,
errors or reports.

Contract used (pict-rs 0.5, see field-facts): every /internal/* call needs `X-Api-Token` (wrong key:
401). `GET /internal/hashes?limit=N[&slug=S]` returns pages of `{hex, aliases, details}` (nested under
`page`, with a `next` slug for the following page); the first 64 hex characters of `hex` are the
sha256 of the stored file. `POST /internal/purge?alias=A` deletes every alias of the file, its
variants and its records (irreversible; unknown alias: 404).
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mirror_scan.clients.http import exchange_with
from mirror_scan.errors import MirrorScanError


class PictrsError(MirrorScanError):
    """pict-rs could not be reached or refused the request."""


@dataclass
class Pictrs:
    url: str
    api_key: str
    timeout: float = 15.0
    page_size: int = 100

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> tuple[int, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        headers = {"X-Api-Token": self.api_key, "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        url = f"{self.url.rstrip('/')}{path}{query}"
        status, data = exchange_with("pict-rs", "pictrs", self.url, PictrsError, PictrsError, [self.api_key],
                                     method, url, headers, body, self.timeout)  # fmt: skip
        if status == 401:
            raise PictrsError(
                "pict-rs rejected the API key (401)", hint="check [pictrs] api_key ([server] api_key in pict-rs.toml)"
            )
        return status, data

    def check(self) -> dict[str, Any]:
        status, data = self._request("GET", "/internal/hashes", {"limit": 1})
        if status != 200:
            raise PictrsError(f"pict-rs answered {status} to GET /internal/hashes")
        return {"url": self.url, "status": status, "api_key": "accepted"}

    def hashes(self) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"limit": self.page_size}
        seen_slugs = set()
        while True:
            status, data = self._request("GET", "/internal/hashes", params)
            if status != 200 or not isinstance(data, dict):
                raise PictrsError(f"pict-rs answered {status} to GET /internal/hashes")
            page = data.get("page", data)
            yield from page.get("hashes", [])
            slug = page.get("next")
            if not slug or slug in seen_slugs:
                return
            seen_slugs.add(slug)
            params = {"limit": self.page_size, "slug": slug}

    def aliases_for(self, sha256s: Iterable[str]) -> dict[str, list[str]]:
        """sha256 -> aliases, by matching the stored-file hash against /internal/hashes."""
        wanted = {s.lower() for s in sha256s}
        found: dict[str, list[str]] = {}
        for entry in self.hashes():
            sha = str(entry.get("hex", ""))[:64].lower()
            if sha in wanted:
                found.setdefault(sha, []).extend(entry.get("aliases", []))
        return found

    def purge(self, alias: str) -> str:
        """pict-rs queues the purge (a cleanup job, src/queue.rs) and answers 200 at once, with every alias
        of the file: the alias may resolve for a moment more. An unknown alias is 404 `alias-not-found`
        from 0.5.7, 400 "No images associated with provided alias" before (robinst/pict-rs@07d6231
        src/lib.rs:1431-1435)."""
        status, data = self._request("POST", "/internal/purge", {"alias": alias})
        message = str(data.get("msg", "")) if isinstance(data, dict) else ""
        if status == 404 or (status == 400 and "no images associated" in message.lower()):
            return "unknown alias (already purged?)"
        if status >= 300:
            raise PictrsError(f"pict-rs answered {status} to the purge of {alias}")
        others = [a for a in (data.get("aliases") or []) if a != alias] if isinstance(data, dict) else []
        return "purge queued by pict-rs" + (f" (with its other aliases: {', '.join(others)})" if others else "")

    def identifier(self, alias: str) -> str | None:
        """The key of the original an alias names (`GET /internal/identifier?alias=`: 200 `{"msg":"ok",
        "identifier":KEY}`); None when pict-rs no longer knows the alias (404 `alias-not-found`: purged,
        pruned, or removed with its user's content). robinst/pict-rs v0.5.17-pre.2 src/lib.rs:1550-1566."""
        status, data = self._request("GET", "/internal/identifier", {"alias": alias})
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict) or not isinstance(data.get("identifier"), str):
            raise PictrsError(f"pict-rs answered {status} to GET /internal/identifier")
        return data["identifier"]

    def import_file(self, alias: str, data: bytes, content_type: str = "application/octet-stream") -> dict[str, Any]:
        """Upload bytes again through pict-rs under a chosen alias (`POST /internal/import`, multipart field
        `images`, the file's name kept as the alias: robinst/pict-rs v0.5.17-pre.2 src/lib.rs:245-367). pict-rs
        ingests it as any upload (its limits, its processing, external_validation) and answers 201 with the
        file's details; an alias in use is 400 `duplicate-alias`, nothing overwritten."""
        import secrets as _secrets

        boundary = "mirror-scan-" + _secrets.token_hex(12)
        safe_name = alias.replace('"', "%22").replace("\r", "").replace("\n", "")
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{safe_name}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, answer = self._request("POST", "/internal/import", body=body,
                                       content_type=f"multipart/form-data; boundary={boundary}")  # fmt: skip
        code = answer.get("code") if isinstance(answer, dict) else None
        message = str(answer.get("msg", "")) if isinstance(answer, dict) else ""
        if status == 400 and code == "duplicate-alias":
            raise PictrsError(f"pict-rs already has an upload named {alias}; nothing imported")
        if status == 400 and code == "failed-external-validation":
            raise PictrsError(
                f"pict-rs's external validation refused the import of {alias}",
                hint="the validator (mirror-scan serve?) flags these bytes: allowlist their sha256 first",
            )
        if status not in (200, 201) or not isinstance(answer, dict):
            said = f": {message}" if message else ""
            raise PictrsError(f"pict-rs answered {status} to the import of {alias}{said}")
        files = answer.get("files") or []
        return files[0] if files and isinstance(files[0], dict) else {}
