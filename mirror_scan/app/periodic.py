"""A worker thread that runs a piece of work every interval, or at once when triggered, until stopped;
joined by whoever started it (the watch daemon's workers, the validator's follow-ups)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from mirror_scan.errors import MirrorScanError
from mirror_scan.text import one_line

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
            except MirrorScanError as error:  # a reason the admin can act on: said on the line, no traceback
                log.warning("%s failed: %s; retrying in %gs", self.name, one_line(str(error)), self.interval)
            except Exception as error:  # noqa: BLE001 - a bug: the reason on the line, the traceback at -v
                log.warning("%s failed: %s: %s; retrying in %gs", self.name, type(error).__name__,
                            one_line(str(error)), self.interval)  # fmt: skip
                log.debug("%s failed", self.name, exc_info=True)
            self._wake.wait(self.interval)
