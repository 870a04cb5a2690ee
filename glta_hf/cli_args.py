"""The argument layer shared by every entry point: checked value types, generated flags, one-line usage errors.

Every entry point (the ``glta`` subcommands, ``training/align.py``, ``pretrain_graph.py``, ``generate_texts.py``,
``evaluate.py``) builds its parser here -- :class:`GLTAArgumentParser` for the argparse scripts,
:func:`dataclass_parser` (``transformers.HfArgumentParser`` with the same behaviour) for ``align.py`` -- so a bad
value (``--batch-size 0``, ``--learning_rate -1``, ``--eval_ks abc``, ``--split nosuch``), an abbreviated flag
(``--hub_tok``: ``allow_abbrev`` is off everywhere), an output folder that cannot be written or an LLM reference
that does not resolve stops before any data, graph or LLM is loaded, with ONE line on stderr
(``prog: error: argument --batch-size: ...``) and exit code 2, never a traceback.

One owner per option: the argument dataclasses (``GLTATrainingArguments``, ``GLTAModelArguments``,
``GraphTrainingArguments``, ``TextGenerationConfig``) own each option's name, default, help and value range
(``VALUE_TYPES``: field -> one of the checked types below); :func:`add_field_flags` generates a script's flags
from them, and ``__post_init__`` applies the same ranges to library callers (:func:`check_values`).

Flag style: kebab-case (``--batch-size``, ``--learning-rate``). Every parser here also accepts the underscore
spelling of each flag (``--batch_size 8``, ``--data_dir=...``; ``HfArgumentParser`` generates both), so either
style works on every entry point.

This module imports nothing heavy (no torch / transformers / numpy): ``--help`` and flag errors answer at once.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

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


def seed_value(text: str) -> int:
    """A random seed: an integer in [0, 2**32) (numpy's range; a larger one fails only when the run seeds)."""
    value = _number(int, text, "an integer in [0, 2**32)")
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text!r}")
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


def gate_scale_list(text: str) -> Tuple[float, ...]:
    """Comma-separated multipliers of a graph residual's learned gate, e.g. ``0,0.5,1,2``: distinct finite numbers
    >= 0 (the rule is ``glta_hf.decoding.check_gate_scales``'s, imported only when the flag is given)."""
    from .decoding import ArgumentError, check_gate_scales

    parts = [p.strip() for p in str(text).split(",")]
    try:
        return check_gate_scales([float(p) for p in parts])
    except ValueError as err:  # a part that is not a number, or the rule's ArgumentError
        detail = str(err).split(": ", 1)[-1] if isinstance(err, ArgumentError) else "not a number"
        raise argparse.ArgumentTypeError(
            f"must be comma-separated numbers >= 0 such as 0,0.5,1,2 ({detail}), got {text!r}") from None


def cutoff_list(text: str) -> str:
    """:func:`cutoffs` kept as the canonical text ``"5,10,20"`` (a dataclass field stored as a string)."""
    return ",".join(str(k) for k in cutoffs(text))


def _first_existing(path: str) -> str:
    """``path`` or its nearest existing ancestor."""
    import os

    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def writable_dir(text: str) -> str:
    """An output folder: an existing writable folder, or one that can be created (its nearest existing ancestor is
    a writable folder). Checked at parse time, so an unwritable place or a file given as a folder is refused before
    hours of training, not at the first save."""
    import os

    value = str(text)
    if not value.strip():
        raise argparse.ArgumentTypeError("must be a folder path, got ''")
    if os.path.exists(value) and not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value}: exists and is not a folder")
    anchor = _first_existing(value)
    if not os.path.isdir(anchor):
        raise argparse.ArgumentTypeError(f"{value}: {anchor} is a file, so the folder cannot be created")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{value}: {anchor} is not writable")
    return value


def writable_file(text: str) -> str:
    """An output file: not a folder, and its folder is (or can be created as) a writable folder."""
    import os

    value = str(text)
    if not value.strip() or value.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"must be a file path, got {text!r}")
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value}: is a folder, expected a file path")
    if os.path.exists(value) and not os.access(value, os.W_OK):
        raise argparse.ArgumentTypeError(f"{value}: is not writable")
    try:
        writable_dir(os.path.dirname(os.path.abspath(value)))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{value}: its folder cannot be written ({err})") from None
    return value


