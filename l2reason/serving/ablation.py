"""SAE feature ablation (``sae_ablate``) inside an engine: which SAE file, checked how, applied to which rows.

Ablation is not a per-step controller: it changes every position of its
request, prompt included, after one decoder layer (``x ← x − Σ_{i∈S} f_i(x)·d_i``,
:class:`~l2reason.techniques.sae_ablate.SAEWeights`). Both plugins run it the same way:

1. **Which file** (:class:`SAEStore`). A request names an SAE; the server reads
   SAE files from the one folder it was started with (``--sae-dir`` on the
   plugin launchers, ``$L2REASON_SAE_DIR`` in the engine's processes) and no
   other file. The name must pass :func:`~l2reason.techniques.sae_ablate.check_sae_name`
   (relative, no ``..``, no hidden parts); the path is resolved (symlinks
   included) and must stay inside the folder, be a regular file and at most
   :data:`~l2reason.limits.MAX_SAE_FILE_BYTES`; it is opened without following
   a final symlink and checked again on the open file. A request learns nothing
   about files outside the folder: every failure of these checks, a missing
   file included, gives the same message. No folder: ``sae_ablate`` is refused
   with a message saying how to enable it.
2. **Checked once per request** (:class:`SAEAblations`): the layer exists,
   the SAE reads the model's width, the features are in range; a loaded SAE is
   kept (a few, on the model's device) while its file is unchanged. A failure
   is that request's error, never the server's.
3. **Which rows** (:meth:`SAEAblations.plan`): requests with the same (SAE,
   layer, features) are one group; the engine gives, per flattened token of
   the pass, the request it belongs to (``owner``), and gets back per layer
   ``(SAE, features, token rows)``.
4. **Applied** (:func:`apply_ablations`) to the engine's pending pair
   ``(o, r)`` (stream = ``o + r``): the ablated stream is written back as
   ``r ← x' − o`` so ``o`` (the MLP output) is kept.
5. **Kept apart in the prefix cache** (:func:`ablation_cache_salt`): an
   ablated request's prompt keys/values differ from a plain run's, so the
   plugins put such a request in a prefix-cache namespace of its own (the
   engine's cache salt, extended with a hash of its ablations) when the
   engine creates the request, whatever the client sent: no ablated request
   reuses a plain request's cached prompt, and no plain request reuses an
   ablated one (requests with the same ablations do share). A rewritten SAE
   file keeps its name: use a new name (or flush the engine's cache).

Example:
    >>> import torch
    >>> from l2reason.techniques.sae_ablate import SAEWeights
    >>> w = SAEWeights(W_enc=torch.eye(2), b_enc=torch.zeros(2), b_dec=torch.zeros(2), W_dec=torch.eye(2))
    >>> o, r = torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([[2.0, 3.0], [2.0, 3.0]])
    >>> apply_ablations([(w, torch.tensor([1]), torch.tensor([0]))], o, r)
    >>> (o + r).tolist()  # row 0 lost feature 1, row 1 is untouched
    [[3.0, 0.0], [3.0, 4.0]]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from l2reason.errors import ConfigError
from l2reason.limits import MAX_SAE_FILE_BYTES
from l2reason.serving.launch import SAE_DIR_ENV, SAE_DIR_FLAG
from l2reason.serving.settings import EngineSettings
from l2reason.techniques.controllers import ModelInfo
from l2reason.techniques.sae_ablate import SAEWeights, check_sae_name, sae_weights_from_bytes
from l2reason.techniques.specs import SAEAblateSpec

__all__ = ["Ablation", "AblationRows", "SAEAblations", "SAEStore", "ablation_cache_salt", "apply_ablations"]

log = logging.getLogger(__name__)

#: loaded SAEs kept per process (an ablation study uses one SAE; a few spare)
MAX_SAES = 4
#: requests whose checked ablations are remembered (far more than any server runs at once; old ones age out)
MAX_REQUESTS = 16384

#: per layer: (SAE, feature indices, flattened token rows of the pass) -- what :func:`apply_ablations` takes
AblationRows = list[tuple[SAEWeights, torch.Tensor, torch.Tensor]]


class SAEStore:
    """SAE files served by name from one folder, loaded once per file version.

    Args:
        root: the folder (``None``: no SAE files are served; ``sae_ablate`` is refused).
        device: where loaded SAEs live (the model's device).
        max_cached: loaded SAEs kept.
        max_bytes: the largest file read.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        *,
        device: torch.device | str = "cpu",
        max_cached: int = MAX_SAES,
        max_bytes: int = MAX_SAE_FILE_BYTES,
    ) -> None:
        self.root = Path(os.path.realpath(root)) if root else None
        self.device = torch.device(device)
        self.max_cached, self.max_bytes = max_cached, max_bytes
        self._cache: OrderedDict[tuple[str, int, int, int], SAEWeights] = OrderedDict()

    @classmethod
    def from_env(cls, device: torch.device | str = "cpu") -> SAEStore:
        """The store of ``$L2REASON_SAE_DIR`` (set by the plugin launchers from ``--sae-dir``)."""
        return cls(os.environ.get(SAE_DIR_ENV) or None, device=device)

    def _not_found(self, name: str) -> ConfigError:
        # one message for every refusal (missing, outside, not a regular file, a bad name): it says nothing
        # about what exists outside the folder
        return ConfigError(
            f"sae_ablate: no SAE named {name[:80]!r} in the server's SAE folder (a relative name of a regular "
            "file inside the folder given by --sae-dir; write one with `l2reason sae export`)"
        )

    def _too_large(self, name: str) -> ConfigError:
        return ConfigError(f"sae_ablate: the SAE {name!r} is larger than this server reads ({self.max_bytes} bytes)")

    def load(self, name: str) -> tuple[str, SAEWeights]:
        """``(version key, SAE)`` for the file ``name`` in the folder.

        Raises:
            ConfigError: no folder; no such file (or one the rules refuse); too large; not an SAE file.
        """
        if self.root is None:
            raise ConfigError(
                "sae_ablate: this server serves no SAE files; start it with "
                f"`{SAE_DIR_FLAG} DIR` (`l2reason serve {SAE_DIR_FLAG} DIR`, or the plugin launcher's flag) and "
                "name a file in DIR"
            )
        try:
            check_sae_name(name)
            real = Path(os.path.realpath(self.root / name, strict=True))
            if not real.is_relative_to(self.root):
                raise self._not_found(name)
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except (OSError, ValueError):  # ValueError: a bad name or a NUL byte (ConfigError is one too)
            raise self._not_found(name) from None
        st = os.fstat(fd)  # the file actually opened
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self._not_found(name)
        with os.fdopen(fd, "rb") as fh:
            if st.st_size > self.max_bytes:
                raise self._too_large(name)
            key = (str(real), st.st_ino, st.st_size, st.st_mtime_ns)
            w = self._cache.get(key)
            if w is not None:
                self._cache.move_to_end(key)
                return _version(name, key), w
            data = fh.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:  # grew while open
            raise self._too_large(name)
        w = sae_weights_from_bytes(data, f"the SAE {name!r}").to(self.device)
        while len(self._cache) >= self.max_cached:
            self._cache.popitem(last=False)
        self._cache[key] = w
        log.info("l2reason: loaded SAE %s (%d features x %d, %s)", name, w.d_sae, w.d_in, w.activation)
        return _version(name, key), w


