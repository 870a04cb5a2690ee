"""Profile/prediction cache: training items only, resume without loss or duplicates, refusal of foreign caches."""
from __future__ import annotations

import json

import pytest

from glta_hf.alignment_data import prepare_data
from glta_hf.errors import DataFormatError
from glta_hf.testing import tiny_llama
from glta_hf.texts import (TextCacheError, TextGenerationConfig, generate_user_texts, llm_reference, load_texts,
                           meta_path, read_cache, sample_user_items)

from _tiny_data import write_tiny_movielens

CFG = TextGenerationConfig(max_items=4, max_new_tokens=4, batch_size=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = write_tiny_movielens(tmp_path_factory.mktemp("ds"), num_users=12, num_items=24, per_user=6)
    return prepare_data("ml-latest-small", folder)[0]


@pytest.fixture(scope="module")
def llm():
    model, tok = tiny_llama(seed=0)
    return model, tok, llm_reference(model, "tiny-llama-seed0")


def test_generates_one_line_per_user_from_training_items_only(tmp_path, data, llm):
    model, tok, ref = llm
    path = tmp_path / "texts.jsonl"
    summary = generate_user_texts(model, tok, data, path, config=CFG, llm=ref, progress=False)
    assert summary["users_written"] == data.num_users and summary["new_tokens"] > 0
    records = read_cache(path)
    assert sorted(records) == list(range(data.num_users))
    train, val, test = data.matrix("train"), data.matrix("validation"), data.matrix("test")
    for u, rec in records.items():
        shown = set(rec["items_shown"])
        assert shown <= set(train.items_of(u).tolist()) and len(shown) <= CFG.max_items
        assert not shown & (set(val.items_of(u).tolist()) | set(test.items_of(u).tolist()))
        assert rec["user_id"] == data.user_ids[u] and set(rec) >= {"profile", "prediction"}
    header = json.loads(meta_path(path).read_text())
    assert {"template_hash", "llm", "dataset", "generation"} <= set(header)
    assert header["llm"]["name_or_path"] == "tiny-llama-seed0" and header["dataset"]["name"] == "ml-latest-small"
    assert load_texts(path, num_users=data.num_users) == records


def test_resume_drops_truncated_line_and_never_duplicates(tmp_path, data, llm):
    model, tok, ref = llm
    path = tmp_path / "texts.jsonl"
    generate_user_texts(model, tok, data, path, config=CFG, llm=ref, progress=False, stop_after_batches=1)
    partial = read_cache(path)
    assert len(partial) == CFG.batch_size
    with open(path, "a", encoding="utf-8") as handle:  # a write cut by kill -9
        handle.write('{"user_idx": 11, "profile": "half a li')
    again = generate_user_texts(model, tok, data, path, config=CFG, llm=ref, progress=False)
    assert again["users_cached_before"] == CFG.batch_size
    lines = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["user_idx"] for r in lines) == list(range(data.num_users))
    # the resumed cache equals one written in a single go (greedy, per-user seeded item samples)
    full = tmp_path / "full.jsonl"
    generate_user_texts(model, tok, data, full, config=CFG, llm=ref, progress=False)
    assert read_cache(path) == read_cache(full)


def test_batched_equals_one_at_a_time(tmp_path, data, llm):
    model, tok, ref = llm
    one = TextGenerationConfig(max_items=4, max_new_tokens=4, batch_size=1)
    generate_user_texts(model, tok, data, tmp_path / "a.jsonl", config=CFG, llm=ref, users=range(6), progress=False)
    generate_user_texts(model, tok, data, tmp_path / "b.jsonl", config=one, llm=ref, users=range(6), progress=False)
    assert read_cache(tmp_path / "a.jsonl") == read_cache(tmp_path / "b.jsonl")


def test_foreign_cache_is_refused(tmp_path, data, llm):
    model, tok, ref = llm
    path = tmp_path / "texts.jsonl"
    generate_user_texts(model, tok, data, path, config=CFG, llm=ref, users=range(2), progress=False)
    with pytest.raises(TextCacheError, match="another LLM"):
        generate_user_texts(model, tok, data, path, config=CFG, llm=dict(ref, name_or_path="other"), progress=False)
    with pytest.raises(TextCacheError, match="generation settings"):
        generate_user_texts(model, tok, data, path, config=TextGenerationConfig(max_items=5, max_new_tokens=4),
                            llm=ref, progress=False)
    tok.chat_template, saved = tok.chat_template + " ", tok.chat_template
    try:
        with pytest.raises(TextCacheError, match="prompt template"):
            generate_user_texts(model, tok, data, path, config=CFG, llm=ref, progress=False)
    finally:
        tok.chat_template = saved


