"""Catalogue-scale inference: peak memory of one ``rank`` call, plain vs chunked (``rank_chunk_size``).

Plain decoding materializes the (B, L, |I|) slot logits and their log-softmax; with ``rank_chunk_size`` the head is
streamed over item chunks (running logsumexp + running top-k), so the ranking holds B x L x chunk logits.

Every setting runs in its own subprocess (fresh address space); the RSS sampler of ``catalogue_scale.py`` reads
/proc/self/statm every 2 ms during the ``rank`` call. Reported: RSS just before the call, peak during it, and their
difference ("rank extra"). The returned item rows are hashed so the parent can check chunked == plain.

Setup: a random LLaMA with SmolLM2's hidden size (576) and 2 decoder layers, random node embeddings (d=64, 1,000
users), factorized head, batch 32 user-item prompts (H=20 random history items, L=10 slots), k=10, history items
excluded (``seen``). Synthetic weights: it measures memory, not quality.

    python benchmarks/perf/recommend_memory.py                     # all settings, writes the JSON
    python benchmarks/perf/recommend_memory.py --worker '{"items": 100000, "chunk": 8192, "decoding": "first_k"}'
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalogue_scale import MB, ROOT, PeakSampler, mem_available_mb, rss_bytes  # noqa: E402

#: model / request sizes: LLM width and depth, node dim d, slots L, batch, k
SIZES = {"hidden": 576, "layers": 2, "dim": 64, "slots": 10, "batch": 32, "k": 10}


def worker(args) -> dict:
    import torch

    from glta_hf import GLTAForRecommendation
    from glta_hf.prompts import collate_prompts, encode_prompt, user_item_prompt
    from glta_hf.testing import tiny_llama

    torch.manual_seed(0)
    causal, tokenizer = tiny_llama(hidden_size=args.hidden, num_layers=args.layers)
    gen = torch.Generator().manual_seed(0)
    model = GLTAForRecommendation.from_components(
        causal.model, tokenizer, torch.randn(1000, args.dim, generator=gen), torch.randn(args.items, args.dim, generator=gen),
        llm_name_or_path="tiny-random-llama", prompt={"num_slots": args.slots, "max_history": 20, "max_length": 1024},
        head="factorized", rank_chunk_size=args.chunk or None,
    ).eval()
    with torch.no_grad():  # a trained-looking item bias, so scores are not tied
        model.item_bias.copy_(torch.randn(args.items, generator=gen))
    cfg = model.prompt_config
    rng = torch.Generator().manual_seed(1)
    encoded, seen = [], []
    for u in range(args.batch):
        hist = torch.randint(0, args.items, (20,), generator=rng).tolist()
        seen.append(hist)
        encoded.append(encode_prompt(tokenizer, user_item_prompt(u, hist, cfg), cfg))
    batch = collate_prompts(encoded, tokenizer.pad_token_id, args.slots)
    batch.pop("labels", None)
    rss_before = rss_bytes()
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    if args.decoding == "llm_only":  # the LLM forward alone (slot hidden states): the part that does not scale with |I|
        with torch.no_grad():
            model.slot_hidden_states(**batch)
        items = scores = torch.zeros(0)
    else:
        items, scores = model.rank(**batch, k=args.k, seen=seen, decoding=args.decoding)
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    if items.numel():
        first_two = {k: v for k, v in collate_prompts(encoded[:2], tokenizer.pad_token_id, args.slots).items() if k != "labels"}
        error = score_error_vs_float64(model, first_two, items[:2], scores[:2], args.decoding)
    else:
        error = None
    return {
        "items": args.items,
        "decoding": args.decoding,
        "rank_chunk_size": args.chunk or None,
        "plain_logits_mb": round(args.batch * args.slots * args.items * 4 / MB, 1),
        "chunk_logits_mb": round(args.batch * args.slots * args.chunk * 4 / MB, 1) if args.chunk else None,
        "seq_len": int(batch["input_ids"].shape[1]),
        "rss_before_rank_mb": round(rss_before / MB, 1),
        "peak_rss_during_rank_mb": round(peak / MB, 1),
        "rank_extra_mb": round((peak - rss_before) / MB, 1),
        "rank_time_s": round(seconds, 3),
        "items_sha1": hashlib.sha1(json.dumps(items.tolist()).encode()).hexdigest(),
        "scores": scores.tolist(),
        "max_abs_score_error_vs_float64_first_2_users": error,
    }


def score_error_vs_float64(model, batch, items, scores, decoding: str) -> float:
    """Largest |score - exact| for a batch's ranked ``items`` and their ``scores``, the exact log-probs from float64
    logits (run after the measurement)."""
    import torch

    with torch.no_grad():
        logprobs = torch.log_softmax(model.score_slots(model.slot_hidden_states(**batch)).double(), dim=-1)
    rows, scores = torch.arange(items.shape[0]).unsqueeze(1), scores.double()
    if decoding == "all_slots":
        exact = torch.logsumexp(logprobs.gather(2, items.unsqueeze(1).expand(-1, logprobs.shape[1], -1)), dim=1)
    else:  # first_k (slot t's log-prob of its item) / first_logit (slot 1's)
        slots = torch.arange(items.shape[1]) if decoding == "first_k" else torch.zeros(items.shape[1], dtype=torch.long)
        exact = logprobs[rows, slots.unsqueeze(0), items]
    return float((scores - exact).abs().max())


def run_setting(args, items: int, decoding: str, chunk: int) -> dict:
    """One worker subprocess; its result, or ``skipped`` (estimated too large) / ``error``."""
    # plain: logits + log-softmax (+ a masked copy of one slot) of B x L x |I| floats, + ~1 GB model and LLM
    est = (3 * args.batch * args.slots * items * 4 if not chunk and decoding != "llm_only" else 0) / MB + 1000
    free = mem_available_mb()
    if est > min(args.max_mb, free - 2000):
        return {"skipped": f"estimated {est:.0f} MB (limit {args.max_mb:.0f}, available {free:.0f})"}
    options = [f"--{name}={getattr(args, name)}" for name in SIZES]
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps({"items": items, "chunk": chunk, "decoding": decoding}), *options],
        capture_output=True, text=True,
    )
    found = [l[len("RESULT "):] for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not found:
        return {"error": f"rc={proc.returncode}: {proc.stderr[-500:]}"}
    return json.loads(found[0]) | {"mem_available_before_mb": round(free)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", metavar="JSON", help='run one setting here, e.g. \'{"items": 1000, "chunk": 0, '
                        '"decoding": "first_k"}\', and print its result as JSON')
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--chunk", type=int, nargs="+", default=[0, 8192], help="0 = plain (full logits)")
    parser.add_argument("--decoding", nargs="+", default=["llm_only", "first_k", "all_slots"],
                        help="llm_only = the LLM forward without the head (run once per |I|, not chunked)")
    for name, default in SIZES.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--max-mb", type=float, default=8000, help="skip a setting whose estimated peak exceeds this")
    args = parser.parse_args()
    if args.worker:  # one setting, in this (fresh) process
        result = worker(argparse.Namespace(**(vars(args) | json.loads(args.worker))))
        print("RESULT " + json.dumps(result), flush=True)
    else:
        run_all(args)


def run_all(args) -> None:
    from glta_hf.results import write_run_result

    rows, t0 = [], time.time()
    for items in args.items:
        for decoding in args.decoding:
            for chunk in args.chunk[:1] if decoding == "llm_only" else args.chunk:
                setting = {"items": items, "decoding": decoding, "rank_chunk_size": chunk or None}
                rows.append(setting | run_setting(args, items, decoding, chunk))
                print(setting, {k: rows[-1].get(k) for k in ("skipped", "error", "rss_before_rank_mb",
                                                             "peak_rss_during_rank_mb", "rank_extra_mb", "rank_time_s")},
                      flush=True)
    compared = {}
    for row in rows:
        plain = [r for r in rows if r.get("scores") and not r["rank_chunk_size"]
                 and (r["items"], r["decoding"]) == (row["items"], row["decoding"])]
        if row.get("rank_chunk_size") and row.get("scores") and plain:
            diff = max(abs(a - b) for x, y in zip(row["scores"], plain[0]["scores"]) for a, b in zip(x, y))
            compared[f"{row['items']}/{row['decoding']}/chunk {row['rank_chunk_size']}"] = {
                "items_equal": row["items_sha1"] == plain[0]["items_sha1"], "max_abs_score_diff": diff}
    for row in rows:
        row.pop("scores", None)
    write_run_result(
        args.out, "performance", "recommend_memory", model="glta", split="synthetic",
        metrics={"settings": rows, "chunked_vs_plain": compared},
        command="python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        wall_time_s=time.time() - t0,
        config={k: getattr(args, k) for k in SIZES}
        | {"llm": "random LLaMA (glta_hf.testing.tiny_llama) with hidden 576, 2 layers", "head": "factorized",
           "load": os.getloadavg()},
    )


if __name__ == "__main__":
    main()
