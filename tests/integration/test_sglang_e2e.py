"""The SGLang runtime end to end: a real SGLang 0.5.23 server (CPU, torch-native path) with the plugin.

One server for the module (fp32, so norms compare with the transformers
backend's; ``--sae-dir`` a folder the SAE test writes into); short greedy
requests. The server's log is kept in ``out/test-logs``.
"""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
from engine_e2e import ABLATED, LOGS, NOOPS, PROMPTS, Q, bad_sae_specs, random_topk_sae, serving

from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams, SelectionSpec
from l2reason.errors import BackendError, CapabilityError, ConfigError
from l2reason.serving import TOKEN_KEY, EngineSettings

pytestmark = [pytest.mark.real, pytest.mark.ci, pytest.mark.sglang]

SERVER_ARGS = ["--dtype", "float32", "--context-length", "2048", "--max-total-tokens", "8192"]


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    """The server's SAE folder (``--sae-dir``): the tests write SAE files into it and send their names."""
    return tmp_path_factory.mktemp("saes")


@pytest.fixture(scope="module")
def server(sae_dir):
    from l2reason.backends.sglang.server import SGLangServer, free_port

    port = free_port()
    args = [*SERVER_ARGS, "--sae-dir", str(sae_dir)]
    srv = SGLangServer("default", port=port, device="cpu", extra_args=args, log_path=LOGS / f"sglang-{port}.log")
    with serving(srv, timeout=900):
        yield srv


@pytest.fixture(scope="module")
def backend(server):
    from l2reason.backends.sglang import SGLangBackend

    return SGLangBackend(server.url, model="default")


@pytest.fixture(scope="module")
def hf():
    from l2reason.backends.hf import HFBackend

    return HFBackend("default")


def raw(server, prompts, max_new, settings=None, **extra):
    sp = {"temperature": 0.0, "max_new_tokens": max_new, **extra}
    if settings is not None:
        sp["custom_params"] = settings.encode()
    out = server.generate({"text": prompts, "sampling_params": sp})
    return out if isinstance(out, list) else [out]


def chat(n=1, max_new=16, temp=0.0, **kw):
    return GenerationRequest(
        messages=[Message(role="user", content=Q)],
        n=n,
        sampling=SamplingParams(max_new_tokens=max_new, temperature=temp, seed=0),
        **kw,
    )


def test_plugin_on_with_nothing_to_do_gives_the_stock_tokens(server):
    stock = raw(server, PROMPTS, 12)  # no settings: SGLang's own forward
    norms = raw(server, PROMPTS, 12, EngineSettings(layers=list(range(24))))
    noop = raw(server, PROMPTS, 12, EngineSettings(layers=[18, 22], interventions=NOOPS))
    for s, a, b in zip(stock, norms, noop, strict=True):
        assert s["output_ids"] == a["output_ids"] == b["output_ids"]
        assert TOKEN_KEY not in s["meta_info"]
        recs = a["meta_info"][TOKEN_KEY]
        assert len(recs) == len(a["output_ids"]) and all(len(r["n"]) == 24 for r in recs)
        rep = b["meta_info"][TOKEN_KEY][-1]["r"]
        assert rep["alrr"]["passes_tried"] == [0] * 5 and rep["erss"]["fires"] > 0  # β=0: fired, changed nothing
        assert rep["static_steer"]["steered_tokens"] == len(b["output_ids"]) - 1


def test_stock_sglang_server_gives_the_same_tokens_and_no_plugin_is_a_clear_error(server):
    from l2reason.backends.sglang import SGLangBackend
    from l2reason.backends.sglang.server import SGLangServer, free_port

    port = free_port()
    with SGLangServer(
        "default", port=port, device="cpu", extra_args=SERVER_ARGS, plugin=False, log_path=LOGS / f"stock-{port}.log"
    ) as stock:
        plain = raw(stock, PROMPTS, 12)
        with pytest.raises(BackendError, match="without the l2reason plugin"):
            SGLangBackend(stock.url)
    ours = raw(server, PROMPTS, 12, EngineSettings(layers=[0, 23], interventions=[{"kind": "alrr", "K": 0}]))
    assert [o["output_ids"] for o in plain] == [o["output_ids"] for o in ours]


