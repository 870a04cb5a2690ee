#!/usr/bin/env python
"""Tune the graph baselines (Pop, MF, LightGCN, LightGCN+, LightGCN-CE) on validation; test each chosen config once.

One seeded per-user 80/20 split per dataset (the loader's default, seed 0) with validation carved from train
(``val_fraction`` 0.1, seed 0) -- :func:`glta_hf.alignment_data.prepare_data`, the split align.py and
generate_texts.py use, so GLTA rows share it. Every model is scored by :func:`glta_hf.metrics.evaluate`.

``--phase tune`` runs the grid below; each finished trial is appended to the JSON-lines tuning log (setting,
epochs run, best epoch, validation metrics, wall time, load average) and its best-epoch node tables are saved
under ``runs/tuning/<dataset>/<model>/<trial>/`` (ignored). Trials already in the log are skipped, so the job
resumes where it stopped; jobs on disjoint ``--models`` may share one log. LightGCN+ is tuned around the chosen
LightGCN (its lr / reg), so it runs after it.

``--phase test`` picks, per model, the trial with the best validation NDCG@10, evaluates it ONCE on test (every
training interaction, fit + validation, masked) and writes ``<results-dir>/<dataset>/<model>.json``; a result that
already records the same trial is not re-evaluated. The chosen LightGCN's tables are also exported to
``runs/graph/<dataset>/lightgcn`` (what GLTA aligns). Example::

    OMP_NUM_THREADS=1 python benchmarks/tune_graph.py --dataset ml-latest-small --phase all
    OMP_NUM_THREADS=1 python benchmarks/tune_graph.py --dataset ml-100k --data-dir ../shared/data/ml-100k --phase all
    OMP_NUM_THREADS=1 python benchmarks/tune_graph.py --dataset amazon-json --data-dir ../shared/data/amazon-scientific

``<dataset>`` in these paths is the loaded dataset's name (the last example's is ``amazon-scientific``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

ROOT = Path(__file__).resolve().parents[1]
# What every trial shares (dim 64, 3 layers: the project's graph). Patience counts evaluations (every 2 epochs).
BASE = dict(dim=64, layers=3, batch_size=2048, eval_every=2, patience=20, seed=0)
# lr x reg for the BPR models; kept small because the 2 shared CPU cores are the budget (~1-3 s per epoch)
BPR_GRID = ((1e-3, 1e-4, 300), (5e-3, 1e-4, 200), (5e-3, 1e-3, 200))  # (lr, reg, max epochs)
# The long trial (issue 23): an independent LightGCN on ml-latest-small's split, at lr 1e-3 and batch 2048, kept
# improving to epoch ~380 of 400, so the 300-epoch / patience-20 trial above stopped early. On amazon-scientific the
# best short trial (lr 5e-3, reg 1e-3) was still improving at its 200-epoch cap (issue 24): its long twin.
# (lr, reg, epochs, patience)
LONG_BPR_GRID = ((1e-3, 1e-4, 800, 60), (5e-3, 1e-3, 800, 60))


PLUS_TEXT_WEIGHTS = (0.1, 0.5)


def models() -> tuple:
    """The run names of the registered graph models (``glta_hf.graph``), in registration order: LightGCN before the
    text-aware model that reuses its chosen setting."""
    from glta_hf.graph import graph_rows

    return tuple(graph_rows())


def grid(model: str, chosen_lightgcn: Dict[str, Any], text_weights=PLUS_TEXT_WEIGHTS) -> List[Dict[str, Any]]:
    """The settings tried per model (epochs by early stopping on validation NDCG@10); a registered model without
    its own grid here gets the BPR grid."""
    from glta_hf.graph import graph_rows

    cls = graph_rows().get(model)
    if cls is None:
        raise ValueError(f"unknown model {model!r}; expected one of {models()}")
    if not cls.trainable:
        return [{}]
    if model == "lightgcn_ce":  # full softmax: cost ~ distinct users per batch x items, so larger batches
        return [dict(BASE, batch_size=8192, lr=5e-3, reg=1e-4, temperature=t, epochs=150) for t in (1.0, 0.2)]
    if cls.needs_text_embeddings:  # LightGCN's chosen lr / reg / epochs; the text term's weight tuned
        base = {k: chosen_lightgcn[k] for k in ("lr", "reg", "epochs")}
        return [dict(BASE, **base, text_weight=w, temperature=0.2) for w in text_weights]
    return ([dict(BASE, lr=lr, reg=reg, epochs=epochs) for lr, reg, epochs in BPR_GRID]
            + [dict(BASE, lr=lr, reg=reg, epochs=epochs, patience=patience)
               for lr, reg, epochs, patience in LONG_BPR_GRID])


def _uses_lightgcn_setting(model: str) -> bool:
    """The text-aware model (LightGCN+) is tuned on top of LightGCN's chosen lr / reg / epochs."""
    from glta_hf.graph import graph_rows

    return graph_rows()[model].needs_text_embeddings


