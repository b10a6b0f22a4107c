"""The hash lists as a running scanner holds them: the built-in canary list first, then every imported
list, read from the ledger and rebuilt when a list changes; and the match of bytes decided from the ledger.
(hashes.py hashes and matches; canary.py makes the canary; neither imports the other's users.)"""

from __future__ import annotations

from mirror_scan.lists.canary import with_canary
from mirror_scan.lists.hashes import Match, Matcher, queries


def ledger_matcher(ledger) -> Matcher:
    """Every list the ledger holds, the canary's first."""
    return Matcher(with_canary(ledger.lists.hash_list_entries()))


class LiveMatcher:
    """The matcher of a long run (scan, watch, serve), the built-in canary list included: rebuilt when a list
    is imported, replaced or removed
    (`refresh()`: one small query), so a running daemon needs no restart. `ledger` gives
    `hash_lists_version()` and `hash_list_entries()`."""

    def __init__(self, ledger) -> None:
        self.ledger = ledger
        self.version = ledger.lists.hash_lists_version()
        self.matcher = ledger_matcher(ledger)

    @property
    def has_imported(self) -> bool:
        """Lists beyond the built-in canary exist (the version's first field counts imported lists)."""
        return bool(self.version[0])

    def refresh(self) -> Matcher:
        version = self.ledger.lists.hash_lists_version()
        if version != self.version:
            self.version, self.matcher = version, ledger_matcher(self.ledger)
        return self.matcher

    def match_stored(self, sha256: str) -> Match | None:
        return match_stored(self.matcher, self.ledger, sha256)


def match_stored(matcher: Matcher, ledger, sha256: str) -> Match | None:
    """A match for bytes decided from the ledger (a copy, an unchanged file, rescore): their stored hashes
    with every rotation and mirror image, exactly what the scan compared."""
    if not matcher:
        return None
    md5, pdqs, variants = ledger.lists.picture_hashes(sha256)
    return matcher.match(sha256, md5, queries(pdqs, variants), ledger.lists.video_hashes(sha256))
