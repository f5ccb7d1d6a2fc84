"""Every failure kiisrv reports, as types.

The HTTP layer turns each of these into one JSON shape, ``{"error": "<message>"}``
plus the fields in ``extra``, with the class's ``status``. Nothing below the HTTP layer
knows about status codes beyond this attribute, and nothing above it builds an error
body by hand.

    KiisrvError                 500  a fault of ours; the message still says what broke
    ├── ClientError             400  the request cannot be served as sent
    │   ├── InvalidLayout       400  the layout JSON breaks the model (names the field)
    │   ├── UnknownKeyboard     400  no build script for header.Name
    │   ├── UnknownVersion      400  env names no version whose image is present
    │   ├── Unsupported         400  that version cannot build this layout (says which can)
    │   ├── PayloadTooLarge     413  body over the size limit
    │   └── RateLimited         429  too many new builds from one client (Retry-After)
    ├── NotFound                404  no such layout, revision or artifact
    ├── BuildFailed             422  the build failed or timed out (names the error zip)
    ├── Unavailable             503  try again later (carries Retry-After)
    │   ├── EngineUnavailable   503  the Docker daemon cannot be reached
    │   ├── QueueFull           503  too many builds waiting
    │   └── StorageError        503  the database cannot be written (disk full, ...)
    └── EngineError             500  the daemon answered with an error
        ├── EngineNotFound      500  no such container/image (cleanup treats it as done)
        ├── EngineConflict      500  already being removed/stopped (likewise)
        └── EngineTimeout       500  a call outlived its timeout (wait: the build's)
"""

from __future__ import annotations

from typing import Any


class KiisrvError(Exception):
    status = 500

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}

    def headers(self) -> dict[str, str]:
        return {}


class ClientError(KiisrvError):
    status = 400


class InvalidLayout(ClientError):
    pass


class UnknownKeyboard(ClientError):
    pass


class UnknownVersion(ClientError):
    pass


class Unsupported(ClientError):
    """Refused before any container starts: real builds showed the version cannot."""


class PayloadTooLarge(ClientError):
    status = 413


class RateLimited(ClientError):
    status = 429

    def __init__(self, message: str, retry_after: int = 60, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class NotFound(KiisrvError):
    status = 404


class BuildFailed(KiisrvError):
    """The container ran and the firmware did not come out of it.

    422 rather than 500: the usual cause is the layout (a KLL the compiler rejects),
    and released Configurators only show the log for a non-2xx answer.
    """

    status = 422


class Unavailable(KiisrvError):
    status = 503

    def __init__(self, message: str, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class EngineUnavailable(Unavailable):
    pass


class QueueFull(Unavailable):
    pass


class StorageError(Unavailable):
    pass


class EngineError(KiisrvError):
    pass


class EngineNotFound(EngineError):
    pass


class EngineConflict(EngineError):
    pass


class EngineTimeout(EngineError):
    pass
