r"""Measurements of the loss landscape along the gradient, after Santurkar et al. (2018).

At parameters :math:`w` with gradient :math:`g = \nabla L(w)` on one batch, take steps
:math:`w - \eta g` for several step sizes :math:`\eta` and record, on the same batch:

- the loss :math:`L(w - \eta g)` (its spread over :math:`\eta` is the paper's "loss landscape" band);
- the gradient change :math:`\lVert \nabla L(w - \eta g) - g \rVert` ("gradient predictiveness");
- the effective :math:`\beta`-smoothness, the largest
  :math:`\lVert \nabla L(w - \eta g) - g \rVert / \lVert \eta g \rVert` over :math:`\eta`.

The model is measured in the mode it is in (train mode: BatchNorm uses the batch's statistics) and is
left exactly as it was: parameters, buffers (running statistics) and gradients are restored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["along_gradient"]


def _flat_grad(model: nn.Module, loss_fn, x, y) -> tuple[float, torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), torch.cat([g.reshape(-1) for g in grads])


def along_gradient(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                   etas: Sequence[float]) -> dict[str, object]:
    """Loss and gradient change along the negative gradient, at step sizes ``etas``.

    Returns ``{"loss0", "losses", "grad_changes", "beta"}``: the loss at :math:`w`, the losses and
    gradient-change norms at each step size, and the effective :math:`\beta`-smoothness (their maximum
    ratio to the step length).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss0, g = _flat_grad(model, loss_fn, x, y)
    g_norm = g.norm().item()
    losses, changes, betas = [], [], []
    try:
        for eta in etas:
            with torch.no_grad():
                offset = 0
                for p in params:
                    n = p.numel()
                    p.sub_(eta * g[offset:offset + n].view_as(p))
                    offset += n
            loss, g_eta = _flat_grad(model, loss_fn, x, y)
            change = (g_eta - g).norm().item()
            losses.append(loss)
            changes.append(change)
            betas.append(change / (eta * g_norm) if g_norm > 0 else 0.0)
            model.load_state_dict(saved)
    finally:
        model.load_state_dict(saved)
    return {"loss0": loss0, "losses": losses, "grad_changes": changes, "beta": max(betas)}
