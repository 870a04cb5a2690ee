"""Crash-safe file writing and safe reading; one writer per output folder.

Every artifact the package writes goes to a temporary file in the destination folder and is renamed into
place (``os.replace`` is atomic on POSIX), so a reader never sees a half-written file and a job killed at
any moment leaves either the old file or the new one.

A folder whose files only make sense together (a checkpoint: weights, config, id maps, run record) is written
with :func:`replacing_folder`: into a hidden sibling ``.<name>.glta-new``, swapped in by rename only when complete
(``renameat2(RENAME_EXCHANGE)`` on Linux: one atomic step; elsewhere two renames through ``.<name>.glta-old``,
which :func:`recover_folder` completes after a kill). The previous folder stays whole until the swap.

:func:`output_lock` keeps two runs from writing into one output folder at once: a lock file ``.glta.lock``
holding the writer's pid and host; a second writer gets :class:`~glta_hf.errors.OutputLockedError`, a lock left by
a dead process on this host is taken over with a warning.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from .errors import CheckpointError, OutputLockedError, OutputWriteError

logger = logging.getLogger(__name__)


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


#: errors of the disk rather than of the program: reported as OutputWriteError naming the file being written
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _named_write_error(err: OSError, path) -> BaseException:
    if isinstance(err, OutputWriteError) or err.errno not in _WRITE_ERRNOS:
        return err
    where = f"{path} ({err.filename})" if err.filename and os.fspath(err.filename) != os.fspath(path) else f"{path}"
    return OutputWriteError(err.errno, f"cannot write {where}: {err.strerror or err}")


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """Yield a temporary sibling path of ``path``; on success fsync it and rename it onto ``path``, else delete it.

    ``mkstemp`` creates the file with mode 0600; it is widened to what ``open(path, "w")`` would give
    (``0666 & ~umask``), so a saved model is as readable by other users / containers as any other saved file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _named_write_error(err, path) from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # after writing: some writers (safetensors) recreate the file
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _named_write_error(err, path) from None
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


# ----------------------------------------------------------------------------------------------- folders


def _staging_paths(target: Path):
    return target.parent / f".{target.name}.glta-new", target.parent / f".{target.name}.glta-old"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), os.fspath(a))


def recover_folder(path) -> None:
    """Finish a :func:`replacing_folder` swap cut by a kill: ``path`` missing with both siblings present means the
    new folder was complete (it is renamed into place); a leftover old folder or an unfinished new one beside an
    existing ``path`` is deleted. A first save cut before its swap leaves no ``path`` and is deleted too."""
    target = Path(path)
    new, old = _staging_paths(target)
    if not target.exists():
        if old.is_dir() and new.is_dir():
            os.rename(new, target)
            logger.warning("%s: completed a save that was interrupted between its two renames", target)
        elif old.is_dir():
            os.rename(old, target)
            logger.warning("%s: restored the previous folder left by an interrupted save", target)
    for leftover in (new, old):
        if leftover.is_dir() and target.exists():
            shutil.rmtree(leftover, ignore_errors=True)
    if new.is_dir() and not target.exists():  # a first save killed before its swap: incomplete
        shutil.rmtree(new, ignore_errors=True)


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src`` that shares its files (hard links; copies where links are not possible)."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        for child in src.iterdir():
            _link_tree(child, dst / child.name)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


@contextlib.contextmanager
def replacing_folder(path, keep_from_old: Optional[Callable[[Path], Iterable[str]]] = None) -> Iterator[Path]:
    """Yield an empty staging folder to write ``path``'s new content into; on success swap it in (module docstring).

    ``keep_from_old(old_folder)`` names entries of the previous folder that are not part of what is being replaced
    (a quickstart's ``work/``, a lock file): they are carried into the new folder (hard links, so the previous
    folder stays whole until the swap). On an exception the staging folder is deleted and ``path`` is untouched.
    Where no sibling can be created (a read-only parent) the content is written in place, with a warning.
    """
    target = Path(os.path.realpath(path))  # a symlinked folder: its target is replaced, the link stays
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _named_write_error(err, target) from None
    recover_folder(target)
    new, old = _staging_paths(target)
    try:
        new.mkdir()
    except OSError as err:
        if not target.is_dir():
            raise
        logger.warning("%s: cannot create %s (%s); writing in place, not atomically", target, new.name, err)
        new = None
    if new is None:
        yield target
        return
    try:
        yield new
        for file in new.rglob("*"):  # what was written reaches the disk before the swap can
            if file.is_file() and not file.is_symlink():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if target.is_dir() and keep_from_old is not None:
            for name in keep_from_old(target):
                if (target / name).exists() and not (new / name).exists():
                    _link_tree(target / name, new / name)
        _fsync_dir(new)
    except BaseException as err:
        shutil.rmtree(new, ignore_errors=True)
        if isinstance(err, OSError):
            raise _named_write_error(err, target) from None
        raise
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # it holds the previous folder now
    else:
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


# ----------------------------------------------------------------------------------------------- one writer

LOCK_NAME = ".glta.lock"
_held_locks: Dict[str, int] = {}  # lock path -> nesting depth, for this process


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_lock(path: Path) -> Dict[str, Any]:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def output_lock(folder, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold ``folder``'s writer lock (``.glta.lock``: pid, host, start time) for the block; re-entrant in one process.
    ``name``: another lock file in ``folder``, for one output inside a shared folder (a text cache and its shards).

    Another live writer -> :class:`~glta_hf.errors.OutputLockedError` naming it. A lock whose pid is dead on this
    host is taken over with a warning; one from another host is never guessed dead (delete it by hand).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    key = os.path.realpath(path)
    if key in _held_locks:
        _held_locks[key] += 1
        try:
            yield path
        finally:
            _held_locks[key] -= 1
        return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            pid, host = owner.get("pid"), owner.get("host")
            if isinstance(pid, int) and host == me["host"] and not _pid_alive(pid):
                logger.warning("%s: taking over the lock of process %d on %s, which is no longer running", folder,
                               pid, host)
                path.unlink(missing_ok=True)
                continue
            if not owner:  # being written this instant, or damaged: look again
                time.sleep(0.05)
                owner = _read_lock(path)
                if not owner:
                    raise OutputLockedError(f"{folder} is locked by {path} (unreadable); if no other run writes "
                                            f"there, delete {path}") from None
            raise OutputLockedError(
                f"{folder} is being written by another run (pid {owner.get('pid')} on {owner.get('host')}, since "
                f"{owner.get('started')}); wait for it or choose another output folder (delete {path} if that run "
                "is gone)") from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        break
    else:
        raise OutputLockedError(f"{folder}: could not take the lock {path}")
    _held_locks[key] = 1
    try:
        yield path
    finally:
        del _held_locks[key]
        if _read_lock(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