def existing_dir(text: str) -> str:
    """An input folder that exists."""
    import os

    if not os.path.isdir(str(text)):
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return str(text)


def check_values(obj: Any, types: Mapping[str, Callable[[str], Any]]) -> None:
    """Apply the parse-time value types to a dataclass's fields (``__post_init__``: library callers get the same
    ranges as the command line). ``None`` (unset) passes; raises :class:`InvalidArgumentError` naming the field."""
    for name, kind in types.items():
        value = getattr(obj, name, None)
        if value is None or isinstance(value, bool):
            continue
        try:
            kind(repr(value) if isinstance(value, float) else str(value))
        except argparse.ArgumentTypeError as err:
            raise InvalidArgumentError(f"{name} {err}") from None


# ------------------------------------------------------------------------------------------------ parsers


def _alias_table(parser: argparse.ArgumentParser) -> dict:
    """``--foo_bar`` -> ``--foo-bar`` for every kebab-case long flag of ``parser``."""
    table = {}
    for option in parser._option_string_actions:  # argparse's own index of flag spellings
        if option.startswith("--") and "-" in option[2:]:
            table[option.replace("-", "_").replace("__", "--", 1)] = option
    return table


class ArgumentBehaviour:
    """What every parser of the package does on top of ``argparse.ArgumentParser`` (mixed into
    :class:`GLTAArgumentParser` and the ``HfArgumentParser`` of :func:`dataclass_parser`): underscore spellings of
    kebab-case flags, a :class:`GLTAError` raised by a value type reported as a usage error, and usage errors as ONE
    line (``prog: error: ...``, exit code 2) -- ``--help`` shows the usage."""

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

    def error(self, message: str):
        """One line on stderr and exit code 2 (argparse prints the whole usage first; an ``HfArgumentParser``'s
        usage is hundreds of lines)."""
        one_line = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {one_line} (--help lists the options)\n")


