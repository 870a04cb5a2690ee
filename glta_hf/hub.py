"""Sharing GLTA checkpoints on the Hugging Face Hub: what is uploaded is chosen, never the whole folder.

``model.push_to_hub(repo_id)`` and ``GLTATrainer.push_to_hub()`` both end in :func:`push_to_hub`, which

1. creates the repository (``HfApi.create_repo(exist_ok=True)``),
2. writes the checkpoint with ``model.save_pretrained`` into a fresh temporary folder -- config (+ ``auto_map``),
   ``model.safetensors`` (GLTA's own weights: projectors, slot vectors, GLLM head, frozen ``E_u`` / ``E_i``), the
   tokenizer with the ``<user>`` / ``<item>`` / ``<slot>`` placeholders, ``item_catalogue.json``, the remote-code
   files (``configuration_glta.py``, ``modeling_glta.py`` and the sibling modules they import) and ``llm_adapter/``
   when LoRA is on,
3. removes ``user_table.json`` (external user ids, complete training histories, LLM-written profiles: personal
   data) unless ``include_user_table=True``; a model loaded without it serves users through their histories
   (fold-in) and the catalogue,
4. writes the run record ``glta_run.json`` through :func:`glta_hf.run_record.sanitized_run_info` (secrets such as
   ``--hub_token`` redacted, absolute paths made relative or reduced to names) and reduces a local absolute LLM
   reference in ``config.json`` to its name (pass ``llm_name_or_path=<hub id>`` to make it loadable elsewhere),
5. renders the model card (``README.md``: ``base_model``, dataset, stages, ``eval_results`` model-index, and what
   this upload holds) for that repository id,
6. picks the files to upload from an allow-list (:func:`hub_files`: :data:`CHECKPOINT_FILES`, the tokenizer's
   :data:`TOKENIZER_FILES`, the remote code, the LoRA adapter, the user table only when asked) after checking the
   folder: no pickle file, no weight file but GLTA's own, no ``llm.*`` tensor in ``model.safetensors`` (the LLM is
   referenced by ``config.llm_name_or_path``, never uploaded), and no local absolute path in any text file,
7. uploads exactly those files in one commit (``HfApi.create_commit``, the call ``PreTrainedModel.push_to_hub``
   makes too).

transformers' own ``PreTrainedModel.push_to_hub`` is not used: it loads the remote card with ``ModelCard.load`` and
overwrites ``README.md`` with a generic transformers card, and ``Trainer.push_to_hub`` uploads the whole
``output_dir`` (with ``training_args.bin``, a pickle) under a generic card.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import CheckpointError
from .model_card import (CARD_NAME, RUN_INFO_NAME, USER_TABLE_NAME, hub_base_model, stage_record, stage_records,
                         write_model_card)
from .run_record import _is_absolute, portable_path, sanitized_run_info

logger = logging.getLogger(__name__)

from .checkpoint import ADAPTER_DIR, LLM_PREFIX, MANIFEST_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, write_manifest  # noqa: E402
#: the only weight files a GLTA repository may hold
ALLOWED_WEIGHTS = (WEIGHTS_NAME, f"{ADAPTER_DIR}/adapter_model.safetensors")
#: files every uploaded GLTA checkpoint has (the tokenizer adds its own files, LoRA adds llm_adapter/)
REQUIRED_FILES = ("config.json", WEIGHTS_NAME, "item_catalogue.json", "configuration_glta.py", "modeling_glta.py",
                  "tokenizer_config.json", CARD_NAME)
#: the allow-list: GLTA's own checkpoint files that may be uploaded (+ the remote code, the tokenizer's files, the
#: LoRA adapter and, when asked for, the user table)
CHECKPOINT_FILES = ("config.json", WEIGHTS_NAME, "item_catalogue.json", RUN_INFO_NAME, CARD_NAME, MANIFEST_NAME)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja",
                   "chat_template.json")
ADAPTER_CONFIG = f"{ADAPTER_DIR}/adapter_config.json"
ADAPTER_FILES = (ADAPTER_CONFIG, f"{ADAPTER_DIR}/adapter_model.safetensors")
#: the text files written from this machine's state (config, records, card, tables): scanned for local paths
RECORD_FILES = ("config.json", "item_catalogue.json", RUN_INFO_NAME, CARD_NAME, USER_TABLE_NAME, ADAPTER_CONFIG)
#: the JSON records whose every string value is also checked not to be an absolute path (wherever it points)
PATH_FREE_FILES = ("config.json", RUN_INFO_NAME, ADAPTER_CONFIG)
_WEIGHT_SUFFIXES = (".safetensors", ".gguf") + PICKLE_SUFFIXES


def _api():
    from huggingface_hub import HfApi

    from . import __version__

    return HfApi(library_name="glta-hf", library_version=__version__)


def remote_code_files() -> Tuple[str, ...]:
    """The remote-code files ``save_pretrained`` writes: ``configuration_glta.py``, ``modeling_glta.py`` and the
    sibling modules they import (what transformers' ``custom_object_save`` copies). Read from the source files next
    to this one, without importing the model (which imports this module to upload)."""
    from transformers.dynamic_module_utils import get_relative_import_files

    here = Path(__file__).parent
    files = {Path(f).name for source in (here / "configuration_glta.py", here / "modeling_glta.py")
             for f in [source, *get_relative_import_files(str(source))]}
    return tuple(sorted(files))


def allowed_files(include_user_table: bool = False) -> Tuple[str, ...]:
    """Every path (relative, POSIX) that may go to the Hub; anything else in a checkpoint folder stays local."""
    extra = (USER_TABLE_NAME,) if include_user_table else ()
    return CHECKPOINT_FILES + TOKENIZER_FILES + ADAPTER_FILES + remote_code_files() + extra


def _local_path_markers(folder: Path) -> List[str]:
    """Absolute paths of this machine that must not appear in an uploaded text file."""
    markers = {str(folder.resolve()), str(folder), os.getcwd(), sys.prefix, str(Path.home())}
    return sorted(m for m in markers if m and m != os.sep and len(m) > 4)


def hub_files(folder, include_user_table: bool = False) -> List[str]:
    """The files of a saved GLTA checkpoint that go to the Hub (relative POSIX paths, sorted), after checking them.

    Only allow-listed files (:func:`allowed_files`) are returned; ``user_table.json`` only with
    ``include_user_table=True``. Raises :class:`~glta_hf.errors.CheckpointError` for a missing required file, a
    pickle file, a weight file other than :data:`ALLOWED_WEIGHTS` (an LLM copy, a GGUF file), ``llm.*`` tensors in
    ``model.safetensors``, or a text file to upload that holds an absolute path of this machine.
    """
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = [f for f in files if "__pycache__" not in f and not f.startswith(".")]
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise CheckpointError(f"{folder}: not a complete GLTA checkpoint, missing {missing}")
    bad = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if bad:
        raise CheckpointError(f"{folder}: refusing to upload pickle files {bad}")
    extra_weights = [f for f in files if f.endswith(_WEIGHT_SUFFIXES) and f not in ALLOWED_WEIGHTS]
    if extra_weights:
        raise CheckpointError(f"{folder}: refusing to upload weight files other than GLTA's own: {extra_weights}")
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as handle:
        leaked = [k for k in handle.keys() if k.startswith(("llm.", LLM_PREFIX))]  # an old or today's name
    if leaked:
        raise CheckpointError(f"{folder}/{WEIGHTS_NAME} holds LLM weights ({leaked[:3]}...); they are never uploaded")
    allowed = set(allowed_files(include_user_table))
    chosen = [f for f in files if f in allowed]
    left = [f for f in files if f not in allowed]
    if left:
        logger.info("not uploaded (not on the allow-list%s): %s",
                    "" if include_user_table else "; include_user_table=True uploads the user table", left)
    markers = _local_path_markers(folder)
    for name in chosen:
        if name not in RECORD_FILES:  # the remote code is our source; a vocabulary may hold tokens like "/root"
            continue
        text = (folder / name).read_text(encoding="utf-8", errors="replace")
        found = [m for m in markers if m in text]
        if not found and name in PATH_FREE_FILES:
            found = _absolute_paths(json.loads(text))
        if found:
            raise CheckpointError(f"{folder}/{name} holds the local path {found[0]!r}; refusing to upload it")
    return chosen


def _absolute_paths(value: Any) -> List[str]:
    """String values (at any depth) that are absolute local paths (``/data/x.gguf``, ``C:\\models``, ``~/x``)."""
    if isinstance(value, Mapping):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _absolute_paths(v)]
    if isinstance(value, str) and _is_absolute(value) and len(value) > 1 and not value.startswith("//"):
        return [value]
    return []


def save_for_hub(model, folder, *, repo_id: str, run_info: Optional[Mapping[str, Any]] = None,
                 llm_name_or_path: Optional[str] = None, include_user_table: bool = False) -> List[str]:
    """Write what :func:`push_to_hub` uploads for ``repo_id`` into ``folder``; returns :func:`hub_files`.

    ``model.save_pretrained(folder)``, then without ``include_user_table`` the user table is removed, the run record
    is rewritten sanitized (:func:`~glta_hf.run_record.sanitized_run_info`) with ``hub_model_id``, and the card is
    rendered for ``repo_id``. ``llm_name_or_path`` replaces the LLM reference in the uploaded config (e.g. a Hub id
    for a model trained from a local copy); a local absolute reference is reduced to its name, with a warning.
    """
    from .io_utils import write_json

    folder = Path(folder)
    config = model.config
    saved_ref, saved_gguf = config.llm_name_or_path, config.llm_gguf_file
    if llm_name_or_path:
        config.llm_name_or_path = llm_name_or_path
    try:
        if config.llm_gguf_file and _is_absolute(str(config.llm_gguf_file)):
            config.llm_gguf_file = portable_path(config.llm_gguf_file)
            logger.warning("llm_gguf_file is the local path %r; it is uploaded as its name %r", saved_gguf,
                           config.llm_gguf_file)
        ref = str(config.llm_name_or_path)
        if hub_base_model(config) != ref and (os.path.isabs(ref) or os.path.exists(ref)):
            config.llm_name_or_path = portable_path(ref)
            logger.warning(
                "the checkpoint references the LLM by the local path %r; it is uploaded as %r, which other machines "
                "cannot resolve: pass llm_name_or_path=<hub id> to push_to_hub (loaders can also override it with "
                "from_pretrained(..., llm_name_or_path=...))", ref, config.llm_name_or_path)
        model.save_pretrained(folder)
        if not include_user_table:
            (folder / USER_TABLE_NAME).unlink(missing_ok=True)
        _portable_adapter_config(folder / ADAPTER_CONFIG)
        record = sanitized_run_info(run_info if run_info is not None else (getattr(model, "run_info", None) or {}))
        record["hub_model_id"] = repo_id
        write_json(folder / RUN_INFO_NAME, record)
        write_model_card(model, folder, repo_id=repo_id, run_info=record, user_table=include_user_table)
    finally:
        config.llm_name_or_path, config.llm_gguf_file = saved_ref, saved_gguf
    (folder / MANIFEST_NAME).unlink(missing_ok=True)
    files = hub_files(folder, include_user_table=include_user_table)
    write_manifest(folder, files)  # of exactly what is uploaded (the user table removed, the record rewritten)
    return sorted(files + [MANIFEST_NAME])


def _portable_adapter_config(path: Path) -> None:
    """PEFT records the LLM it wrapped as ``base_model_name_or_path``; a local absolute path is reduced to its name."""
    from .io_utils import read_json, write_json

    if not path.is_file():
        return
    adapter = read_json(path)
    base = adapter.get("base_model_name_or_path")
    if isinstance(base, str) and base != portable_path(base):
        adapter["base_model_name_or_path"] = portable_path(base)
        write_json(path, adapter)


def push_to_hub(
    model,
    repo_id: str,
    *,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    private: Optional[bool] = None,
    token=None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    run_info: Optional[Mapping[str, Any]] = None,
    llm_name_or_path: Optional[str] = None,
    include_user_table: bool = False,
    run_as_future: bool = False,
    **ignored: Any,
):
    """Upload ``model``'s checkpoint and card to ``repo_id`` in one commit (see the module docstring).

    Returns the ``CommitInfo`` of ``HfApi.create_commit`` (a ``Future`` of it with ``run_as_future=True``).
    ``run_info`` replaces ``model.run_info`` as the record behind the card; ``llm_name_or_path`` replaces the LLM
    reference in the uploaded config. ``include_user_table=True`` also uploads ``user_table.json`` (user ids,
    training histories, profile / prediction texts); without it, users are served through their histories. Arguments of ``PreTrainedModel.push_to_hub`` that do not apply to GLTA
    (``max_shard_size``, ``safe_serialization``, ``tags``) are accepted and ignored.
    """
    from huggingface_hub import CommitOperationAdd

    if ignored:
        logger.info("push_to_hub: ignoring %s", sorted(ignored))
    api = _api()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="glta-push-") as tmp:
        files = save_for_hub(model, tmp, repo_id=repo_id, run_info=run_info, llm_name_or_path=llm_name_or_path,
                             include_user_table=include_user_table)
        # bytes, not paths: the temporary folder is gone before a run_as_future commit reads them
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=(Path(tmp) / f).read_bytes()) for f in files]
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
    logger.info("uploading %d files to %s: %s", len(files), repo_id, ", ".join(files))
    return api.create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message=commit_message or "Upload GLTA model",
        commit_description=commit_description,
        token=token,
        create_pr=create_pr,
        revision=revision,
        run_as_future=run_as_future,
    )


# ----------------------------------------------------------------------------------------------- Trainer side


def trainer_run_info(trainer, stage: Optional[str] = None) -> Dict[str, Any]:
    """The model's run record plus this trainer's stage (hyperparameters) and its last validation metrics."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    record: Dict[str, Any] = dict(getattr(model, "run_info", None) or {})
    args = trainer.args
    name = stage or getattr(trainer, "stage", None) or getattr(args, "stage", "user")
    step = int(trainer.state.global_step)
    records = stage_records(record)
    earlier = next((s for s in records if s.get("name") == name), {})  # run_stage's record keeps its other fields
    record["stages"] = [s for s in records if s.get("name") != name] + [
        dict(earlier, **stage_record(name, args, global_step=step), global_step=step)]
    if not (record.get("eval") or {}).get("metrics"):
        evals = [h for h in trainer.state.log_history if any(k.startswith("eval_") and "@" in k for k in h)]
        if evals:
            last = evals[-1]
            record["eval"] = {"split": "validation", "decoding": getattr(args, "eval_decoding", "first_k"),
                              "metrics": {k[len("eval_"):]: v for k, v in last.items()
                                          if k.startswith("eval_") and "@" in k}}
    return record


def push_trainer_to_hub(trainer, *, commit_message: Optional[str] = "End of training", blocking: bool = True,
                        token=None, revision: Optional[str] = None, private: Optional[bool] = None, **kwargs):
    """``GLTATrainer.push_to_hub``: the trained model's checkpoint + GLTA card to ``args.hub_model_id``.

    The repository defaults to the output folder's name, as ``Trainer.push_to_hub`` does; nothing else of
    ``output_dir`` (``training_args.bin``, ``checkpoint-*``) is uploaded.
    """
    if not trainer.is_world_process_zero():
        return None
    args = trainer.args
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id or Path(args.output_dir).absolute().name
    model = trainer.accelerator.unwrap_model(trainer.model)
    return push_to_hub(
        model,
        repo_id,
        commit_message=commit_message,
        token=token if token is not None else args.hub_token,
        revision=revision if revision is not None else getattr(args, "hub_revision", None),
        private=private if private is not None else args.hub_private_repo,
        run_info=trainer_run_info(trainer),
        run_as_future=not blocking,
        **kwargs,
    )
