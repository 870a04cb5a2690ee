"""Projectors and GLLM heads: small ``nn.Module``\\ s picked by name from one registry (``config.projector`` /
``config.head``).

A new head is one class and one decorator line, in any file (a test, a user's script)::

    @register_component("head", "cosine")
    class CosineHead(GLTAHead):
        def __init__(self, config): ...
        def operands(self, slot_hidden, item_embeddings): return x, weight, bias

Every head scores items as ``F.linear(x, weight, bias)`` (:meth:`GLTAHead.operands`), so the chunked loss and the
chunked decoders slice ``weight`` / ``bias`` by item rows without knowing which head they serve. Every component is
built as ``cls(config)``; the model's ``_init_weights`` then initialises linear layers (N(0, 0.02), zero bias) and
calls a head's ``reset_parameters()``. This file imports only torch (it is copied
into saved checkpoints as remote code).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: kind -> name -> class. The one place the names a config may use are defined.
REGISTRY: Dict[str, Dict[str, type]] = {"projector": {}, "head": {}}


def register_component(kind: str, name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` available as ``config.<kind> = name`` (kind ``"projector"`` or ``"head"``)."""
    if kind not in REGISTRY:
        raise ValueError(f"component kind must be one of {tuple(REGISTRY)}, got {kind!r}")

    def add(cls: type) -> type:
        REGISTRY[kind][name] = cls
        return cls

    return add


def component_names(kind: str) -> Tuple[str, ...]:
    return tuple(REGISTRY[kind])


def build_component(kind: str, name: str, config) -> nn.Module:
    """``REGISTRY[kind][name](config)``; an unknown name is a ValueError listing the registered ones."""
    try:
        cls = REGISTRY[kind][name]
    except KeyError:
        raise ValueError(f"{kind} must be one of {component_names(kind)}, got {name!r}") from None
    return cls(config)


# ----------------------------------------------------------------------------------------------- projectors


def init_linear(layer: nn.Linear) -> None:
    """GLTA's initialisation of a linear layer (``_init_weights``): N(0, 0.02) weights, zero bias."""
    nn.init.normal_(layer.weight, std=0.02)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


@register_component("projector", "linear")
class LinearProjector(nn.Linear):
    """Paper eq. 1-2: ``V = W E + b`` from node width d to the LLM hidden size."""

    def __init__(self, config):
        super().__init__(config.node_dim, config.llm_hidden_size)

    @property
    def output_layer(self) -> nn.Linear:
        """The layer whose weight and bias set the output scale (``match_embedding_scale`` rescales it)."""
        return self


@register_component("projector", "mlp")
class MLPProjector(nn.Sequential):
    """Linear-GELU-Linear (LLaVA-1.5's projector)."""

    def __init__(self, config):
        d, h = config.node_dim, config.llm_hidden_size
        super().__init__(nn.Linear(d, h), nn.GELU(), nn.Linear(h, h))

    @property
    def output_layer(self) -> nn.Linear:
        return self[2]


# ----------------------------------------------------------------------------------------------- heads


#: How a head reads the slot hidden state (``config.head_input_norm``), see :func:`normalize_head_input`.
HEAD_INPUT_NORMS = ("unit", "none")


