"""The package's layering: a lower layer never imports a higher one.

Layers, low to high (``docs/design.md``, "Layering"):

0. base: ``errors``, ``_paths``, ``data``, ``limits``, ``files`` (modules that import nothing from
   l2reason) and the root ``l2reason/__init__.py``, whose public names load
   lazily;
1. ``signal``;
2. ``techniques``;
3. engine: ``models``, ``backends``, ``serving`` (the engine-plugin core),
   ``select.py``;
4. programs: ``dspy``, ``langchain``, ``eval``, ``sae``, ``calibrate.py``,
   ``viz.py`` (and ``integrations``, the deprecated alias of ``langchain``);
   these do not import one another;
5. ``cli`` (the ``l2reason/cli/`` package, or a ``cli.py``: every module whose
   name starts with ``l2reason.cli``).

The engine plugins (the top-level ``integrations/*/`` packages,
``l2reason_sglang`` and ``l2reason_vllm``) install into an engine's own
environment and run inside its process: they may import ``l2reason.serving``,
``l2reason.techniques``, ``l2reason.signal`` and the base modules, nothing
else of l2reason, and not one another; nothing in ``l2reason`` imports them.

Every module is parsed with :mod:`ast`; every import counts, function-level
imports included (they run later, but they are still a dependency), as do
``importlib.import_module("l2reason....")`` calls with a literal name. Only the
root ``__init__``'s ``if TYPE_CHECKING:`` block is skipped: it never runs and
exists to name the lazy attributes for type checkers. Inside the package,
import the module that defines a name, never the lazy top-level facade
(``from l2reason import X``), which hides the layer ``X`` really lives in.

The parsing helpers here (:func:`imports_of`, :func:`all_modules`) are shared
with ``test_import_cycles.py``.
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

#: top-level package -> the folder that holds it: l2reason, and the engine plugins of integrations/<engine>/
PACKAGE_DIRS: dict[str, Path] = {
    "l2reason": ROOT,
    **{p.parent.name: p.parent.parent for p in sorted((ROOT / "integrations").glob("*/*/__init__.py"))},
}
PLUGINS = tuple(sorted(set(PACKAGE_DIRS) - {"l2reason"}))

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
    "<- programs (dspy, langchain, eval, sae, calibrate, viz) <- cli"
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
    "l2reason.langchain": PROGRAMS,
    "l2reason.integrations": PROGRAMS,  # the deprecated alias of l2reason.langchain (one release)
    "l2reason.eval": PROGRAMS,
    "l2reason.calibrate": PROGRAMS,
    "l2reason.viz": PROGRAMS,
    "l2reason.sae": PROGRAMS,
    "l2reason.cli": CLI,  # the l2reason/cli/ package: every l2reason.cli.* module
}
#: Program units that may import another program unit (importer unit -> the units it may import).
PROGRAM_ALIASES: dict[str, tuple[str, ...]] = {"l2reason.integrations": ("l2reason.langchain",)}
#: What an engine plugin may import of l2reason (prefixes), besides the base layer.
PLUGIN_ALLOWED = ("l2reason.serving", "l2reason.techniques", "l2reason.signal")
FACADE = "l2reason"


@dataclass(frozen=True)
class Import:
    line: int
    target: str  # the module or package imported (l2reason, or an engine plugin package)


def module_name(path: Path) -> str:
    """The dotted name of a source file under ``l2reason/`` or an ``integrations/<engine>/`` package."""
    top = next(t for t, base in PACKAGE_DIRS.items() if path.is_relative_to(base / t))
    parts = list(path.relative_to(PACKAGE_DIRS[top]).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(top: str = "l2reason") -> dict[str, Path]:
    """Every module of top-level package ``top`` (``l2reason`` or a plugin), by dotted name."""
    return {module_name(p): p for p in sorted((PACKAGE_DIRS[top] / top).rglob("*.py"))}


def exists(name: str) -> bool:
    base = PACKAGE_DIRS.get(name.split(".")[0])
    if base is None:
        return False
    path = base / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


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


def _import_module_call(node: ast.AST) -> str | None:
    """The literal name of an ``importlib.import_module("...")`` / ``__import__("...")`` call, else None."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return None
    func, name = node.func, node.args[0].value
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )
    return name if named and isinstance(name, str) else None


