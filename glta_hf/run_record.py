"""What a run record may say about the machine it ran on: secrets redacted, paths made portable.

``glta_run.json`` (``model.run_info``) travels with a checkpoint -- to the Hub with ``push_to_hub``, into
``benchmarks/results`` -- so the command line and the folders it names are written through these functions:

* :func:`sanitized_command`: ``--hub_token hf_...`` / ``--api-key=...`` (any flag whose name contains ``token``,
  ``key``, ``secret``, ``password`` or ``credential``) keep their flag and lose their value (``<redacted>``); an
  absolute path becomes relative to the working folder when it lies inside it, else just its last component;
* :func:`portable_path`: the same rule for one path;
* :func:`sanitized_run_info`: a copy of a record with the command sanitized, the value of every secret-named field
  redacted at any depth (whatever its type: a string, a list, an object), and every absolute path (``data_dir``,
  ``graph_dir``, ``texts``, ``backbone``, ``output_dir``, nested stage records ...) made portable. ``save_pretrained``
  writes ``glta_run.json`` through it, so a copied folder publishes no path (a relative path stays as given, so
  ``evaluate.py`` run from the same folder finds the data again; one reduced to its name needs ``--data-dir``).

Light module (standard library only).
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable, Mapping, Optional, Union

REDACTED = "<redacted>"
#: a flag / field name one of whose ``-``/``_``/``.``-separated words is one of these carries a secret
#: (``--hub_token``, ``--wandb-api-key``, ``--db.password``); ``--max_new_tokens`` / ``--tokenizer`` do not
SECRET_WORDS = ("token", "key", "secret", "password", "passwd", "credential", "credentials", "apikey")
#: a secret pasted without its flag (Hub tokens, ``Bearer ...``)
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{8,}|api_[A-Za-z0-9]{8,})\b")


#: abbreviations argparse would accept for a secret word (``--hub_tok``, ``--db_pass``): prefixes of >= 3 letters
_SECRET_PREFIXES = ("token", "secret", "password", "credential")


def is_secret_flag(flag: str) -> bool:
    """True for a command-line flag (or record field) whose value is a secret: a word of its name is a token /
    key / secret / password (also glued: ``--hubtoken``, ``--dbpassword``; or abbreviated: ``--hub_tok``)."""
    words = [w for w in re.split(r"[-_.]+", flag.lstrip("-").lower()) if w]
    return any(w in SECRET_WORDS or w.endswith(("token", "secret", "password"))
               or (len(w) >= 3 and any(s.startswith(w) for s in _SECRET_PREFIXES)) for w in words)


def _is_absolute(text: str) -> bool:
    return text.startswith("~") or PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()


def portable_path(value: Union[str, os.PathLike], base: Optional[Union[str, os.PathLike]] = None) -> str:
    """``value`` relative to ``base`` (default: the working folder) when it lies inside it, else its last component;
    a relative path (or a non-path string) is returned unchanged."""
    text = os.fspath(value)
    if not _is_absolute(text):
        return text
    path = Path(os.path.expanduser(text))
    root = Path(base if base is not None else os.getcwd()).resolve()
    try:
        relative = path.resolve().relative_to(root)
    except (ValueError, OSError):
        return path.name or text
    return relative.as_posix() or "."


def _redact_value(text: str) -> str:
    return _SECRET_VALUE.sub(REDACTED, text)


def sanitized_command(argv: Union[str, Iterable[str]], base: Optional[Union[str, os.PathLike]] = None) -> str:
    """The command line ``argv`` (a list, or a shell string) as one shell-quoted string with secrets redacted and
    absolute paths made portable (see the module docstring)."""
    args = shlex.split(argv) if isinstance(argv, str) else [os.fspath(a) for a in argv]
    out = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, sep, value = arg.partition("=")
        if flag.startswith("-") and is_secret_flag(flag):
            if sep:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(flag)
                hide_next = True
            continue
        if flag.startswith("-") and sep:
            out.append(f"{flag}={_portable_text(value, base)}")
        else:
            out.append(_portable_text(arg, base))
    return " ".join(shlex.quote(a) for a in out)


def _portable_text(text: str, base) -> str:
    return _redact_value(portable_path(text, base) if _is_absolute(text) else text)


def sanitized_run_info(record: Mapping[str, Any], base: Optional[Union[str, os.PathLike]] = None) -> dict:
    """A copy of a run record fit to publish: ``command`` sanitized, secret-named fields redacted, every absolute
    path (at any depth) made portable."""

    def clean(key: Optional[str], value: Any) -> Any:
        if key is not None and value is not None and is_secret_flag(key):
            return REDACTED  # whatever it holds: a string, a list of keys, a nested object
        if isinstance(value, Mapping):
            return {k: clean(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(None, v) for v in value]
        if isinstance(value, str):
            if key == "command":
                return sanitized_command(value, base)
            return _portable_text(value, base)
        return value

    return clean(None, record)


__all__ = ["REDACTED", "SECRET_WORDS", "is_secret_flag", "portable_path", "sanitized_command", "sanitized_run_info"]
