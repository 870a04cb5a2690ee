#!/usr/bin/env python
"""Evaluate a trained GLTA model with the shared full-ranking evaluator; write the metrics as JSON.

    python training/evaluate.py --model runs/ml-latest-small/user/final --split test --decoding first_k \\
        --output runs/ml-latest-small/test_metrics.json

The dataset and split options are read from the model folder's ``glta_run.json`` (every writer -- align.py, the
quickstart, the benchmark -- records them the same way, ``glta_hf.alignment_data.data_record``; flags override), so
any checkpoint this package wrote evaluates with no extra flags.
``--split test`` excludes every training interaction (fit + validation) and shows the user's full training
history; ``--split validation`` excludes the fit interactions only. ``--decoding all`` runs the four decoders.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from glta_hf.alignment_data import data_from_record, serving_histories, user_histories  # noqa: E402
from glta_hf.io_utils import read_json, write_json  # noqa: E402
from glta_hf.metrics import evaluate_model, sample_eval_users  # noqa: E402
from glta_hf.modeling_glta import DECODINGS, GLTAForRecommendation  # noqa: E402
from glta_hf.results import write_run_result  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="GLTA model folder (align.py's <output_dir>/<stage>/final)")
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--decoding", default="first_k", choices=list(DECODINGS) + ["all"])
    p.add_argument("--ks", default="5,10,20", help="cut-offs (first_k / autoregressive keep those <= L)")
    p.add_argument("--output", default=None, help="metrics JSON path (default: <model>/metrics_<split>.json)")
    p.add_argument("--max-users", type=int, default=None, help="a seeded sample of users (smoke runs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--llm", default=None, help="override the LLM reference (a moved local copy)")
    for name in ("dataset", "data-dir", "split-policy"):
        p.add_argument("--" + name, default=None, help="override glta_run.json")
    p.add_argument("--results-dir", default=None, help="also write <results-dir>/<dataset>/<run-name>.json")
    p.add_argument("--results-name", default=None, help="dataset folder name under --results-dir")
    p.add_argument("--run-name", default="glta")
    p.add_argument("--threads", type=int, default=None)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.model)
    run = read_json(folder / "glta_run.json") if (folder / "glta_run.json").is_file() else {}
    dataset = args.dataset or run.get("dataset")
    if not dataset:
        raise SystemExit(f"{folder}: no glta_run.json; pass --dataset / --data-dir")
    data, full = data_from_record(run, dataset=dataset, data_dir=args.data_dir, split=args.split_policy)
    model = GLTAForRecommendation.from_pretrained(folder, llm_name_or_path=args.llm)
    if list(map(str, model.item_catalogue["item_ids"])) != list(map(str, data.item_ids)):
        raise SystemExit(f"{folder}: the model's item catalogue differs from dataset {dataset!r}")
    source = full if args.split == "test" else data
    train, truth = source.matrix("train"), source.matrix(args.split)
    histories, _ = user_histories(source, "train")
    recent = run.get("eval_history_recent", True)
    model.attach_user_context(histories=serving_histories(histories, model.prompt_config.max_history, recent))
    users = sample_eval_users(truth, args.max_users, seed=0)
    ks = tuple(int(k) for k in args.ks.split(","))
    results = {}
    for decoding in (DECODINGS if args.decoding == "all" else (args.decoding,)):
        t0 = time.perf_counter()
        metrics = evaluate_model(model, train=train, truth=truth, decoding=decoding, ks=ks, users=users,
                                 batch_size=args.batch_size, progress=True)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        results[decoding] = metrics
        print(decoding, json.dumps(metrics), flush=True)
    out = {"model": str(folder), "dataset": dataset, "split": args.split, "split_policy": source.split_policy,
           "metrics": results if args.decoding == "all" else results[args.decoding],
           "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv or sys.argv[1:])),
           "wall_time_s": round(time.perf_counter() - start, 2)}
    output = Path(args.output) if args.output else folder / f"metrics_{args.split}.json"
    write_json(output, out)
    print(f"metrics written to {output}")
    if args.results_dir:
        path = write_run_result(args.results_dir, args.results_name or dataset, args.run_name, model="GLTA",
                                split=source.split_policy, metrics=out["metrics"], command=out["command"],
                                wall_time_s=out["wall_time_s"], config={"run": run, "decoding": args.decoding})
        print(f"result written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
