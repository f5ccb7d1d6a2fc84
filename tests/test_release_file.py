"""Release details of images without labels (#15.5), without Docker: the strict parser
of ``kiisrv-version.json``, the reader container's shape (and that the socket proxy's
rule passes the body ``Engine.read_file`` really sends), the ImageReleases rows, and
the catalog's once-per-image-id reading against a stand-in engine."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kiisrv.build import catalog as catalog_module
from kiisrv.build.buildio import UnsafeOutput, single_file
from kiisrv.build.catalog import Catalog
from kiisrv.build.containers import (
    LABEL_HASH,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_PURPOSE,
    release_reader_spec,
)
from kiisrv.build.engine import Engine, ImageFile, ImageInfo
from kiisrv.errors import EngineTimeout, EngineUnavailable
from kiisrv.proxy.create import check_create
from kiisrv.proxy.server import policy as policy_of
from kiisrv.recipe.versions import (
    DEFAULT_VERSIONS,
    LABEL_PREFIX,
    MAX_RELEASE_FILE,
    RELEASE_FILE,
    release_from_file,
)
from kiisrv.settings import Settings
from kiisrv.store.storage import Storage

HASH = "ab" * 20
GOOD = {"tag": "v0.5.7", "hash": HASH, "commit": 1234, "date": "2019-08-01 12:00:00 -0700"}
ID_057 = "sha256:" + "57" * 32
ID_050 = "sha256:" + "50" * 32
SETTINGS = Settings(
    data_dir=Path("/srv/data"), instance="kiisrv", image_prefix="kiisrv-", build_user="1000:1000"
)


def raw(**change: Any) -> bytes:
    return json.dumps({**GOOD, **change}).encode()


def tar_of(name: str, content: bytes, kind: bytes = tarfile.REGTYPE) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.REGTYPE:
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
        else:
            info.linkname = "/etc/shadow"
            t.addfile(info)
    return buf.getvalue()


# -- the file, strictly ------------------------------------------------------------------


def test_the_file_prepare_sh_writes_parses() -> None:
    info = release_from_file(raw())
    assert info.as_json() == {
        "commit": 1234,
        "date": "2019-08-01 12:00:00 -0700",
        "hash": HASH,
        "bcd": "4.d2",
        "notes": "https://github.com/kiibohd/controller/releases/tag/v0.5.7",
    }
    # A SHA-256 repository's object names; a key of a later image is ignored.
    assert release_from_file(raw(hash="cd" * 32, extra=1)).hash == "cd" * 32
    # Exactly prepare.sh's printf, newline included.
    printed = b'{"tag": "v0.5.0", "hash": "%s", "commit": 1200, "date": "%s"}\n' % (
        HASH.encode(),
        b"2018-01-02 03:04:05 +0100",
    )
    assert release_from_file(printed).commit == 1200


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe{}", "not UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"tag": "v1"}', "no hash, commit, date"),
        (raw(commit="1234"), "commit"),  # no coercion: label.sh's strings are not the file's
        (raw(commit=12.5), "commit"),
        (raw(commit=True), "commit"),
        (raw(commit=0), "commit"),
        (raw(commit=-3), "commit"),
        (raw(commit=2**40), "commit"),
        (raw(tag=""), "tag"),
        (raw(tag="v1/../../evil"), "tag"),  # it goes into the notes URL
        (raw(tag="v1 x"), "tag"),
        (raw(tag=5), "tag"),
        (raw(hash="ABAB"), "hash"),
        (raw(hash=HASH.upper()), "hash"),
        (raw(hash=None), "hash"),
        (raw(date="yesterday"), "date"),
        (raw(date="2019-13-01 12:00:00 -0700"), "not a date"),
        (raw(date=20190801), "date"),
        (b"[" * 3000 + b"]" * 3000, "larger than"),
        (raw(tag="v" + "1" * MAX_RELEASE_FILE), "larger than"),
    ],
)
def test_a_malformed_file_is_refused_with_the_reason(content: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        release_from_file(content)


def test_the_archive_answer_must_be_the_one_plain_file() -> None:
    name = "kiisrv-version.json"
    assert single_file(tar_of(name, b"{}"), name, max_bytes=10) == b"{}"
    for archive, why in (
        (tar_of(name, b"", tarfile.SYMTYPE), "plain file"),
        (tar_of(name, b"", tarfile.DIRTYPE), "plain file"),
        (tar_of("other.json", b"{}"), "plain file"),
        (tar_of(name, b"x" * 11), "larger than 10"),
        (b"not a tar at all" * 64, "tar"),
    ):
        with pytest.raises(UnsafeOutput, match=why):
            single_file(archive, name, max_bytes=10)


# -- the reader container ----------------------------------------------------------------


def test_the_reader_is_a_confined_kiisrv_container_without_mounts() -> None:
    spec = release_reader_spec(
        SETTINGS, image="kiisrv-controller-057:latest", image_id=ID_057, suffix="x"
    )
    assert spec.image == "kiisrv-controller-057:latest"
    assert spec.name == f"kiisrv-release-{'57' * 6}-x"
    assert spec.labels == {LABEL_MANAGED: "1", LABEL_INSTANCE: "kiisrv", LABEL_PURPOSE: "release"}
    assert LABEL_HASH not in spec.labels  # no build: nothing settles it as one
    assert spec.mounts == [] and spec.tmpfs == {}
    assert spec.network_disabled and spec.read_only
    assert spec.user == "1000:1000"
    assert spec.environment == {} and spec.command == []


class _Engine(BaseHTTPRequestHandler):
    """The calls of ``Engine.read_file``, answered as dockerd does; records them."""

    calls: ClassVar[list[tuple[str, str, Any]]] = []
    archive: ClassVar[bytes | None] = None

    def _answer(self, status: int, doc: object | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else b"")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.calls.append(("GET", path, None))
        if path.endswith("/archive"):
            if self.archive is None:
                self._answer(404, {"message": "Could not find the file"})
            else:
                self._answer(200, raw=self.archive)
        elif path.endswith("/json") and "/containers/" in path:
            self._answer(200, {"Id": "0" * 64, "Image": ID_057})
        else:
            self._answer(200, {"ApiVersion": "1.41", "Version": "20.10.24"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        self.calls.append(("POST", path, json.loads(body) if body else None))
        self._answer(201, {"Id": "0" * 64, "Warnings": []})

    def do_DELETE(self) -> None:
        self.calls.append(("DELETE", self.path, None))
        self._answer(204)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_engine() -> Iterator[Engine]:
    _Engine.calls.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    engine = Engine(f"tcp://127.0.0.1:{server.server_address[1]}", timeout=10)
    yield engine
    engine.close()
    server.shutdown()


@pytest.mark.parametrize("archive", [tar_of("kiisrv-version.json", raw()), None])
def test_read_file_creates_copies_inspects_and_removes_and_the_proxy_passes_it(
    fake_engine: Engine, archive: bytes | None
) -> None:
    _Engine.archive = archive
    spec = release_reader_spec(
        SETTINGS, image="kiisrv-controller-057:latest", image_id=ID_057, suffix="x"
    )
    got = asyncio.run(fake_engine.read_file(spec, RELEASE_FILE, 64 * 1024))
    assert got == ImageFile(ID_057, archive)
    calls = [(m, p.split("/", 2)[-1]) for m, p, _ in _Engine.calls if "/containers" in p]
    assert [m for m, _ in calls] == ["POST", "GET", "GET", "DELETE"]  # never started
    assert not any(p.endswith(("/start", "/exec")) for _, p, _ in _Engine.calls)
    (body,) = [b for m, p, b in _Engine.calls if p.endswith("/containers/create")]
    forwarded = check_create(body, policy_of(SETTINGS))  # the socket proxy's create rule
    assert forwarded["HostConfig"]["NetworkMode"] == "none"
    assert forwarded["HostConfig"].get("Mounts", []) == []
    assert forwarded["HostConfig"]["ReadonlyRootfs"] is True


def test_read_file_stops_at_max_bytes(fake_engine: Engine) -> None:
    _Engine.archive = b"x" * 100_000
    spec = release_reader_spec(
        SETTINGS, image="kiisrv-controller-057:latest", image_id=ID_057, suffix="x"
    )
    with pytest.raises(UnsafeOutput):
        asyncio.run(fake_engine.read_file(spec, RELEASE_FILE, 1000))
    assert _Engine.calls[-1][0] == "DELETE"  # removed all the same


# -- the rows ------------------------------------------------------------------------------


def test_image_releases_are_kept_across_a_restart(tmp_path: Path) -> None:
    s = Storage(tmp_path / "stats.db", tmp_path / "config.db")
    assert s.image_releases([ID_057]) == {}
    s.save_image_release(ID_057, raw())
    s.save_image_release(ID_050, None)
    s.close()
    s = Storage(tmp_path / "stats.db", tmp_path / "config.db")
    assert s.image_releases([ID_057, ID_050, "sha256:other"]) == {ID_057: raw(), ID_050: None}
    assert s.image_releases([]) == {}
    s.close()


# -- the catalog -----------------------------------------------------------------------------


class StandIn:
    """An engine with two images and a record of every release file read."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.files: dict[str, bytes | None] = {
            ID_057: tar_of("kiisrv-version.json", raw()),
            ID_050: tar_of("kiisrv-version.json", raw(commit="1200")),
        }
        self.images_ = {
            "kiisrv-controller-057:latest": ImageInfo(ID_057, ("x",), labels or {}),
            "kiisrv-controller-050:latest": ImageInfo(ID_050, ("y",), {}),
        }
        self.reads: list[str] = []
        self.fail: Exception | None = None
        self.moved_to: str | None = None

    async def images(self) -> dict[str, ImageInfo]:
        return dict(self.images_)

    async def read_file(self, spec: Any, path: str, max_bytes: int) -> ImageFile:
        assert path == RELEASE_FILE and spec.labels[LABEL_PURPOSE] == "release"
        self.reads.append(spec.image)
        await asyncio.sleep(0.01)
        if self.fail is not None:
            raise self.fail
        image_id = self.images_[spec.image].id
        if self.moved_to:
            image_id = self.moved_to
        return ImageFile(image_id, self.files.get(image_id))


