"""The one training loop the lessons use: plain minibatch SGD on in-memory tensors, seeded."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

# No rates or times in the bar, so its final state is the same on every run (nbval checks it). The bar
# goes to stdout, so in a notebook it stays in order with the cell's printed results.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} epochs"


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``, in whatever mode the model is in."""
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / len(x)


@torch.no_grad()
def mean_loss(model: nn.Module, x: Tensor, y: Tensor, loss_fn: nn.Module, batch_size: int = 512) -> float:
    """Mean of ``loss_fn`` over ``(x, y)``, in whatever mode the model is in."""
    total = sum(loss_fn(model(x[i:i + batch_size]), y[i:i + batch_size]).item() * len(x[i:i + batch_size])
                for i in range(0, len(x), batch_size))
    return total / len(x)


def fit(model: nn.Module, data, *, epochs: int, batch_size: int, lr: float, momentum: float = 0.9,
        weight_decay: float = 0.0, seed: int = 0, desc: str = "training", progress: bool = True,
        loss_fn: nn.Module | None = None, batches: Callable[[torch.Generator], list[Tensor]] | None = None,
        on_step: Callable[[int], None] | None = None, eval_train: bool = False) -> dict[str, list[float]]:
    """Train ``model`` with SGD on ``data = (x_train, y_train, x_test, y_test)``.

    Batches are reshuffled each epoch by a generator seeded with ``seed``; an incomplete last batch
    is dropped (so BatchNorm never sees a batch of one). ``batches(gen)``, if given, replaces that: it
    returns one epoch's list of index tensors (e.g. :func:`normlib.lab.data.same_class_batches`).
    ``on_step(step)`` is called before each optimizer step (e.g. to follow a schedule).
    ``loss_fn`` defaults to cross-entropy.
    After each epoch records the mean training loss of the epoch's batches (train mode) and the test
    loss (eval mode); for classification (integer targets) also the training accuracy of those
    batches and the test accuracy. Those training figures are averaged over the epoch while the network
    learns, in train mode (dropout on, batch statistics); ``eval_train=True`` also measures the model as
    it stands at the end of each epoch, in eval mode, on the whole training set: ``"train_loss_eval"``
    and ``"train_acc_eval"`` (the figures a train-test gap should use). Returns the per-epoch history
    ``{"loss": [...], "test_loss": [...], "train_acc": [...], "test_acc": [...]}``.
    """
    x_tr, y_tr, x_te, y_te = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    classify = not torch.is_floating_point(y_tr)
    history: dict[str, list[float]] = {"loss": [], "test_loss": []}
    if classify:
        history.update(train_acc=[], test_acc=[])
    if eval_train:
        history["train_loss_eval"] = []
        if classify:
            history["train_acc_eval"] = []
    if batches is None:
        def batches(gen: torch.Generator) -> list[Tensor]:
            perm = torch.randperm(len(x_tr), generator=gen)
            return [perm[s * batch_size:(s + 1) * batch_size] for s in range(len(x_tr) // batch_size)]

    step = 0
    for _ in tqdm(range(epochs), desc=desc, bar_format=BAR_FORMAT, disable=not progress, file=sys.stdout,
                  leave=False):
        model.train()
        epoch = batches(gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in epoch:
            if on_step is not None:
                on_step(step)
            step += 1
            logits = model(x_tr[idx])
            loss = loss_fn(logits, y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            seen += len(idx)
            if classify:
                correct += (logits.argmax(1) == y_tr[idx]).sum().item()
        model.eval()
        history["loss"].append(loss_sum / len(epoch))
        history["test_loss"].append(mean_loss(model, x_te, y_te, loss_fn))
        if classify:
            history["train_acc"].append(correct / seen)
            history["test_acc"].append(accuracy(model, x_te, y_te))
        if eval_train:
            history["train_loss_eval"].append(mean_loss(model, x_tr, y_tr, loss_fn))
            if classify:
                history["train_acc_eval"].append(accuracy(model, x_tr, y_tr))
    return history


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: Tensor, batch_size: int = 256) -> nn.Module:
    """Recompute every BatchNorm's running statistics as exact averages over ``x``, in place.

    Resets the running statistics, switches them to a cumulative average (``momentum=None``), runs
    ``x`` through the model in training mode without gradients, then restores each momentum and the
    model's mode. The weights are untouched. Returns the model.
    """
    from normlib.nn.batchnorm import _BatchNorm

    norms = [m for m in model.modules()
             if isinstance(m, (nn.modules.batchnorm._BatchNorm, _BatchNorm)) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return model
