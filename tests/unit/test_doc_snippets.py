"""The README's and the user docs' code snippets against the real package (fast: no model runs).

Every fenced ```` ```python ```` block of ``README.md`` and ``docs/*.md`` (not ``docs/results/``) must compile,
and every l2reason name it imports must exist: ``from l2reason.x import Y`` imports ``l2reason.x`` and looks
``Y`` up; ``import l2reason.x as m`` imports it, and ``m.attr`` (any depth) is looked up too (names imported
by an earlier block of the same page count: a page reads top to bottom); a call of such a name with keywords must name parameters its signature has (pydantic specs forbid unknown fields). This is what
catches a doc naming a module that moved (``l2reason/cli/``, ``l2reason/langchain/``, ``eval/report/``).

Every line of a ```` ```bash ```` block that runs ``l2reason ...`` or ``.venv/bin/l2reason ...`` is parsed by
the real command's own parser (``l2reason.cli.app`` as a click group, no callbacks run): each subcommand and
each option must exist and take a value exactly when it is given one, and no positional is left over. ``…``
and ``...`` are placeholders (dropped; a line with one may leave out required arguments), ``a|b`` in a
subcommand position means each of them. ``python path.py`` lines name a file of the repository, ``make X`` a
target of the Makefile. The real-model runs of the README's snippets are in
``tests/integration/test_doc_snippets_real.py``; the extraction here is shared with it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = {"…", "...", '"…"'}
_FENCE = re.compile(r"^\s*```(\w*)\s*$")
_L2REASON = re.compile(r"^(?:\.venv/bin/)?l2reason(?:\s|$)")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its file (relative to the repository), first code line (1-based) and text."""

    path: str
    line: int
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def blocks(lang: str, files: list[Path] = DOC_FILES) -> list[Block]:
    """Every fenced block of ``lang`` (``python``, ``bash``) in ``files``, in file order."""
    out: list[Block] = []
    for f in files:
        lines = f.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = _FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            j = i + 1
            while j < len(lines) and not _FENCE.match(lines[j]):
                j += 1
            if m.group(1) == lang:
                out.append(Block(str(f.relative_to(ROOT)), i + 2, lang, "\n".join(lines[i + 1 : j]) + "\n"))
            i = j + 1
    return out


def block_in(path: str, contains: str, lang: str = "python") -> Block:
    """The one ``lang`` block of ``path`` whose text contains ``contains`` (for the real-model tests)."""
    found = [b for b in blocks(lang, [ROOT / path]) if contains in b.text]
    assert len(found) == 1, f"{path}: {len(found)} {lang} blocks contain {contains!r}"
    return found[0]


PY_BLOCKS = blocks("python")
BASH_BLOCKS = blocks("bash")


def test_the_docs_have_snippets():
    # a changed fence syntax must not silently turn every test below into zero cases
    assert len(PY_BLOCKS) >= 20 and len(BASH_BLOCKS) >= 20
    assert {b.path for b in PY_BLOCKS} >= {"README.md", "docs/dspy.md", "docs/langchain.md", "docs/guide.md"}


# ------------------------------------------------------------------------------------------------ python blocks


@pytest.mark.parametrize("block", PY_BLOCKS, ids=lambda b: b.id)
def test_python_block_compiles(block: Block):
    compile(block.text, block.id, "exec")


def _bound_l2reason_names(tree: ast.Module) -> tuple[dict[str, Any], list[str]]:
    """Names the block binds to l2reason objects by its imports, and the problems found importing them."""
    bound: dict[str, Any] = {}
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "l2reason":
            try:
                mod = importlib.import_module(node.module or "")
            except ImportError as e:
                problems.append(f"line {node.lineno}: from {node.module} import ...: {e}")
                continue
            for alias in node.names:
                try:
                    bound[alias.asname or alias.name] = getattr(mod, alias.name)
                except AttributeError:
                    problems.append(f"line {node.lineno}: {node.module} has no {alias.name!r}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "l2reason":
                    continue
                try:
                    mod = importlib.import_module(alias.name)
                except ImportError as e:
                    problems.append(f"line {node.lineno}: import {alias.name}: {e}")
                    continue
                if alias.asname:
                    bound[alias.asname] = mod
                else:
                    bound["l2reason"] = importlib.import_module("l2reason")
    return bound, problems


def _resolve(node: ast.expr, bound: dict[str, Any]) -> tuple[bool, Any, str]:
    """(found, object, dotted name) for ``Name`` / ``Name.attr...`` rooted at a bound l2reason name."""
    if isinstance(node, ast.Name) and node.id in bound:
        return True, bound[node.id], node.id
    if isinstance(node, ast.Attribute):
        ok, obj, name = _resolve(node.value, bound)
        if ok:
            if not hasattr(obj, node.attr):
                raise AttributeError(f"{name} has no attribute {node.attr!r}")
            return True, getattr(obj, node.attr), f"{name}.{node.attr}"
    return False, None, ""


def _unknown_keywords(obj: Any, call: ast.Call) -> list[str]:
    """Keywords of ``call`` that ``obj``'s signature does not take (none when it takes ``**kwargs``)."""
    try:
        params = list(inspect.signature(obj).parameters.values())
        if inspect.isclass(obj) and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            params = list(inspect.signature(obj.__init__).parameters.values())  # a metaclass __call__ (DSPy)
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []
    names = {p.name for p in params}
    return [k.arg for k in call.keywords if k.arg is not None and k.arg not in names]


@pytest.mark.parametrize("block", PY_BLOCKS, ids=lambda b: b.id)
def test_python_block_names_resolve(block: Block):
    tree = ast.parse(block.text)
    # a page reads top to bottom: what its earlier blocks imported is in scope (their problems are theirs)
    bound: dict[str, Any] = {}
    for earlier in PY_BLOCKS:
        if earlier.path == block.path and earlier.line < block.line:
            bound.update(_bound_l2reason_names(ast.parse(earlier.text))[0])
    own, problems = _bound_l2reason_names(tree)
    bound.update(own)
    # a name the block assigns to is not the imported object any more
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.pop(node.id, None)
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.Attribute):
                _resolve(node, bound)
            elif isinstance(node, ast.Call):
                ok, obj, name = _resolve(node.func, bound)
                if ok and (bad := _unknown_keywords(obj, node)):
                    problems.append(f"line {node.lineno}: {name}() takes no {', '.join(bad)}")
        except AttributeError as e:
            problems.append(f"line {node.lineno}: {e}")
    assert not problems, f"{block.id}: " + "; ".join(sorted(set(problems)))


