"""How sure is a difference between two models on the same users? A paired bootstrap over users.

Two rows a few percent apart on one seed may differ by chance; their per-user values, paired, say how likely. A is a
``training/evaluate.py --per-user`` output; B is another, or ``--graph DIR``: a node-embedding folder (e.g. the
committed lightgcn row's tables) scored on A's users by the same evaluator, on the dataset given by the dataset flags
(A's split policy is checked).

    python training/evaluate.py --model runs/amazon-scientific/paper/glta_wo_both/user/final --split test \\
        --per-user --output runs/amazon-scientific/paper/glta_wo_both/metrics_test_first_k.json ...
    python benchmarks/quality/paired_compare.py runs/amazon-scientific/paper/glta_wo_both/metrics_test_first_k.json \\
        --graph benchmarks/gpu/nodes/amazon-scientific-lightgcn --dataset amazon-json \\
        --data-dir ../shared/data/amazon-scientific --split random --test-fraction 0.2 --split-seed 0

Prints one JSON object (``glta_hf.metrics.paired_bootstrap``: means, ratio A/B and difference with their intervals,
the share of resamples where A is not above B) and writes it to ``--output`` when given.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from glta_hf.cli_args import (GLTAArgumentParser, add_dataset_arguments, dataset_options, existing_dir,  # noqa: E402
                               open_fraction, positive_int, run_reporting_errors, seed_value, writable_file)


def build_parser() -> argparse.ArgumentParser:
    p = GLTAArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="training/evaluate.py --per-user output (model A)")
    p.add_argument("b", nargs="?", default=None, help="another such output (model B); or --graph")
    p.add_argument("--graph", default=None, type=existing_dir, help="model B: a node-embedding folder, dot-product "
                                                                    "scores (needs --dataset / --data-dir)")
    add_dataset_arguments(p, default="ml-latest-small")
    p.add_argument("--metric", default="ndcg@10", help="the per-user metric compared (default ndcg@10)")
    p.add_argument("--decoding", default=None, help="the decoding, when an output holds several (--decoding all)")
    p.add_argument("--resamples", type=positive_int, default=10000)
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--confidence", type=open_fraction, default=0.95)
    p.add_argument("--output", default=None, type=writable_file, help="also write the JSON here")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.b is None) == (args.graph is None):
        parser.error("give model B as a second output file or as --graph DIR (exactly one)")
    return args


def per_user_values(path: str, metric: str, decoding=None) -> tuple:
    """(record, user ids, values of ``metric``) of an evaluate.py output; ``SystemExit`` naming what is missing."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: not a readable evaluate.py output ({err})") from None
    block = record.get("per_user") if isinstance(record, dict) else None
    if not isinstance(block, dict):
        raise SystemExit(f"{path}: no per-user values; rerun training/evaluate.py with --per-user")
    if "users" not in block:  # --decoding all: one block per decoding
        if decoding is None:
            raise SystemExit(f"{path}: holds decodings {sorted(block)}; choose one with --decoding")
        if decoding not in block:
            raise SystemExit(f"{path}: no decoding {decoding!r} (it holds {sorted(block)})")
        block = block[decoding]
    if metric not in block:
        raise SystemExit(f"{path}: no per-user {metric!r} (it holds {sorted(k for k in block if k != 'users')})")
    users, values = [str(u) for u in block["users"]], block[metric]
    if len(users) != len(values):
        raise SystemExit(f"{path}: {len(users)} users but {len(values)} values of {metric}")
    return record, users, values


def graph_values(args, record: dict, users: list, metric: str) -> list:
    """``metric`` of the node embeddings in ``args.graph`` for ``users`` (ids), on the test split of the dataset flags."""
    from glta_hf.data.loaders import load_dataset
    from glta_hf.graph import load_node_embeddings
    from glta_hf.metrics import DEFAULT_KS, evaluate_graph
    from glta_hf.pipeline import check_node_ids

    if record.get("split") != "test":
        raise SystemExit(f"{args.a}: split {record.get('split')!r}; --graph compares on the test split only")
    full = load_dataset(args.dataset, args.data_dir, **dataset_options(args))
    if record.get("split_policy") not in (None, full.split_policy):
        raise SystemExit(f"{args.a}: split {record['split_policy']!r}, the dataset flags give {full.split_policy!r}")
    nodes = load_node_embeddings(args.graph)
    try:
        check_node_ids(nodes, full, where=args.graph)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    rows = {str(u): r for r, u in enumerate(full.user_ids)}
    missing = [u for u in users if u not in rows]
    if missing:
        raise SystemExit(f"{args.a}: user {missing[0]!r} is not in dataset {full.name!r}")
    cutoff = metric.partition("@")[2]
    if not cutoff.isdigit():
        raise SystemExit(f"--metric {metric}: expected <name>@<k>, e.g. ndcg@10")
    _, per_user = evaluate_graph(nodes, full, users=[rows[u] for u in users], ks=sorted({int(cutoff), *DEFAULT_KS}),
                                 return_per_user=True)
    if metric not in per_user:
        raise SystemExit(f"--metric {metric}: the evaluator measures {sorted(n for n in per_user if n != 'users')}")
    evaluated = [str(full.user_ids[r]) for r in per_user["users"].tolist()]
    if evaluated != users:
        raise SystemExit(f"{args.a}: its users are not the test users the evaluator ranks (first differing: "
                         f"{next(u for u, v in zip(users, evaluated) if u != v)!r})")
    return per_user[metric].tolist()


def main(argv=None) -> int:
    args = parse_args(argv)
    from glta_hf.metrics import paired_bootstrap

    record, users, a = per_user_values(args.a, args.metric, args.decoding)
    if args.graph is not None:
        b, b_name = graph_values(args, record, users, args.metric), args.graph
    else:
        _, users_b, values_b = per_user_values(args.b, args.metric, args.decoding)
        only = sorted(set(users) ^ set(users_b))
        if only or len(users_b) != len(users):
            where = f"user {only[0]!r} is in one file only" if only else "a user listed twice"
            raise SystemExit(f"{args.a} and {args.b} rank different users ({where}): evaluate both on the same users")
        by_user = dict(zip(users_b, values_b))
        b, b_name = [by_user[u] for u in users], args.b  # paired: B's values in A's user order
    try:
        result = paired_bootstrap(a, b, resamples=args.resamples, seed=args.seed, confidence=args.confidence)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    result = {"a": args.a, "b": b_name, "metric": args.metric, **result}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(Path(sys.argv[0]).name, main))
