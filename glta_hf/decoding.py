"""Decoding (paper sec. 4.5): item rankings from the GLLM head's slot logits, one registered class per decoder.

A decoder is a :class:`Decoder` subclass registered under its name with :func:`register_decoder` (like the heads in
``glta_hf.components``): ``GLTAForRecommendation.rank``, ``recommend``, the evaluator and every command-line
``--decoding`` accept exactly the names in :data:`DECODERS`. Its :attr:`~Decoder.one_item_per_slot` says whether
it yields at most L items (``k <= num_slots``, :meth:`Decoder.max_items`): ``check_k``, ``metrics.usable_ks`` and
the benchmark's cut-offs read it from here.

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

A graph residual model's gate can be re-weighted at evaluation (``Decoder.rank_gate_scales``, ``check_gate_scales``):
the LLM runs once and every scale decodes its own logits ``gate * s * head + scale * e_u . E_i`` (scale 1: the
learned model, bit for bit; 0: the graph term alone), so a sweep of the gate costs one evaluation's LLM time.
Imports only torch and siblings (copied as remote code).
"""
from __future__ import annotations

import numbers
from typing import Callable, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .errors import GLTAError
from .prefix_cache import positions_from_mask, run_with_prefix

LogitChunks = Callable[[slice], Iterable[Tuple[int, torch.Tensor]]]


class ArgumentError(GLTAError, ValueError):
    """An argument of ``rank`` / ``recommend`` / ``ranker`` is invalid; the message names the argument."""


# ----------------------------------------------------------------------------------------------- the registry


class Decoder:
    """One decoding. Subclasses implement :meth:`decode` (from the head's logit chunks) or, when the LLM must run
    between slots, :meth:`rank_gate_scales` (from the encoded batch)."""

    #: the registered name (set by :func:`register_decoder`)
    name: ClassVar[str] = ""
    #: yields at most one item per slot, so at most L items (``k <= num_slots``)
    one_item_per_slot: ClassVar[bool] = False

    def max_items(self, num_slots: int) -> Optional[int]:
        """The longest list this decoder yields for L = ``num_slots`` (None: the catalogue is the only bound)."""
        return num_slots if self.one_item_per_slot else None

    def rank(self, model, batch: Dict[str, Optional[torch.Tensor]], k: int, blocked: torch.Tensor,
             prefix_span: str = "text") -> Tuple[torch.LongTensor, torch.Tensor]:
        """``(items, scores)`` (B, k) for an encoded batch (``input_ids``, ``attention_mask``, ``user_ids``,
        ``item_ids``, ``user_node_embeddings``) of ``model`` (a ``GLTAForRecommendation``): the learned model,
        :meth:`rank_gate_scales` at gate scale 1."""
        return self.rank_gate_scales(model, batch, k, blocked, (1.0,), prefix_span=prefix_span)[0]

    def rank_gate_scales(self, model, batch: Dict[str, Optional[torch.Tensor]], k: int, blocked: torch.Tensor,
                         gate_scales: Sequence[float], prefix_span: str = "text"
                         ) -> List[Tuple[torch.LongTensor, torch.Tensor]]:
        """One ``(items, scores)`` per multiplier of the graph residual's gate (``GraphResidual.extend``; 1: the
        learned model). The split: the slot hidden states (the LLM, the cost) once; then per scale the head's logits
        plus the graph term and :meth:`decode` (a matmul over the catalogue and a top-k)."""
        slot_hidden = model.slot_hidden_states(**batch, prefix_span=prefix_span)
        graph_users = model.graph_user_vectors(batch["input_ids"], batch.get("user_ids"), batch.get("user_node_embeddings"))
        return [self.decode(model.logit_chunks(slot_hidden, graph_users, gate_scale=scale), k, blocked)
                for scale in gate_scales]

    def decode(self, chunks: LogitChunks, k: int, blocked: torch.Tensor) -> Tuple[torch.LongTensor, torch.Tensor]:
        """``(items, scores)`` (B, k) from the head's logits; ``blocked`` (B, |I|) bool: items never returned."""
        raise ArgumentError(f"decoding={self.name!r} runs the LLM between slots: it ranks encoded batches "
                            "(GLTAForRecommendation.rank), not logits")


#: name -> the registered decoder (an instance: decoders hold no state)
DECODERS: Dict[str, Decoder] = {}


def register_decoder(name: str):
    """Class decorator: make a :class:`Decoder` subclass available as ``decoding=name`` everywhere."""

    def wrap(cls):
        if not (isinstance(cls, type) and issubclass(cls, Decoder)):
            raise TypeError(f"register_decoder({name!r}) needs a Decoder subclass, got {cls!r}")
        cls.name = name
        DECODERS[name] = cls()
        return cls

    return wrap