def test_norms_equal_the_transformers_backend(backend, hf):
    req = chat(max_new=10, norms=NormSpec(layers="all", mask_massive=False))
    a, b = backend.generate(req).candidates[0], hf.generate(req).candidates[0]
    assert a.text == b.text and a.completion_tokens == b.completion_tokens == 10
    na, nb = a.norms.array(), b.norms.array()
    assert na.shape == nb.shape == (10, 24)
    # fp32 on both sides; different kernels (SGLang's torch-native attention vs transformers' SDPA)
    np.testing.assert_allclose(na, nb, rtol=2e-3, atol=1e-3)  # row 0 = the prompt's last position


def test_alrr_changes_the_states_as_the_transformers_backend_does(backend, hf):
    static = chat(max_new=12, logprobs=1, interventions=[{"kind": "alrr", "mode": "static"}])
    plain = chat(max_new=12, logprobs=1)
    a, p = backend.generate(static).candidates[0], backend.generate(plain).candidates[0]
    rep = a.interventions["alrr"]
    assert rep["passes_accepted"] == [rep["decode_steps"]] * 5 and rep["decode_steps"] == 11
    # the re-run changes the band states and the next-token distribution (here not the greedy text)
    assert not np.allclose(a.norms.array()[1:], p.norms.array()[1:], rtol=1e-2)
    assert not np.allclose(a.logprobs.logprob, p.logprobs.logprob, atol=1e-3)
    # the same controllers as the embedded backend: same passes, same states (fp32, kernel tolerance)
    h = hf.generate(static).candidates[0]
    assert h.interventions["alrr"] == rep and h.text == a.text
    np.testing.assert_allclose(a.norms.array(), h.norms.array(), rtol=2e-3, atol=1e-3)
    adaptive = backend.generate(
        chat(max_new=24, interventions=[{"kind": "alrr", "g": 0.0, "b": 10.0, "threshold": {"warmup": 4, "k": 0.0}}])
    )
    rep = adaptive.candidates[0].interventions["alrr"]
    assert sum(rep["passes_tried"]) > 0 and sum(rep["passes_accepted"]) > 0


def test_recursion_leaves_the_kv_cache_as_it_was(server, backend):
    # Re-run only the last layer: it changes no later layer, so the K/V this request leaves in the radix
    # cache must be exactly what a plain pass writes. A continuation that reuses them must then match
    # one computed from scratch; a leaked re-run write at layer 23 would change it.
    ids = backend.tokenizer(PROMPTS[0])["input_ids"]
    s = EngineSettings(layers=[23], interventions=[{"kind": "alrr", "mode": "static", "layers": [23]}])
    first = server.generate(
        {"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 12, "custom_params": s.encode()}}
    )
    assert first["meta_info"][TOKEN_KEY][-1]["r"]["alrr"]["passes_accepted"] == [11]
    cont = ids + first["output_ids"]
    probe = {
        "input_ids": cont,
        "sampling_params": {
            "temperature": 0,
            "max_new_tokens": 6,
            "custom_params": EngineSettings(layers=[23]).encode(),
        },
    }
    cached = server.generate(probe)
    assert cached["meta_info"].get("cached_tokens", 1) > 0
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(server.url + "/flush_cache", method="POST"), timeout=60).read()
    fresh = server.generate(probe)
    assert cached["output_ids"] == fresh["output_ids"]
    nc = [r["n"][0] for r in cached["meta_info"][TOKEN_KEY]]
    nf = [r["n"][0] for r in fresh["meta_info"][TOKEN_KEY]]
    np.testing.assert_allclose(nc, nf, rtol=1e-4)


