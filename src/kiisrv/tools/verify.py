"""``kiisrv verify ZIP``: is this firmware what its manifest says, built by whom it says?

Three checks, each a verdict of its own, so a user flashing a stranger's build knows
what held:

1. the signature: ``manifest.json`` is the deployment's (its public key: ``--key`` or
   the ``GET /signing-key`` of ``--server``), unchanged;
2. the files: every ``.kll``, the layout and each firmware file in the zip is the one
   the manifest names (sha256);
3. the firmware: built again from nothing (``KIISRV_WARM=0``: no warm tree, the keyboard
   script as shipped) from the zip's own ``kll/`` files and the manifest's parameters,
   in the controller image the manifest names (by id), it comes out byte for byte.

Verdicts and exit statuses: ``verified`` 0; ``tampered: <file>`` or ``differs: <file>``
1; ``no manifest``, ``image not here: <id>`` or a failed rebuild 2. The canary's
``--verify`` builds from nothing through ``rebuild`` here too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import shutil
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiisrv import signing
from kiisrv.errors import KiisrvError
from kiisrv.jobs import Job, JobState
from kiisrv.recipe import kll, manifest
from kiisrv.recipe.diagnose import first_error_line
from kiisrv.recipe.planner import Plan
from kiisrv.recipe.versions import Available, Version
from kiisrv.settings import Settings

if TYPE_CHECKING:
    from kiisrv.core import Kiisrv

VERIFIED, BAD, UNKNOWN = 0, 1, 2
# What a zip may hold (its firmware, KLL and logs are KBs): a bigger one is refused.
MAX_ZIP_MEMBER = 64 * 1024 * 1024


@dataclass(frozen=True)
class Verdict:
    status: int
    text: str


@dataclass(frozen=True)
class Reference:
    """What a build from nothing made: its firmware, or why it made none (its log)."""

    firmware: dict[str, bytes]
    error: str | None = None


class _FromNothing(kll.BuildParams):
    """The plan's own parameters, but no warm tree: it exists to be fast, and the
    firmware must not depend on it (BUILD_CONTRACT.md). No build uses ccache."""

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "KIISRV_WARM": "0"}


def from_nothing(plan: Plan) -> Plan:
    """The same plan (image, .kll files, environment) under a hash and zip name of its
    own, so that it can neither replace the zip served for the request nor be answered
    by it, built from nothing."""
    job = plan.job
    hash_ = f"cold-{job.hash}"
    return dataclasses.replace(
        plan,
        job=Job(hash=hash_, stem=f"{job.stem}-cold", version=job.version, container=job.container),
        params=_FromNothing(**dataclasses.asdict(plan.params)),
    )


def firmware_of(members: Mapping[str, bytes]) -> dict[str, bytes]:
    return {n: data for n, data in members.items() if n in manifest.FIRMWARE_FILES}


def read_zip(path: Path) -> dict[str, bytes]:
    """The zip's files by name; a member past MAX_ZIP_MEMBER is refused whole."""
    return read_zip_bytes(path.read_bytes())


