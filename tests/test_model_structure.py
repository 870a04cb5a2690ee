"""The model's structure and contracts after the GLTAModel / GLTAForRecommendation split: a head registered from
outside the library trains and decodes, scores come in rank order for every decoder, no deprecated transformers API
is called from glta_hf, forward honours return_dict and rejects unknown arguments, push_to_hub=True on save."""
import warnings

import pytest
import torch
from conftest import build_tiny
from test_hub import Recorder
from torch import nn

from glta_hf import CheckpointError, GLTAConfig, GLTAForRecommendation
from glta_hf.components import REGISTRY, GLTAHead, register_component
from glta_hf.decoding import DECODERS, Decoder, decoder_names, register_decoder, slot_candidates
from glta_hf.modeling_glta import GLTAModel, GLTAModelOutput


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.fixture
def cosine_head():
    """A head defined here, not in glta_hf: scaled cosine similarity between a slot query and the frozen E_i."""

    @register_component("head", "test-cosine")
    class CosineHead(GLTAHead):
        def __init__(self, config):
            super().__init__()
            self.query = nn.Linear(config.llm_hidden_size, config.node_dim)
            self.scale = nn.Parameter(torch.tensor(5.0))

        def reset_parameters(self):
            nn.init.normal_(self.query.weight, std=0.02)
            nn.init.zeros_(self.query.bias)

        def operands(self, slot_hidden, item_embeddings):
            q = nn.functional.normalize(self.query(slot_hidden.float()), dim=-1) * self.scale
            return q, nn.functional.normalize(item_embeddings.float(), dim=-1), None

    yield CosineHead
    del REGISTRY["head"]["test-cosine"]


def test_a_head_registered_outside_the_library_trains_and_decodes(tmp_path, cosine_head):
    tiny = build_tiny(tmp_path, head="test-cosine")
    model = tiny.model
    assert isinstance(model.head, cosine_head) and model.item_bias is None
    trainable = model.set_trainable("user")
    assert {"head.query.weight", "head.scale", "model.slot_embeddings"} <= set(trainable)
    batch = tiny.batch()
    before = model.head.query.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.head.query.weight)
    for decoding in decoder_names():
        items, scores = model.rank(**_inputs(batch), k=3, decoding=decoding)
        assert items.shape == (2, 3) and all(len(set(r)) == 3 for r in items.tolist())
    with torch.no_grad():  # the chunked paths serve the new head too
        plain_loss = model(**batch).loss
        plain = model.rank_from_logits(model(**_inputs(batch)).logits, k=3, decoding="all_slots")[0]
        model.config.rank_chunk_size, model.config.ce_chunk_size = 5, 5
        chunked, _ = model.rank(**_inputs(batch), k=3, decoding="all_slots")
        assert chunked.tolist() == plain.tolist()
        torch.testing.assert_close(model(**batch).loss, plain_loss, atol=1e-5, rtol=1e-5)
    model.config.rank_chunk_size = model.config.ce_chunk_size = None
    model.save_pretrained(tmp_path / "ckpt")
    loaded = GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded(**_inputs(batch)).logits, model(**_inputs(batch)).logits)


def test_unknown_head_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"head must be one of \('linear', 'factorized'"):
        GLTAConfig(head="nosuch")


@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("head", ["linear", "factorized"])
def test_scores_are_in_rank_order_for_every_decoder(tmp_path, head, chunk):
    tiny = build_tiny(tmp_path, head=head, rank_chunk_size=chunk)
    with torch.no_grad():
        for param in (tiny.model.head.bias, tiny.model.item_bias):
            if param is not None:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    for decoding in decoder_names():
        for rec in tiny.model.recommend(["u0", "u1", "u2", "u5"], k=4, decoding=decoding):
            assert rec["scores"] == sorted(rec["scores"], reverse=True), (decoding, rec)
            if decoding != "all_slots":  # log-probabilities; all_slots is log sum_t p_t(i) <= log L
                assert all(s <= 0 for s in rec["scores"])


