"""Prompt templates and encoding: placeholders are single tokens, counted, never dropped; free text is cut first."""
import random

import pytest

from glta_hf.configuration_glta import PROMPT_DEFAULTS
from glta_hf.prompts import (
    ITEM_TOKEN,
    SLOT_TOKEN,
    USER_TOKEN,
    PromptConfig,
    add_placeholder_tokens,
    collate_prompts,
    encode_prompt,
    item_text_prompt,
    placeholder_token_ids,
    prediction_messages,
    profile_messages,
    render_generation_prompt,
    render_prompt,
    user_item_prompt,
)
from glta_hf.testing import tiny_tokenizer


@pytest.fixture
def tok():
    t = tiny_tokenizer()
    add_placeholder_tokens(t)
    return t


def test_prompt_config_defaults_match_glta_config():
    assert PromptConfig().to_dict() == PROMPT_DEFAULTS
    assert PromptConfig.from_dict({"num_slots": 3, "unknown_key": 1}).num_slots == 3


def test_placeholders_are_single_special_tokens(tok):
    ids = add_placeholder_tokens(tok)
    assert add_placeholder_tokens(tok) == ids  # idempotent
    assert len(set(ids.values())) == 3 and min(ids.values()) >= 384  # appended after the LLM vocab
    with pytest.raises(ValueError, match="placeholder"):
        placeholder_token_ids(tiny_tokenizer())


def test_user_item_prompt_chat_template_layout(tok):
    cfg = PromptConfig(num_slots=4, max_history=2)
    p = user_item_prompt(3, [5, 9, 2], cfg, profile="Likes comedies.", prediction="Dramas next.", targets=[7])
    assert p.item_ids == [9, 2] and p.user_ids == [3]  # the last H history items
    text = render_prompt(tok, p, cfg)
    assert text.endswith("<|im_start|>assistant\n" + SLOT_TOKEN * 4)  # slots right after the generation prompt
    assert "Profile: Likes comedies." in text and "Prediction: Dramas next." in text
    enc = encode_prompt(tok, p, cfg)
    assert enc.num_placeholders == {USER_TOKEN: 1, ITEM_TOKEN: 2, SLOT_TOKEN: 4}
    assert enc.input_ids[-4:] == [placeholder_token_ids(tok)[SLOT_TOKEN]] * 4


def test_ablation_switches_and_plain_text(tok):
    cfg = PromptConfig(num_slots=2, include_profile=False, include_prediction=False, user_as_text=True,
                       use_chat_template=False)
    p = user_item_prompt(3, [1], cfg, profile="P", prediction="Q", user_text="alice")
    text = render_prompt(tok, p, cfg)
    assert "Profile" not in text and "Prediction" not in text and USER_TOKEN not in text and "User alice" in text
    assert "<|im_start|>" not in text and text.endswith("Answer: " + SLOT_TOKEN * 2)
    assert encode_prompt(tok, p, cfg).num_user_tokens == 0


def test_free_text_cannot_inject_placeholders(tok):
    cfg = PromptConfig(num_slots=2)
    p = user_item_prompt(0, [1], cfg, profile=f"evil {ITEM_TOKEN}{SLOT_TOKEN}{USER_TOKEN} {{braces}}")
    enc = encode_prompt(tok, p, cfg)
    assert enc.num_placeholders == {USER_TOKEN: 1, ITEM_TOKEN: 1, SLOT_TOKEN: 2}
    assert "{braces}" in render_prompt(tok, p, cfg)


def test_item_text_prompt_orders(tok):
    cfg = PromptConfig(num_slots=4)
    p = item_text_prompt([10, 11, 12], ["first", "second", "third"], cfg, rng=random.Random(0))
    assert p.targets == [10, 11, 12]  # slot t = the t-th described item
    assert sorted(p.item_ids) == [10, 11, 12] and p.item_ids != [10, 11, 12]  # tokens in another order
    text = render_prompt(tok, p, cfg)
    assert text.index("1. first") < text.index("2. second") < text.index("3. third")
    fixed = item_text_prompt([1, 2], ["a", "b"], cfg, token_order=[1, 0])
    assert fixed.item_ids == [2, 1]
    with pytest.raises(ValueError):
        item_text_prompt([1, 2, 3, 4, 5], ["x"] * 5, cfg)  # more items than slots


