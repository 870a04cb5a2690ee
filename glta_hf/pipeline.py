"""The end-to-end GLTA pipeline as library functions: graph stage, texts, model, alignment stages, evaluation.

``training/align.py`` (the ``accelerate launch`` script), ``glta quickstart`` (:mod:`glta_hf.quickstart`) and
``glta benchmark`` share these, so a stage is built, trained, recorded, reused and saved one way only:

* :func:`train_graph` -- LightGCN with BPR and early stopping on the validation split (:mod:`glta_hf.graph`);
  the node-embedding folder is reused when it exists and matches the dataset (resumable).
* :func:`generate_texts` -- profile / prediction texts with the frozen LLM (:mod:`glta_hf.texts`; the cache
  resumes by itself).
* :func:`build_model` -- a fresh :class:`~glta_hf.modeling_glta.GLTAForRecommendation` from node embeddings, a
  loaded backbone and the item catalogue, after checking the id maps agree; any ``GLTAConfig`` option
  (``GLTAModelArguments.config_kwargs()``: head, projector, lora, chunk sizes).
* :func:`attach_user_context` -- per user the serving history (training items, shown ones last) and the texts.
* :func:`run_stages` -- the stage loop (item-text, then user-item): each stage in ``<root>/<stage>``, a finished
  stage reused when its record says it trained (> 0 steps) with the same settings (fingerprint), an interrupted
  one resumed from its last complete checkpoint of the same settings, or from an explicit, validated checkpoint.
* :func:`run_stage` -- one stage with :class:`~glta_hf.trainer.GLTATrainer`; the final model goes to
  ``<stage_dir>/final`` through ``save_pretrained`` with the stage recorded in ``model.run_info`` (so
  ``glta_run.json`` and the ``README.md`` card are written with it) and each user's COMPLETE training history (fit
  + validation) in its user table, so ``recommend()`` never returns a training item.
* Evaluation lives with the metrics (:func:`glta_hf.metrics.evaluate_glta`, :func:`~glta_hf.metrics.evaluate_graph`).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from safetensors import safe_open

from .alignment_data import serving_histories, training_splits, user_histories
from .errors import CheckpointError, IdMapMismatchError, TrainingError
from .graph import (BPRTrainer, GraphTrainingArguments, build_model as build_graph_model, export_node_embeddings,
                    load_node_embeddings)
from .io_utils import output_lock, read_json
from .model_card import stage_record, stage_records
from .modeling_glta import RUN_INFO_NAME, WEIGHTS_NAME, GLTAForRecommendation
from .texts import generate_user_texts, load_texts
from .trainer import GLTATrainer, checkpoint_stage
from .training_args import ALIGNMENT_STAGES

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- graph stage


def train_graph(data, folder, args=None, *, model: str = "lightgcn"):
    """Node embeddings of ``data`` (fit on ``train``, early-stopped on ``validation``) in ``folder``.

    Returns ``(NodeEmbeddings, reused)``. An existing folder whose id maps match ``data`` is loaded, not retrained.
    """
    folder = Path(folder)
    if (folder / "node_embeddings.safetensors").is_file():
        nodes = load_node_embeddings(folder)
        if nodes.user_ids == [str(u) for u in data.user_ids] and nodes.item_ids == [str(i) for i in data.item_ids]:
            return nodes, True
        logger.warning("%s: id maps differ from dataset %r; retraining the graph stage", folder, data.name)
    args = args or GraphTrainingArguments()
    fit = data.matrix("train")
    validation = data.matrix("validation") if "validation" in data.splits else None
    graph_model = build_graph_model(model, fit, args)
    result = BPRTrainer(graph_model, args, fit, validation).train()
    config = {"model": model, "dim": args.dim, "layers": args.layers, "lr": args.lr, "reg": args.reg,
              "epochs": args.epochs, "seed": args.seed, "best_epoch": result.best_epoch,
              "epochs_run": len(result.history), "train_wall_time_s": round(result.wall_time_s, 1),
              "validation": {k: round(v, 5) for k, v in result.best_validation.items()}}
    export_node_embeddings(graph_model, folder, data.user_ids, data.item_ids, config)
    return load_node_embeddings(folder), False


def check_node_ids(nodes, data, where="node embeddings") -> None:
    """Refuse node embeddings whose id maps are not ``data``'s (``IdMapMismatchError``, a ``ValueError``)."""
    if list(nodes.user_ids) != [str(u) for u in data.user_ids] or list(nodes.item_ids) != [str(i) for i in data.item_ids]:
        raise IdMapMismatchError(f"{where}: id maps differ from dataset {data.name!r}; rerun the graph stage on the "
                                 "same dataset and split options")


