"""``GLTATrainer``: a ``transformers.Trainer`` that owns one GLTA alignment stage (paired with :mod:`training_args`).

As TRL's trainers do, it is given the model, the arguments and the stage, and prepares the rest itself:

* the stage's freezing: ``model.set_trainable`` (``"item"``, ``"user"``, or ``"user+item"`` under w/o IA), so the
  optimizer only sees the stage's parameters;
* the stage's arguments: :meth:`GLTATrainingArguments.for_stage` (item-stage epochs / learning rate, no validation
  ranking in the item stage, the DDP unused-parameter search);
* its datasets and collator, from ``data`` (+ ``histories`` / ``texts``) when ``train_dataset`` is not given:
  :class:`~glta_hf.alignment_data.ItemTextDataset` or :class:`~glta_hf.alignment_data.UserItemDataset`, and the
  validation ranking on ``data``'s validation split when the user stage evaluates;
* a progress bar labelled with the stage.

Overridden Trainer parts:

* :meth:`GLTATrainer.compute_loss` -- the model's own GLLM loss (paper eq. 3); a non-finite loss raises
  :class:`~glta_hf.errors.TrainingError` naming the global step instead of silently corrupting the weights. The
  batch's ``sample_users`` (each row's user, :class:`~glta_hf.alignment_data.GLTACollator`) leave it (and
  :meth:`GLTATrainer.prediction_step`'s unlabelled batches) before the model's forward: ``mask_training_items``
  reads them, so the mask works without ``<user>`` tokens (w/o UA) too.
* :meth:`GLTATrainer.evaluate` -- ranking metrics on a validation split carved from TRAIN data, through the one
  evaluator (:func:`glta_hf.metrics.evaluate_model`; ``eval_ndcg@10``, ...), so ``load_best_model_at_end``,
  ``metric_for_best_model="ndcg@10"`` and ``EarlyStoppingCallback`` work unchanged. Under DDP every rank ranks a
  shard of the users and the sums are all-reduced.
* :meth:`GLTATrainer.create_optimizer` -- the Trainer's optimizer with one parameter group per trainable part
  (:func:`parameter_part`: head, projectors, slots, residual, LoRA) at its own learning rate
  (:meth:`GLTATrainingArguments.part_learning_rates`), decay / no-decay kept.
* :meth:`GLTATrainer.train` -- keeps the best validated state in memory (from the step-0 evaluation that
  ``eval_on_start`` runs, on; a resumed run does not validate its start again) and, with ``load_best_model_at_end``,
  ends on it: a stage never ends below its own start on validation, which Trainer checkpoints alone cannot give
  (there is no checkpoint of step 0).
* :meth:`GLTATrainer._load_from_checkpoint` -- a resume also loads the checkpoint's LoRA adapters (``llm_adapter/``;
  the Trainer reads ``model.safetensors`` only) and the best validated state logged before it, so a resumed stage
  ends where an uninterrupted one would; :meth:`GLTATrainer._load_best_model` defers to that in-memory best.
* :meth:`GLTATrainer._get_train_sampler` -- an :class:`~glta_hf.alignment_data.EpochSampler`, so the per-epoch
  target draws and the order depend on the epoch only and ``--resume_from_checkpoint`` replays the same batches.
  With ``train_sampling_strategy="group_by_length"`` (the GLTA default) the epoch order is length-grouped
  (megabatches of up to 50 batches sorted by prompt length, :func:`~glta_hf.alignment_data.length_grouped_indices`):
  21 % -> 8 % padding and 1.11x faster steps in BENCHMARKS.md 5.2.

Checkpoints: the Trainer calls ``model.save_pretrained``, which writes only GLTA's weights (never the LLM's); each
``checkpoint-N`` also gets ``glta_stage.json`` (:data:`CHECKPOINT_STAGE_NAME`: the stage and its settings'
fingerprint, which resuming checks; the seconds trained and the start's diagnostics, which a resumed stage carries on).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer
from transformers.trainer_callback import ProgressCallback, TrainerCallback

from .alignment_data import EpochSampler, GLTACollator, ItemTextDataset, UserItemDataset
from .checkpoint import LLM_PREFIX
from .errors import CheckpointError, TrainingError
from .io_utils import read_json, write_json
from .metrics import evaluate_model, sample_eval_users
from .training_args import ALIGNMENT_STAGES, sampling_strategy

logger = logging.getLogger(__name__)

#: written into every Trainer checkpoint folder: ``{"stage", "fingerprint", "global_step", "train_seconds"}`` and,
#: once measured, ``"diagnostics"`` (see :func:`checkpoint_stage`)
CHECKPOINT_STAGE_NAME = "glta_stage.json"


class StageProgressCallback(ProgressCallback):
    """transformers' progress bar, labelled with the stage (``item stage`` / ``user stage``)."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.label)


