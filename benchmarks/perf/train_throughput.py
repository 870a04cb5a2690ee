"""User-item stage training throughput with SmolLM2 on CPU: forward + backward through the frozen LLM.

Variants, all measured in one process, interleaved (the order rotates every repeat), median over repeats:

* ``base``       SDPA attention, float32 LLM, length-grouped batches (samples sorted by length, cut into batches,
                 batch order shuffled) -- the least padding.
* ``random``     same as base but random batches (padded to each batch's longest prompt)      -> (a) padding waste
* ``eager``      base with eager attention                                                     -> (b) SDPA vs eager
* ``bf16``       base with the LLM in bfloat16 (GLTA's own modules stay float32)               -> (c) bf16 vs fp32

(d) slot-only logits vs a naive head over every position: on the hidden states of one real batch, the GLLM head +
CE + backward at the B x L slot rows vs at all B x T rows, and an LM-head-like vocab projection at all positions.

Prompts: ml-latest-small users (real histories, last H<=20 items as <item> tokens) with synthetic profile /
prediction texts of random length built from movie titles, so prompts vary between ~100 and ~300 tokens; targets
are 10 random items of the user's history. The LLM is SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32),
truncated to its first ``--layers`` decoder layers to fit the CPU budget (per-layer cost is uniform, so
per-layer ratios carry over; FLOPs are counted for the layers actually run).

FLOPs model: a frozen LLM's forward is ~2*N*tokens and its backward for input gradients only (no weight grads)
is another ~2*N*tokens, so ~4*N*tokens (N = non-embedding parameters of the layers run), plus attention
scores/values ~ 3 * 4 * T^2 * hidden per sequence per layer (forward + 2x backward). Pad tokens count as computed
FLOPs but not as useful tokens.

    python benchmarks/perf/train_throughput.py --layers 8 --samples 32 --batch 8 --repeats 3
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _glta_bench_model import truncate_layers, write_perf_result  # noqa: E402
DATA = ROOT.parent / "shared" / "data" / "ml-latest-small"


def load_users(limit_users: int, seed: int):
    titles, index = [], {}
    with open(DATA / "movies.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            index[row["movieId"]] = len(titles)
            titles.append(row["title"])
    hist = {}
    with open(DATA / "ratings.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            hist.setdefault(int(row["userId"]), []).append((int(row["timestamp"]), index[row["movieId"]]))
    users = sorted(hist)
    rng = random.Random(seed)
    rng.shuffle(users)
    users = users[:limit_users]
    return titles, [[i for _, i in sorted(hist[u])] for u in users]


def build_prompts(tokenizer, cfg, titles, histories, seed):
    from glta_hf.prompts import encode_prompt, user_item_prompt

    rng = random.Random(seed)
    encoded = []
    for u, items in enumerate(histories):
        profile = "Likes " + ", ".join(rng.sample(titles, rng.randint(0, 9))) + "."
        prediction = "Will want " + ", ".join(rng.sample(titles, rng.randint(0, 6))) + "."
        h = rng.randint(3, cfg.max_history)
        targets = rng.sample(items, min(cfg.num_slots, len(items)))
        prompt = user_item_prompt(u, items[-h:], cfg, profile=profile, prediction=prediction, targets=targets)
        encoded.append(encode_prompt(tokenizer, prompt, cfg))
    return encoded


def make_batches(encoded, batch, grouped, seed):
    idx = list(range(len(encoded)))
    rng = random.Random(seed)
    if grouped:  # length-grouped: sort by length, cut, shuffle batch order
        idx.sort(key=lambda i: len(encoded[i].input_ids))
        batches = [idx[s:s + batch] for s in range(0, len(idx), batch)]
        rng.shuffle(batches)
    else:
        rng.shuffle(idx)
        batches = [idx[s:s + batch] for s in range(0, len(idx), batch)]
    return batches


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of SmolLM2 kept (30 = full model)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["base", "random", "eager", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()

    import torch

    from glta_hf import GLTAForRecommendation
    from glta_hf.backbone import load_backbone, smollm2_gguf_path
    from glta_hf.prompts import collate_prompts

    t_start = time.time()
    llm, tokenizer = load_backbone(smollm2_gguf_path())
    total_layers = truncate_layers(llm, args.layers)
    default_attn = llm.config._attn_implementation
    titles, histories = load_users(args.samples, args.seed)
    gen = torch.Generator().manual_seed(0)
    model = GLTAForRecommendation.from_components(
        llm, tokenizer, torch.randn(len(histories), 64, generator=gen), torch.randn(len(titles), 64, generator=gen),
        prompt={"num_slots": 10, "max_history": 20}, head="linear",
    )
    model.set_trainable("user")
    cfg = model.prompt_config
    encoded = build_prompts(tokenizer, cfg, titles, histories, args.seed)
    lengths = [len(e.input_ids) for e in encoded]
    n_nonembed = sum(p.numel() for n, p in model.llm.named_parameters() if "embed_tokens" not in n)
    hidden = model.config.llm_hidden_size

    model_bf16 = None
    if "bf16" in args.variants:
        model_bf16 = copy.deepcopy(model)
        model_bf16.llm.to(torch.bfloat16)

    def run_variant(name, rep):
        m = model_bf16 if name == "bf16" else model
        m.llm.set_attn_implementation("eager" if name == "eager" else "sdpa")
        batches = make_batches(encoded, args.batch, grouped=(name != "random"), seed=args.seed + rep)
        real = computed = attn_flops = 0
        t0 = time.perf_counter()
        for b in batches:
            batch = collate_prompts([encoded[i] for i in b], tokenizer.pad_token_id, cfg.num_slots)
            out = m(**batch)
            out.loss.backward()
            m.zero_grad(set_to_none=True)
            B, T = batch["input_ids"].shape
            real += int(batch["attention_mask"].sum())
            computed += B * T
            attn_flops += 3 * 4 * B * T * T * hidden * args.layers
        elapsed = time.perf_counter() - t0
        return {"time_s": elapsed, "real_tokens": real, "computed_tokens": computed, "attn_flops": attn_flops}

    runs = {v: [] for v in args.variants}
    run_variant("base", -1)  # warm-up (allocator, kernels)
    for rep in range(args.repeats):
        order = args.variants[rep % len(args.variants):] + args.variants[: rep % len(args.variants)]
        for name in order:
            r = run_variant(name, rep)
            runs[name].append(r)
            print(f"rep {rep} {name:7s} {r['time_s']:.2f}s real={r['real_tokens']} computed={r['computed_tokens']} "
                  f"load={os.getloadavg()[0]:.1f}", flush=True)

    results = {}
    for name, rs in runs.items():
        t = statistics.median(r["time_s"] for r in rs)
        r0 = rs[0]
        mm_flops = 4 * n_nonembed * statistics.median(r["computed_tokens"] for r in rs)
        attn = statistics.median(r["attn_flops"] for r in rs)
        results[name] = {
            "median_time_s": round(t, 3),
            "times_s": [round(r["time_s"], 3) for r in rs],
            "samples_per_s": round(args.samples / t, 3),
            "real_tokens_per_s": round(statistics.median(r["real_tokens"] for r in rs) / t, 1),
            "computed_tokens": [r["computed_tokens"] for r in rs],
            "padding_fraction": round(1 - r0["real_tokens"] / r0["computed_tokens"], 4),
            "model_flops_4N": float(mm_flops),
            "attention_flops": float(attn),
            "achieved_gflops_per_s": round((mm_flops + attn) / t / 1e9, 2),
        }
    base_times = [r["time_s"] for r in runs["base"]]
    ratios = {}
    for name in args.variants:
        if name == "base":
            continue
        per_rep = [r["time_s"] / b for r, b in zip(runs[name], base_times)]
        ratios[f"{name}_time_over_base"] = {"median": round(statistics.median(per_rep), 3), "per_repeat": [round(x, 3) for x in per_rep]}

    # (d) slot-only vs all-position head, on one real batch's hidden states (float32, linear GLLM head)
    batch = collate_prompts(encoded[: args.batch], tokenizer.pad_token_id, cfg.num_slots)
    model.llm.set_attn_implementation("sdpa")
    with torch.no_grad():
        h_all = model.run_llm(model.get_inputs_embeds(batch["input_ids"], batch["user_ids"], batch["item_ids"]),
                              batch["attention_mask"]).last_hidden_state
    B, T, _ = h_all.shape
    slot_mask = batch["input_ids"] == model.config.slot_token_id
    vocab = model.llm.get_input_embeddings().weight  # tied LM head of SmolLM2 (49152 x 576)

    def head_cost(rows, head_w, head_b, reps=3):
        ts = []
        for _ in range(reps):
            x = rows.detach().clone().requires_grad_(True)
            w = head_w.detach().clone().requires_grad_(True)
            t0 = time.perf_counter()
            logits = x @ w.t() + (head_b if head_b is not None else 0)
            labels = torch.randint(0, w.shape[0], (x.shape[0],))
            torch.nn.functional.cross_entropy(logits, labels).backward()
            ts.append(time.perf_counter() - t0)
            del logits
        return statistics.median(ts), rows.shape[0] * head_w.shape[0] * 4 / 2**20

    slot_rows = h_all[slot_mask]
    all_rows = h_all[batch["attention_mask"].bool()]
    cost = {}
    for label, rows, w, b in (
        ("gllm_slots_only", slot_rows, model.head.weight, model.head.bias.detach()),
        ("gllm_all_positions", all_rows, model.head.weight, model.head.bias.detach()),
        ("lm_head_vocab_all_positions", all_rows, vocab, None),
    ):
        t, mb = head_cost(rows, w, b)
        cost[label] = {"rows": int(rows.shape[0]), "columns": int(w.shape[0]), "fwd_bwd_s": round(t, 4), "logits_mb": round(mb, 1)}
    llm_step = results["base"]["median_time_s"] / len(make_batches(encoded, args.batch, True, 0))
    cost["llm_step_s_for_reference"] = round(llm_step, 3)
    cost["all_positions_over_slots_time"] = round(cost["gllm_all_positions"]["fwd_bwd_s"] / cost["gllm_slots_only"]["fwd_bwd_s"], 2)

    metrics = {
        "variants": results,
        "ratios": ratios,
        "slot_only_vs_naive": cost,
        "prompt_lengths": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths), "mean": round(sum(lengths) / len(lengths), 1)},
        "n_nonembedding_params_run": n_nonembed,
        "layers_run": args.layers,
        "layers_total": total_layers,
        "default_attn_implementation": default_attn,
    }
    write_perf_result(__file__, args, "train_throughput", split="ml-latest-small (synthetic texts)",
                      metrics=metrics, t_start=t_start, llm="SmolLM2-135M-Instruct Q4_1 GGUF dequantized",
                      flops_assumption="4*N*computed_tokens (frozen fwd + input-grad bwd) + 12*T^2*hidden per seq per layer")


if __name__ == "__main__":
    main()
