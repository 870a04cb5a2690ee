"""``glta benchmark``: the row runner on a tiny generated MovieLens with the tiny LLaMA (fast): results.json, the
Markdown tables, a PNG figure, the per-row result JSONs, and resume (a rerun skips finished rows)."""
import argparse
import json
import time

from _tiny_data import save_tiny_llama, write_tiny_movielens


def _args(tmp_path, llm_dir, rows):
    from glta_hf.benchmark import configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args([
        "--dataset", "ml-latest-small", "--data-dir", str(tmp_path / "data"), "--rows", rows, "--budget", "tiny",
        "--backbone", str(llm_dir), "--output-dir", str(tmp_path / "bench"), "--results-dir", str(tmp_path / "results"),
        "--figures-dir", str(tmp_path / "figures"), "--eval-users", "10", "--no-progress"])
    args.overrides = dict(graph_epochs=3, graph_dim=8, graph_batch_size=64, text_users=6, text_max_new_tokens=4,
                          text_batch_size=4, item_items=9, items_per_sample=3, train_users=12, epochs=1.0,
                          batch_size=4, max_history=3, num_slots=5, max_length=384)
    return args


def test_benchmark_rows_tables_figure_resume(tmp_path):
    import torch

    from glta_hf.benchmark import Benchmark, parse_rows
    from glta_hf.testing import tiny_llama

    torch.manual_seed(0)
    write_tiny_movielens(tmp_path / "data")
    llm_dir = save_tiny_llama(tmp_path / "tiny-llm")
    causal, tokenizer = tiny_llama()
    rows = "pop,mf,glta,glta_fl"
    lines = []
    t0 = time.perf_counter()
    Benchmark(_args(tmp_path, llm_dir, rows), llm=causal, tokenizer=tokenizer, echo=lines.append).run(parse_rows(rows))
    assert time.perf_counter() - t0 < 60

    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert set(results["rows"]) == {"pop", "mf", "glta", "glta_fl"}
    for row in ("pop", "mf", "glta", "glta_fl"):
        rec = json.loads((tmp_path / "results" / "ml-latest-small" / f"{row}.json").read_text())
        assert rec["metrics"]["num_users"] == 10  # every row on the same test users
        assert 0.0 <= rec["metrics"]["precision@5"] <= 1.0 and rec["config"]["fingerprint"]
        assert rec["hardware"]["cpu_cores"] >= 1 and rec["wall_time_s"] >= 0
    tables = (tmp_path / "bench" / "tables.md").read_text()
    assert "| model | P@5 | P@10 | N@5 | N@10 | R@10 | N@20 | wall time (s) | hardware |" in tables
    for label in ("| Pop |", "| MF-BPR |", "| GLTA |", "| FL |"):
        assert label in tables
    assert sum("s on " in line for line in lines) == 4  # a wall-time / hardware line per row
    png = tmp_path / "figures" / "fig4_ml-latest-small.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "figures" / "fig3_ml-latest-small.png").exists()  # GLTA alone: no ablation to compare

    # training/evaluate.py reads the benchmark checkpoint's split from its glta_run.json: no extra flags
    from test_quickstart import _script

    final = tmp_path / "bench" / "work" / "glta" / "user" / "final"
    assert _script("evaluate").main(["--model", str(final), "--ks", "5", "--output", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["num_users"] > 0

    # resume: nothing is retrained, the same numbers come back
    before = {r: (tmp_path / "results" / "ml-latest-small" / f"{r}.json").stat().st_mtime for r in ("pop", "glta")}
    lines2 = []
    Benchmark(_args(tmp_path, llm_dir, "pop,glta"), llm=causal, tokenizer=tokenizer, echo=lines2.append).run(
        parse_rows("pop,glta"))
    assert sum("skipped" in line for line in lines2) == 2
    after = {r: (tmp_path / "results" / "ml-latest-small" / f"{r}.json").stat().st_mtime for r in ("pop", "glta")}
    assert before == after

    # render-only: tables from the result files (even with another budget's fingerprint), a missing row is named
    args = _args(tmp_path, llm_dir, "pop,lightgcn,glta")
    args.render_only, args.output_dir = True, str(tmp_path / "render")
    lines3 = []
    Benchmark(args, echo=lines3.append).run(parse_rows("pop,lightgcn,glta"))
    assert any("lightgcn: no result file" in line for line in lines3)
    assert set(json.loads((tmp_path / "render" / "results.json").read_text())["rows"]) == {"pop", "glta"}
    assert "| GLTA |" in (tmp_path / "render" / "tables.md").read_text()
    assert before == {r: (tmp_path / "results" / "ml-latest-small" / f"{r}.json").stat().st_mtime
                      for r in ("pop", "glta")}


def test_benchmark_cli_help_and_unknown_row(capsys):
    import pytest

    from glta_hf.cli import main

    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    assert "--rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # a usage error, before anything loads
        main(["benchmark", "--rows", "nope"])
    assert exit_info.value.code == 2 and "argument --rows: unknown rows ['nope']" in capsys.readouterr().err


def test_benchmark_layout_and_prefix_cache_config_keys():
    import argparse

    from glta_hf.benchmark import _config, configure_parser, fingerprint

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    plain = parser.parse_args([])
    uncached = parser.parse_args(["--no-prefix-cache"])
    paper = parser.parse_args(["--layout", "paper"])
    assert _config(plain)["prefix_cache"] is True and _config(uncached)["prefix_cache"] is False
    assert _config(plain)["layout"] == "text_first" and _config(paper)["layout"] == "paper"
    # the cache is exact: it does not change a row's numbers, so not its fingerprint; the layout does
    assert fingerprint("glta", uncached, _config(uncached)) == fingerprint("glta", plain, _config(plain))
    assert fingerprint("glta", paper, _config(paper)) != fingerprint("glta", plain, _config(plain))
    # the evaluation batch (users per ranking forward) is a speed setting, not part of a row's identity
    big = parser.parse_args(["--eval-batch-size", "512"])
    assert _config(big)["eval_batch_size"] == 512 and _config(plain)["eval_batch_size"] == 8
    assert fingerprint("glta", big, _config(big)) == fingerprint("glta", plain, _config(plain))


def test_rows_keep_the_fingerprints_of_the_flat_config():
    """The options moved into the argument dataclasses (issue 26) under the names the flat quickstart config used, so
    a finished row's fingerprint (computed by the code before the move) still matches and it is not retrained.

    Re-pinned once for issue 23: GLTA rows carry ``GLTA_RECIPE`` (a row trained with the earlier mechanics is not
    today's model), and the text batch size left every key (it changes speed, not texts; its default moved 16 -> 32).
    Re-pinned again when the budgets took issue 23's training recipe (head_learning_rate 1e-2, mask_training_items,
    cosine lr, a 500-step title warm-up): set options enter the config, so a row trained without them is not reused
    as if it had them. The graph rows' keys moved too (a benchmark fingerprint hashes the whole config); no committed
    result file holds a benchmark fingerprint."""
    from glta_hf.benchmark import _config, configure_parser, fingerprint

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    for flags, glta, plus in (
            ([], "67de0e32b366a6d0", "a8b18f3cecf91cb3"),
            (["--budget", "large", "--batch-size", "32", "--eval-batch-size", "256", "--no-prefix-cache", "--dataset",
              "ml-1m", "--data-dir", "/tmp"], "a0de69a9793a2059", "2525c5dbc92d6a68"),
            (["--budget", "tiny", "--layout", "paper"], "685a72b8a996030e", "128afa3d3323cc94")):
        args = parser.parse_args(flags)
        assert (fingerprint("glta", args, _config(args)), fingerprint("lightgcn_plus", args, _config(args))) == (
            glta, plus), flags


def test_benchmark_graph_rows_use_the_benchmark_device(tmp_path):
    import argparse

    import torch

    from glta_hf.benchmark import Benchmark, configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    for flags, want in (([], "cuda" if torch.cuda.is_available() else "cpu"), (["--device", "cpu"], "cpu")):
        bench = Benchmark(parser.parse_args(flags + ["--output-dir", str(tmp_path)]), echo=lambda _line: None)
        assert bench.graph_args().device == want


def test_residual_row_trains_a_residual_model_and_keeps_other_fingerprints(tmp_path):
    import argparse

    from glta_hf.benchmark import GLTA_ROWS, VARIANT_OPTIONS, Benchmark, _config, configure_parser, fingerprint, parse_rows
    from glta_hf.testing import tiny_llama

    variant, flags, decoding = GLTA_ROWS["glta_residual"]
    assert VARIANT_OPTIONS[variant] == {"graph_residual": True} and decoding == "first_k"
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    plain = parser.parse_args([])
    cfg = _config(plain)
    assert cfg["graph_residual"] is False
    # rows written before the option existed keep their fingerprints (no graph_residual key when off)
    legacy = {k: v for k, v in cfg.items() if k != "graph_residual"}
    assert fingerprint("glta", plain, cfg) == fingerprint("glta", plain, legacy)

    write_tiny_movielens(tmp_path / "data")
    llm_dir = save_tiny_llama(tmp_path / "tiny-llm")
    causal, tokenizer = tiny_llama()
    args = _args(tmp_path, llm_dir, "glta_residual")
    bench = Benchmark(args, llm=causal, tokenizer=tokenizer, echo=lambda _line: None)
    bench.run(parse_rows("glta_residual"))
    model = bench._glta_models["residual"]
    assert model.config.graph_residual and model.graph_residual is not None


def test_wo_ua_keeps_the_mask_and_a_result_trained_without_it_is_not_reused(tmp_path, monkeypatch):
    """glta_wo_ua differs from glta in the user token alone (the mask finds each sample's user in the batch). The
    fingerprint holds the shared config, not a row's flags, so a result file whose recorded flags are not the row's
    (w/o UA trained with the mask off, as it once was) is retrained, not skipped."""
    from glta_hf.benchmark import GLTA_ROWS, Benchmark, parse_rows
    from glta_hf.io_utils import read_json, write_json

    assert GLTA_ROWS["glta_wo_ua"] == ("wo_ua", {"user_as_text": True}, "first_k")
    write_tiny_movielens(tmp_path / "data")
    trained = []

    def run_glta(self, row):
        trained.append(row)
        variant, flags, decoding = GLTA_ROWS[row]
        return {"precision@5": 0.1, "ndcg@10": 0.2}, {"variant": variant, "flags": flags, "decoding": decoding}

    monkeypatch.setattr(Benchmark, "run_glta", run_glta)
    path = tmp_path / "results" / "ml-latest-small" / "glta_wo_ua.json"
    for expected, line in ((["glta_wo_ua"], "s on "), ([], "skipped"), (["glta_wo_ua"], "retrained")):
        if line == "retrained":  # the file of a run with the mask off: the same fingerprint, other flags
            record = read_json(path)
            record["config"]["flags"] = {"user_as_text": True, "mask_training_items": False}
            write_json(path, record)
        trained.clear()
        lines = []
        Benchmark(_args(tmp_path, tmp_path / "no-llm", "glta_wo_ua"), echo=lines.append).run(parse_rows("glta_wo_ua"))
        assert trained == expected and any(line in echoed for echoed in lines), lines
    assert read_json(path)["config"]["flags"] == {"user_as_text": True}
