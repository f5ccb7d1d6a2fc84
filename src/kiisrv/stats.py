"""``GET /stats``: the reference server's plain-text summary of the Requests table.

Counts are computed in SQL so the page stays cheap with a large table. The count
blocks are printed the way the reference (Rust ``{:#?}`` of a map) printed them.
"""

from __future__ import annotations

from kiisrv.storage import Storage


def _rust_map(counts: list[tuple[str, int]]) -> str:
    if not counts:
        return "{}"
    body = "".join(f'    "{k}": {v},\n' for k, v in counts)
    return "{\n" + body + "}"


def _rust_float(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def render(storage: Storage) -> str:
    total, unique, users, layers, durations = storage.query(
        "SELECT COUNT(*), COUNT(DISTINCT hash), COUNT(DISTINCT ip_addr),"
        " COALESCE(SUM(layers), 0), COALESCE(SUM(build_duration), 0) FROM Requests"
    )[0]

    def counts(expr: str) -> list[tuple[str, int]]:
        rows = storage.query(
            f"SELECT {expr} AS k, COUNT(*) FROM Requests GROUP BY k ORDER BY COUNT(*) DESC, k"
        )
        return [(str(k), int(n)) for k, n in rows]

    cache_ratio = total / unique if unique else 0.0
    per_user = total / users if users else 0.0
    avg_layers = layers / total if total else 0.0
    avg_time = durations / unique / 1000 if unique else 0.0
    platforms = counts("CASE web WHEN 1 THEN 'Web' ELSE 'Desktop' END")
    keyboards = counts("board || '-' || variant")
    return (
        f"Builds: {total} ({unique} unique)\n"
        f"Cache ratio: {cache_ratio:.1f}\n"
        f"Avg time: {avg_time:.3f} s\n\n"
        f"Users: {users} unique\n"
        f"Avg builds per user: {per_user:.1f}\n"
        f"Average number of layers: {_rust_float(avg_layers)}\n\n"
        f"OS Counts: {_rust_map(counts('os'))}\n"
        f"Platform Counts: {_rust_map(platforms)}\n"
        f"Keyboard Counts: {_rust_map(keyboards)}\n"
        f"Version Counts: {_rust_map(counts('container'))}\n\n"
    )
