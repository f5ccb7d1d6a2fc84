from __future__ import annotations

import json

from kiisrv.recipe.versions import DEFAULT_VERSIONS, bcd, release_info


def test_bcd_as_the_firmware_reports_it() -> None:
    assert bcd(1234) == "4.d2"  # API.md's example
    assert bcd(99) == "0.99"
    assert bcd(100) == "0.64"
    assert bcd(0x6464) == "64.64"
    assert bcd(0) == "0.0"


def test_release_info_from_the_image_file() -> None:
    raw = json.dumps(
        {"tag": "v0.5.7", "hash": "ab" * 20, "commit": 1234, "date": "2019-08-01 12:00:00 -0700"}
    ).encode()
    info = release_info(raw)
    assert info is not None
    assert info.as_json() == {
        "commit": 1234,
        "date": "2019-08-01 12:00:00 -0700",
        "hash": "ab" * 20,
        "bcd": "4.d2",
        "notes": "https://github.com/kiibohd/controller/releases/tag/v0.5.7",
    }
    assert release_info(None) is None
    assert release_info(b"{not json") is None
    assert release_info(b'{"tag": "x"}') is None


def test_lts_rules_belong_to_the_lts_channel_only() -> None:
    by_name = {v.name: v for v in DEFAULT_VERSIONS}
    assert by_name["lts"].lts
    assert not by_name["v0.5.0"].lts
    assert by_name["lts"].container == by_name["v0.5.0"].container == "controller-050"
    assert by_name["latest"].container == by_name["nightly"].container == "controller-057"
