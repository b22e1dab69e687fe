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
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from l2reason.errors import ConfigError

if TYPE_CHECKING:
    from l2reason.backends.base import CollectSpec, GenerationRequest

__all__ = [
    "FORMAT",
    "ActivationStore",
    "StorePrompt",
    "check_collect_settings",
    "check_manifest",
    "collect_store",
    "read_json_file",
]

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


def read_json_file(path: Path, what: str, fix: str) -> Any:
    """The JSON in ``path`` (UTF-8, no NaN), or a ConfigError naming the file, what it is and ``fix``.

    Raises:
        ConfigError: missing, unreadable, not UTF-8, not JSON (a torn write), nested too deeply.
    """
    from l2reason.files import parse_json, read_text_file

    return parse_json(read_text_file(path, what), f"{what} {path}", fix, want_object=False)


def _is_int(x: Any, lo: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo


def check_manifest(m: Any, where: Path) -> dict[str, Any]:
    """A store's manifest, checked: the fields every reader uses, with the types they need.

    Raises:
        ConfigError: naming the manifest and the first field that is missing or malformed.
    """

    def bad(problem: str) -> ConfigError:
        return ConfigError(
            f"{where} is not a usable activation-store manifest: {problem}; collect the store again "
            "(`l2reason collect` into a new folder)"
        )

    if not isinstance(m, dict):
        raise bad(f"a JSON {type(m).__name__}, not an object")
    if m.get("format") != FORMAT:
        raise ConfigError(f"{where}: format {m.get('format')!r:.80}, expected {FORMAT!r}")
    layers = m.get("layers")
    if not isinstance(layers, list) or not layers or not all(_is_int(x) for x in layers):
        raise bad(f"layers must be a non-empty list of layer indices, got {str(layers)[:80]}")
    if len(set(layers)) != len(layers):
        raise bad(f"layers has duplicates: {layers}")
    if not isinstance(m.get("model_id"), str) or not m["model_id"]:
        raise bad("model_id must be a non-empty string")
    if not _is_int(m.get("hidden_size"), 1):
        raise bad(f"hidden_size must be an integer >= 1, got {str(m.get('hidden_size'))[:40]}")
    shards = m.get("shards")
    if not isinstance(shards, list):
        raise bad("shards must be a list")
    for k, sh in enumerate(shards):
        ok = isinstance(sh, dict) and isinstance(sh.get("name"), str) and _is_int(sh.get("tokens"))
        ok = ok and isinstance(sh.get("items"), list) and all(isinstance(i, str) for i in sh["items"])
        if not ok or sh["name"] != f"shard_{k:05d}":
            raise bad(f"shard {k} must be {{'name': 'shard_{k:05d}', 'tokens': int, 'items': [str]}}")
    return m


_NEW_FOLDER = "collect into a new folder (or delete this one)"


def check_collect_settings(
    prompts: Sequence[StorePrompt],
    out: str | Path,
    *,
    n: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    dtype: str,
    seed: int,
) -> Path:
    """What :func:`collect_store` can check without the model (call it before loading one); the store folder.

    The settings are :func:`collect_store`'s, with the same meaning.

    Raises:
        ConfigError: no prompts, two prompts with one id, a count < 1, a temperature that is not a finite
            number >= 0, a dtype other than float16/float32, a seed < 0, an ``out`` that cannot be a folder,
            or an existing store whose manifest is corrupt.
    """
    from l2reason.files import check_output_dir

    if not prompts:
        raise ConfigError("no prompts to collect from (an empty prompt file, or --offset past the last item)")
    ids = [p.id for p in prompts]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise ConfigError(f"prompt ids must be unique (a rerun skips ids already stored); repeated: {dup[:5]}")
    for name, value in (("n", n), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if not _is_int(value, 1):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if not _is_int(seed):
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature < math.inf:
        raise ConfigError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"dtype must be float16 or float32, got {dtype!r}")
    root = check_output_dir(out, "the store folder")
    if (root / MANIFEST).exists():
        check_manifest(read_json_file(root / MANIFEST, "the store manifest", _NEW_FOLDER), root / MANIFEST)
    return root


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
        ConfigError: no prompts, two prompts with one id, a layer named twice (``[1, 1]``, ``[-1, L-1]``) or
            outside the model, a bad count, temperature, dtype or seed, or a store that exists with other
            settings (model, layers, dtype) or whose manifest is corrupt: all before any generation.

    Example:
        >>> store = collect_store(be, [StorePrompt("q0", [{"role": "user", "content": "2+2?"}])], "acts")  # doctest: +SKIP
    """
    from l2reason.backends.base import CollectSpec
    from l2reason.backends.validate import distinct_layers

    root = check_collect_settings(
        prompts, out, n=n, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
        dtype=dtype, seed=seed,
    )  # fmt: skip
    resolved = distinct_layers(layers, backend.num_layers, "layers")
    root.mkdir(parents=True, exist_ok=True)
    settings = {"n": n, "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed}
    manifest = _open_manifest(root, backend, resolved, dtype, settings)
    done = {i for s in manifest["shards"] for i in s["items"]}
    todo = [p for p in prompts if p.id not in done]
    if len(todo) < len(prompts):
        log.info("store %s: %d of %d prompts already collected; resuming", root, len(prompts) - len(todo), len(prompts))
    spec = CollectSpec(layers=resolved, positions="decode", dtype=dtype)  # type: ignore[arg-type]
    total, finished = len(prompts), len(prompts) - len(todo)
    for b0 in range(0, len(todo), batch_size):
        batch = todo[b0 : b0 + batch_size]
        results = backend.generate_many([_collect_request(p, spec, resolved, settings) for p in batch])
        tensors, records = _shard_contents(backend, batch, results, resolved, score)
        name = f"shard_{len(manifest['shards']):05d}"
        _write_shard(root, name, tensors, records)
        manifest["shards"].append(
            {"name": name, "tokens": int(tensors["states"].shape[0]), "items": [p.id for p in batch]}
        )
        _write_json_atomic(root / MANIFEST, manifest)
        finished += len(batch)
        if on_batch is not None:
            on_batch(finished, total)
    return ActivationStore(root)


def _open_manifest(
    root: Path, backend: Any, resolved: list[int], dtype: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """The store's manifest: the existing one if its settings match, else a new, empty one written to disk.

    Raises:
        ConfigError: a corrupt manifest, or one collected with another model, layers, dtype or settings.
    """
    mpath = root / MANIFEST
    if mpath.is_file():
        manifest = check_manifest(read_json_file(mpath, "the store manifest", _NEW_FOLDER), mpath)
        mine = {"model_id": backend.model_id, "layers": resolved, "dtype": dtype, "settings": settings}
        theirs = {k: manifest.get(k) for k in mine}
        if theirs != mine:
            raise ConfigError(
                f"the store {root} was collected with {theirs}, not {mine}: use another folder or the same settings"
            )
        return manifest
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
    return manifest


def _collect_request(
    p: StorePrompt, spec: CollectSpec, resolved: list[int], settings: dict[str, Any]
) -> GenerationRequest:
    """The backend request for one prompt: ``settings["n"]`` candidates, per-token norms of ``resolved``, states."""
    from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams

    return GenerationRequest(
        messages=[Message(role=m["role"], content=m["content"]) for m in p.messages],  # type: ignore[arg-type]
        n=settings["n"],
        sampling=SamplingParams(
            temperature=settings["temperature"], max_new_tokens=settings["max_new_tokens"], seed=settings["seed"]
        ),
        norms=NormSpec(layers=resolved, per_token=True, mask_massive=True),
        collect=spec,
        request_id=p.id,
    )


def _shard_contents(
    backend: Any,
    batch: Sequence[StorePrompt],
    results: Sequence[Any],
    resolved: list[int],
    score: Callable[[str, StorePrompt], bool | None] | None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """One shard's tensors (states, norms, record, step; see the module docstring) and its records.

    Raises:
        ConfigError: a candidate the backend returned without states or norms.
    """
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
    return tensors, records


def _write_shard(root: Path, name: str, tensors: dict[str, torch.Tensor], records: list[dict[str, Any]]) -> None:
    """Write ``name``.safetensors and ``name``.jsonl, each under a temporary name and then renamed."""
    from safetensors.torch import save_file

    tmp = root / f"{name}.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, root / f"{name}.safetensors")
    with open(root / f"{name}.jsonl.tmp", "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    os.replace(root / f"{name}.jsonl.tmp", root / f"{name}.jsonl")


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
        self.manifest: dict[str, Any] = check_manifest(
            read_json_file(mpath, "the store manifest", "collect the store again (`l2reason collect`)"), mpath
        )
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

    def _shard(self, k: int, s: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Shard ``k``'s tensors, checked against the manifest (names, shapes, dtypes, token count)."""
        from safetensors.torch import load_file

        path = self.path / f"{s['name']}.safetensors"
        redo = "collect the store again into a new folder"
        try:
            part = load_file(str(path))
        except Exception as e:  # a missing or torn file: OSError, safetensors' own error
            raise ConfigError(f"the store {self.path}: shard {path.name} cannot be read ({e}); {redo}") from e
        n_layers, d, T = len(self.layers), self.hidden_size, int(s["tokens"])
        want = {"states": (T, n_layers, d), "norms": (T, n_layers), "record": (T,), "step": (T,)}
        got = {k: tuple(v.shape) for k, v in part.items()}
        if any(got.get(k) != v for k, v in want.items()) or part["record"].dtype != torch.int64:
            raise ConfigError(f"the store {self.path}: shard {path.name} holds {got}, the manifest says {want}; {redo}")
        return part

    def _load(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            parts = [self._shard(k, s) for k, s in enumerate(self.manifest["shards"])]
            if not parts:
                raise ConfigError(f"the store {self.path} holds no shards yet")
            offset, recs = 0, []
            for part, s in zip(parts, self.manifest["shards"], strict=True):
                n_records = len(self._shard_records(s))
                if len(part["record"]) and not 0 <= int(part["record"].min()) <= int(part["record"].max()) < n_records:
                    raise ConfigError(
                        f"the store {self.path}: shard {s['name']}'s tokens name records its JSONL file does not "
                        f"have ({n_records} records); collect the store again into a new folder"
                    )
                recs.append(part["record"] + offset)
                offset += n_records
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

    def _shard_records(self, s: dict[str, Any]) -> list[dict[str, Any]]:
        """The records of one shard's JSONL file, each checked to be a JSON object."""
        from l2reason.files import read_text_file

        path = self.path / f"{s['name']}.jsonl"
        out: list[dict[str, Any]] = []
        for n, line in enumerate(read_text_file(path, "the store's records file").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise ConfigError(f"{path}:{n}: not a JSON record ({str(e)[:80]}); collect the store again") from e
            masked = rec.get("masked") if isinstance(rec, dict) else None
            if (
                not isinstance(rec, dict)
                or not isinstance(rec.get("tokens") or [], list)
                or not (masked is None or (isinstance(masked, list) and all(isinstance(b, bool) for b in masked)))
            ):
                raise ConfigError(f"{path}:{n}: a record must be a JSON object with a tokens list (and masked flags)")
            out.append(rec)
        return out

    def records(self) -> list[dict[str, Any]]:
        """One dict per stored candidate (item, candidate, tokens, text, correct, masked), in token order."""
        return [rec for s in self.manifest["shards"] for rec in self._shard_records(s)]

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
        if not _is_int(batch_size, 1):
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
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
