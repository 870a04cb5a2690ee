"""Profile and prediction texts (paper Fig. 1c / 1d): written once per dataset and LLM, cached per user on disk.

For each user the frozen LLM reads the texts of a capped, seeded sample of the user's TRAINING items (never
validation or test items, so no evaluation item leaks into the prompt) and writes

* a *profile* -- what this user likes (:func:`glta_hf.prompts.profile_messages`), and
* a *prediction* -- what this user will want next (:func:`glta_hf.prompts.prediction_messages`, which is also
  shown the profile, as in Fig. 1d where the prediction builds on the profile).

Generation is batched (left padding so every row's next token is at the same column, KV cache on, greedy by
default, seeded) and the users are sorted by prompt length before batching so a batch wastes little padding. A
user's two prompts share their start (template, system prompt, item list: most of their tokens); greedy generation
prefills it once per batch and continues both prompts from its key/value states (:func:`_batch_texts`), which writes
the texts of full prefills up to float rounding.

Cache format: ``texts.jsonl`` -- one JSON object per line and per user ``{"user_idx", "user_id", "profile",
"prediction"}`` -- and a sidecar ``texts.jsonl.meta.json`` written atomically before the first line, recording the
template hash, the LLM reference, the dataset name + split fingerprint and the generation settings. Each batch is
appended, flushed and fsynced, so a killed job loses at most the batch in flight; a rerun drops a truncated last
line, skips users already present and appends the rest (every user ends with exactly one line). A cache whose
sidecar names another LLM, template, dataset or setting is refused with :class:`TextCacheError` rather than mixed.
After each batch ``texts.jsonl.sha256.json`` records the file's size and sha256 (:func:`write_checksum`); reading
checks them, so a damaged cache is refused by name rather than trained on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from .cli_args import check_values, non_negative_int, positive_float, positive_int, seed_value, unit_interval
from .errors import DataFormatError, GLTAError
from .io_utils import output_lock, read_json, write_json
from .prompts import (PREDICTION_ANSWER_PREFIX, PROFILE_ANSWER_PREFIX, prediction_messages, profile_messages,
                      render_generation_prompt)

logger = logging.getLogger(__name__)

CACHE_FORMAT = "glta-texts/1"


class TextCacheError(GLTAError, ValueError):
    """A text cache belongs to another LLM / template / dataset / setting, or is malformed."""


@dataclasses.dataclass
class TextGenerationConfig:
    """Settings of profile / prediction generation; all recorded in the cache sidecar. The owner of these options'
    names, defaults, help and ranges: ``training/generate_texts.py`` and ``glta quickstart`` / ``glta benchmark``
    (``--text-*``) generate their flags from these fields."""

    #: parse-time value types (:mod:`glta_hf.cli_args`); ``__post_init__`` applies them to library callers too
    VALUE_TYPES: ClassVar[Dict[str, Callable[[str], Any]]] = {
        "max_items": positive_int, "max_new_tokens": positive_int, "batch_size": positive_int,
        "temperature": positive_float, "top_p": unit_interval, "seed": seed_value,
        "max_item_chars": positive_int, "repetition_penalty": positive_float,
        "no_repeat_ngram_size": non_negative_int, "min_new_tokens": non_negative_int}

    # 10 items, not 20: the prompt's item list is most of the cost (prefill) and a 135M model summarizes 10 no
    # worse; 48 new tokens hold two sentences (issue 23).
    max_items: int = dataclasses.field(default=10, metadata={
        "help": "cap on training items shown per user (a seeded sample when the user has more)"})
    max_new_tokens: int = dataclasses.field(default=48, metadata={"help": "tokens per profile / prediction"})
    batch_size: int = dataclasses.field(default=32, metadata={"help": "users per generation batch"})
    do_sample: bool = dataclasses.field(default=False, metadata={
        "help": "sample instead of greedy decoding (greedy: the cache is a deterministic function of its settings)"})
    temperature: float = dataclasses.field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = dataclasses.field(default=1.0, metadata={"help": "nucleus sampling mass"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the item sample and of sampling"})
    max_item_chars: int = dataclasses.field(default=200, metadata={
        "help": "characters per item text, so one long description cannot crowd out the others"})
    use_chat_template: bool = True
    with_prediction: bool = True
    prediction_sees_profile: bool = True
    # Repetition control: greedy decoding without it wrote one of two sentences for 70% of ml-100k's users and
    # looped on genre lists ("Horror, Horror, Adventure, Adventure, ..."); see :func:`text_quality`.
    repetition_penalty: float = dataclasses.field(default=1.15, metadata={
        "help": "penalty on tokens already in the prompt or the answer (1 = none)"})
    no_repeat_ngram_size: int = dataclasses.field(default=3, metadata={
        "help": "no n-gram of this size twice in prompt + answer (0 = no limit)"})
    # Greedy decoding's short answers collapse onto one sentence ("The next item this user will want is a superhero
    # movie!" for 52 of 610 users: 82% distinct predictions); made to go on for 24 tokens, every answer differs.
    min_new_tokens: int = dataclasses.field(default=24, metadata={
        "help": "tokens each answer writes at least, up to max_new_tokens (short greedy answers repeat across users)"})

    def __post_init__(self):
        check_values(self, self.VALUE_TYPES)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def settings_key(self) -> Dict[str, Any]:
        """The settings that change the texts (batch size does not: left padding + attention mask)."""
        d = self.to_dict()
        d.pop("batch_size")
        return d


# ----------------------------------------------------------------------------------------------- fingerprints


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def template_hash(tokenizer=None, use_chat_template: bool = True) -> str:
    """Hash of the profile / prediction templates (rendered with sentinel texts) and of the chat template."""
    probe = {
        "profile": profile_messages(["<ITEM_A>", "<ITEM_B>"]),
        "prediction": prediction_messages(["<ITEM_A>", "<ITEM_B>"], profile="<PROFILE>"),
        "prediction_no_profile": prediction_messages(["<ITEM_A>"]),
        "answer_prefixes": [PROFILE_ANSWER_PREFIX, PREDICTION_ANSWER_PREFIX],
    }
    chat = getattr(tokenizer, "chat_template", None) if (tokenizer is not None and use_chat_template) else None
    return _sha({"templates": probe, "chat_template": chat})


def dataset_fingerprint(data, split: str = "train") -> Dict[str, Any]:
    """Dataset name + a hash of the split's (user, item) pairs, the user ids and the item texts."""
    matrix = data.matrix(split)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(matrix.indptr).tobytes())
    h.update(np.ascontiguousarray(matrix.indices).tobytes())
    h.update(json.dumps(list(data.user_ids)).encode("utf-8"))
    h.update(json.dumps(data.item_texts, ensure_ascii=False).encode("utf-8"))
    return {"name": data.name, "split": split, "split_policy": data.split_policy,
            "num_users": int(matrix.num_users), "num_items": int(matrix.num_items), "nnz": int(matrix.nnz),
            "sha256": h.hexdigest()[:16]}


