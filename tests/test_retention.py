"""Pruning by age and size on real files; builds in use are never touched."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kiisrv.cli import main
from kiisrv.jobs import Job, JobState
from kiisrv.store.retention import prune
from kiisrv.store.storage import Storage

DAY = 86400.0


def make_build(root: Path, hash_: str, age_days: float, size: int = 1000) -> None:
    config = root / "config" / hash_
    config.mkdir(parents=True)
    (config / "K-L-0.kll").write_bytes(b"k" * size)
    builds = root / "builds"
    builds.mkdir(exist_ok=True)
    zip_ = builds / f"KType-Mine-{hash_}.zip"
    zip_.write_bytes(b"z" * size)
    when = time.time() - age_days * DAY
    for p in (config / "K-L-0.kll", config, zip_):
        os.utime(p, (when, when))


def exists(root: Path, hash_: str) -> bool:
    return (root / "config" / hash_).exists() or (
        root / "builds" / f"KType-Mine-{hash_}.zip"
    ).exists()


def test_prunes_by_age(tmp_path: Path) -> None:
    old, new = "a" * 32, "b" * 32
    make_build(tmp_path, old, age_days=40)
    make_build(tmp_path, new, age_days=1)
    (tmp_path / "builds" / "unrelated.txt").write_text("stays")
    result = prune(tmp_path / "config", tmp_path / "builds", max_age=30 * DAY, max_bytes=10**9)
    assert (result.removed, result.kept) == (1, 1)
    assert result.freed_bytes >= 2000
    assert not exists(tmp_path, old) and exists(tmp_path, new)
    assert (tmp_path / "builds" / "unrelated.txt").exists()


def test_prunes_oldest_first_down_to_the_size_limit(tmp_path: Path) -> None:
    hashes = [c * 32 for c in "abcd"]
    for age, h in enumerate(hashes):
        make_build(tmp_path, h, age_days=4 - age, size=1000)  # a oldest ... d newest
    result = prune(tmp_path / "config", tmp_path / "builds", max_age=30 * DAY, max_bytes=4500)
    assert result.removed == 2
    assert [exists(tmp_path, h) for h in hashes] == [False, False, True, True]
    assert result.kept_bytes <= 4500


def test_never_prunes_a_build_in_use_and_dry_run_changes_nothing(tmp_path: Path) -> None:
    busy, idle = "c" * 32, "d" * 32
    make_build(tmp_path, busy, age_days=99)
    make_build(tmp_path, idle, age_days=99)
    dry = prune(
        tmp_path / "config",
        tmp_path / "builds",
        max_age=DAY,
        max_bytes=0,
        in_use={busy},
        dry_run=True,
    )
    assert dry.removed == 1 and exists(tmp_path, idle)
    prune(tmp_path / "config", tmp_path / "builds", max_age=DAY, max_bytes=0, in_use={busy})
    assert exists(tmp_path, busy) and not exists(tmp_path, idle)


def test_prune_command_skips_builds_the_database_says_are_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    running, done = "e" * 32, "f" * 32
    make_build(data, running, age_days=60)
    make_build(data, done, age_days=60)
    storage = Storage(data / "stats.db", data / "config.db")
    storage.save_job(
        Job(running, f"KType-Mine-{running}", "latest", "controller-057", state=JobState.RUNNING)
    )
    storage.close()
    monkeypatch.setenv("KIISRV_DATA_DIR", str(data))
    assert main(["prune", "--dry-run"]) == 0
    assert "would remove 1 builds" in capsys.readouterr().out
    assert exists(data, done)
    assert main(["prune", "--max-age-days", "45"]) == 0
    assert "removed 1 builds" in capsys.readouterr().out
    assert exists(data, running) and not exists(data, done)
