"""SAE ablation in the engine-plugin core: files only by name from the server's folder, checks, grouping, writing."""

from __future__ import annotations

import os

import pytest
import torch

from l2reason.errors import ConfigError
from l2reason.serving.ablation import SAEAblations, SAEStore, apply_ablations
from l2reason.serving.info import EngineModelInfo
from l2reason.serving.launch import SAE_DIR_ENV
from l2reason.serving.settings import EngineSettings
from l2reason.techniques.sae_ablate import SAEWeights
from l2reason.techniques.specs import SAEAblateSpec

D, M = 6, 10
INFO = EngineModelInfo("test", num_layers=3, hidden_size=D, dtype=torch.float32)


def _sae(d: int = D, m: int = M, seed: int = 0) -> SAEWeights:
    g = torch.Generator().manual_seed(seed)
    return SAEWeights(
        W_enc=torch.randn(d, m, generator=g),
        b_enc=torch.zeros(m),
        b_dec=torch.zeros(d),
        W_dec=torch.randn(m, d, generator=g),
    )


def _spec(name: str, layer: int = 1, features: list[int] | None = None) -> SAEAblateSpec:
    return SAEAblateSpec(sae=name, layer=layer, features=features or [1, 3])


@pytest.fixture
def folder(tmp_path):
    """The server's SAE folder (with a file, a subfolder, a link inside) next to a secret outside it."""
    root = tmp_path / "saes"
    (root / "sub").mkdir(parents=True)
    _sae().save(root / "a.safetensors")
    _sae(seed=1).save(root / "sub" / "b.safetensors")
    os.symlink(root / "a.safetensors", root / "link-in.safetensors")
    outside = tmp_path / "secret.safetensors"
    _sae(seed=2).save(outside)
    os.symlink(outside, root / "link-out.safetensors")
    os.symlink(tmp_path, root / "up")
    (root / "dir.safetensors").mkdir()
    os.mkfifo(root / "fifo.safetensors")
    return root


def test_files_are_served_by_name_from_the_folder_only(folder, tmp_path):
    store = SAEStore(folder)
    _version, w = store.load("a.safetensors")
    torch.testing.assert_close(w.W_enc, _sae().W_enc)
    assert store.load("sub/b.safetensors")[1].d_sae == M
    assert store.load("link-in.safetensors")[1] is w  # a link that stays inside: the same file, loaded once
    refused = [
        str(tmp_path / "secret.safetensors"),  # absolute
        "../secret.safetensors",
        "sub/../../secret.safetensors",
        "link-out.safetensors",  # a link leading out
        "up/secret.safetensors",  # a linked folder leading out
        "dir.safetensors",  # not a regular file
        "fifo.safetensors",  # would block a reader
        "missing.safetensors",
        ".hidden",
        "a.safetensors\x00x",
        "",
        "x" * 300,
    ]
    messages = set()
    for name in refused:
        with pytest.raises(ConfigError, match="no SAE named") as e:
            store.load(name)
        messages.add(str(e.value).replace(repr(name[:80]), "NAME"))
        assert str(tmp_path) not in str(e.value).replace(repr(name[:80]), "")
    assert len(messages) == 1  # missing and forbidden read the same


def test_no_folder_refuses_and_says_how_to_enable(monkeypatch, folder):
    monkeypatch.delenv(SAE_DIR_ENV, raising=False)
    with pytest.raises(ConfigError, match="--sae-dir"):
        SAEStore.from_env().load("a.safetensors")
    monkeypatch.setenv(SAE_DIR_ENV, str(folder))
    assert SAEStore.from_env().load("a.safetensors")[1].d_in == D


def test_size_bound_and_bad_files(folder):
    with pytest.raises(ConfigError, match="larger than"):
        SAEStore(folder, max_bytes=100).load("a.safetensors")
    (folder / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ConfigError, match="not a readable safetensors file") as e:
        SAEStore(folder).load("junk.safetensors")
    assert str(folder) not in str(e.value)  # named by the request's name, not the server's path


