"""The vLLM plugin's launcher and the client's request/response handling (no server needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from l2reason.backends.base import Capabilities, GenerationRequest, NormSpec, SamplingParams
from l2reason.backends.shared import is_server_spec, is_vllm_spec, make_backend, parse_vllm_spec
from l2reason.backends.vllm import VLLMBackend, parse_vllm_url
from l2reason.errors import BackendError, CapabilityError, ConfigError
from l2reason.serving import SETTINGS_KEY, EngineSettings
from l2reason.serving.capabilities import SUPPORTED_INTERVENTIONS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integrations" / "vllm"))
from l2reason_vllm import launch


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    return str(tmp_path)


def test_launcher_selects_the_plugin_class_and_connector(model_dir):
    cmd, _ = launch.build(["--model", model_dir, "--port", "8000"], env={})
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert json.loads(cmd[cmd.index("--hf-overrides") + 1]) == {"architectures": ["L2Qwen2ForCausalLM"]}
    kv = json.loads(cmd[cmd.index("--kv-transfer-config") + 1])
    assert kv["kv_connector_module_path"] == "l2reason_vllm.connector"
    stock, _ = launch.build(["--model", model_dir, "--no-l2reason-plugin"], env={})
    assert "--hf-overrides" not in stock and "--kv-transfer-config" not in stock and "--no-l2reason-plugin" not in stock


def test_launcher_keeps_stock_cpu_core_binding(model_dir):
    # vLLM 0.32's CPU build reserves one more core per worker for any KV connector; the plugin's server
    # gets stock vLLM's reservation instead (one per worker on x86/Arm/RISC-V), unless the caller set one
    _, env = launch.build(["--model", model_dir], env={})
    assert env[launch.RESERVED_CPU_ENV] == str(launch.stock_reserved_cpus(1))
    _, env = launch.build(["--model", model_dir, "--tensor-parallel-size", "2"], env={})
    assert env[launch.RESERVED_CPU_ENV] == str(launch.stock_reserved_cpus(2))
    _, env = launch.build(["--model", model_dir], env={launch.RESERVED_CPU_ENV: "3"})
    assert env[launch.RESERVED_CPU_ENV] == "3"
    _, stock = launch.build(["--model", model_dir, "--no-l2reason-plugin"], env={})
    assert launch.RESERVED_CPU_ENV not in stock
    assert launch.stock_reserved_cpus(2, "x86_64") == 2 and launch.stock_reserved_cpus(2, "aarch64") == 2
    assert launch.stock_reserved_cpus(2, "ppc64le") == 1 and launch.stock_reserved_cpus(0, "x86_64") == 1


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        (["--speculative-config", "{}"], "speculative decoding"),
        (["--kv-transfer-config", "{}"], "another KV connector"),
        (["--pipeline-parallel-size", "2"], "pipeline parallelism"),
        (["-pp=2"], "pipeline parallelism"),
    ],
)
def test_unsupported_modes_are_refused_before_vllm_starts(model_dir, extra, msg):
    with pytest.raises(SystemExit, match=msg):
        launch.build(["--model", model_dir, *extra], env={})


def test_unknown_architecture_and_missing_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(SystemExit, match="no l2reason class"):
        launch.build(["--model", str(tmp_path)], env={})
    with pytest.raises(SystemExit, match="--model"):
        launch.build(["--port", "1"], env={})


def test_addresses():
    assert parse_vllm_url("vllm://h:1/") == "http://h:1" and parse_vllm_url("https://h") == "https://h"
    with pytest.raises(ConfigError, match="not a vLLM server address"):
        parse_vllm_url("sglang://h:1")
    assert is_server_spec("vllm://h:1") and is_vllm_spec("vllm:default") and not is_vllm_spec("default")


def test_a_busy_server_is_told_apart_from_a_dead_one():
    """A server that accepts the connection but does not answer in time is reported as busy (with the timeout
    and what to change), not as unreachable; a closed port is unreachable."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held: list[socket.socket] = []

    def accept() -> None:  # read the request, never answer
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    port = srv.getsockname()[1]
    try:
        with pytest.raises(BackendError, match=r"sent no answer to /v1/models within 1 s; it is reachable but busy"):
            VLLMBackend(f"http://127.0.0.1:{port}", timeout=1.0, retries=0)
    finally:
        srv.close()
        for c in held:
            c.close()
    from l2reason.backends.vllm.server import free_port

    with pytest.raises(BackendError, match="cannot reach the vLLM server"):
        VLLMBackend(f"http://127.0.0.1:{free_port()}", timeout=1.0, retries=0)


