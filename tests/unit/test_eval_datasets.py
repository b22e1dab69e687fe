"""Offline datasets: items, stable ids, scoring, the name registry and its errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from l2reason.errors import ConfigError
from l2reason.eval import datasets as D
from l2reason.eval.datasets import (
    DATASETS,
    Dataset,
    EvalsJSONL,
    GSMSymbolic,
    Item,
    JSONLDataset,
    load_dataset,
)

needs_evals = pytest.mark.skipif(
    importlib.util.find_spec("evals") is None,
    reason='needs: pip install --no-deps "evals==3.0.1.post1"',
)


def test_gsm_symbolic_items_and_gold() -> None:
    ds = GSMSymbolic(seed=42, size=5)
    items = ds.items()
    assert isinstance(ds, Dataset)
    assert len(items) == 5
    first = items[0]
    assert first.id == "gsm_symbolic:seed=42:0"
    assert first.answer == "70"
    assert first.question.startswith("There are 12 students playing basketball")
    assert first.question.endswith("Give the result as your final answer. Do not include units.")
    assert first.meta["answer_cot"].endswith("#### 70")
    # The worked solution scores as right; a wrong number does not.
    assert ds.score(first.meta["answer_cot"], first)
    assert ds.score("so there are 70 students in total.", first)
    assert not ds.score("The answer is 71.", first)
    assert not ds.score(None, first)


def test_gsm_symbolic_non_integer_gold() -> None:
    item = GSMSymbolic(seed=7, size=1).items()[0]
    assert item.answer == "1687.5"
    assert GSMSymbolic(seed=7, size=1).score("He makes $1,687.50 a week.", item)


def test_ids_stable_across_runs_and_sizes() -> None:
    a = load_dataset("gsm_symbolic", size=30).items(limit=5, offset=20)
    b = load_dataset("gsm_symbolic:seed=42", size=100).items(limit=5, offset=20)
    assert [x.id for x in a] == [f"gsm_symbolic:seed=42:{i}" for i in range(20, 25)]
    assert a == b
    assert load_dataset("gsm_symbolic:seed=7").items(3) != a[:3]


@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum", "rg:leg_counting"])
def test_other_reasoning_gym_families(name: str) -> None:
    ds = load_dataset(name, size=40)
    items = ds.items()
    assert len(items) == 40
    assert all(it.answer.lstrip("-").isdigit() for it in items)
    assert all(ds.score(f"... so the answer is {it.answer}.", it) for it in items)
    assert not any(ds.score(f"The answer is {int(it.answer) + 1}.", it) for it in items)
    assert load_dataset(ds.name).items(2) == items[:2]  # the name round-trips


def test_chain_sum_known_items() -> None:
    items = load_dataset("chain_sum:seed=42,size=3").items()
    assert [it.answer for it in items] == ["7", "1692", "15"]
    assert items[1].question.endswith("812 + 880 =")


def test_items_window() -> None:
    ds = load_dataset("chain_sum", size=10)
    assert [it.id for it in ds.items(limit=3, offset=8)] == ["chain_sum:seed=42:8", "chain_sum:seed=42:9"]
    assert ds.items(offset=10) == []
    assert ds.items(limit=0) == []
    with pytest.raises(ConfigError, match="offset"):
        ds.items(offset=-1)
    with pytest.raises(ConfigError, match="limit"):
        ds.items(limit=-2)


@needs_evals
@pytest.mark.parametrize(
    ("task", "n", "first_answer"),
    [("multistep-word-problems", 15, "2"), ("math_for_5th-grader", 20, "1440"), ("linear_equations", 200, "[2, 1]")],
)
def test_evals_tasks(task: str, n: int, first_answer: str) -> None:
    ds = load_dataset(f"evals:{task}")
    items = ds.items()
    assert len(items) == n
    assert items[0].id == f"evals:{task}:0"
    assert items[0].answer == first_answer
    assert items[0].meta["system"]  # the chat's system message is kept aside
    assert "You are" not in items[0].question
    assert all(ds.score(it.meta["ideals_raw"][0], it) for it in items)


@needs_evals
def test_evals_fraction_and_vector_scoring() -> None:
    words = load_dataset("evals:multistep-word-problems").items()
    assert words[2].answer == "5/6"
    assert EvalsJSONL("multistep-word-problems").score("He can make 0.8333333333 batches... no: 5/6", words[2])
    eq = EvalsJSONL("linear-equations")  # the yaml's name also works
    assert eq.name == "evals:linear_equations"
    last = eq.items()[-1]
    assert last.answer == "[11, 8, -74]"
    assert eq.score("So x = [[ 11]\n [  8]\n [-74]]", last)
    assert eq.score("Solving Ax = b gives x = 11, y = 8, z = -74.", last)
    assert eq.score("[11, 8, -74]", last)
    assert not eq.score("x = [[11]\n [8]\n [74]]", last)
    assert not eq.score("x = [[11]\n [8]]", last)


def test_evals_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps \"evals==3\.0\.1\.post1\""):
        load_dataset("evals:linear_equations")


@needs_evals
def test_evals_unknown_task() -> None:
    with pytest.raises(ConfigError, match="linear_equations"):
        load_dataset("evals:no_such_task")


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_dataset(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "mine.jsonl",
        [
            json.dumps({"question": "2 + 2?", "answer": 4}),
            "",
            json.dumps({"question": "Half of 1.5?", "answer": "0.750", "id": "q-half", "level": 2}),
        ],
    )
    ds = load_dataset(f"jsonl:{p}")
    items = ds.items()
    assert [it.id for it in items] == ["jsonl:mine:0", "q-half"]
    assert [it.answer for it in items] == ["4", "0.75"]
    assert items[1].meta == {"level": 2, "gold_raw": "0.750", "line": 3}
    assert ds.score("The answer is 3/4.", items[1])
    assert not ds.score("The answer is 5.", items[0])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "2 + 2?", "answer": 4', "mine.jsonl:2: the line is not valid JSON"),
        ('["2 + 2?", 4]', "mine.jsonl:2: the line holds a JSON list, not an object"),
        ('{"question": "2 + 2?"}', "mine.jsonl:2: 'answer'"),
        ('{"answer": 4}', "mine.jsonl:2: 'question'"),
        ('{"question": "2 + 2?", "answer": ""}', "mine.jsonl:2: 'answer'"),
        ('{"question": "x", "answer": 1, "id": "a"}', "mine.jsonl:2: duplicate id"),
    ],
)
def test_jsonl_bad_row_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    p = _write(tmp_path / "mine.jsonl", ['{"question": "1 + 1?", "answer": 2, "id": "a"}', line])
    with pytest.raises(ConfigError, match=message):
        JSONLDataset(p)


def test_jsonl_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no JSONL file"):
        load_dataset(f"jsonl:{tmp_path / 'absent.jsonl'}")
    with pytest.raises(ConfigError, match="no rows"):
        JSONLDataset(_write(tmp_path / "empty.jsonl", [""]))


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset("gsm8k")
    for name in ["gsm_symbolic", "basic_arithmetic", "chain_sum", "evals:linear_equations", "jsonl:", "rg:"]:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("name", "kw", "message"),
    [
        ("gsm_symbolic:seed", {}, "key=value"),
        ("gsm_symbolic:colour=red", {}, "does not take"),
        ("gsm_symbolic:seed=1", {"seed": 2}, "both in the name"),
        ("gsm_symbolic", {"size": 0}, "size must be positive"),
        ("rg:no_such_family", {}, "no dataset 'no_such_family'"),
        ("chain_sum:min_terms=0", {}, "bad config"),
        ("evals", {}, "needs an argument"),
    ],
)
def test_bad_names_raise_config_error(name: str, kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_dataset(name, **kw)


def test_registry_accepts_user_factories(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tiny:
        name = "tiny"

        def __init__(self, n: int = 2) -> None:
            self.n = n

        def items(self, limit: int | None = None, offset: int = 0) -> list[Item]:
            return [Item(f"tiny:{i}", f"{i} + 1?", str(i + 1)) for i in range(self.n)][offset:][:limit]

        def score(self, pred_text_or_answer: str | None, item: Item) -> bool:
            return pred_text_or_answer == item.answer

    monkeypatch.setitem(DATASETS, "tiny", Tiny)
    ds = load_dataset("tiny:n=3")
    assert isinstance(ds, Dataset)
    assert [it.answer for it in ds.items()] == ["1", "2", "3"]


def test_item_is_hashable_and_frozen() -> None:
    item = Item("a:0", "q", "1", {"k": [1]})
    assert hash(item) == hash(Item("a:0", "q", "1", {"k": [2]}))
    with pytest.raises(AttributeError):
        item.answer = "2"  # type: ignore[misc]
