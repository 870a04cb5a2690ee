"""The GPU kit (benchmarks/gpu/): its dry run end to end on CPU, its time guard, the carrying split and the unpacking.

The dry run is the same script a lent GPU runs (texts, the GLTA rows through ``glta benchmark``, the performance
step, packing), with a tiny random LLaMA and two tiny datasets in a temporary root.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

import carry  # noqa: E402
import run_kit  # noqa: E402
import unpack  # noqa: E402

GPU_KEYS = ["gpu_name", "user_stage_tokens_per_s", "user_stage_mfu", "generation_tokens_per_s", "eval_users_per_s",
            "recommend_p50_ms_b1", "recommend_p50_ms_b64", "recommend_p95_ms_b1", "recommend_p95_ms_b64"]


def test_dry_run_end_to_end(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu/run_kit.py"), "--dry-run", "--out", str(out),
                           "--work", str(work), "--time-budget", "1200"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "kit_report.json").read_text())
    status = {s["step"]: s["status"] for s in report["steps"]}
    assert status["texts tiny-a,tiny-b"] == "done", (status, (out / "kit.log").read_text()[-3000:])
    for name in ("tiny-a", "tiny-b"):
        assert status[f"lightgcn check {name}"] == "done"
        assert status[f"rows {name} glta,glta_fl,glta_ar,glta_wo_pf,glta_wo_ia"] == "done", status
        assert status[f"tables {name}"] == "done"
    assert status["graph tiny-b (train the lightgcn row's tables)"] == "done"  # tiny-b had no committed tables
    assert status["graph tiny-b (re-score the lightgcn row)"] == "done"
    assert not any(step.startswith("graph tiny-a") for step in status)  # tiny-a's were "committed"
    assert status["perf"] == "done"
    assert sorted(os.listdir(out)) == ["kit.log", "kit_report.json", "kit_results.tar.gz"]  # <= 8 files back

    root = work / "root"
    gpu = json.loads((root / "benchmarks/results/performance/gpu.json").read_text())
    assert all(k in gpu["metrics"] for k in GPU_KEYS)
    assert gpu["metrics"]["user_stage_tokens_per_s"] > 0 and gpu["metrics"]["eval_users"] == 16
    assert gpu["metrics"]["llm_dtype"] == "torch.bfloat16"
    glta = json.loads((root / "benchmarks/results/tiny-a/glta.json").read_text())
    assert glta["command"].startswith("glta benchmark --dataset ml-latest-small")
    assert "--node-embeddings" in glta["command"] and glta["metrics"]["num_users"] == 16

    # resuming: texts complete, every row found with its fingerprint, so a second session starts nothing again
    cfg = json.loads((work / "kit_config.json").read_text())
    for dataset in cfg["datasets"]:
        assert run_kit.users_without_texts(cfg, dataset) == 0
        assert run_kit.rows_to_run(cfg, dataset, cfg["groups"][0][1]) == []

    # the archive holds the results, texts and figures, and unpacks into another root
    with tarfile.open(out / "kit_results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"benchmarks/results/performance/gpu.json", "benchmarks/results/tiny-b/glta_ar.json",
            "benchmarks/texts/tiny-a/texts.jsonl", "benchmarks/texts/tiny-a/texts.jsonl.meta.json",
            "benchmarks/figures/fig4_tiny-a.png", "run/tiny-b/tables.md", "benchmarks/results/tiny-b/lightgcn.json",
            "benchmarks/gpu/nodes/tiny-b-lightgcn/node_embeddings.safetensors"} <= names
    home = tmp_path / "home"
    written = unpack.unpack(out / "kit_results.tar.gz", home, commit="c0ffee")
    assert "benchmarks/results/tiny-a/glta_wo_ia.json" in written
    assert (home / "benchmarks/texts/tiny-b/texts.jsonl").read_bytes() == \
        (root / "benchmarks/texts/tiny-b/texts.jsonl").read_bytes()


def _tiny_kit(tmp_path, budget_s):
    cfg = {"work": str(tmp_path), "root": str(tmp_path), "datasets": []}
    return run_kit.Kit(cfg, tmp_path, budget_s, tmp_path / "kit.log")


def test_real_text_settings_are_those_of_the_committed_caches():
    """The kit extends the committed CPU caches (a cache of other settings is refused): every generation setting
    the kit would use for a real dataset equals the committed cache header's."""
    import argparse
    import dataclasses

    cfg = run_kit.real_config(argparse.Namespace(data_root=str(ROOT.parent / "shared" / "data"), datasets=None))
    checked = 0
    for dataset in cfg["datasets"]:
        folder = ROOT / "benchmarks" / "texts" / dataset["name"]
        headers = sorted(folder.glob("texts*.jsonl.meta.json"))
        if not headers:
            continue
        settings = dataclasses.asdict(run_kit.text_settings(cfg, dataset, 32))
        for header in headers:
            generation = json.loads(header.read_text())["generation"]
            differ = {k: (settings[k], v) for k, v in generation.items() if k in settings and settings[k] != v}
            assert not differ, (header.name, differ)
            checked += 1
    assert checked, "no committed cache of ml-1m / amazon-scientific to compare with"


