"""``GLTATrainingArguments`` (``transformers.TrainingArguments`` plus what the GLTA alignment stages need) and
``GLTAModelArguments`` (the model options of a fresh model: head, projector, LoRA, chunk sizes, prompt options).

Paired with :mod:`glta_hf.trainer` (the TRL layout: ``sft_config.py`` / ``sft_trainer.py``; ``GLTAModelArguments``
plays TRL's ``ModelConfig``). Stages and ablations
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

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple

from transformers import TrainingArguments

from .cli_args import (carve_fraction, check_values, cutoff_list, decoding_name, non_negative_float, non_negative_int,
                       positive_float, positive_int, seed_value, writable_dir)
from .alignment_data import EVAL_HISTORIES
from .components import HEAD_INPUT_NORMS, component_names
from .decoding import check_decoding
from .prefix_cache import DEFAULT_MAX_BYTES
from .prompts import PROMPT_LAYOUTS
from .vocabulary import ALIGNMENT_STAGES, TARGET_POLICIES, Stage

#: values of ``--stage``: one alignment stage, or ``all`` (both, in order; the user stage only under w/o IA)
STAGE_PLANS = tuple(Stage)
SAMPLING_STRATEGIES = ("group_by_length", "random", "sequential")
#: trainable part (:func:`glta_hf.trainer.parameter_part`) -> the argument holding its own learning rate
PART_LEARNING_RATES = {"head": "head_learning_rate", "projector": "projector_learning_rate",
                       "slots": "slot_learning_rate", "residual": "residual_learning_rate"}
_BASE_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
logger = logging.getLogger(__name__)


def sampling_strategy(args) -> str:
    """How the training stages order samples: ``group_by_length`` | ``random`` | ``sequential``.

    ``args.train_sampling_strategy`` (transformers >= 5.x), else the older boolean ``args.group_by_length``.
    """
    strategy = getattr(args, "train_sampling_strategy", None)
    if strategy is None:
        return "group_by_length" if getattr(args, "group_by_length", False) else "random"
    return str(strategy)


def _accelerator_available() -> bool:
    """A device DataLoader pinning serves (torch.accelerator where torch has it: CUDA, XPU, MPS, ...)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


