"""The label-free confidence metric (``confidence_metric``) and the used-by-metric benchmark's pure helpers.

Pure tests on hand-made :class:`L2Report` objects, then one run on the tiny
random model: an LM configured with ``selection={"method": "self-certainty"}``
and ``n=1`` returns the single candidate's self-certainty beside its ℓ2
scores, and both metrics read the same prediction.
"""

from __future__ import annotations

import json

import pytest

dspy = pytest.importorskip("dspy")

import l2reason.dspy as l2  # noqa: E402
from l2reason.dspy.modules import L2Report, _attach  # noqa: E402
from l2reason.errors import ConfigError  # noqa: E402
from tests.unit.test_dspy_modules import LenientAdapter  # noqa: E402


def _pred(*calls: dict) -> dspy.Prediction:
    return _attach(dspy.Prediction(answer="1"), L2Report("observe", "C/T", None, list(calls)))


def _call(method: str, scores: list, chosen: int = 0) -> dict:
    return {"chosen": chosen, "scores": {"C/T": 0.1}, "selection": {"method": method, "scores": scores}}


def test_confidence_metric_means_the_chosen_scores_over_calls():
    pred = _pred(_call("self-certainty", [2.0]), _call("self-certainty", [1.0, 4.0], chosen=1))
    assert l2.confidence_metric(None, pred) == pytest.approx(3.0)
    fb = l2.confidence_metric(None, pred, None, "predict", None)
    assert fb.score == pytest.approx(3.0) and "2 LM call(s)" in fb.feedback
    assert l2.make_confidence_metric("deepconf")(None, _pred(_call("deepconf", [0.5]))) == 0.5


def test_confidence_metric_missing_and_errors():
    assert l2.confidence_metric(None, _pred(_call("self-certainty", [None])), None) == 0.0
    assert l2.make_confidence_metric(missing=-1.0)(None, _pred(_call("self-certainty", [float("nan")]))) == -1.0
    with pytest.raises(ConfigError, match='selection=\\{"method": "self-certainty"\\}'):
        l2.confidence_metric(None, _pred({"chosen": 0, "scores": {}, "selection": None}))
    with pytest.raises(ConfigError, match="no ℓ2 report"):
        l2.confidence_metric(None, dspy.Prediction(answer="1"))
    with pytest.raises(ConfigError, match="unknown confidence method"):
        l2.make_confidence_metric("majority")


def test_confidence_and_l2_metric_from_one_call(tiny):
    from l2reason.backends.hf import HFBackend

    be = HFBackend(tiny)
    be.eos_ids = set()  # DSPy rejects an empty reply; the random model may sample EOS first
    lm = l2.l2_lm(backend=be, name="tiny-conf", max_tokens=6, cache=False, selection={"method": "self-certainty"})
    with dspy.context(lm=lm, adapter=LenientAdapter()):
        pred = l2.L2Observe(dspy.Predict("question -> answer"), score="C/T")(question="hello")
    (call,) = pred.l2.calls
    assert call["n"] == 1 and call["selection"]["method"] == "self-certainty"
    sc = l2.confidence_metric(None, pred)
    assert sc == pytest.approx(call["selection"]["scores"][0]) and sc > 0.0
    assert l2.l2_metric(None, pred) == pytest.approx(call["scores"]["C/T"])


def test_benchmark_quantile_and_jsonl(tmp_path):
    from benchmarks.used_by_metric import Sink, quantile, read_jsonl

    assert quantile([0.0, 1.0, None, 2.0, float("nan"), 3.0], 0.5) == pytest.approx(1.5)
    sink = Sink(tmp_path / "r.jsonl")
    sink.write({"a": 1})
    with sink.path.open("a") as f:
        f.write('{"a": 2')  # a line torn by a stop is skipped
    assert read_jsonl(sink.path) == [{"a": 1}]


