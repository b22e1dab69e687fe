"""The learned selector ``l2-probe``: planted signals, no leakage between split halves, the calibration file, selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from l2reason.backends.base import (
    Candidate,
    GenerationRequest,
    GenerationResult,
    Message,
    NormSpec,
    NormStats,
    SamplingParams,
    SelectionSpec,
    TokenLogprobs,
)
from l2reason.errors import ConfigError
from l2reason.eval.harness import RunConfig, StoredItem, append_line, load_run, pass_path
from l2reason.eval.probe import cross_fit, fit_on_items, item_inputs, paired_auc_bootstrap
from l2reason.select import select_result
from l2reason.signal.calibration import Calibration, fit_calibration
from l2reason.techniques.probe import (
    BASE_FEATURES,
    Probe,
    feature_names,
    fit_probe,
    item_features,
    select_probe,
)
from l2reason.techniques.selection import CandidateSignals

L = 6  # layers captured
SIGNAL_LAYER = 4
N = 6


def _cand_signals(rng, right: bool, answer: str, *, where: str = "l2", sign: float = 1.0) -> CandidateSignals:
    """A candidate whose correctness shows in one feature only: layer 4's norm level, or self-certainty."""
    T = int(rng.integers(20, 40))
    norms = rng.normal(10.0 + 3.0 * np.arange(L), 1.0, (T, L))
    sc = rng.normal(1.0, 0.2, T)
    if where == "l2":
        norms[:, SIGNAL_LAYER] += sign * (2.0 if right else 0.0)
    else:
        sc += sign * (0.5 if right else 0.0)
    return CandidateSignals(
        text=f"the answer is {answer}",
        answer=answer,
        n_tokens=T,
        finished=True,
        band_norms=norms,
        token_logprob=rng.normal(-0.5, 0.1, T),
        token_self_certainty=sc,
        token_confidence=rng.normal(2.0, 0.1, T),
    )


