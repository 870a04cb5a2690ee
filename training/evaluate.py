#!/usr/bin/env python
"""Evaluate a trained GLTA model with the shared full-ranking evaluator; write the metrics as JSON.

    python training/evaluate.py --model runs/ml-latest-small/user/final --split test --decoding first_k \\
        --output runs/ml-latest-small/test_metrics.json

Nothing is written into the model folder or into ``benchmarks/results`` unless asked: the default ``--output`` is
``glta-eval/<model path>_<split>.json`` under the current directory, and ``--results-dir`` is never implied.
``--recorded-users`` evaluates exactly the users whose ids the run record (``glta_run.json``'s ``eval.users``, written
by the quickstart) lists, with the recorded history order: the model card's figures, repeated. The output records the
evaluated user ids (``users``) so any run can be repeated the same way.

The dataset and split options are read from the model folder's ``glta_run.json`` (every writer -- align.py, the
quickstart, the benchmark -- records them the same way, ``glta_hf.alignment_data.data_record``; flags override), so
any checkpoint this package wrote evaluates with no extra flags when its data folder is found from the recorded path:
relative to the working folder, or beside the model folder or one of its parents. Records publish no local path, so a
data folder given by an absolute path outside the working folder is recorded by its name only: if it is not found
that way, pass ``--data-dir``.
``--split test`` excludes every training interaction (fit + validation) and shows the user's full training
history; ``--split validation`` excludes the fit interactions only. ``--decoding all`` runs the four decoders.
``--gate-scales 0,0.5,1,2`` (a graph residual model with a gate) evaluates the model once per multiplier of its
learned gate -- the LLM runs once per batch, every scale decodes from the same slot states -- and records every scale's
metrics (``gate_scales``) and the best by NDCG@10 (``best_gate_scale``; ``metrics`` holds the best scale's, and
``gate_scale`` says which): choose on ``--split validation``. ``--gate-scale X`` evaluates one multiplier (the chosen
one, on test), recorded as ``gate_scale`` in the output and the result row (run name ``glta_gate<X>`` unless
``--run-name`` is given). ``docs/TRAINING_MECHANICS.md`` says why. ``--per-user`` adds each user's metrics (``per_user``), for a paired comparison
of two models on the same users (``benchmarks/quality/paired_compare.py``).
Flags are kebab-case; the underscore spelling (``--batch_size``) works too. Invalid values, an unwritable output and
an LLM override that does not resolve stop at parse time, before the model loads: one ``error:`` line, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from glta_hf.cpu_threads import prefer_passive_openmp  # noqa: E402  (light; before torch loads: it says why)

prefer_passive_openmp()

from glta_hf.cli_args import (GLTAArgumentParser, cutoffs, decoding_name, existing_dir, gate_scale_list,  # noqa: E402
                               non_negative_float, positive_int, require_llm, run_reporting_errors, writable_dir,
                               writable_file)


def decoding_or_all(text: str) -> str:
    return text if text == "all" else decoding_name(text)


def build_parser() -> argparse.ArgumentParser:
    from glta_hf.data._build import SPLITS
    from glta_hf.data.loaders import DATASETS

    p = GLTAArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="GLTA model folder (align.py's <output_dir>/<stage>/final)")
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--decoding", default="first_k", type=decoding_or_all,
                   help="a registered decoding (first_k, first_logit, autoregressive, all_slots) or all")
    p.add_argument("--ks", type=cutoffs, default=(5, 10, 20), help="comma-separated cut-offs (default 5,10,20; "
                                                                    "first_k / autoregressive keep those <= L)")
    p.add_argument("--output", default=None, type=writable_file,
                   help="metrics JSON path (default: glta-eval/<model path>_<split>.json in the current directory; "
                        "never inside the model folder)")
    p.add_argument("--max-users", type=positive_int, default=None, help="a seeded sample of users (smoke runs)")
    p.add_argument("--recorded-users", action="store_true",
                   help="evaluate exactly the users glta_run.json's eval.users lists (the model card's figures)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--llm", default=None, help="override the LLM reference (a moved local copy)")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="override glta_run.json")
    p.add_argument("--data-dir", default=None, type=existing_dir, help="override glta_run.json")
    p.add_argument("--split-policy", default=None, choices=SPLITS, help="override glta_run.json")
    p.add_argument("--results-dir", default=None, type=writable_dir,
                   help="also write <results-dir>/<dataset>/<run-name>.json")
    p.add_argument("--results-name", default=None, help="dataset folder name under --results-dir")
    p.add_argument("--run-name", default=None, help="the result row's name (default glta, glta_gate<X> with "
                                                     "--gate-scale X)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--residual-graph", default=None, type=existing_dir,
                   help="a graph residual model scores its graph term with this node-embedding folder (a graph "
                        "refit on every training edge) while its projectors keep the tables they were trained on: "
                        "stacking's refit step for a residual trained with --target_policy held_out")
    p.add_argument("--prefix-cache", action="store_true",
                   help="exact cached text prefixes (same metrics; faster with the text_first layout, refused with LoRA)")
    p.add_argument("--prefix-cache-dir", default=None, type=writable_dir,
                   help="a persistent prefix store (implies --prefix-cache), e.g. the training run's "
                        "--prefix_cache_dir: prefixes computed in training are read back instead of recomputed (the "
                        "text_first prefix is the user's texts, the same in training and test), new ones are added")
    p.add_argument("--prefix-cache-max-gb", default=None, type=non_negative_float,
                   help="memory budget of the prefix store in GiB (the rest is memory-mapped from disk; default: the "
                        "store's, glta_hf.prefix_cache.DEFAULT_MAX_BYTES)")
    p.add_argument("--gate-scales", default=None, type=gate_scale_list,
                   help="comma-separated multipliers of a graph residual's learned gate, e.g. 0,0.5,1,2 (1: the "
                        "model as trained, 0: its graph term alone): one LLM pass, the metrics of every scale and the "
                        "best by ndcg@10; choose on --split validation")
    p.add_argument("--per-user", action="store_true",
                   help="also write each user's metrics into the output (per_user: users and one list per metric, "
                        "in that order): what benchmarks/quality/paired_compare.py needs to say how sure a "
                        "difference between two models is")
    p.add_argument("--gate-scale", default=None, type=non_negative_float,
                   help="evaluate one multiplier of the learned gate (the one chosen on validation), recorded in the "
                        "output and the result row")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and cross-check the flags (usage errors exit with code 2 before the model loads)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not Path(args.model).is_dir():
        parser.error(f"argument --model: {args.model}: no such folder")
    if args.output is None:  # the default output: ./glta-eval/..., it must be writable
        try:
            writable_file(str(default_output(Path(args.model), args.split, gate_suffix(args))))
        except argparse.ArgumentTypeError as err:
            parser.error(f"argument --output (default): {err}")
    if args.llm is not None:
        require_llm(parser, "--llm", args.llm)
    if args.recorded_users and args.max_users is not None:
        parser.error("argument --recorded-users: not allowed with --max-users")
    check_gate_flags(parser, args)
    return args


def check_gate_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--gate-scales`` / ``--gate-scale``: one of them, a model whose config has a gated graph residual (read from
    its config.json, before the model loads), a sweep of one decoding and never a result row."""
    flag = "--gate-scales" if args.gate_scales is not None else "--gate-scale" if args.gate_scale is not None else None
    if flag is None:
        return
    if args.gate_scales is not None and args.gate_scale is not None:
        parser.error("argument --gate-scale: not allowed with --gate-scales")
    if args.gate_scales is not None and args.decoding == "all":
        parser.error("argument --gate-scales: not allowed with --decoding all (sweep one decoding at a time)")
    if args.per_user:
        parser.error(f"argument --per-user: not allowed with {flag} (per-user values of a gate sweep are not kept)")
    if args.gate_scales is not None and args.results_dir:
        parser.error("argument --gate-scales: not allowed with --results-dir (a sweep chooses a scale; write the "
                     "chosen one's row with --gate-scale X)")
    if (Path(args.model) / "config.json").is_file():  # otherwise loading the model says what is wrong
        from glta_hf.configuration_glta import GLTAConfig

        config = GLTAConfig.from_pretrained(args.model)
        if not (config.graph_residual and config.residual_gate):
            parser.error(f"argument {flag}: multiplies a graph residual's learned gate, and {args.model} has none "
                         f"(graph_residual={config.graph_residual}, residual_gate={config.residual_gate})")


