"""Exact cached text prefixes: a frozen LLM's key/value states over the placeholder-free start of a prompt.

Why this is exact
    The LLM is frozen and every token before a prompt's first placeholder (``<user>`` / ``<item>`` / ``<slot>``) is
    plain text, so that prefix's key/value states depend on no trainable weight and no trainable input. Position
    ids come from the attention mask (cumsum, as in the model's forward), so a prefix's states do not depend on
    how much left padding it had when it was computed. Running the prefix once under ``torch.no_grad`` and only
    the suffix (placeholders, slots, the text between them) with gradients therefore gives the same suffix hidden
    states and the same gradients as the full forward, with any mix of prefix and suffix lengths in a batch.
    It is wrong when the prefix passes through trainable weights (LoRA, unfrozen layers): :func:`check_cacheable`
    refuses those with :class:`PrefixCacheError`.

Pieces (the model calls them in this order)
    * :func:`split_prompt_batch` -- a collated batch (any padding side) -> left-padded prefix ids / mask and
      left-padded suffix ids / mask (the L slots end every suffix row), plus per-row prefix lengths and hashes.
    * :func:`prefix_key_values` / :func:`prefix_key_values_from_embeds` -- run prefixes (token ids / input
      vectors) through the frozen LLM (no grad) -> :class:`PrefixKV`.
    * :class:`PrefixStore` -- per-prefix :class:`PrefixKV` entries keyed by :class:`PrefixKey` (user, prefix
      hash, LLM, dtype, layout): an LRU in memory under a byte budget, spilled to memory-mapped safetensors
      shards on disk; :meth:`PrefixStore.get_or_compute` computes only the missing prefixes, in one batched call
      per shared head. The common start of many prefixes (a shared head) is kept, and computed, once.
    * :func:`cached_prefix` -- the two above together: the batch's prefixes from the store, left-padded.
    * :func:`forward_with_prefix` -- the suffix through the LLM (with grad), attending to the prefix through a
      fresh ``DynamicCache`` -> the suffix's last hidden states.

Example (one store per run, shared by training, evaluation and ``recommend()``)::

    base = model.model                               # the GLTAModel of a GLTAForRecommendation
    base.check_prefix_cacheable()                    # once, when caching is switched on
    store = PrefixStore(max_bytes=8 << 30)           # + folder=... to keep the prefixes for later runs / serving
    llm_key = base.llm_fingerprint()
    slot_hidden = cached_slot_hidden_states(base, store, batch["input_ids"], batch["attention_mask"],
                                            batch["user_ids"], batch["item_ids"], llm_key=llm_key,
                                            layout=base.prompt_config.layout)
    logits = model.score_slots(slot_hidden)          # == model(**batch).logits, gradients included

(``model.enable_prefix_cache()`` does all of this.) The model-level function reaches the LLM only through the base
model's public methods (``run_llm``, ``get_input_embeddings``, ``llm_config``, ``check_prefix_cacheable``); the
standalone functions accept a bare decoder too (:class:`BareLLM` gives it the same methods), and both end in
:func:`call_llm`, the one place an LLM is called.

Serving span (``cached_slot_hidden_states(..., span="slots")``, what ``recommend()`` uses)
    At serving time the projectors and node tables are fixed too, so everything before the first ``<slot>`` (text,
    ``<user>``, history ``<item>`` s) is frozen: its states are cached under a content key (token ids + the bytes
    of the placeholder vectors, :func:`slot_span_hash`) and only the L slots run per request. No gradient can
    pass through a cached placeholder, so this span is refused with gradients enabled; training and evaluation
    keep the text span (their projectors change every step, the entries would only fill the store).

Shared heads (how the store keeps entries; what it returns is unchanged)
    Most prompts of a dataset start with the same tokens (chat template, system prompt, instruction: 53 of
    ml-1m's ~162 prefix tokens), and a causal LLM's states at positions 0..h-1 depend on those h tokens alone
    (positions come from the mask), so they are the same in every prefix that starts with them. The store learns
    such a head from the token ids of the prefixes it computes (:func:`cached_prefix` passes them): the longest
    common start of a computed batch, if at least ``MIN_HEAD_TOKENS`` long. An entry that starts with a head's
    ids (same LLM, dtype, layout) is kept, in memory and on disk, as its tail plus a reference; a lookup returns
    head + tail, the whole prefix (equal to a full computation within float rounding across batches). That cuts
    ml-1m's float32 SmolLM2 store by about a third (42 -> ~28 GB). A new prefix that starts with a stored head is
    computed from its tail only, attending to the head's states (:func:`tail_key_values`): the head's share of
    the LLM's work on new prefixes is saved too (the first epoch of a run, where prefixes are computed, not read).

A :class:`PrefixKV` never leaves this module inside a cache object: every forward builds a new ``DynamicCache``
from the stored tensors (``DynamicCache`` grows by concatenation, so the stored tensors are never modified).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .errors import GLTAError
from .io_utils import read_json, save_safetensors, write_json
from .prompts import prefix_hash

#: A store's memory budget unless told otherwise (align.py's ``--prefix_cache_max_gb``, evaluate.py's
#: ``--prefix-cache-max-gb``); prefixes beyond it are memory-mapped from disk.
DEFAULT_MAX_BYTES = 2 << 30

INDEX_NAME = "prefix_index.json"
SHARD_PATTERN = "prefix-{:05d}.safetensors"
#: Format 2 added shared heads (entries may be tails); format 3 each entry's and head's own sha256 (checked as it is
#: read, so a run reads only the entries it serves; format 1 and 2 stores still read, their shards hashed whole).
INDEX_FORMAT = "glta-prefix-index-3"
INDEX_FORMATS = ("glta-prefix-index-1", "glta-prefix-index-2", INDEX_FORMAT)
#: The shortest common start of a computed batch that becomes a shared head. Shorter ones save little (a chat
#: template's opening) and are often chance agreements of a few prompts, each of which would add a head.
MIN_HEAD_TOKENS = 16
#: At most this many heads per store (one per prompt family is expected): every new entry is matched against each.
MAX_HEADS = 16


class PrefixCacheError(GLTAError, ValueError):
    """Prefix caching would not be exact for this LLM (trainable or adapted weights, sliding-window attention), or
    its inputs are inconsistent (shapes, masks, store files)."""


# ----------------------------------------------------------------------------------------------- checks


def check_cacheable(llm: nn.Module) -> None:
    """Raise :class:`PrefixCacheError` (saying why) unless caching ``llm``'s prefix states is exact.

    Refused: a PEFT / LoRA adapter (the prefix would pass through trainable adapter weights), any LLM parameter
    that requires grad, attention dropout while training, and layers other than full attention (a sliding
    window counts cache slots, not positions, so left padding would shift it).

    Runs on every cached batch (the LLM may have changed since caching was switched on), so the parameter scan --
    a walk over every module, ~1-3 ms for a 30-layer LLM -- is remembered per LLM: it is redone when a module or
    parameter was registered on one of the LLM's modules since (torch's global registration hooks report it: a
    LoRA adapter injected, a layer replaced) or a remembered parameter left its module; otherwise only the
    remembered parameters' ``requires_grad`` flags are read again (~30 us). Deleting a parameter cannot make a
    frozen LLM trainable, so it needs no hook.
    """
    if hasattr(llm, "peft_config"):
        raise _lora_refused()
    config = getattr(llm, "config", None)
    if llm.training and float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        raise PrefixCacheError(
            f"prefix caching is refused: the LLM is in training mode with attention_dropout="
            f"{config.attention_dropout}, so its prefix states are random; call llm.eval()."
        )
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:  # older configs: a sliding window is in use unless switched off (Qwen2's flag)
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        layer_types = ["sliding_attention" if window else "full_attention"]
    if any(kind != "full_attention" for kind in layer_types):
        raise PrefixCacheError(
            f"prefix caching supports full-attention layers only; this LLM has layer types {sorted(set(layer_types))}"
        )
    _FROZEN_SCANS.check(llm)


def _lora_refused() -> PrefixCacheError:
    return PrefixCacheError(
        "prefix caching is refused: the LLM carries a PEFT/LoRA adapter, so the prefix's key/value states depend "
        "on trainable adapter weights and a cached prefix would go stale after every optimizer step. "
        "Train without LoRA or run the uncached forward."
    )


class _FrozenScan:
    """One LLM's passed parameter scan: its parameters (with the dicts that own them) and its modules' ids."""

    def __init__(self, owned: list, module_ids: frozenset):
        self.owned, self.module_ids, self.stale = owned, module_ids, False

    def still_frozen(self) -> bool:
        return not self.stale and all(owner.get(name) is param and not param.requires_grad
                                      for owner, name, param in self.owned)


class _FrozenParameterScans:
    """Remembers, per LLM, the parameters a full scan found frozen (see :func:`check_cacheable`).

    A scan goes stale when torch's global registration hooks report a module or parameter registered ON one of
    the LLM's modules (an adapter injected, a layer replaced). Registrations elsewhere do not count: transformers
    slices ``self.layers`` into a new ``ModuleList`` on every forward, which registers the layers again."""

    def __init__(self):
        self._hooked = False
        self._scans: "weakref.WeakKeyDictionary[nn.Module, _FrozenScan]" = weakref.WeakKeyDictionary()

    def _registered(self, module: nn.Module, *_args) -> None:
        for scan in self._scans.values():
            if id(module) in scan.module_ids:
                scan.stale = True

    def check(self, llm: nn.Module) -> None:
        if not self._hooked:
            from torch.nn.modules.module import (register_module_module_registration_hook,
                                                 register_module_parameter_registration_hook)

            register_module_module_registration_hook(self._registered)
            register_module_parameter_registration_hook(self._registered)
            self._hooked = True
        scan = self._scans.get(llm)
        if scan is not None and scan.still_frozen():
            return
        self._scans.pop(llm, None)
        owned, names, trainable, module_ids = [], [], [], set()
        for prefix, module in llm.named_modules():
            module_ids.add(id(module))
            for name, param in module._parameters.items():
                if param is None:
                    continue
                owned.append((module._parameters, name, param))
                names.append(f"{prefix}.{name}" if prefix else name)
                if param.requires_grad:
                    trainable.append(names[-1])
        if any("lora_" in name for name in names):
            raise _lora_refused()
        if trainable:
            raise PrefixCacheError(
                f"prefix caching is refused: {len(trainable)} LLM parameters require grad (e.g. {trainable[:3]}), so "
                "the prefix's states are not fixed; freeze the LLM (glta_hf.backbone.freeze) or run the uncached forward."
            )
        self._scans[llm] = _FrozenScan(owned, frozenset(module_ids))


_FROZEN_SCANS = _FrozenParameterScans()


def cache_kwarg(llm: nn.Module) -> str:
    """The name of the key/value-cache argument of ``llm.forward``: ``cache`` in recent transformers 5.x,
    ``past_key_values`` before (passing the other name is silently swallowed by ``**kwargs``: no cache at all)."""
    params = inspect.signature(llm.forward).parameters
    return "cache" if "cache" in params or "past_key_values" not in params else "past_key_values"


def positions_from_mask(attention_mask: torch.Tensor) -> torch.LongTensor:
    """Position ids from a 2-D attention mask (0 at the first real token; padding gets 0): the model's rule."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def call_llm(llm: nn.Module, cache_arg: str, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
             position_ids: Optional[torch.LongTensor] = None, cache=None, use_cache: bool = False):
    """The one call of a frozen decoder (``GLTAModel.run_llm`` and :class:`BareLLM` both end here): position ids
    default to the attention mask's running count, so padding side never changes a result; ``cache`` continues
    from earlier steps under the decoder's own argument name ``cache_arg`` (:func:`cache_kwarg`)."""
    if position_ids is None:
        position_ids = positions_from_mask(attention_mask)
    return llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
               use_cache=use_cache, **{cache_arg: cache})