def decoder_names() -> Tuple[str, ...]:
    """The registered decodings, in registration order."""
    return tuple(DECODERS)


def get_decoder(decoding) -> Decoder:
    """The decoder registered as ``decoding``; anything else is an :class:`ArgumentError` listing them."""
    if not isinstance(decoding, str) or decoding not in DECODERS:
        raise ArgumentError(f"decoding must be one of {decoder_names()}, got {decoding!r}")
    return DECODERS[decoding]


def check_decoding(decoding) -> str:
    return get_decoder(decoding).name


def cutoffs_within(ks: Sequence[int], decoding: str, num_slots: int) -> Tuple[int, ...]:
    """The cut-offs of ``ks`` that ``decoding`` can fill with L = ``num_slots`` (all of them unless it yields at
    most one item per slot)."""
    limit = get_decoder(decoding).max_items(num_slots)
    return tuple(int(k) for k in ks if limit is None or int(k) <= limit)


def is_sequence_argument(value) -> bool:
    """An iterable that is not text: a str or bytes is one value, never a sequence of its characters."""
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes))


def check_gate_scales(gate_scales) -> Tuple[float, ...]:
    """``gate_scales`` (multipliers of a graph residual's learned gate) as a tuple of floats: a non-empty sequence of
    distinct finite numbers >= 0; anything else is an :class:`ArgumentError` naming ``gate_scales``."""
    if not is_sequence_argument(gate_scales):
        raise ArgumentError(f"gate_scales must be a sequence of numbers >= 0, got {gate_scales!r}")
    scales = []
    for value in gate_scales:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < float("inf"):
            raise ArgumentError(f"gate_scales: each must be a finite number >= 0, got {value!r}")
        scales.append(float(value))
    if not scales:
        raise ArgumentError("gate_scales: give at least one scale")
    if len(set(scales)) != len(scales):
        raise ArgumentError(f"gate_scales: a scale is repeated in {scales}")
    return tuple(scales)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int >= 1; a bool, a float or anything else is an :class:`ArgumentError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ArgumentError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_k(k, decoding: str, num_items: int, num_slots: int, most_seen: int = 0) -> int:
    """Validate ``k`` for ``decoding`` against the catalogue, the slots and the most items any user has seen."""
    decoder = get_decoder(decoding)
    k = check_positive_int("k", k)
    if k > num_items:
        raise ArgumentError(f"k={k} exceeds the catalogue size |I|={num_items}")
    limit = decoder.max_items(num_slots)
    if limit is not None and k > limit:
        longer = [name for name, other in DECODERS.items() if other.max_items(num_slots) is None]
        raise ArgumentError(
            f"decoding={decoding!r} yields at most num_slots={num_slots} items, asked k={k}; "
            f"use decoding={' or '.join(repr(n) for n in longer)} for longer lists"
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
    """``(items, scores)`` (B, k) of the decoder ``decoding`` from logit chunks. ``blocked`` (B, |I|) bool: items
    never returned."""
    return get_decoder(decoding).decode(chunks, k, blocked)


# ----------------------------------------------------------------------------------------------- the decoders


@register_decoder("first_k")
class FirstK(Decoder):
    """The paper's decoding: slot t proposes its best item not seen and not proposed by slots 1..t-1."""

    one_item_per_slot = True

    def decode(self, chunks, k, blocked):
        # slot t takes its best candidate not taken by slots 1..t-1: t-1 items at most are taken before it, so its
        # k best candidates always hold that item
        scores, items = slot_candidates(chunks, slice(0, k), k, blocked)
        items, scores = take_distinct(scores, items)
        return items, cumulative_log_prob(scores)


@register_decoder("first_logit")
class FirstLogit(Decoder):
    """FL: the k best items of slot 1."""

    def decode(self, chunks, k, blocked):
        scores, items = slot_candidates(chunks, slice(0, 1), k, blocked)
        return items[:, 0], scores[:, 0]


@register_decoder("autoregressive")
class Autoregressive(Decoder):
    """AR (paper sec. 4.5): slot t's chosen item token is fed back as the next input before predicting t+1.

    Exactly: the batch is left-padded so the L slots are the last L columns. The prompt up to and including slot 1
    runs once (KV cache on); slot 1's hidden state picks item i_1 (best unseen). Then for t = 2..k one step is run
    with the cache whose input at slot t's position is ``s_t + V_i[i_{t-1}]`` -- slot t's own vector plus the
    projected item token just chosen, the way an LM feeds back its generated token -- and slot t's hidden state
    picks i_t among items neither seen nor chosen. Training never shows fed-back items, the train/inference
    mismatch the paper blames for AR's weak results. Scores: the cumulative log-probability. With
    ``enable_prefix_cache`` the text prefix comes from the store (the training run's: a test pass over a large
    catalogue's users computes no prefix twice) and only the rest runs, then the steps; the same items and scores
    within float rounding.

    Each step scores one slot row per user through :func:`slot_candidates`, chunked over the items when
    ``config.rank_chunk_size`` < |I| (B x chunk logits per step; the LLM steps themselves are not chunked). The
    LLM runs through the base model's ``run_llm``.
    """

    one_item_per_slot = True

    def rank_gate_scales(self, model, batch, k, blocked, gate_scales, prefix_span="text"):
        """One LLM pass per scale: the fed-back items, hence the later slots' states, depend on the scale."""
        return [self.rank_one(model, batch, k, blocked, scale) for scale in gate_scales]

    @staticmethod
    def through_first_slot(base, batch, num_slots: int):
        """The LLM over each prompt through slot 1 with its KV cache kept: ``(output, attention mask, positions,
        columns run)``, the mask and positions covering the whole prompt (cached prefix included) so the steps
        extend them."""
        user_ids, user_nodes = batch.get("user_ids"), batch.get("user_node_embeddings")
        if base.prefix_store is not None:
            split, prefix, suffix = base.serve_prefixes(batch["input_ids"], batch["attention_mask"], user_ids,
                                                        batch.get("item_ids"), user_nodes)
            first = suffix.shape[1] - num_slots + 1
            out = run_with_prefix(base, prefix, suffix[:, :first], split.suffix_mask[:, :first])
            attention_mask = torch.cat([prefix.mask.to(suffix.device).long(), split.suffix_mask.to(suffix.device).long()],
                                       dim=1)  # the whole prompt's, which the steps extend
            return out, attention_mask, positions_from_mask(attention_mask), prefix.mask.shape[1] + first
        input_ids, attention_mask = to_left_padding(batch["input_ids"], batch["attention_mask"])
        embeds = base.get_inputs_embeds(input_ids, user_ids, batch.get("item_ids"), user_nodes)
        positions = positions_from_mask(attention_mask)
        first = input_ids.shape[1] - num_slots + 1  # everything through slot 1
        out = base.run_llm(embeds[:, :first], attention_mask[:, :first], positions[:, :first], use_cache=True)
        return out, attention_mask, positions, first

    def rank_one(self, model, batch, k, blocked, gate_scale: float = 1.0):
        base, num_slots = model.model, model.config.num_slots
        out, attention_mask, positions, ran = self.through_first_slot(base, batch, num_slots)
        B, dtype = attention_mask.shape[0], base.get_input_embeddings().weight.dtype
        blocked, rows = blocked.clone(), torch.arange(B, device=attention_mask.device)
        graph_users = model.graph_user_vectors(batch["input_ids"], batch.get("user_ids"),
                                               batch.get("user_node_embeddings"))
        items, scores = [], []
        for t in range(k):
            hidden = out.last_hidden_state[:, -1:]
            chunks = model.logit_chunks(hidden, graph_users, gate_scale=gate_scale)
            score, item = slot_candidates(chunks, slice(0, 1), 1, blocked)
            score, item = score[:, 0, 0], item[:, 0, 0]
            blocked[rows, item] = True
            items.append(item)
            scores.append(score)
            if t + 1 == k:
                break
            col = ran + t
            step = base.slot_embeddings[t + 1] + base.item_input_vectors(item)
            out = base.run_llm(
                step.to(dtype).unsqueeze(1),
                attention_mask[:, : col + 1],
                positions[:, col : col + 1],
                cache=llm_cache(out),
                use_cache=True,
            )
        return torch.stack(items, dim=1), cumulative_log_prob(torch.stack(scores, dim=1))


@register_decoder("all_slots")
class AllSlots(Decoder):
    """Every item scored by ``log sum_t p_t(i)`` over the L slots: a full ranking for any k."""

    def decode(self, chunks, k, blocked):
        best = None
        for start, scores in all_slot_score_chunks(chunks):
            scores = scores.masked_fill(blocked[:, start : start + scores.shape[1]], float("-inf"))
            vals, idx = topk_first(scores, k)
            best = merge_topk(best, vals, idx + start, k)
        return best[1], best[0]


def llm_cache(output):
    """The KV cache of an LLM output (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output["past_key_values"]


def to_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Move every row's padding to the left (a no-op for left-padded batches); the L slots end each row."""
    width = input_ids.shape[1]
    lengths = attention_mask.long().sum(dim=1, keepdim=True)
    left = torch.arange(width, device=input_ids.device).unsqueeze(0) >= width - lengths
    if bool((attention_mask.bool() == left).all()):
        return input_ids, attention_mask
    order = torch.argsort(attention_mask.long(), dim=1, stable=True)  # pads first, tokens keep their order
    return input_ids.gather(1, order), attention_mask.gather(1, order)


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
