"""Report statistics on hand-made stored results whose right numbers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from l2reason.backends.base import Candidate, GenerationResult, NormStats, TokenLogprobs
from l2reason.eval.autocal import candidate_bands, choose_selection
from l2reason.eval.harness import RunConfig, StoredItem, append_line, load_run, pass_path
from l2reason.eval.report import compute_report, render_markdown, write_report
from l2reason.eval.report.tables import PROMPT_SHOWN

L = 4  # default band of a 4-layer model: [2]


def _cand(i: int, answer: str, right_signal: bool, finish: str = "eos") -> Candidate:
    """Right candidates: higher norm at layer 2, lower at layer 3, and longer (8 vs 6 tokens)."""
    T = 8 if right_signal else 6
    wiggle = np.linspace(-0.5, 0.5, T)
    per_token = [
        [10.0, 20.0 + w, 30.0 + (5.0 if right_signal else 0.0) + w, 40.0 - (5.0 if right_signal else 0.0) + w]
        for w in wiggle
    ]
    return Candidate(
        index=i,
        text=f"so the answer is {answer}",
        finish_reason=finish,  # type: ignore[arg-type]
        prompt_tokens=5,
        completion_tokens=T,
        norms=NormStats(
            layers=list(range(L)), per_token=per_token, masked=[False] * T, mean=list(np.mean(per_token, 0))
        ),
        logprobs=TokenLogprobs(logprob=[-0.1] * T, self_certainty=[1.0] * T, confidence=[2.0] * T),
    )


def _item(idx: int, gold: str, answers: list[str], finish: list[str] | None = None, name="samples") -> StoredItem:
    finish = finish or ["eos"] * len(answers)
    cands = [_cand(j, a, a == gold, f) for j, (a, f) in enumerate(zip(answers, finish, strict=True))]
    res = GenerationResult(model_id="hand", backend="test", candidates=cands, seconds=2.0)
    return StoredItem(
        item_id=f"hand:{idx}",
        index=idx,
        question=f"q{idx}",
        gold=gold,
        answers=answers,
        correct=[a == gold for a in answers],
        result=res,
        seconds=1.5,
        pass_name=name,
    )


# Item by item (right answers in caps):       sample@1  oracle  majority  l2:A/T  shortest  greedy
#   0: gold 5, answers 5 5 3 4                 right     right   right     right   wrong     right
#   1: gold 7, answers 1 7 1 2                 wrong     right   wrong     right   wrong     wrong
#   2: gold 9, answers 8 9 8 8                 wrong     right   wrong     right   wrong     right
#   3: gold 2, answers 3 3 3 3 (one cut off)   wrong     wrong   wrong     wrong   wrong     wrong
SAMPLES = [
    (0, "5", ["5", "5", "3", "4"], None),
    (1, "7", ["1", "7", "1", "2"], None),
    (2, "9", ["8", "9", "8", "8"], None),
    (3, "2", ["3", "3", "3", "3"], ["eos", "length", "eos", "eos"]),
]
GREEDY = [(0, "5", ["5"]), (1, "7", ["1"]), (2, "9", ["9"]), (3, "2", ["3"])]


def _write_run(d: Path, auto: dict | None = None, methods=None) -> Path:
    cfg = RunConfig(
        dataset="hand",
        model_id="hand",
        num_layers=L,
        limit=4,
        n=4,
        methods=methods or ["majority", "shortest", "random", "l2:A/T", "l2:z_mean", "self-certainty", "l2-vote"],
        gen_methods=["greedy"],
        auto_selection=auto,
    )
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(cfg.model_dump_json())
    for idx, gold, answers, finish in SAMPLES:
        append_line(pass_path(d, "samples"), _item(idx, gold, answers, finish).model_dump_json())
    for idx, gold, answers in GREEDY:
        append_line(pass_path(d, "greedy"), _item(idx, gold, answers, name="greedy").model_dump_json())
    return d


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return compute_report(load_run(_write_run(tmp_path_factory.mktemp("run"))), n_boot=2000, n_subsamples=50)


def _row(rep, name):
    return next(r for r in rep.rows if r.name == name)


def test_accuracies_of_known_selections(report):
    acc = {r.name: r.acc for r in report.rows}
    assert acc["sample@1"] == 0.25 and acc["oracle@4"] == 0.75
    assert acc["majority"] == 0.25 and acc["greedy"] == 0.5
    assert acc["l2:A/T"] == 0.75  # right candidates have the higher norm in the band (layer 2)
    assert acc["l2:z_mean"] == 0.75
    assert acc["shortest"] == 0.0  # right candidates are the longer ones here
    r = _row(report, "majority")
    assert r.lo <= r.acc <= r.hi and len(r.correct) == 4


def test_paired_comparisons(report):
    vg = _row(report, "l2:A/T").vs_greedy
    assert (vg.n, vg.diff, vg.wins, vg.losses) == (4, 0.25, 1, 0)
    assert vg.p_mcnemar == 1.0  # one discordant pair: 2 * 1/2
    vm = _row(report, "l2:A/T").vs_majority
    assert (vm.diff, vm.wins, vm.losses, vm.p_mcnemar) == (0.5, 2, 0, 0.5)
    assert _row(report, "majority").vs_majority is None
    sg = _row(report, "shortest").vs_greedy
    assert (sg.diff, sg.wins, sg.losses) == (-0.5, 0, 2)


def test_signal_aucs(report):
    sig = {s["score"]: s for s in report.signals}
    # 10 (right, wrong) pairs within items 0..2; layer 2 separates them perfectly
    assert sig["l2:A/T"]["within_auc"] == 1.0 and sig["l2:A/T"]["pairs"] == 10
    assert sig["-length"]["within_auc"] == 0.0  # right = longer
    assert sig["self-certainty"]["within_auc"] == 0.5  # constant: no signal
    assert sig["l2:A/T"]["spearman_length"] == pytest.approx(1.0)  # norm and length are confounded by design
    layers = {x["layer"]: x for x in report.layers}
    assert [x["layer"] for x in report.layers] == [0, 1, 2, 3]
    assert layers[0]["mean_within_auc"] == 0.5 and layers[1]["mean_within_auc"] == 0.5
    assert layers[2]["mean_within_auc"] == 1.0 and layers[3]["mean_within_auc"] == 0.0


def test_truncation_and_cost(report):
    t = {x["pass"]: x for x in report.truncation}
    assert t["samples"]["candidates"] == 16 and t["samples"]["truncated"] == 1 / 16
    assert t["samples"]["acc_truncated"] == 0.0
    assert t["greedy"]["truncated"] == 0.0
    assert _row(report, "majority").tokens == (28 + 26 + 26 + 24) / 4  # all N candidates' tokens per item


def test_accuracy_vs_n(report):
    curve = report.curves["majority"]
    assert set(curve) == {1, 2, 4}
    assert curve[4] == 0.25  # all four candidates: the majority answer
    assert curve[1] == pytest.approx((0.5 + 0.25 + 0.25 + 0.0) / 4, abs=0.08)  # mean single-sample accuracy
    assert report.curves["l2:z_mean"][4] == 0.75


def test_write_report_files(tmp_path):
    md = write_report(_write_run(tmp_path / "run"), n_boot=500, n_subsamples=20)
    text = md.read_text()
    assert "| l2:A/T | selection | 4 | 75.0 |" in text
    for png in ("accuracy.png", "accuracy_vs_n.png", "auc_per_layer.png", "norms_right_vs_wrong.png"):
        assert (md.parent / png).is_file()
    assert (md.parent / "report.json").is_file()
    import csv

    rows = list(csv.DictReader((md.parent / "per_item.csv").open()))
    assert [r["item_id"] for r in rows] == ["hand:0", "hand:1", "hand:2", "hand:3"]
    assert [r["majority"] for r in rows] == ["1", "0", "0", "0"] and [r["greedy"] for r in rows] == ["1", "0", "1", "0"]


def test_auto_selection_chooses_where_the_signal_lives_and_is_reported_only_on_disjoint_items(tmp_path):
    items = [_item(i, g, a, f) for i, g, a, f in SAMPLES]
    choice = choose_selection(items, L)
    assert choice["layers"] == [2] and choice["value"] == 1.0
    assert candidate_bands(L, (3,)) == [[2], [0, 1, 2], [1, 2, 3]]
    disjoint = {**choice, "split": {"item_ids": ["calib:0", "calib:1"]}}
    rep = compute_report(load_run(_write_run(tmp_path / "a", disjoint, ["majority", "l2-auto"])), n_boot=200)
    assert _row(rep, "l2-auto").acc == 0.75
    overlap = {**choice, "split": {"item_ids": ["hand:1"]}}
    rep = compute_report(load_run(_write_run(tmp_path / "b", overlap, ["majority", "l2-auto"])), n_boot=200)
    row = _row(rep, "l2-auto")
    assert sorted(row.correct) == ["hand:0", "hand:2", "hand:3"]  # never scored on its calibration item
    assert row.acc == pytest.approx(2 / 3) and row.vs_majority is not None and row.vs_majority.n == 3
    assert any("scored on the 3 items outside its calibration split" in n for n in rep.notes)
    sig = next(x for x in rep.signals if x["score"] == "l2-auto")
    assert sig["pairs"] == 2 * 2 + 1 * 3  # items 0 and 2 only; item 1 (1 x 3 pairs) is left out
    everything = {**choice, "split": {"item_ids": [f"hand:{i}" for i in range(4)]}}
    rep = compute_report(load_run(_write_run(tmp_path / "c", everything, ["majority", "l2-auto"])), n_boot=200)
    assert all(r.name != "l2-auto" for r in rep.rows)
    assert any("all 4 items were in its calibration split" in n for n in rep.notes)


def test_cross_fitted_auto_selection_scores_each_item_once_with_a_choice_made_without_it(report):
    row = _row(report, "l2-auto-cv")
    assert sorted(row.correct) == ["hand:0", "hand:1", "hand:2", "hand:3"]
    # each fold has an item with right and wrong candidates; both choose layer 2, where the signal lives
    assert row.acc == 0.75 and row.correct["hand:3"] is False
    note = next(n for n in report.notes if n.startswith("l2-auto-cv"))
    assert note.count("layers [2]") == 2


def test_cross_fitted_auto_selection_needs_two_folds(tmp_path):
    d = tmp_path / "one"
    cfg = RunConfig(dataset="hand", model_id="hand", num_layers=L, limit=1, n=4, methods=["majority"], gen_methods=[])
    d.mkdir()
    (d / "config.json").write_text(cfg.model_dump_json())
    idx, gold, answers, finish = SAMPLES[0]
    append_line(pass_path(d, "samples"), _item(idx, gold, answers, finish).model_dump_json())
    rep = compute_report(load_run(d), n_boot=100, n_subsamples=10)
    assert all(r.name != "l2-auto-cv" for r in rep.rows)


def test_reproduce_command_parses_back_to_the_run_settings():
    import shlex

    import typer

    from l2reason.cli import app
    from l2reason.eval.report import render_markdown, reproduce_command

    cfg = RunConfig(
        dataset="gsm_symbolic:seed=42",
        model_id="m",
        num_layers=24,
        limit=100,
        offset=3,
        n=8,
        max_new_tokens=512,
        methods=["majority", "l2:B/T"],
        gen_methods=["greedy", "alrr"],
        gen_limit=60,
        batch_items=8,
        env={"torch_threads": 2},
    ).model_dump()
    line = reproduce_command(cfg)
    args = shlex.split(line)
    assert args[:2] == ["l2reason", "eval"]
    ctx = typer.main.get_command(app).commands["eval"].make_context("eval", args[2:])  # type: ignore[attr-defined]
    p = ctx.params
    assert (p["dataset"], p["offset"], p["limit"], p["n"], p["max_new_tokens"]) == (
        "gsm_symbolic:seed=42",
        3,
        100,
        8,
        512,
    )
    assert (p["methods"], p["gen_methods"], p["gen_limit"], p["batch_items"], p["threads"]) == (
        "majority,l2:B/T",
        "greedy,alrr",
        60,
        8,
        2,
    )
    from l2reason.eval.report import ReportData

    md = render_markdown(ReportData(config=cfg, n_items=0, band=[18]))
    assert f"reproduce: `{line}`" in md and "generation passes: greedy, alrr on 60 items" in md
    # a vllm spec with '&', and generation methods whose options hold commas, survive the shell
    cfg.update(
        model="vllm:default?dtype=float32&eager=true", gen_methods=["greedy", "static-steer:vectors=v.json,alpha=2"]
    )
    p = (
        typer.main.get_command(app)
        .commands["eval"]
        .make_context("eval", shlex.split(reproduce_command(cfg))[2:])
        .params
    )  # type: ignore[attr-defined]
    assert p["model"] == "vllm:default?dtype=float32&eager=true"
    assert p["gen_methods"] == "greedy;static-steer:vectors=v.json,alpha=2"


def test_auto_selection_finds_an_inverted_signal_and_selects_by_it():
    """Right candidates have the *lower* norm at layer 3: the search finds it as a 'low' direction."""
    from l2reason.eval.methods import AUTO, selection_spec
    from l2reason.select import select_result

    items = [_item(i, g, a, f) for i, g, a, f in SAMPLES]
    choice = choose_selection(items, L, widths=(1,))
    rows = {(tuple(r["layers"]), r["score"], r["direction"]): r for r in choice["table"]}
    assert rows[((3,), "A/T", "low")]["value"] == 1.0 and rows[((3,), "A/T", "low")]["accuracy"] == 0.75
    assert choice["direction"] == "high" and choice["layers"] == [2]  # ties go to the default band, then "high"
    only_low = choose_selection(items, L, widths=(1,), directions=("low",))
    assert only_low["direction"] == "low" and only_low["layers"] == [3]
    spec = selection_spec(AUTO, auto=only_low)
    assert spec.params == {"direction": "low"}
    picked = [bool(r.correct[select_result(r.result, spec, num_layers=L).index]) for r in items]
    assert picked == [True, True, True, False]


CURVE_RULES = ["majority", "l2:B/T", "l2:z_mean", "self-certainty", "deepconf", "shortest", "random"]


def test_accuracy_vs_n_at_the_stored_n_is_the_tables_value_for_every_rule(tmp_path):
    """Each curve applies exactly the table's rule: at N = stored N it must equal the table, rule by rule."""
    rep = compute_report(load_run(_write_run(tmp_path / "run", methods=CURVE_RULES)), n_boot=200, n_subsamples=50)
    table = {r.name: r.acc for r in rep.rows}
    expected = {"majority", "l2:B/T", "l2:z_mean", "self-certainty", "deepconf", "shortest", "l2-probe-cv"}
    assert set(rep.curves) == expected  # a curve only for rules the table shows (the probe is cross-fitted)
    for name, curve in rep.curves.items():
        assert curve[4] == table[name], name
        # N = 1: every rule returns the only candidate, so every curve starts at the mean single-sample accuracy
        assert curve[1] == pytest.approx(np.mean([np.mean(c) for _, _, c in _labels()]))
    # all C(4, k) subsets are used when there are few: the curve is exact, not a random estimate
    assert rep.curve_sizes == {1: 4, 2: 6, 4: 1}
    again = compute_report(load_run(tmp_path / "run"), n_boot=200, n_subsamples=50)
    assert again.curves == rep.curves
    md = render_markdown(rep)
    assert "N = 1 is the mean accuracy of a single sample" in md and "candidate 0 only (25.0%)" in md


