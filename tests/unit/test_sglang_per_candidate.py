"""``SGLangBackend``'s per-candidate mode (one ``/generate`` per candidate), against a fake SGLang router.

SGLang's router (the model gateway, ``smg``) refuses a ``/generate`` whose ``sampling_params`` is a list and
forwards ``/get_model_info`` but not ``/model_info``; the client detects that and sends one call per candidate.
Two real HTTP servers (``test_engine_client.FakeServer``) answer for the plugin: ``single`` speaks SGLang's batched
format (the list mode), ``router`` only what the gateway forwards. Both compute a candidate's output from its own
payload alone (its ``sampling_seed`` and settings), as a replica does, so the two modes must give the same
candidates, norms and selection, greedy or sampled. What is tested is the client's splitting and merging (order,
concurrency, errors), not the engine: ``tests/integration/test_scaleout.py`` runs the real router and replicas.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_engine_client import CAPS, FakeServer, Tok, js

from l2reason.backends.base import GenerationRequest, GenerationResult, NormSpec, SamplingParams, SelectionSpec
from l2reason.backends.common import row_seed
from l2reason.backends.sglang import SGLangBackend
from l2reason.errors import BackendError, ConfigError
from l2reason.serving.settings import EngineSettings

N = 6
#: what the gateway answers for a route it does not forward, and for a list of sampling_params (smg 1.13.0)
UNKNOWN_URL = js({"error": {"type": "invalid_request_error", "code": "unknown_url", "message": "Invalid URL"}}, 404)
LIST_REFUSED = (422, b"Failed to deserialize the JSON body into the target type: sampling_params[0]: invalid type: map")


def output(ids: list[int], sp: dict[str, Any], logprobs: bool) -> dict[str, Any]:
    """One candidate's output, from its own payload only: greedy tokens are the same for every seed, sampled ones
    (and their count) follow ``sampling_seed``; norms ``layer + t + seed % 97 / 10`` (so selection has a winner)."""
    s = EngineSettings.decode(sp["custom_params"])
    assert s is not None and s.seed == sp["sampling_seed"]
    seed, sampled = s.seed, sp["temperature"] > 0
    T = 2 + seed % 3 if sampled else sp["max_new_tokens"]
    toks = [(seed * 7 + t) % 26 if sampled else t for t in range(T)]
    recs: list[dict[str, Any]] = [{"n": [layer + t + seed % 97 / 10 for layer in s.layers]} for t in range(T)]
    if s.probe:
        recs[0]["caps"] = CAPS
    meta: dict[str, Any] = {"finish_reason": {"type": "length"}, "prompt_tokens": len(ids), "l2r": recs}
    if logprobs:
        meta["output_token_logprobs"] = [[-0.1 * (t + 1), tok, None] for t, tok in enumerate(toks)]
        meta["output_top_logprobs"] = [[[-0.1 * (t + 1), tok, None], [-3.0, 0, None]] for t, tok in enumerate(toks)]
    return {"text": "".join(chr(97 + t) for t in toks), "output_ids": toks, "meta_info": meta}


def batched(body: Any) -> tuple[int, bytes]:
    """SGLang's own ``/generate``: lists of prompts and of sampling_params -> a list of outputs; one prompt and
    one sampling_params object -> one output object."""
    lp, sps = bool(body.get("return_logprob")), body["sampling_params"]
    if isinstance(sps, dict):
        return js(output(body["input_ids"], sps, lp))
    return js([output(ids, sp, lp) for ids, sp in zip(body["input_ids"], sps, strict=True)])


def routed(body: Any) -> tuple[int, bytes]:
    """The gateway's ``/generate``: refuses a list of sampling_params, forwards one prompt's call."""
    return LIST_REFUSED if isinstance(body["sampling_params"], list) else batched(body)


@pytest.fixture
def servers(tmp_path: Any) -> Iterator[Callable[..., FakeServer]]:
    """``make(kind, gen=None)``: a fake ``"single"`` SGLang server or a fake ``"router"`` (``gen`` replaces its
    ``/generate``), stopped at the end."""
    cfg = {"num_hidden_layers": 4, "hidden_size": 8, "vocab_size": 26, "max_position_embeddings": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    info = js({"model_path": str(tmp_path), "context_length": 64})
    made: list[FakeServer] = []

    def make(kind: str, gen: Any = None) -> FakeServer:
        if kind == "single":
            routes = {"/model_info": info, "/get_model_info": info, "/generate": gen or batched}
        else:
            routes = {"/model_info": UNKNOWN_URL, "/get_model_info": info, "/generate": gen or routed}
        made.append(FakeServer(routes))
        return made[-1]

    yield make
    for fake in made:
        fake.stop()


def request(temperature: float, **kw: Any) -> GenerationRequest:
    return GenerationRequest(
        prompt="hi",
        n=N,
        sampling=SamplingParams(max_new_tokens=4, temperature=temperature, seed=11),
        norms=NormSpec(layers=[0, 3], mask_massive=False),
        selection=SelectionSpec(method="l2", layers=[0, 3]),
        **kw,
    )


def generations(fake: FakeServer) -> list[Any]:
    return [body for _, p, body, _ in fake.seen if p == "/generate"]


def same_candidates(a: GenerationResult, b: GenerationResult) -> None:
    for x, y in zip(a.candidates, b.candidates, strict=True):
        assert (x.index, x.text, x.tokens, x.completion_tokens) == (y.index, y.text, y.tokens, y.completion_tokens)
        assert x.norms is not None and y.norms is not None
        assert x.norms.array().tolist() == y.norms.array().tolist()
        assert x.logprobs == y.logprobs and x.interventions == y.interventions
    assert a.selection == b.selection


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "seeded"])
def test_a_router_is_detected_and_one_call_per_candidate_equals_the_batched_call(servers, temperature):
    single, router = servers("single"), servers("router")
    batch, each = SGLangBackend(single.url, tokenizer=Tok()), SGLangBackend(router.url, tokenizer=Tok())
    assert (batch.per_candidate, batch.model_info_path) == (False, "/model_info")
    assert (each.per_candidate, each.model_info_path) == (True, "/get_model_info")
    assert router.paths() == ["/model_info", "/get_model_info", "/generate"]  # the 404, the model, the probe
    req = request(temperature, logprobs=1)
    a, b = batch.generate(req), each.generate(req)
    same_candidates(b, a)
    assert a.selection is not None and a.selection["index"] == max(range(N), key=lambda j: row_seed(11, j) % 97)
    if temperature:
        assert len({c.text for c in a.candidates}) > 1  # the seeds made them differ
    # the router got N single-prompt calls, each the batched call's entry for that candidate, logprob flags included
    [big] = generations(single)[1:]
    small = sorted(generations(router)[1:], key=lambda body: body["sampling_params"]["sampling_seed"])
    assert len(small) == N and all(isinstance(body["sampling_params"], dict) for body in small)
    sps = sorted(big["sampling_params"], key=lambda sp: sp["sampling_seed"])
    assert [body["sampling_params"] for body in small] == sps
    assert [body["input_ids"] for body in small] == [big["input_ids"][0]] * N
    flags = ("return_logprob", "top_logprobs_num", "logprob_start_len")
    assert all({k: body[k] for k in flags} == {k: big[k] for k in flags} for body in small)


def test_calls_run_concurrently_and_answers_return_in_candidate_order(servers):
    """Every call waits until all N are in (a barrier: they must be in flight together), then the first
    candidates answer last; candidate j must still be the output of seed ``row_seed(11, j)``."""
    gate = threading.Barrier(N)
    order = [row_seed(11, j) for j in range(N)]

    def slow(body: Any) -> tuple[int, bytes]:
        s = EngineSettings.decode(body["sampling_params"]["custom_params"])
        if s is not None and not s.probe:
            gate.wait(timeout=10)
            time.sleep(0.05 * (N - order.index(s.seed)))
        return routed(body)

    be = SGLangBackend(servers("router", gen=slow).url, tokenizer=Tok())
    res = be.generate(request(0.8))
    batch = SGLangBackend(servers("single").url, tokenizer=Tok()).generate(request(0.8))
    same_candidates(res, batch)
    assert [c.text for c in res.candidates] == [
        "".join(chr(97 + (s * 7 + t) % 26) for t in range(2 + s % 3)) for s in order
    ]


def test_explicit_modes_and_errors(servers):
    single, router = servers("single"), servers("router")
    # one call per candidate works against a plain server too (it keeps /model_info)
    be = SGLangBackend(single.url, tokenizer=Tok(), per_candidate=True)
    assert be.model_info_path == "/model_info" and be.generate(request(0.0)).candidates[N - 1].completion_tokens == 4
    assert all(isinstance(body["input_ids"][0], int) for body in generations(single))
    # the batched call against the router: its refusal, named
    with pytest.raises(BackendError, match=r"/generate answered HTTP 422: .*sampling_params\[0\]: invalid type"):
        SGLangBackend(router.url, tokenizer=Tok(), per_candidate=False)
    with pytest.raises(ConfigError, match=r"per_candidate must be True, False or None \(got 'yes'\)"):
        SGLangBackend(router.url, tokenizer=Tok(), per_candidate="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"concurrency must be an integer >= 1 \(got 0\)"):
        SGLangBackend(router.url, tokenizer=Tok(), concurrency=0)


def test_a_failing_candidate_call_is_an_error_that_names_it(servers):
    calls = [0]

    def third_fails(body: Any) -> tuple[int, bytes]:
        calls[0] += 1
        return (500, b"worker http://w2 failed") if calls[0] == 4 else routed(body)  # the probe, then candidates

    be = SGLangBackend(servers("router", gen=third_fails).url, tokenizer=Tok(), concurrency=1)
    with pytest.raises(BackendError, match=r"/generate answered HTTP 500: worker http://w2 failed"):
        be.generate(request(0.0))
    assert calls[0] <= 1 + N  # no candidate sent twice (calls not yet sent when one fails are dropped)
    two = servers("router", gen=lambda body: js([{}, {}]))  # two outputs for one prompt
    with pytest.raises(BackendError, match=r"answered /generate with a JSON list where the output of one prompt"):
        SGLangBackend(two.url, tokenizer=Tok())


def test_no_model_info_anywhere_and_other_errors_do_not_fall_back(servers):
    nothing = FakeServer({})
    try:
        with pytest.raises(BackendError, match=r"/get_model_info answered HTTP 404"):
            SGLangBackend(nothing.url, tokenizer=Tok())
    finally:
        nothing.stop()
    broken = FakeServer({"/model_info": (500, b"boom"), "/get_model_info": js({"model_path": "x"})})
    try:
        with pytest.raises(BackendError, match=r"/model_info answered HTTP 500: boom"):
            SGLangBackend(broken.url, tokenizer=Tok())
        assert [p for _, p, _, _ in broken.seen] == ["/model_info"]
    finally:
        broken.stop()
