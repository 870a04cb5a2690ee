"""What a trained graph-residual GLTA model's validation ranking is made of (issue 16): the model as trained, with its
per-item bias zeroed, with only the graph term (GLLM query and bias zeroed: LightGCN's ranking), and with only the
GLLM term (scale 0). Validation, all users, ``first_k``, the project's evaluator; test is never touched.

    python benchmarks/quality/residual_parts.py runs/ml-latest-small/glta_res_fact_s0/user/final
"""
import argparse
import json

import torch

from glta_hf.alignment_data import data_from_record, serving_histories, user_histories
from glta_hf.io_utils import read_json
from glta_hf.metrics import evaluate_model, sample_eval_users
from glta_hf.modeling_glta import GLTAForRecommendation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a GLTA folder trained with graph_residual (align.py's <output_dir>/user/final)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = read_json(f"{args.model}/glta_run.json")
    data, _ = data_from_record(run, dataset=run["dataset"])
    model = GLTAForRecommendation.from_pretrained(args.model)
    if model.graph_residual is None:
        raise SystemExit(f"{args.model}: not a graph-residual model (config.graph_residual is false)")
    train, truth = data.matrix("train"), data.matrix("validation")
    histories, _ = user_histories(data, "train")
    model.attach_user_context(histories=serving_histories(histories, model.prompt_config.max_history,
                                                          run.get("eval_history_recent", True)))
    model.enable_prefix_cache()
    users = sample_eval_users(truth, None, seed=0)
    head, residual = model.head, model.graph_residual
    trained = {k: v.detach().clone() for k, v in head.state_dict().items()}
    print(json.dumps({"learned_scale": round(float(residual.scale), 4)}))

    def report(part: str) -> None:
        metrics = evaluate_model(model, train=train, truth=truth, decoding="first_k", ks=(10,), users=users,
                                 batch_size=32)
        print(json.dumps({"part": part, **{k: round(metrics[k], 5) for k in ("ndcg@10", "precision@10")}}), flush=True)

    with torch.no_grad():
        report("as trained")
        if getattr(head, "item_bias", None) is not None:
            head.item_bias.zero_()
            report("per-item bias zeroed")
        for tensor in head.parameters():
            tensor.zero_()
        report("graph term only")
        head.load_state_dict(trained)
        residual.scale.zero_()
        report("GLLM term only (scale 0)")


if __name__ == "__main__":
    main()
