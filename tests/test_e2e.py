"""End to end on a tiny generated dataset + a tiny random LLaMA, through the real scripts (subprocesses).

generate-texts -> graph -> item stage -> user stage -> evaluate; an overfit check of the signal path; kill -9
during text generation and during training, then rerun / --resume_from_checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny_data import save_tiny_llama, write_tiny_movielens

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


def run(*args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def align_args(w: Path, *extra):
    return [ROOT / "training" / "align.py", "--dataset", "ml-latest-small", "--data_dir", w / "ds",
            "--graph_dir", w / "graph", "--texts", w / "texts.jsonl", "--backbone", w / "llm",
            "--text_max_new_tokens", "4", "--text_max_items", "4", "--output_dir", w / "run",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "24", "--learning_rate", "1e-2",
            "--max_history", "5", "--eval_ks", "5,10", "--disable_tqdm", "true", "--use_cpu", "true",
            "--logging_steps", "1", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny dataset, tiny LLM folder, LightGCN node embeddings (pretrain_graph.py) -- shared by the tests."""
    w = tmp_path_factory.mktemp("e2e")
    write_tiny_movielens(w / "ds")
    save_tiny_llama(w / "llm")
    run(ROOT / "training" / "pretrain_graph.py", "--dataset", "ml-latest-small", "--data-dir", w / "ds",
        "--model", "lightgcn", "--output-dir", w / "graph", "--epochs", "20", "--dim", "16", "--batch-size", "64",
        "--lr", "0.01", "--no-progress", "--skip-test")
    return w


def _losses(final_dir: Path, stage: str = "user"):
    info = json.loads((final_dir / "glta_run.json").read_text())
    record = next(s for s in info["stages"] if s["name"] == stage)
    assert record["output_dir"] == f"{stage}/final" and record["global_step"] > 0  # relative to the run root
    return [h["loss"] for h in record["log_history"] if "loss" in h]


