"""L2SelectBest / L2Steer / L2Recurse / L2Observe and the metric, on the tiny random model.

The tiny model writes gibberish, so these programs use ``LenientAdapter`` (a
ChatAdapter whose parser accepts any text): prompts, LM calls, metadata, the
cache and history are DSPy's own and the engine and backend are real.
"""

from __future__ import annotations

import hashlib
import typing

import pytest

dspy = pytest.importorskip("dspy")

import l2reason.dspy as l2  # noqa: E402
from l2reason.errors import CapabilityError, ConfigError  # noqa: E402


class LenientAdapter(dspy.ChatAdapter):
    """ChatAdapter whose parser accepts any text (the tiny random model writes gibberish).

    Formatting, the LM call, metadata, caching and history are DSPy's own; only
    parsing is lenient: a ``str`` field gets the whole completion, a ``Literal``
    field an option chosen by a hash of the completion, a ``dict`` field ``{}``.
    """

    def parse(self, signature, completion):
        out = {}
        h = int.from_bytes(hashlib.blake2b(completion.encode(), digest_size=4).digest(), "little")
        for name, f in signature.output_fields.items():
            ann = f.annotation
            if typing.get_origin(ann) is typing.Literal:
                opts = typing.get_args(ann)
                out[name] = opts[h % len(opts)]
            elif ann is dict or typing.get_origin(ann) is dict:
                out[name] = {}
            else:
                out[name] = completion
        return out


SIG = "question -> answer"


@pytest.fixture(scope="module")
def noeos_backend(tiny):
    from l2reason.backends.hf import HFBackend

    be = HFBackend(tiny)
    be.eos_ids = set()  # the random model may sample EOS first; DSPy rejects an empty reply
    return be


@pytest.fixture()
def lm(noeos_backend):
    lm = l2.l2_lm(backend=noeos_backend, name="tiny-noeos", max_tokens=8, cache=False)
    with dspy.context(lm=lm, adapter=LenientAdapter()):
        yield lm


def _calls(lm):
    return [h["response"].provider_data["l2reason"] for h in lm.history]


def test_observe_attaches_report_without_changing_output(lm):
    plain = dspy.Predict(SIG)(question="hello")
    pred = l2.L2Observe(dspy.Predict(SIG))(question="hello")
    assert pred.answer == plain.answer
    rep = pred.l2
    assert rep.technique == "observe" and len(rep.calls) == 1
    assert rep.score == rep.calls[0]["scores"]["B/T"]
    assert "l2" not in pred.keys()  # not an output field
    assert l2.l2_report(pred) is rep


def test_select_best_call_level(lm):
    prog = l2.L2SelectBest(dspy.ChainOfThought(SIG), n=4, temperature=1.0)
    pred = prog(question="hello world")
    rep = pred.l2
    [call] = rep.calls
    assert call["n"] == 4 and call["selection"]["method"] == "l2"
    assert len(rep.candidate_scores) == 1 and len(rep.candidate_scores[0]) == 4
    sel = call["selection"]["scores"]
    assert sel[call["chosen"]] == max(sel)  # the best score (ties: a seeded draw among the tied)
    # the chosen candidate's text is what the program parsed
    assert pred.reasoning == call["candidates"][call["chosen"]]["text"]
    # the engine saw the settings in metadata, and the temperature
    kw = lm.history[-1]["kwargs"]
    assert kw["metadata"]["l2reason"]["n"] == 4 and kw["temperature"] == 1.0


def test_select_best_baseline_method_and_vote(lm):
    pred = l2.L2SelectBest(dspy.Predict(SIG), n=3, method="majority")(question="w1")
    assert pred.l2.calls[0]["selection"]["method"] == "majority"
    pred = l2.L2SelectBest(dspy.Predict(SIG), n=3, vote=True)(question="w1")
    assert pred.l2.calls[0]["selection"]["method"] == "l2-vote"


def test_select_best_program_level(lm):
    class TwoStep(dspy.Module):
        def __init__(self):
            super().__init__()
            self.a = dspy.Predict(SIG)
            self.b = dspy.Predict("question, draft -> answer")

        def forward(self, question):
            d = self.a(question=question).answer
            return self.b(question=question, draft=d)

    prog = l2.L2SelectBest(TwoStep(), n=3, level="program", temperature=1.0)
    pred = prog(question="hello")
    rep = pred.l2
    assert len(rep.runs) == 3 and all(len(r["calls"]) == 2 for r in rep.runs)
    scores = [r["score"] for r in rep.runs]
    assert rep.chosen_run == max(range(3), key=lambda i: (scores[i], -i))
    assert rep.score == scores[rep.chosen_run]
    # different rollouts: the runs differ
    texts = {tuple(c["candidates"][0].get("text", "") or str(c["scores"]) for c in r["calls"]) for r in rep.runs}
    assert len(texts) >= 2
    assert all(c["n"] == 1 for r in rep.runs for c in r["calls"])


