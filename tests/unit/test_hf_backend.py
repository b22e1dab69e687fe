"""HFBackend on a tiny random model: norms, identities, batching, seeds, threads, errors."""

from __future__ import annotations

import threading

import pytest
import torch

from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams
from l2reason.backends.hf import HFBackend
from l2reason.errors import BackendError, ConfigError, LayerError


def req(text="hello world w1 w2", n=1, max_new=10, temp=0.0, seed=0, layers="all", logprobs=None, stop=(), norms=True):
    return GenerationRequest(
        messages=[Message(role="user", content=text)],
        n=n,
        sampling=SamplingParams(max_new_tokens=max_new, temperature=temp, seed=seed, stop=list(stop)),
        norms=NormSpec(layers=layers) if norms else None,
        logprobs=logprobs,
    )


def test_norms_equal_hidden_states_plus_one(tiny, tiny_backend):
    r = tiny_backend.generate(req(max_new=8))
    c = r.candidates[0]
    prompt = tiny_backend.prompt_ids(req())
    gen = tiny.tokenizer(c.text, add_special_tokens=False)["input_ids"]
    assert len(gen) == c.completion_tokens == 8
    ids = torch.tensor([prompt + gen])
    with torch.no_grad():
        hs = tiny.model(ids, output_hidden_states=True).hidden_states
    P = len(prompt)
    # decode step t (1-based) is the position that produced token t: P-1+t-1
    got = c.norms.array()  # [T, L]
    assert got.shape == (8, 4)
    # hidden_states[L] (the last entry) is taken *after* the final norm in transformers;
    # our layer L-1 is the residual before it, so the identity holds for l < L-1.
    for li, layer in enumerate(c.norms.layers[:-1]):
        want = hs[layer + 1][0, P - 1 : P - 1 + 8].norm(dim=-1)
        torch.testing.assert_close(torch.from_numpy(got[:, li]), want, atol=1e-4, rtol=1e-4)


def test_capture_on_off_identical_tokens_and_logprobs(tiny_backend):
    on = tiny_backend.generate(req(max_new=12, logprobs=3, layers="all")).candidates[0]
    off = tiny_backend.generate(req(max_new=12, logprobs=3, norms=False)).candidates[0]
    assert on.text == off.text
    assert on.logprobs.logprob == off.logprobs.logprob  # bit-identical
    assert on.logprobs.top_logprobs == off.logprobs.top_logprobs
    assert off.norms is None and on.norms is not None


