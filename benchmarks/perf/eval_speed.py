#!/usr/bin/env python
"""Evaluator speed: the batched, vectorized ``glta_hf.metrics.evaluate`` vs a one-user-at-a-time loop.

Both evaluate LightGCN on ml-1m (full ranking, 6,040 users x 3,260 items, k = 5/10/20); the metrics must agree.
The loop is the straightforward implementation: score one user, mask its train items, top-k, metrics in Python.
Writes ``benchmarks/results/performance/eval_speed.json``. Example::

    python benchmarks/perf/eval_speed.py --data-dir ../shared/data/ml-1m --embeddings runs/ml-1m-lightgcn
"""
from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def loop_evaluate(train, test, scorer, ks):
    """One user at a time, metrics in plain Python: the baseline the vectorized evaluator replaces."""
    import torch

    from glta_hf.metrics import metric_names

    sums = {name: 0.0 for name in metric_names(ks)}
    users = [u for u in range(test.num_users) if len(test.items_of(u)) > 0]
    kmax = max(ks)
    for u in users:
        scores = scorer(torch.tensor([u]))[0].clone()
        scores[torch.from_numpy(train.items_of(u))] = float("-inf")
        ranked = torch.topk(scores, kmax).indices.tolist()
        relevant = set(test.items_of(u).tolist())
        for k in ks:
            gains = [1.0 if i in relevant else 0.0 for i in ranked[:k]]
            hits = sum(gains)
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(relevant))))
            sums[f"precision@{k}"] += hits / k
            sums[f"recall@{k}"] += hits / len(relevant)
            sums[f"ndcg@{k}"] += sum(g / math.log2(r + 2) for r, g in enumerate(gains)) / idcg
            sums[f"hit_rate@{k}"] += float(hits > 0)
    result = {name: value / len(users) for name, value in sums.items()}
    result["num_users"] = len(users)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data/ml-1m")
    p.add_argument("--embeddings", default=None, help="node-embedding folder of a trained LightGCN (default: an "
                   "untrained LightGCN, same cost)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 is fastest on a shared, "
                   "oversubscribed 2-core machine: 0.27 s vs 1.1 s for the vectorized run)")
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/performance/eval_speed.json"))
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from glta_hf.data.loaders import load_dataset
    from glta_hf.graph import LightGCN, load_node_embeddings
    from glta_hf.io_utils import write_json
    from glta_hf.metrics import DEFAULT_KS, evaluate
    from glta_hf.results import git_commit, hardware_info

    data = load_dataset("ml-1m", args.data_dir)
    train, test = data.matrix("train"), data.matrix("test")
    torch.manual_seed(0)
    model = LightGCN(train).eval()
    if args.embeddings:
        loaded = load_node_embeddings(args.embeddings)
        model._cache = (loaded.user, loaded.item)  # the exported tables are the propagated ones
    else:
        model.cached_embeddings()

    def whole_evaluation():
        if not args.embeddings:
            model._cache = None  # include the full propagation in the timed run
        return evaluate(train=train, test=test, scorer=model.full_sort_predict)

    def timed(fn):
        times, out = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), times, out

    whole_s, whole_times, _ = timed(whole_evaluation)
    model.cached_embeddings()  # from here on both evaluators score from the same cached tables
    fast_s, times, fast = timed(lambda: evaluate(train=train, test=test, scorer=model.full_sort_predict))
    t0 = time.perf_counter()
    slow = loop_evaluate(train, test, model.full_sort_predict, DEFAULT_KS)
    slow_s = time.perf_counter() - t0

    mismatch = {k: (fast[k], slow[k]) for k in slow if abs(fast[k] - slow[k]) > 1e-6}
    if mismatch:
        raise SystemExit(f"vectorized and loop evaluators disagree: {mismatch}")
    users = fast["num_users"]
    record = {
        "benchmark": "evaluator speed, LightGCN on ml-1m (full ranking, k=5/10/20)",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "commit": git_commit(),
        "hardware": hardware_info(),
        "users": users,
        "items": train.num_items,
        "whole_evaluation_s": round(whole_s, 4),
        "whole_evaluation_includes_propagation": not args.embeddings,
        "whole_evaluation_s_all_repeats": [round(t, 4) for t in whole_times],
        "vectorized_s": round(fast_s, 4),
        "vectorized_s_all_repeats": [round(t, 4) for t in times],
        "loop_s": round(slow_s, 3),
        "vectorized_users_per_s": round(users / fast_s, 1),
        "loop_users_per_s": round(users / slow_s, 1),
        "speedup": round(slow_s / fast_s, 1),  # same cached tables on both sides
        "load_average_1min": round(__import__("os").getloadavg()[0], 2),
        "metrics_equal": True,
        "ndcg@10": fast["ndcg@10"],
    }
    write_json(args.output, record)
    print({k: v for k, v in record.items() if k not in ("hardware", "command")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
