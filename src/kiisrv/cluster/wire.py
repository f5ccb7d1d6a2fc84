"""What crosses Redis between API servers and workers: signed by the sender, checked and
validated by the receiver before anything is built, written or served.

Redis is the one place every machine of a cluster writes to, so it is where an
attacker who reaches it (a leaked password, an exposed port, a compromised host) would
act. Four records cross it, each with an HMAC-SHA256 made with the key the cluster
shares (``KIISRV_QUEUE_KEY``), which Redis never holds:

- a **job** (API server -> worker): the plan of one build. Without the signature a
  planted job would make a worker build and *sign* firmware of the attacker's choosing
  under the hash of someone else's layout;
- a **result** (worker -> API servers): the job record and the zip, bound to the
  build's hash, so that no one who can write Redis or the result store (cluster/results.py)
  can replace a layout's firmware for everyone;
- a running build's **log** (worker -> API servers), so that a planted one cannot tell
  a user to do anything;
- an **advert** (worker -> API servers): the images a worker has, which become
  ``/versions`` and queue names.

A valid signature is not a reason to trust the content's shape: every field is then
validated as strictly as a request (pydantic models below), because the plan's names
become file paths and container parameters on the worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from kiisrv.jobs import Job, JobState
from kiisrv.recipe import kll
from kiisrv.recipe.planner import Plan
from kiisrv.recipe.versions import Available, ReleaseInfo, Version

MIN_KEY_LENGTH = 32


class Forged(ValueError):
    """A record from Redis whose signature or shape is wrong: dropped, never used."""


# -- signatures --------------------------------------------------------------------------


class Sealer:
    """HMAC-SHA256 over a record's kind and its parts, each length-prefixed so that no
    two different records (a job and a result, or parts split differently) can share a
    signature."""

    def __init__(self, key: str) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"the queue key must have at least {MIN_KEY_LENGTH} characters")
        self._key = key.encode()

    def seal(self, kind: str, *parts: bytes) -> str:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (kind.encode(), *parts):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.hexdigest()

    def check(self, signature: Any, kind: str, *parts: bytes) -> None:
        good = self.seal(kind, *parts)
        if not isinstance(signature, str | bytes) or not hmac.compare_digest(
            good.encode(), signature.encode() if isinstance(signature, str) else signature
        ):
            raise Forged(f"{kind}: bad signature")


# -- shapes ------------------------------------------------------------------------------

_Hash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
# What planner.zip_stem, kll.file_part and kll.sanitise can produce: no `/`, no `..` alone.
_FilePart = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\- ]{1,255}$")]
_Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]
_KllName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,200}\.kll$")]
_ImageId = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
_Line = Annotated[str, StringConstraints(pattern=r"^[^\x00\r\n]{0,4096}$")]
_Text = Annotated[str, StringConstraints(max_length=64 * 1024)]
_MAX_FILE = 4 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class JobRecord(_Strict):
    hash: _Hash
    stem: _FilePart
    version: _Name
    container: _Name
    state: JobState
    error: _Text | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: Annotated[int, Field(ge=0)] | None
    retry_later: bool

    @model_validator(mode="after")
    def _own_zip(self) -> JobRecord:
        """The zip is written under ``<stem>.zip``: it must be this build's own name."""
        if not self.stem.endswith(f"-{self.hash}") or self.stem.startswith("."):
            raise ValueError("the zip name does not belong to its hash")
        return self

    def to_job(self) -> Job:
        job = Job(self.hash, self.stem, self.version, self.container)
        job.state, job.error, job.retry_later = JobState(self.state), self.error, self.retry_later
        job.created_at = _dt(self.created_at) or job.created_at
        job.started_at = _dt(self.started_at)
        job.finished_at = _dt(self.finished_at)
        job.duration_ms = self.duration_ms
        return job


class _File(_Strict):
    name: _KllName
    content: Annotated[str, StringConstraints(max_length=_MAX_FILE)]


class PlanRecord(_Strict):
    job: JobRecord
    version: tuple[_Name, _Name, _Name, _Name]  # name, channel, container, git tag
    image_id: _ImageId
    files: Annotated[list[_File], Field(min_length=1, max_length=64)]
    params: tuple[_Name, bool, _Line, _Line, _Line]  # script, split, maps, layout
    layout_name: _FilePart
    layout_json: Annotated[str, StringConstraints(max_length=_MAX_FILE)]
    board: _FilePart
    variant: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\- ]{0,255}$")]


_OLD_CLIENT = re.compile(r"[0-9a-f]{20}")


def _from_an_older_server(payload: str) -> str:
    """A plan queued by a server from before the per-client ccaches were dropped names
    its client's cache (a pseudonym, or null): ignored, so an upgrade loses no queued
    build. Anything else under that key is still refused, as any unknown field is."""
    if '"ccache_client"' not in payload:
        return payload
    try:
        data = json.loads(payload)
    except ValueError:
        return payload
    old = data.get("ccache_client", "") if isinstance(data, dict) else ""
    if old is None or (isinstance(old, str) and _OLD_CLIENT.fullmatch(old)):
        del data["ccache_client"]
        return json.dumps(data)
    return payload


