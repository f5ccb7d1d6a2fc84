"""What went into a firmware, written down: ``manifest.json`` in every zip of a build.

BUILD_CONTRACT.md says the firmware is a function of the inputs; the manifest names
them, so that anyone can check a zip and build it again from nothing
(``kiisrv verify``): the request's hash, the layout as received and the base layout it
was laid over, each generated ``.kll`` file, the build parameters (script, ``Layout``,
maps, split, the pinned build date), the controller image (name, id, release, toolchain
and KLL compiler), each firmware file. How the build ran (warm, reconfigure, cold) is
there as information only: the bytes are the same whichever it was.

Deterministic, so that two deployments with the same images and inputs write the same
manifest (only their signatures differ): sorted keys, no wall-clock time (the build's
time is in ``log/build.log``), no host names or paths. Pure: the runner reads the files
and signs (signing.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from kiisrv import __version__
from kiisrv.recipe.planner import RECIPE_VERSION, Plan

NAME = "manifest.json"
SIGNATURE = "manifest.sig"
FORMAT = 1
FIRMWARE_FILES = (
    "kiibohd.dfu.bin",
    "kiibohd.secure.dfu.bin",
    "left_kiibohd.dfu.bin",
    "left_kiibohd.secure.dfu.bin",
    "right_kiibohd.dfu.bin",
    "right_kiibohd.secure.dfu.bin",
)
_LOG_FACT = re.compile(r"^ @@@@@ (Build|Toolchain|KLL)=(\S+)", re.MULTILINE)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def log_facts(build_log: str) -> dict[str, str]:
    """What build.sh says of itself in the log: ``Build`` (warm, reconfigure, cold; a
    split board's two halves may differ: both kept), ``Toolchain``, ``KLL``."""
    facts: dict[str, list[str]] = {}
    for key, value in _LOG_FACT.findall(build_log):
        if value not in facts.setdefault(key, []):
            facts[key].append(value)
    return {k: ",".join(v) for k, v in facts.items()}


def build(
    plan: Plan,
    firmware: Mapping[str, bytes],
    *,
    build_log: str,
) -> dict[str, Any]:
    """The manifest of a successful build whose zip holds ``firmware`` (name -> bytes)."""
    target, params, info = plan.target, plan.params, plan.target.info
    facts = log_facts(build_log)
    return {
        "manifest": FORMAT,
        "kiisrv": {"version": __version__, "recipe": RECIPE_VERSION},
        "request": {
            "hash": plan.job.hash,
            "layout": {"name": plan.layout_name, "sha256": sha256(plan.layout_json)},
            # The base layout's content as parsed (planner.base_digest): the same file
            # parsed the same way, whatever its whitespace.
            "base_layout": {
                "name": plan.base_file.path.name if plan.base_file else None,
                "digest": plan.base_digest or None,
            },
            "board": plan.board,
            "variant": plan.variant,
        },
        "kll": [{"name": f.name, "sha256": sha256(f.content.encode("utf-8"))} for f in plan.files],
        "parameters": {
            "script": params.script,
            "Layout": params.layout,
            "DefaultMapOverride": params.default_map,
            "PartialMapsExpandedOverride": params.partial_maps,
            "split": params.split,
            "build_date": info.date if info else None,
        },
        "image": {
            "name": target.image,
            "id": target.image_id,
            "version": target.version.name,
            "container": target.version.container,
            "tag": target.version.git_tag,
            "commit": info.hash if info else None,
            "commit_count": info.commit if info else None,
            "toolchain": facts.get("Toolchain"),
            "kll": facts.get("KLL"),
        },
        "firmware": [
            {"name": name, "size": len(data), "sha256": sha256(data)}
            for name, data in sorted(firmware.items())
        ],
        "built": facts.get("Build"),
    }


def encode(manifest: Mapping[str, Any]) -> bytes:
    """The bytes that are signed and stored: one canonical JSON text."""
    return json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=True).encode() + b"\n"


def files_of(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Every file the manifest vouches for, by its name in the zip -> sha256."""
    out = {f["name"]: f["sha256"] for f in manifest.get("firmware", [])}
    for f in manifest.get("kll", []):
        out[f["name"]] = f["sha256"]
        out[f"kll/{f['name']}"] = f["sha256"]
    layout = manifest.get("request", {}).get("layout")
    if layout:
        out[layout["name"]] = layout["sha256"]
    return out


def tampered(manifest: Mapping[str, Any], members: Mapping[str, bytes]) -> list[str]:
    """The files of the zip (name -> bytes) that are not as the manifest says: changed,
    missing, or firmware the manifest does not list."""
    expected = files_of(manifest)
    bad = sorted(n for n, digest in expected.items() if sha256(members.get(n, b"")) != digest)
    bad += sorted(n for n in members if n.endswith(".dfu.bin") and n not in expected)
    bad += sorted(n for n in expected if n not in members and n not in bad)
    return sorted(set(bad))
