"""Fair slots: one client cannot hold every build slot, nor delay others by more than
about one build.

Slots used to be taken in arrival order: a client sending ten distinct layouts (the
rate limit allows ten a minute) had all of them ahead of the next client's one, and a
layout that keeps the compiler busy for the whole build timeout, sent again and again,
held every slot. Now a client (as the rate limit counts it: an address, an IPv6 /64)
has at most ``KIISRV_MAX_CLIENT_BUILDS`` builds *admitted* (queued for a slot, or
running) at once; its others wait in a line of its own, in arrival order. Slots take
admitted builds in arrival order, so between two builds of a busy client every other
client's admitted build comes first: round-robin by client.

On one server the slots themselves take turns (``FairSlots``). In a cluster the
workers take builds from Redis in arrival order, so fairness is in what gets there:
every API server admits a client's builds through the same Redis sorted set per
client (``cluster.turns.RedisTurns``), at most its share at once; its entries are leases renewed
while the build is admitted, so a killed API server's turns end on their own.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairSlots:
    """One server's build slots, served round-robin by client.

    A build asks for a slot with its client (None: no client, like the canary's); it
    gets one when a slot is free, its client holds fewer than ``per_client``, and no
    eligible client was served less recently: the clients with waiting builds take
    turns, one build each, whatever order their builds came in.
    """

    def __init__(self, slots: int, per_client: int) -> None:
        self.free = max(1, slots)
        self.per_client = max(1, per_client)
        self._running: Counter[str | None] = Counter()
        self._lines: dict[str | None, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._served: dict[str | None, int] = {}  # when each busy client was last served
        self._tick = 0

    def waiting(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def _cap(self, client: str | None) -> int:
        return self.free + sum(self._running.values()) if client is None else self.per_client

    @asynccontextmanager
    async def slot(self, client: str | None) -> AsyncIterator[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._tick += 1
        self._lines.setdefault(client, deque()).append((self._tick, waiter))
        self._dispatch()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(client)  # the slot came as it was cancelled: pass it on
            else:
                self._forget(client, waiter)
            raise
        try:
            yield
        finally:
            self._release(client)

    def _dispatch(self) -> None:
        while self.free > 0:
            eligible = [c for c in self._lines if self._running[c] < self._cap(c)]
            if not eligible:
                return
            # Least recently served first; among equals, whose build came first.
            client = min(eligible, key=lambda c: (self._served.get(c, 0), self._lines[c][0][0]))
            _, waiter = self._lines[client].popleft()
            if not self._lines[client]:
                del self._lines[client]
            self.free -= 1
            self._running[client] += 1
            self._tick += 1
            self._served[client] = self._tick
            waiter.set_result(None)

    def _release(self, client: str | None) -> None:
        self.free += 1
        self._running[client] -= 1
        if self._running[client] <= 0:
            del self._running[client]
            if client not in self._lines:
                self._served.pop(client, None)  # idle: nothing to be fair about
        self._dispatch()

    def _forget(self, client: str | None, waiter: asyncio.Future[None]) -> None:
        line = self._lines.get(client)
        if line is None:
            return
        for entry in line:
            if entry[1] is waiter:
                line.remove(entry)
                break
        if not line:
            del self._lines[client]
            if client not in self._running:
                self._served.pop(client, None)
