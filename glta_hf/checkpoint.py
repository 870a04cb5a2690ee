"""The GLTA checkpoint folder: its file names, its safety rules and its integrity check.

A folder written by ``GLTAForRecommendation.save_pretrained`` holds ``config.json`` (+ remote code), the tokenizer,
:data:`WEIGHTS_NAME` (GLTA's own tensors only, never an LLM weight), :data:`CATALOGUE_NAME` (the item id map:
``{"item_ids": [...], "titles": [...]}``, row order of ``E_i``), optionally :data:`USER_TABLE_NAME` (the user id map
and per-user context: ``{"format", "version", "user_ids", "histories", "profiles", "predictions"}``, row order of
``E_u``; histories in external item ids since version 2, :func:`user_table_for_file`),
:data:`RUN_INFO_NAME` (the training record) and :data:`ADAPTER_DIR` (LoRA).

:func:`verify_manifest`, :func:`load_config` and :func:`read_checkpoint` open and check every GLTA file BEFORE the
(expensive) LLM is loaded: the manifest (:data:`MANIFEST_NAME`: every file's size and sha256, written last by
``save_pretrained``, so a bit flip or a file from another save is caught), config value types and ranges,
safetensors header and size, tensor names and shapes against the config, JSON syntax,
unique ids of the documented types (str or int), titles aligned with ids, histories in range; :func:`load_weights`
refuses non-finite weights. Each failure is a :class:`~glta_hf.errors.CheckpointError` naming the file and what is
wrong. A folder saved before manifests existed still loads, with one warning. Pickle files are refused
(:func:`refuse_pickled_weights`): this package never unpickles. Imports only the standard library, safetensors and
the sibling ``errors`` module (copied as remote code).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import re
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import CheckpointError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CATALOGUE_NAME = "item_catalogue.json"
USER_TABLE_NAME = "user_table.json"
RUN_INFO_NAME = "glta_run.json"
ADAPTER_DIR = "llm_adapter"
MANIFEST_NAME = "glta_manifest.json"
MANIFEST_FORMAT = "glta-manifest-1"
#: not listed in the manifest: the manifest itself and the model card (documentation, meant to be edited by hand)
MANIFEST_UNLISTED = (MANIFEST_NAME, "README.md")
#: entries a checkpoint folder may hold that a new save replaces (never carried over from the previous save)
CHECKPOINT_ENTRIES = (CONFIG_NAME, WEIGHTS_NAME, CATALOGUE_NAME, USER_TABLE_NAME, RUN_INFO_NAME, ADAPTER_DIR,
                      MANIFEST_NAME, "README.md", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "vocab.txt",
                      "merges.txt", "chat_template.jinja", "chat_template.json")
#: File names that may hold pickled Python objects; never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: Where the LLM's tensors sit in ``GLTAForRecommendation.state_dict()``: never saved, never uploaded.
LLM_PREFIX = "model.llm."
USER_TABLE_FIELDS = ("user_ids", "histories", "profiles", "predictions")
USER_TABLE_REQUIRED = ("user_ids", "histories")
#: ``user_table.json`` marks: version 2 stores histories as external item ids; a table without them (written
#: before) stores item rows and still loads
USER_TABLE_FORMAT = "glta-user-table"
USER_TABLE_VERSION = 2
#: GLTA's tensors are all floating point (weights and the frozen node tables).
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
#: safetensors dtype -> bytes per element
_SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                       "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
#: config fields a checkpoint cannot be rebuilt without
_REQUIRED_CONFIG_INTS = ("llm_hidden_size", "node_dim", "num_users", "num_items", "num_slots", "user_token_id",
                         "item_token_id", "slot_token_id")


def refuse_pickled_weights(folder) -> None:
    """Raise if ``folder`` holds pickle-format weight files; this package only reads safetensors."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    found = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
    if found:
        raise CheckpointError(
            f"{folder}: refusing to load a checkpoint that contains pickle files {found}; "
            "glta-hf reads weights from safetensors only. Remove them or re-save the model with save_pretrained()."
        )


def convert_tensor_names(state: Dict[str, Any], mapping: Mapping[str, str]) -> Dict[str, Any]:
    """Rename the tensors of an older checkpoint to today's names: each name goes through the first pattern of
    ``mapping`` (regex -> replacement, the model's ``_checkpoint_conversion_mapping``) that matches it."""
    patterns = [(re.compile(pattern), replacement) for pattern, replacement in mapping.items()]
    renamed = {}
    for name, value in state.items():
        for pattern, replacement in patterns:
            new, hits = pattern.subn(replacement, name)
            if hits:
                name = new
                break
        renamed[name] = value
    return renamed


