"""Sharing GLTA checkpoints on the Hugging Face Hub: what is uploaded, and the one upload path.

``model.push_to_hub(repo_id)`` and ``GLTATrainer.push_to_hub()`` both end in :func:`push_to_hub`, which

1. creates the repository (``HfApi.create_repo(exist_ok=True)``),
2. writes the checkpoint with ``model.save_pretrained`` into a fresh temporary folder -- config (+ ``auto_map``),
   ``model.safetensors`` (GLTA's own weights: projectors, slot vectors, GLLM head, frozen ``E_u`` / ``E_i``), the
   tokenizer with the ``<user>`` / ``<item>`` / ``<slot>`` placeholders, ``item_catalogue.json``,
   ``user_table.json``, the run record ``glta_run.json``, the remote-code files (``configuration_glta.py``,
   ``modeling_glta.py`` and the sibling modules they import) and ``llm_adapter/`` when LoRA is on,
3. renders the model card (``README.md``: ``base_model``, dataset, stages, ``eval_results`` model-index) for that
   repository id,
4. checks the folder (:func:`hub_files`): no pickle file, no weight file but GLTA's own, and no ``llm.*`` tensor in
   ``model.safetensors`` -- the LLM is referenced by ``config.llm_name_or_path``, never uploaded,
5. uploads exactly those files in one commit (``HfApi.create_commit``, the call ``PreTrainedModel.push_to_hub``
   makes too).

transformers' own ``PreTrainedModel.push_to_hub`` is not used: it loads the remote card with ``ModelCard.load`` and
overwrites ``README.md`` with a generic transformers card, and ``Trainer.push_to_hub`` uploads the whole
``output_dir`` (with ``training_args.bin``, a pickle) under a generic card.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from .errors import CheckpointError
from .model_card import CARD_NAME, RUN_INFO_NAME, hub_base_model, stage_record, stage_records, write_model_card

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
ADAPTER_DIR = "llm_adapter"
#: the only weight files a GLTA repository may hold
ALLOWED_WEIGHTS = (WEIGHTS_NAME, f"{ADAPTER_DIR}/adapter_model.safetensors")
#: files every uploaded GLTA checkpoint has (the tokenizer adds its own files, LoRA adds llm_adapter/)
REQUIRED_FILES = ("config.json", WEIGHTS_NAME, "item_catalogue.json", "user_table.json", "configuration_glta.py",
                  "modeling_glta.py", "tokenizer_config.json", CARD_NAME)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_WEIGHT_SUFFIXES = (".safetensors", ".gguf") + _PICKLE_SUFFIXES


def _api():
    from huggingface_hub import HfApi

    from . import __version__

    return HfApi(library_name="glta-hf", library_version=__version__)


def hub_files(folder) -> List[str]:
    """The files of a saved GLTA checkpoint that go to the Hub (relative POSIX paths, sorted), after checking them.

    Raises :class:`~glta_hf.errors.CheckpointError` for a missing required file, a pickle file, a weight file other
    than :data:`ALLOWED_WEIGHTS` (an LLM copy, a GGUF file) or ``llm.*`` tensors in ``model.safetensors``.
    """
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = [f for f in files if "__pycache__" not in f and not f.startswith(".")]
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise CheckpointError(f"{folder}: not a complete GLTA checkpoint, missing {missing}")
    bad = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
    if bad:
        raise CheckpointError(f"{folder}: refusing to upload pickle files {bad}")
    extra_weights = [f for f in files if f.endswith(_WEIGHT_SUFFIXES) and f not in ALLOWED_WEIGHTS]
    if extra_weights:
        raise CheckpointError(f"{folder}: refusing to upload weight files other than GLTA's own: {extra_weights}")
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as handle:
        leaked = [k for k in handle.keys() if k.startswith("llm.")]
    if leaked:
        raise CheckpointError(f"{folder}/{WEIGHTS_NAME} holds LLM weights ({leaked[:3]}...); they are never uploaded")
    return files


def save_for_hub(model, folder, *, repo_id: str, run_info: Optional[Mapping[str, Any]] = None,
                 llm_name_or_path: Optional[str] = None) -> List[str]:
    """``model.save_pretrained(folder)`` + ``glta_run.json`` + the card for ``repo_id``; returns :func:`hub_files`.

    ``llm_name_or_path`` replaces the LLM reference in the uploaded config (e.g. a Hub id for a model trained from
    a local copy); a reference that only exists on this machine is uploaded with a warning.
    """
    from .io_utils import write_json

    folder = Path(folder)
    config = model.config
    saved_ref = config.llm_name_or_path
    if llm_name_or_path:
        config.llm_name_or_path = llm_name_or_path
    try:
        ref = str(config.llm_name_or_path)
        if hub_base_model(config) != ref and (os.path.isabs(ref) or os.path.exists(ref)):
            logger.warning(
                "the checkpoint references the LLM by the local path %r, which other machines cannot resolve; "
                "pass llm_name_or_path=<hub id> to push_to_hub (loaders can also override it with "
                "from_pretrained(..., llm_name_or_path=...))", ref)
        model.save_pretrained(folder)
        record = dict(run_info if run_info is not None else (getattr(model, "run_info", None) or {}))
        record["hub_model_id"] = repo_id
        write_json(folder / RUN_INFO_NAME, record)
        write_model_card(model, folder, repo_id=repo_id, run_info=record)
    finally:
        config.llm_name_or_path = saved_ref
    return hub_files(folder)


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
    run_as_future: bool = False,
    **ignored: Any,
):
    """Upload ``model``'s checkpoint and card to ``repo_id`` in one commit (see the module docstring).

    Returns the ``CommitInfo`` of ``HfApi.create_commit`` (a ``Future`` of it with ``run_as_future=True``).
    ``run_info`` replaces ``model.run_info`` as the record behind the card; ``llm_name_or_path`` replaces the LLM
    reference in the uploaded config. Arguments of ``PreTrainedModel.push_to_hub`` that do not apply to GLTA
    (``max_shard_size``, ``safe_serialization``, ``tags``) are accepted and ignored.
    """
    from huggingface_hub import CommitOperationAdd

    if ignored:
        logger.info("push_to_hub: ignoring %s", sorted(ignored))
    api = _api()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="glta-push-") as tmp:
        files = save_for_hub(model, tmp, repo_id=repo_id, run_info=run_info, llm_name_or_path=llm_name_or_path)
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
    name = stage or getattr(trainer, "glta_stage", None) or getattr(args, "stage", "user")
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
