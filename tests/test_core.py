"""The build core without Docker: restart recovery, the pruner, work kept off the loop,
hostile bodies, and the names in the answer (issue #8)."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiisrv.build.engine import Engine
from kiisrv.errors import StorageError
from kiisrv.jobs import Job, JobState
from kiisrv.settings import Settings
from kiisrv.store import results as folder_results
from kiisrv.store.storage import Storage
from tests.helpers import CLIENT_FILENAME_RE, app_client, eventually, on_loop

pytestmark = pytest.mark.anyio

H_DONE = "d" * 32
H_CUT = "c" * 32


@contextmanager
def blocking_calls_on_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records every SQLite use and every Engine client use made on the event loop."""
    seen: list[str] = []
    lock, get_client = Storage._lock, Engine._get_client

    def spy_lock(self: Storage) -> Any:
        if on_loop():
            seen.append("sqlite")
        return lock(self)

    def spy_client(self: Engine) -> Any:
        if on_loop():
            seen.append("engine")
        return get_client(self)

    monkeypatch.setattr(Storage, "_lock", spy_lock)
    monkeypatch.setattr(Engine, "_get_client", spy_client)
    yield seen


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


async def test_restart_after_kill_leaves_nothing_pointing_nowhere(settings: Settings) -> None:
    """#8.7: a build cut by kill -9: its finished zip is kept, or an error zip says why."""
    settings.data_dir.mkdir(parents=True)
    storage = Storage(settings.stats_db, settings.config_db)
    for h in (H_DONE, H_CUT):
        storage.save_job(
            Job(h, f"KType-Mine-{h}", "latest", "controller-057", state=JobState.RUNNING)
        )
    storage.close()
    for h in (H_DONE, H_CUT):
        (settings.config_dir / h).mkdir(parents=True)
        (settings.config_dir / h / "KType-Mine-0.kll").write_text('Name = "KType";\n')
    done = settings.builds_dir / ".work" / H_DONE
    done.mkdir(parents=True)
    (done / f"KType-Mine-{H_DONE}.zip").write_bytes(
        _zip({"kiibohd.dfu.bin": b"FW", "log/build.log": b"k-type.bash: done\n"})
    )
    cut = settings.builds_dir / ".work" / H_CUT
    cut.mkdir(parents=True)
    (cut / "half-written.zip").write_bytes(b"PK\x03")

    async with app_client(settings) as client:
        ok = (await client.get(f"/builds/{H_DONE}")).json()
        assert ok["state"] == "succeeded", ok
        assert (await client.get(f"/tmp/{ok['filename'].rsplit('/', 1)[1]}")).status_code == 200
        assert "done" in (await client.get(f"/builds/{H_DONE}/log")).text

        failed = (await client.get(f"/builds/{H_CUT}")).json()
        assert failed["state"] == "failed" and "restarted" in failed["error"]
        r = await client.get(f"/tmp/{failed['filename'].rsplit('/', 1)[1]}")
        assert r.status_code == 200
        assert "KType-Mine-0.kll" in zipfile.ZipFile(io.BytesIO(r.content)).namelist()
        log = await client.get(f"/builds/{H_CUT}/log")
        assert log.status_code == 200 and "restarted" in log.text
        assert not (settings.config_dir / H_CUT).exists()
        assert not cut.exists() and not done.exists()


async def test_the_pruner_survives_a_storage_error_and_stop_still_shuts_down(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#8.5: one failed prune is logged; the next runs; stop() does not re-raise it."""
    calls = 0
    real_prune = folder_results.prune

    def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageError("the server cannot use its database: database is locked")
        return real_prune(*args, **kwargs)

    monkeypatch.setattr(folder_results, "prune", flaky)

    async def count() -> int:
        return calls

    async with app_client(settings.replace(prune_interval=0.05)) as client:
        await eventually(count, lambda n: n >= 3)
        assert (await client.get("/healthz")).status_code == 200


async def test_startup_status_and_stats_do_not_block_the_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#8.4: the engine ping at start, SQLite reads for /stats and /builds: off the loop."""
    with blocking_calls_on_loop(monkeypatch) as seen:
        async with app_client(settings) as client:
            assert (await client.get("/stats")).status_code == 200
            assert (await client.get("/builds/" + "0" * 32)).status_code == 404
            assert (await client.get("/healthz")).status_code == 200
    assert seen == []


async def test_deeply_nested_json_is_a_client_error(settings: Settings) -> None:
    """#8.8: 100,000 nested arrays: 400 with a reason, not a 500 RecursionError."""
    async with app_client(settings) as client:
        r = await client.post("/", content=b"[" * 100_000 + b"]" * 100_000)
        assert 400 <= r.status_code < 500, r.text
        assert "nested" in r.json()["error"]
        deep_config = b'{"env": "latest", "config": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        r = await client.post("/", content=deep_config)
        assert 400 <= r.status_code < 500, r.text


# Everything layout.FileName accepts, with the characters that matter weighted up.
_names = st.text(alphabet="Ab9_.- ", min_size=1, max_size=64).filter(
    lambda s: re.fullmatch(r"[A-Za-z0-9_.\- ]+", s) is not None
)


@given(name=_names, layout=_names, hash_=st.from_regex(r"[0-9a-f]{32}", fullmatch=True))
def test_every_accepted_name_parses_back_from_the_answer(
    name: str, layout: str, hash_: str
) -> None:
    """#8.9: the Configurator's regex reads back the board and the layout of any answer."""
    from kiisrv.recipe.planner import zip_stem

    stem = zip_stem(name, layout, hash_)
    for suffix in (".zip", "_error.zip"):
        m = re.match(CLIENT_FILENAME_RE, f"./tmp/{stem}{suffix}")
        assert m is not None
        assert m.group(1) == name.replace(" ", "_")
        assert m.group(2) == layout.replace(" ", "_").replace("-", "_")
        assert m.group(3) == hash_
        assert bool(m.group(4)) == (suffix == "_error.zip")