def normalize_head_input(slot_hidden: torch.Tensor, mode: str) -> torch.Tensor:
    """``"unit"``: each vector scaled to L2 norm 1; ``"none"``: unchanged.

    Why: the LLM's final-norm hidden state is large (~54 for SmolLM2-135M) and shares one dominant direction across
    prompts. Read raw through N(0, 0.02) weights, the initial logits were wide enough for a loss above ln|I|, and
    Adam, which moves every weight by ~lr whatever the gradient's size, moved each query by ~||h||_1 * lr per step
    (more than a whole LightGCN user vector at lr 1e-3). At unit norm a step moves a query by at most
    ~sqrt(hidden) * lr and the initial logits are ~0.02 wide: the loss starts at ln|I| (uniform over items).
    """
    if mode == "none":
        return slot_hidden
    return slot_hidden / slot_hidden.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class GLTAHead(nn.Module):
    """Base class of GLLM heads: slot hidden states (..., hidden) -> item logits (..., |I|).

    Subclasses call ``super().__init__(config)`` and read their input through :meth:`head_input`
    (``config.head_input_norm``; a head built without a config reads the raw state)."""

    def __init__(self, config=None):
        super().__init__()
        self.input_norm = getattr(config, "head_input_norm", "none")

    def head_input(self, slot_hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return normalize_head_input(slot_hidden.to(dtype), self.input_norm)

    def operands(
        self, slot_hidden: torch.Tensor, item_embeddings: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(x, weight, bias)`` with logits ``F.linear(x, weight, bias)``; ``weight[a:b]`` / ``bias[a:b]`` score
        items ``a:b``. ``item_embeddings`` is the frozen LightGCN table ``E_i`` (heads may ignore it)."""
        raise NotImplementedError

    def forward(self, slot_hidden: torch.Tensor, item_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(*self.operands(slot_hidden, item_embeddings))

    def reset_parameters(self) -> None:
        raise NotImplementedError


@register_component("head", "linear")
class LinearHead(GLTAHead):
    """The paper's head: ``Z = h W_g + b_g`` over the |I| items."""

    def __init__(self, config):
        super().__init__(config)
        layer = nn.Linear(config.llm_hidden_size, config.num_items)  # same parameters (and seeded draws) as before
        self.weight, self.bias = layer.weight, layer.bias

    def reset_parameters(self) -> None:
        init_linear(self)

    def operands(self, slot_hidden, item_embeddings):
        return self.head_input(slot_hidden, self.weight.dtype), self.weight, self.bias


@register_component("head", "factorized")
class FactorizedHead(GLTAHead):
    """``Z = (h W_q + b_q) E_i^T + b_item``: a query in node space against the frozen item table plus a per-item
    bias; |I|-free parameters besides the bias, and it starts from the graph's item geometry."""

    def __init__(self, config):
        super().__init__(config)
        layer = nn.Linear(config.llm_hidden_size, config.node_dim)
        self.weight, self.bias = layer.weight, layer.bias
        self.item_bias = nn.Parameter(torch.zeros(config.num_items))

    def reset_parameters(self) -> None:
        init_linear(self)
        nn.init.zeros_(self.item_bias)

    def query(self, slot_hidden: torch.Tensor) -> torch.Tensor:
        """``h W_q + b_q`` (..., d)."""
        return F.linear(self.head_input(slot_hidden, self.weight.dtype), self.weight, self.bias)

    def operands(self, slot_hidden, item_embeddings):
        x = self.query(slot_hidden)
        return x, item_embeddings.to(x.dtype), self.item_bias


# ----------------------------------------------------------------------------------------------- graph residual


class GraphResidual(nn.Module):
    """The graph-score residual (an option, not the paper's method): logits ``+= scale * (e_u . E_i)``, the frozen
    LightGCN score of the prompt's user against every item, with one learned scalar ``scale``.

    It answers whether the LLM adds anything over the graph. With ``config.residual_gate`` (the default) the head's
    logits enter as ``gate * (x W^T + b)`` with ``gate`` starting at 0, so a residual model starts at exactly
    LightGCN's ranking (the same top-k) and the gate learns how much of the LLM term to add, as ReZero does for a
    residual branch; the gate's gradient is the head's logits against the loss gradient, nonzero from the first step.
    Without the gate (configs saved before it) the head's small initial logits perturbed the graph's ranking
    (~0.70x LightGCN's validation N@10 at step 0 with the factorized head, issue 23). ``scale`` starts at 1:
    LightGCN dot products on ml-latest-small have std ~2.3, and a softmax at scale 1-2 fits them best.

    It joins any head through the operands (:meth:`extend`): ``x' = [gate * x, scale * e_u]``, ``W' = [W, E_i]`` and
    ``b' = gate * b``, so ``F.linear(x', W', b') = gate * (x W^T + b) + scale * e_u E_i^T`` and the chunked loss /
    decoders slice ``W'`` by item rows as before. Cost: ``W'`` is a fresh (|I|, width + d) tensor per call.

    ``gate_scale`` (evaluation only) multiplies the learned gate: ``gate * gate_scale * head + scale * graph``. A gate
    learned against a graph fit without a held-out fold may not be the best weight of the LLM term once the graph
    term reads the refit graph (``set_residual_tables``); one LLM forward then serves every scale (``glta_hf.decoding``,
    ``Decoder.rank_gate_scales``). Scale 1 is exactly the learned model, scale 0 exactly the graph term alone.
    """

    def __init__(self, config=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.gate = nn.Parameter(torch.zeros(())) if getattr(config, "residual_gate", False) else None
        own = getattr(config, "residual_graph_tables", False)  # the graph term's own tables (stacking's refit)
        self.register_buffer("user_table", torch.zeros(config.num_users, config.node_dim) if own else None)
        self.register_buffer("item_table", torch.zeros(config.num_items, config.node_dim) if own else None)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.scale)
        if self.gate is not None:
            nn.init.zeros_(self.gate)

    def extend(
        self,
        operands: Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]],
        user_nodes: torch.Tensor,
        item_embeddings: torch.Tensor,
        gate_scale: float = 1.0,
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """A head's ``(x, weight, bias)`` (x: (B, ..., width)) plus the graph term of ``user_nodes`` (B, d); the
        head's term weighted by ``gate * gate_scale`` (scale 1: the gate itself, bit for bit)."""
        x, weight, bias = operands
        if self.gate is None and gate_scale != 1:
            raise ValueError(f"gate_scale={gate_scale!r}: this graph residual has no gate (config.residual_gate=False)")
        if self.gate is not None:
            gate = self.gate if gate_scale == 1 else self.gate * gate_scale
            x = gate.to(x.dtype) * x
            bias = None if bias is None else gate.to(bias.dtype) * bias
        if user_nodes.shape[0] != x.shape[0]:
            raise ValueError(f"graph residual: {user_nodes.shape[0]} user vectors for a batch of {x.shape[0]}")
        graph = (self.scale * user_nodes.to(x.dtype)).reshape(x.shape[0], *([1] * (x.dim() - 2)), -1)
        graph = graph.expand(*x.shape[:-1], user_nodes.shape[-1])
        return torch.cat([x, graph], dim=-1), torch.cat([weight, item_embeddings.to(weight.dtype)], dim=1), bias