def _version(name: str, key: tuple[str, int, int, int]) -> str:
    """A group key for one version of one file (the same name rewritten is another version)."""
    return f"{name}@{key[1]}:{key[2]}:{key[3]}"


@dataclass(frozen=True)
class Ablation:
    """One checked ``sae_ablate`` spec.

    Attributes:
        key: ``(SAE version, layer, features)``: requests with the same key are one group.
        layer: the decoder layer after which it runs.
        sae: the SAE (on the model's device).
        features: ``[k]`` sorted feature indices (on the model's device).
    """

    key: tuple[str, int, tuple[int, ...]]
    layer: int
    sae: SAEWeights
    features: torch.Tensor


class SAEAblations:
    """The ablations of the requests an engine runs: checked once per request, grouped per pass.

    Args:
        store: where SAE files come from.
        info: the model (layers, hidden size).
        max_requests: requests remembered (the least recently used are forgotten first;
            :meth:`forget` drops a finished one at once).
    """

    def __init__(self, store: SAEStore, info: ModelInfo, *, max_requests: int = MAX_REQUESTS) -> None:
        self.store, self.info, self.max_requests = store, info, max_requests
        self._by_rid: OrderedDict[str, list[Ablation] | ConfigError] = OrderedDict()

    def check(self, spec: SAEAblateSpec) -> Ablation:
        """One spec checked against the model and its SAE file.

        Raises:
            ConfigError: the layer does not exist, the SAE file cannot be served, it reads states of another
                width, or a feature is out of its range.
        """
        if spec.layer >= self.info.num_layers:
            raise ConfigError(f"sae_ablate: layer {spec.layer} does not exist (the model has {self.info.num_layers})")
        version, w = self.store.load(spec.sae)
        if w.d_in != self.info.hidden_size:
            raise ConfigError(
                f"sae_ablate: the SAE {spec.sae!r} reads {w.d_in}-dim states; the model's are {self.info.hidden_size}"
            )
        feats = w.check_features(spec.features)
        return Ablation((version, spec.layer, tuple(feats.tolist())), spec.layer, w, feats.to(self.store.device))

    def for_request(self, rid: str, specs: Sequence[SAEAblateSpec]) -> list[Ablation]:
        """The request's checked ablations (checked the first time it is asked for, then remembered).

        Raises:
            ConfigError: a spec fails :meth:`check` (remembered too: the request keeps its error).
        """
        hit = self._by_rid.get(rid)
        if hit is None:
            try:
                hit = [self.check(s) for s in specs]
            except ConfigError as e:
                hit = e
            self._by_rid[rid] = hit
            while len(self._by_rid) > self.max_requests:
                self._by_rid.popitem(last=False)
        else:
            self._by_rid.move_to_end(rid)
        if isinstance(hit, ConfigError):
            raise hit
        return hit

    def for_rows(
        self, rids: Sequence[str], settings: Sequence[EngineSettings | Exception | None]
    ) -> tuple[list[list[Ablation]], dict[int, ConfigError]]:
        """Per row of a pass (request ``rids[j]`` with ``settings[j]``), its checked ablations, and the rows
        whose ablations fail (row -> the error that becomes that request's: the plugin reports it)."""
        checked: list[list[Ablation]] = []
        bad: dict[int, ConfigError] = {}
        for j, (rid, s) in enumerate(zip(rids, settings, strict=True)):
            specs = (
                [x for x in s.interventions if isinstance(x, SAEAblateSpec)] if isinstance(s, EngineSettings) else []
            )
            try:
                checked.append(self.for_request(rid, specs) if specs else [])
            except ConfigError as e:
                bad[j] = e
                checked.append([])
        return checked, bad

    def forget(self, rid: str) -> None:
        """Drop a finished request."""
        self._by_rid.pop(rid, None)

    @staticmethod
    def plan(checked: Sequence[Sequence[Ablation]], owner: torch.Tensor) -> dict[int, AblationRows]:
        """Which token rows each ablation changes in one pass.

        Args:
            checked: per request of the pass (index ``j``), its ablations (empty: none).
            owner: ``[T]`` per flattened token of the pass, the request index ``j`` it belongs to (-1: none).

        Returns:
            layer -> ``[(SAE, features, token rows [n])]``, one entry per group with tokens in this pass.
        """
        groups: dict[tuple[str, int, tuple[int, ...]], tuple[Ablation, list[int]]] = {}
        for j, abls in enumerate(checked):
            for a in abls:
                groups.setdefault(a.key, (a, []))[1].append(j)
        out: dict[int, AblationRows] = {}
        for a, js in groups.values():
            tok = torch.isin(owner, torch.tensor(js, dtype=torch.long, device=owner.device)).nonzero().flatten()
            if tok.numel():
                out.setdefault(a.layer, []).append((a.sae, a.features, tok.to(a.features.device)))
        return out


