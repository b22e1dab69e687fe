"""Online pruning in the HF backend, its offline simulation, survivor-only selection, and non-finite stops.

Tiny random models built in the test; one is biased towards EOS so that
candidates of a request finish at different steps (the first-finished rule
needs rows that finish on their own).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from l2reason.backends.base import (
    Candidate,
    GenerationRequest,
    GenerationResult,
    Message,
    NormSpec,
    PruneSpec,
    SamplingParams,
    SelectionSpec,
)
from l2reason.backends.hf import HFBackend
from l2reason.errors import ConfigError, L2ReasonWarning
from l2reason.select import select_result
from l2reason.techniques.pruning import PruneTracker, running_scores, simulate, token_signal

N = 8
MAX_NEW = 40


@pytest.fixture(scope="module")
def eos_backend():
    """A tiny model whose EOS logit is raised so rows end between ~5 and 40 tokens."""
    from tests.conftest import make_tiny

    tiny = make_tiny(seed=1)
    with torch.no_grad():
        w = tiny.model.model.norm.weight
        tiny.model.lm_head.weight[1] += 3.0 * w / w.norm()
    return HFBackend(tiny)


def req(prune=None, n=N, seed=3, max_new=MAX_NEW, text="hello world w1", **kw):
    return GenerationRequest(
        messages=[Message(role="user", content=text)],
        n=n,
        sampling=SamplingParams(max_new_tokens=max_new, temperature=1.0, seed=seed),
        norms=NormSpec(layers="all"),
        logprobs=5,
        prune=prune,
        **kw,
    )


@pytest.fixture(scope="module")
def full(eos_backend):
    """The unpruned run every test compares with."""
    return eos_backend.generate(req())


def signals(spec, result):
    out = []
    for c in result.candidates:
        norms = c.norms.array()[:, spec.layers] if spec.score == "l2" else None
        tau = np.asarray(spec.tau) if isinstance(spec.tau, list) else None
        out.append(
            token_signal(
                spec, confidence=c.logprobs.confidence, self_certainty=c.logprobs.self_certainty, norms=norms, tau=tau
            )
        )
    return out


def median_lowest(spec, result):
    """A fixed threshold that prunes some rows: the median of the rows' lowest running scores."""
    lows = [running_scores(s, spec.window, spec.warmup)[1] for s in signals(spec, result)]
    return float(np.median([lo[-1] for lo in lows if np.isfinite(lo[-1])]))


class RowCounter:
    """Counts the rows of every decode forward (a forward pre-hook on the model)."""

    def __init__(self, model):
        self.rows: list[int] = []
        self.h = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:  # decode steps (the prefill has the whole prompt)
            self.rows.append(int(ids.shape[0]))

    def close(self):
        self.h.remove()


def test_rows_finish_at_different_steps(full):
    lengths = [c.completion_tokens for c in full.candidates]
    assert len(set(lengths)) >= 4 and sum(c.finish_reason == "eos" for c in full.candidates) >= 3, lengths


def test_pruning_off_is_identical(eos_backend, full):
    """No `prune` field and a rule that never prunes give exactly the run without it."""
    never = eos_backend.generate(req(PruneSpec(score="confidence", threshold=-1e9, warmup=1)))
    for a, b in zip(full.candidates, never.candidates, strict=True):
        assert a.text == b.text and a.finish_reason == b.finish_reason
        assert a.logprobs.logprob == b.logprobs.logprob and a.norms.per_token == b.norms.per_token
        assert a.prune is None and b.prune["pruned"] is False
    assert full.prune is None and never.prune["pruned"] == []
    assert "prune" not in req().model_dump(exclude_none=True)


def test_pruned_rows_stop_consuming_decode_steps(eos_backend, full):
    spec = PruneSpec(score="confidence", threshold=0.0, warmup=4, window=8)
    spec = spec.model_copy(update={"threshold": median_lowest(spec, full)})
    counter = RowCounter(eos_backend.model)
    try:
        eos_backend.generate(req())
        plain_rows = sum(counter.rows)
        counter.rows.clear()
        pruned = eos_backend.generate(req(spec))
        pruned_rows = sum(counter.rows)
    finally:
        counter.close()
    assert pruned.prune["pruned"], "nothing was pruned: the test would be vacuous"
    # each row is in the decode forwards of steps 2..L: L - 1 forwards for L tokens
    assert plain_rows == sum(c.completion_tokens - 1 for c in full.candidates)
    assert pruned_rows == sum(c.completion_tokens - 1 for c in pruned.candidates)
    assert pruned_rows < plain_rows
    assert pruned.completion_tokens < full.completion_tokens


