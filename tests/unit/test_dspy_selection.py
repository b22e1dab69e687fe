"""L2SelectBest on DSPy's real ChatAdapter: what it may choose, what the LM's history shows, typed specs.

- A candidate that does not parse into the signature's output fields is never
  returned while one that parses exists (call level: the engine re-runs the
  request's selector among the candidates that parse; program level: a run
  that raised ``AdapterParseError`` is not chosen), and the prediction says
  when none parsed.
- ``lm.history`` shows the calls of ``level="program"`` (it used to stay empty).
- Intervention specs stay typed from the module to the ``GenerationRequest``
  and become JSON once, in DSPy's ``metadata``.

The tiny random model writes gibberish, so :class:`Rewrite` replaces the
candidates' texts after a real generation: norms, scores and the backend's own
selection are real; only which texts parse is set by the test.
"""

from __future__ import annotations

import json
import logging
import traceback

import pytest

dspy = pytest.importorskip("dspy")

from dspy.utils.exceptions import AdapterParseError  # noqa: E402

import l2reason.dspy as l2  # noqa: E402
from l2reason.select import select_result  # noqa: E402
from l2reason.techniques import specs  # noqa: E402

SIG = "question -> answer"
JUNK = "{answer}=5"  # what the demo printed: no [[ ## answer ## ]] section


def chat(answer: object) -> str:
    """A completion ChatAdapter parses into ``answer``."""
    return f"[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"


class Rewrite:
    """A real backend whose results' candidate texts are replaced by ``texts(call_index, result)``.

    ``stored`` keeps every (request, result) as the backend returned it (texts
    replaced, before the engine looked at it).
    """

    def __init__(self, inner, texts, name):
        self.inner, self.texts, self.model_id = inner, texts, name
        self.stored = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, req):
        res = self.inner.generate(req)
        for c, text in zip(res.candidates, self.texts(len(self.stored), res), strict=True):
            c.text = text
        self.stored.append((req, res.model_copy(deep=True)))
        return res


@pytest.fixture(scope="module")
def base(tiny):
    from l2reason.backends.hf import HFBackend

    be = HFBackend(tiny)
    be.eos_ids = set()  # the random model may sample EOS first
    return be


def _lm(base, texts, name):
    backend = Rewrite(base, texts, name)
    return l2.l2_lm(backend=backend, name=name, max_tokens=6, cache=False), backend


def test_a_junk_candidate_with_the_best_score_is_not_chosen(base):
    def texts(call, res):  # the ℓ2 selector's own choice is the junk one
        return [JUNK if i == res.chosen_index else chat(i) for i in range(len(res.candidates))]

    lm, be = _lm(base, texts, "tiny-junk-best")
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        pred = l2.L2SelectBest(dspy.Predict(SIG), n=4, temperature=1.0)(question="0 + -2 + -4 * 0 * 3")
    [(req, stored)] = be.stored
    junk = stored.chosen_index
    [call] = pred.l2.calls
    assert call["chosen"] != junk and pred.answer == str(call["chosen"])
    assert call["parsed"] is True and pred.l2.parsed is True
    assert [c["parsed"] for c in call["candidates"]] == [i != junk for i in range(4)]
    assert call["selection"]["scores"][junk] is None
    # the choice is the request's own selector, run on the stored result's candidates that parse
    keep = [i for i in range(4) if i != junk]
    sub = stored.model_copy(update={"candidates": [stored.candidates[i] for i in keep]})
    assert keep[select_result(sub, req.selection, num_layers=base.num_layers).index] == call["chosen"]
    assert len(lm.history) == 1  # parsed on the first call: no JSON fallback


def test_when_no_candidate_parses_the_prediction_says_so(base, caplog):
    def texts(call, res):  # the chat call: all junk; ChatAdapter's JSON fallback call: all valid JSON
        return [JUNK if call == 0 else json.dumps({"answer": str(i)}) for i in range(len(res.candidates))]

    lm, _ = _lm(base, texts, "tiny-none-parse")
    with (
        caplog.at_level(logging.WARNING, logger="l2reason.dspy.engine"),
        dspy.context(lm=lm, adapter=dspy.ChatAdapter()),
    ):
        pred = l2.L2SelectBest(dspy.Predict(SIG), n=4, temperature=1.0)(question="hello")
    first, second = pred.l2.calls
    assert first["parsed"] is False and not any(c["parsed"] for c in first["candidates"])
    assert second["parsed"] is True  # checked with the JSONAdapter that formatted the second call
    assert pred.l2.parsed is False and pred.answer == str(second["chosen"])
    assert "none of the 4 candidates parses" in caplog.text


def test_program_level_runs_show_in_the_lm_history_and_a_run_that_does_not_parse_is_not_chosen(base):
    def run(junk_run):
        lm, _ = _lm(base, lambda call, res: [JUNK if call == junk_run else chat(call)], f"tiny-runs-{junk_run}")
        prog = l2.L2SelectBest(dspy.Predict(SIG), n=3, level="program", temperature=1.0)
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
            return prog(question="hello"), lm

    pred, lm = run(junk_run=None)
    assert [h["kwargs"]["rollout_id"] for h in lm.history] == [0, 1, 2]  # the LM's own history
    assert all(h["kwargs"]["temperature"] == 1.0 for h in lm.history)
    best = pred.l2.chosen_run
    # the same samples again (fresh engine), the winning run now does not parse
    pred, lm = run(junk_run=best)
    assert len(lm.history) == 3 and pred.l2.runs[best]["parsed"] is False
    assert pred.l2.chosen_run != best and pred.answer == str(pred.l2.chosen_run)

    lm, _ = _lm(base, lambda call, res: [JUNK], "tiny-runs-all")
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        with pytest.raises(AdapterParseError):
            l2.L2SelectBest(dspy.Predict(SIG), n=2, level="program", temperature=1.0)(question="hello")


def test_specs_stay_typed_from_the_module_to_the_request(base, monkeypatch):
    lm, be = _lm(base, lambda call, res: [chat(0)] * len(res.candidates), "tiny-typed")
    prog = l2.L2SelectBest(l2.L2Recurse(dspy.Predict(SIG), K=1, mode="static"), n=2, temperature=1.0)
    assert isinstance(prog.module.spec, specs.ALRRSpec)
    with l2.l2_context(interventions=[{"kind": "erss", "beta": 0.2}]) as merged:
        assert isinstance(merged.interventions[0], specs.ERSSSpec)  # a dict is parsed once, on entry

    in_dspy = []  # spec validations made by l2reason.dspy (the backend's own request checks are not counted)
    adapter = specs._ADAPTER

    class Counting:
        def validate_python(self, data):
            files = [f.filename.replace("\\", "/") for f in traceback.extract_stack()]
            # the backend's own request checks are not counted; the shared list parser in backends/base.py is
            if not any("l2reason/backends/" in f and not f.endswith("backends/base.py") for f in files):
                in_dspy.append(data)
            return adapter.validate_python(data)

    monkeypatch.setattr(specs, "_ADAPTER", Counting())
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        prog(question="hi")
    [(req, _)] = be.stored
    assert isinstance(req.interventions[0], specs.ALRRSpec) and req.interventions[0].mode == "static"
    assert len(in_dspy) == 1  # the engine parses the JSON it got, once; nothing in l2reason.dspy re-parses a spec
    meta = lm.history[-1]["kwargs"]["metadata"]["l2reason"]
    assert meta["interventions"] == [prog.module.spec.model_dump(mode="json")]
    assert json.loads(json.dumps(meta)) == meta  # JSON (DSPy hashes it into the cache key)