def test_program_level_z_mean(lm):
    pred = l2.L2SelectBest(dspy.Predict(SIG), n=3, level="program", score="z_mean", temperature=1.0)(question="w3")
    zs = [r["score"] for r in pred.l2.runs]
    assert all(z is not None for z in zs) and abs(sum(zs)) < 1e-6


def test_recurse_and_steer_send_specs(lm):
    pred = l2.L2Recurse(dspy.Predict(SIG), K=1, mode="static")(question="hello")
    [spec] = lm.history[-1]["kwargs"]["metadata"]["l2reason"]["interventions"]
    assert spec["kind"] == "alrr" and spec["mode"] == "static"
    assert pred.l2.technique == "recurse" and pred.l2.calls[0]["settings"]["interventions"][0]["kind"] == "alrr"
    assert isinstance(pred.l2.interventions[0], dict)
    pred = l2.L2Steer(dspy.Predict(SIG), beta=0.3, S=1, p=1.0, C=0)(question="hello")
    [spec] = lm.history[-1]["kwargs"]["metadata"]["l2reason"]["interventions"]
    assert spec["kind"] == "erss" and spec["beta"] == 0.3


def test_static_steer_zero_alpha_is_plain(lm, noeos_backend):
    d = noeos_backend.hidden_size
    plain = dspy.Predict(SIG)(question="hello")
    steered = l2.L2Steer(dspy.Predict(SIG), method="static", vectors={1: [1.0] * d}, alpha=0.0)(question="hello")
    assert steered.answer == plain.answer


def test_composition_merges_settings(lm):
    prog = l2.L2SelectBest(l2.L2Recurse(dspy.ChainOfThought(SIG), K=1), n=3, temperature=1.0)
    pred = prog(question="hello")
    meta = lm.history[-1]["kwargs"]["metadata"]["l2reason"]
    assert meta["n"] == 3 and [i["kind"] for i in meta["interventions"]] == ["alrr"]
    assert pred.l2.technique == "select" and pred.l2.calls[0]["n"] == 3

    class Pipeline(dspy.Module):
        def __init__(self):
            super().__init__()
            self.first = l2.L2Steer(dspy.Predict(SIG), beta=0.2)
            self.second = dspy.Predict("question, context -> answer")

        def forward(self, question):
            c = self.first(question=question).answer
            return self.second(question=question, context=c)

    pred = l2.L2Observe(Pipeline())(question="w1")
    assert len(pred.l2.calls) == 2
    kinds = [[i["kind"] for i in c["settings"].get("interventions", [])] for c in pred.l2.calls]
    assert kinds == [["erss"], []]  # the steering applies only inside L2Steer


def calculator(expression: str = "1+1") -> str:
    """Evaluate an arithmetic expression."""
    return str(eval(expression, {"__builtins__": {}}))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda m: l2.L2SelectBest(m, n=2, temperature=1.0),
        lambda m: l2.L2Steer(m, beta=0.3),
        lambda m: l2.L2Recurse(m, K=1),
    ],
    ids=["select", "steer", "recurse"],
)
def test_react_with_tool(lm, wrap):
    agent = wrap(dspy.ReAct(SIG, tools=[calculator], max_iters=1))
    pred = agent(question="What is 2+3?")
    # every step of the loop (react steps + the extract step) is one LM call with the technique
    assert len(pred.l2.calls) >= 2
    assert len(pred.l2.calls) == len(lm.history)
    assert "trajectory" in pred.keys()


def test_threads_in_evaluate_equal_serial(noeos_backend):
    devset = [dspy.Example(question=f"w{i} w{i + 1}", answer="x").with_inputs("question") for i in range(8)]

    def run(threads):
        lm = l2.l2_lm(backend=noeos_backend, name="tiny-noeos", max_tokens=4, cache=False)  # fresh streams
        prog = l2.L2SelectBest(dspy.Predict(SIG), n=2, temperature=1.0)
        with dspy.context(lm=lm, adapter=LenientAdapter()):
            res = dspy.Evaluate(devset=devset, metric=l2.l2_metric, num_threads=threads, display_progress=False)(prog)
        return [(p.answer, p.l2.score, p.l2.candidate_scores) for _, p, _ in res.results], res.score

    serial, s1 = run(1)
    threaded, s8 = run(8)
    assert serial == threaded and s1 == s8


