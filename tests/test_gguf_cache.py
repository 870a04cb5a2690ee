"""The cached GGUF conversion (glta_hf.backbone.load_gguf_cached) on a tiny LLaMA GGUF written offline."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from glta_hf import backbone

gguf = pytest.importorskip("gguf")

VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 32, 64, 2, 4, 2


def write_tiny_gguf(path, seed: int = 0):
    """A 2-layer LLaMA GGUF, Q8_0 matrices (real de-quantization) and float32 norms, no tokenizer."""
    from gguf.quants import quantize

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(VOCAB)
    rng = np.random.default_rng(seed)

    def tensor(name, shape):
        values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if len(shape) == 2:
            writer.add_tensor(name, quantize(values, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)

    kv_width = KV_HEADS * HIDDEN // HEADS
    tensor("token_embd.weight", (VOCAB, HIDDEN))
    tensor("output_norm.weight", (HIDDEN,))
    for i in range(LAYERS):
        for name, shape in (("attn_norm", (HIDDEN,)), ("ffn_norm", (HIDDEN,)), ("attn_q", (HIDDEN, HIDDEN)),
                            ("attn_k", (kv_width, HIDDEN)), ("attn_v", (kv_width, HIDDEN)),
                            ("attn_output", (HIDDEN, HIDDEN)), ("ffn_gate", (FFN, HIDDEN)), ("ffn_up", (FFN, HIDDEN)),
                            ("ffn_down", (HIDDEN, FFN))):
            tensor(f"blk.{i}.{name}.weight", shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(backbone.GGUF_CACHE_ENV, str(cache))
    (tmp_path / "models").mkdir()
    return write_tiny_gguf(tmp_path / "models" / "tiny.gguf"), cache


@pytest.fixture
def conversions(monkeypatch):
    """Counts transformers' GGUF conversions (from_pretrained with a gguf_file)."""
    calls = []
    original = backbone.AutoModelForCausalLM.from_pretrained

    def counting(*args, **kwargs):
        if kwargs.get("gguf_file"):
            calls.append(kwargs["gguf_file"])
        return original(*args, **kwargs)

    monkeypatch.setattr(backbone.AutoModelForCausalLM, "from_pretrained", counting)
    return calls


def _direct(source, lm_head):
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if lm_head else AutoModel
    return cls.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)


def _cache_folder(cache, source):
    return cache / backbone.file_sha256(source) / "float32"


def _assert_same_weights(model, reference):
    got, want = model.state_dict(), reference.state_dict()
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("lm_head", [False, True])
def test_second_load_reads_the_cache_with_the_same_weights(tiny_gguf, conversions, lm_head):
    source, cache = tiny_gguf
    first = backbone.load_llm(str(source), lm_head=lm_head)
    assert conversions == ["tiny.gguf"]
    folder = _cache_folder(cache, source)
    manifest = json.loads((folder / backbone.GGUF_CACHE_MANIFEST).read_text())
    assert manifest["source_sha256"] == backbone.file_sha256(source) == folder.parent.name
    assert manifest["files"]["model.safetensors"]["size"] == (folder / "model.safetensors").stat().st_size
    second = backbone.load_llm(str(source), lm_head=lm_head)
    assert conversions == ["tiny.gguf"]  # not converted again
    reference = _direct(source, lm_head)
    _assert_same_weights(first, reference)
    _assert_same_weights(second, reference)
    assert not any(p.requires_grad for p in second.parameters())
    assert type(second) is type(reference)


def test_one_copy_serves_the_base_model_and_the_causal_lm(tiny_gguf, conversions):
    source, cache = tiny_gguf
    backbone.load_llm(str(source), lm_head=True)
    base = backbone.load_llm(str(source.parent), gguf_file=source.name)
    assert conversions == ["tiny.gguf"]
    _assert_same_weights(base, _direct(source, False))
    tied = _direct(source, True)
    assert tied.config.tie_word_embeddings  # the tied head is stored once
    from safetensors import safe_open

    with safe_open(str(_cache_folder(cache, source) / "model.safetensors"), "pt") as handle:
        assert "lm_head.weight" not in handle.keys()


def test_unchanged_source_is_hashed_once(tiny_gguf, monkeypatch):
    source, cache = tiny_gguf
    backbone.load_llm(str(source))
    hashed = []
    original = backbone.file_sha256
    monkeypatch.setattr(backbone, "file_sha256", lambda path: hashed.append(str(path)) or original(path))
    backbone.load_llm(str(source))
    assert str(source) not in hashed and len(hashed) == 2  # the copy's two files are verified, the source is not


def test_a_changed_source_gets_its_own_copy(tiny_gguf, conversions):
    source, cache = tiny_gguf
    backbone.load_llm(str(source))
    old = _cache_folder(cache, source)
    write_tiny_gguf(source, seed=1)
    model = backbone.load_llm(str(source))
    assert conversions == ["tiny.gguf", "tiny.gguf"]
    assert _cache_folder(cache, source) != old and old.is_dir()
    _assert_same_weights(model, _direct(source, False))


@pytest.mark.parametrize("damage", ["flip_weights", "truncate_weights", "bad_manifest", "no_manifest",
                                    "other_source"])
def test_a_corrupt_copy_is_detected_and_rebuilt_with_a_warning(tiny_gguf, conversions, damage):
    source, cache = tiny_gguf
    backbone.load_llm(str(source))
    folder = _cache_folder(cache, source)
    weights, manifest = folder / "model.safetensors", folder / backbone.GGUF_CACHE_MANIFEST
    if damage == "flip_weights":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "bad_manifest":
        manifest.write_text("{not json")
    elif damage == "no_manifest":
        manifest.unlink()
    else:
        record = json.loads(manifest.read_text())
        record["source_sha256"] = "0" * 64
        manifest.write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="corrupt.*rebuilding"):
        model = backbone.load_llm(str(source))
    assert conversions == ["tiny.gguf", "tiny.gguf"]
    _assert_same_weights(model, _direct(source, False))
    assert backbone._cached_copy_problem(folder, folder.parent.name) is None  # the rebuilt copy is whole
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_a_copy_from_another_transformers_is_rebuilt_quietly(tiny_gguf, conversions):
    source, cache = tiny_gguf
    backbone.load_llm(str(source))
    manifest = _cache_folder(cache, source) / backbone.GGUF_CACHE_MANIFEST
    record = json.loads(manifest.read_text())
    record["transformers_version"] = "0.0.1"
    manifest.write_text(json.dumps(record))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone.load_llm(str(source))
    assert len(conversions) == 2


def test_a_failed_write_leaves_no_partial_copy(tiny_gguf, monkeypatch):
    source, cache = tiny_gguf
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.warns(UserWarning, match="could not cache"):
        model = backbone.load_llm(str(source))
    _assert_same_weights(model, _direct(source, False))
    root = _cache_folder(cache, source).parent
    assert not (root / "float32").exists() and not [p for p in root.iterdir() if p.name.startswith(".")]


def test_cache_off_converts_every_time(tiny_gguf, conversions, monkeypatch):
    source, cache = tiny_gguf
    monkeypatch.setenv(backbone.GGUF_CACHE_ENV, "off")
    backbone.load_llm(str(source))
    backbone.load_llm(str(source))
    assert len(conversions) == 2 and not cache.exists()


def test_default_cache_is_in_the_hugging_face_assets_cache(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv(backbone.GGUF_CACHE_ENV, raising=False)
    assert backbone.gguf_cache_dir() == backbone.Path(constants.HF_ASSETS_CACHE) / "glta_hf" / "gguf"