def test_plain_model_generate_matches(tiny, tiny_backend):
    """Greedy decoding equals transformers' own generate (the plain model)."""
    prompt = tiny_backend.prompt_ids(req())
    out = tiny.model.generate(
        torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    plain = tiny.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
    ours = tiny_backend.generate(req(max_new=10)).candidates[0]
    if ours.finish_reason == "length":
        assert ours.text == plain


def test_hooks_removed_after_success_and_error(tiny, fail_alrr):
    be = HFBackend(tiny)

    def snapshot():
        # transformers may install its own (persistent) output-recording hooks: compare sets
        return [(set(m._forward_hooks), set(m.mlp._forward_hooks)) for m in be.layers]

    before = snapshot()
    be.generate(req(max_new=3))
    assert snapshot() == before

    fail_alrr(be, needs_mlp=True)  # a controller that fails mid-decode
    with pytest.raises(BackendError, match="boom"):
        be.generate(req(max_new=3).model_copy(update={"interventions": [{"kind": "alrr"}]}))
    assert snapshot() == before
    # the model still works and gives the same output as before
    assert be.generate(req(max_new=3)).candidates[0].text == HFBackend(tiny).generate(req(max_new=3)).candidates[0].text


def test_batch_of_unequal_prompts_equals_single(tiny_backend):
    texts = ["hello", "hello world w1 w2 w3 w4 w5 w6 w7 w8", "w9 w10 ?"]
    batched = tiny_backend.generate_many([req(t, max_new=6) for t in texts])
    for t, b in zip(texts, batched, strict=True):
        single = tiny_backend.generate(req(t, max_new=6)).candidates[0]
        assert b.candidates[0].text == single.text
        torch.testing.assert_close(
            torch.from_numpy(b.candidates[0].norms.array()),
            torch.from_numpy(single.norms.array()),
            atol=1e-4,
            rtol=1e-4,
        )
        assert b.candidates[0].completion_tokens == 6  # padding never counted
        assert len(b.candidates[0].norms.per_token) == 6


def test_same_seed_same_text_and_candidates_differ(tiny_backend):
    a = tiny_backend.generate(req(n=3, temp=1.0, seed=7, max_new=10))
    b = tiny_backend.generate(req(n=3, temp=1.0, seed=7, max_new=10))
    c = tiny_backend.generate(req(n=3, temp=1.0, seed=8, max_new=10))
    assert [x.text for x in a.candidates] == [x.text for x in b.candidates]
    assert len({x.text for x in a.candidates}) == 3
    assert [x.text for x in a.candidates] != [x.text for x in c.candidates]
    # candidate j depends on (seed, j) only, not on how many siblings it has
    one = tiny_backend.generate(req(n=1, temp=1.0, seed=7, max_new=10))
    assert one.candidates[0].text == a.candidates[0].text


def test_stop_strings(tiny_backend):
    free = tiny_backend.generate(req(max_new=10)).candidates[0]
    words = free.text.split()
    stop = words[3]
    if stop in words[:3]:
        pytest.skip("random model repeated a word")
    r = tiny_backend.generate(req(max_new=10, stop=[stop])).candidates[0]
    assert r.finish_reason == "stop"
    assert stop not in r.text
    assert r.text.split() == words[:3]


def test_logprob_fields(tiny_backend):
    c = tiny_backend.generate(req(max_new=5, logprobs=4)).candidates[0]
    lp = c.logprobs
    assert len(lp.logprob) == len(lp.self_certainty) == len(lp.confidence) == 5
    assert all(len(t) == 4 for t in lp.top_logprobs)
    # greedy: the chosen token is the top-1
    assert lp.logprob == pytest.approx([t[0] for t in lp.top_logprobs], abs=1e-6)
    assert lp.confidence == pytest.approx([-sum(t) / 4 for t in lp.top_logprobs], abs=1e-5)
    assert all(s >= -1e-6 for s in lp.self_certainty)  # KL from uniform is >= 0


def test_threads_equal_serial(tiny_backend):
    reqs = [req(f"hello w{i}", n=2, temp=1.0, seed=i, max_new=6) for i in range(8)]
    serial = [[c.text for c in tiny_backend.generate(r).candidates] for r in reqs]
    results: dict[int, list[str]] = {}

    def work(i):
        for _ in range(2):
            results[i] = [c.text for c in tiny_backend.generate(reqs[i]).candidates]

    ths = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert [results[i] for i in range(8)] == serial


def test_llama_family_and_layer_override():
    from conftest import make_tiny

    lm = make_tiny("llama", layers=3)
    be = HFBackend(lm)
    assert be.layers_path == "model.layers"
    c = be.generate(req(max_new=3, layers=[-1])).candidates[0]
    assert c.norms.layers == [2]
    with pytest.raises(ConfigError, match="layers_path"):
        HFBackend(lm, layers_path="model.nope")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n=0), r"n .candidates per prompt. must be in \[1, 256\]"),
        (dict(sampling=SamplingParams.model_construct(max_new_tokens=0)), None),
        (dict(messages=[]), "messages is empty"),
        (dict(messages=[Message(role="user", content="  ")]), "every message is empty"),
        (dict(messages=None, prompt=""), "prompt is empty"),
        (dict(bogus=1), "bogus: unknown field"),
    ],
)
def test_bad_requests(kwargs, match):
    base = dict(messages=[Message(role="user", content="hi")])
    base.update(kwargs)
    if match is None:
        with pytest.raises(ValueError, match=r"max_new_tokens must be in \[1, 131072\]"):
            SamplingParams(max_new_tokens=0)
        return
    with pytest.raises(ConfigError, match=match):
        GenerationRequest.build(**base)


def test_layers_out_of_range(tiny_backend):
    with pytest.raises(LayerError, match=r"0\.\.3"):
        tiny_backend.generate(req(layers=[7]))


