"""The one evaluator: full ranking over the catalogue, Precision / Recall / NDCG / HitRate @ k.

Every model in the project (Pop, MF, LightGCN, GLTA and its decoders) is measured by :func:`evaluate`, so
numbers are comparable by construction. The protocol (``../shared/DESIGN.md``, "Evaluation protocol"):

* users evaluated: those with at least one test item (optionally restricted to ``users``);
* candidates: every item the user has not interacted with in ``train`` (train items are masked to ``-inf``);
* Precision@k = hits/k, Recall@k = hits/|test_u|, NDCG@k with binary gains and IDCG over min(k, |test_u|),
  HitRate@k = 1[hits > 0]; each averaged over users.

The work is batched over users and vectorized in torch: train items are masked by one scatter built from the CSR
arrays with index arithmetic, and hits are found by binary search of the top-k against the batch's sorted test
(row, item) keys -- no Python loop per user and no dense B x I test mask.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .data.schema import UserItemMatrix

DEFAULT_KS: Tuple[int, ...] = (5, 10, 20)

Scorer = Callable[[torch.Tensor], torch.Tensor]
Ranker = Callable[[torch.Tensor, int], torch.Tensor]


def metric_names(ks: Sequence[int] = DEFAULT_KS):
    """The result keys in the order :func:`evaluate` returns them (without ``num_users``)."""
    return [f"{name}@{k}" for k in ks for name in ("precision", "recall", "ndcg", "hit_rate")]


def csr_rows(matrix: UserItemMatrix, users: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(row position in ``users``, item) for every interaction of ``users``: the CSR gather, vectorized."""
    starts = matrix.indptr[users]
    lengths = matrix.indptr[users + 1] - starts
    total = int(lengths.sum())
    rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    # position of each entry inside its row, then shifted to the row's start in ``indices``
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, matrix.indices[np.repeat(starts, lengths) + within]


def _pair_keys(matrix: UserItemMatrix, users: np.ndarray, device) -> torch.Tensor:
    """Sorted keys ``row * num_items + item`` of the batch's interactions (rows ascending, items sorted in a row)."""
    rows, cols = csr_rows(matrix, users)
    return torch.from_numpy(rows * matrix.num_items + cols).to(device)


def _contains(keys: torch.Tensor, rows: torch.Tensor, items: torch.Tensor, num_items: int) -> torch.Tensor:
    """Membership of (row, item) pairs in ``keys`` by binary search: O(B*k log nnz), no dense B x I mask."""
    if keys.numel() == 0:
        return torch.zeros(items.shape, dtype=torch.bool, device=items.device)
    query = rows * num_items + items
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return keys[pos] == query


def _check_ranking(ranked: torch.Tensor, train_keys: torch.Tensor, users: np.ndarray, k: int, num_items: int) -> None:
    """A ranker must return k distinct, valid, unseen items per user; name the first user that breaks it."""
    if ranked.dim() != 2 or ranked.shape != (len(users), k):
        raise ValueError(f"ranker returned shape {tuple(ranked.shape)}, expected ({len(users)}, {k})")
    bad = (ranked < 0) | (ranked >= num_items)
    if bad.any():
        row = int(bad.any(dim=1).nonzero()[0])
        raise ValueError(f"ranker returned an item index out of range [0, {num_items}) for user {int(users[row])}")
    srt = ranked.sort(dim=1).values
    dup = (srt[:, 1:] == srt[:, :-1]).any(dim=1)
    if dup.any():
        row = int(dup.nonzero()[0])
        raise ValueError(f"ranker returned a duplicate item for user {int(users[row])}")
    rows = torch.arange(len(users), device=ranked.device).unsqueeze(1)
    seen = _contains(train_keys, rows, ranked, num_items).any(dim=1)
    if seen.any():
        row = int(seen.nonzero()[0])
        raise ValueError(f"ranker returned a training item for user {int(users[row])}")


