"""Serving: the item catalogue, the user table and ``recommend`` -- a thin layer over ``GLTAForRecommendation.rank``.

:class:`GLTAServingMixin` maps external ids to rows (``item_catalogue`` / ``user_table``, saved as the checkpoint's id
maps, see ``checkpoint``), builds the training prompt of each user from the stored context, folds in unknown users
from a history (node embedding = mean of ``E_i`` over it, LightGCN's propagation) and validates every argument of
``recommend`` where it enters, before any prompt is built or the LLM runs. Imports only torch + siblings (copied as
remote code).
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch

from .decoding import ArgumentError, check_decoding, check_k, check_positive_int, is_sequence_argument
from .errors import UnknownIdError
from .prompts import collate_prompts, encode_prompt, history_titles_from, user_item_prompt


def _is_id(value) -> bool:
    return isinstance(value, (str, numbers.Integral)) and not isinstance(value, bool)


def _as_user_list(users) -> list:
    """``users`` as a list of ids (str or int): one bare id is ONE user, never iterated character by character."""
    if _is_id(users):
        return [users]
    if isinstance(users, (bytes, Mapping)) or not isinstance(users, Iterable):
        raise ArgumentError(f"users must be a user id or a sequence of user ids, got {users!r}")
    users = list(users)
    bad = [u for u in users if not _is_id(u)]
    if bad:
        raise ArgumentError(f"users: every user id must be a str or an int, got {bad[0]!r}")
    return users


def _histories_by_user(histories: Mapping, users: list) -> list:
    """A dict of histories aligned with ``users``. Ids match as strings, as everywhere (``1`` and ``"1"`` are one
    user); a key that is not an id, names no requested user or names one twice is an error, never ignored."""
    by_id: Dict[str, Any] = {}
    for key, value in histories.items():
        if not _is_id(key):
            raise ArgumentError(f"histories: keys must be user ids (str or int), got {key!r}")
        if str(key) in by_id:
            raise ArgumentError(f"histories: user {key!r} has two entries (ids match as strings)")
        by_id[str(key)] = value
    unused = sorted(set(by_id) - {str(u) for u in users})
    if unused:
        raise ArgumentError(f"histories: {unused[:5]} are not among the requested users {users[:5]}")
    return [by_id.get(str(u)) for u in users]


class GLTAServingMixin:
    """Catalogue, user table and recommendation API of :class:`GLTAForRecommendation` (see the module docstring)."""

    def _init_serving_state(self) -> None:
        n_items, n_users = self.config.num_items, self.config.num_users
        self.item_catalogue: Dict[str, list] = {"item_ids": list(range(n_items)), "titles": [None] * n_items}
        self.user_table: Dict[str, list] = {
            "user_ids": list(range(n_users)),
            "histories": [[] for _ in range(n_users)],
            "profiles": [None] * n_users,
            "predictions": [None] * n_users,
        }
        #: False until a user table is attached (a checkpoint published without ``user_table.json`` stays so): then
        #: no user id is known, every request folds its user in from a given history, and none is saved.
        self.has_user_table = False
        self._item_index = self._user_index = None

    def set_catalogue(self, item_ids: Iterable, titles: Optional[Sequence[Optional[str]]] = None) -> None:
        """External item ids (row order of ``E_i``, unique) and optional titles."""
        item_ids = list(item_ids)
        if len(item_ids) != self.config.num_items:
            raise ArgumentError(f"catalogue has {len(item_ids)} item ids but the model has {self.config.num_items} items")
        if len({str(i) for i in item_ids}) != len(item_ids):
            raise ArgumentError("item_ids: the catalogue's item ids must be unique")
        titles = list(titles) if titles is not None else [None] * len(item_ids)
        if len(titles) != len(item_ids):
            raise ArgumentError(f"{len(titles)} titles for {len(item_ids)} items")
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
                raise ArgumentError(f"attach_user_context: {len(values)} {name} for {n} users")
            if name == "histories":
                values = [[int(i) for i in h] for h in values]
                bad = [i for h in values for i in h if not 0 <= i < self.config.num_items]
                if bad:
                    raise UnknownIdError(f"history item rows out of range [0, {self.config.num_items}): {bad[:5]}")
            self.user_table[name] = values
            self.has_user_table = True
        self._user_index = None

    def _lookup(self, name: str) -> Dict[str, int]:
        """External id (as str) -> row, for ``"item"`` or ``"user"``; rebuilt after the catalogue / table changes."""
        cache = getattr(self, f"_{name}_index", None)
        if cache is None:
            if name == "item":
                ids = self.item_catalogue["item_ids"]
            else:  # without a user table no external user id is known (not even the row numbers)
                ids = self.user_table["user_ids"] if self.has_user_table else []
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

        The prompt shows the last H items of the stored (or given) history (with ``PromptConfig.history_titles``
        their ``item_catalogue`` titles too, what training shows); ``fold_in[j]`` means user j has no
        ``E_u`` row and gets ``mean(E_i[history])`` as node embedding (returned as ``user_node_embeddings``, with
        the known users' ``E_u`` rows, when the batch folds in a user or shows users as text; otherwise the batch's
        ``user_ids`` select the ``E_u`` rows, the training path).
        """
        if self.tokenizer is None:
            raise ValueError("the model has no tokenizer attached (build it with from_components or from_pretrained)")
        cfg = self.prompt_config
        titles = self.item_catalogue["titles"]
        encoded, folded = [], []
        for j, user in enumerate(users):
            history = histories[j] if histories is not None and histories[j] is not None else None
            if fold_in is not None and fold_in[j]:
                prompt = user_item_prompt(0, history, cfg, user_text="new user",
                                          history_titles=history_titles_from(history, titles, cfg))
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
                    history_titles=history_titles_from(hist, titles, cfg),
                )
                if not cfg.user_as_text:
                    folded.append(self.user_embeddings[row])
            encoded.append(encode_prompt(self.tokenizer, prompt, cfg))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = collate_prompts(encoded, pad, self.config.num_slots)
        batch.pop("labels", None)
        if cfg.user_as_text or (fold_in is not None and any(fold_in)):
            batch["user_node_embeddings"] = torch.stack(folded) if folded else torch.zeros(0, self.config.node_dim)
        # else known users only: E_u rows through user_ids, as in training, so cached prefixes are keyed alike
        return {k: v.to(self.device) for k, v in batch.items()}

    def ranker(self, decoding: str = "first_k", batch_size: int = 32) -> Callable[[torch.LongTensor, int], torch.LongTensor]:
        """A ``ranker(users, k) -> LongTensor[B, k]`` for ``glta_hf.metrics.evaluate`` over internal user rows.

        Prompts come from the attached user context; each user's stored (training) history is excluded. The lists
        stay on the model's device (the evaluator works there), so no batch waits on a device-to-host copy.
        """
        check_decoding(decoding)
        batch_size = check_positive_int("batch_size", batch_size)

        def rank_users(users: torch.LongTensor, k: int) -> torch.LongTensor:
            return self._rank_in_batches(users, k, batch_size, lambda batch, seen: [
                self.rank(**batch, k=k, seen=seen, decoding=decoding)])[0]

        return rank_users

    def gate_scale_ranker(self, gate_scales: Sequence[float], decoding: str = "first_k", batch_size: int = 32
                          ) -> Callable[[torch.LongTensor, int], List[torch.LongTensor]]:
        """:meth:`ranker` for every multiplier of a graph residual's gate at once: ``rank(users, k) ->
        [LongTensor[B, k] per scale]``, the LLM run once per batch of ``batch_size`` users (``rank_gate_scales``).
        The same batches as :meth:`ranker`'s, so scale 1 returns its lists exactly."""
        check_decoding(decoding)
        batch_size = check_positive_int("batch_size", batch_size)
        scales = self.check_gate_scales(gate_scales)

        def rank_users(users: torch.LongTensor, k: int) -> List[torch.LongTensor]:
            return self._rank_in_batches(users, k, batch_size, lambda batch, seen: self.rank_gate_scales(
                **batch, gate_scales=scales, k=k, seen=seen, decoding=decoding), outputs=len(scales))

        return rank_users

    def _rank_in_batches(self, users: torch.LongTensor, k: int, batch_size: int, rank_batch, outputs: int = 1
                         ) -> List[torch.LongTensor]:
        """The loop :meth:`ranker` and :meth:`gate_scale_ranker` share: ``users`` encoded ``batch_size`` at a time
        from the attached user context, each one's stored (training) history excluded, ``rank_batch(batch, seen)``
        -> one ``(items, scores)`` per output; the items of every output concatenated over the batches."""
        out: List[List[torch.LongTensor]] = [[] for _ in range(outputs)]
        for start in range(0, len(users), batch_size):
            chunk = [int(u) for u in users[start : start + batch_size]]
            batch = self.encode_users(chunk)
            seen = [self.user_table["histories"][u] for u in chunk]
            for lists, (items, _) in zip(out, rank_batch(batch, seen)):
                lists.append(items)
        empty = torch.zeros(0, k, dtype=torch.long, device=self.device)
        return [torch.cat(lists) if lists else empty for lists in out]

    def scorer(self, batch_size: int = 32) -> Callable[[torch.LongTensor], torch.FloatTensor]:
        """A ``scorer(users) -> FloatTensor[B, |I|]`` for ``evaluate``: the ``all_slots`` score of every item, on
        the model's device (like :meth:`ranker`)."""
        batch_size = check_positive_int("batch_size", batch_size)

        @torch.no_grad()
        def score_users(users: torch.LongTensor) -> torch.FloatTensor:
            out = []
            for start in range(0, len(users), batch_size):
                batch = self.encode_users([int(u) for u in users[start : start + batch_size]])
                out.append(self.all_slot_scores(**batch))
            return torch.cat(out) if out else torch.zeros(0, self.config.num_items, device=self.device)

        return score_users

    @torch.no_grad()
    def recommend(
        self,
        users: Union[Any, Sequence[Any]],
        k: int = 10,
        exclude_seen: bool = True,
        decoding: str = "first_k",
        histories: Optional[Union[Dict[Any, Sequence], Sequence[Optional[Sequence]]]] = None,
        batch_size: int = 32,
    ) -> List[Dict[str, Any]]:
        """Top-k external item ids with scores for external user ids: ``[{"user", "items", "scores"}, ...]``.

        ``users``: a sequence of user ids, or ONE id (a bare string such as ``"12"`` is one user). ``histories``
        (external item ids; a dict by user id -- every key one of ``users``, matched as strings -- or a list aligned
        with ``users``) replaces a known user's stored history
        in the prompt and the exclusion, and lets unknown users be *folded in*: their node embedding is the mean of
        ``E_i`` over the history, without profile or prediction text. An unknown user without history raises
        ``UnknownIdError``. Scores are non-increasing along each list; their meaning per decoding is documented in
        ``glta_hf.decoding`` (``first_k``: the log-probability of the list up to that item). Every argument is
        checked here, before any prompt is encoded (``ArgumentError`` naming it).
        """
        users = _as_user_list(users)
        check_decoding(decoding)
        batch_size = check_positive_int("batch_size", batch_size)
        if not isinstance(exclude_seen, bool):
            raise ArgumentError(f"exclude_seen must be a bool, got {exclude_seen!r}")
        check_k(k, decoding, self.config.num_items, self.config.num_slots)
        user_index, item_index = self._lookup("user"), self._lookup("item")
        if isinstance(histories, Mapping):
            histories = _histories_by_user(histories, users)
        elif histories is not None:
            if not is_sequence_argument(histories):
                raise ArgumentError("histories must be a dict by user or a list of item-id lists, got "
                                    f"{histories!r}")
            histories = list(histories)
            if len(histories) != len(users):
                raise ArgumentError(f"histories: {len(histories)} histories for {len(users)} users")
        rows, hists, fold = [], [], []
        for j, user in enumerate(users):
            given = histories[j] if histories is not None else None
            if given is not None:
                if not is_sequence_argument(given):
                    raise ArgumentError(f"histories: user {user!r}: expected a list of item ids, got {given!r}")
                given = list(given)
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
            # serving: projectors and node tables are fixed, so the prefix cache (when enabled) may hold the whole
            # prompt before the slots, keyed by content (glta_hf.prefix_cache, span "slots")
            items, scores = self.rank(**batch, k=k, seen=seen, decoding=decoding, prefix_span="slots")
            for user, item_row, score in zip(users[sl], items.tolist(), scores.tolist()):
                results.append(
                    {"user": user, "items": [self.item_catalogue["item_ids"][i] for i in item_row], "scores": score}
                )
        return results
