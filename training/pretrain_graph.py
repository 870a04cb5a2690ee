#!/usr/bin/env python
"""Graph stage: train Pop / MF / LightGCN (/ LightGCN+) with BPR, early-stop on validation, evaluate on test.

A thin script over ``glta_hf.graph``. The validation split is carved from train (``--val-fraction``); the model
is fit on the rest, early-stopped on validation ndcg@10, then evaluated once on test with every training
interaction (train + validation) masked. Examples (ml-latest-small ships with the package; other datasets need
``--data-dir``, see README.md "Data formats")::

    python training/pretrain_graph.py --dataset ml-latest-small --output-dir runs/ml-latest-small/graph
    python training/pretrain_graph.py --dataset ml-1m --data-dir path/to/ml-1m --model lightgcn \\
        --output-dir runs/ml-1m-lightgcn --results-dir benchmarks/results

Flags are kebab-case; the underscore spelling (``--data_dir``) works too. The training options are
``glta_hf.graph.GraphTrainingArguments`` fields (their defaults, help and ranges). Invalid values, unwritable
outputs and missing inputs stop at parse time: one ``error:`` line, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from glta_hf.cpu_threads import prefer_passive_openmp  # noqa: E402  (before torch loads; it says why)

prefer_passive_openmp()

from glta_hf.cli_args import (GLTAArgumentParser, add_dataset_arguments, add_field_flags,  # noqa: E402
                               carve_fraction, dataset_options, device_name, existing_dir, non_negative_float,
                               positive_float, require_data_dir, run_reporting_errors, seed_value,
                               writable_dir, writable_file)

#: the GraphTrainingArguments fields that are flags here (their defaults, help and ranges are the dataclass's)
TRAINING_FLAGS = ("epochs", "lr", "reg", "dim", "layers", "batch_size", "patience", "seed", "eval_every",
                  "num_negatives")


def build_parser() -> argparse.ArgumentParser:
    from glta_hf.graph import GraphTrainingArguments  # torch: the flags' types and defaults are its fields'

    p = GLTAArgumentParser(description=__doc__.split("\n")[0])
    add_dataset_arguments(p)
    p.add_argument("--results-name", default=None, help="dataset folder name under --results-dir (default --dataset)")
    p.add_argument("--model", default="lightgcn",
                   help="a graph model registered in glta_hf.graph: pop | mf | lightgcn (default) | lightgcn+ | "
                        "lightgcn_ce")
    p.add_argument("--output-dir", default=None, type=writable_dir,
                   help="where node embeddings are saved (mf / lightgcn)")
    add_field_flags(p, GraphTrainingArguments, dict.fromkeys(TRAINING_FLAGS), group="training", defaults=True)
    p.add_argument("--val-fraction", type=carve_fraction, default=0.1)
    p.add_argument("--val-seed", type=seed_value, default=0)
    p.add_argument("--held-out-fraction", type=carve_fraction, default=None,
                   help="fit the graph without this share of each user's training edges (seeded by "
                        "--held-out-seed), recorded in the folder: the user stage's targets with target_policy "
                        "held_out, for a graph residual trained on edges its graph never saw (glta_hf.graph."
                        "held_out_fold)")
    p.add_argument("--held-out-seed", type=seed_value, default=0)
    p.add_argument("--text-weight", type=non_negative_float, default=0.1, help="LightGCN+: InfoNCE weight")
    p.add_argument("--temperature", type=positive_float, default=None,
                   help="LightGCN+: InfoNCE temperature (default 0.2); lightgcn_ce: softmax temperature (default 1.0)")
    p.add_argument("--device", type=device_name, default="cpu",
                   help="cpu (default) | auto (cuda when available) | cuda | cuda:N: training, evaluation and "
                        "LightGCN+'s text encoding")
    p.add_argument("--skip-test", action="store_true", help="tuning runs: report validation only, never touch test")
    p.add_argument("--from-embeddings", default=None, type=existing_dir,
                   help="skip training: score with a saved node-embedding folder (the run picked on validation)")
    p.add_argument("--results-dir", default=None, type=writable_dir, help="write <results-dir>/<dataset>/<run>.json")
    p.add_argument("--run-name", default=None, help="result file name (default: the model name)")
    p.add_argument("--tuning-log", default=None, type=writable_file,
                   help="append one JSON line (config + validation metrics)")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and cross-check the flags (usage errors exit with code 2 before anything is loaded)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    require_data_dir(parser, args.dataset, args.data_dir)
    from glta_hf.graph import graph_model_class  # the registry (imports torch: checked after every light flag)

    try:
        args.model = graph_model_class(args.model).name
    except ValueError as err:
        parser.error(f"argument --model: {err}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.output_dir and not args.from_embeddings:
        from glta_hf.io_utils import output_lock

        with output_lock(args.output_dir):  # one writer per graph folder: a second run stops here, before training
            return _train_and_record(args, argv)
    return _train_and_record(args, argv)


def _train_and_record(args, argv) -> int:
    from glta_hf.backbone import resolve_device
    from glta_hf.data.loaders import load_dataset
    from glta_hf.graph import (HELD_OUT_KEY, BPRTrainer, GraphTrainingArguments, build_model, encode_item_texts,
                               export_node_embeddings, graph_model_class, held_out_fold, load_node_embeddings)

    start = time.perf_counter()
    full = load_dataset(args.dataset, args.data_dir, **dataset_options(args))
    data = full.with_validation(fraction=args.val_fraction, seed=args.val_seed)
    fit, validation = data.matrix("train"), data.matrix("validation")
    known = fit  # what validation masks: every training interaction, held out or not
    if args.held_out_fraction is not None:
        fit = held_out_fold(fit, args.held_out_fraction, args.held_out_seed)[0]
    targs = GraphTrainingArguments(dim=args.dim, layers=args.layers, lr=args.lr, reg=args.reg,
                                   batch_size=args.batch_size, epochs=args.epochs, eval_every=args.eval_every,
                                   patience=args.patience, seed=args.seed, num_negatives=args.num_negatives,
                                   device=resolve_device(args.device), progress=not args.no_progress)
    if args.from_embeddings:  # evaluate a run chosen on validation without retraining it
        saved = load_node_embeddings(args.from_embeddings)
        if saved.item_ids != data.item_ids or saved.user_ids != data.user_ids:
            raise SystemExit(f"{args.from_embeddings}: id maps do not match dataset {data.name!r}")
        config = dict(saved.config, from_embeddings=args.from_embeddings)
        user_emb, item_emb = saved.user, saved.item
        return _test_and_record(args, argv, full, data, lambda u: user_emb[u] @ item_emb.T, config, start)
    extra = {} if args.temperature is None else {"temperature": args.temperature}  # else the model's default
    if graph_model_class(args.model).needs_text_embeddings:
        extra.update(text_embeddings=encode_item_texts(data.item_texts, device=targs.device),
                     text_weight=args.text_weight)
    model = build_model(args.model, fit, targs, **extra)
    trainer = BPRTrainer(model, targs, fit, validation, known=known)
    result = trainer.train()
    from glta_hf.run_record import sanitized_run_info

    config = sanitized_run_info({k: v for k, v in vars(args).items()  # a record: portable paths
                                 if k not in ("no_progress", "tuning_log", "results_dir")})
    config["command"] = _command(argv)
    if args.held_out_fraction is not None:
        config[HELD_OUT_KEY] = {"fraction": args.held_out_fraction, "seed": args.held_out_seed}
    config.update(best_epoch=result.best_epoch, epochs_run=len(result.history),
                  train_wall_time_s=round(result.wall_time_s, 1),
                  validation={k: round(v, 5) for k, v in result.best_validation.items()})
    print(f"best epoch {result.best_epoch}, validation {json.dumps(config['validation'])}", flush=True)
    if args.tuning_log:
        Path(args.tuning_log).parent.mkdir(parents=True, exist_ok=True)
        with open(args.tuning_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(config) + "\n")
    if args.output_dir and graph_model_class(args.model).trainable:
        export_node_embeddings(model, args.output_dir, data.user_ids, data.item_ids, config)
        print(f"node embeddings saved to {args.output_dir}")
    if args.skip_test:
        return 0
    return _test_and_record(args, argv, full, data, model.full_sort_predict, config, start)


def _test_and_record(args, argv, full, data, scorer, config, start) -> int:
    from glta_hf.metrics import evaluate
    from glta_hf.results import write_run_result

    # test: mask every training interaction (fit + validation), as every model in a comparison does
    metrics = evaluate(train=full.matrix("train"), test=full.matrix("test"), scorer=scorer)
    wall = time.perf_counter() - start
    if args.from_embeddings:  # the run's cost is its training plus this evaluation
        wall += float(config.get("train_wall_time_s", 0.0))
    print(json.dumps(metrics, indent=2))
    if args.results_dir:
        path = write_run_result(args.results_dir, args.results_name or full.name, args.run_name or args.model,
                                model=args.model, split=data.split_policy, metrics=metrics, command=_command(argv),
                                wall_time_s=wall, config=config)
        print(f"result written to {path}")
    return 0


def _command(argv) -> str:
    """This run's command line for the records (secrets redacted, absolute paths made portable)."""
    from glta_hf.run_record import sanitized_command

    return "python " + sanitized_command([sys.argv[0]] + list(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(run_reporting_errors(Path(sys.argv[0]).name, main))
