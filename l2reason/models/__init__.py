"""Model sources: packaged (offline) models, GGUF files, folders, hub ids."""

from l2reason.models.load import LoadedModel, assemble_gguf, convert_packaged, load_model
from l2reason.models.registry import DEFAULT_MODEL, FAST_MODEL, PACKAGED, PackagedModel, find_packaged

__all__ = [
    "DEFAULT_MODEL",
    "FAST_MODEL",
    "PACKAGED",
    "LoadedModel",
    "PackagedModel",
    "assemble_gguf",
    "convert_packaged",
    "find_packaged",
    "load_model",
]
