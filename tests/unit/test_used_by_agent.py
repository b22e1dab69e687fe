"""The agent-loop benchmark's reading of a ReAct trajectory (pure; no model)."""

from __future__ import annotations

import pytest

pytest.importorskip("dspy")

from benchmarks.agent_loop import trajectory_stats


@pytest.mark.parametrize(
    ("traj", "expected"),
    [
        ({}, {"steps": 0, "tool_calls": 0, "invalid_tool_calls": 0, "finished": False, "format_fail_step": True}),
        (
            {
                "tool_name_0": "calculator",
                "observation_0": "42",
                "tool_name_1": "finish",
                "observation_1": "Completed.",
            },
            {"steps": 2, "tool_calls": 1, "invalid_tool_calls": 0, "finished": True, "format_fail_step": False},
        ),
        (  # ReAct's own message for a tool that raised, then the loop ran out of steps (not a format failure)
            {
                "tool_name_0": "calculator",
                "observation_0": "Execution error in calculator: bad args",
                "tool_name_1": "calculator",
                "observation_1": "error: unsupported expression: 'x'",
            },
            {"steps": 2, "tool_calls": 2, "invalid_tool_calls": 2, "finished": False, "format_fail_step": False},
        ),
    ],
)
def test_trajectory_stats(traj, expected):
    got = trajectory_stats(traj, max_iters=2)
    first = got.pop("first_invalid")
    assert got == expected
    assert (first is None) == (expected["invalid_tool_calls"] == 0)
