"""One log level for what changes what the public sees: NOTICE (syslog priority 5, between INFO and
WARNING) for every quarantine, upload rejection and restore, whichever daemon or command made it, so
`journalctl -p notice` lists every picture taken from public view or put back, and nothing else above it
is routine."""

from __future__ import annotations

import logging

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")


def notice(log: logging.Logger, message: str, *args: object) -> None:
    log.log(NOTICE, message, *args)