def _labels():
    return [(i, g, [a == g for a in answers]) for i, g, answers, _ in SAMPLES]


def test_the_report_counts_ties_at_the_best_score_and_breaks_them_reproducibly(tmp_path):
    from l2reason.eval.methods import selection_spec
    from l2reason.select import select_result

    run = load_run(_write_run(tmp_path / "run", methods=["majority", "l2:B/T", "shortest"]))
    rep = compute_report(run, n_boot=200, n_subsamples=10)
    rows = {r.name: r for r in rep.rows}
    expect = 0
    for r in run.samples:
        sel = select_result(r.result, selection_spec("l2:B/T", seed=run.config.item_seed(r.index)), num_layers=L)
        expect += sel.details["n_tied"] > 1
        assert rows["l2:B/T"].correct[r.item_id] == r.correct[sel.index]
    assert rows["l2:B/T"].ties == expect
    assert rows["majority"].ties is None  # not an argmax rule: majority keeps its own tie rule
    # every item has at least two finished wrong candidates of the same (shortest) length: shortest ties on all
    assert rows["shortest"].ties == 4
    md = render_markdown(rep)
    assert "## Ties at the best score" in md and "| l2:B/T | 4 |" in md
    again = {r.name: r for r in compute_report(run, n_boot=200, n_subsamples=10).rows}
    assert again["l2:B/T"].correct == rows["l2:B/T"].correct and again["shortest"].correct == rows["shortest"].correct


