"""Stage datasets and the collator: what the prompts show, what the targets are, how batches are flattened."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glta_hf.alignment_data import (EpochSampler, GLTACollator, ItemTextDataset, UserItemDataset, serving_history,
                                    serving_histories)
from glta_hf.prompts import PromptConfig, add_placeholder_tokens, placeholder_token_ids
from glta_hf.testing import tiny_tokenizer

ITEM_TEXTS = [f"Movie {i}; genres: {'Comedy' if i % 2 else 'Drama'}" for i in range(23)]


@pytest.fixture(scope="module")
def tok():
    t = tiny_tokenizer()
    add_placeholder_tokens(t)
    return t


def _histories():
    rng = np.random.default_rng(0)
    lengths = [1, 2, 3, 7, 12, 20]
    return [np.sort(rng.choice(23, size=n, replace=False)) for n in lengths]


def test_item_text_samples_cover_catalogue_and_target_description_order(tok):
    cfg = PromptConfig(num_slots=6, max_history=5)
    ds = ItemTextDataset(ITEM_TEXTS, tok, cfg, items_per_sample=5, seed=3)
    ids = placeholder_token_ids(tok)
    seen = set()
    for i in range(len(ds)):
        p = ds.prompt(i)
        enc = ds[i]
        assert sorted(p.item_ids) == sorted(p.targets) and len(p.targets) == 5
        assert enc.input_ids.count(ids["<item>"]) == 5 and enc.input_ids.count(ids["<slot>"]) == 6
        seen.update(p.targets)
        # the description listed t-th is the t-th target
        text = tok.decode(enc.input_ids)
        positions = [text.index(ITEM_TEXTS[t]) for t in p.targets]
        assert positions == sorted(positions)
        assert p.item_ids != p.targets  # tokens in another order than the descriptions
    assert seen == set(range(23))
    first = [ds.prompt(i).targets for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds.prompt(i).targets for i in range(len(ds))] != first
    ds.set_epoch(0)
    assert [ds.prompt(i).targets for i in range(len(ds))] == first  # a function of the epoch only


def test_user_item_disjoint_targets_resampled_per_epoch(tok):
    cfg = PromptConfig(num_slots=4, max_history=5)
    hist = _histories()
    ds = UserItemDataset(hist, tok, cfg, mode="train", seed=1, target_policy="disjoint")
    per_epoch = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        draws = []
        for i, u in enumerate(ds.users):
            shown, targets = ds.train_history_and_targets(u)
            train_items = set(int(x) for x in hist[u])
            assert set(targets) <= train_items and set(shown) <= train_items
            assert not set(targets) & set(shown), "disjoint policy: no target is shown in the prompt"
            assert 1 <= len(targets) <= cfg.num_slots and len(shown) <= cfg.max_history
            assert len(set(targets)) == len(targets)
            enc = ds[i]
            assert enc.targets == targets and enc.item_ids == shown and enc.user_ids == [u]
            draws.append(tuple(targets))
        per_epoch.append(draws)
    assert per_epoch[0] != per_epoch[1]
    ds.set_epoch(0)
    assert [tuple(ds.train_history_and_targets(u)[1]) for u in ds.users] == per_epoch[0]
    # a single-item user: no history, its item is the target
    assert ds.train_history_and_targets(0) == ([], [int(hist[0][0])])


def test_several_samples_per_user_are_distinct_draws_and_draw_zero_is_the_single_sample(tok):
    cfg = PromptConfig(num_slots=4, max_history=5)
    hist = _histories()
    one = UserItemDataset(hist, tok, cfg, mode="train", seed=1, target_policy="disjoint")
    three = UserItemDataset(hist, tok, cfg, mode="train", seed=1, samples_per_user=3, target_policy="disjoint")
    n = len(one.users)
    assert len(three) == 3 * n
    for ds in (one, three):
        ds.set_epoch(2)
    # draw 0 of every user is exactly the r=1 sample (old runs stay reproducible)
    assert [three[i].targets for i in range(n)] == [one[i].targets for i in range(n)]
    for position, user in enumerate(three.users):
        draws = [three.user_and_draw(position + d * n) for d in range(3)]
        assert draws == [(user, d) for d in range(3)]
        targets = [tuple(three.prompt(position + d * n).targets) for d in range(3)]
        if len(hist[user]) >= 7:  # enough items for the draws to differ
            assert len(set(targets)) > 1, f"user {user}: the r draws repeat one target set"
        for d in range(3):
            shown, drawn = three.train_history_and_targets(user, d)
            assert not set(shown) & set(drawn)
    lengths = three.sample_lengths()
    assert len(lengths) == 3 * n
    with pytest.raises(ValueError, match="samples_per_user"):
        UserItemDataset(hist, tok, cfg, mode="train", samples_per_user=0)
    with pytest.raises(ValueError, match="evaluation has one prompt per user"):
        UserItemDataset(hist, tok, cfg, mode="eval", samples_per_user=2)


def test_paper_literal_policy_and_eval_mode(tok):
    cfg = PromptConfig(num_slots=4, max_history=5)
    hist = _histories()
    lit = UserItemDataset(hist, tok, cfg, mode="train", target_policy="all", has_time=True)
    shown, targets = lit.train_history_and_targets(5)
    assert shown == [int(i) for i in hist[5][-5:]] and set(targets) <= set(int(i) for i in hist[5])
    ev = UserItemDataset(hist, tok, cfg, mode="eval", has_time=True)
    enc = ev[5]
    assert enc.targets == [] and enc.item_ids == [int(i) for i in hist[5][-5:]]  # most recent H
    sampled = UserItemDataset(hist, tok, cfg, mode="eval", eval_history="sample", seed=4)
    items = sampled.eval_history(5)
    assert len(items) == 5 and set(items) <= set(int(i) for i in hist[5])


def test_serving_history_keeps_every_item_and_puts_shown_ones_last():
    items = list(range(10, 40))
    out = serving_history(items, 5, recent=False, seed=0, user=3)
    assert sorted(out) == items and out[-5:] == sorted(out[-5:])
    assert serving_history(items, 5, recent=False, seed=0, user=3) == out  # seeded
    assert serving_history(items, 5, recent=True, seed=0, user=3) == items
    assert len(serving_histories([items, items[:3]], 5, recent=False)) == 2


def test_collator_flattens_in_placeholder_order_and_pads_labels(tok):
    cfg = PromptConfig(num_slots=4, max_history=5)
    hist = _histories()
    ds = UserItemDataset(hist, tok, cfg, mode="train", seed=0)
    samples = [ds[i] for i in range(len(ds))]
    batch = GLTACollator(tok.pad_token_id, cfg.num_slots)(samples)
    ids = placeholder_token_ids(tok)
    assert batch["input_ids"].shape[0] == len(samples)
    assert batch["user_ids"].tolist() == [u for s in samples for u in s.user_ids]
    assert batch["item_ids"].tolist() == [i for s in samples for i in s.item_ids]
    assert int((batch["input_ids"] == ids["<item>"]).sum()) == len(batch["item_ids"])
    assert ((batch["input_ids"] == ids["<slot>"]).sum(dim=1) == cfg.num_slots).all()
    for row, s in enumerate(samples):
        labels = batch["labels"][row].tolist()
        assert labels[: len(s.targets)] == s.targets and all(x == -100 for x in labels[len(s.targets):])
        assert batch["attention_mask"][row, -1] == 1  # left padding: every prompt ends at the last column


def test_collator_stacks_each_samples_user_beside_unchanged_forward_inputs(tok):
    """``sample_users`` (B,): each row's user, with a ``<user>`` token or without one (w/o UA), what the trainer's
    mask_training_items reads; the forward inputs are collate_prompts' own (the model receives what it did), the
    prompts' ids do not depend on it, and item-text batches have no user."""
    import dataclasses

    from glta_hf.prompts import collate_prompts, encode_prompt

    hist = _histories()
    collate = GLTACollator(tok.pad_token_id, 4)
    for cfg in (PromptConfig(num_slots=4, max_history=5), PromptConfig(num_slots=4, max_history=5, user_as_text=True)):
        ds = UserItemDataset(hist, tok, cfg, mode="train", seed=0, samples_per_user=2)
        samples = [ds[i] for i in range(len(ds))]
        batch = collate(samples)
        assert batch["sample_users"].dtype == torch.long
        assert batch["sample_users"].tolist() == [ds.user_and_draw(i)[0] for i in range(len(ds))]
        assert len(batch["user_ids"]) == (0 if cfg.user_as_text else len(samples))
        plain = collate_prompts(samples, tok.pad_token_id, 4)
        assert set(batch) == set(plain) | {"sample_users"}
        assert all(torch.equal(batch[k], plain[k]) for k in plain)
        assert set(GLTACollator(tok.pad_token_id, 4, sample_users=False)(samples)) == set(plain)
        as_maps = [dict(input_ids=s.input_ids, user_ids=s.user_ids, item_ids=s.item_ids, targets=s.targets,
                        user=s.user) for s in samples]
        assert torch.equal(collate(as_maps)["sample_users"], batch["sample_users"])
        prompt = ds.prompt(3)
        assert prompt.user == ds.user_and_draw(3)[0]
        assert encode_prompt(tok, prompt, cfg).input_ids == encode_prompt(
            tok, dataclasses.replace(prompt, user=None), cfg).input_ids  # not rendered: the prefix keys stay
    item = ItemTextDataset(ITEM_TEXTS, tok, PromptConfig(num_slots=4), items_per_sample=3)
    item_samples = [item[i] for i in range(3)]
    assert all(s.user is None for s in item_samples) and "sample_users" not in collate(item_samples)
    with pytest.raises(ValueError, match="no user"):
        collate(item_samples[:1] + samples[:1])


def test_truncation_never_drops_placeholders(tok):
    cfg = PromptConfig(num_slots=4, max_history=20, max_length=60)
    hist = [np.arange(20)]
    ds = UserItemDataset(hist, tok, cfg, mode="eval", texts={0: {"profile": "likes " * 200, "prediction": "x " * 50}})
    with pytest.raises(ValueError, match="user 0"):
        ds[0]
    roomy = PromptConfig(num_slots=4, max_history=20, max_length=400)
    enc = UserItemDataset(hist, tok, roomy, mode="eval", texts={0: {"profile": "likes " * 400}})[0]
    assert len(enc.input_ids) <= 400 and enc.num_item_tokens == 20  # the free text was shortened instead


def test_epoch_sampler_is_a_function_of_the_epoch():
    class DS(torch.utils.data.Dataset):
        epoch = None

        def set_epoch(self, e):
            self.epoch = e

        def __len__(self):
            return 50

    ds = DS()
    s = EpochSampler(ds, seed=7)
    s.set_epoch(2)
    a = list(s)
    assert ds.epoch == 2 and sorted(a) == list(range(50))
    s.set_epoch(3)
    b = list(s)
    s.set_epoch(2)
    assert list(s) == a and a != b