def test_rows_tested_on_cpu_are_kept_and_stale_kit_rows_rerun(tmp_path):
    """A row benchmarks/quality/paper_rows.sh tested on CPU (no benchmark fingerprint) is never replaced by the kit;
    a kit row of other settings is."""
    import argparse

    cfg = run_kit.real_config(argparse.Namespace(data_root=str(ROOT.parent / "shared" / "data"), datasets=["ml-1m"]))
    cfg.update(root=str(tmp_path), work=str(tmp_path / "work"))
    results = tmp_path / "benchmarks" / "results" / "ml-1m"
    results.mkdir(parents=True)
    (results / "glta.json").write_text(json.dumps({"config": {"run": {"dataset": "ml-1m"}}, "metrics": {}}))
    (results / "glta_fl.json").write_text(json.dumps({"config": {"fingerprint": "0" * 16}, "metrics": {}}))
    assert run_kit.rows_to_run(cfg, cfg["datasets"][0], ["glta", "glta_fl", "glta_ar"]) == ["glta_fl", "glta_ar"]


def test_time_guard_stops_an_overrunning_step_and_does_not_start_one_that_cannot_fit(tmp_path):
    kit = _tiny_kit(tmp_path, run_kit.PACK_RESERVE_S + 2)
    t0 = time.monotonic()
    assert kit.run("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], minimum=0) == "cut"
    assert time.monotonic() - t0 < 30
    assert kit.run("big", [sys.executable, "-c", "print(1)"], minimum=600) == "not started"
    assert _tiny_kit(tmp_path, 600).run("ok", [sys.executable, "-c", "print(1)"], minimum=1) == "done"
    assert _tiny_kit(tmp_path, 600).run("bad", [sys.executable, "-c", "raise SystemExit(3)"], 1) == "failed"
    statuses = [s["status"] for s in kit.report]
    assert statuses[0].startswith("cut by the time guard") and statuses[1].startswith("not started")


@pytest.mark.parametrize("tree, parts", [(100, 2), (300, 3)])
def test_gguf_split_fits_every_call_and_joins_back(tmp_path, monkeypatch, tree, parts):
    kit_dir = tmp_path / ".kit"
    monkeypatch.setattr(carry, "ROOT", tmp_path)
    monkeypatch.setattr(carry, "KIT_DIR", kit_dir)
    monkeypatch.setattr(carry, "CALL1", kit_dir / "call1")
    monkeypatch.setattr(carry, "WHEEL_DIR", tmp_path / ".whl")
    monkeypatch.setattr(carry, "SHA_FILE", tmp_path / "smollm2.sha256")
    monkeypatch.setattr(carry, "LIMIT", 700)
    monkeypatch.setattr(carry, "MARGIN", 10)
    monkeypatch.setattr(carry, "tree_bytes", lambda: tree)
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "x-1-py3-none-any.whl").write_bytes(b"w" * 30)
    (kit_dir / "call1").mkdir(parents=True)
    (kit_dir / "call1" / "data.tar.gz").write_bytes(b"d" * 50)
    source = tmp_path / "model.gguf"
    source.write_bytes(os.urandom(1000))
    carry.split_gguf(source)
    carry.write_commit()  # tmp_path is no git checkout: COMMIT reads "unknown"
    dirs = carry.call_dirs()
    assert (dirs[-1] / "PARTS").read_text() == f"{parts}\n"
    assert len(dirs) == parts
    joined = b"".join((d / f"smollm2.part{i}").read_bytes() for i, d in enumerate(dirs, start=1))
    assert joined == source.read_bytes()
    assert carry.sizes(verbose=False)
    calls = carry.calls()
    assert [c["command"] for c in calls] == ["bash benchmarks/gpu/device_stage.sh"] * (parts - 1) + \
        ["bash benchmarks/gpu/device_run.sh"]
    assert calls[0]["carry"] == [".whl", ".kit/call1"] and calls[-1]["timeout_s"] <= 600
    if parts == 2:  # two calls: cut so that both keep the same slack
        first = carry.path_bytes(".whl") + sum(p.stat().st_size for p in dirs[0].iterdir())
        second = sum(p.stat().st_size for p in dirs[1].iterdir() if p.name.startswith("smollm2"))
        assert abs(first - second) <= 1


def _archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unpack_fills_the_commit_and_refuses_what_it_must_not_write(tmp_path):
    record = {"model": "glta", "commit": "unknown", "metrics": {}}
    lines = b"".join(json.dumps({"user_idx": u}).encode() + b"\n" for u in range(3))
    good = _archive(tmp_path / "good.tar.gz", {"benchmarks/results/d/glta.json": json.dumps(record).encode(),
                                                "benchmarks/texts/d/texts.jsonl": lines,
                                                "run/d/tables.md": b"| model |\n"})
    home = tmp_path / "home"
    assert unpack.unpack(good, home, commit="c0ffee") == ["benchmarks/results/d/glta.json",
                                                           "benchmarks/texts/d/texts.jsonl"]
    assert json.loads((home / "benchmarks/results/d/glta.json").read_text())["commit"] == "c0ffee"
    assert not (home / "run").exists()
    stale = dict(record, commit="078d02e-dirty")  # the device copy's .git: the session's first commit, not the run's
    unpack.unpack(_archive(tmp_path / "stale.tar.gz", {"benchmarks/results/d/glta.json": json.dumps(stale).encode()}),
                  home, commit="c0ffee")
    written = json.loads((home / "benchmarks/results/d/glta.json").read_text())
    assert (written["commit"], written["device_commit"]) == ("c0ffee", "078d02e-dirty")
    shrunk = _archive(tmp_path / "shrunk.tar.gz", {"benchmarks/texts/d/texts.jsonl": lines.split(b"\n")[0] + b"\n"})
    with pytest.raises(unpack.UnpackError, match="lacks 2 users"):
        unpack.unpack(shrunk, home)
    for bad in ("../escape.json", "glta_hf/modeling_glta.py"):
        with pytest.raises(unpack.UnpackError):
            unpack.unpack(_archive(tmp_path / "bad.tar.gz", {bad: b"x"}), home)
