"""The one training loop the lessons use: plain minibatch SGD on in-memory tensors, seeded."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm import tqdm

# No rates or times in the bar, so its final state is the same on every run (nbval checks it).
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} epochs"


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``, in whatever mode the model is in."""
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / len(x)


def fit(model: nn.Module, data, *, epochs: int, batch_size: int, lr: float, momentum: float = 0.9,
        weight_decay: float = 0.0, seed: int = 0, desc: str = "training",
        progress: bool = True) -> dict[str, list[float]]:
    """Train ``model`` with SGD on ``data = (x_train, y_train, x_test, y_test)``.

    Batches are reshuffled each epoch by a generator seeded with ``seed``; an incomplete last batch
    is dropped (so BatchNorm never sees a batch of one). After each epoch records the mean training
    loss, the training accuracy of those batches (train mode) and the test accuracy (eval mode).
    Returns the per-epoch history ``{"loss": [...], "train_acc": [...], "test_acc": [...]}``.
    """
    x_tr, y_tr, x_te, y_te = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    history: dict[str, list[float]] = {"loss": [], "train_acc": [], "test_acc": []}
    steps = len(x_tr) // batch_size
    for _ in tqdm(range(epochs), desc=desc, bar_format=BAR_FORMAT, disable=not progress):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        loss_sum, correct = 0.0, 0
        for s in range(steps):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            logits = model(x_tr[idx])
            loss = loss_fn(logits, y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            correct += (logits.argmax(1) == y_tr[idx]).sum().item()
        model.eval()
        history["loss"].append(loss_sum / steps)
        history["train_acc"].append(correct / (steps * batch_size))
        history["test_acc"].append(accuracy(model, x_te, y_te))
    return history
