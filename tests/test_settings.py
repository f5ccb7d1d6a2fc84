from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from kiisrv.settings import Settings
from tests.helpers import REPO


def test_from_env_reads_each_type() -> None:
    s = Settings.from_env(
        {
            "KIISRV_PORT": "4000",
            "KIISRV_DATA_DIR": "/srv/kiisrv",
            "HOST_TMP_BUILDS": "/host/builds",
            "KIISRV_BUILD_CPUS": "1.5",
            "DOCKER_HOST": "tcp://127.0.0.1:2375",
            "KIISRV_HOST": "",
        }
    )
    assert s.port == 4000
    assert s.data_dir == Path("/srv/kiisrv")
    assert s.builds_dir == Path("/srv/kiisrv/builds")
    assert s.host_tmp_builds == Path("/host/builds")
    assert s.host_tmp_config is None
    assert s.build_cpus == 1.5
    assert s.docker_url == "tcp://127.0.0.1:2375"
    assert s.host == "0.0.0.0"


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="KIISRV_PORT"):
        Settings.from_env({"KIISRV_PORT": "many"})


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, re.MULTILINE))
    names = {f.metadata["env"] for f in fields(Settings)}
    assert names - documented == set(), "settings missing from the README table"
    assert documented - names == set(), "README documents settings that do not exist"