def test_concurrent_requests_keep_their_own_state_and_a_reused_slot_starts_clean(server):
    steer = EngineSettings(
        layers=[12, 20],
        interventions=[
            {"kind": "static_steer", "vectors": {12: [0.05] * 896}, "alpha": 4.0},
            {"kind": "erss", "layers": [20], "S": 2, "p": 1.0, "C": 1, "c_min": -1.0, "threshold": {"warmup": 2}},
        ],
        seed=5,
    )
    plain = EngineSettings(layers=[12, 20])
    alone_a = raw(server, [PROMPTS[0]], 12, steer)[0]
    alone_b = raw(server, [PROMPTS[1]], 12, plain)[0]
    # the two in one batch, and again from two threads at once
    both = server.generate(
        {
            "text": PROMPTS,
            "sampling_params": [
                {"temperature": 0, "max_new_tokens": 12, "custom_params": steer.encode()},
                {"temperature": 0, "max_new_tokens": 12, "custom_params": plain.encode()},
            ],
        }
    )
    got: dict[int, dict] = {}

    def run(i, text, s):
        got[i] = raw(server, [text], 12, s)[0]

    ts = [
        threading.Thread(target=run, args=(0, PROMPTS[0], steer)),
        threading.Thread(target=run, args=(1, PROMPTS[1], plain)),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for a, b in ((both[0], got[0]), (both[1], got[1])):
        ref = alone_a if a is both[0] else alone_b
        for x in (a, b):
            assert x["output_ids"] == ref["output_ids"]
            np.testing.assert_allclose(
                [r["n"] for r in x["meta_info"][TOKEN_KEY]], [r["n"] for r in ref["meta_info"][TOKEN_KEY]], rtol=1e-4
            )
    rep = [x["meta_info"][TOKEN_KEY][-1]["r"] for x in (alone_a, both[0], got[0])]
    assert rep[0] == rep[1] == rep[2] and rep[0]["erss"]["fires"] > 0  # same fresh state every time
    assert "r" not in alone_b["meta_info"][TOKEN_KEY][-1]
    assert alone_a["output_ids"] != raw(server, [PROMPTS[0]], 12, plain)[0]["output_ids"]  # steering did something


def test_n8_selection_in_one_call(backend):
    from l2reason.select import select_result

    r = backend.generate(chat(n=8, max_new=40, temp=0.8, logprobs=5, selection=SelectionSpec(method="l2")))
    assert len(r.candidates) == 8 and len({c.text for c in r.candidates}) > 1
    sel = r.selection
    # the top score (several candidates may share it, e.g. 0: the rule then draws one of them, seeded)
    assert sel["method"] == "l2" and sel["scores"][sel["index"]] == max(s for s in sel["scores"] if not math.isnan(s))
    for method in ("majority", "deepconf", "self-certainty"):
        out = select_result(r, SelectionSpec(method=method), num_layers=backend.num_layers)
        assert 0 <= out.index < 8
    c = r.candidates[0]
    assert len(c.logprobs.logprob) == len(c.logprobs.self_certainty) == c.completion_tokens
    assert all(math.isfinite(x) and x > 0 for x in c.logprobs.self_certainty)
    # (reproducible candidates need SGLang's --enable-deterministic-inference, which its CPU path lacks)


def test_dspy_l2selectbest_against_the_server(server):
    import dspy

    import l2reason

    spec = "sglang://" + server.url.split("://", 1)[1]
    l2reason.configure_dspy(spec, max_tokens=96)
    solve = l2reason.L2SelectBest(dspy.Predict("question -> answer"), n=3)
    pred = solve(question="What is 12 + 30?")
    assert pred.l2.calls and all(len(c) == 3 for c in pred.l2.candidate_scores) and pred.l2.score is not None
    assert isinstance(pred.answer, str) and pred.answer


def test_sae_ablation_in_the_plugin_equals_the_embedded_hook(server, backend, hf, sae_dir, tmp_path):
    """The vLLM test's checks, through raw requests (every position of the request, prompt included)."""
    import re

    from l2reason.backends.common import encode_prompt
    from l2reason.sae.ablate import ablate_features

    sae = random_topk_sae(hf.hidden_size)
    sae.save(sae_dir / "sae.safetensors")  # the server reads it by name from its --sae-dir
    spec = {"kind": "sae_ablate", "sae": "sae.safetensors", "layer": 12, "features": ABLATED}
    req = chat(max_new=12, norms=NormSpec(layers=[12, 20], mask_massive=False))
    ids = encode_prompt(backend.tokenizer, req)
    s_plain, s_abl = EngineSettings(layers=[12, 20]), EngineSettings(layers=[12, 20], interventions=[spec])

    def sp(settings, max_new=12):
        return {"temperature": 0, "max_new_tokens": max_new, "custom_params": settings.encode()}

    def gen(settings):
        out = server.generate({"input_ids": ids, "sampling_params": sp(settings)})
        return out["output_ids"], np.array([r["n"] for r in out["meta_info"][TOKEN_KEY]]), out["meta_info"]

    plain = gen(s_plain)  # first: its prompt is in the radix cache
    abl = gen(s_abl)  # sent without a cache salt: the plugin keeps it off the plain prompt's cache entries
    with ablate_features(hf, sae, 12, ABLATED):
        ref = hf.generate(req).candidates[0]
    # the same states as the embedded hook (prompt included: a reused plain prompt would differ)
    assert backend.tokenizer.decode(abl[0], skip_special_tokens=True) == ref.text
    np.testing.assert_allclose(abl[1], ref.norms.array(), rtol=2e-3, atol=1e-3)
    assert abl[2].get("cached_tokens", 0) == 0
    assert not np.allclose(abl[1][:, 0], plain[1][:, 0], rtol=1e-2)  # it did change them
    # nor did it poison the plain prompt's entries: a plain request after it reuses them and gets the first result
    again = gen(s_plain)
    assert again[2].get("cached_tokens", 1) > 0 and again[0] == plain[0]
    np.testing.assert_allclose(again[1], plain[1], rtol=1e-4)
    # in one batch with a plain request: each gets its own result
    both = server.generate({"input_ids": [ids, ids], "sampling_params": [sp(s_plain), sp(s_abl)]})
    for out, want in zip(both, (plain, abl), strict=True):
        assert out["output_ids"] == want[0]
        np.testing.assert_allclose([r["n"] for r in out["meta_info"][TOKEN_KEY]], want[1], rtol=1e-4)
    # a bad SAE is the request's error; the server keeps serving
    for bad_spec, msg in bad_sae_specs(spec, sae_dir, tmp_path / "outside.safetensors"):
        out = server.generate({"input_ids": ids, "sampling_params": sp(EngineSettings(interventions=[bad_spec]), 2)})
        assert re.search(msg, out["meta_info"][TOKEN_KEY][0]["e"])
    with pytest.raises(ValueError, match="relative name"):  # a path is not even valid settings
        EngineSettings(interventions=[{**spec, "sae": str(tmp_path / "outside.safetensors")}])
    assert gen(s_plain)[0] == plain[0]


def test_probe_returns_what_the_plugin_runs(server):
    from l2reason.serving.capabilities import caps

    [out] = raw(server, [PROMPTS[0]], 3, EngineSettings(layers=[0], probe=True))
    recs = out["meta_info"][TOKEN_KEY]
    assert recs[0]["caps"] == {**caps(features=("prune",)), "active_slots": 0} and all(
        "caps" not in r for r in recs[1:]
    )
    # 0: every earlier request gave its slot back (the probe's own is not counted)
    assert "sae_ablate" in recs[0]["caps"]["interventions"]


def test_error_paths(server, backend):
    from l2reason.backends.sglang import SGLangBackend
    from l2reason.backends.sglang.server import free_port

    with pytest.raises(BackendError, match="cannot reach the SGLang server"):
        SGLangBackend(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01)
    with pytest.raises(ConfigError, match="not an SGLang server address"):
        SGLangBackend("ftp://nowhere")
    with pytest.raises(ConfigError, match="serves"):
        SGLangBackend(server.url, model="fast")
    # bad settings reach the plugin raw: reported per token, the server keeps serving
    bad = server.generate(
        {"text": PROMPTS[0], "sampling_params": {"max_new_tokens": 2, "custom_params": {"l2reason": "{not json"}}}
    )
    assert "invalid l2reason settings" in bad["meta_info"][TOKEN_KEY][0]["e"]
    bad = server.generate(
        {
            "text": PROMPTS[0],
            "sampling_params": {"max_new_tokens": 2, "custom_params": {"l2reason": json.dumps({"layers": [99]})}},
        }
    )
    assert "do not exist" in bad["meta_info"][TOKEN_KEY][0]["e"]
    # the client refuses before sending
    with pytest.raises(CapabilityError, match="calibrated"):
        backend.generate(chat(interventions=[{"kind": "erss", "threshold": {"mode": "calibrated"}}]))
    with pytest.raises(ConfigError, match="896"):
        backend.generate(chat(interventions=[{"kind": "static_steer", "vectors": {3: [1.0, 2.0]}}]))
    assert backend.generate(chat(max_new=2)).candidates[0].completion_tokens == 2
