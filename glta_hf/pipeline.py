"""The end-to-end GLTA pipeline as library functions: graph stage, texts, model, alignment stages, evaluation.

``training/align.py`` (the ``accelerate launch`` script) and ``glta quickstart`` (:mod:`glta_hf.quickstart`) share
these, so a stage is built, trained, recorded and saved one way only:

* :func:`train_graph` -- LightGCN with BPR and early stopping on the validation split (:mod:`glta_hf.graph`);
  the node-embedding folder is reused when it exists and matches the dataset (resumable).
* :func:`generate_texts` -- profile / prediction texts with the frozen LLM (:mod:`glta_hf.texts`; the cache
  resumes by itself).
* :func:`build_model` -- a fresh :class:`~glta_hf.modeling_glta.GLTAForRecommendation` from node embeddings, a
  loaded backbone and the item catalogue, after checking the id maps agree.
* :func:`attach_user_context` -- per user the serving history (training items, shown ones last) and the texts.
* :func:`run_stage` -- one alignment stage (``"item"`` or ``"user"``) with :class:`~glta_hf.glta_trainer.GLTATrainer`
  (the only implementation of a stage: training/align.py, quickstart and benchmark all call it);
  the final model goes to ``<stage_dir>/final`` through ``save_pretrained`` with the stage recorded in
  ``model.run_info`` (so ``glta_run.json`` and the ``README.md`` card are written with it). A finished stage is
  reloaded instead of retrained; an interrupted one resumes from its last complete Trainer checkpoint.
* :func:`evaluate_glta` / :func:`evaluate_graph` -- test metrics with the one evaluator
  (:func:`glta_hf.metrics.evaluate`): every training interaction (fit + validation) is excluded, both models are
  scored on the same users.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from .model_card import stage_records  # noqa: F401  (re-exported: training/align.py reads stage records)

logger = logging.getLogger(__name__)

RUN_INFO_NAME = "glta_run.json"


# ----------------------------------------------------------------------------------------------- graph stage


def train_graph(data, folder, args=None, *, model: str = "lightgcn"):
    """Node embeddings of ``data`` (fit on ``train``, early-stopped on ``validation``) in ``folder``.

    Returns ``(NodeEmbeddings, reused)``. An existing folder whose id maps match ``data`` is loaded, not retrained.
    """
    from .graph import BPRTrainer, GraphTrainingArguments, build_model as build_graph_model
    from .graph import export_node_embeddings, load_node_embeddings

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
    if list(nodes.user_ids) != [str(u) for u in data.user_ids] or list(nodes.item_ids) != [str(i) for i in data.item_ids]:
        raise ValueError(f"{where}: id maps differ from dataset {data.name!r}; rerun the graph stage on the same "
                         "dataset and split options")


# ----------------------------------------------------------------------------------------------- texts


def generate_texts(llm, tokenizer, data, path, *, config=None, llm_ref=None, users=None, progress: bool = True):
    """Generate (or finish) the profile / prediction cache at ``path`` and return ``{user_idx: record}``."""
    from .texts import generate_user_texts, load_texts

    summary = generate_user_texts(llm, tokenizer, data, path, config=config, llm=llm_ref, users=users,
                                  progress=progress)
    logger.info("texts: %s", summary)
    return load_texts(path, num_users=data.num_users)


# ----------------------------------------------------------------------------------------------- model


def build_model(llm, tokenizer, nodes, data, *, llm_name_or_path: str, llm_revision=None, llm_gguf_file=None,
                quantization: str = "none", llm_dtype=None, prompt=None, num_slots: int = 10,
                head: str = "linear", projector: str = "linear"):
    """A fresh GLTA model over ``nodes`` (checked against ``data``'s id maps) with ``data``'s catalogue."""
    from .modeling_glta import GLTAForRecommendation

    check_node_ids(nodes, data)
    return GLTAForRecommendation.from_components(
        llm, tokenizer, nodes.user, nodes.item, item_ids=data.item_ids, item_titles=data.item_titles,
        llm_name_or_path=llm_name_or_path, llm_revision=llm_revision, llm_gguf_file=llm_gguf_file,
        quantization=quantization, llm_dtype=llm_dtype, prompt=prompt, num_slots=num_slots, head=head,
        projector=projector)


def attach_user_context(model, data, histories, *, has_time: bool, texts: Optional[Mapping[int, Mapping]] = None,
                        eval_history: str = "auto", seed: int = 0) -> bool:
    """Attach external user ids, serving histories and texts; returns whether the shown history is the most recent."""
    from .alignment_data import serving_histories

    recent = (has_time and eval_history != "sample") or eval_history == "recent"
    texts = texts or {}
    model.attach_user_context(
        user_ids=data.user_ids,
        histories=serving_histories(histories, model.prompt_config.max_history, recent, seed),
        profiles=[(texts.get(u) or {}).get("profile") for u in range(data.num_users)],
        predictions=[(texts.get(u) or {}).get("prediction") for u in range(data.num_users)],
    )
    return recent


# ----------------------------------------------------------------------------------------------- stages


def last_complete_checkpoint(stage_dir) -> Optional[str]:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (written last by the Trainer) parses.

    A job killed while writing checkpoint N+1 leaves a partial folder; resuming from it would fail, so it is skipped.
    """
    found = []
    for path in Path(stage_dir).glob("checkpoint-*"):
        try:
            found.append((int(path.name.split("-")[-1]), path))
        except ValueError:
            continue
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("skipping incomplete checkpoint %s", path)
            continue
        if (path / "model.safetensors").is_file():
            return str(path)
    return None


def wants_resume(value) -> bool:
    """Whether a ``resume_from_checkpoint`` value asks to continue (``true`` / ``last`` / a checkpoint path)."""
    return value is not None and str(value).lower() not in ("", "false", "no", "0")


def resolve_resume(value, stage_dir) -> Optional[str]:
    """``None`` / ``false``: no resume; ``true`` / ``last``: the last complete checkpoint of the stage; a path."""
    stage_dir = Path(stage_dir)
    if not wants_resume(value):
        return None
    if str(value).lower() in ("true", "last", "yes", "1"):
        return last_complete_checkpoint(stage_dir) if stage_dir.is_dir() else None
    path = Path(value)
    return str(path) if path.parent.resolve() == stage_dir.resolve() else None


def stage_done(final_dir) -> bool:
    """A stage's final folder is complete once its ``glta_run.json`` is there (written after the weights)."""
    final_dir = Path(final_dir)
    return (final_dir / "model.safetensors").is_file() and (final_dir / RUN_INFO_NAME).is_file()


# top-level keys of the glta_run.json that training/align.py wrote before it went through run_stage
_LEGACY_STAGE_KEYS = ("stage", "stage_wall_time_s", "train_metrics", "log_history", "world_size")


def needs_unused_parameter_search(stage: str, args) -> bool:
    """Whether DDP must look for trainable parameters that got no gradient in a step (``find_unused_parameters``).

    Only the stage's parameters train (``set_trainable``); the frozen LLM and the other projector are not
    DDP's concern. A trainable part can still get no input: the user projector under w/o UA (the user is text,
    no ``<user>`` token) and, in the w/o IA user stage (both projectors train), the item projector in a batch
    whose users show no history item. Everything else gets a gradient every step, so the per-step graph search
    is skipped.
    """
    if stage == "item":
        return False
    return bool(args.user_as_text) or args.trainable_stage == "user+item"


def run_stage(model, stage: str, args, *, data, histories, has_time: bool, texts=None, users=None, items=None,
              callbacks: Sequence = (), early_stopping_patience: Optional[int] = None, resume="last",
              final_dir=None, run_info: Optional[Mapping[str, Any]] = None):
    """Train one alignment stage of ``model`` with :class:`GLTATrainer` and save it to ``final_dir``.

    The one implementation of a stage, used by ``training/align.py`` (single process or ``accelerate launch``),
    ``glta quickstart`` and ``glta benchmark``.

    ``stage``: ``"item"`` (item-text alignment; no validation ranking, no early stopping) or ``"user"`` (user-item
    alignment, trains ``args.trainable_stage``: ``"user+item"`` for w/o IA; validated on ``data``'s validation
    split when ``args.eval_strategy != "no"``, which then must exist). ``args`` is a :class:`GLTATrainingArguments`
    whose ``output_dir`` is the stage folder (Trainer checkpoints); it is copied, so the per-stage overrides
    (item-stage epochs / learning rate, ``ddp_find_unused_parameters``) never leak into the caller's. ``final_dir``
    defaults to ``<output_dir>/final``. ``users`` / ``items`` restrict the user stage's training users / the item
    stage's items (budgets). ``early_stopping_patience``: evaluations without improvement before the user stage
    stops. ``resume``: see :func:`resolve_resume`. The user context (histories, texts) must be attached already
    (:func:`attach_user_context`).

    The run record ``model.run_info`` (updated with ``run_info``, then saved as ``glta_run.json`` with the weights
    by the main process) gains this stage in ``stages`` -- ``{"name", "global_step", "output_dir",
    "wall_time_s", "world_size", "hyperparameters", "log_history"}``, replacing an earlier record of the same
    name -- and its train / validation metrics in ``stage_metrics[stage]``. Every process waits until the model
    is saved. Returns ``(model, metrics)``; ``metrics["global_step"]`` is the Trainer's final step.
    """
    import copy

    from .alignment_data import GLTACollator, ItemTextDataset, UserItemDataset
    from .glta_trainer import GLTATrainer
    from .model_card import stage_record

    if stage not in ("item", "user"):
        raise ValueError(f"stage must be 'item' or 'user', got {stage!r}")
    args = copy.copy(args)  # per-stage overrides never leak into the caller's arguments
    final_dir = Path(final_dir) if final_dir is not None else Path(args.output_dir) / "final"
    model.config.prompt.update(args.prompt_overrides())
    prompt = model.prompt_config
    tokenizer = model.tokenizer
    trainable = model.set_trainable("item" if stage == "item" else args.trainable_stage)
    logger.info("stage %s: training %s", stage, trainable)
    ranking: Dict[str, Any] = {}
    callbacks = list(callbacks)
    if stage == "item":
        train_dataset = ItemTextDataset(data.item_texts, tokenizer, prompt, items_per_sample=args.items_per_sample,
                                        seed=args.seed, items=items)
        args.eval_strategy = "no"  # user-item ranking means nothing before the user stage
        args.load_best_model_at_end = False
        if args.item_stage_epochs is not None:
            args.num_train_epochs = args.item_stage_epochs
        if args.item_stage_learning_rate is not None:
            args.learning_rate = args.item_stage_learning_rate
    else:
        train_dataset = UserItemDataset(histories, tokenizer, prompt, texts=texts, users=users, mode="train",
                                        target_policy=args.target_policy, num_targets=args.num_targets,
                                        eval_history=args.eval_history, has_time=has_time,
                                        user_names=data.user_ids, seed=args.seed)
        if args.eval_strategy != "no":
            if "validation" not in data.splits:
                raise ValueError(f"eval_strategy={args.eval_strategy!r} ranks a validation split, but dataset "
                                 f"{data.name!r} has none: carve one (val_fraction > 0) or set eval_strategy='no'")
            ranking = dict(ranking_train=data.matrix("train"), ranking_truth=data.matrix("validation"))
            if early_stopping_patience:
                from transformers import EarlyStoppingCallback

                callbacks.append(EarlyStoppingCallback(early_stopping_patience))
        elif early_stopping_patience:
            raise ValueError("early stopping needs validation: set eval_strategy (and load_best_model_at_end)")
    if args.ddp_find_unused_parameters is None:  # an explicit choice of the caller is kept
        args.ddp_find_unused_parameters = needs_unused_parameter_search(stage, args)
    collator = GLTACollator(tokenizer.pad_token_id, model.config.num_slots)
    trainer = GLTATrainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator,
                          callbacks=callbacks, **ranking)
    trainer.glta_stage = stage
    checkpoint = resolve_resume(resume, args.output_dir)
    if checkpoint:
        logger.info("stage %s: resuming from %s", stage, checkpoint)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    if ranking:
        metrics.update(trainer.evaluate())
    global_step = int(trainer.state.global_step)
    metrics["global_step"] = global_step

    record = dict(model.run_info or {})
    for key in _LEGACY_STAGE_KEYS:
        record.pop(key, None)
    record.update({k: v for k, v in (run_info or {}).items() if k != "stages"})
    stages = [s for s in stage_records(record) if s.get("name") != stage]
    hyper = stage_record(stage, args, global_step=global_step,
                         train_users=len(train_dataset) if stage == "user" else None,
                         train_items=(len(items) if items is not None else data.num_items) if stage == "item" else None)
    record["stages"] = stages + [{
        "name": stage, "global_step": global_step, "output_dir": str(final_dir), "wall_time_s": round(seconds, 1),
        "world_size": int(args.world_size),
        "hyperparameters": {k: v for k, v in hyper["hyperparameters"].items() if v is not None},
        "log_history": trainer.state.log_history}]
    record.setdefault("stage_metrics", {})[stage] = metrics
    model.run_info = record
    if trainer.is_world_process_zero():
        model.save_pretrained(final_dir)  # writes glta_run.json + README.md from model.run_info
        logger.info("stage %s done in %.1fs (step %d) -> %s", stage, seconds, global_step, final_dir)
    trainer.accelerator.wait_for_everyone()
    return model, metrics


