"""The item stage's title warm-up (``--item_title_warmup_steps``) and its held-out measure, title retrieval.

Why: the item stage asks the frozen LLM to match each ``<item>`` token with one of m item descriptions; its tokens
start as a random projection of the LightGCN vectors, so the LLM has nothing to match and a full item epoch (~20
LLM forward / backward steps on ml-100k) ended at chance (``docs/TRAINING_MECHANICS.md``). Before those steps the
warm-up places each training item's token where the LLM itself represents the item's text: the mean of the frozen
LLM's input-embedding rows of that text's tokens (:func:`title_embeddings`; the text the item-stage prompts show,
first :data:`TITLE_MAX_TOKENS` tokens), at the scale of the LLM's tokens. Only the item projector moves, in
full-batch Adam steps with no LLM forward (:func:`warm_up_item_projector`): a step costs one |I_train| x |I_train|
similarity and softmax, not an LLM pass (~3.5 s on one CPU thread for ml-latest-small's 9,724 items).

:func:`title_retrieval` measures the result on items the fit never saw (the item stage's held-out items): the rank
of an item's own text embedding among the whole catalogue's by cosine with its projected token; chance is 1/|I|
for top-1 and H_|I| / |I| for the MRR of a random ranking.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .prompts import ITEM_TOKEN, neutralize_text

logger = logging.getLogger(__name__)

#: tokens of an item's text averaged into its title embedding (the title and the first fields come first)
TITLE_MAX_TOKENS = 32
#: temperature of the warm-up's contrastive term (cosines of mean-pooled texts sit close together)
TITLE_TEMPERATURE = 0.05


@torch.no_grad()
def title_embeddings(model, item_texts: Sequence[str], items: Optional[Sequence[int]] = None,
                     max_tokens: int = TITLE_MAX_TOKENS, chunk_size: int = 4096) -> torch.Tensor:
    """``(len(items), hidden)`` float32 on the LLM's embedding device: for each item (default: every text), the mean
    of the frozen LLM's input-embedding rows of the first ``max_tokens`` tokens of its text, as the item-text
    prompts show it (:func:`glta_hf.prompts.neutralize_text`). A text without tokens gives a zero row."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    weight = model.get_input_embeddings().weight
    rows = range(len(item_texts)) if items is None else [int(i) for i in items]
    texts = [neutralize_text(item_texts[i]) for i in rows]
    out = torch.zeros(len(texts), weight.shape[1], dtype=torch.float32, device=weight.device)
    for start in range(0, len(texts), chunk_size):
        ids = model.tokenizer(texts[start:start + chunk_size], add_special_tokens=False)["input_ids"]
        ids = [row[:max_tokens] for row in ids]
        lengths = torch.tensor([len(row) for row in ids], device=weight.device)
        flat = torch.tensor([t for row in ids for t in row], dtype=torch.long, device=weight.device)
        offsets = torch.cumsum(lengths, 0) - lengths
        out[start:start + len(ids)] = F.embedding_bag(flat, weight, offsets, mode="mean").float()
    return out


def _projected(model, items: torch.Tensor) -> torch.Tensor:
    """``P(E_i)`` of ``items`` as the model's ``<item>`` tokens read it (centring included), float32."""
    table = model.item_embeddings
    return model.model.project(ITEM_TOKEN, table[items.to(table.device)]).float()


