"""Correctness of the performance options: chunked cross-entropy equals plain CE (value and gradients), and
length-grouped / differently padded batches give the same per-sample loss as random padded batches."""
import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny

from glta_hf import GLTAConfig
from glta_hf.loss import chunked_linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 3, 7, 50, 64, 1000])
@pytest.mark.parametrize("with_bias", [True, False])
def test_chunked_ce_equals_plain_ce_float64(chunk, with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(64, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(64, dtype=torch.float64, generator=gen, requires_grad=True) if with_bias else None
    y = torch.tensor([0, 63, 5, 5, 17, 40, 1, 62, 31])
    g = torch.tensor(1.7, dtype=torch.float64)  # a non-unit upstream gradient

    plain = F.cross_entropy(x @ w.t() + (b if with_bias else 0), y)
    grads_plain = torch.autograd.grad(plain * g, [x, w] + ([b] if with_bias else []))
    chunked = chunked_linear_cross_entropy(x, w, b, y, chunk)
    grads_chunked = torch.autograd.grad(chunked * g, [x, w] + ([b] if with_bias else []))

    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-12)
    for gc, gp in zip(grads_chunked, grads_plain):
        torch.testing.assert_close(gc, gp, rtol=0, atol=1e-12)


def test_chunked_ce_frozen_weight_gets_no_grad():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(20, 3)  # a frozen buffer, like E_i in the factorized head
    b = torch.zeros(20, requires_grad=True)
    y = torch.tensor([1, 2, 19, 0])
    chunked_linear_cross_entropy(x, w, b, y, 6).backward()
    assert w.grad is None and x.grad is not None and b.grad is not None
    x2, b2 = x.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    F.cross_entropy(x2 @ w.t() + b2, y).backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


@pytest.mark.parametrize("head", ["linear", "factorized"])
def test_model_chunked_loss_and_grads_equal_plain(tmp_path, head):
    """The model's ce_chunk_size path: same loss and same gradients on every trainable parameter."""
    tiny = build_tiny(tmp_path, head=head)
    model = tiny.model.double()
    model.set_trainable("user+item")
    batch = tiny.batch(targets=((5, 6, 1), (7,)))

    def run(chunk):
        model.config.ce_chunk_size = chunk
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, g_plain = run(None)
    chunked, g_chunked = run(5)  # 12 items -> chunks of 5, 5, 2
    assert plain.logits is not None and chunked.logits is None  # the chunked path never builds logits
    torch.testing.assert_close(chunked.loss, plain.loss, rtol=0, atol=1e-12)
    assert g_plain.keys() == g_chunked.keys() and g_plain
    for name in g_plain:
        torch.testing.assert_close(g_chunked[name], g_plain[name], rtol=0, atol=1e-12, msg=name)
    run(100)  # chunk >= |I|: the plain path (logits returned)
    model.config.ce_chunk_size = 100
    assert model(**batch).logits is not None


def test_chunked_float32_close(tmp_path):
    tiny = build_tiny(tmp_path, head="factorized")
    model = tiny.model
    batch = tiny.batch(targets=((5, 6, 1), (7,)))
    model.config.ce_chunk_size = None
    plain = model(**batch).loss
    model.config.ce_chunk_size = 4
    torch.testing.assert_close(model(**batch).loss, plain, rtol=1e-6, atol=1e-6)


def test_ce_chunk_size_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError):
        GLTAConfig(ce_chunk_size=0)
    cfg = GLTAConfig(ce_chunk_size=4096)
    cfg.save_pretrained(tmp_path)
    assert GLTAConfig.from_pretrained(tmp_path).ce_chunk_size == 4096
    assert GLTAConfig().ce_chunk_size is None


def test_length_grouped_batches_give_same_per_sample_loss(tmp_path):
    """Regrouping samples into batches by length (less padding) changes no sample's loss: the mean over all
    labelled slots is the same whether the samples are batched randomly or by length."""
    tiny = build_tiny(tmp_path)
    model = tiny.model.double()
    users = (0, 1, 2, 3)
    histories = ((1,), (4, 2, 3, 0, 9), (6,), (8, 10, 11, 2))  # lengths short, long, short, long
    targets = ((5,), (7, 1), (3,), (5, 6))

    def loss_sum(groups):
        total, count = 0.0, 0
        for idx in groups:
            batch = tiny.batch(users=[users[i] for i in idx], histories=[histories[i] for i in idx],
                               targets=[targets[i] for i in idx])
            n = int((batch["labels"] != -100).sum())
            with torch.no_grad():
                total += float(model(**batch).loss) * n
            count += n
        return total / count

    random_batches = loss_sum([(0, 1), (2, 3)])  # each batch padded to its long sample
    grouped = loss_sum([(0, 2), (1, 3)])  # short with short, long with long
    torch.testing.assert_close(torch.tensor(grouped), torch.tensor(random_batches), rtol=0, atol=1e-10)
