"""``GLTATrainingArguments``: ``transformers.TrainingArguments`` plus what the GLTA alignment stages need.

Paired with :mod:`glta_hf.glta_trainer` (the TRL layout: ``XConfig`` / ``XTrainer``). Stages and ablations
(paper 4.3-4.5) are plain fields, so a YAML config or the command line of ``training/align.py`` sets them:

==========================  ===============================================================================
``stage``                   ``item`` (item-text alignment, 3.1), ``user`` (user-item alignment, 3.2; continues
                            from the item-stage checkpoint) or ``all`` (item then user in one launch)
``no_item_alignment``       "w/o IA": skip the item stage, train both projectors in the user stage
``user_as_text``            "w/o UA": the user id as text instead of the aligned ``<user>`` token
``no_profile``              "w/o PF": leave the profile text out of the user-item prompt
``no_prediction``           "w/o PD": leave the prediction text out (both flags: "w/o both")
``eval_decoding``           ``first_k`` (GLTA), ``first_logit`` (FL), ``autoregressive`` (AR), ``all_slots``
==========================  ===============================================================================

Defaults changed from ``TrainingArguments`` (and why): ``remove_unused_columns=False`` (samples are encoded
prompts, not dataset columns), ``report_to="none"`` (offline machines), ``metric_for_best_model="ndcg@10"`` and
``greater_is_better=True`` (ranking quality, so ``load_best_model_at_end`` / early stopping work),
``logging_steps=10``, ``save_total_limit=2``, ``train_sampling_strategy="group_by_length"`` (prompts vary in length
through the profile / prediction texts, item descriptions and history sizes: length-grouped batches cut padding
from 21 % to 8 % and train 1.11x faster, BENCHMARKS.md 5.2; ``random`` restores plain shuffling; transformers
versions that still have ``group_by_length`` get ``group_by_length=True`` instead).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

STAGES = ("item", "user", "all")
DECODINGS = ("first_k", "first_logit", "autoregressive", "all_slots")
SAMPLING_STRATEGIES = ("group_by_length", "random", "sequential")
_BASE_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}


def sampling_strategy(args) -> str:
    """How the training stages order samples: ``group_by_length`` | ``random`` | ``sequential``.

    ``args.train_sampling_strategy`` (transformers >= 5.x), else the older boolean ``args.group_by_length``.
    """
    strategy = getattr(args, "train_sampling_strategy", None)
    if strategy is None:
        return "group_by_length" if getattr(args, "group_by_length", False) else "random"
    return str(strategy)


@dataclass
class GLTATrainingArguments(TrainingArguments):
    """Training arguments of the GLTA alignment stages (see the module docstring for the ablation flags)."""

    stage: str = field(default="user", metadata={"help": "item | user | all"})
    no_item_alignment: bool = field(default=False, metadata={"help": "w/o IA: no item stage; the user stage trains "
                                                                       "both projectors"})
    user_as_text: bool = field(default=False, metadata={"help": "w/o UA: user id as text, no <user> token"})
    no_profile: bool = field(default=False, metadata={"help": "w/o PF: no profile text in the prompt"})
    no_prediction: bool = field(default=False, metadata={"help": "w/o PD: no prediction text in the prompt"})
    max_history: int = field(default=20, metadata={"help": "H: training items shown as <item> tokens"})
    num_slots: int = field(default=10, metadata={"help": "L: output slots (>= the largest k evaluated)"})
    num_targets: Optional[int] = field(default=None, metadata={"help": "k target items per user sample (default L)"})
    items_per_sample: int = field(default=5, metadata={"help": "m: items per item-text alignment sample"})
    target_policy: str = field(default="disjoint", metadata={
        "help": "disjoint: targets are training items NOT shown in the prompt (denoising, default); "
                "all: targets from all training items (paper-literal)"})
    eval_history: str = field(default="auto", metadata={"help": "auto | recent | sample: history at evaluation"})
    eval_decoding: str = field(default="first_k", metadata={"help": "first_k | first_logit | autoregressive | "
                                                                     "all_slots"})
    eval_max_users: Optional[int] = field(default=512, metadata={
        "help": "validate on a seeded sample of this many users (None = all)"})
    eval_ks: str = field(default="5,10,20", metadata={"help": "cut-offs of the ranking metrics"})
    item_stage_epochs: Optional[float] = field(default=None, metadata={
        "help": "stage=all: epochs of the item stage (default num_train_epochs)"})
    item_stage_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "stage=all: learning rate of the item stage (default learning_rate)"})
    max_length: int = field(default=1024, metadata={"help": "prompt length cap in tokens (free text is shortened)"})

    # TrainingArguments defaults that do not fit GLTA
    remove_unused_columns: bool = field(default=False, metadata={"help": "samples are encoded prompts"})
    report_to: Optional[str] = field(default="none", metadata={"help": "integrations to report to"})
    metric_for_best_model: Optional[str] = field(default="ndcg@10", metadata={"help": "validation ranking metric"})
    greater_is_better: Optional[bool] = field(default=True, metadata={"help": "higher ndcg is better"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "checkpoints kept"})
    if "train_sampling_strategy" in _BASE_FIELDS:
        train_sampling_strategy: str = field(default="group_by_length", metadata={
            "help": "group_by_length (default: batches of similar prompt length) | random | sequential",
            "choices": list(SAMPLING_STRATEGIES)})
    else:  # transformers releases before train_sampling_strategy
        group_by_length: bool = field(default=True, metadata={"help": "batches of similar prompt length"})

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.eval_decoding not in DECODINGS:
            raise ValueError(f"eval_decoding must be one of {DECODINGS}, got {self.eval_decoding!r}")
        if self.target_policy not in ("disjoint", "all"):
            raise ValueError(f"target_policy must be 'disjoint' or 'all', got {self.target_policy!r}")
        if self.no_item_alignment and self.stage == "item":
            raise ValueError("no_item_alignment (w/o IA) skips the item stage; use stage=user")
        if sampling_strategy(self) not in SAMPLING_STRATEGIES:
            raise ValueError(f"train_sampling_strategy must be one of {SAMPLING_STRATEGIES} for the GLTA stages, "
                             f"got {sampling_strategy(self)!r}")
        if not 1 <= self.items_per_sample <= self.num_slots:
            raise ValueError(f"items_per_sample must be in [1, num_slots={self.num_slots}]")
        super().__post_init__()

    @property
    def ks(self):
        return tuple(int(k) for k in str(self.eval_ks).split(",") if k.strip())

    @property
    def trainable_stage(self) -> str:
        """The ``model.set_trainable`` stage of the user-item stage ("user+item" for w/o IA)."""
        return "user+item" if self.no_item_alignment else "user"

    def prompt_overrides(self) -> dict:
        """``PromptConfig`` fields these arguments fix (H, L, ablations, length cap)."""
        return {"max_history": self.max_history, "num_slots": self.num_slots, "max_length": self.max_length,
                "include_profile": not self.no_profile, "include_prediction": not self.no_prediction,
                "user_as_text": self.user_as_text}
