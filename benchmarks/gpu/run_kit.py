#!/usr/bin/env python
"""The GPU kit: everything the paper's comparison still needs from a lent GPU, in one time-guarded command.

In priority order, each step skipped when a committed result already covers it (so every lucky session continues
where the last one stopped):

(a) ``texts``  -- profile / prediction texts for every user of ml-1m and amazon-scientific into
    ``benchmarks/texts/<dataset>/texts.jsonl`` (``glta_hf.texts``, the library path of training/generate_texts.py,
    with the settings the rows use: the ``large`` budget's, then the text settings of the dataset's CPU recipe
    ``training/configs/<dataset>.yaml`` (10 items, 48 new tokens, greedy, float32 LLM: the committed caches'); a
    partial cache resumes, a full one is skipped;
(b) ``rows``   -- the GLTA rows through ``python -m glta_hf.cli benchmark`` (one subprocess per dataset and group:
    ``glta,glta_fl,glta_ar`` on both datasets first -- FL / AR are decodings of the trained ``glta`` model, so they
    share its process -- then ``glta_residual`` (GLTA + the frozen LightGCN score: does the LLM add anything over the
    graph?), then ``glta_wo_pf,glta_wo_pd,glta_wo_both,glta_wo_ia,glta_wo_ua``). Every row aligns the
    committed node tables ``benchmarks/gpu/nodes/<dataset>-lightgcn`` (``--node-embeddings``), the tables of the
    committed ``lightgcn`` row, which the kit first re-scores and compares with that row's metrics. A dataset's rows
    start only once its text cache is complete (a bf16 LLM must never extend the float32 cache). A group whose rows
    all exist with the same config fingerprint is not started; a finished row is written at once;
(c) ``perf``   -- GPU performance into ``benchmarks/results/performance/gpu.json``: user-stage tokens/s and MFU in
    bf16 (FLOPs counted as BENCHMARKS.md 5.2 does), text generation tokens/s, full-test evaluation users/s,
    ``recommend()`` p50 / p95 at batch 1 and 64, the GPU's name and a measured bf16 matmul ceiling.

Time guard: every step is a subprocess given what is left of ``--time-budget`` (minus the packing reserve); a step
whose minimum does not fit is not started, one that overruns is stopped (SIGTERM, then SIGKILL), and what finished
stays written (texts are flushed per batch, rows per row). The kit then packs every result file it changed into
``<out>/kit_results.tar.gz`` (unpack at home with ``benchmarks/gpu/unpack.py``), writes ``<out>/kit_report.json``
(each step: done / skipped and why / cut by the time guard / failed) and ``<out>/kit.log``, and prints the report.

``--dry-run`` runs the same steps end to end on CPU with a tiny random LLaMA and two tiny datasets in a temporary
root (tests/test_gpu_kit.py runs it in CI). On the device: ``bash benchmarks/gpu/device_run.sh`` (README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GLTA_GROUP = ["glta", "glta_fl", "glta_ar"]
ABLATION_GROUP = ["glta_wo_pf", "glta_wo_pd", "glta_wo_both", "glta_wo_ia", "glta_wo_ua"]
#: GLTA + the frozen LightGCN score (issue 16): does the LLM add anything over the graph? Its own training run.
RESIDUAL_GROUP = ["glta_residual"]
PACK_RESERVE_S = 25  # kept free at the end for the LightGCN check, packing and the report
#: dense bf16 tensor-core peak by the vendor's datasheet (H100 / H200 SXM), the MFU denominator
DATASHEET_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12}

REAL_DATASETS = [
    {"name": "ml-1m", "loader": "ml-1m", "data": "ml-1m", "options": {}},
    {"name": "amazon-scientific", "loader": "amazon-json", "data": "amazon-scientific",
     "options": {"split": "random", "test_fraction": 0.2, "split_seed": 0}},
]


# ----------------------------------------------------------------------------------------------- configuration


#: the text settings of a dataset's CPU recipe (``training/configs/<dataset>.yaml``) the kit takes over, so its texts
#: extend the committed caches (a cache written with other settings is refused, not mixed: ``glta_hf.texts``)
RECIPE_TEXT_OPTIONS = ("text_max_items", "text_max_new_tokens", "text_max_item_chars")


def recipe_text_options(name: str) -> Dict[str, Any]:
    """``{option: value}`` of :data:`RECIPE_TEXT_OPTIONS` set in ``training/configs/<name>.yaml`` (quickstart names)."""
    import yaml

    path = ROOT / "training" / "configs" / f"{name}.yaml"
    recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {key: recipe[key] for key in RECIPE_TEXT_OPTIONS if key in recipe}


def real_config(args) -> Dict[str, Any]:
    datasets = [dict(d, data_dir=str(Path(args.data_root) / d["data"]),
                     nodes=str(ROOT / "benchmarks" / "gpu" / "nodes" / f"{d['name']}-lightgcn"),
                     text_options=recipe_text_options(d["name"]))
                for d in REAL_DATASETS if not args.datasets or d["name"] in args.datasets]
    return {
        "dry_run": False, "root": str(ROOT), "datasets": datasets, "backbone": None, "device": "cuda",
        "texts_dtype": None, "llm_dtype": "bfloat16", "budget": "large", "text_batch_size": 384,
        # --no-prefix-cache: the cached path (the default since the fourth session) has never run on a GPU; the 2 GiB
        # default store would spill ml-1m's ~30 GB of bf16 prefixes to disk. The rehearsed uncached path until then.
        "row_flags": ["--batch-size", "32", "--eval-batch-size", "256", "--no-prefix-cache"],
        "groups": [["glta", GLTA_GROUP], ["residual", RESIDUAL_GROUP], ["ablations", ABLATION_GROUP]],
        "min_seconds": {"texts": 40, "graph": 60, "glta": 150, "residual": 150, "ablations": 90, "perf": 70},
        "perf": {"dataset": "ml-1m", "train_batches": [32, 128], "train_steps": 12, "generation_users": 768,
                 "eval_users": None, "eval_batch_size": 256, "requests_b1": 30, "requests_b64": 10,
                 "matmul_size": 8192},
    }


def dry_config(args, work: Path) -> Dict[str, Any]:
    """Tiny LLaMA + two tiny MovieLens-format datasets + their LightGCN tables and committed-style lightgcn rows,
    all under ``work``; the kit's own steps are unchanged."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _tiny_data import save_tiny_llama, write_tiny_movielens

    root = work / "root"
    llm = save_tiny_llama(work / "tiny-llama")
    datasets = []
    for seed, name in enumerate(("tiny-a", "tiny-b")):
        data_dir = write_tiny_movielens(work / "data" / name, num_users=16, num_items=40, per_user=6, seed=seed)
        trained = work / "nodes" / f"{name}-lightgcn"
        graph = ["--dataset", "ml-latest-small", "--data-dir", str(data_dir), "--results-name", name,
                 "--model", "lightgcn", "--no-progress"]
        _pretrain_graph(graph + ["--epochs", "2", "--eval-every", "1", "--skip-test", "--output-dir", str(trained)])
        _pretrain_graph(graph + ["--from-embeddings", str(trained), "--results-dir", str(root / "benchmarks/results")])
        # tiny-a's tables are "committed"; tiny-b's are not, so the kit trains them from its lightgcn row's command
        nodes = trained if name == "tiny-a" else root / "benchmarks" / "gpu" / "nodes" / f"{name}-lightgcn"
        datasets.append({"name": name, "loader": "ml-latest-small", "data_dir": str(data_dir), "options": {},
                         "nodes": str(nodes)})
    return {
        "dry_run": True, "root": str(root), "datasets": datasets, "backbone": str(llm), "device": "cpu",
        "texts_dtype": None, "llm_dtype": "bfloat16", "budget": "large", "text_batch_size": 8,
        "row_flags": ["--batch-size", "8", "--eval-batch-size", "8", "--epochs", "0.5", "--graph-epochs", "1"],
        "groups": [["glta", GLTA_GROUP + ["glta_wo_pf", "glta_wo_ia"]]],  # one process per dataset: CI time
        "min_seconds": {"texts": 1, "graph": 1, "glta": 1, "perf": 1},
        "perf": {"dataset": "tiny-a", "train_batches": [4], "train_steps": 2, "generation_users": 8,
                 "eval_users": None, "eval_batch_size": 8, "requests_b1": 3, "requests_b64": 2, "matmul_size": 256},
    }


