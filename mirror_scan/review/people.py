"""Who may review: reviewers (local accounts, Lemmy admins and moderators, API tokens), what each may decide,
and the login's brute-force brake.

- A local account (`console user add`) and an API token (`console token create`) are made by someone with
  a shell on the machine: they decide every item, as an admin does.
- A Lemmy admin decides every item; a Lemmy moderator only items used in communities they moderate, every
  one of them (a picture also used in another community is not theirs alone to restore), and never bans
  (Lemmy's site bans are an admin's). Items tied to no community (private messages, unused, unattributed)
  are an admin's.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

TOKEN_PREFIX = "msk_"  # so a leaked token is recognisable (secret scanners, logs)


@dataclass(frozen=True)
class Reviewer:
    name: str
    kind: str  # local | lemmy | token | shell
    admin: bool
    communities: frozenset[str] = frozenset()  # actor URLs of the communities a Lemmy moderator moderates

    @property
    def who(self) -> str:
        """How the ledger names them: the name and where the name comes from."""
        if self.kind == "lemmy":
            return f"{self.name} (lemmy {'admin' if self.admin else 'moderator'})"
        return f"{self.name} ({ {'token': 'api token', 'shell': 'shell'}.get(self.kind, 'local account') })"


def shell_reviewer() -> Reviewer:
    """Whoever runs a command on the machine: an admin, named by their login."""
    import getpass

    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown user"
    return Reviewer(name, "shell", admin=True)


def communities_of(attribution: dict[str, Any] | None) -> set[str]:
    """The actor URLs of every community a picture was used in (posts and comments)."""
    found = set()
    for use in [*(attribution or {}).get("posts", []), *(attribution or {}).get("comments", [])]:
        community = use.get("community") or {}
        if community.get("actor"):
            found.add(str(community["actor"]))
    return found


def why_not_allowed(reviewer: Reviewer, attribution: dict[str, Any] | None, decision: str = "restore") -> str | None:
    """None when `reviewer` may make `decision` on an item with this attribution, else why not."""
    if reviewer.admin:
        return None
    if decision in ("ban", "unban"):
        return "only an instance admin may ban from the instance"
    used_in = communities_of(attribution)
    if not used_in:
        return "this item is tied to no community (an admin decides it)"
    if used_in - reviewer.communities:
        return "this item is also used in communities you do not moderate (an admin decides it)"
    return None


def lemmy_login(url: str):
    """The console's check of a Lemmy account: (name, password, 2FA code) -> Reviewer, or None when Lemmy
    refuses it or the account is banned. Raises clients.lemmy.LemmyUnavailable when Lemmy cannot answer."""
    from mirror_scan.clients.lemmy import person_login

    def check(name: str, password: str, code: str) -> Reviewer | None:
        me = person_login(url, name, password, code)
        if me is None or me.get("banned"):
            return None
        return Reviewer(str(me["name"]), "lemmy", bool(me["admin"]), frozenset(me["moderates_actors"]))

    return check


# ---------------------------------------------------------------------- secrets at rest


def hash_password(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def password_matches(stored_hash: str | None, password: str) -> bool:
    """Constant work whether or not the account exists: an unknown name costs a hash like a known one."""
    from argon2 import PasswordHasher
    from argon2.exceptions import Argon2Error, InvalidHashError

    hasher = PasswordHasher()
    try:
        return hasher.verify(stored_hash or _DUMMY_HASH.value(), password) and stored_hash is not None
    except (Argon2Error, InvalidHashError):
        return False


class _Dummy:
    """An argon2 hash of nothing anyone knows, made once, for unknown names."""

    def __init__(self) -> None:
        self._hash: str | None = None

    def value(self) -> str:
        if self._hash is None:
            self._hash = hash_password(secrets.token_urlsafe(16))
        return self._hash


_DUMMY_HASH = _Dummy()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Tokens and session cookies are 256-bit random values: their sha256 is safe to store."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


# ---------------------------------------------------------------------- the login brake


@dataclass
class LoginBrake:
    """Failed logins per account and per client address in a sliding window; past either limit the login is
    refused before the password is checked (so guesses at speed learn nothing)."""

    per_account: int = 5
    per_client: int = 20
    window_s: float = 900.0
    _failures: dict[tuple[str, str], deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, key: tuple[str, str], now: float) -> deque:
        times = self._failures.setdefault(key, deque())
        while times and times[0] < now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, account: str, client: str) -> float:
        """Seconds until a login may be tried again; 0 when it may be tried now."""
        now = time.monotonic()
        with self._lock:
            waits = []
            for key, limit in ((("account", account.lower()), self.per_account), (("client", client), self.per_client)):
                times = self._recent(key, now)
                if len(times) >= limit:
                    waits.append(times[len(times) - limit] + self.window_s - now)
            return max(waits, default=0.0)

    def failed(self, account: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (("account", account.lower()), ("client", client)):
                self._recent(key, now).append(now)

    def succeeded(self, account: str) -> None:
        with self._lock:
            self._failures.pop(("account", account.lower()), None)