class BareLLM:
    """A bare frozen decoder seen through the methods the cached forward uses on a ``GLTAModel`` (``run_llm``,
    ``get_input_embeddings``, ``llm_config``, ``check_prefix_cacheable``), so this module's standalone functions
    accept either."""

    def __init__(self, llm: nn.Module):
        self.llm, self.llm_config, self._cache_arg = llm, llm.config, cache_kwarg(llm)

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def check_prefix_cacheable(self) -> None:
        check_cacheable(self.llm)

    def run_llm(self, inputs_embeds, attention_mask, position_ids=None, cache=None, use_cache: bool = False):
        return call_llm(self.llm, self._cache_arg, inputs_embeds, attention_mask, position_ids, cache, use_cache)


def _runner(llm):
    """A ``GLTAModel`` (anything with ``run_llm``) as it is, a bare decoder wrapped in :class:`BareLLM`."""
    return llm if hasattr(llm, "run_llm") else BareLLM(llm)


# ----------------------------------------------------------------------------------------------- key/value states


@dataclass(frozen=True)
class PrefixKV:
    """Key/value states of a batch of prefixes, left-padded.

    ``keys`` / ``values``: (layers, batch, kv_heads, prefix_len, head_dim) after rotary embedding, as the LLM's
    cache holds them; ``mask``: (batch, prefix_len), 1 = real token. Rows are padded on the left, so a row's real
    tokens are its last ``lengths[row]`` columns.
    """

    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.keys.shape != self.values.shape or self.keys.dim() != 5:
            raise PrefixCacheError(
                f"PrefixKV needs keys and values of one shape (layers, batch, heads, length, head_dim), got "
                f"{tuple(self.keys.shape)} and {tuple(self.values.shape)}"
            )
        if tuple(self.mask.shape) != (self.keys.shape[1], self.keys.shape[3]):
            raise PrefixCacheError(
                f"PrefixKV mask has shape {tuple(self.mask.shape)}, expected (batch, length)="
                f"{(self.keys.shape[1], self.keys.shape[3])}"
            )

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def lengths(self) -> List[int]:
        return self.mask.long().sum(dim=1).tolist()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.mask))

    def rows(self) -> List["PrefixKV"]:
        """One unpadded single-row :class:`PrefixKV` per sample (what the store keeps); copies, not views."""
        out = []
        for row, length in enumerate(self.lengths):
            cols = slice(self.keys.shape[3] - length, None)
            out.append(PrefixKV(
                self.keys[:, row : row + 1, :, cols].clone(),
                self.values[:, row : row + 1, :, cols].clone(),
                self.mask[row : row + 1, cols].clone(),
            ))
        return out

    @classmethod
    def concat(cls, entries: Sequence["PrefixKV"], device=None) -> "PrefixKV":
        """Stack single- or multi-row entries into one left-padded batch (padding states are zeros, masked out)."""
        if not entries:
            raise PrefixCacheError("PrefixKV.concat needs at least one entry")
        device = device if device is not None else entries[0].keys.device
        if len(entries) == 1:  # one request: no padding to add, no copy (to_cache never modifies the tensors)
            return entries[0].to(device)
        layers, _, heads, _, head_dim = entries[0].keys.shape
        width = max(e.keys.shape[3] for e in entries)
        batch = sum(e.batch_size for e in entries)
        ref = entries[0].keys
        keys = torch.zeros(layers, batch, heads, width, head_dim, dtype=ref.dtype, device=device)
        values = torch.zeros_like(keys)
        mask = torch.zeros(batch, width, dtype=torch.long, device=device)
        row = 0
        for e in entries:
            if e.keys.shape[0] != layers or e.keys.shape[2] != heads or e.keys.shape[4] != head_dim or e.keys.dtype != ref.dtype:
                raise PrefixCacheError(
                    f"PrefixKV.concat: entry of shape {tuple(e.keys.shape)} / {e.keys.dtype} does not match "
                    f"{tuple(ref.shape)} / {ref.dtype} (prefixes of another LLM or dtype)"
                )
            n, length = e.batch_size, e.keys.shape[3]
            keys[:, row : row + n, :, width - length :] = e.keys.to(device)
            values[:, row : row + n, :, width - length :] = e.values.to(device)
            mask[row : row + n, width - length :] = e.mask.to(device)
            row += n
        return cls(keys, values, mask)

    def to(self, device) -> "PrefixKV":
        return PrefixKV(self.keys.to(device), self.values.to(device), self.mask.to(device))

    def to_cache(self, config=None):
        """A NEW ``DynamicCache`` holding these states (the LLM appends the suffix's states to it, not to us)."""
        from transformers import DynamicCache

        return DynamicCache(
            ddp_cache_data=[(self.keys[layer], self.values[layer]) for layer in range(self.keys.shape[0])], config=config
        )


