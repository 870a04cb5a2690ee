"""Carries a long CPU training run (a paper row of ml-1m: hours per epoch) from one machine to the next in git.

``runs/`` is not committed, and a working machine is replaced between sessions: without this, every session
restarts a row from scratch. ``save`` copies what a resume needs from the run folder into a committed folder
(default ``benchmarks/checkpoints/<dataset>/<row>``), replacing its previous copy; ``restore`` copies it back into a
fresh checkout's run folder, never over a file the run folder already has. What is carried, per stage folder
(``item`` / ``user``): a finished ``final`` model, the newest complete Trainer checkpoint and the best validated one
before it (``GLTATrainer`` ends a resumed stage on its best state overall). Left behind: ``training_args.bin`` (a
pickle the Trainer never reads back), the remote-code copies of ``glta_hf``'s modules (``*.py``: the package loads
the folder without them, and committed they would be stale twins of the library; the copy's manifest lists what it
holds, after the source was checked against its own), the prefix store (GBs; recomputed on the next machine, the
same numbers).
A GLTA checkpoint holds only what the method trains (projectors, head, slots) and the tables it serves with; the
optimizer, scheduler and RNG files are read back by ``transformers.Trainer`` with ``torch.load(weights_only=True)``.

    python benchmarks/quality/carry_run.py save runs/ml-1m/paper/glta benchmarks/checkpoints/ml-1m/glta
    python benchmarks/quality/carry_run.py restore benchmarks/checkpoints/ml-1m/glta runs/ml-1m/paper/glta
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from glta_hf.checkpoint import MANIFEST_NAME, verify_manifest, write_manifest
from glta_hf.pipeline import checkpoint_problem, last_complete_checkpoint, stage_done

STAGES = ("item", "user")
LEFT_BEHIND = {"training_args.bin"}


def best_checkpoint(newest: Path) -> Optional[Path]:
    """The best validated checkpoint as ``newest``'s trainer state names it (the Trainer's own record, which its
    rotation protects); None when it is step 0 (no checkpoint: rebuilt as the run first built it) or ``newest``."""
    state = json.loads((newest / "trainer_state.json").read_text(encoding="utf-8"))
    step = state.get("best_global_step")
    if step is None and state.get("best_model_checkpoint"):  # transformers releases before best_global_step
        step = int(Path(state["best_model_checkpoint"]).name.split("-")[-1])
    best = newest.parent / f"checkpoint-{step}"
    return best if step and best != newest and checkpoint_problem(best) is None else None


def carried_folders(run_dir: Path) -> List[Path]:
    """The folders of ``run_dir`` a resume on another machine needs (relative paths)."""
    folders = []
    for stage in STAGES:
        stage_dir = run_dir / stage
        if not stage_dir.is_dir():
            continue
        if stage_done(stage_dir / "final", stage):
            folders.append(Path(stage) / "final")
            continue  # a finished stage is reused as it is: its checkpoints are not needed
        newest = last_complete_checkpoint(stage_dir)
        if newest is not None:
            newest = Path(newest)
            best = best_checkpoint(newest)
            folders += [Path(stage) / p.name for p in (best, newest) if p is not None]
    return folders


def _left_behind(_folder, names) -> List[str]:
    return [n for n in names if n in LEFT_BEHIND or n.endswith(".py")]


def _copy_folder(source: Path, target: Path) -> None:
    """``source`` copied to ``target`` (via a sibling, swapped in when complete), checked against its manifest
    first; the copy gets a manifest of what it holds."""
    if (source / MANIFEST_NAME).is_file():
        verify_manifest(source)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=_left_behind)
    if (source / MANIFEST_NAME).is_file():
        write_manifest(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def save(run_dir: Path, carry_dir: Path) -> List[Path]:
    """Replace ``carry_dir``'s copy with the folders :func:`carried_folders` names; returns them."""
    folders = carried_folders(run_dir)
    if not folders:
        raise SystemExit(f"carry_run.py save: {run_dir} has no finished stage and no complete checkpoint to carry")
    for folder in folders:
        _copy_folder(run_dir / folder, carry_dir / folder)
    keep = {carry_dir / f for f in folders}
    for stage in STAGES:  # copies of earlier checkpoints (and of a stage now finished) go
        for old in (carry_dir / stage).glob("*") if (carry_dir / stage).is_dir() else ():
            if old not in keep:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    return folders


def restore(carry_dir: Path, run_dir: Path) -> List[Path]:
    """Copy each carried folder into ``run_dir`` where the run folder lacks it; returns those copied."""
    copied = []
    for stage in STAGES:
        for folder in sorted((carry_dir / stage).glob("*")) if (carry_dir / stage).is_dir() else ():
            target = run_dir / stage / folder.name
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_folder(folder, target)
            copied.append(Path(stage) / folder.name)
    return copied


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("save", "restore"))
    parser.add_argument("source", type=Path, help="save: the run folder; restore: the carried folder")
    parser.add_argument("target", type=Path, help="save: the carried folder; restore: the run folder")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        if args.action == "restore":
            print(f"carry_run.py: nothing carried at {args.source}")
            return 0
        parser.error(f"{args.source}: no such folder")
    done = save(args.source, args.target) if args.action == "save" else restore(args.source, args.target)
    print(f"carry_run.py {args.action}: {', '.join(map(str, done)) or 'nothing new'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
