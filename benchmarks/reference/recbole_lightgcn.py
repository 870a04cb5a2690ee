#!/usr/bin/env python
"""Reference LightGCN: RecBole's implementation trained on our exact split, scored by RecBole and by our evaluator.

Why: the open issue asks that our LightGCN (``glta_hf.graph``) be within 5% of an independent implementation on the
same split. This script is that implementation's run: RecBole's ``LightGCN`` and ``Trainer``, fed the split our
graph rows use, so the only differences left are the two implementations.

* **Split.** :func:`glta_hf.alignment_data.prepare_data` (the loader's random 80/20 per user, seed 0; validation
  0.1 of train per user, seed 0), as ``benchmarks/tune_graph.py`` loads it. RecBole gets it as benchmark atomic
  files (``benchmark_filename``): ``.train.inter`` = train minus the validation carve (what our rows fit on),
  ``.valid.inter`` = the carve, ``.test.inter`` = test, plus ``.user`` / ``.item`` listing every user / item so
  RecBole's catalogue is ours. Tokens are our internal indices (``user_idx`` / ``item_idx``: the rows of our
  matrices and node tables), so mapping RecBole's ids back is exact and no external id (e.g. ``NA``, which pandas
  reads as NaN) can be mangled.
* **Recipe.** RecBole's LightGCN defaults except: ``n_layers`` 3 (ours; RecBole's file says 2), ``reg_weight``
  1e-4 (RecBole's file says 1e-5; 1e-4 is the LightGCN paper's value, the reg of our lr-1e-3 trials and inside
  RecBole's own LightGCN search range; RecBole's term is the un-squared norm of the batch's ego embeddings over the
  batch size, ``require_pow`` False, so the number is not the same strength as our squared one). Adam lr 1e-3,
  batch 2048, BPR with one uniform negative not in the user's train items, xavier-uniform init, embedding 64.
  Early stopping on validation NDCG@10 (RecBole's rule: stop after ``--stopping-step`` + 1 evaluations without a
  better-or-equal score); the best evaluation's weights are restored.
* **Metrics.** RecBole's own evaluator (full sort; validation masks train, test masks train + validation) and ours
  (:func:`glta_hf.metrics.evaluate`) on RecBole's final propagated tables (the mean of layers 0..L, what
  ``full_sort_predict`` scores with), masking what our graph rows mask: at validation the fit edges (train minus
  carve: ``BPRTrainer`` without ``known``, as tune_graph.py runs it), at test every training interaction
  (``full.matrix("train")`` = fit + validation, as ``Harness.test`` / pretrain_graph.py do), the model fit on
  train minus carve in both. Both protocols rank all items, score binary gains with IDCG over min(k, |test_u|)
  and average over users with a held-out item, so the two metric sets should agree up to rounding (RecBole rounds
  to ``metric_decimal_place``, set to 6 here) and score ties.

Compatibility with numpy 2 / scipy 1.17 / torch 2.6+ / pandas 3 (never by editing site-packages):
:func:`patch_for_recbole` restores the numpy aliases RecBole's ``Config`` re-creates and the scipy
``dok_matrix._update`` its LightGCN builds the adjacency with. The best weights are kept in memory by a ``fit``
callback (``saved=False``), so RecBole's ``torch.load`` of its checkpoint (which fails under torch's
``weights_only`` default) is never called. RecBole runs inside a scratch folder (it writes ``log_tensorboard/`` to
the current folder), under a dataset name of its own (RecBole merges its ``ml-100k.yaml`` for a dataset named
``ml-100k``) and without our command line (its ``Config`` reads ``--key=value`` from ``sys.argv``). Under pandas 3
RecBole's NaN fill is a no-op (a ``ChainedAssignmentError`` warning); our files have no missing value, and the
script checks that RecBole read exactly our users, items and split sizes.

Needs a separate environment (RecBole pins old packages; the project's venv must not get them)::

    python3 -m venv /work/recbole_venv
    /work/recbole_venv/bin/pip install torch==2.13.0 recbole datasets pyarrow safetensors

Usage (from the repository root; the glta_hf checkout is imported from here, not installed)::

    OMP_NUM_THREADS=1 nice -n 10 /work/recbole_venv/bin/python benchmarks/reference/recbole_lightgcn.py \\
        --dataset ml-100k --data-dir ../shared/data/ml-100k --epochs 400 --results-dir benchmarks/results
    OMP_NUM_THREADS=1 nice -n 10 /work/recbole_venv/bin/python benchmarks/reference/recbole_lightgcn.py \\
        --dataset ml-latest-small --epochs 400 --results-dir benchmarks/results

About 4.5 s per epoch on one core of the project's machine for either dataset (RecBole's Python-side negative
sampling dominates), so 400 epochs take about half an hour each. Validation every 2 epochs and patience 60
evaluations are tune_graph.py's long LightGCN trial's rule (``--eval-step``, ``--stopping-step``).

writes ``<results-dir>/<dataset>/reference/recbole_lightgcn.json`` (or ``--output``): the command, commit,
versions, load average, seconds, best epoch, the validation history and both metric sets.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

#: RecBole's name for the dataset: not one it ships a config for (it would merge e.g. its ml-100k.yaml)
RECBOLE_DATASET = "glta_split"
#: benchmark file suffix -> our split name
SPLITS = {"train": "train", "valid": "validation", "test": "test"}
KS = (5, 10, 20)
#: the metrics compared (ours' names; RecBole's are the same keys)
REPORTED = [f"{m}@{k}" for k in KS for m in ("precision", "recall", "ndcg")]
#: RecBole's LightGCN recipe, as run here (the module docstring says why each differs from RecBole's file)
RECIPE = dict(embedding_size=64, n_layers=3, reg_weight=1e-4, require_pow=False, learning_rate=1e-3,
              train_batch_size=2048, learner="adam", weight_decay=0.0,
              train_neg_sample_args={"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False,
                                     "candidate_num": 0})


# ----------------------------------------------------------------------------------------------- atomic files
def write_atomic_files(data, folder, name: str = RECBOLE_DATASET) -> Path:
    """RecBole benchmark atomic files of ``data`` (a ``RecData`` with a validation carve) in ``folder/name/``.

    ``name.train.inter`` / ``.valid.inter`` / ``.test.inter`` hold ``data``'s train (train minus the carve),
    validation and test pairs; ``name.user`` / ``name.item`` list every user / item, so RecBole's catalogue is ours
    even for an item no split holds. Tokens are our internal indices. Returns the dataset folder.
    """
    missing = [split for split in SPLITS.values() if split not in data.splits]
    if missing:
        raise ValueError(f"dataset {data.name!r} has no {missing} split (needs prepare_data's validation carve)")
    out = Path(folder) / name
    out.mkdir(parents=True, exist_ok=True)
    for suffix, split in SPLITS.items():
        users, items = data.matrix(split).to_pairs()
        lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, i in zip(users.tolist(), items.tolist())]
        (out / f"{name}.{suffix}.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / f"{name}.user").write_text("\n".join(["user_id:token"] + [str(u) for u in range(data.num_users)]) + "\n",
                                      encoding="utf-8")
    (out / f"{name}.item").write_text("\n".join(["item_id:token"] + [str(i) for i in range(data.num_items)]) + "\n",
                                      encoding="utf-8")
    return out


def our_order(token2id: Dict[str, int], count: int, kind: str) -> List[int]:
    """RecBole's internal id of each of our indices 0..count-1 (its tokens are our indices as strings)."""
    missing = [i for i in range(count) if str(i) not in token2id]
    if missing:
        raise ValueError(f"RecBole has no {kind} token for our {kind} indices {missing[:5]} ({len(missing)} missing)")
    return [token2id[str(i)] for i in range(count)]


