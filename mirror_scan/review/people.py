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


def communities_of(attribution: dict[str, Any] | None) -> set[str] | None:
    """The actor URLs of every community a picture was used in (posts and comments); None when that is not
    fully known: a use without its community, a private message (no community), an attribution with unknown
    parts or waiting for a retry, or as many uses as attribution lists (there may be more)."""
    from mirror_scan.moderation.attribution import MAX_USES

    data = attribution or {}
    if data.get("unknown") or data.get("retry") or data.get("private_messages"):
        return None
    uses = [*data.get("posts", []), *data.get("comments", [])]
    if len(uses) >= MAX_USES:
        return None
    found = set()
    for use in uses:
        actor = (use.get("community") or {}).get("actor")
        if not actor:
            return None
        found.add(str(actor))
    return found


def why_not_allowed(
    reviewer: Reviewer,
    attribution: dict[str, Any] | None,
    decision: str = "restore",
    reason: dict[str, Any] | None = None,
    moderators_may_restore: bool = False,
) -> str | None:
    """None when `reviewer` may make `decision` on an item with this attribution (and verdict reason), else
    why not. A restore allowlists the picture's sha256 for the whole instance, and on many instances anyone
    may open a community and so become its moderator: moderators restore only where the admins allowed it
    ([console] moderators_may_restore), and never what a hash list flagged."""
    if reviewer.admin:
        return None
    if decision in ("ban", "unban"):
        return "only an instance admin may ban from the instance"
    if decision == "purge":
        return "only an instance admin may purge (the bytes are deleted for good)"
    if decision == "extract":
        return "only an instance admin may take a copy of the bytes"
    if decision in ("hold", "release"):
        return "only an instance admin may hold an item or release it (a legal hold)"
    used_in = communities_of(attribution)
    if used_in is None:
        return "where this item was used is not fully known (an admin decides it)"
    if not used_in:
        return "this item is tied to no community (an admin decides it)"
    if used_in - reviewer.communities:
        return "this item is also used in communities you do not moderate (an admin decides it)"
    if decision == "restore":
        if not moderators_may_restore:
            return "restoring allowlists the picture for the whole instance: an admin restores it"
        if (reason or {}).get("hash_list"):
            return "a hash list flagged this picture: an admin restores it"
    return None


def visible_to(reviewer: Reviewer, attribution: dict[str, Any] | None) -> bool:
    """Admins see every item; a moderator the items used only in their communities (confirming is theirs)."""
    return why_not_allowed(reviewer, attribution, "confirm") is None


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
    """Login attempts per account and client, per account and per client, in a sliding window. An attempt
    is counted when it starts (so attempts sent in parallel are counted before any is checked) and taken
    back when it succeeds; past a limit, the login is refused before the password is checked.

    The tight limit is per account *and* client, so nobody locks a moderator out by failing their logins
    from elsewhere; a looser limit per account slows guessing from many addresses, and one per client slows
    an address trying many accounts. Behind a reverse proxy, set [console] trusted_proxies, or every client
    is the proxy."""

    per_account_and_client: int = 5
    per_account: int = 50
    per_client: int = 20
    window_s: float = 900.0
    _attempts: dict[tuple[str, ...], deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _keys(self, account: str, client: str) -> list[tuple[tuple[str, ...], int]]:
        name = account.strip().casefold()
        return [
            (("pair", name, client), self.per_account_and_client),
            (("account", name), self.per_account),
            (("client", client), self.per_client),
        ]

    def _recent(self, key: tuple[str, ...], now: float) -> deque:
        times = self._attempts.setdefault(key, deque())
        while times and times[0] < now - self.window_s:
            times.popleft()
        return times

    def attempt(self, account: str, client: str) -> tuple[float, float]:
        """(wait, stamp): wait > 0 means refuse now (for that many seconds); otherwise the attempt is counted
        under `stamp` until `succeeded` takes it back."""
        now = time.monotonic()
        with self._lock:
            waits = []
            for key, limit in self._keys(account, client):
                times = self._recent(key, now)
                if len(times) >= limit:
                    waits.append(times[len(times) - limit] + self.window_s - now)
            if waits:
                return max(waits), now
            for key, _ in self._keys(account, client):
                self._attempts[key].append(now)
            return 0.0, now

    def succeeded(self, account: str, client: str, stamp: float) -> None:
        with self._lock:
            for key, _ in self._keys(account, client):
                times = self._attempts.get(key)
                if times is not None and stamp in times:
                    times.remove(stamp)
            self._attempts.pop(self._keys(account, client)[0][0], None)
