"""The vLLM runtime end to end: a real vLLM 0.32 server (CPU build, default compiled mode) with the plugin.

One plugin server and one stock server for the module (fp32, so norms compare
with the transformers backend's; small context so they start fast); short
greedy requests. Server logs are kept in ``out/test-logs``. Needs
``make vllm`` (``$L2REASON_VLLM_PYTHON``); without that environment these
tests fail, they do not skip.
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
from l2reason.serving import SETTINGS_KEY, TOKEN_KEY, EngineSettings

pytestmark = [pytest.mark.real, pytest.mark.ci, pytest.mark.vllm]

SERVER = dict(dtype="float32", max_model_len=1024, max_num_seqs=16)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    """The plugin server's SAE folder (``--sae-dir``): the tests write SAE files into it and send their names."""
    return tmp_path_factory.mktemp("saes")


@pytest.fixture(scope="module")
def servers(monkeypatch_module, sae_dir):
    """The plugin server and a stock one, started at the same time (start-up is mostly compilation)."""
    from l2reason.backends.vllm.server import VLLMServer, free_port

    monkeypatch_module.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    p1, p2 = free_port(), free_port()
    sae = ["--sae-dir", str(sae_dir)]  # the stock server's launcher drops it
    ours = VLLMServer("default", port=p1, log_path=LOGS / f"vllm-{p1}.log", extra_args=sae, **SERVER)
    stock = VLLMServer("default", port=p2, plugin=False, log_path=LOGS / f"stock-{p2}.log", extra_args=sae, **SERVER)
    with serving(ours, stock, timeout=900):
        yield ours, stock


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def backend(server):
    from l2reason.backends.vllm import VLLMBackend

    return VLLMBackend(server.url, model="default")


@pytest.fixture(scope="module")
def hf():
    from l2reason.backends.hf import HFBackend

    return HFBackend("default")


def raw(server, prompt, max_new, settings=None, **extra):
    body = {"model": server.model_path, "prompt": prompt, "max_tokens": max_new, "temperature": 0.0}
    body.update(return_token_ids=True, **extra)
    if settings is not None:
        body["vllm_xargs"] = {SETTINGS_KEY: settings.encode()[SETTINGS_KEY]}
    out = server.complete(body)
    c = out["choices"][0]
    return {"ids": c["token_ids"], "text": c["text"], "recs": (out.get("kv_transfer_params") or {}).get(TOKEN_KEY)}


def chat(n=1, max_new=16, temp=0.0, stop=(), **kw):
    return GenerationRequest(
        messages=[Message(role="user", content=Q)],
        n=n,
        sampling=SamplingParams(max_new_tokens=max_new, temperature=temp, seed=0, stop=list(stop)),
        **kw,
    )


def test_plugin_tokens_equal_stock_vllm_and_no_plugin_is_a_clear_error(servers):
    from l2reason.backends.vllm import VLLMBackend

    server, stock = servers
    plain = [raw(stock, p, 12) for p in PROMPTS]
    with pytest.raises(BackendError, match="without the l2reason plugin"):
        VLLMBackend(stock.url)
    for p, s in zip(PROMPTS, plain, strict=True):
        none = raw(server, p, 12)  # no settings: the plugin's op does nothing
        norms = raw(server, p, 12, EngineSettings(layers=list(range(24))))
        noop = raw(server, p, 12, EngineSettings(layers=[18, 22], interventions=NOOPS))
        assert s["ids"] == none["ids"] == norms["ids"] == noop["ids"]
        assert none["recs"] is None and s["recs"] is None
        assert len(norms["recs"]) == len(norms["ids"]) and all(len(r["n"]) == 24 for r in norms["recs"])
        rep = noop["recs"][-1]["r"]
        assert rep["alrr"]["passes_tried"] == [0] * 5
        assert rep["erss"]["fires"] > 0  # β=0: fired, changed nothing
        assert rep["static_steer"]["steered_tokens"] == len(noop["ids"]) - 1  # decode steps only
        np.testing.assert_array_equal(  # identities: the no-op interventions leave the states bit for bit
            [r["n"] for r in noop["recs"]], [[r["n"][18], r["n"][22]] for r in norms["recs"]]
        )


