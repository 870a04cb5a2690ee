"""The serving span (``recommend()`` with the prefix cache): everything before the slots is served from the store
under a content key, with results equal to the uncached ``recommend()``; a changed projector or node table is a
new key (never a stale entry); training, evaluation and ``rank`` keep the text span; the cheap per-request checks
(placeholder ids, ``check_cacheable``) still catch what they caught."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import build_tiny
from glta_hf.prefix_cache import PrefixCacheError, cached_slot_hidden_states, check_cacheable, is_slot_span_key
from glta_hf.prompts import add_placeholder_tokens, encode_prompt, placeholder_token_ids, user_item_prompt
from glta_hf.testing import tiny_llama, tiny_tokenizer

TOL = dict(atol=1e-5, rtol=1e-5)
#: known users, a known user with another history, a folded-in unknown user (all in one request)
USERS = ["u0", "u2", "u3", "new"]
HISTORIES = {"u3": ["i1", "i5", "i7"], "new": ["i2", "i4"]}


def _recommend(model):
    return model.recommend(USERS, k=3, histories=HISTORIES, batch_size=3)  # two batches: 3 + 1


def _assert_same(got, want):
    assert [r["items"] for r in got] == [r["items"] for r in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.tensor(a["scores"]), torch.tensor(b["scores"]), **TOL)


def _slot_keys(store):
    return [key for key in store._memory if is_slot_span_key(key)]


@pytest.mark.parametrize("graph_residual", [False, True])
@pytest.mark.parametrize("head", ["linear", "factorized"])
@pytest.mark.parametrize("layout", ["paper", "text_first"])
def test_serving_span_recommend_equals_uncached(tmp_path, layout, head, graph_residual):
    tiny = build_tiny(tmp_path, head=head, prompt={"layout": layout}, graph_residual=graph_residual)
    model = tiny.model.eval()
    if graph_residual:
        with torch.no_grad():
            model.graph_residual.scale.fill_(0.7)
    want = _recommend(model)

    store = model.enable_prefix_cache(max_bytes=1 << 24)
    _assert_same(_recommend(model), want)
    keys = _slot_keys(store)
    assert len(keys) == len(store) == store.stats["computed"] == len(USERS)  # one serving span per user, no text
    assert sorted(str(k.user) for k in keys) == ["*", "0", "2", "3"]  # the fold-in user is keyed by content alone
    num_slots = model.config.num_slots
    lengths = sorted(store._memory[k].mask.shape[1] for k in keys)
    prompts = sorted(int(m.sum()) - num_slots for m in model.encode_users([0, 2], None, None)["attention_mask"])
    assert set(prompts) <= set(lengths)  # each entry holds the whole prompt but the slots: only the slots run

    _assert_same(_recommend(model), want)  # served from the store ...
    assert store.stats["computed"] == len(USERS) and store.stats["hits_memory"] == len(USERS)  # ... not recomputed


@pytest.mark.parametrize("change", ["item_projector", "user_projector", "item_embeddings"])
def test_a_changed_projector_or_node_table_is_a_new_key_never_a_stale_entry(tmp_path, change):
    model = build_tiny(tmp_path, prompt={"layout": "text_first"}).model.eval()
    store = model.enable_prefix_cache()
    _recommend(model)
    computed = store.stats["computed"]
    with torch.no_grad():
        if change == "item_embeddings":
            model.item_embeddings[1] += 0.5  # in u0's (and the fold-in user's) history: their spans change
        else:
            getattr(model, change).output_layer.weight.mul_(1.5)
    got = _recommend(model)
    assert store.stats["computed"] > computed  # new content, new keys

    model.disable_prefix_cache()
    want = _recommend(model)  # a fresh uncached run with the changed weights
    _assert_same(got, want)


def test_slot_vectors_are_not_in_the_key_and_still_count(tmp_path):
    """The slots run per request, so changing them reuses every span yet changes the results."""
    model = build_tiny(tmp_path, prompt={"layout": "text_first"}).model.eval()
    store = model.enable_prefix_cache()
    _recommend(model)
    with torch.no_grad():
        model.slot_embeddings.mul_(-1.0)
    computed, hits = store.stats["computed"], store.stats["hits_memory"]
    got = _recommend(model)
    assert store.stats["computed"] == computed and store.stats["hits_memory"] == hits + len(USERS)
    model.disable_prefix_cache()
    _assert_same(got, _recommend(model))


def test_training_evaluation_and_rank_keep_the_text_span(tmp_path):
    tiny = build_tiny(tmp_path, prompt={"layout": "text_first"})
    model = tiny.model
    store = model.enable_prefix_cache()
    model.set_trainable("user")
    model.train()
    batch = tiny.batch(users=(0, 1), histories=((1, 2, 3), (4,)), targets=((5, 6), (7,)))
    model(**batch).loss.backward()  # a training step
    model.eval()
    users = torch.tensor([0, 1, 2, 3])
    model.ranker(batch_size=2)(users, 3)  # the Trainer's validation ranking
    model.scorer(batch_size=2)(users)
    model.rank(**model.encode_users([4]), k=3)
    assert len(store) > 0 and _slot_keys(store) == []  # text prefixes only

    model.recommend(["u0", "u1"], k=3)
    assert {k.user for k in _slot_keys(store)} == {0, 1}  # serving spans only from recommend()

    encoded = model.encode_users([0])
    with pytest.raises(PrefixCacheError, match="no-grad"):  # no gradient could reach the cached projector outputs
        cached_slot_hidden_states(model.model, store, encoded["input_ids"], encoded["attention_mask"],
                                  encoded["user_ids"], encoded["item_ids"], llm_key=model.model.llm_fingerprint(), layout="text_first", span="slots")
    with pytest.raises(PrefixCacheError, match="prefix_span"):
        model.slot_hidden_states(**encoded, prefix_span="everything")


def test_placeholder_ids_need_no_vocabulary_dict_and_keep_their_errors():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="lacks the GLTA placeholder"):
        placeholder_token_ids(tok)
    ids = add_placeholder_tokens(tok)

    def no_vocab():
        raise AssertionError("get_vocab() builds the whole vocabulary: not per prompt")

    tok.get_vocab = no_vocab
    assert placeholder_token_ids(tok) == ids
    encode_prompt(tok, user_item_prompt(0, [1, 2], _prompt_config()), _prompt_config())


def _prompt_config():
    from glta_hf.prompts import PromptConfig

    return PromptConfig(num_slots=2, max_history=2)


def test_check_cacheable_sees_changes_after_a_remembered_scan():
    causal, _ = tiny_llama(seed=4)
    llm = causal.model.requires_grad_(False)
    check_cacheable(llm)
    check_cacheable(llm)  # remembered
    layer = llm.layers[0].mlp
    layer.lora_A = nn.Linear(2, 2).requires_grad_(False)  # registered in place (as PEFT injects): a new scan
    with pytest.raises(PrefixCacheError, match="LoRA"):
        check_cacheable(llm)
    del layer.lora_A
    check_cacheable(llm)
    # a parameter swapped behind torch's registration hooks is still seen (the remembered one left its module)
    layer.down_proj._parameters["weight"] = nn.Parameter(layer.down_proj.weight.detach().clone())
    with pytest.raises(PrefixCacheError, match="require grad"):
        check_cacheable(llm)
    layer.down_proj.weight.requires_grad_(False)
    check_cacheable(llm)
    llm.layers[1].self_attn.o_proj.weight.requires_grad_(True)  # a flag flipped on a remembered parameter
    with pytest.raises(PrefixCacheError, match="require grad"):
        check_cacheable(llm)
