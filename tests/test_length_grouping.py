"""Length-grouped batches of the training stages: ``length_grouped_indices``, ``EpochSampler(group_by_length=True)``
and the trainer's default (``train_sampling_strategy="group_by_length"``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glta_hf.alignment_data import EpochSampler, ItemTextDataset, UserItemDataset, length_grouped_indices
from glta_hf.prompts import PromptConfig, add_placeholder_tokens
from glta_hf.testing import tiny_tokenizer


def _skewed_lengths(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.8, rng.integers(20, 60, n), rng.integers(200, 1000, n))


def _padding_fraction(order, lengths, batch):
    computed = real = 0
    for start in range(0, len(order), batch):
        chunk = [lengths[i] for i in order[start: start + batch]]
        computed += max(chunk) * len(chunk)
        real += sum(chunk)
    return 1 - real / computed


def test_is_a_permutation_and_a_function_of_seed_and_epoch():
    lengths = _skewed_lengths()
    a = length_grouped_indices(lengths, 8, seed=3, epoch=1)
    assert sorted(a) == list(range(len(lengths)))
    assert length_grouped_indices(lengths, 8, seed=3, epoch=1) == a
    assert length_grouped_indices(list(lengths), 8, seed=3, epoch=1) == a  # any sequence type
    assert length_grouped_indices(lengths, 8, seed=3, epoch=2) != a
    assert length_grouped_indices(lengths, 8, seed=4, epoch=1) != a
    assert length_grouped_indices([], 8) == [] and length_grouped_indices([5], 8) == [0]


def test_megabatches_are_sorted_longest_first_and_cut_padding():
    lengths = _skewed_lengths()
    batch = 8
    order = length_grouped_indices(lengths, batch, seed=0, epoch=0)
    mega = 50 * batch if len(lengths) // (batch * 4) >= 50 else max(1, len(lengths) // (batch * 4)) * batch
    for start in range(0, len(order), mega):
        chunk = [lengths[i] for i in order[start: start + mega]]
        # sorted descending, except that the longest sample overall was swapped to position 0
        assert chunk[1:] == sorted(chunk[1:], reverse=True)
    assert lengths[order[0]] == lengths.max()
    grouped = _padding_fraction(order, lengths, batch)
    shuffled = _padding_fraction(torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist(),
                                 lengths, batch)
    assert grouped < shuffled / 3, (grouped, shuffled)
    # the same shuffle as EpochSampler's plain order, only regrouped: megabatches hold the same indices
    plain = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    assert sorted(order[mega: 2 * mega]) == sorted(plain[mega: 2 * mega]) or order[0] in plain[mega: 2 * mega]


class _LengthsOnly(torch.utils.data.Dataset):
    def __init__(self, lengths):
        self.lengths, self.epoch, self.calls = lengths, None, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def sample_lengths(self):
        self.calls += 1
        return self.lengths

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, index):
        return index


def test_resuming_mid_epoch_replays_the_remaining_order():
    from accelerate import skip_first_batches

    lengths = _skewed_lengths(200)

    def loader():
        ds = _LengthsOnly(lengths)
        sampler = EpochSampler(ds, seed=5, group_by_length=True, batch_size=4)
        return torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler), sampler

    full, sampler = loader()
    sampler.set_epoch(2)
    assert sampler.dataset.calls == 1 and list(sampler) == list(sampler) and sampler.dataset.calls == 1
    uninterrupted = [b.tolist() for b in full]
    resumed, sampler = loader()  # a new process: fresh sampler and dataset
    sampler.set_epoch(2)
    tail = [b.tolist() for b in skip_first_batches(resumed, 17)]
    assert tail == uninterrupted[17:]
    sampler.set_epoch(3)
    assert [b.tolist() for b in resumed] != uninterrupted


@pytest.fixture(scope="module")
def tok():
    t = tiny_tokenizer()
    add_placeholder_tokens(t)
    return t


def test_stage_datasets_tokenize_each_sample_once_per_epoch(tok, monkeypatch):
    rng = np.random.default_rng(0)
    texts = {u: {"profile": "likes " + "films " * int(rng.integers(0, 60))} for u in range(30)}
    histories = [np.sort(rng.choice(40, size=int(rng.integers(1, 15)), replace=False)) for _ in range(30)]
    cfg = PromptConfig(num_slots=4, max_history=5)
    ds = UserItemDataset(histories, tok, cfg, texts=texts, mode="train", seed=1)
    reference = UserItemDataset(histories, tok, cfg, texts=texts, mode="train", seed=1)
    calls = []
    encode = UserItemDataset._encode
    monkeypatch.setattr(UserItemDataset, "_encode", lambda self, i: calls.append(i) or encode(self, i))
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        reference.set_epoch(epoch)
        sampler = EpochSampler(ds, seed=0, group_by_length=True, batch_size=4)
        calls.clear()
        sampler.set_epoch(epoch)  # encodes the epoch (before a DataLoader would fork workers)
        order = list(sampler)
        assert sorted(order) == list(range(len(ds))) and sorted(calls) == list(range(len(ds)))
        lengths = ds.sample_lengths()  # cached: no second encoding
        assert len(calls) == len(ds)
        samples = [ds[i] for i in order]
        assert len(calls) == len(ds), "__getitem__ re-encoded a sample whose length was computed"
        for i, sample in zip(order, samples):
            assert sample == encode(reference, i) and len(sample.input_ids) == lengths[i]
        assert ds[order[0]] == samples[0]  # asked again: encoded again, same sample
    item_ds = ItemTextDataset([f"Movie {i} " + "word " * (i % 9) for i in range(23)], tok, cfg, items_per_sample=3)
    item_ds.set_epoch(1)
    assert [len(item_ds[i].input_ids) for i in range(len(item_ds))] == item_ds.sample_lengths().tolist()


def test_trainer_groups_by_length_by_default(tmp_path):
    from glta_hf.trainer import GLTATrainer
    from glta_hf.training_args import GLTATrainingArguments, sampling_strategy

    def sampler(**kw):
        args = GLTATrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3,
                                     gradient_accumulation_steps=2, use_cpu=True, seed=9, **kw)
        trainer = GLTATrainer.__new__(GLTATrainer)  # only the sampler is under test
        trainer.args, trainer.train_dataset = args, _LengthsOnly(_skewed_lengths(60))
        return args, trainer._get_train_sampler()

    args, s = sampler()
    assert sampling_strategy(args) == "group_by_length"
    assert s.group_by_length and s.batch_size == 6 and s.seed == 9 and s.shuffle
    args, s = sampler(train_sampling_strategy="random")
    assert not s.group_by_length and s.dataset.calls == 0 and sorted(s) == list(range(60))
    assert s.dataset.calls == 0  # no lengths computed for a plain shuffle
    _, s = sampler(train_sampling_strategy="sequential")
    assert list(s) == list(range(60))
    with pytest.raises(ValueError, match="train_sampling_strategy"):
        sampler(train_sampling_strategy="batch_rebalance")
