"""``glta_hf.pipeline.run_stage``: the one stage implementation (align.py, quickstart, benchmark) -- the stage
records in ``glta_run.json``, old name-only records, the validation requirement and the DDP unused-parameter flag."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from _tiny_data import write_tiny_movielens

from glta_hf import pipeline
from glta_hf.alignment_data import user_histories


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from glta_hf.alignment_data import prepare_data, user_histories
    from glta_hf.prompts import PromptConfig
    from glta_hf.testing import tiny_llama

    tmp = tmp_path_factory.mktemp("stage")
    data, _ = prepare_data("ml-latest-small", write_tiny_movielens(tmp / "ds", num_users=8, num_items=16, per_user=6))
    llm, tok = tiny_llama(seed=0)
    g = torch.Generator().manual_seed(0)
    nodes = SimpleNamespace(user=torch.randn(data.num_users, 8, generator=g),
                            item=torch.randn(data.num_items, 8, generator=g),
                            user_ids=[str(u) for u in data.user_ids], item_ids=[str(i) for i in data.item_ids])
    prompt = PromptConfig(num_slots=4, max_history=3, include_profile=False, include_prediction=False)
    model = pipeline.build_model(llm.model, tok, nodes, data, llm_name_or_path="tiny", prompt=prompt, num_slots=4)
    histories, has_time = user_histories(data, "train")
    pipeline.attach_user_context(model, data, histories, has_time=has_time)
    return SimpleNamespace(tmp=tmp, data=data, model=model, histories=histories, has_time=has_time)


def _args(folder, **kw):
    from glta_hf.training_args import GLTATrainingArguments

    base = dict(output_dir=str(folder), per_device_train_batch_size=4, max_steps=2, save_strategy="no",
                eval_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True, seed=0, num_slots=4,
                max_history=3, items_per_sample=3, no_profile=True, no_prediction=True, eval_ks="2,4",
                metric_for_best_model="ndcg@4",
                report_to="none")
    base.update(kw)
    return GLTATrainingArguments(**base)


def test_node_embeddings_of_another_dataset_are_a_glta_error(setup):
    from glta_hf.errors import GLTAError, IdMapMismatchError

    other = SimpleNamespace(user_ids=[str(u) for u in setup.data.user_ids][::-1],
                            item_ids=[str(i) for i in setup.data.item_ids])
    with pytest.raises(IdMapMismatchError, match="graph-folder: id maps differ") as info:
        pipeline.check_node_ids(other, setup.data, where="graph-folder")
    assert isinstance(info.value, GLTAError) and isinstance(info.value, ValueError)  # old callers catch ValueError


def test_stages_are_recorded_as_records_and_old_name_lists_are_read(setup):
    model, root = setup.model, setup.tmp / "run"
    model.run_info = {"dataset": "tiny", "stages": ["item", "user"], "log_history": [], "world_size": 1}  # old form
    kw = dict(data=setup.data, histories=setup.histories, has_time=setup.has_time)
    args = _args(root / "item", item_stage_epochs=3.0)
    model, metrics = pipeline.run_stage(model, "item", args, **kw, run_info={"backbone": "tiny"})
    assert metrics["global_step"] == 2 and args.ddp_find_unused_parameters is None  # the caller's args untouched
    model, metrics = pipeline.run_stage(model, "user", _args(root / "user", eval_strategy="steps", eval_steps=2),
                                        **kw)
    assert metrics["global_step"] == 2 and "eval_ndcg@4" in metrics
    final = root / "user" / "final"
    assert pipeline.stage_done(final) and pipeline.stage_done(root / "item" / "final")
    info = json.loads((final / "glta_run.json").read_text())
    assert info["dataset"] == "tiny" and info["backbone"] == "tiny"
    assert not {"log_history", "world_size", "stage"} & set(info)  # the old per-launch keys are gone
    item, user = info["stages"]  # "item" was replaced by the new record, "user" likewise
    # relative to the run's root: records travel with the checkpoint (issue 25)
    assert item["name"] == "item" and item["output_dir"] == "item/final"
    assert user["name"] == "user" and user["global_step"] == 2 and user["output_dir"] == "user/final"
    assert user["world_size"] == 1 and [h for h in user["log_history"] if "loss" in h]
    assert user["hyperparameters"]["max_steps"] == 2 and info["stage_metrics"]["user"]["global_step"] == 2
    assert pipeline.stage_records({"stages": ["item", {"name": "user", "global_step": 3}]}) == [
        {"name": "item"}, {"name": "user", "global_step": 3}]


def test_validation_is_required_only_when_evaluating(setup):
    no_val = SimpleNamespace(**{k: getattr(setup.data, k) for k in ("name", "item_texts", "user_ids", "num_items")},
                             splits={"train": None}, matrix=setup.data.matrix)
    with pytest.raises(ValueError, match="validation"):
        pipeline.run_stage(setup.model, "user", _args(setup.tmp / "nv", eval_strategy="steps", eval_steps=1),
                           data=no_val, histories=setup.histories, has_time=setup.has_time)
    with pytest.raises(ValueError, match="early stopping"):
        pipeline.run_stage(setup.model, "user", _args(setup.tmp / "nv"), data=setup.data, histories=setup.histories,
                           has_time=setup.has_time, early_stopping_patience=2)


def test_ddp_unused_parameter_search_only_where_a_trainable_part_can_miss_its_input(tmp_path):
    assert not pipeline.needs_unused_parameter_search("item", _args(tmp_path, user_as_text=True))
    assert not pipeline.needs_unused_parameter_search("user", _args(tmp_path))
    assert pipeline.needs_unused_parameter_search("user", _args(tmp_path, user_as_text=True))
    assert pipeline.needs_unused_parameter_search("user", _args(tmp_path, no_item_alignment=True))
    assert pipeline.wants_resume("true") and pipeline.wants_resume("/x/checkpoint-3")
    assert not any(pipeline.wants_resume(v) for v in (None, "", "false", "no", "0"))


def test_zero_step_budgets_are_refused_when_parsed(tmp_path):
    with pytest.raises(ValueError, match="num_train_epochs must be > 0"):
        _args(tmp_path, max_steps=-1, num_train_epochs=0)
    with pytest.raises(ValueError, match="num_train_epochs must be a number >= 0"):  # the range, whatever max_steps
        _args(tmp_path, max_steps=3, num_train_epochs=-1)
    with pytest.raises(ValueError, match="item_stage_epochs must be a positive number"):
        _args(tmp_path, max_steps=-1, num_train_epochs=1, item_stage_epochs=0)
    assert _args(tmp_path, max_steps=3, num_train_epochs=0).max_steps == 3  # max_steps decides


def test_a_stage_record_with_zero_steps_is_not_finished(tmp_path):
    final = tmp_path / "user" / "final"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"")
    for step, done in ((0, False), (5, True)):
        (final / "glta_run.json").write_text(json.dumps({"stages": [{"name": "user", "global_step": step}]}))
        assert pipeline.stage_done(final) is done and (pipeline.finished_stage(final, "user") is not None) is done
    assert not pipeline.stage_done(final, "item")  # a folder of another stage
    (final / "glta_run.json").write_text(json.dumps({"stages": ["item", "user"]}))  # old name lists still count
    assert pipeline.stage_done(final)


def test_trainer_owns_its_stage_and_labels_its_progress_bar(setup):
    from glta_hf.trainer import GLTATrainer, StageProgressCallback

    trainer = GLTATrainer(setup.model, _args(setup.tmp / "own", disable_tqdm=False, eval_strategy="steps",
                                             eval_steps=1, item_stage_epochs=5.0),
                          "item", data=setup.data, histories=setup.histories, has_time=setup.has_time)
    assert trainer.stage == "item"
    assert trainer.args.eval_strategy == "no" and trainer.args.num_train_epochs == 5.0  # the item stage's copy
    assert trainer.ranking_truth is None and len(trainer.train_dataset) > 0
    trainable = {n for n, p in setup.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("model.item_projector") for n in trainable)
    assert not any(n.startswith(("model.user_projector", "model.llm.")) for n in trainable)
    [bar] = [c for c in trainer.callback_handler.callbacks if isinstance(c, StageProgressCallback)]
    assert bar.label == "item stage"
    user = GLTATrainer(setup.model, _args(setup.tmp / "own", eval_strategy="steps", eval_steps=1), data=setup.data,
                       histories=setup.histories, has_time=setup.has_time)  # stage from args.stage ("user")
    assert user.stage == "user" and user.ranking_truth is setup.data.matrix("validation")
    assert any(n.startswith("model.user_projector") for n, p in setup.model.named_parameters() if p.requires_grad)


def test_explicit_resume_path_is_used_or_refused_never_ignored(setup):
    from glta_hf.errors import CheckpointError

    kw = dict(data=setup.data, histories=setup.histories, has_time=setup.has_time)
    elsewhere = setup.tmp / "elsewhere"
    pipeline.run_stage(setup.model, "item", _args(elsewhere, save_strategy="steps", save_steps=2), **kw)
    checkpoint = elsewhere / "checkpoint-2"
    assert json.loads((checkpoint / "glta_stage.json").read_text())["stage"] == "item"

    # a path outside the stage folder resumes: this run trains one step, from step 2 to 3
    from transformers import TrainerCallback

    class CountSteps(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            CountSteps.steps += 1

    model, metrics = pipeline.run_stage(setup.model, "item", _args(setup.tmp / "resumed", max_steps=3), **kw,
                                        resume=str(checkpoint), callbacks=[CountSteps()])
    assert metrics["global_step"] == 3 and CountSteps.steps == 1

    with pytest.raises(CheckpointError, match="not of 'user'"):
        pipeline.run_stage(setup.model, "user", _args(setup.tmp / "wrong-stage"), **kw, resume=str(checkpoint))
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        pipeline.resolve_resume(str(setup.tmp / "no-such-checkpoint"), setup.tmp / "x")
    torn = setup.tmp / "torn" / "checkpoint-1"
    torn.mkdir(parents=True)
    (torn / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="trainer_state.json"):
        pipeline.resolve_resume(str(torn), setup.tmp / "x")
    other = SimpleNamespace(glta_state_dict=lambda: {"head.weight": np.zeros((2, 2))})
    with pytest.raises(CheckpointError, match="weights of another model"):
        pipeline.check_resume_checkpoint(checkpoint, stage="item", model=other)


def test_run_stages_reuses_only_what_finished_with_the_same_settings(setup):
    root = setup.tmp / "loop"
    built, messages, reports = [], [], []

    def fresh(stage):
        built.append(stage)
        return setup.model

    def loop(args, resume="last"):
        messages.clear()
        return pipeline.run_stages(args.stage_plan(), args, root=root, llm=setup.model.llm, data=setup.data,
                                   first_model=fresh, model_options={"head": "linear"}, resume=resume,
                                   on_stage=lambda stage, model, metrics: reports.append((stage, metrics)),
                                   echo=messages.append)

    model = loop(_args(root, stage="all"))
    assert built == ["item"] and [s for s, _ in reports] == ["item", "user"]
    table = model.user_table["histories"]
    complete, _ = user_histories(setup.data, ("train", "validation"))
    assert [sorted(h) for h in table] == [sorted(h.tolist()) for h in complete]  # fit + validation, saved

    reports.clear()
    loop(_args(root, stage="all"))
    assert all(m.get("skipped") for _, m in reports) and len(messages) == 2

    reports.clear()
    loop(_args(root, stage="all", max_steps=3))  # a larger budget: both stages train again
    assert not any(m.get("skipped") for _, m in reports) and reports[-1][1]["global_step"] == 3
    assert any("max_steps 2 -> 3" in line for line in messages)

    reports.clear()
    loop(_args(root, stage="all", max_steps=3), resume=None)  # without resume, every planned stage trains
    assert not any(m.get("skipped") for _, m in reports)

    # issue 25: an explicit checkpoint for a run whose stages are all finished is not used -- and that is said
    reports.clear()
    loop(_args(root, stage="all", max_steps=3), resume=str(setup.tmp / "some" / "checkpoint-7"))
    assert all(m.get("skipped") for _, m in reports)
    assert any("checkpoint-7 was not used: every stage" in line for line in messages)
