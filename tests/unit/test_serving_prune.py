"""Engine-side online pruning (l2reason.serving.prune) against the offline replay `simulate`.

An engine runs a request's candidates as separate requests that need not
advance together; these tests drive `PruneGroups` the way a plugin does (one
`step` per engine step, records of the candidates that produced a token, the
requests that left) under random scheduling, and `replay` the way a client
does, and check both decide exactly what `simulate` decides on the same
signals: the same candidates pruned at the same token, the same survivors.
"""

from __future__ import annotations

import numpy as np
import pytest

from l2reason.errors import ConfigError
from l2reason.serving.prune import PruneGroups, record_signal, replay
from l2reason.serving.settings import EngineSettings, PruneSettings
from l2reason.techniques.pruning import simulate


def random_case(rng: np.random.Generator) -> tuple[PruneSettings, list[np.ndarray]]:
    """A random rule (fixed or first-finished threshold, warm-up, window, min_keep) and one signal per candidate."""
    n = int(rng.integers(2, 9))
    lens = rng.integers(1, 30, size=n)
    sig = [rng.normal(size=int(t)).round(int(rng.integers(1, 4))) for t in lens]  # rounding makes ties
    fixed = bool(rng.integers(2))
    rule = PruneSettings(
        group="g",
        n=n,
        index=0,
        max_len=int(lens.max()),
        score="self-certainty",
        threshold=float(rng.normal(-0.3, 0.5)) if fixed else "first-finished",
        first=int(rng.integers(1, n)),
        quantile=float(rng.choice([0.0, 0.1, 0.5, 1.0])),
        warmup=int(rng.integers(0, 8)),
        window=int(rng.integers(1, 10)),
        min_keep=int(rng.integers(1, n)),
    )
    return rule, sig


def run_engine(rule: PruneSettings, sig: list[np.ndarray], rng: np.random.Generator, lag: int) -> dict[int, int]:
    """Candidates as engine requests under random scheduling; the tokens each pruned one keeps (by row).

    Each candidate starts after a random delay (up to ``lag`` steps) and then produces a token in a random
    subset of steps; a pruned one produces one more token before the engine stops it (vLLM's length cap).
    """
    groups = PruneGroups()
    n = rule.n
    start = rng.integers(0, lag + 1, size=n)
    made = [0] * n
    stop_at: dict[int, int] = {}  # row -> the last token the engine still produces
    live = set(range(n))
    kept: dict[int, int] = {}
    step = 0
    while live:
        records, ended = {}, {}
        for j in sorted(live):
            if step == start[j]:
                assert groups.join(f"r{j}", rule.model_copy(update={"index": j})) is None
            if step < start[j] or rng.random() < 0.3:
                continue
            t = made[j]
            made[j] += 1
            records[f"r{j}"] = {"sc": float(sig[j][t]) if t < len(sig[j]) else 0.0}
            if made[j] == len(sig[j]) or made[j] == stop_at.get(j):
                ended[f"r{j}"] = True
                live.discard(j)
        for rid, keep in groups.step(records, ended).items():
            j = int(rid[1:])
            assert j not in kept, "pruned twice"
            kept[j] = keep
            stop_at.setdefault(j, min(made[j] + 1, len(sig[j])))
            if made[j] >= stop_at[j]:
                live.discard(j)  # it had finished already (ran ahead of its group)
        step += 1
    assert not groups.groups and not groups.members and groups.bytes == 0, "a finished group was kept"
    return kept


@pytest.mark.parametrize("lag", [0, 5])
def test_engine_groups_equal_simulate_under_random_scheduling(lag):
    rng = np.random.default_rng(lag)
    pruned_some = 0
    for trial in range(300):
        rule, sig = random_case(rng)
        kept = run_engine(rule, sig, rng, lag)
        sim = simulate(rule, sig)
        assert kept == {j: int(s) for j, s in enumerate(sim.pruned_step) if s >= 0}, (trial, rule)
        pruned_some += bool(kept)
    assert pruned_some > 50


