"""Command-line validation shared by every script: checked value types, underscore aliases, argparse-style errors.

Every argparse entry point (the ``glta`` subcommands, ``training/pretrain_graph.py``, ``generate_texts.py``,
``evaluate.py``) builds its parser with :class:`GLTAArgumentParser` and the value types below, so a bad flag
(``--batch-size 0``, ``--ks 0``, ``--split nosuch``) stops at parse time -- before any data, graph or LLM is loaded --
with argparse's ``usage: ...`` + ``error: argument --batch-size: ...`` on stderr and exit code 2, never a traceback.

Flag style: the argparse scripts spell flags in kebab-case (``--batch-size``); ``training/align.py`` (transformers'
``HfArgumentParser``) uses underscores (``--learning_rate``). :class:`GLTAArgumentParser` accepts the underscore
spelling of every kebab-case flag too (``--batch_size 8``, ``--data_dir=...``), so either style works everywhere.

This module imports nothing heavy (no torch / transformers / numpy): ``--help`` and flag errors answer at once.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import DatasetOptionError, GLTAError, InvalidArgumentError

#: GLTAErrors that mean "a flag / option was wrong": exit code 2, like argparse's own usage errors
USAGE_ERRORS = (InvalidArgumentError, DatasetOptionError)



def decoding_name(text: str) -> str:
    """argparse ``type``: a decoding registered in ``glta_hf.decoding`` (imported only when the flag is given, so
    ``--help`` stays light; a decoder registered by the caller counts)."""
    from .decoding import decoder_names

    if text not in decoder_names():
        raise argparse.ArgumentTypeError(f"invalid decoding {text!r} (choose from {', '.join(decoder_names())})")
    return text


def _number(kind: Callable, text: str, what: str):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, counts, cut-offs, thread counts)."""
    value = _number(int, text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, ``0 = all`` sizes)."""
    value = _number(int, text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0 (learning rates, temperatures, epochs)."""
    value = _number(float, text, "a positive number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0 (regularization weights)."""
    value = _number(float, text, "a number >= 0")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """A fraction strictly between 0 and 1 (test fraction of a random split)."""
    value = _number(float, text, "a fraction in (0, 1)")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text!r}")
    return value


