"""Stage datasets (item-text, user-item, evaluation) and :class:`GLTACollator`.

Every sample is a :class:`glta_hf.prompts.EncodedPrompt` built by ``glta_hf.prompts`` (the only place prompts
are written), so training, evaluation and ``recommend()`` see the same text.

* :class:`ItemTextDataset` (stage 3, paper 3.1): each epoch the catalogue is shuffled (seeded by ``(seed, epoch)``)
  and cut into groups of m items; a sample lists the m descriptions in one order and the m ``<item>`` tokens in
  another; the targets are the items in description order (slot t = the t-th described item).
* :class:`UserItemDataset` (stage 4, paper 3.2), training mode: the ``<user>`` token, up to H of the user's
  TRAINING items as ``<item>`` tokens, the profile and prediction texts, the L slots. Targets, re-drawn every epoch
  (seeded by ``(seed, epoch, user)``), in random order: ``target_policy="all"`` (the default, paper-literal, chosen
  on validation: BENCHMARKS.md, sixth session): the history is the evaluation history and the targets are k items
  drawn from all the user's training items (they may be shown too); ``target_policy="disjoint"`` (denoising,
  ``docs/DESIGN_CHOICES.md`` "Targets"): k items sampled without replacement from the user's training items *not
  shown* in the prompt -- when a user has few items the split between shown history and targets is
  ``h = min(H, max(n - L, n // 2))`` shown and up to L of the other ``n - h`` as targets (a single-item user: no
  history, that item is the target); ``target_policy="held_out"`` (stacking): up to k targets from the user's
  items in ``held_out`` -- the fold the graph was fit without (:func:`glta_hf.graph.held_out_fold`) -- and the
  history from the items it saw, so a graph residual learns on edges whose graph scores are not inflated by
  training (users without held-out items do not train).
  ``samples_per_user=r`` gives every user r samples per epoch, each its own draw (seeded by ``(seed, epoch, user,
  draw)``; draw 0 is the single sample of ``r=1``): r target sets per pass over the users, and the user's cached
  text prefix is reused by all r.
* Evaluation mode (no targets): the history is the most recent H training items when the split has timestamps
  (``eval_history="recent"``), otherwise a seeded sample of H (``"sample"``); ``"auto"`` picks between them.

* :class:`EpochSampler` (the trainer's sampler): the epoch order as a function of ``(seed, epoch)``; with
  ``group_by_length`` it is :func:`length_grouped_indices` of the epoch's prompt lengths (each stage dataset
  encodes an epoch once for its ``sample_lengths()`` and serves those encodings).

Prompts that cannot fit ``max_length`` even without free text raise ``ValueError`` naming the user or the items:
placeholders are never dropped silently (free text is what gets shortened, see ``encode_prompt``).
"""
from __future__ import annotations

import logging
import math
import random
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from pathlib import Path

import numpy as np
import torch

from .data.loaders import load_dataset
from .data.stats import VAL_FRACTION
from .errors import DataFormatError, DatasetOptionError
from .prompts import (EncodedPrompt, PromptConfig, collate_prompts, encode_prompt, history_titles_from,
                      item_text_prompt, user_item_prompt)
from .vocabulary import TARGET_POLICIES

logger = logging.getLogger(__name__)

EVAL_HISTORIES = ("auto", "recent", "sample")


def prepare_data(name: str, data_dir=None, *, split: Optional[str] = None, test_fraction: Optional[float] = None,
                 split_seed: Optional[int] = None, val_fraction: float = VAL_FRACTION, val_seed: int = 0, **options):
    """``(data, full)``: the dataset with a validation split carved from train (``data``) and without (``full``).

    Graph pretraining, text generation and alignment all fit on ``data.matrix("train")``; the test evaluation
    masks every training interaction of ``full`` (fit + validation), as training/pretrain_graph.py does.
    ``options``: further loader options (``min_user_interactions``, ...).
    """
    given = (("split", split), ("test_fraction", test_fraction), ("seed", split_seed))
    opts = {k: v for k, v in given if v is not None}
    opts.update(options)
    full = load_dataset(name, data_dir, **opts)
    data = full.with_validation(fraction=val_fraction, seed=val_seed) if val_fraction else full
    return data, full