def test_client_replay_equals_simulate():
    """On full signals (nothing stopped by an engine) and on the signals an engine left (cut at its marks)."""
    rng = np.random.default_rng(7)
    for trial in range(300):
        rule, sig = random_case(rng)
        sim = simulate(rule, sig)
        tr, kept = replay(rule, sig, [None] * rule.n, rule.max_len)
        assert tr.pruned_step.tolist() == sim.pruned_step.tolist() and kept == sim.tokens.tolist(), trial
        assert tr.threshold == sim.threshold and tr.threshold_step == sim.threshold_step, trial
        # the engine stopped each pruned candidate one token after its prune step and marked that step
        stopped = [int(s) if s >= 0 else None for s in sim.pruned_step]
        cut = [x[: s + 1] if s is not None else x for x, s in zip(sig, stopped, strict=True)]
        tr2, kept2 = replay(rule, cut, stopped, rule.max_len)
        assert tr2.pruned_step.tolist() == sim.pruned_step.tolist() and kept2 == sim.tokens.tolist(), trial
        assert tr2.request_report() == tr.request_report()


def test_replay_keeps_the_engine_mark_when_its_signals_disagree(caplog):
    rule = PruneSettings(group="g", n=2, index=0, max_len=5, score="self-certainty", threshold=0.0, warmup=1, window=1)
    tr, kept = replay(rule, [np.ones(5), np.ones(3)], [None, 2], 5)
    assert kept == [5, 2] and tr.pruned_step.tolist() == [-1, 2]
    assert "received signals do not" in caplog.text


def test_aborted_candidates_never_block_or_get_pruned():
    rule = PruneSettings(group="g", n=3, index=0, max_len=9, score="self-certainty", threshold=0.5, warmup=1, window=1)
    groups = PruneGroups()
    for j in range(3):
        assert groups.join(f"r{j}", rule.model_copy(update={"index": j})) is None
    assert groups.step({"r0": {"sc": 0.1}, "r1": {"sc": 0.9}}, {}) == {}  # waits for r2's first token
    assert groups.step({}, {"r2": False}) == {"r0": 1}  # r2 aborted: token 1 runs for r0 and r1
    assert groups.step({"r1": {"e": "l2reason: broken"}}, {"r0": True, "r1": True}) == {}
    assert not groups.groups and groups.bytes == 0


def test_join_refuses_mismatched_members_and_too_much_state():
    rule = PruneSettings(group="g", n=2, index=0, max_len=9, score="self-certainty", threshold=0.5)
    groups = PruneGroups(max_bytes=200)
    assert groups.join("a", rule) is None
    assert "twice" in (groups.join("b", rule) or "")
    assert "other prune settings" in (groups.join("b", rule.model_copy(update={"index": 1, "warmup": 3})) or "")
    assert "MiB" in (groups.join("c", rule.model_copy(update={"group": "h"})) or "")


def test_record_signal_of_each_score():
    base = {"group": "g", "n": 2, "index": 0, "max_len": 4, "threshold": 0.0}
    l2 = PruneSettings(**base, score="l2", cols=[2, 0], direction="low")
    assert record_signal(l2, {"n": [1.0, 5.0, 3.0]}) == -2.0
    exc = PruneSettings(**base, score="l2", cols=[0, 1], l2_stat="exceedance", tau=[0.5, 9.0])
    assert record_signal(exc, {"n": [1.0, 5.0]}) == 0.5
    assert record_signal(PruneSettings(**base, score="confidence", k=3), {"cf": 2.5, "sc": 1.0}) == 2.5
    assert record_signal(PruneSettings(**base, score="self-certainty"), {"sc": 1.0, "e": "x"}) is None
    assert record_signal(l2, {"n": [1.0]}) is None  # a column the record lacks