def test_plots_mark_rows_over_fewer_items_and_keep_zero_bars(tmp_path):
    d = _write_run(tmp_path / "run")
    # a generation pass on 2 of the 4 items: its row is scored over fewer items
    (d / "gen" / "greedy.jsonl").unlink()
    for idx, gold, answers in GREEDY[:2]:
        append_line(pass_path(d, "greedy"), _item(idx, gold, answers, name="greedy").model_dump_json())
    md = write_report(d, n_boot=200, n_subsamples=10)
    text = md.read_text()
    assert "Rows are scored on different numbers of items (2, 4)" in text
    rep = compute_report(load_run(d), n_boot=200, n_subsamples=10)
    assert _row(rep, "shortest").acc == 0.0  # a 0% row: drawn with a marker and its CI
    nd = rep.norm_dist["2"]
    assert nd["correct_within"] and nd["incorrect_within"]
    assert min(nd["correct_within"]) > 0 > max(nd["incorrect_within"])  # right ones sit above their item's mean


def test_the_header_states_the_system_prompt_and_reproduce_passes_an_override():
    import shlex

    import typer

    from l2reason.cli import app
    from l2reason.eval.report import ReportData, render_markdown, reproduce_command

    def header(**kw):
        cfg = RunConfig(dataset="chain_sum", model_id="m", num_layers=4, **kw).model_dump()
        md = render_markdown(ReportData(config=cfg, n_items=0, band=[2]))
        line = next(x for x in md.splitlines() if x.startswith("- system prompt: "))
        args = shlex.split(reproduce_command(cfg))[2:]
        params = typer.main.get_command(app).commands["eval"].make_context("eval", args).params  # type: ignore[attr-defined]
        return line, params["system_prompt"]

    line, arg = header(system_prompt="Be brief.")  # a fallback: items with their own prompt keep it
    assert line == "- system prompt: the dataset's own where an item brings one, else `Be brief.`" and arg is None
    line, arg = header(system_prompt=None)
    assert line == "- system prompt: the dataset's own where an item brings one, else none" and arg is None
    line, arg = header(system_prompt="Be brief.", system_prompt_override=True)
    assert line == "- system prompt: `Be brief.`, for every item (over the dataset's own)" and arg == "Be brief."
    line, arg = header(system_prompt=None, system_prompt_override=True)
    assert line == "- system prompt: none" and arg == "none"
    long = "Think. " * 30
    line, arg = header(system_prompt=long.strip(), system_prompt_override=True)
    shown = line.split("`")[1]
    assert len(shown) == PROMPT_SHOWN and shown.endswith("…") and f"shortened: {len(long.strip())} characters" in line
    assert arg == "@SYSTEM_PROMPT_FILE"  # a placeholder, like RUN_DIR: too long for a one-line command
    # a config that does not record the prompt (a hand-made ReportData) gets no such line
    cfg = RunConfig(dataset="chain_sum", model_id="m", num_layers=4).model_dump()
    del cfg["system_prompt"]
    assert "system prompt" not in render_markdown(ReportData(config=cfg, n_items=0, band=[2]))
