"""A failed build's log, read for the one sentence a person needs: which key broke it.

The Configurator shows a failed build's ``error`` under "Show Log"; the KLL compiler's
and gcc's own words (a Python traceback, a parser's token dump) name the generated
file and line at best. The request's ``.kll`` files are the server's own, so a line
of them leads back to the layer and the key (the left side of a mapping line is the
key's name on the default layer), to an animation frame, or to a line of the layer's
custom KLL. Patterns come from real compiler output (tests/fixtures/compiler/).
Inside the container, layer n's file is ``layer-<n>.kll`` (docker/controller/env.sh).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kiisrv.recipe.kll import KllFile

_STAGE = re.compile(
    r"OperationSpecificsStage:(?P<stage>parse|tokenize) -> \S*@\['layer-(?P<layer>\d+)'\]"
    r"_processed\.kll:(?P<line>\d+)"
)
_BAD_KEY = re.compile(r"ERROR: '(?P<name>[^']*)' \(Layout\(name=\w+\)\) is an invalid USB HID")
_NO_CAPABILITY = re.compile(r"^KeyError: '(?P<name>[A-Za-z_]\w*)'", re.MULTILINE)
_LEXER = re.compile(r'LexerError cannot tokenize data: \d+,\d+: "(?P<text>.*)"')
_UNDECLARED_ANIMATION = re.compile(r"'Animation__(?P<name>\w+)' undeclared")
# The KLL compiler's own crash when a combination's keys are not all in the scan map it
# builds (MDErgo1: each half is compiled alone, so a chord across halves indexes past
# the half's trigger list).
_TRIGGER_CRASH = re.compile(r"in generate_trigger_lists\b[^\n]*\n(?:[^\n]*\n){0,3}?IndexError")
# A KLL statement whose trigger (left of `:`) is a combination: `U"A" + U"B" : ...`.
_COMBINATION = re.compile(r"^[^:]*\+[^:]*:")
_MAPPING = re.compile(r'^#?(?:U|CONS|SYS)"(?P<key>[^"]*)"\s*:\s*(?P<value>.*);\s*$')
_FRAME = re.compile(r"^A\[(?P<name>[^\],]+)(?:,\s*(?P<frame>\d+))?\]\s*<=")
# docker/controller/bin/kll-limit: the KLL step ran past KIISRV_KLL_TIMEOUT.
_KLL_TIMEOUT = re.compile(r"kiisrv: the KLL step did not finish in (?P<seconds>\d+) s")


@dataclass(frozen=True)
class _Place:
    layer: int
    line: str
    custom_line: int | None  # 1-based line of the layer's custom KLL, when it is there

    def describe(self) -> str:
        if self.custom_line is not None:
            return f"Layer {self.layer}, custom KLL line {self.custom_line}"
        frame = _FRAME.match(self.line)
        if frame:
            which = f", frame {frame['frame']}" if frame["frame"] else " (its settings)"
            return f"Animation {frame['name']}{which}"
        mapping = _MAPPING.match(self.line)
        if mapping:
            return f"Layer {self.layer}, key {mapping['key']}"
        return f"Layer {self.layer}"


def _place(files: Sequence[KllFile], custom: Mapping[int, str], layer: int, n: int) -> _Place:
    lines = files[layer].content.splitlines() if layer < len(files) else []
    text = lines[n - 1].strip() if 0 < n <= len(lines) else ""
    block = custom.get(layer)
    custom_line = None
    if block:
        start = files[layer].content.find(block)
        if start >= 0:
            first = files[layer].content.count("\n", 0, start) + 1
            if first <= n < first + block.count("\n") + 1:
                custom_line = n - first + 1
    return _Place(layer, text, custom_line)


def _find(files: Sequence[KllFile], custom: Mapping[int, str], needle: str) -> _Place | None:
    """The first line of the request's files that holds ``needle``."""
    for layer, f in enumerate(files):
        for n, line in enumerate(f.content.splitlines(), start=1):
            if needle in line and not line.lstrip().startswith("#"):
                return _place(files, custom, layer, n)
    return None