def llm_reference(model, name_or_path: Optional[str] = None, revision: Optional[str] = None,
                  gguf_file: Optional[str] = None) -> Dict[str, Any]:
    """What identifies the LLM: name/path, revision, GGUF file, dtype, plus architecture facts that catch a swap.

    The dtype is recorded because a bfloat16 run generates other texts than a float32 one: a cache is only extended
    in the dtype it was written with; caches written before it was recorded were all float32 (:func:`_check_header`).
    """
    cfg = getattr(model, "config", None)
    dtype = getattr(model, "dtype", None)
    return {
        "name_or_path": name_or_path or getattr(cfg, "_name_or_path", None) or type(model).__name__,
        "revision": revision,
        "gguf_file": gguf_file,
        "model_type": getattr(cfg, "model_type", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
    }


#: The dtype every cache header written before ``llm_reference`` recorded one was generated with.
LEGACY_LLM_DTYPE = "float32"


def _llm_dtype(llm: Any) -> Optional[str]:
    """The dtype a header's ``llm`` records; an old header without one stands for :data:`LEGACY_LLM_DTYPE`."""
    return llm.get("dtype", LEGACY_LLM_DTYPE) if isinstance(llm, Mapping) else None


def _without_dtype(llm: Any) -> Any:
    return {k: v for k, v in llm.items() if k != "dtype"} if isinstance(llm, Mapping) else llm


def build_header(*, tokenizer, data, llm: Mapping[str, Any], config: TextGenerationConfig,
                 split: str = "train") -> Dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "template_hash": template_hash(tokenizer, config.use_chat_template),
        "llm": dict(llm),
        "dataset": dataset_fingerprint(data, split),
        "generation": config.settings_key(),
    }


def _check_header(found: Mapping[str, Any], expected: Mapping[str, Any], path: Path, *, extending: bool) -> None:
    """Refuse a cache written for anything else; the LLM's dtype matters only to ``extending`` it.

    A finished cache is just text, so a bfloat16 run may read texts a float32 run wrote (the committed caches);
    adding bfloat16 texts to a float32 cache would mix two generators in one file, so that is refused.
    """
    for key, what in (("format", "cache format"), ("template_hash", "prompt template"), ("llm", "LLM"),
                      ("dataset", "dataset / split"), ("generation", "generation settings")):
        had, want = found.get(key), expected.get(key)
        if key == "llm":
            had, want = _without_dtype(had), _without_dtype(want)
        if had != want:
            raise TextCacheError(
                f"{path}: this text cache was written with another {what}: found {had!r}, expected {want!r}. "
                "Use another --texts path or delete the cache to regenerate."
            )
    had, want = _llm_dtype(found.get("llm")), _llm_dtype(expected.get("llm"))
    if extending and "dtype" in expected.get("llm", {}) and had != want:
        raise TextCacheError(
            f"{path}: this text cache was generated with the LLM in {had}; extending it in {want} would mix two "
            f"generators in one file. Generate the missing users with dtype {had}, or use another --texts path."
        )


