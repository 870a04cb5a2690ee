"""The graph-score residual (``config.graph_residual``): logits = GLLM logits + scale * (e_u . E_i), every path."""
from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from glta_hf import GLTAConfig, GLTAForRecommendation
from glta_hf.decoding import decoder_names
from glta_hf.prompts import collate_prompts, encode_prompt, item_text_prompt


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.fixture(params=["linear", "factorized"])
def residual(request, tmp_path):
    tiny = build_tiny(tmp_path, head=request.param, graph_residual=True)
    with torch.no_grad():
        tiny.model.graph_residual.scale.fill_(0.7)
        tiny.model.graph_residual.gate.fill_(0.5)  # a trained gate: the head's term is in play
    return tiny


def test_logits_are_the_head_plus_the_scaled_graph_score(residual):
    model, batch = residual.model, residual.batch(users=(0, 3))
    with torch.no_grad():
        out = model(**_inputs(batch))
        plain = model.score_slots(out.slot_hidden_states)  # no graph_users: the head alone
        graph = 0.7 * residual.user_embeddings[[0, 3]] @ residual.item_embeddings.T  # (B, |I|)
    torch.testing.assert_close(out.logits, 0.5 * plain + graph[:, None, :], atol=1e-5, rtol=1e-5)
    assert graph.abs().max() > 0.1  # the term is not negligible, so the comparison above can fail


def test_every_decoder_and_the_chunked_paths_see_the_graph_term(residual):
    model, batch = residual.model, residual.batch()
    with torch.no_grad():
        logits = model(**_inputs(batch)).logits
        plain_loss = model(**batch).loss
        for decoding in decoder_names():
            if decoding == "autoregressive":
                continue
            expected = model.rank_from_logits(logits, k=3, decoding=decoding)[0]
            assert model.rank(**_inputs(batch), k=3, decoding=decoding)[0].tolist() == expected.tolist()
        scores = model.all_slot_scores(**_inputs(batch))
        model.config.rank_chunk_size = model.config.ce_chunk_size = 5
        for decoding in decoder_names():
            if decoding == "autoregressive":
                continue
            expected = model.rank_from_logits(logits, k=3, decoding=decoding)[0]
            assert model.rank(**_inputs(batch), k=3, decoding=decoding)[0].tolist() == expected.tolist()
        torch.testing.assert_close(model.all_slot_scores(**_inputs(batch)), scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(**batch).loss, plain_loss, atol=1e-5, rtol=1e-5)
        items, _ = model.rank(**_inputs(batch), k=3, decoding="autoregressive")
        assert items.shape == (2, 3)


def test_the_scale_trains_in_the_user_stage_only(residual):
    model = residual.model
    assert "graph_residual.scale" in model.set_trainable("user")
    assert "graph_residual.scale" not in model.set_trainable("item")
    model.set_trainable("user")
    loss = model(**residual.batch()).loss
    loss.backward()
    assert model.graph_residual.scale.grad is not None and model.graph_residual.scale.grad.abs() > 0


def test_item_stage_prompts_have_no_user_and_no_graph_term(residual):
    model, tok = residual.model, residual.tokenizer
    cfg = model.prompt_config
    encoded = [encode_prompt(tok, item_text_prompt([1, 2], ["Item one.", "Item two."], cfg), cfg)]
    batch = collate_prompts(encoded, tok.pad_token_id, cfg.num_slots)
    with torch.no_grad():
        out = model(**_inputs(batch))
        torch.testing.assert_close(out.logits, model.score_slots(out.slot_hidden_states))


def test_rank_from_hidden_refuses_to_drop_the_graph_term_silently(residual):
    model, batch = residual.model, residual.batch()
    with torch.no_grad():
        hidden = model(**_inputs(batch)).slot_hidden_states
        with pytest.raises(ValueError, match="graph residual: pass graph_users"):
            model.rank_from_hidden(hidden, k=3)
        users = model.graph_user_vectors(batch["input_ids"], batch["user_ids"])
        items, _ = model.rank_from_hidden(hidden, k=3, graph_users=users)
    assert items.tolist() == model.rank(**_inputs(batch), k=3)[0].tolist()


def test_save_load_and_recommend_keep_the_residual(residual, tmp_path):
    model = residual.model
    model.save_pretrained(tmp_path / "ckpt")
    loaded = GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.graph_residual and float(loaded.graph_residual.scale) == pytest.approx(0.7)
    batch = _inputs(residual.batch())
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert loaded.recommend(["u0", "u2"], k=3) == model.recommend(["u0", "u2"], k=3)
    folded = loaded.recommend("new", k=3, histories={"new": ["i1", "i2"]})  # fold-in users get a graph term too
    assert len(folded[0]["items"]) == 3


def test_residual_needs_the_user_token():
    with pytest.raises(ValueError, match="graph_residual needs the <user> token"):
        GLTAConfig(graph_residual=True, prompt={"user_as_text": True})


def test_a_model_without_the_option_has_no_residual_tensor(tmp_path):
    model = build_tiny(tmp_path).model
    assert model.graph_residual is None
    assert not any(name.startswith("graph_residual") for name in model.state_dict())


def test_cached_prefixes_give_the_same_residual_logits(tmp_path):
    tiny = build_tiny(tmp_path, head="factorized", graph_residual=True, prompt={"layout": "text_first"})
    model, batch = tiny.model, _inputs(tiny.batch(users=(0, 2)))
    with torch.no_grad():
        plain = model(**batch).logits
        model.enable_prefix_cache()
        cached = model(**batch).logits
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
