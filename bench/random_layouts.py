"""Random layouts the released Configurator could make, built on a real server (#13, item 6).

    # dry run: generate, plan (refusals up front) and write the .kll, no build
    .venv/bin/python bench/random_layouts.py --layouts ../shared/conformance/layouts \\
        --seed 13 --latest 40 --lts 20 --dry-run
    # real builds against the controller images kiisrv-controller-05x:latest
    .venv/bin/python bench/random_layouts.py --layouts ../shared/conformance/layouts \\
        --seed 13 --latest 40 --lts 20 --image-prefix kiisrv- --image-tag latest \\
        --out bench/results-random.md [--keep /tmp/random-layouts]
    # re-derive the key list from a fetched Configurator (a bare git dir)
    .venv/bin/python bench/random_layouts.py derive \\
        --configurator /work/.mirror/kiibohd+configurator/repo --tag v1.1.0

The generator plays a user of the released Configurator (v1.1.0, the last release):
it opens a stock layout the way the client loads it (``normalize``: every key looked up
by alias, a known one replaced by the picker's key), edits it, and saves it the way the
client saves it (``mangle``). The edits are the ones its UI offers:

- keys on layers 0..7 (its layer tabs) from the key picker's ten categories; ``CLEAR``
  removes the key from the layer; a layer key (ƒ1-7, LOCK-1..7, LATCH-1..7) on layer 0
  reaches each added layer;
- macros per layer (trigger and output combos from the same picker, saved in
  ``macros`` and injected into that layer's custom KLL as the client does);
- animations: a custom one (settings + frames) or a canned one from the layout's
  ``canned`` (with its custom-KLL injection on layer 0), and animation keys
  ``#:A[name](start|pause|stop|single)`` on keys;
- free custom KLL per layer (remaps, chords, sequences, text, animation triggers);
- now and then a Layout name typed in an imported layout (``colemak-dh``, ``ÇaVa``).

The picker's keys are ``configurator_keys.json`` beside this file: derived from
``src/common/keys/predefined.js`` at the Configurator's tag v1.1.0 by ``derive`` (the
entries with a category are the picker's; a key is saved as ``aliases[resultDef]``,
macro keys as ``aliases[0]``). Nothing else of the Configurator is used.

Each generated layout is POSTed to a real ``kiisrv serve`` (started here, as
bench_real.py does) on latest or lts and counted: built (200 and firmware in the zip),
refused up front (4xx other than 422, with the message) or failed (422 or 5xx: the
error sentence). Seeded: the same ``--seed`` makes the same layouts.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import copy
import io
import json
import random
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KEYS_FILE = HERE / "configurator_keys.json"
PICKER = ("core", "standard", "special", "visuals", "multimedia", "numpad")
PICKER += ("international", "mouse", "macros", "test")
# How often a user opens each category: mostly ordinary keys, LED tests rarely.
WEIGHTS = (30, 20, 12, 6, 8, 6, 4, 5, 6, 1)
# A macro's trigger is recorded from key presses: keys the keyboard sends.
TRIGGER_GROUPS = ("core", "standard", "numpad")
ANIMATION_ACTIONS = ("start", "pause", "stop", "single")
TYPED_LAYOUTS = ("colemak-dh", "ÇaVa", "My Layout", "dvorak", "test.1")


# -- the Configurator's keys --------------------------------------------------------------


def derive(gitdir: Path, tag: str) -> list[dict[str, Any]]:
    """The key table of predefined.js at ``tag``, as data (Python literals once the
    category names and styles are replaced)."""
    src = subprocess.run(
        ["git", "--git-dir", str(gitdir), "show", f"{tag}:src/common/keys/predefined.js"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    body = src.split("const keys = [", 1)[1].split("\n  ];", 1)[0]
    lines = [ln for ln in body.splitlines() if not ln.strip().startswith("//")]
    text = "\n".join(re.sub(r"\],\s*//.*$", "],", ln) for ln in lines)
    text = re.sub(r"\bc\.(\w+)", lambda m: repr(m[1]), text)
    text = re.sub(r"\{[^{}]*fontSize[^{}]*\}", "None", text)
    text = text.replace("null", "None")
    category = dict(re.findall(r"(\w+): '(\w+)'", src.split("const Category", 1)[1][:400]))
    out = []
    for entry in ast.literal_eval("[" + text + "]"):
        name, label, aliases, group, *rest = [*list(entry), None, None, None]
        out.append(
            {
                "name": name,
                "label": label,
                "aliases": aliases or [label],
                "group": category.get(group, group) if group else None,
                "triggerDef": rest[1] or 0,
                "resultDef": rest[2] or 0,
            }
        )
    return out


@dataclass
class Keys:
    table: list[dict[str, Any]]
    by_alias: dict[str, dict[str, Any]] = field(default_factory=dict)
    picker: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for k in self.table:  # later entries win, as the client's reduce does
            for a in k["aliases"]:
                self.by_alias[re.sub(r"\s", "", a).upper()] = k
        self.picker = [k for k in self.table if k["group"] in PICKER]

    def lookup(self, alias: str) -> dict[str, Any] | None:
        return self.by_alias.get(re.sub(r"\s", "", alias).upper())

    def pick(self, rng: random.Random, groups: tuple[str, ...] = ()) -> dict[str, Any]:
        """The user opens a category, then clicks a key (never CLEAR)."""
        group = rng.choice(groups) if groups else rng.choices(PICKER, WEIGHTS)[0]
        return rng.choice([k for k in self.picker if k["group"] == group])


def load_keys(configurator: Path | None, tag: str) -> Keys:
    if configurator is not None:
        return Keys(derive(configurator, tag))
    return Keys(json.loads(KEYS_FILE.read_text(encoding="utf-8"))["keys"])


# -- load, edit, save as the client does ---------------------------------------------------

_ANIM_KEY = re.compile(r"#:A\[(.*)]\((start|stop|pause|single)\)")


def saved_key(key: dict[str, Any]) -> dict[str, str]:
    """mangleLayer: the picker key as the client writes it."""
    return {"key": key["aliases"][key["resultDef"]], "label": key["label"]}


def normalize_layer(keys: Keys, layer: dict[str, Any]) -> dict[str, str]:
    """normalizeLayer then mangleLayer: what a stock key becomes after open + save."""
    known = keys.lookup(layer["key"])
    if known is not None:
        return saved_key(known)
    m = _ANIM_KEY.search(layer["key"])
    if m:
        return {"key": layer["key"], "label": f"A:{m[2]}"}
    return {"key": layer["key"], "label": layer.get("label") or "RAW"}


def frames_to_string(frames: list[str]) -> str:
    return "\n".join(
        f + ";" if f.lstrip() and not f.lstrip().startswith("#") else f for f in frames
    )


def string_to_frames(text: str) -> list[str]:
    return [x for x in re.split(r";[\n]*", text) if x]


INJ_START = "\n#~~~START ANIMATION (${__NAME__}) INJECTION~~~#\n"
INJ_END = "\n#~~~END ANIMATION (${__NAME__}) INJECTION~~~#\n"


def to_kll(alias: str) -> str:
    if alias.startswith("#:"):
        return alias[2:]
    if alias.startswith("CONS:"):
        return f'CONS"{alias[5:]}"'
    if alias.startswith("SYS:"):
        return f'SYS"{alias[5:]}"'
    return f'U"{alias}"'


def macro_to_kll(keys: Keys, macro: dict[str, Any]) -> str:
    def seq(combos: list[list[str]], trigger: bool) -> str:
        out = []
        for combo in combos:
            parts = []
            for alias in combo:
                k = keys.lookup(alias)
                assert k is not None, alias
                parts.append(to_kll(k["aliases"][k["triggerDef"] if trigger else k["resultDef"]]))
            out.append(" + ".join(parts))
        return ", ".join(out)

    return (
        f"# Macro '{macro['name']}'\n{seq(macro['trigger'], True)} : {seq(macro['output'], False)};"
    )


def mangle(keys: Keys, cfg: dict[str, Any]) -> dict[str, Any]:
    """What the client saves and sends (mangle.js)."""
    custom = dict(cfg["custom"])
    for layer, macros in cfg["macros"].items():
        custom[layer] = (
            custom.get(layer, "")
            + INJ_START
            + "\n".join(macro_to_kll(keys, m) for m in macros)
            + INJ_END
        )
    out = {
        "header": cfg["header"],
        "defines": cfg["defines"],
        "matrix": cfg["matrix"],
        "leds": cfg["leds"],
        "custom": custom,
        "animations": {
            n: {**a, "frames": string_to_frames(a["frames"])} for n, a in cfg["animations"].items()
        },
        "macros": cfg["macros"],
        "canned": cfg["canned"],
    }
    return out


def normalize(keys: Keys, doc: dict[str, Any]) -> dict[str, Any]:
    """normalize.js: the layout as the client holds it after opening it."""
    min_x = min(k.get("x", 0) for k in doc["matrix"])
    min_y = min(k.get("y", 0) for k in doc["matrix"])
    matrix = []
    for k in doc["matrix"]:
        layers = {n: normalize_layer(keys, lay) for n, lay in k["layers"].items()}
        matrix.append(
            {**k, "x": k.get("x", 0) - min_x, "y": k.get("y", 0) - min_y, "layers": layers}
        )
    return {
        "header": dict(doc.get("header") or {}),
        "defines": list(doc.get("defines") or []),
        "matrix": matrix,
        "leds": doc.get("leds") or [],
        "custom": dict(doc.get("custom") or {}),
        "animations": {
            n: {**a, "frames": frames_to_string(a.get("frames") or [])}
            for n, a in (doc.get("animations") or {}).items()
        },
        "macros": copy.deepcopy(doc.get("macros") or {}),
        "canned": doc.get("canned") or {},
    }


def _color(rng: random.Random, mono: bool) -> str:
    if mono:
        return str(rng.randrange(256))
    return ",".join(str(rng.randrange(256)) for _ in range(3))


def _process_canned(can: dict[str, Any], data: dict[str, Any], text: str) -> str:
    """canned.js process_v1: colors (with interpolation to another color), selects
    (only the first occurrence, as String.replace does)."""
    for item in can.get("configurable", []):
        value = data[item["name"]]
        if item["type"] == "color":
            rx = re.compile(
                r"\$\{" + re.escape(item["name"]) + r":?([\w.#]+)?:?([\d.]+)?!?([\d.]+)?}"
            )

            def color(m: re.Match[str], value: dict[str, int] = value) -> str:
                c = [value["r"], value["g"], value["b"]]
                if m[1] and m[2] and m[1] in data:
                    to = data[m[1]]
                    p = float(m[2])
                    c = [
                        round(a + (b - a) * p)
                        for a, b in zip(c, [to["r"], to["g"], to["b"]], strict=True)
                    ]
                if m[3]:
                    c = [round(a * (1 - float(m[3]))) for a in c]
                return ",".join(str(max(0, min(255, int(x)))) for x in c)

            text = rx.sub(color, text)
        else:
            text = text.replace("${" + item["name"] + "}", str(value), 1)
    return text


def _base_keys(cfg: dict[str, Any]) -> list[str]:
    """Layer-0 keys of the layout that are plain USB keys: triggers a user would type."""
    out = []
    for k in cfg["matrix"]:
        key = k["layers"].get("0", {}).get("key", "")
        if key and not key.startswith(("#:", "CONS:", "SYS:")) and '"' not in key:
            out.append(key)
    return out


def edit(keys: Keys, stock: dict[str, Any], rng: random.Random) -> tuple[dict[str, Any], list[str]]:
    """One user's session on a stock layout: the saved layout and what was done."""
    cfg = normalize(keys, stock)
    did: list[str] = []
    matrix = cfg["matrix"]
    used = {int(n) for k in matrix for n in k["layers"]}
    top = max(used)
    new_top = min(7, top + rng.choice((0, 0, 1, 1, 2, 3)))
    mono = "(255)" in json.dumps(stock.get("animations") or {}) or not stock.get("leds")
    has_visuals = "animations" in stock

    # Animations first, so keys and custom KLL can use them.
    anims: list[str] = list(cfg["animations"])
    if has_visuals and rng.random() < 0.6:
        canned = cfg["canned"]
        if canned and rng.random() < 0.5:
            cname = rng.choice(sorted(canned))
            can = canned[cname]
            data: dict[str, Any] = {}
            for item in can.get("configurable", []):
                if item["type"] == "color":
                    data[item["name"]] = {c: rng.randrange(256) for c in "rgb"}
                elif item.get("values"):
                    data[item["name"]] = rng.choice(item["values"])["value"]
                else:
                    data[item["name"]] = item.get("default")
            name = f"my_{cname}_{rng.randrange(100)}"
            frames = [_process_canned(can, data, f) for f in can["frames"]]
            settings = _process_canned(can, data, can["settings"])
            cfg["animations"][name] = {
                "type": "canned",
                "settings": settings,
                "frames": frames_to_string(frames),
            }
            if can.get("custom-kll"):
                kll = _process_canned(can, data, can["custom-kll"])
                add = (INJ_START + kll + INJ_END).replace("${__NAME__}", name)
                cfg["custom"]["0"] = cfg["custom"].get("0", "") + add
            did.append(f"canned animation {cname} as {name}")
        else:
            name = f"anim_{rng.randrange(1000)}"
            settings = rng.choice(
                (
                    "loop, replace:clear, pfunc:interp",
                    "start, loop, framedelay:2, replace:clear",
                    "loops:1, replace:stack",
                    "",
                )
            )
            frames = [
                f"P[c:0%]({_color(rng, mono)}), P[c:100%]({_color(rng, mono)})"
                for _ in range(rng.randint(1, 3))
            ]
            if rng.random() < 0.2:
                frames.insert(0, "# my frames")
            cfg["animations"][name] = {
                "type": "custom",
                "settings": settings,
                "frames": frames_to_string(frames),
            }
            did.append(f"custom animation {name} ({settings or 'no settings'})")
        anims.append(name)

    # Layer keys on layer 0 for the layers the user adds.
    for n in range(top + 1, new_top + 1):
        kind = rng.choice(("fn", "lck", "lat")) if n <= 7 else "fn"
        k = keys.lookup({"fn": f"FUNCTION{n}", "lck": f"LOCK{n}", "lat": f"LATCH{n}"}[kind])
        assert k is not None
        target = rng.choice(matrix)
        target["layers"]["0"] = saved_key(k)
        did.append(f"layer 0 code {target.get('code')}: {k['label']} (adds layer {n})")

    # Keys changed on layers 0..new_top.
    for _ in range(rng.randint(3, 15)):
        layer = str(rng.randint(0, new_top))
        target = rng.choice(matrix)
        if anims and rng.random() < 0.08:
            v = f"#:A[{rng.choice(anims)}]({rng.choice(ANIMATION_ACTIONS)})"
            target["layers"][layer] = {"key": v, "label": v.split("(")[-1]}
            did.append(f"layer {layer} code {target.get('code')}: {v}")
            continue
        k = keys.pick(rng)
        if k["name"] == "fw/clear" or rng.random() < 0.03:
            if layer in target["layers"]:
                del target["layers"][layer]
                did.append(f"layer {layer} code {target.get('code')}: CLEAR")
            continue
        target["layers"][layer] = saved_key(k)
        value = k["aliases"][k["resultDef"]]
        did.append(f"layer {layer} code {target.get('code')}: {k['label']} = {value}")
    for k in matrix:  # JS objects list integer keys in numeric order
        k["layers"] = dict(sorted(k["layers"].items(), key=lambda kv: int(kv[0])))

    # Macros.
    def alias0(groups: tuple[str, ...] = ()) -> str:
        k = keys.pick(rng, groups)
        while k["name"] == "fw/clear":
            k = keys.pick(rng, groups)
        return str(k["aliases"][0])

    for layer in range(new_top + 1):
        if rng.random() < 0.25:
            macros = cfg["macros"].setdefault(str(layer), [])
            trig = [[alias0(TRIGGER_GROUPS) for _ in range(rng.randint(1, 2))]]
            out = [[alias0() for _ in range(rng.randint(1, 2))] for _ in range(rng.randint(1, 3))]
            macros.append({"name": f"Macro {len(macros) + 1}", "trigger": trig, "output": out})
            did.append(f"layer {layer} macro {trig} -> {out}")

    # Custom KLL.
    base = _base_keys(cfg) or ["A"]
    for layer in range(new_top + 1):
        if rng.random() >= 0.3:
            continue
        lines = []
        for _ in range(rng.randint(1, 3)):
            a, b = rng.sample(base, 2) if len(base) > 1 else (base[0], base[0])
            res = to_kll(alias0())
            shape = rng.randrange(6)
            if shape == 0:
                lines.append(f'U"{a}" : {res};')
            elif shape == 1:
                lines.append(f'U"{a}" + U"{b}" : {res};')
            elif shape == 2:
                lines.append(f'U"{a}" : {res}, {to_kll(alias0())};')
            elif shape == 3:
                lines.append(f"U\"{a}\" : 'hello';")
            elif shape == 4 and anims:
                lines.append(f'U"{a}" :+ A[{rng.choice(anims)}]({rng.choice(ANIMATION_ACTIONS)});')
            else:
                lines.append(f'# a note from the user\nU"{a}" : U"{b}";')
        text = "\n".join(lines)
        old = cfg["custom"].get(str(layer), "")
        cfg["custom"][str(layer)] = (old + "\n" if old else "") + text
        did.append(f"layer {layer} custom KLL: {text!r}")

    if rng.random() < 0.1:
        typed = rng.choice(TYPED_LAYOUTS)
        cfg["header"]["Layout"] = typed
        did.append(f"header Layout typed as {typed!r}")
    cfg["header"]["Author"] = f"random {rng.randrange(1 << 30)}"
    return mangle(keys, cfg), did


