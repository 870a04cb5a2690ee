"""Atomic, verified checkpoints (issue 25, item 1): a save is swapped in whole, a kill at any point of it leaves the
old or the new checkpoint complete and verified, the manifest catches any changed byte before the LLM loads,
non-finite weights are refused, and a folder saved before manifests still loads (with one warning)."""
import json
import logging
import os
import shutil

import pytest
import torch
from conftest import build_tiny

import glta_hf.io_utils as io_utils
import glta_hf.modeling_glta as modeling
from glta_hf import CheckpointError, GLTAForRecommendation
from glta_hf.checkpoint import MANIFEST_NAME, WEIGHTS_NAME, file_sha256, verify_manifest
from glta_hf.io_utils import recover_folder, replacing_folder, save_safetensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("atomic"))


@pytest.fixture
def no_llm(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the LLM was loaded before the checkpoint files were checked")

    monkeypatch.setattr(modeling, "load_llm", refuse)


def _with_slots(model, value: float):
    with torch.no_grad():
        model.slot_embeddings.fill_(value)
    return model


def _weights_digest(folder) -> str:
    return file_sha256(folder / WEIGHTS_NAME)


def test_save_writes_a_manifest_of_every_file_and_no_staging_folder(tiny, tmp_path):
    folder = tmp_path / "ckpt"
    tiny.model.save_pretrained(folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    listed = set(manifest["files"])
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert listed == on_disk - {MANIFEST_NAME, "README.md"}
    assert manifest["files"][WEIGHTS_NAME]["sha256"] == _weights_digest(folder)
    assert verify_manifest(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # the sibling staging folder is gone


def test_resave_replaces_the_checkpoint_whole_and_keeps_foreign_entries(tiny, tmp_path):
    folder = tmp_path / "ckpt"
    tiny.model.save_pretrained(folder)
    (folder / "work").mkdir()
    (folder / "work" / "texts.jsonl").write_text("kept\n")
    (folder / "user_table.json").write_text("{}")  # a checkpoint file the next save does not write: not carried
    tiny.model.has_user_table, had = False, tiny.model.has_user_table
    try:
        tiny.model.save_pretrained(folder)
    finally:
        tiny.model.has_user_table = had
    assert (folder / "work" / "texts.jsonl").read_text() == "kept\n"
    assert not (folder / "user_table.json").exists()
    assert verify_manifest(folder)


def test_a_failing_save_leaves_the_previous_checkpoint_untouched(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    _with_slots(tiny.model, 1.0).save_pretrained(folder)
    before = _weights_digest(folder)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modeling, "write_json", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _with_slots(tiny.model, 2.0).save_pretrained(folder)
    assert _weights_digest(folder) == before and verify_manifest(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


_FS_CALLS = ("replace", "rename", "link", "fsync", "unlink", "mkdir")


def _save_killed_at(model, folder, step: int) -> int:
    """Save ``model`` into ``folder`` in a forked child that dies (``os._exit``: no cleanup, like SIGKILL) at its
    ``step``-th file-system call; returns 0 when the save finished before that, else -1. ``step=0``: no kill, returns
    the number of file-system calls the save made."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        count = [0]

        def counting(original):
            def call(*args, **kwargs):
                count[0] += 1
                if count[0] == step:
                    os._exit(9)
                return original(*args, **kwargs)
            return call

        for name in _FS_CALLS:
            setattr(os, name, counting(getattr(os, name)))
        io_utils._exchange = counting(io_utils._exchange)
        shutil.rmtree = counting(shutil.rmtree)
        try:
            model.save_pretrained(folder)
        except BaseException:
            os._exit(3)
        os.write(write_end, str(count[0]).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        calls = pipe.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the save failed in the child (exit {code})"
    return -1 if code == 9 else (int(calls) if step == 0 else 0)


def _kill_points(total: int, exhaustive: bool):
    """Every call, or a spread over the writes plus each of the last calls (the swap and its clean-up)."""
    if exhaustive:
        return list(range(1, total + 1))
    return sorted(set(range(1, total, max(1, total // 4))) | set(range(max(1, total - 6), total + 1)))


@pytest.mark.parametrize("exhaustive", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["spread", "every-call"])
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_kill_at_any_point_of_a_save_leaves_the_old_or_the_new_checkpoint(tiny, tmp_path, monkeypatch, exchange,
                                                                            exhaustive):
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    if not exchange:
        monkeypatch.setattr(io_utils, "_exchange", lambda a, b: False)
    folder = tmp_path / "ckpt"
    reference = tmp_path / "reference-new"
    _with_slots(tiny.model, 2.0).save_pretrained(reference)
    new_digest = _weights_digest(reference)
    shutil.rmtree(reference)
    _with_slots(tiny.model, 1.0).save_pretrained(folder)
    old_digest = _weights_digest(folder)
    shutil.copytree(folder, tmp_path / "counted")
    total = _save_killed_at(_with_slots(tiny.model, 2.0), tmp_path / "counted", 0)  # a re-save's calls
    shutil.rmtree(tmp_path / "counted")
    seen = []
    for step in _kill_points(total, exhaustive):
        _with_slots(tiny.model, 1.0).save_pretrained(folder)
        _save_killed_at(_with_slots(tiny.model, 2.0), folder, step)
        recover_folder(folder)  # what the next save or from_pretrained does first
        assert verify_manifest(folder), step
        digest = _weights_digest(folder)
        assert digest in (old_digest, new_digest), step
        seen.append("new" if digest == new_digest else "old")
    assert seen[0] == "old" and seen[-1] == "new"  # the kills landed before and after the swap
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_first_save_killed_before_its_swap_leaves_nothing_half_written(tiny, tmp_path):
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    folder = tmp_path / "ckpt"
    _save_killed_at(tiny.model, folder, 5)
    recover_folder(folder)
    assert not folder.exists() and list(tmp_path.iterdir()) == []


def test_from_pretrained_completes_a_swap_cut_between_its_two_renames(tiny, tmp_path, no_llm):
    folder = tmp_path / "ckpt"
    tiny.model.save_pretrained(folder)
    os.rename(folder, tmp_path / ".ckpt.glta-old")
    shutil.copytree(tmp_path / ".ckpt.glta-old", tmp_path / ".ckpt.glta-new")
    with pytest.raises(AssertionError, match="the LLM was loaded"):  # got as far as the LLM: the files were fine
        GLTAForRecommendation.from_pretrained(folder)
    assert folder.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap_in_other_weights", "drop"])
def test_the_manifest_names_a_damaged_file_before_the_llm_loads(tiny, tmp_path, no_llm, damage):
    folder = tmp_path / "ckpt"
    _with_slots(tiny.model, 1.0).save_pretrained(folder)
    path = folder / WEIGHTS_NAME
    raw = path.read_bytes()
    if damage == "flip":  # a data byte: the header stays valid, only the checksum can tell
        path.write_bytes(raw[:-5] + bytes([raw[-5] ^ 0x10]) + raw[-4:])
    elif damage == "truncate":
        path.write_bytes(raw[:-4])
    elif damage == "swap_in_other_weights":  # the kill: new weights beside the old record
        _with_slots(tiny.model, 2.0).save_pretrained(tmp_path / "other")
        shutil.copy(tmp_path / "other" / WEIGHTS_NAME, path)
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_NAME}: .*(checksum|bytes|missing)"):
        GLTAForRecommendation.from_pretrained(folder)


def test_overwritten_data_bytes_and_non_finite_weights_are_refused(tiny, tmp_path, no_llm):
    """The issue's probe: the data bytes of model.safetensors overwritten (header intact) served NaN scores."""
    folder = tmp_path / "ckpt"
    tiny.model.save_pretrained(folder)
    state = {k: v.clone() for k, v in tiny.model.glta_state_dict().items()}
    name = next(k for k in state if k.endswith("slot_embeddings"))
    state[name][0, 0] = float("nan")
    save_safetensors(state, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="checksum"):
        GLTAForRecommendation.from_pretrained(folder)
    (folder / MANIFEST_NAME).unlink()  # without the manifest, the finiteness check still refuses it
    with pytest.raises(CheckpointError, match=r"slot_embeddings.*NaN or infinite"):
        GLTAForRecommendation.from_pretrained(folder)


def test_a_checkpoint_without_manifest_loads_with_one_warning(tiny, tmp_path, caplog):
    folder = tmp_path / "ckpt"
    tiny.model.save_pretrained(folder)
    (folder / MANIFEST_NAME).unlink()
    llm = tiny.model.llm
    with caplog.at_level(logging.WARNING, logger="glta_hf.checkpoint"):
        GLTAForRecommendation.from_pretrained(folder, llm=llm)
        GLTAForRecommendation.from_pretrained(folder, llm=llm)
    warnings = [r for r in caplog.records if MANIFEST_NAME in r.getMessage()]
    assert len(warnings) == 1 and "older glta-hf" in warnings[0].getMessage()


def test_an_edited_model_card_still_loads(tiny, tmp_path):
    folder = tmp_path / "ckpt"
    tiny.model.save_pretrained(folder)
    (folder / "README.md").write_text("# my notes\n")
    assert verify_manifest(folder)


def test_saving_through_a_symlink_replaces_its_target_and_keeps_the_link(tiny, tmp_path):
    real = tmp_path / "real"
    tiny.model.save_pretrained(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    tiny.model.save_pretrained(link)
    assert link.is_symlink() and verify_manifest(real)


def test_replacing_folder_refuses_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not a folder"):
        with replacing_folder(tmp_path / "out"):
            pass


_SAVE_FOREVER = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import build_tiny
from pathlib import Path
tiny = build_tiny(Path({scratch!r}))
value = 1.0
while True:
    with torch.no_grad():
        tiny.model.slot_embeddings.fill_(value)
    tiny.model.save_pretrained({folder!r})
    print(value, flush=True)
    value += 1.0
"""


@pytest.mark.slow
def test_sigkill_of_a_process_saving_in_a_loop_leaves_a_verified_checkpoint(tmp_path):
    """The literal bar of issue 25: ``kill -9`` of a real process in the middle of its saves, at random moments."""
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from safetensors.torch import load_file

    folder = tmp_path / "ckpt"
    script = _SAVE_FOREVER.format(tests=str(Path(__file__).parent), scratch=str(tmp_path / "scratch"),
                                  folder=str(folder))
    rng = random.Random(0)
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one save done: the folder exists
        time.sleep(rng.uniform(0.0, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        recover_folder(folder)
        assert verify_manifest(folder), attempt
        slots = next(v for k, v in load_file(str(folder / WEIGHTS_NAME)).items() if k.endswith("slot_embeddings"))
        assert float(slots.min()) == float(slots.max()) >= 1.0  # one whole save, never a mix
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
