"""The package's layering: a lower layer never imports a higher one.

Layers, low to high (``docs/design.md``, "Layering"):

0. base: ``errors``, ``_paths``, ``data``, ``limits``, ``files`` (modules that import nothing from
   l2reason) and the root ``l2reason/__init__.py``, whose public names load
   lazily;
1. ``signal``;
2. ``techniques``;
3. engine: ``models``, ``backends``, ``serving`` (the engine-plugin core),
   ``select.py``;
4. programs: ``dspy``, ``integrations``, ``eval``, ``calibrate.py``,
   ``viz.py``; these do not import one another;
5. ``cli.py``.

Every module under ``l2reason/`` is parsed with :mod:`ast`; every import
counts, function-level imports included (they run later, but they are still a
dependency), as do ``importlib.import_module("l2reason....")`` calls with a
literal name. Only the root ``__init__``'s ``if TYPE_CHECKING:`` block is
skipped: it never runs and exists to name the lazy attributes for type
checkers. Inside the package, import the module that defines a name, never the
lazy top-level facade (``from l2reason import X``), which hides the layer ``X``
really lives in.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "l2reason"

BASE, SIGNAL, TECHNIQUE, ENGINE, PROGRAMS, CLI = range(6)
LAYER_NAMES = {
    BASE: "base",
    SIGNAL: "signal",
    TECHNIQUE: "techniques",
    ENGINE: "engine",
    PROGRAMS: "programs",
    CLI: "cli",
}
ORDER = (
    "base (errors, _paths, data, limits, files) <- signal <- techniques <- engine (models, backends, serving, select) "
    "<- programs (dspy, integrations, eval, calibrate, viz) <- cli"
)

#: Module or package -> layer. The longest matching prefix decides.
LAYERS: dict[str, int] = {
    "l2reason.errors": BASE,
    "l2reason._paths": BASE,
    "l2reason.data": BASE,
    "l2reason.limits": BASE,
    "l2reason.files": BASE,
    "l2reason.signal": SIGNAL,
    "l2reason.techniques": TECHNIQUE,
    "l2reason.models": ENGINE,
    "l2reason.backends": ENGINE,
    "l2reason.serving": ENGINE,
    "l2reason.select": ENGINE,
    "l2reason.dspy": PROGRAMS,
    "l2reason.integrations": PROGRAMS,
    "l2reason.eval": PROGRAMS,
    "l2reason.calibrate": PROGRAMS,
    "l2reason.viz": PROGRAMS,
    "l2reason.sae": PROGRAMS,
    "l2reason.sae.cli": CLI,  # builds prompts from the eval's datasets
    "l2reason.cli": CLI,
}
FACADE = "l2reason"


@dataclass(frozen=True)
class Import:
    line: int
    target: str  # the l2reason module or package imported


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").is_file()


def exists(name: str) -> bool:
    base = ROOT / Path(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def layer_of(name: str) -> int | None:
    """The layer of module ``name`` (None = not placed; the facade is base for its own imports)."""
    if name == FACADE:
        return BASE
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len, default=None)
    return None if best is None else LAYERS[best]


def unit_of(name: str) -> str:
    """``l2reason.eval.report`` -> ``l2reason.eval`` (the top-level component)."""
    return ".".join(name.split(".")[:2])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_from(node: ast.ImportFrom, importer: str, importer_is_pkg: bool) -> str | None:
    if node.level == 0:
        return node.module
    pkg = importer.split(".") if importer_is_pkg else importer.split(".")[:-1]
    if node.level > 1:
        pkg = pkg[: len(pkg) - (node.level - 1)]
    return ".".join([*pkg, *([node.module] if node.module else [])])


def imports_of(source: str, importer: str, *, importer_is_pkg: bool = False) -> list[Import]:
    """Every import of an ``l2reason`` module in ``source``, at any depth."""
    tree = ast.parse(source)
    skip: set[int] = set()
    if importer == FACADE:  # the facade's TYPE_CHECKING block never runs
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: list[Import] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [Import(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "l2reason"]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve_from(node, importer, importer_is_pkg)
            if mod is None or mod.split(".")[0] != "l2reason":
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append(Import(node.lineno, sub if a.name != "*" and exists(sub) else mod))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.split(".")[0] == "l2reason"
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            out.append(Import(node.lineno, node.args[0].value))
    return sorted(out, key=lambda i: i.line)


def violations(importer: str, rel_path: str, imports: list[Import]) -> list[str]:
    """The rules ``importer``'s imports break, one line each (``file:line: rule``)."""
    src = layer_of(importer)
    out: list[str] = []
    for imp in imports:
        where = f"{rel_path}:{imp.line}"
        if imp.target == FACADE and importer != FACADE:
            out.append(
                f"{where}: {importer} imports the lazy top-level facade `l2reason`; import the module that "
                "defines the name (e.g. `from l2reason.errors import ConfigError`)"
            )
            continue
        dst = layer_of(imp.target)
        if src is None or dst is None:
            continue  # reported by test_every_module_has_a_layer
        if dst > src:
            out.append(
                f"{where}: {importer} [{LAYER_NAMES[src]}] imports {imp.target} [{LAYER_NAMES[dst]}]: "
                f"a lower layer must not import a higher one; layers: {ORDER}"
            )
        elif src == dst == PROGRAMS and unit_of(importer) != unit_of(imp.target):
            out.append(
                f"{where}: {importer} imports {imp.target}: the programs "
                "(dspy, integrations, eval, calibrate, viz) must not import one another"
            )
    return out


