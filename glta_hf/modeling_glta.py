"""GLTA: a frozen LLM reads graph-aligned user/item tokens and a GLLM head scores the catalogue at L output slots.

Read top to bottom like ``modeling_llava.py``:

1. **Injection** (:meth:`GLTAForRecommendation.get_inputs_embeds`). ``<user>`` / ``<item>`` / ``<slot>`` are added to
   the tokenizer but the frozen embedding table is not resized: their ids are mapped to a valid id (pad) for the
   lookup, then ``masked_scatter`` writes the projected node embeddings ``V_u = W_u E_u + b_u``,
   ``V_i = W_i E_i + b_i`` (paper eq. 1-2) at the ``<user>`` / ``<item>`` positions and slot t's own trainable
   vector ``s_t`` at the t-th ``<slot>`` (the slot input is *replaced*). ``user_ids`` / ``item_ids`` are flattened
   over the batch in placeholder order (row-major), like LLaVA's image features; counts are checked.
2. **Frozen LLM** (a base decoder, no LM head). Position ids come from the attention mask, so left and right
   padding give the same logits. Gradients reach ``inputs_embeds`` through the frozen (possibly 4-bit) layers
   because the injected vectors require grad; nothing of the LLM itself requires grad.
3. **GLLM head** at the L slot positions only: ``"linear"`` ``Z = h W_g + b_g`` (the paper) or ``"factorized"``
   ``Z = (h W_q + b_q) E_i^T + b_item`` (item side tied to the frozen LightGCN table). Loss: mean cross-entropy
   over the labelled slots (labels (B, L), -100 = unused), i.e. paper eq. 3 over the first k slots.
4. **Decoding** (:meth:`rank`): ``first_k`` (paper), ``first_logit`` (FL), ``autoregressive`` (AR) and
   ``all_slots`` (logsumexp over slots of log-softmax; full ranking, any k). With ``config.rank_chunk_size`` the
   head streams over item chunks (running logsumexp + running top-k, ties to the lower item row) instead of building
   the (B, L, |I|) logits: same items, scores equal up to float rounding (:meth:`rank_from_hidden`).
5. **Checkpoints** (:meth:`save_pretrained` / :meth:`from_pretrained`): only what GLTA adds -- config (with the
   LLM reference), ``model.safetensors`` (projectors, slots, head, frozen ``E_u``/``E_i``), the tokenizer with the
   placeholders, ``item_catalogue.json`` and ``user_table.json`` (+ ``llm_adapter/`` with LoRA). The LLM is
   rebuilt from its reference. Pickle files are refused.

The relative imports below (``configuration_glta``, ``backbone``, ``prompts``, ``io_utils``, ``errors``) import only
torch/transformers/stdlib, so ``save_pretrained`` copies them next to this file and the folder loads with
``AutoModel.from_pretrained(folder, trust_remote_code=True)`` where glta_hf is not installed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput

from .backbone import freeze, load_llm
from .configuration_glta import GLTAConfig
from .errors import CheckpointError, UnknownIdError
from .io_utils import load_safetensors, read_json, refuse_pickled_weights, save_safetensors, write_json
from .prompts import (
    ITEM_TOKEN,
    SLOT_TOKEN,
    USER_TOKEN,
    PromptConfig,
    add_placeholder_tokens,
    collate_prompts,
    encode_prompt,
    placeholder_token_ids,
    user_item_prompt,
)

WEIGHTS_NAME = "model.safetensors"
CATALOGUE_NAME = "item_catalogue.json"
USER_TABLE_NAME = "user_table.json"
RUN_INFO_NAME = "glta_run.json"
ADAPTER_DIR = "llm_adapter"
DECODINGS = ("first_k", "first_logit", "autoregressive", "all_slots")
STAGES = ("item", "user", "user+item", "none")


@dataclass
class GLTAOutput(ModelOutput):
    """``loss`` (mean CE over labelled slots), ``logits`` (B, L, |I|), ``slot_hidden_states`` (B, L, hidden)."""

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    slot_hidden_states: Optional[torch.FloatTensor] = None


def _projector(config: GLTAConfig) -> nn.Module:
    d, h = config.node_dim, config.llm_hidden_size
    if config.projector == "linear":
        return nn.Linear(d, h)
    return nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, h))


class GLTAPreTrainedModel(PreTrainedModel):
    config_class = GLTAConfig
    base_model_prefix = "glta"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]

    def _init_weights(self, module):
        """Only GLTA's own modules are ever initialized here (the LLM is attached after ``post_init``)."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, GLTAForRecommendation):
            nn.init.normal_(module.slot_embeddings, std=0.02)
            if module.item_bias is not None:
                nn.init.zeros_(module.item_bias)


