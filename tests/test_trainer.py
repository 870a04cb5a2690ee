"""GLTATrainingArguments / GLTATrainer: stage parameters only, GLTA-only checkpoints, ranking eval, NaN guard,
resume."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from glta_hf.alignment_data import GLTACollator, UserItemDataset
from glta_hf.data.schema import UserItemMatrix
from glta_hf.errors import TrainingError
from glta_hf.trainer import GLTATrainer
from glta_hf.training_args import GLTATrainingArguments
from glta_hf.io_utils import load_safetensors

HISTORIES = [np.array(h) for h in ([0, 1, 3], [2, 3, 4, 11], [5, 1], [6, 7, 8], [8, 9], [9, 10, 0])]
VALIDATION = [[2], [5], [6], [9], [10], [1]]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=3, per_device_eval_batch_size=6,
                learning_rate=1e-2, max_steps=4, save_steps=2, save_strategy="steps", eval_strategy="no",
                logging_steps=1, disable_tqdm=True, use_cpu=True, seed=0, num_slots=4, max_history=5, eval_ks="2,4",
                items_per_sample=3,
                dataloader_num_workers=0)
    base.update(kw)
    return GLTATrainingArguments(**base)


def _trainer(tiny, args, stage="user"):
    model = tiny.model
    model.set_trainable(stage)
    ds = UserItemDataset(HISTORIES, tiny.tokenizer, model.prompt_config, mode="train", seed=args.seed)
    train = UserItemMatrix.from_pairs(*zip(*[(u, i) for u, h in enumerate(HISTORIES) for i in h]), 6, 12)
    truth = UserItemMatrix.from_pairs(*zip(*[(u, i) for u, h in enumerate(VALIDATION) for i in h]), 6, 12)
    model.attach_user_context(histories=[h.tolist() for h in HISTORIES])
    return GLTATrainer(model=model, args=args, train_dataset=ds,
                       data_collator=GLTACollator(tiny.tokenizer.pad_token_id, model.config.num_slots),
                       ranking_train=train, ranking_truth=truth)


def test_arguments_validate_and_map_ablations(tmp_path):
    args = _args(tmp_path, no_profile=True, user_as_text=True, no_item_alignment=True)
    assert args.trainable_stage == "user+item"
    assert args.prompt_overrides()["include_profile"] is False and args.prompt_overrides()["user_as_text"] is True
    assert args.ks == (2, 4) and args.metric_for_best_model == "ndcg@10" and not args.remove_unused_columns
    for bad in (dict(stage="both"), dict(eval_decoding="beam"), dict(target_policy="x"),
                dict(stage="item", no_item_alignment=True), dict(items_per_sample=9),
                dict(samples_per_user=0)):
        with pytest.raises(ValueError):
            _args(tmp_path, **bad)


def test_samples_per_user_reaches_the_stage_dataset_and_the_stage_record(tiny, tmp_path):
    from types import SimpleNamespace
    data = SimpleNamespace(user_ids=[f"u{u}" for u in range(len(HISTORIES))])
    args = _args(tmp_path, samples_per_user=3)
    ds = GLTATrainer._stage_dataset("user", tiny.model, args, data, HISTORIES, False, None, None, None)
    assert len(ds) == 3 * len(HISTORIES) and ds.samples_per_user == 3
    assert args.stage_settings("user")["samples_per_user"] == 3
    # left out at its default, so the fingerprints of runs recorded before the option still match
    assert "samples_per_user" not in _args(tmp_path).stage_settings("user")
    assert "samples_per_user" not in args.stage_settings("item")


def test_only_stage_parameters_train_and_checkpoints_hold_only_glta_weights(tiny, tmp_path):
    args = _args(tmp_path)
    trainer = _trainer(tiny, args, stage="user")
    llm_before = {k: v.clone() for k, v in tiny.model.llm.state_dict().items()}
    item_proj = tiny.model.item_projector.weight.detach().clone()
    user_proj = tiny.model.user_projector.weight.detach().clone()
    trainer.train()
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in tiny.model.parameters() if p.requires_grad}
    assert optimized == trainable and trainable
    assert all(torch.equal(v, tiny.model.llm.state_dict()[k]) for k, v in llm_before.items())
    assert torch.equal(item_proj, tiny.model.item_projector.weight)  # frozen in the user stage
    assert not torch.equal(user_proj, tiny.model.user_projector.weight)
    ckpt = tmp_path / "out" / "checkpoint-4"
    state = load_safetensors(ckpt / "model.safetensors")
    assert state and not [k for k in state if k.startswith(("llm.", "model.llm."))]
    metrics = trainer.evaluate()
    assert {"eval_ndcg@4", "eval_precision@2", "eval_num_users"} <= set(metrics) and metrics["eval_num_users"] == 6


def test_non_finite_loss_names_the_step(tiny, tmp_path):
    trainer = _trainer(tiny, _args(tmp_path))
    with torch.no_grad():
        tiny.model.user_embeddings.fill_(float("nan"))
    with pytest.raises(TrainingError, match="global step 0"):
        trainer.train()


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    from conftest import build_tiny

    full = build_tiny(tmp_path / "a")
    t = _trainer(full, _args(tmp_path / "a", max_steps=6, save_steps=3))
    t.train()
    reference = {k: v.clone() for k, v in full.model.glta_state_dict().items()}

    out = tmp_path / "a" / "out"
    record = json.loads((out / "checkpoint-3" / "glta_stage.json").read_text())
    assert 0 < record["train_seconds"] <= t.train_seconds()
    record["train_seconds"] = 1000.0  # as if the first three steps had taken 1000 s on another machine
    (out / "checkpoint-3" / "glta_stage.json").write_text(json.dumps(record))

    resumed = build_tiny(tmp_path / "b")
    args = _args(tmp_path / "a", max_steps=6, save_steps=3, output_dir=str(out))
    t2 = _trainer(resumed, args)
    started = time.perf_counter()
    t2.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    elapsed = time.perf_counter() - started
    assert t2.state.global_step == 6
    for k, v in resumed.model.glta_state_dict().items():
        assert torch.equal(v, reference[k]), k
    # the stage's time goes on from the checkpoint's (a run record of a resumed stage counts every run)
    assert 1000.0 < t2.train_seconds() <= 1000.0 + elapsed
    assert 1000.0 < json.loads((out / "checkpoint-6" / "glta_stage.json").read_text())["train_seconds"] <= (
        1000.0 + elapsed + 0.05)  # written rounded to 0.1 s


def _trained_state(model):
    """GLTA's weights and the LLM's LoRA weights: what a stage trains."""
    state = dict(model.glta_state_dict())
    state.update({n: p for n, p in model.named_parameters() if "lora_" in n})
    return {k: v.detach().clone() for k, v in state.items()}


def test_resume_with_lora_goes_on_from_the_saved_adapters(tmp_path):
    from conftest import build_tiny

    lora = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    full = build_tiny(tmp_path / "a", lora=lora)
    _trainer(full, _args(tmp_path / "a", max_steps=6, save_steps=3, prefix_cache=False)).train()
    reference = _trained_state(full.model)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in reference.items())  # the adapters did train

    resumed = build_tiny(tmp_path / "b", lora=lora)
    with torch.no_grad():  # other adapters than the first run's: all must come from the checkpoint
        for name, param in resumed.model.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.1)
    args = _args(tmp_path / "a", max_steps=6, save_steps=3, output_dir=str(tmp_path / "a" / "out"), prefix_cache=False)
    _trainer(resumed, args).train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-3"))
    state = _trained_state(resumed.model)
    assert set(state) == set(reference)
    for k, v in state.items():
        torch.testing.assert_close(v, reference[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("best_step", [0, 3])
def test_a_resumed_stage_ends_on_the_best_state_validated_before_it(tmp_path, best_step):
    """The best validation may come before the resumed checkpoint (step 0 included, which has no checkpoint): the
    resumed stage must still end on it, as an uninterrupted run would."""
    from conftest import build_tiny

    from glta_hf.io_utils import read_json, write_json

    kw = dict(max_steps=9, save_steps=3, eval_strategy="steps", eval_steps=3, eval_on_start=True,
              load_best_model_at_end=True, metric_for_best_model="ndcg@4", save_total_limit=5)
    first = build_tiny(tmp_path / "a")
    built = _trained_state(first.model)
    _trainer(first, _args(tmp_path / "a", **kw)).train()
    out = tmp_path / "a" / "out"
    state_file = out / "checkpoint-6" / "trainer_state.json"
    state = read_json(state_file)
    evals = [e for e in state["log_history"] if "eval_ndcg@4" in e]
    assert [e["step"] for e in evals] == [0, 3, 6]
    for entry in evals:  # make best_step's validation unbeatable
        if entry["step"] == best_step:
            entry["eval_ndcg@4"] = 2.0
    write_json(state_file, state)
    expected = built if best_step == 0 else {
        k: v for k, v in load_safetensors(out / f"checkpoint-{best_step}" / "model.safetensors").items()}

    resumed = build_tiny(tmp_path / "b")
    trainer = _trainer(resumed, _args(tmp_path / "a", output_dir=str(out), **kw))
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    assert trainer.state.global_step == 9 and trainer.best_state["step"] == best_step
    # the validations of an uninterrupted run, none added at the resumed step
    assert [e["step"] for e in trainer.state.log_history if "eval_ndcg@4" in e] == [0, 3, 6, 9]
    assert trainer.args.eval_on_start  # the user's setting is left as it was
    final = resumed.model.glta_state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(final[k], v, atol=1e-6, rtol=1e-5, msg=k)


def test_resume_save_steps_adds_resume_points_that_resume_exactly_and_do_not_change_the_fingerprint(tmp_path):
    """Checkpoints between evaluations (an ml-1m epoch is hours on a CPU): the rotation keeps the best and the
    newest, a run stopped between evaluations resumes from the newest to the uninterrupted run's weights."""
    from conftest import build_tiny, load_script
    from transformers import TrainerCallback

    from glta_hf.checkpoint import verify_manifest

    kw = dict(max_steps=6, save_steps=3, eval_strategy="steps", eval_steps=3, eval_on_start=True,
              load_best_model_at_end=True, metric_for_best_model="ndcg@4", save_total_limit=2, resume_save_steps=1)
    assert _args(tmp_path, **kw).stage_fingerprint("user") == _args(
        tmp_path, **dict(kw, resume_save_steps=None)).stage_fingerprint("user")
    full = build_tiny(tmp_path / "a")
    uninterrupted = _trainer(full, _args(tmp_path / "a", **kw))
    uninterrupted.train()
    reference = _trained_state(full.model)

    class StopAt4(TrainerCallback):  # a kill between the evaluations at steps 3 and 6
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                control.should_training_stop = True

    stopped = build_tiny(tmp_path / "b")
    out = tmp_path / "b" / "run" / "user"
    trainer = _trainer(stopped, _args(tmp_path / "b", output_dir=str(out), **kw))
    trainer.add_callback(StopAt4())
    trainer.train()
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert kept == ["checkpoint-3", "checkpoint-4"]  # the best validated (step 3 here) and the newest

    # the next machine: benchmarks/quality/carry_run.py carries the resume point through a committed folder
    carry_run = load_script("benchmarks/quality/carry_run.py")
    carried = carry_run.save(out.parent, tmp_path / "carried")
    assert carried == [Path("user", "checkpoint-3"), Path("user", "checkpoint-4")]
    packed = sorted(p.relative_to(tmp_path / "carried") for p in (tmp_path / "carried").rglob("*") if p.is_file())
    assert packed == [Path("user", "checkpoint-3.tar.xz"), Path("user", "checkpoint-4.tar.xz")]
    first = {p: (tmp_path / "carried" / p).read_bytes() for p in packed}
    carry_run.save(out.parent, tmp_path / "carried")  # saved again, unchanged: the same bytes (git stores it once)
    assert all((tmp_path / "carried" / p).read_bytes() == data for p, data in first.items())
    fresh = tmp_path / "c" / "run"
    assert carry_run.restore(tmp_path / "carried", fresh) == carried
    names = {p.name for p in (fresh / "user" / "checkpoint-4").iterdir()}
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= names  # what a resume reads ...
    assert not names & {"training_args.bin", "user_table.json", "tokenizer.json"} and not any(
        n.endswith(".py") for n in names)  # ... and not what it does not
    assert all(verify_manifest(fresh / folder) for folder in carried)  # each copy lists what it holds
    assert carry_run.restore(tmp_path / "carried", fresh) == []  # never over what the run folder has
    resumed = build_tiny(tmp_path / "c")
    trainer = _trainer(resumed, _args(tmp_path / "c", output_dir=str(fresh / "user"), **kw))
    trainer.train(resume_from_checkpoint=str(fresh / "user" / "checkpoint-4"))
    assert trainer.state.global_step == 6
    # no validation at the resume point (step 4): the tuning log gets the uninterrupted run's rows only
    assert [e["step"] for e in trainer.state.log_history if "eval_ndcg@4" in e] == [0, 3, 6]
    for k, v in _trained_state(resumed.model).items():
        torch.testing.assert_close(v, reference[k], atol=1e-6, rtol=1e-5, msg=k)
    # the diagnostics of the fresh start come with the checkpoint: the resumed stage's record has the uninterrupted
    # run's numbers (the update norms of the steps before the kill: 4 of the 5 measured)
    expected, carried_over = uninterrupted.diagnostics, trainer.diagnostics
    assert set(carried_over) == set(expected) and {"loss_at_init", "ln_num_items", "updates"} <= set(expected)
    assert len(expected["updates"]) == 5 and [u["step"] for u in carried_over["updates"]] == [1, 2, 3, 4]
    for key, value in expected.items():
        if key != "updates":
            assert carried_over[key] == pytest.approx(value, rel=1e-5), key
    for got, want in zip(carried_over["updates"], expected["updates"]):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-7)



