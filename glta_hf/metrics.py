"""The one evaluator: full ranking over the catalogue, Precision / Recall / NDCG / HitRate @ k.

Every model in the project (Pop, MF, LightGCN, GLTA and its decoders) is measured by :func:`evaluate`, so
numbers are comparable by construction. The protocol (``docs/DESIGN_CHOICES.md``, "Evaluation protocol"):

* users evaluated: those with at least one test item (optionally restricted to ``users``);
* candidates: every item the user has not interacted with in ``train`` (train items are masked to ``-inf``);
* Precision@k = hits/k, Recall@k = hits/|test_u|, NDCG@k with binary gains and IDCG over min(k, |test_u|),
  HitRate@k = 1[hits > 0]; each averaged over users.

The GLTA side (:func:`evaluate_model`, :func:`evaluate_glta`) and the graph side (:func:`evaluate_graph`) call it
with the same users (:func:`test_users` / :func:`sample_eval_users`), so numbers are comparable by construction.

The work is batched over users and vectorized in torch: train items are masked by one scatter built from the CSR
arrays with index arithmetic, and hits are found by binary search of the top-k against the batch's sorted test
(row, item) keys -- no Python loop per user and no dense B x I test mask.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .data.schema import UserItemMatrix

logger = logging.getLogger(__name__)

DEFAULT_KS: Tuple[int, ...] = (5, 10, 20)

Scorer = Callable[[torch.Tensor], torch.Tensor]
Ranker = Callable[[torch.Tensor, int], torch.Tensor]
PerUser = Dict[str, np.ndarray]  # "users": evaluated user rows; each metric: one value per user, in that order


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


def evaluated_users(test: UserItemMatrix, users=None) -> np.ndarray:
    """The users :func:`evaluate` measures, in its order: ``users`` (default: all) that have a test item."""
    test_len = test.row_lengths()
    if users is None:
        return np.flatnonzero(test_len > 0)
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    return users[test_len[users] > 0]


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
    return_per_user: bool = False,
):
    """Full-ranking evaluation of ``scorer`` (scores every item) or ``ranker`` (returns top-k lists).

    ``scorer(users) -> FloatTensor[B, num_items]``: the evaluator masks the users' train items.
    ``ranker(users, k) -> LongTensor[B, k]``: best first, train items already excluded (checked: a ranker that
    returns a train item, a duplicate or an out-of-range index raises ``ValueError`` naming the user).
    Returns ``{"precision@k", "recall@k", "ndcg@k", "hit_rate@k" for each k, "num_users"}``; with
    ``return_per_user`` also each evaluated user's values (:data:`PerUser`: ``{"users": rows, <metric>: values}``, in
    evaluation order), whose means are the metrics: what a paired comparison of two models needs
    (:func:`paired_bootstrap`).
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
    eval_users = evaluated_users(test, users)

    discount = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64))
    idcg_table = torch.cumsum(discount, 0)  # idcg_table[n-1] = IDCG with n relevant items
    sums = {name: 0.0 for name in metric_names(ks)}
    kept: Dict[str, list] = {name: [] for name in sums} if return_per_user else {}

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
            values = {f"precision@{k}": h / k, f"recall@{k}": h / n_test, f"ndcg@{k}": dcg[:, k - 1] / idcg,
                      f"hit_rate@{k}": (h > 0).to(torch.float64)}
            for name, value in values.items():
                sums[name] += float(value.sum())
                if return_per_user:
                    kept[name].append(value.numpy())

    n = len(eval_users)
    result: Dict[str, float] = {name: (value / n if n else 0.0) for name, value in sums.items()}
    result["num_users"] = int(n)
    if not return_per_user:
        return result
    per_user: PerUser = {"users": np.asarray(eval_users, dtype=np.int64)}
    per_user.update((name, np.concatenate(v) if v else np.zeros(0)) for name, v in kept.items())
    return result, per_user


# ----------------------------------------------------------------------------------------------- GLTA models