# ----------------------------------------------------------------------------------------------- cache files


def meta_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def checksum_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256.json")


def write_checksum(path) -> None:
    """Record the size and sha256 of ``texts.jsonl`` as it is now (after each appended batch) in its
    :func:`checksum_path` sidecar; :func:`read_cache` checks those bytes, so a flipped byte is not trained on."""
    raw = Path(path).read_bytes()
    write_json(checksum_path(path), {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})


def _verify_checksum(path: Path, raw: bytes) -> None:
    """The first recorded bytes of the cache match their checksum; lines appended after it (a kill between a batch
    and its checksum) are not covered. Caches written before checksums have no sidecar and are read as they are."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return
    try:
        recorded = read_json(sidecar)
        size, digest = int(recorded["bytes"]), str(recorded["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TextCacheError(f"{sidecar}: unreadable checksum file ({err}); delete it to read {path} unchecked") from None
    if len(raw) < size or hashlib.sha256(raw[:size]).hexdigest() != digest:
        raise TextCacheError(f"{path}: does not match its checksum in {sidecar.name} (corrupt or edited); delete the "
                             "cache to regenerate it, or the checksum file to accept it as it is")


def read_cache(path, *, repair: bool = False) -> Dict[int, Dict[str, Any]]:
    """Read ``texts.jsonl`` -> ``{user_idx: record}``.

    A last line without its newline (a write cut by a kill) is dropped; with ``repair`` the file is also
    truncated to the last complete line so appends continue cleanly. Any other malformed line raises
    :class:`~glta_hf.errors.DataFormatError` naming the line; a user listed twice raises too.
    """
    path = Path(path)
    records: Dict[int, Dict[str, Any]] = {}
    if not path.exists():
        return records
    with open(path, "rb") as handle:
        raw = handle.read()
    _verify_checksum(path, raw)
    good_end = raw.rfind(b"\n") + 1  # bytes up to and including the last newline
    if good_end < len(raw):
        logger.warning("%s: dropping a truncated last line (%d bytes)", path, len(raw) - good_end)
        if repair:
            with open(path, "r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())
    for lineno, line in enumerate(raw[:good_end].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            user = int(rec["user_idx"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise DataFormatError(f"malformed text-cache line ({err})", path, lineno) from None
        if user in records:
            raise DataFormatError(f"user_idx {user} appears twice", path, lineno)
        records[user] = rec
    return records


def load_texts(path, *, expected_header: Optional[Mapping[str, Any]] = None,
               num_users: Optional[int] = None) -> Dict[int, Dict[str, Any]]:
    """Load a finished cache for training: checks the sidecar (when ``expected_header`` is given) and coverage."""
    path = Path(path)
    if not path.is_file():
        raise TextCacheError(f"{path}: no text cache; run training/generate_texts.py first")
    if expected_header is not None:
        if not meta_path(path).is_file():
            raise TextCacheError(f"{meta_path(path)}: missing cache header")
        _check_header(read_json(meta_path(path)), expected_header, path, extending=False)
    records = read_cache(path)
    if num_users is not None:
        out_of_range = [u for u in records if not 0 <= u < num_users]
        if out_of_range:
            raise TextCacheError(f"{path}: user_idx {out_of_range[0]} is outside the dataset's {num_users} users")
    return records


def shard_path(path, shard: int, num_shards: int) -> Path:
    """The cache file of one of ``num_shards`` generator processes (``texts.jsonl`` -> ``texts.shard1of2.jsonl``).

    One process per core: a 135M model's prefill is matrix work that one thread keeps busy, so two processes on two
    cores generate ~2x the users of one, where two threads in one process gain less (issue 24). Each shard is a
    cache of its own (header, resumable); :func:`merge_shards` joins them."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard{int(shard)}of{int(num_shards)}{path.suffix}")


def shard_users(users: Iterable[int], shard: int, num_shards: int) -> List[int]:
    """Every ``num_shards``-th user, from ``shard``: the users of one generator process."""
    return [int(u) for u in users if int(u) % int(num_shards) == int(shard)]


