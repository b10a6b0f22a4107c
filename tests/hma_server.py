"""A small HTTP server answering the bank calls of Meta's Hasher-Matcher-Actioner (OpenMediaMatch) the way
HMA does (HMA cannot be installed here: it needs its PostgreSQL schema and Flask app). Taken from
facebook/ThreatExchange hasher-matcher-actioner (v1.1.7, commit baefb4e):

- blueprints/curation.py:98 `POST /c/banks {"name"}`: 201 with the bank; 403 "Bank already exists";
  400 for a name that is not UPPER_WITH_UNDERSCORE (storage/postgres/database.py:126-127,166).
- curation.py:472-502 `POST /c/bank/<bank>/signal`: the body maps signal type names to values (plus an
  optional "note", at most 255 characters); each value goes through the signal type's own
  validate_signal_str; 400 "No signals given", "No such signal type X", "Invalid pdq signal: invalid PDQ
  hash"; 404 "bank 'X' not found"; 200 {"id": content id, "signals": {...}}. Errors are JSON {"message"}
  (flask_utils.api_error_handler).
- storage/postgres/impl.py:87-88: the signal types enabled by default are pdq and video_md5.
The values are validated by python-threatexchange's real signal classes, as HMA does."""

from __future__ import annotations

import itertools
import json
import re
from http.server import BaseHTTPRequestHandler

from .loopback import LoopbackHTTP

BANK_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class FakeHMA(LoopbackHTTP):
    def __init__(self) -> None:
        from threatexchange.signal_type.md5 import VideoMD5Signal
        from threatexchange.signal_type.pdq.signal import PdqSignal

        self.signal_types = {t.get_name(): t for t in (PdqSignal, VideoMD5Signal)}  # HMA's default
        self.banks: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, str, dict | None, dict]] = []
        ids = itertools.count(1)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except json.JSONDecodeError:
                    return self._reply(400, {"message": "invalid JSON"})
                outer.requests.append(("POST", self.path, body, dict(self.headers)))
                if self.path == "/c/banks":
                    name = (body or {}).get("name", "")
                    if not BANK_NAME.match(name):
                        return self._reply(400, {"message": "Bank names must be UPPER_WITH_UNDERSCORE"})
                    if name in outer.banks:
                        return self._reply(403, {"message": "Bank already exists"})
                    outer.banks[name] = []
                    return self._reply(201, {"name": name, "matching_enabled_ratio": 1.0})
                match = re.fullmatch(r"/c/bank/([^/]+)/signal", self.path)
                if match is None:
                    return self._reply(404, {"message": "not found"})
                bank = match.group(1)
                if bank not in outer.banks:
                    return self._reply(404, {"message": f"bank '{bank}' not found"})
                body = dict(body or {})
                note = body.pop("note", None)
                if note is not None and len(str(note)) > 255:
                    return self._reply(400, {"message": "note too long"})
                if not body:
                    return self._reply(400, {"message": "No signals given"})
                signals = {}
                for name, value in body.items():
                    signal_type = outer.signal_types.get(name)
                    if signal_type is None:
                        return self._reply(400, {"message": f"No such signal type {name}"})
                    try:
                        signals[name] = signal_type.validate_signal_str(value)
                    except ValueError as err:
                        return self._reply(400, {"message": f"Invalid {name} signal: {err}"})
                content = {"id": next(ids), "signals": signals, "note": note}
                outer.banks[bank].append(content)
                return self._reply(200, {"id": content["id"], "signals": signals})

        self._listen(Handler)
