"""The graph residual's stacking fold: a graph fit without some of each user's edges, the user stage's targets drawn
from them (``target_policy="held_out"``), and the softmax that leaves the user's training items out."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_tiny, load_script

from glta_hf.alignment_data import UserItemDataset
from glta_hf.data.schema import UserItemMatrix
from glta_hf.errors import TrainingError
from glta_hf.graph import HELD_OUT_KEY, held_out_fold
from glta_hf.loss import masked_slot_loss


def _matrix(rows, num_items=12):
    pairs = [(u, i) for u, items in enumerate(rows) for i in items]
    return UserItemMatrix.from_pairs(*zip(*pairs), len(rows), num_items)


def test_the_fold_splits_each_user_and_is_a_function_of_its_seed():
    train = _matrix([[0, 1, 2, 3, 4], [5, 6], [7], [8, 9, 10, 11, 0, 1, 2, 3, 4, 5]])
    seen, held = held_out_fold(train, 0.3, seed=1)
    for user in range(train.num_users):
        mine, a, b = set(train.items_of(user)), set(seen.items_of(user)), set(held.items_of(user))
        assert a | b == mine and not a & b
        assert a, "no user is emptied"
    assert len(held.items_of(2)) == 0  # a single-item user keeps it
    assert held.nnz >= 3
    again = held_out_fold(train, 0.3, seed=1)[1]
    assert np.array_equal(again.indices, held.indices)
    assert not np.array_equal(held_out_fold(train, 0.3, seed=2)[1].indices, held.indices) or held.nnz == 0
    with pytest.raises(TrainingError, match="no user"):
        held_out_fold(_matrix([[0], [1]]), 0.5)


def test_held_out_targets_come_from_the_fold_and_the_history_from_the_rest(tmp_path):
    tiny = build_tiny(tmp_path)
    histories = [np.array(h) for h in ([0, 1, 3, 4], [2, 3, 4, 11], [5])]
    held = [[3, 4], [11], []]
    ds = UserItemDataset(histories, tiny.tokenizer, tiny.model.prompt_config, mode="train",
                         target_policy="held_out", held_out=held)
    assert ds.users == [0, 1]  # a user with nothing held out does not train
    for user, fold in ((0, {3, 4}), (1, {11})):
        history, targets = ds.train_history_and_targets(user)
        assert set(targets) == fold and not set(history) & fold
        assert set(history) == set(histories[user].tolist()) - fold
    with pytest.raises(ValueError, match="held_out="):
        UserItemDataset(histories, tiny.tokenizer, tiny.model.prompt_config, mode="train", target_policy="held_out")


def test_the_softmax_can_leave_the_users_training_items_out():
    logits = torch.randn(2, 2, 6)
    labels = torch.tensor([[3, -100], [1, 5]])
    known = torch.zeros(2, 6, dtype=torch.bool)
    known[0, [0, 3]] = True  # user 0's training items: 0 and its target 3
    known[1, [1, 2, 5]] = True
    keep0 = [1, 2, 3, 4, 5]
    expected = [torch.nn.functional.cross_entropy(logits[0, 0, keep0][None], torch.tensor([2])),
                torch.nn.functional.cross_entropy(logits[1, 0, [0, 1, 3, 4]][None], torch.tensor([1])),
                torch.nn.functional.cross_entropy(logits[1, 1, [0, 3, 4, 5]][None], torch.tensor([3]))]
    torch.testing.assert_close(masked_slot_loss(logits, labels, known=known), sum(expected) / 3)
    with pytest.raises(ValueError, match="known items"):
        masked_slot_loss(logits, labels, known=known[:1])


def test_the_user_stage_trains_on_held_out_targets_with_training_items_masked(tmp_path):
    from test_trainer import HISTORIES, _args

    from glta_hf.alignment_data import GLTACollator
    from glta_hf.trainer import GLTATrainer

    tiny = build_tiny(tmp_path)
    args = _args(tmp_path, target_policy="held_out", held_out_fraction=0.4, mask_training_items=True, max_steps=2)
    model = tiny.model
    model.set_trainable("user")
    train = _matrix([h.tolist() for h in HISTORIES])
    held = held_out_fold(train, 0.4, 0)[1]
    ds = UserItemDataset(HISTORIES, tiny.tokenizer, model.prompt_config, mode="train", target_policy="held_out",
                         held_out=[held.items_of(u) for u in range(held.num_users)])
    model.attach_user_context(histories=[h.tolist() for h in HISTORIES])
    trainer = GLTATrainer(model=model, args=args, train_dataset=ds, ranking_train=train,
                          data_collator=GLTACollator(tiny.tokenizer.pad_token_id, model.config.num_slots))
    mask = trainer._training_items_mask(torch.tensor([0, 3]), model.config.num_items)
    assert mask[0].nonzero().flatten().tolist() == [0, 1, 3] and mask[1].nonzero().flatten().tolist() == [6, 7, 8]
    trainer.train()
    assert trainer.state.global_step == 2
    settings = args.stage_settings("user")
    assert settings["held_out_fraction"] == 0.4 and settings["mask_training_items"] is True
    with pytest.raises(ValueError, match="held_out_fraction"):
        _args(tmp_path, held_out_fraction=1.5)


def test_align_takes_the_fold_from_the_graph_folder_and_refuses_another(tmp_path):
    from test_trainer import _args

    from glta_hf.pipeline import reconcile_held_out

    graph = tmp_path / "graph"
    graph.mkdir()
    (graph / "graph_config.json").write_text(json.dumps({"model": "LightGCN"}))
    args = _args(tmp_path, target_policy="held_out")
    with pytest.raises(ValueError, match="fit on every training edge"):
        reconcile_held_out(args, graph)
    (graph / "graph_config.json").write_text(json.dumps({HELD_OUT_KEY: {"fraction": 0.2, "seed": 3}}))
    reconcile_held_out(args, graph)
    assert (args.held_out_fraction, args.held_out_seed) == (0.2, 3)
    other = _args(tmp_path, target_policy="held_out", held_out_fraction=0.3)
    with pytest.raises(ValueError, match=r"differ from the fold .*0\.2 / 3"):
        reconcile_held_out(other, graph)
    plain = _args(tmp_path)  # another policy ignores the record
    reconcile_held_out(plain, graph)
    assert plain.held_out_fraction is None


def test_pretrain_graph_fits_without_the_fold_and_records_it(tmp_path):
    from glta_hf.graph import recorded_held_out

    script = load_script("training/pretrain_graph.py")
    out = tmp_path / "graph"
    assert script.main(["--dataset", "ml-latest-small", "--model", "lightgcn", "--epochs", "1", "--eval-every", "1",
                        "--dim", "8", "--layers", "1", "--held-out-fraction", "0.25", "--held-out-seed", "4",
                        "--skip-test", "--no-progress", "--output-dir", str(out)]) == 0
    assert recorded_held_out(out) == {"fraction": 0.25, "seed": 4}


def test_a_residual_can_score_with_a_refit_graph_and_saves_it(tmp_path):
    from glta_hf import GLTAConfig, GLTAForRecommendation

    tiny = build_tiny(tmp_path, head="factorized", graph_residual=True)
    model = tiny.model
    users, histories, targets = (0, 1, 3, 5), ((1, 2), (4,), (6, 7), (9,)), ((5,), (7,), (8,), (10,))
    batch = {k: v for k, v in tiny.batch(users=users, histories=histories, targets=targets).items() if k != "labels"}
    refit_user = torch.randn_like(model.user_embeddings)
    refit_item = torch.randn_like(model.item_embeddings)
    with torch.no_grad():
        before = model(**batch).logits[:, 0]
        model.set_residual_tables(refit_user, refit_item)
        after = model(**batch).logits[:, 0]
    # the gate is 0: the model is the refit graph's ranking; the projectors still read the old tables
    expected = refit_user[list(users)] @ refit_item.T * model.graph_residual.scale.detach()
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, after)
    assert torch.equal(model.user_embeddings, tiny.user_embeddings)
    assert model.config.residual_graph_tables
    model.save_pretrained(tmp_path / "saved")
    again = GLTAForRecommendation.from_pretrained(tmp_path / "saved", llm=model.llm)
    torch.testing.assert_close(again.graph_residual.item_table, refit_item)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits[:, 0], after, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shapes"):
        model.set_residual_tables(refit_user[:2], refit_item)
    with pytest.raises(ValueError, match="graph_residual=True"):
        GLTAConfig(residual_graph_tables=True)