def _pretrain_graph(argv: List[str]) -> None:
    import contextlib
    import io
    import runpy

    saved = sys.argv
    sys.argv = ["training/pretrain_graph.py"] + argv
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(ROOT / "training" / "pretrain_graph.py"), run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finally:
        sys.argv = saved


def texts_path(cfg, dataset) -> Path:
    return Path(cfg["root"]) / "benchmarks" / "texts" / dataset["name"] / "texts.jsonl"


def rows_config(cfg, dataset):
    """The rows' :class:`~glta_hf.quickstart.QuickstartConfig`: their budget's, then the dataset's recipe's text
    settings (``bench_argv`` passes the same as flags)."""
    from glta_hf.quickstart import budget_config

    return budget_config(cfg["budget"], **dataset.get("text_options", {}))


def text_settings(cfg, dataset, batch_size: int):
    """The rows' text settings, so the rows reuse the cache the texts step writes."""
    tcfg = rows_config(cfg, dataset).text_config()
    tcfg.batch_size = batch_size
    return tcfg


_LOADED: Dict[str, Any] = {}


def load_data(dataset):
    """``(data, full)`` as the rows build them (validation 0.1 of train, seed 0); loaded once per process."""
    from glta_hf.alignment_data import prepare_data

    if dataset["name"] not in _LOADED:
        _LOADED[dataset["name"]] = prepare_data(dataset["loader"], dataset["data_dir"], **dataset["options"],
                                                val_fraction=0.1, val_seed=0)
    return _LOADED[dataset["name"]]


