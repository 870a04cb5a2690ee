"""Shared heads in the prefix store: prefixes that start alike keep their common start once; what the store serves
(from memory and from a reopened folder) still equals a fresh full computation; the store is smaller; stores of the
first index format still read; a damaged or missing head shard is a clear error naming the file."""
import json

import pytest
import torch

from glta_hf.prefix_cache import (
    INDEX_FORMAT,
    MIN_HEAD_TOKENS,
    PrefixCacheError,
    PrefixKey,
    PrefixKV,
    PrefixStore,
    cached_prefix,
    prefix_key_values,
    split_prompt_batch,
)
from glta_hf.testing import frozen_tiny_decoder

from conftest import flip_tensor_byte

TOL = dict(atol=1e-5, rtol=1e-5)
PLACEHOLDER = 383  # stands for <user>: where each prompt's prefix ends
HEAD = 40  # tokens every prompt below starts with (a chat template + system prompt + instruction, in small)


@pytest.fixture(scope="module")
def llm():
    return frozen_tiny_decoder(seed=3)


def _prefixes(tails, seed=0):
    """The common head of HEAD tokens (the same in every call), then a tail per prompt whose first token differs
    from every other tail's (300 + seed + its position)."""
    head = torch.randint(3, 300, (HEAD,), generator=torch.Generator().manual_seed(1234)).tolist()
    gen = torch.Generator().manual_seed(seed)
    return [head + [300 + seed + i] + torch.randint(3, 300, (n - 1,), generator=gen).tolist() if n else list(head)
            for i, n in enumerate(tails)]


def _batch(prefixes, users):
    """A right-padded prompt batch (prefix, placeholder, two more tokens), its split and its store keys."""
    rows = [p + [PLACEHOLDER, 5, 6] for p in prefixes]
    width = max(map(len, rows)) + 1
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    split = split_prompt_batch(input_ids, mask, [PLACEHOLDER])
    return split, [PrefixKey(u, h, "tiny", "torch.float32", "text_first") for u, h in zip(users, split.prefix_hashes)]


def _never(positions):
    raise AssertionError(f"recomputed {positions}: should be served from the store")