class _Release(_Strict):
    commit: int
    date: _Line
    hash: _Line
    bcd: _Line
    notes: _Text


class Advert(_Strict):
    id: _Name
    images: dict[_ImageId, dict[_Name, _Release | None]]
    max_builds: Annotated[int, Field(ge=1)]


# -- conversions -------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        raise Forged(f"not a timestamp: {value!r}") from None


def job_to_dict(job: Job) -> dict[str, Any]:
    return {
        "hash": job.hash,
        "stem": job.stem,
        "version": job.version,
        "container": job.container,
        "state": job.state.value,
        "error": job.error,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "duration_ms": job.duration_ms,
        "retry_later": job.retry_later,
    }


_M = TypeVar("_M", bound=BaseModel)


def _parse(model: type[_M], raw: str | bytes) -> _M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise Forged(f"{model.__name__}: {exc.error_count()} invalid field(s)") from None


class Wire:
    """The three records, sealed on the way in and opened on the way out."""

    def __init__(self, key: str) -> None:
        self.sealer = Sealer(key)

    # jobs: the arq function's arguments are (payload, signature)

    def seal_plan(self, plan: Plan) -> tuple[str, str]:
        v = plan.target.version
        p = plan.params
        payload = json.dumps(
            {
                "job": job_to_dict(plan.job),
                "version": [v.name, v.channel, v.container, v.git_tag],
                "image_id": plan.target.image_id,
                "files": [{"name": f.name, "content": f.content} for f in plan.files],
                "params": [p.script, p.split, p.default_map, p.partial_maps, p.layout],
                "layout_name": plan.layout_name,
                "layout_json": plan.layout_json.decode(),
                "board": plan.board,
                "variant": plan.variant,
            }
        )
        return payload, self.sealer.seal("job", plan.job.hash.encode(), payload.encode())

    def open_plan(self, job_id: str, payload: Any, signature: Any) -> PlanRecord:
        """The plan of arq job ``job_id``, or Forged: the job id is the hash it builds."""
        if not isinstance(payload, str):
            raise Forged("job: the payload is not text")
        self.sealer.check(signature, "job", str(job_id).encode(), payload.encode())
        record = _parse(PlanRecord, _from_an_older_server(payload))
        if record.job.hash != job_id:
            raise Forged("job: the plan is not the job's")
        return record

    # results: a hash of job record, zip and signature

    def seal_result(self, job: Job, data: bytes) -> dict[str, bytes | str]:
        record = json.dumps(job_to_dict(job))
        signature = self.sealer.seal(
            "result", job.hash.encode(), record.encode(), hashlib.sha256(data).digest()
        )
        return {"job": record, "zip": data, "sig": signature}

    def open_result(self, hash_: str, found: dict[bytes, bytes]) -> tuple[Job, bytes]:
        record, data = found.get(b"job", b""), found.get(b"zip", b"")
        return self.open_result_digest(
            hash_, record, found.get(b"sig"), hashlib.sha256(data).digest()
        ), data

    def open_result_digest(self, hash_: str, record: bytes, signature: Any, digest: bytes) -> Job:
        """A result's job, checked against the SHA-256 of its zip rather than the zip:
        a build's state is read without fetching its firmware (cluster/results.py)."""
        self.sealer.check(signature, "result", hash_.encode(), record, digest)
        job = _parse(JobRecord, record).to_job()
        if job.hash != hash_ or not job.state.finished:
            raise Forged("result: not a finished build of this hash")
        return job

    # a running build's output so far: its signature (64 hex digits), then the bytes

    def seal_log(self, hash_: str, output: bytes) -> bytes:
        return self.sealer.seal("log", hash_.encode(), output).encode() + output

    def open_log(self, hash_: str, raw: bytes) -> bytes:
        signature, output = raw[:64], raw[64:]
        self.sealer.check(signature, "log", hash_.encode(), output)
        return output

    # adverts: a JSON value with its signature

    def seal_advert(self, advert: dict[str, Any]) -> str:
        body = json.dumps(advert)
        return json.dumps({"advert": body, "sig": self.sealer.seal("advert", body.encode())})

    def open_advert(self, raw: str | bytes) -> Advert:
        try:
            outer = json.loads(raw)
            body, signature = outer["advert"], outer["sig"]
        except (ValueError, KeyError, TypeError):
            raise Forged("advert: not a signed advert") from None
        if not isinstance(body, str):
            raise Forged("advert: not a signed advert")
        self.sealer.check(signature, "advert", body.encode())
        return _parse(Advert, body)


def plan_from_record(record: PlanRecord, image: str) -> Plan:
    """The plan again, its image named as the worker's engine knows it."""
    script, split, default_map, partial_maps, layout = record.params
    return Plan(
        job=record.job.to_job(),
        target=Available(Version(*record.version), image, record.image_id, None),
        files=[kll.KllFile(f.name, f.content) for f in record.files],
        params=kll.BuildParams(script, split, default_map, partial_maps, layout),
        layout_name=record.layout_name,
        layout_json=record.layout_json.encode(),
        board=record.board,
        variant=record.variant,
    )


def release_of(raw: _Release | None) -> ReleaseInfo | None:
    return ReleaseInfo(**raw.model_dump()) if raw else None
