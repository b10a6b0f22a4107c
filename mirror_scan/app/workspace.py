"""A workspace: the settings, the ledger and the quarantine of one installation, opened for reading or
for writing.

- `Workspace.reader()` opens the ledger read-only: no lock, no recovery, no waiting, whatever else is
  running (list, show, report, status, export).
- `Workspace.writer()` opens it for writing beside any other writer (the watch daemon, the validator,
  another shell) and first finishes or rolls back every move whose owner is dead (item locks say which
  are alive; see quarantine.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..quarantine import Quarantine
from ..settings import Settings
from ..state import Ledger
from ..upstream import Upstreams


@dataclass
class Workspace:
    settings: Settings
    ledger: Ledger
    quarantine: Quarantine
    recovered: list[str]

    @classmethod
    def reader(cls, settings: Settings) -> Workspace:
        ledger = Ledger(settings.state, readonly=True)
        return cls(settings, ledger, Quarantine(settings.quarantine, ledger), [])

    @classmethod
    def writer(
        cls, settings: Settings, *, recover: bool = True, on_recovered: Callable[[str], None] | None = None
    ) -> Workspace:
        ledger = Ledger(settings.state)
        try:
            upstreams = Upstreams.rclone(settings.remote, settings.rclone)
            if settings.remote:
                upstreams.get(settings.remote)  # fail now, clearly, if rclone is missing
            quarantine = Quarantine(settings.quarantine, ledger, upstreams)
            notes = quarantine.recover() if recover else []
            for note in notes:
                if on_recovered:
                    on_recovered(note)
        except BaseException:
            ledger.close()
            raise
        return cls(settings, ledger, quarantine, notes)

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