def imports_of(
    source: str, importer: str, *, importer_is_pkg: bool = False, skip_type_checking: bool | None = None
) -> list[Import]:
    """Every import of an ``l2reason`` or engine-plugin module in ``source``, at any depth.

    ``skip_type_checking``: leave out ``if TYPE_CHECKING:`` blocks (default: only in the facade).
    """
    tree = ast.parse(source)
    skip: set[int] = set()
    if importer == FACADE if skip_type_checking is None else skip_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    ours = {"l2reason", *PLUGINS}
    out: list[Import] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [Import(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in ours]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve_from(node, importer, importer_is_pkg)
            if mod is None or mod.split(".")[0] not in ours:
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append(Import(node.lineno, sub if a.name != "*" and exists(sub) else mod))
        elif (name := _import_module_call(node)) is not None and name.split(".")[0] in ours:
            out.append(Import(node.lineno, name))
    return sorted(out, key=lambda i: i.line)


def _package_rule(importer: str, target: str) -> str | None:
    """The rule an import breaks across the package boundary (l2reason <-> the engine plugins), if any."""
    src_top, dst_top = importer.split(".")[0], target.split(".")[0]
    if src_top == dst_top:
        return None
    if src_top == "l2reason":
        return f"{importer} imports the engine plugin {target}: plugins install into the engine's own environment"
    if dst_top != "l2reason":
        return f"the engine plugin {importer} imports {target}: plugins must not import one another"
    if layer_of(target) == BASE or any(target == p or target.startswith(p + ".") for p in PLUGIN_ALLOWED):
        return None
    return (
        f"the engine plugin {importer} imports {target}: a plugin may import only "
        f"{', '.join(PLUGIN_ALLOWED)} and the base modules (errors, _paths, data, limits, files)"
    )


def _layer_rule(importer: str, target: str) -> str | None:
    """The layering rule an import inside l2reason breaks, if any."""
    src, dst = layer_of(importer), layer_of(target)
    if src is None or dst is None:
        return None  # reported by test_every_module_has_a_layer
    if dst > src:
        return (
            f"{importer} [{LAYER_NAMES[src]}] imports {target} [{LAYER_NAMES[dst]}]: "
            f"a lower layer must not import a higher one; layers: {ORDER}"
        )
    a, b = unit_of(importer), unit_of(target)
    if src == dst == PROGRAMS and a != b and b not in PROGRAM_ALIASES.get(a, ()):
        return (
            f"{importer} imports {target}: the programs (dspy, langchain, eval, sae, calibrate, viz) "
            "must not import one another"
        )
    return None


def violations(importer: str, rel_path: str, imports: list[Import]) -> list[str]:
    """The rules ``importer``'s imports break, one line each (``file:line: rule``)."""
    out: list[str] = []
    for imp in imports:
        where = f"{rel_path}:{imp.line}"
        if imp.target == FACADE and importer != FACADE:
            out.append(
                f"{where}: {importer} imports the lazy top-level facade `l2reason`; import the module that "
                "defines the name (e.g. `from l2reason.errors import ConfigError`)"
            )
            continue
        rule = _package_rule(importer, imp.target)
        if rule is None and importer.split(".")[0] == "l2reason" == imp.target.split(".")[0]:
            rule = _layer_rule(importer, imp.target)
        if rule is not None:
            out.append(f"{where}: {rule}")
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
    assert PLUGINS == ("l2reason_sglang", "l2reason_vllm"), PLUGINS


@pytest.mark.parametrize("top", ["l2reason", *PLUGINS])
def test_no_lower_layer_imports_a_higher_one(top: str) -> None:
    broken: list[str] = []
    for name, path in all_modules(top).items():
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
        ("l2reason.langchain.fake", "from l2reason.eval.answers import extract_answer\n", 1),
        ("l2reason.techniques.fake", "from l2reason.signal import band\nfrom l2reason.errors import ConfigError\n", 0),
        ("l2reason.cli", "from l2reason.eval.harness import run_eval\nfrom l2reason.viz import norm_html\n", 0),
        ("l2reason.cli.sae", "from l2reason.eval.datasets import load\nfrom l2reason.sae.store import Store\n", 0),
        ("l2reason.sae.fake", "from l2reason.cli._common import app\n", 1),
        ("l2reason.integrations.langchain", "from l2reason.langchain import ChatL2Reason\n", 0),
        ("l2reason.langchain.fake", "from l2reason.integrations.langchain import ChatL2Reason\n", 1),
        ("l2reason", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from l2reason.cli import app\n", 0),
        ("l2reason", "from l2reason.backends.hf import HFBackend\n", 1),
        # the engine plugins: serving, techniques, signal and base only; not one another; l2reason never imports them
        ("l2reason_vllm.fake", "from l2reason.serving.slots import SlotRuntime\nimport l2reason.signal.norms\n", 0),
        ("l2reason_vllm.fake", "from l2reason.techniques.specs import AnySpec\nfrom l2reason.errors import E\n", 0),
        ("l2reason_vllm.fake", "from l2reason_vllm import runtime\n", 0),
        ("l2reason_sglang.fake", "from l2reason.backends.engine_server import flag_value\n", 1),
        ("l2reason_sglang.fake", "def f():\n    from l2reason.models import load_model\n", 1),
        ("l2reason_sglang.fake", "from l2reason import EngineSettings\n", 1),
        ("l2reason_sglang.fake", "from l2reason_vllm.runtime import after_layer\n", 1),
        ("l2reason.backends.fake", "import l2reason_sglang.launch\n", 1),
    ],
)
def test_checker_flags_what_it_should(importer: str, source: str, expected: int) -> None:
    found = violations(importer, "x.py", imports_of(source, importer))
    assert len(found) == expected, found
    for msg in found:  # file:line, then the rule broken
        assert msg.startswith("x.py:"), msg
        assert "must not" in msg or "facade" in msg or "may import only" in msg or "environment" in msg, msg


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