@torch.no_grad()
def title_retrieval(model, title_emb: torch.Tensor, items: Sequence[int], candidates: Optional[Sequence[int]] = None,
                    *, prefix: str = "item_title_", chunk_size: int = 1024) -> Dict[str, float]:
    """Each of ``items``' own text embedding (row of ``title_emb``, the catalogue's :func:`title_embeddings`) ranked
    among ``candidates``' rows (default: all) by cosine with the item's projected token.

    ``{prefix}top1``: share ranked first (chance ``{prefix}chance`` = 1/#candidates); ``{prefix}mrr``: mean
    reciprocal rank (a random ranking's expectation ``{prefix}chance_mrr`` = H_n / n); ``{prefix}items``: how many
    were ranked. Ties count in the item's favour (an identical text ranks with it)."""
    device = title_emb.device
    items_t = torch.as_tensor(np.asarray(items, dtype=np.int64), device=device)
    table = F.normalize(title_emb if candidates is None else
                        title_emb[torch.as_tensor(np.asarray(candidates, dtype=np.int64), device=device)], dim=-1)
    top1 = rr = 0.0
    for part in items_t.split(chunk_size):
        token = F.normalize(_projected(model, part).to(device), dim=-1)
        own = (token * F.normalize(title_emb[part], dim=-1)).sum(-1, keepdim=True)
        rank = (token @ table.T > own + 1e-6).sum(-1) + 1
        top1 += float((rank == 1).sum())
        rr += float((1.0 / rank.double()).sum())
    n, size = len(items_t), table.shape[0]
    harmonic = sum(1.0 / k for k in range(1, size + 1))
    return {f"{prefix}top1": top1 / n if n else 0.0, f"{prefix}mrr": rr / n if n else 0.0,
            f"{prefix}chance": 1.0 / size if size else 0.0, f"{prefix}chance_mrr": harmonic / size if size else 0.0,
            f"{prefix}items": int(n)}