def test_settings_carry_prune_and_bound_it():
    p = PruneSettings(group="g" * 64, n=8, index=7, max_len=512, score="confidence", threshold="first-finished", k=20)
    s = EngineSettings(layers=[3], prune=p)
    assert EngineSettings.decode(s.encode()) == s
    bad = [
        {"index": 8},
        {"min_keep": 8},
        {"group": "g" * 65},
        {"k": 0},
        {"score": "l2"},
        {"score": "l2", "cols": [0], "l2_stat": "exceedance"},
        {"threshold": float("inf")},
    ]
    for update in bad:
        raw = p.model_dump(mode="json") | update
        with pytest.raises(ConfigError, match="prune"):
            EngineSettings.decode(
                {"l2reason": EngineSettings(layers=[3]).model_dump_json()[:-1] + f', "prune": {_json(raw)}}}'}
            )


def _json(obj: object) -> str:
    import json

    return json.dumps(obj)


# ---- the client's side: settings out, replay and cuts in (no server) ---------------------------------------


def _client():
    from tests.unit.test_vllm_client import _offline

    be = _offline()
    be._capabilities = be._capabilities.model_copy(update={"pruning": True})
    return be


def _completion(ids, recs, finish="length"):
    return {
        "choices": [{"token_ids": ids, "text": "", "finish_reason": finish, "logprobs": None}],
        "kv_transfer_params": {"l2r": recs},
    }


def test_client_sends_prune_settings_and_reports_what_the_engine_pruned(monkeypatch):
    from l2reason.backends.base import GenerationRequest, NormSpec, PruneSpec, SamplingParams

    be = _client()
    spec = PruneSpec(score="l2", layers=[1], threshold=0.5, warmup=1, window=1)
    req = GenerationRequest(
        prompt="hi",
        n=3,
        sampling=SamplingParams(max_new_tokens=6),
        norms=NormSpec(layers=[0, 3], mask_massive=False),
        prune=spec,
    )
    p = be._prepare(req)
    sent = [EngineSettings.decode(it["vllm_xargs"]) for it in p["items"]]
    assert [s.layers for s in sent] == [[0, 3, 1]] * 3 and [s.prune.index for s in sent] == [0, 1, 2]
    assert len({s.prune.group for s in sent}) == 1 and sent[0].prune.cols == [2] and sent[0].prune.max_len == 6
    # candidate 1 drops below 0.5 at token 2: the engine marked that record and stopped it one token later
    sig = [[1.0] * 6, [1.0, 0.2, 1.0], [1.0] * 4]
    recs = [[{"n": [7.0, 8.0, v]} for v in row] for row in sig]
    recs[1][1]["p"] = 2
    outs = [
        _completion(list(range(6)), recs[0]),
        _completion([0, 1, 2], recs[1]),
        _completion([0, 1, 2, 3], recs[2], "stop"),
    ]
    monkeypatch.setattr(be, "_send", lambda requests, items, timeout=None: outs)
    res = be.generate_many([req])[0]
    c = res.candidates
    assert [x.finish_reason for x in c] == ["length", "pruned", "eos"] and [x.completion_tokens for x in c] == [6, 2, 4]
    assert c[1].text == "ab" and c[1].norms.array().tolist() == [[7.0, 8.0]] * 2
    assert c[1].prune == {"pruned": True, "step": 2, "score": pytest.approx(0.2), "lowest": pytest.approx(0.2)}
    assert res.prune == {
        "score": "l2",
        "threshold": 0.5,
        "threshold_step": 0,
        "pruned": [1],
        "pruned_steps": [2],
        "survivors": 2,
    }
    # the same run had the engine's mark been lost (a candidate already gone): the replay prunes it itself
    del recs[1][1]["p"]
    assert be.generate_many([req])[0].candidates[1].finish_reason == "pruned"


