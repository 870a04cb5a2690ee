"""Carries a long CPU training run (a paper row of ml-1m: hours per epoch) from one machine to the next in git.

``runs/`` is not committed, and a working machine is replaced between sessions: without this, every session
restarts a row from scratch. ``save`` packs what a resume needs from the run folder into a committed folder
(default ``benchmarks/checkpoints/<dataset>/<row>``), one ``<stage>/<name>.tar.xz`` per carried folder, replacing
its previous content; ``restore`` unpacks them into a fresh checkout's run folder, never over a folder it already
has. What is carried, per stage (``item`` / ``user``; ``--stages`` narrows it): a finished ``final`` model, else
the newest complete Trainer checkpoint and the best validated one before it (``GLTATrainer`` ends a resumed stage on
its best state overall).

Small, because the working tree is what a GPU session's device calls carry (``benchmarks/gpu/carry.py``: 64 MiB a
call): xz-compressed (a 20 MB ``final`` packs to ~4.5 MB), and left behind are ``training_args.bin`` (a pickle the
Trainer never reads back), the remote-code copies of ``glta_hf``'s modules (``*.py``: the package loads the folder
without them, and committed they would be stale twins of the library), in a checkpoint also the tokenizer and user
table (a resume reads weights, optimizer, scheduler, RNG and trainer state only; 17 of its 20 MB), and the prefix
store (GBs; recomputed on the next machine, the same numbers). Each packed folder was checked against its manifest
first and gets a manifest of what it holds. A GLTA checkpoint holds only what the method trains (projectors, head,
slots) and the tables it serves with; the optimizer, scheduler and RNG files are read back by
``transformers.Trainer`` with ``torch.load(weights_only=True)``.

    python benchmarks/quality/carry_run.py save runs/ml-1m/paper/glta benchmarks/checkpoints/ml-1m/glta
    python benchmarks/quality/carry_run.py restore benchmarks/checkpoints/ml-1m/glta runs/ml-1m/paper/glta
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path
from typing import List, Optional

from glta_hf.checkpoint import MANIFEST_NAME, verify_manifest, write_manifest
from glta_hf.io_utils import output_lock
from glta_hf.pipeline import checkpoint_problem, checkpoint_step, last_complete_checkpoint, stage_done

STAGES = ("item", "user")
LEFT_BEHIND = {"training_args.bin"}
#: what a Trainer checkpoint (not a ``final`` model) also leaves behind: a resume does not read them
NOT_FOR_RESUME = {"user_table.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                  "special_tokens_map.json", "README.md"}
ARCHIVE = ".tar.xz"


def best_checkpoint(newest: Path) -> Optional[Path]:
    """The best validated checkpoint as ``newest``'s trainer state names it (the Trainer's own record, which its
    rotation protects); None when it is step 0 (no checkpoint: rebuilt as the run first built it) or ``newest``."""
    state = json.loads((newest / "trainer_state.json").read_text(encoding="utf-8"))
    step = state.get("best_global_step")
    if step is None and state.get("best_model_checkpoint"):  # transformers releases before best_global_step
        step = checkpoint_step(Path(state["best_model_checkpoint"]))
    best = newest.parent / f"checkpoint-{step}"
    return best if step and best != newest and checkpoint_problem(best) is None else None


def carried_folders(run_dir: Path, stages=STAGES) -> List[Path]:
    """The folders of ``run_dir`` a resume on another machine needs (relative paths)."""
    folders = []
    for stage in stages:
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


def _reproducible(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """No time or owner in the archive: an unchanged folder packs to the same bytes (git stores it once, however
    often a run is saved)."""
    member.mtime, member.uid, member.gid, member.uname, member.gname = 0, 0, 0, "", ""
    return member


def _pack(source: Path, archive: Path) -> None:
    """``source`` (checked against its manifest) packed into ``archive`` (written beside, swapped in when complete)
    without what is left behind; the packed folder's manifest lists what it holds."""
    if (source / MANIFEST_NAME).is_file():
        verify_manifest(source)
    skip = set(LEFT_BEHIND) | (set() if source.name == "final" else NOT_FOR_RESUME)
    staging = archive.with_name(archive.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging / source.name,
                    ignore=lambda _dir, names: [n for n in names if n in skip or n.endswith(".py")])
    if (source / MANIFEST_NAME).is_file():
        write_manifest(staging / source.name)
    packed = archive.with_name(archive.name + ".tmp")
    with tarfile.open(packed, "w:xz") as tar:
        tar.add(staging / source.name, arcname=source.name, filter=_reproducible)
    shutil.rmtree(staging)
    packed.replace(archive)


