"""Latency of ``GLTAForRecommendation.recommend()`` on CPU with SmolLM2-135M-Instruct.

A model built with ``from_components`` over ml-latest-small's catalogue (9,724 items) and user table (610 users,
training histories attached, no profile/prediction texts), RANDOM node embeddings, linear GLLM head, nothing
trained: latency does not depend on the weights' values. Each request is one ``recommend(users, k=10)`` call
(prompt building + tokenization + LLM forward + head + first_k decoding, seen items excluded); batch 1 = one user per
request, batch 32 = 32 users per request. Requests alternate between batch sizes; p50/p95 over requests.

    python benchmarks/perf/recommend_latency.py --requests-1 12 --requests-32 3
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _glta_bench_model import ROOT, SMOLLM2, build, write_perf_result  # noqa: E402


def pct(values, q):
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--requests-1", type=int, default=12)
    parser.add_argument("--requests-32", type=int, default=3)
    parser.add_argument("--decoding", default="first_k")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()


    t_start = time.time()
    model, data = build("ml-latest-small", "/work/shared/data/ml-latest-small", layers=args.layers)
    users = list(data.user_ids)
    rng = random.Random(0)
    model.recommend([users[0]], k=10, decoding=args.decoding)  # warm-up
    lat = {1: [], 32: []}
    plan = [1] * args.requests_1 + [32] * args.requests_32
    # interleave: spread the batch-32 requests among the batch-1 ones
    order = sorted(range(len(plan)), key=lambda j: (j if plan[j] == 1 else (j - args.requests_1 + 0.5) * args.requests_1 / max(args.requests_32, 1)))
    for j in order:
        b = plan[j]
        req = rng.sample(users, b)
        t0 = time.perf_counter()
        out = model.recommend(req, k=10, decoding=args.decoding, batch_size=32)
        lat[b].append(time.perf_counter() - t0)
        assert len(out) == b and all(len(o["items"]) == 10 for o in out)
        print(f"batch {b:2d}: {lat[b][-1]:.3f}s load={os.getloadavg()[0]:.1f}", flush=True)
    metrics = {}
    for b, v in lat.items():
        if not v:
            continue
        metrics[f"batch_{b}"] = {
            "requests": len(v), "p50_s": round(pct(v, 0.5), 3), "p95_s": round(pct(v, 0.95), 3),
            "mean_s": round(statistics.mean(v), 3), "all_s": [round(x, 3) for x in v],
            "users_per_s": round(b * len(v) / sum(v), 3),
        }
    if lat[1] and lat[32]:
        metrics["per_user_speedup_batch32_vs_batch1"] = round(statistics.median(lat[1]) / (statistics.median(lat[32]) / 32), 2)
    write_perf_result(__file__, args, "recommend_latency", split="ml-latest-small catalogue, random node embeddings",
                      metrics=metrics, t_start=t_start, llm=f"{SMOLLM2}, {args.layers} layers",
                      note="random node embeddings, untrained; no profile/prediction texts")


if __name__ == "__main__":
    main()
