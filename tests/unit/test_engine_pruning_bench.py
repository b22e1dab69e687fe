"""The engine-pruning benchmark's bookkeeping, on the embedded backend with a tiny random model.

One batch through ``benchmarks/engine_pruning.py``'s ``_batch``: the unpruned samples are stored as a
run folder, the pruned call equals the replay of those samples candidate by candidate, and the
measured and replayed summaries agree on what they share.
"""

from __future__ import annotations

import json

import pytest

from benchmarks._common import run_config
from benchmarks.engine_pruning import UNPRUNED, _batch, _report, replayed, summarise
from l2reason.backends.base import PruneSpec
from l2reason.eval.datasets import load_dataset
from l2reason.eval.harness import load_run, open_run


@pytest.fixture(scope="module")
def one_batch(tiny_backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine_pruning")
    ds = load_dataset("gsm_symbolic:seed=42")
    items = list(enumerate(ds.items(2)))
    cfg = run_config(
        tiny_backend, "gsm_symbolic:seed=42", limit=2, n=3, max_new_tokens=10, batch_items=2, gen_methods=[]
    )
    cfg = open_run(out / "run", cfg, ds, [it for _, it in items])
    # a threshold above any confidence: every row but the min_keep one is pruned right after the warm-up
    spec = PruneSpec(score="confidence", threshold=1e3, warmup=3, window=4, min_keep=1)
    batch = _batch(tiny_backend, cfg, ds, items, {"always": spec}, 0, out / "run")
    settings = {"n": 3, "rules": {"always": spec.model_dump()}}
    return out, batch, settings


def test_the_pruned_call_equals_the_replay_of_the_stored_unpruned_samples(one_batch):
    out, batch, _ = one_batch
    run = load_run(out / "run")
    assert [r.item_id for r in run.samples] == batch["items"]
    full = batch["conditions"][UNPRUNED]["tokens"]
    assert full == [sum(c.completion_tokens for c in r.result.candidates) for r in run.samples]
    got = batch["conditions"]["always"]
    assert got["pruned"] == [2, 2]
    assert (got["same_tokens"], got["same_step"], got["same_vote"], got["prefix_ok"]) == (6, 6, 2, 6)
    assert got["diffs"] == []
    # two of three rows stop after 3 tokens, the kept one runs to its end
    assert all(p < f for p, f in zip(got["tokens"], full, strict=True))


def test_measured_and_replayed_summaries_agree(one_batch):
    out, batch, settings = one_batch
    s = summarise([batch], settings)
    assert [r["condition"] for r in s["rows"]] == [UNPRUNED, "always"]
    rule = s["rows"][1]
    assert rule["same_tokens"] == [6, 6] and rule["pruned_per_item"] == 2.0
    assert 0 < rule["tokens_saved"] < 1
    rep = replayed(out / "run", settings)
    assert rep["items"] == 2
    assert rep["rows"][0]["tokens_per_item"] == pytest.approx(rule["tokens_per_item"])
    assert rep["rows"][0]["saved"] == pytest.approx(rule["tokens_saved"])
    # batches that did not run the rules (items past --rule-items) are left out of the measured table
    assert summarise([{**batch, "conditions": {UNPRUNED: batch["conditions"][UNPRUNED]}}], settings)["items"] == 0


def test_report_writes_both_tables(one_batch):
    out, batch, settings = one_batch
    settings = settings | {
        "model": "tiny",
        "dataset": "gsm_symbolic:seed=42",
        "max_new_tokens": 10,
        "batch_items": 2,
        "rule_set": "1.5b",
    }
    meta = {"command": "python benchmarks/engine_pruning.py", "started": "s", "date": "d", "cpu": "c", "versions": "v"}
    from benchmarks import engine_pruning

    engine_pruning.RULES["always"] = "test rule"
    try:
        md = _report(out, settings, [batch], meta).read_text()
    finally:
        del engine_pruning.RULES["always"]
    assert "## Measured in the engine: the first 2 items, every rule" in md
    assert "## Replayed on all 2 stored items" in md and "on the 1 odd-indexed items alone" in md
    assert "| always |" in md and "6/6, 6/6, 2/2" in md
    assert "- `always`: test rule;" in md and "`docs/results/gsm_symbolic_100_1.5b_vllm/pruning/`" in md
    assert json.loads((out / "engine_pruning.json").read_text())["measured"]["items"] == 2


def test_rule_set_follows_the_model_unless_named():
    from benchmarks.engine_pruning import RULE_SETS, RULES, _rule_set

    assert _rule_set("auto", "vllm:large") == "1.5b" and _rule_set("auto", "vllm:default") == "0.5b"
    assert _rule_set("0.5b", "vllm:large") == "0.5b"
    for _, rules in RULE_SETS.values():  # every set defines every rule, and each is a valid PruneSpec
        assert set(rules) == set(RULES)
        for fields in rules.values():
            PruneSpec.model_validate(fields)
    # the 1.5B's fixed thresholds are its own replay's, not the 0.5B's
    assert RULE_SETS["1.5b"][1]["l2-low-fixed"]["threshold"] == -121.1