def bench_argv(cfg, dataset, rows: List[str]) -> List[str]:
    """``glta benchmark`` arguments of one group of rows (also used to compute their fingerprints)."""
    root = Path(cfg["root"])
    flag = {"split": "--split", "test_fraction": "--test-fraction", "split_seed": "--split-seed"}
    argv = ["--dataset", dataset["loader"], "--data-dir", dataset["data_dir"]]
    for key, value in dataset["options"].items():
        argv += [flag[key], str(value)]
    argv += ["--results-name", dataset["name"], "--rows", ",".join(rows), "--budget", cfg["budget"],
             "--texts", str(texts_path(cfg, dataset)), "--node-embeddings", dataset["nodes"],
             "--llm-dtype", cfg["llm_dtype"], "--device", cfg["device"],
             "--output-dir", str(Path(cfg["work"]) / "bench" / dataset["name"]),
             "--results-dir", str(root / "benchmarks" / "results"),
             "--figures-dir", str(root / "benchmarks" / "figures"), "--no-progress"]
    for key, value in dataset.get("text_options", {}).items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    if cfg["backbone"]:
        argv += ["--backbone", cfg["backbone"]]
    return argv + list(cfg["row_flags"])


def rows_to_run(cfg, dataset, rows: List[str]) -> List[str]:
    """The rows of a group without a result of the same fingerprint (the benchmark would skip the others); a row
    whose result came from the CPU path (no benchmark fingerprint: ``benchmarks/quality/paper_rows.sh``, epochs chosen
    on validation) is never replaced."""
    from glta_hf import benchmark

    parser = argparse.ArgumentParser()
    benchmark.configure_parser(parser)
    args = parser.parse_args(bench_argv(cfg, dataset, rows))
    settings = benchmark._config(args)
    todo = []
    for row in rows:
        path = Path(cfg["root"]) / "benchmarks" / "results" / dataset["name"] / f"{row}.json"
        found = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        recorded = (found.get("config") or {}).get("fingerprint")
        if found and recorded is None:  # a row tested on CPU (benchmarks/quality/paper_rows.sh): validated, kept
            continue
        if recorded != benchmark.fingerprint(row, args, settings):
            todo.append(row)
    return todo


