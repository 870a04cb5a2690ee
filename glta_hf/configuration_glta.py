"""``GLTAConfig``: everything needed to rebuild a GLTA recommender except its weights.

It imports only ``transformers`` and its siblings ``components`` / ``prompts`` / ``vocabulary`` (whose registry,
defaults and names it checks against), so a saved checkpoint can carry it as remote code.
The LLM is referenced, never copied: ``llm_name_or_path`` (+ ``llm_revision`` / ``llm_gguf_file``,
``quantization``, ``llm_dtype``) says how ``from_pretrained`` rebuilds the frozen backbone, and
``llm_hidden_size`` is checked against it so a projector never meets a backbone of another width.
"""
from transformers import PretrainedConfig

from .components import HEAD_INPUT_NORMS, component_names
from .prompts import LEGACY_LAYOUT, PromptConfig
from .vocabulary import QUANTIZATIONS

#: Defaults of the prompt settings: ``PromptConfig``'s own (one owner of every prompt default).
PROMPT_DEFAULTS = PromptConfig().to_dict()


class GLTAConfig(PretrainedConfig):
    r"""Configuration of :class:`GLTAForRecommendation`.

    Args:
        llm_name_or_path: Hub id or local folder of the frozen LLM (any LLaMA-family decoder).
        llm_revision: Hub revision (commit/tag) of the LLM, recorded for reproducibility.
        llm_gguf_file: GGUF file name inside ``llm_name_or_path`` (dequantized on load), e.g. SmolLM2 Q4_1.
        quantization: ``"none"`` | ``"bnb-4bit"`` (NF4 via bitsandbytes) | ``"gptq"`` (a GPTQ checkpoint).
        llm_dtype: torch dtype name for the LLM (``"float32"``, ``"bfloat16"``, ...), None = checkpoint default.
        llm_hidden_size: the LLM hidden size; projectors output this width and loading checks it.
        node_dim: d, width of the pretrained LightGCN node embeddings ``E_u`` / ``E_i``.
        num_users / num_items: |U| / |I| (rows of ``E_u`` / ``E_i``, columns of the GLLM logits).
        num_slots: L output slots (>= the largest k evaluated).
        projector: a name in ``glta_hf.components.REGISTRY["projector"]``: ``"linear"`` (paper eq. 1-2:
            ``V = W E + b``) or ``"mlp"`` (Linear-GELU-Linear, LLaVA-1.5 style).
        head: a name in ``glta_hf.components.REGISTRY["head"]``: ``"linear"`` (paper: ``Z = h W_g + b_g`` over |I|) or ``"factorized"`` (``Z = (h W_q + b_q) E_i^T + b_i``
            with the frozen LightGCN item table ``E_i`` and a per-item bias: |I|-free parameters, starts from
            the graph's item geometry; converged about 2x faster in a quick experiment, ``docs/DESIGN_CHOICES.md`` "Heads").
        graph_residual: False (default, the paper) or True: the logits gain ``scale * (e_u . E_i)``, the frozen
            LightGCN score of the prompt's user, with one learned scale (``components.GraphResidual``). Prompts need
            their ``<user>`` token for it (not with ``prompt["user_as_text"]``).
        head_input_norm: ``"unit"`` (default) scales each slot hidden state to unit L2 norm before the head, so the
            head's scale and its Adam steps do not depend on the LLM's final-norm magnitude (~54 for SmolLM2: with
            N(0, 0.02) query weights the loss at initialisation was above ln|I| and one step moved a query by more
            than a whole user vector, issue 23); ``"none"``: the raw hidden state (configs saved before the option).
        residual_gate: with ``graph_residual``, the head's logits enter as ``gate * head`` with ``gate`` starting at 0,
            so the model starts at exactly LightGCN's ranking and learns how much of the LLM term to add (True, the
            default); False: no gate (configs saved before the option).
        residual_graph_tables: with ``graph_residual``, the graph term scores with its own copy of a graph's tables
            (``GraphResidual.user_table`` / ``item_table``) instead of the tables the projectors read (False, the
            default). Stacking's refit step: a residual trained on a graph fit without a held-out fold
            (``--target_policy held_out``) scores with the graph fit on every edge
            (``GLTAForRecommendation.set_residual_tables``).
        center_node_embeddings: subtract the mean of ``E_u`` (``E_i``) from every user (item) vector before its
            projector (False, the default). LightGCN's vectors share one direction (projected item tokens had mean
            |cos| 0.41 against 0.20 among the LLM's own token embeddings); with a linear projector this only moves
            the start (the bias absorbs ``-W mean``), which is what it is for. A validation choice.
        user_token_id / item_token_id / slot_token_id: tokenizer ids of ``<user>``, ``<item>``, ``<slot>``.
        prompt: prompt settings (``glta_hf.prompts.PromptConfig`` fields), stored so serving uses the training prompt.
        lora: None (default, the paper: LLM fully frozen) or a ``peft.LoraConfig`` kwargs dict, e.g. ``{"r": 8}``.
        ce_chunk_size: None (default: plain cross-entropy over the materialized (B, L, |I|) logits) or a number of
            items per chunk: with ``labels`` and ``num_items > ce_chunk_size`` the loss is computed chunk by chunk
            over the catalogue (logits recomputed chunk-wise in backward), so a training step never holds more than
            ``labelled slots x ce_chunk_size`` logits, and ``forward`` returns ``logits=None``. Same loss and
            gradients as the plain path up to float rounding. Worth it from about |I| = 100k
            (see BENCHMARKS.md, catalogue scale).
        rank_chunk_size: None (default: decoding reads the materialized (B, L, |I|) logits and their log-softmax) or
            a number of items per chunk: with ``num_items > rank_chunk_size``, :meth:`~GLTAForRecommendation.rank`
            (every decoding), ``recommend``, ``ranker`` and ``scorer`` run the LLM once and stream the head over item
            chunks (running logsumexp for the softmax normaliser + running top-k), holding at most
            ``B x L x rank_chunk_size`` logits. Same items and scores (to float rounding) as the plain path
            (BENCHMARKS.md 5.8).
    """

    model_type = "glta"

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """A saved config (``from_pretrained``): a prompt without ``layout`` was trained in the paper's order."""
        prompt = config_dict.get("prompt")
        if isinstance(prompt, dict) and "layout" not in prompt:
            config_dict = {**config_dict, "prompt": {**prompt, "layout": LEGACY_LAYOUT}}
        # saved before the options existed: the head read the raw hidden state and the residual had no gate
        config_dict = {"head_input_norm": "none", "residual_gate": False, **config_dict}
        return super().from_dict(config_dict, **kwargs)

    def __init__(
        self,
        llm_name_or_path=None,
        llm_revision=None,
        llm_gguf_file=None,
        quantization="none",
        llm_dtype=None,
        llm_hidden_size=None,
        node_dim=64,
        num_users=0,
        num_items=0,
        num_slots=10,
        projector="linear",
        head="linear",
        user_token_id=None,
        item_token_id=None,
        slot_token_id=None,
        prompt=None,
        lora=None,
        ce_chunk_size=None,
        rank_chunk_size=None,
        graph_residual=False,
        head_input_norm="unit",
        residual_gate=True,
        center_node_embeddings=False,
        residual_graph_tables=False,
        **kwargs,
    ):
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
        for kind, name in (("projector", projector), ("head", head)):
            if name not in component_names(kind):
                raise ValueError(f"{kind} must be one of {component_names(kind)}, got {name!r}")
        if kwargs.pop("slot_mode", "replace") != "replace":  # a key of older configs; only "replace" ever ran
            raise ValueError("slot_mode is no longer a setting: the input at slot t is always its vector s_t")
        if int(num_slots) < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        for name, chunk in (("ce_chunk_size", ce_chunk_size), ("rank_chunk_size", rank_chunk_size)):
            if chunk is not None and int(chunk) < 1:
                raise ValueError(f"{name} must be None or >= 1, got {chunk}")
        if lora is not None and not isinstance(lora, dict):
            raise ValueError(f"lora must be None or a dict of peft.LoraConfig arguments, got {type(lora).__name__}")
        self.llm_name_or_path = llm_name_or_path
        self.llm_revision = llm_revision
        self.llm_gguf_file = llm_gguf_file
        self.quantization = quantization
        self.llm_dtype = llm_dtype
        self.llm_hidden_size = llm_hidden_size
        self.node_dim = int(node_dim)
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.num_slots = int(num_slots)
        self.projector = projector
        self.head = head
        self.user_token_id = user_token_id
        self.item_token_id = item_token_id
        self.slot_token_id = slot_token_id
        merged = dict(PROMPT_DEFAULTS)
        merged.update(prompt or {})
        merged["num_slots"] = self.num_slots  # one source of truth for L
        self.prompt = merged
        if graph_residual and merged.get("user_as_text"):
            raise ValueError("graph_residual needs the <user> token of every prompt; prompt user_as_text=True has none")
        self.graph_residual = bool(graph_residual)
        if head_input_norm not in HEAD_INPUT_NORMS:
            raise ValueError(f"head_input_norm must be one of {HEAD_INPUT_NORMS}, got {head_input_norm!r}")
        self.head_input_norm = head_input_norm
        self.residual_gate = bool(residual_gate)
        self.center_node_embeddings = bool(center_node_embeddings)
        if residual_graph_tables and not graph_residual:
            raise ValueError("residual_graph_tables is a setting of the graph residual: set graph_residual=True")
        self.residual_graph_tables = bool(residual_graph_tables)
        self.lora = lora
        self.ce_chunk_size = None if ce_chunk_size is None else int(ce_chunk_size)
        self.rank_chunk_size = None if rank_chunk_size is None else int(rank_chunk_size)
        super().__init__(**kwargs)