class GLTAForRecommendation(GLTAPreTrainedModel):
    """The GLTA recommender: frozen LLM + frozen node tables + projectors + slot vectors + GLLM head.

    Build a fresh model with :meth:`from_components`; ``GLTAForRecommendation(config)`` rebuilds the LLM from
    ``config.llm_name_or_path`` (pass ``llm=`` to reuse a loaded one).
    """

    def __init__(self, config: GLTAConfig, llm: Optional[nn.Module] = None):
        super().__init__(config)
        if not config.llm_hidden_size:
            raise ValueError("GLTAConfig.llm_hidden_size is required (the projectors' output width)")
        self.register_buffer("user_embeddings", torch.zeros(config.num_users, config.node_dim))
        self.register_buffer("item_embeddings", torch.zeros(config.num_items, config.node_dim))
        self.user_projector = _projector(config)
        self.item_projector = _projector(config)
        self.slot_embeddings = nn.Parameter(torch.zeros(config.num_slots, config.llm_hidden_size))
        if config.head == "linear":
            self.head = nn.Linear(config.llm_hidden_size, config.num_items)
            self.item_bias = None
        else:  # factorized: hidden -> d, dot with the frozen E_i, + per-item bias
            self.head = nn.Linear(config.llm_hidden_size, config.node_dim)
            self.item_bias = nn.Parameter(torch.zeros(config.num_items))
        self.post_init()
        # Not weights: the catalogue (external item ids, titles), the user table and the tokenizer.
        self.item_catalogue: Dict[str, list] = {"item_ids": list(range(config.num_items)), "titles": [None] * config.num_items}
        self.user_table: Dict[str, list] = {
            "user_ids": list(range(config.num_users)),
            "histories": [[] for _ in range(config.num_users)],
            "profiles": [None] * config.num_users,
            "predictions": [None] * config.num_users,
        }
        self.tokenizer = None
        # The training record (dataset, split, stages + hyperparameters, metrics) behind the model card;
        # saved as glta_run.json (see glta_hf.model_card).
        self.run_info: Dict[str, Any] = {}
        if llm is None:
            if not config.llm_name_or_path:
                raise ValueError("GLTAConfig.llm_name_or_path is not set: pass llm= or use from_components()")
            llm = load_llm(
                config.llm_name_or_path, config.llm_revision, config.llm_gguf_file, config.quantization, config.llm_dtype
            )
        self.set_llm(llm)

    # ------------------------------------------------------------------------------------------- building

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
        self._place_own_modules()

    def _place_own_modules(self) -> None:
        """Put everything GLTA owns on the device of the LLM's input embeddings (a device_map may spread the LLM;
        a 4-bit LLM must not be moved with ``.to``)."""
        device = self.llm.get_input_embeddings().weight.device
        for name, child in self.named_children():
            if name != "llm":
                child.to(device)
        self.slot_embeddings.data = self.slot_embeddings.data.to(device)
        if self.item_bias is not None:
            self.item_bias.data = self.item_bias.data.to(device)
        self.user_embeddings = self.user_embeddings.to(device)
        self.item_embeddings = self.item_embeddings.to(device)

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
        rebuild the LLM from (default: the path the LLM was loaded from). With ``match_embedding_scale`` the
        projectors and slot vectors are rescaled so their outputs start at the mean norm of the LLM's token
        embeddings (a frozen LLM reads inputs of its usual scale best). ``config_kwargs``: ``num_slots``,
        ``projector``, ``head``, ``lora``, ...
        """
        ids = add_placeholder_tokens(tokenizer)
        if isinstance(prompt, PromptConfig):
            prompt = prompt.to_dict()
        if prompt and "num_slots" in prompt and "num_slots" not in config_kwargs:
            config_kwargs["num_slots"] = prompt["num_slots"]
        config = GLTAConfig(
            llm_name_or_path=llm_name_or_path or getattr(llm.config, "_name_or_path", None) or None,
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
    def _match_embedding_scale(self) -> None:
        """Rescale the last projector layer and the slot vectors to the LLM's mean token-embedding norm."""
        target = self.llm.get_input_embeddings().weight.float().norm(dim=-1).mean()
        for projector, table in ((self.user_projector, self.user_embeddings), (self.item_projector, self.item_embeddings)):
            if table.shape[0] == 0:
                continue
            # chunked: projecting a 1M-item table at once would hold |I| x hidden floats (2.3 GB at hidden 576)
            current = sum(projector(part.float()).norm(dim=-1).sum() for part in table.split(16384)) / table.shape[0]
            last = projector if isinstance(projector, nn.Linear) else projector[-1]
            if current > 0:
                last.weight.mul_(target / current)
                last.bias.mul_(target / current)
        self.slot_embeddings.mul_(target / self.slot_embeddings.norm(dim=-1).mean().clamp_min(1e-12))

    def set_catalogue(self, item_ids: Iterable, titles: Optional[Sequence[Optional[str]]] = None) -> None:
        """External item ids (row order of ``E_i``) and optional titles."""
        item_ids = list(item_ids)
        if len(item_ids) != self.config.num_items:
            raise ValueError(f"catalogue has {len(item_ids)} item ids but the model has {self.config.num_items} items")
        titles = list(titles) if titles is not None else [None] * len(item_ids)
        if len(titles) != len(item_ids):
            raise ValueError(f"{len(titles)} titles for {len(item_ids)} items")
        self.item_catalogue = {"item_ids": item_ids, "titles": titles}
        self._item_index = None

    def attach_user_context(
        self,
        user_ids: Optional[Sequence] = None,
        histories: Optional[Sequence[Sequence[int]]] = None,
        profiles: Optional[Sequence[Optional[str]]] = None,
        predictions: Optional[Sequence[Optional[str]]] = None,
    ) -> None:
        """Per internal user row: external id, TRAINING history (item rows, prompt order), profile, prediction.

        Saved in ``user_table.json``; used by :meth:`recommend` and :meth:`ranker` to build the same prompts as
        training and to exclude seen items. Arguments left as None keep the current values.
        """
        n = self.config.num_users
        for name, values in (("user_ids", user_ids), ("histories", histories), ("profiles", profiles), ("predictions", predictions)):
            if values is None:
                continue
            values = list(values)
            if len(values) != n:
                raise ValueError(f"attach_user_context: {len(values)} {name} for {n} users")
            if name == "histories":
                values = [[int(i) for i in h] for h in values]
                bad = [i for h in values for i in h if not 0 <= i < self.config.num_items]
                if bad:
                    raise UnknownIdError(f"history item rows out of range [0, {self.config.num_items}): {bad[:5]}")
            self.user_table[name] = values
        self._user_index = None

    @property
    def prompt_config(self) -> PromptConfig:
        return PromptConfig.from_dict(self.config.prompt)

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_trainable(self, stage: str) -> List[str]:
        """Make only ``stage``'s parameters trainable; returns their names. The LLM never trains (LoRA may).

        ``"item"``: item projector + slots + head (item-text alignment). ``"user"``: user projector + slots + head,
        item projector frozen (user-item alignment). ``"user+item"``: both projectors + slots + head ("w/o IA").
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
            modules.append(self.item_projector)
        if stage in ("user", "user+item"):
            modules.append(self.user_projector)
        for module in modules:
            for param in module.parameters():
                param.requires_grad_(True)
        self.slot_embeddings.requires_grad_(True)
        if self.item_bias is not None:
            self.item_bias.requires_grad_(True)
        for name, param in self.llm.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
        return [name for name, param in self.named_parameters() if param.requires_grad]

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

        if user_node_embeddings is not None:
            user_nodes = user_node_embeddings.to(self.user_embeddings)
        else:
            user_nodes = self.user_embeddings[self._check_ids(user_ids, self.config.num_users, "user_ids")]
        item_nodes = self.item_embeddings[self._check_ids(item_ids, self.config.num_items, "item_ids")]
        for name, mask, nodes, projector in (
            (USER_TOKEN, user_mask, user_nodes, self.user_projector),
            (ITEM_TOKEN, item_mask, item_nodes, self.item_projector),
        ):
            count = int(mask.sum())
            if count != nodes.shape[0]:
                raise ValueError(f"the batch has {count} {name} tokens but {nodes.shape[0]} {name} node ids were given")
            if count:
                embeds = embeds.masked_scatter(mask.unsqueeze(-1), projector(nodes).to(embeds.dtype))

        per_row = slot_mask.sum(dim=1)
        if not bool((per_row == self.config.num_slots).all()):
            raise ValueError(
                f"every sample needs exactly num_slots={self.config.num_slots} {SLOT_TOKEN} tokens, got {per_row.tolist()}"
            )
        slots = self.slot_embeddings.to(embeds.dtype).expand(input_ids.shape[0], -1, -1)
        return embeds.masked_scatter(slot_mask.unsqueeze(-1), slots)

    def _check_ids(self, ids: Optional[torch.Tensor], size: int, name: str) -> torch.LongTensor:
        if ids is None:
            return torch.zeros(0, dtype=torch.long, device=self.user_embeddings.device)
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.user_embeddings.device).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
            raise ValueError(f"{name} must be rows in [0, {size}), got min {int(ids.min())} max {int(ids.max())}")
        return ids

    def head_operands(self, slot_hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(x, weight, bias)`` with ``score_slots(slot_hidden) == F.linear(x, weight, bias)``: the linear head's own
        weight and bias, or the factorized head's query ``h W_q + b_q`` against the frozen ``E_i`` and the item bias.
        Rows ``weight[a:b]`` / ``bias[a:b]`` score the catalogue slice ``a:b`` (chunked loss and ranking)."""
        x = slot_hidden.to(self.head.weight.dtype)
        if self.config.head == "linear":
            return x, self.head.weight, self.head.bias
        return self.head(x), self.item_embeddings.to(x.dtype), self.item_bias

    def score_slots(self, slot_hidden: torch.Tensor) -> torch.Tensor:
        """GLLM head: (..., hidden) -> (..., |I|) item logits, in float32."""
        return F.linear(*self.head_operands(slot_hidden))

    def _run_llm(self, inputs_embeds, attention_mask, position_ids=None, past_key_values=None, use_cache=False):
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        user_ids: Optional[torch.LongTensor] = None,
        item_ids: Optional[torch.LongTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        user_node_embeddings: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> GLTAOutput:
        """Logits (B, L, |I|) at the slot positions; ``loss`` = mean CE over slots whose label is not -100."""
        slot_hidden = self.slot_hidden_states(input_ids, attention_mask, user_ids, item_ids, user_node_embeddings)
        chunk = getattr(self.config, "ce_chunk_size", None)
        if labels is not None and chunk and self.config.num_items > chunk:
            # Large catalogue: never build the (B, L, |I|) logits; CE chunk by chunk over the items.
            labels = self._check_labels(labels, slot_hidden.shape[:2], slot_hidden.device)
            return GLTAOutput(loss=self.chunked_slot_loss(slot_hidden, labels, chunk), slot_hidden_states=slot_hidden)
        logits = self.score_slots(slot_hidden)
        loss = None
        if labels is not None:
            labels = self._check_labels(labels, logits.shape[:2], logits.device)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return GLTAOutput(loss=loss, logits=logits, slot_hidden_states=slot_hidden)

    def slot_hidden_states(
        self, input_ids, attention_mask=None, user_ids=None, item_ids=None, user_node_embeddings=None
    ) -> torch.Tensor:
        """(B, L, hidden): the frozen LLM's last hidden state at the L ``<slot>`` positions (the head's input)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs_embeds = self.get_inputs_embeds(input_ids, user_ids, item_ids, user_node_embeddings)
        hidden = self._run_llm(inputs_embeds, attention_mask).last_hidden_state
        slot_mask = input_ids == self.config.slot_token_id
        return hidden[slot_mask].view(input_ids.shape[0], self.config.num_slots, -1)

    def _check_labels(self, labels: torch.Tensor, shape, device) -> torch.LongTensor:
        labels = labels.to(device)
        if labels.shape != tuple(shape):
            raise ValueError(f"labels must have shape (batch, num_slots)={tuple(shape)}, got {tuple(labels.shape)}")
        valid = labels != -100
        if bool(((labels[valid] < 0) | (labels[valid] >= self.config.num_items)).any()):
            raise ValueError(f"labels must be item rows in [0, {self.config.num_items}) or -100")
        return labels

    def chunked_slot_loss(self, slot_hidden: torch.Tensor, labels: torch.LongTensor, chunk_size: int) -> torch.Tensor:
        """Mean CE over labelled slots, computed ``chunk_size`` items at a time (same value and gradients as
        ``F.cross_entropy(score_slots(slot_hidden), labels, ignore_index=-100)`` up to float rounding).

        Only the labelled slots enter the head; peak extra memory is (labelled slots) x ``chunk_size`` logits.
        """
        flat = labels.reshape(-1)
        valid = flat != -100
        x, weight, bias = self.head_operands(slot_hidden.reshape(-1, slot_hidden.shape[-1])[valid])
        return chunked_linear_cross_entropy(x, weight, bias, flat[valid], chunk_size)

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

    def _check_k(self, k: int, decoding: str, seen_mask: torch.Tensor) -> None:
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if k > self.config.num_items:
            raise ValueError(f"k={k} exceeds the catalogue size |I|={self.config.num_items}")
        if decoding in ("first_k", "autoregressive") and k > self.config.num_slots:
            raise ValueError(
                f"decoding={decoding!r} yields at most num_slots={self.config.num_slots} items, asked k={k}; "
                "use decoding='all_slots' or 'first_logit' for longer lists"
            )
        unseen = self.config.num_items - int(seen_mask.sum(dim=1).max()) if seen_mask.numel() else self.config.num_items
        if k > unseen:
            raise ValueError(f"k={k} exceeds the {unseen} items some user has not seen")

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
    ) -> Tuple[torch.LongTensor, torch.FloatTensor]:
        """Top-k item rows (B, k), best first, and their scores, for an encoded batch; ``seen`` items excluded.

        ``seen``: per sample an iterable of item rows, or a bool mask (B, |I|). Decodings (paper sec. 4.5):
        ``first_k``: slot t proposes its best item not yet proposed and not seen (score: its log-prob at slot t).
        ``first_logit``: the k best items of slot 1. ``all_slots``: score_j = logsumexp_t log_softmax(Z[t])_j, a
        full ranking for any k. ``autoregressive``: see :meth:`_decode_autoregressive`. Items are chosen by score
        (by the raw logit where the score is a log-prob of one slot, so softmax rounding never merges two items);
        ties go to the lower item row.

        With ``config.rank_chunk_size`` < |I| the (B, L, |I|) logits are never built: see :meth:`rank_from_hidden`.
        """
        seen_mask = self._seen_mask(seen, input_ids.shape[0], input_ids.device)
        self._check_k(k, decoding, seen_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if decoding == "autoregressive":
            return self._decode_autoregressive(input_ids, attention_mask, user_ids, item_ids, k, seen_mask, user_node_embeddings)
        chunk = self._rank_chunk()
        if chunk is None:
            logits = self(input_ids, attention_mask, user_ids, item_ids, user_node_embeddings=user_node_embeddings).logits
            return self.rank_from_logits(logits, k=k, seen_mask=seen_mask, decoding=decoding)
        slot_hidden = self.slot_hidden_states(input_ids, attention_mask, user_ids, item_ids, user_node_embeddings)
        return self.rank_from_hidden(slot_hidden, k=k, seen_mask=seen_mask, decoding=decoding, chunk_size=chunk)

    def _rank_chunk(self) -> Optional[int]:
        """``config.rank_chunk_size`` when it is smaller than the catalogue, else None (decode from full logits)."""
        chunk = getattr(self.config, "rank_chunk_size", None)
        return chunk if chunk and self.config.num_items > chunk else None

    @staticmethod
    def rank_from_logits(logits: torch.Tensor, k: int, seen_mask: Optional[torch.Tensor] = None, decoding: str = "first_k"):
        """``first_k`` / ``first_logit`` / ``all_slots`` from slot logits (B, L, |I|); returns (items, scores)."""
        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        blocked = torch.zeros_like(logprobs[:, 0], dtype=torch.bool) if seen_mask is None else seen_mask.clone()
        if decoding == "first_logit":
            _, items = _topk_first(logits[:, 0].masked_fill(blocked, float("-inf")), k)
            return items, logprobs[:, 0].gather(1, items)
        if decoding == "all_slots":
            scores, items = _topk_first(torch.logsumexp(logprobs, dim=1).masked_fill(blocked, float("-inf")), k)
            return items, scores
        if decoding != "first_k":
            raise ValueError(f"rank_from_logits supports first_k, first_logit, all_slots, got {decoding!r}")
        rows = torch.arange(logits.shape[0], device=logits.device)
        items, scores = [], []
        for t in range(k):
            item = logits[:, t].masked_fill(blocked, float("-inf")).argmax(dim=-1)  # first maximum: lowest row
            blocked[rows, item] = True
            items.append(item)
            scores.append(logprobs[rows, t, item])
        return torch.stack(items, dim=1), torch.stack(scores, dim=1)

    def rank_from_hidden(
        self,
        slot_hidden: torch.Tensor,
        k: int,
        seen_mask: Optional[torch.Tensor] = None,
        decoding: str = "first_k",
        chunk_size: Optional[int] = None,
    ) -> Tuple[torch.LongTensor, torch.FloatTensor]:
        """``first_k`` / ``first_logit`` / ``all_slots`` from slot hidden states (B, L, hidden), streaming the head
        over ``chunk_size`` items at a time (default: ``config.rank_chunk_size``, else the whole catalogue).

        Same items as :meth:`rank_from_logits` on ``score_slots(slot_hidden)`` (same tie rule: lower row first) and
        the same scores up to float rounding (the softmax normaliser is a running logsumexp). Memory: B x L x chunk
        logits (``first_k`` only its first k slots, ``first_logit`` slot 1) plus the (B, |I|) bool ``seen_mask``.
        ``first_k`` / ``first_logit``: one pass, a running logsumexp and a running top-k per slot; slot t of
        ``first_k`` then takes its best candidate not taken by slots 1..t-1 -- t-1 items at most are taken before it,
        so its k best candidates always hold that item. ``all_slots``: two passes (:meth:`_all_slot_score_chunks`).
        """
        if decoding not in ("first_k", "first_logit", "all_slots"):
            raise ValueError(f"rank_from_hidden supports first_k, first_logit, all_slots, got {decoding!r}")
        chunk = chunk_size or self._rank_chunk() or self.config.num_items
        if seen_mask is None:
            seen_mask = torch.zeros(slot_hidden.shape[0], self.config.num_items, dtype=torch.bool, device=slot_hidden.device)
        if decoding == "all_slots":
            best = None
            for start, scores in self._all_slot_score_chunks(slot_hidden, chunk):
                scores.masked_fill_(seen_mask[:, start : start + scores.shape[1]], float("-inf"))
                vals, idx = _topk_first(scores, k)
                best = _merge_topk(best, vals, idx + start, k)
            return best[1], best[0]
        rows = (slot_hidden[:, :1] if decoding == "first_logit" else slot_hidden[:, :k]).contiguous()
        scores, items = self._slot_candidates(rows, k, seen_mask, chunk)
        if decoding == "first_logit":
            return items[:, 0], scores[:, 0]
        return _take_distinct(scores, items)

    def _head_chunks(self, slot_hidden: torch.Tensor, chunk_size: int):
        """Yields ``(start, logits)``: the head's float32 logits (..., chunk) for items ``start:start+chunk``."""
        x, weight, bias = self.head_operands(slot_hidden)
        for start in range(0, weight.shape[0], chunk_size):
            end = start + chunk_size
            yield start, F.linear(x, weight[start:end], None if bias is None else bias[start:end]).float()

    def _slot_candidates(self, slot_hidden: torch.Tensor, k: int, blocked: torch.Tensor, chunk_size: int):
        """Per slot row of ``slot_hidden`` (B, R, hidden): the k best items not ``blocked`` (B, |I|), as
        (log-probs, item rows), each (B, R, k), best first, ties to the lower row. One pass over the items: a running
        logsumexp over ALL items (the softmax normaliser; blocked items count, as in ``log_softmax``) and a running
        top-k of the raw logits."""
        lse = best = None
        for start, logits in self._head_chunks(slot_hidden, chunk_size):
            part = torch.logsumexp(logits, dim=-1)
            lse = part if lse is None else torch.logaddexp(lse, part)
            logits.masked_fill_(blocked[:, None, start : start + logits.shape[-1]], float("-inf"))
            vals, idx = _topk_first(logits, k)
            best = _merge_topk(best, vals, idx + start, k)
        return best[0] - lse.unsqueeze(-1), best[1]

    def _all_slot_score_chunks(self, slot_hidden: torch.Tensor, chunk_size: int):
        """Yields ``(start, scores)``: the ``all_slots`` scores logsumexp_t log_softmax(Z_t) (B, chunk) of items
        ``start:start+chunk``. Two passes over the items: pass 1 the per-(user, slot) logsumexp, pass 2 the chunk's
        normalized log-probs reduced over slots; the head runs twice, at most B x L x chunk logits are alive."""
        lse = None
        for _, logits in self._head_chunks(slot_hidden, chunk_size):
            part = torch.logsumexp(logits, dim=-1)
            lse = part if lse is None else torch.logaddexp(lse, part)
        for start, logits in self._head_chunks(slot_hidden, chunk_size):
            yield start, torch.logsumexp(logits.sub_(lse.unsqueeze(-1)), dim=1)

    @torch.no_grad()
    def all_slot_scores(self, **batch) -> torch.FloatTensor:
        """(B, |I|) ``all_slots`` scores of every item for an encoded batch (the evaluator's ``scorer``); chunked over
        the items (never the (B, L, |I|) logits) when ``config.rank_chunk_size`` < |I|."""
        chunk = self._rank_chunk()
        if chunk is None:
            return torch.logsumexp(torch.log_softmax(self(**batch).logits.float(), dim=-1), dim=1)
        slot_hidden = self.slot_hidden_states(**batch)
        return torch.cat([scores for _, scores in self._all_slot_score_chunks(slot_hidden, chunk)], dim=1)

    def _decode_autoregressive(self, input_ids, attention_mask, user_ids, item_ids, k, seen_mask, user_node_embeddings):
        """AR (paper sec. 4.5): slot t's chosen item token is fed back as the next input before predicting t+1.

        Exactly: the batch is left-padded so the L slots are the last L columns. The prompt up to and including
        slot 1 runs once (KV cache on); slot 1's hidden state picks item i_1 (best unseen). Then for t = 2..k one
        step is run with the cache whose input at slot t's position is ``s_t + V_i[i_{t-1}]`` -- slot t's own vector
        plus the projected item token just chosen, the way an LM feeds back its generated token -- and slot t's
        hidden state picks i_t among items neither seen nor chosen. Training never shows fed-back items, the
        train/inference mismatch the paper blames for AR's weak results.

        Each step scores one slot row per user, chunked over the items like the other decodings when
        ``config.rank_chunk_size`` < |I| (B x chunk logits per step; the LLM steps themselves are not chunked).
        """
        input_ids, attention_mask = _to_left_padding(input_ids, attention_mask)
        L, B = self.config.num_slots, input_ids.shape[0]
        embeds = self.get_inputs_embeds(input_ids, user_ids, item_ids, user_node_embeddings)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        prefix = input_ids.shape[1] - L + 1  # everything through slot 1
        out = self._run_llm(embeds[:, :prefix], attention_mask[:, :prefix], positions[:, :prefix], use_cache=True)
        blocked, rows = seen_mask.clone(), torch.arange(B, device=input_ids.device)
        chunk = self._rank_chunk() or self.config.num_items
        items, scores = [], []
        for t in range(k):
            score, item = self._slot_candidates(out.last_hidden_state[:, -1:], 1, blocked, chunk)
            score, item = score[:, 0, 0], item[:, 0, 0]
            blocked[rows, item] = True
            items.append(item)
            scores.append(score)
            if t + 1 == k:
                break
            col = prefix + t
            step = self.slot_embeddings[t + 1] + self.item_projector(self.item_embeddings[item])
            out = self._run_llm(
                step.to(embeds.dtype).unsqueeze(1),
                attention_mask[:, : col + 1],
                positions[:, col : col + 1],
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return torch.stack(items, dim=1), torch.stack(scores, dim=1)

    # ------------------------------------------------------------------------------------------- serving

    def _lookup(self, name: str):
        cache = getattr(self, f"_{name}_index", None)
        if cache is None:
            ids = self.item_catalogue["item_ids"] if name == "item" else self.user_table["user_ids"]
            cache = {str(x): row for row, x in enumerate(ids)}
            setattr(self, f"_{name}_index", cache)
        return cache

    def encode_users(
        self,
        users: Sequence[int],
        histories: Optional[Sequence[Optional[Sequence[int]]]] = None,
        fold_in: Optional[Sequence[bool]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Encode user-item prompts for internal user rows from the attached user context (the evaluation prompt).

        The prompt shows the last H items of the stored (or given) history; ``fold_in[j]`` means user j has no
        ``E_u`` row and gets ``mean(E_i[history])`` as node embedding (returned as ``user_node_embeddings``).
        """
        if self.tokenizer is None:
            raise ValueError("the model has no tokenizer attached (build it with from_components or from_pretrained)")
        cfg = self.prompt_config
        encoded, folded = [], []
        for j, user in enumerate(users):
            history = histories[j] if histories is not None and histories[j] is not None else None
            new = bool(fold_in[j]) if fold_in is not None else False
            if new:
                prompt = user_item_prompt(0, history, cfg, user_text="new user")
                if not cfg.user_as_text:  # fold-in: LightGCN-consistent mean of the history's item embeddings
                    folded.append(self.item_embeddings[torch.as_tensor(list(history), dtype=torch.long)].mean(dim=0))
            else:
                row = int(user)
                hist = history if history is not None else self.user_table["histories"][row]
                prompt = user_item_prompt(
                    row,
                    hist,
                    cfg,
                    profile=self.user_table["profiles"][row],
                    prediction=self.user_table["predictions"][row],
                    user_text=str(self.user_table["user_ids"][row]),
                )
                if not cfg.user_as_text:
                    folded.append(self.user_embeddings[row])
            encoded.append(encode_prompt(self.tokenizer, prompt, cfg))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = collate_prompts(encoded, pad, self.config.num_slots)
        batch.pop("labels", None)
        batch["user_node_embeddings"] = torch.stack(folded) if folded else torch.zeros(0, self.config.node_dim)
        return {k: v.to(self.device) for k, v in batch.items()}

    def ranker(self, decoding: str = "first_k", batch_size: int = 32) -> Callable[[torch.LongTensor, int], torch.LongTensor]:
        """A ``ranker(users, k) -> LongTensor[B, k]`` for ``glta_hf.metrics.evaluate`` over internal user rows.

        Prompts come from the attached user context; each user's stored (training) history is excluded.
        """

        def rank_users(users: torch.LongTensor, k: int) -> torch.LongTensor:
            out = []
            for start in range(0, len(users), batch_size):
                chunk = [int(u) for u in users[start : start + batch_size]]
                batch = self.encode_users(chunk)
                seen = [self.user_table["histories"][u] for u in chunk]
                items, _ = self.rank(**batch, k=k, seen=seen, decoding=decoding)
                out.append(items.cpu())
            return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)

        return rank_users

    def scorer(self, batch_size: int = 32) -> Callable[[torch.LongTensor], torch.FloatTensor]:
        """A ``scorer(users) -> FloatTensor[B, |I|]`` for ``evaluate``: the ``all_slots`` score of every item."""

        @torch.no_grad()
        def score_users(users: torch.LongTensor) -> torch.FloatTensor:
            out = []
            for start in range(0, len(users), batch_size):
                batch = self.encode_users([int(u) for u in users[start : start + batch_size]])
                out.append(self.all_slot_scores(**batch).cpu())
            return torch.cat(out) if out else torch.zeros(0, self.config.num_items)

        return score_users

    @torch.no_grad()
    def recommend(
        self,
        users: Sequence,
        k: int = 10,
        exclude_seen: bool = True,
        decoding: str = "first_k",
        histories: Optional[Union[Dict[Any, Sequence], Sequence[Optional[Sequence]]]] = None,
        batch_size: int = 32,
    ) -> List[Dict[str, Any]]:
        """Top-k external item ids with scores for external user ids: ``[{"user", "items", "scores"}, ...]``.

        ``histories`` (external item ids; a dict by user or a list aligned with ``users``) replaces a known user's
        stored history in the prompt and the exclusion, and lets unknown users be *folded in*: their node embedding
        is the mean of ``E_i`` over the history (LightGCN's propagation from a user's items), without profile or
        prediction text. An unknown user without history raises ``UnknownIdError``.
        """
        user_index, item_index = self._lookup("user"), self._lookup("item")
        if isinstance(histories, dict):
            histories = [histories.get(u, histories.get(str(u))) for u in users]
        if histories is not None and len(histories) != len(users):
            raise ValueError(f"{len(histories)} histories for {len(users)} users")
        rows, hists, fold = [], [], []
        for j, user in enumerate(users):
            given = histories[j] if histories is not None else None
            if given is not None:
                missing = [i for i in given if str(i) not in item_index]
                if missing:
                    raise UnknownIdError(f"user {user!r}: unknown item ids in history: {missing[:5]}")
                given = [item_index[str(i)] for i in given]
            if str(user) in user_index:
                rows.append(user_index[str(user)])
                fold.append(False)
            elif given:
                rows.append(-1)
                fold.append(True)
            else:
                raise UnknownIdError(f"unknown user {user!r} and no history to fold in from")
            hists.append(given)
        results: List[Dict[str, Any]] = []
        for start in range(0, len(users), batch_size):
            sl = slice(start, start + batch_size)
            batch = self.encode_users(rows[sl], hists[sl], fold[sl])
            if exclude_seen:
                seen = [h if h is not None else self.user_table["histories"][r] for r, h in zip(rows[sl], hists[sl])]
            else:
                seen = None
            items, scores = self.rank(**batch, k=k, seen=seen, decoding=decoding)
            for user, item_row, score in zip(users[sl], items.tolist(), scores.tolist()):
                results.append(
                    {"user": user, "items": [self.item_catalogue["item_ids"][i] for i in item_row], "scores": score}
                )
        return results

    # ------------------------------------------------------------------------------------------- checkpoints

    def glta_state_dict(self) -> Dict[str, torch.Tensor]:
        """Everything GLTA adds (projectors, slots, head, frozen E_u/E_i); never an LLM weight."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("llm.")}

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """Write config (+ remote code), GLTA weights, tokenizer, catalogue, user table (+ LoRA adapter)."""
        from transformers.dynamic_module_utils import custom_object_save

        if push_to_hub:
            raise NotImplementedError("save_pretrained(push_to_hub=True): use model.push_to_hub(repo_id) instead")
        if not self.config.llm_name_or_path:
            raise CheckpointError(
                "config.llm_name_or_path is empty: a GLTA checkpoint references its LLM instead of copying it; "
                "set model.config.llm_name_or_path to a hub id or a local folder"
            )
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        if getattr(self, "_auto_class", None) is not None:
            custom_object_save(self, folder, config=self.config)
        self.config.save_pretrained(folder)
        save_safetensors(self.glta_state_dict(), folder / WEIGHTS_NAME, metadata={"format": "pt"})
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        write_json(folder / CATALOGUE_NAME, self.item_catalogue)
        write_json(folder / USER_TABLE_NAME, self.user_table)
        if _is_peft(self.llm):
            self.llm.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)
        if self.run_info:
            write_json(folder / RUN_INFO_NAME, self.run_info)
        _write_model_card(self, folder)

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
        **kwargs,
    ) -> "GLTAForRecommendation":
        """Load a GLTA folder (or hub repo) and rebuild its LLM from the reference (``llm_name_or_path`` overrides).

        Raises ``CheckpointError`` on pickle files, a tokenizer without the placeholders, an LLM whose hidden size
        differs from the projectors', or weights / catalogue / user table that disagree with the config.
        """
        folder = Path(os.fspath(pretrained_model_name_or_path))
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(
                snapshot_download(
                    str(pretrained_model_name_or_path),
                    revision=revision,
                    local_files_only=local_files_only,
                    ignore_patterns=["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"],
                )
            )
        refuse_pickled_weights(folder)
        refuse_pickled_weights(folder / ADAPTER_DIR)
        if not (folder / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{folder}: no {WEIGHTS_NAME}; not a GLTA checkpoint")
        config = config if isinstance(config, GLTAConfig) else GLTAConfig.from_pretrained(folder)
        if quantization is not None:
            config.quantization = quantization
        if llm_dtype is not None:
            config.llm_dtype = llm_dtype

        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=kwargs.get("trust_remote_code"))
        try:
            ids = placeholder_token_ids(tokenizer)
        except ValueError as err:
            raise CheckpointError(f"{folder}: tokenizer is unusable: {err}") from err
        expected = {USER_TOKEN: config.user_token_id, ITEM_TOKEN: config.item_token_id, SLOT_TOKEN: config.slot_token_id}
        if ids != expected:
            raise CheckpointError(f"{folder}: tokenizer placeholder ids {ids} differ from the config's {expected}")

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
            if not (folder / ADAPTER_DIR).is_dir():
                raise CheckpointError(f"{folder}: config has lora={config.lora} but no {ADAPTER_DIR}/ folder")
            from peft import PeftModel

            llm = PeftModel.from_pretrained(freeze(llm), folder / ADAPTER_DIR, is_trainable=False)
        model = cls(config, llm=llm)

        state = load_safetensors(folder / WEIGHTS_NAME)
        leaked = [k for k in state if k.startswith("llm.")]
        if leaked:
            raise CheckpointError(f"{folder}/{WEIGHTS_NAME} holds LLM weights ({leaked[:3]}...); GLTA checkpoints must not")
        own = model.glta_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{folder}/{WEIGHTS_NAME} does not match the config: missing {missing}, unexpected {unexpected}, shapes {wrong}"
            )
        model.load_state_dict(state, strict=False)

        catalogue = read_json(folder / CATALOGUE_NAME)
        if len(catalogue.get("item_ids", [])) != config.num_items:
            raise CheckpointError(
                f"{folder}/{CATALOGUE_NAME} lists {len(catalogue.get('item_ids', []))} items but the model has |I|={config.num_items}"
            )
        model.set_catalogue(catalogue["item_ids"], catalogue.get("titles"))
        if (folder / USER_TABLE_NAME).is_file():
            table = read_json(folder / USER_TABLE_NAME)
            try:
                model.attach_user_context(
                    table.get("user_ids"), table.get("histories"), table.get("profiles"), table.get("predictions")
                )
            except ValueError as err:
                raise CheckpointError(f"{folder}/{USER_TABLE_NAME}: {err}") from err
        if (folder / RUN_INFO_NAME).is_file():
            model.run_info = read_json(folder / RUN_INFO_NAME)
        model.tokenizer = tokenizer
        model.set_trainable("none")
        return model.eval()


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


def _topk_first(values: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.LongTensor]:
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


def _merge_topk(best, vals: torch.Tensor, idx: torch.LongTensor, k: int):
    """Merge a running ``(values, indices)`` top-k with a later chunk's (all of whose indices are higher): a stable
    sort keeps the running entries first among equal values, i.e. the lower index wins ties."""
    if best is not None:
        vals, idx = torch.cat([best[0], vals], dim=-1), torch.cat([best[1], idx], dim=-1)
    vals, order = vals.sort(dim=-1, descending=True, stable=True)
    return vals[..., :k], idx.gather(-1, order[..., :k])


def _take_distinct(scores: torch.Tensor, items: torch.LongTensor) -> Tuple[torch.LongTensor, torch.FloatTensor]:
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


def _to_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Move every row's padding to the left (a no-op for left-padded batches); the L slots end each row."""
    width = input_ids.shape[1]
    lengths = attention_mask.long().sum(dim=1, keepdim=True)
    left = torch.arange(width, device=input_ids.device).unsqueeze(0) >= width - lengths
    if bool((attention_mask.bool() == left).all()):
        return input_ids, attention_mask
    order = torch.argsort(attention_mask.long(), dim=1, stable=True)  # pads first, tokens keep their order
    return input_ids.gather(1, order), attention_mask.gather(1, order)


# ---- Auto-class registration (added by the lazy-import change; glta_hf/__init__ no longer imports this module) ----
# Runs wherever this module is imported from (glta_hf.GLTAForRecommendation, pipeline, tests), so AutoConfig /
# AutoModel know model_type "glta" and save_pretrained writes the remote code + auto_map. Skipped in the remote-code
# copy (another module name), which must load without glta-hf; import_module keeps transformers' import scan quiet.
if __name__ == "glta_hf.modeling_glta":
    import importlib as _importlib

    _importlib.import_module("glta_hf").register_auto_classes()
