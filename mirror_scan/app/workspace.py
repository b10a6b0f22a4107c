"""A workspace: the settings, the ledger and the quarantine of one installation, opened for reading or
for writing.

- `Workspace.reader()` opens the ledger read-only: no lock, no recovery, no waiting, whatever else is
  running (list, show, report, status, export).
- `Workspace.writer()` opens it for writing beside any other writer (the watch daemon, the validator,
  another shell) and first finishes or rolls back every move whose owner is dead (item locks say which
  are alive; see quarantine.py).

A writer queues an attribution follow-up with every new quarantine item when an attribution or
moderation source is configured; `moderation` carries the follow-ups out (moderation/actions.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mirror_scan.moderation.actions import Moderation, follow_up_enabled
from mirror_scan.moderation.uploads import upload_source
from mirror_scan.settings import Settings
from mirror_scan.store.ledger import Ledger, StateDamaged
from mirror_scan.store.quarantine import Quarantine
from mirror_scan.store.upstream import Upstreams

COMMAND_FOLLOW_UP_BUDGET_S = 60.0


@dataclass
class Workspace:
    settings: Settings
    ledger: Ledger
    quarantine: Quarantine
    recovered: list[str]
    _moderation: object = field(default=None, repr=False)

    @classmethod
    def reader(cls, settings: Settings) -> Workspace:
        refuse_lost_state(settings)
        ledger = Ledger(settings.state, readonly=True)
        quarantine = Quarantine(settings.quarantine, ledger)
        configure_sealing(quarantine, settings)
        return cls(settings, ledger, quarantine, [])

    @classmethod
    def writer(
        cls,
        settings: Settings,
        *,
        recover: bool = True,
        on_recovered: Callable[[str], None] | None = None,
        opens: bool = True,
    ) -> Workspace:
        """opens=False: a process that quarantines and never restores (the watch daemon, the validator): it is
        never given the identity that opens sealed items, whatever the settings say."""
        refuse_lost_state(settings)
        ledger = Ledger(settings.state)
        try:
            upstreams = Upstreams.rclone(settings.remote, settings.rclone)
            if settings.remote:
                upstreams.get(settings.remote)  # fail now, clearly, if rclone is missing
            # pict-rs's repo, where configured, says which objects belong to a flagged upload (its variants).
            quarantine = Quarantine(settings.quarantine, ledger, upstreams, follow_up_enabled(settings),
                                    upload_source(settings))  # fmt: skip
            configure_sealing(quarantine, settings, opens)
            notes = quarantine.recover() if recover else []
            for note in notes:
                if on_recovered:
                    on_recovered(note)
        except BaseException:
            ledger.close()
            raise
        return cls(settings, ledger, quarantine, notes)

    @property
    def moderation(self) -> Moderation:
        """Attribution and moderation actions for this workspace's items (built on first use: a bot
        account that is misconfigured fails here, not when the workspace opens)."""
        if self._moderation is None:
            self._moderation = Moderation.from_settings(self.settings, self.ledger, self.quarantine)
        return self._moderation  # type: ignore[return-value]

    @property
    def follows_up(self) -> bool:
        return self.quarantine.follow_up

    def run_follow_ups(
        self, say: Callable[[str], None] | None = None, budget_s: float | None = COMMAND_FOLLOW_UP_BUDGET_S
    ) -> list[str]:
        """Carry out what is due (attribution, actions, undo) when anything is configured; a
        misconfiguration is said, never raised: the quarantine has already happened. A command spends at
        most `budget_s` on them (services that are slow or trickle their answers never hold it up longer);
        the daemons pass None. Canary items past `canary_purge_hours` are purged first."""
        if self.ledger.readonly:
            return []
        from mirror_scan.errors import MirrorScanError

        notes = [f"canary {item} purged ({self.settings.canary_purge_hours:g} h after its quarantine)"
                 for item in self.quarantine.expire_canaries(self.settings.canary_purge_hours * 3600)]  # fmt: skip
        if follow_up_enabled(self.settings):
            try:
                notes += self.moderation.run_due(budget_s=budget_s)
            except MirrorScanError as err:
                notes.append(f"attribution and moderation actions are not run: {err}")
        for note in notes:
            if say:
                say(note)
        return notes

    def bind_mirror(self, mirror: str | Path, remote: str, by: str, record: bool = True) -> None:
        """The remote a mirror mirrors, recorded by the first pull or scan with --remote; a different remote
        for the same mirror is refused: removals would go to another bucket (objects that do not exist
        there look removed, and the real ones stay public). record=False checks without recording: a pull
        records the remote once it has worked (a typo or an unreachable endpoint binds nothing)."""
        import datetime as dt
        import os

        from mirror_scan.errors import UsageError

        root = os.fsencode(os.path.abspath(mirror))
        binding = self.ledger.bind_mirror(root, remote, by) if record else self.ledger.mirror_remote(root)
        if binding is None:
            return
        bound, when, first = binding
        if bound != remote.rstrip("/"):
            stamp = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            raise UsageError(
                f"mirror {os.fsdecode(root)} mirrors {bound} (recorded by `{first}` on {stamp}), not {remote}",
                hint=f"check --remote; if the bucket really moved, `mirror-scan mirror remote {os.fsdecode(root)} "
                f"--set {remote}` records the new one",
            )

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def refuse_lost_state(settings: Settings) -> None:
    """An empty file where the state database should be is a lost ledger, never a fresh start: starting
    afresh would forget the index and the allowlist (restored pictures would be flagged again), and the
    quarantine that would tell may be elsewhere (`--state` named alone). SQLite itself takes a 0-byte file
    for a new, empty database; mirror-scan writes its tables at once, so one it made is never empty."""
    try:
        if settings.state.stat().st_size:
            return
    except FileNotFoundError:
        return
    try:
        held = sum(1 for _ in (settings.quarantine / "items").iterdir())
    except OSError:
        held = 0
    if held:
        raise StateDamaged(settings.state, f"it is empty (0 bytes) while the quarantine holds {held} item(s)")
    raise StateDamaged(
        settings.state,
        "it is empty (0 bytes): a lost ledger, or a file made beforehand; if this is a first start, remove "
        "the empty file",
    )


def configure_sealing(quarantine: Quarantine, settings: Settings, opens: bool = True) -> None:
    """New items sealed to seal_to; sealed items opened with seal_identity (or --identity), read only when a
    way out needs it (store/sealing.py). Nothing is ever asked here: a daemon or the console must not wait
    on a terminal; the shell's ways out ask (`allow_asking`)."""
    from mirror_scan.store.sealing import Identity, Sealer

    content = quarantine.journal.content
    content.sealer = Sealer(settings.seal_to) if settings.seal_to else None
    path = settings.seal_identity
    if path and not opens:
        logging.getLogger(__name__).warning(
            "seal_identity is set (from %s) but this process only quarantines: it is not read here; keep the "
            "identity out of the daemons' configuration", settings.sources.get("seal_identity", "?"))  # fmt: skip
        path = None
    content.ask_identity = (lambda: Identity.from_file(path)) if path else None


def allow_asking(workspace: Workspace) -> None:
    """A command at a terminal (restore, extract, report) may ask for the identity when none was given."""
    from mirror_scan.store.sealing import Identity

    content = workspace.quarantine.journal.content
    if content.ask_identity is None:
        content.ask_identity = Identity.asked