def _first_combination(custom: Mapping[int, str]) -> _Place | None:
    """The first custom KLL line whose trigger combines keys (the server writes none)."""
    for layer in sorted(custom):
        for n, line in enumerate(custom[layer].splitlines(), start=1):
            text = line.strip()
            if not text.startswith("#") and _COMBINATION.match(text):
                return _Place(layer, text, n)
    return None


def too_slow(seconds: int, custom: Mapping[int, str]) -> str:
    """A layout whose KLL step outlived the limit: its own cost, named where it can be
    (custom KLL is what can make the compiler loop over thousands of scan codes)."""
    layers = sorted(layer for layer, text in custom.items() if text.strip())
    where = (
        "its custom KLL ("
        + ", ".join(f"Layer {layer}" for layer in layers)
        + ") is the likely cause; try it without"
        if layers
        else "its layers are more than the KLL compiler can turn into firmware in time"
    )
    return f"this layout's KLL took longer than {seconds} s to compile and was stopped: {where}"


def _value(place: _Place) -> str:
    """What the user wrote there: a mapping's right side, or the whole line."""
    mapping = _MAPPING.match(place.line) if place.custom_line is None else None
    return mapping["value"] if mapping else place.line.rstrip(";")


def explain(log: str, files: Sequence[KllFile], custom: Mapping[int, str]) -> str | None:
    """One sentence naming the layer and key behind a failed build; None if unknown."""
    slow = _KLL_TIMEOUT.search(log)
    if slow:
        return too_slow(int(slow["seconds"]), custom)
    stage = _STAGE.search(log)
    at = (
        _place(files, custom, int(stage["layer"]), int(stage["line"]))
        if stage and int(stage["layer"]) < len(files)
        else None
    )
    bad = _BAD_KEY.search(log)
    if bad:
        where = at or _find(files, custom, f'"{bad["name"]}"')
        prefix = f"{where.describe()}: " if where else ""
        return f"{prefix}'{bad['name']}' is not a USB HID key name"
    missing = _NO_CAPABILITY.search(log)
    if missing:
        where = _find(files, custom, f"{missing['name']}(")
        if where:
            return (
                f"{where.describe()}: '{missing['name']}' is not a function this firmware "
                f"has (in `{_value(where)}`)"
            )
    lexer = _LEXER.search(log)
    if lexer and at:
        return f"{at.describe()}: `{_value(at)}` is not valid KLL (it cannot be read)"
    if stage and stage["stage"] == "parse" and at:
        return f"{at.describe()}: syntax error in `{_value(at)}`"
    if _TRIGGER_CRASH.search(log):
        combination = _first_combination(custom)
        if combination:
            return (
                f"{combination.describe()}: the KLL compiler crashes on the combination "
                f"`{_value(combination)}` (IndexError); on a split keyboard every key of a "
                "combination must be on the same half, since each half has its own firmware"
            )
    animation = _UNDECLARED_ANIMATION.search(log)
    if animation:
        where = _find(files, custom, f"A[{animation['name']}]")
        prefix = f"{where.describe()}: " if where else ""
        return f"{prefix}animation '{animation['name']}' is not defined in this layout"
    return None


# Lines that say a build went wrong without saying why, or that are noise (CMake's
# developer warnings name "missing" things on every build).
_GENERIC = re.compile(
    r"Build Completed \[ERROR|Error in (build|cmake)\. Exiting|ninja: build stopped|"
    r"^FAILED: |the build failed \(exit status|^make(\[\d+\])?: \*\*\*|Build Result:|"
    r"BYPRODUCTS|CMake Warning|Project authors|-Wno-dev",
)
# The first line that matches wins, strongest first: a compiler's or the KLL compiler's
# own error line, a Python exception, then anything that sounds like a failure.
_ERRORS = (
    re.compile(r"\berror\b\s*:|^ERROR:"),
    re.compile(r"^[A-Za-z_.]*(Error|Exception): "),
    re.compile(r"error|invalid|undeclared|not found|missing", re.IGNORECASE),
)


def first_error_line(text: str) -> str:
    """The line of a log most worth showing: the first that names an error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not _GENERIC.search(ln)]
    for pattern in _ERRORS:
        for line in useful:
            if pattern.search(line):
                return line[:300]
    return lines[-1][:300] if lines else ""
