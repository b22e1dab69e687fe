"""Fuzz: resuming an evaluation run folder whose results files were torn or hold lines from elsewhere, and
generation methods the loaded model cannot run.

A finished reference run (3 items of a JSONL dataset, N = 2, one greedy pass) is copied for each case, its pass
files are changed in one or two ways, and ``run_eval`` resumes it on the tiny model. What is *bad*:

- a well-formed results line this run did not write: an item that is not among the run's items, an item at
  another index, a line of another pass, or a line with another number of candidates (a resume must refuse
  it, naming the file, instead of keeping it: "items: 4 (limit 3)");
- a generation method the model refuses (``alrr:layers=[99]``, a layer twice, a steering vector of another
  width): refused before any generation, not after the sampling pass;
- a corrupt ``config.json`` or one with other sampling settings.

What is *good* (and must resume to exactly the run's items, each once, with N candidates): torn or garbage
lines, blank lines, a repeated line, lines or whole files removed (those items are generated again).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from _fuzz import assert_clean, call

from l2reason.eval.harness import RunConfig, load_run, run_eval

AREA = "eval resume"
ITEMS = [("2 + 2?", 4), ("w1 w2?", 7), ("hello?", 1), ("3 + 5?", 8)]
LIMIT, N = 3, 2


class Counting:
    """The tiny backend, counting ``generate_many`` calls (a refusal must come before any)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate_many(self, reqs: Any) -> Any:
        self.calls += 1
        return self.inner.generate_many(reqs)


@pytest.fixture(scope="module")
def base(tiny_backend, tmp_path_factory):
    d = tmp_path_factory.mktemp("eval-resume")
    data = d / "items.jsonl"
    data.write_text("\n".join(json.dumps({"question": q, "answer": a}) for q, a in ITEMS) + "\n")
    cfg = _cfg(tiny_backend, data)
    run_eval(tiny_backend, cfg, d / "base", show_progress=False)
    vec = d / "vectors_31.json"
    vec.write_text(json.dumps({"1": [0.1] * 31}))
    return d, cfg


def _cfg(be: Any, data: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        dataset=f"jsonl:{data}", model_id=be.model_id, num_layers=be.num_layers, limit=LIMIT, n=N,
        max_new_tokens=2, methods=["majority"], gen_methods=["greedy"], batch_items=3, logprobs=0,
    )  # fmt: skip
    return RunConfig(**{**base, **kw})


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []


def _records(lines: list[str]) -> list[str]:
    """The lines that are whole results (an earlier change may have torn or added others)."""
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and {"item_id", "result", "correct", "question", "index"} <= rec.keys():
            out.append(line)
    return out


def _foreign(rng: random.Random, line: str, other_pass_line: str) -> str:
    """A well-formed line this run did not write."""
    rec = json.loads(line)
    how = rng.choice(["id", "index", "pass", "n", "other_pass"])
    if how == "id":
        rec["item_id"] = rng.choice(["items.jsonl:99", "gsm_symbolic:0", "x"])
    elif how == "index":
        rec["index"] = rec["index"] + rng.choice([1, 5, 100])
    elif how == "pass":
        rec["pass_name"] = rng.choice(["alrr", "greedy" if rec["pass_name"] == "samples" else "samples"])
    elif how == "n":
        rec["result"]["candidates"] = rec["result"]["candidates"][:1] * rng.choice([1, 3])
        rec["answers"] = rec["answers"][:1] * len(rec["result"]["candidates"])
        rec["correct"] = rec["correct"][:1] * len(rec["result"]["candidates"])
        if len(rec["result"]["candidates"]) == (N if rec["pass_name"] == "samples" else 1):
            rec["item_id"] = "x"  # the count happens to fit: make it foreign another way
    else:
        return other_pass_line
    return json.dumps(rec)


MUTATIONS = ["torn", "garbage", "blank", "repeat", "drop", "delete", "schema", "bytes"]