def _assert_whole_and_exact(llm, entries, prefixes):
    """Each served entry is the whole prefix, equal to that prefix computed alone, from scratch."""
    for entry, ids in zip(entries, prefixes):
        fresh = prefix_key_values(llm, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        assert entry.mask.tolist() == [[1] * len(ids)]
        torch.testing.assert_close(entry.keys, fresh.keys, **TOL)
        torch.testing.assert_close(entry.values, fresh.values, **TOL)


def test_shared_entries_served_from_memory_and_a_reopened_folder_equal_a_fresh_computation(llm, tmp_path):
    folder = tmp_path / "prefixes"
    first = _prefixes([7, 12, 0, 9], seed=0)  # one prompt is the head alone: an empty tail
    second = _prefixes([3, 15], seed=10)
    second.append([350] + second[0][1:])  # another start (its first token differs): kept whole
    store = PrefixStore(folder=folder)
    split1, keys1 = _batch(first, ["a", "b", "c", "d"])
    split2, keys2 = _batch(second, ["e", "f", "g"])
    cached_prefix(llm, store, split1, keys1)  # 4 new prefixes: their common start becomes the head
    cached_prefix(llm, store, split2, keys2)  # the stored head matches e and f
    assert [len(h.ids) for h in store._heads.values()] == [HEAD] and store.stats["shared"] == 6
    assert [store._memory[k].keys.shape[3] for k in keys1 + keys2] == [7, 12, 0, 9, 3, 15, len(second[2])]
    keys, prefixes = keys1 + keys2, first + second

    _assert_whole_and_exact(llm, store.get_or_compute(keys, _never), prefixes)  # memory: head + tail
    store.close()
    reopened = PrefixStore(folder=folder)
    assert json.loads((folder / "prefix_index.json").read_text())["format"] == INDEX_FORMAT
    _assert_whole_and_exact(llm, reopened.get_or_compute(keys, _never), prefixes)  # disk: tails + the head, read back
    assert reopened.stats["hits_disk"] == len(keys)
    batch = cached_prefix(llm, reopened, split1, keys1)  # what the model gets: left-padded, on the LLM's device
    fresh = prefix_key_values(llm, split1.prefix_ids, split1.prefix_mask)
    assert torch.equal(batch.mask, fresh.mask)
    torch.testing.assert_close(batch.keys * batch.mask[None, :, None, :, None],
                               fresh.keys * fresh.mask[None, :, None, :, None], **TOL)

    third = _prefixes([5], seed=20)  # a later run's new user: shared with the head the folder holds
    split3, keys3 = _batch(third, ["h"])
    cached_prefix(llm, reopened, split3, keys3)
    assert reopened.stats["shared"] == 1 and len(reopened._heads) == 1 and reopened._memory[keys3[0]].keys.shape[3] == 5
    _assert_whole_and_exact(llm, reopened.get_or_compute(keys3, _never), third)


def test_new_prefixes_that_start_with_a_stored_head_run_only_their_tails(llm):
    """The compute saving: once a head is stored, a new prefix's head positions are not run through the LLM again;
    what the store serves is still the whole prefix, equal to a fresh computation."""
    store = PrefixStore()
    first, later = _prefixes([7, 12, 9], seed=0), _prefixes([3, 15, 0, 8], seed=30)  # one later prompt IS the head
    widths = []
    hook = llm.get_input_embeddings().register_forward_hook(lambda module, args, out: widths.append(args[0].shape))
    try:
        cached_prefix(llm, store, *_batch(first, ["a", "b", "c"]))  # no head yet: whole prefixes; learns the head
        split, keys = _batch(later, ["d", "e", "f", "g"])
        served = cached_prefix(llm, store, split, keys)
    finally:
        hook.remove()
    assert widths == [(3, HEAD + 12), (3, 15)]  # the later batch: its three non-empty tails, padded to the longest
    assert store.stats["computed"] == 7 and store.stats["shared"] == 7
    assert [store._memory[k].keys.shape[3] for k in keys] == [3, 15, 0, 8]
    _assert_whole_and_exact(llm, store.get_or_compute(keys, _never), later)
    fresh = prefix_key_values(llm, split.prefix_ids, split.prefix_mask)  # what the model gets, left-padded
    assert torch.equal(served.mask, fresh.mask)
    torch.testing.assert_close(served.keys * served.mask[None, :, None, :, None],
                               fresh.keys * fresh.mask[None, :, None, :, None], **TOL)


def test_shared_heads_shrink_the_store_on_disk_and_in_memory(llm, tmp_path):
    """The byte saving: prompts with a long common start take a fraction of the bytes they take unshared."""
    prefixes = _prefixes([4, 9, 6, 11, 5, 8], seed=1)
    split, keys = _batch(prefixes, range(6))

    def compute(positions):  # the computation cached_prefix runs, without telling the store the ids
        rows = torch.tensor(positions)
        return prefix_key_values(llm, split.prefix_ids[rows], split.prefix_mask[rows])

    shared, whole = PrefixStore(folder=tmp_path / "shared"), PrefixStore(folder=tmp_path / "whole")
    cached_prefix(llm, shared, split, keys)
    whole.get_or_compute(keys, compute)  # no ids: every entry kept whole (today's store, the serving span)
    assert not whole._heads and whole.stats["shared"] == 0 and shared.stats["shared"] == 6

    def disk(folder):
        return sum(p.stat().st_size for p in folder.glob("prefix-*.safetensors"))

    tokens, kept = sum(map(len, prefixes)), HEAD + sum(len(p) - HEAD for p in prefixes)  # 283 vs 83 positions
    assert disk(tmp_path / "shared") < 0.4 * disk(tmp_path / "whole")
    assert shared.memory_bytes == pytest.approx(whole.memory_bytes * kept / tokens, rel=0.02)
    for a, b in zip(shared.get_or_compute(keys, _never), whole.get_or_compute(keys, _never)):
        torch.testing.assert_close(a.keys, b.keys, **TOL)


def _ids(user, length=20):
    return list(range(10, 10 + MIN_HEAD_TOKENS)) + [100 + user] * (length - MIN_HEAD_TOKENS)


def _kv(value, length=20):
    keys = torch.full((2, 1, 2, length, 4), float(value))
    return PrefixKV(keys, keys + 0.5, torch.ones(1, length, dtype=torch.long))


def _rows(positions):
    """A compute_fn: 20-position rows of constant states (the position's number)."""
    return PrefixKV.concat([_kv(p) for p in positions])


def _written(folder, users=(0, 1), later=(2,)):
    """A persistent store: users' prefixes computed in one batch (head + tails: shard 0), later ones' tails alone
    (shard 1)."""
    keys = {u: PrefixKey(u, f"h{u}", "m", "d", "text_first") for u in (*users, *later)}
    with PrefixStore(folder=folder) as store:
        for group in (users, later):
            store.get_or_compute([keys[u] for u in group], _rows, ids=[_ids(u) for u in group])
        assert len(store._heads) == 1 and store.stats["shared"] == len(users) + len(later)
    return keys


def test_short_common_starts_and_other_llms_are_not_shared(tmp_path):
    store = PrefixStore()
    short = [[1] * (MIN_HEAD_TOKENS - 1) + [u] * 5 for u in (2, 3)]
    keys = [PrefixKey(u, f"h{u}", "m", "d", "paper") for u in (2, 3)]
    store.get_or_compute(keys, _rows, ids=short)
    assert not store._heads and store.stats["shared"] == 0
    keys = [PrefixKey(u, f"h{u}", "m", "d", "paper") for u in (0, 1)]
    store.get_or_compute(keys, _rows, ids=[_ids(0), _ids(1)])
    other = PrefixKey(5, "h5", "m2", "d", "paper")  # the same ids under another LLM: its own states, kept whole
    store.get_or_compute([other], lambda pos: _kv(9), ids=[_ids(5)])
    assert store.stats["shared"] == 2 and other not in store._head_of
    with pytest.raises(PrefixCacheError, match="1 rows of token ids for 2 keys"):
        store.get_or_compute(keys, _never, ids=[_ids(0)])
    with pytest.raises(PrefixCacheError, match="19 token ids but 20 computed positions"):
        store.get_or_compute([PrefixKey(7, "h7", "m", "d", "paper")], lambda pos: _kv(1), ids=[_ids(7)[:-1]])


def test_a_head_learned_too_long_is_cut_back_by_the_next_new_prefix():
    """Two prompts agreeing beyond the real head (a profile's first word) make a long head; the next prefix that parts
    from it earlier, even alone, makes their common start a head, which every later prefix matches."""
    store = PrefixStore()
    chance = [_ids(0)[:MIN_HEAD_TOKENS] + [7, 7] + [100 + u] * 2 for u in (0, 1)]
    store.get_or_compute([PrefixKey(u, f"h{u}", "m", "d", "paper") for u in (0, 1)], _rows, ids=chance)
    assert [len(h.ids) for h in store._heads.values()] == [MIN_HEAD_TOKENS + 2]
    for user in (2, 3):
        store.get_or_compute([PrefixKey(user, f"h{user}", "m", "d", "paper")], _rows, ids=[_ids(user)])
    assert [len(h.ids) for h in store._heads.values()] == [MIN_HEAD_TOKENS + 2, MIN_HEAD_TOKENS]
    assert store.stats["shared"] == 4
    assert [store._memory[k].keys.shape[3] for k in store._memory] == [2, 2, 4, 4]


def test_a_store_of_the_first_index_format_still_reads(tmp_path):
    """Folders written before heads were shared (format 1: entries without heads, no "heads" list) serve as before."""
    folder = tmp_path / "prefixes"
    keys = [PrefixKey(u, "h", "m", "d", "text_first") for u in ("alice", "bob")]
    with PrefixStore(folder=folder) as store:
        first = store.get_or_compute(keys, _rows)
    index = json.loads((folder / "prefix_index.json").read_text())
    assert all(len(e.pop("sha256")) == 64 for e in index["entries"])  # format 3's entry checksums: not in format 1
    assert index.pop("heads") == [] and all(set(e) == {"key", "shard", "name"} for e in index["entries"])
    (folder / "prefix_index.json").write_text(json.dumps({**index, "format": "glta-prefix-index-1"}))
    again = PrefixStore(folder=folder).get_or_compute(keys, _never)
    for a, b in zip(first, again):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) and torch.equal(a.mask, b.mask)