def test_a_plugin_without_prune_is_refused_before_sending():
    from l2reason.backends.base import GenerationRequest
    from l2reason.errors import CapabilityError
    from tests.unit.test_vllm_client import _offline

    with pytest.raises(CapabilityError, match="names 'prune'"):
        _offline().generate_many([GenerationRequest(prompt="x", n=4, prune={}, logprobs=5)])


# ---- the vLLM plugin's scheduler side, in vLLM's environment (no engine) ------------------------------------

VLLM_SCHEDULER = r"""
import json
from types import SimpleNamespace as NS

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

from l2reason.serving.settings import SETTINGS_KEY, EngineSettings, PruneSettings
from l2reason_vllm.connector import L2ReasonConnector, L2WorkerMeta

rule = PruneSettings(group="g", n=3, index=0, max_len=9, score="self-certainty", threshold=0.5, warmup=1, window=1)
conn = L2ReasonConnector(NS(kv_transfer_config=NS()), KVConnectorRole.WORKER)
sig = {"a": [0.9, 0.9, 0.9, 0.9], "b": [0.9, 0.1, 0.9, 0.9, 0.9], "c": [0.9, 0.9, 0.9]}
reqs = {}
for j, rid in enumerate(sig):
    raw = EngineSettings(layers=[], sc=True, prune=rule.model_copy(update={"index": j})).encode()[SETTINGS_KEY]
    sp = NS(extra_args={SETTINGS_KEY: raw})
    reqs[rid] = NS(request_id=rid, sampling_params=sp, max_tokens=9, num_output_tokens=0,
                   status=NS(name="RUNNING"), is_finished=lambda: False)
    conn.update_state_after_alloc(reqs[rid], None, 0)
new = [NS(req_id=rid, sampling_params=r.sampling_params, prompt_token_ids=[1, 2], block_ids=([j + 1],),
          num_computed_tokens=0) for j, (rid, r) in enumerate(reqs.items())]
cached = NS(req_ids=[], new_block_ids=[], resumed_req_ids=set(), num_computed_tokens=[])
conn.build_connector_meta(NS(scheduled_new_reqs=new, num_scheduled_tokens={r: 2 for r in reqs},
                             scheduled_cached_reqs=cached, finished_req_ids=set()))
out = {}
live = dict(reqs)
for t in range(6):
    recs = {}
    for rid, r in list(live.items()):
        r.num_output_tokens += 1
        recs[rid] = {"sc": sig[rid][t] if t < len(sig[rid]) else 0.0}
        if r.num_output_tokens >= min(len(sig[rid]), r.max_tokens):  # EOS, or the cap the pruning set
            r.status = NS(name="FINISHED_STOPPED")
            out[rid] = conn.request_finished(r, [])[1]["l2r"]
            del live[rid]
    conn.update_connector_output(NS(kv_connector_worker_meta=L2WorkerMeta(recs)))
print(json.dumps({rid: [len(v), [i for i, x in enumerate(v) if "p" in x], [x.get("p") for x in v]] for rid, v in out.items()}))
print(json.dumps({"max_tokens": {rid: r.max_tokens for rid, r in reqs.items()}, "left": [conn._pruning, conn._lists,
                  conn._ended, len(conn._prune.groups)]}))
"""


