"""Schemathesis against the server's own OpenAPI description, over real HTTP.

With the engine and the test controller image present, nothing a client sends may get
a 5xx: every generated request is answered with success or a 4xx that says why.
(Schemathesis runs through its CLI: its pytest plugin does not support pytest 9 yet.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiisrv.settings import Settings
from tests.helpers import Events, serve


def test_no_generated_request_gets_a_server_error(
    docker_settings: Settings, build_containers: Events, tmp_path: Path
) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[test]')")
    with serve(docker_settings, tmp_path / "server.log") as live:
        run = subprocess.run(
            [
                cli,
                "run",
                f"{live.base}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "40",
                "--request-timeout",
                "120",
                "--generation-deterministic",
                "--suppress-health-check",
                "all",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # The server's own access log: many requests, and not one 5xx.
    statuses = re.findall(r'HTTP/1.1" (\d{3})', (tmp_path / "server.log").read_text())
    assert len(statuses) > 300
    assert [s for s in statuses if s.startswith("5")] == []
