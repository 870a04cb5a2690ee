"""Graph stage: LightGCN propagation, BPR training, early stopping, node-embedding export/import."""
import json
import re

import numpy as np
import pytest
import torch
from conftest import load_script

from glta_hf.data.schema import UserItemMatrix
from glta_hf.errors import CheckpointError
from glta_hf.graph import (
    MF,
    BPRTrainer,
    GRAPH_MODELS,
    GraphRecommender,
    GraphTrainingArguments,
    LightGCN,
    LightGCNCE,
    LightGCNPlus,
    NegativeSampler,
    Pop,
    build_model,
    export_node_embeddings,
    register_graph_model,
    load_node_embeddings,
)
from glta_hf.metrics import evaluate


def tiny_graph():
    pairs = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 3), (3, 3), (3, 4), (3, 0)]
    users, items = zip(*pairs)
    return UserItemMatrix.from_pairs(users, items, 4, 5)


def dense_lightgcn(train, user_w, item_w, layers):
    """LightGCN written out with dense matrices: mean of A_hat^l E for l = 0..L."""
    n_u, n_i = train.num_users, train.num_items
    r = torch.zeros(n_u, n_i)
    users, items = train.to_pairs()
    r[users, items] = 1
    a = torch.zeros(n_u + n_i, n_u + n_i)
    a[:n_u, n_u:], a[n_u:, :n_u] = r, r.T
    deg = a.sum(1)
    d = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    a_hat = d[:, None] * a * d[None, :]
    e = torch.cat([user_w, item_w])
    layer, out = e, e.clone()
    for _ in range(layers):
        layer = a_hat @ layer
        out = out + layer
    out = out / (layers + 1)
    return out[:n_u], out[n_u:]


@pytest.mark.parametrize("propagation", ["sparse", "pyg"])
def test_lightgcn_propagation_matches_dense_reference(propagation):
    train = tiny_graph()
    torch.manual_seed(0)
    model = LightGCN(train, dim=8, layers=3, propagation=propagation)
    user, item = model.embeddings()
    ref_u, ref_i = dense_lightgcn(train, model.user_embedding.weight.detach(), model.item_embedding.weight.detach(), 3)
    torch.testing.assert_close(user.detach(), ref_u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item.detach(), ref_i, atol=1e-5, rtol=1e-5)


