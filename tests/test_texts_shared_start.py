"""The shared-start generation path (one prefill of the start a user's profile and prediction prompts share) writes
the texts of full prefills: same texts, same cache, sampling untouched."""
from __future__ import annotations

import pytest
import torch

from glta_hf import texts
from glta_hf.alignment_data import prepare_data
from glta_hf.testing import tiny_llama
from glta_hf.texts import TextGenerationConfig, generate_user_texts, llm_reference, meta_path, read_cache

from _tiny_data import write_tiny_movielens

# 10 items shown at most: every training item, so the item lists (and the shared starts) differ in length per user
CFG = TextGenerationConfig(max_items=10, max_new_tokens=12, min_new_tokens=4, batch_size=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = write_tiny_movielens(tmp_path_factory.mktemp("ds"), num_users=24, num_items=40, per_user=10)
    ratings = folder / "ratings.csv"  # users with 5 to 10 ratings: item lists of several lengths in one batch
    header, *rows = ratings.read_text(encoding="utf-8").splitlines()
    kept, seen = [header], {}
    for row in rows:
        user = int(row.split(",")[0])
        seen[user] = seen.get(user, 0) + 1
        if seen[user] <= 5 + user % 6:
            kept.append(row)
    ratings.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return prepare_data("ml-latest-small", folder)[0]


@pytest.fixture(scope="module")
def llm():
    model, tok = tiny_llama(seed=0)
    return model, tok, llm_reference(model, "tiny-llama-seed0")


def _generate(path, data, llm, config=CFG, *, shared: bool, monkeypatch):
    model, tok, ref = llm
    monkeypatch.setattr(texts, "_SHARE_PROMPT_START", shared)
    summary = generate_user_texts(model, tok, data, path, config=config, llm=ref, progress=False)
    return read_cache(path), summary


def test_shared_start_writes_the_texts_of_full_prefills(tmp_path, data, llm, monkeypatch):
    starts, item_counts = [], []  # per generation: rows' start and rest lengths; per batch: rows' item counts
    continue_rows, batch_texts = texts._continue_rows, texts._batch_texts

    def spy_continue(model, tokenizer, start, rows, config, **kwargs):
        starts.append(([len(s) for s in start.starts], [len(r) - len(s) for r, s in zip(rows, start.starts)]))
        return continue_rows(model, tokenizer, start, rows, config, **kwargs)

    def spy_batch(model, tokenizer, prompts, item_lists, config, **kwargs):
        item_counts.append([len(items) for items in item_lists])
        return batch_texts(model, tokenizer, prompts, item_lists, config, **kwargs)

    monkeypatch.setattr(texts, "_continue_rows", spy_continue)
    monkeypatch.setattr(texts, "_batch_texts", spy_batch)
    shared, summary = _generate(tmp_path / "shared.jsonl", data, llm, shared=True, monkeypatch=monkeypatch)
    assert len(starts) == 2 * 3  # 3 batches of 8 users, profiles and predictions
    assert any(len(set(counts)) > 1 for counts in item_counts)  # a batch of item lists of several lengths
    assert all(len(set(heads)) > 1 for heads, _ in starts)  # left padding of the starts differs per row,
    assert any(len(set(rests)) > 1 for _, rests in starts)  # and so does the middle padding (predictions)
    full, full_summary = _generate(tmp_path / "full.jsonl", data, llm, shared=False, monkeypatch=monkeypatch)
    assert len(starts) == 2 * 3  # the full path does not continue a shared start
    assert len(shared) == data.num_users == 24
    assert shared == full
    assert summary["prompt_tokens"] == full_summary["prompt_tokens"] and summary["new_tokens"] == full_summary[
        "new_tokens"]
    # the header (what a committed cache is extended under) does not know which path wrote the texts
    assert meta_path(tmp_path / "shared.jsonl").read_text() == meta_path(tmp_path / "full.jsonl").read_text()


def test_a_prediction_that_does_not_continue_the_start_is_prefilled_in_full(tmp_path, data, llm, monkeypatch):
    # a start one token short of each profile prompt: no prediction prompt continues it
    monkeypatch.setattr(texts, "_shared_start_lengths", lambda firsts, seconds: [len(a) - 1 for a in firsts])
    fallback, _ = _generate(tmp_path / "a.jsonl", data, llm, shared=True, monkeypatch=monkeypatch)
    monkeypatch.undo()
    full, _ = _generate(tmp_path / "b.jsonl", data, llm, shared=False, monkeypatch=monkeypatch)
    assert fallback == full


def test_sampling_stays_seeded(tmp_path, data, llm, monkeypatch):
    sample = TextGenerationConfig(max_items=10, max_new_tokens=8, min_new_tokens=2, batch_size=8, do_sample=True,
                                  temperature=1.5, seed=3)
    a, _ = _generate(tmp_path / "a.jsonl", data, llm, sample, shared=True, monkeypatch=monkeypatch)
    b, _ = _generate(tmp_path / "b.jsonl", data, llm, sample, shared=True, monkeypatch=monkeypatch)
    greedy, _ = _generate(tmp_path / "c.jsonl", data, llm, shared=True, monkeypatch=monkeypatch)
    assert a == b
    assert [r["profile"] for r in a.values()] != [r["profile"] for r in greedy.values()]


def test_penalties_read_the_prompt_as_the_full_prefill_lays_it_out():
    """Middle padding splits the n-grams across the start / rest boundary and adds the pad token: the processors
    must see each row as the full-prefill batch holds it, plus the tokens generated so far."""
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    pad, vocab = 0, 12
    rows = [[5, 6, 7, 8, 9], [3, 4, 6, 7, 8, 10, 11]]  # starts [5, 6, 7] and [3, 4, 6, 7]; (6, 7, 8) crosses both
    seen = torch.tensor([[0, 5, 6, 7, 0, 8, 9], [3, 4, 6, 7, 8, 10, 11]])  # [left pad][start][middle pad][rest]
    generated = torch.tensor([[6, 7], [6, 7]])
    cfg = TextGenerationConfig(repetition_penalty=1.5, no_repeat_ngram_size=3)
    processor = texts._AsFullPrompt(rows, pad, seen.shape[1], cfg)
    scores = torch.linspace(-2.0, 3.0, vocab).repeat(2, 1)
    got = processor(torch.cat([seen, generated], dim=1), scores.clone())
    full = torch.tensor([[0, 0, 5, 6, 7, 8, 9, 6, 7], [3, 4, 6, 7, 8, 10, 11, 6, 7]])  # left padding only
    # row by row: transformers 5.17 (the GPU kit's) takes one int, not a per-row tensor
    want = torch.cat([RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=pad_length)(row, row_scores)
                      for row, row_scores, pad_length in zip(full.split(1), scores.clone().split(1), (2, 0))])
    want = NoRepeatNGramLogitsProcessor(3)(full, want)
    assert torch.equal(got, want)
    assert torch.isinf(got[:, 8]).all()  # (6, 7) -> 8 banned, as in the prompt, though a pad splits it in `seen`
    assert got[0, pad] == scores[0, pad]  # the padding is not penalized
