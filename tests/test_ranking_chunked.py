"""Chunked ranking (``GLTAConfig.rank_chunk_size``): the same items and scores as decoding from full logits.

Every decoding, both heads, chunk sizes 1 / 7 / > |I|, with and without seen items; exact ties (zeroed head, integer
biases) must come out in the same order (score desc, lower item row first) on both paths.
"""
from contextlib import contextmanager

import pytest
import torch
from conftest import build_tiny

from glta_hf import GLTAConfig, GLTAForRecommendation
from glta_hf.decoding import decoder_names, get_decoder, topk_first
from glta_hf.testing import tiny_llama

SEEN = [[0, 1, 2, 3], [4, 5]]
CHUNKS = (1, 7, 13)  # 13 > |I| = 12: the plain path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny models (12 items, L=4) per head, with random biases so no two items score alike."""
    out = {}
    for head in ("linear", "factorized"):
        tiny = build_tiny(tmp_path_factory.mktemp(head), head=head)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            bias = tiny.model.head.bias if head == "linear" else tiny.model.item_bias
            bias.copy_(torch.randn(bias.shape, generator=gen) * 0.5)
        out[head] = tiny
    return out


@contextmanager
def rank_chunk(model, chunk):
    old = model.config.rank_chunk_size
    model.config.rank_chunk_size = chunk
    try:
        yield
    finally:
        model.config.rank_chunk_size = old


def _inputs(tiny):
    return {k: v for k, v in tiny.batch().items() if k != "labels"}


def _k(decoding, seen):
    return 4 if get_decoder(decoding).one_item_per_slot else (8 if seen else 12)


def _assert_same(plain, chunked):
    assert chunked[0].tolist() == plain[0].tolist()
    torch.testing.assert_close(chunked[1], plain[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["linear", "factorized"])
@pytest.mark.parametrize("decoding", decoder_names())
@pytest.mark.parametrize("seen", [SEEN, None])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_rank_equals_plain(models, head, decoding, seen, chunk):
    tiny = models[head]
    batch, k = _inputs(tiny), _k(decoding, seen)
    plain = tiny.model.rank(**batch, k=k, seen=seen, decoding=decoding)
    with rank_chunk(tiny.model, chunk):
        chunked = tiny.model.rank(**batch, k=k, seen=seen, decoding=decoding)
    _assert_same(plain, chunked)
    if seen:
        assert not any(set(r) & set(s) for r, s in zip(chunked[0].tolist(), seen))


@pytest.mark.parametrize("head", ["linear", "factorized"])
@pytest.mark.parametrize("decoding", decoder_names())
def test_ties_same_order_lower_row_first(tmp_path, head, decoding):
    """Zeroed head + integer biases: every slot scores items by the bias alone, with exact ties."""
    tiny = build_tiny(tmp_path, head=head)
    model = tiny.model
    bias_values = torch.tensor([1.0, 0, 1, 2, 0, 2, 1, 0, 2, 1, 0, 1])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        (model.head.bias if head == "linear" else model.item_bias).copy_(bias_values)
    batch, k = _inputs(tiny), _k(decoding, SEEN)
    plain = model.rank(**batch, k=k, seen=SEEN, decoding=decoding)
    for chunk in (1, 5, 7, 13):
        with rank_chunk(model, chunk):
            _assert_same(plain, model.rank(**batch, k=k, seen=SEEN, decoding=decoding))
    for row, seen in zip(plain[0].tolist(), SEEN):
        expected = sorted((j for j in range(12) if j not in seen), key=lambda j: (-bias_values[j], j))[:k]
        assert row == expected


@pytest.mark.parametrize("head", ["linear", "factorized"])
def test_rank_from_hidden_many_chunks(head):
    """No LLM: random slot states against a 257-item head, chunk sizes from 1 to 256, random seen masks."""
    causal, tokenizer = tiny_llama()
    gen = torch.Generator().manual_seed(0)
    model = GLTAForRecommendation.from_components(
        causal.model, tokenizer, torch.randn(3, 8, generator=gen), torch.randn(257, 8, generator=gen),
        llm_name_or_path="tiny", prompt={"num_slots": 5}, head=head,
    ).eval()
    with torch.no_grad():
        bias = model.head.bias if head == "linear" else model.item_bias
        bias.copy_(torch.randn(bias.shape, generator=gen))
    hidden = torch.randn(4, 5, 32, generator=gen)
    seen = torch.rand(4, 257, generator=gen) < 0.3
    logits = model.score_slots(hidden)
    for decoding, k in (("first_k", 5), ("first_logit", 40), ("all_slots", 40)):
        plain = model.rank_from_logits(logits, k=k, seen_mask=seen, decoding=decoding)
        for chunk in (1, 7, 64, 256, 300):
            _assert_same(plain, model.rank_from_hidden(hidden, k=k, seen_mask=seen, decoding=decoding, chunk_size=chunk))


def test_scorer_ranker_recommend_chunked(models):
    model = models["factorized"].model
    users = torch.tensor([0, 1, 2])
    plain_scores = model.scorer(batch_size=2)(users)
    plain_ranked = model.ranker(decoding="first_k", batch_size=2)(users, 3)
    plain_recs = model.recommend(["u0", "u1"], k=5, decoding="all_slots")
    with rank_chunk(model, 5):
        torch.testing.assert_close(model.scorer(batch_size=2)(users), plain_scores, atol=1e-5, rtol=0)
        assert model.ranker(decoding="first_k", batch_size=2)(users, 3).tolist() == plain_ranked.tolist()
        recs = model.recommend(["u0", "u1"], k=5, decoding="all_slots")
    assert [r["items"] for r in recs] == [r["items"] for r in plain_recs]


def test_chunked_rank_never_builds_full_logits(models, monkeypatch):
    model = models["linear"].model
    batch = _inputs(models["linear"])
    widths = []
    original = GLTAForRecommendation.head_chunks

    def spy(self, slot_hidden, chunk_size, graph_users=None, **kwargs):
        chunks = original(self, slot_hidden, chunk_size, graph_users, **kwargs)

        def recorded(slots):
            for start, logits in chunks(slots):
                widths.append(logits.shape[-1])
                yield start, logits

        return recorded

    def forbidden(*args, **kwargs):
        raise AssertionError("full (B, L, |I|) logits built")

    monkeypatch.setattr(GLTAForRecommendation, "head_chunks", spy)
    monkeypatch.setattr(model, "score_slots", forbidden)
    with rank_chunk(model, 5):
        for decoding in decoder_names():
            model.rank(**batch, k=3, seen=SEEN, decoding=decoding)
        model.scorer()(torch.tensor([0]))
    assert widths and max(widths) <= 5


def test_topk_first_tie_rule():
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (6, 30), generator=gen).float()
    values[0, :10] = float("-inf")
    for k in (1, 3, 10, 30):
        vals, idx = topk_first(values, k)
        for row in range(values.shape[0]):
            expected = sorted(range(30), key=lambda j: (-values[row, j].item(), j))[:k]
            assert idx[row].tolist() == expected
            assert vals[row].tolist() == values[row, expected].tolist()


def test_rank_chunk_size_config():
    assert GLTAConfig(rank_chunk_size="64").rank_chunk_size == 64
    assert GLTAConfig().rank_chunk_size is None
    assert GLTAConfig.from_dict(GLTAConfig(rank_chunk_size=8).to_dict()).rank_chunk_size == 8
    with pytest.raises(ValueError, match="rank_chunk_size"):
        GLTAConfig(rank_chunk_size=0)