def evaluate_ours(user_table, item_table, data, full) -> Dict[str, Dict[str, float]]:
    """Our evaluator on tables in our index order: validation masks the fit edges (train minus carve), test every
    training interaction (fit + validation), as the graph rows (tune_graph.py) do."""
    from glta_hf.metrics import evaluate

    def scorer(users):
        return user_table[users] @ item_table.T

    return {"valid": evaluate(train=data.matrix("train"), test=data.matrix("validation"), scorer=scorer, ks=KS),
            "test": evaluate(train=full.matrix("train"), test=full.matrix("test"), scorer=scorer, ks=KS)}


# ----------------------------------------------------------------------------------------------- RecBole
def patch_for_recbole() -> None:
    """What RecBole 1.2.1 needs from numpy 2 / scipy 1.17 (patched here, never in site-packages).

    * ``Config.compatibility_settings`` sets ``np.float = np.float_`` (and ``np.complex_``, ``np.unicode_``);
      numpy 2 removed those three, so they are defined as the types they were aliases of.
    * ``LightGCN.get_norm_adj_mat`` fills its adjacency with ``dok_matrix._update``, the unchecked ``dict.update``
      of the scipy versions where a dok matrix was a dict; scipy 1.17's dok keeps its entries in ``_dict`` and has
      no ``_update``, so it is defined as that same unchecked update.
    """
    import numpy as np
    import scipy.sparse as sp

    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if old not in np.__dict__:
            setattr(np, old, new)
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = lambda self, entries: self._dict.update(entries)