def test_vllm_connector_prunes_marks_and_caps_a_request():
    """The plugin's scheduler side with fake requests: candidate b drops below the threshold at token 2; the
    connector marks that record, lowers b's max_tokens to the tokens it has (vLLM ends it one token later) and
    forgets the group once all three left."""
    import json
    import os
    import subprocess

    py = os.environ.get("L2REASON_VLLM_PYTHON")
    if not py:
        pytest.skip("no vLLM environment ($L2REASON_VLLM_PYTHON)")
    out = subprocess.run([py, "-c", VLLM_SCHEDULER], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lists, state = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    assert lists["b"][:2] == [3, [1]] and lists["b"][2][1] == 2  # 3 tokens made, record 2 of them says "keep 2"
    assert lists["a"][:2] == [4, []] and lists["c"][:2] == [3, []]
    assert state["max_tokens"] == {"a": 9, "b": 2, "c": 9}
    assert state["left"] == [{}, {}, {}, 0]


def test_plugin_confidence_is_the_clients_arithmetic_on_vllms_logprobs():
    """`cf` = what the client computes from vLLM's top logprobs (raw log_softmax in float32, highest first)."""
    import torch

    from l2reason.serving.prune import token_confidence

    logits = torch.randn(4, 99, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    ks = [1, 5, 20, 5]
    lp = logits.log_softmax(dim=-1, dtype=torch.float32)  # vLLM's Sampler.compute_logprobs
    for row, k, got in zip(lp, ks, token_confidence(logits, ks), strict=True):
        top = sorted((float(v) for v in torch.topk(row, k).values), reverse=True)  # the client's _parse
        assert got == -sum(top) / len(top)


# ---- the SGLang plugin's scheduler side, with stand-in requests (no engine) --------------------------------


class _SGReq:
    """What the plugin's hook reads of SGLang's ``Req``."""

    def __init__(self, rid, settings, max_new):
        from types import SimpleNamespace

        self.rid, self.settings = rid, settings
        self.sampling_params = SimpleNamespace(max_new_tokens=max_new)
        self.customized_info, self.output_ids, self.finished_reason = {"l2r": []}, [], None

    def finished(self):
        return self.finished_reason is not None


def test_sglang_hook_prunes_marks_and_caps_a_request():
    """The same three candidates as the vLLM connector test, through l2reason_sglang.prune: b is pruned at token 2,
    its record 2 says so, its max_new_tokens drops to 2; the group is forgotten once all left."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integrations" / "sglang"))
    from l2reason_sglang import prune as sg

    rule = PruneSettings(group="g", n=3, index=0, max_len=9, score="self-certainty", threshold=0.5, warmup=1, window=1)
    sig = {"a": [0.9, 0.9, 0.9, 0.9], "b": [0.9, 0.1, 0.9, 0.9, 0.9], "c": [0.9, 0.9, 0.9]}
    reqs = {
        rid: _SGReq(rid, EngineSettings(sc=True, prune=rule.model_copy(update={"index": j})), 9)
        for j, rid in enumerate(sig)
    }
    plain = _SGReq("plain", None, 9)
    live = [*reqs.values(), plain]
    for t in range(6):
        for r in live:
            r.output_ids.append(7)
            r.customized_info["l2r"].append(
                {"sc": sig.get(r.rid, [0.0] * 9)[t] if t < len(sig.get(r.rid, [])) else 0.0}
            )
            if len(r.output_ids) >= min(len(sig.get(r.rid, [0] * 9)), r.sampling_params.max_new_tokens):
                r.finished_reason = "FINISH_LENGTH"
        sg.after_batch_result(type("Batch", (), {"reqs": live})(), lambda rid: (reqs.get(rid) or plain).settings)
        live = [r for r in live if not r.finished()]
    b = reqs["b"].customized_info["l2r"]
    assert len(b) == 3 and [i for i, rec in enumerate(b) if "p" in rec] == [1] and b[1]["p"] == 2
    assert {rid: r.sampling_params.max_new_tokens for rid, r in reqs.items()} == {"a": 9, "b": 2, "c": 9}
    assert not sg.GROUPS.groups and not sg.GROUPS.members and not sg._FED and not sg._REQS
    # an abort of a member that waits in the queue (retracted) lets its group go
    x = _SGReq("x0", EngineSettings(prune=rule.model_copy(update={"group": "h"})), 9)
    x.output_ids.append(1)
    x.customized_info["l2r"].append({"sc": 0.9})
    sg.after_batch_result(type("Batch", (), {"reqs": [x]})(), lambda rid: x.settings)
    assert "x0" in sg.GROUPS.members
    sg.after_abort("x", False)
    assert not sg.GROUPS.members and "h" in sg.GROUPS.waiting  # waits for its unseen candidates a while