def reconcile_held_out(args, graph_dir) -> None:
    """Make ``args``' held-out fold the one the graph in ``graph_dir`` was fit without (``ValueError`` if not).

    With ``target_policy="held_out"`` the user stage draws its targets from that fold, so the fold must be the
    graph's own: an unset ``held_out_fraction`` is read from the folder's ``graph_config.json``, a different one is
    refused (naming both), as is a graph fit on every edge. Reads one small JSON file: runs before any model loads.
    """
    from .graph import GRAPH_CONFIG_NAME, HELD_OUT_KEY, recorded_held_out

    if args.target_policy != "held_out":
        return
    path = Path(graph_dir) / GRAPH_CONFIG_NAME
    try:
        record = recorded_held_out(graph_dir)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the graph's held-out fold ({err})") from None
    if not record:
        raise ValueError(f"target_policy held_out: the graph in {graph_dir} was fit on every training edge "
                         f"({path} records no {HELD_OUT_KEY!r}); pretrain it with --held-out-fraction")
    fraction, seed = float(record["fraction"]), int(record.get("seed", 0))
    if args.held_out_fraction is None:
        args.held_out_fraction, args.held_out_seed = fraction, seed
    elif (abs(args.held_out_fraction - fraction) > 1e-12) or args.held_out_seed != seed:
        raise ValueError(f"held_out_fraction {args.held_out_fraction} / held_out_seed {args.held_out_seed} differ "
                         f"from the fold the graph in {graph_dir} was fit without ({fraction} / {seed}, {path})")


# ----------------------------------------------------------------------------------------------- texts


def generate_texts(llm, tokenizer, data, path, *, config=None, llm_ref=None, users=None, progress: bool = True):
    """Generate (or finish) the profile / prediction cache at ``path`` and return ``{user_idx: record}``."""
    summary = generate_user_texts(llm, tokenizer, data, path, config=config, llm=llm_ref, users=users,
                                  progress=progress)
    logger.info("texts: %s", summary)
    return load_texts(path, num_users=data.num_users)


# ----------------------------------------------------------------------------------------------- model


def build_model(llm, tokenizer, nodes, data, *, llm_name_or_path: str, llm_revision=None, llm_gguf_file=None,
                quantization: str = "none", llm_dtype=None, prompt=None, **config_kwargs):
    """A fresh GLTA model over ``nodes`` (checked against ``data``'s id maps) with ``data``'s catalogue.

    ``config_kwargs``: any ``GLTAConfig`` option (``num_slots``, ``head``, ``projector``, ``lora``,
    ``ce_chunk_size``, ``rank_chunk_size``, ...), e.g. ``GLTAModelArguments.config_kwargs()``.
    """
    check_node_ids(nodes, data)
    return GLTAForRecommendation.from_components(
        llm, tokenizer, nodes.user, nodes.item, item_ids=data.item_ids, item_titles=data.item_titles,
        llm_name_or_path=llm_name_or_path, llm_revision=llm_revision, llm_gguf_file=llm_gguf_file,
        quantization=quantization, llm_dtype=llm_dtype, prompt=prompt, **config_kwargs)