def load_stage(final_dir, llm):
    """A finished stage's model (reusing the loaded ``llm``)."""
    from .modeling_glta import GLTAForRecommendation

    return GLTAForRecommendation.from_pretrained(final_dir, llm=llm)


# ----------------------------------------------------------------------------------------------- evaluation


def test_users(full, max_users: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """Users with a test item; a seeded sample of ``max_users`` of them (the same for every model compared)."""
    from .glta_trainer import sample_eval_users

    return sample_eval_users(full.matrix("test"), max_users, seed=seed)


def evaluate_glta(model, full, *, users=None, decoding: str = "first_k", ks=(5, 10, 20), batch_size: int = 16,
                  progress: bool = True) -> Dict[str, float]:
    """Test metrics of ``model``: every training interaction of ``full`` (fit + validation) is excluded and shown.

    The model's stored histories are replaced by the full training histories (serving order kept from
    ``glta_run.json``'s ``eval_history_recent``, default: most recent).
    """
    from .alignment_data import serving_histories, user_histories
    from .glta_trainer import evaluate_model

    histories, has_time = user_histories(full, "train")
    recent = (model.run_info or {}).get("eval_history_recent", has_time)
    model.attach_user_context(histories=serving_histories(histories, model.prompt_config.max_history, recent))
    return evaluate_model(model, train=full.matrix("train"), truth=full.matrix("test"), decoding=decoding, ks=ks,
                          users=users, batch_size=batch_size, progress=progress)


def evaluate_graph(nodes, full, *, users=None, ks=(5, 10, 20), progress: bool = False) -> Dict[str, float]:
    """Test metrics of the node embeddings' dot-product scores (LightGCN), same protocol as :func:`evaluate_glta`."""
    from .metrics import evaluate

    user_emb, item_emb = nodes.user, nodes.item
    return evaluate(train=full.matrix("train"), test=full.matrix("test"), scorer=lambda u: user_emb[u] @ item_emb.T,
                    ks=ks, users=users, progress=progress)


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
