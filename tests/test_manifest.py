"""What went into a firmware (recipe/manifest.py), signed by the deployment (signing.py),
and the checks ``kiisrv verify`` makes before it builds anything (tools/verify.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from kiisrv import signing
from kiisrv.jobs import Job
from kiisrv.recipe import manifest
from kiisrv.recipe.kll import BuildParams, KllFile
from kiisrv.recipe.planner import Plan
from kiisrv.recipe.versions import Available, ReleaseInfo, Version
from kiisrv.tools import verify

HASH = "0123456789abcdef" * 2
LOG = (
    " @@@@@ Maps=stdFuncMap layer-0|layer-1\n"
    " @@@@@ Toolchain=12.2.1\n @@@@@ KLL=kll_0.5.7.16\n"
    " @@@@@ Build=warm from /warm/k-type/abc/KType-Standard in /tmp/kiisrv-build/k-type\n"
)


def _plan() -> Plan:
    return Plan(
        job=Job(HASH, f"KType-Mine-{HASH}", "latest", "controller-057"),
        target=Available(
            Version("latest", "stable", "controller-057", "v0.5.7"),
            "kiisrv-controller-057:latest",
            "sha256:" + "ab" * 32,
            ReleaseInfo(1234, "2019-08-01 12:00:00 -0700", "f" * 40, "4.d2", "notes"),
        ),
        files=[KllFile("KType-Mine-0.kll", 'U"A" : U"B";\n'), KllFile("KType-Mine-1.kll", "")],
        params=BuildParams("k-type.bash", False, "stdFuncMap KType-Mine-0", "KType-Mine-1", "Mine"),
        layout_name="KType-Mine.json",
        layout_json=b'{"header": {"Name": "KType"}}',
        board="KType",
        variant="Mine",
        base_digest="c" * 64,
    )


FIRMWARE = {"kiibohd.dfu.bin": b"\x00firmware", "kiibohd.secure.dfu.bin": b"\x01secure"}


def _zip_members(man: dict[str, object]) -> dict[str, bytes]:
    plan = _plan()
    members = {**FIRMWARE, plan.layout_name: plan.layout_json, "log/build.log": LOG.encode()}
    for f in plan.files:
        members[f.name] = members[f"kll/{f.name}"] = f.content.encode()
    return members


def test_the_manifest_names_every_input_and_output_and_is_deterministic() -> None:
    one = manifest.build(_plan(), FIRMWARE, build_log=LOG)
    assert manifest.encode(one) == manifest.encode(manifest.build(_plan(), FIRMWARE, build_log=LOG))
    assert one["request"]["hash"] == HASH
    assert one["request"]["layout"]["sha256"] == manifest.sha256(_plan().layout_json)
    assert one["request"]["base_layout"]["digest"] == "c" * 64
    assert [f["name"] for f in one["kll"]] == ["KType-Mine-0.kll", "KType-Mine-1.kll"]
    assert one["parameters"] == {
        "script": "k-type.bash",
        "Layout": "Mine",
        "DefaultMapOverride": "stdFuncMap KType-Mine-0",
        "PartialMapsExpandedOverride": "KType-Mine-1",
        "split": False,
        "build_date": "2019-08-01 12:00:00 -0700",
    }
    assert one["image"]["id"] == "sha256:" + "ab" * 32 and one["image"]["tag"] == "v0.5.7"
    assert (one["image"]["toolchain"], one["image"]["kll"]) == ("12.2.1", "kll_0.5.7.16")
    assert one["firmware"] == [
        {"name": n, "size": len(d), "sha256": manifest.sha256(d)}
        for n, d in sorted(FIRMWARE.items())
    ]
    assert one["built"] == "warm"
    # No clock, no host: the same inputs on another day and machine, the same bytes.
    text = manifest.encode(one).decode()
    assert "2026" not in text and "/tmp/" not in text and "/warm/" not in text


def test_a_split_boards_halves_may_build_differently() -> None:
    log = " @@@@@ Build=warm from /warm/x\n @@@@@ Build=cold in /tmp/y\n"
    assert manifest.log_facts(log) == {"Build": "warm,cold"}


def test_every_vouched_file_is_checked() -> None:
    man = manifest.build(_plan(), FIRMWARE, build_log=LOG)
    members = _zip_members(man)
    assert manifest.tampered(man, members) == []
    assert manifest.tampered(man, {**members, "kiibohd.dfu.bin": b"\x00firmwarf"}) == [
        "kiibohd.dfu.bin"
    ]
    assert manifest.tampered(man, {**members, "kll/KType-Mine-0.kll": b'U"A" : U"C";\n'}) == [
        "kll/KType-Mine-0.kll"
    ]
    assert manifest.tampered(man, {**members, "KType-Mine.json": b"{}"}) == ["KType-Mine.json"]
    assert manifest.tampered(man, {**members, "left_kiibohd.dfu.bin": b"x"}) == [
        "left_kiibohd.dfu.bin"
    ]
    gone = {k: v for k, v in members.items() if k != "kiibohd.secure.dfu.bin"}
    assert manifest.tampered(man, gone) == ["kiibohd.secure.dfu.bin"]


def _signed(tmp_path: Path) -> tuple[signing.Signer, dict[str, bytes]]:
    signer = signing.Signer.from_file(tmp_path / "signing-key")
    man = manifest.build(_plan(), FIRMWARE, build_log=LOG)
    text = manifest.encode(man)
    members = {
        **_zip_members(man),
        manifest.NAME: text,
        manifest.SIGNATURE: json.dumps(signer.sign(text)).encode(),
    }
    return signer, members


def test_the_signature_holds_for_its_key_only(tmp_path: Path) -> None:
    signer, members = _signed(tmp_path)
    assert verify.check(members, signer.public)[0] is None
    other = signing.Signer.from_file(tmp_path / "another-key")
    failed, _ = verify.check(members, other.public)
    assert failed == verify.Verdict(
        verify.BAD, "tampered: manifest.json (its signature does not hold)"
    )
    # The key is made once and read back the same: the same file, the same signer.
    assert signing.Signer.from_file(tmp_path / "signing-key").public == signer.public
    assert (tmp_path / "signing-key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("change", "verdict"),
    [
        ({"kiibohd.dfu.bin": b"\x00firmwarX"}, "tampered: kiibohd.dfu.bin"),
        ({"kll/KType-Mine-1.kll": b"# more\n"}, "tampered: kll/KType-Mine-1.kll"),
        ({"manifest.sig": b"not json"}, "tampered: manifest.json (its signature does not hold)"),
    ],
)
def test_a_changed_file_is_named(tmp_path: Path, change: dict[str, bytes], verdict: str) -> None:
    signer, members = _signed(tmp_path)
    failed, _ = verify.check({**members, **change}, signer.public)
    assert failed is not None and (failed.status, failed.text) == (verify.BAD, verdict)


def test_an_edited_manifest_breaks_its_signature(tmp_path: Path) -> None:
    """Attack: raise the firmware's hash in the manifest to match a changed firmware."""
    signer, members = _signed(tmp_path)
    man = json.loads(members[manifest.NAME])
    evil = b"\x00evil"
    man["firmware"][0].update(sha256=manifest.sha256(evil), size=len(evil))
    forged = {**members, "kiibohd.dfu.bin": evil, manifest.NAME: manifest.encode(man)}
    failed, _ = verify.check(forged, signer.public)
    assert failed is not None and failed.text.startswith("tampered: manifest.json")


