"""A checkpoint folder saved by the code before the GLTAModel / GLTAForRecommendation split (tests/fixtures/legacy_v1,
both head types) still loads and gives the same logits and rankings.

The fixture's config names its LLM ``tiny-llama-seed0``: ``glta_hf.testing.tiny_llama(seed=0)`` re-creates it offline,
so the test passes it as ``llm=``. "The same" is up to float32 rounding: the stored logits were computed on one CPU,
and another CPU's kernels (SIMD width, summation order) differ in the 4th decimal (issue 25: 0.4091 vs 0.4092), so
logits are compared with a tolerance scaled to their magnitude, and rankings position by position on the score of
the item ranked there -- two items whose scores tie within that tolerance may swap.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glta_hf import GLTAForRecommendation
from glta_hf.testing import tiny_llama

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_v1"


@pytest.mark.parametrize("variant", ["linear_linear", "factorized_mlp"])
def test_legacy_checkpoint_gives_identical_logits(variant):
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    batch = {k[len("input."):]: v for k, v in expected.items() if k.startswith("input.")}
    causal, _ = tiny_llama(seed=0)
    model = GLTAForRecommendation.from_pretrained(FIXTURE / variant, llm=causal.model)
    assert model.config.head == variant.split("_")[0] and model.config.projector == variant.split("_")[1]
    with torch.no_grad():
        logits = model(**batch).logits
    stored = expected[f"{variant}.logits"]
    tol = _tolerance(stored)
    torch.testing.assert_close(logits, stored, atol=tol, rtol=1e-3)
    items, _ = model.rank(**batch, k=3, decoding="all_slots")
    assert_same_ranking(items, expected[f"{variant}.all_slots_items"], model.all_slot_scores(**batch), tol)


def _tolerance(values: torch.Tensor) -> float:
    """Float32 across CPU kernels: 1e-3 of the values' scale (the differences seen are ~1e-4 of it)."""
    return 1e-3 * max(1.0, float(values.abs().max()))


def assert_same_ranking(items: torch.Tensor, stored: torch.Tensor, scores: torch.Tensor, tol: float) -> None:
    """``items`` ranks like ``stored`` (B, k): at each position the two items' scores agree within ``tol``, and where
    the stored item's score is more than ``tol`` away from every other item's, it is the same item."""
    assert items.shape == stored.shape
    got, want = scores.gather(1, items), scores.gather(1, stored)
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
    for row in range(stored.shape[0]):
        for pos in range(stored.shape[1]):
            gaps = (scores[row] - want[row, pos]).abs()
            gaps[stored[row, pos]] = float("inf")
            if bool((gaps > tol).all()):  # no near tie: the item itself must match
                assert int(items[row, pos]) == int(stored[row, pos]), (row, pos)


def test_ranking_comparison_tolerates_ties_only():
    scores = torch.tensor([[3.0, 2.0, 2.0 + 1e-6, 0.0]])
    assert_same_ranking(torch.tensor([[0, 2, 1]]), torch.tensor([[0, 1, 2]]), scores, tol=1e-4)  # a tie swapped
    with pytest.raises(AssertionError):
        assert_same_ranking(torch.tensor([[1, 0, 2]]), torch.tensor([[0, 1, 2]]), scores, tol=1e-4)  # a real swap
    with pytest.raises(AssertionError):
        assert_same_ranking(torch.tensor([[0, 1, 3]]), torch.tensor([[0, 1, 2]]), scores, tol=1e-4)


def test_logit_tolerance_covers_cross_cpu_rounding_not_real_changes():
    stored = torch.tensor([0.4092, -1.25, 2.0])
    torch.testing.assert_close(torch.tensor([0.4091, -1.2501, 2.0001]), stored, atol=_tolerance(stored), rtol=1e-3)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(torch.tensor([0.4192, -1.25, 2.0]), stored, atol=_tolerance(stored), rtol=1e-3)


def test_legacy_tensor_names_load_through_load_state_dict():
    """A Trainer resuming from an old checkpoint calls ``model.load_state_dict``: the factorized head's old top-level
    ``item_bias`` must land in ``head.item_bias``."""
    causal, _ = tiny_llama(seed=0)
    model = GLTAForRecommendation.from_pretrained(FIXTURE / "factorized_mlp", llm=causal.model)
    old = load_file(str(FIXTURE / "factorized_mlp" / "model.safetensors"))
    assert "item_bias" in old and "head.item_bias" not in old
    with torch.no_grad():
        model.head.item_bias.zero_()
    result = model.load_state_dict(old, strict=False)
    assert not [k for k in result.missing_keys if not k.startswith("model.llm.")] and not result.unexpected_keys
    assert torch.equal(model.item_bias, old["item_bias"])
