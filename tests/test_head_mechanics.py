"""Issue 23's training mechanics: the head's scale at initialisation, the residual's start, per-part learning rates
and the best validated state (step 0 included)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny

from glta_hf import GLTAConfig
from glta_hf.components import normalize_head_input
from glta_hf.trainer import parameter_part


@pytest.mark.parametrize("head", ["linear", "factorized"])
def test_loss_at_initialisation_is_uniform_over_the_catalogue(tmp_path, head):
    tiny = build_tiny(tmp_path, head=head)
    with torch.no_grad():
        out = tiny.model(**tiny.batch(users=(0, 1, 3)))
    ln_items = math.log(tiny.model.config.num_items)
    # unit-norm head input + N(0, 0.02) weights: logits ~0.02 wide, so the loss is ln|I| to within a few 1e-2
    assert out.logits.std().item() < 0.1
    assert abs(out.loss.item() - ln_items) < 0.03, (out.loss.item(), ln_items)


@pytest.mark.parametrize("head", ["linear", "factorized"])
def test_head_reads_a_unit_norm_input(tmp_path, head):
    model = build_tiny(tmp_path, head=head).model
    hidden = torch.randn(2, 4, model.config.llm_hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(model.score_slots(hidden * 50.0), model.score_slots(hidden), atol=1e-5, rtol=1e-5)
    assert normalize_head_input(hidden * 50.0, "unit").norm(dim=-1).sub(1).abs().max() < 1e-5


def test_saved_configs_without_the_options_keep_their_behaviour():
    old = GLTAConfig.from_dict({"num_items": 3, "num_users": 2, "graph_residual": True})
    assert (old.head_input_norm, old.residual_gate) == ("none", False)
    new = GLTAConfig(num_items=3, num_users=2, graph_residual=True)
    assert (new.head_input_norm, new.residual_gate) == ("unit", True)
    assert GLTAConfig.from_dict(new.to_dict()).head_input_norm == "unit"
    with pytest.raises(ValueError, match="head_input_norm"):
        GLTAConfig(head_input_norm="layer")


@pytest.mark.parametrize("head", ["linear", "factorized"])
def test_a_residual_model_starts_at_exactly_the_graph_ranking(tmp_path, head):
    tiny = build_tiny(tmp_path, head=head, graph_residual=True)
    model = tiny.model
    users, histories, targets = (0, 1, 3, 5), ((1, 2), (4,), (6, 7), (9,)), ((5,), (7,), (8,), (10,))
    full = tiny.batch(users=users, histories=histories, targets=targets)
    batch = {k: v for k, v in full.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**batch).logits[:, 0]  # (B, |I|) at the first slot
        graph = tiny.user_embeddings[list(users)] @ tiny.item_embeddings.T
    torch.testing.assert_close(logits, graph * model.graph_residual.scale.detach(), atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.topk(5).indices, graph.topk(5).indices)
    # and the gate learns: its gradient is nonzero at the start
    model.train()
    model(**full).loss.backward()
    assert model.graph_residual.gate.grad is not None and model.graph_residual.gate.grad.abs() > 0


def test_parameter_parts_name_every_trainable_piece(tmp_path):
    model = build_tiny(tmp_path, head="factorized", graph_residual=True).model
    names = {n: parameter_part(n) for n, _ in model.named_parameters() if "llm" not in n.split(".")}
    assert set(names.values()) == {"head", "projector", "slots", "residual"}, names
    assert parameter_part("model.head.weight") == "head"  # composition-style names map the same way
    assert parameter_part("model.user_projector.weight") == "projector"


def _user_trainer(tiny, tmp_path, **kw):
    from test_trainer import _args, _trainer

    return _trainer(tiny, _args(tmp_path, **kw))


def test_each_part_trains_at_its_own_learning_rate(tmp_path):
    tiny = build_tiny(tmp_path, head="factorized", graph_residual=True)
    trainer = _user_trainer(tiny, tmp_path, learning_rate=1e-3, head_learning_rate=5e-2, residual_learning_rate=1e-1)
    optimizer = trainer.create_optimizer()
    rates = {}
    names = {id(p): n for n, p in tiny.model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rates[names[id(p)]] = group["lr"]
    assert rates["head.weight"] == 5e-2 and rates["head.item_bias"] == 5e-2
    assert rates["graph_residual.gate"] == 1e-1 and rates["graph_residual.scale"] == 1e-1
    assert rates["model.user_projector.weight"] == 1e-3 and rates["model.slot_embeddings"] == 1e-3
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        p.requires_grad for p in tiny.model.parameters())


def test_a_stage_ends_on_its_best_validated_state_even_when_that_is_step_0(tmp_path, monkeypatch):
    import glta_hf.trainer as trainer_module

    tiny = build_tiny(tmp_path)
    trainer = _user_trainer(tiny, tmp_path, eval_strategy="steps", eval_steps=2, save_steps=2,
                            load_best_model_at_end=True, metric_for_best_model="ndcg@2", learning_rate=5e-2)
    start = {n: p.detach().clone() for n, p in tiny.model.named_parameters() if p.requires_grad}

    def validation(model, **kw):  # the start ranks best; every later evaluation is worse
        return {"ndcg@2": 1.0 if trainer.state.global_step == 0 else 0.1 * trainer.state.global_step}

    monkeypatch.setattr(trainer_module, "evaluate_model", validation)
    trainer.train()
    assert trainer.best_state["step"] == 0
    steps = [entry["step"] for entry in trainer.state.log_history if "eval_ndcg@2" in entry]
    assert steps[0] == 0 and len(steps) >= 3  # step 0 was validated, then the steps
    for name, param in tiny.model.named_parameters():
        if name in start:
            torch.testing.assert_close(param.detach(), start[name])


def test_every_stage_reports_its_diagnostics(tmp_path, capsys):
    tiny = build_tiny(tmp_path, head="factorized")
    trainer = _user_trainer(tiny, tmp_path, max_steps=3)
    trainer.train()
    report = trainer.diagnostics
    # logits ~0.05 wide over 12 items: the loss is ln|I| up to the noise of a 3-prompt batch
    assert report["logit_std"] < 0.1 and abs(report["loss_at_init"] - report["ln_num_items"]) < 0.1
    assert report["query_norm"] < report["user_vector_norm"]
    assert 0.0 <= report["targets_in_history"] <= 1.0
    assert len(report["updates"]) == 3 and all(r["update_head"] > 0 for r in report["updates"])
    assert all(r["query_update_norm"] < report["user_vector_norm"] for r in report["updates"])
    printed = capsys.readouterr().out
    assert "loss at init" in printed and "query norm" in printed and "step 1: relative update" in printed


def test_format_report_flags_a_head_wider_than_uniform():
    from glta_hf.diagnose import format_report

    text = format_report({"loss_at_init": 10.8, "ln_num_items": 9.18, "query_norm": 9.6, "user_vector_norm": 4.4})
    assert text.splitlines()[0].startswith("!") and text.splitlines()[1].startswith("!")
    ok = format_report({"loss_at_init": 9.18, "ln_num_items": 9.18, "query_norm": 0.2, "user_vector_norm": 4.4})
    assert "!" not in ok


def test_the_item_stage_measures_itself_on_held_out_items(tmp_path):
    from types import SimpleNamespace

    from glta_hf.metrics import evaluate_item_alignment
    from glta_hf.trainer import GLTATrainer

    tiny = build_tiny(tmp_path, head="factorized")
    data = SimpleNamespace(num_items=12, item_texts=[f"Item {j}: a thing" for j in range(12)])
    from test_trainer import _args

    args = _args(tmp_path, item_eval_fraction=0.3, items_per_sample=3, max_steps=2)
    trainer = GLTATrainer(model=tiny.model, args=args, stage="item", data=data)
    held = set(trainer.item_eval_dataset.items.tolist())
    assert len(held) == 4 and not held & set(trainer.train_dataset.items.tolist())
    trainer.train()
    start, end = trainer.diagnostics["item_alignment"]["start"], trainer.diagnostics["item_alignment"]["end"]
    assert start["item_order_chance"] == pytest.approx(1 / 3) and start["item_catalogue_chance"] == pytest.approx(1 / 12)
    assert start["item_slots_evaluated"] > 0 and 0 <= end["item_order_accuracy"] <= 1
    # a model whose head scores the described item first is measured as perfect
    sample = trainer.item_eval_dataset[0]
    tiny.model.score_slots = lambda hidden, *rest: torch.nn.functional.one_hot(  # an oracle head
        torch.tensor(sample.targets + [0] * (hidden.shape[1] - len(sample.targets))), 12).float()[None] * 5
    got = evaluate_item_alignment(tiny.model, [sample], batch_size=1)
    assert got["item_order_accuracy"] == 1.0 and got["item_catalogue_accuracy"] == 1.0


def test_masking_other_targets_removes_exactly_them_from_each_softmax():
    from glta_hf.loss import masked_slot_loss, other_targets_mask

    labels = torch.tensor([[3, 5, -100], [1, -100, -100]])
    mask = other_targets_mask(labels, 6)
    assert mask[0, 0].nonzero().flatten().tolist() == [5] and mask[0, 1].nonzero().flatten().tolist() == [3]
    assert not mask[1, 0].any()  # a lone target keeps the whole catalogue (unlabelled slots do not count)
    logits = torch.randn(2, 3, 6)
    expected0 = torch.nn.functional.cross_entropy(logits[0, 0, [0, 1, 2, 3, 4]][None], torch.tensor([3]))
    expected1 = torch.nn.functional.cross_entropy(logits[0, 1, [0, 1, 2, 4, 5]][None], torch.tensor([4]))
    expected2 = torch.nn.functional.cross_entropy(logits[1, 0][None], torch.tensor([1]))
    torch.testing.assert_close(masked_slot_loss(logits, labels), (expected0 + expected1 + expected2) / 3)


def test_the_user_stage_trains_with_other_targets_masked(tmp_path):
    tiny = build_tiny(tmp_path)
    trainer = _user_trainer(tiny, tmp_path, mask_other_targets=True, max_steps=2)
    trainer.train()
    assert trainer.state.global_step == 2
    assert "mask_other_targets" in trainer.args.stage_settings("user")


def test_centring_moves_only_the_start_of_a_linear_projector(tmp_path):
    plain = build_tiny(tmp_path / "a").model
    centred = build_tiny(tmp_path / "b", center_node_embeddings=True).model
    assert centred.config.center_node_embeddings and not plain.config.center_node_embeddings
    items = centred.item_embeddings
    with torch.no_grad():
        got = centred.model.project("<item>", items)
        expected = centred.item_projector(items - items.mean(0))
        torch.testing.assert_close(got, expected)
        # the shared direction is gone: the projected table's mean is the projector's bias alone
        torch.testing.assert_close(got.mean(0), centred.item_projector.bias, atol=1e-5, rtol=1e-5)
        assert (plain.model.project("<item>", items) - plain.item_projector.bias).mean(0).norm() > 1e-3