@pytest.mark.parametrize("damage", ["flipped", "missing", "unknown_head"])
def test_a_damaged_or_missing_head_shard_is_a_clear_error(tmp_path, damage):
    folder = tmp_path / "prefixes"
    keys = _written(folder)
    head_shard = folder / "prefix-00000.safetensors"  # the head and users 0, 1; user 2's tail is in shard 1
    index_path = folder / "prefix_index.json"
    index = json.loads(index_path.read_text())
    assert [h["shard"] for h in index["heads"]] == [head_shard.name]
    if damage == "flipped":
        flip_tensor_byte(head_shard, f"{index['heads'][0]['name']}.keys")
        store = PrefixStore(folder=folder)
        with pytest.raises(PrefixCacheError, match=rf"{head_shard.name}: does not match the checksum"):
            store.get_or_compute([keys[2]], _never)
        assert keys[2] not in store._memory
    elif damage == "missing":
        head_shard.unlink()
        with pytest.raises(PrefixCacheError, match=rf"{head_shard.name}: missing \(it holds the shared head"):
            PrefixStore(folder=folder)
    else:
        index["entries"][-1]["head"] = "head-" + "0" * 40
        index_path.write_text(json.dumps(index))
        with pytest.raises(PrefixCacheError, match="prefix_index.json: entry .* refers to head 'head-0+'"):
            PrefixStore(folder=folder)