def read_zip_bytes(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if info.file_size > MAX_ZIP_MEMBER:
                raise zipfile.BadZipFile(f"{info.filename} is larger than {MAX_ZIP_MEMBER}")
        return {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}


async def rebuild(server: Kiisrv, plan: Plan, slot: Any) -> Reference:
    """Builds ``plan`` from nothing on ``server``'s runner, bypassing its queue and
    cache, and leaves no zip, input or container behind."""
    plan = from_nothing(plan)
    runner, job, builds = server.runner, plan.job, server.settings.builds_dir

    def clean() -> None:
        for name in (f"{job.stem}.zip", f"{job.stem}_error.zip"):
            (builds / name).unlink(missing_ok=True)
        shutil.rmtree(server.settings.config_dir / job.hash, ignore_errors=True)

    clean()  # whatever a run before left cannot be taken for this build
    output = b""
    try:
        try:
            output = await runner.execute(plan, slot, lambda cid: None)
        except KiisrvError as exc:
            job.error = exc.message
        finally:
            await runner.finish(plan, output)
        if job.state is JobState.SUCCEEDED:
            return Reference(firmware_of(read_zip(builds / job.zip_name)))
        try:
            log = read_zip(builds / job.zip_name).get("log/build.log", b"")
        except (OSError, zipfile.BadZipFile):
            log = b""
        return Reference({}, log.decode("utf-8", "replace") or job.error or "no log")
    finally:
        clean()


def plan_of(
    man: Mapping[str, Any], members: Mapping[str, bytes], image: str, image_id: str
) -> Plan:
    """The plan the manifest describes, with the zip's own ``kll/`` files."""
    request, params, img = man["request"], man["parameters"], man["image"]
    files = [
        kll.KllFile(f["name"], members[f"kll/{f['name']}"].decode("utf-8")) for f in man["kll"]
    ]
    version = Version(img["version"], "", img["container"], img["tag"] or "")
    return Plan(
        job=Job(request["hash"], f"verify-{request['hash']}", version.name, version.container),
        target=Available(version, image, image_id, None),
        files=files,
        params=kll.BuildParams(
            params["script"],
            bool(params["split"]),
            params["DefaultMapOverride"],
            params["PartialMapsExpandedOverride"],
            params["Layout"],
        ),
        layout_name=request["layout"]["name"],
        layout_json=members.get(request["layout"]["name"], b"{}"),
        board=request["board"],
        variant=request["variant"],
    )


def check(members: Mapping[str, bytes], public_key: bytes) -> tuple[Verdict | None, Any]:
    """Steps 1 and 2: a verdict when they fail, else None and the manifest."""
    text, sig = members.get(manifest.NAME), members.get(manifest.SIGNATURE)
    if text is None or sig is None:
        return Verdict(
            UNKNOWN,
            "no manifest: this zip was built before kiisrv signed its builds (or not by "
            "kiisrv); send the layout again to a server of this release for one",
        ), None
    try:
        signature = json.loads(sig)
        good = isinstance(signature, dict) and signing.verify(public_key, text, signature)
    except ValueError:
        good = False
    if not good:
        return Verdict(BAD, f"tampered: {manifest.NAME} (its signature does not hold)"), None
    man = json.loads(text)
    bad = manifest.tampered(man, members)
    if bad:
        return Verdict(BAD, "tampered: " + ", ".join(bad)), None
    return None, man


async def verify(
    server: Kiisrv,
    members: Mapping[str, bytes],
    public_key: bytes,
    image: str | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> Verdict:
    """The three checks, in order; ``server`` builds (its engine, a data folder apart)."""
    failed, man = check(members, public_key)
    if failed is not None:
        return failed
    progress("signature and files: as the manifest says")
    wanted = str(man["image"]["id"])
    local = await server.engine.images()
    if image is not None:
        found = local.get(image)
        if found is None:
            return Verdict(UNKNOWN, f"image not here: {image}")
        if found.id != wanted:
            progress(f"using {image} ({found.id}), not the image the manifest names ({wanted})")
        name, image_id = image, found.id
    else:
        names = sorted(n for n, info in local.items() if info.id == wanted)
        if not names:
            return Verdict(UNKNOWN, f"image not here: {wanted} (--image NAME to use another)")
        name, image_id = names[0], wanted
    progress(f"building from nothing in {name} ...")
    made = await rebuild(server, plan_of(man, members, name, image_id), asyncio.Semaphore(1))
    if made.error is not None:
        return Verdict(UNKNOWN, f"the build from nothing failed: {first_error_line(made.error)}")
    shipped = firmware_of(members)
    for file in sorted(set(shipped) | set(made.firmware)):
        if shipped.get(file) != made.firmware.get(file):
            return Verdict(BAD, f"differs: {file}")
    return Verdict(VERIFIED, "verified")


def key_from(key_file: Path | None, server_url: str | None) -> bytes:
    """The public key to check against: a file (``GET /signing-key``'s answer, or its
    base64 alone), or what the server at ``server_url`` publishes now."""
    if key_file is not None:
        return signing.public_key(key_file.read_bytes())
    if server_url is None:
        raise signing.BadKey("give --key FILE or --server URL: whose signature to check")
    import httpx

    try:
        answer = httpx.get(f"{server_url.rstrip('/')}/signing-key", timeout=15)
        answer.raise_for_status()
    except httpx.HTTPError as exc:
        raise signing.BadKey(f"{server_url} gives no signing key: {exc}") from None
    return signing.public_key(answer.content)


def run(
    settings: Settings,
    zip_path: Path,
    *,
    key_file: Path | None = None,
    server_url: str | None = None,
    image: str | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> Verdict:
    """``kiisrv verify``: the verdict; builds on this machine's engine, in a data folder
    of its own that is removed afterwards."""
    import tempfile

    from kiisrv.core import Kiisrv

    try:
        members = read_zip(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        return Verdict(UNKNOWN, f"not a zip kiisrv can read: {exc}")
    try:
        public = key_from(key_file, server_url)
    except (OSError, signing.BadKey) as exc:
        return Verdict(UNKNOWN, f"no key to check against: {exc}")
    failed, _ = check(members, public)
    if failed is not None:
        return failed  # no engine needed to say so

    async def go(data_dir: Path) -> Verdict:
        server = Kiisrv(
            settings.replace(
                data_dir=data_dir, instance=f"{settings.instance}-verify", prune_interval=0
            )
        )
        await server.start()
        try:
            return await verify(server, members, public, image, progress)
        finally:
            await server.stop()

    with tempfile.TemporaryDirectory(prefix="kiisrv-verify-") as tmp:
        return asyncio.run(go(Path(tmp)))
