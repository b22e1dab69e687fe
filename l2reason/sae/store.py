"""An activation store: decode-token residual states on disk, sharded and resumable.

:func:`collect_store` runs prompts through a backend with
``GenerationRequest.collect`` (the states come from the same hooks as the
norms, no extra forward pass) and appends one shard per batch of prompts.
:class:`ActivationStore` reads it back: the states of one layer as a tensor,
their norms, the generated tokens in context, and an endless shuffled batch
iterator that SAELens's ``SAETrainer`` takes as its ``data_provider``.

Layout of a store folder::

    manifest.json         format, model, layers, hidden size, dtype, settings, the finished shards
    shard_00000.safetensors
        states [N, n_layers, d]  (float16 or float32; row k = one decode token)
        norms  [N, n_layers]     float32, the norms the backend reported for those tokens
        record [N] int64         which record (candidate) the token belongs to
        step   [N] int64         its decode step (0-based)
    shard_00000.jsonl     one record per candidate: item id, candidate index, tokens, text, correct

A shard is written to a temporary name and renamed, then the manifest is
replaced atomically; a run that stops halfway resumes after the last shard
the manifest lists (prompts already in it are skipped).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2reason.errors import ConfigError

__all__ = ["FORMAT", "ActivationStore", "StorePrompt", "collect_store"]

log = logging.getLogger(__name__)

FORMAT = "l2reason-activations/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StorePrompt:
    """One prompt to collect from.

    Args:
        id: a stable id (resuming skips ids already stored).
        messages: chat messages as ``[{"role": ..., "content": ...}]`` (the chat template is applied).
        answer: the gold answer, if known (``score`` marks candidates right or wrong).
    """

    id: str
    messages: list[dict[str, str]]
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def collect_store(
    backend: Any,
    prompts: Sequence[StorePrompt],
    out: str | Path,
    *,
    layers: Any = "band",
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    dtype: str = "float16",
    seed: int = 0,
    score: Callable[[str, StorePrompt], bool | None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> ActivationStore:
    """Generate for ``prompts`` and append their decode-token states to the store at ``out``.

    Args:
        backend: a backend whose capabilities include ``hidden_states`` (the HF backend).
        prompts: what to run; ids already in the store are skipped (resume).
        out: the store folder (created if missing).
        layers: the layers to collect (``"band"``, ``"all"`` or indices).
        n: candidates per prompt; temperature, max_new_tokens, seed: sampling.
        batch_size: prompts per backend call (= per shard).
        dtype: ``"float16"`` (half the disk) or ``"float32"``.
        score: ``(text, prompt) -> correct?`` (None = unknown), stored per candidate.
        on_batch: progress callback ``(done prompts, total prompts)``.

    Raises:
        ConfigError: the store exists with other settings (model, layers, dtype).

    Example:
        >>> store = collect_store(be, [StorePrompt("q0", [{"role": "user", "content": "2+2?"}])], "acts")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    from l2reason.backends.base import CollectSpec, GenerationRequest, Message, NormSpec, SamplingParams
    from l2reason.signal.band import resolve_layers

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    resolved = resolve_layers(layers, backend.num_layers)
    settings = {"n": n, "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed}
    mpath = root / MANIFEST
    if mpath.is_file():
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        mine = {"model_id": backend.model_id, "layers": resolved, "dtype": dtype, "settings": settings}
        theirs = {k: manifest.get(k) for k in mine}
        if theirs != mine:
            raise ConfigError(
                f"the store {root} was collected with {theirs}, not {mine}: use another folder or the same settings"
            )
    else:
        manifest = {
            "format": FORMAT,
            "model_id": backend.model_id,
            "layers": resolved,
            "hidden_size": backend.hidden_size,
            "dtype": dtype,
            "positions": "decode",
            "settings": settings,
            "shards": [],
        }
        _write_json_atomic(mpath, manifest)
    done = {i for s in manifest["shards"] for i in s["items"]}
    todo = [p for p in prompts if p.id not in done]
    if len(todo) < len(prompts):
        log.info("store %s: %d of %d prompts already collected; resuming", root, len(prompts) - len(todo), len(prompts))
    spec = CollectSpec(layers=resolved, positions="decode", dtype=dtype)  # type: ignore[arg-type]
    total, finished = len(prompts), len(prompts) - len(todo)
    for b0 in range(0, len(todo), batch_size):
        batch = todo[b0 : b0 + batch_size]
        reqs = [
            GenerationRequest(
                messages=[Message(role=m["role"], content=m["content"]) for m in p.messages],  # type: ignore[arg-type]
                n=n,
                sampling=SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed),
                norms=NormSpec(layers=resolved, per_token=True, mask_massive=True),
                collect=spec,
                request_id=p.id,
            )
            for p in batch
        ]
        results = backend.generate_many(reqs)
        k = len(manifest["shards"])
        states: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        rec_ix: list[torch.Tensor] = []
        steps: list[torch.Tensor] = []
        records: list[dict[str, Any]] = []
        for p, res in zip(batch, results, strict=True):
            for c in res.candidates:
                if c.states is None or c.norms is None or c.states.array is None:
                    raise ConfigError(f"backend {backend.name!r} returned no states for {p.id!r}")
                T = c.completion_tokens
                r = len(records)
                states.append(torch.from_numpy(np.ascontiguousarray(c.states.array)))
                norms.append(torch.from_numpy(c.norms.array()))
                rec_ix.append(torch.full((T,), r, dtype=torch.int64))
                steps.append(torch.arange(T, dtype=torch.int64))
                records.append(
                    {
                        "item": p.id,
                        "candidate": c.index,
                        "tokens": c.tokens,
                        "text": c.text,
                        "finish_reason": c.finish_reason,
                        "answer": p.answer,
                        "correct": score(c.text, p) if score is not None else None,
                        "masked": c.norms.masked,
                    }
                )
        d = backend.hidden_size
        tensors = {
            "states": torch.cat(states) if states else torch.zeros(0, len(resolved), d),
            "norms": torch.cat(norms) if norms else torch.zeros(0, len(resolved)),
            "record": torch.cat(rec_ix) if rec_ix else torch.zeros(0, dtype=torch.int64),
            "step": torch.cat(steps) if steps else torch.zeros(0, dtype=torch.int64),
        }
        name = f"shard_{k:05d}"
        tmp = root / f"{name}.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, root / f"{name}.safetensors")
        with open(root / f"{name}.jsonl.tmp", "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
        os.replace(root / f"{name}.jsonl.tmp", root / f"{name}.jsonl")
        manifest["shards"].append(
            {"name": name, "tokens": int(tensors["states"].shape[0]), "items": [p.id for p in batch]}
        )
        _write_json_atomic(mpath, manifest)
        finished += len(batch)
        if on_batch is not None:
            on_batch(finished, total)
    return ActivationStore(root)


class ActivationStore:
    """A store written by :func:`collect_store`, read back.

    Args:
        path: the store folder.

    Example:
        >>> st = ActivationStore("acts")  # doctest: +SKIP
        >>> x = st.states(20)             # [N, d] float32, every decode token of layer 20  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise ConfigError(f"{self.path} is not an activation store (no {MANIFEST}); run `l2reason collect` first")
        self.manifest: dict[str, Any] = json.loads(mpath.read_text(encoding="utf-8"))
        if self.manifest.get("format") != FORMAT:
            raise ConfigError(f"{mpath}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self.layers: list[int] = list(self.manifest["layers"])
        self.model_id: str = self.manifest["model_id"]
        self.hidden_size: int = int(self.manifest["hidden_size"])
        self._cache: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return sum(int(s["tokens"]) for s in self.manifest["shards"])

    def _col(self, layer: int) -> int:
        if layer not in self.layers:
            raise ConfigError(f"layer {layer} is not in the store {self.path} (it has {self.layers})")
        return self.layers.index(layer)

    def _load(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            from safetensors.torch import load_file

            parts = [load_file(str(self.path / f"{s['name']}.safetensors")) for s in self.manifest["shards"]]
            if not parts:
                raise ConfigError(f"the store {self.path} holds no shards yet")
            offset, recs = 0, []
            for part, s in zip(parts, self.manifest["shards"], strict=True):
                recs.append(part["record"] + offset)
                with open(self.path / f"{s['name']}.jsonl", encoding="utf-8") as fh:
                    offset += sum(1 for line in fh if line.strip())
            self._cache = {
                "states": torch.cat([p["states"] for p in parts]),
                "norms": torch.cat([p["norms"] for p in parts]),
                "record": torch.cat(recs),
                "step": torch.cat([p["step"] for p in parts]),
            }
        return self._cache

    def states(self, layer: int) -> torch.Tensor:
        """``[N, d]`` float32 states of ``layer``, every stored decode token in order."""
        return self._load()["states"][:, self._col(layer)].float()

    def norms(self, layer: int) -> torch.Tensor:
        """``[N]`` the norms the backend reported for those tokens."""
        return self._load()["norms"][:, self._col(layer)]

    def token_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(record [N], step [N])``: each token's record (see :meth:`records`) and decode step."""
        c = self._load()
        return c["record"], c["step"]

    def records(self) -> list[dict[str, Any]]:
        """One dict per stored candidate (item, candidate, tokens, text, correct, masked), in token order."""
        out: list[dict[str, Any]] = []
        for s in self.manifest["shards"]:
            with open(self.path / f"{s['name']}.jsonl", encoding="utf-8") as fh:
                out += [json.loads(line) for line in fh if line.strip()]
        return out

    def unmasked(self) -> torch.Tensor:
        """``[N]`` bool: False for tokens the backend masked as massive activations."""
        # a record's tokens are stored together, in step order, records in token order
        parts = []
        for r in self.records():
            T = len(r.get("tokens") or [])
            m = r.get("masked")
            parts.append(torch.tensor(m[:T], dtype=torch.bool) if m else torch.zeros(T, dtype=torch.bool))
        masked = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
        if len(masked) != len(self):
            raise ConfigError(
                f"the store {self.path} is inconsistent: {len(masked)} tokens in records, {len(self)} stored"
            )
        return ~masked

    def batches(
        self, layer: int, batch_size: int, *, seed: int = 0, index: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """Endless shuffled ``[batch_size, d]`` float32 batches of ``layer`` (a SAELens ``data_provider``).

        Args:
            index: the token rows to draw from (default: every unmasked token).
        """
        x = self.states(layer)
        rows = index if index is not None else torch.nonzero(self.unmasked()).flatten()
        if len(rows) == 0:
            raise ConfigError(f"the store {self.path} has no tokens to draw from")
        g = torch.Generator().manual_seed(seed)
        while True:
            perm = rows[torch.randperm(len(rows), generator=g)]
            for i in range(0, len(perm) - batch_size + 1, batch_size):
                yield x[perm[i : i + batch_size]]
            if len(perm) < batch_size:
                yield x[perm[torch.randint(len(perm), (batch_size,), generator=g)]]
