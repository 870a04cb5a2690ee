"""Per-user metrics (``evaluate(return_per_user=True)``, ``evaluate.py --per-user``) and the paired bootstrap over users
(``glta_hf.metrics.paired_bootstrap``, ``benchmarks/quality/paired_compare.py``)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from glta_hf.data.schema import UserItemMatrix
from glta_hf.metrics import evaluate, metric_names, paired_bootstrap

ROOT = Path(__file__).resolve().parents[1]


def matrix(rows, num_items):
    users = [u for u, items in enumerate(rows) for _ in items]
    items = [i for row in rows for i in row]
    return UserItemMatrix.from_pairs(users, items, len(rows), num_items)


def test_per_user_values_average_to_the_metrics_in_the_users_order():
    rng = np.random.default_rng(0)
    rows = [list(rng.choice(30, size=6, replace=False)) for _ in range(9)]
    train, test = matrix([r[:3] for r in rows], 30), matrix([r[3:] if u != 4 else [] for u, r in enumerate(rows)], 30)
    scores = torch.from_numpy(rng.normal(size=(9, 30))).float()
    users = [7, 2, 4, 0, 5]  # user 4 has no test item: skipped, the order of the others kept
    plain = evaluate(train=train, test=test, scorer=lambda u: scores[u], ks=(1, 5), users=users, batch_size=2)
    metrics, per_user = evaluate(train=train, test=test, scorer=lambda u: scores[u], ks=(1, 5), users=users,
                                 batch_size=2, return_per_user=True)
    assert metrics == plain
    assert per_user["users"].tolist() == [7, 2, 0, 5]
    assert set(per_user) == {"users", *metric_names((1, 5))}
    for name in metric_names((1, 5)):
        assert len(per_user[name]) == 4
        assert per_user[name].mean() == pytest.approx(metrics[name], abs=1e-12)
    # one user alone scores what its entry says
    alone = evaluate(train=train, test=test, scorer=lambda u: scores[u], ks=(1, 5), users=[2])
    assert alone["ndcg@5"] == pytest.approx(per_user["ndcg@5"][1], abs=1e-12)


def test_paired_bootstrap_separates_a_steady_gain_from_noise():
    rng = np.random.default_rng(1)
    b = rng.random(2000)
    same = paired_bootstrap(b, b, resamples=200)
    assert same["ratio"] == 1.0 and same["ratio_low"] == pytest.approx(1.0) and same["ratio_high"] == pytest.approx(1.0)
    assert same["share_a_not_above_b"] == 1.0  # equal means: A is never above B
    better = paired_bootstrap(b + 0.01, b, resamples=200)  # small but on every user: certain when paired
    assert better["ratio_low"] > 1.0 and better["share_a_not_above_b"] == 0.0
    assert better["difference"] == pytest.approx(0.01) and better["difference_low"] == pytest.approx(0.01)
    noise = paired_bootstrap(rng.permutation(b), b, resamples=400, seed=3)  # same values, unpaired: no sure sign
    assert noise["ratio_low"] < 1.0 < noise["ratio_high"]
    assert 0.02 < noise["share_a_not_above_b"] < 0.98
    assert paired_bootstrap(b, b * 0.9, resamples=50, seed=3) == paired_bootstrap(b, b * 0.9, resamples=50, seed=3)


@pytest.mark.parametrize("a, b, kwargs, message", [
    ([1.0, 2.0], [1.0], {}, "of one length"),
    ([], [], {}, "no users"),
    ([1.0], [1.0], {"resamples": 0}, "resamples must be >= 1"),
    ([1.0], [1.0], {"confidence": 1.0}, "confidence in (0, 1)"),
])
def test_paired_bootstrap_refuses_bad_input(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        paired_bootstrap(np.asarray(a), np.asarray(b), **kwargs)


# ------------------------------------------------------------------------------- the scripts, on a tiny model


def _script(relative):
    from conftest import load_script

    return load_script(relative)


@pytest.fixture
def evaluated(tmp_path, monkeypatch):
    """A tiny model and its graph tables over a tiny dataset; the model evaluated on test with --per-user."""
    from _tiny_data import tiny_model_on_movielens

    from glta_hf.graph import save_node_embeddings

    model, data, full, folder, gen = tiny_model_on_movielens(tmp_path)
    model.save_pretrained(tmp_path / "model")
    tables = torch.randn(data.num_users, 8, generator=gen), torch.randn(data.num_items, 8, generator=gen)
    save_node_embeddings(tmp_path / "graph", *tables, list(data.user_ids), list(data.item_ids), {})
    monkeypatch.chdir(tmp_path)
    script = _script("training/evaluate.py")
    common = ["--model", "model", "--dataset", "ml-latest-small", "--data-dir", str(folder), "--split", "test",
              "--ks", "1,5", "--batch-size", "4", "--threads", "1"]
    assert script.main(common + ["--per-user", "--output", "a.json"]) == 0
    assert script.main(common + ["--output", "plain.json"]) == 0
    return tmp_path, folder, full


def test_evaluate_per_user_output_matches_its_metrics(evaluated):
    tmp_path, _, full = evaluated
    out = json.loads((tmp_path / "a.json").read_text())
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert out["per_user"]["users"] == out["users"] == plain["users"]  # every test user, in the output's order
    assert "per_user" not in plain
    for name in metric_names((1, 5)):
        assert np.mean(out["per_user"][name]) == pytest.approx(out["metrics"][name], abs=1e-6)
        assert out["metrics"][name] == plain["metrics"][name]
    assert out["metrics"]["num_users"] == len(out["per_user"]["users"]) == int((full.matrix("test").row_lengths()
                                                                                > 0).sum())


def test_paired_compare_against_itself_a_second_file_and_the_graph(evaluated, capsys):
    tmp_path, folder, full = evaluated
    compare = _script("benchmarks/quality/paired_compare.py")
    assert compare.main(["a.json", "a.json", "--metric", "ndcg@5", "--resamples", "100"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["ratio"] == 1.0 and same["users"] == 16 and same["metric"] == "ndcg@5"
    # B's users in another order are paired by id, not by position
    shuffled = json.loads((tmp_path / "a.json").read_text())
    order = list(reversed(range(len(shuffled["per_user"]["users"]))))
    shuffled["per_user"] = {k: [v[i] for i in order] for k, v in shuffled["per_user"].items()}
    (tmp_path / "b.json").write_text(json.dumps(shuffled))
    assert compare.main(["a.json", "b.json", "--metric", "ndcg@5", "--resamples", "100"]) == 0
    assert json.loads(capsys.readouterr().out)["difference"] == 0.0
    # the graph's own per-user values: its mean is the evaluator's metric of the graph on the same users
    assert compare.main(["a.json", "--graph", "graph", "--dataset", "ml-latest-small", "--data-dir", str(folder),
                         "--metric", "ndcg@5", "--resamples", "100", "--output", "cmp.json"]) == 0
    result = json.loads((tmp_path / "cmp.json").read_text())
    from glta_hf.graph import load_node_embeddings
    from glta_hf.metrics import evaluate_graph

    graph = evaluate_graph(load_node_embeddings(tmp_path / "graph"), full, ks=(5,))
    assert result["mean_b"] == pytest.approx(graph["ndcg@5"], abs=1e-12)
    assert result["mean_a"] == pytest.approx(json.loads((tmp_path / "a.json").read_text())["metrics"]["ndcg@5"],
                                             abs=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["plain.json", "a.json"], "plain.json: no per-user values; rerun training/evaluate.py with --per-user"),
    (["a.json", "a.json", "--metric", "ndcg@50"], "a.json: no per-user 'ndcg@50'"),
    (["a.json", "fewer.json", "--metric", "ndcg@5"], "rank different users (user"),
    (["a.json", "--graph", "graph", "--dataset", "ml-latest-small", "--data-dir", "ds", "--split", "loo",
      "--metric", "ndcg@5"],
     "the dataset flags give"),
])
def test_paired_compare_names_what_is_wrong(evaluated, argv, message):
    tmp_path, _, _ = evaluated
    fewer = json.loads((tmp_path / "a.json").read_text())
    fewer["per_user"] = {k: v[1:] for k, v in fewer["per_user"].items()}
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(".", r"\.")):
        _script("benchmarks/quality/paired_compare.py").main(argv)


def test_per_user_is_refused_with_a_gate_sweep(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        _script("training/evaluate.py").parse_args(["--model", "m", "--gate-scale", "1", "--per-user"])
    assert exit_info.value.code == 2
    assert "argument --per-user: not allowed with --gate-scale" in capsys.readouterr().err


def _gather_on_rank(rank, world, init_file, order, out_dir):
    import torch.distributed as dist

    from glta_hf.metrics import _all_gathered

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mine = order[rank::world]  # what evaluate_model's rank ranks
        truth = matrix([[0] for _ in range(int(order.max()) + 1)], 2)  # every user has a held-out item
        gathered = _all_gathered({"users": mine, "ndcg@10": mine * 0.5}, truth, order)
        np.save(Path(out_dir) / f"rank{rank}.npy", np.stack([gathered["users"], gathered["ndcg@10"]]))
    finally:
        dist.destroy_process_group()


def test_per_user_values_are_gathered_from_every_rank_in_the_single_process_order(tmp_path):
    import torch.multiprocessing as mp

    order = np.asarray([9, 3, 7, 1, 12, 5, 0], dtype=np.int64)  # not sorted: the order the caller gave
    mp.spawn(_gather_on_rank, args=(2, str(tmp_path / "init"), order, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        users, values = np.load(tmp_path / f"rank{rank}.npy")
        assert users.tolist() == order.tolist() and values.tolist() == (order * 0.5).tolist()