@pytest.mark.parametrize(
    "spec",
    [
        PruneSpec(score="confidence", warmup=4, window=8, first=2, quantile=0.5),
        PruneSpec(score="self-certainty", warmup=3, window=4, first=3, quantile=1.0),
        PruneSpec(score="l2", layers=[2], warmup=4, window=6, first=2, quantile=0.9),
        PruneSpec(score="l2", layers=[1, 2], direction="low", warmup=2, window=3, first=1, quantile=0.5),
        PruneSpec(score="l2", layers=[1, 2], l2_stat="exceedance", tau=[0.1, 0.11], warmup=2, first=2, quantile=0.9),
        PruneSpec(score="confidence", threshold=99.0, warmup=6, window=4, min_keep=3),  # min_keep binds
    ],
    ids=["conf-first2", "sc-first3", "l2-mean", "l2-low", "l2-exceed", "fixed-min_keep"],
)
def test_online_equals_simulation_and_prefixes(eos_backend, full, spec):
    """The simulation on the unpruned run predicts the online run; pruned rows are exact prefixes."""
    sim = simulate(spec, signals(spec, full))
    on = eos_backend.generate(req(spec))
    got_steps = [c.prune["step"] if c.prune["pruned"] else -1 for c in on.candidates]
    assert got_steps == sim.pruned_step.tolist()
    assert [c.completion_tokens for c in on.candidates] == sim.tokens.tolist()
    assert on.prune["threshold"] == pytest.approx(sim.threshold, rel=1e-9)
    assert on.prune["threshold_step"] == sim.threshold_step
    assert any(got_steps[j] >= 0 for j in range(N)), "nothing was pruned: the test would be vacuous"
    assert on.prune["survivors"] >= spec.min_keep
    for a, b in zip(full.candidates, on.candidates, strict=True):
        if b.finish_reason == "pruned":
            L = b.completion_tokens
            assert b.prune["step"] == L
            assert b.tokens == a.tokens[:L] and a.text.startswith(b.text)
            np.testing.assert_allclose(b.logprobs.logprob, a.logprobs.logprob[:L], atol=1e-5)
            np.testing.assert_allclose(b.norms.array(), a.norms.array()[:L], atol=1e-5)
        else:
            assert (a.text, a.finish_reason, a.completion_tokens) == (b.text, b.finish_reason, b.completion_tokens)
    if spec.min_keep == 3:
        assert on.prune["survivors"] == 3


def test_requests_in_one_call_prune_independently(eos_backend, full):
    spec = PruneSpec(score="confidence", warmup=4, window=8, first=2, quantile=0.5)
    other = req(n=3, seed=11, text="w5 w6 w7")
    both = eos_backend.generate_many([req(spec), other])
    alone = eos_backend.generate(req(spec))
    assert [c.completion_tokens for c in both[0].candidates] == [c.completion_tokens for c in alone.candidates]
    a, b = dict(both[0].prune), dict(alone.prune)
    assert a.pop("threshold") == pytest.approx(b.pop("threshold"), rel=1e-5)  # batch shapes differ: float noise only
    assert a == b
    assert both[1].prune is None and all(c.finish_reason != "pruned" for c in both[1].candidates)
    single = eos_backend.generate(other)
    assert [c.text for c in single.candidates] == [c.text for c in both[1].candidates]


def test_l2_pruning_layers_need_not_be_returned(eos_backend, full):
    """Pruning on layer 2 while returning only layer 0: the capture grows, the result does not."""
    spec = PruneSpec(score="l2", layers=[2], warmup=4, window=6, first=2, quantile=0.9)
    r = eos_backend.generate(req(spec).model_copy(update={"norms": NormSpec(layers=[0])}))
    assert r.candidates[0].norms.layers == [0] and r.candidates[0].norms.array().shape[1] == 1
    sim = simulate(spec, signals(spec, full))
    assert [c.completion_tokens for c in r.candidates] == sim.tokens.tolist()


def test_selection_uses_survivors_only(eos_backend, full):
    spec = PruneSpec(score="confidence", warmup=4, window=8, first=2, quantile=0.5)
    on = eos_backend.generate(req(spec, selection=SelectionSpec(method="shortest")))
    pruned = [j for j, c in enumerate(on.candidates) if c.finish_reason == "pruned"]
    assert pruned
    sel = on.selection
    assert sel["index"] not in pruned  # the pruned rows are the shortest, yet never chosen
    assert all(sel["scores"][j] is None for j in pruned)
    assert sel["details"]["survivors"] == [j for j in range(N) if j not in pruned]


def _cand(i, answer, finish="eos"):
    return Candidate(
        index=i, text=f"The answer is {answer}.", finish_reason=finish, prompt_tokens=1, completion_tokens=3
    )