def _catalog(tmp_path: Path, engine: StandIn, ttl: float = 0.0) -> Catalog:
    storage = Storage(tmp_path / "stats.db", tmp_path / "config.db")
    storage.seed_versions(DEFAULT_VERSIONS)
    return Catalog(SETTINGS, storage, engine, ttl=ttl)  # type: ignore[arg-type]


def _infos(available: dict[str, Any]) -> dict[str, int | None]:
    return {n: a.info.commit if a.info else None for n, a in available.items()}


def test_an_image_without_labels_is_read_once_per_id_and_a_malformed_one_is_null(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = StandIn()

    async def run() -> None:
        catalog = _catalog(tmp_path, engine)
        # Concurrent refreshes (requests arriving together) read each image once.
        first, second = await asyncio.gather(catalog.available(), catalog.available())
        assert _infos(first) == _infos(second)
        assert _infos(first) == {
            "nightly": 1234, "latest": 1234, "v0.5.7": 1234, "lts": None, "v0.5.0": None
        }  # fmt: skip
        await catalog.available()
        assert sorted(engine.reads) == [
            "kiisrv-controller-050:latest",
            "kiisrv-controller-057:latest",
        ]
        catalog.storage.close()
        # A restart: the rows answer, the engine is not asked.
        again = _catalog(tmp_path, engine)
        assert _infos(await again.available()) == _infos(first)
        assert len(engine.reads) == 2
        again.storage.close()

    with caplog.at_level(logging.WARNING, logger="kiisrv.catalog"):
        asyncio.run(run())
    assert "malformed" in caplog.text and "commit '1200'" in caplog.text


def test_labels_win_and_cost_no_read(tmp_path: Path) -> None:
    labels = {
        f"{LABEL_PREFIX}tag": "v0.5.7",
        f"{LABEL_PREFIX}commit": "999",
        f"{LABEL_PREFIX}date": "2019-08-01 12:00:00 -0700",
        f"{LABEL_PREFIX}hash": HASH,
    }
    engine = StandIn(labels)

    async def run() -> None:
        catalog = _catalog(tmp_path, engine)
        assert _infos(await catalog.available())["latest"] == 999
        catalog.storage.close()

    asyncio.run(run())
    assert engine.reads == ["kiisrv-controller-050:latest"]  # the unlabelled one only


@pytest.mark.parametrize("empty", ["", None])
def test_empty_or_missing_labels_are_no_labels(tmp_path: Path, empty: str | None) -> None:
    labels = {} if empty is None else {f"{LABEL_PREFIX}{k}": "" for k in GOOD}
    engine = StandIn(labels)

    async def run() -> None:
        catalog = _catalog(tmp_path, engine)
        assert _infos(await catalog.available())["latest"] == 1234
        catalog.storage.close()

    asyncio.run(run())


def test_an_engine_failure_is_null_now_and_tried_again_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = StandIn()
    engine.fail = EngineTimeout("read: no answer in time")
    monkeypatch.setattr(catalog_module, "RETRY_AFTER", 0.5)

    async def run() -> None:
        catalog = _catalog(tmp_path, engine)
        assert _infos(await catalog.available())["latest"] is None  # no error: the list
        assert len(engine.reads) == 2
        await catalog.available()
        assert len(engine.reads) == 2  # not at every refresh
        assert catalog.storage.image_releases([ID_057, ID_050]) == {}  # nothing kept
        engine.fail = None
        await asyncio.sleep(0.6)
        assert _infos(await catalog.available())["latest"] == 1234
        assert len(engine.reads) == 4
        catalog.storage.close()

    asyncio.run(run())


def test_an_unreachable_engine_fails_the_list_as_before(tmp_path: Path) -> None:
    engine = StandIn()

    async def broken() -> dict[str, ImageInfo]:
        raise EngineUnavailable("the Docker engine cannot be reached")

    engine.images = broken  # type: ignore[method-assign]

    async def run() -> None:
        catalog = _catalog(tmp_path, engine)
        with pytest.raises(EngineUnavailable):
            await catalog.available()
        catalog.storage.close()

    asyncio.run(run())


def test_an_unusable_or_absent_file_is_remembered_as_null(tmp_path: Path) -> None:
    engine = StandIn()
    engine.files[ID_057] = tar_of("kiisrv-version.json", b"", tarfile.SYMTYPE)
    engine.files[ID_050] = None

    async def run() -> None:
        catalog = _catalog(tmp_path, engine)
        assert set(_infos(await catalog.available()).values()) == {None}
        await catalog.available()
        assert len(engine.reads) == 2
        assert catalog.storage.image_releases([ID_057, ID_050]) == {ID_057: b"", ID_050: None}
        catalog.storage.close()

    asyncio.run(run())


def test_an_image_moved_meanwhile_is_remembered_under_the_id_read(tmp_path: Path) -> None:
    engine = StandIn()
    moved = "sha256:" + "99" * 32
    engine.moved_to = moved
    engine.files[moved] = tar_of("kiisrv-version.json", raw(commit=77))

    async def run() -> None:
        catalog = _catalog(tmp_path, engine)
        await catalog.available()
        stored = catalog.storage.image_releases([ID_057, ID_050, moved])
        assert set(stored) == {moved}  # never the listed ids: they were not what was read
        engine.moved_to = None
        engine.images_["kiisrv-controller-057:latest"] = replace(
            engine.images_["kiisrv-controller-057:latest"], id=moved
        )
        assert _infos(await catalog.available())["latest"] == 77
        catalog.storage.close()

    asyncio.run(run())