def test_truncation_cuts_free_text_never_placeholders(tok):
    cfg = PromptConfig(num_slots=4, max_description_tokens=1000)
    long = "aaa bbb " * 60
    p = item_text_prompt([1, 2, 3], [long, "short", long], cfg, token_order=[2, 0, 1])
    full = len(encode_prompt(tok, p, cfg, max_length=10_000).input_ids)
    enc = encode_prompt(tok, p, cfg, max_length=full - 100)
    assert len(enc.input_ids) <= full - 100
    assert enc.num_placeholders == {USER_TOKEN: 0, ITEM_TOKEN: 3, SLOT_TOKEN: 4}
    assert "short" in tok.decode(enc.input_ids)  # the longest fields were shortened first
    with pytest.raises(ValueError, match="without any free text"):
        encode_prompt(tok, p, cfg, max_length=50)


def test_per_field_caps(tok):
    cfg = PromptConfig(num_slots=2, max_profile_tokens=5)
    p = user_item_prompt(0, [], cfg, profile="word " * 100)
    text = tok.decode(encode_prompt(tok, p, cfg).input_ids)
    profile_line = [line for line in text.splitlines() if line.startswith("Profile:")][0]
    assert len(tok(profile_line[len("Profile:"):], add_special_tokens=False)["input_ids"]) <= 6


def test_collate_left_and_right(tok):
    cfg = PromptConfig(num_slots=3)
    a = encode_prompt(tok, user_item_prompt(0, [1, 2], cfg, targets=[4, 5]), cfg)
    b = encode_prompt(tok, user_item_prompt(1, [3], cfg), cfg)
    for side in ("left", "right"):
        batch = collate_prompts([a, b], tok.pad_token_id, 3, padding_side=side)
        assert batch["user_ids"].tolist() == [0, 1] and batch["item_ids"].tolist() == [1, 2, 3]
        assert batch["labels"].tolist() == [[4, 5, -100], [-100, -100, -100]]
        assert batch["attention_mask"].sum(1).tolist() == [len(a.input_ids), len(b.input_ids)]
        shorter = 0 if len(a.input_ids) < len(b.input_ids) else 1
        assert batch["attention_mask"][shorter, 0 if side == "left" else -1] == 0
    assert "labels" not in collate_prompts([b], tok.pad_token_id, 3)


def test_generation_messages(tok):
    msgs = profile_messages(["Toy Story (1995)", "Heat (1995)"])
    assert msgs[0]["role"] == "system" and "Toy Story" in msgs[1]["content"]
    pred = prediction_messages(["Toy Story (1995)"], profile="Likes animation.")
    assert "Likes animation." in pred[1]["content"]
    assert render_generation_prompt(tok, msgs).endswith("<|im_start|>assistant\n")


def _first_placeholder(tok, ids):
    return min(ids.index(i) for i in placeholder_token_ids(tok).values() if i in ids)


@pytest.mark.parametrize("layout", ["paper", "text_first"])
def test_prefix_length_ends_at_the_first_placeholder(tok, layout):
    cfg = PromptConfig(num_slots=3, layout=layout)
    enc = encode_prompt(tok, user_item_prompt(3, [1, 2], cfg, profile="Likes comedies.", prediction="Dramas."), cfg)
    assert enc.prefix_length == _first_placeholder(tok, enc.input_ids) > 0
    assert enc.input_ids[enc.prefix_length] == placeholder_token_ids(tok)[USER_TOKEN]
    prefix_text = tok.decode(enc.input_ids[: enc.prefix_length])
    # text_first: the whole free text (profile, prediction) and the instruction are in the cacheable prefix
    assert ("Likes comedies." in prefix_text and "Recommend the items" in prefix_text) == (layout == "text_first")
    suffix_text = tok.decode(enc.input_ids[enc.prefix_length:])
    assert ("Profile:" in suffix_text) == (layout == "paper")
    items = encode_prompt(tok, item_text_prompt([1, 2], ["first", "second"], cfg, token_order=[1, 0]), cfg)
    assert items.input_ids[items.prefix_length] == placeholder_token_ids(tok)[ITEM_TOKEN]
    assert ("second" in tok.decode(items.input_ids[: items.prefix_length])) == (layout == "text_first")