def test_norms_equal_the_transformers_backend(backend, hf):
    req = chat(max_new=10, norms=NormSpec(layers="all", mask_massive=False))
    a, b = backend.generate(req).candidates[0], hf.generate(req).candidates[0]
    assert a.text == b.text and a.completion_tokens == b.completion_tokens == 10
    na, nb = a.norms.array(), b.norms.array()
    assert na.shape == nb.shape == (10, 24)
    # fp32 on both sides; different kernels (vLLM's CPU attention and fused ops vs transformers' SDPA).
    # Row 0 is the prompt's last position: aligned with the first generated token.
    np.testing.assert_allclose(na, nb, rtol=2e-3, atol=1e-3)


def test_alrr_changes_the_states_as_the_transformers_backend_does(backend, hf):
    static = chat(max_new=12, logprobs=1, interventions=[{"kind": "alrr", "mode": "static"}])
    plain = chat(max_new=12, logprobs=1)
    a, p = backend.generate(static).candidates[0], backend.generate(plain).candidates[0]
    rep = a.interventions["alrr"]
    assert rep["passes_accepted"] == [rep["decode_steps"]] * 5 and rep["decode_steps"] == 11
    assert not np.allclose(a.norms.array()[1:], p.norms.array()[1:], rtol=1e-2)
    # the same controllers as the embedded backend: same passes, same states (fp32, kernel tolerance)
    h = hf.generate(static).candidates[0]
    assert h.interventions["alrr"] == rep and h.text == a.text
    np.testing.assert_allclose(a.norms.array(), h.norms.array(), rtol=2e-3, atol=1e-3)


