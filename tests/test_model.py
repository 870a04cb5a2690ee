"""GLTAForRecommendation on a tiny random LLaMA: injection, loss, freezing, decoding, checkpoints, errors."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import build_tiny
from safetensors import safe_open

from glta_hf import CheckpointError, GLTAConfig, GLTAForRecommendation, GLTAModel, UnknownIdError
from glta_hf.decoding import decoder_names
from glta_hf.prompts import ITEM_TOKEN, SLOT_TOKEN, USER_TOKEN
from glta_hf.testing import tiny_llama, tiny_tokenizer


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def test_forward_shapes_and_config(tiny):
    out = tiny.model(**tiny.batch())
    assert out.logits.shape == (2, 4, 12)
    assert out.slot_hidden_states.shape == (2, 4, 32)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    cfg = tiny.model.config
    assert cfg.model_type == "glta" and cfg.llm_hidden_size == 32 and cfg.num_items == 12 and cfg.num_slots == 4
    assert tiny.model.llm.get_input_embeddings().weight.shape[0] == 384  # not resized
    assert min(cfg.user_token_id, cfg.item_token_id, cfg.slot_token_id) >= 384


def test_injection_writes_projected_vectors(tiny):
    model, batch = tiny.model, tiny.batch()
    captured = {}
    hook = model.llm.register_forward_pre_hook(lambda mod, args, kw: captured.update(kw), with_kwargs=True)
    model(**_inputs(batch))
    hook.remove()
    embeds, ids = captured["inputs_embeds"], batch["input_ids"]
    cfg = model.config
    with torch.no_grad():
        users = model.user_projector(tiny.user_embeddings[batch["user_ids"]])
        items = model.item_projector(tiny.item_embeddings[batch["item_ids"]])
        plain = model.llm.get_input_embeddings()(ids.clamp_max(383))
    torch.testing.assert_close(embeds[ids == cfg.user_token_id], users)
    torch.testing.assert_close(embeds[ids == cfg.item_token_id], items)  # row-major placeholder order
    torch.testing.assert_close(embeds[ids == cfg.slot_token_id], model.slot_embeddings.detach().repeat(2, 1))
    other = ids < 384
    torch.testing.assert_close(embeds[other], plain[other])


def test_padding_side_does_not_change_logits(tiny):
    left = tiny.model(**_inputs(tiny.batch(padding_side="left"))).logits
    right = tiny.model(**_inputs(tiny.batch(padding_side="right"))).logits
    single = tiny.model(**_inputs(tiny.batch(users=(1,), histories=((4,),), targets=((7,),)))).logits
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left[1:], single, atol=1e-5, rtol=1e-4)


def test_loss_equals_hand_computed_cross_entropy(tiny):
    batch = tiny.batch(targets=((5, 6, 1), (7,)))
    out = tiny.model(**batch)
    logp = torch.log_softmax(out.logits, dim=-1)
    picked = [logp[0, 0, 5], logp[0, 1, 6], logp[0, 2, 1], logp[1, 0, 7]]
    torch.testing.assert_close(out.loss, -torch.stack(picked).mean())


def test_llm_frozen_projectors_train(tiny):
    model = tiny.model
    names = model.set_trainable("user+item")
    assert names and not any(n.startswith("model.llm.") for n in names)
    assert "model.user_embeddings" not in names and "model.item_embeddings" not in names  # frozen tables are buffers
    llm_before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    proj_before = model.user_projector.weight.detach().clone(), model.item_projector.weight.detach().clone()
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**tiny.batch()).loss.backward()
    assert all(p.grad is None for p in model.llm.parameters())
    assert model.user_projector.weight.grad.abs().sum() > 0 and model.item_projector.weight.grad.abs().sum() > 0
    optim.step()
    assert all(torch.equal(v, model.llm.state_dict()[k]) for k, v in llm_before.items())
    assert not torch.equal(proj_before[0], model.user_projector.weight)
    assert not torch.equal(proj_before[1], model.item_projector.weight)


@pytest.mark.parametrize(
    "stage,trainable,frozen",
    [("item", "model.item_projector", "model.user_projector"), ("user", "model.user_projector", "model.item_projector")],
)
def test_set_trainable_stages(tiny, stage, trainable, frozen):
    names = tiny.model.set_trainable(stage)
    assert any(n.startswith(trainable) for n in names) and not any(n.startswith(frozen) for n in names)
    assert {"model.slot_embeddings", "head.weight"} <= set(names)
    with pytest.raises(ValueError):
        tiny.model.set_trainable("llm")


def test_gradient_checkpointing_reaches_projectors(tiny):
    model = tiny.model
    model.set_trainable("user")
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers ~5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    else:  # transformers 5.17 (the GPU kit's) and older 5.x
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    model(**tiny.batch()).loss.backward()
    assert model.user_projector.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("head,projector", [("factorized", "linear"), ("linear", "mlp")])
def test_head_and_projector_variants(tmp_path, head, projector):
    tiny = build_tiny(tmp_path, head=head, projector=projector)
    model = tiny.model
    model.set_trainable("user")
    out = model(**tiny.batch())
    assert out.logits.shape == (2, 4, 12)
    out.loss.backward()
    assert model.head.weight.grad.abs().sum() > 0
    if head == "factorized":
        assert model.head.weight.shape == (8, 32) and model.item_bias.grad is not None
        expected = model.head.query(out.slot_hidden_states) @ tiny.item_embeddings.t() + model.item_bias
        torch.testing.assert_close(out.logits, expected)


@pytest.mark.parametrize("decoding", decoder_names())
def test_decoders_return_k_distinct_unseen_items(tiny, decoding):
    seen = [[0, 1, 2, 3], [4, 5]]
    items, scores = tiny.model.rank(**_inputs(tiny.batch()), k=4, seen=seen, decoding=decoding)
    assert items.shape == scores.shape == (2, 4)
    for row, s in zip(items.tolist(), seen):
        assert len(set(row)) == 4 and not set(row) & set(s)
    if decoding in ("first_logit", "all_slots"):  # full rankings: any k up to the unseen count
        items, _ = tiny.model.rank(**_inputs(tiny.batch()), k=8, seen=seen, decoding=decoding)
        assert all(len(set(r)) == 8 and not set(r) & set(s) for r, s in zip(items.tolist(), seen))
        assert torch.all(_[:, :-1] >= _[:, 1:])


def test_first_k_and_all_slots_match_logits(tiny):
    logits = tiny.model(**_inputs(tiny.batch())).logits
    items, _ = tiny.model.rank(**_inputs(tiny.batch()), k=1, decoding="first_k")
    assert items[:, 0].tolist() == logits[:, 0].argmax(-1).tolist()
    items, _ = tiny.model.rank(**_inputs(tiny.batch()), k=3, decoding="all_slots")
    expected = torch.logsumexp(torch.log_softmax(logits, -1), dim=1).topk(3).indices
    assert items.tolist() == expected.tolist()


def test_autoregressive_first_step_equals_first_k_and_padding_free(tiny):
    b_left, b_right = _inputs(tiny.batch(padding_side="left")), _inputs(tiny.batch(padding_side="right"))
    ar_left, _ = tiny.model.rank(**b_left, k=4, decoding="autoregressive")
    ar_right, _ = tiny.model.rank(**b_right, k=4, decoding="autoregressive")
    fk, _ = tiny.model.rank(**b_left, k=4, decoding="first_k")
    assert ar_left.tolist() == ar_right.tolist()
    assert ar_left[:, 0].tolist() == fk[:, 0].tolist()  # same prefix, same slot-1 input


def test_count_mismatches_raise_value_error(tiny):
    batch = _inputs(tiny.batch())
    with pytest.raises(ValueError, match=f"4 {ITEM_TOKEN} tokens but 3"):
        tiny.model(**{**batch, "item_ids": batch["item_ids"][:3]})
    with pytest.raises(ValueError, match=f"2 {USER_TOKEN} tokens but 1"):
        tiny.model(**{**batch, "user_ids": batch["user_ids"][:1]})
    ids = batch["input_ids"].clone()
    ids[0, -1] = tiny.tokenizer.pad_token_id
    with pytest.raises(ValueError, match=SLOT_TOKEN):
        tiny.model(**{**batch, "input_ids": ids})
    with pytest.raises(ValueError, match="item_ids must be rows"):
        tiny.model(**{**batch, "item_ids": batch["item_ids"] + 100})
    with pytest.raises(ValueError, match="labels"):
        tiny.model(**batch, labels=torch.full((2, 3), -100))


def test_k_errors(tiny):
    batch = _inputs(tiny.batch())
    with pytest.raises(ValueError, match="catalogue size"):
        tiny.model.rank(**batch, k=13, decoding="all_slots")
    with pytest.raises(ValueError, match="num_slots"):
        tiny.model.rank(**batch, k=5, decoding="first_k")
    with pytest.raises(ValueError, match="not seen"):
        tiny.model.rank(**batch, k=10, seen=[[0, 1, 2], []], decoding="all_slots")
    with pytest.raises(ValueError, match="catalogue size"):
        tiny.model.recommend(["u0"], k=13, decoding="all_slots")


def test_recommend_known_folded_and_unknown_users(tiny):
    model = tiny.model
    recs = model.recommend(["u0", "u1", "u2"], k=3, batch_size=2)
    assert [r["user"] for r in recs] == ["u0", "u1", "u2"]
    hist = model.user_table["histories"]
    for r, row in zip(recs, (0, 1, 2)):
        assert len(set(r["items"])) == 3 and all(i.startswith("i") for i in r["items"])
        assert not {int(i[1:]) for i in r["items"]} & set(hist[row])
        assert len(r["scores"]) == 3
    new = model.recommend(["newcomer"], k=5, histories={"newcomer": ["i3", "i4"]}, decoding="all_slots")[0]
    assert "i3" not in new["items"] and "i4" not in new["items"] and len(new["items"]) == 5
    with pytest.raises(UnknownIdError, match="newcomer"):
        model.recommend(["newcomer"], k=3)
    with pytest.raises(UnknownIdError, match="unknown item"):
        model.recommend(["u0"], k=3, histories=[["no-such-item"]])
    keep_seen = model.recommend(["u0"], k=4, exclude_seen=False)[0]
    assert len(keep_seen["items"]) == 4


def test_fold_in_uses_mean_item_embedding(tiny):
    model = tiny.model
    batch = model.encode_users([-1], histories=[[3, 4]], fold_in=[True])
    torch.testing.assert_close(batch["user_node_embeddings"][0], tiny.item_embeddings[[3, 4]].mean(0))


def test_user_as_text_ablation(tmp_path):
    tiny = build_tiny(tmp_path, prompt={"num_slots": 4, "max_history": 5, "user_as_text": True})
    batch = tiny.model.encode_users([0, 1])
    assert batch["user_node_embeddings"].shape == (0, 8)
    assert not (batch["input_ids"] == tiny.model.config.user_token_id).any()
    assert len(tiny.model.recommend(["u0"], k=2)[0]["items"]) == 2
    assert len(tiny.model.recommend(["new"], k=2, histories=[["i1"]])[0]["items"]) == 2


def test_scorer_matches_all_slots(tiny):
    scores = tiny.model.scorer(batch_size=2)(torch.tensor([0, 1, 2]))
    assert scores.shape == (3, 12)
    ranked = tiny.model.ranker(decoding="all_slots")(torch.tensor([0]), 3)
    masked = scores[0].clone()
    masked[tiny.model.user_table["histories"][0]] = float("-inf")
    assert ranked[0].tolist() == masked.topk(3).indices.tolist()


def test_ranker_for_evaluator(tiny):
    rank = tiny.model.ranker(decoding="first_k", batch_size=2)
    out = rank(torch.tensor([0, 1, 2]), 3)
    assert out.shape == (3, 3) and out.dtype == torch.long
    for row, u in zip(out.tolist(), (0, 1, 2)):
        assert not set(row) & set(tiny.model.user_table["histories"][u])


# ------------------------------------------------------------------------------------------------ checkpoints


def test_save_load_round_trip_identical_logits(tiny, tmp_path):
    model = tiny.model
    with torch.no_grad():
        model.head.bias.add_(torch.randn_like(model.head.bias))
    batch = _inputs(tiny.batch())
    ref = model(**batch).logits
    model.save_pretrained(tmp_path / "ckpt")
    loaded = GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded(**batch).logits, ref)
    assert loaded.item_catalogue == model.item_catalogue and loaded.user_table == model.user_table
    assert loaded.recommend(["u0"], k=3) == model.recommend(["u0"], k=3)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_checkpoint_holds_no_llm_weights(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "ckpt")
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".gguf"))] == ["model.safetensors"]
    with safe_open(tmp_path / "ckpt" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith(("llm.", "model.llm.")) for k in keys)
    assert {"model.user_embeddings", "model.item_embeddings", "model.slot_embeddings", "head.weight",
            "model.user_projector.weight"} <= keys
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["llm_name_or_path"] == str(tiny.llm_dir) and config["quantization"] == "none"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_glta.GLTAConfig",
        "AutoModel": "modeling_glta.GLTAModel",
        "AutoModelForRecommendation": "modeling_glta.GLTAForRecommendation",
    }
    assert {"configuration_glta.py", "modeling_glta.py", "item_catalogue.json", "user_table.json"} <= set(files)


def test_llm_reference_override(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "ckpt")
    moved = tmp_path / "elsewhere"
    tiny.llm_dir.rename(moved)
    with pytest.raises(CheckpointError, match="llm_name_or_path"):
        GLTAForRecommendation.from_pretrained(tmp_path / "ckpt", local_files_only=True)
    loaded = GLTAForRecommendation.from_pretrained(tmp_path / "ckpt", llm_name_or_path=str(moved))
    assert loaded.config.llm_hidden_size == 32


def test_remote_code_loads_without_glta_hf(tiny, tmp_path):
    batch = _inputs(tiny.batch())
    ref = tiny.model(**batch).logits
    tiny.model.save_pretrained(tmp_path / "ckpt")
    torch.save({"batch": batch, "ref": ref}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "glta_hf" or name.startswith("glta_hf."):
                    raise ImportError("glta_hf is blocked in this test")
        sys.meta_path.insert(0, Block())
        import os
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != {str(Path(__file__).resolve().parents[1])!r}]
        try:
            import glta_hf
            raise SystemExit("glta_hf is importable")
        except ImportError:
            pass
        import json, torch
        from transformers import AutoModel
        from transformers.dynamic_module_utils import get_class_from_dynamic_module
        folder = {str(tmp_path / "ckpt")!r}
        io = torch.load({str(tmp_path / "io.pt")!r})
        base = AutoModel.from_pretrained(folder, trust_remote_code=True)  # the base model: slot hidden states
        assert type(base).__name__ == "GLTAModel" and "glta_hf" not in type(base).__module__, type(base)
        # the recommender through its auto_map entry
        auto_map = json.load(open(folder + "/config.json"))["auto_map"]
        cls = get_class_from_dynamic_module(auto_map["AutoModelForRecommendation"], folder)
        model = cls.from_pretrained(folder)
        assert "glta_hf" not in type(model).__module__, type(model).__module__
        out = model(**io["batch"])
        # same code, same weights: equal up to float32 rounding (a wrong or missing module is far off)
        torch.testing.assert_close(out.logits, io["ref"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(base(**io["batch"]).slot_hidden_states, out.slot_hidden_states, rtol=1e-5, atol=1e-5)
        print("REMOTE_OK", type(model).__module__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "REMOTE_OK transformers_modules" in res.stdout, res.stdout + res.stderr[-3000:]


def test_auto_classes_registered(tiny, tmp_path):
    """AutoModel gives the base model (as for LLaVA), AutoModelForRecommendation the recommender."""
    from transformers import AutoConfig, AutoModel

    from glta_hf import AutoModelForRecommendation

    tiny.model.save_pretrained(tmp_path / "ckpt")
    batch = _inputs(tiny.batch())
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "ckpt"), GLTAConfig)
    base = AutoModel.from_pretrained(tmp_path / "ckpt")
    assert type(base) is GLTAModel
    assert torch.equal(base(**batch).slot_hidden_states, tiny.model(**batch).slot_hidden_states)
    model = AutoModelForRecommendation.from_pretrained(tmp_path / "ckpt")
    assert type(model) is GLTAForRecommendation and isinstance(model.model, GLTAModel)
    assert torch.equal(model(**batch).logits, tiny.model(**batch).logits)


def test_subfolder_names_the_checkpoint_inside_a_folder(tiny, tmp_path):
    """``subfolder`` (which the Auto classes always pass, ``""`` when unset) selects a checkpoint inside a folder;
    a missing one is a CheckpointError naming it, not a load of the parent."""
    from transformers import AutoModel

    tiny.model.save_pretrained(tmp_path / "repo" / "glta")
    batch = _inputs(tiny.batch())
    model = GLTAForRecommendation.from_pretrained(tmp_path / "repo", subfolder="glta")
    assert torch.equal(model(**batch).logits, tiny.model(**batch).logits)
    base = AutoModel.from_pretrained(tmp_path / "repo", subfolder="glta")
    assert type(base) is GLTAModel
    with pytest.raises(CheckpointError, match="missing"):
        GLTAForRecommendation.from_pretrained(tmp_path / "repo", subfolder="missing")
    # a transformers release's private plumbing (a leading underscore) is accepted; an unknown setting is not
    GLTAForRecommendation.from_pretrained(tmp_path / "repo", subfolder="glta", _from_auto=True, _a_future_flag=1)
    with pytest.raises(TypeError, match="output_loading_info"):
        GLTAForRecommendation.from_pretrained(tmp_path / "repo", subfolder="glta", output_loading_info=True)


def test_tokenizer_missing_placeholders_is_checkpoint_error(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")  # overwrite with a tokenizer lacking <user>/<item>/<slot>
    with pytest.raises(CheckpointError, match="tokenizer.*glta_manifest.json"):  # the checksums see it first
        GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "glta_manifest.json").unlink()  # the check behind them (folders saved before manifests)
    with pytest.raises(CheckpointError, match="placeholder"):
        GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")


def test_pickle_files_refused(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "ckpt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "ckpt" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")


def test_hidden_size_and_catalogue_mismatch(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "ckpt")
    wide, _ = tiny_llama(hidden_size=64)
    with pytest.raises(CheckpointError, match="hidden size 64"):
        GLTAForRecommendation.from_pretrained(tmp_path / "ckpt", llm=wide.model)
    path = tmp_path / "ckpt" / "item_catalogue.json"
    catalogue = json.loads(path.read_text())
    catalogue["item_ids"] = catalogue["item_ids"][:-1]
    path.write_text(json.dumps(catalogue))
    (tmp_path / "ckpt" / "glta_manifest.json").unlink()  # the check behind the checksums
    with pytest.raises(CheckpointError, match="11 items"):
        GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")


def test_weights_config_mismatch(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config["num_items"] = 13
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")


def test_save_requires_llm_reference(tiny, tmp_path):
    tiny.model.config.llm_name_or_path = None
    with pytest.raises(CheckpointError, match="references its LLM"):
        tiny.model.save_pretrained(tmp_path / "ckpt")


def test_add_lora_starts_where_the_model_was_and_trains_the_adapters(tmp_path):
    tiny = build_tiny(tmp_path)
    model = tiny.model
    batch = _inputs(tiny.batch())
    with torch.no_grad():
        before = model(**batch).logits
    lora = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    model.add_lora(lora)
    assert model.config.lora == lora and any("lora_" in n for n in model.set_trainable("user"))
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before)  # LoRA B starts at zero
    model.add_lora(dict(lora))  # the same again: kept
    with pytest.raises(ValueError, match="already has LoRA"):
        model.add_lora({**lora, "r": 4})
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "llm_adapter" / "adapter_model.safetensors").is_file()


def test_lora_adapter_round_trip(tmp_path):
    tiny = build_tiny(tmp_path, lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    model = tiny.model
    names = model.set_trainable("user")
    assert any("lora_" in n for n in names)
    with torch.no_grad():  # make the adapter non-trivial (LoRA B starts at zero)
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    batch = _inputs(tiny.batch())
    ref = model(**batch).logits
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "llm_adapter" / "adapter_model.safetensors").is_file()
    loaded = GLTAForRecommendation.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(loaded(**batch).logits, ref)


def test_load_adapter_weights_refuses_a_mismatch(tmp_path):
    from glta_hf.errors import CheckpointError

    lora = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    with_lora = build_tiny(tmp_path / "a", lora=lora).model
    plain = build_tiny(tmp_path / "b").model
    with torch.no_grad():  # a non-trivial adapter (LoRA B starts at zero)
        for name, param in with_lora.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    saved = {n: p.detach().clone() for n, p in with_lora.named_parameters() if "lora_" in n}
    with_lora.save_pretrained(tmp_path / "a" / "ckpt")
    plain.save_pretrained(tmp_path / "b" / "ckpt")
    with pytest.raises(CheckpointError, match="no LoRA weights"):
        with_lora.load_adapter_weights(tmp_path / "b" / "ckpt")
    with pytest.raises(CheckpointError, match="has no LoRA adapters"):
        plain.load_adapter_weights(tmp_path / "a" / "ckpt")
    plain.load_adapter_weights(tmp_path / "b" / "ckpt")  # neither side has adapters: nothing to load
    with torch.no_grad():
        for name, param in with_lora.named_parameters():
            if "lora_B" in name:
                param.zero_()
    with_lora.load_adapter_weights(tmp_path / "a" / "ckpt")
    for name, param in with_lora.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(param, saved[name], msg=name)