# -------------------------------------------------------------------------------------------------- bash blocks


def _logical_lines(text: str) -> list[str]:
    """The block's command lines: ``\\`` continuations joined, comments and blank lines dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        cur += raw
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        words = shlex.split(cur, comments=True)
        if words:
            out.append(shlex.join(words))
        cur = ""
    return out


def _cli_group() -> Any:
    from typer.main import get_command

    from l2reason.cli import app

    return get_command(app)


def _context(cmd: Any, name: str, parent: Any) -> Any:
    """A context for ``cmd`` that parses nothing, so its parser runs unforgiving (unknown options fail)."""
    return cmd.context_class(cmd, info_name=name, parent=parent, **cmd.context_settings)


def _expand(words: list[str]) -> list[list[str]]:
    """``l2reason sae train|bound …``: one invocation per alternative of a ``|`` word."""
    for i, w in enumerate(words):
        if "|" in w and not w.startswith("-"):
            return [inv for alt in w.split("|") for inv in _expand([*words[:i], alt, *words[i + 1 :]])]
    return [words]


def check_cli_line(words: list[str]) -> list[str]:
    """Problems of one ``l2reason ...`` invocation (``words`` without the program), parsed like the CLI parses.

    Walks the groups (their options first), then parses the command's arguments with its own parser: an
    unknown option, an option missing its value or given one it does not take, and a positional left over
    are problems; so is a missing required positional when the line has no placeholder.
    """
    loose = any(w in PLACEHOLDERS for w in words)
    words = [w for w in words if w not in PLACEHOLDERS]
    cmd, name, ctx = _cli_group(), "l2reason", None
    path = ["l2reason"]
    while True:
        ctx = _context(cmd, name, ctx)
        if "--" in words and getattr(cmd, "allow_extra_args", False):
            words = words[: words.index("--")]  # the rest goes to the engine's server
        try:
            opts, rest, _ = cmd.make_parser(ctx).parse_args(list(words))
        except Exception as e:  # click's NoSuchOption / BadOptionUsage (typer vendors click)
            return [f"{' '.join(path)}: {e}"]
        if not hasattr(cmd, "commands"):
            break
        if not rest:
            return [] if opts.get("show_version") or loose else [f"{' '.join(path)}: no subcommand"]
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            return [f"{' '.join(path)}: no command {rest[0]!r} (has {', '.join(cmd.list_commands(ctx))})"]
        cmd, name, words = sub, rest[0], rest[1:]
        path.append(name)
    problems = []
    stray = [w for w in rest if w.startswith("-") and w != "-"]
    if stray:
        problems.append(f"{' '.join(path)}: no option {', '.join(stray)}")
    elif rest and not getattr(cmd, "allow_extra_args", False):
        problems.append(f"{' '.join(path)}: unexpected argument(s) {rest}")
    if not loose:
        missing = [p.name for p in cmd.params if p.required and opts.get(p.name) is None]
        if missing:
            problems.append(f"{' '.join(path)}: missing {', '.join(missing)}")
    return problems


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {t for m in re.finditer(r"^([\w.-]+(?:\s+[\w.-]+)*)\s*:(?!=)", text, re.M) for t in m.group(1).split()}


def check_bash_line(line: str) -> list[str]:
    """Problems of one command line of a bash block (lines that run nothing of ours are not checked)."""
    words = shlex.split(line)
    if _L2REASON.match(line):
        return [p for inv in _expand(words[1:]) for p in check_cli_line(inv)]
    if words[0] in ("python", "python3", ".venv/bin/python") and len(words) > 1 and words[1].endswith(".py"):
        return [] if (ROOT / words[1]).is_file() else [f"no file {words[1]}"]
    if words[0] == "make":
        targets = _makefile_targets()
        return [f"no make target {t!r}" for t in words[1:] if not t.startswith("-") and t not in targets]
    return []


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=lambda b: b.id)
def test_bash_block_commands_exist(block: Block):
    problems = [f"{line!r}: {p}" for line in _logical_lines(block.text) for p in check_bash_line(line)]
    assert not problems, f"{block.id}:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------- inline code spans


def _prose(path: Path) -> str:
    """The page without its fenced blocks (line numbers kept)."""
    text = path.read_text(encoding="utf-8")
    return re.sub(r"^\s*```.*?^\s*```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)


def _spans(pattern: str) -> list[tuple[str, str]]:
    """``(where, span)`` for every inline code span of the pages' prose that matches ``pattern``."""
    out = []
    for f in DOC_FILES:
        prose = _prose(f)
        for m in re.finditer(pattern, prose):
            out.append((f"{f.relative_to(ROOT)}:{prose[: m.start()].count(chr(10)) + 1}", m.group(1)))
    return out


