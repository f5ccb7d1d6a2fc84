"""Release details without label.sh (#15.5): an image built with ``docker compose build``
alone has empty ``io.kiisrv.release.*`` labels, and ``/versions`` still gives its
details, read once per image id from ``/controller/kiisrv-version.json`` through a
container created and removed, never started, and remembered in config.db."""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from docker import DockerClient

from kiisrv.build.catalog import Catalog
from kiisrv.build.containers import LABEL_PURPOSE
from kiisrv.build.engine import Engine
from kiisrv.recipe.versions import DEFAULT_VERSIONS, RELEASE_FILE
from kiisrv.settings import Settings
from kiisrv.store.storage import Storage
from tests.helpers import (
    TEST_IMAGE_PREFIX,
    Events,
    app_client,
    socket_proxy,
    unlabelled_test_image,
)

pytestmark = pytest.mark.anyio

NOREL = f"{TEST_IMAGE_PREFIX}norel-"  # the images of this file: <NOREL>controller-057:latest
MISSING = f"{TEST_IMAGE_PREFIX}nofile-"  # an image without the file at all
FROM_057 = ("latest", "nightly", "v0.5.7")
# A count as a string: what label.sh's labels carry, never what prepare.sh writes.
MALFORMED = (
    '{"tag": "v0.5.0", "hash": "' + "ab" * 20 + '", "commit": "1234",'
    ' "date": "2019-08-01 12:00:00 -0700"}'
)
FROM_050 = ("lts", "v0.5.0")


@pytest.fixture(scope="module")
def unlabelled(docker_client: DockerClient, controller_image: str) -> Iterator[dict[str, str]]:
    """controller-057: no labels, its file as built; controller-050: no labels, its file
    malformed (the count a string); and one image whose file is gone."""
    tags = {
        "good": f"{NOREL}controller-057:latest",
        "malformed": f"{NOREL}controller-050:latest",
        "missing": f"{MISSING}controller-057:latest",
    }
    ids = {
        "good": unlabelled_test_image(docker_client, tags["good"]),
        "malformed": unlabelled_test_image(
            docker_client, tags["malformed"], f"printf '%s' '{MALFORMED}' > {RELEASE_FILE}"
        ),
        "missing": unlabelled_test_image(docker_client, tags["missing"], f"rm {RELEASE_FILE}"),
    }
    yield ids
    for tag in tags.values():
        with contextlib.suppress(docker.errors.APIError):  # another run still uses it
            docker_client.images.remove(tag)


@pytest.fixture
def norel_settings(docker_settings: Settings, unlabelled: dict[str, str]) -> Settings:
    return docker_settings.replace(image_prefix=NOREL)


def labelled_details(docker_client: DockerClient) -> dict[str, Any]:
    """What the labelled test double (the same build) says of itself, as /versions does."""
    labels = docker_client.images.get(f"{TEST_IMAGE_PREFIX}controller-057:latest").labels
    commit = int(labels["io.kiisrv.release.commit"])
    assert commit >= 1
    return {
        "commit": commit,
        "date": labels["io.kiisrv.release.date"],
        "hash": labels["io.kiisrv.release.hash"],
    }


def readers(events: Events) -> list[dict[str, Any]]:
    """The release readers this test's instance created (a build container has no
    purpose label)."""
    return [e for e in events.created() if e["Actor"]["Attributes"].get(LABEL_PURPOSE) == "release"]


