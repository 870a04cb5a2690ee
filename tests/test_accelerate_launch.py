"""DDP on CPU: ``accelerate launch --num_processes 2 --cpu training/align.py`` trains on both ranks, one checkpoint."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _tiny_data import save_tiny_llama, write_tiny_movielens

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_two_cpu_processes_train_and_save_one_model(tmp_path):
    write_tiny_movielens(tmp_path / "ds")
    save_tiny_llama(tmp_path / "llm")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    graph = subprocess.run(
        [sys.executable, "training/pretrain_graph.py", "--dataset", "ml-latest-small", "--data-dir",
         str(tmp_path / "ds"), "--model", "lightgcn", "--output-dir", str(tmp_path / "graph"), "--epochs", "5",
         "--dim", "16", "--batch-size", "64", "--no-progress", "--skip-test"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert graph.returncode == 0, graph.stderr[-3000:]
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    # accelerate's `--cpu` with several processes goes through mpirun; `--multi_gpu` starts them with torchrun and
    # TrainingArguments(use_cpu=True) keeps them on the CPU (gloo backend): DDP on two CPU processes.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "29517", "training/align.py",
           "--dataset", "ml-latest-small", "--data_dir", str(tmp_path / "ds"), "--graph_dir", str(tmp_path / "graph"),
           "--backbone", str(tmp_path / "llm"), "--no_profile", "true", "--no_prediction", "true",
           "--stage", "user", "--no_item_alignment", "true", "--output_dir", str(tmp_path / "run"),
           "--max_steps", "3", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "12",
           "--eval_strategy", "steps", "--eval_steps", "3", "--save_strategy", "steps", "--save_steps", "3",
           "--eval_ks", "5,10", "--max_history", "5", "--disable_tqdm", "true", "--logging_steps", "1",
           "--threads", "1", "--use_cpu", "true"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    # each rank prints one JSON report; two ranks may interleave them on one line, so decode them in place
    decoder, reports, text = json.JSONDecoder(), [], proc.stdout
    start = text.find('{"stage"')
    while start != -1:
        report, end = decoder.raw_decode(text, start)
        reports.append(report)
        start = text.find('{"stage"', end)
    assert sorted(r["process_index"] for r in reports) == [0, 1], proc.stdout[-3000:]
    assert all(r["world_size"] == 2 and r["global_step"] == 3 for r in reports)
    # both ranks computed the same all-reduced validation metrics
    assert reports[0]["eval_ndcg@10"] == reports[1]["eval_ndcg@10"] and reports[0]["eval_num_users"] == 24
    stage = tmp_path / "run" / "user"
    assert sorted(p.name for p in stage.iterdir()) == ["checkpoint-3", "final"]
    assert (stage / "final" / "model.safetensors").is_file()
    info = json.loads((stage / "final" / "glta_run.json").read_text())
    [record] = info["stages"]
    assert record["name"] == "user" and record["world_size"] == 2 and record["global_step"] == 3
    assert record["output_dir"] == "user/final"  # relative to the run root (records travel with the folder)
