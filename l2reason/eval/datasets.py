"""Small offline math datasets behind one protocol.

Every dataset yields :class:`Item` objects (id, question, normalised gold
answer, metadata) and scores a model output against an item. Nothing here
touches the network:

- ``gsm_symbolic``, ``basic_arithmetic``, ``chain_sum`` and any other family
  as ``rg:<family>`` come from ``reasoning_gym``, generated from a seed.
  Item ``i`` of seed ``s`` is drawn with ``Random(s + i)``, so it does not
  depend on ``size``. Beware: for the arithmetic families item ``i + 1`` of
  seed ``s`` *is* item ``i`` of seed ``s + 1``; seeds that differ by less than
  ``size`` give overlapping sets (``gsm_symbolic`` also picks its template
  from the seed, so it overlaps only by chance).
- ``evals:<task>`` reads a JSONL file shipped with OpenAI's ``evals`` package
  (``pip install --no-deps evals==3.0.1.post1``). The package is located with
  ``importlib.util.find_spec`` and never imported: without its dependencies
  ``import evals`` fails.
- ``jsonl:<path>`` reads your own file of ``{"question": ..., "answer": ...}``
  rows.

:func:`load_dataset` turns a name such as ``"gsm_symbolic:seed=7"`` into a
dataset; :data:`DATASETS` maps each name (or prefix) to its factory, and you may
add your own.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from l2reason.errors import ConfigError
from l2reason.eval.answers import (
    answers_equal,
    extract_answer,
    find_numbers,
    normalize_answer,
    parse_number,
)
from l2reason.files import parse_json

__all__ = [
    "DATASETS",
    "EVALS_TASKS",
    "BasicArithmetic",
    "ChainSum",
    "Dataset",
    "EvalsJSONL",
    "GSMSymbolic",
    "Item",
    "JSONLDataset",
    "ReasoningGym",
    "load_dataset",
]

logger = logging.getLogger(__name__)

EVALS_TASKS = ("multistep-word-problems", "math_for_5th-grader", "linear_equations")
"""The ``evals`` tasks this module was written and tested against."""

_EVALS_INSTALL = 'pip install --no-deps "evals==3.0.1.post1"'
MAX_SIZE = 10_000_000
"""Largest ``size`` of a generated dataset (items are generated lazily; a full listing must stay possible)."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of lists/objects accepted on one JSONL line."""
RG_OPTION_LIMITS = {"min_terms": 1000, "max_terms": 1000, "min_digits": 1000, "max_digits": 1000}
"""Upper bounds of reasoning_gym options that size each generated item (``max_terms=10**20`` would never finish)."""


def _short(value: Any) -> str:
    """``repr`` of a value, cut to 60 characters, with its JSON type."""
    text = repr(value)
    return f"{text[:57]}... ({type(value).__name__})" if len(text) > 60 else f"{text} ({type(value).__name__})"


@dataclass(frozen=True)
class Item:
    """One question with its gold answer.

    Args:
        id: stable id, ``<dataset name>:<index>`` unless the source file gives one.
        question: the question text shown to the model.
        answer: the gold answer, normalised by
            :func:`l2reason.eval.answers.normalize_answer` (``"1250"``, ``"3/4"``;
            ``"[2, 1]"`` for a vector).
        meta: anything else the source provides (raw gold, system prompt, ...).
            Not part of the hash.

    Example:
        >>> Item("demo:0", "What is 2 + 3?", "5").answer
        '5'
    """

    id: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


@runtime_checkable
class Dataset(Protocol):
    """What every dataset offers.

    Attributes:
        name: the name that :func:`load_dataset` accepts to build it again.

    Example:
        >>> ds = load_dataset("chain_sum", size=3)
        >>> isinstance(ds, Dataset), ds.score("The sum is 7", ds.items(1)[0])
        (True, True)
    """

    name: str

    def items(self, limit: int | None = None, offset: int = 0) -> list[Item]:
        """Items ``offset .. offset + limit`` (all from ``offset`` when ``limit`` is None)."""
        ...

    def score(self, pred_text_or_answer: str | None, item: Item) -> bool:
        """Whether a model output (or an answer extracted from it) is right for ``item``."""
        ...


