"""Split policies: reproducibility, disjointness, every user kept, leave-one-out by time, k-core, validation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glta_hf.data import load_dataset
from glta_hf.errors import DatasetOptionError
from glta_hf.data.examples import write_example
from glta_hf.data.split import carve_validation, kcore_mask, leave_one_out, random_split, threshold_mask

# random interaction sets: up to 12 users x 15 items, unique pairs
pair_sets = st.sets(st.tuples(st.integers(0, 11), st.integers(0, 14)), min_size=1, max_size=120).map(
    lambda s: tuple(np.array(a, dtype=np.int64) for a in zip(*sorted(s)))
)
fractions = st.floats(0.05, 0.95)


@settings(max_examples=60, deadline=None)
@given(pair_sets, fractions, st.integers(0, 2**31))
def test_random_split_keeps_every_user_in_train_and_is_reproducible(pairs, fraction, seed):
    users, items = pairs
    test = random_split(users, items, fraction, seed)
    assert np.array_equal(test, random_split(users, items, fraction, seed))
    sizes = np.bincount(users)
    for user in np.unique(users):
        n, n_test = sizes[user], int(test[users == user].sum())
        if n == 1:
            assert n_test == 0  # single interaction: train only
        else:
            assert 1 <= n_test <= n - 1
            assert n_test == min(max(int(np.floor(n * fraction + 0.5)), 1), n - 1)


@settings(max_examples=30, deadline=None)
@given(pair_sets, st.integers(0, 1000), st.randoms(use_true_random=False))
def test_random_split_does_not_depend_on_row_order(pairs, seed, rnd):
    users, items = pairs
    perm = np.array(rnd.sample(range(len(users)), len(users)), dtype=np.int64)
    test = random_split(users, items, 0.3, seed)
    test_perm = random_split(users[perm], items[perm], 0.3, seed)
    assert set(zip(users[test].tolist(), items[test].tolist())) == set(
        zip(users[perm][test_perm].tolist(), items[perm][test_perm].tolist()))


def test_random_split_changes_with_the_seed():
    users = np.repeat(np.arange(50), 10)
    items = np.tile(np.arange(10), 50)
    masks = {s: random_split(users, items, 0.2, s) for s in range(3)}
    assert all(m.sum() == 100 for m in masks.values())
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


@settings(max_examples=40, deadline=None)
@given(pair_sets, st.integers(0, 1000), st.integers(0, 1000))
def test_leave_one_out_holds_out_the_latest(pairs, seed, time_seed):
    users, items = pairs
    times = np.random.default_rng(time_seed).permutation(len(users))  # distinct times
    test = leave_one_out(users, items, times, seed)
    sizes = np.bincount(users)
    for user in np.unique(users):
        rows = users == user
        if sizes[user] == 1:
            assert not test[rows].any()
        else:
            assert test[rows].sum() == 1 and times[rows][test[rows]][0] == times[rows].max()
    random_loo = leave_one_out(users, items, None, seed)
    assert np.array_equal(random_loo, leave_one_out(users, items, None, seed))
    assert np.array_equal(np.bincount(users[random_loo], minlength=len(sizes)), (sizes >= 2).astype(int))


def _naive_kcore(pairs, min_user, min_item):
    pairs = set(pairs)
    while True:
        ucount, icount = {}, {}
        for u, i in pairs:
            ucount[u] = ucount.get(u, 0) + 1
            icount[i] = icount.get(i, 0) + 1
        kept = {(u, i) for u, i in pairs if ucount[u] >= min_user and icount[i] >= min_item}
        if kept == pairs:
            return kept
        pairs = kept


@settings(max_examples=60, deadline=None)
@given(pair_sets, st.integers(0, 5), st.integers(0, 5))
def test_kcore_is_the_iterated_core(pairs, min_user, min_item):
    users, items = pairs
    keep = kcore_mask(users, items, min_user, min_item)
    kept = set(zip(users[keep].tolist(), items[keep].tolist()))
    assert kept == _naive_kcore(zip(users.tolist(), items.tolist()), min_user, min_item)
    if kept:
        assert np.bincount(users[keep])[np.unique(users[keep])].min() >= min_user
        assert np.bincount(items[keep])[np.unique(items[keep])].min() >= min_item


def test_threshold_mask():
    assert threshold_mask([1, 3.5, 4, 5], 4).tolist() == [False, False, True, True]
    assert threshold_mask([1, 2], None).all()


# on RecData -------------------------------------------------------------------------------------------------
def _pair_set(data, split):
    table = data.splits[split].with_format("arrow")[:]
    return set(zip(table.column("user_idx").to_pylist(), table.column("item_idx").to_pylist()))


@pytest.fixture(scope="module")
def ml100k_dir(tmp_path_factory):
    """A 60-user synthetic ml-100k folder: enough users for the ratio checks."""
    folder = write_example("ml-100k", tmp_path_factory.mktemp("ml100k"))
    rng = np.random.default_rng(7)
    lines = []
    for user in range(1, 61):
        n = int(rng.integers(1, 7))  # includes single-interaction users
        for k, item in enumerate(rng.choice(np.arange(1, 8), n, replace=False)):
            lines.append(f"{user}\t{item}\t{int(rng.integers(1, 6))}\t{1000 * user + int(rng.integers(0, 900))}\n")
    (folder / "u.data").write_text("".join(lines))
    return folder


@pytest.mark.parametrize("policy", ["random", "loo"])
def test_loaded_splits_are_reproducible_disjoint_and_keep_every_user(ml100k_dir, policy):
    first = load_dataset("ml-100k", ml100k_dir, split=policy, seed=3)
    second = load_dataset("ml-100k", ml100k_dir, split=policy, seed=3)
    for split in ("train", "test"):
        assert first.splits[split].to_dict() == second.splits[split].to_dict()
    train, test = _pair_set(first, "train"), _pair_set(first, "test")
    assert not train & test
    assert {u for u, _ in train} == set(range(first.num_users))  # every user has a train item
    assert first.num_users == 60
    if policy == "random":
        other = load_dataset("ml-100k", ml100k_dir, split=policy, seed=4)
        assert _pair_set(other, "test") != test


def test_carve_validation(ml100k_dir):
    data = load_dataset("ml-100k", ml100k_dir, split="random", seed=0)
    carved = data.with_validation(fraction=0.25, seed=1)
    assert set(carved.splits) == {"train", "validation", "test"}
    train, val = _pair_set(carved, "train"), _pair_set(carved, "validation")
    assert not train & val and train | val == _pair_set(data, "train")
    assert _pair_set(carved, "test") == _pair_set(data, "test")
    assert {u for u, _ in train} == {u for u, _ in _pair_set(data, "train")}  # no user's train emptied
    assert _pair_set(carve_validation(data, 0.25, 1), "validation") == val
    assert _pair_set(carve_validation(data, 0.25, 2), "validation") != val
    assert "validation 0.25 of train per user, seed 1" in carved.split_policy
    assert carved.matrix("validation").nnz == len(val)
    with pytest.raises(DatasetOptionError, match="already has a validation split"):
        carved.with_validation(0.1)
    with pytest.raises(DatasetOptionError, match=r"in \(0, 1\)"):
        data.with_validation(0.0)
