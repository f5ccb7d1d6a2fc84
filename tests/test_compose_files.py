"""What every compose file promises, read from the files themselves (`docker compose
config` on a real engine: tests/docker/test_deploy.py and test_compose_distributed.py)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.helpers import REPO

FILES = ["compose.prod.yaml", "compose.distributed.yaml", "compose.yaml"]


def _services(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / name).read_text())
    return dict(doc.get("services") or {})


@pytest.mark.parametrize("name", ["compose.prod.yaml", "compose.distributed.yaml"])
def test_every_service_caps_its_log(name: str) -> None:
    """A container's log lives on the host's disk: every service that runs keeps at
    most a few files of a few MB (a client's aborted uploads used to add a traceback
    each, with no cap at all). Services only overridden here get it from
    compose.prod.yaml."""
    prod = _services("compose.prod.yaml")
    for service, spec in _services(name).items():
        spec = {**prod.get(service, {}), **spec}
        logging = spec.get("logging")
        assert logging, f"{name}: {service} has no logging cap"
        assert logging["driver"] == "json-file"
        assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) <= 5


def test_the_proxy_and_the_server_get_the_same_build_limits() -> None:
    """The server asks for them, the socket proxy holds every container to them."""
    services = _services("compose.prod.yaml")
    names = [
        "KIISRV_BUILD_MEMORY",
        "KIISRV_BUILD_PIDS",
        "KIISRV_BUILD_CPUS",
        "KIISRV_BUILD_TMPFS",
        "KIISRV_BUILD_LOG_SIZE",
    ]
    proxy, server = services["socket-proxy"]["environment"], services["kiisrv"]["environment"]
    for n in names:
        assert proxy[n] == server[n], n
    workers = _services("compose.distributed.yaml")["worker-1"]["environment"]
    for n in names:
        assert workers[n] == proxy[n], n