# -- the run -------------------------------------------------------------------------------


@dataclass
class Case:
    channel: str
    index: int
    stock: str
    doc: dict[str, Any]
    did: list[str]
    outcome: str = ""  # built / refused / failed
    message: str = ""
    seconds: float = 0.0


def generate(layouts: Path, seed: int, counts: dict[str, int], keys: Keys) -> list[Case]:
    sys.path.insert(0, str(HERE.parent / "src"))
    from kiisrv.tools.canary import layout_files

    files = layout_files(layouts)
    cases = []
    for channel, n in counts.items():
        order = list(files)
        random.Random(f"{seed}:{channel}:order").shuffle(order)
        for i in range(n):
            path = order[i % len(order)]
            rng = random.Random(f"{seed}:{channel}:{i}")
            stock = json.loads(path.read_text(encoding="utf-8"))
            doc, did = edit(keys, stock, rng)
            cases.append(Case(channel, i, path.name, doc, did))
    return cases


def dry_run(cases: list[Case], layouts: Path, keep: Path | None) -> None:
    """Plans each request as the server would (refusals up front, KLL generated)."""
    from kiisrv.errors import ClientError
    from kiisrv.recipe.layouts import LayoutStore
    from kiisrv.recipe.planner import Planner
    from kiisrv.recipe.versions import Available, Version

    targets = {
        "latest": Available(
            Version("latest", "stable", "controller-057", "v0.5.7"), "i", "x", None
        ),
        "lts": Available(Version("lts", "lts", "controller-050", "v0.5.0"), "i", "y", None),
    }
    planner = Planner(LayoutStore(layouts))
    for c in cases:
        body = json.loads(json.dumps({"config": c.doc, "env": c.channel}))
        try:
            plan = planner.plan(body, targets[c.channel])
        except ClientError as e:
            c.outcome, c.message = "refused", str(e)
            continue
        c.outcome = "planned"
        if keep is not None:
            d = keep / f"{c.channel}-{c.index:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for f in plan.files:
                (d / f.name).write_text(f.content, encoding="utf-8")