def trial_key(dataset: str, model: str, setting: Dict[str, Any]) -> str:
    blob = json.dumps({"dataset": dataset, "model": model, "setting": setting}, sort_keys=True)
    return f"{model}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def read_log(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SystemExit(f"{path}:{number}: not a JSON line ({err}); remove or repair that line") from None
    return rows


def best_trial(rows: List[Dict[str, Any]], model: str) -> Dict[str, Any]:
    mine = [r for r in rows if r["model"] == model]
    if not mine:
        raise SystemExit(f"no tuning trial for {model!r} in the log yet; run --phase tune first")
    return max(mine, key=lambda r: r["val_ndcg@10"])


class Harness:
    def __init__(self, args):
        from glta_hf.alignment_data import prepare_data

        self.args = args
        self.data, self.full = prepare_data(args.dataset, args.data_dir, val_fraction=0.1, val_seed=0)
        # folders and trial keys by the dataset's name, not the loader's (amazon-json reads amazon-scientific/)
        self.name = self.full.name
        self.fit, self.validation = self.data.matrix("train"), self.data.matrix("validation")
        self.log = Path(args.log or ROOT / "benchmarks/results" / self.name / "tuning/graph.jsonl")
        self.trials_dir = ROOT / "runs/tuning" / self.name
        self._text_embeddings = None

    def text_embeddings(self):
        if self._text_embeddings is None:
            from glta_hf.graph import encode_item_texts

            self._text_embeddings = encode_item_texts(self.data.item_texts)
        return self._text_embeddings

    def build(self, model: str, setting: Dict[str, Any]):
        import dataclasses

        from glta_hf.graph import GraphTrainingArguments, build_model, graph_rows

        shared = {f.name for f in dataclasses.fields(GraphTrainingArguments)}
        targs = GraphTrainingArguments(**{k: v for k, v in setting.items() if k in shared}, progress=False)
        extra: Dict[str, Any] = {k: v for k, v in setting.items() if k not in shared}  # the model's own options
        cls = graph_rows()[model]
        if cls.needs_text_embeddings:
            extra["text_embeddings"] = self.text_embeddings()
        return build_model(cls.name, self.fit, targs, **extra), targs

    def run_trial(self, model: str, setting: Dict[str, Any]) -> Dict[str, Any]:
        from glta_hf.graph import BPRTrainer, export_node_embeddings
        from glta_hf.results import load_average

        key = trial_key(self.name, model, setting)
        load_before = load_average()
        net, targs = self.build(model, setting)
        result = BPRTrainer(net, targs, self.fit, self.validation).train()
        row = {"key": key, "dataset": self.name, "model": model, "setting": setting,
               "epochs_run": len(result.history), "best_epoch": result.best_epoch,
               "val_ndcg@10": round(result.best_metric, 5),
               "validation": {k: round(v, 5) for k, v in result.best_validation.items()},
               "wall_time_s": round(result.wall_time_s, 1), "load_average_before": load_before,
               "load_average_after": load_average(), "torch_threads": _threads()}
        if net.trainable:  # Pop has no node tables
            export_node_embeddings(net, self.trials_dir / model / key, self.data.user_ids, self.data.item_ids,
                                   {"trial": key, "setting": setting})
        return row

    def tune(self) -> None:
        for model in self.args.models:
            rows = read_log(self.log)
            chosen = best_trial(rows, "lightgcn")["setting"] if _uses_lightgcn_setting(model) else {}
            for setting in grid(model, chosen, self.args.plus_text_weights):
                key = trial_key(self.name, model, setting)
                if key in {r["key"] for r in read_log(self.log)}:  # re-read: another job may share the log
                    continue
                row = self.run_trial(model, setting)
                self.log.parent.mkdir(parents=True, exist_ok=True)
                with open(self.log, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(f"{model} {setting} -> val ndcg@10 {row['val_ndcg@10']} (best epoch {row['best_epoch']}/"
                      f"{row['epochs_run']}, {row['wall_time_s']} s, load {row['load_average_after']})", flush=True)

    def scorer(self, model: str, trial: Dict[str, Any]):
        """The chosen trial's scores: its saved tables (re-trained, deterministically, if they are missing)."""
        from glta_hf.graph import GraphTrainingArguments, build_model, graph_rows, load_node_embeddings

        if not graph_rows()[model].trainable:  # nothing was trained: the model itself scores (Pop)
            return build_model(model, self.fit, GraphTrainingArguments(progress=False)).full_sort_predict, None
        folder = self.trials_dir / model / trial["key"]
        if not (folder / "node_embeddings.safetensors").is_file():
            print(f"{folder} missing: re-training trial {trial['key']}", flush=True)
            self.run_trial(model, trial["setting"])
        saved = load_node_embeddings(folder)
        if saved.user_ids != self.data.user_ids or saved.item_ids != self.data.item_ids:
            raise SystemExit(f"{folder}: id maps do not match dataset {self.name!r}")
        return (lambda users: saved.user[users] @ saved.item.T), folder

    def test(self) -> None:
        from glta_hf.metrics import evaluate
        from glta_hf.results import write_run_result

        rows = read_log(self.log)
        results_dir = Path(self.args.results_dir)
        for model in self.args.models:
            trial = best_trial(rows, model)
            out = results_dir / self.name / f"{model}.json"
            export = ROOT / "runs/graph" / self.name / "lightgcn" if model == "lightgcn" else None
            if out.is_file() and json.loads(out.read_text()).get("config", {}).get("trial") == trial["key"]:
                print(f"{out}: already holds the test of trial {trial['key']}; not re-evaluated")
                if export is not None and not export.is_dir():  # a fresh checkout: rebuild the GLTA input
                    self.export_lightgcn(self.scorer(model, trial)[1], export)
                continue
            score, folder = self.scorer(model, trial)
            start = time.perf_counter()
            metrics = evaluate(train=self.full.matrix("train"), test=self.full.matrix("test"), scorer=score)
            config = {"trial": trial["key"], "setting": trial["setting"], "best_epoch": trial["best_epoch"],
                      "epochs_run": trial["epochs_run"], "val_ndcg@10": trial["val_ndcg@10"],
                      "validation": trial["validation"], "train_wall_time_s": trial["wall_time_s"],
                      "load_average_during_tuning": trial["load_average_after"],
                      "tuning_log": str(self.log.relative_to(ROOT)) if self.log.is_relative_to(ROOT) else str(self.log),
                      "selection": "best validation ndcg@10 over the tuning log's trials of this model",
                      "validation_split": "10% of each user's train interactions, seed 0 (prepare_data)"}
            command = ("OMP_NUM_THREADS=1 python benchmarks/tune_graph.py " + " ".join(
                shlex.quote(a) for a in sys.argv[1:]))
            path = write_run_result(results_dir, self.name, model, model=model,
                                    split=f"{self.full.split_policy} (validation 10% of train, seed 0)",
                                    metrics=metrics, command=command,
                                    wall_time_s=trial["wall_time_s"] + time.perf_counter() - start, config=config)
            print(f"{model}: test ndcg@10 {metrics['ndcg@10']:.4f} p@10 {metrics['precision@10']:.4f} -> {path}")
            if export is not None:
                self.export_lightgcn(folder, export)

    @staticmethod
    def export_lightgcn(folder: Path, target: Path) -> None:
        """The chosen LightGCN's node tables where the GLTA runs read them (``runs/graph/<dataset>/lightgcn``)."""
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target)
        print(f"chosen LightGCN node embeddings exported to {target}")


