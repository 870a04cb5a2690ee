"""The package's documented error types.

Every error caused by a user's input derives from :class:`GLTAError` and from the builtin type a caller
would naturally catch (``ValueError``), and its message names the file and line, or the user / item id,
at fault. Property tests assert that malformed input never escapes as any other exception type.
"""
from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class GLTAError(Exception):
    """Base class of every error this package raises on purpose."""


class DataFormatError(GLTAError, ValueError):
    """An input file is malformed; the message starts with ``path:line:`` where they are known."""

    def __init__(self, message: str, path: Optional[PathLike] = None, line: Optional[int] = None):
        self.path = None if path is None else os.fspath(path)
        self.line = line
        location = ""
        if self.path is not None:
            location = self.path if line is None else f"{self.path}:{line}"
            location += ": "
        super().__init__(location + message)


class DatasetOptionError(GLTAError, ValueError):
    """An option of a loader / split function is invalid (bad split name, fraction outside (0, 1), ...)."""


class InvalidArgumentError(GLTAError, ValueError):
    """A function argument or command-line flag has a value outside its domain (``k=0``, ``--batch-size 0``)."""


class UnknownIdError(GLTAError, ValueError):
    """A user or item id is not in the model's / dataset's id map."""


class IdMapMismatchError(GLTAError, ValueError):
    """Two artifacts disagree on the user / item id maps (node embeddings trained on another dataset or split)."""


class CheckpointError(GLTAError, ValueError):
    """A checkpoint folder is inconsistent (catalogue vs weights, hidden size, tokenizer, unsafe files)."""


class OutputWriteError(GLTAError, OSError):
    """An output could not be written (disk full, quota, read-only or forbidden folder); the message names the file."""


class OutputLockedError(GLTAError, RuntimeError):
    """Another live process is writing to the same output folder (its lock file names the pid and host)."""


class TrainingError(GLTAError, RuntimeError):
    """Training cannot go on (non-finite loss, wrong stage setup); the message names the step."""