def users_without_texts(cfg, dataset, data=None) -> int:
    from glta_hf.texts import read_cache

    data = data if data is not None else load_data(dataset)[0]
    return data.num_users - len(read_cache(texts_path(cfg, dataset)))


# ----------------------------------------------------------------------------------------------- child steps


def _generator(cfg, dtype):
    from glta_hf.backbone import SMOLLM2_REFERENCE
    from glta_hf.texts import load_generator

    return load_generator(cfg["backbone"] or SMOLLM2_REFERENCE, dtype=dtype, device=cfg["device"])


def child_texts(cfg) -> None:
    """Step (a): every user's texts, dataset by dataset (the cache appends and fsyncs each batch)."""
    from glta_hf.texts import generate_user_texts

    model = None
    for dataset in cfg["datasets"]:
        data, _ = load_data(dataset)
        missing = users_without_texts(cfg, dataset, data)
        if missing == 0:
            print(f"texts {dataset['name']}: complete ({data.num_users} users)", flush=True)
            continue
        if model is None:
            model, tokenizer, ref = _generator(cfg, cfg["texts_dtype"])
        print(f"texts {dataset['name']}: {missing} of {data.num_users} users to write", flush=True)
        path = texts_path(cfg, dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = generate_user_texts(model, tokenizer, data, path, llm=ref,
                                      config=text_settings(cfg, dataset, cfg["text_batch_size"]),
                                      users=range(data.num_users), progress=False)
        print(f"texts {dataset['name']}: {json.dumps(summary)}", flush=True)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _matmul_tflops(device, size: int, dtype) -> float:
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 2 * size**3 * 10 / (time.perf_counter() - t0) / 1e12


def _percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1e3, q))


