"""The one in-memory shape of a recommendation dataset.

Every loader returns a :class:`RecData`:

* ``splits`` -- a ``datasets.DatasetDict`` with ``"train"`` and ``"test"`` (and ``"validation"`` once
  :meth:`RecData.with_validation` carved one out of train). Columns: ``user_idx`` (int64), ``item_idx`` (int64),
  and ``timestamp`` (int64) / ``rating`` (float32) where the source has them. One row per (user, item) pair:
  interactions are implicit and deduplicated.
* ``items`` -- a ``datasets.Dataset`` with one row per catalogue item, row ``i`` is item index ``i``:
  ``item_idx`` (int64), ``item_id`` (str, the source's external id), ``title`` (str), ``text`` (str, the
  item description the prompts use; falls back to the title, then to the id, when the source has none).
* ``user_ids`` -- external user id of each user index.

Indices are dense: users ``0..num_users-1``, items ``0..num_items-1``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Sequence

import numpy as np

from ..errors import DatasetOptionError, UnknownIdError
from .split import check_fraction, random_split

logger = logging.getLogger("glta_hf.data")

TRAIN, VALIDATION, TEST = "train", "validation", "test"


@dataclasses.dataclass(frozen=True)
class UserItemMatrix:
    """Binary user-item interactions in CSR form (rows = users), the shape samplers and the evaluator need."""

    indptr: np.ndarray  # int64, (num_users + 1,)
    indices: np.ndarray  # int64, item indices, sorted within each row
    num_users: int
    num_items: int

    @classmethod
    def from_pairs(cls, users: Sequence[int], items: Sequence[int], num_users: int, num_items: int) -> "UserItemMatrix":
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        if len(users):
            keep = np.ones(len(users), dtype=bool)
            keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
            users, items = users[keep], items[keep]
        counts = np.bincount(users, minlength=num_users)
        indptr = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr=indptr, indices=items, num_users=num_users, num_items=num_items)

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    def items_of(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def row_lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def users_with_items(self) -> np.ndarray:
        return np.flatnonzero(self.row_lengths() > 0)

    def to_pairs(self):
        users = np.repeat(np.arange(self.num_users, dtype=np.int64), self.row_lengths())
        return users, self.indices.copy()

    def to_torch_csr(self):
        import torch

        values = torch.ones(self.nnz, dtype=torch.float32)
        return torch.sparse_csr_tensor(
            torch.from_numpy(self.indptr), torch.from_numpy(self.indices), values, size=(self.num_users, self.num_items)
        )


@dataclasses.dataclass
class RecData:
    """A dataset after id remapping, filtering and splitting (see the module docstring for the schema)."""

    name: str
    splits: "datasets.DatasetDict"  # noqa: F821
    items: "datasets.Dataset"  # noqa: F821
    user_ids: List[str]
    split_policy: str  # e.g. "fixed (CoLaKG)", "random 80/20 per user, seed 0", "leave-one-out (time-ordered)"
    source: Dict[str, str] = dataclasses.field(default_factory=dict)  # what was read (paths) / options
    #: the resolved loader options that made the split (``split``, ``test_fraction``, ``seed``, filters): passed
    #: back to ``load_dataset`` they rebuild the same split (run records store them)
    split_options: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def item_ids(self) -> List[str]:
        return list(self.items["item_id"])

    @property
    def item_texts(self) -> List[str]:
        return list(self.items["text"])

    @property
    def item_titles(self) -> List[str]:
        return list(self.items["title"])

    def matrix(self, split: str = TRAIN) -> UserItemMatrix:
        """The split's interactions as a CSR matrix (cached)."""
        cache = self.__dict__.setdefault("_matrix_cache", {})
        if split not in cache:
            columns = self.columns(split, "user_idx", "item_idx")
            cache[split] = UserItemMatrix.from_pairs(columns["user_idx"], columns["item_idx"], self.num_users, self.num_items)
        return cache[split]

    def columns(self, split: str, *names: str) -> Dict[str, np.ndarray]:
        """The named columns of a split as numpy arrays, read through Arrow.

        datasets>=4 returns a lazy Column for ``ds["col"]``, which numpy converts row by row (~40 s on ml-1m).
        """
        table = self.splits[split].with_format("arrow")[:]
        return {name: table.column(name).to_numpy() for name in names}

    def user_index(self, external_id) -> int:
        return self._index("user", self.user_ids, external_id)

    def item_index(self, external_id) -> int:
        return self._index("item", self.item_ids, external_id)

    def _index(self, kind: str, ids, external_id) -> int:
        """Internal index of an external id; the lookup table is built once per dataset and kind."""
        lookup = self.__dict__.get(f"_{kind}_lookup")
        if lookup is None:
            lookup = self.__dict__[f"_{kind}_lookup"] = {x: i for i, x in enumerate(ids)}
        try:
            return lookup[str(external_id)]
        except KeyError:
            raise UnknownIdError(f"dataset {self.name!r} has no {kind} with id {external_id!r}") from None

    def with_validation(self, fraction: float = 0.1, seed: int = 0) -> "RecData":
        """A copy whose train is split per user into train and ``"validation"`` (never out of test), with
        :func:`~glta_hf.data.split.random_split`'s per-user rule, so no user's train is emptied."""
        import datasets  # heavy; imported when a split is built
        import pyarrow as pa

        fraction = check_fraction(fraction, "validation fraction")
        if VALIDATION in self.splits:
            raise DatasetOptionError(f"dataset {self.name!r} already has a validation split")
        table = self.splits[TRAIN].with_format("arrow")[:]
        users = table.column("user_idx").to_numpy()
        items = table.column("item_idx").to_numpy()
        is_val = random_split(users, items, fraction, seed)
        if not is_val.any():
            raise DatasetOptionError(
                f"dataset {self.name!r}: no user has 2+ train interactions, so no validation split can be carved"
            )
        splits = datasets.DatasetDict({
            TRAIN: arrow_dataset(table.filter(pa.array(~is_val))),
            VALIDATION: arrow_dataset(table.filter(pa.array(is_val))),
            TEST: self.splits[TEST],
        })
        logger.info("%s: carved %d validation interactions from %d train (fraction %s, seed %s)",
                    self.name, int(is_val.sum()), len(is_val), fraction, seed)
        source = dict(self.source, validation=f"random {fraction:g} of train per user, seed {seed}")
        return dataclasses.replace(
            self, splits=splits, source=source,
            split_policy=f"{self.split_policy}; validation {fraction:g} of train per user, seed {seed}")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"RecData({self.name!r}, users={self.num_users}, items={self.num_items}, {sizes}, split={self.split_policy!r})"


def arrow_dataset(table) -> "datasets.Dataset":  # noqa: F821
    """An in-memory Dataset with a random fingerprint: hashing an 800k-row table costs more than building it."""
    import datasets
    from datasets.fingerprint import generate_random_fingerprint

    return datasets.Dataset(table, fingerprint=generate_random_fingerprint())
