"""Checks for the files and folders the commands read and write, as library errors.

A user mistake with a path (a directory where a file is expected, a prompt
file that is not UTF-8, an output in a folder that cannot be written) is a
:class:`~l2reason.errors.ConfigError` naming the option and the path, raised
before any model work, never an ``OSError`` or ``UnicodeDecodeError`` traceback.

Example:
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "prompts.txt"
    >>> _ = p.write_text("2 + 2?\\n")
    >>> read_text_file(p, "--prompts")
    '2 + 2?\\n'
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from l2reason.errors import ConfigError

__all__ = ["MAX_TEXT_BYTES", "check_output_dir", "check_output_file", "json_depth", "parse_json", "read_text_file"]

MAX_TEXT_BYTES = 256 * 2**20
"""Largest text input file read whole (prompt lists are far smaller)."""


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


@contextmanager
def _usable_path(p: Path, what: str) -> Iterator[None]:
    """Turn a path that the OS cannot take (``ValueError``: an embedded NUL byte) into a ConfigError naming it."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{what} {str(p)!r} is not a usable path ({e})") from e


def _check_parent(path: Path, what: str) -> None:
    """The folder that will hold ``path`` can be created and written."""
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise ConfigError(f"{what} {path}: {anchor} is a file, not a folder; pick another path")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: the folder {anchor} is not writable; pick a path you can write to")


def read_text_file(path: str | os.PathLike[str], what: str) -> str:
    """The text of a UTF-8 file (a leading BOM is dropped).

    Args:
        path: the file.
        what: how messages name it (``"--prompts file"``).

    Returns:
        The decoded text.

    Raises:
        ConfigError: missing, a directory or other non-regular file, larger
            than :data:`MAX_TEXT_BYTES`, unreadable, or not UTF-8 (the message
            gives the line).
    """
    p = Path(path)
    try:
        with _usable_path(p, what):
            if not p.exists():
                raise ConfigError(f"{what} {p} does not exist")
            if p.is_dir():
                raise ConfigError(f"{what} {p} is a directory; give a text file")
            if not p.is_file():
                raise ConfigError(f"{what} {p} is not a regular file; give a text file")
            size = p.stat().st_size
            if size > MAX_TEXT_BYTES:
                raise ConfigError(f"{what} {p} is {size} bytes; text inputs are read whole, at most {MAX_TEXT_BYTES}")
            data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {p}: {e.strerror or e}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} {p} is not UTF-8 text (byte {data[e.start]:#04x} on line {line}); save it as UTF-8"
        ) from e


def check_output_file(path: str | os.PathLike[str], what: str, suffixes: Sequence[str] | None = None) -> Path:
    """Check, before any work, that a file can be written at ``path``.

    Args:
        path: the file to write (replaced if it exists).
        what: how messages name it (``"--out"``).
        suffixes: allowed extensions (``[".png", ".svg"]``); None = any.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``path`` is a directory, a parent is a file, the folder
            is not writable, or the extension is not allowed.
    """
    p = Path(path)
    with _usable_path(p, what):
        if p.is_dir():
            raise ConfigError(f"{what} {p} is a directory; give a file name (e.g. {p / 'out'}{(suffixes or [''])[0]})")
        if suffixes is not None and p.suffix.lower() not in {s.lower() for s in suffixes}:
            raise ConfigError(f"{what} {p}: the extension must be one of {', '.join(suffixes)}, got {p.suffix!r}")
        if p.exists() and not os.access(p, os.W_OK):
            raise ConfigError(f"{what} {p} exists and is not writable")
        _check_parent(p, what)
    return p


def check_output_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Check, before any work, that ``path`` is (or can become) a writable folder.

    Args:
        path: the folder (created later if missing).
        what: how messages name it (``"--out"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``path`` is an existing file, a parent is a file, or the
            folder (or the one that will hold it) is not writable.
    """
    p = Path(path)
    with _usable_path(p, what):
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{what} {p} is a file, not a folder; give a folder path (it is created if missing)")
        if p.is_dir():
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"{what} {p} is not writable; pick a folder you can write to")
        else:
            _check_parent(p, what)
    return p


def json_depth(obj: Any, cap: int) -> int:
    """How deeply lists and dicts nest in parsed JSON, counted up to ``cap + 1`` (iterative: no recursion limit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict | list):
            deepest = max(deepest, d)
            if d <= cap:
                stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return deepest


def parse_json(
    text: str,
    where: str,
    fix: str,
    *,
    error: type[Exception] = ConfigError,
    want_object: bool = True,
    max_depth: int = 64,
) -> Any:
    """The JSON value in ``text``, read strictly: the one reader of every JSON input the library takes.

    Args:
        text: the decoded text (a file, or one line of a JSONL file).
        where: how messages name it (``"calibration file cal.json"``, ``"mine.jsonl:3"``).
        fix: what the user should do, appended to every message.
        error: the library error to raise (a :class:`ConfigError` subclass).
        want_object: refuse anything but a JSON object.
        max_depth: refuse lists and objects nested deeper than this.

    Raises:
        error: ``NaN``/``Infinity`` (not JSON), invalid JSON (a torn write), an
            integer too long to convert, nesting too deep, or not an object.

    Example:
        >>> parse_json('{"a": 1}', "x.json", "fix it")
        {'a': 1}
        >>> parse_json('{"a": NaN}', "x.json", "fix it")
        Traceback (most recent call last):
        ...
        l2reason.errors.ConfigError: x.json holds NaN, which is not a JSON value; fix it
    """

    def _constant(name: str) -> Any:
        raise error(f"{where} holds {name}, which is not a JSON value; {fix}")

    try:
        obj = json.loads(text, parse_constant=_constant)
    except error:
        raise
    except json.JSONDecodeError as e:
        raise error(f"{where} is not valid JSON ({e}); {fix}") from e
    except RecursionError as e:
        raise error(f"{where} is nested too deeply to read; {fix}") from e
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise error(f"{where} is not usable JSON ({str(e)[:120]}); {fix}") from e
    if want_object and not isinstance(obj, dict):
        raise error(f"{where} holds a JSON {type(obj).__name__}, not an object; {fix}")
    if json_depth(obj, max_depth) > max_depth:
        raise error(f"{where} is nested more than {max_depth} levels deep; {fix}")
    return obj
