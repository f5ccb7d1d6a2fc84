"""The layout model: what the Configurator sends, validated before anything is written.

Values from the header reach file names, environment variables and KLL text, so the
model is strict about what they may contain; the raw KLL fields (``custom``, animation
frames, ``#:`` actions) are KLL by design and only bounded in size. Unknown keys are
accepted (the client adds some) and the raw JSON, not this model, is what gets stored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from kiisrv.errors import InvalidLayout

MAX_LAYER = 31
MAX_KEYS = 1024
MAX_ANIMATIONS = 256
MAX_FRAMES = 4096
MAX_RAW_KLL = 512 * 1024

# A name that becomes part of a file name as it is (Name picks the keyboard, Base the
# base file): letters, digits, `_ . -` and spaces (spaces turn into `_`). No `/`, so it
# cannot leave its folder. Layout and Variant are any printable text, made safe by kll.py
# where they become file names.
_NAME_RE = r"^[A-Za-z0-9_.\- ]+$"
_IDENT_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable text on one line")
    return value


# Every character str.splitlines() ends a line at: the KLL compiler splits its input
# the same way, so any of them inside a value written into a .kll would end that line
# and start a statement of the client's choosing.
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _one_line(value: str) -> str:
    if "\x00" in value or not LINE_BREAKS.isdisjoint(value):
        raise ValueError("must be a single line without NUL (no line or paragraph separator)")
    return value


def _no_quote(value: str) -> str:
    _one_line(value)
    if '"' in value:
        raise ValueError('must not contain `"`')
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


FileName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NAME_RE)]
# Any printable text: sanitised where it becomes a file name or a KLL string (kll.py).
Printable = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_printable)
]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_IDENT_RE)]
HeaderText = Annotated[str, StringConstraints(max_length=256), AfterValidator(_no_quote)]
LineText = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_one_line)]
RawKll = Annotated[str, StringConstraints(max_length=MAX_RAW_KLL), AfterValidator(_no_nul)]
LayerNumber = Annotated[int, Field(ge=0, le=MAX_LAYER)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Header(_Model):
    Name: FileName
    Variant: Printable | None = None
    Layout: Printable
    Base: FileName
    Version: HeaderText
    Author: HeaderText
    KLL: HeaderText
    Date: HeaderText
    Generator: HeaderText


def _key_value(value: str) -> str:
    _one_line(value)
    if not value.startswith("#:") and '"' in value:
        raise ValueError('a key name must not contain `"` (use a `#:` action for raw KLL)')
    return value


class KeyAction(_Model):
    key: Annotated[str, StringConstraints(max_length=1024), AfterValidator(_key_value)]
    label: Any = None


class MatrixKey(_Model):
    code: Annotated[str, StringConstraints(min_length=1, max_length=32), AfterValidator(_no_quote)]
    x: float | None = None
    y: float | None = None
    w: float | None = None
    h: float | None = None
    layers: dict[LayerNumber, KeyAction]
    triggers: Any = None


class Define(_Model):
    name: Ident
    value: HeaderText


class Animation(_Model):
    type: str | None = None
    settings: RawKll
    frames: Annotated[list[RawKll], Field(max_length=MAX_FRAMES)]


class Layout(_Model):
    header: Header
    matrix: Annotated[list[MatrixKey], Field(max_length=MAX_KEYS)]
    defines: list[Define] | None = None
    custom: dict[LayerNumber, RawKll] | None = None
    animations: Annotated[dict[Ident, Animation], Field(max_length=MAX_ANIMATIONS)] | None = None
    canned: Any = None
    leds: Any = None


class BuildRequest(_Model):
    """The body of ``POST /``: a layout and the version to build it with."""

    config: Layout
    env: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NAME_RE)] = "latest"


_LAYOUT = TypeAdapter(Layout)
_REQUEST = TypeAdapter(BuildRequest)


def describe(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field as a dotted path."""
    parts = []
    for item in error.errors()[:10]:
        loc = ".".join(str(p) for p in item["loc"]) or "body"
        msg = re.sub(r"^Value error, ", "", item["msg"])
        parts.append(f"{prefix}{loc}: {msg}")
    more = error.error_count() - 10
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def parse_layout(data: Any, what: str = "") -> Layout:
    try:
        return _LAYOUT.validate_python(data)
    except ValidationError as exc:
        raise InvalidLayout(f"invalid layout{what}: {describe(exc)}") from None


def parse_request(data: Any) -> BuildRequest:
    try:
        return _REQUEST.validate_python(data)
    except ValidationError as exc:
        raise InvalidLayout(f"invalid request: {describe(exc)}") from None


def request_schema() -> dict[str, Any]:
    return _REQUEST.json_schema(ref_template="#/components/schemas/{model}")
