"""Store and restore the pre-registered run between sessions (PLAN.md, amendment 1).

The run folder ``run/`` is git-ignored (about 0.6 MB of norms per item). At the end of a session,
``store`` appends every *complete* line written since the last stored part of each file to a new
xz-compressed part under ``parts/`` (split below GitHub's 50 MB file limit); the next session runs
``restore`` before resuming with the identical command. Both copy bytes: neither parses a line nor
reads any field, so neither is a look at the results.

Usage (from the repository root)::

    python docs/results/preregistered_1.5b/parts.py store     # end of a session
    python docs/results/preregistered_1.5b/parts.py restore   # start of the next, before resuming
    python docs/results/preregistered_1.5b/parts.py status    # lines stored vs on disk, per file
"""

# ruff: noqa: T201  (a script: it prints what it did)
from __future__ import annotations

import argparse
import lzma
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN, PARTS = HERE / "run", HERE / "parts"
CHUNK = 40 * 2**20  # raw bytes per part at most, so every part file stays below GitHub's 50 MB limit
NL = b"\n"


def _parts(rel: str) -> list[Path]:
    return sorted(PARTS.glob(f"{rel}.*.xz"))


def _stored_bytes(rel: str) -> int:
    return sum(len(lzma.decompress(p.read_bytes())) for p in _parts(rel))


def _write_part(rel: str, n: int, data: bytes) -> None:
    out = PARTS / f"{rel}.{n:03d}.xz"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(lzma.compress(data, preset=6))


def _files() -> list[str]:
    return sorted(str(p.relative_to(RUN)) for p in RUN.rglob("*") if p.is_file())


def store() -> None:
    """Append the complete lines since the last part of every file in ``run/`` as new parts."""
    for rel in _files():
        data = (RUN / rel).read_bytes()
        if not rel.endswith(".jsonl"):  # small JSON files (config, rates) are stored whole
            out = PARTS / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            continue
        done = _stored_bytes(rel)
        if len(data) < done:
            sys.exit(f"error: run/{rel} is shorter than its stored parts; restore before storing")
        new = data[done : data.rfind(b"\n") + 1] if b"\n" in data[done:] else b""
        if not new:
            continue
        n, group = len(_parts(rel)), b""
        for line in new.splitlines(keepends=True):  # groups of < CHUNK raw bytes: each part compresses below it
            if group and len(group) + len(line) > CHUNK:
                _write_part(rel, n, group)
                n, group = n + 1, b""
            group += line
        _write_part(rel, n, group)
        print(f"stored run/{rel}: {new.count(NL)} new lines ({len(new) / 2**20:.1f} MiB)")


def restore() -> None:
    """Rebuild ``run/`` from ``parts/`` (refuses to overwrite a run folder that holds more than the parts)."""
    for whole in (p for p in PARTS.rglob("*") if p.is_file() and p.suffix != ".xz"):
        target = RUN / whole.relative_to(PARTS)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(whole.read_bytes())
    rels = sorted({str(p.relative_to(PARTS)).rsplit(".", 2)[0] for p in PARTS.rglob("*.xz")})
    for rel in rels:
        data = b"".join(lzma.decompress(p.read_bytes()) for p in _parts(rel))
        target = RUN / rel
        if target.exists() and target.stat().st_size > len(data):
            sys.exit(f"error: run/{rel} holds more than its stored parts; store it instead of restoring")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        print(f"restored run/{rel}: {data.count(NL)} lines")


def status() -> None:
    for rel in _files():
        if not rel.endswith(".jsonl"):
            continue
        on_disk = (RUN / rel).read_bytes().count(b"\n")
        stored = sum(lzma.decompress(p.read_bytes()).count(b"\n") for p in _parts(rel))
        print(f"run/{rel}: {on_disk} lines on disk, {stored} stored")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["store", "restore", "status"])
    {"store": store, "restore": restore, "status": status}[ap.parse_args().command]()