def attach_user_context(model, data, histories, *, has_time: bool, texts: Optional[Mapping[int, Mapping]] = None,
                        eval_history: str = "auto", seed: int = 0) -> bool:
    """Attach external user ids, serving histories and texts; returns whether the shown history is the most recent."""
    recent = (has_time and eval_history != "sample") or eval_history == "recent"
    texts = texts or {}
    model.attach_user_context(
        user_ids=data.user_ids,
        histories=serving_histories(histories, model.prompt_config.max_history, recent, seed),
        profiles=[(texts.get(u) or {}).get("profile") for u in range(data.num_users)],
        predictions=[(texts.get(u) or {}).get("prediction") for u in range(data.num_users)],
    )
    return recent


def attach_complete_histories(model, data, *, eval_history: str = "auto", seed: int = 0) -> bool:
    """Each user's COMPLETE training history (fit + validation) as the serving history: what a saved model must
    hold, so ``recommend()`` excludes every training item and shows the most recent ones."""
    histories, has_time = user_histories(data, training_splits(data))
    recent = (has_time and eval_history != "sample") or eval_history == "recent"
    model.attach_user_context(histories=serving_histories(histories, model.prompt_config.max_history, recent, seed))
    return recent


# ----------------------------------------------------------------------------------------------- stages


def checkpoint_step(path: Path) -> Optional[int]:
    """The global step a Trainer ``checkpoint-N`` folder is named by (None for any other name)."""
    try:
        return int(path.name.split("-")[-1])
    except ValueError:
        return None


def checkpoint_problem(path) -> Optional[str]:
    """Why ``path`` is not a complete Trainer checkpoint (``None`` when it is): the Trainer writes
    ``trainer_state.json`` last, so a job killed while saving leaves a folder without a parseable one."""
    path = Path(path)
    if not path.is_dir():
        return "no such folder"
    if not (path / WEIGHTS_NAME).is_file():
        return f"no {WEIGHTS_NAME}"
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable trainer_state.json (interrupted while saving?)"
    return None


def last_complete_checkpoint(stage_dir, *, fingerprint: Optional[str] = None) -> Optional[str]:
    """The newest complete ``checkpoint-N`` of ``stage_dir`` (see :func:`checkpoint_problem`); with ``fingerprint``,
    checkpoints written under other stage settings are skipped (they belong to an invalidated run)."""
    found = [(step, path) for path in Path(stage_dir).glob("checkpoint-*")
             if (step := checkpoint_step(path)) is not None]
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem:
            logger.warning("skipping incomplete checkpoint %s: %s", path, problem)
            continue
        recorded = checkpoint_stage(path).get("fingerprint")
        if fingerprint is not None and recorded is not None and recorded != fingerprint:
            logger.warning("skipping %s: written under other stage settings", path)
            continue
        return str(path)
    return None


def wants_resume(value) -> bool:
    """Whether a ``resume_from_checkpoint`` value asks to continue (``true`` / ``last`` / a checkpoint path)."""
    return value is not None and str(value).lower() not in ("", "false", "no", "0")


def names_last_checkpoint(value) -> bool:
    """``true`` / ``last`` (the stage's own last checkpoint) rather than an explicit path."""
    return str(value).lower() in ("true", "last", "yes", "1")


