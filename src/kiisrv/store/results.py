"""Finished builds, where a deployment keeps them: the one seam for every deployment.

One server keeps each build's zip in its builds folder (``FolderResults``): the folder
is its store, and its Builds rows say what each build became. A cluster's API servers
keep the same folder as their copy of a store every server and worker shares
(cluster/results.py ``ClusterResults``: PostgreSQL; S3 would be another). The core asks
this seam for a zip by name, a build's job by hash, and its retention; it never asks
whether it is in a cluster.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import anyio.to_thread

from kiisrv.jobs import Job
from kiisrv.settings import Settings
from kiisrv.store.artifacts import artifact_path, write_bytes
from kiisrv.store.retention import PruneResult, prune
from kiisrv.store.storage import Storage, now


class Results(Protocol):
    async def path(self, name: str) -> Path:
        """The file of ``GET /tmp/<name>``, or NotFound."""
        ...

    async def job(self, hash_: str) -> Job | None:
        """A build's job as recorded (queued, running or finished), None when unknown."""
        ...

    async def keep(self, job: Job, data: bytes, *, row_if_none: bool = False) -> None:
        """Keeps a build's zip made elsewhere (a worker), and its job row."""
        ...

    def prune_files(self, busy: Collection[str], dry_run: bool = False) -> PruneResult:
        """This server's old zips and inputs, and their Builds rows (blocking)."""
        ...

    async def prune_shared(self, busy: Collection[str]) -> int:
        """What the deployment's shared store holds past its retention; how many."""
        ...

    async def close(self) -> None: ...


class FolderResults:
    """One server's results: its builds folder and its Builds rows. ``max_age``: how
    long a build's files are kept unused (``KIISRV_RETENTION_DAYS``; a worker, whose
    results are in the store, keeps only what a kill left, briefly)."""

    def __init__(self, settings: Settings, storage: Storage, max_age: float | None = None):
        self.settings = settings
        self.storage = storage
        self.max_age = settings.retention_days * 86400 if max_age is None else max_age

    async def path(self, name: str) -> Path:
        return artifact_path(self.settings.builds_dir, name)

    async def job(self, hash_: str) -> Job | None:
        return await self.storage.run(self.storage.load_job, hash_)

    async def keep(self, job: Job, data: bytes, *, row_if_none: bool = False) -> None:
        await anyio.to_thread.run_sync(write_bytes, self.settings.builds_dir / job.zip_name, data)
        if not row_if_none or await self.storage.run(self.storage.load_job, job.hash) is None:
            await self.storage.run(self.storage.save_job, job)

    def prune_files(self, busy: Collection[str], dry_run: bool = False) -> PruneResult:
        s = self.settings
        keep = set(busy) | set(self.storage.unfinished())
        result = prune(
            s.config_dir,
            s.builds_dir,
            max_age=self.max_age,
            max_bytes=s.retention_bytes,
            in_use=keep,
            dry_run=dry_run,
        )
        if not dry_run:  # their Builds rows too, and rows older than the files' retention
            before = now() - timedelta(seconds=self.max_age)
            rows = self.storage.prune_builds(result.hashes, before, keep=keep)
            result = replace(result, rows=rows)
        return result

    async def prune_shared(self, busy: Collection[str]) -> int:
        return 0

    async def close(self) -> None:
        return None
