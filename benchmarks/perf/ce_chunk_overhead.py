"""Time cost of chunked cross-entropy (``ce_chunk_size``) vs plain CE, head only (no LLM), same process, interleaved.

Rows = 160 labelled slots (batch 16 x L 10); linear head (576 x |I| trainable) and factorized head (576 -> 64, dot
with frozen E_i, + trainable bias). One measurement = forward + backward of the loss. Median over repeats of the
per-repeat ratio chunked/plain.

    python benchmarks/perf/ce_chunk_overhead.py --items 10000 100000 1000000 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--heads", nargs="+", default=["factorized", "linear"])
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-linear-items", type=int, default=100_000,
                        help="skip the linear head above this |I| (1M x 576 fwd+bwd is ~1 min per step on this CPU)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from glta_hf.loss import chunked_linear_cross_entropy
    from glta_hf.results import write_run_result

    t_start = time.time()
    gen = torch.Generator().manual_seed(0)
    rows = {}
    for items in args.items:
        for head in args.heads:
            if head == "linear" and items > args.max_linear_items:
                continue
            h = torch.randn(160, 576, generator=gen)
            labels = torch.randint(0, items, (160,), generator=gen)
            if head == "linear":
                weight = (torch.randn(items, 576, generator=gen) * 0.02).requires_grad_(True)
                proj = None
            else:
                weight = torch.randn(items, 64, generator=gen)  # frozen E_i
                proj = torch.nn.Linear(576, 64)
            bias = torch.zeros(items, requires_grad=True)

            def step(chunked):
                x = h.detach().clone().requires_grad_(True)
                q = proj(x) if proj is not None else x
                t0 = time.perf_counter()
                if chunked:
                    loss = chunked_linear_cross_entropy(q, weight, bias, labels, args.chunk)
                else:
                    loss = F.cross_entropy(q @ weight.t() + bias, labels)
                loss.backward()
                dt = time.perf_counter() - t0
                weight.grad = None
                bias.grad = None
                return dt, float(loss.detach())

            step(False), step(True)  # warm-up
            plain, chunk, ratio = [], [], []
            for rep in range(args.repeats):
                order = [False, True] if rep % 2 == 0 else [True, False]
                res = {c: step(c) for c in order}
                plain.append(res[False][0])
                chunk.append(res[True][0])
                ratio.append(res[True][0] / res[False][0])
                assert abs(res[True][1] - res[False][1]) < 1e-3 * max(1.0, abs(res[False][1]))
            key = f"{head}_{items}"
            rows[key] = {"plain_median_s": round(statistics.median(plain), 4), "chunked_median_s": round(statistics.median(chunk), 4),
                         "chunked_over_plain": round(statistics.median(ratio), 3), "per_repeat": [round(r, 3) for r in ratio]}
            print(key, rows[key], f"load={os.getloadavg()[0]:.1f}", flush=True)
    write_run_result(
        args.out, "performance", "ce_chunk_overhead", model="glta", split="synthetic", metrics=rows,
        command="python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]), wall_time_s=time.time() - t_start,
        config=vars(args) | {"load_avg_end": os.getloadavg()},
    )


if __name__ == "__main__":
    main()