def test_a_zip_from_before_manifests_is_answered_with_a_hint() -> None:
    failed, _ = verify.check({"kiibohd.dfu.bin": b"x"}, b"k" * 32)
    assert failed is not None and failed.status == verify.UNKNOWN
    assert failed.text.startswith("no manifest:") and "send the layout again" in failed.text


def test_a_public_key_is_read_from_the_route_answer_or_its_base64(tmp_path: Path) -> None:
    signer = signing.Signer.from_file(tmp_path / "k")
    as_json = json.dumps(signer.public_json())
    assert signing.public_key(as_json) == signer.public
    assert signing.public_key(base64.b64encode(signer.public)) == signer.public
    for bad in ("{}", "not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(signing.BadKey):
            signing.public_key(bad)


def test_the_plan_is_read_back_from_the_zip(tmp_path: Path) -> None:
    """What the rebuild runs: the zip's own kll/ files, the manifest's parameters."""
    _, members = _signed(tmp_path)
    man = json.loads(members[manifest.NAME])
    plan = verify.plan_of(man, members, "img:latest", "sha256:" + "ab" * 32)
    original = _plan()
    assert plan.files == original.files and plan.params == original.params
    assert plan.params.environment() == original.params.environment()
    assert plan.target.image_id == original.target.image_id and plan.job.hash == HASH
