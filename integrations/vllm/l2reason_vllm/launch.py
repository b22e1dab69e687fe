"""Start vLLM's OpenAI-compatible server with the l2reason plugin: ``python -m l2reason_vllm.launch --model <m> ...``.

What it adds to ``python -m vllm.entrypoints.openai.api_server``:

- ``--hf-overrides {"architectures": ["L2<arch>"]}``: the plugin's model class
  for the checkpoint's architecture (Qwen2/Qwen2.5, Qwen3, Llama);
- ``--kv-transfer-config``: the plugin's connector, which carries each
  request's settings in and its per-token records out;
- a clear error, before anything loads, for what the plugin does not support
  yet: pipeline parallelism, speculative decoding, another KV connector, an
  architecture it has no class for.

``--no-l2reason-plugin`` starts stock vLLM with the same arguments (for A/B
comparisons). Everything else goes to vLLM unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from l2reason_vllm import ARCHITECTURES

#: the plugin's KV connector (the only way it returns per-token data; see l2reason_vllm.connector)
KV_TRANSFER_CONFIG: dict[str, Any] = {
    "kv_connector": "L2ReasonConnector",
    "kv_connector_module_path": "l2reason_vllm.connector",
    "kv_role": "kv_both",
}

_UNSUPPORTED = {
    "--speculative-config": "speculative decoding",
    "--kv-transfer-config": "another KV connector (combine through vLLM's MultiConnector by hand)",
    "--hf-overrides": "--hf-overrides (the launcher sets the architecture itself)",
}
_PP = ("--pipeline-parallel-size", "-pp")


def _value(argv: list[str], flags: tuple[str, ...]) -> str | None:
    for i, a in enumerate(argv):
        for f in flags:
            if a == f and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(f + "="):
                return a.split("=", 1)[1]
    return None


def architecture(model: str) -> str:
    """The plugin's vLLM architecture name for a model folder (or hub id with a cached config)."""
    cfg_path = Path(model) / "config.json"
    if cfg_path.is_file():
        archs = json.loads(cfg_path.read_text()).get("architectures") or []
    else:
        from transformers import AutoConfig

        archs = AutoConfig.from_pretrained(model).architectures or []
    for a in archs:
        if a in ARCHITECTURES:
            return ARCHITECTURES[a]
    raise SystemExit(
        f"l2reason plugin: no l2reason class for architectures {archs}; supported: {', '.join(ARCHITECTURES)}"
    )


def plugin_args(model: str) -> list[str]:
    """The flags that select the plugin for ``model``."""
    return [
        "--hf-overrides",
        json.dumps({"architectures": [architecture(model)]}),
        "--kv-transfer-config",
        json.dumps(KV_TRANSFER_CONFIG),
    ]


def check_args(argv: list[str]) -> str:
    """The model argument; ``SystemExit`` with a clear message for a mode the plugin does not support."""
    for flag, what in _UNSUPPORTED.items():
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            raise SystemExit(f"l2reason plugin: {what} ({flag}) is not supported; start without it")
    pp = _value(argv, _PP)
    if pp is not None and pp != "1":
        raise SystemExit("l2reason plugin: pipeline parallelism is not supported; use --tensor-parallel-size")
    model = _value(argv, ("--model",))
    if model is None:
        raise SystemExit("l2reason plugin: give --model <folder or hub id>")
    return model


def build(argv: list[str], env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start vLLM's server with (or, with ``--no-l2reason-plugin``,
    without) the plugin."""
    plugin = "--no-l2reason-plugin" not in argv
    args = [a for a in argv if a != "--no-l2reason-plugin"]
    if plugin:
        args += plugin_args(check_args(args))
    env = dict(os.environ if env is None else env)
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args], env


def main(argv: list[str] | None = None) -> None:
    cmd, env = build(list(sys.argv[1:] if argv is None else argv))
    sys.stderr.write(f"l2reason plugin: {' '.join(cmd[1:])}\n")
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