@dataclass
class GLTATrainingArguments(TrainingArguments):
    """Training arguments of the GLTA alignment stages (see the module docstring for the ablation flags)."""

    #: parse-time value types (:mod:`glta_hf.cli_args`) of the fields that have a range; ``__post_init__`` applies
    #: them to library callers too. A new field with a range adds its entry here and every entry point checks it.
    VALUE_TYPES: ClassVar[Dict[str, Callable[[str], Any]]] = {
        "learning_rate": positive_float, "num_train_epochs": non_negative_float, "weight_decay": non_negative_float,
        "per_device_train_batch_size": positive_int, "per_device_eval_batch_size": positive_int,
        "gradient_accumulation_steps": positive_int, "max_grad_norm": non_negative_float, "logging_steps": positive_float,
        "save_steps": positive_float, "eval_steps": positive_float, "save_total_limit": non_negative_int,
        "dataloader_num_workers": non_negative_int, "seed": seed_value, "data_seed": seed_value,
        "max_history": non_negative_int, "num_slots": positive_int, "num_targets": positive_int,
        "samples_per_user": positive_int, "items_per_sample": positive_int, "eval_max_users": non_negative_int,
        "eval_ks": cutoff_list, "item_stage_epochs": positive_float, "item_stage_learning_rate": positive_float,
        "max_length": positive_int, "prefix_cache_max_gb": non_negative_float, "eval_decoding": decoding_name,
        **dict.fromkeys(PART_LEARNING_RATES.values(), positive_float),
        "item_eval_fraction": carve_fraction, "item_title_warmup_steps": non_negative_int,
        "item_title_learning_rate": positive_float, "resume_save_steps": positive_int}
    #: output folders, checked writable by the parsers (not in ``__post_init__``: a library caller may create them)
    PATH_TYPES: ClassVar[Dict[str, Callable[[str], Any]]] = {
        "output_dir": writable_dir, "logging_dir": writable_dir, "prefix_cache_dir": writable_dir}

    stage: Stage = field(default=Stage.USER, metadata={"help": "item | user | all"})
    no_item_alignment: bool = field(default=False, metadata={"help": "w/o IA: no item stage; the user stage trains "
                                                                       "both projectors"})
    user_as_text: bool = field(default=False, metadata={"help": "w/o UA: user id as text, no <user> token"})
    no_profile: bool = field(default=False, metadata={"help": "w/o PF: no profile text in the prompt"})
    no_prediction: bool = field(default=False, metadata={"help": "w/o PD: no prediction text in the prompt"})
    max_history: int = field(default=10, metadata={
        "help": "H: training items shown as <item> tokens (10: chosen on ml-latest-small / ml-100k validation)"})
    num_slots: int = field(default=10, metadata={"help": "L: output slots (>= the largest k evaluated)"})
    num_targets: Optional[int] = field(default=None, metadata={"help": "k target items per user sample (default L)"})
    samples_per_user: int = field(default=1, metadata={
        "help": "r: user-stage samples per user per epoch, each with its own history / target draw (r target sets "
                "per pass; an epoch is r times the steps)"})
    items_per_sample: int = field(default=5, metadata={"help": "m: items per item-text alignment sample"})
    target_policy: str = field(default="all", metadata={
        "help": "all: targets from all training items (paper-literal; default, chosen on validation, BENCHMARKS.md "
                "sixth session) | disjoint: training items NOT shown in the prompt (denoising) | held_out: items "
                "the graph was fit without (held_out_fraction; for the graph residual, docs/TRAINING_MECHANICS.md)",
        "choices": list(TARGET_POLICIES)})
    eval_history: str = field(default="auto", metadata={"help": "auto | recent | sample: history at evaluation",
                                                         "choices": list(EVAL_HISTORIES)})
    eval_decoding: str = field(default="first_k", metadata={
        "help": "decoding of the validation ranking, a name registered in glta_hf.decoding: first_k (paper) | "
                "first_logit | autoregressive | all_slots"})
    eval_max_users: Optional[int] = field(default=512, metadata={
        "help": "validate on a seeded sample of this many users (0 or None = all)"})
    eval_ks: str = field(default="5,10,20", metadata={"help": "cut-offs of the ranking metrics"})
    item_stage_epochs: Optional[float] = field(default=None, metadata={
        "help": "stage=all: epochs of the item stage (default num_train_epochs)"})
    item_stage_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "stage=all: learning rate of the item stage (default learning_rate)"})
    max_length: int = field(default=1024, metadata={"help": "prompt length cap in tokens (free text is shortened)"})
    # Per-part learning rates (None: learning_rate). The parts move vectors of very different sizes: the head's
    # query lives in LightGCN's node space, the projectors and slots in the LLM's token space (issue 23).
    head_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "learning rate of the GLLM head (default: learning_rate)"})
    projector_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "learning rate of the user / item projectors (default: learning_rate)"})
    slot_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "learning rate of the L slot vectors (default: learning_rate)"})
    residual_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "learning rate of the graph residual's scale and gate (default: learning_rate)"})
    mask_other_targets: bool = field(default=False, metadata={
        "help": "score each slot's target against the non-targets only: the sample's other targets leave its "
                "softmax (glta_hf.loss.masked_slot_loss; not with ce_chunk_size)"})
    mask_training_items: bool = field(default=False, metadata={
        "help": "also leave the user's other training items out of each slot's softmax, as evaluation masks them "
                "(not with ce_chunk_size)"})
    held_out_fraction: Optional[float] = field(default=None, metadata={
        "help": "target_policy held_out: the share of each user's training items the graph was fit without "
                "(training/pretrain_graph.py --held-out-fraction; read from the graph folder when not given)"})
    held_out_seed: int = field(default=0, metadata={"help": "the held-out fold's seed (pretrain_graph.py "
                                                             "--held-out-seed)"})
    item_eval_fraction: float = field(default=0.05, metadata={
        "help": "share of items the item stage holds out to measure itself on (glta_hf.metrics."
                "evaluate_item_alignment, before and after its steps, against chance); 0 = train on every item"})
    item_title_warmup_steps: int = field(default=0, metadata={
        "help": "item stage: before its steps, this many full-batch Adam steps on the item projector alone (no LLM "
                "forward) fitting each training item's token to the mean of the LLM's input embeddings of its "
                "text (glta_hf.item_titles); 0 = off, the paper's stage unchanged"})
    item_title_learning_rate: float = field(default=1e-2, metadata={
        "help": "learning rate of the item-title warm-up's Adam (item_title_warmup_steps)"})
    resume_save_steps: Optional[int] = field(default=None, metadata={
        "help": "also save a checkpoint every N optimizer steps between save_strategy's own saves: resume points, so "
                "a stage killed mid-epoch (an epoch of ml-1m is hours on a CPU) resumes near where it stopped; the "
                "Trainer's rotation (save_total_limit) still keeps the best checkpoint and the newest. Not a "
                "training setting: the stage's fingerprint ignores it"})
    diagnose: bool = field(default=True, metadata={
        "help": "print the stage's diagnostics (loss at init vs ln|I|, query vs user-vector norm, update norms of "
                "the first steps, targets already in the prompt; glta_hf.diagnose) and keep them in its record"})
    eval_on_start: bool = field(default=True, metadata={
        "help": "rank the validation users before the first step, so the stage's start is a candidate of the "
                "best-state selection (a chosen model is never below its own start on validation)"})
    prefix_cache: bool = field(default=True, metadata={
        "help": "user stage and evaluation: serve the prompts' frozen text prefixes from one store per run (exact: "
                "same numbers; default on; off with LoRA). Pays off with the text_first layout, where profile and "
                "prediction are in the prefix"})
    prefix_cache_dir: Optional[str] = field(default=None, metadata={
        "help": "folder for prefixes beyond the memory budget (kept for later runs; default: a temporary folder)"})
    prefix_cache_max_gb: float = field(default=DEFAULT_MAX_BYTES / (1 << 30),
                                      metadata={"help": "memory budget of the prefix store in GiB"})

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
        if self.stage not in STAGE_PLANS:
            raise ValueError(f"stage must be one of {STAGE_PLANS}, got {self.stage!r}")
        self.stage = Stage(self.stage)
        check_values(self, self.VALUE_TYPES)
        self.eval_ks = cutoff_list(self.eval_ks)
        check_decoding(self.eval_decoding)  # the registry's names (a registered decoder works too)
        if self.target_policy not in TARGET_POLICIES:
            raise ValueError(f"target_policy must be one of {TARGET_POLICIES}, got {self.target_policy!r}")
        if self.held_out_fraction is not None and not 0.0 < self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {self.held_out_fraction}")
        if self.no_item_alignment and self.stage == Stage.ITEM:
            raise ValueError("no_item_alignment (w/o IA) skips the item stage; use stage=user")
        if sampling_strategy(self) not in SAMPLING_STRATEGIES:
            raise ValueError(f"train_sampling_strategy must be one of {SAMPLING_STRATEGIES} for the GLTA stages, "
                             f"got {sampling_strategy(self)!r}")
        if self.prefix_cache_max_gb < 0:
            raise ValueError(f"prefix_cache_max_gb must be >= 0, got {self.prefix_cache_max_gb}")
        if self.samples_per_user < 1:
            raise ValueError(f"samples_per_user must be >= 1, got {self.samples_per_user}")
        if not 1 <= self.items_per_sample <= self.num_slots:
            raise ValueError(f"items_per_sample must be in [1, num_slots={self.num_slots}]")
        # a stage that would train zero steps is refused here, before any data or model is loaded
        if self.max_steps is None or self.max_steps <= 0:
            if not self.num_train_epochs > 0:
                raise ValueError(f"num_train_epochs must be > 0 (got {self.num_train_epochs}) unless max_steps > 0")
            if self.item_stage_epochs is not None and not self.item_stage_epochs > 0:
                raise ValueError(f"item_stage_epochs must be > 0 (got {self.item_stage_epochs}) unless "
                                 "max_steps > 0")
        super().__post_init__()
        if self.dataloader_pin_memory and (self.use_cpu or not _accelerator_available()):
            # pinning needs an accelerator; without one torch warns on every DataLoader iterator and pins nothing
            self.dataloader_pin_memory = False

    def stage_plan(self) -> List[Stage]:
        """The alignment stages ``stage`` asks for, in order (``all`` under w/o IA: the user stage only)."""
        if self.stage == Stage.ALL:
            return [Stage.USER] if self.no_item_alignment else list(ALIGNMENT_STAGES)
        return [self.stage]

    def for_stage(self, stage: str) -> "GLTATrainingArguments":
        """A copy with the per-stage overrides, so they never leak into the caller's arguments.

        Item stage: no validation ranking (it means nothing before the user stage), ``item_stage_epochs`` /
        ``item_stage_learning_rate`` when set. Both: ``ddp_find_unused_parameters`` from
        :meth:`needs_unused_parameter_search` unless the caller chose it.
        """
        if stage not in ALIGNMENT_STAGES:
            raise ValueError(f"stage must be one of {ALIGNMENT_STAGES}, got {stage!r}")
        args = copy.copy(self)
        if stage == Stage.ITEM:
            args.eval_strategy = "no"
            args.eval_on_start = False
            args.load_best_model_at_end = False
            if args.item_stage_epochs is not None:
                args.num_train_epochs = args.item_stage_epochs
            if args.item_stage_learning_rate is not None:
                args.learning_rate = args.item_stage_learning_rate
        if args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = args.needs_unused_parameter_search(stage)
        return args

    def part_learning_rates(self) -> Dict[str, float]:
        """Learning rate of each trainable part (:func:`glta_hf.trainer.parameter_part`)."""
        base = self.learning_rate
        return {"llm": base, **{part: getattr(self, name) or base for part, name in PART_LEARNING_RATES.items()}}

    def needs_unused_parameter_search(self, stage: str) -> bool:
        """Whether DDP must look for trainable parameters that got no gradient in a step (``find_unused_parameters``).

        Only the stage's parameters train (``set_trainable``); the frozen LLM and the other projector are not
        DDP's concern. A trainable part can still get no input: the user projector under w/o UA (the user is text,
        no ``<user>`` token) and, in the w/o IA user stage (both projectors train), the item projector in a batch
        whose users show no history item. Everything else gets a gradient every step, so the per-step graph search
        is skipped.
        """
        if stage == Stage.ITEM:
            return False
        return bool(self.user_as_text) or self.trainable_stage == "user+item"

    def stage_settings(self, stage: str) -> Dict[str, Any]:
        """What a stage's result depends on (budget, optimisation, prompt, ablations), as :meth:`for_stage` sets
        it; paths, logging and checkpoint cadence are left out. Stored in the stage record and compared before a
        finished stage is reused."""
        args = self.for_stage(stage)
        keys = ["num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
                "gradient_accumulation_steps", "weight_decay", "warmup_steps", "warmup_ratio", "lr_scheduler_type",
                "max_grad_norm", "optim", "seed", "data_seed", "max_history", "num_slots", "max_length",
                "no_item_alignment", "user_as_text", "no_profile", "no_prediction"]
        if stage == Stage.ITEM:
            keys += ["items_per_sample"]
            if args.item_eval_fraction:  # named only when set, like samples_per_user below
                keys += ["item_eval_fraction"]
            if args.item_title_warmup_steps:  # likewise; its learning rate matters (and is named) only then
                keys += ["item_title_warmup_steps", "item_title_learning_rate"]
        else:
            keys += ["num_targets", "target_policy", "eval_history"]
            if args.mask_other_targets:  # named only when set (records from before the option still match)
                keys += ["mask_other_targets"]
            if args.mask_training_items:
                keys += ["mask_training_items"]
            if args.target_policy == "held_out":
                keys += ["held_out_fraction", "held_out_seed"]
        settings = {k: getattr(args, k, None) for k in keys}
        if stage != Stage.ITEM and getattr(args, "samples_per_user", 1) != 1:
            # named only when set, so the records (and fingerprints) of runs from before the option still match
            settings["samples_per_user"] = int(args.samples_per_user)
        for name in PART_LEARNING_RATES.values():
            if getattr(args, name, None) is not None:  # likewise: only when set
                settings[name] = getattr(args, name)
        settings["train_sampling_strategy"] = sampling_strategy(args)
        settings["world_size"] = int(args.world_size)
        return json.loads(json.dumps(settings, default=str))

    def stage_fingerprint(self, stage: str, **extra: Any) -> str:
        """A short hash of :meth:`stage_settings` plus ``extra`` (model options, trained users / items)."""
        key = dict(self.stage_settings(stage), stage=stage, **extra)
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def ks(self):
        return tuple(int(k) for k in str(self.eval_ks).split(",") if k.strip())

    @property
    def trainable_stage(self) -> str:
        """The ``model.set_trainable`` stage of the user-item stage ("user+item" for w/o IA)."""
        return "user+item" if self.no_item_alignment else "user"

    def prefix_store(self):
        """A new :class:`~glta_hf.prefix_cache.PrefixStore` under ``prefix_cache_max_gb`` spilling to
        ``prefix_cache_dir``; its entries stay on the device they are computed on (the LLM's)."""
        from .prefix_cache import PrefixStore

        return PrefixStore(max_bytes=int(self.prefix_cache_max_gb * (1 << 30)), folder=self.prefix_cache_dir)

    def prompt_overrides(self) -> dict:
        """``PromptConfig`` fields these arguments fix (H, L, ablations, length cap)."""
        return {"max_history": self.max_history, "num_slots": self.num_slots, "max_length": self.max_length,
                "include_profile": not self.no_profile, "include_prediction": not self.no_prediction,
                "user_as_text": self.user_as_text}


