"""Append a finished GLTA run's per-epoch validation metrics to a tuning log (one JSON line per epoch).

The rows carry the run's own settings (from the saved ``config.json`` and ``glta_run.json``), so the tuning table in
the notebook (docs/experiments/notebook.md) is rebuilt from the log alone. Rows already in the log (same run name and epoch) are not written twice,
so rerunning after a resumed run is safe.

    python benchmarks/quality/collect_tuning.py runs/ml-latest-small/glta_paper_s0 --run glta_paper_s0 \
        --log benchmarks/results/ml-latest-small/tuning/glta.jsonl
    python benchmarks/quality/collect_tuning.py --table --log benchmarks/results/ml-latest-small/tuning/glta.jsonl
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import yaml

METRICS = ("precision@5", "recall@5", "ndcg@5", "hit_rate@5", "precision@10", "recall@10", "ndcg@10",
           "hit_rate@10", "num_users")


def epoch_rows(run_dir: Path, run: str) -> list[dict]:
    final = run_dir / "user" / "final"
    config = json.loads((final / "config.json").read_text(encoding="utf-8"))
    record = json.loads((final / "glta_run.json").read_text(encoding="utf-8"))
    stages = {stage["name"]: stage for stage in record["stages"]}
    user, item = stages["user"], stages.get("item")
    settings = user["settings"]
    base = {
        "dataset": record["dataset"],
        "split": f"{record['split_policy']}; validation {record['val_fraction']} of train per user, "
                 f"seed {record['val_seed']}",
        "graph": record["graph_dir"],
        "texts": None if settings.get("no_profile") and settings.get("no_prediction") else record["texts"],
        "run": run,
        "head": config["head"],
        "projector": config["projector"],
        "residual": config.get("graph_residual", False),
        "layout": config["prompt"]["layout"],
        "profile": config["prompt"]["include_profile"],
        "prediction": config["prompt"]["include_prediction"],
        "item_stage_epochs": item["settings"]["num_train_epochs"] if item else 0,
        "item_stage_lr": item["settings"]["learning_rate"] if item else None,
        "lr": settings["learning_rate"],
        "lr_schedule": settings.get("lr_scheduler_type", "constant"),
        "batch": settings["per_device_train_batch_size"],
        "H": settings["max_history"],
        "L": settings["num_slots"],
        "target_policy": settings["target_policy"],
        "samples_per_user": settings.get("samples_per_user", 1),
        "seed": settings["seed"],
        "user_stage_s": user["wall_time_s"],
        "command": record["command"],
    }
    rows, epochs = [], set()
    for entry in user["log_history"]:  # the best-model re-evaluation at the end repeats an epoch: kept once
        if "eval_ndcg@10" not in entry or entry["epoch"] in epochs:
            continue
        epochs.add(entry["epoch"])
        row = dict(base, epoch=entry["epoch"], eval=f"validation, {entry.get('eval_num_users', 'all')} users, first_k")
        row.update({name: round(entry[f"eval_{name}"], 5) if name != "num_users" else entry[f"eval_{name}"]
                    for name in METRICS if f"eval_{name}" in entry})
        rows.append(row)
    final = run_dir / "metrics_validation.json"  # glta_val_run.sh FINAL_VAL=1: the final model, by evaluate.py
    if not rows and final.exists():
        metrics = json.loads(final.read_text(encoding="utf-8"))["metrics"]
        row = dict(base, epoch=settings["num_train_epochs"],
                   eval=f"validation, {metrics.get('num_users', 'all')} users, first_k (evaluate.py)")
        row.update({name: round(metrics[name], 5) if name != "num_users" else metrics[name]
                    for name in METRICS if name in metrics})
        rows.append(row)
    return rows


ROOT = Path(__file__).resolve().parents[2]
#: row key -> the training/configs/<dataset>.yaml key glta_val_run.sh starts every run from
BASE_KEYS = {"H": "max_history", "L": "num_slots", "target_policy": "target_policy",
             "lr_schedule": "lr_scheduler_type"}
#: what rows logged before a key was recorded ran with
UNRECORDED = {"lr_schedule": "constant"}


@functools.lru_cache(maxsize=None)
def base_settings(dataset: str) -> dict:
    """The dataset config's H / L / target policy / lr schedule: a row names only the ones its run changed."""
    config = yaml.safe_load((ROOT / "training" / "configs" / f"{dataset}.yaml").read_text(encoding="utf-8"))
    return {key: config[name] for key, name in BASE_KEYS.items()}


def setting(row: dict) -> str:
    """The row's levers in words (what differs from the base settings of glta_val_run.sh)."""
    parts = [f"{row['head']} head", row["layout"]]
    if row.get("residual"):
        parts.append("+ graph residual")
    if not row.get("profile", True) and not row.get("prediction", True):
        parts.append("no texts")
    parts.append(f"lr {row['lr']:g}")
    if row.get("item_stage_epochs") not in (None, 0.1):
        parts.append(f"item stage {row['item_stage_epochs']:g} ep")
    if row.get("item_stage_lr") not in (None, row["lr"]):
        parts.append(f"item stage lr {row['item_stage_lr']:g}")
    for key, base in base_settings(row["dataset"]).items():
        value = row.get(key, UNRECORDED.get(key, base))
        if value != base:
            parts.append(f"{key} {value}")
    if row.get("samples_per_user", 1) != 1:
        parts.append(f"{row['samples_per_user']} samples per user and epoch")
    parts.append(f"seed {row.get('seed', 0)}")
    return ", ".join(parts)


def markdown_table(rows: list) -> str:
    """The tuning table of the notebook: one line per run and epoch, validation metrics, user-stage wall time."""
    lines = ["| run | setting | epoch | val N@10 | val P@10 | user stage (s, all epochs) |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['run']} | {setting(row)} | {row['epoch']:g} | {row['ndcg@10']:.4f} | "
                     f"{row['precision@10']:.4f} | {row.get('user_stage_s') or ''} |")
    return "\n".join(lines)


def read_log(path: Path) -> list:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--run", help="run name written into every row")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--table", action="store_true", help="print the log as the notebook's tuning table")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(read_log(args.log)))
        return
    if args.run_dir is None or not args.run:
        parser.error("run_dir and --run are required unless --table")
    seen = {(row["run"], row["epoch"]) for row in read_log(args.log)}
    new = [row for row in epoch_rows(args.run_dir, args.run) if (row["run"], row["epoch"]) not in seen]
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a", encoding="utf-8") as handle:
        for row in new:
            handle.write(json.dumps(row) + "\n")
    for row in new:
        print(f"{row['run']} epoch {row['epoch']:g}: val N@10 {row['ndcg@10']:.4f}  P@10 {row['precision@10']:.4f}")


if __name__ == "__main__":
    main()