async def real_run(
    cases: list[Case], layouts: Path, prefix: str, tag: str, keep: Path | None
) -> None:
    sys.path.insert(0, str(HERE))
    from bench_real import server

    image = f"{prefix}controller-057:{tag}"  # the server finds every version's image by these
    async with server(image, layouts, "0", "random", max_builds=2) as http:
        print("versions:", (await http.get("/versions")).text, flush=True)
        sem = asyncio.Semaphore(2)

        async def one(c: Case) -> None:
            async with sem:
                t = time.perf_counter()
                r = await http.post("/", json={"config": c.doc, "env": c.channel})
                c.seconds = time.perf_counter() - t
                json_ct = r.headers.get("content-type", "").startswith("application/json")
                body = r.json() if json_ct else {}
                if r.status_code == 200:
                    name = body["filename"].rsplit("/", 1)[1]
                    z = await http.get(f"/tmp/{name}")
                    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
                        names = zf.namelist()
                    fw = [n for n in names if n.endswith("kiibohd.dfu.bin")]
                    c.outcome = "built" if fw else "failed"
                    c.message = "" if fw else f"200 but no firmware in {name}: {names}"
                elif r.status_code == 422 or r.status_code >= 500:
                    c.outcome = "failed"
                    c.message = f"{r.status_code}: {body.get('error', r.text)}"
                    if keep is not None and body.get("filename"):
                        name = body["filename"].rsplit("/", 1)[1]
                        z = await http.get(f"/tmp/{name}")
                        (keep / name).write_bytes(z.content)
                else:
                    c.outcome = "refused"
                    c.message = f"{r.status_code}: {body.get('error', r.text)}"
                print(
                    f"{c.channel} {c.index:02d} {c.stock}: {c.outcome} {c.seconds:.1f}s "
                    f"{c.message[:300]}",
                    flush=True,
                )

        await asyncio.gather(*(one(c) for c in cases))