def test_rows_leaving_the_batch_do_not_change_the_others(tiny_backend):
    """Rows with different limits finish at different steps and leave the batch (KV compaction)."""
    reqs = [req("hello w1", max_new=m, temp=1.0, seed=s, n=2, logprobs=2) for m, s in ((3, 1), (12, 2), (7, 3))]
    batched = tiny_backend.generate_many(reqs)
    for r, b in zip(reqs, batched, strict=True):
        single = tiny_backend.generate(r)
        for cs, cb in zip(single.candidates, b.candidates, strict=True):
            assert cs.text == cb.text and cs.completion_tokens == cb.completion_tokens
            torch.testing.assert_close(
                torch.tensor(cs.logprobs.logprob), torch.tensor(cb.logprobs.logprob), atol=1e-4, rtol=1e-4
            )
            torch.testing.assert_close(
                torch.from_numpy(cs.norms.array()), torch.from_numpy(cb.norms.array()), atol=1e-4, rtol=1e-4
            )
    lengths = [c.completion_tokens for r in batched for c in r.candidates]
    assert len(set(lengths)) > 2  # rows really left the batch at different steps
    assert [c.completion_tokens for c in batched[0].candidates] == [3, 3]


def _nucleus_by_full_sort(lg: torch.Tensor, top_p: float) -> torch.Tensor:
    """Reference: sort the whole row, keep the smallest prefix with mass >= top_p."""
    sl, si = torch.sort(lg, descending=True)
    p = torch.softmax(sl, -1)
    keep = (p.cumsum(-1) - p) < top_p
    return torch.zeros_like(lg, dtype=torch.bool).scatter(-1, si, keep)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("scale", [0.05, 1.0, 8.0])  # 0.05: nearly flat, so k must grow past its start
def test_top_p_support_equals_full_sort(top_p, scale):
    from l2reason.backends.hf.backend import top_p_support

    g = torch.Generator().manual_seed(3)
    lg = torch.randn(5, 3000, generator=g, dtype=torch.float64) * scale
    vals, ids = top_p_support(lg, top_p, start_k=16)
    got = torch.zeros_like(lg, dtype=torch.bool).scatter(-1, ids, torch.isfinite(vals))
    assert torch.equal(got, _nucleus_by_full_sort(lg, top_p))
    # kept entries carry the original logits
    assert torch.equal(vals[torch.isfinite(vals)], lg.gather(-1, ids)[torch.isfinite(vals)])


def test_sampling_frequencies_follow_the_nucleus():
    """Seeded per-row draws reproduce the renormalised nucleus distribution; outside tokens never appear."""
    from l2reason.backends.hf.backend import _Row

    probs = torch.tensor([0.4, 0.3, 0.2, 0.06, 0.04])  # top_p 0.85 keeps the first three
    rows = [_Row(0, j, [1], SamplingParams(temperature=1.0, top_p=0.85), j) for j in range(6000)]
    gens = [torch.Generator().manual_seed(j) for j in range(6000)]
    logits = probs.log().expand(len(rows), -1).clone()
    out = HFBackend._sample(None, logits, rows, gens)  # type: ignore[arg-type]
    counts = torch.bincount(out, minlength=5).double()
    assert counts[3] == 0 and counts[4] == 0
    want = torch.tensor([0.4, 0.3, 0.2]) / 0.9
    freq = counts[:3] / counts.sum()
    sd = (want * (1 - want) / counts.sum()).sqrt()
    assert ((freq - want).abs() < 4 * sd).all(), (freq, want)
    # the same generator seeds give the same draws, whatever the batch
    again = HFBackend._sample(None, logits[:10], rows[:10], [torch.Generator().manual_seed(j) for j in range(10)])  # type: ignore[arg-type]
    assert torch.equal(again, out[:10])


def test_candidates_share_one_prefill(tiny_backend):
    """n candidates of one prompt run its prefill once; their first-step norms are the prompt's, bit-equal."""
    r = tiny_backend.generate(req(n=4, temp=1.0, seed=5, max_new=4))
    first = [c.norms.array()[0] for c in r.candidates]
    for f in first[1:]:
        assert (f == first[0]).all()
    single = tiny_backend.generate(req(n=1, temp=1.0, seed=5, max_new=4)).candidates[0]
    torch.testing.assert_close(torch.from_numpy(single.norms.array()[0]), torch.from_numpy(first[0]))