def _embed(runner, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The LLM's token embeddings; padding columns look up a valid id (their states are masked out)."""
    safe_id = getattr(runner.llm_config, "pad_token_id", None)
    safe_id = 0 if safe_id is None else int(safe_id)
    return runner.get_input_embeddings()(input_ids.masked_fill(attention_mask == 0, safe_id))


@torch.no_grad()
def prefix_key_values(llm, prefix_ids: torch.LongTensor, prefix_mask: torch.Tensor) -> PrefixKV:
    """Run left-padded placeholder-free prefixes through the frozen LLM once; return their key/value states.
    ``llm``: a ``GLTAModel`` or a bare decoder."""
    runner = _runner(llm)
    runner.check_prefix_cacheable()
    if prefix_ids.shape != prefix_mask.shape or prefix_ids.dim() != 2:
        raise PrefixCacheError(f"prefix ids {tuple(prefix_ids.shape)} and mask {tuple(prefix_mask.shape)} must be one (batch, length) shape")
    device = runner.get_input_embeddings().weight.device
    prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device).long()
    return _run_prefix(runner, _embed(runner, prefix_ids, prefix_mask), prefix_mask)


@torch.no_grad()
def prefix_key_values_from_embeds(llm, prefix_embeds: torch.Tensor, prefix_mask: torch.Tensor) -> PrefixKV:
    """:func:`prefix_key_values` of prefixes given as input vectors (B, T, hidden), left-padded: the serving span,
    whose placeholder rows are projected node embeddings rather than token ids."""
    runner = _runner(llm)
    runner.check_prefix_cacheable()
    if prefix_embeds.dim() != 3 or tuple(prefix_mask.shape) != tuple(prefix_embeds.shape[:2]):
        raise PrefixCacheError(
            f"prefix embeds {tuple(prefix_embeds.shape)} must be (batch, length, hidden) with a (batch, length) mask, "
            f"got mask {tuple(prefix_mask.shape)}"
        )
    device = runner.get_input_embeddings().weight.device
    return _run_prefix(runner, prefix_embeds.to(device), prefix_mask.to(device).long())


def _run_prefix(runner, prefix_embeds: torch.Tensor, prefix_mask: torch.LongTensor,
                after: Optional[PrefixKV] = None) -> PrefixKV:
    """The states of ``prefix_embeds``; with ``after`` (same rows), of a continuation that attends to those states
    and continues their positions (``after``'s own states are not returned)."""
    from transformers import DynamicCache

    if after is None:
        start, cache, mask = 0, DynamicCache(config=runner.llm_config), prefix_mask
    else:  # a cache grows by concatenation: `after`'s tensors are not modified
        start, cache = after.mask.shape[1], after.to_cache(runner.llm_config)
        mask = torch.cat([after.mask.long(), prefix_mask], dim=1)
    runner.run_llm(prefix_embeds, mask, positions_from_mask(mask)[:, start:], cache=cache, use_cache=True)
    keys = torch.stack([layer.keys[:, :, start:] for layer in cache.layers])
    values = torch.stack([layer.values[:, :, start:] for layer in cache.layers])
    return PrefixKV(keys, values, prefix_mask)


@torch.no_grad()
def tail_key_values(llm, head: PrefixKV, tail_ids: torch.LongTensor, tail_mask: torch.Tensor) -> PrefixKV:
    """:func:`prefix_key_values` of prefixes that all start with ``head`` (one unpadded row of states), computed
    for their tails only: ``tail_ids`` / ``tail_mask`` (left-padded) follow the head, which every row attends to
    and whose positions the tails continue. Returns the tails' states (left-padded like ``tail_mask``); head +
    tail equals the whole prefix computed at once within float rounding (a causal LLM's states at the head's
    positions depend on the head alone). Saves the head's share of every new prefix (a third of ml-1m's and
    amazon-scientific's prompts)."""
    runner = _runner(llm)
    runner.check_prefix_cacheable()
    if tail_ids.shape != tail_mask.shape or tail_ids.dim() != 2 or head.batch_size != 1:
        raise PrefixCacheError(f"tail ids {tuple(tail_ids.shape)} and mask {tuple(tail_mask.shape)} must be one "
                               f"(batch, length) shape after one head row, got {head.batch_size} head rows")
    device = runner.get_input_embeddings().weight.device
    tail_ids, tail_mask, head = tail_ids.to(device), tail_mask.to(device).long(), head.to(device)
    rows = tail_ids.shape[0]
    heads = PrefixKV(head.keys.expand(-1, rows, -1, -1, -1), head.values.expand(-1, rows, -1, -1, -1),
                     head.mask.long().expand(rows, -1))
    return _run_prefix(runner, _embed(runner, tail_ids, tail_mask), tail_mask, after=heads)


def run_with_prefix(llm, prefix: PrefixKV, suffix_embeds: torch.Tensor, suffix_mask: torch.Tensor):
    """The LLM's output over the suffix, which attends to the cached prefix (same rows): ``last_hidden_state``
    (B, S, hidden) and the cache, prefix and suffix, that later steps extend (autoregressive decoding).

    Runs with gradients w.r.t. ``suffix_embeds`` (placeholder / slot vectors); positions continue each row's
    prefix (cumsum of the combined mask), and padding in either part is masked. ``llm``: a ``GLTAModel`` or a bare
    decoder.
    """
    runner = _runner(llm)
    if suffix_embeds.dim() != 3 or tuple(suffix_mask.shape) != tuple(suffix_embeds.shape[:2]):
        raise PrefixCacheError(
            f"suffix_embeds {tuple(suffix_embeds.shape)} must be (batch, length, hidden) with a (batch, length) mask, "
            f"got mask {tuple(suffix_mask.shape)}"
        )
    if prefix.batch_size != suffix_embeds.shape[0]:
        raise PrefixCacheError(f"{prefix.batch_size} cached prefixes for a suffix batch of {suffix_embeds.shape[0]}")
    device = suffix_embeds.device
    prefix = prefix.to(device)
    if prefix.keys.dtype != suffix_embeds.dtype:
        raise PrefixCacheError(f"cached prefix dtype {prefix.keys.dtype} differs from the suffix's {suffix_embeds.dtype}")
    attention_mask = torch.cat([prefix.mask.long(), suffix_mask.to(device).long()], dim=1)
    positions = positions_from_mask(attention_mask)[:, prefix.mask.shape[1] :]
    return runner.run_llm(suffix_embeds, attention_mask, positions, cache=prefix.to_cache(runner.llm_config),
                          use_cache=True)


