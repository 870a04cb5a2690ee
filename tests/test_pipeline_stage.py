"""``glta_hf.pipeline.run_stage``: the one stage implementation (align.py, quickstart, benchmark) -- the stage
records in ``glta_run.json``, old name-only records, the validation requirement and the DDP unused-parameter flag."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from _tiny_data import write_tiny_movielens

from glta_hf import pipeline


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
    from glta_hf.glta_config import GLTATrainingArguments

    base = dict(output_dir=str(folder), per_device_train_batch_size=4, max_steps=2, save_strategy="no",
                eval_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True, seed=0, num_slots=4,
                max_history=3, items_per_sample=3, no_profile=True, no_prediction=True, eval_ks="2,4",
                metric_for_best_model="ndcg@4",
                report_to="none")
    base.update(kw)
    return GLTATrainingArguments(**base)


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
    assert item["name"] == "item" and item["output_dir"] == str(root / "item" / "final")
    assert user["name"] == "user" and user["global_step"] == 2 and user["output_dir"] == str(final)
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
