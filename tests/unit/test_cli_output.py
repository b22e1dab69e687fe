"""What the CLI prints: model text verbatim, tables that fit 80 columns, ``--json`` and ``--version``.

The commands run for real on the tiny random model; only model loading is pointed at it (the spec
``"stored"`` gives a backend whose answers are a fixed text full of rich markup, like a stored result).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l2reason.cli import app

# LaTeX display math, rich markup tags, a closing tag, an emoji code, an escaped bracket, a link tag
MARKUP = r"So \[ 3 \times 18 = 54 \] and [bold]not bold[/bold] [/] [red]x[/red] :smile: \\[y] [link=a]b[/link] [54]"


TOKENS = ["$\\frac{$", "[bold]", "\\[", ":smile:"]  # matplotlib mathtext that does not parse, rich markup


class StoredBackend:
    """The tiny model's backend, but every candidate's text is ``MARKUP`` and its tokens cycle through ``TOKENS``
    (the norms stay the model's)."""

    def __init__(self, backend):
        self._be = backend

    def __getattr__(self, name):
        return getattr(self._be, name)

    def _stored(self, res):
        def stored(c):
            return c.model_copy(update={"text": MARKUP, "tokens": [TOKENS[i % 4] for i in range(len(c.tokens))]})

        return res.model_copy(update={"candidates": [stored(c) for c in res.candidates]})

    def generate(self, req):
        return self._stored(self._be.generate(req))

    def generate_many(self, reqs):
        return [self._stored(r) for r in self._be.generate_many(reqs)]


@pytest.fixture
def cli(tiny_backend, monkeypatch):
    """Run the CLI at 80 columns; ``--model stored`` is :class:`StoredBackend`, ``--model tiny`` the tiny model."""
    import l2reason.backends.shared as shared
    from l2reason.cli import _common

    models = {"stored": StoredBackend(tiny_backend), "tiny": tiny_backend}
    monkeypatch.setattr(shared, "make_backend", lambda spec, *a, **k: models[spec])
    monkeypatch.setenv("COLUMNS", "80")
    for con in (_common.console, _common.err):  # a width fixed when the consoles were made would win over COLUMNS
        monkeypatch.setattr(con, "_width", None)

    def run(*args):
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, (res.output, res.exception)
        return res

    return run


def test_ask_prints_the_answer_verbatim(cli) -> None:
    out = cli("ask", "q", "--model", "stored", "-t", "4").stdout
    assert MARKUP in out.splitlines()
    assert any(sum(repr(t) in line for t in TOKENS) == 3 for line in out.splitlines())  # the top tokens, verbatim
    out = cli("ask", "q", "--model", "stored", "-t", "4", "--select", "majority", "-n", "2").stdout
    assert MARKUP in out.splitlines()


def test_trace_and_demo_print_the_answer_verbatim(cli, tmp_path: Path) -> None:
    out = cli("trace", "q", "--model", "stored", "-t", "4", "-o", tmp_path / "n.png").stdout
    assert out.splitlines()[0] == MARKUP
    assert (tmp_path / "n.png").stat().st_size > 0  # the tokens label the heatmap as they are, $ included
    out = cli("demo", "--model", "stored", "-t", "4", "--problems", "1", "--out", tmp_path / "demo").stdout
    assert MARKUP in out.splitlines()
    assert json.loads((tmp_path / "demo" / "answers.json").read_text())[0]["text"] == MARKUP


def test_version(cli) -> None:
    from importlib.metadata import version

    assert cli("--version").stdout.strip() == f"l2reason {version('l2reason')}"


def _rows(out: str, names: list[str]) -> list[str]:
    """The table lines that start with each of ``names`` (exactly one each: a wrapped row would add lines)."""
    lines = out.splitlines()
    found = []
    for name in names:
        hits = [ln for ln in lines if ln.startswith(name)]
        assert len(hits) == 1, (name, out)
        found.append(hits[0])
    return found


def test_models_fits_80_columns_and_prints_json(cli) -> None:
    from l2reason.models.registry import PACKAGED

    data = json.loads(cli("models", "--json").stdout)
    assert [d["spec"] for d in data] == [f"packaged:{m.name}" for m in PACKAGED.values()]
    assert all({"installed", "converted", "install", "aliases", "notes"} <= set(d) for d in data)
    out = cli("models").stdout
    for row, d in zip(_rows(out, [d["spec"] for d in data]), data, strict=True):
        assert len(row) <= 80 and ", ".join(d["aliases"]) in row
        assert row.split()[-2:] == ["yes" if d["installed"] else "no", "yes" if d["converted"] else "no"]
    for d in data:  # an install command is one line, whole, below the table
        assert d["install"] is None or f"install {d['spec']}: {d['install']}" in out.splitlines()


def test_eval_summary_fits_80_columns_and_prints_json(cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["eval", "-m", "tiny", "-d", "chain_sum", "--limit", "2", "-n", "2", "-t", "3", "--out", run]
    cli(*args, "--methods", "majority,shortest,l2:B/T", "--gen-methods", "greedy,alrr", "--no-report")
    data = json.loads(cli("report", run, "--no-plots", "--n-boot", "100", "--json").stdout)
    names = [m["name"] for m in data["methods"]]
    assert {"majority", "greedy", "alrr", "l2:B/T"} <= set(names)
    out = cli("report", run, "--no-plots", "--n-boot", "100").stdout
    for row in _rows(out, names):
        assert len(row) <= 80 and row.count("[") >= 1, out  # the CI is on the row's line
    summary = json.loads(cli(*args, "--methods", "majority", "--gen-methods", "greedy", "--no-report", "--json").stdout)
    assert summary == {"run_dir": str(run), "stored": {"samples": 2, "alrr": 2, "greedy": 2}, "report": None}


def test_accuracy_table_keeps_every_row_on_one_line() -> None:
    from rich.console import Console

    from l2reason.cli.evaluate import accuracy_table

    wide = {"n": 100, "diff": -0.333, "lo": -0.45, "hi": -0.217}
    rows = [
        {"name": "self-certainty-borda", "items": 1000, "acc": 1.0, "lo": 0.996, "hi": 1.0, "vs_greedy": wide},
        {"name": "static-steer:vectors=a/long/path.json,alpha=2", "items": 60, "acc": 0.033, "lo": 0.0, "hi": 0.083},
        {"name": "empty", "items": 0, "acc": None, "lo": None, "hi": None, "vs_greedy": None, "vs_majority": wide},
    ]
    con = Console(width=80, record=True)
    con.print(accuracy_table(rows))
    lines = con.export_text().splitlines()
    assert all(len(ln) <= 80 for ln in lines)
    body = _rows("\n".join(lines), ["self-certainty-borda", "static-steer", "empty"])
    assert "-33.3 [-45, -22]*" in body[0] and "…" in body[1] and "[–, –]" in body[2]


def test_trace_json(cli, tmp_path: Path) -> None:
    data = json.loads(cli("trace", "q", "--model", "stored", "-t", "4", "-o", tmp_path / "n.png", "--json").stdout)
    assert data["text"] == MARKUP and Path(data["heatmap"]).is_file() and Path(data["html"]).is_file()
    assert [r["layer"] for r in data["layers"]] == [0, 1, 2, 3]
    assert all(r["mean"] > 0 and len(r["top_tokens"]) <= 3 for r in data["layers"])


def test_evaluate_score_of_l2_metric_is_100_times_the_mean_c_t(tiny) -> None:
    """docs/dspy.md labels ``dspy.Evaluate(metric=l2_metric).score``: DSPy prints 100 x the mean C/T."""
    dspy = pytest.importorskip("dspy")
    import l2reason.dspy as l2
    from l2reason.backends.hf import HFBackend

    be = HFBackend(tiny)
    be.eos_ids = set()  # DSPy rejects an empty reply

    class Lenient(dspy.ChatAdapter):
        def parse(self, signature, completion):
            return dict.fromkeys(signature.output_fields, completion)

    dev = [dspy.Example(question=f"w{i} w{i + 1}").with_inputs("question") for i in range(3)]
    prog = l2.L2Observe(dspy.Predict("question -> answer"))
    with dspy.context(lm=l2.l2_lm(backend=be, name="tiny-eval", max_tokens=6, cache=False), adapter=Lenient()):
        res = dspy.Evaluate(devset=dev, metric=l2.l2_metric, display_progress=False)(prog)
    mean_ct = sum(score for _, _, score in res.results) / len(dev)
    assert 0.0 <= mean_ct <= 1.0
    assert res.score == pytest.approx(round(100 * mean_ct, 2))
    assert "res.score / 100   # the mean C/T" in (Path(__file__).parents[2] / "docs" / "dspy.md").read_text()
