"""The build job model: one distinct (version, layout) build and the state it is in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


@dataclass
class Job:
    hash: str
    stem: str
    version: str
    container: str
    state: JobState = JobState.QUEUED
    error: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    # Failed for want of the engine or the disk, not because of the layout: a client
    # should send the same request again later (503), not fix its layout (422).
    retry_later: bool = False

    @property
    def zip_name(self) -> str:
        return f"{self.stem}.zip" if self.state is not JobState.FAILED else f"{self.stem}_error.zip"

    def as_json(self) -> dict[str, object]:
        return {
            "hash": self.hash,
            "state": self.state.value,
            "version": self.version,
            "error": self.error,
            "filename": f"./tmp/{self.zip_name}" if self.state.finished else None,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_ms": self.duration_ms,
        }
