"""``GET /stats`` (the reference's summary) and ``/stats.json``: the recorded requests,
counted.

The page reads the rollups kept with the rows (store/rollups.py), on the pages' thread,
so it costs the same with millions of rows; the count blocks are printed the way the
reference (Rust ``{:#?}`` of a map) printed them. Both flush the journal first
(store/journal.py), so they count every request answered so far.

The page is public, so it counts keyboards by stock layout only: a layout name the
layouts folder does not have (one the user typed, ``Ada's travel board``) may name
its author, and is counted as ``<keyboard>-(other)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from kiisrv.recipe.layouts import LayoutStore
from kiisrv.store.storage import Storage

if TYPE_CHECKING:
    from kiisrv.core import Kiisrv

# What a layout name outside the layouts folder is counted as (no file name holds "()").
OTHER = "(other)"


def router(server: Kiisrv) -> APIRouter:
    routes = APIRouter()

    @routes.get("/stats", response_class=PlainTextResponse)
    async def statistics() -> str:
        """Request statistics as plain text, as the reference server printed them."""
        await server.stats.flush()
        return await render(server.storage, server.layouts)

    @routes.get("/stats.json")
    async def stats_json() -> dict[str, Any]:
        """The figures of ``/stats``."""
        await server.stats.flush()
        return await as_json(server.storage, server.layouts)

    return routes


def _rust_map(counts: list[tuple[str, int]]) -> str:
    if not counts:
        return "{}"
    body = "".join(f'    "{k}": {v},\n' for k, v in counts)
    return "{\n" + body + "}"


def _rust_float(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def stock_layouts(layouts: LayoutStore) -> frozenset[str]:
    """``<keyboard>-<layout>`` of every file of the layouts folder, also under the
    keyboards' aliases (``K-Type-Standard``), which ``/stats`` may name (blocking)."""
    names = {p.name.removesuffix(".json") for p in layouts.root.glob("*.json")}
    for alias, board in layouts.board_aliases().items():
        names |= {alias + n[len(board) :] for n in names if n.startswith(f"{board}-")}
    return frozenset(names)


async def render(storage: Storage, layouts: LayoutStore) -> str:
    """The page, read on the pages' thread."""
    return await storage.read(lambda: summary(storage, stock_layouts(layouts)))


async def as_json(storage: Storage, layouts: LayoutStore) -> dict[str, Any]:
    """The figures of the page, for ``/stats.json``."""
    return await storage.read(lambda: figures(storage, stock_layouts(layouts)))


def figures(storage: Storage, stock: Collection[str]) -> dict[str, Any]:
    """The figures of ``/stats`` (blocking: a few dozen rows of the rollups); layouts not
    in ``stock`` are counted as ``<keyboard>-(other)``."""
    counts = storage.request_counts(stock)
    t = counts.totals
    total, unique, users = t.get("builds", 0), t.get("unique", 0), t.get("users", 0)
    layers, durations = t.get("layers", 0), t.get("duration", 0)

    def ordered(counts: Counter[str]) -> list[tuple[str, int]]:
        # Ties are ordered here, not in SQL: Postgres would sort by its locale's collation.
        return sorted(((k, n) for k, n in counts.items() if n > 0), key=lambda kn: (-kn[1], kn[0]))

    def by(dim: str) -> list[tuple[str, int]]:
        return ordered(Counter(counts.by.get(dim, {})))

    # Stock layouts by name; the rest of each keyboard's requests as <keyboard>-(other).
    keyboards: Counter[str] = Counter()
    other = Counter(counts.by.get("board", {}))
    for board, variant, n in counts.keyboards:
        keyboards[f"{board}-{variant}"] += n
        other[board] -= n
    for board, n in other.items():
        keyboards[f"{board}-{OTHER}"] += n

    return {
        "builds": total,
        "unique": unique,
        "cache_ratio": total / unique if unique else 0.0,
        "avg_time_s": durations / unique / 1000 if unique else 0.0,
        "users": users,
        "builds_per_user": total / users if users else 0.0,
        "avg_layers": layers / total if total else 0.0,
        "os": by("os"),
        "platform": by("platform"),
        "keyboard": ordered(keyboards),
        "version": by("version"),
    }


def summary(storage: Storage, stock: Collection[str]) -> str:
    """The page itself, as the reference printed it (blocking: see ``render``)."""
    f = figures(storage, stock)
    return (
        f"Builds: {f['builds']} ({f['unique']} unique)\n"
        f"Cache ratio: {f['cache_ratio']:.1f}\n"
        f"Avg time: {f['avg_time_s']:.3f} s\n\n"
        f"Users: {f['users']} unique\n"
        f"Avg builds per user: {f['builds_per_user']:.1f}\n"
        f"Average number of layers: {_rust_float(f['avg_layers'])}\n\n"
        f"OS Counts: {_rust_map(f['os'])}\n"
        f"Platform Counts: {_rust_map(f['platform'])}\n"
        f"Keyboard Counts: {_rust_map(f['keyboard'])}\n"
        f"Version Counts: {_rust_map(f['version'])}\n\n"
    )