def setting_label(model: str, setting: Dict[str, Any]) -> str:
    if not setting:
        return "–"
    parts = [f"lr {setting['lr']:g}", f"reg {setting['reg']:g}", f"batch {setting['batch_size']}"]
    if "temperature" in setting:
        parts.append(f"τ {setting['temperature']:g}")
    if "text_weight" in setting:
        parts.append(f"text weight {setting['text_weight']:g}")
    return ", ".join(parts) + f", max {setting['epochs']} epochs"


def report(dataset: str, log: Path, results_dir: Path) -> str:
    """Markdown: the tuning table (every trial) and the test table (the chosen trial per model)."""
    rows = read_log(log)
    lines = [f"Tuning ({dataset}; chosen trial in bold):", "",
             "| model | setting | best epoch / run | val N@10 | wall time | load average |", "|---|---|---|---|---|---|"]
    for model in models():
        mine = [r for r in rows if r["model"] == model]
        best = max(mine, key=lambda r: r["val_ndcg@10"])["key"] if mine else None
        for r in mine:
            bold = "**" if r["key"] == best else ""
            lines.append(f"| {model} | {setting_label(model, r['setting'])} | {r['best_epoch']} / {r['epochs_run']} | "
                         f"{bold}{r['val_ndcg@10']:.4f}{bold} | {r['wall_time_s']:.0f} s | {r['load_average_after']} |")
    lines += ["", f"Test ({dataset}, each chosen configuration evaluated once):", "",
              "| model | P@5 | P@10 | N@5 | N@10 | R@20 | val N@10 | chosen setting |", "|---|---|---|---|---|---|---|---|"]
    for model in models():
        path = results_dir / dataset / f"{model}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        m, c = record["metrics"], record["config"]
        if "trial" not in c:  # a result this script did not write (e.g. an older run): not part of this table
            continue
        lines.append(f"| {model} | {m['precision@5']:.4f} | {m['precision@10']:.4f} | {m['ndcg@5']:.4f} | "
                     f"{m['ndcg@10']:.4f} | {m['recall@20']:.4f} | {c['val_ndcg@10']:.4f} | "
                     f"{setting_label(model, c['setting'])}, best epoch {c['best_epoch']} |")
    return "\n".join(lines)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True,
                   help="the loader: ml-latest-small (bundled), ml-100k, amazon-json, ...; results go under the "
                        "dataset's own name (amazon-json in amazon-scientific/ -> amazon-scientific); with --phase "
                        "report, that name")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the bundled copy)")
    p.add_argument("--phase", choices=["tune", "test", "all", "report"], default="all",
                   help="report: print the markdown tuning / test tables from the log and result files")
    p.add_argument("--models", nargs="+", choices=models(), default=list(models()))
    p.add_argument("--plus-text-weights", nargs="+", type=float, default=list(PLUS_TEXT_WEIGHTS),
                   help="LightGCN+ InfoNCE weights to try (a subset lets two jobs split its grid)")
    p.add_argument("--log", default=None, help="tuning log (default benchmarks/results/<dataset>/tuning/graph.jsonl)")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args(argv)
    if args.phase == "report":
        log = Path(args.log or ROOT / "benchmarks/results" / args.dataset / "tuning/graph.jsonl")
        print(report(args.dataset, log, Path(args.results_dir)))
        return 0
    import torch

    torch.set_num_threads(1)
    harness = Harness(args)
    if args.phase in ("tune", "all"):
        harness.tune()
    if args.phase in ("test", "all"):
        harness.test()
    return 0


if __name__ == "__main__":
    sys.exit(main())
