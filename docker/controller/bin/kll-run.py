"""The KLL compiler as a warm build runs it (bin/kll): the same compiler, less work.

A one-key change leaves the KLL step as the largest part of a build, and most of that
step is not the user's layout:

- **Imports a build never uses.** ``layouts`` (the compiler's layout cache) imports
  PyGithub and requests at load, ~0.28 s, only to download the cache, which the image
  already holds (and a build has no network); ``git_revision`` imports GitPython,
  ~0.09 s, to read the revision of the compiler's own folder, which in an installed
  compiler is no git checkout ("<no git>"). So ``github`` and ``git`` are stand-ins that
  answer what the real ones answer here, and ``requests`` loads on first use.
- **Threads that only contend.** The compiler's default ``--jobs`` is the core count
  (``multiprocessing.cpu_count``); its stages are Python, so more threads only fight for
  the interpreter lock (~0.1 s). One thread; the command line is left as it was, since
  the generated headers quote it.
- **Parsing the same files every build.** Tokenizing and parsing the capability files,
  the scancode map and the default maps is most of the rest (KType 0.25 s of 0.43 s,
  Kira 0.8 s), and they are the same for every build of a keyboard. At image build
  (``KIISRV_KLL_CACHE=record``, warm.sh) each such file's parsed expressions are kept,
  keyed by everything the parse reads (the preprocessed text, the kind of file, its
  connect id and HID layout, the compiler's version); a build loads them instead of
  parsing again. The user's own layers are always parsed.

- **Text built by copying.** The emitter builds each C table by ``fill_dict[name] +=
  text``: a dictionary's string is copied whole at every append, so the animation
  frames of an LED-heavy board cost seconds (Kira: 0.9 s of its 2.1). Its values are
  appended to in place instead (``_Text``), then written as the same strings.

What a build from nothing runs (``KIISRV_WARM=0``) is none of this: bin/kll calls the
compiler as shipped, so ``kiisrv canary --verify`` and the real-image tests compare
this path's firmware with the plain compiler's, byte for byte.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import runpy
import sys
import types
from pathlib import Path
from typing import Any

CACHE_DIR = Path(os.environ.get("KIISRV_KLL_CACHE_DIR", "/warm/kll-parse"))
# use (default): load what the image recorded; record: keep what this run parses from
# files outside the build folder; off: parse everything.
MODE = os.environ.get("KIISRV_KLL_CACHE", "use")


class _OnFirstUse(types.ModuleType):
    """A module imported for real only when one of its names is used (an ``import``
    statement alone does not: importlib's LazyLoader would load on its ``__spec__``)."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def _stand_ins() -> None:
    github = types.ModuleType("github")

    class GithubException(Exception):  # noqa: N818 - the real name
        class RateLimitExceededException(Exception):  # noqa: N818
            pass

    class Github:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("a firmware build does not download the KLL layout cache")

    github.GithubException = GithubException  # type: ignore[attr-defined]
    github.Github = Github  # type: ignore[attr-defined]
    sys.modules["github"] = github

    git = types.ModuleType("git")
    exc = types.ModuleType("git.exc")

    class InvalidGitRepositoryError(Exception):
        pass

    def repo(path: object, *args: object, **kwargs: object) -> None:
        raise InvalidGitRepositoryError(str(path))  # an installed compiler's folder

    exc.InvalidGitRepositoryError = InvalidGitRepositoryError  # type: ignore[attr-defined]
    git.exc = exc  # type: ignore[attr-defined]
    git.Repo = repo  # type: ignore[attr-defined]
    sys.modules["git"] = git
    sys.modules["git.exc"] = exc
    sys.modules["requests"] = _OnFirstUse("requests")


# -- the parse of files that are the same every build -------------------------------------


def _version() -> str:
    import kll

    return str(getattr(kll, "__version__", "?"))


def _layout_name(layout: Any) -> str | None:
    name = getattr(layout, "name", None)
    return str(name()) if callable(name) else None


def _key(ctx: Any) -> str | None:
    """What the tokenize and parse stages read of a context, hashed; None for a context
    this cache does not keep (the user's own files, in the build folder)."""
    # The preprocessor's copy of a file is named after the original's path without its
    # slashes: /controller/Scan/... -> /tmp/kll/controllerScan...@['scancode_map']...
    # (the controller sources and the compiler's own maps), while the user's layers come
    # from the build folder (tmpkiisrv-build...).
    name = os.path.basename(str(getattr(getattr(ctx, "parent", None), "path", "")))
    if not name.startswith("controller"):
        return None
    material = "\0".join(
        [
            "kiisrv-kll-parse-1",
            _version(),
            type(ctx).__name__,
            str(getattr(ctx, "connect_id", "")),
            str(_layout_name(getattr(ctx, "hid_mapping", None))),
            str(getattr(ctx, "data", "")),
        ]
    )
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


class _Pickler(pickle.Pickler):
    """The context and its HID layout by reference: they are the build's own objects."""

    def __init__(self, file: io.BytesIO, ctx: Any) -> None:
        super().__init__(file, protocol=5)
        self.ctx = ctx
        self.layout = getattr(ctx, "hid_mapping", None)

    def persistent_id(self, obj: Any) -> str | None:
        if obj is self.ctx:
            return "context"
        if obj is self.layout:
            return "layout"
        if type(obj).__name__ == "Layout" and type(obj).__module__.startswith("layouts"):
            raise pickle.PicklingError("another HID layout than the context's")
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, ctx: Any) -> None:
        super().__init__(file)
        self.ctx = ctx

    def persistent_load(self, pid: Any) -> Any:
        if pid == "context":
            return self.ctx
        if pid == "layout":
            return self.ctx.hid_mapping
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")


