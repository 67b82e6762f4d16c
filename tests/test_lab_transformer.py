"""normlib.lab.transformer: the tiny Transformer, its sorting task and its training loop."""

import pytest
import torch

from normlib import nn as N
from normlib.lab.transformer import Block, TinyTransformer, grad_norms, lr_at, residual_rms, sorting_batch, train


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: more threads only add overhead (and, on a busy machine, waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_block_is_torch_transformer_encoder_layer(placement):
    block = Block(32, 4, placement).double()
    torch_layer = torch.nn.TransformerEncoderLayer(32, 4, 128, dropout=0.0, batch_first=True,
                                                   norm_first=placement == "pre", dtype=torch.float64)
    torch_layer.load_state_dict(block.state_dict())  # same parameter names and shapes
    x = torch.randn(3, 10, 32, dtype=torch.float64)
    torch.testing.assert_close(block(x), torch_layer(x), rtol=0, atol=1e-12)


def test_block_rejects_unknown_placement():
    with pytest.raises(ValueError, match="'pre' or 'post'"):
        Block(32, 4, "middle")


def test_tiny_transformer_shapes_and_final_norm():
    x, _ = sorting_batch(5, 16, 16)
    for placement, final in (("pre", N.LayerNorm), ("post", torch.nn.Identity)):
        model = TinyTransformer(16, 16, 32, 4, 3, placement)
        assert isinstance(model.norm, final) and model(x).shape == (5, 16, 16)
    rms = TinyTransformer(16, 16, 32, 4, 2, "pre", norm="rms")
    assert all(isinstance(m, N.RMSNorm) for m in (rms.layers[0].norm1, rms.layers[1].norm2, rms.norm))
    assert isinstance(TinyTransformer(16, 16, final_norm=False).norm, torch.nn.Identity)


def test_sorting_batch_targets_are_the_sorted_inputs_and_seeded():
    x, y = sorting_batch(8, 12, 10, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 12) and int(x.max()) < 10
    assert torch.equal(y, x.sort(1).values) and bool((y[:, 1:] >= y[:, :-1]).all())
    assert torch.equal(sorting_batch(8, 12, 10, torch.Generator().manual_seed(3))[0], x)


def test_lr_schedule_warms_up_linearly_and_decays_to_zero():
    assert lr_at(0, 100, 1.0, 0) == 1.0
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0 - 9 / 100)
    assert lr_at(50, 100, 1.0, 10) == pytest.approx(0.5) and lr_at(99, 100, 1.0, 0) == pytest.approx(0.01)


def test_train_learns_and_is_reproducible():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = TinyTransformer(8, 8, 16, 2, 1, "pre")
        runs.append(train(model, steps=60, lr=1e-2, warmup=10, batch_size=16, seed=1, length=8, vocab=8,
                          eval_size=64))
    out = runs[0]
    assert set(out) == {"loss", "test_loss", "test_acc", "diverged"} and len(out["loss"]) == 6
    assert out["loss"][-1] < out["loss"][0] and not out["diverged"]
    assert out == runs[1]


def test_grad_norms_and_residual_rms_per_layer():
    torch.manual_seed(0)
    x, y = sorting_batch(16)
    for placement in ("post", "pre"):
        model = TinyTransformer(16, 16, 32, 4, 3, placement)
        g = grad_norms(model, x, y)
        assert len(g["attn"]) == len(g["mlp"]) == 3 and min(g["attn"] + g["mlp"]) > 0
        assert all(p.grad is None for p in model.parameters())
        rms = residual_rms(model, x)
        assert len(rms) == 4
        if placement == "post":  # every block ends with a LayerNorm of unit gain: RMS 1 (up to eps)
            assert rms[1:] == pytest.approx([1.0] * 3, abs=1e-4)


def test_train_with_radam_learns_and_differs_from_adam():
    outs = {}
    for optimizer in ("adam", "radam"):
        torch.manual_seed(0)
        model = TinyTransformer(8, 8, 16, 2, 1, "pre")
        outs[optimizer] = train(model, steps=60, lr=1e-2, warmup=0, batch_size=16, seed=1, length=8, vocab=8,
                                eval_size=64, optimizer=optimizer)
    radam = outs["radam"]
    assert radam["loss"][-1] < radam["loss"][0] and not radam["diverged"]
    assert radam["loss"][0] == outs["adam"]["loss"][0]  # same model and batch before the first step
    assert radam["loss"][1:] != outs["adam"]["loss"][1:]  # RAdam damps its first steps: another path


def test_train_rejects_unknown_optimizer():
    with pytest.raises(ValueError, match="'adam' or 'radam'"):
        train(TinyTransformer(8, 8, 16, 2, 1), steps=1, optimizer="sgd")