def usable_ks(ks: Sequence[int], decoding: str, num_slots: int) -> tuple:
    """The cut-offs ``decoding`` can fill: a decoder that yields at most L items (``first_k``, ``autoregressive``;
    ``glta_hf.decoding``) drops those above L, with a warning."""
    from .decoding import cutoffs_within

    ks = tuple(int(k) for k in ks)
    kept = cutoffs_within(ks, decoding, num_slots)
    if kept != ks:
        logger.warning("decoding=%s yields at most L=%d items: metrics @%s skipped", decoding, num_slots,
                       [k for k in ks if k not in kept])
    if not kept:
        raise ValueError(f"no cut-off <= num_slots={num_slots} among {ks} for decoding={decoding}")
    return kept


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@torch.no_grad()
def evaluate_model(model, *, train, truth, decoding: str = "first_k", ks=DEFAULT_KS, users=None,
                   batch_size: int = 16, progress: bool = False, return_per_user: bool = False):
    """Full-ranking metrics of a GLTA model whose user context (histories, texts) is attached.

    ``train`` is the matrix of interactions to exclude (the evaluator also checks none is recommended), ``truth``
    the held-out one. Under torch.distributed each rank takes every world_size-th user and the per-rank sums are
    all-reduced, so the result equals a single-process run. ``return_per_user``: also the per-user values
    (:func:`evaluate`'s), gathered from every rank into the single-process order.
    """
    ks = usable_ks(ks, decoding, model.config.num_slots)
    ranked_here = _rank_users(truth, users)
    was_training = model.training
    model.eval()
    try:
        ranker = model.ranker(decoding=decoding, batch_size=batch_size)
        # a rank with no users still returns zeros (and, asked, empty per-user arrays) for the all-reduce / gather
        out = evaluate(train=train, test=truth, ranker=ranker, ks=ks, users=ranked_here,
                       batch_size=_evaluator_batch(batch_size), progress=progress and len(ranked_here) > 0,
                       return_per_user=return_per_user)
    finally:
        model.train(was_training)
    if not return_per_user:
        return _all_reduced(out)
    metrics, per_user = out
    return _all_reduced(metrics), _all_gathered(per_user, truth, users)


@torch.no_grad()
def evaluate_gate_scales(model, *, train, truth, gate_scales: Sequence[float], decoding: str = "first_k",
                         ks=DEFAULT_KS, users=None, batch_size: int = 16,
                         progress: bool = False) -> Dict[float, Dict[str, float]]:
    """:func:`evaluate_model` of a graph residual model once per multiplier of its learned gate (``gate * s * head +
    scale * e_u . E_i``): ``{scale: metrics}`` in the order given, the LLM run once per batch of users for all scales.

    Why: a residual's gate is learned against the graph it trained with; evaluated with the refit graph
    (``set_residual_tables``) the best weight of the LLM term may differ, and a sweep on validation chooses it at
    the cost of one evaluation (``docs/TRAINING_MECHANICS.md``). Exact: the users, their LLM batches and the
    evaluator's batches are :func:`evaluate_model`'s, so scale 1 gives its metrics; scale 0 ranks by the graph term
    alone. The lists (users x max(ks) per scale) are kept, then each scale is measured by :func:`evaluate`.
    """
    ks = usable_ks(ks, decoding, model.config.num_slots)
    scales = model.check_gate_scales(gate_scales)
    users = evaluated_users(truth, _rank_users(truth, users))
    step = _evaluator_batch(batch_size)
    was_training = model.training
    model.eval()
    try:
        rank_users = model.gate_scale_ranker(scales, decoding=decoding, batch_size=batch_size)
        lists = [[] for _ in scales]
        batches = range(0, len(users), step)  # evaluate()'s batches: the ranker sees what evaluate_model's sees
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="rank", unit="batch")
        for start in batches:
            for kept, items in zip(lists, rank_users(torch.from_numpy(users[start : start + step]), max(ks))):
                kept.append(items)
        position = np.full(truth.num_users, -1, dtype=np.int64)
        position[users] = np.arange(len(users))
        results = {}
        for scale, kept in zip(scales, lists):
            if not len(users):
                results[scale] = _no_users(ks)
                continue
            ranked = torch.cat(kept)

            def lookup(batch: torch.Tensor, k: int, ranked=ranked) -> torch.Tensor:
                return ranked[torch.from_numpy(position[batch.numpy()]).to(ranked.device), :k]

            results[scale] = evaluate(train=train, test=truth, ranker=lookup, ks=ks, users=users, batch_size=step)
    finally:
        model.train(was_training)
    return {scale: _all_reduced(metrics) for scale, metrics in results.items()}