async def test_versions_of_images_without_labels_show_their_release_details(
    norel_settings: Settings,
    build_containers: Events,
    docker_client: DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bug: without label.sh, /versions answered null for every version, and the
    Configurator's "newer firmware" check reads latest.commit. Now: the details of the
    file; a malformed file is null (logged, no error); one reader per image id."""
    caplog.set_level(logging.WARNING, logger="kiisrv.catalog")
    async with app_client(norel_settings) as http:
        r = await http.get("/versions")
        assert r.status_code == 200
        versions = r.json()
        assert set(versions) == {*FROM_057, *FROM_050}
        expected = labelled_details(docker_client)
        for name in FROM_057:
            details = versions[name]
            assert details is not None, name
            assert {k: details[k] for k in expected} == expected
            assert re.fullmatch(r"[0-9a-f]{40}", details["hash"])
            assert details["notes"].endswith("/releases/tag/v0.0.0-test")
        for name in FROM_050:
            assert versions[name] is None, name
        assert (await http.get("/versions")).json() == versions
    assert len(readers(build_containers)) == 2  # two image ids, five versions
    assert build_containers.running() == []  # every reader removed
    assert "malformed" in caplog.text and "commit '1234'" in caplog.text


async def test_the_release_file_is_read_once_per_image_id(
    norel_settings: Settings, build_containers: Events, unlabelled: dict[str, str], tmp_path: Path
) -> None:
    """A refresh reads nothing again; nor does a restart (config.db keeps it)."""

    async def refresh() -> dict[str, Any]:
        storage = Storage(tmp_path / "stats.db", tmp_path / "config.db")
        storage.seed_versions(DEFAULT_VERSIONS)
        engine = Engine(norel_settings.docker_url, timeout=30)
        try:
            catalog = Catalog(norel_settings, storage, engine, ttl=0.0)
            first = await catalog.available()
            second = await catalog.available()
            assert second == first
            return {name: a.info for name, a in first.items()}
        finally:
            engine.close()
            storage.close()

    before = await refresh()
    assert len(readers(build_containers)) == 2
    after = await refresh()  # a restart: a new catalog, engine and storage
    assert after == before
    assert before["latest"] is not None and before["lts"] is None
    assert len(readers(build_containers)) == 2
    with sqlite3.connect(tmp_path / "config.db") as db:
        rows = dict(db.execute("SELECT image_id, file FROM ImageReleases").fetchall())
    assert set(rows) == {unlabelled["good"], unlabelled["malformed"]}
    assert b'"commit": "1234"' in rows[unlabelled["malformed"]]


async def test_an_image_without_the_file_shows_null_and_is_not_read_again(
    docker_settings: Settings, build_containers: Events, unlabelled: dict[str, str], tmp_path: Path
) -> None:
    settings = docker_settings.replace(image_prefix=MISSING)
    storage = Storage(tmp_path / "stats.db", tmp_path / "config.db")
    storage.seed_versions(DEFAULT_VERSIONS)
    engine = Engine(settings.docker_url, timeout=30)
    try:
        catalog = Catalog(settings, storage, engine, ttl=0.0)
        for _ in range(2):
            available = await catalog.available()
            assert set(available) == set(FROM_057)
            assert all(a.info is None for a in available.values())
        assert storage.image_releases([unlabelled["missing"]]) == {unlabelled["missing"]: None}
    finally:
        engine.close()
        storage.close()
    assert len(readers(build_containers)) == 1
    assert build_containers.running() == []


async def test_labels_win_without_a_container(
    docker_settings: Settings, build_containers: Events, docker_client: DockerClient
) -> None:
    async with app_client(docker_settings) as http:
        versions = (await http.get("/versions")).json()
    expected = labelled_details(docker_client)
    assert {k: versions["latest"][k] for k in expected} == expected
    assert readers(build_containers) == []


async def test_the_socket_proxy_lets_the_reader_through(
    norel_settings: Settings, build_containers: Events, tmp_path: Path
) -> None:
    """Created with the build containers' labels and confinement, read by the archive
    API, inspected and removed: every call passes the proxy's rule."""
    with socket_proxy(norel_settings, tmp_path / "proxy.log") as url:
        storage = Storage(tmp_path / "stats.db", tmp_path / "config.db")
        storage.seed_versions(DEFAULT_VERSIONS)
        engine = Engine(url, timeout=30)
        try:
            available = await Catalog(norel_settings, storage, engine).available()
        finally:
            engine.close()
            storage.close()
    assert available["latest"].info is not None
    assert available["latest"].info.commit >= 1
    assert available["lts"].info is None
    assert "refused" not in (tmp_path / "proxy.log").read_text()
    assert len(readers(build_containers)) == 2
    assert build_containers.running() == []
