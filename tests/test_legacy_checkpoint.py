"""A checkpoint folder saved by the code before the GLTAModel / GLTAForRecommendation split (tests/fixtures/legacy_v1,
both head types) still loads and gives identical logits and rankings.

The fixture's config names its LLM ``tiny-llama-seed0``: ``glta_hf.testing.tiny_llama(seed=0)`` re-creates it offline,
so the test passes it as ``llm=``.
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
    assert torch.equal(logits, expected[f"{variant}.logits"])
    items, _ = model.rank(**batch, k=3, decoding="all_slots")
    assert torch.equal(items, expected[f"{variant}.all_slots_items"])


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
