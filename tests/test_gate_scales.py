"""Gate scales of a graph residual model (``evaluate.py --gate-scales`` / ``--gate-scale``): logits ``gate * s * head
+ scale * e_u . E_i`` from one LLM pass per batch. Scale 1 is the learned model exactly, scale 0 the graph alone."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny

from glta_hf.decoding import ArgumentError, check_gate_scales, decoder_names

ROOT = Path(__file__).resolve().parents[1]
GATE = 20.0


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.fixture
def residual(tmp_path):
    tiny = build_tiny(tmp_path, head="factorized", graph_residual=True)
    with torch.no_grad():
        tiny.model.graph_residual.scale.fill_(0.7)
        tiny.model.graph_residual.gate.fill_(GATE)  # large: the head's small initial logits reorder the lists
    return tiny


@pytest.mark.parametrize("decoding", decoder_names())
@pytest.mark.parametrize("chunk", [None, 5])
def test_every_scale_is_the_model_with_its_gate_multiplied(residual, decoding, chunk):
    model, batch = residual.model, _inputs(residual.batch(users=(0, 3)))
    model.config.rank_chunk_size = chunk
    seen = [[1, 2], [4]]
    got = model.rank_gate_scales(**batch, gate_scales=(0, 1, 2.5), k=3, seen=seen, decoding=decoding)
    items, scores = model.rank(**batch, k=3, seen=seen, decoding=decoding)
    assert torch.equal(got[1][0], items) and torch.equal(got[1][1], scores)  # scale 1: the learned model, bit for bit
    with torch.no_grad():
        if decoding != "autoregressive":  # and the lists its forward's logits give
            blocked = torch.zeros(2, 12, dtype=torch.bool)
            blocked[0, [1, 2]] = blocked[1, 4] = True
            assert torch.equal(model.rank_from_logits(model(**batch).logits, 3, blocked, decoding)[0], items)
    with torch.no_grad():
        model.graph_residual.gate.fill_(GATE * 2.5)
    items, scores = model.rank(**batch, k=3, seen=seen, decoding=decoding)
    assert torch.equal(got[2][0], items)
    torch.testing.assert_close(got[2][1], scores, atol=1e-5, rtol=1e-5)
    # scale 0: the graph term alone, the training items excluded
    graph = residual.user_embeddings[[0, 3]] @ residual.item_embeddings.T
    for row, items_seen in enumerate(seen):
        graph[row, items_seen] = float("-inf")
    want = graph.topk(3).indices
    assert got[0][0].tolist() == want.tolist()
    assert not torch.equal(got[1][0], got[0][0])  # the gate matters here, so the comparisons above can fail


def test_the_sweep_runs_the_llm_once_per_batch(residual, monkeypatch):
    model, batch = residual.model, _inputs(residual.batch())
    calls = []
    forward = model.model.slot_hidden_states
    monkeypatch.setattr(model.model, "slot_hidden_states", lambda *a, **kw: calls.append(1) or forward(*a, **kw))
    model.rank_gate_scales(**batch, gate_scales=(0, 0.5, 1, 2, 3), k=3)
    assert len(calls) == 1


def test_scale_zero_uses_the_refit_tables(residual):
    model, batch = residual.model, _inputs(residual.batch(users=(1, 4), histories=((2,), (5, 6)), targets=((), ())))
    gen = torch.Generator().manual_seed(7)
    users, items = torch.randn(6, 8, generator=gen), torch.randn(12, 8, generator=gen)
    model.set_residual_tables(users, items)
    got = model.rank_gate_scales(**batch, gate_scales=(0,), k=4, seen=[[2], [5, 6]], decoding="first_k")[0][0]
    graph = users[[1, 4]] @ items.T
    graph[0, 2] = graph[1, 5] = graph[1, 6] = float("-inf")
    assert got.tolist() == graph.topk(4).indices.tolist()


@pytest.mark.parametrize("bad, message", [
    ((), "at least one"), ((1, -0.5), ">= 0"), ((float("nan"),), ">= 0"), ((float("inf"),), ">= 0"),
    ((1, 1.0), "repeated"), ("0,1", "sequence"), ((True,), ">= 0"), (0.5, "sequence"),
])
def test_a_bad_scale_list_is_refused_by_name(bad, message):
    with pytest.raises(ArgumentError, match=f"gate_scales.*{message}"):
        check_gate_scales(bad)


def test_a_model_without_a_gate_refuses_gate_scales(tmp_path):
    plain = build_tiny(tmp_path / "plain").model
    ungated = build_tiny(tmp_path / "ungated", graph_residual=True, residual_gate=False).model
    for model, why in ((plain, "graph_residual=False"), (ungated, "residual_gate=False")):
        with pytest.raises(ArgumentError, match=f"gate_scales: .*has none.*{why}"):
            model.rank_gate_scales(**_inputs(build_tiny(tmp_path / "b").batch()), gate_scales=(0, 1), k=3)
        with pytest.raises(ArgumentError, match="gate_scales"):
            model.gate_scale_ranker((1,))
    assert check_gate_scales([0, 0.5, np.float32(2)]) == (0.0, 0.5, 2.0)


# ----------------------------------------------------------------------------------------------- evaluation


L = 5


@pytest.fixture
def saved(tmp_path):
    """A tiny residual model over a tiny dataset, saved, with refit tables of its own (stacking's refit)."""
    from _tiny_data import tiny_model_on_movielens

    model, data, _, folder, gen = tiny_model_on_movielens(tmp_path, graph_residual=True)
    assert model.config.num_slots == L
    refit = torch.randn(data.num_users, 8, generator=gen), torch.randn(data.num_items, 8, generator=gen)
    model.set_residual_tables(*refit)
    with torch.no_grad():
        model.graph_residual.scale.fill_(0.7)
        model.graph_residual.gate.fill_(3.0)  # large enough that the head's term reorders the graph's lists
    model.save_pretrained(tmp_path / "model")
    return model, data, refit, folder, tmp_path


def test_evaluation_per_scale_matches_the_ordinary_and_the_graph_evaluations(saved):
    from glta_hf.metrics import evaluate, evaluate_gate_scales, evaluate_model

    model, data, (users, items), _, _ = saved
    train, truth, ks = data.matrix("train"), data.matrix("validation"), (1, 3, L)
    per_scale = evaluate_gate_scales(model, train=train, truth=truth, gate_scales=(0, 1, 4), ks=ks, batch_size=3)
    assert list(per_scale) == [0.0, 1.0, 4.0]
    assert per_scale[1.0] == evaluate_model(model, train=train, truth=truth, ks=ks, batch_size=3)
    graph = evaluate(train=train, test=truth, scorer=lambda u: users[u] @ items.T, ks=ks)
    assert per_scale[0.0] == pytest.approx(graph, abs=1e-12)
    assert per_scale[0.0]["num_users"] > 5 and per_scale[4.0] != per_scale[0.0]


def _evaluate_script():
    sys.path.insert(0, str(ROOT / "training"))
    try:
        import evaluate as script
    finally:
        sys.path.remove(str(ROOT / "training"))
    return script


def test_the_script_records_every_scale_and_the_chosen_one(saved, monkeypatch):
    _, _, _, data_dir, tmp_path = saved
    script = _evaluate_script()
    monkeypatch.chdir(tmp_path)
    common = ["--model", "model", "--dataset", "ml-latest-small", "--data-dir", str(data_dir), "--split",
              "validation", "--ks", f"1,3,{L}", "--batch-size", "3", "--threads", "1"]
    assert script.main(common + ["--output", "plain.json"]) == 0
    assert script.main(common + ["--gate-scales", "0,1,4", "--prefix-cache"]) == 0
    sweep = json.loads(next((tmp_path / "glta-eval").glob("*_validation_gates.json")).read_text())
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert set(sweep["gate_scales"]) == {"0", "1", "4"}
    drop = lambda m: {k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
    assert sweep["gate_scales"]["1"] == drop(plain["metrics"])  # scale 1 (cached prefixes too) == the evaluation
    best = sweep["best_gate_scale"]
    assert best["by"] == "ndcg@5" and best["scale"] == sweep["gate_scale"]  # no @10 here: the largest cut-off
    assert best["ndcg@5"] == max(m["ndcg@5"] for m in sweep["gate_scales"].values())
    assert drop(sweep["metrics"]) == sweep["gate_scales"][f"{best['scale']:g}"]
    assert sweep["learned_gate"] == pytest.approx(3.0) and sweep["residual_scale"] == pytest.approx(0.7)
    # the chosen scale, evaluated alone: the same numbers, and the row says which scale
    assert script.main(common + ["--gate-scale", "4", "--output", "chosen.json", "--results-dir", "results"]) == 0
    chosen = json.loads((tmp_path / "chosen.json").read_text())
    assert chosen["gate_scale"] == 4.0 and drop(chosen["metrics"]) == sweep["gate_scales"]["4"]
    assert "gate_scales" not in chosen
    row = json.loads((tmp_path / "results" / "ml-latest-small" / "glta_gate4.json").read_text())
    assert row["config"]["gate_scale"] == 4.0 and row["config"]["learned_gate"] == pytest.approx(3.0)
    assert drop(row["metrics"]) == sweep["gate_scales"]["4"]


@pytest.mark.parametrize("flags, message", [
    (["--gate-scales", "0,-1"], "argument --gate-scales: must be comma-separated numbers >= 0"),
    (["--gate-scales", "0,x"], "argument --gate-scales: must be comma-separated numbers >= 0 such as 0,0.5,1,2 (not a"),
    (["--gate-scales", "1,1"], "repeated"),
    (["--gate-scales", "0,1", "--gate-scale", "1"], "argument --gate-scale: not allowed with --gate-scales"),
    (["--gate-scales", "0,1", "--decoding", "all"], "argument --gate-scales: not allowed with --decoding all"),
    (["--gate-scales", "0,1", "--results-dir", "out"], "argument --gate-scales: not allowed with --results-dir"),
    (["--gate-scale", "-2"], "argument --gate-scale: must be a number >= 0"),
])
def test_bad_gate_flags_are_usage_errors(tmp_path, capsys, flags, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        _evaluate_script().parse_args(["--model", "m", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_model_without_a_gate_is_refused_before_it_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_tiny(tmp_path).model.save_pretrained(tmp_path / "plain")
    with pytest.raises(SystemExit) as exit_info:
        _evaluate_script().parse_args(["--model", "plain", "--gate-scales", "0,1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "argument --gate-scales: multiplies a graph residual's learned gate, and plain has none" in err
    assert "graph_residual=False" in err
