"""The RecBole-free parts of benchmarks/reference/recbole_lightgcn.py: the split it hands RecBole is ours, RecBole's
ids map back to our indices, and our evaluator masks what the graph rows mask. RecBole itself is not installed in
the project's environment (the script runs in its own venv), so training is not tested here."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script
import torch

from _tiny_data import write_tiny_movielens


def _script():
    return load_script("benchmarks/reference/recbole_lightgcn.py")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from glta_hf.alignment_data import prepare_data

    folder = write_tiny_movielens(tmp_path_factory.mktemp("ml"), num_users=12, num_items=40, per_user=8)
    return prepare_data("ml-latest-small", folder, val_fraction=0.1, val_seed=0)


def _read_pairs(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "user_id:token\titem_id:token"
    return sorted(tuple(int(x) for x in line.split("\t")) for line in lines[1:])


def test_atomic_files_hold_our_split_with_our_indices(tmp_path, split):
    script = _script()
    data, full = split
    out = script.write_atomic_files(data, tmp_path, name="d")
    for suffix, ours in (("train", data.matrix("train")), ("valid", data.matrix("validation")),
                         ("test", full.matrix("test"))):
        users, items = ours.to_pairs()
        assert _read_pairs(out / f"d.{suffix}.inter") == sorted(zip(users.tolist(), items.tolist())), suffix
    # the fit file is train minus the carve: with the carve it is every training interaction of ``full``
    fit = set(_read_pairs(out / "d.train.inter"))
    valid = set(_read_pairs(out / "d.valid.inter"))
    assert valid and not fit & valid
    assert fit | valid == set(zip(*(a.tolist() for a in full.matrix("train").to_pairs())))
    assert (out / "d.user").read_text().split() == ["user_id:token"] + [str(u) for u in range(data.num_users)]
    assert (out / "d.item").read_text().split() == ["item_id:token"] + [str(i) for i in range(data.num_items)]


def test_atomic_files_need_the_validation_carve(tmp_path, split):
    with pytest.raises(ValueError, match="validation"):
        _script().write_atomic_files(split[1], tmp_path)


def test_recbole_ids_map_back_to_our_order():
    script = _script()
    token2id = {"[PAD]": 0, "2": 1, "0": 2, "1": 3}  # RecBole numbers tokens in its own order, 0 = padding
    assert script.our_order(token2id, 3, "user") == [2, 3, 1]
    with pytest.raises(ValueError, match="item token .* \\[3\\]"):
        script.our_order(token2id, 4, "item")


def test_our_evaluator_masks_the_fit_at_validation_and_every_training_item_at_test(split):
    script = _script()
    data, full = split
    users, items = data.num_users, data.num_items
    # every user's scores: its validation items highest, then its test items, then its fit items, the rest 0
    scores = torch.zeros(users, items)
    for matrix, value in ((data.matrix("validation"), 3.0), (full.matrix("test"), 2.0), (data.matrix("train"), 1.0)):
        u, i = matrix.to_pairs()
        scores[torch.from_numpy(u), torch.from_numpy(i)] = value
    # user table = the score rows, item table = identity: user_table @ item_table.T == scores
    metrics = script.evaluate_ours(scores, torch.eye(items), data, full)
    # validation: fit masked, validation items ranked first -> every validation item is found
    assert metrics["valid"]["recall@20"] == pytest.approx(1.0)
    # test: fit + validation masked, so the test items come first
    assert metrics["test"]["recall@20"] == pytest.approx(1.0)
    assert metrics["test"]["ndcg@5"] == pytest.approx(1.0)
    # masking only the fit at test would let the validation items in first
    leaky = script.evaluate_ours(scores, torch.eye(items), data, data)  # data's train = the fit only
    assert leaky["test"]["ndcg@5"] < 0.9
