"""Catalogue scale: peak memory of one GLTA training step at |I| = 10k / 100k / 1M items.

Compares the paper's linear GLLM head (hidden x |I| trainable weights) with the factorized head (hidden -> d, dot with
the frozen LightGCN table E_i, + a trainable per-item bias), each with plain cross-entropy over the materialized
(B, L, |I|) slot logits and with ``ce_chunk_size`` (chunked CE over items, logits never materialized).

Every setting runs in its own subprocess (fresh address space). Inside it a sampler thread reads the resident set
size (/proc/self/statm) every 2 ms during the training steps; we report the peak during the steps, the RSS just
before them, and ``ru_maxrss`` of the whole process (which also covers model construction).

Setup: a random LLaMA with SmolLM2's hidden size (576) but only 2 decoder layers (the head, not the LLM, is what
scales with |I|), random node embeddings (d=64, 1,000 users), batch 16 user-item prompts (H=20, L=10, all 10
slots labelled), Adam, 2 training steps (step 1 allocates Adam's state). Synthetic data: it measures memory, not
quality.

    python benchmarks/perf/catalogue_scale.py                      # all settings, writes the JSON
    python benchmarks/perf/catalogue_scale.py --items 100000 --head factorized --chunk 8192 --worker
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakSampler(threading.Thread):
    def __init__(self, interval=0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self.running = interval, rss_bytes(), True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def stop(self):
        self.running = False
        self.join()
        self.peak = max(self.peak, rss_bytes())
        return self.peak


def worker(args) -> dict:
    import torch

    from glta_hf import GLTAForRecommendation
    from glta_hf.prompts import collate_prompts, encode_prompt, user_item_prompt
    from glta_hf.testing import tiny_llama

    torch.manual_seed(0)
    rss_start = rss_bytes()
    causal, tokenizer = tiny_llama(hidden_size=args.hidden, num_layers=args.layers)
    gen = torch.Generator().manual_seed(0)
    users = torch.randn(1000, args.dim, generator=gen)
    items = torch.randn(args.items, args.dim, generator=gen)
    model = GLTAForRecommendation.from_components(
        causal.model, tokenizer, users, items, llm_name_or_path="tiny-random-llama",
        prompt={"num_slots": args.slots, "max_history": 20, "max_length": 1024},
        head=args.head, ce_chunk_size=args.chunk or None,
    )
    del items, users
    trainable = model.set_trainable("user")
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    cfg = model.prompt_config
    rng = torch.Generator().manual_seed(1)
    encoded = []
    for u in range(args.batch):
        hist = torch.randint(0, args.items, (20,), generator=rng).tolist()
        targets = torch.randint(0, args.items, (args.slots,), generator=rng).tolist()
        encoded.append(encode_prompt(tokenizer, user_item_prompt(u, hist, cfg, targets=targets), cfg))
    batch = collate_prompts(encoded, tokenizer.pad_token_id, args.slots)
    optim = torch.optim.Adam(params, lr=1e-3) if args.optim == "adam" else torch.optim.SGD(params, lr=1e-3)
    rss_before = rss_bytes()
    sampler = PeakSampler()
    sampler.start()
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        out = model(**batch)
        out.loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(out.loss.detach()))
        del out
    peak = sampler.stop()
    n_rows = int((batch["labels"] != -100).sum())
    return {
        "items": args.items,
        "head": args.head,
        "ce_chunk_size": args.chunk or None,
        "optimizer": args.optim,
        "trainable_params": n_trainable,
        "trainable": trainable,
        "head_trainable_params": sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and (n.startswith("head") or n == "item_bias")),
        "frozen_item_table_mb": round(model.item_embeddings.numel() * 4 / MB, 1),
        "plain_logits_mb": round(args.batch * args.slots * args.items * 4 / MB, 1),
        "labelled_slots": n_rows,
        "seq_len": int(batch["input_ids"].shape[1]),
        "rss_process_start_mb": round(rss_start / MB, 1),
        "rss_before_step_mb": round(rss_before / MB, 1),
        "peak_rss_during_steps_mb": round(peak / MB, 1),
        "step_extra_mb": round((peak - rss_before) / MB, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "step_times_s": [round(t, 3) for t in times],
        "losses": [round(v, 4) for v in losses],
    }


def mem_available_mb() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help="run one setting in this process, print JSON")
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--head", nargs="+", default=["linear", "factorized"])
    parser.add_argument("--chunk", type=int, nargs="+", default=[0, 8192], help="0 = plain CE")
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--optim", default="adam", choices=["adam", "sgd"])
    parser.add_argument("--min-free-mb", type=float, default=3000, help="skip a setting whose estimate leaves less")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()

    if args.worker:
        args.items, args.head, args.chunk = args.items[0], args.head[0], args.chunk[0]
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    from glta_hf.results import write_run_result

    t0 = time.time()
    rows = []
    for items in args.items:
        for head in args.head:
            for chunk in args.chunk:
                # rough estimate: linear head weights x 4 (weight, grad, 2 Adam moments) + 3 x plain logits
                est = (args.hidden * items * 4 * (4 if head == "linear" else 0)
                       + (3 * args.batch * args.slots * items * 4 if not chunk else 0)) / MB + 1500
                free = mem_available_mb()
                label = f"items={items} head={head} chunk={chunk or 'plain'}"
                if est > free - args.min_free_mb:
                    rows.append({"items": items, "head": head, "ce_chunk_size": chunk or None,
                                 "skipped": f"estimated {est:.0f} MB > available {free:.0f} MB - margin"})
                    print(label, "SKIPPED", rows[-1]["skipped"], flush=True)
                    continue
                cmd = [sys.executable, __file__, "--worker", "--items", str(items), "--head", head, "--chunk", str(chunk),
                       "--hidden", str(args.hidden), "--layers", str(args.layers), "--dim", str(args.dim),
                       "--slots", str(args.slots), "--batch", str(args.batch), "--steps", str(args.steps),
                       "--optim", args.optim]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode or not line:
                    rows.append({"items": items, "head": head, "ce_chunk_size": chunk or None,
                                 "error": f"rc={proc.returncode}: {proc.stderr[-500:]}"})
                    print(label, "FAILED", rows[-1]["error"], flush=True)
                    continue
                row = json.loads(line[0][len("RESULT "):])
                row["mem_available_before_mb"] = round(free, 0)
                rows.append(row)
                print(label, {k: row[k] for k in ("trainable_params", "rss_before_step_mb", "peak_rss_during_steps_mb",
                                                  "step_extra_mb", "ru_maxrss_mb", "step_times_s")}, flush=True)
    paper = {
        "llama2_7b_linear_head_params": 4096 * 1_000_000,
        "llama2_7b_linear_head_fp32_gb": round(4096 * 1_000_000 * 4 / 1e9, 1),
        "llama2_7b_linear_head_fp32_with_grad_and_adam_gb": round(4096 * 1_000_000 * 16 / 1e9, 1),
        "factorized_trainable_params_1m": 4096 * 64 + 64 + 1_000_000,
        "factorized_frozen_item_table_fp32_gb_1m_d64": round(64 * 1_000_000 * 4 / 1e9, 3),
    }
    write_run_result(
        args.out, "performance", "catalogue_scale", model="glta", split="synthetic",
        metrics={"settings": rows, "paper_scale_arithmetic": paper},
        command="python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        wall_time_s=time.time() - t0,
        config={k: getattr(args, k) for k in ("hidden", "layers", "dim", "slots", "batch", "steps", "optim")}
        | {"llm": "random LLaMA (glta_hf.testing.tiny_llama) with hidden 576, 2 layers",
           "load": os.getloadavg()},
    )


if __name__ == "__main__":
    main()
