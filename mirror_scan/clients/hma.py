"""Pushing our confirmed hashes into a bank of Meta's Hasher-Matcher-Actioner (OpenMediaMatch), over its
REST API as facebook/ThreatExchange hasher-matcher-actioner/src/OpenMediaMatch/blueprints/curation.py
(v1.1.7) serves it:

- `POST /c/banks {"name": BANK}`: 201; 403 "Bank already exists"; names are UPPER_WITH_UNDERSCORE
  (storage/postgres/database.py:126-127).
- `POST /c/bank/<BANK>/signal {"pdq": "<hex>", "video_md5": "<hex>", "note": "..."}`: one content item
  with those signals; 200 `{"id": <content id>, "signals": {...}}`; 400 `{"message": "No such signal type
  md5"}` or "Invalid pdq signal: invalid PDQ hash"; 404 for an unknown bank. HMA enables pdq and
  video_md5 by default (storage/postgres/impl.py:87-88): other types are refused per content and skipped.
HMA has no authentication of its own (app.py:243-246: a reverse proxy adds it): an optional bearer
token is read from a file or MIRROR_SCAN_HMA_TOKEN, and never printed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from mirror_scan.clients.http import Redirected, Unreachable, exchange
from mirror_scan.errors import MirrorScanError
from mirror_scan.redact import scrub
from mirror_scan.text import one_line

BANK_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class HMAError(MirrorScanError):
    """HMA refused or could not be reached."""


@dataclass
class HMA:
    url: str
    token: str | None = None
    timeout: float = 20.0

    def _send(self, method: str, path: str, body: dict | None) -> tuple[int, object]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "mirror-scan"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        try:
            return exchange(method, self.url.rstrip("/") + path, headers, data, self.timeout)
        except Redirected as err:
            raise HMAError(f"HMA at {self.url}: {err}") from None
        except Unreachable as err:
            raise HMAError(f"HMA at {self.url} is unreachable: {scrub(str(err), [self.token or ''])}") from None

    def _message(self, payload: object) -> str:
        """HMA's own words, on one line, short, without the token (a proxy may echo the request)."""
        text = str(payload.get("message", "")) if isinstance(payload, dict) else ""
        return one_line(scrub(text, [self.token or ""]))[:300]

    def create_bank(self, bank: str) -> bool:
        """True if made now, False if it was there already."""
        status, payload = self._send("POST", "/c/banks", {"name": bank})
        if status in (200, 201):
            return True
        if status == 403 and "exists" in self._message(payload).lower():
            return False
        raise HMAError(f"HMA refused to create bank {bank}: {status} {self._message(payload)}".strip())

    def add_signals(self, bank: str, signals: dict[str, str], note: str) -> tuple[str | None, str | None]:
        """(content id, None) once HMA holds them; (None, why) when HMA refused this content."""
        status, payload = self._send("POST", f"/c/bank/{bank}/signal", {**signals, "note": note[:255]})
        if status in (200, 201) and isinstance(payload, dict):
            return str(payload.get("id")), None
        if status == 404:
            raise HMAError(f"HMA has no bank {bank}", hint="create it in HMA, or pass --create")
        if status == 400:
            return None, self._message(payload) or "refused"
        raise HMAError(f"HMA answered {status} to adding signals to {bank}: {self._message(payload)}".strip())


def contents(pictures: list[dict], item_ids: dict[str, str]) -> list[tuple[str, dict[str, str], str]]:
    """(key, signals, note) per content item: a picture's first PDQ of quality 50+ with the file md5 of a
    video (HMA's video_md5), and each further distinct frame's PDQ as a content of its own (HMA holds one
    value per signal type per content). `key` identifies what was pushed, so nothing is pushed twice."""
    from mirror_scan.lists.formats import MIN_QUALITY, degenerate

    out = []
    for picture in pictures:
        good = [h for h, q in picture["pdq"] if q >= MIN_QUALITY and not degenerate(h)]
        note = f"mirror-scan quarantine item {item_ids.get(picture['sha256'], picture['sha256'][:12])}"
        first: dict[str, str] = {}
        if good:
            first["pdq"] = good[0]
        if picture["video"] and picture.get("md5"):
            first["video_md5"] = picture["md5"]
        if first:
            out.append((f"{picture['sha256']}:0", first, note))
        for i, digest in enumerate(dict.fromkeys(good[1:]), start=1):
            out.append((f"{picture['sha256']}:{i}", {"pdq": digest}, f"{note}, frame {i + 1}"))
    return out