def carve_fraction(text: str) -> float:
    """A fraction in [0, 1) (validation carve; 0 = none)."""
    value = _number(float, text, "a fraction in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1) (0 = no validation), got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A probability in (0, 1] (top-p)."""
    value = _number(float, text, "a number in (0, 1]")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def device_name(text: str) -> str:
    """``auto`` (cuda when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``: checked here without importing torch
    (``glta_hf.backbone.resolve_device`` turns it into the device)."""
    value = str(text).strip()
    kind, _, index = value.partition(":")
    if value in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and index.isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, got {text!r}")


def cutoffs(text: str) -> Tuple[int, ...]:
    """Comma-separated positive ranking cut-offs, e.g. ``5,10,20``."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers such as 5,10,20, got {text!r}")
    values = []
    for part in parts:
        try:
            values.append(positive_int(part))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated positive integers such as 5,10,20, got {text!r}") from None
    return tuple(values)


def _alias_table(parser: argparse.ArgumentParser) -> dict:
    """``--foo_bar`` -> ``--foo-bar`` for every kebab-case long flag of ``parser``."""
    table = {}
    for option in parser._option_string_actions:  # argparse's own index of flag spellings
        if option.startswith("--") and "-" in option[2:]:
            table[option.replace("-", "_").replace("__", "--", 1)] = option
    return table


class GLTAArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that also accepts underscore spellings of kebab-case flags (``--batch_size``)
    and reports a :class:`~glta_hf.errors.GLTAError` raised by a value type as a usage error (exit code 2)."""

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        aliases = _alias_table(self)
        normalized: List[str] = []
        for position, arg in enumerate(args):
            if arg == "--":  # everything after it is positional
                normalized.extend(args[position:])
                break
            name, sep, value = arg.partition("=")
            if name not in self._option_string_actions and name in aliases:
                arg = aliases[name] + sep + value
            normalized.append(arg)
        return super().parse_known_args(normalized, namespace)

    def _get_value(self, action, arg_string):
        type_func = self._registry_get("type", action.type, action.type)
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError as err:
            # argparse reports a ValueError from a type as "invalid <name> value"; a GLTAError says more: use it
            try:
                type_func(arg_string)
            except GLTAError as cause:
                raise argparse.ArgumentError(action, str(cause)) from None
            except Exception:  # noqa: BLE001  (argparse's own message stands)
                pass
            raise err
        except GLTAError as err:  # a GLTAError that is not a ValueError (argparse lets those through)
            raise argparse.ArgumentError(action, str(err)) from None


def add_dataset_arguments(parser: argparse.ArgumentParser, *, seed_flag: str = "--split-seed") -> None:
    """The dataset flags every script shares: ``--dataset`` (a loader name), ``--data-dir`` (optional for the
    embedded ml-latest-small), ``--split`` (a split policy), ``--test-fraction`` and the split seed."""
    from .data._build import SPLITS
    from .data.loaders import DATASETS, EMBEDDED

    parser.add_argument("--dataset", required=True, choices=DATASETS, help="dataset loader name")
    parser.add_argument("--data-dir", default=None,
                        help=f"dataset folder (default: the copy shipped in the package, for {', '.join(EMBEDDED)})")
    parser.add_argument("--split", choices=SPLITS, default=None, help="split policy (default: fixed for ml-1m, "
                                                                       "random elsewhere)")
    parser.add_argument("--test-fraction", type=open_fraction, default=None, help="random split: test fraction")
    parser.add_argument(seed_flag, type=non_negative_int, default=None, help="seed of the train/test split")


def dataset_options(args: argparse.Namespace, *, seed_attr: str = "split_seed") -> dict:
    """``load_dataset`` keyword options from :func:`add_dataset_arguments` flags (unset ones left to the loader)."""
    pairs = (("split", args.split), ("test_fraction", args.test_fraction), ("seed", getattr(args, seed_attr)))
    return {key: value for key, value in pairs if value is not None}


def require_data_dir(parser: argparse.ArgumentParser, dataset: str, data_dir: Optional[str]) -> None:
    """Parse-time check of ``--dataset`` / ``--data-dir``: only the embedded ml-latest-small needs no folder, and a
    given folder must exist. Calls ``parser.error`` (exit code 2) otherwise."""
    import os

    from .data.loaders import EMBEDDED  # light: numpy only

    if data_dir is None and dataset not in EMBEDDED:
        parser.error(f"--data-dir is required for --dataset {dataset} (only {', '.join(EMBEDDED)} ships with "
                     "glta-hf; README.md, 'Data formats', says where each dataset comes from)")
    if data_dir is not None and not os.path.isdir(data_dir):
        parser.error(f"argument --data-dir: {data_dir}: no such folder")


def run_reporting_errors(prog: str, call: Callable[[], Optional[int]]) -> int:
    """Run ``call()`` and turn a :class:`~glta_hf.errors.GLTAError` (bad input found after parsing: a malformed
    file, an option the loader refuses) into one ``prog: error: ...`` line on stderr and exit code 2 (a usage
    error, :data:`USAGE_ERRORS`) or 1 -- never a traceback."""
    try:
        return int(call() or 0)
    except GLTAError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, USAGE_ERRORS) else 1


__all__ = ["USAGE_ERRORS", "run_reporting_errors", "GLTAArgumentParser", "decoding_name", "add_dataset_arguments", "dataset_options", "positive_int", "non_negative_int", "positive_float",
           "non_negative_float", "open_fraction", "carve_fraction", "unit_interval", "cutoffs", "require_data_dir"]
