"""DSPy programs end-to-end on real packaged models (ChatAdapter parses real text here)."""

from __future__ import annotations

import os

import pytest

dspy = pytest.importorskip("dspy")

import l2reason.dspy as l2  # noqa: E402

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def fast_lm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lm = l2.l2_lm("fast", max_tokens=48, cache=False)
    with dspy.context(lm=lm):
        yield lm


@pytest.mark.ci
def test_select_best_chain_of_thought_fast(fast_lm):
    pred = l2.L2SelectBest(dspy.Predict("question -> answer"), n=2)(question="What is 2+3?")
    assert isinstance(pred.answer, str)
    # ChatAdapter may fall back to JSONAdapter when a small model breaks the format: >= 1 LM call
    calls = pred.l2.calls
    assert calls and all(c["n"] == 2 for c in calls)
    assert all(len(s) == 2 for s in pred.l2.candidate_scores)


@pytest.mark.ci
def test_cache_keeps_provider_data_fast():
    lm = l2.l2_lm("fast", max_tokens=16, cache=True)
    a = lm("Say hello.")
    b = lm("Say hello.")
    assert a == b
    assert lm.history[-1]["response"].provider_data == lm.history[-2]["response"].provider_data


def test_steer_and_recurse_react_fast(fast_lm):
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    for wrap in (lambda m: l2.L2Steer(m, beta=0.3), lambda m: l2.L2Recurse(m, K=1)):
        agent = wrap(dspy.ReAct("question -> answer", tools=[add], max_iters=2))
        try:
            pred = agent(question="What is 2 plus 3?")
        except Exception as e:  # SmolLM2 may break the format; the LM calls still ran
            pytest.skip(f"fast model broke the ReAct format: {type(e).__name__}")
        assert len(pred.l2.calls) >= 1 and "interventions" in pred.l2.calls[0]["settings"]


def test_default_model_program_compose():
    lm = l2.l2_lm("default", max_tokens=96, cache=False)
    with dspy.context(lm=lm):
        prog = l2.L2SelectBest(l2.L2Recurse(dspy.ChainOfThought("question -> answer"), K=1), n=2)
        pred = prog(question="What is 6 times 7?")
    assert pred.l2.calls[0]["n"] == 2
    assert pred.l2.calls[0]["settings"]["interventions"][0]["kind"] == "alrr"


@pytest.mark.ci
def test_streamify_streams_a_field_token_by_token():
    """dspy.streamify over the engine: a field's text arrives in several chunks that join to the field."""
    import asyncio

    from dspy.streaming import StreamListener, StreamResponse

    lm = l2.l2_lm("default", max_tokens=160, cache=False)
    prog = dspy.streamify(
        dspy.ChainOfThought("question -> answer"),
        stream_listeners=[StreamListener(signature_field_name="reasoning")],
    )

    async def run():
        chunks, final = [], None
        with dspy.context(lm=lm):
            async for x in prog(question="A baker bakes 7 trays of 12 muffins and sells 59. How many are left?"):
                if isinstance(x, StreamResponse):
                    chunks.append(x.chunk)
                elif isinstance(x, dspy.Prediction):
                    final = x
        return chunks, final

    chunks, final = asyncio.run(run())
    assert final is not None and final.reasoning
    assert len(chunks) >= 3  # streamed as it decoded, not one block
    assert "".join(chunks).strip() == final.reasoning.strip()


def test_select_best_never_returns_a_candidate_that_does_not_parse_default():
    """Issue 23.2: `make demo`'s recipe printed `{answer}=5` for this problem; the answer must come from a
    candidate ChatAdapter parses whenever one of the call's candidates does."""

    class Solve(dspy.Signature):
        """Solve the math word problem. Give the final answer as a number only."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField(desc="a number")

    lm = l2.l2_lm("default", max_tokens=160, cache=False)
    with dspy.context(lm=lm):
        pred = l2.L2SelectBest(dspy.ChainOfThought(Solve), n=4)(question="0 + -2 + -4 * 0 * 3")
    for call in pred.l2.calls:
        if any(c.get("parsed") for c in call["candidates"]):
            assert call["parsed"] is True
    assert pred.l2.calls[0]["parsed"] is not None  # the call was checked
    assert "{answer}" not in pred.answer
