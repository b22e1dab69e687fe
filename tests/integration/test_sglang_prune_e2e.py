"""Online pruning inside a real SGLang 0.5.23 server (CPU path) with the plugin, against the offline replay.

SGLang's CPU path does not reproduce sampled candidates from call to call
(``docs/sglang.md``), so, unlike the vLLM test, the pruned run cannot be
compared with an unpruned one. What is checked instead, on the completions as
the engine returned them: :func:`~l2reason.techniques.pruning.simulate` on
the per-token signals the engine produced (each pruned candidate up to where
the engine stopped it, which is past its prune step) prunes exactly the
candidates the engine pruned, at the same token; the engine marked that token
and stopped the candidate within three tokens of it (SGLang: at it). One unpruned run sets a
threshold that prunes some candidates (the median of their lowest running
scores). Needs ``make sglang`` (``$L2REASON_SGLANG_PYTHON``).
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_e2e import LOGS, serving

from l2reason.backends.base import GenerationRequest, Message, PruneSpec, SamplingParams
from l2reason.serving.prune import record_signal
from l2reason.serving.settings import PruneSettings
from l2reason.techniques.pruning import running_scores, simulate, token_signal

pytestmark = [pytest.mark.real, pytest.mark.ci, pytest.mark.sglang]

N, MAX_NEW, LOGPROBS = 8, 64, 5
PROMPT = "In one or two short sentences: why is the sky blue?"


@pytest.fixture(scope="module")
def backend():
    from l2reason.backends.sglang import SGLangBackend
    from l2reason.backends.sglang.server import SGLangServer, free_port

    port = free_port()
    args = ["--dtype", "float32", "--context-length", "1024", "--max-total-tokens", "8192"]
    srv = SGLangServer("default", port=port, device="cpu", extra_args=args, log_path=LOGS / f"sglang-prune-{port}.log")
    with serving(srv, timeout=900):
        be = SGLangBackend(srv.url, model="default")
        assert be.capabilities.pruning
        yield be


def request(prune: PruneSpec | None = None) -> GenerationRequest:
    return GenerationRequest(
        messages=[Message(role="user", content=PROMPT)],
        n=N,
        sampling=SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, seed=11),
        logprobs=LOGPROBS,
        prune=prune,
    )


@pytest.mark.parametrize("score", ["self-certainty", "confidence"])
def test_engine_pruning_equals_the_replay_of_what_it_generated(backend, score):
    base = PruneSpec(score=score, threshold=0.0, warmup=4, window=8)
    full = backend.generate(request())
    sig = [
        token_signal(base, confidence=c.logprobs.confidence, self_certainty=c.logprobs.self_certainty)
        for c in full.candidates
    ]
    lowest = [running_scores(s, base.window, base.warmup)[1][-1] for s in sig]
    spec = base.model_copy(update={"threshold": float(np.median([x for x in lowest if np.isfinite(x)]))})
    seen: list[list] = []
    send = backend._send

    def spy(requests, items, timeout=None):
        seen.append(send(requests, items, timeout=timeout))
        return seen[-1]

    backend._send = spy
    try:
        res = backend.generate(request(spec))
    finally:
        del backend._send
    req = request(spec)
    replies = [backend._parse(o, req) for o in seen[-1]]
    rule = PruneSettings(group="g", n=N, index=0, max_len=MAX_NEW, k=LOGPROBS, **spec.model_dump(
        include={"score", "threshold", "first", "quantile", "warmup", "window", "min_keep"}))  # fmt: skip
    engine_sig = [np.array([record_signal(rule, rec) for rec in r.records[: len(r.ids)]]) for r in replies]
    got = [c.prune["step"] if c.prune["pruned"] else -1 for c in res.candidates]
    # SGLang ends a capped request exactly at its cap (its output is cut to max_new_tokens), so a pruned
    # candidate's data ends at its prune step; for `simulate` it was still running there: one more token
    # (any value: it cannot change the lowest score at the prune step)
    engine_sig = [np.append(x, 0.0) if s >= 0 and len(x) == s else x for x, s in zip(engine_sig, got, strict=True)]
    sim = simulate(spec, engine_sig)
    assert got == sim.pruned_step.tolist() and sum(s >= 0 for s in got) >= 1, (got, [len(r.ids) for r in replies])
    for j, s in enumerate(got):
        c, r = res.candidates[j], replies[j]
        if s < 0:
            assert c.completion_tokens == len(r.ids) and c.finish_reason != "pruned"
            continue
        assert c.finish_reason == "pruned" and c.completion_tokens == s and len(r.ids) - s <= 3
        marks = [i for i, rec in enumerate(r.records) if rec and "p" in rec]
        assert marks in ([], [s - 1])  # marked where the engine still held the list