def test_sparse_gradient_matches_pyg():
    """The custom symmetric-spmm backward gives the same gradients as PyG's message passing."""
    train = tiny_graph()
    grads = []
    for propagation in ("sparse", "pyg"):
        torch.manual_seed(0)
        model = LightGCN(train, dim=8, layers=2, propagation=propagation)
        loss = model.calculate_loss((torch.tensor([0, 1, 3]), torch.tensor([1, 2, 4]), torch.tensor([[2], [0], [1]])))
        loss.backward()
        grads.append(torch.cat([model.user_embedding.weight.grad, model.item_embedding.weight.grad]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_negative_sampler_never_returns_seen_items():
    train = tiny_graph()
    sampler = NegativeSampler(train, torch.Generator().manual_seed(0))
    users = torch.tensor([0, 1, 2, 3] * 50)
    neg = sampler.sample(users, 3)
    assert neg.shape == (200, 3)
    for u, row in zip(users.tolist(), neg.tolist()):
        assert not set(row) & set(train.items_of(u).tolist())


def planted(num_users=120, num_items=60, clusters=4, per_user=10, seed=0):
    """Users like items of their own cluster; a few globally popular items add a Pop-friendly signal."""
    rng = np.random.default_rng(seed)
    size = num_items // clusters
    rows = []
    for u in range(num_users):
        c = u % clusters
        own = rng.choice(np.arange(c * size, (c + 1) * size), per_user, replace=False)
        rows.append(np.unique(np.concatenate([own, rng.choice(3, 1)])))
    train_pairs, val_pairs, test_pairs = [], [], []
    for u, row in enumerate(rows):
        row = rng.permutation(row)
        test_pairs += [(u, i) for i in row[:3]]
        val_pairs += [(u, i) for i in row[3:5]]
        train_pairs += [(u, i) for i in row[5:]]

    def m(pairs):
        users, items = zip(*pairs)
        return UserItemMatrix.from_pairs(users, items, num_users, num_items)

    return m(train_pairs), m(val_pairs), m(test_pairs)


@pytest.mark.parametrize("name", ["mf", "lightgcn", "lightgcn_ce"])
def test_bpr_training_learns_planted_structure(name):
    train, val, test = planted()
    args = GraphTrainingArguments(dim=16, layers=2, lr=0.05, reg=1e-4, batch_size=256, epochs=30, patience=30,
                                  seed=0, progress=False)
    model = build_model(name, train, args)
    trainer = BPRTrainer(model, args, train, val)
    result = trainer.train()
    losses = [row["loss"] for row in result.history]
    # the softmax loss has a floor of about log(#items the user likes in the cluster): it can fall less than BPR
    assert losses[-1] < (0.6 if name == "lightgcn_ce" else 0.5) * losses[0]
    ours = evaluate(train=train, test=test, scorer=model.full_sort_predict)
    pop = evaluate(train=train, test=test, scorer=Pop(train).full_sort_predict)
    assert ours["ndcg@10"] > pop["ndcg@10"] + 0.1, (ours["ndcg@10"], pop["ndcg@10"])


def test_training_is_seeded():
    train, val, _ = planted()
    weights = []
    for _ in range(2):
        args = GraphTrainingArguments(dim=8, layers=1, lr=0.01, batch_size=128, epochs=2, seed=3, progress=False)
        model = build_model("lightgcn", train, args)
        BPRTrainer(model, args, train, val).train()
        weights.append(model.user_embedding.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)


def test_early_stopping_restores_best_epoch():
    train, val, _ = planted()
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.05, 0.9])
    snapshots = {}

    class Scripted(BPRTrainer):
        def evaluate(self, test, train=None):
            epoch = len(snapshots) + 1
            snapshots[epoch] = self.model.user_embedding.weight.detach().clone()
            return {"ndcg@10": next(scripted)}

    args = GraphTrainingArguments(dim=8, lr=0.05, batch_size=128, epochs=6, patience=3, progress=False)
    model = MF(train.num_users, train.num_items, dim=8)
    result = Scripted(model, args, train, val).train()
    assert len(result.history) == 5  # epochs 3, 4, 5 did not improve on epoch 2 -> stop before epoch 6
    assert result.best_epoch == 2 and result.best_metric == 0.3
    torch.testing.assert_close(model.user_embedding.weight.detach(), snapshots[2], rtol=0, atol=0)
    assert not torch.equal(snapshots[2], snapshots[5])


def test_node_embeddings_round_trip(tmp_path):
    train = tiny_graph()
    model = LightGCN(train, dim=8, layers=2)
    user_ids, item_ids = [f"u{i}" for i in range(4)], [f"i{i}" for i in range(5)]
    export_node_embeddings(model, tmp_path, user_ids, item_ids, {"lr": 0.01})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "graph_config.json", "item_map.json", "node_embeddings.safetensors", "user_map.json"]
    loaded = load_node_embeddings(tmp_path)
    user, item = model.cached_embeddings()
    torch.testing.assert_close(loaded.user, user)
    torch.testing.assert_close(loaded.item, item)
    assert loaded.user_ids == user_ids and loaded.item_ids == item_ids
    assert loaded.config["model"] == "LightGCN" and loaded.config["dim"] == 8 and loaded.config["lr"] == 0.01
    # an id map that disagrees with the tables is refused, as is a pickle file
    (tmp_path / "item_map.json").write_text(json.dumps(item_ids[:-1]))
    with pytest.raises(CheckpointError, match="item_map.json"):
        load_node_embeddings(tmp_path)
    (tmp_path / "item_map.json").write_text(json.dumps(item_ids))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pickle"):
        load_node_embeddings(tmp_path)


def test_full_sort_predict_agrees_with_predict_and_cache_refreshes():
    train = tiny_graph()
    model = LightGCN(train, dim=8, layers=2).eval()
    users = torch.tensor([0, 2])
    full = model.full_sort_predict(users)
    torch.testing.assert_close(full[:, 3], model.predict(users, torch.tensor([3, 3])))
    model.train()
    with torch.no_grad():
        model.item_embedding.weight.add_(1.0)
    model.eval()
    assert not torch.allclose(model.full_sort_predict(users), full)


def test_lightgcn_plus_auxiliary_loss_is_used():
    train = tiny_graph()
    torch.manual_seed(0)
    text = torch.randn(5, 12)
    plus = LightGCNPlus(train, text, dim=8, layers=2, text_weight=1.0)
    batch = (torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([[3], [4]]))
    aux = plus.auxiliary_loss(batch, *plus.embeddings())
    assert aux is not None and aux.item() > 0
    loss = plus.calculate_loss(batch)
    loss.backward()
    assert plus.text_proj[0].weight.grad is not None