def best_gate_scale(per_scale: Dict[float, Dict[str, float]], by: Optional[str] = None) -> Dict[str, Any]:
    """The scale of :func:`evaluate_gate_scales`' result with the highest ``by`` (default ``ndcg@10``, else the
    NDCG at the largest cut-off measured); the first listed wins a tie. ``{"scale", "by", <by>: value}``."""
    if not per_scale:
        raise ValueError("best_gate_scale: no scale was evaluated")
    names = next(iter(per_scale.values()))
    if by is None:
        cut = [int(n.split("@")[1]) for n in names if n.startswith("ndcg@")]
        by = "ndcg@10" if 10 in cut else f"ndcg@{max(cut)}"
    if by not in names:
        raise ValueError(f"best_gate_scale: no metric {by!r} among {sorted(names)}")
    scale = max(per_scale, key=lambda s: (per_scale[s][by], -list(per_scale).index(s)))
    return {"scale": scale, "by": by, by: per_scale[scale][by]}


def _all_users(truth: UserItemMatrix, users=None) -> np.ndarray:
    """``users``, default those with a held-out item: what every process together ranks."""
    if users is None:
        users = np.flatnonzero(truth.row_lengths() > 0)
    return np.asarray(users, dtype=np.int64)


def _rank_users(truth: UserItemMatrix, users=None) -> np.ndarray:
    """The users this process ranks: ``users`` (default: those with a held-out item), every world_size-th one under
    torch.distributed."""
    users = _all_users(truth, users)
    if _dist():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        users = users[rank::world]
    return users


def _evaluator_batch(batch_size: int) -> int:
    """:func:`evaluate`'s user batch for a GLTA model ranked ``batch_size`` users per LLM batch."""
    return max(batch_size, 64)


def _no_users(ks) -> Dict[str, float]:
    metrics: Dict[str, float] = {name: 0.0 for name in metric_names(ks)}
    metrics["num_users"] = 0
    return metrics


