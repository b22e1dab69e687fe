"""ChatL2Reason: a real LangChain BaseChatModel on the tiny backend."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import HumanMessage, SystemMessage

from l2reason.backends.base import GenerationRequest, Message, SamplingParams
from l2reason.integrations.langchain import ChatL2Reason


def test_invoke_matches_backend_and_carries_norms(tiny_backend):
    llm = ChatL2Reason(backend=tiny_backend, max_tokens=6)
    msg = llm.invoke([SystemMessage("be brief"), HumanMessage("hello w1")])
    direct = tiny_backend.generate(
        GenerationRequest(
            messages=[Message(role="system", content="be brief"), Message(role="user", content="hello w1")],
            sampling=SamplingParams(max_new_tokens=6),
        )
    )
    assert msg.content == direct.text
    meta = msg.response_metadata["l2reason"]
    assert meta["layers"] == direct.candidates[0].norms.layers
    assert meta["mean_norm"] == pytest.approx(direct.candidates[0].norms.mean)
    assert msg.usage_metadata["output_tokens"] == direct.completion_tokens


def test_selection_and_all_candidates(tiny_backend):
    llm = ChatL2Reason(backend=tiny_backend, max_tokens=6, n=3, temperature=1.0, selection="l2")
    res = llm.generate([[HumanMessage("hello")]])
    gens = res.generations[0]
    assert len(gens) == 1
    info = gens[0].generation_info["l2reason"]
    assert len(info["candidates"]) == 3 and info["selection"]["method"] == "l2"
    assert info["index"] == info["selection"]["index"]  # the returned generation is the chosen candidate
    plain = ChatL2Reason(backend=tiny_backend, max_tokens=6, n=3, temperature=1.0)
    assert len(plain.generate([[HumanMessage("hello")]]).generations[0]) == 3


def test_interventions_pass_through(tiny_backend):
    llm = ChatL2Reason(
        backend=tiny_backend, max_tokens=6, interventions=[{"kind": "alrr", "mode": "static", "layers": [1]}]
    )
    msg = llm.invoke("hello")
    rep = msg.response_metadata["l2reason"]["interventions"]["alrr"]
    assert rep["decode_steps"] > 0 and rep["passes_accepted"] == [rep["decode_steps"]]