def merge_shards(path, num_shards: int, item_texts: Sequence[str]) -> Dict[str, Any]:
    """Join the shard caches of ``path`` (and what ``path`` already holds) into ``path``; returns its quality.

    The shards' headers must equal ``path``'s (or each other's when ``path`` is new): one generator, one file. A
    user found twice keeps its first record (``path``, then shard 0, 1, ...). ``path`` is rewritten atomically."""
    path = Path(path)
    sources = [path] + [shard_path(path, k, num_shards) for k in range(int(num_shards))]
    headers = [(p, read_json(meta_path(p))) for p in sources if meta_path(p).is_file()]
    if not headers:
        raise TextCacheError(f"{path}: no cache or shard header to merge")
    header = headers[0][1]
    for other_path, other in headers[1:]:
        _check_header(other, header, other_path, extending=True)
    merged: Dict[int, Dict[str, Any]] = {}
    for source in sources:
        for user, record in read_cache(source).items():
            merged.setdefault(user, record)
    tmp = path.with_name(path.name + ".merging")
    with open(tmp, "w", encoding="utf-8") as handle:
        for user in sorted(merged):
            handle.write(json.dumps(merged[user], ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    write_json(meta_path(path), {k: v for k, v in header.items() if k != "quality"})
    os.replace(tmp, path)
    write_checksum(path)
    return record_quality(path, item_texts)


# ----------------------------------------------------------------------------------------------- prompts


def sample_user_items(items: np.ndarray, cap: int, seed: int, user: int) -> List[int]:
    """At most ``cap`` of ``items``, a sample seeded by (seed, user) so it never depends on batch order."""
    items = np.asarray(items, dtype=np.int64)
    if cap <= 0 or len(items) <= cap:
        return [int(i) for i in items]
    rng = np.random.default_rng([int(seed), int(user)])
    return sorted(int(i) for i in rng.choice(items, size=cap, replace=False))


def _item_texts(texts: Sequence[str], items: Sequence[int], max_chars: int) -> List[str]:
    out = []
    for i in items:
        t = str(texts[int(i)])
        out.append(t if len(t) <= max_chars else t[: max_chars - 3].rstrip() + "...")
    return out


# ----------------------------------------------------------------------------------------------- quality

#: A profile "echoes" its prompt when at least this share of its word 4-grams stand in the item texts it was shown.
ECHO_NGRAM = 4
ECHO_SHARE = 0.3


def _words(text: str) -> List[str]:
    return "".join(c.lower() if c.isalnum() else " " for c in str(text)).split()


def _word_ngrams(text: str, n: int = ECHO_NGRAM) -> List[tuple]:
    """The word n-grams of ``text`` in order (lower-cased, punctuation dropped), repeats kept."""
    words = _words(text)
    return [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]


def echoes_items(text: str, item_texts: Sequence[str]) -> bool:
    """Whether ``text`` mostly copies its prompt (the item list and the request around it, as rendered by
    :func:`~glta_hf.prompts.profile_messages`) instead of describing the items."""
    grams = _word_ngrams(text)
    if not grams:
        return False
    prompt = " ".join(m["content"] for m in profile_messages(list(item_texts)) if m["role"] == "user")
    shown = set(_word_ngrams(prompt))
    return sum(g in shown for g in grams) / len(grams) >= ECHO_SHARE


def loops(text: str) -> bool:
    """Whether ``text`` repeats itself: fewer than half of its word 4-grams are distinct."""
    grams = _word_ngrams(text)
    return bool(grams) and len(set(grams)) / len(grams) < 0.5


def text_quality(records: Mapping[int, Mapping[str, Any]], item_texts: Sequence[str]) -> Dict[str, Any]:
    """What a cache's texts actually say, in numbers (issue 23: texts that repeat one sentence carry no signal).

    ``distinct_predictions`` / ``distinct_profiles``: share of users whose (whitespace- and case-normalised) text no
    other user has; ``echo_profiles``: share of profiles that copy the prompt's item list (:func:`echoes_items`,
    against the records' ``items_shown``); ``looping_profiles`` / ``looping_predictions``: share that repeat
    themselves (:func:`loops`); mean lengths in words.
    """
    recs = list(records.values())
    out: Dict[str, Any] = {"users": len(recs)}
    for key in ("profile", "prediction"):
        texts = [" ".join(_words(r.get(key) or "")) for r in recs if r.get(key)]
        counts: Dict[str, int] = {}
        for t in texts:
            counts[t] = counts.get(t, 0) + 1
        out[f"distinct_{key}s"] = round(sum(c == 1 for c in counts.values()) / len(texts), 4) if texts else None
        out[f"mean_{key}_words"] = round(float(np.mean([len(t.split()) for t in texts])), 1) if texts else None
        out[f"looping_{key}s"] = round(sum(map(loops, texts)) / len(texts), 4) if texts else None
    with_items = [r for r in recs if r.get("profile") and r.get("items_shown") is not None]
    out["echo_profiles"] = (round(sum(echoes_items(r["profile"], _item_texts(item_texts, r["items_shown"], 10**6))
                                      for r in with_items) / len(with_items), 4) if with_items else None)
    return out


def record_quality(path, item_texts: Sequence[str]) -> Dict[str, Any]:
    """Compute :func:`text_quality` of the cache at ``path`` and store it under ``quality`` in its sidecar."""
    quality = text_quality(read_cache(path), item_texts)
    mpath = meta_path(path)
    meta = read_json(mpath) if mpath.is_file() else {}
    meta["quality"] = quality
    write_json(mpath, meta)
    return quality


# ----------------------------------------------------------------------------------------------- generation


def _set_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _add_special_tokens(tokenizer, config: TextGenerationConfig) -> bool:
    """A chat-template prompt already holds its special tokens; a plain one gets the tokenizer's (BOS)."""
    return not (config.use_chat_template and getattr(tokenizer, "chat_template", None))


def _encode(tokenizer, prompts: Sequence[str], config: TextGenerationConfig) -> List[List[int]]:
    """Each prompt's token ids, exactly as a padded batch of them holds them (padding aside)."""
    return tokenizer(list(prompts), add_special_tokens=_add_special_tokens(tokenizer, config))["input_ids"]


def _generate_kwargs(tokenizer, config: TextGenerationConfig, seed: int) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = dict(max_new_tokens=config.max_new_tokens, use_cache=True,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  repetition_penalty=config.repetition_penalty,
                                  no_repeat_ngram_size=config.no_repeat_ngram_size,
                                  min_new_tokens=min(config.min_new_tokens, config.max_new_tokens))
    if config.do_sample:
        _set_seed(seed)
        kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def _decode_answers(tokenizer, new, answer_prefix: str):
    """(texts, new tokens) of the generated columns ``new``: each row cut after its first eos."""
    texts, n_tokens = [], 0
    for row in new:
        ids = row.tolist()
        if tokenizer.eos_token_id in ids:  # cut at the first eos (the rest is padding)
            ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
        n_tokens += len(ids)
        written = tokenizer.decode(ids, skip_special_tokens=True)
        texts.append((answer_prefix + written).strip())
    return texts, n_tokens


def _left_padded(rows: Sequence[Sequence[int]], pad_id: int):
    """(ids, attention mask) of token-id ``rows`` left-padded to the longest row (what a left-padding tokenizer
    makes), on the CPU."""
    import torch

    from .prefix_cache import left_pad

    return left_pad([torch.tensor(list(r), dtype=torch.long) for r in rows], int(pad_id), "cpu")


def generate_batch(model, tokenizer, prompts: Sequence[str], config: TextGenerationConfig, *, seed: int = 0,
                   answer_prefix: str = ""):
    """Generate one batch (left padding, KV cache). Returns (texts, new non-pad tokens, prompt non-pad tokens).

    ``prompts`` end with ``answer_prefix`` (the prefilled start of the answer); each text is that prefix followed
    by what the LLM wrote, so the cached text reads as one answer."""
    return _generate_rows(model, tokenizer, _encode(tokenizer, prompts, config), config, seed=seed,
                          answer_prefix=answer_prefix)


def _generate_rows(model, tokenizer, rows: Sequence[Sequence[int]], config: TextGenerationConfig, *, seed: int,
                   answer_prefix: str):
    """:func:`generate_batch` from token ids: every prompt prefilled in full."""
    import torch

    ids, mask = _left_padded(rows, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             **_generate_kwargs(tokenizer, config, seed))
    texts, n_tokens = _decode_answers(tokenizer, out[:, ids.shape[1]:], answer_prefix)
    return texts, n_tokens, int(mask.sum())


# ----------------------------------------------------------------------------------------------- shared start
#
# A user's profile prompt and prediction prompt start alike (chat template, system prompt, the item list: most of
# their tokens). Greedy generation computes that start once per batch and continues both prompts from a copy of its
# key/value states, so the texts are those of full prefills (up to float rounding) for about half the prefill work.

#: Off: every prompt is prefilled in full (the path the texts were first written with; the tests compare the two).
_SHARE_PROMPT_START = True


def _shared_start_lengths(firsts: Sequence[Sequence[int]], seconds: Sequence[Sequence[int]]) -> List[int]:
    """Per row, the longest common token prefix of the two prompts, at most each prompt's length - 1 (the last
    token of a prompt is fed to ``generate``: its logits give the first new token)."""
    from .prefix_cache import common_prefix_length

    return [max(min(common_prefix_length([a, b]), min(len(a), len(b)) - 1), 0) for a, b in zip(firsts, seconds)]


class _SharedStart:
    """The key/value states of each row's shared start, left-padded to one width ``S`` (one prefill)."""

    def __init__(self, model, starts: Sequence[Sequence[int]], pad_id: int):
        import torch

        from .decoding import llm_cache
        from .prefix_cache import cache_kwarg, positions_from_mask

        self.starts = [list(s) for s in starts]
        self.ids, self.mask = _left_padded(self.starts, pad_id)
        device = next(model.parameters()).device
        decoder = model.get_decoder()  # no LM head: only the states are wanted
        with torch.inference_mode():  # positions as generate gives them (the mask's running count)
            out = decoder(input_ids=self.ids.to(device), attention_mask=self.mask.to(device),
                          position_ids=positions_from_mask(self.mask).to(device), use_cache=True,
                          **{cache_kwarg(decoder): None})
        self.cache = llm_cache(out)
        self.cache_arg = cache_kwarg(model)  # generate's name for it (cache / past_key_values by version)


def _continue_rows(model, tokenizer, start: _SharedStart, rows: Sequence[Sequence[int]],
                   config: TextGenerationConfig, *, answer_prefix: str, last_use: bool):
    """Greedy :func:`_generate_rows` of ``rows`` (each begins with its row of ``start``) from ``start``'s states.

    ``generate`` sees ``[left pad][shared start][middle pad][rest of the prompt]`` and prefills only the rest: its
    position ids come from the attention mask's running count, so every real token keeps the position it has in its
    unpadded prompt. The repetition penalty and the n-gram ban read the prompt's tokens, so they are applied to each
    row as the full-prefill path lays it out (:class:`_AsFullPrompt`), where no middle padding splits an n-gram.
    ``last_use``: continue in ``start``'s cache itself (``generate`` extends it) instead of a copy."""
    import copy

    import torch
    from transformers import LogitsProcessorList

    if config.do_sample:
        raise ValueError("the shared-start path is greedy only (sampling's warpers must follow the penalties)")
    rests = []
    for i, (row, head) in enumerate(zip(rows, start.starts)):
        if list(row[: len(head)]) != head or len(row) <= len(head):
            raise ValueError(f"row {i} does not continue its shared start")
        rests.append(row[len(head):])
    rest_ids, rest_mask = _left_padded(rests, tokenizer.pad_token_id)
    ids = torch.cat([start.ids, rest_ids], dim=1)
    mask = torch.cat([start.mask, rest_mask], dim=1)
    kwargs = _generate_kwargs(tokenizer, config, seed=0)
    kwargs.update(repetition_penalty=1.0, no_repeat_ngram_size=0, logits_processor=LogitsProcessorList(
        [_AsFullPrompt(rows, tokenizer.pad_token_id, ids.shape[1], config)]))
    device = next(model.parameters()).device
    cache = start.cache if last_use else copy.deepcopy(start.cache)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             **{start.cache_arg: cache}, **kwargs)
    texts, n_tokens = _decode_answers(tokenizer, out[:, ids.shape[1]:], answer_prefix)
    return texts, n_tokens, sum(len(r) for r in rows)


class _AsFullPrompt:
    """The repetition penalty and the n-gram ban of ``generate``, applied to each row's prompt laid out as the
    full-prefill path's left-padded batch (``prompt_ids``) followed by the tokens generated so far. Greedy only:
    these two and ``generate``'s own processors (min new tokens) commute, so where they stand in the list does not
    matter (sampling's warpers, which must follow them, would)."""

    def __init__(self, rows: Sequence[Sequence[int]], pad_id: int, seen_width: int, config: TextGenerationConfig):
        from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

        self.prompt_ids, mask = _left_padded(rows, pad_id)
        self.seen_width = int(seen_width)
        self.penalty: Optional[float] = None
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            self.penalty = float(config.repetition_penalty)
            # generate's rule: the left padding is not penalized
            self.pad_lengths = (mask != 0).int().argmax(dim=1)
        self.inner: List[Any] = []
        if config.no_repeat_ngram_size:
            self.inner.append(NoRepeatNGramLogitsProcessor(int(config.no_repeat_ngram_size)))

    def __call__(self, input_ids, scores):
        import torch

        ids = torch.cat([self.prompt_ids.to(input_ids.device), input_ids[:, self.seen_width:]], dim=1)
        if self.penalty is not None:
            scores = _penalize_repeats(ids, scores, self.penalty, self.pad_lengths.to(ids.device))
        for processor in self.inner:
            scores = processor(ids, scores)
        return scores


def _penalize_repeats(ids, scores, penalty: float, ignore_lengths):
    """``RepetitionPenaltyLogitsProcessor`` with a per-row count of leading tokens ignored, written out here because
    older transformers 5.x (5.17, the GPU machine's) takes only one int for all rows as ``prompt_ignore_length``:
    ignored positions point at an extra column that is dropped afterwards."""
    import torch

    vocab = scores.shape[-1]
    positions = torch.arange(ids.shape[1], device=ids.device)
    ids = ids.clamp(max=vocab).masked_fill(positions[None, :] < ignore_lengths[:, None], vocab)
    padded = torch.nn.functional.pad(scores, (0, 1))
    seen = torch.gather(padded, 1, ids)
    padded = padded.scatter(1, ids, torch.where(seen < 0, seen * penalty, seen / penalty))
    return padded[:, :vocab]


def _batch_texts(model, tokenizer, profile_prompts: Sequence[str], item_lists: Sequence[Sequence[str]],
                 config: TextGenerationConfig, *, seed: int):
    """One batch's (profiles, predictions, new tokens of each, prompt tokens of each); predictions None without
    ``with_prediction``.

    Greedy with predictions: the start each user's two prompts share is prefilled once (:class:`_SharedStart`) and
    both generations continue from it. The prediction prompt holds the profile, unknown before the profiles are
    written, so the shared start is found with a stand-in profile (the answer prefix every profile starts with) and
    checked against the real prompts; a batch where one does not continue it prefills its predictions in full."""
    def prediction_prompts(profiles):
        return [render_generation_prompt(
            tokenizer, prediction_messages(items, profile=p if config.prediction_sees_profile else None),
            config.use_chat_template, answer_prefix=PREDICTION_ANSWER_PREFIX) for items, p in zip(item_lists, profiles)]

    n = len(profile_prompts)
    if not config.with_prediction:
        profiles, n1, p1 = generate_batch(model, tokenizer, profile_prompts, config, seed=seed,
                                          answer_prefix=PROFILE_ANSWER_PREFIX)
        return profiles, [None] * n, n1, 0, p1, 0
    profile_rows = _encode(tokenizer, profile_prompts, config)
    lengths = _shared_start_lengths(profile_rows, _encode(tokenizer, prediction_prompts([PROFILE_ANSWER_PREFIX] * n),
                                                          config))
    if not _SHARE_PROMPT_START or config.do_sample or min(lengths) == 0:
        profiles, n1, p1 = _generate_rows(model, tokenizer, profile_rows, config, seed=seed,
                                          answer_prefix=PROFILE_ANSWER_PREFIX)
        predictions, n2, p2 = generate_batch(model, tokenizer, prediction_prompts(profiles), config, seed=seed + 1,
                                             answer_prefix=PREDICTION_ANSWER_PREFIX)
        return profiles, predictions, n1, n2, p1, p2
    start = _SharedStart(model, [row[:k] for row, k in zip(profile_rows, lengths)], tokenizer.pad_token_id)
    profiles, n1, p1 = _continue_rows(model, tokenizer, start, profile_rows, config,
                                      answer_prefix=PROFILE_ANSWER_PREFIX, last_use=False)
    prediction_rows = _encode(tokenizer, prediction_prompts(profiles), config)
    if all(len(row) > len(head) and row[: len(head)] == head for row, head in zip(prediction_rows, start.starts)):
        predictions, n2, p2 = _continue_rows(model, tokenizer, start, prediction_rows, config,
                                             answer_prefix=PREDICTION_ANSWER_PREFIX, last_use=True)
    else:
        logger.info("a prediction prompt does not continue its shared start: prefilling this batch's in full")
        predictions, n2, p2 = _generate_rows(model, tokenizer, prediction_rows, config, seed=seed + 1,
                                             answer_prefix=PREDICTION_ANSWER_PREFIX)
    return profiles, predictions, n1, n2, p1, p2


def _length_sorted_batches(users: Sequence[int], lengths: Mapping[int, int], batch_size: int) -> List[List[int]]:
    """Longest prompts first (a memory problem shows up in the first batch), ties by user index."""
    order = sorted(users, key=lambda u: (-lengths[u], u))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def generate_user_texts(
    model,
    tokenizer,
    data,
    path,
    *,
    config: Optional[TextGenerationConfig] = None,
    llm: Optional[Mapping[str, Any]] = None,
    split: str = "train",
    users: Optional[Iterable[int]] = None,
    progress: bool = True,
    stop_after_batches: Optional[int] = None,
    skip_users_in: Sequence[Any] = (),
) -> Dict[str, Any]:
    """Generate (or resume generating) the profile / prediction cache at ``path`` for ``users`` (default: all).

    Only items of ``data.matrix(split)`` -- the training interactions -- are shown to the LLM. Returns a
    summary (users written now, users already cached, new tokens, seconds, tokens/s).
    ``stop_after_batches`` exists for tests and benchmarks that time a fixed amount of work. ``skip_users_in``:
    other caches (sibling shards, :func:`shard_path`) whose users are not generated again here.
    """
    config = config or TextGenerationConfig()
    path = Path(path)
    with output_lock(path.parent, name=f".{path.name}.lock"):  # one writer per cache (shards have their own)
        return _generate_user_texts(model, tokenizer, data, path, config=config, llm=llm, split=split, users=users,
                                    progress=progress, stop_after_batches=stop_after_batches,
                                    skip_users_in=skip_users_in)


def _generate_user_texts(model, tokenizer, data, path: Path, *, config: TextGenerationConfig, llm, split, users,
                         progress, stop_after_batches, skip_users_in) -> Dict[str, Any]:
    header = build_header(tokenizer=tokenizer, data=data, llm=llm or llm_reference(model), config=config, split=split)
    mpath = meta_path(path)
    found = read_json(mpath) if mpath.is_file() else None
    if found is not None:
        _check_header(found, header, path, extending=False)
    elif path.exists() and path.stat().st_size > 0:
        raise TextCacheError(f"{path}: cache lines without a header ({mpath.name}); refusing to extend it")
    else:
        write_json(mpath, header)
    done = read_cache(path, repair=True)
    train = data.matrix(split)
    wanted = [int(u) for u in (users if users is not None else range(data.num_users))]
    for sibling in skip_users_in:  # another generator's users must not count as done here
        if meta_path(sibling).is_file():
            _check_header(read_json(meta_path(sibling)), header, Path(sibling), extending=True)
    done_elsewhere = set().union(*(read_cache(p) for p in skip_users_in)) if skip_users_in else set()
    todo = [u for u in wanted if u not in done and u not in done_elsewhere]
    summary = {"users_cached_before": len([u for u in wanted if u in done]), "users_written": 0,
               "new_tokens": 0, "prompt_tokens": 0, "seconds": 0.0, "tokens_per_s": 0.0}
    if not todo:  # a complete cache: its quality was recorded when its last batch (or merge) was written
        summary["quality"] = (found or {}).get("quality") or record_quality(path, data.item_texts)
        return summary
    if found is not None:
        _check_header(found, header, path, extending=True)

    catalogue = data.item_texts  # one list, not one Arrow read per user
    shown = {u: sample_user_items(train.items_of(u), config.max_items, config.seed, u) for u in todo}
    profile_prompts = {
        u: render_generation_prompt(
            tokenizer, profile_messages(_item_texts(catalogue, shown[u], config.max_item_chars)),
            config.use_chat_template, answer_prefix=PROFILE_ANSWER_PREFIX)
        for u in todo
    }
    lengths = {u: len(tokenizer(profile_prompts[u], add_special_tokens=False)["input_ids"]) for u in todo}
    batches = _length_sorted_batches(todo, lengths, max(1, int(config.batch_size)))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="profile/prediction texts", unit="user")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with open(path, "a", encoding="utf-8") as handle:
            for b, batch in enumerate(batches):
                if stop_after_batches is not None and b >= stop_after_batches:
                    break
                batch_seed = config.seed * 1_000_003 + batch[0]
                profiles, predictions, n1, n2, p1, p2 = _batch_texts(
                    model, tokenizer, [profile_prompts[u] for u in batch],
                    [_item_texts(catalogue, shown[u], config.max_item_chars) for u in batch], config, seed=batch_seed)
                lines = "".join(
                    json.dumps({"user_idx": u, "user_id": str(data.user_ids[u]), "profile": p, "prediction": q,
                                "items_shown": shown[u]}, ensure_ascii=False) + "\n"
                    for u, p, q in zip(batch, profiles, predictions)
                )
                handle.write(lines)
                handle.flush()
                os.fsync(handle.fileno())
                write_checksum(path)
                summary["users_written"] += len(batch)
                summary["new_tokens"] += n1 + n2
                summary["prompt_tokens"] += p1 + p2
                elapsed = time.perf_counter() - start
                if bar is not None:
                    bar.update(len(batch))
                    bar.set_postfix(tok_s=f"{summary['new_tokens'] / max(elapsed, 1e-9):.1f}")
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    summary["seconds"] = time.perf_counter() - start
    summary["tokens_per_s"] = summary["new_tokens"] / max(summary["seconds"], 1e-9)
    summary["quality"] = record_quality(path, catalogue)
    return summary


