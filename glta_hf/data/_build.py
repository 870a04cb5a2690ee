"""The one builder every loader ends in: raw (user, item) rows + an item catalogue -> :class:`RecData`.

Loaders only parse; everything that shapes the dataset happens here, in this order, so every format behaves
the same:

1. **Deduplicate** repeated (user, item) pairs, keeping the latest (by timestamp, then source order; for a fixed
   split the train copy is kept). The count is logged.
2. **Rating threshold** (``rating_threshold``): keep ratings ``>= threshold``; ``None`` keeps all.
3. **k-core** (``min_user_interactions`` / ``min_item_interactions``), iterative.
4. For a fixed split, test rows of users left without any train row are dropped (logged): they have no history.
5. **Indices**: users and items without interactions are dropped (logged). Users get dense indices in the
   loader's user order (ml-1m: the given ``user_idx``) or in natural order of their ids (numerically when every
   id is a number). Items keep the catalogue's order; items that occur only in the interactions come after it,
   in natural order, with the fallback text ``"item <id>"`` (logged).
6. **Split**: ``fixed`` / ``random`` / ``loo`` (see :mod:`glta_hf.data.split`). An empty train or test is an error.
"""
from __future__ import annotations

import dataclasses
import logging
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataFormatError, DatasetOptionError
from . import split as splitting
from .schema import TEST, TRAIN, RecData, arrow_dataset

logger = logging.getLogger("glta_hf.data")

SPLITS = ("fixed", "random", "loo")
COMMON_OPTIONS = ("split", "test_fraction", "seed", "min_user_interactions", "min_item_interactions", "rating_threshold")


