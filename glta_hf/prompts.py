"""Every GLTA prompt template and the one prompt encoder (training, evaluation and ``recommend()`` share it).

Placeholders
    ``USER_TOKEN = "<user>"``, ``ITEM_TOKEN = "<item>"``, ``SLOT_TOKEN = "<slot>"`` are added to the tokenizer as
    special tokens (:func:`add_placeholder_tokens`); the model writes projected node embeddings (``<user>``,
    ``<item>``) or per-slot vectors (``<slot>``) at their positions. Free text (descriptions, profile, prediction)
    can never create a placeholder: occurrences of the three strings in free text are rewritten to ``(user)``,
    ``(item)``, ``(slot)`` before rendering.

Templates (the paper's Fig. 1c/1d and Fig. 2a/2b; the figures are images, so the wording here is ours)
    * :func:`item_text_prompt` -- item-text alignment: m ``<item>`` tokens in one order, the m descriptions in
      another (the order of ``item_ids`` as given), and the request to output the item tokens in the order of
      the descriptions. ``targets`` = ``item_ids`` (slot t must predict the item whose description is t-th).
    * :func:`user_item_prompt` -- user-item alignment: the ``<user>`` token (or the user id as text for the
      "w/o UA" ablation, ``PromptConfig.user_as_text``), up to H history items as ``<item>`` tokens (the last H of
      the given history), with ``PromptConfig.history_titles`` their titles as text too, the profile and
      prediction texts, then the L output slots.
    * :func:`profile_messages` / :func:`prediction_messages` -- chat messages for the LLM-generated profile
      ("what this user likes") and prediction ("what this user will want next") texts, built from the texts of
      the user's TRAINING items. Render them with :func:`render_generation_prompt`.

Layouts (``PromptConfig.layout``)
    ``"text_first"`` (default): all fixed and free text first, then the ``<user>`` / ``<item>`` placeholders back
    to back (no separators), then the slots, so the longest possible prefix contains no trainable input and is
    computed once per user (exact prefix caching). ``"paper"``: placeholders early, as in the paper's figures.
    text_first became the default when it matched the paper's order on validation (BENCHMARKS.md 5.9, two seeds);
    a config dict without the key (written before the option) means ``"paper"``, the order it was trained with.

Rendering
    With ``use_chat_template`` and a tokenizer that has a chat template, the system + user messages are rendered
    with ``apply_chat_template(add_generation_prompt=True)`` and the L ``<slot>`` tokens are appended right after
    the assistant generation prompt (the slots stand where the answer would be generated). Otherwise plain text:
    ``"{system}\\n\\n{user}\\n\\nAnswer: "`` + slots, encoded with the tokenizer's special tokens (BOS).

Encoding
    ``encode_prompt(tokenizer, prompt, config) -> EncodedPrompt`` (``input_ids``, ``user_ids``, ``item_ids``,
    ``targets``, ``num_user_tokens`` / ``num_item_tokens`` / ``num_slot_tokens``, ``prefix_length`` /
    ``prefix_hash``: the leading placeholder-free tokens a frozen LLM's cache may hold, see
    ``glta_hf.prefix_cache``). Free text is first cut to its per-field cap (``max_description_tokens``,
    ``max_profile_tokens``, ``max_prediction_tokens``, ``max_history_title_tokens``); if the prompt is still longer
    than ``max_length``, the longest free-text field is shortened until it fits. Placeholders are never dropped:
    if the template and placeholders alone exceed ``max_length`` a ``ValueError`` is raised.
    ``collate_prompts(encoded, pad_token_id, num_slots)`` pads a batch (left padding by default) and returns the
    ``forward`` inputs: ``input_ids``, ``attention_mask``, ``user_ids`` / ``item_ids`` (flattened over the batch in
    placeholder order) and ``labels`` (B, L) with -100 after each sample's targets.

Example::

    cfg = PromptConfig(max_history=20, num_slots=10)
    add_placeholder_tokens(tokenizer)
    p = user_item_prompt(user_id=3, history=[5, 9, 2], profile="Likes comedies.", prediction=None,
                         config=cfg, targets=[7, 1])
    batch = collate_prompts([encode_prompt(tokenizer, p, cfg)], tokenizer.pad_token_id, cfg.num_slots)
    out = model(**batch)
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

USER_TOKEN = "<user>"
ITEM_TOKEN = "<item>"
SLOT_TOKEN = "<slot>"
PLACEHOLDER_TOKENS = (USER_TOKEN, ITEM_TOKEN, SLOT_TOKEN)
PROMPT_LAYOUTS = ("paper", "text_first")
#: the layout of prompt configs saved before ``layout`` existed (they were trained in the paper's order)
LEGACY_LAYOUT = "paper"
_NEUTRALIZED = {USER_TOKEN: "(user)", ITEM_TOKEN: "(item)", SLOT_TOKEN: "(slot)"}

DEFAULT_SYSTEM_PROMPT = (
    "You are a recommender system. User and item tokens come from a user-item interaction graph; "
    "answer with item tokens."
)
TEXT_SYSTEM_PROMPT = "You are a helpful assistant that analyses what people like."


@dataclass
class PromptConfig:
    """Prompt settings shared by training, evaluation and ``recommend()`` (stored in ``GLTAConfig.prompt``)."""

    max_history: int = 20  # H: history items shown as <item> tokens in the user-item prompt
    num_slots: int = 10  # L: output slots appended to every prompt
    use_chat_template: bool = True
    max_length: int = 1024  # whole prompt, in tokens
    max_profile_tokens: int = 96
    max_prediction_tokens: int = 64
    max_description_tokens: int = 48  # per item description (item-text alignment)
    max_history_title_tokens: int = 160  # all shown history titles together (history_titles)
    include_profile: bool = True
    include_prediction: bool = True
    # the shown history items' titles as text too: a frozen LLM may know the titles, and with text_first they are
    # in the cached prefix (off: the prompts, checkpoints and cached prefixes made before the option)
    history_titles: bool = False
    user_as_text: bool = False  # "w/o UA" ablation: the user id as text instead of the <user> token
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # "paper": placeholders early (the paper's Fig. 2); "text_first": every fixed text (system prompt, instruction,
    # profile, prediction / descriptions) before the first placeholder, so a frozen LLM's states over that text
    # can be cached (glta_hf.prefix_cache) -- same information, another order.
    layout: str = "text_first"

    def __post_init__(self) -> None:
        if self.layout not in PROMPT_LAYOUTS:
            raise ValueError(f"PromptConfig.layout must be one of {PROMPT_LAYOUTS}, got {self.layout!r}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Optional[Mapping[str, Any]]) -> "PromptConfig":
        """Build from a dict, ignoring unknown keys (configs written by newer versions still load); a dict without
        ``layout`` was written before the option and is read in the paper's order it was trained with."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"layout": LEGACY_LAYOUT, **{k: v for k, v in (values or {}).items() if k in names}})