def _load(ctx: Any) -> bool:
    """The context's parsed expressions from the cache: True when they were there."""
    key = _key(ctx)
    if key is None:
        return False
    try:
        blob = (CACHE_DIR / f"{key}.pickle").read_bytes()
        expressions = _Unpickler(io.BytesIO(blob), ctx).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return False
    ctx.expressions = expressions
    ctx.classification_token_data = []  # nothing left for the sort to turn into more
    ctx.kiisrv_cached = True
    return True


def _record(ctx: Any) -> None:
    key = _key(ctx)
    if key is None:
        return
    buf = io.BytesIO()
    try:
        _Pickler(buf, ctx).dump(ctx.expressions)
    except (pickle.PicklingError, TypeError, AttributeError):
        return  # kept out: it is parsed every build, as before
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = CACHE_DIR / f".{key}.{os.getpid()}"
    tmp.write_bytes(buf.getvalue())
    tmp.replace(CACHE_DIR / f"{key}.pickle")


def _parse_cache() -> None:
    """Wraps the two stages that tokenize and parse, per context."""
    if MODE not in ("use", "record"):
        return
    from kll.common import stage

    classify = stage.OperationClassificationStage.tokenize
    specifics_tokenize = stage.OperationSpecificsStage.tokenize
    specifics_parse = stage.OperationSpecificsStage.parse

    def tokenize(self: Any, ctx: Any) -> Any:
        if MODE == "use" and _load(ctx):
            return True
        return classify(self, ctx)

    def specifics(self: Any, ctx: Any) -> Any:
        if getattr(ctx, "kiisrv_cached", False):
            return True
        return specifics_tokenize(self, ctx)

    def parse(self: Any, ctx: Any) -> Any:
        if getattr(ctx, "kiisrv_cached", False):
            return True
        done = specifics_parse(self, ctx)
        if MODE == "record" and done:
            _record(ctx)
        return done

    stage.OperationClassificationStage.tokenize = tokenize
    stage.OperationSpecificsStage.tokenize = specifics
    stage.OperationSpecificsStage.parse = parse


# -- the emitter's text, appended in place ------------------------------------------------


class _Text:
    """A ``fill_dict`` value being built with ``+=``: appends kept as parts, joined when
    read. Everything else the emitter does with the value (slice it, write it) sees the
    string it would have had."""

    __slots__ = ("_parts",)

    def __init__(self, text: str) -> None:
        self._parts = [text]

    def __iadd__(self, more: object) -> _Text:
        if not isinstance(more, str):
            raise TypeError(f'can only concatenate str (not "{type(more).__name__}") to str')
        self._parts.append(more)
        return self

    def __str__(self) -> str:
        if len(self._parts) != 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0]

    def __getitem__(self, index: Any) -> str:
        return str(self)[index]

    def __len__(self) -> int:
        return len(str(self))

    def __eq__(self, other: object) -> bool:
        return str(self) == (str(other) if isinstance(other, _Text) else other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __add__(self, other: str) -> str:
        return str(self) + other

    def __radd__(self, other: str) -> str:
        return other + str(self)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __getattr__(self, name: str) -> Any:
        return getattr(str(self), name)  # str's methods


class _Fill(dict):  # type: ignore[type-arg]
    """The emitter's ``fill_dict``: a string read from it is handed out as a ``_Text``
    (and kept so), so that ``fill_dict[name] += text`` appends instead of copying."""

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, str):
            value = _Text(value)
            super().__setitem__(key, value)
        return value


def _emitter_text() -> None:
    try:
        from kll.common.emitter import TextEmitter
        from kll.emitters.kiibohd.kiibohd import Kiibohd
    except ImportError:
        return
    process, generate = Kiibohd.process, TextEmitter.generate

    def building(self: Any) -> Any:
        self.fill_dict = _Fill(self.fill_dict)
        return process(self)

    def writing(self: Any, output_path: Any) -> Any:
        if isinstance(self.fill_dict, _Fill):
            self.fill_dict = {
                k: str(v) if isinstance(v, _Text) else v for k, v in dict.items(self.fill_dict)
            }
        return generate(self, output_path)

    Kiibohd.process = building
    TextEmitter.generate = writing


def main() -> None:
    _stand_ins()
    import multiprocessing

    multiprocessing.cpu_count = lambda: 1  # the compiler's default --jobs
    _parse_cache()
    _emitter_text()
    sys.argv = ["kll", *sys.argv[1:]]
    runpy.run_module("kll", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