def test_mask_training_items_finds_each_user_without_the_user_token(tiny, tmp_path, monkeypatch):
    """w/o UA (``user_as_text``) prompts have no ``<user>`` token: the mask reads the batch's ``sample_users`` and
    masks exactly what the ``<user>``-token path masks on the same samples (each row's user's training items), the
    model's forward never sees ``sample_users``, and such a stage trains (it failed at its first step before)."""
    import glta_hf.loss as loss_module
    from glta_hf.prompts import PromptConfig

    model = tiny.model
    model.set_trainable("user")
    token_cfg = model.prompt_config
    text_cfg = PromptConfig.from_dict(dict(token_cfg.to_dict(), user_as_text=True))
    collate = GLTACollator(tiny.tokenizer.pad_token_id, model.config.num_slots)
    with_token = UserItemDataset(HISTORIES, tiny.tokenizer, token_cfg, mode="train", seed=0)
    as_text = UserItemDataset(HISTORIES, tiny.tokenizer, text_cfg, mode="train", seed=0)
    order = [4, 0, 5, 2]  # rows out of user order
    token_batch = collate([with_token[i] for i in order])
    text_batch = collate([as_text[i] for i in order])
    assert len(text_batch["user_ids"]) == 0 and text_batch["sample_users"].tolist() == order
    assert torch.equal(text_batch["labels"], token_batch["labels"])  # the same draws, only the user shown differs
    train = UserItemMatrix.from_pairs(*zip(*[(u, i) for u, h in enumerate(HISTORIES) for i in h]), 6, 12)
    model.attach_user_context(histories=[h.tolist() for h in HISTORIES])

    received, masks = [], []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: received.append(set(kw)) or forward(**kw))
    masked = loss_module.masked_slot_loss
    monkeypatch.setattr(loss_module, "masked_slot_loss",
                        lambda logits, labels, known=None: masks.append(known) or masked(logits, labels, known=known))
    args = _args(tmp_path, user_as_text=True, mask_training_items=True, max_steps=2)
    trainer = GLTATrainer(model=model, args=args, train_dataset=as_text, data_collator=collate, ranking_train=train)
    trainer.compute_loss(model, text_batch)
    placeholders_only = {k: v for k, v in token_batch.items() if k != "sample_users"}  # another collator's batch
    trainer.compute_loss(model, placeholders_only)
    assert torch.equal(masks[0], masks[1])
    assert [row.nonzero().flatten().tolist() for row in masks[0]] == [sorted(HISTORIES[u].tolist()) for u in order]
    assert received == [{"input_ids", "attention_mask", "user_ids", "item_ids"}] * 2
    assert "sample_users" in text_batch  # the caller's batch is left as it was
    with pytest.raises(TrainingError, match="sample_users"):  # no user anywhere: named, not a shape error
        trainer.compute_loss(model, {k: v for k, v in text_batch.items() if k != "sample_users"})

    received.clear()
    serving = UserItemDataset(HISTORIES, tiny.tokenizer, text_cfg, mode="eval")
    unlabelled = collate([serving[i] for i in range(3)])  # trainer.predict's path: the model is called directly
    assert "labels" not in unlabelled and unlabelled["sample_users"].tolist() == [0, 1, 2]
    _loss, outputs, _labels = trainer.prediction_step(model, unlabelled, prediction_loss_only=False)
    assert outputs[0].shape[:2] == (3, model.config.num_slots)  # the logits, then the slot states
    assert received == [{"input_ids", "attention_mask", "user_ids", "item_ids"}]

    received.clear()
    unmasked = GLTATrainer(model=model, args=_args(tmp_path, user_as_text=True, max_steps=2), train_dataset=as_text,
                           data_collator=collate, ranking_train=train)
    unmasked.compute_loss(model, text_batch)
    assert received == [{"input_ids", "attention_mask", "user_ids", "item_ids", "labels"}]
    trainer.train()
    assert trainer.state.global_step == 2 and len(masks) > 3