def read_json_file(path: Path) -> Any:
    """Parse a checkpoint JSON file; a missing, unreadable or malformed file is a CheckpointError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def safetensors_header(path: Path) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` from a safetensors file's header, after checking that the header and every tensor's
    byte range fit the file (a truncated or corrupted file is a CheckpointError naming it)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: truncated ({size} bytes; a safetensors file starts with an 8-byte header size)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise CheckpointError(f"{path}: truncated or corrupt: header of {header_len} bytes in a {size}-byte file")
            raw = handle.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file is missing") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    data_len = size - 8 - header_len
    tensors, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header entry {name!r} ({err!r})") from None
        if dtype not in _SAFETENSORS_DTYPES or not 0 <= begin <= stop <= data_len:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({dtype}, bytes {begin}-{stop}) does not fit the file's {data_len} data bytes "
                "(truncated or corrupt)"
            )
        needed = _SAFETENSORS_DTYPES[dtype] * math.prod(shape)
        if stop - begin != needed:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({dtype}, shape {list(shape)}) needs {needed} bytes, the header gives it "
                f"{stop - begin} (corrupt header)"
            )
        tensors[name], end = (dtype, shape), max(end, stop)
    if end != data_len:
        raise CheckpointError(f"{path}: {data_len} data bytes but the header describes {end} (truncated or corrupt)")
    return tensors


def check_tensor_shapes(path: Path, found: Mapping[str, Tuple[int, ...]], expected: Mapping[str, Tuple[int, ...]]) -> None:
    """The tensors in ``path`` are exactly ``expected`` (name -> shape): no LLM weight, none missing or extra."""
    leaked = [k for k in found if k.startswith(LLM_PREFIX)]
    if leaked:
        raise CheckpointError(f"{path} holds LLM weights ({leaked[:3]}...); GLTA checkpoints must not")
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [f"{k}: {tuple(found[k])} vs {tuple(expected[k])}" for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not match the config: missing {missing}, unexpected {unexpected}, shapes {wrong}"
        )


def _unique_ids(path: Path, ids: List[Any], what: str) -> None:
    seen: Dict[str, int] = {}
    for row, value in enumerate(ids):
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise CheckpointError(f"{path}: {what} at row {row} is {value!r}; ids must be strings or integers")
        key = str(value)
        if key in seen:
            raise CheckpointError(f"{path}: {what} {value!r} appears twice (rows {seen[key]} and {row}); ids must be unique")
        seen[key] = row


def check_catalogue(path: Path, catalogue: Any, num_items: int) -> Dict[str, list]:
    """The item id map: ``item_ids`` (|I| unique ids) and ``titles`` (None or one per id)."""
    if not isinstance(catalogue, dict) or not isinstance(catalogue.get("item_ids"), list):
        raise CheckpointError(f"{path}: expected an object with an 'item_ids' list")
    ids = catalogue["item_ids"]
    if len(ids) != num_items:
        raise CheckpointError(f"{path} lists {len(ids)} items but the model has |I|={num_items}")
    _unique_ids(path, ids, "item id")
    titles = catalogue.get("titles")
    if titles is None:
        titles = [None] * len(ids)
    if not isinstance(titles, list) or len(titles) != len(ids):
        got = len(titles) if isinstance(titles, list) else type(titles).__name__
        raise CheckpointError(f"{path}: 'titles' must be a list aligned with 'item_ids' ({len(ids)} ids, got {got})")
    return {"item_ids": ids, "titles": titles}


def user_table_for_file(table: Mapping[str, Any], item_ids: List[Any]) -> Dict[str, Any]:
    """The ``user_table.json`` content of a model's user table: histories in EXTERNAL item ids (those of
    :data:`CATALOGUE_NAME`, like every other file and API), marked with :data:`USER_TABLE_FORMAT` /
    :data:`USER_TABLE_VERSION`. In memory the model keeps item rows."""
    out: Dict[str, Any] = {"format": USER_TABLE_FORMAT, "version": USER_TABLE_VERSION}
    for name in USER_TABLE_FIELDS:
        values = table.get(name)
        if name == "histories" and values is not None:
            values = [[item_ids[int(row)] for row in history] for history in values]
        out[name] = values
    return out


def _history_rows(path: Path, table: Mapping[str, Any], item_ids: Optional[List[Any]], num_items: int):
    """The histories as item rows: a versioned table maps its external ids through the catalogue (a CheckpointError
    names the user and the unknown id); a table without a version (written before external ids) holds rows."""
    histories = table.get("histories") or []
    versioned = "version" in table or "format" in table
    if versioned and (table.get("format") != USER_TABLE_FORMAT or table.get("version") != USER_TABLE_VERSION):
        raise CheckpointError(f"{path}: unknown user table format {table.get('format')!r} version "
                              f"{table.get('version')!r} (this glta-hf reads {USER_TABLE_FORMAT!r} version "
                              f"{USER_TABLE_VERSION}); upgrade glta-hf")
    if not versioned:
        for row, history in enumerate(histories):
            if not isinstance(history, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_items for i in history
            ):
                raise CheckpointError(f"{path}: histories[{row}] must be a list of item rows in [0, {num_items})")
        return histories
    if item_ids is None:
        raise CheckpointError(f"{path}: a user table with external item ids needs the item catalogue")
    index: Dict[Any, int] = {}
    for row, item in enumerate(item_ids):
        index.setdefault(item, row)
        index.setdefault(str(item), row)
    user_ids = table.get("user_ids") or []
    rows = []
    for n, history in enumerate(histories):
        user = user_ids[n] if n < len(user_ids) else n
        if not isinstance(history, list):
            raise CheckpointError(f"{path}: histories[{n}] (user {user!r}) must be a list of item ids")
        unknown = [item for item in history if isinstance(item, (list, dict, bool)) or
                   (item not in index and str(item) not in index)]
        if unknown:
            raise CheckpointError(f"{path}: histories[{n}] (user {user!r}): item {unknown[0]!r} is not in "
                                  f"{CATALOGUE_NAME}")
        rows.append([index[item] if item in index else index[str(item)] for item in history])
    return rows


def check_user_table(path: Path, table: Any, num_users: int, num_items: int,
                     item_ids: Optional[List[Any]] = None) -> Dict[str, Optional[list]]:
    """The user id map and context: each present field is a list of |U| entries, ids unique, history ids in the
    catalogue (``item_ids``); returned with histories as item rows (what the model keeps in memory)."""
    if not isinstance(table, dict):
        raise CheckpointError(f"{path}: expected a JSON object with {USER_TABLE_FIELDS}")
    out: Dict[str, Optional[list]] = {}
    for name in USER_TABLE_FIELDS:
        values = table.get(name)
        if values is None and name in USER_TABLE_REQUIRED:
            raise CheckpointError(f"{path}: the '{name}' list is missing")
        if values is not None and (not isinstance(values, list) or len(values) != num_users):
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise CheckpointError(f"{path}: '{name}' must be a list of {num_users} entries (one per user), got {got}")
        out[name] = values
    if out["user_ids"] is not None:
        _unique_ids(path, out["user_ids"], "user id")
    out["histories"] = _history_rows(path, table, item_ids, num_items)
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listed_files(folder: Path) -> List[str]:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [f for f in files if f not in MANIFEST_UNLISTED and "__pycache__" not in f
            and not any(part.startswith(".") for part in f.split("/"))]


def write_manifest(folder, files: Optional[List[str]] = None) -> None:
    """Write :data:`MANIFEST_NAME` (size + sha256 of ``files``, default every file but :data:`MANIFEST_UNLISTED`,
    hidden files and ``__pycache__``); the last file of a save, so its presence means the save completed."""
    from .io_utils import write_json

    folder = Path(folder)
    names = _listed_files(folder) if files is None else sorted(f for f in files if f not in MANIFEST_UNLISTED)
    write_json(folder / MANIFEST_NAME, {
        "format": MANIFEST_FORMAT,
        "files": {name: {"size": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
                  for name in names},
    })


_warned_legacy: set = set()


def verify_manifest(folder) -> bool:
    """Check every file :data:`MANIFEST_NAME` lists (present, same size, same sha256); False for a folder saved
    before manifests (warned once per folder). Files the manifest does not list are not checked."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.exists():
        if str(folder) not in _warned_legacy:
            _warned_legacy.add(str(folder))
            logger.warning("%s has no %s (saved by an older glta-hf): its files cannot be checked against their "
                           "checksums; save it again with save_pretrained() to add one", folder, MANIFEST_NAME)
        return False
    manifest = read_json_file(path)
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(entries, dict):
        raise CheckpointError(f"{path}: not a GLTA manifest (expected format {MANIFEST_FORMAT!r} and a 'files' object)")
    for name, entry in entries.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("size"), int) or ".." in Path(name).parts or Path(name).is_absolute()):
            raise CheckpointError(f"{path}: malformed entry {name!r}")
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{file}: file is missing (listed in {MANIFEST_NAME})")
        size = file.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"{file}: {size} bytes, but {MANIFEST_NAME} records {entry['size']} (truncated, "
                                  "replaced or from another save)")
        if file_sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{file}: checksum mismatch with {MANIFEST_NAME} (the file is corrupt or from "
                                  "another save)")
    return True