def test_vllm_spec_options():
    """vllm:<model>?… gives the server's options, typed; a bad option is named, with what is allowed."""
    assert parse_vllm_spec("vllm:default") == ("default", {})
    assert parse_vllm_spec("vllm:") == ("default", {})
    assert parse_vllm_spec("vllm:large?dtype=float32&max-model-len=2048&eager=1&tp=2&max_num_seqs=8") == (
        "large",
        {"dtype": "float32", "max_model_len": 2048, "eager": True, "tp": 2, "max_num_seqs": 8},
    )
    assert parse_vllm_spec("vllm:/models/q?eager=false") == ("/models/q", {"eager": False})
    assert parse_vllm_spec("vllm:default?start_timeout=1800") == ("default", {"start_timeout": 1800})
    for spec, msg in [
        ("vllm:default?quantization=fp8", "unknown option 'quantization'.*takes dtype, max_model_len"),
        ("vllm:default?dtype=fp64", "dtype 'fp64'.*not one of auto, bfloat16, float16, float32"),
        ("vllm:default?max_model_len=big", "'max_model_len'.*must be an integer, got 'big'"),
        ("vllm:default?tp=0", "'tp'.*at least 1, got 0"),
        ("vllm:default?eager=yes", "'eager'.*true or false, got 'yes'"),
        ("vllm:default?dtype", "'dtype'.*has no value"),
        ("vllm:default?dtype=float32&dtype=bfloat16", "'dtype' is given twice"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_vllm_spec(spec)
    # make_backend refuses a bad spec before it starts anything
    with pytest.raises(ConfigError, match="unknown option 'port'"):
        make_backend("vllm:default?port=8000")


class _Tok:
    """Decodes token t as the letter chr(97 + t % 26)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + t % 26) for t in ids)

    def apply_chat_template(self, *a, **k):
        return [1, 2, 3]

    def __call__(self, text, **k):
        return {"input_ids": [1, 2, 3]}


def _offline(num_layers=4):
    """A VLLMBackend without a server (for the pure request/response code)."""
    be = VLLMBackend.__new__(VLLMBackend)
    be.tokenizer, be._num_layers, be._hidden_size = _Tok(), num_layers, 8
    be.context_length, be._vocab_size, be._served_name = 1024, 26, "m"
    be.model_id, be.url, be._calibration, be.server = "m", "http://x", None, None
    be._capabilities = Capabilities(name="vllm", interventions=SUPPORTED_INTERVENTIONS, calibrated_thresholds=False)
    return be


def test_requests_carry_the_settings_one_completion_per_candidate():
    be = _offline()
    req = GenerationRequest(
        prompt="hi", n=3, sampling=SamplingParams(max_new_tokens=5, temperature=0.7, seed=9), logprobs=2
    )
    p = be._prepare(req)
    assert len(p["items"]) == 3 and len({it["seed"] for it in p["items"]}) == 3
    s = EngineSettings.decode({SETTINGS_KEY: p["items"][0]["vllm_xargs"][SETTINGS_KEY]})
    assert s is not None and s.layers == [2] and s.sc and "stop" not in p["items"][0]


def test_response_parsing_aligns_records_and_cuts_at_stop_strings():
    be = _offline()
    req = GenerationRequest(
        prompt="hi",
        sampling=SamplingParams(max_new_tokens=6, stop=["cd"]),
        norms=NormSpec(layers=[0, 3], mask_massive=False),
        logprobs=1,
    )
    p = be._prepare(req)
    recs = [{"n": [float(i), 10.0 + i], "sc": 0.5} for i in range(6)]
    out = {
        "choices": [
            {
                "token_ids": [0, 1, 2, 3, 4, 5],  # "abcdef": the stop "cd" completes at the 4th token
                "text": "abcdef",
                "finish_reason": "length",
                "logprobs": {"token_logprobs": [-0.1] * 6, "top_logprobs": [{"token_id:1": -0.1}] * 6},
            }
        ],
        "kv_transfer_params": {"l2r": recs},
    }
    c = be._candidate(0, req, p, out)
    assert c.text == "ab" and c.finish_reason == "stop" and c.completion_tokens == 4
    assert c.norms.array().tolist() == [[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0]]
    assert c.logprobs.self_certainty == [0.5] * 4 and c.logprobs.top_logprobs == [[-0.1]] * 4
    with pytest.raises(BackendError, match="without the plugin"):
        be._candidate(0, req, p, {**out, "kv_transfer_params": None})
    with pytest.raises(ConfigError, match="rejected"):
        be._candidate(0, req, p, {**out, "kv_transfer_params": {"l2r": [{"e": "bad"}] * 6}})


def test_what_the_plugin_cannot_run_is_refused_before_sending():
    be = _offline()
    with pytest.raises(CapabilityError, match="cannot prune"):
        be.generate_many([GenerationRequest(prompt="x", n=4, prune={}, logprobs=5)])
    with pytest.raises(CapabilityError, match="calibrated"):
        be.generate_many(
            [GenerationRequest(prompt="x", interventions=[{"kind": "erss", "threshold": {"mode": "calibrated"}}])]
        )
