"""Small layouts written for the tests, and where the shared reference data lives."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURE_LAYOUTS = REPO / "tests" / "fixtures" / "layouts"
CONFORMANCE = Path(os.environ.get("KIISRV_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance"))
NO_CONFORMANCE = f"reference data not found at {CONFORMANCE} (../shared/conformance)"

# Names of the containers and images the tests make. Two checkouts can run the Docker
# suite on one daemon at once when each sets its own.
TEST_PREFIX = os.environ.get("KIISRV_TEST_PREFIX", "kiisrvtest-")
TEST_IMAGE_PREFIX = os.environ.get("KIISRV_TEST_IMAGE_PREFIX", "kiisrv-testdouble-")

# What the Configurator's download parser expects of `filename` (API.md).
CLIENT_FILENAME_RE = r"^\./[^/]+/+([A-Za-z0-9_.-]+)-([A-Za-z0-9_.-]+)-([0-9A-Fa-f]+)(_error)?"


def wait_for_http(url: str, attempts: int = 100) -> bool:
    """True once ``url`` answers 200 (a server or proxy just started), False if never."""
    import httpx

    for _ in range(attempts):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def header(
    name: str = "KType", layout: str = "Mine", base: str = "TestBase", **kw: Any
) -> dict[str, Any]:
    h: dict[str, Any] = {
        "Name": name,
        "Variant": "test",
        "Layout": layout,
        "Base": base,
        "Version": "0.1",
        "Author": "kiisrv tests",
        "KLL": "0.5c",
        "Date": "2026-11-26",
        "Generator": "kiisrv tests",
    }
    h.update(kw)
    return h


def key(code: str, *layers: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "layers": {str(i): {"key": k} for i, k in enumerate(layers)}, **extra}


def ktype(*, custom: str | None = None, **kw: Any) -> dict[str, Any]:
    """A user layout over tests/fixtures/layouts/KType-TestBase.json (4 keys)."""
    doc: dict[str, Any] = {
        "header": header(**kw),
        "matrix": [
            key("0x01", "ESC", "F1"),
            key("0x02", "Q"),
            key("0x03", "B", "#:layerShift(1)"),
            key("0x04", "C"),
        ],
    }
    if custom is not None:
        doc["custom"] = {"0": custom}
    return doc


def mdergo1() -> dict[str, Any]:
    return {
        "header": header(name="MDErgo1", layout="Split"),
        "matrix": [key("0x01", "ESC"), key("0x02", "A", "1"), key("0x03", "B")],
    }


def request(config: dict[str, Any], env: str = "latest") -> dict[str, Any]:
    return {"config": copy.deepcopy(config), "env": env}