def recbole_config(args, data_path: Path, checkpoint_dir: Path) -> Dict[str, Any]:
    return dict(
        RECIPE,
        data_path=str(data_path), checkpoint_dir=str(checkpoint_dir), benchmark_filename=list(SPLITS),
        load_col={"inter": ["user_id", "item_id"], "user": ["user_id"], "item": ["item_id"]},
        # "split" is ignored with benchmark_filename (the three files are the split; RecBole neither shuffles nor
        # re-splits them); "full": rank every item
        eval_args={"group_by": "user", "order": "RO", "split": {"RS": [0.8, 0.1, 0.1]}, "mode": "full"},
        metrics=["Precision", "Recall", "NDCG"], topk=list(KS), valid_metric="NDCG@10", metric_decimal_place=6,
        epochs=args.epochs, eval_step=args.eval_step, stopping_step=args.stopping_step, seed=args.seed,
        reproducibility=True, use_gpu=False, gpu_id="", worker=0, show_progress=False, eval_batch_size=4096,
        # nothing from RecBole's defaults may filter the split: keep every user, item and interaction
        user_inter_num_interval="[0,inf)", item_inter_num_interval="[0,inf)", rm_dup_inter=None, val_interval=None,
        filter_inter_by_user_or_item=True, log_wandb=False, save_dataset=False, save_dataloaders=False)


def train_recbole(args, data, work: Path) -> Dict[str, Any]:
    """Train RecBole's LightGCN on ``data``'s atomic files under ``work``; return its best tables and metrics."""
    patch_for_recbole()
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import LightGCN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    write_atomic_files(data, work)
    argv, sys.argv[1:] = sys.argv[1:], []  # RecBole's Config also reads --key=value from the command line
    try:
        config = Config(model="LightGCN", dataset=RECBOLE_DATASET,
                        config_dict=recbole_config(args, work, work / "checkpoints"))
    finally:
        sys.argv[1:] = argv
    init_seed(config["seed"], config["reproducibility"])  # the order of recbole.quick_start.run_recbole
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    sizes = {"users": dataset.user_num - 1, "items": dataset.item_num - 1,  # id 0 is RecBole's padding
             **{suffix: len(loader._dataset.inter_feat) for suffix, loader in
                zip(SPLITS, (train_data, valid_data, test_data))}}
    expected = {"users": data.num_users, "items": data.num_items,
                **{suffix: data.matrix(split).nnz for suffix, split in SPLITS.items()}}
    if sizes != expected:
        raise RuntimeError(f"RecBole read {sizes}, expected {expected}: it filtered or re-split the atomic files")
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = LightGCN(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)

    best: Dict[str, Any] = {"epoch": 0, "state": None}
    history: List[Dict[str, Any]] = []
    start = time.perf_counter()

    def keep_best(epoch_idx: int, valid_score: float) -> None:
        """After each evaluation: RecBole has just updated its best score (cur_step 0 on a new best)."""
        history.append({"epoch": epoch_idx + 1, "val_ndcg@10": round(float(valid_score), 6),
                        "elapsed_s": round(time.perf_counter() - start, 1)})
        if trainer.cur_step == 0:
            best.update(epoch=epoch_idx + 1, state=copy.deepcopy(model.state_dict()))

    trainer.fit(train_data, valid_data, verbose=not args.quiet, saved=False, show_progress=False,
                callback_fn=keep_best)
    train_s = time.perf_counter() - start
    if best["state"] is None:
        raise RuntimeError("RecBole never evaluated on validation (is --eval-step above --epochs?)")
    model.load_state_dict(best["state"])
    model.restore_user_e = model.restore_item_e = None  # full_sort_predict's cache of the last epoch's tables
    recbole_metrics = {"valid": dict(trainer.evaluate(valid_data, load_best_model=False)),
                       "test": dict(trainer.evaluate(test_data, load_best_model=False))}
    model.eval()
    with torch.no_grad():
        user_all, item_all = model.forward()  # the propagated tables full_sort_predict scores with
    users = our_order(dataset.field2token_id["user_id"], data.num_users, "user")
    items = our_order(dataset.field2token_id["item_id"], data.num_items, "item")
    return {"user": user_all[users].detach().cpu(), "item": item_all[items].detach().cpu(),
            "recbole": recbole_metrics, "best_epoch": best["epoch"], "epochs_run": len(trainer.train_loss_dict),
            "history": history, "train_s": train_s, "sizes": sizes, "config": _config_record(config)}


def _config_record(config) -> Dict[str, Any]:
    keys = list(RECIPE) + ["epochs", "eval_step", "stopping_step", "seed", "valid_metric", "topk", "metrics",
                           "eval_args", "benchmark_filename", "shuffle", "reproducibility"]
    return {k: config[k] for k in keys}