def gate_suffix(args: argparse.Namespace) -> str:
    """What the default output / run name add for a gate sweep or a chosen gate scale."""
    if args.gate_scales is not None:
        return "_gates"
    return "" if args.gate_scale is None else f"_gate{args.gate_scale:g}"


def default_output(model: Path, split: str, suffix: str = "") -> Path:
    """``glta-eval/<model path>_<split><suffix>.json`` in the current directory: outside the model folder and outside
    the committed ``benchmarks/results`` (those only when asked: ``--output`` / ``--results-dir``)."""
    parts = [p for p in model.resolve().parts[-3:] if p not in ("/", "")]
    return Path("glta-eval") / f"{'_'.join(parts)}_{split}{suffix}.json"


def recorded_users(run: dict, user_ids, folder: Path):
    """Rows of the users listed in the run record's evaluation, in the record's order (SystemExit when absent)."""
    import numpy as np

    listed = (run.get("eval") or {}).get("users")
    if not isinstance(listed, list):
        raise SystemExit(f"{folder}: glta_run.json records no evaluated users (eval.users); the quickstart writes "
                         "them. Use --max-users N or all users instead")
    rows = {str(u): r for r, u in enumerate(user_ids)}
    missing = [u for u in listed if str(u) not in rows]
    if missing:
        raise SystemExit(f"{folder}: recorded user {missing[0]!r} is not in the dataset")
    return np.asarray([rows[str(u)] for u in listed])