class _StageCheckpointCallback(TrainerCallback):
    """Writes :data:`CHECKPOINT_STAGE_NAME` into each checkpoint folder (main process), after the Trainer's files,
    with the seconds the stage has trained so far (``train_seconds``: a resumed stage's time goes on from there) and
    the diagnostics measured so far (``diagnostics``: only a fresh stage measures them; a resumed one carries them)."""

    def __init__(self, stage: str, fingerprint: Optional[str], seconds, diagnostics):
        self.record = {"stage": stage, "fingerprint": fingerprint}
        self.seconds, self.diagnostics = seconds, diagnostics

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                diagnostics = self.diagnostics()
                write_json(folder / CHECKPOINT_STAGE_NAME, dict(
                    self.record, global_step=int(state.global_step), train_seconds=round(self.seconds(), 1),
                    **({"diagnostics": diagnostics} if diagnostics else {})))


def checkpoint_stage(path) -> Dict[str, Any]:
    """The ``{"stage", "fingerprint", "global_step", "train_seconds", "diagnostics"}`` a GLTATrainer wrote into the
    checkpoint (:class:`_StageCheckpointCallback`; empty for older checkpoints, keys missing from older records)."""
    record = Path(path) / CHECKPOINT_STAGE_NAME
    if not record.is_file():
        return {}
    try:
        return dict(read_json(record))
    except ValueError as err:
        raise CheckpointError(f"{record}: unreadable ({err})") from None


class _ResumeCheckpointCallback(TrainerCallback):
    """Asks for a checkpoint every ``every`` optimizer steps, on top of ``save_strategy``'s (``resume_save_steps``):
    ``load_best_model_at_end`` ties the save strategy to the evaluation's, and an epoch-long gap between resume
    points loses hours when a long CPU epoch is killed."""

    def __init__(self, every: int):
        self.every = int(every)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            control.should_save = True
        return control


def parameter_part(name: str) -> str:
    """The trainable part a GLTA parameter belongs to, from its name: ``head``, ``projector``, ``slots``,
    ``residual`` or ``llm`` (LoRA weights; anything else)."""
    parts = name.split(".")
    if "graph_residual" in parts:
        return "residual"
    if "head" in parts:
        return "head"
    if any(p.endswith("_projector") for p in parts):
        return "projector"
    if "slot_embeddings" in parts:
        return "slots"
    return "llm"