def data_record(full, *, dataset: str, data_dir=None, val_fraction: float = 0.1, val_seed: int = 0) -> Dict[str, Any]:
    """The run-record keys that rebuild the same ``(data, full)`` with :func:`data_from_record`: the dataset, its
    resolved split options (policy, test fraction, seed, filters -- ``full.split_options``) and the validation carve;
    ``split_policy`` is the human-readable label. Every writer of ``glta_run.json`` records these."""
    options = dict(full.split_options or {})
    return {"dataset": dataset, "data_dir": None if data_dir is None else str(data_dir),
            "split": options.get("split"), "test_fraction": options.get("test_fraction"),
            "split_seed": options.get("seed"), "split_options": options, "split_policy": full.split_policy,
            "val_fraction": val_fraction, "val_seed": val_seed}


_LEGACY_RANDOM_LABEL = re.compile(r"random (?P<train>[\d.]+)/(?P<test>[\d.]+) per user, seed (?P<seed>\d+)")


#: how many folders up from a checkpoint a data folder recorded by a relative path or a name is looked for
_DATA_LOOKUP_LEVELS = 5


def data_from_record(run: Mapping[str, Any], *, dataset: Optional[str] = None, data_dir=None,
                     split: Optional[str] = None, record_folder=None):
    """``(data, full)`` as the run recorded in ``run`` (a ``glta_run.json``) prepared them; arguments override.

    Reads :func:`data_record`'s keys; records written before it (align.py's flat ``split`` / ``test_fraction`` /
    ``split_seed``, the quickstart's split label such as ``"random 80/20 per user, seed 0"``) are read too.
    ``record_folder``: the checkpoint folder the record was read from. Saved records keep no absolute path (one
    inside the working folder is recorded relative to it, any other by its name): a recorded ``data_dir`` is looked
    up from the working folder, then beside ``record_folder`` and its parents (:data:`_DATA_LOOKUP_LEVELS`: a run's
    ``<root>/<stage>/final`` next to its data); otherwise pass ``data_dir``. A folder of another dataset found by
    name fails the callers' catalogue check.
    """
    if data_dir is None and isinstance(run.get("data_dir"), str) and record_folder is not None:
        recorded = Path(run["data_dir"])
        if not recorded.is_absolute() and not recorded.is_dir():
            found = [p / recorded for p in Path(record_folder).resolve().parents[:_DATA_LOOKUP_LEVELS]
                     if (p / recorded).is_dir()]
            if found:
                data_dir = found[0]
                logger.info("data_dir %r of the run record: using %s", run["data_dir"], data_dir)
    if data_dir is None and isinstance(run.get("data_dir"), str) and not Path(run["data_dir"]).is_dir():
        raise DataFormatError(f"the run record's data_dir {run['data_dir']!r} is not a folder here (saved records keep "
                              "no absolute path); pass the dataset folder explicitly (--data-dir)")
    dataset = dataset or run.get("dataset")
    if not dataset:
        raise DatasetOptionError("the run record names no dataset; pass the dataset explicitly")
    options = dict(run.get("split_options") or {})
    if not options:
        recorded = run.get("split")
        legacy = _LEGACY_RANDOM_LABEL.fullmatch(str(recorded)) if isinstance(recorded, str) else None
        if legacy:  # the quickstart stored its split's label before split_options existed
            options = {"split": "random", "test_fraction": float(legacy["test"]) / 100, "seed": int(legacy["seed"])}
        else:
            options = {"split": recorded, "test_fraction": run.get("test_fraction"), "seed": run.get("split_seed")}
    if split is not None:
        options["split"] = split
    options = {k: v for k, v in options.items() if v is not None}
    val_fraction = run.get("val_fraction", 0.1)
    return prepare_data(dataset, data_dir if data_dir is not None else run.get("data_dir"),
                        split=options.pop("split", None), test_fraction=options.pop("test_fraction", None),
                        split_seed=options.pop("seed", None), val_fraction=val_fraction,
                        val_seed=run.get("val_seed", 0), **options)


def training_splits(data) -> Tuple[str, ...]:
    """The splits a model is trained on: the fit split, plus the validation carved from train when there is one."""
    return ("train", "validation") if "validation" in data.splits else ("train",)