def forward_with_prefix(llm, prefix: PrefixKV, suffix_embeds: torch.Tensor, suffix_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (B, S, hidden) of the suffix, which attends to the cached prefix (same rows); see
    :func:`run_with_prefix`."""
    return run_with_prefix(llm, prefix, suffix_embeds, suffix_mask).last_hidden_state


# ----------------------------------------------------------------------------------------------- batches


@dataclass
class PromptSplit:
    """A prompt batch cut at each row's first cut token (a placeholder, or the first ``<slot>`` for the serving
    span); both parts left-padded (slots end every suffix row)."""

    prefix_ids: torch.LongTensor
    prefix_mask: torch.LongTensor
    suffix_ids: torch.LongTensor
    suffix_mask: torch.LongTensor
    prefix_lengths: List[int]
    prefix_hashes: List[str]

    def cut(self, values: torch.Tensor, attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Another per-token tensor of the same batch (e.g. its inputs_embeds, (B, T, hidden)) cut where the ids were
        cut: (prefix values, suffix values), left-padded like ``prefix_mask`` / ``suffix_mask`` (padding: zeros)."""
        rows = [values[row][attention_mask[row].bool()] for row in range(values.shape[0])]
        prefixes = [r[:n] for r, n in zip(rows, self.prefix_lengths)]
        suffixes = [r[n:] for r, n in zip(rows, self.prefix_lengths)]
        return left_pad(prefixes, 0, values.device)[0], left_pad(suffixes, 0, values.device)[0]


def left_pad(rows: Sequence[torch.Tensor], fill, device) -> Tuple[torch.Tensor, torch.LongTensor]:
    """Rows of (length, ...) stacked into (batch, width, ...) with ``fill`` on the left, and the (batch, width) mask."""
    width = max((len(r) for r in rows), default=0)
    trailing, dtype = (rows[0].shape[1:], rows[0].dtype) if rows else ((), torch.long)
    values = torch.full((len(rows), width, *trailing), fill, dtype=dtype, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if len(r):
            values[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
    return values, mask


def split_prompt_batch(
    input_ids: torch.LongTensor, attention_mask: torch.Tensor, placeholder_ids: Iterable[int], pad_token_id: int = 0
) -> PromptSplit:
    """Cut every row of a collated batch (left or right padded) before its first token of ``placeholder_ids``.

    With all three placeholders the prefix is the rule of ``glta_hf.prompts.cacheable_prefix_length`` (the text
    span); with the ``<slot>`` id alone it is everything before the slots (the serving span). Every row must hold
    one (the slots), else there is nothing left to run and the row is refused.
    """
    placeholder = torch.tensor(sorted(int(i) for i in placeholder_ids), device=input_ids.device)
    prefixes, suffixes = [], []
    for row in range(input_ids.shape[0]):
        tokens = input_ids[row][attention_mask[row].bool()]
        hits = torch.isin(tokens, placeholder).nonzero()
        if hits.numel() == 0:
            raise PrefixCacheError(f"batch row {row} has no placeholder token: no suffix to run (slots missing?)")
        cut = int(hits[0])
        prefixes.append(tokens[:cut])
        suffixes.append(tokens[cut:])
    prefix_ids, prefix_mask = left_pad(prefixes, pad_token_id, input_ids.device)
    suffix_ids, suffix_mask = left_pad(suffixes, pad_token_id, input_ids.device)
    return PromptSplit(
        prefix_ids, prefix_mask, suffix_ids, suffix_mask,
        prefix_lengths=[len(p) for p in prefixes],
        prefix_hashes=[prefix_hash(p.tolist()) for p in prefixes],
    )


# ----------------------------------------------------------------------------------------------- the store


class PrefixKey(NamedTuple):
    """What a cached prefix depends on; a change in any part is another entry (a stale prefix is never served)."""

    user: Union[int, str]  # the user (row or external id); None-like values are not allowed
    text_hash: str  # glta_hf.prompts.prefix_hash of the prefix token ids
    llm: str  # see llm_fingerprint
    dtype: str  # the LLM's compute dtype, e.g. "torch.float32"
    layout: str  # PromptConfig.layout

    def name(self) -> str:
        """A file-safe digest of the whole key (tensor names in the shards)."""
        return hashlib.sha256(json.dumps(list(self)).encode("utf-8")).hexdigest()[:40]


#: elements of each weight tensor whose bytes enter :func:`llm_fingerprint` (evenly strided)
FINGERPRINT_SAMPLE = 1 << 16


def llm_fingerprint(llm: nn.Module, reference: str) -> str:
    """``reference`` plus the LLM's shape and a digest of its embeddings' and first / last layers' weights: a
    truncated, re-quantized or other checkpoint behind the same reference gets another key. The digest hashes the
    bytes of an evenly strided sample of each tensor, never a float sum: a sum's last bits depend on the thread
    count and memory alignment, and a key that changes between the training process and the test process finds
    none of the stored prefixes (it did: ml-1m's test pass missed all 6,040)."""
    config = llm.config
    layers = getattr(llm, "layers", None)
    if layers is None and hasattr(llm, "get_decoder"):
        layers = getattr(llm.get_decoder(), "layers", None)
    parts = [llm.get_input_embeddings()] + ([layers[0], layers[-1]] if layers is not None and len(layers) else [])
    digest = hashlib.sha256()
    for module in parts:
        for name, tensor in sorted(module.state_dict().items()):
            if torch.is_tensor(tensor) and tensor.numel():
                flat = tensor.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLE)].contiguous().cpu()
                digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
                digest.update(sample.view(torch.uint8).numpy().tobytes())
    n_layers = len(layers) if layers is not None else getattr(config, "num_hidden_layers", "?")
    return f"{reference}|{type(llm).__name__}|{n_layers}x{config.hidden_size}|{digest.hexdigest()[:16]}"


class _Head:
    """A shared head: the states of the token ids ``ids`` (one unpadded row) for one (llm, dtype, layout), kept once;
    ``kv`` is None until read from ``where`` (shard, tensor name) of a reopened store."""

    def __init__(self, ids: Sequence[int], parts: Sequence[str], kv: Optional[PrefixKV] = None,
                 where: Optional[Tuple[str, str]] = None):
        self.ids, self.parts, self.kv, self.where = tuple(ids), tuple(parts), kv, where
        self.name = _head_name(self.ids, self.parts)


def _head_name(ids: Sequence[int], parts: Sequence[str]) -> str:
    """A file-safe digest of a head's token ids and key parts (its tensor names, its name in the index)."""
    return "head-" + hashlib.sha256(json.dumps([list(ids), *parts]).encode("utf-8")).hexdigest()[:40]


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """The length of the longest token prefix all ``rows`` share."""
    length = min(len(row) for row in rows)
    for row in rows[1:]:
        same = 0
        while same < length and row[same] == rows[0][same]:
            same += 1
        length = same
    return length


def _rows_of(batch, positions: List[int], what: str) -> List[PrefixKV]:
    """The unpadded rows of a compute function's answer for ``positions``, checked."""
    if not isinstance(batch, PrefixKV) or batch.batch_size != len(positions):
        raise PrefixCacheError(f"{what} must return a PrefixKV with {len(positions)} rows, got "
                               f"{batch.batch_size if isinstance(batch, PrefixKV) else type(batch).__name__}")
    return batch.rows()