def _dotted_problem(dotted: str) -> str | None:
    """Why ``l2reason.a.b.C`` does not resolve (the longest importable module, then attributes), or None."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for j in range(i, len(parts)):
            if not hasattr(obj, parts[j]):
                return f"{'.'.join(parts[:j])} has no {parts[j]!r}"
            obj = getattr(obj, parts[j])
        return None
    return "no such module"


def test_inline_l2reason_names_resolve():
    # `l2reason.serving.capabilities.SUPPORTED_INTERVENTIONS` in a sentence must still be there
    spans = _spans(r"`(l2reason(?:\.\w+)+)")
    assert len(spans) >= 20
    problems = [f"{where}: {name}: {why}" for where, name in spans if (why := _dotted_problem(name))]
    assert not problems, "\n".join(problems)


def test_inline_cli_mentions_exist():
    # `l2reason sae export SAE FILE` in a sentence: the command and its options (arguments may be elided)
    spans = _spans(r"`((?:\.venv/bin/)?l2reason [^`]+)`")
    assert len(spans) >= 20
    problems = [
        f"{where}: {span!r}: {p}"
        for where, span in spans
        for inv in _expand(shlex.split(span)[1:])
        for p in check_cli_line([*inv, "…"])
    ]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------- the checks themselves


@pytest.mark.parametrize(
    "line",
    [
        "l2reason ask q --nope",  # unknown option
        "l2reason ask q --select",  # option without its value
        "l2reason ask q --json=1",  # a flag given a value
        "l2reason ask q r",  # a positional left over
        "l2reason nosuch",  # unknown command
        "l2reason sae train|nosuch …",  # one bad alternative
        "l2reason serve --nope x -- --dtype float32",  # serve passes only what follows -- to the engine
        "l2reason report",  # a required argument missing
        ".venv/bin/python recipes/nosuch.py",
        "make nosuch",
    ],
)
def test_the_line_check_catches(line: str):
    assert check_bash_line(line)


@pytest.mark.parametrize(
    "line",
    [
        "l2reason --version",
        "l2reason -v ask q --select l2 -n 8",
        "l2reason ask … --recurse",
        "l2reason serve --model default --device cpu -- --dtype float32",
        "l2reason sae train|bound …",
        "make demo test",
    ],
)
def test_the_line_check_passes(line: str):
    assert check_bash_line(line) == []


def test_the_python_check_catches_moved_modules_and_unknown_fields():
    bad = Block(
        "x.md",
        1,
        "python",
        "import l2reason\nfrom l2reason.integrations.nosuch import ChatL2Reason\nfrom l2reason.select import nosuch\n"
        "from l2reason.backends.base import SelectionSpec\nSelectionSpec(method='l2', nosuch=1)\n"
        "l2reason.nosuch_attribute()\n",
    )
    with pytest.raises(AssertionError) as e:
        test_python_block_names_resolve(bad)
    for what in ("l2reason.integrations.nosuch", "'nosuch'", "takes no nosuch", "nosuch_attribute"):
        assert what in str(e.value)
    assert _dotted_problem("l2reason.eval.harness.nosuch") and _dotted_problem("l2reason.nosuch.x")
    assert _dotted_problem("l2reason.serving.capabilities.SUPPORTED_INTERVENTIONS") is None


def test_keywords_of_dspy_modules_are_checked():
    import l2reason.dspy as l2

    call = ast.parse("L2SelectBest(qa, n=4, nosuch=1)").body[0].value  # type: ignore[attr-defined]
    assert _unknown_keywords(l2.L2SelectBest, call) == ["nosuch"]
