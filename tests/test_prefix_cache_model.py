"""The cached prefix wired into the model: ``enable_prefix_cache`` routes the training loss, ``rank`` / ``ranker`` /
``scorer`` and ``recommend`` through one store with unchanged results; the store is never saved; LoRA is refused;
``run_stages`` with ``prefix_cache`` trains the same weights and computes each user's prefix once per run."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from _tiny_data import write_tiny_movielens

from conftest import build_tiny
from glta_hf.prefix_cache import PrefixCacheError, PrefixStore, is_slot_span_key

TOL = dict(atol=1e-5, rtol=1e-5)


def _texts_first(tmp_path):
    return build_tiny(tmp_path, prompt={"layout": "text_first"})


def test_forward_rank_scorer_and_recommend_are_cached_and_unchanged(tmp_path):
    model = _texts_first(tmp_path).model.eval()
    batch = model.encode_users([0, 1, 2])
    assert "user_node_embeddings" not in batch  # known users: E_u rows by user_ids, keyed like training
    labels = torch.tensor([[3, 4, -100, -100], [5, -100, -100, -100], [6, 7, 8, -100]])
    want = model(**batch, labels=labels)
    want_rank = model.rank(**batch, k=3, seen=[[0], [], [1]])
    want_scores = model.scorer(batch_size=2)(torch.tensor([0, 1, 2, 3]))
    want_recs = model.recommend(["u0", "u3"], k=3)

    store = model.enable_prefix_cache(max_bytes=1 << 22)
    assert isinstance(store, PrefixStore) and model.prefix_store is store
    got = model(**batch, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, **TOL)
    torch.testing.assert_close(got.loss, want.loss, **TOL)
    assert store.stats["computed"] == 3  # forward went through the store
    for a, b in zip(model.rank(**batch, k=3, seen=[[0], [], [1]]), want_rank):
        torch.testing.assert_close(a, b, **TOL)
    assert store.stats["computed"] == 3 and store.stats["hits_memory"] >= 3  # rank: served, not recomputed
    torch.testing.assert_close(model.scorer(batch_size=2)(torch.tensor([0, 1, 2, 3])), want_scores, **TOL)
    assert store.stats["computed"] == 4  # only user 3 is new

    got_recs = model.recommend(["u0", "u3"], k=3)
    assert [r["items"] for r in got_recs] == [r["items"] for r in want_recs]
    for a, b in zip(got_recs, want_recs):
        torch.testing.assert_close(torch.tensor(a["scores"]), torch.tensor(b["scores"]), **TOL)
    computed = store.stats["computed"]
    model.recommend("u5", k=3)
    assert store.stats["computed"] == computed + 1  # a new user: its prefix is built once ...
    hits = store.stats["hits_memory"]
    model.recommend("u5", k=3)
    assert store.stats["computed"] == computed + 1 and store.stats["hits_memory"] == hits + 1  # ... and reused


@pytest.mark.parametrize("layout", ["text_first", "paper"])
def test_autoregressive_decoding_reads_the_store_with_unchanged_results(tmp_path, layout):
    """AR runs the cached text prefix's states, then the rest through slot 1, then its steps: the same items and
    scores as the uncached pass (mixed prompt lengths: the left padding of both parts must line up)."""
    model = build_tiny(tmp_path, prompt={"layout": layout}).model.eval()
    users = ["u0", "u1", "u2", "u5"]
    want = model.recommend(users, k=4, decoding="autoregressive")
    store = model.enable_prefix_cache()
    got = model.recommend(users, k=4, decoding="autoregressive")
    assert store.stats["computed"] == len(users)  # every prefix came from the store
    assert [r["items"] for r in got] == [r["items"] for r in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.tensor(a["scores"]), torch.tensor(b["scores"]), **TOL)
    again = model.recommend(users, k=4, decoding="autoregressive")
    assert store.stats["computed"] == len(users) and [r["items"] for r in again] == [r["items"] for r in want]


def test_store_is_runtime_state_never_saved(tmp_path):
    from glta_hf import GLTAForRecommendation

    model = _texts_first(tmp_path).model
    keys = set(model.state_dict())
    config = model.config.to_dict()
    store = model.enable_prefix_cache()
    model.recommend("u0", k=2)
    assert len(store) == 1 and set(model.state_dict()) == keys and model.config.to_dict() == config
    device = model.llm.get_input_embeddings().weight.device  # entries live where the LLM runs (a GPU when it has one)
    assert store.device == device and all(e.keys.device == device for e in store._memory.values())
    model.save_pretrained(tmp_path / "saved")
    text = "".join(p.read_text(errors="ignore") for p in (tmp_path / "saved").iterdir()
                   if p.suffix == ".json" and p.name != "glta_manifest.json")  # the manifest lists prefix_cache.py
    assert "prefix_store" not in text and "prefix_cache" not in text
    reloaded = GLTAForRecommendation.from_pretrained(tmp_path / "saved", llm=model.llm)
    assert reloaded.prefix_store is None
    assert model.disable_prefix_cache() is store and model.prefix_store is None


def test_lora_or_a_trainable_llm_parameter_is_refused(tmp_path):
    lora = build_tiny(tmp_path / "lora", lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}).model
    with pytest.raises(PrefixCacheError, match="LoRA"):
        lora.enable_prefix_cache()
    assert lora.prefix_store is None

    model = build_tiny(tmp_path / "plain").model
    store = model.enable_prefix_cache()
    batch = model.encode_users([0])
    assert "user_node_embeddings" not in batch  # known users: E_u rows by user_ids, keyed like training
    next(model.llm.parameters()).requires_grad_(True)  # unfrozen after enabling: refused at the next forward
    with pytest.raises(PrefixCacheError, match="require grad"):
        model(**batch)
    assert store.stats["computed"] == 0
    with pytest.raises(PrefixCacheError, match="require grad"):
        model.enable_prefix_cache()


def test_trainer_refuses_prefix_cache_with_lora(tmp_path):
    from glta_hf.trainer import GLTATrainer
    from glta_hf.training_args import GLTATrainingArguments

    lora = build_tiny(tmp_path, lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}).model
    args = GLTATrainingArguments(output_dir=str(tmp_path / "run"), num_slots=4, items_per_sample=3, use_cpu=True,
                                 report_to="none", prefix_cache=True)
    with pytest.raises(PrefixCacheError, match="LoRA"):
        GLTATrainer(lora, args, "user")
    assert lora.prefix_store is None


# ----------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def stage_setup(tmp_path_factory):
    from glta_hf.alignment_data import prepare_data

    tmp = tmp_path_factory.mktemp("cached-stage")
    data, _ = prepare_data("ml-latest-small", write_tiny_movielens(tmp / "ds", num_users=8, num_items=16, per_user=8))
    texts = {u: {"profile": f"User {u} likes {'comedies' if u % 2 else 'long crime dramas'}.",
                 "prediction": "More of the same." if u % 3 else None} for u in range(data.num_users)}
    return SimpleNamespace(tmp=tmp, data=data, texts=texts)


def _run(setup, folder, prefix_cache):
    from glta_hf import pipeline
    from glta_hf.prompts import PromptConfig
    from glta_hf.testing import tiny_llama
    from glta_hf.training_args import GLTATrainingArguments

    data = setup.data
    llm, tok = tiny_llama(seed=0)
    g = torch.Generator().manual_seed(0)
    nodes = SimpleNamespace(user=torch.randn(data.num_users, 8, generator=g),
                            item=torch.randn(data.num_items, 8, generator=g),
                            user_ids=[str(u) for u in data.user_ids], item_ids=[str(i) for i in data.item_ids])

    def fresh(stage):
        torch.manual_seed(0)
        prompt = PromptConfig(num_slots=4, max_history=3, layout="text_first")
        return pipeline.build_model(llm.model, tok, nodes, data, llm_name_or_path="tiny", prompt=prompt, num_slots=4)

    args = GLTATrainingArguments(
        output_dir=str(folder), stage="user", no_item_alignment=True, per_device_train_batch_size=3,
        num_train_epochs=2, save_strategy="no", eval_strategy="epoch", logging_steps=1, disable_tqdm=True,
        use_cpu=True, seed=0, num_slots=4, max_history=3, items_per_sample=3, eval_ks="2,4", metric_for_best_model="ndcg@4",
        report_to="none", prefix_cache=prefix_cache)
    model = pipeline.run_stages(args.stage_plan(), args, root=folder, llm=llm.model, data=data, texts=setup.texts,
                                first_model=fresh, resume=None)
    log = json.loads((folder / "user" / "final" / "glta_run.json").read_text())["stages"][-1]["log_history"]
    return model, log


def test_run_stages_with_prefix_cache_trains_the_same_and_computes_each_prefix_once(stage_setup):
    plain, plain_log = _run(stage_setup, stage_setup.tmp / "plain", prefix_cache=False)
    assert plain.prefix_store is None
    cached, cached_log = _run(stage_setup, stage_setup.tmp / "cached", prefix_cache=True)
    losses = [r["loss"] for r in plain_log if "loss" in r]
    assert len(losses) >= 4 and losses == pytest.approx([r["loss"] for r in cached_log if "loss" in r], abs=1e-5)
    evals = [r["eval_ndcg@4"] for r in plain_log if "eval_ndcg@4" in r]
    assert len(evals) >= 2 and evals == pytest.approx([r["eval_ndcg@4"] for r in cached_log if "eval_ndcg@4" in r])
    for (name, a), (_, b) in zip(plain.glta_state_dict().items(), cached.glta_state_dict().items()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")

    store = cached.prefix_store  # one store for the run, left enabled on the returned model
    assert store is not None and store.stats["computed"] == len(store)  # every prefix computed once ...
    users = {key.user for key in store._memory}
    assert len(users) == len(store) == stage_setup.data.num_users  # ... one per user, over 2 epochs + validation
    assert not any(is_slot_span_key(key) for key in store._memory)  # text prefixes only: no serving spans
    assert store.stats["hits_memory"] >= 2 * len(store)  # epoch 2 and the rankings were served from the store