def save(run_dir: Path, carry_dir: Path, stages=STAGES, attempts: int = 3) -> List[Path]:
    """Replace ``carry_dir``'s content with the folders :func:`carried_folders` names, packed; returns them. A
    training run may be saving meanwhile: a checkpoint its rotation deletes under the copy is looked up again.
    One save per ``carry_dir`` at a time (its writer lock): a second one, e.g. by hand while ``paper_rows.sh``
    saves at a stage's end, is an ``OutputLockedError`` naming the first, not two copies into one staging folder."""
    with output_lock(carry_dir):
        return _save(run_dir, carry_dir, stages, attempts)


def _save(run_dir: Path, carry_dir: Path, stages, attempts: int) -> List[Path]:
    for attempt in range(attempts):
        folders = carried_folders(run_dir, stages)
        if not folders:
            raise SystemExit(f"carry_run.py save: {run_dir} has no finished stage and no complete checkpoint to carry")
        try:
            for folder in folders:
                (carry_dir / folder.parent).mkdir(parents=True, exist_ok=True)
                _pack(run_dir / folder, carry_dir / folder.parent / (folder.name + ARCHIVE))
            break
        except FileNotFoundError:
            if attempt + 1 == attempts:
                raise
    keep = {carry_dir / folder.parent / (folder.name + ARCHIVE) for folder in folders}
    for stage in STAGES:  # packs of earlier checkpoints, of a stage now finished or not asked for, go
        for old in (carry_dir / stage).glob("*") if (carry_dir / stage).is_dir() else ():
            if old not in keep:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    return folders


def restore(carry_dir: Path, run_dir: Path) -> List[Path]:
    """Unpack each carried folder into ``run_dir`` where the run folder lacks it; returns those unpacked."""
    unpacked = []
    for stage in STAGES:
        packs = sorted((carry_dir / stage).glob("*" + ARCHIVE)) if (carry_dir / stage).is_dir() else ()
        for archive in packs:
            name = archive.name[: -len(ARCHIVE)]
            target = run_dir / stage / name
            if target.exists():
                continue
            staging = run_dir / stage / (name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            with tarfile.open(archive, "r:xz") as tar:
                tar.extractall(staging, filter="data")  # plain files inside the folder only
            (staging / name).rename(target)
            staging.rmdir()
            unpacked.append(Path(stage) / name)
    return unpacked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("save", "restore"))
    parser.add_argument("source", type=Path, help="save: the run folder; restore: the carried folder")
    parser.add_argument("target", type=Path, help="save: the carried folder; restore: the run folder")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="save: the stages to carry (default both; 'item' keeps a finished row's item stage, "
                             "which other rows start from)")
    args = parser.parse_args(argv)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    if not stages or set(stages) - set(STAGES):
        parser.error(f"--stages: some of {STAGES}, got {args.stages!r}")
    if not args.source.is_dir():
        if args.action == "restore":
            print(f"carry_run.py: nothing carried at {args.source}")
            return 0
        parser.error(f"{args.source}: no such folder")
    done = save(args.source, args.target, stages) if args.action == "save" else restore(args.source, args.target)
    print(f"carry_run.py {args.action}: {', '.join(map(str, done)) or 'nothing new'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
