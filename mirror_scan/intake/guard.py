"""Bounded connections for an aiohttp server that faces browsers (the review console): at most `cap` at
once, each with `head_s` seconds to send its request head, one request per connection.

aiohttp has no deadline on a request head: a client trickling one byte every few seconds holds its
connection (and a descriptor) for ever, and 20,000 of them fill the process's descriptors until nothing is
accepted (asyncio then logs "accept() out of system resource" for every try). Here each connection is timed
from the moment it is made until its head arrives (the application calls `head_arrived` from its first
middleware), and past the cap the oldest connection still waiting for its head is dropped (or the newcomer,
when every one is being answered). Drops are counted and logged at most once per LOG_EVERY_S."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


class ConnectionGuard:
    def __init__(self, cap: int = 256, head_s: float = 10.0, what: str = "the console") -> None:
        self.cap, self.head_s, self.what = cap, head_s, what
        self.waiting: collections.OrderedDict[Any, asyncio.TimerHandle] = collections.OrderedDict()
        self.answering: set[Any] = set()
        self.dropped = 0
        self._said_at, self._said_dropped = 0.0, 0

    def attach(self, server: Any) -> None:
        """Told of every connection of this aiohttp web.Server (its connection_made/connection_lost)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: Any) -> None:
            made(handler, transport)
            self._made(handler)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self._lost(handler)
            lost(handler, exc)

        server.connection_made, server.connection_lost = connection_made, connection_lost

    def head_arrived(self, handler: Any) -> None:
        """The connection's request head is here (its body has its own deadline): no longer timed."""
        timer = self.waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()
        self.answering.add(handler)

    def _made(self, handler: Any) -> None:
        loop = asyncio.get_running_loop()
        self.waiting[handler] = loop.call_later(self.head_s, self._drop, handler, "no request head in time")
        while len(self.waiting) + len(self.answering) > self.cap:
            oldest = next(iter(self.waiting), None)
            self._drop(oldest if oldest is not None and oldest is not handler else handler, "too many connections")
            if oldest is None or oldest is handler:
                break

    def _lost(self, handler: Any) -> None:
        timer = self.waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()
        self.answering.discard(handler)

    def _drop(self, handler: Any, why: str) -> None:
        self._lost(handler)
        self.dropped += 1
        transport = getattr(handler, "transport", None)
        if transport is not None:
            transport.abort()
        now = time.monotonic()
        if now - self._said_at >= LOG_EVERY_S:
            log.warning("%s closed %d connection(s) (%s; at most %d at once, %g s to send a request)", self.what,
                        self.dropped - self._said_dropped, why, self.cap, self.head_s)  # fmt: skip
            self._said_at, self._said_dropped = now, self.dropped