def clean(value: Any) -> str:
    """A text field as one line: ``None`` -> ``""``; lists joined with spaces; whitespace runs collapsed."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean(v) for v in value)
    elif not isinstance(value, str):
        value = str(value)
    return " ".join(value.split())


def compose_text(title: str, fields: Sequence[Tuple[str, Any]] = ()) -> str:
    """``"Title; label: value; ..."`` over the non-empty fields -- the one item-text shape of every loader."""
    parts = [title] + [f"{label}: {clean(value)}" for label, value in fields if clean(value)]
    return "; ".join(parts)


class Catalogue:
    """Items in the order their source lists them: external id -> (title, text), with the fallbacks applied.

    An empty title falls back to ``"item <id>"``; an empty text to the title. A repeated id keeps its first
    entry (the repeat count is logged by the builder).
    """

    def __init__(self) -> None:
        self.entries: Dict[str, Tuple[str, str]] = {}
        self.duplicates = 0

    def add(self, item_id, title: Any, fields: Sequence[Tuple[str, Any]] = (), text: Optional[str] = None) -> None:
        item_id = str(item_id)
        if item_id in self.entries:
            self.duplicates += 1
            return
        title = clean(title) or f"item {item_id}"
        text = clean(text) if text is not None else ""
        self.entries[item_id] = (title, text or compose_text(title, fields))

    def __len__(self) -> int:
        return len(self.entries)


@dataclasses.dataclass
class Interactions:
    """Parsed rows, in source order (which is time order within a user when ``time_ordered``)."""

    users: Sequence  # external ids (int or str; one type per loader)
    items: Sequence
    ratings: Optional[Sequence[float]] = None
    timestamps: Optional[Sequence[int]] = None
    is_test: Optional[Sequence[bool]] = None  # a fixed split shipped with the data
    time_ordered: bool = False


def natural_order(ids: Sequence[str]) -> List[int]:
    """Positions of ``ids`` sorted numerically when all are integers, else as strings."""
    try:
        keys = [int(i) for i in ids]
    except ValueError:
        keys = list(ids)
    return sorted(range(len(ids)), key=keys.__getitem__)


def check_options(name: str, options: Dict[str, Any], *, default_split: str, fixed_available: bool,
                  has_ratings: bool) -> Dict[str, Any]:
    """The common options with defaults applied and validated; unknown options are errors."""
    unknown = sorted(set(options) - set(COMMON_OPTIONS))
    if unknown:
        raise DatasetOptionError(f"{name}: unknown option(s) {unknown}")
    opts = {"split": default_split, "test_fraction": 0.2, "seed": 0, "min_user_interactions": 0,
            "min_item_interactions": 0, "rating_threshold": None}
    opts.update({k: v for k, v in options.items() if v is not None or k == "rating_threshold"})
    if opts["split"] not in SPLITS:
        raise DatasetOptionError(f"{name}: split must be one of {SPLITS}, got {opts['split']!r}")
    if opts["split"] == "fixed" and not fixed_available:
        raise DatasetOptionError(f"{name}: the data ships no fixed split; use split='random' or 'loo'")
    splitting.check_fraction(opts["test_fraction"], "test_fraction")
    for key in ("seed", "min_user_interactions", "min_item_interactions"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise DatasetOptionError(f"{name}: {key} must be a non-negative integer, got {value!r}")
    threshold = opts["rating_threshold"]
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or threshold != threshold:
            raise DatasetOptionError(f"{name}: rating_threshold must be a number or None, got {threshold!r}")
        if not has_ratings:
            raise DatasetOptionError(f"{name}: rating_threshold given but the data has no ratings")
    return opts


def _policy_label(opts: Dict[str, Any], fixed_label: str, time_kind: str) -> str:
    if opts["split"] == "fixed":
        return fixed_label
    if opts["split"] == "random":
        f = float(opts["test_fraction"])
        return f"random {100 * (1 - f):g}/{100 * f:g} per user, seed {opts['seed']}"
    return {"timestamp": "leave-one-out (latest timestamp)", "sequence": "leave-one-out (last in sequence)"}.get(
        time_kind, f"leave-one-out (random, seed {opts['seed']})"
    )


def build_recdata(name: str, rows: Interactions, catalogue: Catalogue, options: Dict[str, Any], *,
                  data_dir, source: Dict[str, str], default_split: str = "random",
                  fixed_label: str = "fixed", user_order: Optional[Sequence[str]] = None) -> RecData:
    """Apply dedup, threshold, k-core, indexing and the split policy (module docstring) and build the RecData."""
    import datasets
    import pandas as pd
    import pyarrow as pa

    has_ratings = rows.ratings is not None
    opts = check_options(name, options, default_split=default_split, fixed_available=rows.is_test is not None,
                         has_ratings=has_ratings)
    n = len(rows.users)
    if n == 0:
        raise DataFormatError("no interactions found", data_dir)
    if len(rows.items) != n:  # a loader bug, not a data error
        raise AssertionError("users and items differ in length")
    user_codes, user_uniques = pd.factorize(pd.Series(rows.users), sort=False)
    item_codes, item_uniques = pd.factorize(pd.Series(rows.items), sort=False)
    user_codes = user_codes.astype(np.int64)
    item_codes = item_codes.astype(np.int64)
    position = np.arange(n, dtype=np.int64)
    timestamps = None if rows.timestamps is None else np.asarray(rows.timestamps, dtype=np.int64)
    ratings = None if not has_ratings else np.asarray(rows.ratings, dtype=np.float32)
    is_test = None if rows.is_test is None else np.asarray(rows.is_test, dtype=bool)
    time_kind = "timestamp" if timestamps is not None else ("sequence" if rows.time_ordered else "none")
    stats: Dict[str, int] = {"rows_read": n}

    # 1. dedup: keep the latest copy (by timestamp, then position); for a fixed split the first (train) copy
    order = position if timestamps is None else np.lexsort((position, timestamps))
    pairs = pd.DataFrame({"u": user_codes[order], "i": item_codes[order]})
    duplicated = pairs.duplicated(keep="first" if is_test is not None else "last").to_numpy()
    keep = np.ones(n, dtype=bool)
    keep[order[duplicated]] = False
    stats["duplicates_dropped"] = int(duplicated.sum())
    if stats["duplicates_dropped"]:
        logger.warning("%s: dropped %d repeated (user, item) pairs", name, stats["duplicates_dropped"])

    # 2. rating threshold
    if opts["rating_threshold"] is not None:
        below = keep & ~splitting.threshold_mask(ratings, opts["rating_threshold"])
        stats["below_threshold_dropped"] = int(below.sum())
        keep &= ~below
        logger.info("%s: dropped %d interactions rated below %s", name, int(below.sum()), opts["rating_threshold"])

    # 3. k-core on the remaining rows
    idx = np.flatnonzero(keep)
    core = splitting.kcore_mask(user_codes[idx], item_codes[idx], opts["min_user_interactions"],
                                opts["min_item_interactions"])
    stats["kcore_dropped"] = int((~core).sum())
    if stats["kcore_dropped"]:
        logger.info("%s: k-core (users>=%d, items>=%d) dropped %d interactions", name, opts["min_user_interactions"],
                    opts["min_item_interactions"], stats["kcore_dropped"])
    idx = idx[core]
    if len(idx) == 0:
        raise DataFormatError(
            f"no interactions left after filtering (rating_threshold={opts['rating_threshold']}, "
            f"min_user_interactions={opts['min_user_interactions']}, "
            f"min_item_interactions={opts['min_item_interactions']})", data_dir)

    # 4. fixed split: test rows of users without train rows cannot be evaluated against a history
    if opts["split"] == "fixed":
        has_train = np.zeros(len(user_uniques), dtype=bool)
        has_train[user_codes[idx][~is_test[idx]]] = True
        orphan = is_test[idx] & ~has_train[user_codes[idx]]
        stats["test_without_train_dropped"] = int(orphan.sum())
        if orphan.any():
            logger.warning("%s: dropped %d test interactions of %d users left without train interactions", name,
                           int(orphan.sum()), len(np.unique(user_codes[idx][orphan])))
        idx = idx[~orphan]

    # 5. dense indices over what is left
    user_strings = [str(u) for u in user_uniques]
    item_strings = [str(i) for i in item_uniques]
    present_users = np.unique(user_codes[idx])
    present_items = np.unique(item_codes[idx])
    stats["users_dropped"] = len(user_uniques) - len(present_users)
    if user_order is not None:
        rank = {u: r for r, u in enumerate(user_order)}
        user_sorted = sorted(present_users.tolist(), key=lambda c: (rank.get(user_strings[c], len(rank)),))
    else:
        present_names = [user_strings[c] for c in present_users]
        user_sorted = [int(present_users[p]) for p in natural_order(present_names)]
    user_new = np.full(len(user_uniques), -1, dtype=np.int64)
    user_new[user_sorted] = np.arange(len(user_sorted))

    present_item_ids = {item_strings[c]: c for c in present_items.tolist()}
    in_catalogue = [iid for iid in catalogue.entries if iid in present_item_ids]
    extras = [iid for iid in present_item_ids if iid not in catalogue.entries]
    extras = [extras[p] for p in natural_order(extras)]
    item_list = in_catalogue + extras
    item_new = np.full(len(item_uniques), -1, dtype=np.int64)
    item_new[[present_item_ids[iid] for iid in item_list]] = np.arange(len(item_list))
    stats["catalogue_items_without_interactions"] = len(catalogue) - len(in_catalogue)
    stats["items_without_text"] = len(extras)
    stats["catalogue_duplicates"] = catalogue.duplicates
    if stats["users_dropped"]:
        logger.info("%s: dropped %d users left without interactions", name, stats["users_dropped"])
    if stats["catalogue_items_without_interactions"]:
        logger.info("%s: dropped %d catalogue items without interactions", name,
                    stats["catalogue_items_without_interactions"])
    if extras:
        logger.warning("%s: %d items have interactions but no catalogue entry; their text is 'item <id>'", name,
                       len(extras))
    if catalogue.duplicates:
        logger.warning("%s: %d repeated item ids in the catalogue; the first entry of each is kept", name,
                       catalogue.duplicates)

    users = user_new[user_codes[idx]]
    items = item_new[item_codes[idx]]
    pos = position[idx]
    ts = None if timestamps is None else timestamps[idx]
    time_rank = pos if ts is None else np.argsort(np.lexsort((pos, ts)), kind="stable")

    # 6. split
    if opts["split"] == "fixed":
        test_mask = is_test[idx]
    elif opts["split"] == "random":
        test_mask = splitting.random_split(users, items, opts["test_fraction"], opts["seed"])
    else:
        key = None if time_kind == "none" else time_rank
        test_mask = splitting.leave_one_out(users, items, key, opts["seed"])
    for split_name, mask in ((TRAIN, ~test_mask), (TEST, test_mask)):
        if not mask.any():
            raise DataFormatError(
                f"the {split_name} split is empty after filtering and splitting ({len(users)} interactions of "
                f"{len(user_sorted)} users; a user needs 2+ interactions to get a test item)", data_dir)

    def table(mask: np.ndarray) -> "datasets.Dataset":
        sel = np.flatnonzero(mask)
        sel = sel[np.lexsort((time_rank[sel], users[sel]))]
        columns = {"user_idx": pa.array(users[sel], pa.int64()), "item_idx": pa.array(items[sel], pa.int64())}
        if ts is not None:
            columns["timestamp"] = pa.array(ts[sel], pa.int64())
        if ratings is not None:
            columns["rating"] = pa.array(ratings[idx][sel], pa.float32())
        return arrow_dataset(pa.table(columns))

    splits = datasets.DatasetDict({TRAIN: table(~test_mask), TEST: table(test_mask)})
    titles = [catalogue.entries[i][0] if i in catalogue.entries else f"item {i}" for i in item_list]
    texts = [catalogue.entries[i][1] if i in catalogue.entries else f"item {i}" for i in item_list]
    items_ds = arrow_dataset(pa.table({
        "item_idx": pa.array(np.arange(len(item_list)), pa.int64()),
        "item_id": pa.array(item_list, pa.string()),
        "title": pa.array(titles, pa.string()),
        "text": pa.array(texts, pa.string()),
    }))
    source = dict(source)
    source.update({k: str(v) for k, v in opts.items()})
    source.update({k: str(v) for k, v in stats.items()})
    data = RecData(name=name, splits=splits, items=items_ds, user_ids=[user_strings[c] for c in user_sorted],
                   split_policy=_policy_label(opts, fixed_label, time_kind), source=source,
                   split_options=dict(opts))
    logger.info("%s", data)
    return data
