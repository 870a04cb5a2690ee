"""The evaluator against hand-computed cases and a slow pure-Python reference (property tests)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glta_hf.data.schema import UserItemMatrix
from glta_hf.metrics import evaluate, metric_names


def matrix(rows, num_items):
    users = [u for u, items in enumerate(rows) for _ in items]
    items = [i for row in rows for i in row]
    return UserItemMatrix.from_pairs(users, items, len(rows), num_items)


def fixed_scorer(table):
    table = torch.as_tensor(table, dtype=torch.float32)
    return lambda users: table[users]


def log2(x):
    return math.log2(x)


def test_hand_computed_single_user():
    # items 0..5; train {0}; test {2, 4}; scores rank 0 > 1 > 2 > 3 > 4 > 5 -> after masking 0: [1, 2, 3, 4, 5]
    train, test = matrix([[0]], 6), matrix([[2, 4]], 6)
    out = evaluate(train=train, test=test, scorer=fixed_scorer([[6, 5, 4, 3, 2, 1]]), ks=(1, 2, 5))
    assert out["num_users"] == 1
    assert out["precision@1"] == 0 and out["hit_rate@1"] == 0
    assert out["precision@2"] == pytest.approx(0.5)
    assert out["recall@2"] == pytest.approx(0.5)
    # hits at ranks 2 and 4; IDCG over min(k, |test|) = 2 relevant items
    idcg2 = 1 + 1 / log2(3)
    assert out["ndcg@2"] == pytest.approx((1 / log2(3)) / idcg2)
    assert out["ndcg@5"] == pytest.approx((1 / log2(3) + 1 / log2(5)) / idcg2)
    assert out["recall@5"] == pytest.approx(1.0) and out["precision@5"] == pytest.approx(0.4)
    assert out["hit_rate@2"] == 1.0


def test_idcg_uses_min_k_and_test_size():
    # one test item ranked first: NDCG must be 1 at every k (IDCG over min(k, 1) = 1 item, not k)
    train, test = matrix([[]], 30), matrix([[7]], 30)
    scores = torch.zeros(1, 30)
    scores[0, 7] = 1.0
    out = evaluate(train=train, test=test, scorer=fixed_scorer(scores))
    for k in (5, 10, 20):
        assert out[f"ndcg@{k}"] == pytest.approx(1.0)
        assert out[f"precision@{k}"] == pytest.approx(1 / k)
        assert out[f"recall@{k}"] == pytest.approx(1.0)


def test_fewer_test_items_than_k_and_many():
    # user 0: 3 test items all at the top -> ndcg@5 = 1, recall@5 = 1, precision@5 = 3/5
    # user 1: 6 test items, top-5 all hits -> ndcg@5 = 1, recall@5 = 5/6
    train = matrix([[], []], 10)
    test = matrix([[0, 1, 2], [0, 1, 2, 3, 4, 5]], 10)
    scores = torch.arange(10, 0, -1, dtype=torch.float32).expand(2, -1)
    out = evaluate(train=train, test=test, scorer=fixed_scorer(scores), ks=(5,))
    assert out["ndcg@5"] == pytest.approx(1.0)
    assert out["recall@5"] == pytest.approx((1 + 5 / 6) / 2)
    assert out["precision@5"] == pytest.approx((3 / 5 + 1) / 2)


def test_train_items_are_masked():
    # the best-scored item is a train item that is also (wrongly) in test: it must never count as a hit
    train, test = matrix([[0]], 4), matrix([[0, 3]], 4)
    out = evaluate(train=train, test=test, scorer=fixed_scorer([[9, 1, 2, 3]]), ks=(1,))
    assert out["precision@1"] == 1.0  # rank 1 after masking is item 3
    out = evaluate(train=train, test=test, scorer=fixed_scorer([[9, 3, 2, 1]]), ks=(1, 4))
    assert out["precision@1"] == 0.0
    assert out["recall@4"] == pytest.approx(0.5)  # item 0 is masked even with k = catalogue size


def test_users_without_test_items_are_skipped():
    train, test = matrix([[1], [2], []], 5), matrix([[0], [], [4]], 5)
    out = evaluate(train=train, test=test, scorer=fixed_scorer(torch.arange(5.0).flip(0).expand(3, -1)), ks=(1,))
    assert out["num_users"] == 2
    assert out["precision@1"] == pytest.approx(0.5)  # user 0 hits item 0, user 2 ranks 0 first and misses
    only = evaluate(train=train, test=test, scorer=fixed_scorer(torch.arange(5.0).flip(0).expand(3, -1)),
                    ks=(1,), users=[1, 2])
    assert only["num_users"] == 1 and only["precision@1"] == 0.0


def test_ranker_path_matches_scorer_and_validates():
    train, test = matrix([[0], [1]], 6), matrix([[2, 3], [0]], 6)
    scores = torch.tensor([[0, 5, 4, 3, 2, 1], [6, 0, 4, 3, 2, 1]], dtype=torch.float32)
    by_score = evaluate(train=train, test=test, scorer=fixed_scorer(scores), ks=(1, 3))

    def ranker(users, k):
        masked = scores[users].clone()
        for row, u in enumerate(users.tolist()):
            masked[row, torch.from_numpy(train.items_of(u))] = -math.inf
        return masked.topk(k).indices

    assert evaluate(train=train, test=test, ranker=ranker, ks=(1, 3)) == by_score
    with pytest.raises(ValueError, match="training item for user 0"):
        evaluate(train=train, test=test, ranker=lambda u, k: torch.tensor([[0, 2, 3], [0, 2, 3]]), ks=(3,))
    with pytest.raises(ValueError, match="duplicate item for user 1"):
        evaluate(train=train, test=test, ranker=lambda u, k: torch.tensor([[1, 2, 3], [0, 2, 2]]), ks=(3,))
    with pytest.raises(ValueError, match="exactly one"):
        evaluate(train=train, test=test)


def test_batching_does_not_change_results():
    rng = np.random.default_rng(0)
    rows_train = [sorted(rng.choice(40, 5, replace=False).tolist()) for _ in range(37)]
    rows_test = [sorted(set(rng.choice(40, 4, replace=False).tolist()) - set(r)) for r in rows_train]
    train, test = matrix(rows_train, 40), matrix(rows_test, 40)
    scorer = fixed_scorer(torch.from_numpy(rng.standard_normal((37, 40))))
    a = evaluate(train=train, test=test, scorer=scorer, batch_size=1024)
    b = evaluate(train=train, test=test, scorer=scorer, batch_size=5)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key])


def reference(train, test, scores, ks):
    """Slow pure-Python evaluator written straight from the protocol's definitions."""
    totals = {name: 0.0 for name in metric_names(ks)}
    users = [u for u in range(test.num_users) if len(test.items_of(u))]
    for u in users:
        seen = set(train.items_of(u).tolist())
        relevant = set(test.items_of(u).tolist())
        row = scores[u].tolist()
        ranked = sorted((i for i in range(len(row)) if i not in seen), key=lambda i: -row[i])
        for k in ks:
            gains = [1.0 if i in relevant else 0.0 for i in ranked[:k]]
            hits = sum(gains)
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(relevant))))
            totals[f"precision@{k}"] += hits / k
            totals[f"recall@{k}"] += hits / len(relevant)
            totals[f"ndcg@{k}"] += sum(g / math.log2(r + 2) for r, g in enumerate(gains)) / idcg
            totals[f"hit_rate@{k}"] += float(hits > 0)
    return {name: value / len(users) if users else 0.0 for name, value in totals.items()}, len(users)


