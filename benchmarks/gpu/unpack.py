#!/usr/bin/env python
"""Bring a GPU kit run home: unpack its ``kit_results.tar.gz`` into the repository, ready to commit.

Only files under ``benchmarks/results/``, ``benchmarks/texts/``, ``benchmarks/figures/`` and ``benchmarks/gpu/nodes/``
(LightGCN tables the kit had to train) are written (``run/``
members, the per-dataset ``tables.md``, are printed). Result JSONs get the commit the run was made from
(``--commit``, default: the ``COMMIT`` file ``carry.py prepare`` wrote for the last call): what the device's copy
records is not it (``unknown`` without a ``.git``; on 2026-12-04 the copy's ``.git`` was the session's first
commit, ``-dirty``), and is kept as ``device_commit``. A returned text cache must hold every user of the local one (the
device resumed the committed cache, so it only grows); anything else is refused.

    python benchmarks/gpu/unpack.py /work/.device/<...>/kit_results.tar.gz
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path, PurePosixPath
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = ("benchmarks/results/", "benchmarks/texts/", "benchmarks/figures/", "benchmarks/gpu/nodes/")


class UnpackError(Exception):
    """An archive member that must not be written (outside the allowed folders, or a cache that shrank)."""


def recorded_commit() -> Optional[str]:
    calls = sorted((ROOT / ".kit").glob("call*/COMMIT"))
    return calls[-1].read_text(encoding="utf-8").strip() if calls else None


def fill_commit(data: bytes, commit: Optional[str]) -> bytes:
    """A result JSON (a dict with a ``commit``) gets ``commit``, the device's value kept as ``device_commit``
    unless it was ``unknown``; anything else is returned unchanged."""
    if not commit:
        return data
    try:
        record = json.loads(data.decode("utf-8"))
    except ValueError:
        return data
    if isinstance(record, dict) and "commit" in record and record["commit"] != commit:
        if record["commit"] != "unknown":
            record["device_commit"] = record["commit"]
        record["commit"] = commit
        return (json.dumps(record, indent=2) + "\n").encode("utf-8")
    return data


def _users(data: bytes) -> set:
    return {json.loads(line)["user_idx"] for line in data.decode("utf-8").splitlines() if line.strip()}


def unpack(archive, root=ROOT, commit: Optional[str] = None) -> List[str]:
    """Write the archive's allowed members under ``root``; returns the paths written (relative)."""
    root = Path(root)
    written = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if member.isdir():
                continue
            if name.is_absolute() or ".." in name.parts or not member.isfile():
                raise UnpackError(f"{archive}: refusing member {member.name!r}")
            data = tar.extractfile(member).read()
            if str(name).startswith("run/"):
                print(f"--- {name}\n{data.decode('utf-8')}")
                continue
            if not str(name).startswith(ALLOWED):
                raise UnpackError(f"{archive}: {member.name!r} is outside {ALLOWED}")
            target = root / name
            if name.name == "texts.jsonl" and target.is_file():
                lost = _users(target.read_bytes()) - _users(data)
                if lost:
                    raise UnpackError(f"{member.name}: the returned cache lacks {len(lost)} users of the local one "
                                      f"(e.g. user_idx {sorted(lost)[0]}); not overwriting it")
            if name.suffix == ".json":
                data = fill_commit(data, commit)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append(str(name))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("archive")
    parser.add_argument("--commit", default=None, help="commit of the run (default: .kit/call<last>/COMMIT)")
    parser.add_argument("--root", default=str(ROOT), help="repository root to write into")
    args = parser.parse_args(argv)
    try:
        written = unpack(args.archive, args.root, args.commit or recorded_commit())
    except UnpackError as err:
        print(f"unpack: error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} files; review with `git status benchmarks/` and commit them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
