"""``GLTATrainer``: a ``transformers.Trainer`` for the GLTA alignment stages (paired with :mod:`glta_config`).

It overrides only what GLTA needs:

* :meth:`GLTATrainer.compute_loss` -- the model's own GLLM loss (paper eq. 3); a non-finite loss raises
  :class:`~glta_hf.errors.TrainingError` naming the global step instead of silently corrupting the weights.
* :meth:`GLTATrainer.evaluate` -- ranking metrics on a validation split carved from TRAIN data, through the one
  evaluator :func:`glta_hf.metrics.evaluate` (``eval_ndcg@10``, ...), so ``load_best_model_at_end``,
  ``metric_for_best_model="ndcg@10"`` and ``EarlyStoppingCallback`` work unchanged. Under DDP every rank ranks a
  shard of the users and the sums are all-reduced.
* :meth:`GLTATrainer._get_train_sampler` -- an :class:`~glta_hf.alignment_data.EpochSampler`, so the per-epoch
  target draws and the order depend on the epoch only and ``--resume_from_checkpoint`` replays the same batches.
  With ``train_sampling_strategy="group_by_length"`` (the GLTA default) the epoch order is length-grouped
  (megabatches of up to 50 batches sorted by prompt length, :func:`~glta_hf.alignment_data.length_grouped_indices`):
  21 % -> 8 % padding and 1.11x faster steps in BENCHMARKS.md 5.2.

Checkpoints: the Trainer calls ``model.save_pretrained``, which writes only GLTA's weights (never the LLM's).
Only the stage's parameters are trainable: call ``model.set_trainable(stage)`` before building the trainer
(:func:`prepare_stage` does), the Trainer's optimizer then only sees those.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from transformers import Trainer

from .alignment_data import EpochSampler
from .errors import TrainingError
from .glta_config import sampling_strategy
from .metrics import evaluate as evaluate_ranking_metrics

logger = logging.getLogger(__name__)


def usable_ks(ks: Sequence[int], decoding: str, num_slots: int) -> tuple:
    """``first_k`` / ``autoregressive`` emit at most L items, so cut-offs above L are dropped (with a warning)."""
    ks = tuple(int(k) for k in ks)
    if decoding in ("first_k", "autoregressive"):
        kept = tuple(k for k in ks if k <= num_slots)
        if kept != ks:
            logger.warning("decoding=%s yields at most L=%d items: metrics @%s skipped", decoding, num_slots,
                           [k for k in ks if k > num_slots])
        if not kept:
            raise ValueError(f"no cut-off <= num_slots={num_slots} among {ks} for decoding={decoding}")
        return kept
    return ks


def _dist():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@torch.no_grad()
def evaluate_model(model, *, train, truth, decoding: str = "first_k", ks=(5, 10, 20), users=None,
                   batch_size: int = 16, progress: bool = False) -> Dict[str, float]:
    """Full-ranking metrics of a GLTA model whose user context (histories, texts) is attached.

    ``train`` is the matrix of interactions to exclude (the evaluator also checks none is recommended), ``truth``
    the held-out one. Under torch.distributed each rank takes every world_size-th user and the per-rank sums are
    all-reduced, so the result equals a single-process run.
    """
    ks = usable_ks(ks, decoding, model.config.num_slots)
    if users is None:
        users = np.flatnonzero(truth.row_lengths() > 0)
    users = np.asarray(users, dtype=np.int64)
    if _dist():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        users = users[rank::world]
    was_training = model.training
    model.eval()
    try:
        ranker = model.ranker(decoding=decoding, batch_size=batch_size)
        if len(users):
            metrics = evaluate_ranking_metrics(train=train, test=truth, ranker=ranker, ks=ks, users=users,
                                               batch_size=max(batch_size, 64), progress=progress)
        else:
            metrics = {name: 0.0 for k in ks for name in (f"precision@{k}", f"recall@{k}", f"ndcg@{k}",
                                                           f"hit_rate@{k}")}
            metrics["num_users"] = 0
    finally:
        model.train(was_training)
    if _dist():
        names = [k for k in metrics if k != "num_users"]
        n = float(metrics["num_users"])
        sums = torch.tensor([metrics[k] * n for k in names] + [n], dtype=torch.float64)
        backend = torch.distributed.get_backend()
        if backend == "nccl":
            sums = sums.cuda()
        torch.distributed.all_reduce(sums)
        sums = sums.cpu()
        total = float(sums[-1])
        metrics = {k: (float(sums[i]) / total if total else 0.0) for i, k in enumerate(names)}
        metrics["num_users"] = int(total)
    return metrics


def sample_eval_users(truth, max_users: Optional[int], seed: int = 0) -> np.ndarray:
    """Users with a held-out item; a seeded sample of ``max_users`` of them (validation during training)."""
    users = np.flatnonzero(truth.row_lengths() > 0)
    if max_users is not None and 0 < max_users < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    return users


class GLTATrainer(Trainer):
    """Trainer of one GLTA alignment stage; see the module docstring for what it changes and why.

    Extra arguments: ``ranking_train`` / ``ranking_truth`` (``UserItemMatrix``: the interactions to exclude and the
    validation interactions), used by :meth:`evaluate` instead of an ``eval_dataset``.
    """

    def __init__(self, *args, ranking_train=None, ranking_truth=None, **kwargs):
        eval_users = None
        if ranking_truth is not None:
            training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
            eval_users = sample_eval_users(ranking_truth, training_args.eval_max_users, training_args.seed)
            if kwargs.get("eval_dataset") is None:  # the Trainer insists on one when eval_strategy != "no"
                kwargs["eval_dataset"] = torch.utils.data.TensorDataset(torch.from_numpy(eval_users))
        super().__init__(*args, **kwargs)
        # GLTA's loss is a per-batch mean; do not let the Trainer pass num_items_in_batch into forward(**kwargs)
        # and skip the gradient-accumulation scaling.
        self.model_accepts_loss_kwargs = False
        self.ranking_train, self.ranking_truth = ranking_train, ranking_truth
        self._eval_users = eval_users

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
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
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def create_model_card(self, **kwargs) -> None:
        """The GLTA model card (``README.md`` in ``output_dir``) from the model's run record plus this stage's
        hyperparameters and last validation metrics, instead of transformers' generic Trainer card."""
        if not self.is_world_process_zero():
            return
        from .hub import trainer_run_info
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


def check_loss_fell(history: Sequence[Dict[str, float]]) -> bool:
    """True when the mean logged loss of the last third is below the first third's (used by smoke tests)."""
    losses = [h["loss"] for h in history if "loss" in h and math.isfinite(h["loss"])]
    if len(losses) < 3:
        return False
    third = max(1, len(losses) // 3)
    return float(np.mean(losses[-third:])) < float(np.mean(losses[:third]))