def apply_ablations(entries: AblationRows, o: torch.Tensor, r: torch.Tensor | None) -> None:
    """Ablate, in place, the stream ``o + r`` at each entry's token rows.

    Args:
        entries: ``[(SAE, features, token rows)]`` of one layer (from :meth:`SAEAblations.plan`).
        o: ``[T, d]`` the layer's output (the MLP output), kept; when ``r`` is None, ``o`` is the stream
            itself and is overwritten.
        r: ``[T, d]`` the residual: the ablated stream is written back as ``r ← x' − o``.
    """
    for w, feats, tok in entries:
        if r is None:
            o[tok] = w.remove(o[tok].float(), feats).to(o.dtype)
            continue
        ot = o[tok].float()
        new = w.remove(ot + r[tok].float(), feats)
        r[tok] = (new - ot).to(r.dtype)


def ablation_cache_salt(settings: EngineSettings | Exception | None, salt: str | None) -> str | None:
    """The prefix-cache salt a request must carry: ``salt`` (the client's, if any), extended with a hash of the
    request's SAE ablations when it has some (deterministic: requests with the same ablations share a namespace).

    Example:
        >>> s = EngineSettings(interventions=[{"kind": "sae_ablate", "sae": "a", "layer": 1, "features": [2]}])
        >>> ablation_cache_salt(s, "mine").startswith("mine|l2reason-sae:"), ablation_cache_salt(None, "mine")
        (True, 'mine')
    """
    if not isinstance(settings, EngineSettings):
        return salt
    specs = [x.model_dump(mode="json") for x in settings.interventions if isinstance(x, SAEAblateSpec)]
    if not specs:
        return salt
    h = hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()[:32]
    return f"{salt}|l2reason-sae:{h}" if salt else f"l2reason-sae:{h}"