def _apply(rng: random.Random, how: str, path: Path, other: Path) -> bool:
    """Change one pass file in one way; whether the change is bad (a line this run did not write)."""
    lines = _lines(path)
    if how == "torn" and lines:
        k = rng.randrange(len(lines))
        lines[k] = lines[k][: rng.randrange(1, len(lines[k]))]
    elif how == "garbage":
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(["{not json", "[]", "null", "42", '"x"', "{}"]))
    elif how == "blank":
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(["", "   "]))
    elif how == "repeat" and lines:
        lines.append(rng.choice(lines))
    elif how == "drop" and lines:
        lines.pop(rng.randrange(len(lines)))
    elif how == "delete":
        path.unlink(missing_ok=True)
        return False
    elif how == "schema" and _records(lines):
        rec = json.loads(rng.choice(_records(lines)))
        rec.pop(rng.choice(["question", "result", "correct", "index"]))
        lines.append(json.dumps(rec))
    elif how == "bytes":
        path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe caf\xe9\n")
        return False
    elif how == "foreign" and _records(lines) and _records(_lines(other)):
        # last in the file, so it is the line that counts (a later line for the same item wins)
        lines.append(_foreign(rng, rng.choice(_records(lines)), rng.choice(_records(_lines(other)))))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return True
    path.write_text("\n".join(lines) + ("\n" if lines and rng.random() < 0.8 else ""), encoding="utf-8")
    return False


def _check_run(run_dir: Path, ids: list[str]) -> Any:
    """The resumed run holds exactly the run's items, each once, with N candidates (1 in the greedy pass)."""

    def check(_: Any) -> None:
        run = load_run(run_dir)
        assert [r.item_id for r in run.samples] == ids[:LIMIT], [r.item_id for r in run.samples]
        assert all(len(r.result.candidates) == N and len(r.correct) == N for r in run.samples)
        assert [r.item_id for r in run.gens["greedy"]] == ids[:LIMIT]
        assert all(len(r.result.candidates) == 1 for r in run.gens["greedy"])

    return check


BAD_GEN = ["alrr:layers=[99]", "alrr:layers=[1,1]", "erss:layers=[-1,3]", "suppress:layers=[7]"]
GOOD_GEN = ["alrr:layers=[1]", "suppress-high", "alrr:K=2"]


def test_fuzz_eval_resume(base, tiny_backend, tmp_path):
    from l2reason.eval.datasets import load_dataset

    d, cfg = base
    ids = [it.id for it in load_dataset(cfg.dataset).items()]
    samples, greedy = "samples.jsonl", "gen/greedy.jsonl"
    rng = random.Random(20267)
    be = Counting(tiny_backend)
    for i in range(140):
        run_dir = tmp_path / f"r{i}"
        shutil.copytree(d / "base", run_dir)
        kind = rng.random()
        run_cfg, bad, what = cfg, False, ""
        if kind < 0.75:
            hows = [rng.choice(MUTATIONS) for _ in range(rng.choice([0, 1, 1]))]
            hows += ["foreign"] if rng.random() < 0.45 or not hows else []  # last: no later change undoes it
            done = []
            for how in hows:
                which = rng.choice([samples, greedy])
                other = greedy if which == samples else samples
                bad = _apply(rng, how, run_dir / which, run_dir / other) or bad
                done.append(f"{how} {which}")
            what = f"pass files: {', '.join(done)}"
        elif kind < 0.87:
            gen = rng.choice([*BAD_GEN, f"static-steer:vectors={d / 'vectors_31.json'}", *GOOD_GEN])
            bad = gen not in GOOD_GEN
            run_cfg = cfg.model_copy(update={"gen_methods": ["greedy", gen], "gen_limit": 1})
            what = f"gen method {gen}"
        else:
            how = rng.choice(["torn", "seed", "n", "list", "ok"])
            path = run_dir / "config.json"
            if how == "torn":
                path.write_text(path.read_text()[:50])
            elif how == "list":
                path.write_text("[]")
            elif how in ("seed", "n"):
                run_cfg = cfg.model_copy(update={how: 7})
            bad = how != "ok"
            what = f"config ({how})"
        label = f"resume #{i}: {what}: samples {_lines(run_dir / samples)!r:.200}"

        def resume(run_cfg: RunConfig = run_cfg, run_dir: Path = run_dir, before: int = be.calls) -> Any:
            try:
                return run_eval(be, run_cfg, run_dir, show_progress=False)
            except Exception as e:
                if be.calls != before:  # a refusal is due before any generation
                    raise LateRefusal(f"refused only after {be.calls - before} generation call(s): {e}") from e
                raise

        call(AREA, label, resume, bad=bad, check=_check_run(run_dir, ids))
    assert_clean(AREA, at_least=140)


class LateRefusal(Exception):
    """A run refused only after it generated (a failure: the input was known up front)."""
