"""Builds are private by default: the public pages name no one's build (#14).

A build's 128-bit hash is the capability to fetch its zip (``/tmp/<name>``, which holds
the whole layout: Author, custom KLL, macros) and its log. The attacks here are a
stranger reading the public pages (``/status``, ``/``, ``/status.json``, ``/stats``,
``/stats.json``, ``/metrics``) for anything that names one build, and a stranger
guessing at the operator's detailed page. Real builds run in real containers from the
test double, through the app; one is still running while the pages are read.
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import zipfile
from collections.abc import Iterable
from typing import Any

import httpx
import pytest

from kiisrv.core import Kiisrv
from kiisrv.settings import Settings
from tests.helpers import Events, app_client, eventually, ktype, request

pytestmark = pytest.mark.anyio

PUBLIC_PAGES = ("/status", "/", "/status.json", "/stats", "/stats.json", "/metrics")
DETAIL_PAGES = ("/status/detail", "/status/detail.json")
AUTHOR = "Ada Privatissima-Quokka"
TOKEN = secrets.token_hex(24)  # 48 characters


def hash_windows(hash_: str, width: int = 16) -> set[str]:
    """Every run of ``width`` hex characters of a hash: a prefix narrows a search."""
    return {hash_[i : i + width] for i in range(len(hash_) - width + 1)}


def leaks(page: str, secrets_: Iterable[str]) -> list[str]:
    return sorted(s for s in secrets_ if s.lower() in page.lower())


async def start_slow_build(
    client: httpx.AsyncClient, layout: str, seconds: int
) -> tuple[asyncio.Task[httpx.Response], str, str]:
    """A build that keeps running, once its live log has output: (task, hash, zip name)."""
    server: Kiisrv = client.app.state.kiisrv  # type: ignore[attr-defined]
    body = request(ktype(layout=layout, Author=AUTHOR, custom=f"# KIISRV_TEST_SLEEP={seconds}"))
    hash_ = (await server.plan(body)).job.hash
    task = asyncio.create_task(client.post("/", json=body))

    async def log() -> str:
        r = await client.get(f"/builds/{hash_}/log")
        return r.text if r.status_code == 200 else ""

    await eventually(log, lambda text: "@@@@@ Build=" in text, timeout=60)
    job = server.queue.current(hash_)
    assert job is not None and str(job.state) == "running"
    return task, hash_, f"{job.stem}.zip"


async def finished_build(client: httpx.AsyncClient, layout: str) -> tuple[str, str]:
    """A build that is done: (hash, zip name)."""
    server: Kiisrv = client.app.state.kiisrv  # type: ignore[attr-defined]
    body = request(ktype(layout=layout, Author=AUTHOR))
    r = await client.post("/", json=body)
    assert r.status_code == 200, r.text
    return (await server.plan(body)).job.hash, r.json()["filename"].rsplit("/", 1)[1]


def zip_text(content: bytes) -> str:
    """Every file of a zip, one after the other (the layout's JSON is one of them)."""
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        return "\n".join(z.read(name).decode("utf-8", "replace") for name in z.namelist())


async def test_a_stranger_reads_no_build_off_the_public_pages(
    docker_settings: Settings, build_containers: Events
) -> None:
    """Attack: read the public status, statistics and metrics pages while builds run and
    after they finish, looking for a hash (or a 16-hex-character run of one), a zip
    name, a layout name, an Author or a ``builds/`` link: anything that names one build
    or lets a stranger fetch it. Expected: none of them on any page, which still shows
    the counts (something is building, on which keyboard). The requester, who has the
    hash, still gets its live log and its zip."""
    async with app_client(docker_settings) as client:
        done_hash, done_zip = await finished_build(client, "QuokkaFinished")
        task, running_hash, running_zip = await start_slow_build(client, "QuokkaRunning", 10)
        private = {
            *hash_windows(done_hash),
            *hash_windows(running_hash),
            done_zip,
            running_zip,
            "QuokkaFinished",
            "QuokkaRunning",
            AUTHOR,
            "builds/",
        }
        for path in PUBLIC_PAGES:
            page = await client.get(path)
            assert page.status_code == 200, (path, page.text)
            assert leaks(page.text, private) == [], f"{path} names a build:\n{page.text[:4000]}"

        status = (await client.get("/status.json")).json()
        assert status["building"] == [{"keyboard": "KType", "builds": 1}]
        assert status["queued"] == 0
        assert [b["keyboard"] for b in status["recent"]] == ["KType"]
        html = (await client.get("/status")).text
        assert "1 building: 1 \N{MULTIPLICATION SIGN} KType." in html
        assert '"KType-(other)": 1' in (await client.get("/stats")).text

        # The requester's capability is unchanged: the hash gets the live log, then the zip.
        live = await client.get(f"/builds/{running_hash}/log")
        assert live.status_code == 200 and "@@@@@ Build=" in live.text
        assert (await task).status_code == 200
        for name in (done_zip, running_zip):
            z = await client.get(f"/tmp/{name}")
            assert z.status_code == 200 and AUTHOR in zip_text(z.content)
        for path in PUBLIC_PAGES:  # and once nothing runs any more
            page = await client.get(path)
            assert leaks(page.text, private) == [], f"{path} names a build:\n{page.text[:4000]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(password: str, user: str = "operator") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_the_detailed_page_is_the_token_holders_alone(
    docker_settings: Settings, build_containers: Events
) -> None:
    """Attack: ask for the operator's detailed page (hashes, layouts, log tails, links)
    with no token, a wrong one, one a character short, or in a query string. Expected:
    401 with a Basic challenge and no build named. With ``KIISRV_STATUS_TOKEN`` as
    ``Authorization: Bearer`` (scripts) or as the Basic password (browsers), the page
    shows what the public one hides."""
    async with app_client(docker_settings.replace(status_token=TOKEN)) as client:
        done_hash, done_zip = await finished_build(client, "QuokkaFinished")
        task, running_hash, _ = await start_slow_build(client, "QuokkaRunning", 6)

        refused: list[dict[str, str]] = [
            {},
            bearer("x" * len(TOKEN)),
            bearer(TOKEN[:-1]),
            bearer(TOKEN + "x"),
            basic("x" * len(TOKEN)),
            {"Authorization": "Basic !!not base64"},
            {"Authorization": TOKEN},
        ]
        for path in DETAIL_PAGES:
            for headers in refused:
                r = await client.get(path, headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                assert r.headers["www-authenticate"].startswith("Basic ")
                assert leaks(r.text, {*hash_windows(done_hash), "QuokkaFinished"}) == []
            r = await client.get(path, params={"token": TOKEN})
            assert r.status_code == 401, "a token in the URL ends up in logs: not taken"

        for headers in (bearer(TOKEN), basic(TOKEN)):
            page = (await client.get("/status/detail", headers=headers)).text
            assert "QuokkaFinished" in page and "QuokkaRunning" in page
            assert f'href="../builds/{running_hash}/log"' in page
            assert "@@@@@ Build=" in page  # the running build's log tail
            detail: dict[str, Any] = (
                await client.get("/status/detail.json", headers=headers)
            ).json()
            assert [b["hash"] for b in detail["active"]] == [running_hash]
            assert done_hash in [b["hash"] for b in detail["recent"]]
            assert done_zip.startswith(f"KType-{detail['recent'][0]['layout']}-")

        assert (await task).status_code == 200
        for path in PUBLIC_PAGES:  # the token changes nothing on the public pages
            page = await client.get(path, headers=bearer(TOKEN))
            assert leaks(page.text, {*hash_windows(running_hash), "QuokkaRunning"}) == []


async def test_without_a_token_there_is_no_detailed_page(client: httpx.AsyncClient) -> None:
    """Attack: guess at the detailed page of a server whose operator set no token, with
    any header. Expected: 404, as for any route that does not exist."""
    for path in DETAIL_PAGES:
        for headers in ({}, bearer(TOKEN), bearer(""), basic("")):
            r = await client.get(path, headers=headers)
            assert r.status_code == 404, (path, headers, r.text)


@pytest.mark.parametrize("token", ["short", "x" * 31])
def test_a_guessable_token_refuses_to_start(token: str) -> None:
    """Attack: brute-force a short status token. Expected: a token under 32 characters
    stops the server at start, with a message naming ``KIISRV_STATUS_TOKEN``."""
    with pytest.raises(ValueError, match="KIISRV_STATUS_TOKEN"):
        Settings.from_env({"KIISRV_STATUS_TOKEN": token})
    assert Settings.from_env({"KIISRV_STATUS_TOKEN": ""}).status_token is None