class GLTATrainer(Trainer):
    """Trainer of one GLTA alignment stage; see the module docstring for what it prepares and changes, and why.

    ``stage``: ``"item"`` or ``"user"`` (default: ``args.stage`` when that names one stage). The stage's dataset
    comes from ``train_dataset`` or is built from ``data`` (a ``RecData`` with its validation carve),
    ``histories`` (per user, the fit items oldest first; :func:`~glta_hf.alignment_data.user_histories`),
    ``has_time``, ``texts`` (``{user: {"profile", "prediction"}}``), ``users`` (the user stage's training users) /
    ``items`` (the item stage's items). The user stage ranks ``ranking_truth`` (default: ``data``'s validation split)
    excluding ``ranking_train`` (default: ``data``'s fit split) when ``args.eval_strategy != "no"``.
    ``early_stopping_patience``: evaluations without improvement before the user stage stops.
    ``fingerprint``: the stage settings' hash, written into each checkpoint (see :data:`CHECKPOINT_STAGE_NAME`).
    ``prefix_store`` (or ``args.prefix_cache``): the user stage -- training and its validation ranking -- runs with
    ``model.enable_prefix_cache`` on that store (default: the model's current one, else ``args.prefix_store()``);
    the cache stays enabled on the model afterwards (test evaluation, ``recommend``).
    """

    def __init__(self, model=None, args=None, stage: Optional[str] = None, *, data=None, histories=None,
                 has_time: bool = False, texts=None, users=None, items=None, ranking_train=None, ranking_truth=None,
                 early_stopping_patience: Optional[int] = None, fingerprint: Optional[str] = None,
                 train_dataset=None, data_collator=None, eval_dataset=None, callbacks: Optional[Sequence] = None,
                 prefix_store=None, **kwargs):
        if model is None or args is None:
            raise TrainingError("GLTATrainer needs model= and args= (GLTATrainingArguments)")
        stage = stage or (args.stage if args.stage in ALIGNMENT_STAGES else None)
        if stage not in ALIGNMENT_STAGES:
            raise TrainingError(f"GLTATrainer needs stage= one of {ALIGNMENT_STAGES} (args.stage={args.stage!r} "
                                "names several)")
        self.stage = stage
        self.item_eval_dataset = None  # the item stage's held-out groups (_held_out_items)
        args = args.for_stage(stage)
        trainable = model.set_trainable("item" if stage == "item" else args.trainable_stage)
        logger.info("stage %s: training %s", stage, trainable)
        if stage == "user" and (args.prefix_cache or prefix_store is not None):
            # one store for the stage (or the caller's run): each user's prefix is computed once, not per epoch
            store = prefix_store if prefix_store is not None else model.prefix_store
            model.enable_prefix_cache(store if store is not None else args.prefix_store())
        elif stage == "item" and args.prefix_cache:
            logger.info("stage item: prefix cache not used (item-text prompts are redrawn every epoch)")
        tokenizer = model.tokenizer
        if train_dataset is None:
            if args.num_slots != model.config.num_slots:
                raise TrainingError(f"the model has num_slots={model.config.num_slots}, the arguments say "
                                    f"{args.num_slots}")
            model.config.prompt.update(args.prompt_overrides())  # H, L, ablations and length cap of this stage
            if stage == "item" and args.item_eval_fraction > 0 and data is not None:
                items, self.item_eval_dataset = self._held_out_items(model, args, data, items)
            train_dataset = self._stage_dataset(stage, model, args, data, histories, has_time, texts, users, items)
        if data_collator is None:
            data_collator = GLTACollator(tokenizer.pad_token_id, model.config.num_slots)
        callbacks = list(callbacks or [])
        if stage == "user" and args.eval_strategy != "no" and ranking_truth is None and data is not None:
            if "validation" not in data.splits:
                raise ValueError(f"eval_strategy={args.eval_strategy!r} ranks a validation split, but dataset "
                                 f"{data.name!r} has none: carve one (val_fraction > 0) or set eval_strategy='no'")
            ranking_train, ranking_truth = data.matrix("train"), data.matrix("validation")
        if early_stopping_patience:
            if ranking_truth is None or args.eval_strategy == "no":
                raise ValueError("early stopping needs validation: set eval_strategy (and load_best_model_at_end)")
            callbacks.append(EarlyStoppingCallback(early_stopping_patience))
        self._seconds_before, self._started = 0.0, None  # see train_seconds
        self._update_norms = None  # the running UpdateNormCallback of a fresh stage with args.diagnose, see train()
        callbacks.append(_StageCheckpointCallback(stage, fingerprint, self.train_seconds, self._diagnostics_so_far))
        if args.resume_save_steps:
            callbacks.append(_ResumeCheckpointCallback(args.resume_save_steps))
        eval_users = None
        if ranking_truth is not None:
            eval_users = sample_eval_users(ranking_truth, args.eval_max_users, args.seed)
            if eval_dataset is None:  # the Trainer insists on one when eval_strategy != "no"
                eval_dataset = torch.utils.data.TensorDataset(torch.from_numpy(eval_users))
        if args.eval_on_start and (ranking_truth is None or args.eval_strategy == "no"):
            args.eval_on_start = False  # nothing to validate: the Trainer would call evaluate() regardless
        had_use_cache = "use_cache" in vars(model.config)
        super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator,
                         eval_dataset=eval_dataset, callbacks=callbacks, **kwargs)
        if not had_use_cache and "use_cache" in vars(model.config):
            # the Trainer sets an LLM config's generation switch on every model; GLTAConfig has none, and a
            # trained model's config.json must equal the one a reload writes
            delattr(model.config, "use_cache")
        if any(isinstance(c, ProgressCallback) for c in self.callback_handler.callbacks):
            self.remove_callback(ProgressCallback)
            self.add_callback(StageProgressCallback(f"{stage} stage"))
        # GLTA's loss is a per-batch mean; do not let the Trainer pass num_items_in_batch into forward(**kwargs)
        # and skip the gradient-accumulation scaling.
        self.model_accepts_loss_kwargs = False
        self.ranking_train, self.ranking_truth = ranking_train, ranking_truth
        self._eval_users = eval_users
        self.best_state: Optional[Dict[str, Any]] = None  # {"step", "metric", "value", "params"}, see train()
        self.diagnostics: Dict[str, Any] = {}  # glta_hf.diagnose's report of the last train(), see train()
        self.data, self._training_items = data, None  # mask_training_items reads data's training split once
        self._titles: Optional[torch.Tensor] = None  # the catalogue's text embeddings (_title_table), once

    @staticmethod
    def _held_out_items(model, args, data, items):
        """``(training items, held-out ItemTextDataset)``: ``args.item_eval_fraction`` of the items (seeded) leave
        the item stage's training groups and measure it (:func:`glta_hf.metrics.evaluate_item_alignment`)."""
        pool = np.arange(data.num_items) if items is None else np.asarray(items, dtype=np.int64)
        count = int(round(len(pool) * args.item_eval_fraction))
        if count < args.items_per_sample or len(pool) - count < args.items_per_sample:
            return items, None  # too few items for a held-out group: the stage trains on all of them
        held = np.sort(np.random.default_rng([int(args.seed), 23]).choice(pool, size=count, replace=False))
        evaluation = ItemTextDataset(data.item_texts, model.tokenizer, model.prompt_config,
                                     items_per_sample=args.items_per_sample, seed=int(args.seed) + 1, items=held)
        return np.setdiff1d(pool, held), evaluation

    @staticmethod
    def _stage_dataset(stage, model, args, data, histories, has_time, texts, users, items):
        """The stage's training samples: item-text groups (3.1) or user-item prompts with targets (3.2)."""
        if data is None:
            raise TrainingError("GLTATrainer needs train_dataset= or data= to build the stage's dataset")
        if stage == "item":
            return ItemTextDataset(data.item_texts, model.tokenizer, model.prompt_config,
                                   items_per_sample=args.items_per_sample, seed=args.seed, items=items)
        if histories is None:
            raise TrainingError("the user stage needs histories= (alignment_data.user_histories(data, 'train'))")
        held_out = None
        if args.target_policy == "held_out":
            if args.held_out_fraction is None:
                raise TrainingError("target_policy held_out needs held_out_fraction (the graph folder's fold, "
                                    "training/pretrain_graph.py --held-out-fraction)")
            from .graph import held_out_fold

            fold = held_out_fold(data.matrix("train"), args.held_out_fraction, args.held_out_seed)[1]
            held_out = [fold.items_of(u) for u in range(fold.num_users)]
        return UserItemDataset(histories, model.tokenizer, model.prompt_config, texts=texts, users=users,
                               mode="train", target_policy=args.target_policy, num_targets=args.num_targets,
                               eval_history=args.eval_history, has_time=has_time, user_names=data.user_ids,
                               seed=args.seed, samples_per_user=args.samples_per_user, held_out=held_out,
                               item_titles=model.item_catalogue["titles"])

    def _issue_warnings_after_load(self, load_result) -> None:
        """A Trainer checkpoint holds only what GLTA adds, never the frozen LLM: its keys are missing by design, so
        only the other missing keys are worth a warning (transformers would list every LLM tensor)."""
        own_missing = [k for k in load_result.missing_keys if not k.startswith(LLM_PREFIX)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=own_missing)
                                           if hasattr(load_result, "_replace") else load_result)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # each row's user (GLTACollator's sample_users) is the mask's, never a forward input
        inputs = dict(inputs)
        sample_users = inputs.pop("sample_users", None)
        masking = self.args.mask_other_targets or self.args.mask_training_items
        if self.stage != "item" and masking and inputs.get("labels") is not None:
            from .loss import masked_slot_loss

            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            if outputs.logits is None:
                raise TrainingError("mask_other_targets / mask_training_items need the full logits; they do not "
                                    "run with ce_chunk_size")
            known = None
            if self.args.mask_training_items:
                users = sample_users if sample_users is not None else self._users_from_placeholders(inputs)
                known = self._training_items_mask(users, outputs.logits.shape[-1])
            outputs.loss = masked_slot_loss(outputs.logits, inputs["labels"], known=known)
        else:
            outputs = model(**inputs)
        loss = outputs.loss
        if loss is None:
            raise TrainingError(f"step {self.state.global_step}: the batch has no labels, so the model gave no loss")
        if not torch.isfinite(loss.detach()).all():
            raise TrainingError(
                f"non-finite loss {loss.item()} at global step {self.state.global_step} "
                f"(epoch {self.state.epoch}); lower the learning rate or check the node embeddings for NaN/inf"
            )
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """``Trainer.prediction_step``; without labels it calls the model itself, so ``sample_users`` leaves first
        (with labels :meth:`compute_loss` takes it out)."""
        if "labels" not in inputs:
            inputs = {k: v for k, v in inputs.items() if k != "sample_users"}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    @staticmethod
    def _users_from_placeholders(inputs) -> torch.Tensor:
        """Each row's user from its ``<user>`` token, for a collator without ``sample_users`` (one per prompt)."""
        user_ids = inputs["user_ids"]
        if len(user_ids) != len(inputs["input_ids"]):
            raise TrainingError(
                f"mask_training_items needs each sample's user: the batch has no sample_users (GLTACollator's) and "
                f"{len(user_ids)} <user> tokens for {len(inputs['input_ids'])} prompts (user_as_text prompts have "
                "none); use GLTACollator or give the batch sample_users")
        return user_ids

    def _training_items_mask(self, users: torch.Tensor, num_items: int) -> torch.Tensor:
        """(B, |I|) bool: row b's user ``users[b]``'s training items."""
        if self._training_items is None:
            if self.ranking_train is not None:  # validation masks the same items
                self._training_items = self.ranking_train
            elif self.data is not None:
                self._training_items = self.data.matrix("train")
            else:
                raise TrainingError("mask_training_items needs the trainer's data= (its training split)")
        matrix = self._training_items
        mask = torch.zeros(len(users), num_items, dtype=torch.bool)
        for row, user in enumerate(users.tolist()):
            mask[row, torch.from_numpy(matrix.items_of(int(user)))] = True
        return mask.to(users.device)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, its groups split by trainable part, each at its part's learning rate."""
        optimizer = super().create_optimizer(model)
        rates = self.args.part_learning_rates()
        if len(set(rates.values())) == 1:
            return optimizer
        opt_model = self.model if model is None else model
        part = {id(p): parameter_part(n) for n, p in opt_model.named_parameters()}
        groups = []
        for group in optimizer.param_groups:
            by_part: Dict[str, list] = {}
            for p in group["params"]:
                by_part.setdefault(part.get(id(p), "llm"), []).append(p)
            for name, params in by_part.items():
                groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params,
                               "lr": rates[name], "glta_part": name})
        optimizer.param_groups = []  # regrouped in place: no step has run, so there is no state to move
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def train_seconds(self) -> float:
        """Wall seconds this stage has trained, over every run that resumed it (each checkpoint carries the count;
        a checkpoint written before it counts as 0), title warm-up and evaluations included."""
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self._seconds_before + running

    def _resumed_record(self, checkpoint) -> Dict[str, Any]:
        """:func:`checkpoint_stage` of the checkpoint ``train(resume_from_checkpoint=...)`` resumes from."""
        if checkpoint is True:  # Trainer.train(resume_from_checkpoint=True): the newest checkpoint of output_dir
            from transformers.trainer_utils import get_last_checkpoint

            output_dir = self.args.output_dir
            checkpoint = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None  # Trainer says why
        return checkpoint_stage(checkpoint) if checkpoint else {}

    def _diagnostics_so_far(self) -> Dict[str, Any]:
        """:attr:`diagnostics` with the update norms measured so far (what a checkpoint carries to a resume)."""
        if self._update_norms is None or not self._update_norms.steps:
            return dict(self.diagnostics)
        return dict(self.diagnostics, updates=list(self._update_norms.steps))

    def train(self, *args, **kwargs):
        """``Trainer.train``, then (with ``load_best_model_at_end``) the best validated state, step 0 included.

        A fresh item stage (not a resumed one) first measures its held-out items and, with
        ``args.item_title_warmup_steps``, warms its item projector up on the items' texts (:meth:`_title_warmup`;
        the held-out measure again after it). With ``args.diagnose`` a fresh stage then reports
        :mod:`glta_hf.diagnose`'s numbers on its first batch and measures the first steps' update norms
        (:attr:`diagnostics`); a resumed stage takes them from its checkpoint (the update norms measured before it)."""
        self.best_state = None
        self._update_norms = None
        checkpoint = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        resuming = bool(checkpoint)
        resumed = self._resumed_record(checkpoint) if resuming else {}
        self._seconds_before = float(resumed.get("train_seconds", 0.0))
        self._started = time.perf_counter()
        # a resumed stage carries the diagnostics its fresh start measured (the checkpoint has them): its record
        # then holds the same numbers an uninterrupted run's does
        self.diagnostics = dict(resumed.get("diagnostics") or {})
        if not resuming:
            start = self._item_alignment()
            if start is not None:
                self.diagnostics["item_alignment"] = {"start": start}
            if self.stage == "item" and self.args.item_title_warmup_steps:
                warmup, after_warmup = self._title_warmup()
                if after_warmup is not None:
                    self.diagnostics.setdefault("item_alignment", {})["after_title_warmup"] = after_warmup
                self.diagnostics["item_title_warmup"] = warmup
            if self.args.diagnose:  # after the warm-up: the state the optimizer steps start from
                self._update_norms = self._start_diagnostics()
        # the start was validated by the run that wrote the checkpoint (its log holds it): evaluating again on
        # resume would add a mid-epoch validation an uninterrupted run never has (another candidate for the best)
        eval_on_start = self.args.eval_on_start
        self.args.eval_on_start = eval_on_start and not resuming
        try:
            result = super().train(*args, **kwargs)
        finally:
            self.args.eval_on_start = eval_on_start
        if self.item_eval_dataset is not None:
            self.diagnostics.setdefault("item_alignment", {})["end"] = self._item_alignment()
        if self._update_norms is not None:
            self.remove_callback(self._update_norms)
            self.diagnostics = self._diagnostics_so_far()
            self._update_norms = None
        if self.diagnostics.get("updates") is not None and self.is_world_process_zero():
            from .diagnose import format_report

            print(f"[{self.stage} stage diagnostics]\n{format_report(self.diagnostics, self.diagnostics['updates'])}",
                  flush=True)
        best = self.best_state
        if best is not None and self.args.load_best_model_at_end and best["step"] != self.state.global_step:
            params = dict(self.accelerator.unwrap_model(self.model).named_parameters())
            with torch.no_grad():
                for name, value in best["params"].items():
                    params[name].copy_(value)
            logger.info("stage %s: ends on its best validated state, step %d (%s %.4f)", self.stage, best["step"],
                        best["metric"], best["value"])
        self._seconds_before, self._started = self.train_seconds(), None  # the clock stops with the stage
        return result

    def _item_alignment(self) -> Optional[Dict[str, float]]:
        """The item stage's held-out metrics now (None outside the item stage or without held-out items): the
        slots' order / catalogue accuracy (:func:`glta_hf.metrics.evaluate_item_alignment`) and the items' title
        retrieval (:func:`glta_hf.item_titles.title_retrieval`)."""
        if self.item_eval_dataset is None:
            return None
        from .metrics import evaluate_item_alignment

        metrics = evaluate_item_alignment(self.accelerator.unwrap_model(self.model), self.item_eval_dataset,
                                          batch_size=self.args.per_device_eval_batch_size)
        metrics.update(self._held_out_title_retrieval())
        logger.info("item stage, held-out items: %s", metrics)
        return metrics

    def _title_table(self):
        """The catalogue's text embeddings (:func:`glta_hf.item_titles.title_embeddings`), computed once."""
        if self._titles is None:
            from .item_titles import title_embeddings

            dataset = self.item_eval_dataset if self.item_eval_dataset is not None else self.train_dataset
            self._titles = title_embeddings(self.accelerator.unwrap_model(self.model), dataset.item_texts)
        return self._titles

    def _held_out_title_retrieval(self) -> Dict[str, float]:
        """The held-out items' own text ranked among the catalogue's by their projected tokens."""
        from .item_titles import title_retrieval

        return title_retrieval(self.accelerator.unwrap_model(self.model), self._title_table(),
                               self.item_eval_dataset.items)

    def _title_warmup(self):
        """``args.item_title_warmup_steps`` steps of :func:`glta_hf.item_titles.warm_up_item_projector` on the
        stage's training items: ``(its numbers, the held-out title retrieval after it or None)``."""
        from .item_titles import warm_up_item_projector

        if not isinstance(self.train_dataset, ItemTextDataset):
            raise TrainingError("item_title_warmup_steps needs the item stage's ItemTextDataset (built from data=): "
                                f"its items and texts; got a {type(self.train_dataset).__name__}")
        result = warm_up_item_projector(
            self.accelerator.unwrap_model(self.model), self._title_table(), self.train_dataset.items,
            self.args.item_title_warmup_steps, self.args.item_title_learning_rate)
        logger.info("item stage, title warm-up on %d training items: %s", len(self.train_dataset.items), result)
        if self.item_eval_dataset is None:
            return result, None
        held_out = self._held_out_title_retrieval()
        logger.info("item stage, held-out items after the title warm-up: %s", held_out)
        return result, held_out

    def _start_diagnostics(self):
        """:func:`glta_hf.diagnose.initial_report` on the first training batch; returns the update-norm callback."""
        from .diagnose import UpdateNormCallback, initial_report

        model = self.accelerator.unwrap_model(self.model)
        n = min(len(self.train_dataset), self.args.per_device_train_batch_size)
        samples = [self.train_dataset[i] for i in range(n)]
        device = next(p for p in model.parameters() if p.requires_grad).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.data_collator(samples).items()
                 if k != "sample_users"}  # the model's forward inputs only
        # the share of targets already in the prompt means something in the user stage only: the item stage's
        # targets are, by design, the items its prompt shows
        report, probe = initial_report(model, batch, samples if self.stage != "item" else (), return_probe=True)
        self.diagnostics.update(report)
        callback = UpdateNormCallback(model, probe=probe)
        self.add_callback(callback)
        return callback

    def _remember_if_best(self, metrics: Dict[str, float]) -> None:
        """Keep a copy of the trainable parameters when ``metrics`` are the best validation so far."""
        name = self.args.metric_for_best_model or "ndcg@10"
        key = name if name.startswith("eval_") else f"eval_{name}"
        value = metrics.get(key)
        if value is None:
            return
        best = self.best_state
        better = best is None or (value > best["value"] if self.args.greater_is_better else value < best["value"])
        if better:
            self.best_state = {"step": int(self.state.global_step), "metric": key, "value": float(value),
                               "params": _trainable_copy(self.accelerator.unwrap_model(self.model))}

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """``Trainer``'s load of GLTA's weights, plus the checkpoint's LoRA adapters, and the best validated state
        before it (:meth:`_best_state_before`), so a resumed stage still ends on its best state overall."""
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        best = self._best_state_before(resume_from_checkpoint, target, model)
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        target.load_adapter_weights(resume_from_checkpoint)
        if best is not None and best["params"] is None:  # the resumed checkpoint is the best one
            best["params"] = _trainable_copy(target)
        self.best_state = best

    def _best_state_before(self, folder, target, model) -> Optional[Dict[str, Any]]:
        """The best validation in ``folder``'s ``trainer_state.json`` log, with its trainable parameters: read from
        its sibling checkpoint, or, for step 0, the model as built before the load (a resumed run builds it as the
        first run did: ``--init_from``, fresh LoRA). ``params`` None = the resumed checkpoint itself."""
        state_file = Path(folder) / "trainer_state.json"
        if not state_file.is_file():
            return None
        name = self.args.metric_for_best_model or "ndcg@10"
        key = name if name.startswith("eval_") else f"eval_{name}"
        best = None
        for entry in read_json(state_file).get("log_history", []):
            value = entry.get(key)
            if value is not None and (best is None or (value > best["value"] if self.args.greater_is_better
                                                       else value < best["value"])):
                best = {"step": int(entry.get("step", 0)), "metric": key, "value": float(value), "params": None}
        if best is None:
            return None
        source = Path(folder).parent / f"checkpoint-{best['step']}"
        if best["step"] == 0:
            best["params"] = _trainable_copy(target)
        elif source.resolve() != Path(folder).resolve():
            if not source.is_dir():
                logger.warning("stage %s: the best validated state before %s (step %d, %s %.4f) has no checkpoint "
                               "left; the stage will end on its best state from the resumed step on", self.stage,
                               folder, best["step"], key, best["value"])
                return None
            super()._load_from_checkpoint(str(source), model)
            target.load_adapter_weights(source)
            best["params"] = _trainable_copy(target)
        return best

    def _load_best_model(self) -> None:
        """``Trainer``'s reload of the best checkpoint: skipped when :meth:`train` holds the best state in memory
        (step 0 included, which no checkpoint has), else the checkpoint's GLTA weights and LoRA adapters."""
        if self.best_state is not None:
            return
        super()._load_best_model()
        self.accelerator.unwrap_model(self.model).load_adapter_weights(self.state.best_model_checkpoint)

    def _get_train_sampler(self, train_dataset=None):
        """An :class:`EpochSampler` following ``args.train_sampling_strategy``: ``group_by_length`` (the GLTA
        default) sorts megabatches by prompt length, ``random`` shuffles, ``sequential`` keeps the order."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if getattr(self.args, "data_seed", None) is not None else self.args.seed
        strategy = sampling_strategy(self.args)
        return EpochSampler(dataset, seed=seed, shuffle=strategy != "sequential",
                            group_by_length=strategy == "group_by_length",
                            batch_size=self.args.train_batch_size * self.args.gradient_accumulation_steps)

    def _get_eval_sampler(self, eval_dataset):
        # evaluate() ranks users itself; the placeholder eval dataset has no prompt lengths to group by
        return torch.utils.data.SequentialSampler(eval_dataset) if eval_dataset is not None else None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> Dict[str, float]:
        """Ranking metrics on the validation split (``eval_ndcg@10``, ...), logged and passed to callbacks."""
        if self.ranking_truth is None:
            raise TrainingError("GLTATrainer.evaluate needs ranking_train= and ranking_truth= (a validation split)")
        model = self.accelerator.unwrap_model(self.model)
        metrics = evaluate_model(model, train=self.ranking_train, truth=self.ranking_truth,
                                 decoding=self.args.eval_decoding, ks=self.args.ks, users=self._eval_users,
                                 batch_size=self.args.per_device_eval_batch_size)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        if self.state.epoch is not None:
            metrics["epoch"] = self.state.epoch
        if metric_key_prefix == "eval":
            self._remember_if_best(metrics)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def create_model_card(self, **kwargs) -> None:
        """The GLTA model card (``README.md`` in ``output_dir``) from the model's run record plus this stage's
        hyperparameters and last validation metrics, instead of transformers' generic Trainer card."""
        if not self.is_world_process_zero():
            return
        from .hub import trainer_run_info  # hub imports huggingface_hub's upload machinery: only when asked
        from .model_card import write_model_card

        model = self.accelerator.unwrap_model(self.model)
        repo_id = getattr(self, "hub_model_id", None) or self.args.hub_model_id
        write_model_card(model, self.args.output_dir, repo_id=repo_id, run_info=trainer_run_info(self))

    def push_to_hub(self, commit_message: Optional[str] = "End of training", blocking: bool = True, token=None,
                    revision: Optional[str] = None, private: Optional[bool] = None, **kwargs):
        """Upload the GLTA checkpoint + card to ``args.hub_model_id`` (never the LLM's weights, never
        ``training_args.bin`` or ``checkpoint-*``); see :func:`glta_hf.hub.push_trainer_to_hub`."""
        from .hub import push_trainer_to_hub

        return push_trainer_to_hub(self, commit_message=commit_message, blocking=blocking, token=token,
                                   revision=revision, private=private, **kwargs)


def _trainable_copy(model) -> Dict[str, torch.Tensor]:
    """A copy of ``model``'s trainable parameters (the stage's; LoRA included): a best state to end on."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