def per_user_record(values, user_ids) -> dict:
    """:func:`glta_hf.metrics.evaluate`'s per-user values as JSON: user ids, then one list per metric (6 decimals)."""
    return {"users": [user_ids[u] for u in values["users"].tolist()],
            **{name: [round(float(v), 6) for v in column] for name, column in values.items() if name != "users"}}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from glta_hf.checkpoint import RUN_INFO_NAME
    from glta_hf.decoding import decoder_names
    from glta_hf.alignment_data import data_from_record, serving_histories, user_histories
    from glta_hf.io_utils import read_json, write_json
    from glta_hf.metrics import best_gate_scale, evaluate_gate_scales, evaluate_model, sample_eval_users
    from glta_hf.modeling_glta import GLTAForRecommendation
    from glta_hf.results import write_run_result
    from glta_hf.run_record import portable_path, sanitized_command

    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.model)
    run = read_json(folder / RUN_INFO_NAME) if (folder / RUN_INFO_NAME).is_file() else {}
    dataset = args.dataset or run.get("dataset")
    if not dataset:
        raise SystemExit(f"{folder}: no glta_run.json; pass --dataset / --data-dir")
    data, full = data_from_record(run, dataset=dataset, data_dir=args.data_dir, split=args.split_policy,
                                  record_folder=folder)
    model = GLTAForRecommendation.from_pretrained(folder, llm_name_or_path=args.llm)
    if list(map(str, model.item_catalogue["item_ids"])) != list(map(str, data.item_ids)):
        raise SystemExit(f"{folder}: the model's item catalogue differs from dataset {dataset!r}")
    if args.residual_graph:
        from glta_hf.graph import load_node_embeddings
        from glta_hf.pipeline import check_node_ids

        nodes = load_node_embeddings(args.residual_graph)
        try:
            check_node_ids(nodes, data, where=args.residual_graph)
            model.set_residual_tables(nodes.user, nodes.item)
        except ValueError as err:
            raise SystemExit(f"--residual-graph {args.residual_graph}: {err}") from None
    source = full if args.split == "test" else data
    train, truth = source.matrix("train"), source.matrix(args.split)
    histories, _ = user_histories(source, "train")
    recent = run.get("eval_history_recent", True)
    history_seed = int((run.get("eval") or {}).get("history_seed") or 0)  # the order the recorded evaluation used
    model.attach_user_context(histories=serving_histories(histories, model.prompt_config.max_history, recent,
                                                          history_seed))
    if args.prefix_cache or args.prefix_cache_dir:
        budget = {} if args.prefix_cache_max_gb is None else {"max_bytes": int(args.prefix_cache_max_gb * (1 << 30))}
        model.enable_prefix_cache(folder=args.prefix_cache_dir, **budget)
    users = recorded_users(run, source.user_ids, folder) if args.recorded_users else \
        sample_eval_users(truth, args.max_users, seed=0)
    ks = args.ks
    scales = args.gate_scales or ((args.gate_scale,) if args.gate_scale is not None else None)
    results, gate, per_user = {}, {}, {}
    for decoding in (decoder_names() if args.decoding == "all" else (args.decoding,)):
        t0 = time.perf_counter()
        if scales is None:
            metrics = evaluate_model(model, train=train, truth=truth, decoding=decoding, ks=ks, users=users,
                                     batch_size=args.batch_size, progress=True, return_per_user=args.per_user)
            if args.per_user:
                metrics, values = metrics
                per_user[decoding] = per_user_record(values, source.user_ids)
        else:
            per_scale = evaluate_gate_scales(model, train=train, truth=truth, gate_scales=scales, decoding=decoding,
                                             ks=ks, users=users, batch_size=args.batch_size, progress=True)
            best = best_gate_scale(per_scale)
            gate = {"gate_scale": best["scale"], "learned_gate": float(model.graph_residual.gate),
                    "residual_scale": float(model.graph_residual.scale)}
            if args.gate_scales is not None:
                for scale, scale_metrics in per_scale.items():
                    print(decoding, f"gate_scale={scale:g}", json.dumps(scale_metrics), flush=True)
                gate.update(gate_scales={f"{s:g}": m for s, m in per_scale.items()}, best_gate_scale=best)
                print(f"best gate scale by {best['by']}: {best['scale']:g} ({best[best['by']]:.4f}); learned gate "
                      f"{gate['learned_gate']:.4g}, residual scale {gate['residual_scale']:.4g}", flush=True)
                if args.split == "test":
                    print("note: a gate scale chosen on test is a test-set selection; choose on --split validation "
                          "and evaluate test once with --gate-scale", flush=True)
            metrics = dict(per_scale[best["scale"]])
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        results[decoding] = metrics
        print(decoding, json.dumps(metrics), flush=True)
    out = {"model": portable_path(folder), "dataset": dataset, "split": args.split, "split_policy": source.split_policy,
           "metrics": results if args.decoding == "all" else results[args.decoding], **gate,
           "users": [source.user_ids[u] for u in users.tolist()], "history_seed": history_seed,
           "residual_graph": portable_path(Path(args.residual_graph)) if args.residual_graph else None,
           "command": "python " + sanitized_command([sys.argv[0]] + list(argv or sys.argv[1:])),
           "wall_time_s": round(time.perf_counter() - start, 2)}
    if args.per_user:
        out["per_user"] = per_user if args.decoding == "all" else per_user[args.decoding]
    output = Path(args.output) if args.output else default_output(folder, args.split, gate_suffix(args))
    write_json(output, out)
    print(f"metrics written to {output}")
    if args.results_dir:
        run_name = args.run_name or f"glta{gate_suffix(args)}"
        config = {"run": run, "decoding": args.decoding}
        if args.gate_scale is not None:
            config.update(gate_scale=args.gate_scale, learned_gate=gate["learned_gate"],
                          residual_scale=gate["residual_scale"])
        path = write_run_result(args.results_dir, args.results_name or dataset, run_name, model="GLTA",
                                split=source.split_policy, metrics=out["metrics"], command=out["command"],
                                wall_time_s=out["wall_time_s"], config=config)
        print(f"result written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(Path(sys.argv[0]).name, main))