def test_every_module_has_a_layer() -> None:
    missing = [
        f"{p.relative_to(ROOT)}: module {m} is in no layer; add it to LAYERS in {Path(__file__).name}"
        for m, p in all_modules().items()
        if layer_of(m) is None
    ]
    assert not missing, "\n".join(missing)


def test_layer_table_names_real_modules() -> None:
    stale = [name for name in LAYERS if not exists(name)]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_no_lower_layer_imports_a_higher_one() -> None:
    broken: list[str] = []
    for name, path in all_modules().items():
        rel = str(path.relative_to(ROOT))
        imps = imports_of(path.read_text(encoding="utf-8"), name, importer_is_pkg=path.name == "__init__.py")
        broken += violations(name, rel, imps)
    assert not broken, "layering broken:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("importer", "source", "expected"),
    [
        ("l2reason.techniques.fake", "def f():\n    from l2reason.eval.answers import extract_answer\n", 1),
        ("l2reason.signal.fake", "import l2reason.techniques.alrr\n", 1),
        ("l2reason.backends.fake", "from l2reason import HFBackend\n", 1),
        ("l2reason.select", "import importlib\nimportlib.import_module('l2reason.cli')\n", 1),
        ("l2reason.eval.fake", "from l2reason.dspy import engine\n", 1),
        ("l2reason.techniques.fake", "from l2reason.signal import band\nfrom l2reason.errors import ConfigError\n", 0),
        ("l2reason.cli", "from l2reason.eval.cli import eval_cmd\nfrom l2reason.viz import norm_html\n", 0),
        ("l2reason", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from l2reason.cli import app\n", 0),
        ("l2reason", "from l2reason.backends.hf import HFBackend\n", 1),
    ],
)
def test_checker_flags_what_it_should(importer: str, source: str, expected: int) -> None:
    found = violations(importer, "x.py", imports_of(source, importer))
    assert len(found) == expected, found
    for msg in found:  # file:line, then the rule broken
        assert msg.startswith("x.py:"), msg
        assert "must not" in msg or "facade" in msg, msg


def test_low_layers_load_no_program_code() -> None:
    """Importing every module of the lower layers loads no program-level module (a run-time cross-check)."""
    low = sorted(m for m in all_modules() if m != FACADE and (layer_of(m) or 0) <= ENGINE)
    high = sorted({unit_of(m) for m in all_modules() if (layer_of(m) or 0) >= PROGRAMS})
    code = (
        "import importlib, sys\n"
        f"for m in {low!r}:\n"
        "    importlib.import_module(m)\n"
        f"high = {high!r}\n"
        "print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in high)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", f"importing the lower layers loaded: {out.stdout.strip()}"