def child_perf(cfg) -> None:
    """Step (c): GPU performance of the real pipeline pieces on one dataset, into performance/gpu.json."""
    import copy

    import numpy as np
    import torch

    from glta_hf import pipeline
    from glta_hf.metrics import evaluate_glta, test_users
    from glta_hf.alignment_data import GLTACollator, UserItemDataset, user_histories
    from glta_hf.graph import load_node_embeddings
    from glta_hf.backbone import SMOLLM2_REFERENCE
    from glta_hf.results import hardware_info, write_run_result
    from glta_hf.texts import generate_user_texts, load_texts

    start = time.perf_counter()
    p = cfg["perf"]
    device = torch.device(cfg["device"])
    dataset = next(d for d in cfg["datasets"] if d["name"] == p["dataset"])
    data, full = load_data(dataset)
    metrics: Dict[str, Any] = {"gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None}

    # text generation, the texts step's settings (float32 LLM), into a scratch cache
    gen, tokenizer, ref = _generator(cfg, cfg["texts_dtype"])
    users = np.random.default_rng(0).permutation(data.num_users)[: p["generation_users"]].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        _sync(device)
        summary = generate_user_texts(gen, tokenizer, data, Path(tmp) / "texts.jsonl", llm=ref, users=users,
                                      config=text_settings(cfg, dataset, cfg["text_batch_size"]), progress=False)
    metrics.update(generation_tokens_per_s=round(summary["tokens_per_s"], 1), generation_users=len(users),
                   generation_batch_size=cfg["text_batch_size"], generation_new_tokens=summary["new_tokens"],
                   generation_prompt_tokens=summary["prompt_tokens"], generation_dtype=str(gen.dtype))

    # the GLTA model the rows train: bf16 LLM, committed LightGCN tables, the dataset's catalogue and texts
    dtype = getattr(torch, cfg["llm_dtype"]) if cfg["llm_dtype"] else torch.float32
    decoder = gen.get_decoder().to(dtype)
    nodes = load_node_embeddings(dataset["nodes"])
    budget = rows_config(cfg, dataset)  # the rows' model and prompt settings (quickstart.train_alignment)
    args = budget.training_arguments(tempfile.gettempdir())
    model = pipeline.build_model(decoder, tokenizer, nodes, data, llm_name_or_path=cfg["backbone"] or SMOLLM2_REFERENCE,
                                 prompt=budget.prompt_config(args), num_slots=args.num_slots,
                                 **budget.model_arguments().config_kwargs())
    cache = texts_path(cfg, dataset)
    texts = load_texts(cache, num_users=data.num_users) if cache.is_file() else {}
    histories, has_time = user_histories(data, "train")
    pipeline.attach_user_context(model, data, histories, has_time=has_time, texts=texts)
    metrics["texts_attached_users"] = len(texts)

    # user-item stage: forward + input-gradient backward through the frozen LLM, length-grouped batches
    model.set_trainable("user")
    model.train()
    samples = UserItemDataset(histories, tokenizer, model.prompt_config, texts=texts, mode="train",
                              has_time=has_time, user_names=data.user_ids, seed=0)
    encoded = [samples[i] for i in range(min(len(samples), max(p["train_batches"]) * (p["train_steps"] + 2)))]
    encoded.sort(key=lambda e: len(e.input_ids))
    collate = GLTACollator(tokenizer.pad_token_id, model.config.num_slots, sample_users=False)  # model(**batch)
    n_params = sum(t.numel() for n, t in model.llm.named_parameters() if "embed_tokens" not in n)
    hidden, layers = model.config.llm_hidden_size, len(model.llm.layers)
    peak = next((v for k, v in DATASHEET_BF16_FLOPS.items() if metrics["gpu_name"] and k in metrics["gpu_name"]),
                None)
    ceiling = _matmul_tflops(device, p["matmul_size"], dtype)
    stage = {}
    for batch_size in p["train_batches"]:
        batches = [encoded[s:s + batch_size] for s in range(0, len(encoded) - batch_size + 1, batch_size)]
        rng = np.random.default_rng(batch_size)
        order = rng.permutation(len(batches))
        warm, timed = order[:2], order[2: 2 + p["train_steps"]]
        real = computed = attention = 0
        for phase, indices in (("warm", warm), ("timed", timed)):
            _sync(device)
            t0 = time.perf_counter()
            for i in indices:
                batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(batches[i]).items()}
                model(**batch).loss.backward()
                model.zero_grad(set_to_none=True)
                if phase == "timed":
                    b, t = batch["input_ids"].shape
                    real += int(batch["attention_mask"].sum())
                    computed += b * t
                    attention += 3 * 4 * b * t * t * hidden * layers
            _sync(device)
            seconds = time.perf_counter() - t0
        flops = 4 * n_params * computed + attention
        stage[batch_size] = {"steps": len(timed), "seconds": round(seconds, 3),
                             "real_tokens_per_s": round(real / seconds, 1),
                             "computed_tokens_per_s": round(computed / seconds, 1),
                             "padding_fraction": round(1 - real / max(computed, 1), 4),
                             "achieved_tflops": round(flops / seconds / 1e12, 3),
                             "mfu": round(flops / seconds / peak, 4) if peak else None,
                             "fraction_of_measured_matmul": round(flops / seconds / 1e12 / ceiling, 4)}
    main_batch = p["train_batches"][0]
    metrics.update(user_stage_tokens_per_s=stage[main_batch]["real_tokens_per_s"],
                   user_stage_mfu=stage[main_batch]["mfu"], user_stage_batch_size=main_batch,
                   user_stage_by_batch={str(k): v for k, v in stage.items()},
                   matmul_tflops_measured=round(ceiling, 1), mfu_peak_flops=peak,
                   llm_nonembedding_params=n_params, llm_dtype=str(dtype))

    # full-test evaluation (first_k, every test user unless limited) and recommend() latency
    model.set_trainable("none")
    model.eval()
    eval_users = test_users(full)
    if p["eval_users"]:
        eval_users = eval_users[: p["eval_users"]]
    _sync(device)
    t0 = time.perf_counter()
    evaluate_glta(model, full, users=eval_users, batch_size=p["eval_batch_size"], progress=False)
    _sync(device)
    seconds = time.perf_counter() - t0
    metrics.update(eval_users=len(eval_users), eval_seconds=round(seconds, 3),
                   eval_users_per_s=round(len(eval_users) / seconds, 2), eval_batch_size=p["eval_batch_size"])
    ids = [data.user_ids[u] for u in eval_users]
    for batch_size, requests in ((1, p["requests_b1"]), (64, p["requests_b64"])):
        times = []
        for r in range(requests + 1):  # the first is a warm-up
            chosen = [ids[(r * batch_size + j) % len(ids)] for j in range(batch_size)]
            _sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                model.recommend(chosen, k=10, batch_size=batch_size)
            _sync(device)
            if r:
                times.append(time.perf_counter() - t0)
        metrics[f"recommend_p50_ms_b{batch_size}"] = round(_percentile(times, 50), 2)
        metrics[f"recommend_p95_ms_b{batch_size}"] = round(_percentile(times, 95), 2)
        metrics[f"recommend_requests_b{batch_size}"] = requests
    root = Path(cfg["root"])
    path = write_run_result(
        root / "benchmarks" / "results", "performance", "gpu", model="glta", split=full.split_policy,
        metrics=metrics, command="python benchmarks/gpu/run_kit.py (step perf)",
        wall_time_s=time.perf_counter() - start,
        config={"dataset": dataset["name"], "perf": p, "hardware": hardware_info(),
                "flops": "4*N*computed_tokens (frozen LLM forward + input-gradient backward) + 12*T^2*hidden per "
                         "sequence per layer (BENCHMARKS.md 5.2); MFU = achieved / datasheet dense bf16 peak"})
    print(json.dumps(metrics, indent=1), flush=True)
    print(f"written {path}", flush=True)


