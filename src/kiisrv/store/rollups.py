"""The statistics' figures kept as rows are written, so a page never counts millions of rows.

``/stats`` counted every Requests row (``COUNT(DISTINCT hash)`` and the rest) on each
load: 6.5 s with 2 M rows. Instead every write of Requests rows (a batch, a prune, the
address migration) adds its difference to small tables in the same transaction, so the
figures are always exactly those of the rows, and a page reads a few dozen rows:

- ``StatsCounts(dim, key, n)``: totals (``total``: builds, layers, duration, unique,
  users) and counts by ``os``, ``platform``, ``version`` and ``board``;
- ``StatsKeyboards(board, variant, n)``: by layout, read only for stock layouts;
- ``StatsHashes(hash, n)`` and ``StatsUsers(ip_addr, n)``: rows per build and per
  client, so the distinct counts move by one exactly when a key appears or goes.

The SQL is the dialect SQLite and PostgreSQL share (``?`` placeholders, multi-row
``INSERT … ON CONFLICT … RETURNING``); keys are sorted before they are written, so two
API servers updating the same rows take their locks in one order and never deadlock.
A database of an older server gets its rollups once, from its rows (``ensure``).

Builds (SQLite only: one server's job state) has its own rollups, kept by triggers:
``BuildDays(day, version, state)`` (per-day chart, metrics counters) and
``BuildHistogram(le_ms)`` (the metrics histogram, cumulative).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Raised when a bound changes: the Builds rollups are then rebuilt (PRAGMA user_version).
BUILDS_ROLLUP_VERSION = 1
# Upper bounds (seconds) of the build-time histogram of /metrics.
DURATION_BUCKETS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 60.0, 120.0, 300.0, 600.0)
# Keys per multi-row statement: far below SQLite's 32 766 parameters.
_CHUNK = 300

REQUESTS_ROLLUP_SCHEMA = """
CREATE TABLE IF NOT EXISTS StatsCounts (
    dim TEXT NOT NULL, key TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (dim, key)
);
CREATE TABLE IF NOT EXISTS StatsKeyboards (
    board TEXT NOT NULL, variant TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (board, variant)
);
CREATE TABLE IF NOT EXISTS StatsHashes (hash TEXT PRIMARY KEY, n BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS StatsUsers (ip_addr TEXT PRIMARY KEY, n BIGINT NOT NULL)
"""

# The Requests columns a rollup needs, in this order (a row of ``delta``).
ROW = "os, web, hash, board, variant, layers, container, build_duration, ip_addr, n"


class Db(Protocol):
    """One open transaction, ``?`` placeholders, whichever database."""

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def run(self, sql: str, args: Sequence[Any] = ()) -> int: ...

    def many(self, sql: str, args: Sequence[Sequence[Any]]) -> None: ...


@dataclass
class Delta:
    """What some Requests rows add to (or, negated, take from) the rollups."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    keyboards: Counter[tuple[str, str]] = field(default_factory=Counter)
    hashes: Counter[str] = field(default_factory=Counter)
    users: Counter[str] = field(default_factory=Counter)


def delta(rows: Iterable[Sequence[Any]], sign: int = 1) -> Delta:
    """The difference rows (columns ``ROW``) make; ``sign`` -1 for rows deleted."""
    d = Delta()
    for os_, web, hash_, board, variant, layers, container, duration, ip, count in rows:
        n = sign * int(count)  # a row of counted cache hits stands for n requests
        d.counts["total", "builds"] += n
        d.counts["total", "layers"] += n * int(layers)
        d.counts["total", "duration"] += n * int(duration or 0)
        d.counts["os", os_] += n
        d.counts["platform", "Web" if int(web) == 1 else "Desktop"] += n
        d.counts["version", container] += n
        d.counts["board", board] += n
        d.keyboards[board, variant] += n
        d.hashes[hash_] += n
        d.users[ip] += n
    return d


def apply(db: Db, d: Delta) -> None:
    """Adds ``d`` in the transaction of ``db``; rows that reach 0 are deleted."""
    hashes: dict[tuple[str, ...], int] = {(k,): n for k, n in d.hashes.items()}
    users: dict[tuple[str, ...], int] = {(k,): n for k, n in d.users.items()}
    keyboards: dict[tuple[str, ...], int] = dict(d.keyboards.items())
    d.counts["total", "unique"] += _bump(db, "StatsHashes", ("hash",), hashes)
    d.counts["total", "users"] += _bump(db, "StatsUsers", ("ip_addr",), users)
    _bump(db, "StatsKeyboards", ("board", "variant"), keyboards)
    counts: dict[tuple[str, ...], int] = dict(d.counts.items())
    _bump(db, "StatsCounts", ("dim", "key"), counts)


def _bump(
    db: Db,
    table: str,
    keys: tuple[str, ...],
    changes: dict[tuple[str, ...], int],
) -> int:
    """Adds each change to its row (made if missing); returns how many rows appeared
    minus how many reached 0 (and were deleted)."""
    items = sorted((k, n) for k, n in changes.items() if n)
    cols = ", ".join(keys)
    appeared = 0
    gone: list[tuple[str, ...]] = []
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        values = ", ".join(["(" + ", ".join("?" * (len(keys) + 1)) + ")"] * len(chunk))
        after = db.rows(
            f"INSERT INTO {table} ({cols}, n) VALUES {values}"
            f" ON CONFLICT ({cols}) DO UPDATE SET n = {table}.n + excluded.n"
            f" RETURNING {cols}, n",
            [v for k, n in chunk for v in (*k, n)],
        )
        change = dict(chunk)
        for *key, n in after:
            before = n - change[tuple(key)]
            appeared += (n > 0) - (before > 0)
            if n <= 0:
                gone.append(tuple(key))
    for start in range(0, len(gone), _CHUNK):
        doomed = gone[start : start + _CHUNK]
        match = " OR ".join(["(" + " AND ".join(f"{c} = ?" for c in keys) + ")"] * len(doomed))
        db.run(f"DELETE FROM {table} WHERE n <= 0 AND ({match})", [v for k in doomed for v in k])
    return appeared


def ensure(db: Db) -> bool:
    """Builds the Requests rollups from the rows once (a database of an older server, or
    a new one); True when it did. Called in the transaction that creates the schema."""
    if db.rows("SELECT n FROM StatsCounts WHERE dim = 'meta' AND key = 'rollups'"):
        return False
    for table in ("StatsCounts", "StatsKeyboards", "StatsHashes", "StatsUsers"):
        db.run(f"DELETE FROM {table}")
    db.run("INSERT INTO StatsHashes (hash, n) SELECT hash, SUM(n) FROM Requests GROUP BY hash")
    db.run(
        "INSERT INTO StatsUsers (ip_addr, n) SELECT ip_addr, SUM(n) FROM Requests GROUP BY ip_addr"
    )
    db.run(
        "INSERT INTO StatsKeyboards (board, variant, n)"
        " SELECT board, variant, SUM(n) FROM Requests GROUP BY board, variant"
    )
    for dim, expr in (
        ("os", "os"),
        ("platform", "CASE web WHEN 1 THEN 'Web' ELSE 'Desktop' END"),
        ("version", "container"),
        ("board", "board"),
    ):
        db.run(
            f"INSERT INTO StatsCounts (dim, key, n) SELECT '{dim}', k, SUM(c)"
            f" FROM (SELECT {expr} AS k, n AS c FROM Requests) AS r GROUP BY k"
        )
    db.run(
        "INSERT INTO StatsCounts (dim, key, n)"
        " SELECT 'total', 'builds', COALESCE(SUM(n), 0) FROM Requests"
        " UNION ALL SELECT 'total', 'layers', COALESCE(SUM(layers * n), 0) FROM Requests"
        " UNION ALL SELECT 'total', 'duration', COALESCE(SUM(build_duration * n), 0)"
        " FROM Requests"
        " UNION ALL SELECT 'total', 'unique', COUNT(*) FROM StatsHashes"
        " UNION ALL SELECT 'total', 'users', COUNT(*) FROM StatsUsers"
        " UNION ALL SELECT 'meta', 'rollups', 1"
    )
    return True


@dataclass(frozen=True)
class Counts:
    """The rollups ``/stats`` reads: totals, counts by dimension, stock keyboards."""

    totals: dict[str, int]
    by: dict[str, dict[str, int]]
    keyboards: list[tuple[str, str, int]]


def splits(names: Collection[str]) -> tuple[set[str], set[str]]:
    """Every (board, variant) a ``<board>-<variant>`` name may be cut into (a board's name
    may hold a dash): the keys of ``StatsKeyboards`` to look up for those names."""
    boards, variants = set(), set()
    for name in names:
        parts = name.split("-")
        for i in range(1, len(parts)):
            boards.add("-".join(parts[:i]))
            variants.add("-".join(parts[i:]))
    return boards, variants


def read_counts(db: Db, stock: Collection[str]) -> Counts | None:
    """The figures' rows (a few dozen, by primary key); None before ``ensure`` ran."""
    by: dict[str, dict[str, int]] = {}
    for dim, key, n in db.rows(
        "SELECT dim, key, n FROM StatsCounts"
        " WHERE dim IN ('total', 'meta', 'os', 'platform', 'version', 'board')"
    ):
        by.setdefault(dim, {})[key] = int(n)
    if "rollups" not in by.get("meta", {}):
        return None
    boards, variants = splits(stock)
    keyboards: list[tuple[str, str, int]] = []
    if boards:
        keyboards = [
            (b, v, int(n))
            for b, v, n in db.rows(
                "SELECT board, variant, n FROM StatsKeyboards"
                f" WHERE board IN ({', '.join('?' * len(boards))})"
                f" AND variant IN ({', '.join('?' * len(variants))})",
                [*sorted(boards), *sorted(variants)],
            )
            if f"{b}-{v}" in stock
        ]
    return Counts(by.pop("total", {}), by, keyboards)


def top_boards(db: Db, n: int) -> list[tuple[str, int]]:
    """The ``n`` most requested keyboards (rows of one dimension: a few dozen)."""
    rows = db.rows("SELECT key, n FROM StatsCounts WHERE dim = 'board' AND n > 0")
    return sorted(((str(k), int(c)) for k, c in rows), key=lambda kc: (-kc[1], kc[0]))[:n]


# -- Builds (SQLite, kept by triggers) ----------------------------------------------------

_COUNT = """
    INSERT INTO BuildDays (day, version, state, n, ms_n, ms_sum)
    VALUES (substr({r}.finished_at, 1, 10), {r}.version, {r}.state, {s},
            {s} * ({r}.duration_ms IS NOT NULL), {s} * COALESCE({r}.duration_ms, 0))
    ON CONFLICT (day, version, state) DO UPDATE SET n = n + excluded.n,
        ms_n = ms_n + excluded.ms_n, ms_sum = ms_sum + excluded.ms_sum;
    UPDATE BuildHistogram SET n = n + {s}
    WHERE {r}.state = 'succeeded' AND {r}.duration_ms IS NOT NULL AND le_ms >= {r}.duration_ms;
"""

BUILDS_ROLLUP_SCHEMA = f"""
CREATE INDEX IF NOT EXISTS builds_finished_at ON Builds (finished_at);
CREATE INDEX IF NOT EXISTS builds_state_finished_at ON Builds (state, finished_at);
CREATE TABLE IF NOT EXISTS BuildDays (
    day TEXT NOT NULL, version TEXT NOT NULL, state TEXT NOT NULL,
    n INTEGER NOT NULL, ms_n INTEGER NOT NULL, ms_sum INTEGER NOT NULL,
    PRIMARY KEY (day, version, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS BuildHistogram (le_ms INTEGER PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS builds_rollup_insert AFTER INSERT ON Builds
WHEN NEW.finished_at IS NOT NULL BEGIN {_COUNT.format(r="NEW", s=1)} END;
CREATE TRIGGER IF NOT EXISTS builds_rollup_update_old AFTER UPDATE ON Builds
WHEN OLD.finished_at IS NOT NULL BEGIN {_COUNT.format(r="OLD", s=-1)} END;
CREATE TRIGGER IF NOT EXISTS builds_rollup_update_new AFTER UPDATE ON Builds
WHEN NEW.finished_at IS NOT NULL BEGIN {_COUNT.format(r="NEW", s=1)} END;
"""
# No DELETE trigger: pruned Builds rows stay counted (history, and /metrics counters
# never go down).

BUILDS_ROLLUP_REBUILD = """
DELETE FROM BuildDays;
DELETE FROM BuildHistogram;
INSERT INTO BuildDays (day, version, state, n, ms_n, ms_sum)
    SELECT substr(finished_at, 1, 10), version, state, COUNT(*), COUNT(duration_ms),
           COALESCE(SUM(duration_ms), 0)
    FROM Builds WHERE finished_at IS NOT NULL GROUP BY 1, 2, 3;
"""


def histogram_rebuild() -> str:
    """The cumulative histogram of the Builds rows there are, one row per bound."""
    return ";\n".join(
        f"INSERT INTO BuildHistogram (le_ms, n) SELECT {int(b * 1000)}, COUNT(*) FROM Builds"
        f" WHERE state = 'succeeded' AND finished_at IS NOT NULL"
        f" AND duration_ms IS NOT NULL AND duration_ms <= {int(b * 1000)}"
        for b in DURATION_BUCKETS
    )
