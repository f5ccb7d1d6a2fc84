"""The status page: what is building now, what was built, and the statistics as charts.

Two views of the same figures. The public one (``/status``, ``/``, ``/status.json``) is
anyone's: how many builds run and wait and on which keyboards, each recent build's
keyboard, version, result and time, and the charts. It names no build: a build's hash is
the capability to fetch its zip (the whole layout: Author, custom KLL, macros) and its
log, so the public view is collected without the hash, the layout name or the log, and
no renderer can leak what it never had. The detailed view (``/status/detail``, ``.json``)
adds them, for the operator who holds ``KIISRV_STATUS_TOKEN`` (``token_matches``).

Server-rendered HTML that reloads itself every few seconds; the charts are drawn by
Chart.js, which kiisrv serves itself (``static/``: self-hosters may be offline).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException

from kiisrv.errors import NotFound, StorageError
from kiisrv.jobs import Job, JobState
from kiisrv.settings import Settings

if TYPE_CHECKING:
    from kiisrv.core import Kiisrv

REFRESH_SECONDS = 3
RECENT = 20
DAYS = 14
# Build-time percentiles are of this many latest successful builds: bounded, and now.
PERCENTILE_BUILDS = 1000
LOG_LINES = 15
REALM = 'Basic realm="kiisrv status", charset="UTF-8"'


@dataclass(frozen=True)
class Detail:
    """What names one build, for the operator's eyes only."""

    hash: str
    layout: str
    log_tail: str = ""


@dataclass(frozen=True)
class Build:
    """One build as anyone may see it (which keyboard, how it went); ``detail`` only on
    the operator's page."""

    keyboard: str
    version: str
    state: str
    duration_s: float | None = None
    finished_at: str | None = None
    detail: Detail | None = None

    def as_json(self) -> dict[str, Any]:
        public = {k: v for k, v in asdict(self).items() if k != "detail"}
        return {**public, **asdict(self.detail)} if self.detail else public


@dataclass(frozen=True)
class Status:
    active: list[Build]
    recent: list[Build]
    per_day: list[dict[str, Any]] = field(default_factory=list)
    keyboards: list[dict[str, Any]] = field(default_factory=list)
    build_seconds: dict[str, float] = field(default_factory=dict)
    detailed: bool = False

    def building(self) -> list[dict[str, Any]]:
        """Running builds per keyboard, the most first: that something builds, not what."""
        running = Counter(b.keyboard for b in self.active if b.state == JobState.RUNNING)
        return [
            {"keyboard": k, "builds": n}
            for k, n in sorted(running.items(), key=lambda kn: (-kn[1], kn[0]))
        ]

    def queued(self) -> int:
        return sum(1 for b in self.active if b.state == JobState.QUEUED)

    def as_json(self) -> dict[str, Any]:
        return {
            "building": self.building(),
            "queued": self.queued(),
            "active": [b.as_json() for b in self.active],
            "recent": [b.as_json() for b in self.recent],
            "per_day": self.per_day,
            "keyboards": self.keyboards,
            "build_seconds": self.build_seconds,
        }


def token_matches(token: str, authorization: str) -> bool:
    """Whether an ``Authorization`` header carries the status token.

    ``Bearer <token>`` for scripts; ``Basic`` with the token as the password (any user
    name) for browsers, which ask for it once and send it again on each reload. A header,
    never the URL: a query string lands in access logs, histories and Referer headers.
    Compared in constant time, as bytes (a non-ASCII guess must not raise).
    """
    scheme, _, credentials = authorization.strip().partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        credentials = decoded.partition(":")[2]
    elif scheme != "bearer":
        return False
    return hmac.compare_digest(credentials.encode(), token.encode())


def _names(stem: str) -> tuple[str, str]:
    """(keyboard, layout) from ``<Name>-<Layout>-<hash>``; a board may hold a dash."""
    board, _, rest = stem.rsplit("-", 1)[0].rpartition("-")
    return (board, rest) if board else (rest, "")