def check_resume_checkpoint(path, *, stage: Optional[str] = None, model=None,
                            fingerprint: Optional[str] = None) -> str:
    """An explicit ``--resume_from_checkpoint PATH``, validated: a complete Trainer checkpoint, of ``stage``, whose
    weights match ``model``'s GLTA parameters (names and shapes). Raises :class:`CheckpointError` naming the path
    and what is wrong; a checkpoint written under other stage settings is accepted with a warning (the caller
    asked for it explicitly, e.g. to continue with a larger budget)."""
    folder = Path(path)
    problem = checkpoint_problem(folder)
    if problem:
        raise CheckpointError(f"--resume_from_checkpoint {path}: not a complete checkpoint ({problem})")
    recorded = checkpoint_stage(folder)
    if stage is not None and recorded.get("stage") not in (None, stage):
        raise CheckpointError(f"--resume_from_checkpoint {path}: a checkpoint of the {recorded['stage']!r} stage, "
                              f"not of {stage!r}")
    if fingerprint is not None and recorded.get("fingerprint") not in (None, fingerprint):
        logger.warning("--resume_from_checkpoint %s was written under other stage settings; resuming anyway", path)
    if model is not None:
        try:
            with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as handle:
                shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except Exception as err:  # safetensors raises its own error types for a torn header
            raise CheckpointError(f"{folder / WEIGHTS_NAME}: unreadable safetensors file ({err})") from None
        own = {k: tuple(v.shape) for k, v in model.glta_state_dict().items()}
        if shapes != own:
            missing, unexpected = sorted(set(own) - set(shapes)), sorted(set(shapes) - set(own))
            wrong = [f"{k}: {shapes[k]} vs {own[k]}" for k in own if k in shapes and shapes[k] != own[k]]
            raise CheckpointError(f"--resume_from_checkpoint {path}: weights of another model (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]}, shapes {wrong[:3]})")
    return str(folder)


def resolve_resume(value, stage_dir, *, stage: Optional[str] = None, model=None,
                   fingerprint: Optional[str] = None) -> Optional[str]:
    """``None`` / ``false``: no resume; ``true`` / ``last``: the last complete checkpoint of the stage written under
    the same settings (None when there is none); a path: that checkpoint, validated (:func:`check_resume_checkpoint`)
    -- never ignored."""
    if not wants_resume(value):
        return None
    stage_dir = Path(stage_dir)
    if names_last_checkpoint(value):
        return last_complete_checkpoint(stage_dir, fingerprint=fingerprint) if stage_dir.is_dir() else None
    return check_resume_checkpoint(value, stage=stage, model=model, fingerprint=fingerprint)


def finished_stage(final_dir, stage: str) -> Optional[Dict[str, Any]]:
    """The stage record of a complete ``final`` folder (weights, then ``glta_run.json``, written last), or None.

    A stage that trained zero steps is not finished. Records written before stage records (a list of names) count
    when they name the stage.
    """
    final_dir = Path(final_dir)
    if not ((final_dir / WEIGHTS_NAME).is_file() and (final_dir / RUN_INFO_NAME).is_file()):
        return None
    try:
        run = read_json(final_dir / RUN_INFO_NAME)
    except ValueError:
        return None
    record = next((s for s in stage_records(run) if s.get("name") == stage), None)
    if record is None or ("global_step" in record and not int(record["global_step"] or 0) > 0):
        return None
    return record


def stage_done(final_dir, stage: Optional[str] = None) -> bool:
    """Whether ``final_dir`` holds a finished stage (``stage``: its name; default the folder's parent's name)."""
    return finished_stage(final_dir, stage or Path(final_dir).parent.name) is not None


def needs_unused_parameter_search(stage: str, args) -> bool:
    """See :meth:`GLTATrainingArguments.needs_unused_parameter_search`."""
    return args.needs_unused_parameter_search(stage)


def _id_list_key(ids) -> Optional[List[int]]:
    return None if ids is None else [int(i) for i in ids]


def stage_fingerprint(stage: str, args, *, model_options: Optional[Mapping[str, Any]] = None, users=None,
                      items=None, upstream: Optional[str] = None) -> str:
    """What a finished stage's result depends on: the stage settings, the model options, the trained users/items
    and (``upstream``) the fingerprint of the stage it continued from."""
    return args.stage_fingerprint(stage, model=dict(model_options or {}), users=_id_list_key(users),
                                  items=_id_list_key(items), upstream=upstream)


