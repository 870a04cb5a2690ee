"""Command lines: lazy imports, ``glta`` exit codes, and one shared flag validation for every argparse script
(issue 12 items 6 and 8, issue 13 items 2 and 8): a bad value is argparse's usage error, exit code 2, no traceback,
before any data or model is loaded."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")


def run(*args, timeout=120):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_package_and_cli_import_neither_torch_nor_transformers():
    code = ("import sys, glta_hf, glta_hf.cli, glta_hf.cli_args, glta_hf.run_record, glta_hf.data.stats; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'pandas') if m in sys.modules); "
            "print(heavy); assert not heavy")
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_auto_classes_register_when_the_model_classes_are_touched():
    code = """
import glta_hf
from transformers import AutoConfig, AutoModel
config = glta_hf.GLTAConfig(llm_hidden_size=8, num_users=2, num_items=3)
assert type(AutoConfig.for_model("glta", llm_hidden_size=8)) is glta_hf.GLTAConfig
assert AutoModel._model_mapping[glta_hf.GLTAConfig] is glta_hf.GLTAModel  # the base model, as LLaVA's
assert glta_hf.AutoModelForRecommendation._model_mapping[glta_hf.GLTAConfig] is glta_hf.GLTAForRecommendation
assert glta_hf.GLTAConfig._auto_class == "AutoConfig"
assert glta_hf.GLTAModel._auto_class == "AutoModel"
assert glta_hf.GLTAForRecommendation._auto_class == "AutoModelForRecommendation"
"""
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the library's own path (pipeline imports modeling_glta directly) registers too: save_pretrained writes remote code
    proc = run("-c", "from glta_hf.modeling_glta import GLTAForRecommendation as M; "
                     "assert M._auto_class == 'AutoModelForRecommendation'")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_glta_without_a_command_prints_help_and_exits_2():
    proc = run("-m", "glta_hf.cli")
    assert proc.returncode == 2
    assert "usage: glta" in proc.stderr and "quickstart" in proc.stderr and "benchmark" in proc.stderr


def test_glta_version_and_help():
    from glta_hf import __version__

    proc = run("-m", "glta_hf.cli", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"glta-hf {__version__}"
    proc = run("-m", "glta_hf.cli", "--help")
    assert proc.returncode == 0 and "data-stats" in proc.stdout
    proc = run("-m", "glta_hf.cli", "nosuch")
    assert proc.returncode == 2 and "invalid choice: 'nosuch'" in proc.stderr


BAD_FLAGS = [
    # (script / subcommand, arguments, the message argparse prints)
    (["-m", "glta_hf.cli", "data-stats"], ["--dataset", "ml-latest-small", "--split", "nosuch"], "argument --split"),
    (["-m", "glta_hf.cli", "data-stats"], ["--dataset", "ml-latest-small", "--test-fraction", "2"],
     "argument --test-fraction: must be a fraction in (0, 1)"),
    (["-m", "glta_hf.cli", "data-stats"], ["--dataset", "ml-1m"], "--data-dir is required for --dataset ml-1m"),
    (["-m", "glta_hf.cli", "data-stats"], ["--dataset", "ml-1m", "--data-dir", "/no/such/folder"], "no such folder"),
    (["training/pretrain_graph.py"], ["--dataset", "ml-latest-small", "--split", "nosuch"], "argument --split"),
    (["training/pretrain_graph.py"], ["--dataset", "ml-latest-small", "--batch-size", "0"],
     "argument --batch-size: must be a positive integer, got '0'"),
    (["training/pretrain_graph.py"], ["--dataset", "ml-latest-small", "--epochs", "-1"], "argument --epochs"),
    (["training/pretrain_graph.py"], ["--dataset", "ml-latest-small", "--val-fraction", "1.5"], "--val-fraction"),
    (["training/generate_texts.py"], ["--dataset", "ml-latest-small", "--output", "x.jsonl", "--split", "nosuch"],
     "argument --split"),
    (["training/generate_texts.py"], ["--dataset", "ml-latest-small", "--output", "x.jsonl", "--batch-size", "0"],
     "argument --batch-size: must be a positive integer"),
    (["training/generate_texts.py"], ["--dataset", "ml-latest-small", "--output", "x.jsonl", "--top-p", "0"],
     "argument --top-p"),
    (["training/generate_texts.py"], ["--dataset", "ml-latest-small", "--output", "x.jsonl", "--device", "gpu"],
     "argument --device: must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    (["training/pretrain_graph.py"], ["--dataset", "ml-latest-small", "--device", "cuda:x"], "argument --device"),
    (["training/evaluate.py"], ["--model", "tests", "--ks", "0"], "argument --ks: must be comma-separated positive"),
    (["training/evaluate.py"], ["--model", "tests", "--split", "nosuch"], "argument --split"),
    (["training/evaluate.py"], ["--model", "tests", "--batch-size", "0"], "argument --batch-size"),
    (["training/evaluate.py"], ["--model", "tests", "--decoding", "nosuch"], "argument --decoding"),
    (["training/evaluate.py"], ["--model", "no/such/model"], "argument --model: no/such/model: no such folder"),
    # issue 25: ranges, abbreviations, unwritable outputs and unresolvable LLMs, before any work
    (["-m", "glta_hf.cli", "benchmark"], ["--epochs", "-1"], "argument --num-train-epochs/--epochs: must be a number"),
    (["-m", "glta_hf.cli", "benchmark"], ["--eval-every", "0"], "argument --graph-eval-every/--eval-every"),
    (["-m", "glta_hf.cli", "benchmark"], ["--output-dir", "setup.cfg"], "setup.cfg: exists and is not a folder"),
    (["-m", "glta_hf.cli", "quickstart"], ["--threads", "-1"], "argument --threads: must be a positive integer"),
    (["-m", "glta_hf.cli", "quickstart"], ["--output-dir", "setup.cfg/run"], "setup.cfg is a file"),
    (["-m", "glta_hf.cli", "quickstart"], ["--backbone", "/no/such/llm"], "/no/such/llm: no such folder or file"),
    (["-m", "glta_hf.cli", "quickstart"], ["--learn", "0.1"], "unrecognized arguments: --learn"),
    (["training/align.py"], ["--hub_tok", "VAL"], "['--hub_tok', 'VAL']"),
    (["training/align.py"], ["--learning_rate", "-1"], "argument --learning_rate/--learning-rate"),
    (["training/evaluate.py"], ["--model", "tests", "--output", "setup.cfg/m.json"], "its folder cannot be written"),
    (["training/evaluate.py"], ["--model", "tests", "--llm", "/no/such/llm"], "argument --llm: /no/such/llm"),
    (["training/generate_texts.py"], ["--dataset", "ml-latest-small", "--output", "tests"], "is a folder"),
    (["training/pretrain_graph.py"], ["--dataset", "ml-latest-small", "--output-dir", "setup.cfg"],
     "argument --output-dir: setup.cfg: exists and is not a folder"),
]


@pytest.mark.parametrize("command, args, message", BAD_FLAGS, ids=[" ".join(c[-1:] + a) for c, a, _ in BAD_FLAGS])
def test_bad_flags_are_usage_errors_without_traceback(command, args, message):
    proc = run(*command, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr  # ONE line


def test_underscore_spellings_of_kebab_flags_are_accepted():
    from glta_hf.data.stats import configure_parser

    sys.path.insert(0, str(ROOT / "training"))
    try:
        import evaluate as evaluate_script
        import pretrain_graph
    finally:
        sys.path.remove(str(ROOT / "training"))
    args = pretrain_graph.build_parser().parse_args(
        ["--dataset", "ml-latest-small", "--batch_size", "16", "--split_seed=3", "--test_fraction", "0.25"])
    assert (args.batch_size, args.split_seed, args.test_fraction) == (16, 3, 0.25)
    assert pretrain_graph.parse_args(["--dataset", "ml-latest-small"]).data_dir is None  # bundled: no path needed
    args = evaluate_script.build_parser().parse_args(["--model", "m", "--ks", "5,10", "--max_users", "8"])
    assert args.ks == (5, 10) and args.max_users == 8

    from glta_hf.cli_args import GLTAArgumentParser

    parser = GLTAArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--dataset", "ml-latest-small", "--min_user_interactions", "5"])
    assert args.min_user_interactions == 5
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--dataset", "ml-latest-small", "--min_user_interactions", "-1"])
    assert exit_info.value.code == 2


def test_data_errors_after_parsing_are_one_line_not_a_traceback(tmp_path):
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu1\n")
    proc = run("-m", "glta_hf.cli", "data-stats", "--dataset", "generic", "--data-dir", tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("glta data-stats: error: ") and "interactions.csv:2:" in last


def test_cli_decodings_are_the_registry():
    """``--decoding`` accepts exactly the registered decoders (checked when the flag is given, so --help stays light)."""
    import argparse

    from glta_hf.cli_args import decoding_name
    from glta_hf.decoding import decoder_names

    assert all(decoding_name(name) == name for name in decoder_names())
    with pytest.raises(argparse.ArgumentTypeError, match="first_k, first_logit, autoregressive, all_slots"):
        decoding_name("beam")


def test_a_glta_error_from_a_value_type_is_the_usage_message(capsys):
    from glta_hf.cli_args import GLTAArgumentParser
    from glta_hf.errors import InvalidArgumentError

    def budget(text):
        if text != "small":
            raise InvalidArgumentError(f"unknown budget {text!r}; choose small")
        return text

    parser = GLTAArgumentParser(prog="probe")
    parser.add_argument("--budget", type=budget)
    assert parser.parse_args(["--budget", "small"]).budget == "small"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--budget", "huge"])
    assert exit_info.value.code == 2
    assert "probe: error: argument --budget: unknown budget 'huge'; choose small" in capsys.readouterr().err