# ----------------------------------------------------------------------------------------------- the parent


class Kit:
    """Runs the steps as time-guarded subprocesses, then packs and reports."""

    def __init__(self, cfg: Dict[str, Any], out: Path, budget_s: float, log: Path):
        self.cfg, self.out, self.log = cfg, out, log
        self.start = time.time()
        self.deadline = time.monotonic() + budget_s
        self.report: List[Dict[str, Any]] = []

    def left(self) -> float:
        return self.deadline - time.monotonic() - PACK_RESERVE_S

    def note(self, step: str, status: str, seconds: float = 0.0, **extra) -> None:
        entry = {"step": step, "status": status, "seconds": round(seconds, 1), **extra}
        self.report.append(entry)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(f"== {step}: {status}\n")
        print(f"[kit] {step}: {status} ({seconds:.0f}s)", flush=True)

    def run(self, step: str, argv: List[str], minimum: float) -> str:
        """Run one step; returns done / failed / cut / not started."""
        left = self.left()
        if left < minimum:
            self.note(step, f"not started: {left:.0f}s left, needs >= {minimum:.0f}s")
            return "not started"
        t0 = time.monotonic()
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(f"\n== {step}: {' '.join(argv)}\n")
            handle.flush()
            proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
                                        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p])),
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                self.note(step, "cut by the time guard (finished parts are kept)", time.monotonic() - t0)
                return "cut"
        status = "done" if rc == 0 else f"failed (exit {rc}; see kit.log)"
        self.note(step, status, time.monotonic() - t0)
        return "done" if rc == 0 else "failed"

    def child(self, name: str) -> List[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--child", name, "--config",
                str(Path(self.cfg["work"]) / "kit_config.json")]

    def graph(self, dataset) -> None:
        """Node tables missing (not committed yet): train them with the committed lightgcn row's own training command
        on this device, then re-score that row from them (``--from-embeddings``), so the lightgcn row and every GLTA
        row share one graph; the tables and the re-scored row come home in the archive."""
        nodes = Path(dataset["nodes"])
        if (nodes / "node_embeddings.safetensors").is_file():
            return
        path = Path(self.cfg["root"]) / "benchmarks" / "results" / dataset["name"] / "lightgcn.json"
        if not path.is_file():
            self.note(f"graph {dataset['name']}", f"not started: {path} missing")
            return
        record = json.loads(path.read_text(encoding="utf-8"))
        if not (record.get("config") or {}).get("command"):  # a row tune_graph.py tested: its tables are committed
            self.note(f"graph {dataset['name']}", f"not started: {path} has no pretrain_graph.py command; commit its "
                      f"tables (tune_graph.py --phase test exports them to runs/graph/) to {nodes}")
            return
        script = [sys.executable, str(ROOT / "training" / "pretrain_graph.py")]
        train = _retarget(record["config"]["command"], {"--data-dir": dataset["data_dir"], "--output-dir": str(nodes),
                                                        "--device": self.cfg["device"]}, drop=("--tuning-log",))
        if self.run(f"graph {dataset['name']} (train the lightgcn row's tables)", script + train,
                    self.cfg["min_seconds"]["graph"]) != "done":
            return
        score = _retarget(record["command"], {"--data-dir": dataset["data_dir"], "--from-embeddings": str(nodes),
                                              "--results-dir": str(Path(self.cfg["root"]) / "benchmarks/results")})
        self.run(f"graph {dataset['name']} (re-score the lightgcn row)", script + score, 1)

    def check_lightgcn(self, dataset) -> Optional[str]:
        """None when the node tables reproduce the committed lightgcn row, else why not."""
        from glta_hf.metrics import evaluate_graph
        from glta_hf.graph import load_node_embeddings

        path = Path(self.cfg["root"]) / "benchmarks" / "results" / dataset["name"] / "lightgcn.json"
        if not path.is_file():
            return f"{path} missing"
        if not (Path(dataset["nodes"]) / "node_embeddings.safetensors").is_file():
            return f"no node tables in {dataset['nodes']} (train them with the lightgcn row's config.command)"
        committed = json.loads(path.read_text(encoding="utf-8"))["metrics"]
        _, full = load_data(dataset)
        scored = evaluate_graph(load_node_embeddings(dataset["nodes"]), full)
        diff = max(abs(scored[k] - committed[k]) for k in committed if k in scored and k != "num_users")
        if diff > 5e-4 or scored["num_users"] != committed["num_users"]:
            return f"node tables score {diff:.2e} away from {path} (users {scored['num_users']})"
        self.report.append({"step": f"lightgcn check {dataset['name']}", "status": "done",
                            "max_abs_metric_diff": diff})
        return None

    def steps(self, phases: List[str]) -> None:
        cfg, minimum = self.cfg, self.cfg["min_seconds"]
        if "texts" in phases:
            incomplete = [d["name"] for d in cfg["datasets"] if users_without_texts(cfg, d)]
            if incomplete:
                self.run("texts " + ",".join(incomplete), self.child("texts"), minimum["texts"])
            else:
                self.note("texts", "skipped: every cache is complete")
        if "rows" in phases:
            ready = []
            for dataset in cfg["datasets"]:
                missing = users_without_texts(cfg, dataset)
                if missing:
                    self.note(f"rows {dataset['name']}", f"waiting: {missing} users have no texts yet")
                    continue
                self.graph(dataset)
                problem = self.check_lightgcn(dataset)
                if problem:
                    self.note(f"rows {dataset['name']}", f"refused: {problem}")
                    continue
                ready.append(dataset)
            for key, group in cfg["groups"]:
                for dataset in ready:
                    todo = rows_to_run(cfg, dataset, group)
                    step = f"rows {dataset['name']} {','.join(todo or group)}"
                    if not todo:
                        self.note(step, "skipped: every row exists with the same fingerprint")
                        continue
                    argv = [sys.executable, "-m", "glta_hf.cli", "benchmark"] + bench_argv(cfg, dataset, todo)
                    self.run(step, argv, minimum[key])
            for dataset in ready:  # results.json, tables.md, figures from every row file present (no training)
                self.render(dataset)
        if "perf" in phases:
            self.run("perf", self.child("perf"), minimum["perf"])

    def render(self, dataset) -> None:
        from glta_hf import benchmark

        parser = argparse.ArgumentParser()
        benchmark.configure_parser(parser)
        args = parser.parse_args(bench_argv(cfg=self.cfg, dataset=dataset, rows=["glta"]) + ["--render-only"])
        args.rows = "all"
        t0 = time.monotonic()
        lines: List[str] = []
        try:
            benchmark.Benchmark(args, echo=lines.append).run(benchmark.parse_rows(args.rows))
            status = "done"
        except Exception as err:  # tables are a convenience: the row files are what comes home
            status = f"failed: {type(err).__name__}: {err}"
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        self.note(f"tables {dataset['name']}", status, time.monotonic() - t0)

    def pack(self) -> Path:
        """Every result / text / figure file written since the kit started, as one archive (unpack.py fills in the
        commit at home from ``COMMIT``: the device copy's own git state is not the run's)."""
        root = Path(self.cfg["root"])
        archive = self.out / "kit_results.tar.gz"
        members = []
        for folder in ("benchmarks/results", "benchmarks/texts", "benchmarks/figures", "benchmarks/gpu/nodes"):
            for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else []:
                if path.is_file() and path.stat().st_mtime >= self.start - 1:
                    members.append(path)
        with tarfile.open(archive, "w:gz") as tar:
            for path in members:
                tar.add(path, arcname=str(path.relative_to(root)))
            for tables in sorted((Path(self.cfg["work"]) / "bench").glob("*/tables.md")):
                tar.add(tables, arcname=f"run/{tables.parent.name}/tables.md")
        self.report.append({"step": "pack", "status": "done", "files": [str(p.relative_to(root)) for p in members]})
        return archive