def test_metrics_forms(lm):
    pred = l2.L2Observe(dspy.Predict(SIG))(question="hello")
    ex = dspy.Example(question="hello", answer="w1").with_inputs("question")
    v = l2.l2_metric(ex, pred)
    assert 0.0 <= v <= 1.0 and v == pytest.approx(pred.l2.calls[0]["scores"]["C/T"])
    assert l2.l2_metric(ex, pred, None) == v
    fb = l2.l2_metric(ex, pred, None, "predict", None)
    assert fb.score == v and "C/T" in fb.feedback
    combo = l2.l2_combined(lambda e, p, t=None: 1.0, weight=0.25)
    assert combo(ex, pred) == pytest.approx(0.75 + 0.25 * v)
    assert "correctness = 1.000" in combo(ex, pred, None, "predict", None).feedback
    with pytest.raises(ConfigError, match="no ℓ2 report"):
        l2.l2_metric(ex, dspy.Prediction(answer="1"))
    with pytest.raises(ConfigError, match="unknown score"):
        l2.make_l2_metric("E/T")


def test_metric_in_evaluate_bootstrap_and_gepa_check(lm):
    trainset = [dspy.Example(question=f"w{i}", answer="w1").with_inputs("question") for i in range(4)]
    prog = l2.L2Observe(dspy.Predict(SIG))
    res = dspy.Evaluate(devset=trainset, metric=l2.l2_metric, display_progress=False)(prog)
    assert 0.0 <= res.score <= 100.0
    tele = dspy.BootstrapFewShot(
        metric=l2.make_l2_metric("A/T"),  # the mean norm: > 0 for any output
        metric_threshold=1e-9,
        max_bootstrapped_demos=2,
        max_labeled_demos=0,
        max_rounds=1,
    )
    compiled = tele.compile(prog, trainset=trainset)
    assert len(compiled.module.demos) == 2
    assert isinstance(compiled(question="w9").l2, l2.L2Report)
    for metric in (l2.l2_metric, l2.l2_combined(lambda e, p, t=None: 1.0)):
        dspy.GEPA(metric=metric, max_metric_calls=4, reflection_lm=lm)  # the 5-argument check passes


def test_bad_input_errors(lm, tiny_backend):
    with pytest.raises(ConfigError, match="wraps a dspy.Module"):
        l2.L2SelectBest(lambda **kw: None, n=2)
    with pytest.raises(ConfigError, match="n must be"):
        l2.L2SelectBest(dspy.Predict(SIG), n=0)
    with pytest.raises(ConfigError, match="unknown score"):
        l2.L2SelectBest(dspy.Predict(SIG), score="E/T")
    with pytest.raises(ConfigError, match="unknown selection method"):
        l2.L2SelectBest(dspy.Predict(SIG), method="best")
    with pytest.raises(ConfigError, match="K"):
        l2.L2Recurse(dspy.Predict(SIG), K=-1)
    with pytest.raises(ConfigError, match="unknown field"):
        l2.L2Steer(dspy.Predict(SIG), betta=0.1)
    with pytest.raises(ConfigError, match="unknown steering method"):
        l2.L2Steer(dspy.Predict(SIG), method="magic")
    # a non-l2reason LM
    with dspy.context(lm=dspy.LM("openai/gpt-4o-mini")), pytest.raises(ConfigError, match="needs an l2reason LM"):
        l2.L2Observe(dspy.Predict(SIG))(question="x")


def test_capability_missing_is_clear(lm, noeos_backend):
    class NoInterventions:
        """A backend that serves the protocol but offers no interventions."""

        def __init__(self, inner):
            self.inner = inner
            self.model_id = "tiny-no-interventions"
            self.num_layers = inner.num_layers

        @property
        def capabilities(self):
            return self.inner.capabilities.model_copy(update={"interventions": frozenset()})

        def generate(self, req):
            return self.inner.generate(req)

    lm2 = l2.l2_lm(backend=NoInterventions(noeos_backend), max_tokens=4, cache=False)
    with dspy.context(lm=lm2), pytest.raises(CapabilityError, match="cannot run \\['alrr'\\]"):
        l2.L2Recurse(dspy.Predict(SIG))(question="x")
    # the engine refuses too when called directly with the settings
    from dspy.lm15 import Config, Message, Request

    req = Request(
        model=lm2.model,
        messages=(Message.user("x"),),
        config=Config(extensions={"metadata": {"l2reason": {"interventions": [{"kind": "erss"}]}}}),
    )
    with pytest.raises(Exception, match="cannot run \\['erss'\\]"):
        lm2(req)


def test_save_load_program_with_module(lm, tmp_path):
    prog = l2.L2SelectBest(dspy.ChainOfThought(SIG), n=2)
    prog.module.predict.demos = [dspy.Example(question="w1", reasoning="w2", answer="w3")]
    prog.set_lm(lm)
    path = tmp_path / "p.json"
    prog.save(str(path))
    loaded = l2.L2SelectBest(dspy.ChainOfThought(SIG), n=2)
    loaded.load(str(path), allow_unsafe_lm_state=True)
    assert loaded.module.predict.demos[0]["answer"] == "w3"
    assert isinstance(loaded.module.predict.lm.engine, l2.L2Engine)
    a = prog(question="w4")
    b = loaded(question="w4")
    assert a.l2.calls[0]["n"] == b.l2.calls[0]["n"] == 2