class GLTAArgumentParser(ArgumentBehaviour, argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`ArgumentBehaviour` and ``allow_abbrev=False`` (an abbreviation such as
    ``--hub_tok`` is an unknown flag, never a silent match)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def dataclass_parser(dataclass_types):
    """``transformers.HfArgumentParser(dataclass_types)`` with :class:`ArgumentBehaviour`, ``allow_abbrev=False`` and
    each dataclass's ``VALUE_TYPES`` / ``PATH_TYPES`` (field -> checked type) as the flags' types, so a range or an
    unwritable output folder is an argparse error."""
    from transformers import HfArgumentParser  # the caller (align.py) imports transformers anyway

    class _Parser(ArgumentBehaviour, HfArgumentParser):
        pass

    parser = _Parser(dataclass_types, allow_abbrev=False)
    for dtype in parser.dataclass_types:
        types = {**getattr(dtype, "VALUE_TYPES", {}), **getattr(dtype, "PATH_TYPES", {})}
        for name, kind in types.items():
            for action in parser._actions:
                if action.dest == name:
                    action.type = kind
    return parser


def field_value_type(dtype, field) -> Callable[[str], Any]:
    """The parse-time type of a dataclass field: its class's ``VALUE_TYPES`` / ``PATH_TYPES`` entry, else its
    annotation (``Optional[X]`` -> ``X``)."""
    import typing

    checked = {**getattr(dtype, "VALUE_TYPES", {}), **getattr(dtype, "PATH_TYPES", {})}.get(field.name)
    if checked is not None:
        return checked
    hint = typing.get_type_hints(dtype).get(field.name, str)
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    if getattr(hint, "__origin__", None) is typing.Union and args:
        hint = args[0]
    return hint if hint in (int, float, str, bool) else str


def add_field_flags(parser: argparse.ArgumentParser, dtype, fields: Mapping[str, Optional[str]], *,
                    prefix: str = "", group: Optional[str] = None, defaults: bool = False) -> Dict[str, str]:
    """Flags generated from the fields of the dataclass ``dtype``: its names, value types (``VALUE_TYPES``, else the
    annotation), choices and help, so no script retypes them.

    ``fields``: field name -> a short alias (``"epochs"`` for ``num_train_epochs``) or None; each field gets
    ``--<prefix><field>`` in kebab-case plus ``--<alias>`` (the underscore spellings are accepted too). The flag's
    default is None (= not given: the dataclass's or a preset's value stands), or the dataclass's default with
    ``defaults=True``. Returns ``{dest: field}``; :func:`given_fields` reads the given values back.
    """
    import dataclasses

    target = parser.add_argument_group(group) if group else parser
    by_name = {f.name: f for f in dataclasses.fields(dtype)}
    dests = {}
    for name, alias in fields.items():
        field = by_name[name]
        dest = (prefix + name).replace("-", "_")
        flags = ["--" + dest.replace("_", "-")]
        if alias and alias.replace("_", "-") != flags[0][2:]:
            flags.append("--" + alias.replace("_", "-"))
        meta = dict(field.metadata)
        default = None
        if defaults:
            default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        help_text = str(meta.get("help", "")).replace("%", "%%")
        if defaults:
            help_text += f" (default: {default})"
        kind = field_value_type(dtype, field)
        if kind is bool:
            target.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            extra = {"choices": list(meta["choices"])} if meta.get("choices") else {}
            target.add_argument(*flags, dest=dest, type=kind, default=default, help=help_text, **extra)
        dests[dest] = name
    return dests


def given_fields(args: argparse.Namespace, dests: Mapping[str, str]) -> Dict[str, Any]:
    """``{field: value}`` of the flags :func:`add_field_flags` made that were given."""
    return {name: getattr(args, dest) for dest, name in dests.items() if getattr(args, dest, None) is not None}


def add_dataset_arguments(parser: argparse.ArgumentParser, *, seed_flag: str = "--split-seed",
                          default: Optional[str] = None) -> None:
    """The dataset flags every script shares: ``--dataset`` (a loader name; required unless ``default``),
    ``--data-dir`` (optional for the embedded ml-latest-small), ``--split`` (a split policy), ``--test-fraction``
    and the split seed."""
    from .data._build import SPLITS
    from .data.loaders import DATASETS, EMBEDDED

    parser.add_argument("--dataset", required=default is None, default=default, choices=DATASETS,
                        help="dataset loader name" + (f" (default: {default})" if default else ""))
    parser.add_argument("--data-dir", default=None,
                        help=f"dataset folder (default: the copy shipped in the package, for {', '.join(EMBEDDED)})")
    parser.add_argument("--split", choices=SPLITS, default=None, help="split policy (default: fixed for ml-1m, "
                                                                       "random elsewhere)")
    parser.add_argument("--test-fraction", type=open_fraction, default=None, help="random split: test fraction")
    parser.add_argument(seed_flag, type=seed_value, default=None, help="seed of the train/test split")


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


def require_llm(parser: argparse.ArgumentParser, flag: str, reference: Optional[str],
                gguf_file: Optional[str] = None) -> None:
    """Parse-time check that an LLM reference resolves on this machine (None: the default SmolLM2), before any
    training: ``parser.error`` naming ``flag`` otherwise (:func:`glta_hf.backbone.llm_reference_problem`)."""
    from .backbone import SMOLLM2_REFERENCE, llm_reference_problem  # torch: only once the flags parsed

    problem = llm_reference_problem(reference or SMOLLM2_REFERENCE, gguf_file)
    if problem:
        parser.error(f"argument {flag}: {problem}")


def run_reporting_errors(prog: str, call: Callable[[], Optional[int]]) -> int:
    """Run ``call()`` and turn a :class:`~glta_hf.errors.GLTAError` (bad input found after parsing: a malformed
    file, an option the loader refuses) into one ``prog: error: ...`` line on stderr and exit code 2 (a usage
    error, :data:`USAGE_ERRORS`) or 1; an ``OSError`` (a full disk, a folder that became unwritable) into one line
    naming the file, exit code 1 -- never a traceback."""
    try:
        return int(call() or 0)
    except GLTAError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, USAGE_ERRORS) else 1
    except OSError as err:
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"{prog}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1


__all__ = ["USAGE_ERRORS", "run_reporting_errors", "ArgumentBehaviour", "GLTAArgumentParser", "dataclass_parser",
           "add_field_flags", "given_fields", "field_value_type", "check_values", "decoding_name",
           "add_dataset_arguments", "dataset_options", "positive_int", "non_negative_int", "seed_value", "positive_float",
           "non_negative_float", "open_fraction", "carve_fraction", "unit_interval", "cutoffs", "cutoff_list",
           "gate_scale_list", "device_name", "writable_dir", "writable_file", "existing_dir", "require_data_dir",
           "require_llm"]
