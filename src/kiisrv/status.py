"""The status page: what is building now, what was built, and the statistics as charts.

Server-rendered HTML that reloads itself every few seconds; the charts are drawn by
Chart.js, which kiisrv serves itself (``static/``: self-hosters may be offline). The
page shows no client data: keyboards, layouts, versions, results and durations only.
"""

from __future__ import annotations

import html
import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kiisrv.jobs import Job

if TYPE_CHECKING:
    from kiisrv.core import Kiisrv

REFRESH_SECONDS = 3
RECENT = 20
DAYS = 14
LOG_LINES = 15


@dataclass(frozen=True)
class Build:
    hash: str
    keyboard: str
    layout: str
    version: str
    state: str
    duration_s: float | None = None
    finished_at: str | None = None
    log_tail: str = ""


@dataclass(frozen=True)
class Status:
    active: list[Build]
    recent: list[Build]
    per_day: list[dict[str, Any]] = field(default_factory=list)
    keyboards: list[dict[str, Any]] = field(default_factory=list)
    build_seconds: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _names(stem: str) -> tuple[str, str]:
    """(keyboard, layout) from ``<Name>-<Layout>-<hash>``; a board may hold a dash."""
    board, _, rest = stem.rsplit("-", 1)[0].rpartition("-")
    return (board, rest) if board else (rest, "")


def _build(job: Job, log_tail: str = "") -> Build:
    keyboard, layout = _names(job.stem)
    return Build(
        job.hash,
        keyboard,
        layout,
        job.version,
        str(job.state),
        job.duration_ms / 1000 if job.duration_ms is not None else None,
        _at(job.finished_at.isoformat()) if job.finished_at else None,
        log_tail,
    )


def _at(iso: str | None) -> str | None:
    """An ISO timestamp as people read it, to the second, UTC."""
    return iso[:19].replace("T", " ") + " UTC" if iso else None


def _percentile(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


Figures = tuple[list[Build], list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]


def _figures(server: Kiisrv) -> Figures:
    """Blocking reads, run on the storage thread: Builds in SQLite, Requests wherever it is."""
    q = server.storage.query
    recent = [
        Build(h, *_names(stem), version, state, ms / 1000 if ms is not None else None, _at(fin))
        for h, stem, version, state, ms, fin in q(
            "SELECT hash, stem, version, state, duration_ms, finished_at FROM Builds"
            " WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            RECENT,
        )
    ]
    per_day = [
        {"day": day, "succeeded": ok, "failed": failed}
        for day, ok, failed in q(
            "SELECT substr(finished_at, 1, 10) AS day,"
            " SUM(state = 'succeeded'), SUM(state = 'failed')"
            " FROM Builds WHERE finished_at IS NOT NULL"
            " GROUP BY day ORDER BY day DESC LIMIT ?",
            DAYS,
        )
    ][::-1]
    keyboards = [
        {"keyboard": board, "requests": n}
        for board, n in server.storage.query_requests(
            "SELECT board, COUNT(*) AS n FROM Requests GROUP BY board ORDER BY n DESC LIMIT 10"
        )
    ]
    durations = [
        ms / 1000
        for (ms,) in q(
            "SELECT duration_ms FROM Builds WHERE state = 'succeeded' AND duration_ms IS NOT NULL"
        )
    ]
    seconds = (
        {f"p{p}": round(_percentile(durations, p), 2) for p in (50, 90, 99)} if durations else {}
    )
    return recent, per_day, keyboards, seconds


async def collect(server: Kiisrv) -> Status:
    active = []
    for hash_ in sorted(server.queue.in_use()):
        job = server.queue.current(hash_)
        if job is None:
            continue
        live = await server.queue.live_log(hash_) or b""
        tail = "\n".join(live.decode("utf-8", "replace").splitlines()[-LOG_LINES:])
        active.append(_build(job, tail))
    await server.stats.flush()
    recent, per_day, keyboards, seconds = await server.storage.run(_figures, server)
    return Status(active, recent, per_day, keyboards, seconds)


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _row(b: Build) -> str:
    duration = f"{b.duration_s:.1f} s" if b.duration_s is not None else ""
    return (
        f'<tr class="{_e(b.state)}"><td>{_e(b.keyboard)}</td><td>{_e(b.layout)}</td>'
        f"<td>{_e(b.version)}</td><td>{_e(b.state)}</td><td>{duration}</td>"
        f"<td>{_e(b.finished_at)}</td></tr>"
    )


def render(status: Status) -> str:
    active = (
        "".join(
            f'<section class="build"><h3>{_e(b.keyboard)} {_e(b.layout)} · {_e(b.version)} · '
            f'<span class="state">{_e(b.state)}</span></h3>'
            f'<pre class="log">{_e(b.log_tail) or "(waiting for its first output)"}</pre>'
            f'<a href="builds/{_e(b.hash)}/log">whole log</a></section>'
            for b in status.active
        )
        or '<p class="none">Nothing is building.</p>'
    )
    recent = "".join(_row(b) for b in status.recent)
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in status.build_seconds.items()) or "none yet"
    data = json.dumps(
        {"perDay": status.per_day, "keyboards": status.keyboards, "seconds": status.build_seconds}
    ).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<link rel="icon" href="data:,">
<title>kiisrv status</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ border-bottom: 1px solid #ddd; margin-top: 1.5em; }}
pre.log {{ background: #111; color: #ddd; padding: .6em; max-height: 16em; overflow: auto; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ text-align: left; padding: .2em .6em; border-bottom: 1px solid #eee; }}
tr.failed td {{ color: #b00; }} .charts {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.chart {{ flex: 1 1 20em; height: 16em; }}
</style></head><body>
<h1>kiisrv: firmware builds</h1>
<h2>Building now ({len(status.active)})</h2>
<div id="active">{active}</div>
<h2>Recent builds</h2>
<table id="recent"><thead><tr><th>keyboard</th><th>layout</th><th>version</th>
<th>result</th><th>took</th><th>finished</th></tr></thead><tbody>{recent}</tbody></table>
<h2>Statistics</h2>
<p>Build time of successful builds: <span id="seconds">{_e(seconds)}</span>.
Plain text: <a href="stats">/stats</a>, JSON: <a href="status.json">/status.json</a>.</p>
<div class="charts">
<div class="chart"><canvas id="perDay"></canvas></div>
<div class="chart"><canvas id="keyboards"></canvas></div>
<div class="chart"><canvas id="buildTime"></canvas></div>
</div>
<script src="static/chart.umd.min.js"></script>
<script id="figures" type="application/json">{data}</script>
<script src="static/status.js"></script>
</body></html>
"""