def test_pipeline_texts_item_user_evaluate(workdir, tmp_path):
    w = tmp_path
    for name in ("ds", "llm", "graph"):
        os.symlink(workdir / name, w / name)
    run(ROOT / "training" / "generate_texts.py", "--dataset", "ml-latest-small", "--data-dir", w / "ds",
        "--llm", w / "llm", "--output", w / "texts.jsonl", "--max-new-tokens", "4", "--max-items", "4",
        "--batch-size", "8", "--no-progress")
    lines = (w / "texts.jsonl").read_text().splitlines()
    assert sorted(json.loads(l)["user_idx"] for l in lines) == list(range(24))
    run(*align_args(w, "--stage", "item", "--num_train_epochs", "2", "--save_strategy", "no"))
    assert (w / "run" / "item" / "final" / "model.safetensors").is_file()
    run(*align_args(w, "--stage", "user", "--num_train_epochs", "4", "--eval_strategy", "epoch",
                    "--save_strategy", "epoch", "--load_best_model_at_end", "true"))
    final = w / "run" / "user" / "final"
    stages = json.loads((final / "glta_run.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["item", "user"]  # the item stage's record carries over
    losses = _losses(final)
    third = max(1, len(losses) // 3)
    assert np.mean(losses[-third:]) < np.mean(losses[:third]), losses
    assert not list(final.glob("*.bin")) and not list(final.glob("*.pt"))  # loadable by from_pretrained
    run(ROOT / "training" / "evaluate.py", "--model", final, "--split", "test", "--decoding", "first_k",
        "--output", w / "metrics.json", "--ks", "5,10")
    metrics = json.loads((w / "metrics.json").read_text())["metrics"]
    assert metrics["num_users"] == 24 and 0.0 <= metrics["ndcg@10"] <= 1.0
    run(ROOT / "training" / "evaluate.py", "--model", final, "--split", "test", "--decoding", "first_k",
        "--output", w / "metrics_cached.json", "--ks", "5,10", "--prefix-cache")  # exact: the same ranking metrics
    cached = json.loads((w / "metrics_cached.json").read_text())["metrics"]
    assert {k: v for k, v in cached.items() if k != "seconds"} == {k: v for k, v in metrics.items() if k != "seconds"}
    entries = []
    for name in ("stored_first", "stored_again"):  # a persistent store: written by the first run, read by the second
        run(ROOT / "training" / "evaluate.py", "--model", final, "--split", "test", "--decoding", "first_k",
            "--output", w / f"metrics_{name}.json", "--ks", "5,10", "--prefix-cache-dir", w / "prefixes")
        again = json.loads((w / f"metrics_{name}.json").read_text())["metrics"]
        assert again.keys() == metrics.keys()
        assert all(abs(again[k] - metrics[k]) < 1e-9 for k in metrics if k != "seconds"), (again, metrics)
        entries.append(len(json.loads((w / "prefixes" / "prefix_index.json").read_text())["entries"]))
    assert entries[0] > 0 and entries[1] == entries[0], entries  # the second run computed nothing new
    # its wall time (~2 min on an idle 2-core CPU) is a benchmark's business, not a pass/fail condition: under load
    # it took 3.5 min and failed a machine that computed every number right


def test_overfit_train_set_proves_signal_path(workdir):
    """Memorize 8 users' training items (no history shown, every training item a target): train NDCG@10 ~ 1."""
    from glta_hf.alignment_data import GLTACollator, UserItemDataset, prepare_data, user_histories
    from glta_hf.data.schema import UserItemMatrix
    from glta_hf.metrics import evaluate_model
    from glta_hf.trainer import GLTATrainer
    from glta_hf.training_args import GLTATrainingArguments
    from glta_hf.modeling_glta import GLTAForRecommendation
    from glta_hf.prompts import PromptConfig
    from glta_hf.testing import tiny_llama

    folder = write_tiny_movielens(workdir / "small", num_users=8, num_items=16, per_user=4)
    data, _ = prepare_data("ml-latest-small", folder)
    llm, tok = tiny_llama(seed=0)
    g = torch.Generator().manual_seed(0)
    prompt = PromptConfig(num_slots=4, max_history=0, include_profile=False, include_prediction=False,
                          use_chat_template=False, system_prompt="Recommend.")
    model = GLTAForRecommendation.from_components(
        llm.model, tok, torch.randn(data.num_users, 16, generator=g), torch.randn(data.num_items, 16, generator=g),
        llm_name_or_path="tiny", prompt=prompt, head=OVERFIT_HEAD)
    histories, _ = user_histories(data, "train")
    model.attach_user_context(histories=[[] for _ in histories])
    model.set_trainable("user")
    args = GLTATrainingArguments(output_dir=str(workdir / "overfit"), per_device_train_batch_size=8,
                                 learning_rate=OVERFIT_LR, num_train_epochs=OVERFIT_EPOCHS, save_strategy="no",
                                 logging_steps=50, disable_tqdm=True, use_cpu=True, seed=0, num_slots=4,
                                 max_history=0, items_per_sample=3, target_policy="all")
    ds = UserItemDataset(histories, tok, model.prompt_config, mode="train", target_policy="all", seed=0)
    GLTATrainer(model=model, args=args, train_dataset=ds, data_collator=GLTACollator(tok.pad_token_id, 4)).train()
    nothing = UserItemMatrix.from_pairs([], [], data.num_users, data.num_items)
    metrics = evaluate_model(model, train=nothing, truth=data.matrix("train"), decoding="all_slots", ks=(10,))
    assert metrics["ndcg@10"] > 0.9, metrics


OVERFIT_HEAD, OVERFIT_LR, OVERFIT_EPOCHS = "linear", 5e-2, 100


def _wait_for(predicate, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def test_kill_during_text_generation_then_rerun(workdir, tmp_path):
    out = tmp_path / "texts.jsonl"
    cmd = [sys.executable, ROOT / "training" / "generate_texts.py", "--dataset", "ml-latest-small", "--data-dir",
           workdir / "ds", "--llm", workdir / "llm", "--output", out, "--max-new-tokens", "16", "--max-items", "4",
           "--batch-size", "2", "--no-progress"]
    proc = subprocess.Popen(list(map(str, cmd)), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    started = _wait_for(lambda: out.exists() and out.read_text().count("\n") >= 2, proc, 120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert started, "generation never wrote a batch"
    written = out.read_text().count("\n")
    assert written < 24, "killed too late to test resuming"
    with open(out, "a", encoding="utf-8") as handle:  # make sure a torn last line is there too
        handle.write('{"user_idx": 23, "prof')
    run(*cmd[1:])
    users = [json.loads(l)["user_idx"] for l in out.read_text().splitlines()]
    assert sorted(users) == list(range(24)), "every user exactly one text"


def test_kill_during_training_then_resume_matches_uninterrupted(workdir, tmp_path):
    """Same seed: kill -9 mid-run + --resume_from_checkpoint gives the uninterrupted run's weights and metrics."""
    from glta_hf.io_utils import load_safetensors

    common = ["--stage", "user", "--no_item_alignment", "true", "--no_profile", "true", "--no_prediction", "true",
              "--max_steps", "9", "--save_steps", "3", "--save_strategy", "steps", "--eval_strategy", "no",
              "--seed", "0", "--save_total_limit", "5"]

    def args_for(w):
        for name in ("ds", "llm", "graph"):
            if not (w / name).exists():
                os.symlink(workdir / name, w / name)
        return align_args(w, *common)

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    run(*args_for(a))
    cmd = [sys.executable, *map(str, args_for(b))]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = b / "run" / "user" / "checkpoint-3" / "trainer_state.json"
    reached = _wait_for(ckpt.exists, proc, 180)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert reached, "training never wrote checkpoint-3"
    assert not (b / "run" / "user" / "final").exists()
    run(*args_for(b), "--resume_from_checkpoint", "true")
    wa = load_safetensors(a / "run" / "user" / "final" / "model.safetensors")
    wb = load_safetensors(b / "run" / "user" / "final" / "model.safetensors")
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # the resumed run's checkpoint is the same model: same files, each user's complete training history
    final_a, final_b = a / "run" / "user" / "final", b / "run" / "user" / "final"
    for name in ("item_catalogue.json", "user_table.json", "model.safetensors"):
        assert (final_a / name).read_bytes() == (final_b / name).read_bytes(), name
    config_a, config_b = (json.loads((f / "config.json").read_text()) for f in (final_a, final_b))
    assert config_a.pop("llm_name_or_path") != config_b.pop("llm_name_or_path")  # a/llm and b/llm
    assert config_a == config_b
    from glta_hf.alignment_data import prepare_data

    _, full = prepare_data("ml-latest-small", workdir / "ds")
    table = json.loads((final_b / "user_table.json").read_text())
    assert [sorted(map(str, h)) for h in table["histories"]] == [  # external item ids
        sorted(str(full.item_ids[i]) for i in full.matrix("train").items_of(u)) for u in range(full.num_users)]
    # resuming a finished stage reuses it: nothing is trained or written again
    weights = b / "run" / "user" / "final" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = run(*args_for(b), "--resume_from_checkpoint", "true")
    report = json.loads(next(line for line in again.stdout.splitlines() if line.startswith('{"stage"')))
    assert report["skipped"] is True and report["global_step"] == 9 and weights.stat().st_mtime_ns == mtime
    ma = run(ROOT / "training" / "evaluate.py", "--model", a / "run" / "user" / "final", "--ks", "5,10",
             "--output", a / "m.json")
    mb = run(ROOT / "training" / "evaluate.py", "--model", b / "run" / "user" / "final", "--ks", "5,10",
             "--output", b / "m.json")
    assert ma.returncode == mb.returncode == 0
    metrics_a, metrics_b = (json.loads((w / "m.json").read_text())["metrics"] for w in (a, b))
    metrics_a.pop("seconds"), metrics_b.pop("seconds")  # wall time, not a metric
    assert metrics_a == metrics_b