def test_other_dataset_split_is_refused(tmp_path, data, llm, tmp_path_factory):
    model, tok, ref = llm
    path = tmp_path / "texts.jsonl"
    generate_user_texts(model, tok, data, path, config=CFG, llm=ref, users=range(2), progress=False)
    folder = write_tiny_movielens(tmp_path_factory.mktemp("ds2"), num_users=12, num_items=24, per_user=4, seed=1)
    other = prepare_data("ml-latest-small", folder)[0]
    with pytest.raises(TextCacheError, match="dataset"):
        generate_user_texts(model, tok, other, path, config=CFG, llm=ref, progress=False)


def test_malformed_middle_line_names_the_line(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"user_idx": 0}\nnot json\n{"user_idx": 1}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"texts.jsonl:2"):
        read_cache(path)


def test_item_sample_is_seeded_per_user():
    items = list(range(100))
    a = sample_user_items(items, 10, seed=0, user=5)
    assert a == sample_user_items(items, 10, seed=0, user=5) and len(a) == 10
    assert a != sample_user_items(items, 10, seed=0, user=6)
    assert sample_user_items(items[:3], 10, seed=0, user=5) == [0, 1, 2]


def test_a_cache_is_extended_only_in_the_llm_dtype_it_was_written_with(tmp_path, data, llm):
    """A bfloat16 run must not extend a float32 cache; a header from before the dtype was recorded is float32."""
    from glta_hf.io_utils import read_json, write_json

    model, tok, ref = llm
    assert ref["dtype"] == "float32"
    path = tmp_path / "texts.jsonl"
    generate_user_texts(model, tok, data, path, config=CFG, llm=ref, users=range(2), progress=False)
    assert read_json(meta_path(path))["llm"]["dtype"] == "float32"
    bf16 = dict(ref, dtype="bfloat16")
    with pytest.raises(TextCacheError, match="generated with the LLM in float32; extending it in bfloat16"):
        generate_user_texts(model, tok, data, path, config=CFG, llm=bf16, progress=False)
    assert len(read_cache(path)) == 2  # nothing was appended
    # reading what is there is fine in any dtype (the GPU kit trains in bfloat16 on float32 texts)
    assert generate_user_texts(model, tok, data, path, config=CFG, llm=bf16, users=range(2),
                               progress=False)["users_cached_before"] == 2
    old = read_json(meta_path(path))
    del old["llm"]["dtype"]  # the header key set of caches written before the dtype was recorded
    write_json(meta_path(path), old)
    more = generate_user_texts(model, tok, data, path, config=CFG, llm=ref, users=range(4), progress=False)
    assert more["users_cached_before"] == 2 and len(read_cache(path)) == 4
    with pytest.raises(TextCacheError, match="in float32; extending it in bfloat16"):  # an old header is float32
        generate_user_texts(model, tok, data, path, config=CFG, llm=bf16, progress=False)
    assert "dtype" not in read_json(meta_path(path))["llm"]  # the old header is kept as it was


def test_load_texts_checks_the_llm_but_not_its_dtype(tmp_path, data, llm):
    from glta_hf.io_utils import read_json, write_json
    from glta_hf.texts import build_header

    model, tok, ref = llm
    path = tmp_path / "texts.jsonl"
    generate_user_texts(model, tok, data, path, config=CFG, llm=ref, progress=False)
    old = read_json(meta_path(path))
    del old["llm"]["dtype"]
    write_json(meta_path(path), old)
    for dtype in ("float32", "bfloat16"):
        expected = build_header(tokenizer=tok, data=data, llm=dict(ref, dtype=dtype), config=CFG)
        assert len(load_texts(path, expected_header=expected, num_users=data.num_users)) == data.num_users
    with pytest.raises(TextCacheError, match="another LLM"):
        load_texts(path, expected_header=build_header(tokenizer=tok, data=data, llm=dict(ref, hidden_size=1),
                                                      config=CFG), num_users=data.num_users)


def test_a_damaged_cache_is_refused_by_its_checksum(tmp_path, data, llm):
    """Issue 25: the text cache gets a per-file checksum (after each batch); a flipped byte is not trained on."""
    from glta_hf.texts import checksum_path

    model, tok, ref = llm
    path = tmp_path / "texts.jsonl"
    generate_user_texts(model, tok, data, path, config=CFG, llm=ref, users=range(4), progress=False)
    recorded = json.loads(checksum_path(path).read_text())
    assert recorded["bytes"] == path.stat().st_size
    raw = path.read_bytes()
    at = raw.index(b'"profile": "') + len(b'"profile": "')
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:])  # still valid JSON: only the checksum knows
    with pytest.raises(TextCacheError, match=r"texts.jsonl: does not match its checksum"):
        load_texts(path, num_users=data.num_users)
    path.write_bytes(raw)
    with open(path, "a", encoding="utf-8") as handle:  # a batch appended, killed before its checksum was written
        handle.write(json.dumps({"user_idx": 9, "profile": "p", "prediction": "q"}) + "\n")
    assert sorted(load_texts(path, num_users=data.num_users)) == [0, 1, 2, 3, 9]
    path.write_bytes(raw[:-10])  # shorter than the bytes the checksum covers
    with pytest.raises(TextCacheError, match="does not match its checksum"):
        read_cache(path)
    checksum_path(path).unlink()  # a cache written before checksums: read as it is (truncated line dropped)
    assert len(read_cache(path)) == 3 and set(read_cache(path)) < {0, 1, 2, 3}