def warm_up_item_projector(model, title_emb: torch.Tensor, items: Sequence[int], steps: int, lr: float, *,
                           temperature: float = TITLE_TEMPERATURE, chunk_size: int = 4096,
                           factored: Optional[bool] = None) -> Dict[str, float]:
    """``steps`` full-batch Adam steps on the item projector alone, fitting each of ``items``' token ``P(E_i)`` to
    its text embedding ``T_i`` (row ``i`` of ``title_emb``, the catalogue's :func:`title_embeddings`).

    Loss = InfoNCE + a scale term. InfoNCE (cosine / ``temperature``, every other item of ``items`` a negative)
    spends the projector's limited rank (a linear map from LightGCN's d dimensions) on what tells the items'
    texts apart; its gradient cancels whatever all texts share, so it leaves the token's norm and shared direction
    free. The scale term fixes both: ``||P(E_i) - s T_i / ||T_i|| ||^2 / s^2``, the text's own direction at ``s``,
    the LLM's mean token-embedding norm (``model.token_embedding_norm()``, where every projector starts). Not the MSE
    to ``T_i`` itself: a mean of token rows is short and close to every other (SmolLM2 on ml-100k's texts: norm 1.0
    against 3.2 for a token, mean pairwise cosine 0.84), so raw means would make the ``<item>`` tokens a third of a
    token's scale and nearly alike. The scale term alone is met by each text's own direction; InfoNCE adds the
push away from the other texts that ranks them where the projector cannot fit every text. Items whose text has
no token (a zero row) are left out. The LLM never runs; the projector's
    ``requires_grad`` is restored and its gradients cleared afterwards (the stage's optimizer starts clean). The
    anchors go in chunks of ``chunk_size``, gradients accumulated: the same full-batch step in bounded memory.

    ``factored`` (default: when the item projector is linear) computes the cosine logits through the node width:
    ``(W e + b) . c = e . (W^T c) + b . c``, so the |I| x |I| product runs over d (LightGCN's 64) instead of the
    LLM's hidden size (576 for SmolLM2): the same loss and gradients (up to rounding). Measured on ml-latest-small's
    9,724 items (``benchmarks/perf/title_warmup_speed.py``): 3.5 s a step against 4.6 s, 1.24x -- the softmax over
    the |I| x |I| logits, not the product, dominates a step at this size.

    Returns ``{"steps", "lr", "loss_start", "loss_end", "nce_end", "scale_end", "norm_ratio_end" (mean
    ||P(E_i)|| / s), "train_top1_start", "train_top1_end" (own text first among the training items'), "seconds"}``.
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    items = np.asarray(items, dtype=np.int64)
    items = items[(title_emb[torch.as_tensor(items, device=title_emb.device)].norm(dim=-1) > 0).cpu().numpy()]
    if len(items) < 2:
        raise ValueError(f"the title warm-up needs at least 2 items with text (each other's negatives), got "
                         f"{len(items)}")
    t0 = time.perf_counter()
    projector = model.model.item_projector
    params = list(projector.parameters())
    was_trainable = [p.requires_grad for p in params]
    device = params[0].device
    items_t = torch.as_tensor(items, device=device)
    candidates = F.normalize(title_emb[items_t.to(title_emb.device)].to(device), dim=-1)
    scale = float(model.token_embedding_norm())
    targets = candidates * scale
    n = len(items)
    if factored is None:
        factored = isinstance(projector, torch.nn.Linear)
    elif factored and not isinstance(projector, torch.nn.Linear):
        raise ValueError(f"factored=True needs a linear item projector, got {type(projector).__name__}")
    if factored:
        with torch.no_grad():  # what the projector reads (centring included): fixed during the warm-up
            nodes = model.model.projector_inputs(ITEM_TOKEN, model.item_embeddings[items_t]).float()
    result: Dict[str, float] = {"steps": steps, "lr": float(lr)}
    result["train_top1_start"] = title_retrieval(model, title_emb, items, items, prefix="")["top1"]

    def loss_and_backward(backward: bool):
        """Full-batch loss (and its gradient): the anchors in chunks, every training text a candidate."""
        nce = fit = norm = 0.0
        if factored:  # the candidates seen through the projector: (n, d) keys and (n,) key biases
            with torch.set_grad_enabled(backward):
                keys = candidates @ projector.weight.float()
                key_bias = candidates @ projector.bias.float()
            keys_in = keys.detach().requires_grad_(backward)  # the chunks' gradients gather here, then flow once
            key_bias_in = key_bias.detach().requires_grad_(backward)
        for part in torch.arange(n, device=device).split(chunk_size):
            with torch.set_grad_enabled(backward):
                token = _projected(model, items_t[part])
                if factored:
                    cosine_scale = token.norm(dim=-1, keepdim=True).clamp_min(1e-12) * temperature
                    logits = (nodes[part] @ keys_in.T + key_bias_in) / cosine_scale
                else:
                    logits = F.normalize(token, dim=-1) @ candidates.T / temperature
                part_nce = F.cross_entropy(logits, part, reduction="sum") / n
                part_fit = (token - targets[part]).pow(2).sum(-1).sum() / (n * scale ** 2)
                if backward:
                    (part_nce + part_fit).backward()
            nce, fit = nce + float(part_nce.detach()), fit + float(part_fit.detach())
            norm += float(token.detach().norm(dim=-1).sum())
        if factored and backward:
            torch.autograd.backward([keys, key_bias], [keys_in.grad, key_bias_in.grad])
        return nce, fit, norm / n

    optimizer = torch.optim.Adam(params, lr=lr)
    try:
        for p in params:
            p.requires_grad_(True)
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            nce, fit, _ = loss_and_backward(True)
            if step == 0:
                result["loss_start"] = nce + fit
            if not math.isfinite(nce + fit):
                raise ValueError(f"title warm-up: non-finite loss at step {step} (lower item_title_learning_rate)")
            optimizer.step()
        nce, fit, norm = loss_and_backward(False)
    finally:
        for p, trainable in zip(params, was_trainable):
            p.grad = None
            p.requires_grad_(trainable)
    result.setdefault("loss_start", nce + fit)
    result.update({"loss_end": nce + fit, "nce_end": nce, "scale_end": fit, "norm_ratio_end": norm / scale,
                   "train_top1_end": title_retrieval(model, title_emb, items, items, prefix="")["top1"],
                   "seconds": round(time.perf_counter() - t0, 3)})
    return result