def _at(iso: str | None) -> str | None:
    """An ISO timestamp as people read it, to the second, UTC."""
    return iso[:19].replace("T", " ") + " UTC" if iso else None


def _percentile(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


Figures = tuple[list[Build], list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]


def _figures(server: Kiisrv, detailed: bool) -> Figures:
    """Blocking reads on the pages' thread, each bounded: the last builds by index, the
    per-day and keyboard rollups, the durations of the last PERCENTILE_BUILDS builds."""
    q = server.storage.query
    recent = []
    for h, stem, version, state, ms, fin in q(
        "SELECT hash, stem, version, state, duration_ms, finished_at FROM Builds"
        " WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
        RECENT,
    ):
        keyboard, layout = _names(stem)
        detail = Detail(h, layout) if detailed else None
        recent.append(
            Build(keyboard, version, state, ms / 1000 if ms is not None else None, _at(fin), detail)
        )
    per_day = [
        {"day": day, "succeeded": ok, "failed": failed}
        for day, ok, failed in server.storage.build_days(DAYS)
    ][::-1]
    try:
        top = server.storage.top_boards(10)
    except StorageError:  # the statistics database down: the rest of the page still shows
        top = []
    keyboards = [{"keyboard": board, "requests": n} for board, n in top]
    durations = [
        ms / 1000
        for (ms,) in q(
            "SELECT duration_ms FROM Builds WHERE state = 'succeeded'"
            " AND duration_ms IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            PERCENTILE_BUILDS,
        )
    ]
    seconds = (
        {f"p{p}": round(_percentile(durations, p), 2) for p in (50, 90, 99)} if durations else {}
    )
    return recent, per_day, keyboards, seconds


async def _detail(server: Kiisrv, job: Job, layout: str) -> Detail:
    live = await server.queue.live_log(job.hash) or b""
    tail = "\n".join(live.decode("utf-8", "replace").splitlines()[-LOG_LINES:])
    return Detail(job.hash, layout, tail)


async def collect(server: Kiisrv, *, detailed: bool = False) -> Status:
    """The figures; hashes, layout names and logs only when ``detailed``."""
    jobs = [j for j in map(server.queue.current, server.queue.in_use()) if j is not None]
    active = []
    for job in sorted(jobs, key=lambda j: (j.created_at, j.hash)):
        keyboard, layout = _names(job.stem)
        detail = await _detail(server, job, layout) if detailed else None
        active.append(Build(keyboard, job.version, str(job.state), detail=detail))
    # No flush: the recorder writes within FLUSH_EVERY, and this page (every open one
    # reloads it every few seconds) must not wait for the statistics database.
    recent, per_day, keyboards, seconds = await server.storage.read(_figures, server, detailed)
    return Status(active, recent, per_day, keyboards, seconds, detailed)


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _row(b: Build, root: str) -> str:
    duration = f"{b.duration_s:.1f} s" if b.duration_s is not None else ""
    layout = log = ""
    if b.detail:
        layout = f"<td>{_e(b.detail.layout)}</td>"
        log = f'<td><a href="{root}builds/{_e(b.detail.hash)}/log">log</a></td>'
    return (
        f'<tr class="{_e(b.state)}"><td>{_e(b.keyboard)}</td>{layout}'
        f"<td>{_e(b.version)}</td><td>{_e(b.state)}</td><td>{duration}</td>"
        f"<td>{_e(b.finished_at)}</td>{log}</tr>"
    )


def _summary(status: Status) -> str:
    """How many builds run, on which keyboards, and how many wait: never which builds."""
    building = status.building()
    if building:
        each = (f"{b['builds']} \N{MULTIPLICATION SIGN} {b['keyboard']}" for b in building)
        text = f"{sum(b['builds'] for b in building)} building: {', '.join(each)}."
    else:
        text = "Nothing is building."
    if status.queued():
        text += f" {status.queued()} waiting for a slot."
    return f'<p class="summary">{_e(text)}</p>'


def _active(status: Status, root: str) -> str:
    """The summary; for the operator, each build with the end of its log too."""
    sections = "".join(
        f'<section class="build"><h3>{_e(b.keyboard)} {_e(b.detail.layout)} · '
        f'{_e(b.version)} · <span class="state">{_e(b.state)}</span></h3>'
        f'<pre class="log">{_e(b.detail.log_tail) or "(waiting for its first output)"}</pre>'
        f'<a href="{root}builds/{_e(b.detail.hash)}/log">whole log</a></section>'
        for b in status.active
        if b.detail
    )
    return _summary(status) + sections


def render(status: Status, root: str = "") -> str:
    """The page; ``root`` leads from where it is served back to the server's root."""
    recent = "".join(_row(b, root) for b in status.recent)
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in status.build_seconds.items()) or "none yet"
    data = json.dumps(
        {"perDay": status.per_day, "keyboards": status.keyboards, "seconds": status.build_seconds}
    ).replace("</", "<\\/")
    title = "kiisrv status (detail)" if status.detailed else "kiisrv status"
    layout_th = "<th>layout</th>" if status.detailed else ""
    log_th = "<th></th>" if status.detailed else ""
    json_link = "detail.json" if status.detailed else "status.json"
    json_name = "/status/detail.json" if status.detailed else "/status.json"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<link rel="icon" href="data:,">