def test_majority_vote_ignores_pruned_answers():
    cands = [
        _cand(0, 5),
        _cand(1, 7, "pruned"),
        _cand(2, 7, "pruned"),
        _cand(3, 5),
        _cand(4, 7),
        _cand(5, 7, "nonfinite"),
    ]
    res = GenerationResult(model_id="m", backend="x", candidates=cands)
    sel = select_result(res, "majority")
    assert sel.answer == "5" and sel.index == 0
    assert np.isnan(sel.scores[1]) and np.isnan(sel.scores[5]) and sel.scores[0] == 2.0
    everyone = GenerationResult(model_id="m", backend="x", candidates=[_cand(0, 5, "pruned"), _cand(1, 7, "pruned")])
    assert select_result(everyone, "majority").index == 0  # nobody survives: all of them vote


def test_tracker_equals_simulate_on_random_rows():
    """Driven step by step (as the backend does) the tracker decides exactly what `simulate` replays."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(2, 9))
        lens = rng.integers(1, 30, size=n)
        sig = [rng.normal(size=int(t)).round(int(rng.integers(1, 4))) for t in lens]  # rounding makes ties
        fixed = bool(rng.integers(2))
        rule = SimpleNamespace(
            threshold=float(rng.normal(-0.3, 0.5)) if fixed else "first-finished",
            first=int(rng.integers(1, n + 1)),
            quantile=float(rng.choice([0.0, 0.1, 0.5, 1.0])),
            warmup=int(rng.integers(0, 8)),
            window=int(rng.integers(1, 10)),
            min_keep=int(rng.integers(1, n)),
        )
        tr = PruneTracker(rule, n, int(lens.max()))
        stopped = np.zeros(n, dtype=bool)
        for t in range(int(lens.max())):
            rows = [j for j in range(n) if not stopped[j]]
            if not rows:
                break
            fin = [t + 1 == lens[j] for j in rows]
            for j in tr.step(rows, [sig[j][t] for j in rows], fin):
                stopped[j] = True
            for j, f in zip(rows, fin, strict=True):
                stopped[j] |= f
        sim = simulate(rule, sig)
        assert tr.pruned_step.tolist() == sim.pruned_step.tolist(), (trial, rule)
        assert tr.length.tolist() == sim.tokens.tolist(), trial
        assert tr.threshold == sim.threshold and tr.threshold_step == sim.threshold_step, trial


def test_spec_and_request_validation():
    msgs = [Message(role="user", content="hi")]
    with pytest.raises(ValidationError, match="finite"):
        PruneSpec(threshold=float("nan"))
    with pytest.raises(ValidationError, match="needs tau"):
        PruneSpec(score="l2", l2_stat="exceedance")
    with pytest.raises(ValidationError, match="only used"):
        PruneSpec(tau=[1.0])
    with pytest.raises(ValidationError):
        PruneSpec(warmup=10**9)
    with pytest.raises(ValidationError):
        PruneSpec(min_keep=0)
    with pytest.raises(ValidationError, match="extra"):
        PruneSpec(windw=3)
    with pytest.raises(ValidationError, match="min_keep"):
        GenerationRequest(messages=msgs, n=1, logprobs=5, prune=PruneSpec())
    with pytest.raises(ValidationError, match="first < n"):
        GenerationRequest(messages=msgs, n=2, logprobs=5, prune=PruneSpec(first=2))
    with pytest.raises(ValidationError, match="logprobs"):
        GenerationRequest(messages=msgs, n=4, prune=PruneSpec(score="confidence"))
    ok = GenerationRequest(messages=msgs, n=4, prune={"score": "l2", "threshold": 3})
    assert ok.prune.threshold == 3.0 and ok.prune.min_keep == 1


def test_capabilities_say_pruning(eos_backend):
    assert eos_backend.capabilities.pruning is True


def test_nonfinite_norm_stops_the_row_with_a_warning(eos_backend):
    """A huge steering vector makes the norm inf: the row stops ('nonfinite'), warns, and keeps finite norms."""
    huge = [{"kind": "static_steer", "vectors": {1: [1.0] * 32}, "alpha": 1e30}]
    steered = req(n=2, max_new=10, interventions=huge)
    plain = req(n=2, max_new=10)
    blind = steered.model_copy(update={"norms": None})  # no norms captured: the steered layer is still checked
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = eos_backend.generate_many([steered, plain, blind])
    msgs = [str(x.message) for x in w if issubclass(x.category, L2ReasonWarning)]
    assert len(msgs) == 2 and all("non-finite" in m and "step 2" in m for m in msgs)
    for r in (out[0], out[2]):
        assert [c.finish_reason for c in r.candidates] == ["nonfinite", "nonfinite"]
        assert all(c.completion_tokens == 1 for c in r.candidates)  # the prefill's token; step 2 was steered
    assert all(np.isfinite(c.norms.array()).all() for c in out[0].candidates)
    assert all(c.finish_reason != "nonfinite" for c in out[1].candidates)
    alone = eos_backend.generate(plain)
    assert [c.text for c in alone.candidates] == [c.text for c in out[1].candidates]


def test_replay_of_a_stored_run_matches_online_pruning(eos_backend, tmp_path):
    """Through the harness's storage (rounded signals): the replay predicts the online run of the same items."""
    from l2reason.eval.harness import run_eval
    from l2reason.eval.pruning import online_check, simulate_run
    from tests.conftest import run_config

    passes = {"methods": ["majority"], "gen_methods": ["none"]}  # the majority vote only, no generation pass
    cfg = run_config(eos_backend, limit=3, n=6, max_new_tokens=30, batch_items=2, logprobs=5, **passes)
    run = run_eval(eos_backend, cfg, tmp_path, show_progress=False)
    base = PruneSpec(score="confidence", threshold=0.0, warmup=3, window=6, min_keep=2)
    lows = [running_scores(s, base.window, base.warmup)[1][-1] for r in run.samples for s in signals_of(base, r)]
    spec = base.model_copy(update={"threshold": float(np.median(lows)) + 1e-3})
    sim = simulate_run(run.samples, spec, num_layers=cfg.num_layers)
    assert 0 < sim.pruned_frac < 1 and sim.saved > 0
    chk = online_check(eos_backend, run, spec)
    assert chk["items"] == 3 and chk["candidates"] == 18
    assert chk["same_tokens"] == chk["same_pruned"] == chk["prefix_ok"] == 18
    assert chk["same_vote"] == 3
    assert chk["online_tokens"] == chk["replay_tokens"] == sum(it.tokens for it in sim.items)
    first = PruneSpec(score="self-certainty", warmup=2, window=4, first=2, quantile=0.5)
    chk2 = online_check(eos_backend, run, first, limit=2)
    assert chk2["same_tokens"] == chk2["same_pruned"] == chk2["candidates"] == 12
    # check_batch is online_check's per-batch step; the unpruned results themselves are not the replay of a rule
    # that prunes, so it must count differences
    from l2reason.eval.pruning import check_batch

    rows, tot = check_batch(run.samples, [r.result for r in run.samples], spec, cfg.num_layers)
    assert len(rows) == 3 and tot["candidates"] == 18 and tot["prefix_ok"] == 18
    assert tot["same_tokens"] < 18 and tot["online_tokens"] - tot["replay_tokens"] == chk["stored_tokens"] - sum(
        it.tokens for it in sim.items
    )
    with pytest.raises(ConfigError, match="1 results for 2 stored items"):
        check_batch(run.samples[:2], [run.samples[0].result], spec, cfg.num_layers)


