"""The item stage's title warm-up (glta_hf.item_titles): it moves the item projector alone, fits the training items'
texts, is named in the stage settings only when on, and every item stage reports the held-out title retrieval."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import build_tiny
from test_trainer import _args

from glta_hf.diagnose import format_report
from glta_hf.errors import InvalidArgumentError
from glta_hf.item_titles import title_embeddings, title_retrieval, warm_up_item_projector
from glta_hf.trainer import GLTATrainer

WORDS = ["Alpha", "Heat", "Toy", "Story", "Crime", "Comedy", "Drama", "Night", "Day", "Sun", "Moon", "Star"]
TOPICS = ["love", "war", "cats", "dogs", "space", "ghosts", "money", "time", "food", "music", "sport", "ships"]
TEXTS = [f"Movie {w} about {t}" for w, t in zip(WORDS, TOPICS)]
TRAIN = list(range(8))


def _state(model):
    """Every parameter and buffer, by name (copies)."""
    return {n: t.detach().clone() for n, t in list(model.named_parameters()) + list(model.named_buffers())}


def test_title_embeddings_are_the_mean_input_embedding_of_the_capped_text(tmp_path):
    model = build_tiny(tmp_path).model
    table = title_embeddings(model, TEXTS)
    assert table.shape == (12, model.config.llm_hidden_size) and table.dtype == torch.float32
    ids = model.tokenizer(TEXTS[3], add_special_tokens=False)["input_ids"][:4]
    expected = model.get_input_embeddings().weight[ids].float().mean(0)
    torch.testing.assert_close(title_embeddings(model, TEXTS, items=[3], max_tokens=4)[0], expected)
    # a placeholder string in a text is spelled out, as the prompts show it (never the <item> token's row)
    torch.testing.assert_close(title_embeddings(model, ["<item>"])[0], title_embeddings(model, ["(item)"])[0])


def test_the_warm_up_moves_only_the_item_projector(tmp_path):
    model = build_tiny(tmp_path, head="factorized").model
    model.set_trainable("user")  # the item projector frozen: the warm-up trains it anyway and restores the flag
    before = _state(model)
    warm_up_item_projector(model, title_embeddings(model, TEXTS), TRAIN, steps=20, lr=1e-2)
    after = _state(model)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(n.startswith("model.item_projector.") for n in moved), moved
    assert not any(p.requires_grad for p in model.item_projector.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_the_warm_up_fits_the_training_items_texts(tmp_path):
    model = build_tiny(tmp_path).model
    table = title_embeddings(model, TEXTS)
    result = warm_up_item_projector(model, table, TRAIN, steps=300, lr=1e-2)
    assert result["loss_end"] < 0.2 * result["loss_start"], result
    assert result["train_top1_end"] >= 0.75 > 2 * result["train_top1_start"], result
    assert result["norm_ratio_end"] == pytest.approx(1.0, abs=0.1)  # the token at the LLM's token scale
    fitted = title_retrieval(model, table, TRAIN, TRAIN)
    assert fitted["item_title_top1"] == pytest.approx(result["train_top1_end"])
    assert fitted["item_title_mrr"] > 2 * fitted["item_title_chance_mrr"] > 0


@pytest.mark.parametrize("center", [False, True])
def test_the_factored_warm_up_takes_the_same_steps_as_the_plain_one(tmp_path, center):
    """The linear projector's shortcut (logits over the node width) is the same loss and the same Adam steps."""
    models = [build_tiny(tmp_path / name).model for name in ("plain", "factored")]
    models[1].load_state_dict(models[0].state_dict())
    for model in models:
        model.config.center_node_embeddings = center
    table = title_embeddings(models[0], TEXTS)
    start = models[0].item_projector.weight.detach().clone()
    plain = warm_up_item_projector(models[0], table, TRAIN, steps=30, lr=1e-2, factored=False, chunk_size=3)
    fast = warm_up_item_projector(models[1], table, TRAIN, steps=30, lr=1e-2, chunk_size=3)  # linear: factored
    for key in ("loss_start", "loss_end", "nce_end", "scale_end", "norm_ratio_end"):
        assert fast[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
    for (name, a), (_, b) in zip(models[0].item_projector.named_parameters(),
                                 models[1].item_projector.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    assert (models[0].item_projector.weight - start).norm() > 1e-3 * start.norm()  # the steps moved it


def test_the_factored_warm_up_needs_a_linear_projector(tmp_path):
    model = build_tiny(tmp_path, projector="mlp").model
    with pytest.raises(ValueError, match="linear item projector"):
        warm_up_item_projector(model, title_embeddings(model, TEXTS), TRAIN, steps=1, lr=1e-2, factored=True)
    result = warm_up_item_projector(model, title_embeddings(model, TEXTS), TRAIN, steps=2, lr=1e-2)  # plain path
    assert math.isfinite(result["loss_end"])


def test_title_retrieval_ranks_against_the_catalogue(tmp_path):
    model = build_tiny(tmp_path).model
    items = [8, 9, 10, 11]
    got = title_retrieval(model, title_embeddings(model, TEXTS), items)
    assert all(0.0 <= got[k] <= 1.0 for k in ("item_title_top1", "item_title_mrr"))
    assert got["item_title_chance"] == pytest.approx(1 / 12) and got["item_title_items"] == 4
    assert got["item_title_chance_mrr"] == pytest.approx(sum(1 / k for k in range(1, 13)) / 12)
    with torch.no_grad():
        tokens = model.model.project("<item>", model.item_embeddings)
    oracle = title_retrieval(model, tokens, items)  # each text IS the item's token: ranked first
    assert oracle["item_title_top1"] == 1.0 and oracle["item_title_mrr"] == 1.0
    worst = title_retrieval(model, -tokens, items)  # the opposite direction: ranked last
    assert worst["item_title_mrr"] == pytest.approx(1 / 12)


def test_the_arguments_validate_and_name_the_warm_up_only_when_on(tmp_path):
    for bad in (dict(item_title_warmup_steps=-1), dict(item_title_learning_rate=0.0),
                dict(item_title_learning_rate=-1e-2)):
        with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
            _args(tmp_path, **bad)
    plain = _args(tmp_path)
    assert plain.item_title_warmup_steps == 0
    assert not {"item_title_warmup_steps", "item_title_learning_rate"} & set(plain.stage_settings("item"))
    on = _args(tmp_path, item_title_warmup_steps=50, item_title_learning_rate=3e-3)
    settings = on.stage_settings("item")
    assert settings["item_title_warmup_steps"] == 50 and settings["item_title_learning_rate"] == 3e-3
    assert "item_title_warmup_steps" not in on.stage_settings("user")
    assert on.stage_fingerprint("item") != plain.stage_fingerprint("item")
    assert on.stage_fingerprint("user") == plain.stage_fingerprint("user")


def _item_trainer(tiny, tmp_path, **kw):
    data = SimpleNamespace(num_items=12, item_texts=TEXTS)
    args = _args(tmp_path, **{"item_eval_fraction": 0.3, "items_per_sample": 3, "max_steps": 1, **kw})
    return GLTATrainer(model=tiny.model, args=args, stage="item", data=data)


def test_every_item_stage_reports_the_held_out_title_retrieval(tmp_path):
    trainer = _item_trainer(build_tiny(tmp_path), tmp_path)
    trainer.train()
    measured = trainer.diagnostics["item_alignment"]
    assert set(measured) == {"start", "end"} and "item_title_warmup" not in trainer.diagnostics
    for when in ("start", "end"):
        assert measured[when]["item_title_items"] == 4 and 0 <= measured[when]["item_title_mrr"] <= 1
        assert "item_order_accuracy" in measured[when]  # next to the slots' metric


def test_the_item_stage_warms_up_before_its_steps(tmp_path, capsys):
    tiny = build_tiny(tmp_path)
    llm = {k: v.clone() for k, v in tiny.model.llm.state_dict().items()}
    trainer = _item_trainer(tiny, tmp_path, item_title_warmup_steps=100, save_steps=1)
    held = set(trainer.item_eval_dataset.items.tolist())
    trainer.train()
    warmup = trainer.diagnostics["item_title_warmup"]
    assert warmup["steps"] == 100 and warmup["loss_end"] < warmup["loss_start"]
    assert warmup["train_top1_end"] > warmup["train_top1_start"]
    measured = trainer.diagnostics["item_alignment"]
    assert list(measured) == ["start", "after_title_warmup", "end"]
    assert measured["after_title_warmup"]["item_title_items"] == len(held)
    assert all(torch.equal(v, tiny.model.llm.state_dict()[k]) for k, v in llm.items())
    printed = capsys.readouterr().out
    assert "title warm-up, 100 steps" in printed and "held-out items' own text" in printed
    assert "after title warmup" in format_report(trainer.diagnostics)

    # a resumed stage does not warm up again (its checkpoint already holds the warmed-up projector)
    resumed = _item_trainer(build_tiny(tmp_path / "b"), tmp_path, item_title_warmup_steps=100, save_steps=1,
                            max_steps=2)
    resumed._title_warmup = lambda: pytest.fail("warmed up on resume")
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    # ... and its record carries the warm-up of its fresh start from the checkpoint, as an uninterrupted run's does
    assert resumed.diagnostics["item_title_warmup"] == pytest.approx(warmup)
    assert list(resumed.diagnostics["item_alignment"]) == ["start", "after_title_warmup", "end"]


def test_the_held_out_items_never_enter_the_fit(tmp_path, monkeypatch):
    import glta_hf.item_titles as item_titles

    seen = {}
    real = item_titles.warm_up_item_projector

    def spy(model, table, items, steps, lr, **kw):
        seen["items"] = np.asarray(items).tolist()
        return real(model, table, items, steps, lr, **kw)

    monkeypatch.setattr(item_titles, "warm_up_item_projector", spy)
    trainer = _item_trainer(build_tiny(tmp_path), tmp_path, item_title_warmup_steps=2)
    trainer.train()
    held = set(trainer.item_eval_dataset.items.tolist())
    assert seen["items"] and not held & set(seen["items"])
    assert sorted(seen["items"]) == sorted(trainer.train_dataset.items.tolist())
    assert math.isfinite(trainer.diagnostics["item_title_warmup"]["loss_end"])