def _items(seed: int, k: int, *, where: str = "l2", sign: float = 1.0):
    """k items of N candidates, 1 or 2 right ones, each right one with its own answer-free signal."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        y = np.zeros(N, dtype=bool)
        y[rng.choice(N, size=int(rng.integers(1, 3)), replace=False)] = True
        # every candidate gives a different answer, so the vote share carries nothing
        cands = [_cand_signals(rng, bool(y[j]), str(j), where=where, sign=sign) for j in range(N)]
        out.append((cands, y))
    return out


def _argmax_accuracy(probe: Probe, items) -> float:
    return float(np.mean([y[select_probe(c, probe, seed=1).index] for c, y in items]))


def test_planted_hidden_state_signal_is_found_with_the_right_sign():
    train, test = _items(0, 40), _items(1, 40)
    probe = fit_probe(train, layers=range(L), feature_set="both")
    assert _argmax_accuracy(probe, test) >= 0.9  # chance is ~0.25
    assert probe.weight(f"mean@{SIGNAL_LAYER}") > 0
    # the planted feature carries the largest weight among the per-layer means
    means = {layer: probe.weight(f"mean@{layer}") for layer in range(L)}
    assert max(means, key=lambda k: abs(means[k])) == SIGNAL_LAYER
    inverted = fit_probe(_items(2, 40, sign=-1.0), layers=range(L), feature_set="l2")
    assert inverted.weight(f"mean@{SIGNAL_LAYER}") < 0
    assert _argmax_accuracy(inverted, _items(3, 40, sign=-1.0)) >= 0.9
    # the confidence-only ablation cannot see a norm signal
    conf = fit_probe(train, layers=range(L), feature_set="confidence")
    assert _argmax_accuracy(conf, test) < 0.6
    assert probe.info["mixed_items"] == 40 and probe.info["candidates"] == 40 * N
    assert set(probe.info["inner_cv_within_auc"]) == {"0.0001", "0.001", "0.01", "0.1", "1", "10"}


def test_planted_confidence_signal_is_found_by_the_confidence_features_only():
    train, test = _items(4, 40, where="sc"), _items(5, 40, where="sc")
    conf = fit_probe(train, layers=range(L), feature_set="confidence")
    assert conf.weight("self_certainty") > 0 and _argmax_accuracy(conf, test) >= 0.9
    l2only = fit_probe(train, layers=range(L), feature_set="l2")
    assert _argmax_accuracy(l2only, test) < 0.6


def test_features_are_centred_within_the_item_and_named():
    items = _items(6, 1)
    cands = items[0][0]
    X = item_features(cands, range(L), "both")
    names = feature_names("both", range(L))
    assert X.shape == (N, len(names)) and np.allclose(X.mean(0), 0.0)
    assert names[:3] == list(BASE_FEATURES) and f"p90@{L - 1}" == names[-1]
    # adding a constant to every candidate's norms at a layer changes nothing (within-item contrasts only)
    from dataclasses import replace

    shifted = [replace(c, band_norms=c.band_norms + np.array([0, 0, 0, 0, 50.0, 0])) for c in cands]
    j = names.index(f"mean@{SIGNAL_LAYER}")
    assert np.allclose(item_features(shifted, range(L), "both")[:, j], X[:, j])
    with pytest.raises(ConfigError, match="needs logprob signals"):
        item_features([replace(c, token_self_certainty=None) for c in cands], range(L), "both")
    with pytest.raises(ConfigError, match="capture those layers"):
        item_features(cands, range(L + 1), "l2")
    with pytest.raises(ConfigError, match="unknown probe feature set"):
        item_features(cands, range(L), "everything")
    with pytest.raises(ConfigError, match="both right and wrong"):
        fit_probe([(cands, np.zeros(N, dtype=bool))], range(L))


def test_probe_vote_and_argmax_ties():
    probe = Probe("base", [], list(BASE_FEATURES), np.zeros(3), np.ones(3), np.array([0.0, 0.0, 1.0]), 0.0, 0.1)
    mk = lambda a: CandidateSignals("", a, 5, True, np.ones((5, 0)))  # noqa: E731
    cands = [mk("1"), mk("2"), mk("2"), mk("3")]
    vote = select_probe(cands, probe, rule="vote")
    assert (vote.method, vote.answer, vote.index) == ("l2-probe-vote", "2", 1)
    # argmax: candidates 1 and 2 tie at the top (vote share 2/4): a seeded draw among the two only
    picks = {select_probe(cands, probe, seed=s).index for s in range(30)}
    assert picks == {1, 2} and select_probe(cands, probe, seed=4).details["n_tied"] == 2
    assert select_probe(cands, probe, seed=4).index == select_probe(cands, probe, seed=4).index


# ---- stored items: cross-fitting and leakage ---------------------------------------------


def stored_item(idx: int, cands: list[CandidateSignals], y: np.ndarray) -> StoredItem:
    out = []
    for j, c in enumerate(cands):
        T = c.band_norms.shape[0]
        out.append(
            Candidate(
                index=j,
                text=c.text,
                finish_reason="eos",
                prompt_tokens=5,
                completion_tokens=T,
                norms=NormStats(
                    layers=list(range(L)),
                    per_token=c.band_norms.tolist(),
                    masked=[False] * T,
                    mean=c.band_norms.mean(0).tolist(),
                ),
                logprobs=TokenLogprobs(
                    logprob=c.token_logprob.tolist(),
                    self_certainty=c.token_self_certainty.tolist(),
                    confidence=c.token_confidence.tolist(),
                ),
            )
        )
    return StoredItem(
        item_id=f"synth:{idx}",
        index=idx,
        question=f"q{idx}",
        gold="g",
        answers=[c.answer for c in cands],
        correct=[bool(v) for v in y],
        result=GenerationResult(model_id="synth", backend="test", candidates=out),
        seconds=1.0,
        pass_name="samples",
    )


@pytest.fixture(scope="module")
def stored():
    return [stored_item(i, c, y) for i, (c, y) in enumerate(_items(7, 24))]


def test_cross_fit_never_scores_an_item_with_a_probe_fitted_on_it(stored):
    cf = cross_fit(stored, "both")
    assert len(cf.folds) == 2
    scored_all: list[str] = []
    for fold in cf.folds:
        assert fold.fit_ids and fold.scored_ids
        assert not set(fold.fit_ids) & set(fold.scored_ids)  # fit half and scored half are disjoint
        assert set(fold.probe.info["item_ids"]) == set(fold.fit_ids)  # the probe records what it saw
        scored_all += fold.scored_ids
    assert sorted(scored_all) == sorted(r.item_id for r in stored)  # every item scored exactly once
    assert set(cf.scores) == set(scored_all)
    for r in stored:
        assert r.item_id not in cf.probe_for(r.item_id).info["item_ids"]


def test_perturbing_the_labels_of_scored_items_does_not_change_their_own_scores(stored):
    base = cross_fit(stored, "both")

    def flipped(parity: int) -> list[StoredItem]:
        out = []
        for r in stored:
            if r.index % 2 == parity:
                r = r.model_copy(update={"correct": list(np.roll(r.correct, 1))})
            out.append(r)
        return out

    even_flipped = cross_fit(flipped(0), "both")  # the even items are scored by a probe fitted on the odd ones
    for r in stored:
        if r.index % 2 == 0:
            assert np.array_equal(even_flipped.scores[r.item_id], base.scores[r.item_id])
    # ... while the odd items' scores, from a probe fitted on the (now relabelled) even items, do move:
    # the test above would notice a probe that had seen its own items
    moved = [not np.allclose(even_flipped.scores[r.item_id], base.scores[r.item_id]) for r in stored if r.index % 2]
    assert all(moved)


def test_the_report_scores_a_calibrated_probe_only_outside_its_split_and_cross_fits_every_item(tmp_path, stored):
    from l2reason.eval.report import PROBE_CV, compute_report

    fit_half = [r for r in stored if r.index < 8]
    probe = fit_on_items(fit_half, "both").to_dict()
    d = tmp_path / "run"
    cfg = RunConfig(
        dataset="synth",
        model_id="synth",
        num_layers=L,
        limit=len(stored),
        n=N,
        methods=["majority", "l2-probe", "l2-probe-vote"],
        gen_methods=[],
        probe=probe,
    )
    d.mkdir()
    (d / "config.json").write_text(cfg.model_dump_json())
    for r in stored:
        append_line(pass_path(d, "samples"), r.model_dump_json())
    rep = compute_report(load_run(d), n_boot=200, n_subsamples=10)
    rows = {r.name: r for r in rep.rows}
    assert sorted(rows["l2-probe"].correct) == sorted(r.item_id for r in stored if r.index >= 8)
    assert sorted(rows["l2-probe-vote"].correct) == sorted(rows["l2-probe"].correct)
    assert any("l2-probe is scored on the 16 items outside" in n for n in rep.notes)
    assert rows["l2-probe"].acc >= 0.8  # the planted signal, learned on other items
    assert len(rows[PROBE_CV].correct) == len(stored) and rows[PROBE_CV].acc >= 0.8
    for name in (f"{PROBE_CV}:confidence", f"{PROBE_CV}:l2", f"{PROBE_CV}:base", "l2-probe-vote-cv"):
        assert len(rows[name].correct) == len(stored)
    assert rows[f"{PROBE_CV}:l2"].acc >= 0.8 and rows[f"{PROBE_CV}:confidence"].acc <= 0.6
    cmp = rep.probe
    assert cmp["accuracy"]["n"] == len(stored) and cmp["accuracy"]["diff"] > 0
    assert cmp["auc"]["diff"] > 0 and cmp["auc"]["lo"] > 0  # norms add information here, by construction
    sig = {s["score"]: s for s in rep.signals}
    assert sig[PROBE_CV]["within_auc"] > 0.9
    # the calibrated probe's scores are in the signals table, its fitted items left out
    assert 0 < sig["l2-probe"]["pairs"] < sig[PROBE_CV]["pairs"]


def test_paired_auc_bootstrap_is_zero_for_identical_scores():
    s = [np.array([0.1, 0.9, 0.3]), np.array([0.5, 0.2])]
    y = [np.array([False, True, False]), np.array([True, False])]
    out = paired_auc_bootstrap(s, s, y, n_boot=200)
    assert out["diff"] == 0.0 and out["auc_a"] == 1.0 and out["pairs"] == 3 and out["items"] == 2


# ---- the calibration file ------------------------------------------------------------------


def _calibration(num_layers: int = L, hidden: int = 16) -> Calibration:
    import torch

    g = torch.Generator().manual_seed(0)
    return fit_calibration(
        {layer: torch.rand(200, generator=g) + 10.0 * (layer + 1) for layer in range(num_layers)},
        model_id="synth",
        num_layers=num_layers,
        hidden_size=hidden,
        n_prompts=4,
    )


def test_the_probe_round_trips_through_the_calibration_file(tmp_path, stored):
    probe = fit_on_items(stored, "both", info={"split": {"item_ids": [r.item_id for r in stored]}})
    path = _calibration().with_probe(probe.to_dict()).save(tmp_path / "cal.json")
    back = Probe.from_dict(Calibration.load(path, expected_model_id="synth").probe)
    assert back.features == probe.features and back.layers == probe.layers and back.l2 == probe.l2
    it = item_inputs(stored[0])
    assert np.allclose(back.scores(it.cands), probe.scores(it.cands))
    assert back.info["split"]["item_ids"][0] == "synth:0"
    # a file without a probe (every file written before it existed) still loads
    obj = json.loads(path.read_text())
    del obj["probe"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(obj))
    assert Calibration.load(old).probe is None
    # an inconsistent probe section is refused with a clear message
    obj["probe"] = {**probe.to_dict(), "weights": [1.0]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(obj))
    with pytest.raises(Exception, match="probe weights must hold one finite number per feature"):
        Calibration.load(bad)
    with pytest.raises(ConfigError, match="probe version"):
        Probe.from_dict({**probe.to_dict(), "version": 99})
    with pytest.raises(ConfigError, match="do not match feature set"):
        Probe.from_dict({**probe.to_dict(), "features": probe.features[:-1]})


# ---- selection through select_result and the backend ----------------------------------------


def test_selection_with_the_probe_through_select_result(stored):
    probe = fit_on_items(stored[:12], "both")
    cal = _calibration().with_probe(probe.to_dict())
    for r in stored[12:]:
        sel = select_result(r.result, SelectionSpec(method="l2-probe", seed=r.index), calibration=cal)
        assert sel.method == "l2-probe" and sel.details["layers"] == list(range(L))
        assert r.correct[sel.index]  # the planted signal picks a right candidate
        by_name = select_result(r.result, "l2-probe", probe=probe)
        assert by_name.scores == pytest.approx(sel.scores)
        vote = select_result(r.result, SelectionSpec(method="l2-probe-vote"), calibration=cal)
        assert vote.method == "l2-probe-vote" and vote.groups
    r = stored[0]
    with pytest.raises(ConfigError, match="needs a fitted probe"):
        select_result(r.result, "l2-probe", calibration=_calibration())
    with pytest.raises(ConfigError, match="needs a fitted probe"):
        select_result(r.result, "l2-probe")
    band_only = r.result.model_copy(deep=True)
    for c in band_only.candidates:
        arr = np.asarray(c.norms.per_token)[:, 3:5]
        c.norms = NormStats(layers=[3, 4], per_token=arr.tolist(), masked=c.norms.masked, mean=arr.mean(0).tolist())
    with pytest.raises(ConfigError, match="request NormSpec\\(layers='all'\\)"):
        select_result(band_only, "l2-probe", probe=probe)


def test_the_backend_selects_in_call_with_the_probe_of_its_calibration(tiny):
    from l2reason.backends.hf import HFBackend

    nl = tiny.model.config.num_hidden_layers
    hidden = tiny.model.config.hidden_size
    rng = np.random.default_rng(0)
    items = []
    for _ in range(8):  # a probe over the tiny model's layers (its weights do not matter here)
        y = np.array([True, False, False])
        cands = [
            CandidateSignals(
                "", str(j), 6, True, rng.normal(5, 1, (6, nl)),
                token_logprob=rng.normal(-1, .1, 6), token_self_certainty=rng.normal(1, .1, 6),
                token_confidence=rng.normal(2, .1, 6),
            )
            for j in range(3)
        ]  # fmt: skip
        items.append((cands, y))
    probe = fit_probe(items, range(nl), "both")
    import torch

    cal = fit_calibration(
        {layer: torch.rand(50) + 1.0 for layer in range(nl)},
        model_id=tiny.model_id,
        num_layers=nl,
        hidden_size=hidden,
        n_prompts=1,
    ).with_probe(probe.to_dict())
    be = HFBackend(tiny, calibration=cal)
    req = GenerationRequest(
        messages=[Message(role="user", content="hi")],
        n=3,
        sampling=SamplingParams(temperature=1.0, max_new_tokens=6, seed=3),
        norms=NormSpec(layers="all"),
        logprobs=5,
        selection=SelectionSpec(method="l2-probe"),
    )
    res = be.generate(req)
    assert res.selection["method"] == "l2-probe" and len(res.selection["scores"]) == 3
    again = select_result(res, "l2-probe", probe=probe, num_layers=nl)
    assert res.selection["index"] == again.index
    with pytest.raises(ConfigError, match="request NormSpec"):
        be.generate(req.model_copy(update={"norms": NormSpec(layers=[0])}))


def test_dspy_select_best_with_score_probe_asks_for_what_the_probe_reads():
    pytest.importorskip("dspy")
    import dspy

    from l2reason.dspy.engine import L2CallSettings
    from l2reason.dspy.modules import L2SelectBest

    prog = L2SelectBest(dspy.Predict("question -> answer"), n=4, score="probe")
    s = prog.call_settings()
    assert s["selection"]["method"] == "l2-probe" and s["layers"] == "all" and s["score"] == "probe"
    assert L2CallSettings.parse(s).score == "probe"
    assert L2SelectBest(dspy.Predict("q -> a"), n=2, score="probe", vote=True).method == "l2-probe-vote"
    with pytest.raises(ConfigError, match='use level="call"'):
        L2SelectBest(dspy.Predict("q -> a"), n=2, score="probe", level="program")


def test_docs_name_the_probe_methods():
    root = Path(__file__).resolve().parents[2]
    for doc in ("docs/techniques.md", "docs/evaluation.md"):
        text = (root / doc).read_text(encoding="utf-8")
        assert "l2-probe" in text and "l2-probe-cv" in text, doc


def test_calibrate_select_also_fits_and_saves_the_probe(tmp_path, stored, monkeypatch):
    import l2reason.eval.autocal as autocal
    from l2reason.eval.harness import RunData

    def fake_run(backend, cfg, run_dir, **_):  # the sampling pass, replaced by the stored synthetic items
        return RunData(Path(run_dir), cfg, samples=stored)

    monkeypatch.setattr(autocal, "run_eval", fake_run)

    class Backend:
        model_id, num_layers, hidden_size = "synth", L, 16

    path = _calibration().save(tmp_path / "cal.json")
    out, choice = autocal.calibrate_select(
        Backend(), dataset="synth", limit=len(stored), run_dir=tmp_path / "r", out=path, show_progress=False
    )
    cal = Calibration.load(out)
    assert cal.selection is not None and cal.selection["layers"] == choice["layers"]
    probe = Probe.from_dict(cal.probe)
    assert probe.feature_set == "both" and probe.layers == list(range(L))
    assert probe.info["split"]["item_ids"] == [r.item_id for r in stored]
    assert probe.weight(f"mean@{SIGNAL_LAYER}") > 0


def test_many_noise_layers_do_not_drown_a_strong_base_feature_on_a_small_split():
    """Right candidates share the majority answer; 24 layers of pure noise beside it; 8 training items."""

    def items(seed: int, k: int):
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(k):
            y = np.zeros(8, dtype=bool)
            y[rng.choice(8, size=4, replace=False)] = True  # the right ones all answer "r"
            cands = [
                CandidateSignals(
                    "", "r" if y[j] else f"w{j}", 30, True, rng.normal(10.0, 1.0, (30, 24)),
                    token_logprob=rng.normal(-1, .1, 30), token_self_certainty=rng.normal(1, .1, 30),
                    token_confidence=rng.normal(2, .1, 30),
                )
                for j in range(8)
            ]  # fmt: skip
            out.append((cands, y))
        return out

    probe = fit_probe(items(10, 8), layers=range(24), feature_set="both")
    assert _argmax_accuracy(probe, items(11, 30)) >= 0.9
    top, _ = probe.top_effects(1)[0]
    assert top == "vote_share"


@pytest.mark.parametrize("lam", [1e-4, 0.1, 10.0])
def test_our_newton_fit_is_scikit_learns_logistic_regression_with_c_of_one_over_n_lambda(lam):
    """Why the probe keeps its own fit (``_newton``'s docstring): scikit-learn finds the same optimum with
    ``C = 1 / (n·λ)``, l2 penalty, unpenalised intercept, but the probe's numbers must not move at all."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    from l2reason.techniques.probe import item_features

    items = _items(11, 30)
    probe = fit_probe(items, layers=range(L), feature_set="both", l2=lam)
    X = np.concatenate([item_features(c, list(range(L)), "both") for c, y in items if y.any() and not y.all()])
    y = np.concatenate([y for c, y in items if y.any() and not y.all()])
    Z = (X - probe.mean) / probe.scale
    ref = sklearn.LogisticRegression(C=1.0 / (len(y) * lam), solver="newton-cholesky", tol=1e-12, max_iter=1000)
    ref.fit(Z, y)
    assert np.max(np.abs(probe.logits(X) - ref.decision_function(Z))) < 1e-6
