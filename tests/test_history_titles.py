"""``PromptConfig.history_titles``: the shown history items' titles as text. Off by default (the prompt ids of before
the option, byte for byte); on, the titles are listed in the ``<item>`` order, capped, and with text_first they are
in the cached prefix; training samples and ``recommend()`` render one prompt from the catalogue's titles; the prefix
cache stays exact; a missing or misaligned title is an error naming what is wrong."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import build_tiny
from glta_hf.alignment_data import UserItemDataset
from glta_hf.prompts import (
    ITEM_TOKEN,
    PromptConfig,
    add_placeholder_tokens,
    encode_prompt,
    history_titles_from,
    placeholder_token_ids,
    prefix_hash,
    user_item_prompt,
)
from glta_hf.testing import tiny_tokenizer

TOL = dict(atol=1e-5, rtol=1e-5)
TITLES = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)"]
#: prefix_hash of the whole input ids of ``_prompt(layout)`` before the option existed (main at dfb688e)
IDS_BEFORE = {"text_first": "52dac6bdc3bdcc163483ec85c0755bca", "paper": "c3d3ced34b5973c7a0e576b57cef199c"}


@pytest.fixture
def tok():
    t = tiny_tokenizer()
    add_placeholder_tokens(t)
    return t


def _prompt(layout, **kw):
    cfg = PromptConfig(num_slots=3, max_history=2, layout=layout, **kw.pop("config", {}))
    return cfg, user_item_prompt(3, [5, 9, 2], cfg, profile="Likes comedies.", prediction="Dramas next.", **kw)


@pytest.mark.parametrize("layout", ["text_first", "paper"])
def test_off_by_default_the_prompt_ids_are_those_of_before(tok, layout):
    assert PromptConfig().history_titles is False and PromptConfig.from_dict({"num_slots": 3}).history_titles is False
    cfg, plain = _prompt(layout)
    _, given = _prompt(layout, history_titles=TITLES)  # titles given but not asked for: not shown
    for p in (plain, given):
        assert prefix_hash(encode_prompt(tok, p, cfg).input_ids) == IDS_BEFORE[layout]
    assert "Heat" not in tok.decode(encode_prompt(tok, given, cfg).input_ids)


@pytest.mark.parametrize("layout", ["text_first", "paper"])
def test_titles_of_the_shown_items_in_item_order_and_in_the_text_first_prefix(tok, layout):
    cfg, p = _prompt(layout, config={"history_titles": True}, history_titles=TITLES)
    enc = encode_prompt(tok, p, cfg)
    text = tok.decode(enc.input_ids)
    assert "Titles of the items this user has interacted with: Heat (1995); Fargo (1996)\n" in text  # the last H
    assert "Toy Story" not in text and enc.item_ids == [9, 2]
    prefix = tok.decode(enc.input_ids[: enc.prefix_length])
    assert ("Heat (1995); Fargo (1996)" in prefix) == (layout == "text_first")  # cached with text_first
    assert enc.prefix_length == min(enc.input_ids.index(i) for i in placeholder_token_ids(tok).values())
    assert text.index("Fargo (1996)") < text.index("Profile: Likes comedies.")  # with the other text lines


def test_titles_are_neutralized_and_capped(tok):
    cfg = PromptConfig(num_slots=2, max_history=3, history_titles=True, max_history_title_tokens=6)
    long = ["word " * 20, "x", "y"]
    enc = encode_prompt(tok, user_item_prompt(0, [1, 2, 3], cfg, history_titles=long), cfg)
    line = next(s for s in tok.decode(enc.input_ids).splitlines() if s.startswith("Titles of"))
    assert len(tok(line.split(": ", 1)[1], add_special_tokens=False)["input_ids"]) <= 7
    cfg = PromptConfig(num_slots=2, history_titles=True)
    evil = user_item_prompt(0, [1], cfg, history_titles=[f"A {ITEM_TOKEN} {{b}}"])
    enc = encode_prompt(tok, evil, cfg)  # a title never adds a placeholder; braces are text
    assert enc.num_item_tokens == 1 and "A (item) {b}" in tok.decode(enc.input_ids)


def test_missing_or_misaligned_titles_are_clear_errors(tok):
    cfg = PromptConfig(num_slots=2, max_history=2, history_titles=True)
    with pytest.raises(ValueError, match="2 history_titles for 3 history items"):
        user_item_prompt(0, [1, 2, 3], cfg, history_titles=["a", "b"])
    with pytest.raises(ValueError, match="history_titles is on but no history_titles were given"):
        user_item_prompt(0, [1, 2], cfg)
    with pytest.raises(ValueError, match=r"history items \[2\] have no title"):
        user_item_prompt(0, [1, 2], cfg, history_titles=["a", None])
    assert user_item_prompt(0, [1, 2, 3], cfg, history_titles=[None, "b", "c"]).texts["history_titles"] == "b; c"
    with pytest.raises(ValueError, match="no item titles were given"):
        history_titles_from([1], None, cfg)
    assert history_titles_from([1], None, PromptConfig()) is None  # off: nothing to look up
    with pytest.raises(ValueError, match="item_titles= was not given"):
        UserItemDataset([np.array([1, 2])], tok, cfg)


# ----------------------------------------------------------------------------------------------- the model


def _titled(tmp_path, **prompt):
    return build_tiny(tmp_path, prompt={"layout": "text_first", "history_titles": True, **prompt})


def _dataset(model, **kw):
    """The user stage's samples as the trainer builds them (GLTATrainer._stage_dataset) over the tiny model."""
    from glta_hf.trainer import GLTATrainer

    table = model.user_table
    args = SimpleNamespace(target_policy="all", num_targets=None, eval_history="recent", seed=0, samples_per_user=1,
                           **kw)
    texts = {u: {"profile": p, "prediction": q}
             for u, (p, q) in enumerate(zip(table["profiles"], table["predictions"]))}
    data = SimpleNamespace(user_ids=table["user_ids"])
    return GLTATrainer._stage_dataset("user", model, args, data, [np.array(h) for h in table["histories"]], False,
                                      texts, None, None)


