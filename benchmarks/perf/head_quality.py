"""Small, same-budget quality check of the GLLM head parameterization: linear (paper) vs factorized.

NOT the ml-1m check (that needs full GLTA training on ml-1m, out of the CPU budget). What it is: ml-latest-small
(seeded per-user 80/20 split, 10% of train carved as validation), LightGCN node embeddings (BPR, early stopping on
validation), SmolLM2-135M-Instruct truncated to its first ``--layers`` layers, projectors and slot vectors frozen at
their (identical, scale-matched) initialization; the slot hidden states of every user's prompt (user token + last 20
fit items + 10 slots, no texts) are computed once and cached, then only the HEAD is trained on them, with the same
optimizer, learning rate, epochs and target draws for both heads (targets: 10 fit items per user per epoch, the
paper-literal policy). Validation NDCG@10 / Recall@10 with the shared evaluator, ``all_slots`` scoring.
So it isolates the head parameterization on fixed features; it says nothing about end-to-end GLTA quality.

    python benchmarks/perf/head_quality.py --layers 4 --epochs 15
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _glta_bench_model import truncate_layers  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-users", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--graph-dir", default="/tmp/perf_head_quality_graph")
    parser.add_argument("--dataset", default="ml-latest-small", help="loader name (ml-1m uses its fixed split)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "ml-latest-small"))
    parser.add_argument("--node-embeddings", default=None,
                        help="a saved node-embedding folder fit on the same 90%% of train (skips graph training)")
    parser.add_argument("--run-name", default="head_quality", help="result file name under performance/")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from glta_hf import GLTAForRecommendation
    from glta_hf.alignment_data import user_histories
    from glta_hf.backbone import load_backbone, smollm2_gguf_path
    from glta_hf.data import load_dataset
    from glta_hf.graph import GraphTrainingArguments
    from glta_hf.metrics import evaluate
    from glta_hf.pipeline import train_graph
    from glta_hf.results import write_run_result

    t_start = time.time()
    data = load_dataset(args.dataset, args.data_dir).with_validation(fraction=0.1, seed=0)
    if args.node_embeddings:
        from glta_hf.graph import load_node_embeddings

        nodes = load_node_embeddings(args.node_embeddings)
        if list(nodes.item_ids) != list(map(str, data.item_ids)):
            raise SystemExit(f"{args.node_embeddings}: item ids do not match {args.dataset}")
    else:
        nodes, _ = train_graph(data, args.graph_dir,
                               GraphTrainingArguments(epochs=60, lr=1e-2, patience=5, progress=False))
    fit, val = data.matrix("train"), data.matrix("validation")
    lgcn = evaluate(train=fit, test=val, scorer=lambda u: nodes.user[u] @ nodes.item.t(), ks=(10,))
    print("lightgcn validation", lgcn, flush=True)

    llm, tok = load_backbone(smollm2_gguf_path())
    truncate_layers(llm, args.layers)
    histories, _ = user_histories(data, "train")
    models = {}
    for head in ("linear", "factorized"):
        torch.manual_seed(0)
        m = GLTAForRecommendation.from_components(llm, tok, nodes.user, nodes.item, item_ids=data.item_ids,
                                                  prompt={"num_slots": 10, "max_history": 20}, head=head,
                                                  llm_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
        m.attach_user_context(user_ids=data.user_ids, histories=[h.tolist() for h in histories])
        models[head] = m
    # identical frozen inputs side for both heads
    models["factorized"].user_projector.load_state_dict(models["linear"].user_projector.state_dict())
    models["factorized"].item_projector.load_state_dict(models["linear"].item_projector.state_dict())
    models["factorized"].slot_embeddings.data.copy_(models["linear"].slot_embeddings.data)

    t0 = time.time()
    feats = []
    with torch.no_grad():
        for s in range(0, data.num_users, 16):
            batch = models["linear"].encode_users(list(range(s, min(s + 16, data.num_users))))
            feats.append(models["linear"](**batch).slot_hidden_states.float())
    X = torch.cat(feats)  # (U, L, hidden)
    feature_s = time.time() - t0
    print(f"cached slot features {tuple(X.shape)} in {feature_s:.0f}s", flush=True)

    rng = np.random.default_rng(0)
    epoch_targets = []
    for _ in range(args.epochs):
        t = np.stack([rng.choice(fit.items_of(u), size=10, replace=len(fit.items_of(u)) < 10) for u in range(data.num_users)])
        epoch_targets.append(torch.from_numpy(t))

    results = {"lightgcn_validation": lgcn, "feature_cache_s": round(feature_s, 1)}
    for head, m in models.items():
        m.set_trainable("none")
        params = list(m.head.parameters())  # the factorized head owns its item bias
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=args.lr)
        curve, train_s = [], 0.0
        gen = torch.Generator().manual_seed(1)
        for epoch in range(args.epochs):
            t0 = time.time()
            perm = torch.randperm(data.num_users, generator=gen)
            losses = []
            for s in range(0, len(perm), args.batch_users):
                idx = perm[s: s + args.batch_users]
                logits = m.score_slots(X[idx])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), epoch_targets[epoch][idx].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss))
            train_s += time.time() - t0
            if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
                with torch.no_grad():
                    def scorer(u, m=m):
                        return torch.logsumexp(torch.log_softmax(m.score_slots(X[u]), dim=-1), dim=1)
                    r = evaluate(train=fit, test=val, scorer=scorer, ks=(10,))
                curve.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
                              "ndcg@10": round(r["ndcg@10"], 4), "recall@10": round(r["recall@10"], 4)})
                print(head, curve[-1], f"load={os.getloadavg()[0]:.1f}", flush=True)
        results[head] = {"curve": curve, "head_train_s": round(train_s, 1),
                         "trainable_params": sum(p.numel() for p in params)}
    results["factorized_over_linear_ndcg@10_final"] = round(results["factorized"]["curve"][-1]["ndcg@10"] / max(results["linear"]["curve"][-1]["ndcg@10"], 1e-9), 3)
    print(results, flush=True)
    write_run_result(
        args.out, "performance", args.run_name, model="glta-head-only",
        split=f"{args.dataset} ({data.split_policy}), validation 10% of train seed 0",
        metrics=results, command="python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        wall_time_s=time.time() - t_start,
        config=vars(args) | {"note": "head-only on cached slot features of a truncated frozen SmolLM2; NOT an end-to-end GLTA check",
                             "load_avg_end": os.getloadavg()},
    )


if __name__ == "__main__":
    main()