# ----------------------------------------------------------------------------------------------- LLM loading


def load_generator(name_or_path, *, revision: Optional[str] = None, gguf_file: Optional[str] = None,
                   quantization: str = "none", dtype=None, local_files_only: bool = False, device=None):
    """``(causal_lm, tokenizer, llm_reference)`` for text generation: :func:`glta_hf.backbone.load_backbone` with the
    LM head (the one LLM loader; GLTA's backbone drops the head).

    ``device``: None leaves the model where it loaded (CPU, or a quantized model's device map); ``"auto"`` moves it
    to cuda when available, else keeps CPU; ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` as given. A quantized model is
    placed by its device map at load time instead (``.to`` is refused on it).
    """
    from .backbone import load_backbone, portable_llm_reference, resolve_device

    recorded, recorded_gguf = portable_llm_reference(name_or_path, gguf_file)
    target = resolve_device(device) if device is not None else None  # a bad device fails before the load
    model, tokenizer = load_backbone(recorded, revision=revision, gguf_file=recorded_gguf, quantization=quantization,
                                     dtype=dtype, local_files_only=local_files_only, lm_head=True,
                                     device_map=target if quantization != "none" else None)
    if target is not None and quantization == "none":
        model.to(target)
    return model, tokenizer, llm_reference(model, recorded, revision, recorded_gguf)