def _all_reduced(metrics: Dict[str, float]) -> Dict[str, float]:
    """Per-rank metrics averaged over all ranks' users under torch.distributed (unchanged otherwise): the result
    equals a single-process run's."""
    if not _dist():
        return metrics
    names = [k for k in metrics if k != "num_users"]
    n = float(metrics["num_users"])
    sums = torch.tensor([metrics[k] * n for k in names] + [n], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        sums = sums.cuda()
    torch.distributed.all_reduce(sums)
    sums = sums.cpu()
    total = float(sums[-1])
    metrics = {k: (float(sums[i]) / total if total else 0.0) for i, k in enumerate(names)}
    metrics["num_users"] = int(total)
    return metrics


def _all_gathered(per_user: PerUser, truth: UserItemMatrix, users=None) -> PerUser:
    """Every rank's per-user values in the single-process evaluation order of ``users`` under torch.distributed
    (unchanged otherwise)."""
    if not _dist():
        return per_user
    order = evaluated_users(truth, _all_users(truth, users))
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, per_user)
    merged = {name: np.concatenate([part[name] for part in parts]) for name in per_user}
    position = {int(u): i for i, u in enumerate(merged["users"])}
    index = np.asarray([position[int(u)] for u in order], dtype=np.int64)
    return {name: values[index] for name, values in merged.items()}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, resamples: int = 10000, seed: int = 0,
                     confidence: float = 0.95, chunk: int = 256) -> Dict[str, float]:
    """How sure a difference between two models is: ``a`` and ``b`` are one metric per user for the same users in
    the same order (:func:`evaluate`'s ``return_per_user``); users are resampled with replacement, both models' values
    together, so what the two share (easy and hard users) cancels.

    Returns the means, ``ratio`` = mean(a) / mean(b) and ``difference`` = mean(a) - mean(b) with percentile
    intervals at ``confidence``, and ``share_a_not_above_b``: the share of resamples where mean(a) <= mean(b) (a
    one-sided bootstrap p-value of "a is better").
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_bootstrap: a and b must be 1-d and of one length, got {a.shape} and {b.shape}")
    if not len(a):
        raise ValueError("paired_bootstrap: no users")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"paired_bootstrap: resamples must be >= 1 and confidence in (0, 1), got {resamples}, "
                         f"{confidence}")
    rng = np.random.default_rng(seed)
    n = len(a)
    means_a, means_b = [], []
    for start in range(0, resamples, chunk):  # chunks: resamples x users indices would not fit at scale
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        means_a.append(a[idx].mean(axis=1))
        means_b.append(b[idx].mean(axis=1))
    ma, mb = np.concatenate(means_a), np.concatenate(means_b)
    tail = (1 - confidence) / 2 * 100
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = ma / mb
    mean_a, mean_b = float(a.mean()), float(b.mean())
    return {"users": n, "resamples": int(resamples), "seed": int(seed), "confidence": float(confidence),
            "mean_a": mean_a, "mean_b": mean_b,
            "ratio": mean_a / mean_b if mean_b else float("nan"),
            "ratio_low": float(np.nanpercentile(ratios, tail)), "ratio_high": float(np.nanpercentile(ratios, 100 - tail)),
            "difference": mean_a - mean_b,
            "difference_low": float(np.percentile(ma - mb, tail)),
            "difference_high": float(np.percentile(ma - mb, 100 - tail)),
            "share_a_not_above_b": float(np.mean(ma <= mb))}


def sample_eval_users(truth: UserItemMatrix, max_users: Optional[int], seed: int = 0) -> np.ndarray:
    """Users with a held-out item; a seeded sample of ``max_users`` of them (validation during training)."""
    users = np.flatnonzero(truth.row_lengths() > 0)
    if max_users is not None and 0 < max_users < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    return users


def test_users(full, max_users: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """Users with a test item; a seeded sample of ``max_users`` of them (the same for every model compared)."""
    return sample_eval_users(full.matrix("test"), max_users, seed=seed)


test_users.__test__ = False  # a helper, not a pytest test


def evaluate_glta(model, full, *, users=None, decoding: str = "first_k", ks=DEFAULT_KS, batch_size: int = 16,
                  progress: bool = True, seed: int = 0) -> Dict[str, float]:
    """Test metrics of ``model``: every training interaction of ``full`` (fit + validation) is excluded and shown.

    The model's stored histories are replaced by the full training histories (serving order kept from
    ``glta_run.json``'s ``eval_history_recent``, default: most recent; ``seed`` of a sampled order) -- what a
    saved checkpoint holds too.
    """
    from .alignment_data import serving_histories, user_histories  # GLTA's data code: graph rows never load it

    histories, has_time = user_histories(full, "train")
    recent = (model.run_info or {}).get("eval_history_recent", has_time)
    model.attach_user_context(histories=serving_histories(histories, model.prompt_config.max_history, recent, seed))
    return evaluate_model(model, train=full.matrix("train"), truth=full.matrix("test"), decoding=decoding, ks=ks,
                          users=users, batch_size=batch_size, progress=progress)


def evaluate_graph(nodes, full, *, users=None, ks=DEFAULT_KS, progress: bool = False, return_per_user: bool = False):
    """Test metrics of the node embeddings' dot-product scores (LightGCN), same protocol as :func:`evaluate_glta`
    (``return_per_user``: :func:`evaluate`'s)."""
    user_emb, item_emb = nodes.user, nodes.item
    return evaluate(train=full.matrix("train"), test=full.matrix("test"), scorer=lambda u: user_emb[u] @ item_emb.T,
                    ks=ks, users=users, progress=progress, return_per_user=return_per_user)


@torch.no_grad()
def evaluate_item_alignment(model, dataset, *, batch_size: int = 16) -> Dict[str, float]:
    """How well the item stage's task is solved on ``dataset`` (item-text prompts, e.g. of held-out items).

    Each labelled slot t must name the item whose description is t-th. ``item_order_accuracy``: the described item
    scores highest among the m items of its prompt (chance ``item_order_chance`` = 1/m); ``item_catalogue_accuracy``
    / ``item_catalogue_mrr``: its rank among all |I| items (chance 1/|I|). Issue 23 found the item stage at chance on
    both after its steps; this is the number that says whether it learns.
    """
    from .prompts import collate_prompts

    was_training = model.training
    model.eval()
    hits_order = hits_all = rr = n = 0.0
    m = 0
    try:
        device = model.device
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate_prompts(samples, model.tokenizer.pad_token_id, model.config.num_slots)
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model.score_slots(model(**batch).slot_hidden_states).float()  # (B, L, |I|)
            for row, sample in enumerate(samples):
                shown = torch.tensor(sample.targets, device=logits.device)
                m = max(m, len(sample.targets))
                for slot, target in enumerate(sample.targets):
                    scores = logits[row, slot]
                    hits_order += float(shown[scores[shown].argmax()] == target)
                    rank = int((scores > scores[target]).sum()) + 1
                    hits_all += float(rank == 1)
                    rr += 1.0 / rank
                    n += 1
    finally:
        model.train(was_training)
    num_items = int(model.config.num_items)
    return {"item_order_accuracy": hits_order / n if n else 0.0, "item_order_chance": 1.0 / m if m else 0.0,
            "item_catalogue_accuracy": hits_all / n if n else 0.0, "item_catalogue_mrr": rr / n if n else 0.0,
            "item_catalogue_chance": 1.0 / num_items, "item_slots_evaluated": int(n)}