def _window(n_total: int, limit: int | None, offset: int) -> range:
    """The indices ``items(limit, offset)`` covers, checking both arguments."""
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise ConfigError(f"offset must be an integer >= 0, got {offset!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise ConfigError(f"limit must be an integer >= 0 or None, got {limit!r}")
    if offset < 0:
        raise ConfigError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0 or None, got {limit}")
    stop = n_total if limit is None else min(n_total, offset + limit)
    return range(offset, max(offset, stop))


def _score_scalar(pred: str | None, golds: list[str]) -> bool:
    """Whether the answer extracted from ``pred`` equals any of ``golds``."""
    answer = extract_answer(pred)
    return any(answers_equal(answer, gold) for gold in golds)


class ReasoningGym:
    """Any ``reasoning_gym`` family with numeric answers, generated offline.

    Item ``i`` is ``reasoning_gym.create_dataset(family, seed=seed, size=size,
    **config)[i]``; it depends on ``seed`` and ``i`` only. Scoring extracts the
    final answer from the output and compares it numerically with the gold.

    Args:
        family: a reasoning-gym dataset name (``"leg_counting"``, ``"gcd"``, ...).
        seed: generator seed (ids carry it).
        size: how many items the dataset holds.
        **config: the family's config fields (``min_terms=2``, ...).

    Example:
        >>> ds = ReasoningGym("leg_counting", seed=1, size=10)
        >>> ds.items(1)[0].id
        'rg:leg_counting:seed=1:0'
    """

    family: str = ""

    def __init__(self, family: str | None = None, seed: int = 42, size: int = 500, **config: Any):
        family = family or self.family
        if not family:
            raise ConfigError("ReasoningGym needs a family name, e.g. ReasoningGym('leg_counting')")
        if not isinstance(family, str):
            raise ConfigError(f"the reasoning_gym family must be a name (str), got {family!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"{family}: seed must be an integer, got {seed!r} (e.g. '{family}:seed=7')")
        if isinstance(size, bool) or not isinstance(size, int):
            raise ConfigError(f"{family}: size must be an integer, got {size!r} (e.g. '{family}:size=100')")
        if size <= 0:
            raise ConfigError(f"size must be positive, got {size}")
        if size > MAX_SIZE:
            raise ConfigError(f"size must be at most {MAX_SIZE}, got {size}; use limit/offset to pick items")
        import reasoning_gym

        registry = reasoning_gym.factory.DATASETS
        if family not in registry:
            raise ConfigError(f"reasoning_gym has no dataset {family!r}; pick one of {sorted(registry)}")
        config_cls = registry[family][1]
        _check_rg_config(family, config_cls, config)
        try:
            self._ds = reasoning_gym.create_dataset(family, seed=seed, size=size, **config)
        except Exception as e:  # reasoning_gym validates with asserts, ValueError, TypeError, ...
            raise ConfigError(
                f"bad config for reasoning_gym {family!r}: {config} ({e or type(e).__name__}); "
                f"its options: {_rg_options(config_cls)}"
            ) from e
        self.family, self.seed, self.size = family, seed, size
        self.config = dict(config)
        options = ",".join(f"{k}={v}" for k, v in {"seed": seed, **dict(sorted(config.items()))}.items())
        # The name round-trips through load_dataset: registered families by
        # their own name, the others under the "rg:" prefix.
        prefix = "" if family in DATASETS and family not in _POSITIONAL else "rg:"
        self.name = f"{prefix}{family}:{options}"
        first = self._entry(0)
        if parse_number(str(first["answer"])) is None:
            logger.warning(
                "%s answers are not numbers (%r); numeric scoring will be poor",
                family,
                first["answer"],
            )

    def _entry(self, i: int) -> dict[str, Any]:
        """Item ``i`` from reasoning_gym; a generator failure is a ConfigError naming the config."""
        try:
            entry = self._ds[i]
        except Exception as e:  # a config reasoning_gym accepted but cannot generate from
            raise ConfigError(
                f"reasoning_gym {self.family!r} with {self.config or 'the default config'} cannot generate "
                f"item {i} ({type(e).__name__}: {e}); change the dataset options"
            ) from e
        if not isinstance(entry, dict) or not isinstance(entry.get("question"), str) or "answer" not in entry:
            raise ConfigError(f"reasoning_gym {self.family!r} item {i} has no question/answer; pick another family")
        return entry

    def __len__(self) -> int:
        return self.size

    def items(self, limit: int | None = None, offset: int = 0) -> list[Item]:
        """Items ``offset .. offset + limit``; see :class:`Dataset`."""
        out = []
        for i in _window(self.size, limit, offset):
            entry = self._entry(i)
            gold = str(entry["answer"])
            meta = {**entry.get("metadata", {}), "seed": self.seed, "gold_raw": gold}
            out.append(
                Item(
                    f"{self.name}:{i}",
                    entry["question"],
                    normalize_answer(gold) or gold,
                    meta,
                )
            )
        return out

    def score(self, pred_text_or_answer: str | None, item: Item) -> bool:
        """Whether the output's final answer equals the gold; see :class:`Dataset`."""
        return _score_scalar(pred_text_or_answer, [item.answer])


class GSMSymbolic(ReasoningGym):
    """GSM-Symbolic: templated grade-school word problems (integer answers).

    Each question ends with "Give the result as your final answer. Do not
    include units."; the gold is an integer string such as ``"70"`` and
    ``meta["answer_cot"]`` holds a worked solution ending in ``#### 70``.

    Args:
        seed: generator seed.
        size: how many items the dataset holds.

    Example:
        >>> GSMSymbolic(seed=42, size=5).items(1)[0].answer
        '70'
    """

    family = "gsm_symbolic"

    def __init__(self, seed: int = 42, size: int = 500):
        super().__init__(self.family, seed=seed, size=size)


class BasicArithmetic(ReasoningGym):
    """Integer expressions such as ``Calculate ( 56 + -33 ) - 84.`` (answers may be negative).

    Args:
        seed: generator seed.
        size: how many items the dataset holds.
        **config: ``min_terms``, ``max_terms`` (2..6), ``min_digits``, ``max_digits`` (1..4), ...

    Example:
        >>> BasicArithmetic(seed=42, size=3).items(1)[0].answer
        '30'
    """

    family = "basic_arithmetic"

    def __init__(self, seed: int = 42, size: int = 500, **config: Any):
        super().__init__(self.family, seed=seed, size=size, **config)


class ChainSum(ReasoningGym):
    """Sums and differences such as ``4 + 3 =`` (2..6 terms of 1..4 digits by default).

    Args:
        seed: generator seed.
        size: how many items the dataset holds.
        **config: ``min_terms``, ``max_terms``, ``min_digits``, ``max_digits``, ...

    Example:
        >>> ChainSum(seed=42, size=3).items(1)[0].answer
        '7'
    """

    family = "chain_sum"

    def __init__(self, seed: int = 42, size: int = 500, **config: Any):
        super().__init__(self.family, seed=seed, size=size, **config)


def _evals_data_dir() -> Path:
    """``evals/registry/data`` of the installed ``evals`` package, without importing it."""
    spec = importlib.util.find_spec("evals")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the evals datasets need the 'evals' package: {_EVALS_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "registry" / "data"


def _evals_file(task: str) -> tuple[str, Path]:
    """The canonical task name and its JSONL file (``linear-equations`` finds ``linear_equations``)."""
    root = _evals_data_dir()
    for name in dict.fromkeys((task, task.replace("-", "_"), task.replace("_", "-"))):
        folder = root / name
        if folder.is_dir():
            if (folder / "samples.jsonl").is_file():
                return name, folder / "samples.jsonl"
            files = sorted(folder.glob("*.jsonl"))
            if len(files) == 1:
                return name, files[0]
            raise ConfigError(f"evals task {name!r} has {len(files)} JSONL files, expected one: {files}")
    raise ConfigError(f"evals has no task {task!r} under {root}; tested tasks: {list(EVALS_TASKS)}")


_X_EQUALS = re.compile(r"(?<![A-Za-z])x\s*=")  # "x =", not "Ax ="


def _vector(text: str) -> list[str]:
    """The numbers of a numpy-printed column vector such as ``x = [[ 11]\\n [-74]]``."""
    return find_numbers(text.split("=", 1)[-1])


class EvalsJSONL:
    """A task from OpenAI ``evals`` (rows with ``input`` and ``ideal``).

    ``input`` is a chat (the last user message becomes the question; the system
    message goes to ``meta["system"]``) or a plain string. ``ideal`` is a string
    or a list of acceptable strings; all are kept in ``meta["ideals"]``. An ideal
    printed as a numpy column vector (``x = [[2]\\n [1]]``, as in
    ``linear_equations``) becomes the answer ``"[2, 1]"`` and is scored
    component by component: the numbers after the output's last ``x = [`` (else
    its last ``n`` numbers) must match.

    Args:
        task: the folder under ``evals/registry/data``, e.g. ``"linear_equations"``.

    Example:
        >>> ds = EvalsJSONL("linear_equations")  # doctest: +SKIP
        >>> ds.items(1)[0].answer, ds.score("x = [[2]\\n [1]]", ds.items(1)[0])  # doctest: +SKIP
        ('[2, 1]', True)
    """

    def __init__(self, task: str):
        self.task, path = _evals_file(task)
        self.name = f"evals:{self.task}"
        self.path = path
        self._items = [self._item(i, row, path, n) for i, (n, row) in enumerate(_read_jsonl(path))]
        logger.debug("loaded %d items from %s", len(self._items), path)

    def _item(self, index: int, row: dict[str, Any], path: Path, line: int) -> Item:
        """One JSONL row as an :class:`Item`."""
        chat, ideal = row.get("input"), row.get("ideal")
        system = None
        if isinstance(chat, list):
            users = [m.get("content", "") for m in chat if isinstance(m, dict) and m.get("role") == "user"]
            systems = [m.get("content", "") for m in chat if isinstance(m, dict) and m.get("role") == "system"]
            question, system = (
                (users[-1] if users else None),
                (systems[0] if systems else None),
            )
        else:
            question = chat
        raw = ideal if isinstance(ideal, list) else [ideal]
        if not isinstance(question, str) or not raw or not all(isinstance(x, str) for x in raw):
            raise ConfigError(f"{path}:{line}: expected 'input' (chat or text) and 'ideal' (string or list)")
        ideals: list[str] = [str(x) for x in raw]
        meta: dict[str, Any] = {"system": system, "ideals_raw": ideals, "line": line}
        if "[[" in ideals[0]:
            vec = _vector(ideals[0])
            answer, meta["vector"] = "[" + ", ".join(vec) + "]", vec
        else:
            golds = [normalize_answer(x) or x for x in ideals]
            answer, meta["ideals"] = golds[0], golds
        return Item(f"{self.name}:{index}", question, answer, meta)

    def __len__(self) -> int:
        return len(self._items)

    def items(self, limit: int | None = None, offset: int = 0) -> list[Item]:
        """Items ``offset .. offset + limit``; see :class:`Dataset`."""
        return [self._items[i] for i in _window(len(self._items), limit, offset)]

    def score(self, pred_text_or_answer: str | None, item: Item) -> bool:
        """Scalar: final answer equals any ideal. Vector: every component matches."""
        if "vector" not in item.meta:
            return _score_scalar(pred_text_or_answer, item.meta.get("ideals", [item.answer]))
        gold: list[str] = item.meta["vector"]
        if not pred_text_or_answer:
            return False
        text = pred_text_or_answer
        marks = list(_X_EQUALS.finditer(text))
        if marks:  # the numbers right after the last "x ="
            pred = find_numbers(text[marks[-1].end() :])[: len(gold)]
        else:  # a bare vector, e.g. an answer extracted earlier: its last n numbers
            pred = find_numbers(text)[-len(gold) :]
        return len(pred) == len(gold) and all(answers_equal(p, g) for p, g in zip(pred, gold, strict=True))


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line; ConfigError naming a bad line.

    Every line must be UTF-8 (a leading BOM is allowed) and one strict JSON
    object: ``NaN``/``Infinity`` (not JSON) and objects nested deeper than
    :data:`MAX_JSON_DEPTH` are refused with the line number.
    """
    try:
        data = path.read_bytes()
    except IsADirectoryError as e:
        raise ConfigError(f"{path} is a directory; give the path of a .jsonl file") from e
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    data = data.removeprefix(b"\xef\xbb\xbf")
    if data.startswith(b"version https://git-lfs"):
        raise ConfigError(f"{path} is a Git LFS pointer, not data; fetch the real file")
    rows = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"{path}:{n}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); save the file as UTF-8"
            ) from e
        if not line.strip():
            continue

        fix = "each line must be one JSON object with finite numbers"
        row = parse_json(line, f"{path}:{n}: the line", fix, max_depth=MAX_JSON_DEPTH)
        rows.append((n, row))
    return rows


class JSONLDataset:
    """Your own JSONL file: one ``{"question": str, "answer": str | number}`` per line.

    An optional ``"id"`` field (a string or an integer) is used as the item id
    (else ``jsonl:<stem>:<index>``); every other field goes to ``meta``. Blank
    lines are skipped. Scoring is the same as for GSM-Symbolic.

    The file must be UTF-8 with one strict JSON object per line. A missing
    field, a ``NaN``/``Infinity`` anywhere, a non-finite answer (``1e999``), an
    id that is a list, object, bool or null, a line that is not UTF-8 or not
    JSON: each is a :class:`~l2reason.errors.ConfigError` naming the line.

    Args:
        path: the ``.jsonl`` file.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "mine.jsonl"
        >>> _ = p.write_text('{"question": "2 + 2?", "answer": 4}\\n')
        >>> JSONLDataset(p).items()[0]
        Item(id='jsonl:mine:0', question='2 + 2?', answer='4', meta={'gold_raw': '4', 'line': 1})
    """

    def __init__(self, path: str | Path):
        if not isinstance(path, str | Path) or not str(path).strip():
            raise ConfigError(f"a JSONL dataset needs a file path, e.g. 'jsonl:data/mine.jsonl'; got {path!r}")
        try:
            self.path = Path(path).expanduser()
            is_file = self.path.is_file()
        except (OSError, ValueError) as e:
            raise ConfigError(f"{str(path)!r} is not a usable file path ({e})") from e
        if not is_file:
            what = "a directory, not a JSONL file" if self.path.is_dir() else "no JSONL file"
            raise ConfigError(f"{what} at {self.path}")
        self.name = f"jsonl:{self.path}"
        self._items: list[Item] = []
        seen: set[str] = set()
        for index, (n, row) in enumerate(_read_jsonl(self.path)):
            for key in ("question", "answer"):
                if key not in row:
                    raise ConfigError(
                        f"{self.path}:{n}: {key!r} is missing; each line needs 'question' (string) and "
                        f"'answer' (string or number), optionally 'id' (string or integer); got keys {sorted(row)}"
                    )
            question, answer = row["question"], row["answer"]
            if not isinstance(question, str) or not question.strip():
                raise ConfigError(f"{self.path}:{n}: 'question' must be a non-empty string, got {_short(question)}")
            if isinstance(answer, bool) or not isinstance(answer, str | int | float) or str(answer).strip() == "":
                raise ConfigError(
                    f"{self.path}:{n}: 'answer' must be a non-empty string or a number, got {_short(answer)}"
                )
            if isinstance(answer, float) and not math.isfinite(answer):
                raise ConfigError(f"{self.path}:{n}: 'answer' must be a finite number, got {answer!r}")
            if "id" in row:
                rid = row["id"]
                if (
                    isinstance(rid, bool)
                    or not isinstance(rid, str | int)
                    or (isinstance(rid, str) and not rid.strip())
                ):
                    raise ConfigError(
                        f"{self.path}:{n}: 'id' must be a non-empty string or an integer, got {_short(rid)}"
                    )
            item_id = str(row["id"]) if "id" in row else f"jsonl:{self.path.stem}:{index}"
            if item_id in seen:
                raise ConfigError(f"{self.path}:{n}: duplicate id {item_id!r}")
            seen.add(item_id)
            extra = {k: v for k, v in row.items() if k not in ("id", "question", "answer")}
            gold = str(answer)
            self._items.append(
                Item(
                    item_id,
                    question,
                    normalize_answer(gold) or gold,
                    {**extra, "gold_raw": gold, "line": n},
                )
            )
        if not self._items:
            raise ConfigError(f"{self.path} holds no rows")

    def __len__(self) -> int:
        return len(self._items)

    def items(self, limit: int | None = None, offset: int = 0) -> list[Item]:
        """Items ``offset .. offset + limit``; see :class:`Dataset`."""
        return [self._items[i] for i in _window(len(self._items), limit, offset)]

    def score(self, pred_text_or_answer: str | None, item: Item) -> bool:
        """Whether the output's final answer equals the gold; see :class:`Dataset`."""
        return _score_scalar(pred_text_or_answer, [item.answer])


DatasetFactory = Callable[..., Dataset]

DATASETS: dict[str, DatasetFactory] = {
    "gsm_symbolic": GSMSymbolic,
    "basic_arithmetic": BasicArithmetic,
    "chain_sum": ChainSum,
    "evals": EvalsJSONL,
    "jsonl": JSONLDataset,
    "rg": ReasoningGym,
}
"""Name (or prefix) -> factory. Add an entry to make ``load_dataset`` know your own."""

# Prefixes whose first ``:`` field is a positional argument, and its keyword.
_POSITIONAL = {"evals": "task", "jsonl": "path", "rg": "family"}


def _valid_names() -> list[str]:
    """Every form of name :func:`load_dataset` accepts, for error messages."""
    names = []
    for key in DATASETS:
        if key == "evals":
            names += [f"evals:{t}" for t in EVALS_TASKS]
        elif key == "jsonl":
            names.append("jsonl:/path/to/file.jsonl")
        elif key == "rg":
            names.append("rg:<reasoning-gym family>[:seed=N,...]")
        else:
            names.append(f"{key}[:seed=N,size=N]")
    return names


def _parse_value(text: str) -> Any:
    """``"7"`` -> 7, ``"0.5"`` -> 0.5, ``"true"`` -> True, else the text (``"nan"``, ``"inf"`` stay text)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
    return {"true": True, "false": False}.get(text.lower(), text)


def _parse_options(text: str, name: str) -> dict[str, Any]:
    """``"seed=7,size=100"`` -> ``{"seed": 7, "size": 100}``."""
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(
                f"bad option {part!r} in dataset name {name!r}; write key=value, e.g. 'gsm_symbolic:seed=7'"
            )
        options[key.strip()] = _parse_value(value.strip())
    return options


def load_dataset(name: str, **kw: Any) -> Dataset:
    """Build a dataset from its name.

    Names: ``gsm_symbolic``, ``basic_arithmetic``, ``chain_sum`` (options after a
    colon: ``gsm_symbolic:seed=7,size=100``); ``evals:<task>`` (e.g.
    ``evals:linear_equations``); ``jsonl:<path>``; ``rg:<family>[:options]`` for
    any other reasoning-gym family. Keyword arguments are passed on too.

    Args:
        name: the dataset name, as above.
        **kw: more arguments for the factory (``seed=7``, ``size=100``).

    Example:
        >>> ds = load_dataset("gsm_symbolic:seed=7", size=20)
        >>> ds.name, len(ds.items(limit=5))
        ('gsm_symbolic:seed=7', 5)
    """
    if not isinstance(name, str):
        raise ConfigError(f"a dataset name is a string such as 'gsm_symbolic:seed=7', got {name!r}")
    prefix, _, rest = name.strip().partition(":")
    factory = DATASETS.get(prefix)
    if factory is None:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(_valid_names())}")
    if prefix == "jsonl":
        if not rest.strip():
            raise ConfigError(f"dataset {name!r} needs a file path: 'jsonl:/path/to/file.jsonl'")
        options: dict[str, Any] = {"path": rest}
    elif prefix in _POSITIONAL:
        arg, _, opts = rest.partition(":")
        if not arg:
            raise ConfigError(f"dataset {name!r} needs an argument; valid names: {', '.join(_valid_names())}")
        options = {_POSITIONAL[prefix]: arg, **_parse_options(opts, name)}
    else:
        options = _parse_options(rest, name)
    clash = set(options) & set(kw)
    if clash:
        raise ConfigError(f"{sorted(clash)} given both in the name {name!r} and as keywords; give each once")
    options.update(kw)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as e:
        raise ConfigError(f"dataset {prefix!r} does not take {options}: {e}; {_allowed_options(factory)}") from e
    return factory(**options)


def _allowed_options(factory: Any) -> str:
    """What options a factory takes, for error messages."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return "see its documentation"
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    more = any(p.kind == p.VAR_KEYWORD for p in params)
    text = f"it takes {', '.join(named) or 'no options'}"
    return text + (" and the reasoning_gym config fields of its family" if more else "")


def _rg_options(config_cls: Any) -> str:
    """``name: type`` of a reasoning_gym config dataclass (seed and size are ours)."""
    fields = [f for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")]
    return ", ".join(f"{f.name}: {getattr(f.type, '__name__', f.type)}" for f in fields) or "none"


def _check_rg_config(family: str, config_cls: Any, config: dict[str, Any]) -> None:
    """Unknown keys and plainly mistyped values of a reasoning_gym config, as a ConfigError listing the fields."""
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise ConfigError(
            f"reasoning_gym {family!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {_rg_options(config_cls)} (plus seed and size)"
        )
    for key, value in config.items():
        want: Any = fields[key].type
        want = {"int": int, "float": float, "bool": bool, "str": str}.get(want, want) if isinstance(want, str) else want
        ok = {
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            bool: isinstance(value, bool),
            str: isinstance(value, str),
        }.get(want, True)
        if not ok:
            raise ConfigError(
                f"reasoning_gym {family!r}: option {key} must be {want.__name__}, got {value!r}; "
                f"its options: {_rg_options(config_cls)}"
            )
        limit = RG_OPTION_LIMITS.get(key)
        if limit is not None and isinstance(value, int) and value > limit:
            raise ConfigError(f"reasoning_gym {family!r}: option {key} must be at most {limit}, got {value}")
