"""Time of one title warm-up step (``glta_hf.item_titles.warm_up_item_projector``): the plain path (cosines in the
LLM's width) against the factored one (through the linear projector's node width), same process, interleaved.

The catalogue and its texts are the dataset's (their title embeddings from SmolLM2's input-embedding rows); the
node table is random (d=64: a step's cost does not depend on its values) and the LLM never runs in the warm-up, so
only its embedding table is loaded in full (one decoder layer kept). Per-step time = (time of S steps - time of 0
steps) / S, which removes the fixed cost of the retrievals before and after the steps. Median over repeats.

    python benchmarks/perf/title_warmup_speed.py --dataset ml-latest-small --steps 3 --repeats 3 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _glta_bench_model import add_run_args, build, start_run, write_perf_result  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    add_run_args(parser)
    args = parser.parse_args()
    t_start = start_run(args)

    from glta_hf.item_titles import title_embeddings, warm_up_item_projector

    model, data = build(args.dataset, args.data_dir, layers=1)
    titles = title_embeddings(model, data.item_texts)
    items = list(range(data.num_items))
    start = {k: v.clone() for k, v in model.item_projector.state_dict().items()}

    def run(factored: bool, steps: int):
        model.item_projector.load_state_dict(start)
        t0 = time.perf_counter()
        result = warm_up_item_projector(model, titles, items, steps, 1e-2, factored=factored)
        return time.perf_counter() - t0, result

    run(False, 1), run(True, 1)  # warm-up
    per_step = {False: [], True: []}
    ratios, losses = [], {}
    for rep in range(args.repeats):
        order = [False, True] if rep % 2 == 0 else [True, False]
        now = {}
        for factored in order:
            full, result = run(factored, args.steps)
            base, _ = run(factored, 0)
            now[factored] = (full - base) / args.steps
            per_step[factored].append(now[factored])
            losses[factored] = result["loss_end"]
        ratios.append(now[False] / now[True])
    same = abs(losses[True] - losses[False]) <= 1e-4 * max(1.0, abs(losses[False]))
    metrics = {
        "items": len(items), "node_dim": int(model.item_embeddings.shape[1]),
        "hidden": int(titles.shape[1]),
        "plain_step_s": round(statistics.median(per_step[False]), 3),
        "factored_step_s": round(statistics.median(per_step[True]), 3),
        "speedup": round(statistics.median(ratios), 2), "per_repeat_speedup": [round(r, 2) for r in ratios],
        "loss_end_plain": round(losses[False], 6), "loss_end_factored": round(losses[True], 6),
        "same_loss": bool(same),
    }
    write_perf_result(__file__, args, f"title_warmup_speed_{args.dataset}", split="catalogue", metrics=metrics,
                      t_start=t_start)


if __name__ == "__main__":
    main()
