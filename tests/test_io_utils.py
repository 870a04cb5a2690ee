"""io_utils: atomic writes leave files with the permissions a plain ``open(path, "w")`` gives (the umask's)."""
import os
import stat

import pytest
import torch

from glta_hf.io_utils import atomic_write, save_safetensors, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        with open(plain, "w") as handle:
            handle.write("x")
        write_json(tmp_path / "a.json", {"a": 1})
        with atomic_write(tmp_path / "b.txt") as handle:
            handle.write("b")
        with atomic_write(tmp_path / "c.bin", "wb") as handle:
            handle.write(b"c")
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert _mode(plain) == expected
    for name in ("a.json", "b.txt", "c.bin", "model.safetensors"):
        assert _mode(tmp_path / name) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "c.bin", "model.safetensors",
                                                          "plain.txt"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_json(tmp_path / "a.json", {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "a.json") as handle:
            handle.write("{broken")
            raise RuntimeError("killed")
    assert (tmp_path / "a.json").read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_full_disk_is_an_error_naming_the_file(tmp_path, monkeypatch):
    """Issue 25: a full disk gave a traceback that did not name the file being written."""
    import errno

    from glta_hf.errors import GLTAError, OutputWriteError

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputWriteError, match=r"cannot write .*a\.json: No space left on device") as err:
        write_json(tmp_path / "a.json", {"a": 1})
    assert isinstance(err.value, GLTAError) and isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_a_checkpoint_save_on_a_full_disk_names_the_folder_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    from conftest import build_tiny

    from glta_hf.checkpoint import verify_manifest
    from glta_hf.configuration_glta import GLTAConfig
    from glta_hf.errors import OutputWriteError

    tiny = build_tiny(tmp_path)
    tiny.model.save_pretrained(tmp_path / "ckpt")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "config.json")

    monkeypatch.setattr(GLTAConfig, "save_pretrained", full)
    with pytest.raises(OutputWriteError, match=r"cannot write .*ckpt \(config.json\): No space left"):
        tiny.model.save_pretrained(tmp_path / "ckpt")
    assert verify_manifest(tmp_path / "ckpt")