@dataclass
class Prompt:
    """A prompt before tokenization: message templates with ``{field}`` slots for free text, and node ids.

    ``messages`` contents are ``str.format`` templates whose fields are the keys of ``texts``; the template text
    itself is ours (braces escaped), the field values are free text that may be truncated.
    """

    kind: str
    messages: List[Dict[str, str]]
    texts: Dict[str, str] = field(default_factory=dict)
    text_caps: Dict[str, int] = field(default_factory=dict)
    user_ids: List[int] = field(default_factory=list)
    item_ids: List[int] = field(default_factory=list)
    targets: List[int] = field(default_factory=list)
    # the user row a user-item prompt is about, with or without a <user> token (w/o UA names the user in text);
    # None for item-text prompts. Not rendered: what the trainer's mask_training_items reads.
    user: Optional[int] = None


@dataclass
class EncodedPrompt:
    input_ids: List[int]
    user_ids: List[int]
    item_ids: List[int]
    targets: List[int]
    num_user_tokens: int
    num_item_tokens: int
    num_slot_tokens: int
    # Leading tokens before the first placeholder: no trainable input reaches them, so a frozen LLM's key/value
    # states over them are a function of these ids alone (cacheable); prefix_hash identifies those ids.
    prefix_length: int = 0
    prefix_hash: str = ""
    user: Optional[int] = None  # Prompt.user: the sample's user, <user> token or not (None: item-text prompt)

    @property
    def num_placeholders(self) -> Dict[str, int]:
        return {USER_TOKEN: self.num_user_tokens, ITEM_TOKEN: self.num_item_tokens, SLOT_TOKEN: self.num_slot_tokens}


# ----------------------------------------------------------------------------------------------- tokenizer