@st.composite
def random_case(draw):
    num_users = draw(st.integers(1, 6))
    num_items = draw(st.integers(1, 12))
    cells = st.lists(st.integers(0, num_items - 1), max_size=num_items, unique=True)
    train_rows = [draw(cells) for _ in range(num_users)]
    test_rows = [[i for i in draw(cells) if i not in set(tr)] for tr in train_rows]
    # distinct scores so the ranking (and hence every metric) is unambiguous
    perm = draw(st.permutations(list(range(num_users * num_items))))
    scores = torch.tensor(perm, dtype=torch.float32).reshape(num_users, num_items)
    ks = tuple(sorted(draw(st.sets(st.integers(1, 15), min_size=1, max_size=3))))
    return matrix(train_rows, num_items), matrix(test_rows, num_items), scores, ks


@settings(max_examples=150, deadline=None)
@given(random_case())
def test_property_matches_reference_and_is_bounded(case):
    train, test, scores, ks = case
    fast = evaluate(train=train, test=test, scorer=fixed_scorer(scores), ks=ks, batch_size=2)
    slow, num_users = reference(train, test, scores, ks)
    assert fast["num_users"] == num_users == int((test.row_lengths() > 0).sum())
    for key in metric_names(ks):
        assert 0.0 <= fast[key] <= 1.0 + 1e-12
        assert fast[key] == pytest.approx(slow[key], abs=1e-9), key