def reconcile_arguments(model_args: "GLTAModelArguments", training_args: GLTATrainingArguments) -> None:
    """Cross-checks of the model and training arguments, in one place for every entry point: the prefix cache (on by
    default) is exact only for a frozen LLM, so with LoRA it is turned off (the numbers are the same either way)."""
    if model_args.lora_r and training_args.prefix_cache:
        logger.info("prefix cache off: LoRA (lora_r=%d) trains the LLM the cached prefixes pass through",
                    model_args.lora_r)
        training_args.prefix_cache = False


def _registered(kind: str, name: str) -> str:
    """A component name checked against the registry (so a newly registered head is accepted everywhere)."""
    if name not in component_names(kind):
        raise argparse.ArgumentTypeError(f"must be a registered {kind}, one of {component_names(kind)}, got {name!r}")
    return name


@dataclass
class GLTAModelArguments:
    """The options of a fresh GLTA model (TRL's ``ModelConfig`` role): head, projector, LoRA, chunk sizes and the
    prompt options that are not stage arguments. ``None`` keeps ``GLTAConfig`` / ``PromptConfig``'s default.
    ``H``, ``L``, ``max_length`` and the ablation switches are :class:`GLTATrainingArguments` fields."""

    #: parse-time value types of the fields with a range (see ``GLTATrainingArguments.VALUE_TYPES``)
    VALUE_TYPES: ClassVar[Dict[str, Callable[[str], Any]]] = {
        "head": lambda text: _registered("head", text), "projector": lambda text: _registered("projector", text),
        "lora_r": non_negative_int, "lora_alpha": positive_int, "lora_dropout": non_negative_float,
        "ce_chunk_size": positive_int, "rank_chunk_size": positive_int, "max_profile_tokens": positive_int,
        "max_prediction_tokens": positive_int, "max_description_tokens": positive_int,
        "max_history_title_tokens": positive_int}
    #: the prompt fields only user-item prompts read: applied over an ``--init_from`` model too (an item stage never
    #: used them), so ``--stage user --history_titles true`` over a finished item stage is not ignored
    USER_PROMPT_FIELDS: ClassVar[Tuple[str, ...]] = ("history_titles", "max_history_title_tokens")

    head: str = field(default="factorized", metadata={
        "help": "GLLM head, a name registered in glta_hf.components: factorized (default, chosen on validation: "
                "tied to the LightGCN item table) | linear (paper)"})
    projector: str = field(default="linear", metadata={
        "help": "node projector, a name registered in glta_hf.components: linear (paper) | mlp"})
    graph_residual: bool = field(default=False, metadata={
        "help": "add the frozen LightGCN score scale * (e_u . E_i) to the GLLM logits, one learned scale (not the "
                "paper's method: its own benchmark row)"})
    head_input_norm: str = field(default="unit", metadata={
        "help": "unit (default): the head reads each slot state at unit L2 norm | none: raw (docs/TRAINING_MECHANICS.md)",
        "choices": list(HEAD_INPUT_NORMS)})
    residual_gate: bool = field(default=True, metadata={
        "help": "with graph_residual: the head's logits enter through a gate starting at 0 (the model starts at "
                "exactly LightGCN)"})
    center_node_embeddings: bool = field(default=False, metadata={
        "help": "subtract the table mean from E_u / E_i before projection (ml-100k validation: no preference, so off; "
                "docs/TRAINING_MECHANICS.md)"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the LLM (0: no LoRA, the LLM stays frozen)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: Optional[str] = field(default=None, metadata={
        "help": "comma-separated LLM module names for LoRA (default: peft's choice for the architecture)"})
    ce_chunk_size: Optional[int] = field(default=None, metadata={
        "help": "items per chunk of the training cross-entropy (None: materialized logits)"})
    rank_chunk_size: Optional[int] = field(default=None, metadata={
        "help": "items per chunk when decoding / ranking (None: materialized logits)"})
    use_chat_template: Optional[bool] = field(default=None, metadata={"help": "wrap prompts in the chat template"})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "system message of every prompt"})
    layout: Optional[str] = field(default="text_first", metadata={
        "help": "prompt order: text_first (default: the fixed text first, the placeholders and slots after it: what "
                "the prefix cache caches; not worse than the paper's order on validation) | paper (<user>/<item>s "
                "first)", "choices": list(PROMPT_LAYOUTS)})
    max_profile_tokens: Optional[int] = field(default=None, metadata={"help": "profile text cap in tokens"})
    max_prediction_tokens: Optional[int] = field(default=None, metadata={"help": "prediction text cap in tokens"})
    max_description_tokens: Optional[int] = field(default=None, metadata={"help": "item description cap in tokens"})
    history_titles: Optional[bool] = field(default=None, metadata={
        "help": "list the shown history items' titles as text too (default off): a frozen LLM may know the titles; "
                "with text_first they are in the cached prefix. Over --init_from it is applied, not ignored"})
    max_history_title_tokens: Optional[int] = field(default=None, metadata={
        "help": "cap in tokens of the history titles text (all titles together)"})

    def __post_init__(self):
        check_values(self, self.VALUE_TYPES)
        for kind in ("head", "projector"):  # checked against the registry now, so a registered component works
            if getattr(self, kind) not in component_names(kind):
                raise ValueError(f"{kind} must be one of {component_names(kind)}, got {getattr(self, kind)!r}")
        if self.layout is not None and self.layout not in PROMPT_LAYOUTS:
            raise ValueError(f"layout must be one of {PROMPT_LAYOUTS}, got {self.layout!r}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0: no LoRA), got {self.lora_r}")
        for name in ("ce_chunk_size", "rank_chunk_size", "max_profile_tokens", "max_prediction_tokens",
                     "max_description_tokens", "max_history_title_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset), got {value}")

    def lora(self) -> Optional[Dict[str, Any]]:
        """``GLTAConfig.lora``: ``peft.LoraConfig`` arguments, or None without LoRA."""
        if not self.lora_r:
            return None
        lora: Dict[str, Any] = {"r": self.lora_r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout}
        if self.lora_target_modules:
            lora["target_modules"] = [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]
        return lora

    def config_kwargs(self) -> Dict[str, Any]:
        """The ``GLTAConfig`` keyword arguments (``from_components(**config_kwargs)``)."""
        return {"head": self.head, "projector": self.projector, "lora": self.lora(), "graph_residual": self.graph_residual,
                "ce_chunk_size": self.ce_chunk_size, "rank_chunk_size": self.rank_chunk_size,
                "head_input_norm": self.head_input_norm, "residual_gate": self.residual_gate,
                "center_node_embeddings": self.center_node_embeddings}

    def prompt_fields(self) -> Dict[str, Any]:
        """The ``PromptConfig`` fields set here (unset ones keep ``PromptConfig``'s defaults)."""
        names = ("use_chat_template", "system_prompt", "layout", "max_profile_tokens", "max_prediction_tokens",
                 "max_description_tokens", "history_titles", "max_history_title_tokens")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}
