"""Real SQLite files: idempotent seeding, restart bookkeeping and the stats page."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from kiisrv.jobs import Job, JobState
from kiisrv.recipe.versions import DEFAULT_VERSIONS
from kiisrv.store.requests import RequestRecord
from kiisrv.store.storage import Storage
from kiisrv.web import stats


def open_storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "stats.db", tmp_path / "config.db")


def test_seeding_twice_keeps_one_row_per_version_and_operator_edits(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    s.seed_versions(DEFAULT_VERSIONS)
    with sqlite3.connect(tmp_path / "config.db") as db:
        db.execute("UPDATE Versions SET container = 'controller-058' WHERE name = 'nightly'")
    s.close()
    s = open_storage(tmp_path)
    s.seed_versions(DEFAULT_VERSIONS)
    versions = {v.name: v for v in s.versions()}
    assert len(versions) == len(DEFAULT_VERSIONS)
    assert versions["nightly"].container == "controller-058"


def test_unfinished_builds_are_failed_once_with_a_reason(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    s.save_job(Job("a" * 32, "K-L-a", "latest", "controller-057", state=JobState.RUNNING))
    s.save_job(Job("b" * 32, "K-L-b", "latest", "controller-057", state=JobState.SUCCEEDED))
    assert s.fail_unfinished("restarted") == 1
    assert s.fail_unfinished("restarted") == 0
    job = s.load_job("a" * 32)
    assert job is not None and job.state is JobState.FAILED and job.error == "restarted"
    assert job.zip_name == "K-L-a_error.zip"
    assert s.load_job("c" * 32) is None


def _record(s: Storage, ip: str, ua_os: str, web: bool, h: str, dur: int | None) -> None:
    s.record_request(
        RequestRecord(
            ip,
            ua_os,
            web,
            h,
            "KType",
            "Standard",
            2,
            "controller-057",
            True,
            datetime.now(UTC),
            dur,
        )
    )


def test_stats_page(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    assert stats.summary(s, {"KType-Standard"}).startswith(
        "Builds: 0 (0 unique)\nCache ratio: 0.0\n"
    )
    _record(s, "1.1.1.1", "Linux", True, "h1", 1000)
    _record(s, "1.1.1.1", "Linux", True, "h1", None)
    _record(s, "2.2.2.2", "Windows", False, "h2", 3000)
    assert stats.summary(s, {"KType-Standard"}) == (
        "Builds: 3 (2 unique)\n"
        "Cache ratio: 1.5\n"
        "Avg time: 2.000 s\n\n"
        "Users: 2 unique\n"
        "Avg builds per user: 1.5\n"
        "Average number of layers: 2\n\n"
        'OS Counts: {\n    "Linux": 2,\n    "Windows": 1,\n}\n'
        'Platform Counts: {\n    "Web": 2,\n    "Desktop": 1,\n}\n'
        'Keyboard Counts: {\n    "KType-Standard": 3,\n}\n'
        'Version Counts: {\n    "controller-057": 3,\n}\n\n'
    )
