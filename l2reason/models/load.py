"""One function to get a model: :func:`load_model`.

Model specs:

- ``"default"`` / ``"packaged:qwen2.5-coder-0.5b"`` - the packaged default;
  ``"fast"`` / ``"packaged:smollm2-135m"`` - the small mechanics model;
- a path to a ``.gguf`` file;
- a local folder with a transformers model (``config.json`` + weights);
- a Hugging Face model id (``Qwen/Qwen2.5-0.5B-Instruct``), loaded with the
  ordinary ``from_pretrained`` (needs the hub or a populated HF cache).

Packaged names and local paths are resolved first, without the network. A
spec that is neither is a hub id: :mod:`l2reason.models.hub` checks in about
two seconds at most whether the hub can be asked (``HF_HUB_OFFLINE``, then one
probe) and, when it cannot, loads the id from the local cache or fails at once
with the packaged names (a typo used to cost ~50 s of hub retries).

Packaged GGUF models are dequantized once into a safetensors folder under the
cache root (see :mod:`l2reason._paths`); later loads read that folder and take
seconds instead of ~30 s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2reason._paths import cache_dir, safe_name
from l2reason.errors import ModelSourceError
from l2reason.models.hub import hub_kwargs
from l2reason.models.registry import PackagedModel, did_you_mean, find_packaged, packaged_help

log = logging.getLogger(__name__)

CONVERTED_MARKER = "l2reason-converted.json"
_CHUNK = 8 << 20


@dataclass
class LoadedModel:
    """A model ready for a backend.

    Args:
        model: the ``transformers`` causal LM, in eval mode.
        tokenizer: its tokenizer (left padding is set by the backend).
        model_id: a stable id (keys calibration files and results).
        source: where the weights came from (a path or hub id).
        load_seconds: wall time of this load.
        weights_sha256: sha256 of the source weights when known (a packaged
            model's GGUF, or a folder converted from one); keys the
            calibration files that ship with l2reason. None otherwise.
    """

    model: Any
    tokenizer: Any
    model_id: str
    source: str
    load_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def _progress(total: int | None, desc: str, unit: str = "B") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=None, leave=False)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _chunk_files(pm: PackagedModel) -> list[Path]:
    files: list[Path] = []
    for d in pm.package_dirs():
        parts = sorted((d / "data").glob("part*.bin"), key=lambda p: int("".join(filter(str.isdigit, p.stem)) or 0))
        if not parts:
            raise ModelSourceError(
                f"package folder {d} of packaged model {pm.name!r} holds no data/part*.bin chunk; "
                f"reinstall it with: {pm.install_hint()}"
            )
        files.extend(parts)
    # numeric order over all packages (part01 .. partNN)
    files.sort(key=lambda p: int("".join(filter(str.isdigit, p.stem)) or 0))
    return files


def assemble_gguf(pm: PackagedModel, dest_dir: Path | None = None) -> Path:
    """Join the chunks of a packaged model into one GGUF file and verify it.

    Returns the path of the verified GGUF. Raises :class:`ModelSourceError` if
    a package is missing or the joined file has the wrong size or sha256.
    """
    if not pm.chunked:
        path = pm.package_dirs()[0] / pm.gguf_name
        if not path.is_file():
            raise ModelSourceError(f"{path} is missing; reinstall with: {pm.install_hint()}")
        if pm.sha256 is not None and sha256_file(path) != pm.sha256:
            raise ModelSourceError(
                f"packaged model {pm.name!r}: {path} does not have the expected sha256 {pm.sha256}. "
                f"The package is corrupt or of the wrong version; reinstall with: {pm.install_hint()}"
            )
        return path
    dest_dir = dest_dir or cache_dir() / "gguf"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / pm.gguf_name
    if dest.is_file() and pm.size is not None and dest.stat().st_size == pm.size:
        return dest
    files = _chunk_files(pm)
    total = sum(f.stat().st_size for f in files)
    if pm.size is not None and total != pm.size:
        raise ModelSourceError(
            f"the chunks of packaged model {pm.name!r} add up to {total:,} bytes, expected {pm.size:,}: "
            f"a part is missing or truncated. Reinstall with: {pm.install_hint()}"
        )
    tmp = dest.with_suffix(".partial")
    h = hashlib.sha256()
    with open(tmp, "wb") as out, _progress(total, f"assembling {pm.name}") as bar:
        for f in files:
            with open(f, "rb") as inp:
                for block in iter(lambda: inp.read(_CHUNK), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
    digest = h.hexdigest()
    if pm.sha256 is not None and digest != pm.sha256:
        tmp.unlink(missing_ok=True)
        raise ModelSourceError(
            f"packaged model {pm.name!r}: the assembled file's sha256 is {digest}, expected {pm.sha256}. "
            f"The packages are corrupt or of the wrong version; reinstall with: {pm.install_hint()}"
        )
    os.replace(tmp, dest)
    return dest


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except Exception as e:  # transformers raises many types here
        raise ModelSourceError(f"could not load GGUF file {path}: {e}") from e
    return model, tok


def converted_dir(pm: PackagedModel) -> Path:
    return cache_dir() / "models" / safe_name(pm.name)


def convert_packaged(pm: PackagedModel, *, force: bool = False) -> Path:
    """Dequantize a packaged GGUF once into a safetensors folder; returns the folder.

    The folder carries a marker file with the source sha256 and versions; a
    folder without it (an interrupted conversion) is rebuilt.
    """
    from filelock import FileLock

    out = converted_dir(pm)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / CONVERTED_MARKER).is_file() and not force:
            return out
        gguf = assemble_gguf(pm)
        log.info("converting %s to safetensors in %s (once; ~30 s)", pm.name, out)
        t0 = time.perf_counter()
        model, tok = _load_gguf(gguf, torch.float32)
        # The dequantized weights are plain fp32: drop the GGUF quantizer so
        # save_pretrained writes ordinary safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        import transformers

        (tmp / CONVERTED_MARKER).write_text(
            json.dumps(
                {
                    "name": pm.name,
                    "model_id": pm.model_id,
                    "gguf_sha256": pm.sha256,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                    "seconds": round(time.perf_counter() - t0, 1),
                },
                indent=2,
            )
        )
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return out


def _load_folder(path: str, dtype: torch.dtype, **kw: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    return model, tok


def load_model(spec: str = "default", *, dtype: torch.dtype | str = "float32", **hf_kwargs: Any) -> LoadedModel:
    """Load a causal LM and its tokenizer from any supported spec.

    Args:
        spec: ``"default"``, ``"fast"``, ``"packaged:<name>"``, a ``.gguf``
            path, a local model folder, or a Hugging Face model id.
        dtype: torch dtype (or its name) to load the weights in; fp32 is the
            default (bf16 is not faster on CPU).
        **hf_kwargs: passed to ``from_pretrained`` for folder/hub specs.

    Example:
        >>> lm = load_model("fast")  # doctest: +SKIP
        >>> lm.num_layers
        30
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSourceError(f"model spec must be a non-empty string (got {spec!r}); try 'default'")
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ModelSourceError(f"unknown dtype {dtype!r}; use 'float32' or 'bfloat16'")
    t0 = time.perf_counter()
    pm = find_packaged(spec)
    if pm is not None:
        folder = convert_packaged(pm)
        model, tok = _load_folder(str(folder), torch_dtype)
        model_id, source = pm.model_id, f"packaged:{pm.name}"
        weights_sha256 = pm.sha256
    elif spec.startswith("packaged:"):
        raise ModelSourceError(
            f"unknown packaged model {spec!r}{did_you_mean(spec)}; packaged models: {packaged_help()}"
        )
    elif spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {path} does not exist")
        model, tok = _load_gguf(path, torch_dtype)
        model_id, source = f"gguf:{path.name}", str(path)
        weights_sha256 = None  # hashing an arbitrary GGUF on every load costs seconds; calibrate it instead
    else:
        path = Path(spec).expanduser()
        if path.exists() and not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} exists but is not a transformers model folder (no config.json)")
        # not packaged, not a path: a hub id, checked in seconds (offline mode, a probe of the hub, its cache)
        kw = hf_kwargs if path.exists() else hub_kwargs(spec, hf_kwargs)
        try:
            model, tok = _load_folder(str(path) if path.exists() else spec, torch_dtype, **kw)
        except OSError as e:
            raise ModelSourceError(
                f"could not load model {spec!r}: it is neither a packaged model "
                f"({packaged_help()}), a .gguf file, a local folder, nor a Hugging Face id "
                f"reachable from here ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from e
        model_id, source = spec, str(path) if path.exists() else spec
        weights_sha256 = _converted_sha256(path) if path.exists() else None
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tok,
        model_id=model_id,
        source=source,
        load_seconds=time.perf_counter() - t0,
        info={"dtype": str(torch_dtype).removeprefix("torch.")},
        weights_sha256=weights_sha256,
    )


def _converted_sha256(folder: Path) -> str | None:
    """The source GGUF's sha256 recorded in a folder l2reason converted from a packaged model, else None."""
    marker = folder / CONVERTED_MARKER
    try:
        digest = json.loads(marker.read_text()).get("gguf_sha256") if marker.is_file() else None
    except (OSError, ValueError):
        return None
    return digest if isinstance(digest, str) else None