def test_recursion_leaves_the_kv_cache_as_it_was(server, backend):
    # Re-run only the last layer: it changes no later layer, so the K/V this request leaves in the prefix
    # cache must be exactly what a plain pass writes. A continuation that reuses them must then match one
    # computed from scratch (a cache_salt keeps it off the cached blocks); a leaked re-run write would not.
    ids = backend.tokenizer(PROMPTS[0] * 12)["input_ids"]  # several KV blocks long
    s = EngineSettings(layers=[23], interventions=[{"kind": "alrr", "mode": "static", "layers": [23]}])
    first = raw(server, ids, 12, s)
    assert first["recs"][-1]["r"]["alrr"]["passes_accepted"] == [11]
    cont = ids + first["ids"]
    cached = raw(server, cont, 6, EngineSettings(layers=[23]))
    fresh = raw(server, cont, 6, EngineSettings(layers=[23]), cache_salt="fresh")
    assert cached["ids"] == fresh["ids"]
    np.testing.assert_allclose([r["n"] for r in cached["recs"]], [r["n"] for r in fresh["recs"]], rtol=1e-4)


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
    alone_a = raw(server, PROMPTS[0], 12, steer)
    alone_b = raw(server, PROMPTS[1], 12, plain)
    got: dict[int, dict] = {}

    def run(i, text, s):
        got[i] = raw(server, text, 12, s)

    ts = [threading.Thread(target=run, args=(i, PROMPTS[i % 2], (steer, plain)[i % 2])) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i, x in got.items():
        ref = (alone_a, alone_b)[i % 2]
        assert x["ids"] == ref["ids"]
        np.testing.assert_allclose([r["n"] for r in x["recs"]], [r["n"] for r in ref["recs"]], rtol=1e-4)
    reps = [x["recs"][-1]["r"] for x in (alone_a, got[0], got[2])]
    assert reps[0] == reps[1] == reps[2] and reps[0]["erss"]["fires"] > 0  # same fresh state every time
    assert "r" not in alone_b["recs"][-1]
    assert alone_a["ids"] != raw(server, PROMPTS[0], 12, plain)["ids"]  # steering did something


def test_n8_selection_in_one_call_and_stop_strings(backend):
    from l2reason.select import select_result

    r = backend.generate(chat(n=8, max_new=24, temp=0.8, logprobs=5, selection=SelectionSpec(method="l2")))
    assert len(r.candidates) == 8 and len({c.text for c in r.candidates}) > 1
    sel = r.selection
    # the top score (several candidates may share it: the rule then draws one of them, seeded)
    assert sel["method"] == "l2" and sel["scores"][sel["index"]] == max(s for s in sel["scores"] if not math.isnan(s))
    for method in ("majority", "deepconf", "self-certainty"):
        out = select_result(r, SelectionSpec(method=method), num_layers=backend.num_layers)
        assert 0 <= out.index < 8
    for c in r.candidates:
        assert c.norms.array().shape == (c.completion_tokens, 5)
        assert len(c.logprobs.logprob) == len(c.logprobs.self_certainty) == c.completion_tokens
        assert all(math.isfinite(x) and x > 0 for x in c.logprobs.self_certainty)
    again = backend.generate(chat(n=8, max_new=24, temp=0.8, logprobs=5, selection=SelectionSpec(method="l2")))
    assert [c.text for c in again.candidates] == [c.text for c in r.candidates]  # per-candidate seeds
    # stop strings are applied by the client (vLLM would abort the request and drop its records)
    full = backend.generate(chat(max_new=24)).candidates[0]
    stop = full.text[10:14]
    cut = backend.generate(chat(max_new=24, stop=[stop])).candidates[0] if stop.strip() else full
    if stop.strip():
        assert cut.finish_reason == "stop" and stop not in cut.text and full.text.startswith(cut.text)
        assert cut.norms.array().shape[0] == cut.completion_tokens < full.completion_tokens


def test_dspy_l2selectbest_against_the_server(server):
    import dspy

    import l2reason

    spec = "vllm://" + server.url.split("://", 1)[1]
    l2reason.configure_dspy(spec, max_tokens=96)
    solve = l2reason.L2SelectBest(dspy.Predict("question -> answer"), n=3)
    pred = solve(question="What is 12 + 30?")
    assert pred.l2.calls and all(len(c) == 3 for c in pred.l2.candidate_scores) and pred.l2.score is not None
    assert isinstance(pred.answer, str) and pred.answer


def test_langchain_chat_model_over_the_server(server, backend):
    """ChatL2Reason on a vllm:// spec: the greedy answer is the backend's own, with its ℓ2 summary; n=3 with
    ℓ2 selection returns one message scoring every candidate; streaming joins to the same text and norms."""
    from langchain_core.messages import HumanMessage

    from l2reason.langchain import ChatL2Reason

    spec = "vllm://" + server.url.split("://", 1)[1]
    direct = backend.generate(chat(max_new=24, norms=NormSpec(layers=[20, 22]))).candidates[0]
    lc = ChatL2Reason(model=spec, max_tokens=24, norm_layers=[20, 22])
    msg = lc.invoke([HumanMessage(Q)])
    info = msg.response_metadata["l2reason"]
    assert msg.content == direct.text and info["completion_tokens"] == direct.completion_tokens
    assert info["layers"] == [20, 22]
    np.testing.assert_allclose(info["mean_norm"], direct.norms.mean, rtol=1e-5)
    assert msg.usage_metadata["output_tokens"] == direct.completion_tokens

    picked = ChatL2Reason(model=spec, max_tokens=24, n=3, temperature=0.8, selection="l2").invoke([HumanMessage(Q)])
    meta = picked.response_metadata["l2reason"]
    scores = [c["score"] for c in meta["candidates"]]
    assert len(scores) == 3 and all(math.isfinite(x) for x in scores)
    assert meta["selection"]["index"] == meta["index"] and meta["score"] == max(scores)  # argmax (ties allowed)

    chunks = list(lc.stream([HumanMessage(Q)]))
    assert "".join(str(c.content) for c in chunks) == direct.text
    streamed = [x for c in chunks for x in c.response_metadata.get("l2reason", {}).get("norms") or []]
    assert len(streamed) == direct.completion_tokens


def test_sae_ablation_in_the_plugin_equals_the_embedded_hook(server, backend, hf, sae_dir, tmp_path):
    from l2reason.sae.ablate import ablate_features

    sae = random_topk_sae(hf.hidden_size)
    sae.save(sae_dir / "sae.safetensors")  # the server reads it by name from its --sae-dir
    spec = {"kind": "sae_ablate", "sae": "sae.safetensors", "layer": 12, "features": ABLATED}
    norms = NormSpec(layers=[12, 20], mask_massive=False)
    plain_req, abl_req = chat(max_new=12, norms=norms), chat(max_new=12, norms=norms, interventions=[spec])
    plain = backend.generate(plain_req).candidates[0]  # first: its prompt blocks are in the prefix cache
    abl = backend.generate(abl_req).candidates[0]
    with ablate_features(hf, sae, 12, ABLATED):
        ref = hf.generate(plain_req).candidates[0]
    # the same states as the embedded hook (prompt included: a reused plain prompt block would differ)
    assert abl.text == ref.text
    np.testing.assert_allclose(abl.norms.array(), ref.norms.array(), rtol=2e-3, atol=1e-3)
    assert not np.allclose(abl.norms.array()[:, 0], plain.norms.array()[:, 0], rtol=1e-2)  # it did change them
    # in one batch with a plain request: each gets its own result
    both = backend.generate_many([plain_req, abl_req])
    assert both[0].candidates[0].text == plain.text and both[1].candidates[0].text == abl.text
    np.testing.assert_allclose(both[0].candidates[0].norms.array(), plain.norms.array(), rtol=1e-5, atol=1e-5)
    # the server keeps ablated prompts apart in its prefix cache whatever the client sends (raw, unsalted)
    ids = backend.tokenizer(PROMPTS[0] * 12)["input_ids"]  # several KV blocks long
    s_plain, s_abl = EngineSettings(layers=[12]), EngineSettings(layers=[12], interventions=[spec])
    first = raw(server, ids, 6, s_plain)
    unsalted = raw(server, ids, 6, s_abl)  # after a plain run of the same prompt
    fresh = raw(server, ids, 6, s_abl, cache_salt="fresh")
    again = raw(server, ids, 6, s_plain)  # after the ablated runs
    for x, ref_ in ((unsalted, fresh), (again, first)):
        assert x["ids"] == ref_["ids"]
        np.testing.assert_allclose([r["n"] for r in x["recs"]], [r["n"] for r in ref_["recs"]], rtol=1e-4)
    assert not np.allclose(unsalted["recs"][0]["n"], first["recs"][0]["n"], rtol=1e-3)  # ablated (~0.7% here)
    # the plugin reports a bad SAE as the request's error (the client refuses a layer the model lacks, and a path)
    for bad_spec, msg in bad_sae_specs(spec, sae_dir, tmp_path / "outside.safetensors"):
        with pytest.raises(ConfigError, match=msg):
            backend.generate(chat(max_new=2, interventions=[bad_spec]))
    with pytest.raises(ValueError, match="relative name"):  # a path is refused before anything is sent
        backend.generate(chat(max_new=2, interventions=[{**spec, "sae": str(tmp_path / "outside.safetensors")}]))
    assert backend.generate(plain_req).candidates[0].text == plain.text  # and it keeps serving


def test_probe_returns_what_the_plugin_runs(server):
    from l2reason.serving.capabilities import caps

    out = raw(server, PROMPTS[0], 3, EngineSettings(layers=[0], probe=True))
    # an idle server: no other request holds a slot (finished ones gave theirs back)
    assert out["recs"][0]["caps"] == caps(active_slots=0, features=("prune",)) and all(
        "caps" not in r for r in out["recs"][1:]
    )
    assert "sae_ablate" in out["recs"][0]["caps"]["interventions"]


def test_norms_come_from_the_traced_step_inside_the_compiled_forward(server, backend, hf):
    """Compiled mode (vLLM's default): the plugin's layer loop, with :func:`graph_step` in it, ran as Python only
    while vLLM's compiler traced it; the norms of a norms-only request (right ones: they equal the transformers
    backend's) therefore came from the compiled graph, not from Python at run time, and not from the eager op."""
    req = chat(max_new=4, norms=NormSpec(layers=[0, 12, 23], mask_massive=False))
    a, b = backend.generate(req).candidates[0], hf.generate(req).candidates[0]
    np.testing.assert_allclose(a.norms.array(), b.norms.array(), rtol=2e-3, atol=1e-3)
    log = server.log_path.read_text(errors="replace")
    assert "graph step traced into the compiled forward (norms)" in log and "(compilation DYNAMO_TRACE_ONCE)" in log
    assert "first records from the traced step; so far graph_step ran 0 times as Python at run time" in log


def test_error_paths(server, backend):
    from l2reason.backends.vllm import VLLMBackend
    from l2reason.backends.vllm.server import free_port

    with pytest.raises(BackendError, match="cannot reach the vLLM server"):
        VLLMBackend(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01)
    with pytest.raises(ConfigError, match="not a vLLM server address"):
        VLLMBackend("ftp://nowhere")
    with pytest.raises(ConfigError, match="serves"):
        VLLMBackend(server.url, model="fast")
    # bad settings reach the plugin raw: reported per token, the server keeps serving
    bad = server.complete(
        {"model": server.model_path, "prompt": PROMPTS[0], "max_tokens": 2, "vllm_xargs": {SETTINGS_KEY: "{not json"}}
    )
    assert "invalid l2reason settings" in bad["kv_transfer_params"][TOKEN_KEY][0]["e"]
    for settings, msg in (({"layers": [99]}, "do not exist"),):
        body = {"model": server.model_path, "prompt": PROMPTS[0], "max_tokens": 2}
        bad = server.complete({**body, "vllm_xargs": {SETTINGS_KEY: json.dumps(settings)}})
        assert msg in bad["kv_transfer_params"][TOKEN_KEY][0]["e"]
    # the client refuses what the plugin cannot do, before sending (pruning it can: test_vllm_prune_e2e.py;
    # an older plugin without it is refused in tests/unit/test_serving_prune.py)
    assert backend.capabilities.pruning
    with pytest.raises(CapabilityError, match="calibrated"):
        backend.generate(chat(interventions=[{"kind": "erss", "threshold": {"mode": "calibrated"}}]))
    with pytest.raises(ConfigError, match="896"):
        backend.generate(chat(interventions=[{"kind": "static_steer", "vectors": {3: [1.0, 2.0]}}]))
    assert backend.generate(chat(max_new=2)).candidates[0].completion_tokens == 2


def test_plugin_server_gets_stock_cpu_core_binding(servers):
    """vLLM 0.32's CPU build reserves one more core per worker when a KV connector is configured; the launcher
    keeps stock's reservation (on 2 cores the extra one put the worker's 2 OpenMP threads next to the engine's
    own processes: ~0.4x stock's decode speed)."""

    def binding(srv):
        lines = srv.log_path.read_text(errors="replace").splitlines()
        keys = ("reserve_cpu_num=", "core ids=", "reserved_cpus=")
        return [ln.split("]", 1)[-1].strip() for ln in lines if any(k in ln for k in keys)]

    ours, stock = servers
    assert binding(ours) and binding(ours) == binding(stock)


def test_serve_command_starts_a_usable_server_and_ctrl_c_stops_it():
    """``l2reason serve --engine vllm`` as a user runs it: it prints where it is ready, a client generates with
    norms from it, extra arguments reach vLLM, and SIGINT stops it cleanly (exit 0, port released)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from l2reason.backends.vllm import VLLMBackend
    from l2reason.backends.vllm.server import free_port

    port = free_port()
    log = LOGS / f"serve-{port}.log"
    LOGS.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "l2reason.cli", "serve", "--engine", "vllm", "--port", str(port), "--log", str(log)]
    cmd += ["--", "--enforce-eager", "--max-model-len", "512", "--dtype", "float32"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "COLUMNS": "200"}
    # a runner started in the background (nohup, `cmd &`) ignores SIGINT and its children inherit that; a user's
    # terminal does not: give the command the default disposition, so Python turns SIGINT into KeyboardInterrupt
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 900
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops the server" in line:
                break
        out = "".join(lines)
        assert "ready" in out and f"vllm://127.0.0.1:{port}" in out, out[-2000:]
        be = VLLMBackend(f"vllm://127.0.0.1:{port}", model="default")
        c = be.generate(chat(max_new=6)).candidates[0]
        assert c.completion_tokens == 6 and c.norms is not None and c.norms.array().shape == (6, 5)
        # started without --sae-dir: SAE ablation is refused, and the message says how to enable it
        spec = {"kind": "sae_ablate", "sae": "sae.safetensors", "layer": 12, "features": [1]}
        with pytest.raises(ConfigError, match="serves no SAE files; start it with `--sae-dir DIR`"):
            be.generate(chat(max_new=2, interventions=[spec]))
        argv = log.read_text(errors="replace")
        assert "enforce_eager=True" in argv or "enforce-eager" in argv or "'enforce_eager': True" in argv
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(BackendError, match="cannot reach the vLLM server"):
        VLLMBackend(f"http://127.0.0.1:{port}", retries=1, backoff=0.01)