def signals_of(spec, rec):
    from l2reason.eval.pruning import item_signals

    return item_signals(rec, spec, num_layers=4)


def test_interventions_follow_rows_that_leave_the_batch(eos_backend):
    """Built-in controllers index their state through StepContext.rows, so compacting the batch changes nothing.

    Reference: the same controllers as (non-built-in) subclasses, which keep every row in the batch.
    """
    from l2reason.backends.hf import HFBackend
    from l2reason.techniques.controllers import CONTROLLERS

    ivs = [
        {"kind": "alrr", "K": 1, "g": 0.0, "b": 10.0, "threshold": {"warmup": 3}, "layers": [1, 2]},
        {"kind": "erss", "S": 1, "p": 0.7, "C": 1, "c_min": -1.0, "threshold": {"warmup": 3}, "layers": [2]},
        {"kind": "suppress", "target": "random", "rate": 0.2, "layers": [1]},
    ]
    keep_all = HFBackend(eos_backend.loaded)
    keep_all.controller_factories = {k: type(f"Keep{v.__name__}", (v,), {}) for k, v in CONTROLLERS.items()}
    r = req(n=6, interventions=ivs)
    spec = PruneSpec(score="confidence", warmup=4, window=8, first=2, quantile=0.5)
    for request in (r, r.model_copy(update={"prune": spec})):
        compact, ref = eos_backend.generate(request), keep_all.generate(request)
        lengths = [c.completion_tokens for c in compact.candidates]
        assert len(set(lengths)) > 2  # rows did leave the batch at different steps
        for a, b in zip(compact.candidates, ref.candidates, strict=True):
            assert (a.text, a.finish_reason, a.completion_tokens) == (b.text, b.finish_reason, b.completion_tokens)
            assert a.interventions == b.interventions
            np.testing.assert_allclose(a.norms.array(), b.norms.array(), atol=1e-5)
        assert any(c.interventions["erss"]["injections"] for c in compact.candidates)
