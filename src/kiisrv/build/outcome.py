"""How a build's end becomes its job's state: one rule for every queue and the worker.

A build ends in its zip (the runner sets the state from what the container left) or
in an exception, classified here once:

    CancelledError             SHUTDOWN  failed, "the server shut down ..."; re-raised
    Unavailable, EngineError   FAULT     the host's or its engine's, not the layout's:
                                         the request gets a 503 to retry (never kept as
                                         the layout's result); a worker tries it again
    KiisrvError                FAILED    the build's own failure: a 422 naming the zip
    anything else              BUG       ours: logged with its traceback, failed

The local queue, the cluster's queue (the API side) and the worker differ only in
what they do with a FAULT: the worker hands the build back to the queue (arq's Retry).
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum

from kiisrv.errors import EngineError, KiisrvError, Unavailable
from kiisrv.jobs import Job

log = logging.getLogger("kiisrv.queue")

SHUTDOWN_REASON = "the server shut down before this build finished"


class End(Enum):
    SHUTDOWN = "shutdown"
    FAULT = "fault"
    FAILED = "failed"
    BUG = "bug"


def end_of(exc: BaseException) -> End:
    if isinstance(exc, asyncio.CancelledError):
        return End.SHUTDOWN
    if isinstance(exc, Unavailable | EngineError):
        return End.FAULT
    if isinstance(exc, KiisrvError):
        return End.FAILED
    return End.BUG


def settle(job: Job, exc: BaseException) -> End:
    """Records on ``job`` why its build ended with ``exc``; which end it was."""
    end = end_of(exc)
    if end is End.SHUTDOWN:
        job.error = SHUTDOWN_REASON
    elif end is End.BUG:
        log.error("build %s crashed", job.hash, exc_info=exc)
        job.error = f"internal error: {exc}"
    else:
        job.error = exc.message if isinstance(exc, KiisrvError) else str(exc)
        job.retry_later = end is End.FAULT
    return end