def add_placeholder_tokens(tokenizer) -> Dict[str, int]:
    """Add ``<user>``, ``<item>``, ``<slot>`` as special tokens (idempotent); return their ids."""
    missing = [t for t, i in _lookup_placeholders(tokenizer).items() if i is None]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return placeholder_token_ids(tokenizer)


#: Tokenizers whose placeholders passed the single-token check, with the ids they had then (weakly held).
_SINGLE_TOKEN_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _lookup_placeholders(tokenizer) -> Dict[str, Optional[int]]:
    """Token -> id, None where the tokenizer lacks it. Three lookups, not ``get_vocab()``: that builds the whole
    vocabulary dict (~25 ms for SmolLM2's 49k tokens) and ``encode_prompt`` runs this for every prompt."""
    ids: Dict[str, Optional[int]] = {}
    for token in PLACEHOLDER_TOKENS:
        found = tokenizer.convert_tokens_to_ids(token)  # the unknown-token id (or None) when absent
        ids[token] = int(found) if found is not None and tokenizer.convert_ids_to_tokens(int(found)) == token else None
    return ids


def placeholder_token_ids(tokenizer) -> Dict[str, int]:
    """The placeholder ids; ``ValueError`` if the tokenizer lacks them or does not keep them as single tokens.

    The single-token check tokenizes each placeholder, so it runs once per tokenizer and set of ids (again when
    tokens are added and the ids change), not for every prompt."""
    found = _lookup_placeholders(tokenizer)
    missing = [t for t, i in found.items() if i is None]
    if missing:
        raise ValueError(f"tokenizer lacks the GLTA placeholder tokens {missing}; call add_placeholder_tokens()")
    ids = {t: int(i) for t, i in found.items()}
    if _checked_ids(tokenizer) != ids:
        for t, i in ids.items():
            if tokenizer(t, add_special_tokens=False)["input_ids"] != [i]:
                raise ValueError(f"tokenizer splits the placeholder {t!r}; it must be a single special token")
        try:
            _SINGLE_TOKEN_CHECKED[tokenizer] = dict(ids)
        except TypeError:  # not weakly referenceable / hashable: simply checked again next time
            pass
    return ids


def _checked_ids(tokenizer) -> Optional[Dict[str, int]]:
    try:
        return _SINGLE_TOKEN_CHECKED.get(tokenizer)
    except TypeError:
        return None


# ----------------------------------------------------------------------------------------------- templates