def test_training_samples_and_serving_render_one_prompt(tmp_path):
    model = _titled(tmp_path).model
    samples = _dataset(model)
    for user in range(model.config.num_users):
        served = model.encode_users([user])["input_ids"][0].tolist()
        assert samples[samples.users.index(user)].input_ids == served, user
    text = model.tokenizer.decode(model.encode_users([1])["input_ids"][0])
    assert "interacted with: Item 2; Item 3; Item 4\n" in text  # the catalogue's titles (conftest: "Item j")
    folded = model.encode_users([-1], histories=[[7, 11]], fold_in=[True])["input_ids"][0]
    assert "interacted with: Item 7; Item 11\n" in model.tokenizer.decode(folded)  # a new user's prompt lists them
    without = build_tiny(tmp_path / "plain").model  # the same model without the option: no title line
    assert "Titles of" not in without.tokenizer.decode(without.encode_users([1])["input_ids"][0])


def test_a_catalogue_without_titles_is_an_error_not_a_silent_prompt(tmp_path):
    model = _titled(tmp_path).model
    model.set_catalogue(model.item_catalogue["item_ids"])  # no titles
    with pytest.raises(ValueError, match="have no title"):
        model.recommend("u0", k=2)


def test_prefix_cache_is_exact_and_keyed_by_the_titles(tmp_path):
    model = _titled(tmp_path).model.eval()
    batch = model.encode_users([0, 1, 2])
    labels = torch.tensor([[3, 4, -100, -100], [5, -100, -100, -100], [6, 7, 8, -100]])
    want = model(**batch, labels=labels)
    want_recs = model.recommend(["u0", "u3", "new"], k=3, histories={"new": ["i2", "i4"]})
    store = model.enable_prefix_cache(max_bytes=1 << 24)
    got = model(**batch, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, **TOL)
    torch.testing.assert_close(got.loss, want.loss, **TOL)
    assert store.stats["computed"] == 3
    got_recs = model.recommend(["u0", "u3", "new"], k=3, histories={"new": ["i2", "i4"]})
    assert [r["items"] for r in got_recs] == [r["items"] for r in want_recs]
    for a, b in zip(got_recs, want_recs):
        torch.testing.assert_close(torch.tensor(a["scores"]), torch.tensor(b["scores"]), **TOL)
    # the key is the prefix's token ids: another history is another prefix once its titles are shown, never a hit
    cfg, tok = model.prompt_config, model.tokenizer
    hashes = lambda c: {encode_prompt(tok, user_item_prompt(0, h, c, history_titles=history_titles_from(  # noqa: E731
        h, model.item_catalogue["titles"], c)), c).prefix_hash for h in ([1, 2], [1, 3])}
    assert len(hashes(cfg)) == 2
    assert len(hashes(PromptConfig.from_dict({**cfg.to_dict(), "history_titles": False}))) == 1
