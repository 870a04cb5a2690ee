"""Training diagnostics: the numbers to read first when a run's metric looks wrong.

Issue 23 found the last quality answer ("the LLM adds no signal") reached through mechanics, not the method: a loss
at initialisation above ln|I| (uniform over the catalogue), Adam steps that moved a query by more than a whole user
vector, a quarter of the targets copied from the prompt. Each of those is one number; this module computes them so
that every stage prints them (``GLTATrainingArguments.diagnose``) and every stage record keeps them.

* :func:`initial_report` -- on one training batch, before any step: the loss against ln|I|, the slot hidden
  state's norm (raw and as the head reads it), the logits' spread, the factorized head's query norm against
  LightGCN's mean user-vector norm, the share of slot targets already shown in the prompt.
* :class:`UpdateNormCallback` -- for the first optimizer steps, each trainable part's update norm relative to the
  part's norm (:func:`glta_hf.trainer.parameter_part`), and the factorized head's query update on the report batch.
* :func:`format_report` -- the lines a person reads, with a ``!`` before every number outside its healthy range.
* the item stage's record adds its held-out measures (``item_alignment``: order accuracy, title retrieval) and, with
  ``item_title_warmup_steps``, the warm-up's numbers (``item_title_warmup``; :mod:`glta_hf.item_titles`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from transformers.trainer_callback import TrainerCallback

from .loss import IGNORE_INDEX

#: a loss at initialisation this far above ln|I| means the head starts wider than uniform
LOSS_MARGIN = 0.05
#: a relative update above this (per step) rewrites a quarter of a part at once (a freshly initialised head moves
#: by a few 1e-2 in its first steps: its weights start small)
UPDATE_WARNING = 0.25


def _targets_in_history(samples: Sequence[Any]) -> Optional[float]:
    """Share of slot targets that the prompt already shows as history items (``EncodedPrompt`` samples)."""
    shown = total = 0
    for sample in samples:
        targets = list(getattr(sample, "targets", []) or [])
        history = set(getattr(sample, "item_ids", []) or [])
        shown += sum(t in history for t in targets)
        total += len(targets)
    return shown / total if total else None


@torch.no_grad()
def initial_report(model, batch: Dict[str, torch.Tensor], samples: Sequence[Any] = (), *,
                   return_probe: bool = False):
    """The diagnostics of ``model`` on ``batch`` (forward kwargs with ``labels``); ``samples``: encoded prompts for
    the share of targets in the history. Nothing trains; the model's mode is restored. With ``return_probe``:
    ``(report, head inputs of the labelled slots)``, the probe of :class:`UpdateNormCallback`."""
    was_training = model.training
    model.eval()
    try:
        out = model(**batch)
    finally:
        model.train(was_training)
    num_items = int(model.config.num_items)
    hidden = out.slot_hidden_states.float()
    labels = batch.get("labels")
    used = (labels != IGNORE_INDEX) if labels is not None else torch.ones(hidden.shape[:2], dtype=torch.bool)
    hidden = hidden[used.to(hidden.device)]
    head = model.head
    head_input = head.head_input(hidden, hidden.dtype)
    report: Dict[str, float] = {
        "loss_at_init": float(out.loss) if out.loss is not None else float("nan"),
        "ln_num_items": math.log(num_items),
        "slot_hidden_norm": float(hidden.norm(dim=-1).mean()),
        "head_input_norm": float(head_input.norm(dim=-1).mean()),
    }
    if out.logits is not None:
        report["logit_std"] = float(out.logits.float()[used.to(out.logits.device)].std())
    if hasattr(head, "query"):
        report["query_norm"] = float(head.query(hidden).norm(dim=-1).mean())
        users = model.user_embeddings
        if users.numel():
            report["user_vector_norm"] = float(users.float().norm(dim=-1).mean())
    share = _targets_in_history(samples)
    if share is not None:
        report["targets_in_history"] = share
    if return_probe:
        return report, head_input
    return report


class UpdateNormCallback(TrainerCallback):
    """Per-part update norms of the first ``steps`` optimizer steps (relative to each part's norm).

    ``probe``: head inputs (N, hidden) on which the factorized head's query update ``||dW x + db||`` is measured
    (the quantity issue 23 found larger than a user vector). Results: :attr:`steps` (a list of dicts)."""

    def __init__(self, model, steps: int = 5, probe: Optional[torch.Tensor] = None):
        from .trainer import parameter_part

        self.model, self.max_steps, self.probe = model, int(steps), probe
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.part = {n: parameter_part(n) for n in self.params}
        # the factorized head's query weights, by name, when they train (the query update is measured on them)
        self.query_names = [next((n for n in self.params if n.endswith(f"head.{w}")), None) for w in ("weight", "bias")]
        self.before: Optional[Dict[str, torch.Tensor]] = None
        self.steps: List[Dict[str, float]] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if len(self.steps) < self.max_steps:
            self.before = {n: p.detach().clone() for n, p in self.params.items()}

    def on_step_end(self, args, state, control, **kwargs):
        if self.before is None:
            return
        delta: Dict[str, float] = {}
        size: Dict[str, float] = {}
        for name, param in self.params.items():
            part = self.part[name]
            delta[part] = delta.get(part, 0.0) + float((param.detach() - self.before[name]).float().pow(2).sum())
            size[part] = size.get(part, 0.0) + float(self.before[name].float().pow(2).sum())
        row = {"step": int(state.global_step)}
        row.update({f"update_{p}": math.sqrt(d) / max(math.sqrt(size[p]), 1e-12) for p, d in delta.items()})
        weight, bias = self.query_names
        if self.probe is not None and hasattr(getattr(self.model, "head", None), "query") and weight is not None:
            dq = self.probe @ (self.params[weight].detach() - self.before[weight]).float().t()
            if bias is not None:
                dq = dq + (self.params[bias].detach() - self.before[bias]).float()
            row["query_update_norm"] = float(dq.norm(dim=-1).mean())
        self.steps.append(row)
        self.before = None


def format_report(report: Dict[str, Any], updates: Sequence[Dict[str, float]] = ()) -> str:
    """Readable lines; ``!`` marks a number outside its healthy range (see the module docstring)."""
    lines = []
    loss, ln_items = report.get("loss_at_init"), report.get("ln_num_items")
    if loss is not None and ln_items is not None:
        flag = "!" if not loss <= ln_items + LOSS_MARGIN else " "
        lines.append(f"{flag} loss at init {loss:.3f} vs ln|I| {ln_items:.3f} (uniform)")
    if "logit_std" in report:
        lines.append(f"  logit std {report['logit_std']:.3f}; slot hidden norm {report['slot_hidden_norm']:.2f}, "
                     f"as the head reads it {report['head_input_norm']:.2f}")
    if "query_norm" in report:
        user = report.get("user_vector_norm")
        flag = "!" if user is not None and report["query_norm"] > user else " "
        lines.append(f"{flag} query norm {report['query_norm']:.3f} vs mean ||e_u|| "
                     f"{user if user is None else round(user, 3)}")
    if "targets_in_history" in report:
        flag = "!" if report["targets_in_history"] > 0.1 else " "
        lines.append(f"{flag} share of slot targets already in the prompt {report['targets_in_history']:.3f}")
    warmup = report.get("item_title_warmup")
    if warmup:
        lines.append(f"  title warm-up, {warmup['steps']} steps: loss {warmup['loss_start']:.3f} -> "
                     f"{warmup['loss_end']:.3f}, training items' own text first {warmup['train_top1_start']:.3f} -> "
                     f"{warmup['train_top1_end']:.3f}, token / text norm {warmup['norm_ratio_end']:.2f}")
    items = report.get("item_alignment") or {}
    for when in ("start", "after_title_warmup", "end"):
        got = items.get(when)
        if not got:
            continue
        label = when.replace("_", " ")
        if "item_order_accuracy" in got:
            flag = "!" if when == "end" and got["item_order_accuracy"] <= 1.5 * got["item_order_chance"] else " "
            lines.append(f"{flag} item stage {label}, held-out items: order accuracy "
                         f"{got['item_order_accuracy']:.3f} (chance {got['item_order_chance']:.3f}), catalogue "
                         f"accuracy {got['item_catalogue_accuracy']:.4f} / MRR {got['item_catalogue_mrr']:.4f} "
                         f"(chance {got['item_catalogue_chance']:.4f})")
        if "item_title_top1" in got:
            lines.append(f"  item stage {label}, held-out items' own text: top-1 {got['item_title_top1']:.4f} "
                         f"(chance {got['item_title_chance']:.4f}) / MRR {got['item_title_mrr']:.4f} "
                         f"(chance {got['item_title_chance_mrr']:.4f})")
    for row in updates:
        parts = {k[len('update_'):]: v for k, v in row.items() if k.startswith("update_")}
        flag = "!" if any(v > UPDATE_WARNING for v in parts.values()) else " "
        text = ", ".join(f"{k} {v:.2e}" for k, v in sorted(parts.items()))
        if "query_update_norm" in row:
            text += f"; query moved {row['query_update_norm']:.3f}"
        lines.append(f"{flag} step {row['step']}: relative update {text}")
    return "\n".join(lines)
