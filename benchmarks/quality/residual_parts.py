"""What a trained graph-residual GLTA model's validation ranking is made of (issues 16, 23): the model as trained,
with its per-item bias zeroed, with its query zeroed (the bias alone on top of the graph), and with the graph term
off (the GLLM term alone). Each part is measured at several multiples of the learned gate in one LLM pass
(``glta_hf.metrics.evaluate_gate_scales``; gate scale 0 is LightGCN's own ranking), optionally with the graph refit
on every training edge (``--residual-graph``, as ``training/evaluate.py`` tests a held-out residual). Validation, all
users, ``first_k``, the project's evaluator; test is never touched.

    python benchmarks/quality/residual_parts.py runs/ml-latest-small/glta_residual_ho20_ep6 \\
        --residual-graph runs/graph/ml-latest-small/lightgcn --gate-scales 0,0.5,1,2 --threads 1

Why the parts: a residual that lowers its graph's ranking may do so through the head's per-item bias (a popularity
term learned on the training targets) rather than through what the LLM reads of the user; zeroing each says which.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from glta_hf.alignment_data import data_from_record, serving_histories, user_histories  # noqa: E402
from glta_hf.cli_args import gate_scale_list  # noqa: E402
from glta_hf.io_utils import read_json  # noqa: E402
from glta_hf.metrics import evaluate_gate_scales, sample_eval_users  # noqa: E402
from glta_hf.modeling_glta import GLTAForRecommendation  # noqa: E402

PARTS = ("as trained", "per-item bias zeroed", "query zeroed (bias only)", "graph term off (GLLM term only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a GLTA folder trained with graph_residual (align.py's <output_dir>/user/final)")
    parser.add_argument("--residual-graph", default=None,
                        help="score the graph term with these node tables (the graph refit on every training edge)")
    parser.add_argument("--gate-scales", type=gate_scale_list, default=(0.0, 1.0),
                        help="multiples of the learned gate measured for every part (default 0,1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = read_json(f"{args.model}/glta_run.json")
    data, _ = data_from_record(run, dataset=run["dataset"], record_folder=args.model)
    model = GLTAForRecommendation.from_pretrained(args.model)
    if model.graph_residual is None:
        raise SystemExit(f"{args.model}: not a graph-residual model (config.graph_residual is false)")
    if args.residual_graph:
        from glta_hf.graph import load_node_embeddings
        from glta_hf.pipeline import check_node_ids

        nodes = load_node_embeddings(args.residual_graph)
        check_node_ids(nodes, data, where=args.residual_graph)
        model.set_residual_tables(nodes.user, nodes.item)
    train, truth = data.matrix("train"), data.matrix("validation")
    histories, _ = user_histories(data, "train")
    history_seed = int((run.get("eval") or {}).get("history_seed") or 0)  # as training/evaluate.py ranks them
    model.attach_user_context(histories=serving_histories(histories, model.prompt_config.max_history,
                                                          run.get("eval_history_recent", True), history_seed))
    model.enable_prefix_cache()
    users = sample_eval_users(truth, None, seed=0)
    head, residual = model.head, model.graph_residual
    trained = {k: v.detach().clone() for k, v in head.state_dict().items()}
    trained_scale = residual.scale.detach().clone()
    print(json.dumps({"learned_gate": round(float(residual.gate), 5), "residual_scale": round(float(residual.scale), 5),
                      "residual_graph": args.residual_graph}), flush=True)

    def set_part(part: str) -> None:
        head.load_state_dict(trained)
        residual.scale.copy_(trained_scale)
        if part == "per-item bias zeroed":
            head.item_bias.zero_()
        elif part == "query zeroed (bias only)":
            for name, tensor in head.named_parameters():
                if name != "item_bias":
                    tensor.zero_()
        elif part == "graph term off (GLLM term only)":
            residual.scale.zero_()

    with torch.no_grad():
        for part in PARTS:
            if "bias" in part and getattr(head, "item_bias", None) is None:
                continue
            set_part(part)
            per_scale = evaluate_gate_scales(model, train=train, truth=truth, gate_scales=args.gate_scales,
                                             decoding="first_k", ks=(10,), users=users, batch_size=args.batch_size)
            for scale, metrics in per_scale.items():
                print(json.dumps({"part": part, "gate_scale": scale,
                                  **{k: round(metrics[k], 5) for k in ("ndcg@10", "precision@10")}}), flush=True)


if __name__ == "__main__":
    main()
