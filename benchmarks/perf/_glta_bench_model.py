"""Shared by the GLTA inference benchmarks: a SmolLM2 GLTA model over a real dataset's catalogue and user table.

The node embeddings are RANDOM (d=64) and nothing is trained: these benchmarks time the computation, whose cost does
not depend on the weights' values. Histories are each user's training items (time order when the split has
timestamps); no profile / prediction texts are attached (prompts are the user token + last H=20 items + 10 slots).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


SMOLLM2 = "SmolLM2-135M-Instruct Q4_1 GGUF dequantized to fp32"


def truncate_layers(llm, layers: int) -> int:
    """Keep the decoder's first ``layers`` layers (per-layer cost is uniform, so timings scale); returns how many
    it had."""
    total = len(llm.layers)
    if layers < total:
        llm.layers = llm.layers[:layers]
        llm.config.num_hidden_layers = layers
        if getattr(llm.config, "layer_types", None):
            llm.config.layer_types = llm.config.layer_types[:layers]
    return total


def build(dataset: str, data_dir: str, layers: int = 30, head: str = "linear", dtype=None):
    import torch

    from glta_hf import GLTAForRecommendation
    from glta_hf.alignment_data import user_histories
    from glta_hf.backbone import load_backbone, smollm2_gguf_path
    from glta_hf.data import load_dataset

    data = load_dataset(dataset, data_dir)
    llm, tokenizer = load_backbone(smollm2_gguf_path(), dtype=dtype)
    truncate_layers(llm, layers)
    gen = torch.Generator().manual_seed(0)
    model = GLTAForRecommendation.from_components(
        llm, tokenizer, torch.randn(data.num_users, 64, generator=gen), torch.randn(data.num_items, 64, generator=gen),
        item_ids=data.item_ids, llm_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        prompt={"num_slots": 10, "max_history": 20}, head=head,
    )
    histories, _ = user_histories(data, "train")
    model.attach_user_context(user_ids=data.user_ids, histories=[h.tolist() for h in histories])
    model.set_trainable("none")
    return model.eval(), data


def add_run_args(parser, seed: int = 0) -> None:
    """``--threads``, ``--seed`` and ``--out``: what every timing script here takes."""
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))


def start_run(args) -> float:
    """Apply ``--threads`` and return the start time (``write_perf_result``'s ``t_start``)."""
    import time

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return time.time()


def write_perf_result(script: str, args, name: str, *, split: str, metrics: dict, t_start: float, **config) -> None:
    """Print ``metrics`` and write ``benchmarks/results/performance/<name>.json`` with the command, commit, machine,
    wall time and the run's arguments (+ ``config``, + torch's thread count and the load average at the end: these
    machines are shared)."""
    import os
    import time

    import torch

    from glta_hf.results import write_run_result
    from glta_hf.run_record import portable_path, sanitized_command

    for k, v in metrics.items():
        print(k, v)
    settings = {k: portable_path(v, ROOT) if isinstance(v, str) else v for k, v in (vars(args) | config).items()}
    write_run_result(  # paths relative to the repository: no local folder is published
        args.out, "performance", name, model="glta", split=split, metrics=metrics,
        command="python " + sanitized_command([os.path.relpath(script, ROOT)] + sys.argv[1:], ROOT),
        wall_time_s=time.time() - t_start,
        config=settings | {"torch_threads": torch.get_num_threads(), "load_avg_end": os.getloadavg()},
    )