def test_shards_generate_disjoint_users_and_merge_into_one_cache(tmp_path, data, llm):
    from glta_hf.texts import merge_shards, shard_path, shard_users

    model, tok, ref = llm
    path = tmp_path / "texts.jsonl"
    generate_user_texts(model, tok, data, path, config=CFG, llm=ref, progress=False, users=[0, 1])  # a head start
    for k in range(2):
        generate_user_texts(model, tok, data, shard_path(path, k, 2), config=CFG, llm=ref, progress=False,
                            users=shard_users(range(data.num_users), k, 2), skip_users_in=[path])
    shard0, shard1 = read_cache(shard_path(path, 0, 2)), read_cache(shard_path(path, 1, 2))
    assert not set(shard0) & set(shard1) and not {0, 1} & (set(shard0) | set(shard1))
    quality = merge_shards(path, 2, data.item_texts)
    assert sorted(read_cache(path)) == list(range(data.num_users)) and quality["users"] == data.num_users
    assert json.loads(meta_path(path).read_text())["quality"] == quality


def test_text_quality_counts_repeats_echoes_and_loops():
    from glta_hf.texts import text_quality

    items = ["Apollo 13 (1995); genres: Drama", "Heat (1995); genres: Crime, Thriller"]
    records = {
        0: {"profile": "This user enjoys tense crime dramas.", "prediction": "The user will want more.",
            "items_shown": [0, 1]},
        1: {"profile": "A user has interacted with the following items: Apollo 13 (1995); genres: Drama",
            "prediction": "The user will want more.", "items_shown": [0, 1]},
        2: {"profile": "Horror, Horror, Adventure, Horror, Horror, Adventure, Horror, Horror, Adventure, Horror",
            "prediction": "Next, a heist film.", "items_shown": [1]},
    }
    quality = text_quality(records, items)
    assert quality["distinct_predictions"] == pytest.approx(1 / 3, abs=1e-3)  # two users share one sentence
    assert quality["echo_profiles"] == pytest.approx(1 / 3, abs=1e-3) and quality["looping_profiles"] == pytest.approx(1 / 3, abs=1e-3)
    assert quality["distinct_profiles"] == 1.0


def test_a_shard_refuses_to_skip_users_of_another_generators_cache(tmp_path, data, llm):
    from glta_hf.texts import shard_path

    model, tok, ref = llm
    path = tmp_path / "texts.jsonl"
    generate_user_texts(model, tok, data, path, config=CFG, llm=ref, progress=False, users=[0, 1])
    other = TextGenerationConfig(max_items=3, max_new_tokens=4, batch_size=5)  # another generator
    with pytest.raises(TextCacheError, match="generation settings"):
        generate_user_texts(model, tok, data, shard_path(path, 0, 2), config=other, llm=ref, progress=False,
                            users=[0, 2], skip_users_in=[path])


def test_one_writer_per_text_cache(tmp_path, data, llm):
    """Issue 25: a second generator on the same cache gets a one-line error; a shard beside it has its own lock."""
    from glta_hf.errors import OutputLockedError
    from glta_hf.io_utils import output_lock
    from glta_hf.texts import shard_path

    model, tok, ref = llm
    path = tmp_path / "texts.jsonl"
    import multiprocessing

    ready, release = multiprocessing.Event(), multiprocessing.Event()

    def hold():
        with output_lock(path.parent, name=f".{path.name}.lock"):
            ready.set()
            release.wait(30)

    other = multiprocessing.get_context("fork").Process(target=hold)
    other.start()
    try:
        assert ready.wait(30)
        with pytest.raises(OutputLockedError, match="another run"):
            generate_user_texts(model, tok, data, path, config=CFG, llm=ref, progress=False, users=[0])
        generate_user_texts(model, tok, data, shard_path(path, 0, 2), config=CFG, llm=ref, progress=False, users=[0])
    finally:
        release.set()
        other.join(30)
    generate_user_texts(model, tok, data, path, config=CFG, llm=ref, progress=False, users=[0])  # released
    assert sorted(read_cache(path)) == [0]
