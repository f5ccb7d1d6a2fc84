"""Fair slots: a client's builds beyond its share wait in its own line, and slots go
round-robin between clients, on one server (FairSlots) and across a cluster
(RedisTurns, on a real Redis)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from kiisrv.build.fairness import FairSlots
from kiisrv.clients import client_of
from kiisrv.cluster.turns import RedisTurns
from tests.helpers import RedisServer

pytestmark = pytest.mark.anyio


async def _order(slots: FairSlots, jobs: list[tuple[str | None, str]], hold: float) -> list[str]:
    """The order in which ``jobs`` (client, build) start, each holding its slot for
    ``hold`` seconds, all submitted at once in list order."""
    started: list[str] = []

    async def run(client: str | None, build: str) -> None:
        async with slots.slot(client):
            started.append(build)
            await asyncio.sleep(hold)

    tasks = []
    for client, build in jobs:
        tasks.append(asyncio.create_task(run(client, build)))
        await asyncio.sleep(0.005)  # arrival order
    await asyncio.gather(*tasks)
    return started


async def test_a_flooding_client_delays_another_by_one_build_at_most() -> None:
    """Client A sends ten builds, then B one: B starts right after A's first (the one
    slot was A's), not after all ten."""
    jobs: list[tuple[str | None, str]] = [("A", f"a{i}") for i in range(10)] + [("B", "b0")]
    order = await _order(FairSlots(1, per_client=1), jobs, hold=0.1)  # all came during a0
    assert order.index("b0") == 1, order
    assert [b for b in order if b.startswith("a")] == [f"a{i}" for i in range(10)]


async def test_waiting_builds_go_round_robin_by_client() -> None:
    jobs: list[tuple[str | None, str]] = [
        ("A", "a0"),
        ("A", "a1"),
        ("A", "a2"),
        ("B", "b0"),
        ("B", "b1"),
        ("C", "c0"),
    ]
    order = await _order(FairSlots(1, per_client=1), jobs, hold=0.1)  # all came during a0
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2"]


async def test_a_client_runs_at_most_its_share_even_with_free_slots() -> None:
    slots = FairSlots(4, per_client=2)
    running, most = 0, 0

    async def run() -> None:
        nonlocal running, most
        async with slots.slot("A"):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.02)
            running -= 1

    await asyncio.gather(*(run() for _ in range(8)))
    assert most == 2
    assert slots.waiting() == 0 and slots.free == 4


async def test_builds_without_a_client_use_every_slot() -> None:
    slots = FairSlots(3, per_client=1)
    running, most = 0, 0

    async def run() -> None:
        nonlocal running, most
        async with slots.slot(None):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.02)
            running -= 1

    await asyncio.gather(*(run() for _ in range(6)))
    assert most == 3


async def test_a_cancelled_waiter_gives_its_place_and_its_slot_back() -> None:
    slots = FairSlots(1, per_client=1)
    first = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with slots.slot("A"):
            first.set()
            await release.wait()

    hold = asyncio.create_task(holder())
    await first.wait()
    waiter = asyncio.create_task(slots.slot("B").__aenter__())
    await asyncio.sleep(0.01)
    assert slots.waiting() == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.waiting() == 0
    release.set()
    await hold
    async with slots.slot("C"):  # the slot is free again, not lost
        assert slots.free == 0
    assert slots.free == 1


def test_a_client_is_its_rate_limit_identity_under_its_own_pseudonym() -> None:
    key = b"k" * 32
    assert client_of(key, "2001:db8::1") == client_of(key, "2001:db8::2")  # one /64
    assert client_of(key, "192.0.2.1") != client_of(key, "192.0.2.2")
    assert client_of(key, "") is None
    assert "192.0.2.1" not in (client_of(key, "192.0.2.1") or "")


async def test_turns_hold_across_api_servers_on_one_redis(redis: RedisServer) -> None:
    """Two API servers admitting builds into one FIFO the workers take from: a client
    has at most its share admitted in the whole cluster, so another client's build waits
    behind one of a flooding client's, not all of them."""
    one, two = Redis.from_url(redis.url), Redis.from_url(redis.url)
    try:
        servers = [RedisTurns(one, 1, lease=5, poll=0.01), RedisTurns(two, 1, lease=5, poll=0.01)]
        fifo: asyncio.Queue[tuple[str, asyncio.Future[None]]] = asyncio.Queue()
        started: list[str] = []

        async def worker() -> None:  # one build at a time, in arrival order (arq)
            while True:
                build, done = await fifo.get()
                started.append(build)
                await asyncio.sleep(0.1)
                done.set_result(None)

        async def submit(i: int, client: str, build: str) -> None:
            async with servers[i % 2].turn(client, build):
                done = asyncio.get_running_loop().create_future()
                await fifo.put((build, done))
                await done

        working = asyncio.create_task(worker())
        jobs = [("A", f"a{i}") for i in range(6)] + [("B", "b0"), ("C", "c0")]
        tasks = []
        for i, (client, build) in enumerate(jobs):
            tasks.append(asyncio.create_task(submit(i, client, build)))
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        working.cancel()
        assert started.index("b0") <= 2 and started.index("c0") <= 3, started
        assert await one.keys("kiisrv:turns:*") == []
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_dead_servers_turns_end_with_their_lease(redis: RedisServer) -> None:
    client: Redis = Redis.from_url(redis.url)
    try:
        dead = RedisTurns(client, 1, lease=0.5, poll=0.01)
        held = dead.turn("A", "a0")
        await held.__aenter__()
        holder = next(t for t in asyncio.all_tasks() if t.get_coro().__name__ == "_keep")  # type: ignore[union-attr]
        holder.cancel()  # the server dies: nobody renews the lease
        alive = RedisTurns(client, 1, lease=5, poll=0.05)
        started = asyncio.get_running_loop().time()
        async with alive.turn("A", "a1"):
            waited = asyncio.get_running_loop().time() - started
        assert 0.3 < waited < 3
    finally:
        await client.aclose()
