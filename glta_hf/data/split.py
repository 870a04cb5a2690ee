"""Split and filtering policies, on plain index arrays so every loader and every model share one implementation.

* :func:`random_split` -- seeded per-user ratio split. A user with ``n >= 2`` interactions gets
  ``clip(round(n * test_fraction), 1, n - 1)`` test items, so keeps at least one train and one test item.
  A user with a single interaction keeps it in train and has no test item (the evaluator skips users without
  test items; the user still gets an embedding). The random keys are drawn in (user, item) order, so the split
  depends only on the set of pairs and the seed, never on the file's row order.
* :func:`leave_one_out` -- the latest interaction of each user with ``n >= 2`` goes to test (by timestamp, ties
  by source order; or by sequence position for time-ordered sources; or seeded random when there is no time).
  Single-interaction users stay in train as above.
* :func:`kcore_mask` -- iterative k-core: drop users / items below their minimum until none is left to drop.
* :func:`threshold_mask` -- implicit feedback from ratings: keep ratings ``>= threshold``.
* :func:`carve_validation` -- a per-user random validation split carved from train (never from test), with the
  same per-user rule as :func:`random_split`, so no user's train is emptied.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from ..errors import DatasetOptionError

logger = logging.getLogger(__name__)


def check_fraction(fraction, what: str) -> float:
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise DatasetOptionError(f"{what} must be a number in (0, 1), got {fraction!r}") from None
    if not 0.0 < value < 1.0:
        raise DatasetOptionError(f"{what} must be in (0, 1), got {fraction!r}")
    return value


def _holdout_counts(group_sizes: np.ndarray, fraction: float) -> np.ndarray:
    """Per group: ``clip(round(n * fraction), 1, n - 1)`` for ``n >= 2``, else 0 (round half up)."""
    counts = np.floor(group_sizes * fraction + 0.5).astype(np.int64)
    counts = np.minimum(np.maximum(counts, 1), group_sizes - 1)
    return np.where(group_sizes >= 2, counts, 0)


def _first_k_per_user(users: np.ndarray, keys: np.ndarray, k_of_user: np.ndarray) -> np.ndarray:
    """Mask of the rows with the ``k_of_user[u]`` smallest ``keys`` within each user ``u``."""
    order = np.lexsort((keys, users))
    sorted_users = users[order]
    starts = np.searchsorted(sorted_users, sorted_users, side="left")
    rank = np.arange(len(order)) - starts
    mask = np.zeros(len(users), dtype=bool)
    mask[order] = rank < k_of_user[sorted_users]
    return mask


def _canonical_keys(users: np.ndarray, items: np.ndarray, seed: int) -> np.ndarray:
    """Uniform random keys drawn in (user, item) order: independent of the input's row order."""
    order = np.lexsort((items, users))
    keys = np.empty(len(users), dtype=np.float64)
    keys[order] = np.random.default_rng(seed).random(len(users))
    return keys


def random_split(users, items, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean test mask of a seeded per-user random ratio split (see the module docstring)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    fraction = check_fraction(test_fraction, "test_fraction")
    if len(users) == 0:
        return np.zeros(0, dtype=bool)
    sizes = np.bincount(users)
    return _first_k_per_user(users, _canonical_keys(users, items, int(seed)), _holdout_counts(sizes, fraction))


def leave_one_out(users, items, time_key: Optional[np.ndarray] = None, seed: int = 0) -> np.ndarray:
    """Boolean test mask: each user's latest interaction (largest ``time_key``; random when ``None``)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if len(users) == 0:
        return np.zeros(0, dtype=bool)
    if time_key is None:
        keys = _canonical_keys(users, items, int(seed))
    else:
        keys = -np.asarray(time_key, dtype=np.float64)  # latest first; pass a rank to break timestamp ties
    sizes = np.bincount(users)
    return _first_k_per_user(users, keys, np.where(sizes >= 2, 1, 0))


def kcore_mask(users, items, min_user: int = 0, min_item: int = 0) -> np.ndarray:
    """Rows kept by the iterative k-core: every kept user has >= min_user rows and every kept item >= min_item."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    keep = np.ones(len(users), dtype=bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        new_keep = keep & (user_counts[users] >= min_user) & (item_counts[items] >= min_item)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


def threshold_mask(ratings, threshold: Optional[float]) -> np.ndarray:
    """Rows whose rating is >= threshold (all rows when threshold is None)."""
    ratings = np.asarray(ratings, dtype=np.float64)
    if threshold is None:
        return np.ones(len(ratings), dtype=bool)
    return ratings >= float(threshold)


def carve_validation(data, fraction: float = 0.1, seed: int = 0):
    """A copy of ``data`` whose train is split per user into train and ``"validation"`` (test is untouched);
    the per-user rule is :func:`random_split`'s. Same as ``data.with_validation(fraction, seed)``."""
    return data.with_validation(fraction=fraction, seed=seed)
