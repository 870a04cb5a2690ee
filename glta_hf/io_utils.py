"""Crash-safe file writing and safe reading.

Every artifact the package writes goes to a temporary file in the destination folder and is renamed into
place (``os.replace`` is atomic on POSIX), so a reader never sees a half-written file and a job killed at
any moment leaves either the old file or the new one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional



def _current_umask() -> int:
    """The process umask: from ``/proc/self/status`` on Linux (no side effect), else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """Yield a temporary sibling path of ``path``; on success fsync it and rename it onto ``path``, else delete it.

    ``mkstemp`` creates the file with mode 0600; it is widened to what ``open(path, "w")`` would give
    (``0666 & ~umask``), so a saved model is as readable by other users / containers as any other saved file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # after writing: some writers (safetensors) recreate the file
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", encoding: Optional[str] = "utf-8") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and rename it onto ``path``."""
    binary = "b" in mode
    with _replacing(Path(path)) as tmp:
        with open(tmp, mode, encoding=None if binary else encoding) as handle:
            yield handle


def write_json(path, obj: Any, indent: int = 2) -> None:
    """Atomically write ``obj`` as JSON (keys in insertion order, UTF-8, trailing newline)."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=indent, ensure_ascii=False)
        handle.write("\n")


def read_json(path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_safetensors(tensors: Dict[str, "torch.Tensor"], path, metadata: Optional[Dict[str, str]] = None) -> None:  # noqa: F821
    """Atomically save tensors (made contiguous) as safetensors."""
    from safetensors.torch import save_file

    with _replacing(Path(path)) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def load_safetensors(path) -> Dict[str, "torch.Tensor"]:  # noqa: F821
    """Load a safetensors file on CPU (no pickle is ever involved)."""
    from safetensors.torch import load_file

    return load_file(os.fspath(path), device="cpu")
