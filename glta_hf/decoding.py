"""Decoding (paper sec. 4.5): item rankings from the GLLM head's slot logits, one implementation per decoder.

Every decoder reads the logits through a :data:`LogitChunks` function ``chunks(slots) -> [(start, logits), ...]``:
the float32 logits (B, R, c) of the slot rows ``slots`` for items ``start:start+c``. :func:`full_logit_chunks`
serves materialised (B, L, |I|) logits as one chunk; :func:`head_logit_chunks` streams the head over the catalogue
``chunk_size`` items at a time (never the (B, L, |I|) tensor). The same decoder code therefore serves both paths, and
the chunked path returns the same items (ties to the lower item row: :func:`topk_first` is a total order) and the
same scores up to float rounding.

What a score means (every decoder returns scores in rank order, best first, non-increasing):

* ``first_k`` (the paper): slot t proposes its best item not seen and not proposed by slots 1..t-1. Score of the
  t-th item: ``sum_{s<=t} log p_s(i_s)``, the log-probability that slots 1..t emit the list so far (slots read as
  independent). A single slot's log-prob is not monotone along the list; this cumulative value is.
* ``first_logit`` (FL): the k best items of slot 1; score ``log p_1(i)``.
* ``all_slots``: score ``logsumexp_t log p_t(i) = log sum_t p_t(i)`` of every item (at most log L: the log of the
  item's expected number of slots), a full ranking for any k.
* ``autoregressive`` (AR): slot t sees the item chosen at t-1 fed back; score ``sum_{s<=t} log p_s(i_s | i_<s)``,
  the log-probability of the generated list so far.

Items are chosen by the raw logit where a score is one slot's log-prob, so softmax rounding never merges two items.
Imports only torch (copied as remote code).
"""
from __future__ import annotations

import numbers
from typing import Callable, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F

from .errors import GLTAError

from .vocabulary import DECODINGS, SLOT_LIMITED_DECODINGS  # noqa: F401  (re-exported: the decoders' names)

LogitChunks = Callable[[slice], Iterable[Tuple[int, torch.Tensor]]]


class ArgumentError(GLTAError, ValueError):
    """An argument of ``rank`` / ``recommend`` / ``ranker`` is invalid; the message names the argument."""


def check_decoding(decoding) -> str:
    if not isinstance(decoding, str) or decoding not in DECODINGS:
        raise ArgumentError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    return decoding


def check_positive_int(name: str, value) -> int:
    """``value`` as an int >= 1; a bool, a float or anything else is an :class:`ArgumentError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ArgumentError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_k(k, decoding: str, num_items: int, num_slots: int, most_seen: int = 0) -> int:
    """Validate ``k`` for ``decoding`` against the catalogue, the slots and the most items any user has seen."""
    check_decoding(decoding)
    k = check_positive_int("k", k)
    if k > num_items:
        raise ArgumentError(f"k={k} exceeds the catalogue size |I|={num_items}")
    if decoding in SLOT_LIMITED_DECODINGS and k > num_slots:
        raise ArgumentError(
            f"decoding={decoding!r} yields at most num_slots={num_slots} items, asked k={k}; "
            "use decoding='all_slots' or 'first_logit' for longer lists"
        )
    if k > num_items - most_seen:
        raise ArgumentError(f"k={k} exceeds the {num_items - most_seen} items some user has not seen")
    return k


def full_logit_chunks(logits: torch.Tensor) -> LogitChunks:
    """Materialised logits (B, L, |I|) as one chunk per request."""

    def chunks(slots: slice):
        yield 0, logits[:, slots].float()

    return chunks


def head_logit_chunks(
    operands: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]],
    slot_hidden: torch.Tensor,
    chunk_size: int,
) -> LogitChunks:
    """The head's logits of ``slot_hidden`` (B, L, hidden), ``chunk_size`` items at a time; ``operands`` is the
    head's ``(x, weight, bias)`` (``GLTAHead.operands``)."""

    def chunks(slots: slice):
        x, weight, bias = operands(slot_hidden[:, slots])
        for start in range(0, weight.shape[0], chunk_size):
            end = start + chunk_size
            yield start, F.linear(x, weight[start:end], None if bias is None else bias[start:end]).float()

    return chunks


def slot_candidates(chunks: LogitChunks, slots: slice, k: int, blocked: torch.Tensor):
    """Per slot row in ``slots``: the k best items not ``blocked`` (B, |I|), as (log-probs, item rows), each
    (B, R, k), best first, ties to the lower row. One pass: a running logsumexp over ALL items (the softmax
    normaliser; blocked items count, as in ``log_softmax``) and a running top-k of the raw logits."""
    lse = best = None
    for start, logits in chunks(slots):
        part = torch.logsumexp(logits, dim=-1)
        lse = part if lse is None else torch.logaddexp(lse, part)
        logits = logits.masked_fill(blocked[:, None, start : start + logits.shape[-1]], float("-inf"))
        vals, idx = topk_first(logits, k)
        best = merge_topk(best, vals, idx + start, k)
    return best[0] - lse.unsqueeze(-1), best[1]