def run_stage(model, stage: str, args, *, data, histories, has_time: bool, texts=None, users=None, items=None,
              callbacks: Sequence = (), early_stopping_patience: Optional[int] = None, resume="last",
              final_dir=None, run_info: Optional[Mapping[str, Any]] = None, fingerprint: Optional[str] = None,
              settings: Optional[Mapping[str, Any]] = None, prefix_store=None):
    """Train one alignment stage of ``model`` with :class:`GLTATrainer` and save it to ``final_dir``.

    ``stage``: ``"item"`` or ``"user"`` (``args.trainable_stage`` decides whether the item projector trains too,
    w/o IA); ``args`` is a :class:`GLTATrainingArguments` whose ``output_dir`` is the stage folder (Trainer
    checkpoints); the trainer applies the per-stage overrides to its own copy. ``final_dir`` defaults to
    ``<output_dir>/final``. ``users`` / ``items``: the user stage's training users / the item stage's items
    (budgets). ``resume``: see :func:`resolve_resume`. The user context (fit histories, texts) must be attached
    already (:func:`attach_user_context`); the saved model holds each user's complete training history.

    The run record ``model.run_info`` (updated with ``run_info``, then saved as ``glta_run.json`` with the weights
    by the main process) gains this stage in ``stages`` -- ``{"name", "global_step", "output_dir",
    "wall_time_s", "world_size", "fingerprint", "settings", "hyperparameters", "log_history"}``, replacing an
    earlier record of the same name -- and its train / validation metrics in ``stage_metrics[stage]``; test metrics
    of an earlier model (``eval``) are dropped, they do not describe this one. A run that trained zero steps
    raises :class:`TrainingError`. Returns ``(model, metrics)``; ``metrics["global_step"]`` is the final step.
    ``prefix_store``: the user stage's cached prefixes (see :class:`~glta_hf.trainer.GLTATrainer`).
    """
    if stage not in ALIGNMENT_STAGES:
        raise ValueError(f"stage must be one of {ALIGNMENT_STAGES}, got {stage!r}")
    final_dir = Path(final_dir) if final_dir is not None else Path(args.output_dir) / "final"
    fingerprint = fingerprint or stage_fingerprint(stage, args, users=users, items=items)
    trainer = GLTATrainer(model, args, stage, data=data, histories=histories, has_time=has_time, texts=texts,
                          users=users, items=items, callbacks=callbacks,
                          early_stopping_patience=early_stopping_patience, fingerprint=fingerprint,
                          prefix_store=prefix_store)
    args = trainer.args  # the stage's copy (item-stage epochs / learning rate, DDP flags)
    checkpoint = resolve_resume(resume, args.output_dir, stage=stage, model=model, fingerprint=fingerprint)
    if checkpoint:
        logger.info("stage %s: resuming from %s", stage, checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = trainer.train_seconds()  # over every run that resumed the stage
    global_step = int(trainer.state.global_step)
    if global_step <= 0:
        raise TrainingError(f"stage {stage} trained zero steps (epochs {args.num_train_epochs}, max_steps "
                            f"{args.max_steps}, {len(trainer.train_dataset)} samples): nothing to save")
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    if trainer.ranking_truth is not None:
        metrics.update(trainer.evaluate())
    metrics["global_step"] = global_step

    record = dict(model.run_info or {})
    for key in _LEGACY_STAGE_KEYS + ("eval",):
        record.pop(key, None)
    record.update({k: v for k, v in (run_info or {}).items() if k != "stages"})
    stages = [s for s in stage_records(record) if s.get("name") != stage]
    train_dataset = trainer.train_dataset
    hyper = stage_record(stage, args, global_step=global_step,
                         train_users=len(train_dataset) if stage == "user" else None,
                         train_items=(len(items) if items is not None else data.num_items) if stage == "item" else None)
    record["stages"] = stages + [{
        "name": stage, "global_step": global_step, "output_dir": _run_relative(final_dir, args.output_dir),
        "wall_time_s": round(seconds, 1),
        "world_size": int(args.world_size), "fingerprint": fingerprint,
        "settings": dict(settings or args.stage_settings(stage)),
        "hyperparameters": {k: v for k, v in hyper["hyperparameters"].items() if v is not None},
        "log_history": trainer.state.log_history,
        **({"diagnostics": trainer.diagnostics} if trainer.diagnostics else {}),
        **({"best_step": trainer.best_state["step"]} if trainer.best_state else {})}]
    record.setdefault("stage_metrics", {})[stage] = metrics
    record["eval_history_recent"] = attach_complete_histories(model, data, eval_history=args.eval_history,
                                                              seed=args.seed)
    model.run_info = record
    if trainer.is_world_process_zero():
        model.save_pretrained(final_dir)  # writes glta_run.json + README.md from model.run_info
        logger.info("stage %s done in %.1fs (step %d) -> %s", stage, seconds, global_step, final_dir)
    trainer.accelerator.wait_for_everyone()
    return model, metrics


def _run_relative(final_dir: Path, stage_dir) -> str:
    """The stage's folder as recorded: relative to the run's root (``user/final``), never an absolute path (records
    travel with the checkpoint)."""
    try:
        return Path(final_dir).resolve().relative_to(Path(stage_dir).resolve().parent).as_posix()
    except ValueError:
        return Path(final_dir).name


# top-level keys of the glta_run.json that training/align.py wrote before it went through run_stage
_LEGACY_STAGE_KEYS = ("stage", "stage_wall_time_s", "train_metrics", "log_history", "world_size")


def _changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    changes = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(changes) or "the trained users / items or the model options"


def run_stages(plan: Sequence[str], args, *, root, **kwargs):
    """The alignment stages of ``plan`` in ``<root>/<stage>`` (:func:`_run_stages` says how), with ``root`` locked
    for this run (``io_utils.output_lock``, main process): a second run into the same folder stops at once with
    :class:`~glta_hf.errors.OutputLockedError` instead of interleaving checkpoints and rotating away this one's."""
    with output_lock(root) if getattr(args, "process_index", 0) == 0 else contextlib.nullcontext():
        return _run_stages(plan, args, root=root, **kwargs)


def _run_stages(plan: Sequence[str], args, *, root, llm, data, texts=None, first_model: Callable[[str], Any],
               model_options: Optional[Mapping[str, Any]] = None, resume="last", users=None, items=None,
               early_stopping_patience: Optional[int] = None, run_info: Optional[Mapping[str, Any]] = None,
               before_stage: Optional[Callable[[str], None]] = None,
               on_stage: Optional[Callable[[str, Any, Dict[str, Any]], None]] = None,
               echo: Callable[[str], None] = logger.info):
    """The alignment stages of ``plan`` (``args.stage_plan()``), each in ``<root>/<stage>``; returns the last model.

    The one stage loop of ``training/align.py``, ``glta quickstart`` and ``glta benchmark``. For each stage:

    * with ``resume`` set (``"last"``, ``"true"`` or a path: :func:`wants_resume`), a finished ``final`` folder is
      reused (loaded on ``llm``) when its record shows > 0 steps and the same fingerprint (settings, model options,
      trained users / items); otherwise ``echo`` says what changed and the stage trains again;
    * otherwise the stage trains (:func:`run_stage`), resuming from the stage's last checkpoint of the same settings
      (or from the explicit path, for the first stage that trains), starting from the previous stage's model or
      ``first_model(stage)``. The fit histories and ``texts`` are attached before training.

    ``users`` / ``items``: the user stage's training users / the item stage's items. ``model_options``: the model's
    config options (part of the fingerprint). ``before_stage(stage)`` / ``on_stage(stage, model, metrics)`` run
    before / after each stage; ``metrics`` has ``global_step`` and, for a reused stage, ``skipped=True``. ``echo``
    receives the reuse / retrain decisions.

    With ``args.prefix_cache`` ONE :class:`~glta_hf.prefix_cache.PrefixStore` (``args.prefix_store()``) serves the
    whole run: the user stage's training, its validation ranking, and the returned model (cache left enabled), so a
    user's epoch-invariant prefix is computed once per run. The item stage runs uncached (its prompts are redrawn
    every epoch).
    """
    root = Path(root)
    prefix_store = args.prefix_store() if args.prefix_cache else None
    histories, has_time = user_histories(data, "train")
    explicit = resume if wants_resume(resume) and not names_last_checkpoint(resume) else None
    model, upstream = None, None
    for stage in plan:
        stage_dir = root / stage
        final = stage_dir / "final"
        if before_stage is not None:
            before_stage(stage)
        stage_users, stage_items = (users, None) if stage == "user" else (None, items)
        fingerprint = stage_fingerprint(stage, args, model_options=model_options, users=stage_users,
                                        items=stage_items, upstream=upstream)
        upstream = fingerprint  # a retrained item stage invalidates the user stage built on it
        settings = args.stage_settings(stage)
        record = finished_stage(final, stage) if wants_resume(resume) else None
        if record is not None and record.get("fingerprint") not in (None, fingerprint):
            changed = _changed_settings(record.get("settings") or {}, settings)
            echo(f"stage {stage}: {final} was trained with other settings ({changed}); training it again")
            record = None
        if record is not None:
            if record.get("fingerprint") is None:
                logger.warning("stage %s: %s records no settings fingerprint (an older run); reusing it", stage, final)
            echo(f"reused the finished stage {stage} in {final}")
            model = GLTAForRecommendation.from_pretrained(final, llm=llm)
            metrics = {"global_step": record.get("global_step"), "skipped": True}
        else:
            if model is None:
                model = first_model(stage)
            model.config.prompt.update(args.prompt_overrides())  # the serving history length follows max_history
            recent = attach_user_context(model, data, histories, has_time=has_time, texts=texts,
                                         eval_history=args.eval_history, seed=args.seed)
            stage_args = _with_output_dir(args, stage_dir)
            model, metrics = run_stage(
                model, stage, stage_args, data=data, histories=histories, has_time=has_time, texts=texts,
                users=stage_users, items=stage_items,
                early_stopping_patience=early_stopping_patience if stage == "user" else None,
                resume=explicit if explicit is not None else ("last" if wants_resume(resume) else None),
                final_dir=final, run_info=dict(run_info or {}, eval_history_recent=recent), fingerprint=fingerprint,
                settings=settings, prefix_store=prefix_store if stage == "user" else None)
            explicit = None  # an explicit checkpoint belongs to the first stage that trains
        if stage == "user" and prefix_store is not None and model.prefix_store is not prefix_store:
            model.enable_prefix_cache(prefix_store)  # a reused user stage: evaluation / serving still cached
        if on_stage is not None:
            on_stage(stage, model, metrics)
    if explicit is not None:  # every stage was finished: the checkpoint asked for was not used -- say so
        message = (f"--resume_from_checkpoint {explicit} was not used: every stage of {list(plan)} is finished in "
                   f"{root}; delete a stage's final/ folder to train it again from that checkpoint")
        logger.warning(message)
        echo(message)
    return model


def _with_output_dir(args, folder):
    stage_args = copy.copy(args)
    stage_args.output_dir = str(folder)
    return stage_args


def load_stage(final_dir, llm):
    """A finished stage's model (reusing the loaded ``llm``)."""
    return GLTAForRecommendation.from_pretrained(final_dir, llm=llm)


# ----------------------------------------------------------------------------------------------- evaluation


def comparison_table(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> str:
    """A Markdown table: one row per model, one column per metric, plus GLTA / baseline ratios when both exist."""
    names = list(rows)
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{rows[name].get(m, float('nan')):.4f}" for m in metrics) + " |")
    if len(names) == 2:
        a, b = rows[names[0]], rows[names[1]]
        ratio = [f"{a[m] / b[m]:.2f}x" if b.get(m) else "n/a" for m in metrics]
        lines.append(f"| {names[0]} / {names[1]} | " + " | ".join(ratio) + " |")
    return "\n".join(lines)
