"""Intra-op thread scaling of SmolLM2-135M's real shapes on CPU, quiet and with one competing busy process.

Why: on a machine shared with other work, 2 torch threads on 2 cores can spin (OpenMP's active wait) or wait for a
descheduled sibling thread; issue 27 measured 666 s of CPU for a quickstart that took 159 s with ``--threads 1``.
This script times the quickstart's two kinds of LLM work at its batch shapes and reports wall *and* CPU time:

* ``train``: forward + backward (gradients for ``inputs_embeds`` only: the LLM is frozen) of a batch of 8 prompts x
  ``--seq`` tokens (the quickstart's ``--batch-size 8``; its prompts are ~100-200 tokens);
* ``eval``: a ``no_grad`` forward of the same batch (ranking / validation).

The decoder is a LLaMA with SmolLM2-135M-Instruct's exact configuration (hidden 576, MLP 1536, 9 heads / 3 KV
heads, float32), truncated to ``--layers`` of its 30 layers (per-layer cost is uniform) and with RANDOM weights:
the time of a matmul does not depend on its values, and no 40 s GGUF de-quantization is paid per configuration.

Every configuration runs in a fresh child process, because OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads
its thread pool: threads 1 / 2 x wait policy (libgomp's default / ``PASSIVE``) x competitor (none / one
``while True: pass`` Python process started before the child and stopped after it). The configurations are
interleaved per repeat, so ratios compare runs made under the same background load; ``os.getloadavg()`` is recorded
for every figure.

    python benchmarks/perf/thread_scaling.py --layers 6 --seq 128 --steps 3 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _glta_bench_model import write_perf_result  # noqa: E402

#: SmolLM2-135M-Instruct's architecture (its GGUF metadata / Hub config.json)
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                    vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
                    tie_word_embeddings=True)
BUSY = "while True:\n    pass\n"


def child(args) -> None:
    """One configuration (in its own process): print a JSON line of wall / CPU seconds per step."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_135M, num_hidden_layers=args.layers)
    config._attn_implementation = "sdpa"
    llm = LlamaModel(config).eval().requires_grad_(False)
    embeds = torch.randn(args.batch, args.seq, config.hidden_size) * 0.02
    mask = torch.ones(args.batch, args.seq, dtype=torch.long)
    result = {"threads": torch.get_num_threads()}

    def train_step():
        x = embeds.clone().requires_grad_(True)
        llm(inputs_embeds=x, attention_mask=mask).last_hidden_state.square().mean().backward()

    def eval_step():
        with torch.no_grad():
            llm(inputs_embeds=embeds, attention_mask=mask)

    for name, step in (("train", train_step), ("eval", eval_step)):
        step()  # warm-up (allocations, the thread pool)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step()
        result[name] = {"wall_s": (time.perf_counter() - wall) / args.steps,
                        "cpu_s": (time.process_time() - cpu) / args.steps}
    print(json.dumps(result), flush=True)


def run_config(args, threads: int, policy: str, busy: bool) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if policy == "default":
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = policy
    competitor = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        load_start = os.getloadavg()
        out = subprocess.run([sys.executable, __file__, "--child", "--threads", str(threads), "--layers",
                              str(args.layers), "--seq", str(args.seq), "--batch", str(args.batch), "--steps",
                              str(args.steps)], env=env, check=True, capture_output=True, text=True).stdout
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    record = json.loads(out.strip().splitlines()[-1])
    record.update(policy=policy, competitor=busy, load_start=[round(x, 2) for x in load_start],
                  load_end=[round(x, 2) for x in os.getloadavg()])
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=6, help="decoder layers kept of SmolLM2's 30")
    p.add_argument("--seq", type=int, default=128, help="tokens per prompt")
    p.add_argument("--batch", type=int, default=8, help="prompts per batch (the quickstart's --batch-size)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the whole grid")
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE.parents[1] / "benchmarks" / "results"))
    args = p.parse_args()
    if args.child:
        child(args)
        return
    t_start = time.time()
    grid = [(t, pol, busy) for busy in (False, True) for pol in ("default", "PASSIVE") for t in (1, 2)]
    runs = []
    for repeat in range(args.repeats):
        for t, pol, busy in grid[repeat % len(grid):] + grid[: repeat % len(grid)]:  # rotate the order
            record = run_config(args, t, pol, busy)
            record["repeat"] = repeat
            runs.append(record)
            print(json.dumps(record), flush=True)
    summary = {}
    for t, pol, busy in grid:
        rows = [r for r in runs if (r["threads"], r["policy"], r["competitor"]) == (t, pol, busy)]
        key = f"threads{t}_{pol}_{'busy' if busy else 'quiet'}"
        summary[key] = {f"{kind}_{m}": round(statistics.median(r[kind][m] for r in rows), 3)
                        for kind in ("train", "eval") for m in ("wall_s", "cpu_s")}
    ratios = {}
    for key, value in summary.items():
        if key.startswith("threads2"):
            base = summary[key.replace("threads2", "threads1")]
            ratios[key + "_vs_threads1"] = {f"{kind}_{m}": round(value[f"{kind}_{m}"] / base[f"{kind}_{m}"], 2)
                                            for kind in ("train", "eval") for m in ("wall_s", "cpu_s")}
    write_perf_result(__file__, args, "thread_scaling", split="synthetic embeddings, SmolLM2-135M shapes",
                      metrics={"median_per_step": summary, "threads2_over_threads1": ratios, "runs": runs},
                      t_start=t_start, cores=os.cpu_count())


if __name__ == "__main__":
    main()