def _esc(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def neutralize_text(text: Optional[str]) -> str:
    """Free text as every prompt shows it: stripped, the placeholder strings spelled out (a text never adds a
    ``<user>`` / ``<item>`` / ``<slot>`` token)."""
    text = "" if text is None else str(text)
    for token, repl in _NEUTRALIZED.items():
        text = text.replace(token, repl)
    return text.strip()


def item_text_prompt(
    item_ids: Sequence[int],
    descriptions: Sequence[str],
    config: PromptConfig,
    *,
    token_order: Optional[Sequence[int]] = None,
    rng: Optional[random.Random] = None,
) -> Prompt:
    """Item-text alignment (Fig. 2a): descriptions in the given order, item tokens shuffled.

    ``descriptions[j]`` describes ``item_ids[j]``; the descriptions are listed in that order and the item tokens
    in ``token_order`` (a permutation of ``range(m)``; a random one from ``rng`` when omitted, re-drawn so it
    differs from the identity when m > 1). ``targets`` is ``item_ids``: slot t must output the t-th described item.
    """
    m = len(item_ids)
    if m != len(descriptions):
        raise ValueError(f"item_text_prompt: {m} item ids but {len(descriptions)} descriptions")
    if not 1 <= m <= config.num_slots:
        raise ValueError(f"item_text_prompt: need 1 <= m <= num_slots={config.num_slots} items, got {m}")
    if token_order is None:
        rng = rng or random.Random()
        token_order = list(range(m))
        while m > 1 and token_order == list(range(m)):
            rng.shuffle(token_order)
    token_order = list(token_order)
    if sorted(token_order) != list(range(m)):
        raise ValueError(f"token_order must be a permutation of range({m}), got {token_order}")
    texts = {f"desc_{j}": neutralize_text(d) for j, d in enumerate(descriptions)}
    listing = "\n".join(f"{j + 1}. {{desc_{j}}}" for j in range(m))
    if config.layout == "text_first":  # every word first, the tokens back to back at the end (see user_item_prompt)
        user = (
            f"Here are the descriptions of {m} items:\n{listing}\n"
            "Output the item tokens below in the order of the descriptions. "
            f"The tokens of these items, in a different order: {ITEM_TOKEN * m}"
        )
    else:
        user = (
            f"Here are {m} item tokens: {', '.join([ITEM_TOKEN] * m)}.\n"
            f"Here are the descriptions of these items, in a different order:\n{listing}\n"
            "Output the item tokens in the order of the descriptions."
        )
    return Prompt(
        kind="item_text",
        messages=[{"role": "system", "content": _esc(config.system_prompt)}, {"role": "user", "content": user}],
        texts=texts,
        text_caps={k: config.max_description_tokens for k in texts},
        item_ids=[int(item_ids[j]) for j in token_order],
        targets=[int(i) for i in item_ids],
    )


def user_item_prompt(
    user_id: int,
    history: Sequence[int],
    config: PromptConfig,
    *,
    profile: Optional[str] = None,
    prediction: Optional[str] = None,
    targets: Sequence[int] = (),
    user_text: Optional[str] = None,
    history_titles: Optional[Sequence[Optional[str]]] = None,
) -> Prompt:
    """User-item alignment (Fig. 2b): ``<user>``, the last H history items as ``<item>``, profile, prediction.

    ``config.layout == "text_first"`` puts the instruction, profile and prediction before the ``<user>`` /
    ``<item>`` line, whose placeholders stand back to back at its end (the cacheable prefix is then everything up
    to ``<user>``; the rest is ~H + L + 7 tokens).

    ``user_id`` is the row in ``E_u``; with ``config.user_as_text`` ("w/o UA") no ``<user>`` token is used and the
    user is named by ``user_text`` (default: ``str(user_id)``). Profile / prediction are left out when None/empty
    or when switched off in the config. ``targets`` (<= L item rows) become the slot labels.

    ``history_titles[j]``: the title of ``history[j]`` (:func:`history_titles_from`); with ``config.history_titles``
    the shown items' titles are listed in the ``<item>`` order, one free-text field capped at
    ``max_history_title_tokens`` (a text line: before the placeholders with text_first, so in the cached prefix).
    """
    items = [int(i) for i in history]
    if history_titles is not None and len(history_titles) != len(items):
        raise ValueError(f"user_item_prompt: {len(history_titles)} history_titles for {len(items)} history items "
                         "(one title per history item, in the same order)")
    first_shown = len(items) - min(len(items), max(config.max_history, 0))
    history = items[first_shown:]
    if len(targets) > config.num_slots:
        raise ValueError(f"user_item_prompt: {len(targets)} targets > num_slots={config.num_slots}")
    if config.user_as_text:
        who = f"User {_esc(neutralize_text(user_text if user_text is not None else str(user_id)))}"
        user_ids: List[int] = []
    else:
        who = f"User {USER_TOKEN}"
        user_ids = [int(user_id)]
    if config.layout == "text_first":
        # Every fixed word before the first placeholder and the placeholders back to back (no ", " between them,
        # 2 tokens per item): what runs with gradients is only <user>, the <item>s, the chat template's closing
        # tokens and the slots.
        tokens = ITEM_TOKEN * len(history) or "(none)"
        if config.user_as_text:
            placeholders = f"{who}. The tokens of the items this user has interacted with: {tokens}"
        else:
            placeholders = f"The user's token, then the tokens of the items this user has interacted with: {USER_TOKEN}{tokens}"
    else:
        placeholders = f"{who} has interacted with these items: {', '.join([ITEM_TOKEN] * len(history)) or '(none)'}."
    instruction = "Recommend the items this user will interact with next, as item tokens."
    texts: Dict[str, str] = {}
    caps: Dict[str, int] = {}
    text_lines = []
    if config.history_titles:
        if history_titles is None:
            raise ValueError("user_item_prompt: PromptConfig.history_titles is on but no history_titles were given "
                             "(the catalogue titles of the history: history_titles_from)")
        titles = list(history_titles)[first_shown:]
        untitled = [item for item, title in zip(history, titles) if title is None]
        if untitled:
            raise ValueError(f"user_item_prompt: history items {untitled[:5]} have no title, and "
                             "PromptConfig.history_titles lists the titles of the shown items")
        if history:
            texts["history_titles"] = "; ".join(neutralize_text(t) for t in titles)
            caps["history_titles"] = config.max_history_title_tokens
            text_lines.append("Titles of the items this user has interacted with: {history_titles}")
    if config.include_profile and profile:
        texts["profile"], caps["profile"] = neutralize_text(profile), config.max_profile_tokens
        text_lines.append("Profile: {profile}")
    if config.include_prediction and prediction:
        texts["prediction"], caps["prediction"] = neutralize_text(prediction), config.max_prediction_tokens
        text_lines.append("Prediction: {prediction}")
    if config.layout == "text_first":
        lines = [instruction, *text_lines, placeholders]
    else:
        lines = [placeholders, *text_lines, instruction]
    return Prompt(
        kind="user_item",
        messages=[{"role": "system", "content": _esc(config.system_prompt)}, {"role": "user", "content": "\n".join(lines)}],
        texts=texts,
        text_caps=caps,
        user_ids=user_ids,
        item_ids=history,
        targets=[int(t) for t in targets],
        user=int(user_id),
    )


def history_titles_from(history: Sequence[int], item_titles: Optional[Sequence[Optional[str]]],
                        config: PromptConfig) -> Optional[List[Optional[str]]]:
    """``user_item_prompt``'s ``history_titles`` for ``history`` (item rows) from the titles by item row -- the
    model's ``item_catalogue["titles"]``, which training and serving both read, so both render one prompt; None
    when the config lists no titles."""
    if not config.history_titles:
        return None
    if item_titles is None:
        raise ValueError("PromptConfig.history_titles is on but no item titles were given (the model's "
                         "item_catalogue['titles'])")
    return [item_titles[int(i)] for i in history]


def _item_listing(item_texts: Sequence[str]) -> str:
    return "\n".join(f"- {neutralize_text(t)}" for t in item_texts)


#: The start of each generated answer, written by us after the generation prompt ("prefilled"). A 135M instruct
#: model asked to summarize a list mostly copies the list back (85% of profiles did, issue 23); an answer that
#: already starts with "This user enjoys" can only continue as a description of taste.
PROFILE_ANSWER_PREFIX = "This user enjoys"
PREDICTION_ANSWER_PREFIX = "The next item this user will want is"


def profile_messages(item_texts: Sequence[str], system_prompt: str = TEXT_SYSTEM_PROMPT) -> List[Dict[str, str]]:
    """Fig. 1c: ask the LLM to summarize what the user likes from the texts of their training items."""
    return [
        {"role": "system", "content": system_prompt},
        {
            "role": "user",
            "content": "A user has interacted with the following items:\n"
            f"{_item_listing(item_texts)}\n"
            "In one or two sentences, describe the kinds, genres and themes of items this user enjoys. "
            "Do not list the items.",
        },
    ]


def prediction_messages(
    item_texts: Sequence[str], profile: Optional[str] = None, system_prompt: str = TEXT_SYSTEM_PROMPT
) -> List[Dict[str, str]]:
    """Fig. 1d: ask the LLM what the user will want next, from their training items (and profile, if any)."""
    profile_line = f"Their profile: {neutralize_text(profile)}\n" if profile else ""
    return [
        {"role": "system", "content": system_prompt},
        {
            "role": "user",
            "content": "A user has interacted with the following items:\n"
            f"{_item_listing(item_texts)}\n{profile_line}"
            "In one sentence, predict what kind of item this user will want next. Do not list the items.",
        },
    ]


# ----------------------------------------------------------------------------------------------- rendering


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_generation_prompt(tokenizer, messages: Sequence[Mapping[str, str]], use_chat_template: bool = True,
                             answer_prefix: str = "") -> str:
    """Render chat messages for free-text generation (profile / prediction), ending where the answer starts, plus
    ``answer_prefix`` (the answer's first words, which the LLM continues)."""
    if use_chat_template and _has_chat_template(tokenizer):
        rendered = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    else:
        rendered = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer: "
    return rendered + answer_prefix


def render_prompt(tokenizer, prompt: Prompt, config: PromptConfig, texts: Optional[Mapping[str, str]] = None) -> str:
    """The prompt as one string: chat template (or plain text) with the free text filled in, then L slots."""
    values = prompt.texts if texts is None else texts
    messages = [{"role": m["role"], "content": m["content"].format(**values)} for m in prompt.messages]
    return render_generation_prompt(tokenizer, messages, config.use_chat_template) + SLOT_TOKEN * config.num_slots


def _uses_chat(tokenizer, config: PromptConfig) -> bool:
    return config.use_chat_template and _has_chat_template(tokenizer)


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def _cut(tokenizer, text: str, n: int) -> str:
    if n <= 0 or not text:
        return ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= n else tokenizer.decode(ids[:n], skip_special_tokens=True).strip()


def encode_prompt(tokenizer, prompt: Prompt, config: PromptConfig, max_length: Optional[int] = None) -> EncodedPrompt:
    """Tokenize ``prompt``: cap free text, then shorten the longest free text until it fits ``max_length``.

    Raises ``ValueError`` when the template and placeholders alone exceed ``max_length`` or when the encoded
    placeholder counts do not match the node ids (never drops a placeholder silently).
    """
    ids_of = placeholder_token_ids(tokenizer)
    max_length = config.max_length if max_length is None else max_length
    add_special = not _uses_chat(tokenizer, config)
    texts = {k: _cut(tokenizer, v, prompt.text_caps.get(k, 10**9)) for k, v in prompt.texts.items()}
    while True:
        input_ids = tokenizer(render_prompt(tokenizer, prompt, config, texts), add_special_tokens=add_special)["input_ids"]
        overflow = len(input_ids) - max_length
        if overflow <= 0:
            break
        lengths = {k: _n_tokens(tokenizer, v) for k, v in texts.items()}
        longest = max(lengths, key=lengths.get, default=None)
        if longest is None or lengths[longest] == 0:
            raise ValueError(
                f"{prompt.kind} prompt needs {len(input_ids)} tokens without any free text, more than "
                f"max_length={max_length}: lower max_history / num_slots or raise max_length"
            )
        texts[longest] = _cut(tokenizer, texts[longest], lengths[longest] - overflow)
    prefix_length = cacheable_prefix_length(input_ids, ids_of.values())
    counts = {t: input_ids.count(i) for t, i in ids_of.items()}
    expected = {USER_TOKEN: len(prompt.user_ids), ITEM_TOKEN: len(prompt.item_ids), SLOT_TOKEN: config.num_slots}
    if counts != expected:
        raise ValueError(f"{prompt.kind} prompt encodes placeholder counts {counts}, expected {expected}")
    return EncodedPrompt(
        input_ids=list(input_ids),
        user_ids=list(prompt.user_ids),
        item_ids=list(prompt.item_ids),
        targets=list(prompt.targets),
        num_user_tokens=counts[USER_TOKEN],
        num_item_tokens=counts[ITEM_TOKEN],
        num_slot_tokens=counts[SLOT_TOKEN],
        prefix_length=prefix_length,
        prefix_hash=prefix_hash(input_ids[:prefix_length]),
        user=prompt.user,
    )


def cacheable_prefix_length(input_ids: Sequence[int], placeholder_ids: Iterable[int]) -> int:
    """How many leading tokens come before the first placeholder (all of them when there is none)."""
    placeholder_ids = set(int(i) for i in placeholder_ids)
    return next((pos for pos, token in enumerate(input_ids) if int(token) in placeholder_ids), len(input_ids))


def prefix_hash(prefix_ids: Sequence[int]) -> str:
    """A stable identifier of a prefix: SHA-256 of its token ids (the exact input the LLM sees, not the text,
    which may not round-trip through the tokenizer)."""
    return hashlib.sha256(",".join(str(int(i)) for i in prefix_ids).encode("ascii")).hexdigest()[:32]


def collate_prompts(
    encoded: Sequence[EncodedPrompt], pad_token_id: int, num_slots: int, padding_side: str = "left"
) -> Dict[str, Any]:
    """Pad a batch into ``forward`` inputs (torch tensors); ``labels`` only when some sample has targets.

    Left padding is the default so every prompt ends at the same position (batched autoregressive decoding);
    the model derives position ids from the attention mask, so the padding side does not change the logits.
    """
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), width), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), num_slots), -100, dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[row, cols] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[row, cols] = 1
        if len(e.targets) > num_slots:
            raise ValueError(f"sample {row}: {len(e.targets)} targets > num_slots={num_slots}")
        labels[row, : len(e.targets)] = torch.tensor(e.targets, dtype=torch.long)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "user_ids": torch.tensor([u for e in encoded for u in e.user_ids], dtype=torch.long),
        "item_ids": torch.tensor([i for e in encoded for i in e.item_ids], dtype=torch.long),
    }
    if any(e.targets for e in encoded):
        batch["labels"] = labels
    return batch
