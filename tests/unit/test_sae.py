"""Activation stores, SAELens training and loading, the norm bound, reasoning-feature ranking (tiny model).

SAELens is a required test dependency (``make setup`` installs ``.[all,sae,test]``):
these tests import it and are never skipped.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from l2reason.errors import ConfigError
from l2reason.sae.store import ActivationStore, StorePrompt, collect_store

PROMPTS = [StorePrompt(f"p{i}", [{"role": "user", "content": f"w{i} w{i + 1} hello w{2 * i}"}]) for i in range(12)]


@pytest.fixture(scope="module")
def store(tiny_backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    return collect_store(
        tiny_backend,
        PROMPTS,
        out,
        layers=[1, 2],
        n=3,
        temperature=1.0,
        max_new_tokens=24,
        batch_size=4,
        dtype="float32",
        seed=5,
        score=lambda text, p: len(text) % 2 == 0,
    )


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    from l2reason.sae.train import SAETrainSettings, train_sae

    out = tmp_path_factory.mktemp("sae")
    s = SAETrainSettings(
        architecture="topk", d_sae=48, k=6, lr=3e-3, batch_size=64, total_samples=64 * 300, holdout_every=5
    )
    rep = train_sae(store, 2, out, s)
    return out, rep


def test_store_holds_the_reported_norms_and_tokens(store) -> None:
    assert len(store.manifest["shards"]) == 3 and store.layers == [1, 2]
    recs = store.records()
    assert len(recs) == 12 * 3
    rec, step = store.token_index()
    assert len(rec) == len(store) == sum(len(r["tokens"]) for r in recs)
    for layer in store.layers:  # the stored vectors are the states the norms are of
        np.testing.assert_allclose(store.states(layer).norm(dim=-1), store.norms(layer), rtol=1e-5)
    assert {r["correct"] for r in recs} <= {True, False}
    # tokens of a record are consecutive steps 0..T-1
    first = (rec == 0).nonzero().flatten()
    assert step[first].tolist() == list(range(len(recs[0]["tokens"])))


def test_store_resumes_and_refuses_other_settings(tiny_backend, tmp_path) -> None:
    kw = dict(layers=[1], n=1, max_new_tokens=5, batch_size=2, dtype="float32")
    collect_store(tiny_backend, PROMPTS[:4], tmp_path, **kw)
    calls = []
    orig = tiny_backend.generate_many

    class Counting:
        num_layers, hidden_size, model_id, name = (
            tiny_backend.num_layers,
            tiny_backend.hidden_size,
            tiny_backend.model_id,
            tiny_backend.name,
        )

        def generate_many(self, reqs):
            calls.append([r.request_id for r in reqs])
            return orig(reqs)

    st = collect_store(Counting(), PROMPTS[:6], tmp_path, **kw)
    assert calls == [["p4", "p5"]]  # only the new prompts ran
    assert [s["items"] for s in st.manifest["shards"]] == [["p0", "p1"], ["p2", "p3"], ["p4", "p5"]]
    with pytest.raises(ConfigError, match="was collected with"):
        collect_store(tiny_backend, PROMPTS[:6], tmp_path, **{**kw, "layers": [2]})
    with pytest.raises(ConfigError, match="not an activation store"):
        ActivationStore(tmp_path / "nothing")


def test_sae_trains_and_loads_from_folder(trained) -> None:
    from sae_lens import SAE

    from l2reason.sae.train import load_sae

    out, rep = trained
    assert (out / "cfg.json").is_file() and (out / "sae_weights.safetensors").is_file()
    sae = load_sae(out)
    assert isinstance(sae, SAE) and sae.cfg.d_in == 32 and sae.cfg.d_sae == 48
    assert json.loads((out / "train_report.json").read_text())["layer"] == 2
    h = rep["holdout"]
    assert h["tokens"] > 0 and 0 < h["l0"] <= 6
    # it learned: far better than SAELens's initialisation on the same held-out tokens
    assert h["explained_variance"] > rep["holdout_at_init"]["explained_variance"] + 0.2, rep
    with pytest.raises(ConfigError, match="not a SAELens SAE folder"):
        load_sae(out / "missing")


def test_norm_bound_holds_on_trained_sae(trained, store) -> None:
    from l2reason.sae.bound import check_norm_bound, tightness_by_norm
    from l2reason.sae.train import load_sae

    sae = load_sae(trained[0])
    x = store.states(2)
    rep = check_norm_bound(sae, x)
    assert rep.tokens == len(x) and rep.features == 48
    assert rep.violations == 0 and rep.max_excess <= 1e-4
    assert rep.firing > 0 and np.all(rep.cos <= 1 + 1e-4) and np.all(rep.ratio <= 1 + 1e-4)
    assert sum(r["pairs"] for r in tightness_by_norm(rep)) >= rep.firing


def test_norm_bound_fails_on_tampered_sae(trained, store) -> None:
    """An encoder that is not the affine map its weights say (here: an input scaling left unfolded) is caught."""
    from l2reason.sae.bound import check_norm_bound
    from l2reason.sae.train import load_sae

    sae = load_sae(trained[0])
    handle = sae.hook_sae_input.register_forward_hook(lambda _m, _i, out: out * 3.0)
    try:
        rep = check_norm_bound(sae, store.states(2))
    finally:
        handle.remove()
    assert rep.violations > 0 and rep.max_excess > 0.1
    # and a corrupted encoder bias that the weights do not show
    sae2 = load_sae(trained[0])
    h2 = sae2.hook_sae_acts_pre.register_forward_hook(lambda _m, _i, out: out + 1.0)
    try:
        assert check_norm_bound(sae2, store.states(2)).violations == rep.features * rep.tokens
    finally:
        h2.remove()


def test_bound_report_plot(trained, store, tmp_path) -> None:
    from l2reason.sae.bound import check_norm_bound
    from l2reason.sae.plots import plot_bound
    from l2reason.sae.train import load_sae

    p = plot_bound(check_norm_bound(load_sae(trained[0]), store.states(2)), tmp_path / "b.png")
    assert p.stat().st_size > 1000


def test_feature_ranking_finds_a_planted_high_norm_feature() -> None:
    from l2reason.sae.features import norm_activation_correlation, rank_by_correct, rank_by_norm

    g = torch.Generator().manual_seed(0)
    acts = torch.rand(2000, 30, generator=g).clamp_min(0.5) - 0.5  # sparse-ish noise
    norms = torch.rand(2000, generator=g) * 10
    high = norms > torch.quantile(norms, 0.9)
    acts[high, 7] += 2.0  # feature 7 fires on high-norm tokens
    tau, ranked = rank_by_norm(acts, norms, 0.9, top=3)
    assert ranked[0]["feature"] == 7 and ranked[0]["mean_high"] > ranked[0]["mean_low"] + 1.5
    assert abs(tau - float(torch.quantile(norms, 0.9))) < 1e-6
    assert norm_activation_correlation(acts, norms, [7]) > 0.5
    right = torch.arange(2000) % 2 == 0
    acts[right, 11] += 1.0
    assert rank_by_correct(acts, right, top=1)[0]["feature"] == 11
    with pytest.raises(ConfigError, match="one side is empty"):
        rank_by_norm(acts, torch.ones(2000), 0.5)


def test_top_contexts_html(trained, store) -> None:
    from l2reason.sae.features import encode_store, rank_by_norm, top_contexts_html
    from l2reason.sae.train import load_sae

    acts = encode_store(load_sae(trained[0]), store, 2)
    assert acts.shape == (len(store), 48)
    _, ranked = rank_by_norm(acts, store.norms(2), 0.9, top=2)
    page = top_contexts_html(acts, store, ranked, per_feature=3, title="t <x>")
    assert page.count("class='hit'") >= 1 and "t &lt;x&gt;" in page
    assert f"<h2>feature {ranked[0]['feature']}</h2>" in page


def test_import_l2reason_sae_loads_no_sae_lens() -> None:
    import subprocess
    import sys

    code = (
        "import sys, l2reason, l2reason.sae, l2reason.sae.store, l2reason.sae.vectors, l2reason.cli.sae\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sae_lens', 'transformer_lens', 'matplotlib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_ablation_hook_removes_exactly_the_features_and_is_removed(trained, store, tiny_backend) -> None:
    from l2reason.backends.base import GenerationRequest, NormSpec, SamplingParams
    from l2reason.sae.ablate import ablate_features, matched_random_features, remove_features
    from l2reason.sae.train import load_sae

    sae = load_sae(trained[0])
    x = store.states(2)[:50]
    every = torch.arange(48)
    # removing every feature leaves the SAE's error term plus b_dec
    torch.testing.assert_close(
        remove_features(sae, x, every), x - (sae.decode(sae.encode(x)) - sae.b_dec), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(remove_features(sae, x, every[:0]), x)
    req = GenerationRequest(prompt="w1 w2 hello", sampling=SamplingParams(max_new_tokens=6), norms=NormSpec(layers=[2]))
    base = tiny_backend.generate(req).candidates[0]
    with ablate_features(tiny_backend, sae, 2, []):
        assert tiny_backend.generate(req).candidates[0].norms.per_token == base.norms.per_token
    before = set(tiny_backend.layers[2]._forward_hooks)  # transformers' own output-capturing hooks may be there
    with ablate_features(tiny_backend, sae, 2, list(range(48))):
        assert set(tiny_backend.layers[2]._forward_hooks) - before
        abl = tiny_backend.generate(req).candidates[0]
    assert set(tiny_backend.layers[2]._forward_hooks) == before
    assert abl.norms.per_token[0] != base.norms.per_token[0]  # the backend read the ablated state
    assert tiny_backend.generate(req).candidates[0].norms.per_token == base.norms.per_token
    with pytest.raises(ConfigError, match="feature indices"):
        with ablate_features(tiny_backend, sae, 2, [48]):
            pass
    mass = torch.linspace(0, 1, 48)
    ctrl = matched_random_features(mass, [40, 41, 42], seed=1)
    assert not set(ctrl) & {40, 41, 42} and len(set(ctrl)) == 3
    assert abs(float(mass[ctrl].sum() - mass[[40, 41, 42]].sum())) < 0.25


def test_cli_collect_vector_bound_features(trained, store, tiny_backend, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import l2reason.backends.shared
    from l2reason.cli import app

    monkeypatch.setattr(l2reason.backends.shared, "make_backend", lambda model: tiny_backend)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2 hello\nw3 w4 world\n\nw5 hello\n")
    run = CliRunner().invoke
    r = run(
        app,
        [
            "collect",
            str(prompts),
            "--out",
            str(tmp_path / "st"),
            "-t",
            "5",
            "--layers",
            "1,2",
            "--dtype",
            "float32",
            "--batch",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    st = ActivationStore(tmp_path / "st")
    assert st.layers == [1, 2] and len(st.records()) == 3 and len(st.manifest["shards"]) == 2
    r = run(app, ["vector", "norms", str(tmp_path / "st"), "--out", str(tmp_path / "v.json"), "--quantile", "0.5"])
    assert r.exit_code == 0, r.output
    v = json.loads((tmp_path / "v.json").read_text())
    assert sorted(v) == ["1", "2"] and len(v["2"]) == 32
    r = run(app, ["sae", "bound", str(trained[0]), str(store.path), "--layer", "2", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "bound.json").read_text())["violations"] == 0
    assert (tmp_path / "b" / "bound.png").is_file()
    r = run(
        app,
        [
            "sae",
            "features",
            str(trained[0]),
            str(store.path),
            "--layer",
            "2",
            "--out",
            str(tmp_path / "f"),
            "--quantile",
            "0.9",
            "--top",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    feats = json.loads((tmp_path / "f" / "features.json").read_text())
    assert len(feats["by_norm"]) == 3 and "by_correct" in feats  # the store's candidates are scored
    assert (tmp_path / "f" / "features.html").read_text().count("<h2>feature") == 3
    r = run(app, ["sae", "bound", str(tmp_path / "nope"), str(store.path), "--layer", "2", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "not a SAELens SAE folder" in r.output


def _cli(tiny_backend, monkeypatch):
    """The CLI app with model loading pointed at the tiny model (the commands themselves run for real)."""
    from typer.testing import CliRunner

    import l2reason.backends.shared
    from l2reason.cli import app

    monkeypatch.setattr(l2reason.backends.shared, "make_backend", lambda model: tiny_backend)
    runner = CliRunner()
    return lambda args: runner.invoke(app, [str(a) for a in args])


def test_cli_sae_train_writes_a_loadable_sae_and_refuses_a_missing_layer(store, tiny_backend, tmp_path, monkeypatch):
    from l2reason.sae.train import load_sae

    run = _cli(tiny_backend, monkeypatch)
    args = ["sae", "train", store.path, "--layer", 2, "--out", tmp_path / "s", "--d-sae", 24, "--k", 4]
    r = run([*args, "--batch-size", 32, "--samples", 32 * 40, "--lr", "3e-3"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)  # SAELens progress bars go to stderr
    assert rep["layer"] == 2 and rep["train_tokens"] > 0
    assert rep["holdout"]["tokens"] > 0 and np.isfinite(rep["holdout"]["explained_variance"])
    sae = load_sae(tmp_path / "s")
    assert sae.cfg.d_in == 32 and sae.cfg.d_sae == 24
    r = run(["sae", "train", store.path, "--layer", 0, "--out", tmp_path / "s0", "--batch-size", 32])
    assert r.exit_code == 2 and "error:" in r.output and "layer 0" in r.output
    assert not (tmp_path / "s0").exists()
    r = run([*args[:-4], "--architecture", "gated"])
    assert r.exit_code == 2 and "architecture must be 'topk' or 'standard'" in r.output


def test_cli_vector_caa_equals_the_function_and_names_a_bad_line(tiny_backend, tmp_path, monkeypatch) -> None:
    from l2reason.sae.vectors import caa_vectors

    run = _cli(tiny_backend, monkeypatch)
    pairs = [("w1 w2 hello w3", "w4 w5 world"), ("hello w7", "w8 w9"), ("w2 hello hello", "w6 w6")]
    src = tmp_path / "pairs.jsonl"
    src.write_text("\n".join(json.dumps({"positive": p, "negative": n}) for p, n in pairs) + "\n")
    r = run(["vector", "caa", src, "--out", tmp_path / "caa.json", "--layers", "1,2"])
    assert r.exit_code == 0, r.output
    assert "from 3 pairs" in r.output
    got = json.loads((tmp_path / "caa.json").read_text())
    want = caa_vectors(tiny_backend, pairs, [1, 2])
    assert sorted(got) == ["1", "2"]
    for layer in (1, 2):
        np.testing.assert_allclose(got[str(layer)], want[layer].numpy(), rtol=1e-5, atol=1e-6)
        assert float(np.linalg.norm(got[str(layer)])) > 0
    src.write_text('{"positive": "a b"}\n')
    r = run(["vector", "caa", src, "--out", tmp_path / "bad.json"])
    assert r.exit_code == 2 and "pairs.jsonl:1" in r.output and not (tmp_path / "bad.json").exists()


def test_cli_sae_ablate_resumes_per_condition_and_none_equals_plain_greedy(
    trained, store, tiny_backend, tmp_path, monkeypatch
) -> None:
    from l2reason.backends.base import GenerationRequest, Message, SamplingParams
    from l2reason.eval.harness import DEFAULT_SYSTEM

    run = _cli(tiny_backend, monkeypatch)
    qs = ["w1 w2 hello", "w3 hello w4", "w5 w6 w7"]
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(json.dumps({"question": q, "answer": i}) for i, q in enumerate(qs)) + "\n")
    feats = tmp_path / "features.json"
    feats.write_text(json.dumps({"by_norm": [{"feature": f} for f in (5, 7, 9, 11)]}))
    out = tmp_path / "abl"
    common = ["sae", "ablate", trained[0], store.path, feats, "--layer", 2, "--out", out]
    common += ["--dataset", f"jsonl:{data}", "--limit", 3, "--top", 2, "-t", 4, "--batch", 2]
    r = run([*common, "--only", "none"])
    assert r.exit_code == 0, r.output
    assert "conditions done: ['none']" in r.output and not (out / "ablation.json").exists()
    none = json.loads((out / "ablation_none.json").read_text())
    plain = [
        tiny_backend.generate(
            GenerationRequest(
                messages=[Message(role="system", content=DEFAULT_SYSTEM), Message(role="user", content=q)],
                sampling=SamplingParams(max_new_tokens=4),
                norms=None,
            )
        ).text
        for q in qs
    ]
    assert none["texts"] == plain and none["features"] == []  # the "none" condition is the plain model
    (out / "ablation_none.json").write_text(json.dumps({**none, "texts": ["kept"] * 3}))  # a rerun must reuse it
    r = run(common)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "ablation.json").read_text())
    assert rep["texts"]["none"] == ["kept"] * 3
    assert rep["top_features"] == [5, 7] and len(rep["random_features"]) == 2
    assert not set(rep["random_features"]) & {5, 7}
    assert set(rep["accuracy"]) == {"none", "top", "random_matched"}
    assert {"diff", "ci_lo", "ci_hi", "p"} <= set(rep["top_minus_random"])
    assert rep["backend"] == tiny_backend.name and rep["ablation"] == "forward hook"
    # a condition cut off after its first batch resumes there (the saved texts are kept)
    top = json.loads((out / "ablation_top.json").read_text())
    assert top["complete"] is True and len(top["texts"]) == 3
    cut = {**top, "items": top["items"][:2], "texts": ["x", "y"], "complete": False}
    del cut["correct"]
    (out / "ablation_top.json").write_text(json.dumps(cut))
    r = run([*common, "--only", "top"])
    assert r.exit_code == 0, r.output
    top2 = json.loads((out / "ablation_top.json").read_text())
    assert top2["texts"][:2] == ["x", "y"] and top2["texts"][2] == top["texts"][2] and top2["complete"] is True
    r = run([*common, "--only", "top,bogus"])
    assert r.exit_code == 2 and "unknown condition(s) ['bogus']" in r.output


@pytest.mark.parametrize("arch", ["topk", "standard"])
def test_plain_weights_reproduce_saelens_encode_and_decode(arch) -> None:
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    from l2reason.sae.ablate import remove_features, sae_weights

    torch.manual_seed(0)
    if arch == "topk":  # decoder rows of unequal norm, so the rescale convention matters
        sae = TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=4, rescale_acts_by_decoder_norm=True))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn_like(p) * 0.5)
        sae.W_dec.copy_(torch.randn_like(sae.W_dec) * torch.linspace(0.2, 3.0, 16)[:, None])
    w = sae_weights(sae)
    x = torch.randn(20, 8)
    f = sae.encode(x)
    assert int((f > 0).sum()) > 20  # features do fire
    torch.testing.assert_close(w.encode(x), f, rtol=1e-5, atol=1e-5)
    S = torch.tensor([1, 5, 9, 12])
    masked = torch.zeros_like(f)
    masked[:, S] = f[:, S]
    want = x - (sae.decode(masked) - sae.b_dec)  # SAELens' own decoder gives the removed part
    torch.testing.assert_close(remove_features(sae, x, S), want, rtol=1e-4, atol=1e-5)
    assert sae_weights(w) is w
