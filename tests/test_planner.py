"""The planner: what a request becomes before anything is written or run."""

from __future__ import annotations

from typing import Any

import pytest

from kiisrv.catalog import Available
from kiisrv.errors import Unsupported
from kiisrv.layouts import LayoutStore
from kiisrv.planner import Planner
from kiisrv.versions import Version
from tests.helpers import FIXTURE_LAYOUTS, ktype, request

LATEST = Available(Version("latest", "stable", "controller-057", "v0.5.7"), "img", "sha256:1", None)
LTS = Available(Version("lts", "lts", "controller-050", "v0.5.0"), "img", "sha256:2", None)


def planner() -> Planner:
    return Planner(LayoutStore(FIXTURE_LAYOUTS))


def _with(doc: dict[str, Any], layer: str, value: str) -> dict[str, Any]:
    """``doc`` with ``value`` on key B (the third key) of ``layer``."""
    doc["matrix"][2]["layers"][layer] = {"key": value}
    return doc


@pytest.mark.parametrize(
    ("doc", "target", "message"),
    [
        (_with(ktype(), "1", "#:ledTest(1)"), LATEST, "Layer 1, key B: `ledTest(1)` passes 1"),
        (_with(ktype(), "1", "#:ledTest(1, 0)"), LTS, "Layer 1, key B: `ledTest(1, 0)` needs"),
        (_with(ktype(), "2", "#:storage_control(1)"), LATEST, "Layer 2, key B: `storage_"),
        (
            _with(ktype(name="MD1"), "1", "#:A[x](start)"),
            LATEST,
            "Layer 1, key B: `A[x](start)` needs LED animations, which the MD1 firmware",
        ),
        (
            {
                **_with(ktype(), "1", "#:A[all_on](start)"),
                "animations": {"all_on": {"settings": "start", "frames": ["P[1](1,1,1)"]}},
            },
            LTS,
            "Layer 1, key B: `A[all_on](start)` uses animation 'all_on', but lts builds",
        ),
    ],
)
def test_keys_the_firmware_cannot_compile_are_refused_before_a_build(
    doc: dict[str, Any], target: Available, message: str
) -> None:
    with pytest.raises(Unsupported) as exc:
        planner().plan(request(doc), target)
    assert exc.value.message.startswith(message), exc.value.message
    assert exc.value.status == 400