def test_lightgcn_ce_loss_is_full_softmax_cross_entropy_over_all_items():
    train = tiny_graph()
    torch.manual_seed(0)
    model = LightGCNCE(train, dim=8, layers=2, reg=0.0, temperature=0.5)
    users, pos = torch.tensor([0, 1, 3]), torch.tensor([1, 2, 4])
    batch = (users, pos, torch.empty(3, 0, dtype=torch.long))
    user, item = model.embeddings()
    logits = (user[users] @ item.T / 0.5).detach()
    expected = -(logits.gather(1, pos[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)).mean()
    torch.testing.assert_close(model.calculate_loss(batch).detach(), expected)
    model.reg = 1.0  # the L2 term is added on the ego rows of the batch's users and positives
    l2 = 0.5 * (model.user_embedding.weight[users].pow(2).sum() + model.item_embedding.weight[pos].pow(2).sum()) / 3
    torch.testing.assert_close(model.calculate_loss(batch).detach(), (expected + l2).detach())
    with pytest.raises(ValueError, match="temperature"):
        LightGCNCE(train, temperature=0.0)


def test_trainer_draws_no_negatives_for_the_softmax_model():
    train, val, _ = planted()
    args = GraphTrainingArguments(dim=8, layers=1, batch_size=128, epochs=1, progress=False)
    model = build_model("lightgcn_ce", train, args, temperature=0.2)
    assert isinstance(model, LightGCNCE) and model.temperature == 0.2
    trainer = BPRTrainer(model, args, train, val)
    negatives = [neg for _, _, neg in trainer.batches()]
    assert negatives and all(neg.shape[1] == 0 for neg in negatives)
    assert set(GRAPH_MODELS) == {"pop", "mf", "lightgcn", "lightgcn+", "lightgcn_ce"}
    with pytest.raises(ValueError, match="lightgcn_ce"):
        build_model("lightgcn_bpr", train, args)


@pytest.mark.parametrize("old,right", [("lightgcnplus", "lightgcn+"), ("lightgcn-ce", "lightgcn_ce"),
                                       ("lightgcnce", "lightgcn_ce")])
def test_old_alias_spellings_are_refused_naming_the_right_one(old, right):
    train, _, _ = planted()
    with pytest.raises(ValueError, match=f"did you mean {re.escape(repr(right))}"):
        build_model(old, train, GraphTrainingArguments(dim=8, layers=1, progress=False))


@pytest.fixture
def random_baseline():
    """A graph baseline defined here, not in glta_hf: seeded random scores (one class, one registration)."""

    @register_graph_model("test_random", label="Random")
    class RandomScores(GraphRecommender):
        trainable = False

        @classmethod
        def from_arguments(cls, train, args, **kwargs):
            return cls(train, seed=args.seed, **kwargs)

        def __init__(self, train, seed=0):
            super().__init__(train.num_users, train.num_items)
            scores = torch.rand(train.num_users, train.num_items, generator=torch.Generator().manual_seed(seed))
            self.register_buffer("scores", scores)

        def full_sort_predict(self, users):
            return self.scores[users]

        def predict(self, users, items):
            return self.scores[users, items]

    yield RandomScores
    del GRAPH_MODELS["test_random"]


def test_a_graph_baseline_registered_outside_the_library_reaches_every_entry_point(random_baseline):
    from glta_hf.benchmark import label, parse_rows

    train, _, test = planted()
    model = build_model("test_random", train, GraphTrainingArguments(seed=3, progress=False))
    assert isinstance(model, random_baseline)
    metrics = evaluate(train=train, test=test, scorer=model.full_sort_predict, ks=(5,))
    assert 0.0 <= metrics["ndcg@5"] <= 1.0
    # glta benchmark: selectable by its run name, labelled, not among the paper's default rows
    assert parse_rows("lightgcn,test_random") == ["lightgcn", "test_random"] and label("test_random") == "Random"
    assert "test_random" not in parse_rows("all")
    # the graph tuning script and training/pretrain_graph.py
    tune = _tune_graph_module()
    assert "test_random" in tune.models() and tune.grid("test_random", {}) == [{}]
    script = load_script("training/pretrain_graph.py")
    assert script.parse_args(["--dataset", "ml-latest-small", "--model", "test_random"]).model == "test_random"


def _tune_graph_module():
    return load_script("benchmarks/tune_graph.py")


def test_tuning_grid_keys_and_log(tmp_path):
    tune = _tune_graph_module()
    settings = tune.grid("lightgcn", {})
    keys = {tune.trial_key("ml-100k", "lightgcn", s) for s in settings}
    assert len(keys) == len(settings)  # one key per setting, stable across calls (the resume relies on it)
    assert keys == {tune.trial_key("ml-100k", "lightgcn", s) for s in tune.grid("lightgcn", {})}
    assert tune.trial_key("ml-100k", "mf", settings[0]) != tune.trial_key("ml-latest-small", "mf", settings[0])
    chosen = dict(settings[1])
    plus = tune.grid("lightgcn_plus", chosen)
    assert plus and all(s["lr"] == chosen["lr"] and s["reg"] == chosen["reg"] for s in plus)
    log = tmp_path / "graph.jsonl"
    log.write_text(json.dumps({"key": "a", "model": "mf", "val_ndcg@10": 0.1}) + "\n"
                   + json.dumps({"key": "b", "model": "mf", "val_ndcg@10": 0.3}) + "\n")
    assert tune.best_trial(tune.read_log(log), "mf")["key"] == "b"
    with open(log, "a") as handle:
        handle.write("{truncated\n")
    with pytest.raises(SystemExit, match="graph.jsonl:3"):
        tune.read_log(log)


def test_tuning_files_a_loader_run_under_the_dataset_name(tmp_path):
    """``--dataset amazon-json`` reading ``amazon-toy/``: log, trial tables and results under ``amazon-toy``."""
    import argparse

    from glta_hf.data.examples import write_example

    folder = write_example("amazon-json", tmp_path / "amazon-toy")
    tune = _tune_graph_module()
    args = argparse.Namespace(dataset="amazon-json", data_dir=str(folder), log=None)
    harness = tune.Harness(args)
    assert harness.name == harness.full.name == "amazon-toy"
    assert harness.log.parts[-3:] == ("amazon-toy", "tuning", "graph.jsonl")
    assert harness.trials_dir.name == "amazon-toy"


def test_the_graph_baselines_load_no_prompt_or_llm_code():
    """graph -> metrics stays clear of GLTA's prompt / alignment / model modules (a baseline is no LLM client)."""
    import subprocess
    import sys

    code = ("import sys, glta_hf.graph; "
            "print(sorted(m for m in sys.modules if m.startswith('glta_hf.') and m.split('.')[1] in "
            "('prompts', 'alignment_data', 'modeling_glta', 'texts', 'backbone')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_cpu_training_runs_with_deterministic_algorithms_and_restores_the_setting():
    train, val, _ = planted()
    args = GraphTrainingArguments(dim=8, layers=1, lr=0.01, batch_size=128, epochs=1, seed=3, progress=False)
    model = build_model("lightgcn", train, args)
    seen = []
    loss = model.calculate_loss
    model.calculate_loss = lambda batch: seen.append(torch.are_deterministic_algorithms_enabled()) or loss(batch)
    assert not torch.are_deterministic_algorithms_enabled()
    BPRTrainer(model, args, train, val).train()
    assert seen and all(seen) and not torch.are_deterministic_algorithms_enabled()


@pytest.mark.slow  # three fresh processes on ml-latest-small: ~30 s each on a busy 2-core machine
def test_lightgcn_training_on_cpu_is_bit_reproducible_across_runs_and_thread_counts(tmp_path):
    """Fresh processes, 2 threads vs 1 (issue 27): torch's deterministic algorithms while training make them agree
    bit for bit (without them the embedding gathers' backward gave a different result in every 2-thread run)."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from glta_hf.alignment_data import prepare_data
from glta_hf.graph import GraphTrainingArguments
from glta_hf import pipeline
data, _ = prepare_data("ml-latest-small", None)
pipeline.train_graph(data, sys.argv[2], GraphTrainingArguments(epochs=1, seed=0, progress=False, batch_size=8192))
assert not torch.are_deterministic_algorithms_enabled()  # restored after training
"""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="2")
    digests = []
    for n, threads in enumerate((2, 2, 1)):
        folder = tmp_path / f"run{n}"
        subprocess.run([sys.executable, "-c", code, str(threads), str(folder)], env=env, check=True)
        digests.append(hashlib.sha256((folder / "node_embeddings.safetensors").read_bytes()).hexdigest())
    assert len(set(digests)) == 1
