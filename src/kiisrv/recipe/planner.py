"""Request -> build plan: everything decided before anything is written or run.

Pure apart from reading the base layouts (cached by the layout store): no database,
no Docker, no clock. The target image is resolved by the caller and passed in, so the
same planner serves HTTP requests, the canary and, later, other machines.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kiisrv.errors import InvalidLayout
from kiisrv.jobs import Job
from kiisrv.recipe import kll, support
from kiisrv.recipe.layout import BuildRequest, Layout, parse_request
from kiisrv.recipe.layouts import BaseFile, LayoutStore
from kiisrv.recipe.versions import Available

# The version of what turns a request into firmware on this side: the KLL generation,
# the build parameters and the rules that pick them. Part of every build's hash, so a
# zip made under older rules is rebuilt, not served. Bump it with any such change.
#   2: warm trees keyed by their configure (a request no longer gets another
#      variant's scancode map); base layout content and NEXT/PREV layer rules.
RECIPE_VERSION = 2


def base_digest(base: Layout) -> str:
    """The base layout's content as parsed: a changed base file changes the KLL."""
    return hashlib.sha256(base.model_dump_json().encode()).hexdigest()


@dataclass(frozen=True)
class Plan:
    """One distinct build: its job, its image, its inputs and the container's parameters."""

    job: Job
    target: Available
    files: list[kll.KllFile]
    params: kll.BuildParams
    layout_name: str
    layout_json: bytes
    board: str
    variant: str
    base_file: BaseFile | None = None  # a memo of this plan is good while it is unchanged
    base_digest: str = ""  # the base layout's content (base_digest): in the manifest
    # Whose turn this build takes (fairness.py): a pseudonym of the rate-limit identity
    # of the client that asked first; None (no client: the canary, `kiisrv build`) waits
    # for no turn. Not part of the hash.
    client: str | None = None

    @property
    def layers(self) -> int:
        return len(self.files)


def request_hash(
    target: Available,
    config: Any,
    params: kll.BuildParams | None = None,
    base: str = "",
) -> str:
    """Identifies everything that decides the firmware, whatever the key order.

    Keys are sorted, but the order of ``animations`` changes the KLL, so it is hashed
    as well. The image id is included so a rebuilt controller image rebuilds firmware;
    the container's parameters, the base layout's content (``base``, base_digest) and
    RECIPE_VERSION so that a change of the server's rules or of a base file (``kiisrv
    layouts fetch``) is not answered with a zip built under the old ones.
    """
    animations = config.get("animations") if isinstance(config, dict) else None
    material = json.dumps(
        {
            "container": target.version.container,
            "image": target.image_id,
            "lts": target.version.lts,
            "animation_order": list(animations) if isinstance(animations, dict) else [],
            "config": config,
            "params": [params.script, params.environment()] if params else None,
            "base": base,
            "recipe": RECIPE_VERSION,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def client_names(name: str, layout: str) -> tuple[str, str]:
    """The board and layout the released Configurators read back from a zip's name.

    Their regex (API.md) splits at the *last* two dashes before the hash, so the board
    may hold a dash (``K-Type``) but the layout part must not: ``My-Ergo`` on MDErgo1
    read as board ``MDErgo1-My`` and the client looked for the wrong firmware file.
    Only ``A-Za-z0-9_.-`` match, so any other character of a Layout becomes ``_``.
    """
    return kll.file_part(name), kll.file_part(layout).replace("-", "_")


def zip_stem(name: str, layout: str, hash_: str) -> str:
    """``<Name>-<Layout>-<hash>``; the KLL file names stay as the reference wrote them."""
    board, variant = client_names(name, layout)
    return f"{board}-{variant}-{hash_}"


class Planner:
    def __init__(self, layouts: LayoutStore) -> None:
        self.layouts = layouts

    def validate(self, body: Any) -> BuildRequest:
        """The request model and a known keyboard, or the ClientError that says why not."""
        request = parse_request(body)
        kll.build_script(request.config)  # UnknownKeyboard before anything else
        return request

    def plan(self, body: Any, target: Available) -> Plan:
        request = self.validate(body)
        layout = request.config
        support.check(layout, target.version)
        lts = target.version.lts
        files, params, base, base_file = self._inputs(layout, lts)
        support.check_keys(layout, base, target.version)
        board = kll.board_name(layout)
        variant = kll.file_part(layout.header.Layout)
        digest = base_digest(base)
        hash_ = request_hash(target, body["config"], params, digest)
        job = Job(
            hash=hash_,
            stem=zip_stem(layout.header.Name, layout.header.Layout, hash_),
            version=target.version.name,
            container=target.version.container,
        )
        return Plan(
            job=job,
            target=target,
            files=files,
            params=params,
            # The name the client looks for when the keyboard is reopened: the one it
            # derives from the zip's name (colemak-dh: MD1.1-colemak_dh.json).
            layout_name="{}-{}.json".format(
                *client_names(layout.header.Name, layout.header.Layout)
            ),
            layout_json=json.dumps(body["config"], ensure_ascii=False).encode(),
            board=board,
            variant=variant,
            base_file=base_file,
            base_digest=digest,
        )

    def _inputs(
        self, layout: Layout, lts: bool
    ) -> tuple[list[kll.KllFile], kll.BuildParams, Layout, BaseFile]:
        """The .kll files and build parameters of a layout, and the base they came from."""
        base, base_file = self.layouts.load_base_file(kll.base_file_names(layout, lts))
        generated = kll.generate(layout, base, lts)
        if not generated:
            raise InvalidLayout("matrix: no key has any layer, so there is nothing to build")
        # File names feed DefaultMapOverride, a space-separated list: no spaces there.
        files = [kll.KllFile(kll.sanitise(f.name), f.content) for f in generated]
        return files, kll.build_params(layout, files), base, base_file