# ----------------------------------------------------------------------------------------------- record
def versions() -> Dict[str, str]:
    import numpy
    import pandas
    import recbole
    import scipy
    import torch

    return {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pandas": pandas.__version__, "scipy": scipy.__version__, "python": platform.python_version()}


def compare(ours: Dict[str, float], theirs: Dict[str, float]) -> Dict[str, float]:
    """ours - RecBole's, per reported metric (what the masking / definitions leave)."""
    return {m: round(ours[m] - float(theirs[m]), 6) + 0.0 for m in REPORTED}  # + 0.0: no "-0.0"


def output_path(args, dataset_name: str) -> Path:
    """``--output``, else ``<results-dir>/<dataset name>/reference/``: the loaded dataset's name (``amazon-json``
    from ``amazon-scientific/`` is ``amazon-scientific``), the folder our rows of that dataset are in."""
    if args.output:
        return Path(args.output)
    return Path(args.results_dir) / dataset_name / "reference" / "recbole_lightgcn.json"


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="ml-latest-small (bundled) or ml-100k, ...")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the bundled copy)")
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--eval-step", type=int, default=2, help="validate every N epochs (tune_graph.py: 2)")
    p.add_argument("--stopping-step", type=int, default=60,
                   help="stop after this many + 1 evaluations without a better-or-equal validation NDCG@10 (RecBole's "
                        "default is 10; 60 is tune_graph.py's long LightGCN trial: at lr 1e-3 it still improves "
                        "slowly after hundreds of epochs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: one free core)")
    p.add_argument("--output", default=None, help="the JSON record (default <results-dir>/<dataset>/reference/...)")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--work-dir", default=None, help="keep RecBole's atomic files and logs here (default: a temp dir)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch RecBole log lines")
    args = p.parse_args(argv)
    for flag in ("epochs", "eval_step", "stopping_step", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"argument --{flag.replace('_', '-')}: must be >= 1, got {getattr(args, flag)}")
    if not (args.output or args.results_dir):
        p.error("give --output FILE or --results-dir DIR")

    import torch

    from glta_hf.alignment_data import prepare_data
    from glta_hf.io_utils import write_json
    from glta_hf.results import git_commit, load_average
    from glta_hf.run_record import sanitized_command

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from recbole.utils.logger import RemoveColorFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RemoveColorFilter())
    start, load_before = time.perf_counter(), load_average()
    data, full = prepare_data(args.dataset, args.data_dir, val_fraction=0.1, val_seed=0)
    out = output_path(args, full.name)
    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        stack.enter_context(contextlib.chdir(work))  # RecBole writes log_tensorboard/ into the current folder
        run = train_recbole(args, data, work.resolve())
    ours = evaluate_ours(run["user"], run["item"], data, full)
    record = {
        "model": "recbole_lightgcn", "dataset": full.name,
        "split": f"{data.split_policy} (prepare_data; RecBole fit on train minus validation, as our rows)",
        "command": "OMP_NUM_THREADS=1 python " + sanitized_command(
            [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)),
        "commit": git_commit(ROOT), "versions": versions(), "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before, "load_average_after": load_average(),
        "seconds": round(time.perf_counter() - start, 1), "train_seconds": round(run["train_s"], 1),
        "seconds_per_epoch": round(run["train_s"] / max(run["epochs_run"], 1), 3),
        "best_epoch": run["best_epoch"], "epochs_run": run["epochs_run"], "sizes": run["sizes"],
        "recbole_config": run["config"],
        "metrics": {"recbole": {split: {m: float(v[m]) for m in REPORTED} for split, v in run["recbole"].items()},
                    "ours": {split: {m: round(v[m], 6) for m in REPORTED} | {"num_users": v["num_users"]}
                             for split, v in ours.items()},
                    "ours_minus_recbole": {split: compare(ours[split], run["recbole"][split]) for split in ours}},
        "masking": {"valid": "train minus validation carve (both evaluators)",
                    "test": "train + validation, i.e. every training interaction (both evaluators)"},
        "history": run["history"],
    }
    write_json(out, record)
    for split in ("valid", "test"):
        theirs = record["metrics"]["recbole"][split]
        print(f"{split}: ours N@10 {ours[split]['ndcg@10']:.4f} P@10 {ours[split]['precision@10']:.4f} | "
              f"RecBole N@10 {theirs['ndcg@10']:.4f} P@10 {theirs['precision@10']:.4f}")
    print(f"best epoch {run['best_epoch']}/{run['epochs_run']}, {record['seconds_per_epoch']} s/epoch -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