def _columns(entry: PrefixKV, start: int, stop: Optional[int] = None) -> PrefixKV:
    """Sequence positions ``start:stop`` of a single-row entry, copied (a view would keep the whole row alive)."""
    cols = slice(start, stop)
    return PrefixKV(entry.keys[:, :, :, cols].clone(), entry.values[:, :, :, cols].clone(), entry.mask[:, cols].clone())


def entry_sha256(entry: PrefixKV) -> str:
    """The sha256 of a stored entry's tensors: their dtypes, shapes and bytes (what a damaged shard would change)."""
    digest = hashlib.sha256()
    for tensor in (entry.keys, entry.values, entry.mask):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{tensor.dtype}:{tuple(tensor.shape)};".encode("ascii"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class PrefixStore:
    """Prefix key/value states for one run (training, evaluation and ``recommend()`` share it).

    * Memory: an LRU of :class:`PrefixKV` rows under ``max_bytes``, kept on ``device`` (default: where they were
      computed, i.e. on the LLM's GPU when it has one).
    * Disk: entries evicted from memory are written to safetensors shards (memory-mapped when read back) in
      ``folder`` (a temporary folder, deleted by :meth:`close`, when none is given), so a prefix is computed once
      per run even when a dataset's prefixes exceed memory. With a ``folder``, every computed entry is also written
      at once and indexed in ``prefix_index.json``, so a later run (or a server) reuses them. The index records
      each shard's size (checked when the shard is first opened) and each entry's sha256 (checked when the entry
      is read: a run reads only the entries it serves, not every shard they sit in, benchmark 5.13): a
      damaged index, shard or entry is a :class:`PrefixCacheError` naming the file (delete the folder to rebuild
      it), never a served wrong prefix. Shards of older stores (no entry checksums) are hashed whole instead.
    * Shared heads: given the prefixes' token ids (``get_or_compute(..., ids=...)``), an entry that starts with a
      head's ids is kept (in memory and on disk) as its tail and a reference; the head is kept once, in memory for
      the store's life (its bytes count against ``max_bytes``; a few per store). See the module docstring.

    Keys are complete (:class:`PrefixKey`): a changed user, text, LLM, dtype or layout misses and is recomputed.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, folder=None, device=None):
        if max_bytes < 0:
            raise PrefixCacheError(f"PrefixStore max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.device = None if device is None else torch.device(device)
        self.persistent = folder is not None
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self.folder: Optional[Path] = Path(folder) if folder is not None else None
        self._memory: "OrderedDict[PrefixKey, PrefixKV]" = OrderedDict()  # a shared entry: its tail only
        self._memory_bytes = 0
        self._disk: Dict[PrefixKey, Tuple[str, str]] = {}  # key -> (shard file name, tensor name)
        self._heads: Dict[str, _Head] = {}  # head name -> shared head
        self._head_of: Dict[PrefixKey, str] = {}  # key of an entry kept as a tail -> its head's name
        self._shards: Dict[str, object] = {}  # open safe_open handles (memory-mapped)
        self._checksums: Dict[str, Dict[str, object]] = {}  # shard -> {"size"} (+ "sha256": an older store's)
        self._digests: Dict[Tuple[str, str], str] = {}  # (shard, tensor name) -> the entry's or head's sha256
        self.stats = {"hits_memory": 0, "hits_disk": 0, "computed": 0, "evicted": 0, "spilled": 0, "shared": 0}
        if self.folder is not None and (self.folder / INDEX_NAME).exists():
            self._load_index()

    # -- public

    def __len__(self) -> int:
        return len(set(self._memory) | set(self._disk))

    def __contains__(self, key: PrefixKey) -> bool:
        return key in self._memory or key in self._disk

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    def get_or_compute(self, keys: Sequence[PrefixKey], compute_fn: Callable[[List[int]], PrefixKV],
                       ids: Optional[Sequence[Sequence[int]]] = None,
                       compute_tails_fn: Optional[Callable[[List[int], PrefixKV], PrefixKV]] = None) -> List[PrefixKV]:
        """The entry of every key (the whole prefix), in order; ``compute_fn(positions)`` is called at most once,
        with the positions (into ``keys``, first occurrence of each missing key) to compute, and must return their
        rows in that order.

        ``ids`` (aligned with ``keys``): each prefix's token ids, what ``compute_fn`` computes from. With them a
        computed entry starting with a stored head's ids is kept as its tail, and a batch of new prefixes with a
        long common start (>= ``MIN_HEAD_TOKENS``) makes that start a head. Without them (the serving span, whose
        input is vectors, not ids) every entry is kept whole.

        ``compute_tails_fn(positions, head)`` (with ``ids``): missing prefixes that start with a stored head are
        computed from their tails only, once per head, attending to the head's states (``head``, one row); it
        returns the tails' rows (columns ``len(head):`` of each prefix) in order. Without it they are computed
        whole by ``compute_fn`` and cut."""
        keys = [self._checked(k) for k in keys]
        if ids is not None and len(ids) != len(keys):
            raise PrefixCacheError(f"get_or_compute got {len(ids)} rows of token ids for {len(keys)} keys")
        found: Dict[PrefixKey, PrefixKV] = {}
        missing: List[int] = []
        pending = set()
        for pos, key in enumerate(keys):
            if key in found or key in pending:
                continue
            entry = self._lookup(key)
            if entry is None:
                missing.append(pos)
                pending.add(key)
            else:
                found[key] = entry
        if missing:
            by_head: Dict[Optional[str], List[int]] = {}  # head name (None: computed whole) -> positions
            for pos in missing:
                head = None
                if ids is not None and compute_tails_fn is not None:
                    head = self._matching_head(keys[pos], tuple(int(t) for t in ids[pos]))
                by_head.setdefault(None if head is None else head.name, []).append(pos)
            kept, whole = {}, {}
            for name, positions in by_head.items():
                if name is None:
                    new = dict(zip([keys[pos] for pos in positions],
                                   _rows_of(compute_fn(positions), positions, "compute_fn")))
                    kept.update(new if ids is None else self._share_heads(new, {keys[p]: ids[p] for p in positions}))
                    whole.update({key: row for key, row in new.items() if key in self._head_of})
                else:
                    kept.update(self._computed_tails(self._heads[name], positions, keys, ids, compute_tails_fn))
            self.stats["computed"] += len(kept)
            if self.persistent:
                self._write_shard(kept)
            for key, tail in kept.items():
                entry = self._remember(key, tail)
                found[key] = whole[key].to(self.device) if key in whole else self._whole(key, entry)
        self._evict()
        return [found[k] for k in keys]

    def close(self) -> None:
        """Release shard handles and delete the temporary spill folder (a given ``folder`` is kept)."""
        self._shards.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp, self.folder = None, None
            self._disk.clear()
            for head in self._heads.values():  # in memory since they were made; their shard is gone
                head.where = None

    def __enter__(self) -> "PrefixStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- memory

    @staticmethod
    def _checked(key) -> PrefixKey:
        if not isinstance(key, PrefixKey):
            raise PrefixCacheError(f"PrefixStore keys must be PrefixKey(user, text_hash, llm, dtype, layout), got {key!r}")
        if any(part is None or part == "" for part in key):
            raise PrefixCacheError(f"PrefixStore key has an empty part: {key!r}")
        if not isinstance(key.user, (int, str)) and hasattr(key.user, "item"):  # numpy / torch scalars -> int
            key = key._replace(user=key.user.item())
        return key

    def _remember(self, key: PrefixKey, entry: PrefixKV) -> PrefixKV:
        if self.device is None:
            self.device = entry.keys.device
        entry = entry.to(self.device)
        self._memory[key] = entry
        self._memory.move_to_end(key)
        self._memory_bytes += entry.nbytes
        return entry

    def _lookup(self, key: PrefixKey) -> Optional[PrefixKV]:
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            self.stats["hits_memory"] += 1
            return self._whole(key, entry)
        if key in self._disk:
            self.stats["hits_disk"] += 1
            if key in self._head_of:  # a damaged head shard fails before the tail is kept
                self._head_states(self._heads[self._head_of[key]])
            return self._whole(key, self._remember(key, self._read(key)))
        return None

    def _evict(self) -> None:
        """Drop least recently used entries until the budget holds; write those not yet on disk to a new shard.
        Entries of the current batch stay valid for the caller (they are returned before eviction matters).
        Heads stay: every tail needs its head, and they are few."""
        spill: Dict[PrefixKey, PrefixKV] = {}
        while self._memory_bytes > self.max_bytes and self._memory:
            key, entry = self._memory.popitem(last=False)
            self._memory_bytes -= entry.nbytes
            self.stats["evicted"] += 1
            if key not in self._disk:
                spill[key] = entry
        if spill:
            self.stats["spilled"] += len(spill)
            self._write_shard(spill)

    # -- shared heads

    def _share_heads(self, new: Dict[PrefixKey, PrefixKV],
                     ids: Dict[PrefixKey, Sequence[int]]) -> Dict[PrefixKey, PrefixKV]:
        """What to keep of each newly computed entry: its tail after the longest stored head it starts with, else
        after a head learned from the new entries that match none (their common start, cut back to where they
        part from a stored head), else the whole entry."""
        ids = {key: tuple(int(t) for t in row) for key, row in ids.items()}
        for key, row in new.items():
            if len(ids[key]) != row.keys.shape[3]:
                raise PrefixCacheError(f"prefix {key.name()} has {len(ids[key])} token ids but {row.keys.shape[3]} "
                                       "computed positions")
        heads = {key: self._matching_head(key, ids[key]) for key in new}
        unmatched: Dict[Tuple[str, ...], List[PrefixKey]] = {}
        for key, head in heads.items():
            if head is None:
                unmatched.setdefault(tuple(key[2:]), []).append(key)
        for parts, group in unmatched.items():
            # a stored head may have gone too far (a few prompts agreeing by chance beyond the real head): cut back
            # to where the new prefixes part from the closest one, which a lone new prefix can do too
            length = common_prefix_length([ids[key] for key in group]) if len(group) >= 2 else 0
            starts = [common_prefix_length([ids[group[0]], head.ids]) for head in self._heads.values() if head.parts == parts]
            if starts and max(starts) >= MIN_HEAD_TOKENS:
                length = max(starts) if len(group) == 1 else min(length, max(starts))
            if length < MIN_HEAD_TOKENS or len(self._heads) >= MAX_HEADS:
                continue
            head = _Head(ids[group[0]][:length], parts)
            self._heads[head.name] = head
            self._remember_head(head, _columns(new[group[0]], 0, length))
            for key in group:  # a prefix that IS the head (every user's, under a profile-free layout): empty tail
                heads[key] = head
        kept = {}
        for key, row in new.items():
            head = heads[key]
            if head is None:
                self._head_of.pop(key, None)
                kept[key] = row
            else:
                self._head_of[key] = head.name
                kept[key] = _columns(row, len(head.ids))
                self.stats["shared"] += 1
        return kept

    def _computed_tails(self, head: _Head, positions: List[int], keys: Sequence[PrefixKey],
                        ids: Sequence[Sequence[int]], compute_tails_fn) -> Dict[PrefixKey, PrefixKV]:
        """The tails of the missing prefixes at ``positions``, all starting with ``head``: computed (only the
        non-empty ones) by ``compute_tails_fn`` and kept as tails of ``head``."""
        states, length = self._head_states(head), len(head.ids)
        running = [pos for pos in positions if len(ids[pos]) > length]
        rows = _rows_of(compute_tails_fn(running, states), running, "compute_tails_fn") if running else []
        tails = dict(zip(running, rows))
        kept = {}
        for pos in positions:
            tail = tails[pos] if pos in tails else _columns(states, length)  # the prefix is the head: empty tail
            if tail.keys.shape[3] != len(ids[pos]) - length:
                raise PrefixCacheError(f"prefix {keys[pos].name()} has {len(ids[pos]) - length} token ids after its head "
                                       f"but {tail.keys.shape[3]} computed tail positions")
            self._head_of[keys[pos]] = head.name
            kept[keys[pos]] = tail
            self.stats["shared"] += 1
        return kept

    def _matching_head(self, key: PrefixKey, ids: Tuple[int, ...]) -> Optional[_Head]:
        """The longest stored head of ``key``'s LLM, dtype and layout that ``ids`` start with (or equal)."""
        best = None
        for head in self._heads.values():
            length = len(head.ids)
            if (head.parts == tuple(key[2:]) and length <= len(ids) and ids[:length] == head.ids
                    and (best is None or length > len(best.ids))):
                best = head
        return best

    def _remember_head(self, head: _Head, states: PrefixKV) -> None:
        if self.device is None:
            self.device = states.keys.device
        head.kv = states.to(self.device)
        self._memory_bytes += head.kv.nbytes

    def _head_states(self, head: _Head) -> PrefixKV:
        if head.kv is None:
            self._remember_head(head, self._read_tensors(*head.where))
        return head.kv

    def _whole(self, key: PrefixKey, entry: PrefixKV) -> PrefixKV:
        """A kept entry as the whole prefix: its head's states and its tail's, along the sequence."""
        name = self._head_of.get(key)
        if name is None:
            return entry
        head = self._head_states(self._heads[name])
        shape, want = entry.keys.shape, head.keys.shape
        if (shape[:3], shape[4], entry.keys.dtype) != (want[:3], want[4], head.keys.dtype):
            raise PrefixCacheError(f"cached prefix {key.name()} ({tuple(shape)}, {entry.keys.dtype}) does not fit its "
                                   f"head {name} ({tuple(want)}, {head.keys.dtype}); delete {self.folder} to rebuild "
                                   "the store")
        length = want[3] + shape[3]
        return PrefixKV(torch.cat([head.keys, entry.keys.to(head.keys.device)], dim=3),
                        torch.cat([head.values, entry.values.to(head.keys.device)], dim=3),
                        torch.ones(1, length, dtype=entry.mask.dtype, device=head.keys.device))

    # -- disk

    def _spill_folder(self) -> Path:
        if self.folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="glta-prefix-")
            self.folder = Path(self._tmp.name)
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def _write_shard(self, entries: Dict[PrefixKey, PrefixKV]) -> None:
        """Write kept entries (tails of shared ones), and the heads they need that are not on disk yet, to a new
        shard; a persistent store rewrites its index."""
        folder = self._spill_folder()
        number = 0
        while (folder / SHARD_PATTERN.format(number)).exists():
            number += 1
        shard = SHARD_PATTERN.format(number)
        tensors, heads = {}, {}
        for key, entry in entries.items():
            name = key.name()
            tensors[f"{name}.keys"], tensors[f"{name}.values"] = entry.keys, entry.values
            tensors[f"{name}.mask"] = entry.mask
            head = self._heads.get(self._head_of.get(key, ""))
            if head is not None and head.where is None:
                heads[head.name] = head
        for name, head in heads.items():
            tensors[f"{name}.keys"], tensors[f"{name}.values"] = head.kv.keys, head.kv.values
            tensors[f"{name}.mask"] = head.kv.mask
        save_safetensors(tensors, folder / shard, metadata={"format": "glta-prefix-kv-1"})
        for key in entries:
            self._disk[key] = (shard, key.name())
        for name, head in heads.items():
            head.where = (shard, name)
        if self.persistent:  # a run's own spill folder is not checked: nothing else writes it
            self._checksums[shard] = {"size": (folder / shard).stat().st_size}
            self._digests.update({(shard, key.name()): entry_sha256(entry) for key, entry in entries.items()})
            self._digests.update({(shard, name): entry_sha256(head.kv) for name, head in heads.items()})

            def digest(where: Tuple[str, str]) -> dict:
                return {"sha256": self._digests[where]} if where in self._digests else {}

            write_json(folder / INDEX_NAME, {
                "format": INDEX_FORMAT,
                "entries": [{"key": list(k), "shard": s, "name": n, **digest((s, n)),
                             **({"head": self._head_of[k]} if k in self._head_of else {})}
                            for k, (s, n) in self._disk.items()],
                "heads": [{"name": h.name, "ids": list(h.ids), "parts": list(h.parts), "shard": h.where[0],
                           **digest(h.where)}
                          for h in self._heads.values() if h.where is not None],
                "shards": self._checksums,
            })

    def _read(self, key: PrefixKey) -> PrefixKV:
        return self._read_tensors(*self._disk[key])

    def _read_tensors(self, shard: str, name: str) -> PrefixKV:
        from safetensors import safe_open

        handle = self._shards.get(shard)
        if handle is None:
            path = self.folder / shard
            self._verify_shard(path, self._checksums.get(shard))
            try:
                handle = safe_open(os.fspath(path), framework="pt", device="cpu")
            except Exception as err:  # safetensors' own error types for a damaged header
                raise PrefixCacheError(f"{path}: not a readable prefix shard ({err}); delete {self.folder} to "
                                       "rebuild the store") from None
            self._shards[shard] = handle
        try:
            entry = PrefixKV(handle.get_tensor(f"{name}.keys"), handle.get_tensor(f"{name}.values"), handle.get_tensor(f"{name}.mask"))
        except Exception as err:  # a truncated or foreign shard: say which file
            raise PrefixCacheError(f"{self.folder / shard}: cannot read cached prefix {name} ({err})") from err
        recorded = self._digests.get((shard, name))
        if recorded is not None and entry_sha256(entry) != recorded:
            raise PrefixCacheError(f"{self.folder / shard}: does not match the checksum in {INDEX_NAME} (entry {name}: "
                                   f"corrupt or replaced); delete {self.folder} to rebuild the store")
        return entry

    def _verify_shard(self, path: Path, recorded: Optional[Dict[str, object]]) -> None:
        """A shard against the size its index recorded and, for a shard of an older store (no entry checksums), its
        whole sha256 (indexes of the oldest runs recorded neither)."""
        from .checkpoint import file_sha256

        if recorded is None:
            return
        try:
            size = path.stat().st_size
        except OSError as err:
            raise PrefixCacheError(f"{path}: cannot be read ({err.strerror}); delete {self.folder} to rebuild the "
                                   "store") from None
        if size != recorded.get("size") or ("sha256" in recorded and file_sha256(path) != recorded["sha256"]):
            raise PrefixCacheError(f"{path}: does not match the checksum in {INDEX_NAME} (corrupt or replaced); "
                                   f"delete {self.folder} to rebuild the store")

    def _load_index(self) -> None:
        """Read ``prefix_index.json``: format 3, 2 (no entry checksums) or 1 (written before heads were shared)."""
        path = self.folder / INDEX_NAME
        try:
            index = read_json(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PrefixCacheError(f"{path}: unreadable prefix index ({err}); delete {self.folder} to rebuild the "
                                   "store") from None
        if not isinstance(index, dict) or index.get("format") not in INDEX_FORMATS:
            raise PrefixCacheError(f"{path}: not a glta prefix index (format {index.get('format') if isinstance(index, dict) else None!r})")
        heads: Dict[str, _Head] = {}
        head_of: Dict[PrefixKey, str] = {}
        digests: Dict[Tuple[str, str], str] = {}

        def remember_digest(record: dict, where: Tuple[str, str]) -> None:
            if "sha256" in record:
                digest = record["sha256"]
                if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
                    raise ValueError(f"{where[1]}: sha256 {digest!r}")
                digests[where] = digest

        try:
            checksums = index.get("shards") or {}
            for shard, recorded in checksums.items():
                if not isinstance(recorded, dict):
                    raise TypeError(f"shard {shard!r}: {recorded!r}")
            for record in index.get("heads") or []:
                head = _Head([int(t) for t in record["ids"]], [str(p) for p in record["parts"]])
                shard = str(record["shard"])
                if head.name != record["name"] or len(head.parts) != 3 or "/" in shard or "\\" in shard:
                    raise PrefixCacheError(f"{path}: head {record['name']} does not match its token ids")
                if not (self.folder / shard).is_file():
                    raise PrefixCacheError(f"{self.folder / shard}: missing (it holds the shared head {head.name} of "
                                           f"{path}); delete {self.folder} to rebuild the store")
                head.where = (shard, head.name)
                remember_digest(record, head.where)
                heads[head.name] = head
            for record in index["entries"]:
                key = PrefixKey(*record["key"])
                shard, name = str(record["shard"]), record["name"]
                if key.name() != name or not (self.folder / shard).is_file() or "/" in shard or "\\" in shard:
                    raise PrefixCacheError(f"{path}: entry {name} does not match its key or its shard is missing")
                head = record.get("head")
                if head is not None:
                    if head not in heads or heads[head].parts != tuple(key[2:]):
                        raise PrefixCacheError(f"{path}: entry {name} refers to head {head!r}, not one of this index's "
                                               "heads for its LLM, dtype and layout")
                    head_of[key] = head
                remember_digest(record, (shard, name))
                self._disk[key] = (shard, name)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            if isinstance(err, PrefixCacheError):
                raise
            raise PrefixCacheError(f"{path}: malformed prefix index ({type(err).__name__}: {err}); delete "
                                   f"{self.folder} to rebuild the store") from None
        self._checksums = dict(checksums)
        self._digests.update(digests)
        self._heads.update(heads)
        self._head_of.update(head_of)


def cached_prefix(llm, store: PrefixStore, split: PromptSplit, keys: Sequence[PrefixKey],
                  prefix_embeds: Optional[torch.Tensor] = None) -> PrefixKV:
    """The batch's prefix states (left-padded, on the LLM's device): from ``store``, computing only missing rows
    (one batched no-grad forward) from the split's prefix ids, or from ``prefix_embeds`` (left-padded like
    ``split.prefix_mask``) when given (the serving span). ``llm``: a ``GLTAModel`` or a bare decoder."""
    llm = _runner(llm)
    llm.check_prefix_cacheable()  # also when every prefix is served: the LLM may have changed since they were computed
    if len(keys) != len(split.prefix_lengths):
        raise PrefixCacheError(f"{len(keys)} prefix keys for a batch of {len(split.prefix_lengths)} rows")

    def columns(positions: List[int], skip: int = 0):
        """The rows at ``positions`` after their first ``skip`` tokens: row index, column slice (left-padded: the
        last columns hold them all) and mask (0 also over the skipped tokens of shorter rows)."""
        device = split.prefix_mask.device
        rows = torch.tensor(positions, device=device)
        lengths = torch.tensor([split.prefix_lengths[p] - skip for p in positions], device=device)
        width = int(lengths.max())
        cols = slice(split.prefix_mask.shape[1] - width, None)
        mask = split.prefix_mask[rows][:, cols] * (torch.arange(width, device=device) >= width - lengths[:, None])
        return rows, cols, mask

    def compute(positions: List[int]) -> PrefixKV:
        rows, cols, mask = columns(positions)
        if prefix_embeds is None:
            return prefix_key_values(llm, split.prefix_ids[rows][:, cols], mask)
        return prefix_key_values_from_embeds(llm, prefix_embeds[rows][:, cols], mask)

    def compute_tails(positions: List[int], head: PrefixKV) -> PrefixKV:
        rows, cols, mask = columns(positions, skip=head.keys.shape[3])
        return tail_key_values(llm, head, split.prefix_ids[rows][:, cols], mask)

    ids, tails = None, None  # the serving span's input is vectors: token ids do not describe it, so nothing is shared
    if prefix_embeds is None:
        ids = [row[len(row) - n:] for row, n in zip(split.prefix_ids.tolist(), split.prefix_lengths)]
        tails = compute_tails
    entries = store.get_or_compute(keys, compute, ids=ids, compute_tails_fn=tails)
    return PrefixKV.concat(entries, device=llm.get_input_embeddings().weight.device)


#: Which span of a prompt ``cached_slot_hidden_states`` serves from the store (see its docstring).
PREFIX_SPANS = ("text", "slots")


def check_prefix_span(span: str) -> str:
    if span not in PREFIX_SPANS:
        raise PrefixCacheError(f"prefix_span must be one of {PREFIX_SPANS}, got {span!r}")
    return span


def is_slot_span_key(key: PrefixKey) -> bool:
    """Whether a store entry holds a serving span (``span="slots"``) rather than a text prefix."""
    return key.text_hash.startswith("slots:")


def slot_span_hash(prefix_ids: torch.Tensor, placeholder_vectors: torch.Tensor) -> str:
    """The content key of a serving span: its token ids plus the exact bytes of the vectors written at its
    placeholders (projected ``E_u`` / ``E_i`` rows, fold-in vectors). Every other input row is a frozen token
    embedding of those ids (covered by the LLM fingerprint), so equal hashes mean equal LLM inputs: a changed
    projector, node table or history is another key, never a stale entry."""
    digest = hashlib.sha256(prefix_hash(prefix_ids.tolist()).encode("ascii"))
    vectors = placeholder_vectors.detach().to("cpu").contiguous()
    digest.update(f"{vectors.dtype}:{tuple(vectors.shape)}:".encode("ascii"))
    digest.update(vectors.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "slots:" + digest.hexdigest()[:40]


def serve_prefixes(
    model: nn.Module,
    store: PrefixStore,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    user_ids: Optional[torch.LongTensor] = None,
    item_ids: Optional[torch.LongTensor] = None,
    user_node_embeddings: Optional[torch.Tensor] = None,
    *,
    llm_key: str,
    layout: str,
    users: Optional[Sequence[Union[int, str]]] = None,
    span: str = "text",
) -> Tuple[PromptSplit, PrefixKV, torch.Tensor]:
    """A GLTA batch cut for the cache: ``(split, prefix, suffix_embeds)`` -- the prompt split, the prefixes'
    states served from ``store`` (missing ones computed once) and the suffix's input vectors, both parts
    left-padded (the slots end every suffix row). :func:`cached_slot_hidden_states` runs the suffix once; the
    autoregressive decoder runs it through slot 1, then step by step.

    ``span="text"`` (training, evaluation, ``rank``): the store holds the placeholder-free text before the first
    placeholder, keyed by its token ids; the rest runs through the LLM with gradients, so the loss's gradients are
    exact too. ``span="slots"`` (serving, ``recommend()``; no grad only): the store holds everything before the
    first ``<slot>`` -- the text and the ``<user>`` / ``<item>`` vectors -- keyed by content
    (:func:`slot_span_hash`), so only the slots run per request. Under training its entries would be useless
    (projectors change every step), hence not the default; with gradients enabled it is refused.

    ``model`` is a ``GLTAModel`` (the base model): its ``config`` (placeholder ids, ``num_slots``),
    ``get_inputs_embeds(input_ids, user_ids, item_ids, user_node_embeddings)`` and the LLM methods ``run_llm`` /
    ``get_input_embeddings`` / ``llm_config`` / ``check_prefix_cacheable``. ``llm_key`` is
    :func:`llm_fingerprint`, ``layout`` the prompt layout. ``users`` names each row's user in the prefix key; by
    default the row's ``user_ids`` entry when every row has one ``<user>`` token (user-item prompts), else
    ``"*"``: the prefix is then keyed by its tokens alone (item-text prompts, "w/o UA", fold-in users), which is
    still exact because the hash covers every prefix token (and, for the serving span, every placeholder vector).
    """
    check_prefix_span(span)
    if span == "slots" and torch.is_grad_enabled():
        raise PrefixCacheError(
            "span='slots' caches the placeholder vectors too, so no gradient reaches the projectors: it serves "
            "no-grad inference (recommend()) only; train with span='text'"
        )
    config = model.config
    if users is None:
        per_row = (input_ids == config.user_token_id).sum(dim=1)
        one_each = user_ids is not None and user_node_embeddings is None and bool((per_row == 1).all())
        users = [int(u) for u in user_ids.reshape(-1).tolist()] if one_each else ["*"] * input_ids.shape[0]
    pad = getattr(model.llm_config, "pad_token_id", None)
    cut_at = (config.slot_token_id,) if span == "slots" else (config.user_token_id, config.item_token_id, config.slot_token_id)
    split = split_prompt_batch(input_ids, attention_mask, cut_at, 0 if pad is None else int(pad))
    if span == "slots":
        prefix_embeds, suffix_embeds = split.cut(
            model.get_inputs_embeds(input_ids, user_ids, item_ids, user_node_embeddings), attention_mask)
        placeholders = (split.prefix_ids == config.user_token_id) | (split.prefix_ids == config.item_token_id)
        text_hashes = [
            slot_span_hash(split.prefix_ids[row, split.prefix_mask[row].bool()], prefix_embeds[row][placeholders[row]])
            for row in range(input_ids.shape[0])
        ]
    else:
        prefix_embeds, text_hashes = None, split.prefix_hashes
        suffix_embeds = model.get_inputs_embeds(split.suffix_ids, user_ids, item_ids, user_node_embeddings)
    dtype = str(suffix_embeds.dtype)
    keys = [PrefixKey(user, text_hash, llm_key, dtype, layout) for user, text_hash in zip(users, text_hashes)]
    return split, cached_prefix(model, store, split, keys, prefix_embeds), suffix_embeds


def cached_slot_hidden_states(model: nn.Module, store: PrefixStore, *batch, **options) -> torch.Tensor:
    """(B, L, hidden) slot states of a GLTA batch with the prefixes served from ``store`` -- equal to
    ``model.slot_hidden_states(...)`` (the uncached forward) within float rounding. The batch tensors and options
    (``llm_key``, ``layout``, ``users``, ``span``) are :func:`serve_prefixes`' (its docstring says what each span
    caches and how rows are keyed)."""
    split, prefix, suffix_embeds = serve_prefixes(model, store, *batch, **options)
    hidden = forward_with_prefix(model, prefix, suffix_embeds, split.suffix_mask)
    config = model.config
    return hidden[split.suffix_ids == config.slot_token_id].view(suffix_embeds.shape[0], config.num_slots, -1)