def report(cases: list[Case], command: str, seed: int, dry: bool) -> str:
    lines = [
        "# Random Configurator layouts on real images (#13, item 6)",
        "",
        "Generated by `bench/random_layouts.py` (see its docstring for how the layouts are",
        "made: the released Configurator v1.1.0's key picker, layers, macros, animations and",
        "custom KLL, saved as the client saves them).",
        "",
        "```",
        command,
        "```",
        "",
        f"Seed: {seed}.{' Dry run: planned only, no build.' if dry else ''}",
        "",
        "| channel | layouts | built | refused up front (4xx) | failed (422/5xx) |",
        "|---|---|---|---|---|",
    ]
    for ch in dict.fromkeys(c.channel for c in cases):
        cs = [c for c in cases if c.channel == ch]
        n = {o: sum(c.outcome == o for c in cs) for o in ("built", "planned", "refused", "failed")}
        lines.append(
            f"| {ch} | {len(cs)} | {n['built'] or n['planned']} | {n['refused']} | {n['failed']} |"
        )
    for kind in ("failed", "refused"):
        bad = [c for c in cases if c.outcome == kind]
        lines += ["", f"## {kind.capitalize()} ({len(bad)})", ""]
        if not bad:
            lines.append("None.")
        for c in bad:
            msg = c.message.replace("\n", " ")
            lines.append(f"- {c.channel} #{c.index} (from `{c.stock}`): {msg}")
    lines += ["", "## Every layout", ""]
    for c in cases:
        lines.append(
            f"- {c.channel} #{c.index} `{c.stock}`: **{c.outcome}**"
            + (f" ({c.seconds:.1f} s)" if c.seconds else "")
            + f"; {len(c.did)} edits: "
            + "; ".join(d.replace("\n", " ").replace("|", "\\|") for d in c.did[:8])
            + (" …" if len(c.did) > 8 else "")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "derive":
        p = argparse.ArgumentParser(prog="random_layouts.py derive")
        p.add_argument("--configurator", type=Path, required=True, help="its git dir")
        p.add_argument("--tag", default="v1.1.0")
        a = p.parse_args(sys.argv[2:])
        table = derive(a.configurator, a.tag)
        KEYS_FILE.write_text(
            json.dumps(
                {
                    "source": f"kiibohd/configurator {a.tag} src/common/keys/predefined.js",
                    "derived_by": "bench/random_layouts.py derive",
                    "keys": table,
                },
                ensure_ascii=False,
                indent=1,
            )
            + "\n",
            encoding="utf-8",
        )
        print(f"{len(table)} keys -> {KEYS_FILE}")
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layouts", type=Path, required=True)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--latest", type=int, default=40)
    p.add_argument("--lts", type=int, default=20)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--image-prefix", default="kiisrv-")
    p.add_argument("--image-tag", default="latest")
    p.add_argument("--configurator", type=Path, help="read the keys from this git dir instead")
    p.add_argument("--tag", default="v1.1.0")
    p.add_argument("--keep", type=Path, help="write layouts, .kll files and error zips here")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    keys = load_keys(a.configurator, a.tag)
    cases = generate(a.layouts, a.seed, {"latest": a.latest, "lts": a.lts}, keys)
    if a.keep is not None:
        a.keep.mkdir(parents=True, exist_ok=True)
        for c in cases:
            (a.keep / f"{c.channel}-{c.index:02d}.json").write_text(
                json.dumps(c.doc, ensure_ascii=False, indent=1), encoding="utf-8"
            )
    if a.dry_run:
        dry_run(cases, a.layouts, a.keep)
    else:
        asyncio.run(real_run(cases, a.layouts, a.image_prefix, a.image_tag, a.keep))
    command = ".venv/bin/python bench/random_layouts.py " + " ".join(
        x if " " not in x else repr(x) for x in sys.argv[1:]
    )
    text = report(cases, command, a.seed, a.dry_run)
    if a.out:
        a.out.write_text(text, encoding="utf-8")
    print(text.split("## Every layout")[0])


if __name__ == "__main__":
    main()