def _retarget(command: str, values: Dict[str, str], drop=()) -> List[str]:
    """The arguments of a recorded ``python training/pretrain_graph.py ...`` command with some options replaced
    (or added) and some dropped; ``--no-progress`` added."""
    import shlex

    words = shlex.split(command)
    words = words[words.index(next(w for w in words if w.endswith("pretrain_graph.py"))) + 1:]
    out, i = [], 0
    while i < len(words):
        word = words[i]
        takes_value = i + 1 < len(words) and not words[i + 1].startswith("--")
        if word in values or word in drop:
            i += 2 if takes_value else 1
            continue
        out.append(word)
        i += 1
    for key, value in values.items():
        out += [key, value]
    return out + ([] if "--no-progress" in out else ["--no-progress"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-kit-out"), help="where the archive, the "
                        "report and the log go (the device's $OUT)")
    parser.add_argument("--time-budget", type=float, default=480.0, help="seconds for everything, packing included")
    parser.add_argument("--phases", default="texts,rows,perf", help="comma-separated subset of texts,rows,perf")
    parser.add_argument("--datasets", nargs="*", default=None, help="limit to these datasets (ml-1m, amazon-scientific)")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"),
                        help="folder holding ml-1m/ and amazon-scientific/ (on the device: /tmp/kit/data)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--commit-file", default=None, help="file holding the commit run (carry.py writes it), "
                        "recorded in the report")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny LLaMA, two tiny datasets, in a temporary root; same steps")
    parser.add_argument("--child", choices=["texts", "perf"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.child:
        cfg = json.loads(Path(args.config).read_text(encoding="utf-8"))
        if cfg["dry_run"]:
            import torch

            torch.set_num_threads(1)
        {"texts": child_texts, "perf": child_perf}[args.child](cfg)
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "kit.log"
    log.write_text("", encoding="utf-8")
    scratch = tempfile.TemporaryDirectory(prefix="gpukit-") if args.work is None else None
    work = Path(args.work or scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    cfg = dry_config(args, work) if args.dry_run else real_config(args)
    cfg["work"] = str(work)
    (work / "kit_config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    kit = Kit(cfg, out, args.time_budget, log)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    try:
        kit.steps(phases)
    except Exception as err:  # the report and the archive still go home
        kit.note("kit", f"stopped by an error: {type(err).__name__}: {err}")
    commit = Path(args.commit_file).read_text(encoding="utf-8").strip() if args.commit_file else None
    archive = kit.pack()
    report = {"dry_run": cfg["dry_run"], "commit": commit, "time_budget_s": args.time_budget,
              "wall_s": round(time.time() - kit.start, 1), "steps": kit.report, "archive": archive.name}
    (out / "kit_report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print("\n[kit] report (" + str(out / "kit_report.json") + ")")
    for entry in kit.report:
        if entry["step"] != "pack":
            print(f"  {entry['step']:<60} {entry['status']}  {entry.get('seconds', '')}")
    print(f"  packed {len(kit.report[-1]['files'])} files into {archive}")
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