def test_plan_solve_program_reports_both_steps_and_bootstraps_both(tiny):
    """The benchmark's two-step program: both LM calls land in one ℓ2 report, and BootstrapFewShot gives each
    step the same train traces as demos (what ``demo_questions`` reads)."""
    from benchmarks.used_by_metric import demo_questions, program
    from l2reason.backends.hf import HFBackend

    be = HFBackend(tiny)
    be.eos_ids = set()
    lm = l2.l2_lm(backend=be, name="tiny-ps", max_tokens=5, cache=False, selection={"method": "self-certainty"})
    with dspy.context(lm=lm, adapter=LenientAdapter()):
        prog = program("plan-solve")
        pred = prog(question="2 + 3?")
        assert len(pred.l2.calls) == 2 and all(c["n"] == 1 for c in pred.l2.calls)
        assert l2.confidence_metric(None, pred) == pytest.approx(
            sum(c["selection"]["scores"][0] for c in pred.l2.calls) / 2
        )
        train = [dspy.Example(question=q).with_inputs("question") for q in ("1 + 1?", "4 * 2?", "9 - 3?")]
        tele = dspy.BootstrapFewShot(metric=None, max_bootstrapped_demos=2, max_labeled_demos=0, max_rounds=1)
        compiled = tele.compile(program("plan-solve"), trainset=train)
    assert [n for n, _ in compiled.named_predictors()] == ["module.plan.predict", "module.solve.predict"]
    assert demo_questions(compiled) == ["1 + 1?", "4 * 2?"]
    assert [d["question"] for d in compiled.named_predictors()[1][1].demos] == ["1 + 1?", "4 * 2?"]
    with pytest.raises(ValueError, match="unknown program 'tot'"):
        program("tot")


def test_noise_metric_is_fixed_by_question_and_reply():
    from benchmarks.used_by_metric import noise_metric

    ex = dspy.Example(question="q").with_inputs("question")
    a, b = noise_metric(ex, dspy.Prediction(answer="1")), noise_metric(ex, dspy.Prediction(answer="2"))
    assert 0 <= a < 1 and 0 <= b < 1 and a != b
    assert noise_metric(ex, dspy.Prediction(answer="1")) == a


def test_compile_with_mipro_light_stores_instructions_and_demos(tiny, tmp_path):
    """The benchmark's MIPROv2 path end to end on the tiny model: a program is compiled with the label-free
    ℓ2 metric, saved with its instructions and demos, and loads back."""
    import argparse

    from benchmarks.used_by_metric import compile_one, program
    from l2reason.backends.hf import HFBackend
    from l2reason.eval.datasets import load_dataset

    data = load_dataset("gsm_symbolic:seed=42")
    train = data.items(limit=2, offset=100)
    rows = [{"item": it.id, "l2": 0.1 * i, "confidence": 1.0} for i, it in enumerate(train)]
    args = argparse.Namespace(
        out=str(tmp_path), program="cot", optimizer="mipro-light", demos=1, quantile=0.5, seed=0, threads=1
    )
    be = HFBackend(tiny)
    be.eos_ids = set()
    lm = l2.l2_lm(backend=be, name="tiny-mipro", max_tokens=4, cache=False, selection={"method": "self-certainty"})
    with dspy.context(lm=lm, adapter=LenientAdapter()):
        compiled = compile_one("l2", args, data, train, rows)
    meta = json.loads((tmp_path / "programs" / "l2.meta.json").read_text())
    assert meta["threshold"] == pytest.approx(0.05) and len(meta["instructions"]) == 1
    assert all(isinstance(x, str) and x for x in meta["instructions"])
    assert set(meta["demos"]) <= {it.id for it in train} and len(meta["demos"]) <= 1
    again = program("cot")
    again.load(str(tmp_path / "programs" / "l2.json"))
    assert (
        again.named_predictors()[0][1].signature.instructions
        == compiled.named_predictors()[0][1].signature.instructions
    )
