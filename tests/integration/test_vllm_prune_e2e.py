"""Online pruning inside a real vLLM 0.32 server (CPU build) with the plugin, against the offline replay.

One plugin server (the default model, fp32, eager so it starts fast: the
pruning runs on the scheduler side, outside the model's forward). One
unpruned n=8 run at temperature 1 gives every candidate's per-token signals;
for each score a fixed threshold is taken from them (the median of the
candidates' lowest running scores, so about half are pruned mid-run), and the
pruned run must equal :func:`~l2reason.techniques.pruning.simulate` on the
unpruned signals: the same candidates pruned at the same token, the same
survivors, the survivors' tokens unchanged, every pruned candidate the prefix
of its unpruned self; and a first-finished (warm-up) threshold gives the
replay's threshold, set at the same token. The engine must also have stopped
the pruned candidates (at most three tokens past the prune step), not run
them to the end. In the CI subset (76 s on 2 shared cores, 50 s of it the
server's start). Needs ``make vllm`` (``$L2REASON_VLLM_PYTHON``).
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_e2e import LOGS, serving

from l2reason.backends.base import GenerationRequest, Message, NormSpec, PruneSpec, SamplingParams
from l2reason.techniques.pruning import running_scores, simulate, token_signal

pytestmark = [pytest.mark.real, pytest.mark.ci, pytest.mark.vllm]

N, MAX_NEW, LOGPROBS = 8, 64, 5
#: answers of varied length (some end on their own well before MAX_NEW, for the first-finished threshold)
PROMPT = "In one or two short sentences: why is the sky blue?"
LAYERS = [18, 20, 22]


@pytest.fixture(scope="module")
def backend():
    from l2reason.backends.vllm import VLLMBackend
    from l2reason.backends.vllm.server import VLLMServer, free_port

    mp = pytest.MonkeyPatch()
    mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    port = free_port()
    srv = VLLMServer(
        "default", port=port, log_path=LOGS / f"vllm-prune-{port}.log", dtype="float32", max_model_len=512,
        max_num_seqs=16, eager=True,
    )  # fmt: skip
    with serving(srv, timeout=900):
        be = VLLMBackend(srv.url, model="default")
        assert be.capabilities.pruning
        yield be
    mp.undo()


def request(prune: PruneSpec | None = None) -> GenerationRequest:
    return GenerationRequest(
        messages=[Message(role="user", content=PROMPT)],
        n=N,
        sampling=SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, seed=11),
        norms=NormSpec(layers=LAYERS, mask_massive=False),
        logprobs=LOGPROBS,
        prune=prune,
    )


@pytest.fixture(scope="module")
def full(backend):
    """The unpruned run every test replays."""
    return backend.generate(request())


def signals(spec: PruneSpec, result) -> list[np.ndarray]:
    """Each candidate's per-token signal, from what the client returned (norms, logprobs)."""
    out = []
    for c in result.candidates:
        norms = c.norms.array()[:, [LAYERS.index(layer) for layer in spec.layers]] if spec.score == "l2" else None
        out.append(
            token_signal(spec, confidence=c.logprobs.confidence, self_certainty=c.logprobs.self_certainty, norms=norms)
        )
    return out


def spying(backend):
    """Record the raw completions the backend receives (to see where the engine stopped each candidate)."""
    seen: list[list[dict]] = []
    send = backend._send

    def spy(requests, items, timeout=None):
        outs = send(requests, items, timeout=timeout)
        seen.append(outs)
        return outs

    backend._send = spy
    return seen


@pytest.mark.parametrize(
    "score,extra",
    [
        ("l2", {"layers": [18, 22]}),
        ("self-certainty", {}),
        ("confidence", {}),
    ],
)
def test_pruned_run_equals_the_replay_of_the_unpruned_one(backend, full, score, extra):
    base = PruneSpec(score=score, threshold=0.0, warmup=4, window=8, **extra)
    sig = signals(base, full)
    lowest = [running_scores(s, base.window, base.warmup)[1][-1] for s in sig]
    spec = base.model_copy(update={"threshold": float(np.median([x for x in lowest if np.isfinite(x)]))})
    sim = simulate(spec, sig)
    assert (sim.pruned_step > 0).sum() >= 2, "the threshold should prune some candidates mid-run"
    seen = spying(backend)
    try:
        res = backend.generate(request(spec))
    finally:
        del backend._send
    got = [c.prune["step"] if c.prune["pruned"] else -1 for c in res.candidates]
    assert got == sim.pruned_step.tolist()
    assert res.prune["pruned"] == [j for j, s in enumerate(got) if s >= 0] and res.prune["threshold"] == spec.threshold
    for c, f, s in zip(res.candidates, full.candidates, sim.pruned_step, strict=True):
        if s >= 0:
            assert c.finish_reason == "pruned" and c.completion_tokens == s
            assert c.tokens == f.tokens[:s]
            assert c.norms.array().tolist() == f.norms.array()[:s].tolist()
        else:
            assert (c.finish_reason, c.tokens, c.text) == (f.finish_reason, f.tokens, f.text)
    # the engine stopped the pruned candidates (one token past the prune step, two with async scheduling, a few
    # more for a candidate that ran ahead of its group) and marked the last token each keeps
    raw, early = seen[-1], 0
    for j, s in enumerate(sim.pruned_step):
        if s < 0:
            continue
        ids, recs = raw[j]["choices"][0]["token_ids"], raw[j]["kv_transfer_params"]["l2r"]
        if len(ids) < full.candidates[j].completion_tokens:  # stopped by the engine, not at its own end
            early += 1
            assert len(ids) - s <= 3 and recs[s - 1]["p"] == s, (j, s, len(ids))
    assert early >= 1


def test_warmup_threshold_equals_the_replay(backend, full):
    """DeepConf's online mode: the threshold is set from the first candidates that finish, then the rest prune."""
    spec = PruneSpec(score="self-certainty", threshold="first-finished", first=2, quantile=0.5, warmup=4, window=8)
    sim = simulate(spec, signals(spec, full))
    assert sim.threshold is not None and sim.threshold_step < MAX_NEW, [c.completion_tokens for c in full.candidates]
    res = backend.generate(request(spec))
    assert res.prune["threshold"] == sim.threshold and res.prune["threshold_step"] == sim.threshold_step
    assert [c.prune["step"] if c.prune["pruned"] else -1 for c in res.candidates] == sim.pruned_step.tolist()
    assert [c.completion_tokens for c in res.candidates] == sim.tokens.tolist()