def previous_entries_to_keep(folder) -> List[str]:
    """Entries of an existing checkpoint folder that a new save must carry over: anything that is not a checkpoint
    file (:data:`CHECKPOINT_ENTRIES`, the files its manifest lists, remote-code ``*.py``), e.g. a run's ``work/``."""
    folder = Path(folder)
    replaced = set(CHECKPOINT_ENTRIES)
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        try:
            replaced |= {name.split("/")[0] for name in json.loads(manifest.read_text(encoding="utf-8"))["files"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    return sorted(p.name for p in folder.iterdir()
                  if p.name not in replaced and not (p.suffix == ".py" and p.is_file()) and p.name != "__pycache__")


#: type and least value of each config field that is checked at load (None allowed where the second item says so)
_CONFIG_SCHEMA = {
    "llm_hidden_size": (int, 1, False), "node_dim": (int, 1, False), "num_users": (int, 0, False),
    "num_items": (int, 1, False), "num_slots": (int, 1, False), "user_token_id": (int, 0, False),
    "item_token_id": (int, 0, False), "slot_token_id": (int, 0, False), "ce_chunk_size": (int, 1, True),
    "rank_chunk_size": (int, 1, True), "llm_name_or_path": (str, None, True), "llm_revision": (str, None, True),
    "llm_gguf_file": (str, None, True), "llm_dtype": (str, None, True), "quantization": (str, None, True),
    "projector": (str, None, True), "head": (str, None, True), "graph_residual": (bool, None, True),
    "lora": (dict, None, True), "prompt": (dict, None, True),
}


def _type_name(kind) -> str:
    return {int: "an integer", str: "a string", bool: "true/false", dict: "an object"}[kind]


def check_config_values(path: Path, raw: Any, prompt_defaults: Optional[Mapping[str, Any]] = None) -> None:
    """``config.json``'s values have the types and ranges a GLTA model needs (a CheckpointError naming the field);
    ``prompt_defaults`` (``GLTAConfig``'s) gives the type of each ``prompt`` field."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    for name, (kind, least, optional) in _CONFIG_SCHEMA.items():
        value = raw.get(name)
        if value is None:
            if not optional:
                raise CheckpointError(f"{path}: '{name}' is missing (must be {_type_name(kind)})")
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(f"{path}: '{name}' must be {_type_name(kind)}, got {value!r}")
        if least is not None and value < least:
            raise CheckpointError(f"{path}: '{name}' must be >= {least}, got {value!r}")
    for name, value in (raw.get("prompt") or {}).items():
        default = (prompt_defaults or {}).get(name)
        if default is None or value is None and name == "system_prompt":
            continue
        kind = bool if isinstance(default, bool) else type(default)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(f"{path}: 'prompt.{name}' must be {_type_name(kind)}, got {value!r}")
        if kind is int and value < (0 if name == "max_history" else 1):
            raise CheckpointError(f"{path}: 'prompt.{name}' must be >= {0 if name == 'max_history' else 1}, got {value!r}")


def load_config(folder, config_class, prompt_defaults: Optional[Mapping[str, Any]] = None):
    """``config_class.from_pretrained(folder)`` after checking that :data:`CONFIG_NAME` exists and parses, and that
    its values have the types and ranges a GLTA model is rebuilt from (:func:`check_config_values`; a
    CheckpointError naming the file and the field otherwise)."""
    path = Path(folder) / CONFIG_NAME
    check_config_values(path, read_json_file(path), prompt_defaults)
    try:
        config = config_class.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: unusable config ({err!r})") from None
    bad = [name for name in _REQUIRED_CONFIG_INTS
           if isinstance(getattr(config, name, None), bool) or not isinstance(getattr(config, name, None), int)]
    if bad:
        raise CheckpointError(f"{path}: {bad} must be integers, got {[getattr(config, n, None) for n in bad]}")
    return config


@dataclass
class CheckpointFiles:
    """What :func:`read_checkpoint` found valid: tensor shapes, the id maps and the run record."""

    folder: Path
    tensor_shapes: Dict[str, Tuple[int, ...]]
    catalogue: Dict[str, list]
    user_table: Optional[Dict[str, Optional[list]]] = None
    run_info: Dict[str, Any] = field(default_factory=dict)


def local_checkpoint_folder(name_or_path) -> Optional[Path]:
    """The local checkpoint folder ``name_or_path`` names, or None for a Hub repo id (``owner/name``).

    A path-like reference (absolute, ``./``, ``~``, a ``Path``, two or more ``/``, or anything that exists) must be a
    folder: a missing one, a file or a symlink loop is a CheckpointError saying so. A folder missing because a save
    was killed between its two renames is first completed (``io_utils.recover_folder``).
    """
    text = os.fspath(name_or_path)
    path = Path(os.path.expanduser(text))
    looks_local = (not isinstance(name_or_path, str) or text.startswith((".", "~", os.sep, "/")) or text.count("/") > 1
                   or "\\" in text or os.path.lexists(path))
    if not looks_local:
        return None
    try:
        os.stat(path)
    except FileNotFoundError:
        from .io_utils import recover_folder

        recover_folder(path)
        if not path.is_dir():
            raise CheckpointError(f"{text}: no such folder (a GLTA checkpoint is a folder written by save_pretrained)"
                                  ) from None
    except OSError as err:
        what = "a symlink loop" if err.errno == errno.ELOOP else f"unreadable ({err.strerror})"
        raise CheckpointError(f"{text}: {what}; not a checkpoint folder") from None
    if not path.is_dir():
        raise CheckpointError(f"{text}: is a file, not a checkpoint folder (pass the folder holding {CONFIG_NAME})")
    return path


def read_checkpoint(folder, config, expected_shapes: Mapping[str, Tuple[int, ...]],
                    conversion_mapping: Mapping[str, str]) -> CheckpointFiles:
    """Open and check every GLTA file of ``folder`` (see the module docstring; ``from_pretrained`` has verified the
    manifest before reading the config); nothing here loads the LLM.

    ``expected_shapes``: tensor name -> shape the config implies (``GLTAForRecommendation.expected_tensor_shapes``);
    the file's names are read through ``conversion_mapping`` first (:func:`convert_tensor_names`).
    """
    folder = Path(folder)
    refuse_pickled_weights(folder)
    refuse_pickled_weights(folder / ADAPTER_DIR)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME}; not a GLTA checkpoint")
    header = safetensors_header(weights)
    not_float = sorted(name for name, (dtype, _) in header.items() if dtype not in _FLOAT_DTYPES)
    if not_float:
        raise CheckpointError(f"{weights}: tensors {not_float[:3]} are not floating point; not GLTA weights")
    shapes = convert_tensor_names({name: shape for name, (_, shape) in header.items()}, conversion_mapping)
    check_tensor_shapes(weights, shapes, expected_shapes)
    catalogue = check_catalogue(folder / CATALOGUE_NAME, read_json_file(folder / CATALOGUE_NAME), config.num_items)
    user_table = None
    if (folder / USER_TABLE_NAME).is_file():
        user_table = check_user_table(folder / USER_TABLE_NAME, read_json_file(folder / USER_TABLE_NAME),
                                      config.num_users, config.num_items, catalogue["item_ids"])
    run_info: Dict[str, Any] = {}
    if (folder / RUN_INFO_NAME).is_file():
        run_info = read_json_file(folder / RUN_INFO_NAME)
        if not isinstance(run_info, dict):
            raise CheckpointError(f"{folder / RUN_INFO_NAME}: expected a JSON object")
    if getattr(config, "lora", None) and not (folder / ADAPTER_DIR).is_dir():
        raise CheckpointError(f"{folder}: config has lora={config.lora} but no {ADAPTER_DIR}/ folder")
    return CheckpointFiles(folder, shapes, catalogue, user_table, run_info)


def load_weights(folder) -> Dict[str, "torch.Tensor"]:  # noqa: F821
    """The :data:`WEIGHTS_NAME` tensors on CPU, as stored (``GLTAForRecommendation.load_state_dict`` maps older
    names); a read error is a CheckpointError naming the file."""
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_NAME
    try:
        state = load_file(os.fspath(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(f"{path}: cannot be read as safetensors ({err})") from None
    import torch

    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise CheckpointError(f"{path}: tensors {bad[:3]} hold NaN or infinite values; refusing to serve them")
    return state