def user_histories(data, split: Union[str, Sequence[str]] = "train") -> Tuple[List[np.ndarray], bool]:
    """Per user, the split's items oldest first (by timestamp when the split has one, else by item index).

    ``split``: a split name, or several (their interactions merged: ``training_splits(data)`` is each user's
    complete training history, fit + validation). Returns ``(histories, has_time)``.
    """
    names = (split,) if isinstance(split, str) else tuple(split)
    has_time = all("timestamp" in data.splits[name].column_names for name in names)
    columns = ("user_idx", "item_idx", *(("timestamp",) if has_time else ()))
    parts = [data.columns(name, *columns) for name in names]
    table = {c: np.concatenate([np.asarray(part[c], dtype=np.int64) for part in parts]) for c in columns}
    users, items = table["user_idx"], table["item_idx"]
    if has_time:
        order = np.lexsort((items, table["timestamp"], users))
    else:
        order = np.lexsort((items, users))
    users, items = users[order], items[order]
    bounds = np.searchsorted(users, np.arange(data.num_users + 1))
    return [items[bounds[u]: bounds[u + 1]] for u in range(data.num_users)], has_time


def serving_history(items: Sequence[int], max_history: int, recent: bool, seed: int, user: int) -> List[int]:
    """All of ``items`` (oldest first), reordered so the last ``max_history`` are the ones a prompt shows.

    ``user_item_prompt`` shows the *last* H items of a history and the model excludes *all* stored history items
    from its recommendations, so the stored history must be complete with the shown items at its end: the most
    recent H (``recent``) or a sample of H seeded by ``(seed, user)`` kept in time order.
    """
    items = [int(i) for i in items]
    if recent or max_history <= 0 or len(items) <= max_history:
        return items
    rng = np.random.default_rng([int(seed), int(user)])
    chosen = set(np.sort(rng.choice(len(items), size=max_history, replace=False)).tolist())
    return [items[i] for i in range(len(items)) if i not in chosen] + [items[i] for i in sorted(chosen)]


def serving_histories(histories: Sequence[Sequence[int]], max_history: int, recent: bool, seed: int = 0):
    """:func:`serving_history` for every user (what ``model.attach_user_context(histories=...)`` takes)."""
    return [serving_history(h, max_history, recent, seed, u) for u, h in enumerate(histories)]


def _wrap(err: ValueError, what: str) -> ValueError:
    return ValueError(f"{what}: {err}")


class _EpochDataset(torch.utils.data.Dataset):
    """A dataset whose samples are re-drawn per epoch; :class:`EpochSampler` / the trainer call ``set_epoch``.

    Subclasses encode sample ``index`` of the current epoch in ``_encode``. :meth:`sample_lengths` (what the
    length-grouped sampler sorts by) encodes the whole epoch once and keeps the encodings, which ``__getitem__``
    then hands out (each one once), so length grouping tokenizes every prompt once per epoch, not twice. The kept
    encodings are dropped when the epoch changes.
    """

    epoch: int = 0
    _cache_epoch: Optional[int] = None
    _cache: Dict[int, EncodedPrompt]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self._cache_epoch != self.epoch:
            self._cache_epoch, self._cache = None, {}

    def _encode(self, index: int) -> EncodedPrompt:
        raise NotImplementedError

    def __getitem__(self, index: int) -> EncodedPrompt:
        if self._cache_epoch == self.epoch:
            cached = self._cache.pop(int(index), None)
            if cached is not None:
                return cached
        return self._encode(int(index))

    def sample_lengths(self) -> np.ndarray:
        """Token count of every sample of the current epoch (the encodings are kept for ``__getitem__``)."""
        if self._cache_epoch != self.epoch:
            self._cache_epoch, self._cache = self.epoch, {}
        lengths = np.empty(len(self), dtype=np.int64)
        for index in range(len(self)):
            encoded = self._cache.get(index)
            if encoded is None:
                encoded = self._cache[index] = self._encode(index)
            lengths[index] = len(encoded.input_ids)
        return lengths


class ItemTextDataset(_EpochDataset):
    """Item-text alignment samples (see the module docstring); ``len`` = ceil(#items / m) per epoch."""

    def __init__(self, item_texts: Sequence[str], tokenizer, prompt_config: PromptConfig, *, items_per_sample: int = 5,
                 seed: int = 0, items: Optional[Sequence[int]] = None):
        if not 1 <= items_per_sample <= prompt_config.num_slots:
            raise ValueError(f"items_per_sample must be in [1, num_slots={prompt_config.num_slots}], "
                             f"got {items_per_sample}")
        self.item_texts = list(item_texts)
        self.items = np.arange(len(self.item_texts)) if items is None else np.asarray(items, dtype=np.int64)
        self.tokenizer, self.config, self.m, self.seed = tokenizer, prompt_config, int(items_per_sample), int(seed)
        self._perm_epoch, self._perm = None, None

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.m)

    def groups(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.items)
            self._perm_epoch = self.epoch
        return self._perm

    def prompt(self, index: int):
        group = [int(i) for i in self.groups()[index * self.m: (index + 1) * self.m]]
        if len(group) < self.m and len(self.items) >= self.m:  # top up the last group so every sample has m items
            rest = [int(i) for i in self.groups() if int(i) not in group]
            group += rest[: self.m - len(group)]
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        return item_text_prompt(group, [self.item_texts[i] for i in group], self.config, rng=rng)

    def _encode(self, index: int) -> EncodedPrompt:
        p = self.prompt(index)
        try:
            return encode_prompt(self.tokenizer, p, self.config)
        except ValueError as err:
            raise _wrap(err, f"item-text sample with items {p.targets}") from None


