"""The repository is self-contained: no tracked text file points outside it.

Code, docs and build files must not cite notes that live outside the
repository (the design notes the project was started from) nor absolute
paths of one machine (a home folder, a scratch or work folder): a reader of a
fresh clone cannot follow them. Cite ``docs/techniques.md`` or
``docs/design.md`` instead, and build paths from the repository root, the
cache folder (``l2reason._paths``) or ``tmp_path`` in tests.

The patterns below are assembled from pieces, so this file does not match
its own pattern list.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Notes that live outside the repository (matched as ``<NAME>.md``).
OUTSIDE_NOTES = ("TECHNIQUES", "SGLANG", "VLLM", "ARCHITECTURE", "MODELS", "STYLE")
#: Top-level folders of absolute paths that belong to one machine (matched as ``/<name>/``).
MACHINE_DIRS = ("work", "home", "root", "Users", "tmp", "opt", "mnt", "srv", "scratch", "dev")
#: Absolute paths that are fine anywhere, and why.
ALLOWED = {
    "/dev/null": "the null device exists on every POSIX machine; it names no file of ours",
}
#: Which tracked files are text to check: by suffix, and by exact path.
SUFFIXES = (".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yaml", ".yml", ".sh")
NAMES = ("Makefile",)
PATHS = (".ci/run",)

_NOTE = re.compile(r"\b(?:" + "|".join(OUTSIDE_NOTES) + r")\.md\b")
_SHARED = re.compile(re.escape("..") + "/" + "shared" + r"\b")
# An absolute path starts a token: not after a word character, a dot, "~", "$", "}" or "-"
# (so "docs/tmp/x", "~/x", "$HOME/x", "{run}/tmp" and URLs' paths do not count).
_ABS = re.compile(r"(?<![\w.~$}\-])/(?:" + "|".join(MACHINE_DIRS) + r")/[^\s\"'`)\]>,;]*")


def offences(text: str) -> list[tuple[int, str]]:
    """``(line, what)`` for every reference to something outside the repository."""
    out: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in _NOTE.finditer(line):
            out.append((lineno, f"cites {m.group(0)}, a note outside the repository"))
        for m in _SHARED.finditer(line):
            out.append((lineno, f"points at {m.group(0)}, outside the repository"))
        for m in _ABS.finditer(line):
            path = m.group(0)
            if not any(path == a or path.startswith(a + "/") for a in ALLOWED):
                out.append((lineno, f"names the absolute path {path}"))
    return out


def tracked_text_files() -> list[Path]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    names = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = []
    for rel in names.decode().split("\0"):
        p = ROOT / rel
        if rel and p.is_file() and (p.suffix in SUFFIXES or p.name in NAMES or rel in PATHS):
            files.append(p)
    return files


def test_no_tracked_file_points_outside_the_repository() -> None:
    files = tracked_text_files()
    assert any(p.name == "README.md" for p in files), "the file listing found no README.md"
    found = [
        f"{p.relative_to(ROOT)}:{line}: {what}"
        for p in files
        for line, what in offences(p.read_text(encoding="utf-8", errors="replace"))
    ]
    assert not found, "references outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("see " + "TECHNIQUES" + ".md §i", 1),
        ("``" + "/wo" + "rk/shared/notes``", 1),
        ("open('" + "/tm" + "p/out.json')", 1),
        ("path " + ".." + "/shared/x", 1),
        ("cd " + "/ho" + "me/alice/repo", 1),
        ("run > " + "/de" + "v/null 2>&1", 0),
        ("docs/tmp/x and ~/work/y and $HOME/tmp/z", 0),
        ("https://example.org/home/page", 0),
        ("see docs/techniques.md, section ERSS", 0),
        ("#!/usr/bin/env bash", 0),
    ],
)
def test_patterns(text: str, n: int) -> None:
    assert len(offences(text)) == n, offences(text)
