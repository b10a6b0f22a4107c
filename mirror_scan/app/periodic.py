"""A worker thread that runs a piece of work every interval, or at once when triggered, until stopped;
joined by whoever started it (the watch daemon's workers, the validator's follow-ups)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic(threading.Thread):
    """Runs `work` every `interval` seconds (first run at once), or at once when triggered, until
    stopped; never dies of an error."""

    def __init__(self, name: str, interval: float, work: Callable[[], None]) -> None:
        super().__init__(name=name)
        self.interval, self.work = interval, work
        self.stop_event = threading.Event()
        self._wake = threading.Event()

    def trigger(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self._wake.clear()  # a trigger during the run below asks for one more run right after it
            try:
                self.work()
            except Exception:  # noqa: BLE001
                log.exception("%s failed; retrying in %ss", self.name, self.interval)
            self._wake.wait(self.interval)
