"""ChatL2Reason driving a tool-calling loop on the real default model (slow; L2REASON_REAL=1 or ci)."""

from __future__ import annotations

import ast
import operator

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from l2reason.langchain import ChatL2Reason

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def default_backend():
    from l2reason.backends.hf import HFBackend

    return HFBackend("default")


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    raise ValueError(f"not arithmetic: {ast.dump(node)}")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression, e.g. '3 * (4 + 5)', and return its value."""
    value = _eval(ast.parse(expression, mode="eval"))
    return str(int(value) if float(value).is_integer() else value)


QUESTION = (
    "A baker makes 12 muffins per tray and bakes 7 trays. She sells 59 muffins. How many are left? "
    "Use the calculator tool."
)
NUDGE = "Now answer my question in one sentence, without calling any tool."


@pytest.mark.ci
def test_langchain_agent_answers_with_the_calculator(default_backend):
    """LangChain's own agent constructor drives ChatL2Reason: a tool call with parsed arguments, then the answer."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import before_model

    # Given only the tool result, this 0.5B model repeats its call; a nudge after each tool result
    # (LangChain middleware, the user's side) makes it answer. Larger models need none.
    @before_model
    def answer_after_tool(state, runtime):
        if isinstance(state["messages"][-1], ToolMessage):
            return {"messages": [HumanMessage(NUDGE)]}
        return None

    llm = ChatL2Reason(backend=default_backend, max_tokens=48)  # greedy
    agent = create_agent(llm, tools=[calculator], middleware=[answer_after_tool])
    out = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]}, {"recursion_limit": 8})
    msgs = out["messages"]
    calls = [c for m in msgs for c in getattr(m, "tool_calls", None) or []]
    assert [c["name"] for c in calls] == ["calculator"], [m.content for m in msgs]
    assert calculator.invoke(calls[0]["args"]) == "25", calls[0]["args"]  # parsed arguments, both steps in them
    results = [m.content for m in msgs if isinstance(m, ToolMessage)]
    assert results == ["25"]
    final = msgs[-1]
    assert final.type == "ai" and not final.tool_calls and "25" in final.text, final.text
    assert final.usage_metadata["output_tokens"] > 0 and final.response_metadata["l2reason"]["mean_norm"]


def test_tool_calling_loop_answers_with_the_calculator(default_backend):
    # The loop create_agent runs, by hand with langchain-core only:
    # bind_tools -> invoke -> run the tool calls -> ToolMessages -> invoke again.
    llm = ChatL2Reason(backend=default_backend, max_tokens=36)  # greedy
    agent = llm.bind_tools([calculator])
    question = (
        "A baker makes 12 muffins per tray and bakes 7 trays. She sells 59 muffins. How many are left? "
        "Use the calculator tool."
    )
    messages = [HumanMessage(question)]
    first = agent.invoke(messages)
    assert [c["name"] for c in first.tool_calls] == ["calculator"], first.response_metadata["l2reason"]["raw_text"]
    args = first.tool_calls[0]["args"]
    assert isinstance(args, dict) and calculator.invoke(args) == "25", args  # parsed arguments, both steps in them
    assert first.usage_metadata["output_tokens"] > 0 and first.response_metadata["l2reason"]["mean_norm"]
    messages.append(first)
    for call in first.tool_calls:
        messages.append(ToolMessage(calculator.invoke(call["args"]), tool_call_id=call["id"]))
    # Given only the tool result, this 0.5B model repeats its call; asked for the answer, it gives it.
    messages.append(HumanMessage(NUDGE))
    final = agent.invoke(messages, max_tokens=24)
    assert final.tool_calls == [] and "25" in final.text, final.text


def test_structured_output_returns_the_pydantic_object(default_backend):
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        """A person mentioned in the text."""

        name: str = Field(description="full name")
        born: int = Field(description="year of birth")

    llm = ChatL2Reason(backend=default_backend, max_tokens=32)
    out = llm.with_structured_output(Person).invoke("Ada Lovelace, born in 1815, wrote the first program.")
    assert out == Person(name="Ada Lovelace", born=1815)