@torch.no_grad()
def evaluate(
    *,
    train: UserItemMatrix,
    test: UserItemMatrix,
    scorer: Optional[Scorer] = None,
    ranker: Optional[Ranker] = None,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    users=None,
    progress: bool = False,
) -> Dict[str, float]:
    """Full-ranking evaluation of ``scorer`` (scores every item) or ``ranker`` (returns top-k lists).

    ``scorer(users) -> FloatTensor[B, num_items]``: the evaluator masks the users' train items.
    ``ranker(users, k) -> LongTensor[B, k]``: best first, train items already excluded (checked: a ranker that
    returns a train item, a duplicate or an out-of-range index raises ``ValueError`` naming the user).
    Returns ``{"precision@k", "recall@k", "ndcg@k", "hit_rate@k" for each k, "num_users"}``.
    """
    if (scorer is None) == (ranker is None):
        raise ValueError("evaluate() needs exactly one of scorer= or ranker=")
    if train.num_items != test.num_items or train.num_users != test.num_users:
        raise ValueError(
            f"train ({train.num_users}x{train.num_items}) and test ({test.num_users}x{test.num_items}) shapes differ"
        )
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    kmax = max(ks)

    test_len = test.row_lengths()
    if users is None:
        eval_users = np.flatnonzero(test_len > 0)
    else:
        eval_users = np.asarray(users, dtype=np.int64).reshape(-1)
        eval_users = eval_users[test_len[eval_users] > 0]

    discount = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64))
    idcg_table = torch.cumsum(discount, 0)  # idcg_table[n-1] = IDCG with n relevant items
    sums = {name: 0.0 for name in metric_names(ks)}

    batches = range(0, len(eval_users), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="evaluate", unit="batch")
    for start in batches:
        batch = eval_users[start : start + batch_size]
        batch_t = torch.from_numpy(batch)
        if scorer is not None:
            scores = scorer(batch_t)
            device = scores.device
            scores = scores.to(torch.float32, copy=True)  # masked in place below; never touch the scorer's tensor
            rows, cols = csr_rows(train, batch)
            scores[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = float("-inf")
            k_eff = min(kmax, train.num_items)
            top_scores, ranked = torch.topk(scores, k_eff, dim=1)
            valid = top_scores != float("-inf")  # a masked (train) item, picked only when too few remain: never a hit
        else:
            ranked = ranker(batch_t, kmax)
            ranked = torch.as_tensor(ranked).long()
            device = ranked.device
            _check_ranking(ranked, _pair_keys(train, batch, device), batch, kmax, train.num_items)
            valid = torch.ones_like(ranked, dtype=torch.bool)
        rows = torch.arange(len(batch), device=device).unsqueeze(1)
        hits = (_contains(_pair_keys(test, batch, device), rows, ranked, test.num_items) & valid).to(torch.float64).cpu()
        if hits.shape[1] < kmax:  # fewer items than kmax in the catalogue: pad with misses
            hits = torch.nn.functional.pad(hits, (0, kmax - hits.shape[1]))
        n_test = torch.from_numpy(test_len[batch]).to(torch.float64)
        cum_hits = hits.cumsum(dim=1)
        dcg = (hits * discount).cumsum(dim=1)
        for k in ks:
            h = cum_hits[:, k - 1]
            idcg = idcg_table[(torch.clamp(n_test, max=k) - 1).long()]
            sums[f"precision@{k}"] += float((h / k).sum())
            sums[f"recall@{k}"] += float((h / n_test).sum())
            sums[f"ndcg@{k}"] += float((dcg[:, k - 1] / idcg).sum())
            sums[f"hit_rate@{k}"] += float((h > 0).to(torch.float64).sum())

    n = len(eval_users)
    result: Dict[str, float] = {name: (value / n if n else 0.0) for name, value in sums.items()}
    result["num_users"] = int(n)
    return result
