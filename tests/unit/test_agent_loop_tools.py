"""The agent-loop benchmark's tool calls: what the model is shown, and that every wrapper passes a call through.

The first agent-loop run (``docs/results/used_by_agent/before_fix/``) had 130
of 130 tool calls fail: shown DSPy's rendering of the plain function
(``It takes arguments {'expression': {'type': 'string'}}``), the 0.5B model
wrote that schema as the argument. The benchmark now describes the tool with a
call written out; these tests pin that, and check with DSPy's real
ChatAdapter and real l2reason engines (a tiny random model whose texts are
replaced after generation, so norms, scores and selection are real) that a
well-formed call reaches the calculator unchanged in every condition.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

dspy = pytest.importorskip("dspy")

import l2reason.dspy as l2  # noqa: E402
from benchmarks.agent_loop import CONDITIONS, agents, parse_args, trajectory_stats  # noqa: E402
from tests.unit.test_dspy_selection import Rewrite  # noqa: E402


def _step(thought: str, tool: str, args: str) -> str:
    return (
        f"[[ ## next_thought ## ]]\n{thought}\n\n[[ ## next_tool_name ## ]]\n{tool}\n\n"
        f"[[ ## next_tool_args ## ]]\n{args}\n\n[[ ## completed ## ]]"
    )


SCRIPT = [
    _step("add them", "calculator", '{"expression": "12 * 2 + 17 + 17"}'),
    _step("done", "finish", "{}"),
    "[[ ## reasoning ## ]]\n12*2+17+17\n\n[[ ## answer ## ]]\n58\n\n[[ ## completed ## ]]",
]


def _react(tool: str) -> dspy.ReAct:
    return agents(parse_args(["--conditions", "plain", "--tool", tool]))["plain"].module


def test_the_tool_is_shown_with_a_call_the_tool_accepts():
    react = _react("example")
    shown = react.react.signature.instructions
    [example] = re.findall(r"e\.g\. (\{.*?\})", shown)
    assert react.tools["calculator"](**json.loads(example)) == "57"


def test_dspy_rendering_shows_only_the_schema():
    """The cause of the first run's failures: no call to copy, only the schema (which the 0.5B wrote as the value)."""
    react = _react("dspy")
    shown = react.react.signature.instructions
    assert "It takes arguments {'expression': {'type': 'string'}}" in shown
    assert "e.g. {" not in shown
    # the schema written as the argument, as the 0.5B did: DSPy's argument check refuses it
    with pytest.raises(ValueError, match="is not of type 'string'"):
        react.tools["calculator"](expression={"type": "string"})


@pytest.fixture(scope="module")
def base(tiny):
    from l2reason.backends.hf import HFBackend

    be = HFBackend(tiny)
    be.eos_ids = set()  # the random model may sample EOS first
    return be


@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_wrapper_passes_the_call_to_the_tool(base, condition):
    backend = Rewrite(base, lambda k, res: [SCRIPT[min(k, 2)]] * len(res.candidates), f"tiny-agent-{condition}")
    lm = l2.l2_lm(backend=backend, name=backend.model_id, max_tokens=4, cache=False)
    args = parse_args(["--conditions", condition, "--n", "2"])
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        pred = agents(args)[condition](question="12 play basketball, twice that volleyball, 34 tennis: how many?")
    assert pred.trajectory["tool_args_0"] == {"expression": "12 * 2 + 17 + 17"}
    assert pred.trajectory["observation_0"] == "58"
    assert pred.answer == "58"
    stats = trajectory_stats(pred.trajectory, args.max_iters)
    assert (stats["tool_calls"], stats["invalid_tool_calls"], stats["finished"]) == (1, 0, True)
    assert len(pred.l2.calls) == len(backend.stored) == 3  # two ReAct steps and the extract step, each with norms
    want_n = 2 if condition == "select" else 1
    assert [c["n"] for c in pred.l2.calls] == [want_n] * 3


LC_SCRIPT = [
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * 2 + 17 + 17"}}\n</tool_call>',
    "58",
]


@pytest.mark.parametrize("condition", CONDITIONS)
def test_langchain_agent_passes_the_call_to_the_tool(base, condition):
    pytest.importorskip("langchain")
    from benchmarks.agent_loop import lc_agents, run_lc_agent
    from l2reason.eval.datasets import load_dataset

    backend = Rewrite(base, lambda k, res: [LC_SCRIPT[min(k, 1)]] * len(res.candidates), f"tiny-lc-{condition}")
    args = parse_args(["--conditions", condition, "--n", "2", "--max-tokens", "4"])
    data = load_dataset("gsm_symbolic:seed=42")
    item = dataclasses.replace(data.items(limit=1)[0], answer="58")
    row = run_lc_agent(lc_agents(args, backend)[condition], data, item, args.max_iters)
    assert (row["tool_calls"], row["invalid_tool_calls"], row["steps"], row["finished"]) == (1, 0, 2, True)
    assert row["correct"] and row["error"] is None
    assert len(backend.stored) == 2
    assert [len(res.candidates) for _, res in backend.stored] == [2 if condition == "select" else 1] * 2