def test_text_first_same_content_other_order(tok):
    paper, first = PromptConfig(num_slots=2, layout="paper"), PromptConfig(num_slots=2, layout="text_first")
    pa = user_item_prompt(0, [1], paper, profile="P1", prediction="Q1")
    pb = user_item_prompt(0, [1], first, profile="P1", prediction="Q1")
    lines = lambda p: p.messages[1]["content"].format(**p.texts).splitlines()  # noqa: E731
    assert lines(pa)[1:3] == lines(pb)[1:3] == ["Profile: P1", "Prediction: Q1"]
    assert lines(pa)[3] == lines(pb)[0]  # the instruction: last in the paper's order, first in text_first
    assert lines(pb)[-1].endswith(USER_TOKEN + ITEM_TOKEN)  # placeholders back to back, after every word
    a, b = render_prompt(tok, pa, paper), render_prompt(tok, pb, first)
    assert b.index("Profile: P1") < b.index(USER_TOKEN) and a.index(USER_TOKEN) < a.index("Profile: P1")
    assert b.endswith(SLOT_TOKEN * 2)
    enc = encode_prompt(tok, user_item_prompt(0, [1, 2, 3], first, profile="P1"), first)
    # uncached part: <user>, 3 <item>, the chat template's closing tokens, the slots -- no words
    assert tok.decode(enc.input_ids[enc.prefix_length:]) == USER_TOKEN + ITEM_TOKEN * 3 + "<|im_end|>\n<|im_start|>assistant\n" + SLOT_TOKEN * 2
    as_text = PromptConfig(num_slots=2, layout="text_first", user_as_text=True)
    enc = encode_prompt(tok, user_item_prompt(0, [1], as_text, user_text="alice"), as_text)
    assert "User alice" in tok.decode(enc.input_ids[: enc.prefix_length])  # the user's name is cacheable text


def test_prefix_hash_identifies_the_prefix_tokens(tok):
    cfg = PromptConfig(num_slots=2, layout="text_first")
    enc = lambda user, hist, profile: encode_prompt(tok, user_item_prompt(user, hist, cfg, profile=profile), cfg)  # noqa: E731
    base = enc(0, [1, 2], "Likes comedies.")
    assert base.prefix_hash == enc(4, [3], "Likes comedies.").prefix_hash  # placeholders are not in the prefix
    assert base.prefix_hash != enc(0, [1, 2], "Likes dramas.").prefix_hash
    assert len(base.prefix_hash) == 32


def test_layout_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="layout"):
        PromptConfig(layout="sideways")
    assert PromptConfig.from_dict(PromptConfig(layout="text_first").to_dict()).layout == "text_first"
    assert PromptConfig.from_dict({"num_slots": 3}).layout == "paper"  # configs written before the option
    assert PromptConfig().layout == "text_first"  # fresh prompts: the default chosen on validation (BENCHMARKS 5.9)


def test_saved_configs_without_a_layout_load_in_the_paper_order():
    from glta_hf import GLTAConfig

    legacy = GLTAConfig.from_dict({"num_slots": 3, "prompt": {"num_slots": 3, "max_history": 5}})
    assert legacy.prompt["layout"] == "paper"
    assert GLTAConfig(num_slots=3).prompt["layout"] == "text_first"
    assert GLTAConfig.from_dict(GLTAConfig(num_slots=3).to_dict()).prompt["layout"] == "text_first"
