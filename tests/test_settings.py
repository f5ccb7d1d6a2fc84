from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiisrv.settings import Settings
from tests.helpers import REPO


def test_from_env_reads_each_type() -> None:
    s = Settings.from_env(
        {
            "KIISRV_PORT": "4000",
            "KIISRV_DATA_DIR": "/srv/kiisrv",
            "KIISRV_STATUS_TOKEN": "t" * 32,
            "KIISRV_BUILD_CPUS": "1.5",
            "DOCKER_HOST": "tcp://127.0.0.1:2375",
            "KIISRV_HOST": "",
        }
    )
    assert s.port == 4000
    assert s.data_dir == Path("/srv/kiisrv")
    assert s.builds_dir == Path("/srv/kiisrv/builds")
    assert s.status_token is not None and s.status_token.get_secret_value() == "t" * 32
    assert s.build_cpus == 1.5
    assert s.docker_url == "tcp://127.0.0.1:2375"
    assert s.host == "0.0.0.0"


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="KIISRV_PORT"):
        Settings.from_env({"KIISRV_PORT": "many"})


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, re.MULTILINE))
    names = set(Settings.variables())
    assert names - documented == set(), "settings missing from the README table"
    assert documented - names == set(), "README documents settings that do not exist"


def test_an_empty_build_user_means_root() -> None:
    assert Settings.from_env({"KIISRV_BUILD_USER": ""}).build_user == ""
    assert Settings.from_env({}).build_user == "1000:1000"


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("KIISRV_BUILD_READ_ONLY", "ture"),
        ("KIISRV_BUILD_READ_ONLY", "2"),
        ("KIISRV_MAX_BUILDS", "-1"),
        ("KIISRV_MAX_BUILDS", "0"),
        ("KIISRV_MAX_QUEUE", "-5"),
        ("KIISRV_BUILD_TIMEOUT", "-1"),
        ("KIISRV_BUILD_CPUS", "-0.5"),
        ("KIISRV_BUILD_PIDS", "-1"),
        ("KIISRV_RETENTION_DAYS", "-1"),
        ("KIISRV_RETENTION_BYTES", "-1"),
        ("KIISRV_PRUNE_INTERVAL", "-1"),
        ("KIISRV_ENGINE_TIMEOUT", "0"),
        ("KIISRV_MAX_BODY", "-1"),
        ("KIISRV_PORT", "70000"),
    ],
)
def test_a_wrong_value_refuses_to_start_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("1", True), ("false", False)])
def test_booleans_are_read_strictly(raw: str, value: bool) -> None:
    assert Settings.from_env({"KIISRV_BUILD_READ_ONLY": raw}).build_read_only is value


def test_build_cpus_default_to_no_hard_quota() -> None:
    from kiisrv.build.containers import build_container_spec

    def spec(settings: Settings) -> int:
        return build_container_spec(
            settings,
            image="i",
            job_hash="0" * 32,
            script="s",
            zip_name="z",
            environment={},
            suffix="x",
        ).nano_cpus

    assert Settings.from_env({}).build_cpus == 0
    assert spec(Settings.from_env({})) == 0  # unlimited: concurrent builds share by weight
    assert spec(Settings.from_env({"KIISRV_BUILD_CPUS": "1.5"})) == 1_500_000_000
