"""``l2reason eval --system-prompt TEXT|@FILE|none``: an explicit prompt wins over the dataset's own.

The run's ``config.json`` records the prompt (``system_prompt`` and ``system_prompt_override``), and a resume
with another prompt is refused like any other change to what the model is asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l2reason.cli import app
from l2reason.eval.datasets import Item
from l2reason.eval.harness import DEFAULT_SYSTEM, RunConfig, item_messages

OWN = "You are the dataset's own tutor."


class Recorder:
    """The tiny model's backend, keeping every request it is sent."""

    def __init__(self, backend):
        self._be, self.requests = backend, []

    def __getattr__(self, name):
        return getattr(self._be, name)

    def generate_many(self, reqs):
        self.requests += list(reqs)
        return self._be.generate_many(reqs)


def _systems(requests) -> list[str | None]:
    """The system message of each request (None: it has none)."""
    return [next((m.content for m in r.messages if m.role == "system"), None) for r in requests]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two items that bring their own system prompt and one that brings none."""
    path = tmp_path / "items.jsonl"
    rows = [
        {"question": "w1 w2?", "answer": 1, "system": OWN},
        {"question": "w3 w4?", "answer": 2, "system": OWN},
        {"question": "w5 w6?", "answer": 3},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def run_eval_cli(tiny_backend, monkeypatch, data: Path):
    """``eval`` on the three items (greedy pass only): returns (exit code, output, the systems sent)."""
    import l2reason.backends.shared as shared

    def run(out: Path, *opts: str):
        rec = Recorder(tiny_backend)
        monkeypatch.setattr(shared, "make_backend", lambda spec, *a, **k: rec)
        args = ["eval", "-m", "tiny", "-d", f"jsonl:{data}", "--limit", "3", "-n", "0", "-t", "2"]
        res = CliRunner().invoke(
            app, [*args, "--methods", "none", "--gen-methods", "greedy", "--no-report", "--out", str(out), *opts]
        )
        return res.exit_code, " ".join(res.output.split()), _systems(rec.requests)

    return run


def test_item_messages_choose_the_system_prompt() -> None:
    own, bare = Item("a", "q?", "1", {"system": OWN}), Item("b", "q?", "1", {})
    assert [m.content for m in item_messages(own, "mine")] == [OWN, "q?"]  # the dataset's own wins by default
    assert [m.content for m in item_messages(bare, "mine")] == ["mine", "q?"]
    assert [m.content for m in item_messages(own, "mine", override=True)] == ["mine", "q?"]
    assert [m.role for m in item_messages(own, None, override=True)] == ["user"]  # none: no system message
    assert [m.role for m in item_messages(bare, None)] == ["user"]


def test_explicit_prompt_wins_and_is_recorded(run_eval_cli, tmp_path: Path) -> None:
    code, out, systems = run_eval_cli(tmp_path / "default")
    assert code == 0, out
    assert systems == [OWN, OWN, DEFAULT_SYSTEM]
    cfg = RunConfig.model_validate_json((tmp_path / "default" / "config.json").read_text())
    assert (cfg.system_prompt, cfg.system_prompt_override) == (DEFAULT_SYSTEM, False)

    code, out, systems = run_eval_cli(tmp_path / "mine", "--system-prompt", "  Answer with one number.\n")
    assert code == 0, out
    assert systems == ["Answer with one number."] * 3
    cfg = RunConfig.model_validate_json((tmp_path / "mine" / "config.json").read_text())
    assert (cfg.system_prompt, cfg.system_prompt_override) == ("Answer with one number.", True)

    code, out, systems = run_eval_cli(tmp_path / "none", "--system-prompt", "none")
    assert code == 0, out
    assert systems == [None] * 3
    cfg = RunConfig.model_validate_json((tmp_path / "none" / "config.json").read_text())
    assert (cfg.system_prompt, cfg.system_prompt_override) == (None, True)


def test_prompt_from_a_file_and_resume_with_another_prompt_is_refused(run_eval_cli, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Answer with one number.\n", encoding="utf-8")
    run = tmp_path / "run"
    code, out, _ = run_eval_cli(run, "--system-prompt", "Answer with one number.", "--limit", "2")
    assert code == 0, out
    code, out, systems = run_eval_cli(run, "--system-prompt", f"@{prompt}")  # the same prompt: resumes
    assert code == 0, out
    assert systems == ["Answer with one number."]  # only the third item was left
    for other, stored_now in (
        (["--system-prompt", "Be brief."], "system_prompt: stored 'Answer with one number.', now 'Be brief.'"),
        (["--system-prompt", "none"], "system_prompt: stored 'Answer with one number.', now None"),
        ([], "system_prompt_override: stored True, now False"),
    ):
        code, out, systems = run_eval_cli(run, *other)
        assert code == 2 and "error: the run folder holds a run with other settings (" in out, out
        assert stored_now in out and not systems


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("   ", "--system-prompt ' ' is empty; give the prompt's text, @FILE with the text, or 'none'"),
        ("@{d}/absent.txt", "absent.txt does not exist"),
        ("@{d}", "is a directory"),
    ],
)
def test_bad_system_prompt_is_an_error_before_the_model_loads(run_eval_cli, tmp_path: Path, value, message) -> None:
    code, out, systems = run_eval_cli(tmp_path / "run", "--system-prompt", value.format(d=tmp_path))
    assert code == 2 and out.startswith("error:") and message in out, out
    assert not systems and not (tmp_path / "run").exists()