def test_a_rewritten_file_is_read_again_and_the_cache_is_bounded(folder):
    store = SAEStore(folder, max_cached=1)
    v1, w1 = store.load("a.safetensors")
    _sae(seed=5).save(folder / "a.safetensors")
    v2, w2 = store.load("a.safetensors")
    assert v1 != v2 and not torch.equal(w1.W_enc, w2.W_enc)
    store.load("sub/b.safetensors")
    assert len(store._cache) == 1


def test_specs_are_checked_against_the_model_once_per_request(folder):
    abl = SAEAblations(SAEStore(folder), INFO)
    [a] = abl.for_request("r1", [_spec("a.safetensors", features=[3, 1])])
    assert a.layer == 1 and a.features.tolist() == [1, 3] and a.key[1:] == (1, (1, 3))
    for spec, msg in (
        (_spec("a.safetensors", layer=3), "layer 3 does not exist"),
        (_spec("a.safetensors", features=[M]), r"feature indices must be in \[0, 10\)"),
        (_spec("nope.safetensors"), "no SAE named"),
    ):
        with pytest.raises(ConfigError, match=msg):
            abl.for_request(f"bad-{msg}", [spec])
    _sae(d=8).save(folder / "wide.safetensors")
    with pytest.raises(ConfigError, match="reads 8-dim states"):
        abl.check(_spec("wide.safetensors"))
    # remembered per request (its error too) until forgotten
    os.remove(folder / "a.safetensors")
    assert abl.for_request("r1", [_spec("a.safetensors")])[0] is a
    abl.forget("r1")
    with pytest.raises(ConfigError, match="no SAE named"):
        abl.for_request("r1", [_spec("a.safetensors")])


def test_rows_are_grouped_and_errors_stay_with_their_request(folder):
    abl = SAEAblations(SAEStore(folder), INFO)
    s_a = EngineSettings(interventions=[_spec("a.safetensors").model_dump()])
    s_b = EngineSettings(interventions=[_spec("sub/b.safetensors", layer=2).model_dump()])
    s_bad = EngineSettings(interventions=[_spec("gone.safetensors").model_dump()])
    rids = ["p", "a1", "b", "bad", "a2", "plain"]
    settings = [None, s_a, s_b, s_bad, s_a, EngineSettings(layers=[0])]
    checked, bad = abl.for_rows(rids, settings)
    assert list(bad) == [3] and "no SAE named" in str(bad[3])
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 3, 4, 4, -1, 5])  # flattened tokens -> request index
    plan = SAEAblations.plan(checked, owner)
    assert sorted(plan) == [1, 2]
    [(_w, feats, tok)] = plan[1]  # one group for a1 and a2 (same SAE, layer, features)
    assert tok.tolist() == [2, 3, 4, 7, 8] and feats.tolist() == [1, 3]
    assert plan[2][0][2].tolist() == [5]


def test_apply_writes_the_ablated_stream_into_the_residual_and_keeps_the_output():
    w = _sae()
    g = torch.Generator().manual_seed(3)
    o, r = torch.randn(4, D, generator=g), torch.randn(4, D, generator=g)
    x = o + r
    o0, r0 = o.clone(), r.clone()
    feats, tok = torch.tensor([0, 5]), torch.tensor([1, 3])
    apply_ablations([(w, feats, tok)], o, r)
    torch.testing.assert_close(o + r, torch.stack([x[0], w.remove(x[1], feats), x[2], w.remove(x[3], feats)]))
    assert torch.equal(o, o0) and torch.equal(r[[0, 2]], r0[[0, 2]])  # untouched rows bit for bit
    s = x.clone()  # a written stream (no pending pair): changed in place
    apply_ablations([(w, feats, tok)], s, None)
    torch.testing.assert_close(s[1], w.remove(x[1], feats))
    assert torch.equal(s[0], x[0])