class UserItemDataset(_EpochDataset):
    """User-item alignment samples (``mode="train"``, with targets) or evaluation prompts (``mode="eval"``).

    ``item_titles``: the titles by item row that ``PromptConfig.history_titles`` shows (required then); pass the
    model's ``item_catalogue["titles"]``, which ``recommend()`` reads, so training and serving render one prompt.
    """

    def __init__(
        self,
        histories: Sequence[np.ndarray],
        tokenizer,
        prompt_config: PromptConfig,
        *,
        texts: Optional[Mapping[int, Mapping[str, Any]]] = None,
        users: Optional[Sequence[int]] = None,
        mode: str = "train",
        target_policy: str = "all",
        num_targets: Optional[int] = None,
        eval_history: str = "auto",
        has_time: bool = False,
        user_names: Optional[Sequence[str]] = None,
        seed: int = 0,
        samples_per_user: int = 1,
        held_out: Optional[Sequence[Sequence[int]]] = None,
        item_titles: Optional[Sequence[Optional[str]]] = None,
    ):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if int(samples_per_user) != samples_per_user or samples_per_user < 1:
            raise ValueError(f"samples_per_user must be an integer >= 1, got {samples_per_user!r}")
        if mode == "eval" and samples_per_user != 1:
            raise ValueError(f"samples_per_user applies to training samples; evaluation has one prompt per user, "
                             f"got {samples_per_user}")
        self.samples_per_user = int(samples_per_user)
        if target_policy not in TARGET_POLICIES:
            raise ValueError(f"target_policy must be one of {TARGET_POLICIES}, got {target_policy!r}")
        if eval_history not in EVAL_HISTORIES:
            raise ValueError(f"eval_history must be one of {EVAL_HISTORIES}, got {eval_history!r}")
        if prompt_config.history_titles and item_titles is None:
            raise ValueError("UserItemDataset: prompt_config.history_titles is on but item_titles= was not given "
                             "(the model's item_catalogue['titles'])")
        self.item_titles = item_titles
        self.histories = histories
        self.tokenizer, self.config, self.mode, self.seed = tokenizer, prompt_config, mode, int(seed)
        self.texts = texts or {}
        self.target_policy = target_policy
        if target_policy == "held_out" and mode == "train":
            if held_out is None or len(held_out) != len(histories):
                raise ValueError("target_policy 'held_out' needs held_out= (per user, the items the graph was fit "
                                 "without: glta_hf.graph.held_out_fold)")
        self.held_out = None if held_out is None else [set(int(i) for i in items) for items in held_out]
        self.num_targets = prompt_config.num_slots if num_targets is None else int(num_targets)
        if not 1 <= self.num_targets <= prompt_config.num_slots:
            raise ValueError(f"num_targets must be in [1, num_slots={prompt_config.num_slots}], got {num_targets}")
        self.recent = eval_history == "recent" or (eval_history == "auto" and has_time)
        self.user_names = user_names
        if users is None:
            users = [u for u in range(len(histories)) if len(histories[u]) > 0]
        self.users = [int(u) for u in users]
        if mode == "train":
            self.users = [u for u in self.users if len(histories[u]) > 0]
            if target_policy == "held_out":
                self.users = [u for u in self.users if self.held_out[u]]
        wants_text = prompt_config.include_profile or prompt_config.include_prediction
        missing = sum(1 for u in self.users if u not in self.texts)
        if wants_text and self.texts and missing:
            logger.warning("%d of %d users have no profile/prediction text; their prompts go without it",
                           missing, len(self.users))

    def __len__(self) -> int:
        return len(self.users) * self.samples_per_user

    def user_and_draw(self, index: int) -> Tuple[int, int]:
        """Sample ``index`` -> (user, draw): the first ``len(users)`` samples are draw 0 of every user, and so on."""
        draw, position = divmod(int(index), len(self.users))
        return self.users[position], draw

    # -- histories and targets ----------------------------------------------------------------------------
    def eval_history(self, user: int) -> List[int]:
        """What the model is shown at evaluation / serving time: most recent H, or a seeded sample of H."""
        return serving_history(self.histories[user], self.config.max_history, self.recent, self.seed, user)[
            -self.config.max_history:] if self.config.max_history > 0 else []

    def train_history_and_targets(self, user: int, draw: int = 0) -> Tuple[List[int], List[int]]:
        items = self.histories[user]
        n = len(items)
        rng = np.random.default_rng([self.seed, self.epoch, user] + ([draw] if draw else []))
        H, L = self.config.max_history, self.num_targets
        if self.target_policy == "all":
            history = self.eval_history(user)
            targets = rng.choice(items, size=min(L, n), replace=False)
            return history, [int(t) for t in targets]
        if self.target_policy == "held_out":
            held = self.held_out[user]
            seen = [int(i) for i in items if int(i) not in held]
            pool = [int(i) for i in items if int(i) in held]
            history = serving_history(seen, H, self.recent, self.seed, user)[-H:] if H > 0 else []
            return history, [int(t) for t in rng.choice(pool, size=min(L, len(pool)), replace=False)]
        h = 0 if n <= 1 else min(H, n - 1, max(n - L, n // 2))
        perm = rng.permutation(n)
        shown = np.sort(perm[:h])  # positions, kept in time order
        targets = perm[h: h + min(L, n - h)]
        return [int(items[i]) for i in shown], [int(items[i]) for i in targets]

    def prompt(self, index: int):
        user, draw = self.user_and_draw(index)
        if self.mode == "train":
            history, targets = self.train_history_and_targets(user, draw)
        else:
            history, targets = self.eval_history(user), []
        rec = self.texts.get(user) or {}
        name = None if self.user_names is None else str(self.user_names[user])
        return user_item_prompt(user, history, self.config, profile=rec.get("profile"),
                                prediction=rec.get("prediction"), targets=targets, user_text=name,
                                history_titles=history_titles_from(history, self.item_titles, self.config))

    def _encode(self, index: int) -> EncodedPrompt:
        try:
            return encode_prompt(self.tokenizer, self.prompt(index), self.config)
        except ValueError as err:
            raise _wrap(err, f"user {self.user_and_draw(index)[0]}") from None


def length_grouped_indices(lengths: Sequence[int], batch_size: int, *, seed: int = 0, epoch: int = 0,
                           mega_batch_mult: Optional[int] = None) -> List[int]:
    """A permutation of ``range(len(lengths))`` whose consecutive ``batch_size`` slices hold similar lengths.

    transformers' ``get_length_grouped_indices`` as a pure function of ``(seed, epoch, lengths)``: the indices are
    shuffled with a generator seeded by ``(seed, epoch)`` (the same draw as :class:`EpochSampler`'s plain shuffle),
    cut into megabatches of ``mega_batch_mult * batch_size`` (default: 50, or fewer so there are at least 4
    megabatches, at least 1) and each megabatch is sorted by length, longest first. The longest sample of all is
    swapped to the front so an out-of-memory error shows at the first step. Batches therefore need little padding
    while the epoch order stays random at the megabatch scale.
    """
    n = len(lengths)
    batch_size = max(1, int(batch_size))
    if mega_batch_mult is None:
        mega_batch_mult = max(1, min(n // (batch_size * 4), 50))
    if n == 0:
        return []
    lengths = np.asarray(lengths, dtype=np.int64)
    order = torch.randperm(n, generator=_epoch_generator(seed, epoch)).numpy()
    size = int(mega_batch_mult) * batch_size
    megabatches = []
    for start in range(0, n, size):
        chunk = order[start: start + size]
        megabatches.append(chunk[np.argsort(-lengths[chunk], kind="stable")].tolist())
    longest = int(np.argmax([lengths[m[0]] for m in megabatches]))
    megabatches[0][0], megabatches[longest][0] = megabatches[longest][0], megabatches[0][0]
    return [i for m in megabatches for i in m]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


class EpochSampler(torch.utils.data.Sampler):
    """Shuffles indices with a generator seeded by ``(seed, epoch)`` and forwards ``set_epoch`` to the dataset.

    Both the order and the dataset's per-epoch draws are then functions of the epoch alone, so a run resumed
    from a checkpoint mid-epoch (the Trainer skips the batches already seen) replays exactly the same samples.

    ``group_by_length=True``: the order is :func:`length_grouped_indices` of the epoch's sample lengths (the
    dataset's ``sample_lengths()``, else the encoded samples' lengths) with ``batch_size`` (the Trainer passes the
    per-device batch times the gradient-accumulation steps, as transformers' ``LengthGroupedSampler``).
    ``shuffle=False``: indices in order.
    """

    def __init__(self, dataset, seed: int = 0, shuffle: bool = True, *, group_by_length: bool = False,
                 batch_size: int = 1, mega_batch_mult: Optional[int] = None):
        self.dataset, self.seed, self.shuffle, self.epoch = dataset, int(seed), shuffle, 0
        self.group_by_length, self.batch_size, self.mega_batch_mult = group_by_length, int(batch_size), mega_batch_mult
        self._lengths: Optional[Tuple[int, np.ndarray]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        if self.group_by_length and self.shuffle:
            # encode the epoch now, before the DataLoader forks its workers, so they inherit the encodings
            self.lengths()

    def __len__(self) -> int:
        return len(self.dataset)

    def lengths(self) -> np.ndarray:
        """The current epoch's sample lengths (computed once per epoch)."""
        if self._lengths is None or self._lengths[0] != self.epoch:
            if hasattr(self.dataset, "sample_lengths"):
                lengths = np.asarray(self.dataset.sample_lengths())
            else:
                lengths = np.asarray([len(self.dataset[i].input_ids) for i in range(len(self.dataset))])
            self._lengths = (self.epoch, lengths)
        return self._lengths[1]

    def __iter__(self):
        if not self.shuffle:
            return iter(range(len(self.dataset)))
        if self.group_by_length:
            return iter(length_grouped_indices(self.lengths(), self.batch_size, seed=self.seed, epoch=self.epoch,
                                               mega_batch_mult=self.mega_batch_mult))
        return iter(torch.randperm(len(self.dataset), generator=_epoch_generator(self.seed, self.epoch)).tolist())


class GLTACollator:
    """Pads a list of :class:`EncodedPrompt` (left padding) into ``GLTAForRecommendation.forward`` inputs, plus
    ``sample_users``.

    ``user_ids`` / ``item_ids`` are flattened over the batch in placeholder order (row-major), ``labels`` is
    ``(B, L)`` with -100 after each sample's targets (only when some sample has targets). ``sample_users`` (B,): each
    row's user (``EncodedPrompt.user``), found without the ``<user>`` token, which w/o UA's prompts lack; only when
    the samples are user-item prompts (item-text ones have no user). It is no ``forward`` input:
    :class:`~glta_hf.trainer.GLTATrainer` takes it out for ``mask_training_items``; pass ``sample_users=False`` to
    feed the batch to the model directly.
    """

    def __init__(self, pad_token_id: int, num_slots: int, padding_side: str = "left", sample_users: bool = True):
        self.pad_token_id, self.num_slots, self.padding_side = int(pad_token_id), int(num_slots), padding_side
        self.sample_users = bool(sample_users)

    def __call__(self, features: Sequence[Any]) -> Dict[str, torch.Tensor]:
        encoded = [f if isinstance(f, EncodedPrompt) else _from_mapping(f) for f in features]
        batch = collate_prompts(encoded, self.pad_token_id, self.num_slots, padding_side=self.padding_side)
        users = [e.user for e in encoded]
        if self.sample_users and any(u is not None for u in users):
            if any(u is None for u in users):
                raise ValueError(f"GLTACollator: rows {[row for row, u in enumerate(users) if u is None]} have no "
                                 "user (item-text prompts) beside user-item prompts; a batch holds one stage's samples")
            batch["sample_users"] = torch.tensor(users, dtype=torch.long)
        return batch


def _from_mapping(f: Mapping[str, Any]) -> EncodedPrompt:
    ids = list(f["input_ids"])
    users, items, targets = list(f.get("user_ids", [])), list(f.get("item_ids", [])), list(f.get("targets", []))
    user = f.get("user")
    return EncodedPrompt(input_ids=ids, user_ids=users, item_ids=items, targets=targets,
                         num_user_tokens=len(users), num_item_tokens=len(items),
                         num_slot_tokens=int(f.get("num_slot_tokens", 0)), user=None if user is None else int(user))
