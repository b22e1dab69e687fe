"""The label-free confidence metric (``confidence_metric``) and the used-by-metric benchmark's pure helpers.

Pure tests on hand-made :class:`L2Report` objects, then one run on the tiny
random model: an LM configured with ``selection={"method": "self-certainty"}``
and ``n=1`` returns the single candidate's self-certainty beside its ℓ2
scores, and both metrics read the same prediction.
"""

from __future__ import annotations

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