def all_slot_score_chunks(chunks: LogitChunks):
    """Yields ``(start, scores)``: the ``all_slots`` scores ``logsumexp_t log_softmax(Z_t)`` (B, c) of items
    ``start:start+c``. Two passes: the per-(user, slot) logsumexp, then each chunk's log-probs reduced over slots."""
    lse = None
    for _, logits in chunks(slice(None)):
        part = torch.logsumexp(logits, dim=-1)
        lse = part if lse is None else torch.logaddexp(lse, part)
    for start, logits in chunks(slice(None)):
        yield start, torch.logsumexp(logits - lse.unsqueeze(-1), dim=1)


def cumulative_log_prob(log_probs: torch.Tensor) -> torch.Tensor:
    """Running sum along the list (B, k) of per-position log-probs: the log-probability of each list prefix,
    non-increasing (a log-prob is <= 0; float rounding above 0 is clipped)."""
    return log_probs.clamp(max=0.0).cumsum(dim=1)


def decode(chunks: LogitChunks, k: int, blocked: torch.Tensor, decoding: str) -> Tuple[torch.LongTensor, torch.Tensor]:
    """``(items, scores)`` (B, k) for ``first_k`` / ``first_logit`` / ``all_slots`` (``autoregressive`` runs the LLM
    between slots: ``GLTAForRecommendation.rank``). ``blocked`` (B, |I|) bool: items never returned."""
    if decoding == "first_logit":
        scores, items = slot_candidates(chunks, slice(0, 1), k, blocked)
        return items[:, 0], scores[:, 0]
    if decoding == "first_k":
        # slot t takes its best candidate not taken by slots 1..t-1: t-1 items at most are taken before it, so its
        # k best candidates always hold that item
        scores, items = slot_candidates(chunks, slice(0, k), k, blocked)
        items, scores = take_distinct(scores, items)
        return items, cumulative_log_prob(scores)
    if decoding == "all_slots":
        best = None
        for start, scores in all_slot_score_chunks(chunks):
            scores = scores.masked_fill(blocked[:, start : start + scores.shape[1]], float("-inf"))
            vals, idx = topk_first(scores, k)
            best = merge_topk(best, vals, idx + start, k)
        return best[1], best[0]
    raise ArgumentError(f"decode() supports first_k, first_logit, all_slots, got {decoding!r}")


def topk_first(values: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.LongTensor]:
    """The k largest entries along the last dim as (values, indices), best first, ties to the LOWER index.

    A total order (value desc, index asc), unlike ``torch.topk``'s unspecified tie order: the top-k of a catalogue
    is then the top-k of its chunks' top-ks, which is what makes chunked ranking return the same items."""
    k = min(k, values.shape[-1])
    top, idx = values.topk(min(k + 1, values.shape[-1]), dim=-1)  # one more, to see a tie across the cut
    kth = top[..., k - 1 : k]
    if top.shape[-1] > k and bool((top[..., k:] == kth).any()):  # ties across the cut: take the lowest indices
        tie = values == kth
        need = k - (top > kth).sum(dim=-1, keepdim=True)  # every value above the k-th is in ``top``
        take = (values > kth) | (tie & (tie.cumsum(dim=-1, dtype=torch.int32) <= need))
        idx = take.nonzero()[:, -1].view(*values.shape[:-1], k)  # row-major: ascending index within each row
    idx = idx[..., :k].sort(dim=-1).values
    vals, order = values.gather(-1, idx).sort(dim=-1, descending=True, stable=True)
    return vals, idx.gather(-1, order)


def merge_topk(best, vals: torch.Tensor, idx: torch.LongTensor, k: int):
    """Merge a running ``(values, indices)`` top-k with a later chunk's (all of whose indices are higher): a stable
    sort keeps the running entries first among equal values, i.e. the lower index wins ties."""
    if best is not None:
        vals, idx = torch.cat([best[0], vals], dim=-1), torch.cat([best[1], idx], dim=-1)
    vals, order = vals.sort(dim=-1, descending=True, stable=True)
    return vals[..., :k], idx.gather(-1, order[..., :k])


def take_distinct(scores: torch.Tensor, items: torch.LongTensor) -> Tuple[torch.LongTensor, torch.FloatTensor]:
    """``first_k`` over per-slot candidates (B, k, k), best first: slot t takes its first candidate not taken by an
    earlier slot. Returns (items, scores), each (B, k)."""
    taken = torch.full(items.shape[:2], -1, dtype=items.dtype, device=items.device)
    chosen = torch.empty(items.shape[:2], dtype=scores.dtype, device=scores.device)
    for t in range(items.shape[1]):
        free = ~(items[:, t].unsqueeze(-1) == taken.unsqueeze(1)).any(dim=-1)
        pos = free.to(torch.int8).argmax(dim=-1, keepdim=True)  # first free candidate
        taken[:, t] = items[:, t].gather(1, pos).squeeze(1)
        chosen[:, t] = scores[:, t].gather(1, pos).squeeze(1)
    return taken, chosen