<title>{title}</title>
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
<h2>Building now</h2>
<div id="active">{_active(status, root)}</div>
<h2>Recent builds</h2>
<table id="recent"><thead><tr><th>keyboard</th>{layout_th}<th>version</th>
<th>result</th><th>took</th><th>finished</th>{log_th}</tr></thead><tbody>{recent}</tbody></table>
<h2>Statistics</h2>
<p>Build time of successful builds: <span id="seconds">{_e(seconds)}</span>.
Plain text: <a href="{root}stats">/stats</a>, JSON: <a href="{json_link}">{json_name}</a>.</p>
<div class="charts">
<div class="chart"><canvas id="perDay"></canvas></div>
<div class="chart"><canvas id="keyboards"></canvas></div>
<div class="chart"><canvas id="buildTime"></canvas></div>
</div>
<script src="{root}static/chart.umd.min.js"></script>
<script id="figures" type="application/json">{data}</script>
<script src="{root}static/status.js"></script>
</body></html>
"""


def router(server: Kiisrv, settings: Settings) -> APIRouter:
    """The public page (``/status``, ``/``, ``/status.json``) and the operator's."""
    routes = APIRouter()

    async def status_page() -> HTMLResponse:
        """What is building, what was built, and the statistics as charts; no build named."""
        return HTMLResponse(render(await collect(server)))

    routes.add_api_route("/status", status_page, methods=["GET"], response_class=HTMLResponse)
    routes.add_api_route("/", status_page, methods=["GET"], include_in_schema=False)

    def operator_only(request: Request) -> None:
        """The detailed status is the holder of ``KIISRV_STATUS_TOKEN``'s alone: without
        a token set it does not exist (404); without the token it asks for it (401)."""
        token = settings.status_token
        if token is None:
            raise NotFound(f"no route {request.method} {request.url.path}")
        given = request.headers.get("authorization", "")
        if not token_matches(token.get_secret_value(), given):
            raise HTTPException(
                401,
                "the detailed status needs the status token: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": REALM},
            )

    @routes.get("/status/detail", response_class=HTMLResponse, include_in_schema=False)
    async def status_detail(request: Request) -> HTMLResponse:
        """The status page with each build's hash, layout and log (the operator's)."""
        operator_only(request)
        return HTMLResponse(render(await collect(server, detailed=True), "../"))

    @routes.get("/status/detail.json", include_in_schema=False)
    async def status_detail_json(request: Request) -> dict[str, Any]:
        """The detailed status page's figures (the operator's)."""
        operator_only(request)
        return (await collect(server, detailed=True)).as_json()

    @routes.get("/status.json")
    async def status_json() -> dict[str, Any]:
        """The status page's figures; no build named."""
        return (await collect(server)).as_json()

    return routes
