"""`selftest`: the whole chain, locally, without the instance: the configured model and policy scan a
temporary mirror holding the canary and a benign generated picture; the canary must be flagged by its
hash, quarantined (bytes verified) and restored byte-identical; the configured remote is listed (read
only: nothing is removed or written there), Lemmy is asked who the bot is, and the canary's actions are
planned (never sent). Each stage is timed. Nothing of the installation's own state or quarantine is
touched: the temporary state, quarantine and mirror are removed afterwards."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror_scan.errors import MirrorScanError
from mirror_scan.settings import Settings


@dataclass
class Stage:
    name: str
    outcome: str  # ok | failed | skipped
    seconds: float
    detail: str

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SelfTest:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stages: list[Stage] = []

    def _stage(self, name: str, step: Callable[[], str | None]) -> bool:
        started = time.monotonic()
        try:
            detail = step()
        except (MirrorScanError, OSError, AssertionError) as error:
            self.stages.append(Stage(name, "failed", time.monotonic() - started, str(error).splitlines()[0]))
            return False
        outcome = "skipped" if detail is not None and detail.startswith("skipped") else "ok"
        self.stages.append(Stage(name, outcome, time.monotonic() - started, detail or ""))
        return True

    def run(self) -> list[Stage]:
        from mirror_scan.model.synthetic import generated_image

        base = Path(tempfile.mkdtemp(prefix="mirror-scan-selftest-"))
        base.chmod(0o700)
        try:
            mirror = base / "mirror"
            mirror.mkdir()
            sealing = {}
            if self.settings.seal_to:  # sealed as this install seals, to a key of the test's own: it restores
                from mirror_scan.store.sealing import generate_identity

                key = base / "selftest-key.txt"
                sealing = {"seal_to": generate_identity(key), "seal_identity": key}
            local = dataclasses.replace(
                self.settings, state=base / "state.db", quarantine=base / "quarantine", remote=None,
                pictrs_database_url=None, lemmy_database_url=None, lemmy_url=None, notify_webhook=None, **sealing,
            )  # fmt: skip
            found: dict[str, Any] = {}

            def make() -> str:
                from mirror_scan.lists.canary import canary_bytes

                (mirror / "canary.png").write_bytes(canary_bytes("PNG"))
                generated_image(7, 320, 240).save(mirror / "benign.png")
                found["canary"] = (mirror / "canary.png").read_bytes()
                return f"a temporary mirror in {base}: the canary and a benign generated picture"

            def load() -> str:
                from mirror_scan.app.one_scan import OneScan

                found["scan"] = OneScan(local, [mirror])
                return "; ".join(found["scan"].describe())

            def scan() -> str:
                from mirror_scan.app.workspace import Workspace

                with Workspace.writer(local) as workspace:
                    run = found["scan"].run(workspace)
                    items = workspace.ledger.items()
                summary = run.summary
                canaries = [i for i in items if '"canary"' in (i.reason or "")]
                assert len(canaries) == 1, f"the canary was not quarantined ({summary['flagged']} flagged)"
                assert not (mirror / "canary.png").exists(), "the canary is still in the mirror"
                found["item"] = canaries[0]
                benign = "flagged (look at the policy and severity)" if len(items) > 1 else "not flagged"
                return (f"{summary['scanned']} scanned: the canary flagged by its hash and quarantined; the benign "
                        f"picture {benign}")  # fmt: skip

            def restore() -> str:
                from mirror_scan.app.item_ops import ItemOps
                from mirror_scan.app.workspace import Workspace
                from mirror_scan.store.lifecycle import By

                with Workspace.writer(local) as workspace, ItemOps(workspace, By("mirror-scan", "selftest")) as ops:
                    done = ops.restore(found["item"].id, upstream=False, canary=True)  # this state is thrown away
                assert done.ok, f"the canary was not restored: {done.detail}"
                assert (mirror / "canary.png").read_bytes() == found["canary"], "the restored bytes differ"
                sealed = " (it was sealed to a test key, as seal_to seals)" if sealing else ""
                return f"restored byte-identical from the quarantine{sealed}"

            self._stage("canary written", make)
            if self._stage("model loaded", load):
                self._stage("scanned and quarantined", scan) and self._stage("restored", restore)
            self._stage("remote (read only)", self._remote)
            self._stage("pict-rs uploads (read only)", self._uploads)
            self._stage("lemmy bot", self._lemmy)
            self._stage("canary actions (planned, not sent)", self._actions)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return self.stages

    def _remote(self) -> str:
        from mirror_scan.clients.rclone import Rclone

        remote = self.settings.remote
        if not remote:
            return "skipped: no remote configured"
        Rclone.locate(self.settings.rclone).check_bucket(remote)
        return f"{remote} answers (listed, nothing written or removed)"

    def _uploads(self) -> str:
        """What a quarantine finds of an upload here; with pict-rs's repo, one lookup proves it answers."""
        from mirror_scan.moderation.uploads import upload_mode, upload_source

        source = upload_source(self.settings)
        if source is not None and self.settings.pictrs_database_url:
            source.upload_of("mirror-scan-selftest/no-such-key")  # a read: raises if the repo cannot answer
        return upload_mode(self.settings)

    def _lemmy(self) -> str:
        from mirror_scan.moderation.actions import build_lemmy

        lemmy = build_lemmy(self.settings)
        if lemmy is None:
            return "skipped: [lemmy] url is not configured"
        api, version = lemmy.detect()
        me = lemmy.me()
        role = "admin" if me["admin"] else f"moderator of {len(me['moderates'])} communities"
        return f"Lemmy {version} ({api}); the bot {me['name']} is {role}"

    def _actions(self) -> str:
        from mirror_scan.lists.canary import CANARY_LABEL
        from mirror_scan.moderation.plan import configured_actions

        s = self.settings
        wanted = configured_actions([CANARY_LABEL], {CANARY_LABEL: ("notify",), **s.actions})
        if "notify" in wanted:  # said as what happens: a notice reaches the admins named, or the webhook
            told = [*(f"Lemmy user {name}" for name in s.lemmy_notify), *(["the webhook"] if s.notify_webhook else [])]
            wanted = [w for w in wanted if w != "notify"] + (
                [f"notify ({', '.join(told)})"] if told else
                ["no notice (nobody to tell: set [lemmy] notify or [notify] webhook)"]
            )  # fmt: skip
        mode = "dry run" if s.canary_dry_run or s.actions_dry_run else "sent"
        return f"a canary upload is followed by: {', '.join(wanted) or 'nothing'} ({mode})"