def test_first_k_score_is_the_cumulative_slot_log_prob(tiny):
    batch = _inputs(tiny.batch())
    items, scores = tiny.model.rank(**batch, k=4, decoding="first_k")
    logprobs = torch.log_softmax(tiny.model(**batch).logits, dim=-1)
    per_slot = logprobs.gather(2, items.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(scores, per_slot.cumsum(dim=1), atol=1e-5, rtol=0)


def test_no_deprecated_transformers_api_from_glta_hf(tiny):
    """FutureWarning / DeprecationWarning raised on behalf of a glta_hf caller become errors in forward, backward,
    every decoder (the autoregressive one reuses the LLM's KV cache) and recommend."""
    batch = tiny.batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("error", category=category, module=r"glta_hf\..*")
            warnings.filterwarnings("error", category=category, module=r"torch\.nn\.modules\.module")
        tiny.model.set_trainable("user")
        tiny.model(**batch).loss.backward()
        for decoding in decoder_names():
            tiny.model.rank(**_inputs(batch), k=3, decoding=decoding)
        tiny.model.recommend("u0", k=2)


def test_forward_honours_return_dict_and_rejects_unknown_arguments(tiny):
    batch = tiny.batch()
    as_dict = tiny.model(**batch)
    as_tuple = tiny.model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 3
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    with pytest.raises(TypeError, match="unexpected"):
        tiny.model(**batch, output_attentions=True)
    base = tiny.model.model(**_inputs(batch))
    assert isinstance(base, GLTAModelOutput)
    torch.testing.assert_close(base.slot_hidden_states, as_dict.slot_hidden_states)


def test_no_split_modules_come_from_the_llm(tiny):
    assert tiny.model._no_split_modules == type(tiny.model.llm)._no_split_modules == ["LlamaDecoderLayer"]


def test_save_pretrained_push_to_hub(tmp_path, monkeypatch):
    hub = Recorder(monkeypatch)
    model = build_tiny(tmp_path).model
    model.save_pretrained(tmp_path / "glta-local", push_to_hub=True, repo_id="org/glta-tiny", commit_message="up")
    assert (tmp_path / "glta-local" / "model.safetensors").is_file()
    assert hub.calls == [("create_repo", "org/glta-tiny", True), ("create_commit", "org/glta-tiny", "up")]
    assert {"model.safetensors", "modeling_glta.py", "decoding.py", "components.py", "checkpoint.py"} <= set(hub.operations)
    hub.calls.clear()
    model.save_pretrained(tmp_path / "named-after-folder", push_to_hub=True)  # transformers: repo id = folder name
    assert hub.calls[0] == ("create_repo", "named-after-folder", True)


def test_from_pretrained_maps_dtype_and_rejects_unknown_arguments(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "ckpt")
    loaded = GLTAForRecommendation.from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert loaded.config.llm_dtype == "bfloat16" and next(loaded.llm.parameters()).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="output_attentions"):
        GLTAForRecommendation.from_pretrained(tmp_path / "ckpt", output_attentions=True)


def test_the_recommender_holds_the_base_model_and_its_head(tiny):
    """LLaVA's shape: ``GLTAForRecommendation.model`` is a ``GLTAModel`` (named by ``base_model_prefix``) that owns the
    LLM, node tables, projectors and slot vectors; the head and the graph residual belong to the task model."""
    model = tiny.model
    assert isinstance(model.model, GLTAModel) and not isinstance(model, GLTAModel)
    assert model.base_model_prefix == "model" and model.base_model is model.model
    children = dict(model.named_children())
    assert set(children) == {"model", "head"}  # graph_residual is None without config.graph_residual
    assert {"llm", "user_projector", "item_projector"} <= dict(model.model.named_children()).keys()
    assert model.llm is model.model.llm and model.item_embeddings is model.model.item_embeddings
    with torch.no_grad():
        out = model(**_inputs(tiny.batch()))
        torch.testing.assert_close(model.score_slots(out.slot_hidden_states), out.logits)

    with pytest.raises(CheckpointError, match="GLTAForRecommendation"):  # never transformers' save of the LLM
        model.model.save_pretrained("unused")


