"""The GLLM training loss: mean cross-entropy over the labelled slots, plain or chunked over the catalogue.

:func:`slot_loss` is what ``GLTAForRecommendation.forward`` calls; with a chunk size smaller than the catalogue it
never builds the (B, L, |I|) logits (:func:`chunked_linear_cross_entropy`, a custom autograd function that recomputes
each chunk's logits in backward, cut-cross-entropy style). Imports only torch (copied as remote code).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``mean_n CE(x_n W^T + b, y_n)`` without the (N, C) logits: forward keeps a running logsumexp over item chunks,
    backward recomputes each chunk's logits and forms ``softmax - onehot`` chunk by chunk (cut-cross-entropy style)."""

    @staticmethod
    def forward(ctx, x, weight, bias, labels, chunk_size):
        n, c = x.shape[0], weight.shape[0]
        lse = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        target = torch.zeros(n, dtype=x.dtype, device=x.device)
        rows = torch.arange(n, device=x.device)
        for start in range(0, c, chunk_size):
            end = min(start + chunk_size, c)
            logits = x @ weight[start:end].t()
            if bias is not None:
                logits += bias[start:end]
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
            hit = (labels >= start) & (labels < end)
            target[hit] = logits[rows[hit], labels[hit] - start]
        ctx.save_for_backward(x, weight, bias, labels, lse)
        ctx.chunk_size = chunk_size
        return (lse - target).sum() / n

    @staticmethod
    def backward(ctx, grad_loss):
        x, weight, bias, labels, lse = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        n, c = x.shape[0], weight.shape[0]
        scale = grad_loss / n
        rows = torch.arange(n, device=x.device)
        grad_x = torch.zeros_like(x) if need_x else None
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = torch.empty_like(bias) if need_b else None
        for start in range(0, c, ctx.chunk_size):
            end = min(start + ctx.chunk_size, c)
            w = weight[start:end]
            logits = x @ w.t()
            if bias is not None:
                logits += bias[start:end]
            probs = torch.exp_(logits.sub_(lse.unsqueeze(1)))  # softmax of this chunk, in place
            hit = (labels >= start) & (labels < end)
            probs[rows[hit], labels[hit] - start] -= 1.0
            probs.mul_(scale)
            if need_x:
                grad_x.addmm_(probs, w)
            if need_w:
                torch.mm(probs.t(), x, out=grad_w[start:end])
            if need_b:
                torch.sum(probs, dim=0, out=grad_b[start:end])
        return grad_x, grad_w, grad_b, None, None


def chunked_linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.LongTensor, chunk_size: int
) -> torch.Tensor:
    """Mean cross-entropy of the logits ``x @ weight.T + bias`` (N, C) against ``labels`` (N,), never holding more
    than N x ``chunk_size`` logits (forward or backward). Gradients flow to ``x``, ``weight`` and ``bias`` (those that
    require grad). Equals ``F.cross_entropy(x @ weight.T + bias, labels)`` up to float rounding."""
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _ChunkedLinearCrossEntropy.apply(x, weight, bias, labels.to(x.device, torch.long), int(chunk_size))


def check_labels(labels: torch.Tensor, shape, num_items: int, device) -> torch.LongTensor:
    """``labels`` (B, L) on ``device``: item rows in [0, |I|) or -100; a wrong shape or row is a ValueError."""
    labels = labels.to(device)
    if labels.shape != tuple(shape):
        raise ValueError(f"labels must have shape (batch, num_slots)={tuple(shape)}, got {tuple(labels.shape)}")
    valid = labels != IGNORE_INDEX
    if bool(((labels[valid] < 0) | (labels[valid] >= num_items)).any()):
        raise ValueError(f"labels must be item rows in [0, {num_items}) or {IGNORE_INDEX}")
    return labels


def slot_loss(
    slot_hidden: torch.Tensor,
    labels: torch.LongTensor,
    operands: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]],
    chunk_size: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(loss, logits)``: mean CE over slots whose label is not -100 (paper eq. 3 over the first k slots).

    ``operands(hidden) -> (x, weight, bias)`` is the head (``GLTAHead.operands``). With ``chunk_size`` < |I| only the
    labelled slots enter the head, chunk by chunk, and ``logits`` is None; otherwise the (B, L, |I|) logits are built
    and returned. Same loss and gradients either way up to float rounding.
    """
    x, weight, bias = operands(slot_hidden)
    num_items = weight.shape[0]
    labels = check_labels(labels, slot_hidden.shape[:2], num_items, slot_hidden.device)
    if chunk_size and num_items > chunk_size:
        flat = labels.reshape(-1)
        valid = flat != IGNORE_INDEX
        x = x.reshape(-1, x.shape[-1])[valid]
        return chunked_linear_cross_entropy(x, weight, bias, flat[valid], chunk_size), None
    logits = F.linear(x, weight, bias)
    loss = F.cross_entropy(logits.reshape(-1, num_items), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    return loss, logits


def other_targets_mask(labels: torch.LongTensor, num_items: int) -> torch.Tensor:
    """(B, L, |I|) bool: True at slot t of sample b for the *other* targets of b (``labels[b, s]``, s != t).

    Each slot's target is one of the user's positives; with the others left in its softmax, every correct answer
    of the other slots counts against it. Masking them scores each slot against the non-targets only (the sampled
    "other positives" exclusion of multi-positive softmax losses)."""
    batch, slots = labels.shape
    valid = labels != IGNORE_INDEX
    mask = torch.zeros(batch, slots, num_items, dtype=torch.bool, device=labels.device)
    rows = torch.arange(batch, device=labels.device)
    for s in range(slots):
        hit = valid[:, s]
        if hit.any():
            mask[rows[hit], :, labels[hit, s]] = True
            mask[rows[hit], s, labels[hit, s]] = False  # a slot keeps its own target
    return mask


def masked_slot_loss(logits: torch.Tensor, labels: torch.LongTensor,
                     known: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean CE over labelled slots of ``logits`` (B, L, |I|), each slot's softmax without the sample's other
    targets (:func:`other_targets_mask`) and, with ``known`` ((B, |I|) bool: the user's training items), without
    the user's other training items too -- the items evaluation masks, so the softmax ranks a target against what
    a recommendation could be. A slot always keeps its own target."""
    labels = check_labels(labels, logits.shape[:2], logits.shape[-1], logits.device)
    mask = other_targets_mask(labels, logits.shape[-1])
    if known is not None:
        if known.shape != (logits.shape[0], logits.shape[-1]):
            raise ValueError(f"known items: shape {tuple(known.shape)}, expected {(logits.shape[0], logits.shape[-1])}")
        mask = mask | known.to(mask.device)[:, None, :]
        own = labels.clamp(min=0)[..., None]
        mask.scatter_(-1, own, torch.zeros_like(own, dtype=torch.bool))  # (ignored slots: no loss either way)
    masked = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(masked.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
