"""What the benchmark scripts share: prompts, the machine line, report files, random-weight models, engine calls.

Each script puts the repository root on ``sys.path`` and imports from here
(``from benchmarks._common import ...``); ``tests/conftest.py`` builds its tiny
test models with :func:`word_tokenizer` and :func:`random_lm` too. Nothing here
imports torch, transformers, an engine or l2reason at module level, so a
script's ``--help`` stays instant.

A report is two files beside each other: ``<out>.json`` (every number) and
``<out>.md`` (the table a reader looks at), written by :func:`write_report`.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from l2reason.serving import EngineSettings

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    "A baker makes 12 muffins per tray and bakes 7 trays. She sells 59. How many are left? Think step by step.",
    "Tom has 3 boxes with 18 marbles each and gives away 14. How many are left? Think step by step.",
    "def fibonacci(n):",
    "Explain why the sky is blue in two sentences.",
    "A train travels 60 km in 45 minutes. What is its speed in km/h?",
    "Write a haiku about autumn.",
    "List three prime numbers greater than 50.",
    "If x + 7 = 19, what is x? Show your work.",
]
"""Distinct prompts for throughput runs (the first two are word problems)."""

BAND = [18, 19, 20, 21, 22]
"""The default model's layer band (24 layers), as the engine benchmarks ask for it."""


def batch_prompts(n: int) -> list[str]:
    """``n`` prompts: :data:`PROMPTS` repeated as often as needed."""
    return (PROMPTS * (n // len(PROMPTS) + 1))[:n]


def plugin_modes(band: list[int] = BAND, layers: int = 24) -> dict[str, EngineSettings]:
    """The engine plugins' measured modes: band / all-layer norms, ALRR (adaptive, static) and ERSS on ``band``."""
    from l2reason.serving import EngineSettings

    return {
        "norms-band": EngineSettings(layers=band),
        "norms-all": EngineSettings(layers=list(range(layers))),
        "alrr": EngineSettings(layers=band, interventions=[{"kind": "alrr"}]),
        "alrr-static": EngineSettings(layers=band, interventions=[{"kind": "alrr", "mode": "static"}]),
        "erss": EngineSettings(layers=band, interventions=[{"kind": "erss"}]),
    }


def engine_args(doc: str, out: str, *, max_new_tokens: int, dtype: str) -> argparse.ArgumentParser:
    """The options of the engine-overhead benchmarks: model, rounds, batch, tokens per prompt, dtype, report path."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    ap.add_argument("--dtype", default=dtype)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / out))
    return ap


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    """Python, torch and transformers versions, the CPU, torch's thread count and the platform."""
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": str(torch.get_num_threads()),
        "platform": platform.platform(),
    }


def hf_env(model_id: str, threads: int) -> dict[str, Any]:
    """The transformers-backend benchmarks' machine line: model, torch threads, CPU, library versions."""
    import torch
    import transformers

    return {
        "model": model_id,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def hf_report_head(title: str, command: str, env: dict[str, Any]) -> list[str]:
    """The transformers-backend reports' first Markdown lines: title, command, machine line (:func:`hf_env`)."""
    return [
        f"# {title}\n",
        f"Command: `{command}`\n",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()) + "\n",
    ]


def run_config(be: Any, dataset: str, **fields: Any) -> Any:
    """An evaluation ``RunConfig`` for backend ``be`` (its model id and layer count) on ``dataset``."""
    from l2reason.eval.harness import RunConfig

    return RunConfig(dataset=dataset, model_id=be.model_id, num_layers=be.num_layers, **fields)


def engine_versions(python: str | Path, engine: str) -> tuple[str, str, str]:
    """The versions of ``engine`` (``"sglang"``, ``"vllm"``), torch and transformers in ``python``'s environment."""
    code = f"import {engine}, torch, transformers; print({engine}.__version__, torch.__version__, transformers.__version__)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return out[0], out[1], out[2]


def run_info() -> dict[str, str]:
    """The command line that runs this script and the UTC time, for a report's header."""
    return {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def report_head(title: str, info: dict[str, Any], *lines: str) -> list[str]:
    """A report's first Markdown lines: the title, the command (from :func:`run_info`), then ``lines``."""
    return [f"# {title}", "", f"Command: `{info['command']}`  ", *lines]


def write_report(out: str | Path, data: Any, lines: list[str] | None = None) -> Path:
    """Write ``data`` to ``<out>.json`` and, given ``lines``, them to ``<out>.md``; returns the ``.md`` path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2))
    if lines is not None:
        path.with_suffix(".md").write_text("\n".join(lines))
    return path.with_suffix(".md")


def sglang_tok_s(srv: Any, prompts: list[str], max_new: int, settings: EngineSettings | None) -> float:
    """Decode tok/s of one batched greedy ``/generate`` (``ignore_eos``); ``settings=None`` is a stock request."""
    sp: dict = {"temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}
    if settings is not None:
        sp["custom_params"] = settings.encode()
    t = time.perf_counter()
    res = srv.generate({"text": prompts, "sampling_params": sp})
    return sum(len(r["output_ids"]) for r in res) / (time.perf_counter() - t)


def word_tokenizer(words: list[str], chat_template: str) -> Any:
    """A word-level tokenizer: ``<pad>`` = 0, ``<eos>`` = 1, ``<unk>`` = 2, then ``words`` in order.

    Text splits on white space and punctuation; decoding joins words with spaces.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = chat_template
    return tok


_SIZE_FIELDS = "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads"


def random_lm(sizes: tuple[int, ...], *, arch: str = "qwen2", seed: int = 0, dtype: Any = None, **config: Any) -> Any:
    """A randomly initialised causal LM (a transformers ``PreTrainedModel``) in eval mode on the CPU.

    Args:
        sizes: ``(vocab, hidden, intermediate, layers, heads, kv_heads)``: the
            config's ``vocab_size``, ``hidden_size``, ... (:data:`_SIZE_FIELDS`).
        arch: ``"qwen2"`` or ``"llama"``.
        seed: torch's seed before the weights are drawn.
        dtype: the weights' dtype (None = float32).
        config: further config fields (token ids, ``tie_word_embeddings``); the
            context length is 4096 unless given.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    fields = dict(zip(_SIZE_FIELDS.split(), sizes, strict=True))
    cfg = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch](**fields, **{"max_position_embeddings": 4096, **config})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype or torch.float32).eval()