def test_the_base_model_runs_the_llm_only_through_run_llm(tiny, monkeypatch):
    """``run_llm`` is the single place the LLM runs: uncached forward, cached prefixes (both spans) and the
    autoregressive decoder all go through it (counted by wrapping it; the LLM's own forward is counted too)."""
    base = tiny.model.model
    calls = {"run_llm": 0, "llm": 0}
    run_llm = base.run_llm
    llm_forward = base.llm.forward

    def counted_run_llm(*args, **kwargs):
        calls["run_llm"] += 1
        return run_llm(*args, **kwargs)

    def counted_llm(*args, **kwargs):
        calls["llm"] += 1
        return llm_forward(*args, **kwargs)

    monkeypatch.setattr(base, "run_llm", counted_run_llm)
    monkeypatch.setattr(base.llm, "forward", counted_llm)
    batch = _inputs(tiny.batch())
    with torch.no_grad():
        tiny.model(**batch)
        tiny.model.rank(**batch, k=3, decoding="autoregressive")
        tiny.model.enable_prefix_cache()
        tiny.model(**batch)
        tiny.model.recommend(["u0", "u1"], k=2)
    assert calls["run_llm"] == calls["llm"] > 4


@pytest.fixture
def last_slot_decoder():
    """A decoder defined here, not in glta_hf: the k best unseen items of the LAST slot (one file, one class)."""

    @register_decoder("test-last-slot")
    class LastSlot(Decoder):
        def decode(self, chunks, k, blocked):
            scores, items = slot_candidates(chunks, slice(-1, None), k, blocked)
            return items[:, 0], scores[:, 0]

    yield LastSlot
    del DECODERS["test-last-slot"]


def test_a_decoder_registered_outside_the_library_serves_every_entry_point(tiny, last_slot_decoder):
    import argparse

    from glta_hf.cli_args import decoding_name
    from glta_hf.metrics import usable_ks
    from glta_hf.training_args import GLTATrainingArguments

    model, batch = tiny.model, _inputs(tiny.batch())
    with torch.no_grad():
        logits = model(**batch).logits
    items, scores = model.rank(**batch, k=6, decoding="test-last-slot")  # more than L=4: not one item per slot
    assert items.tolist() == logits[:, -1].topk(6).indices.tolist()
    torch.testing.assert_close(scores, torch.log_softmax(logits[:, -1], dim=-1).topk(6).values)
    assert model.recommend("u0", k=6, decoding="test-last-slot")[0]["items"]
    ranked = model.ranker(decoding="test-last-slot")(torch.tensor([0, 1]), 3)
    assert ranked.shape == (2, 3)
    assert usable_ks((5, 10, 20), "test-last-slot", num_slots=4) == (5, 10, 20)
    assert decoding_name("test-last-slot") == "test-last-slot"
    assert GLTATrainingArguments(output_dir="unused", eval_decoding="test-last-slot").eval_decoding == "test-last-slot"
    del DECODERS["test-last-slot"]
    try:
        with pytest.raises(argparse.ArgumentTypeError):
            decoding_name("test-last-slot")
    finally:
        DECODERS["test-last-slot"] = last_slot_decoder()


def test_one_item_per_slot_is_the_decoders_property(tiny):
    from glta_hf.decoding import ArgumentError, get_decoder
    from glta_hf.metrics import usable_ks

    limited = [name for name in decoder_names() if get_decoder(name).one_item_per_slot]
    assert limited == ["first_k", "autoregressive"]
    for name in decoder_names():
        assert usable_ks((2, 4, 6), name, num_slots=4) == ((2, 4) if name in limited else (2, 4, 6))
        if name in limited:
            with pytest.raises(ArgumentError, match="at most num_slots=4"):
                tiny.model.recommend("u0", k=5, decoding=name)
