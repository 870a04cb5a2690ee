"""Full-ranking evaluation speed of GLTA on the ml-1m catalogue (3,260 items, 6,040 users; fixed CoLaKG split).

``glta_hf.metrics.evaluate(ranker=model.ranker(batch_size=B))`` over a sample of users with >= 1 test item, batched
(B = 32 users per LLM forward) vs one user at a time (B = 1), alternating, median over repeats; users/s extrapolated
to all test users. SmolLM2-135M-Instruct, RANDOM node embeddings (timing only), training histories attached, no
profile/prediction texts, ``first_k`` decoding, k in (5, 10).

    python benchmarks/perf/glta_eval_speed.py --users 64 --repeats 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _glta_bench_model import ROOT, SMOLLM2, build, write_perf_result  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()

    from glta_hf.metrics import evaluate

    t_start = time.time()
    model, data = build("ml-1m", "/work/shared/data/ml-1m", layers=args.layers)
    train, test = data.matrix("train"), data.matrix("test")
    all_users = np.flatnonzero(test.row_lengths() > 0)
    users = np.random.default_rng(0).choice(all_users, size=min(args.users, len(all_users)), replace=False)
    evaluate(train=train, test=test, ranker=model.ranker(batch_size=args.batch_size), ks=(5, 10), users=users[:2])  # warm-up
    times = {"batched": [], "loop": []}
    results = {}
    for rep in range(args.repeats):
        for name in (["batched", "loop"] if rep % 2 == 0 else ["loop", "batched"]):
            bs = args.batch_size if name == "batched" else 1
            t0 = time.perf_counter()
            results[name] = evaluate(train=train, test=test, ranker=model.ranker(batch_size=bs), ks=(5, 10), users=users)
            times[name].append(time.perf_counter() - t0)
            print(f"rep {rep} {name}: {times[name][-1]:.2f}s load={os.getloadavg()[0]:.1f}", flush=True)
    same = all(abs(results["batched"][k] - results["loop"][k]) < 1e-6 for k in results["batched"] if k != "num_users")
    per = [l / b for l, b in zip(times["loop"], times["batched"])]
    metrics = {
        name: {"median_s": round(statistics.median(v), 3), "all_s": [round(x, 3) for x in v],
               "users_per_s": round(len(users) / statistics.median(v), 3),
               "extrapolated_full_eval_h": round(len(all_users) / (len(users) / statistics.median(v)) / 3600, 2)}
        for name, v in times.items()
    }
    metrics["loop_over_batched_time"] = {"median": round(statistics.median(per), 3), "per_repeat": [round(x, 3) for x in per]}
    metrics["metrics_identical_batched_vs_loop"] = same
    metrics["users_sampled"], metrics["users_with_test_items"] = int(len(users)), int(len(all_users))
    write_perf_result(__file__, args, "glta_eval_speed", split="ml-1m fixed CoLaKG split (user sample)",
                      metrics=metrics, t_start=t_start, llm=f"{SMOLLM2}, {args.layers} layers",
                      note="random node embeddings, untrained; timing only")


if __name__ == "__main__":
    main()
