r"""A tiny Transformer encoder with the norm and its place as arguments, a sorting task, and its training loop.

Where the norm sits is the one thing :class:`Block` changes (Xiong et al. 2020):

- **post-LN** (the original Transformer): :math:`x \leftarrow N(x + F(x))` after each sub-block;
- **pre-LN**: :math:`x \leftarrow x + F(N(x))`, the residual path left untouched, and one more norm after the last
  block (:attr:`TinyTransformer.norm`), since nothing else rescales the residual stream before the output.

Parameter names follow ``torch.nn.TransformerEncoderLayer`` (``self_attn.in_proj_weight``, ``linear1``,
``norm1`` ...), so a :class:`Block` with LayerNorm loads into torch's layer (``norm_first=True`` is pre-LN) and the
two can be compared output for output.

:func:`train` is Adam with a linear learning-rate warm-up and a linear decay, on fresh batches of
:func:`sorting_batch` drawn from a seeded generator (a synthetic task has no fixed training set to overfit).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from normlib import nn as N

__all__ = ["SelfAttention", "Block", "TinyTransformer", "sorting_batch", "lr_at", "train", "grad_norms",
           "residual_rms", "NORMS"]

NORMS: dict[str, Callable[[int], nn.Module]] = {"layer": N.LayerNorm, "rms": N.RMSNorm,
                                                 "none": lambda d: nn.Identity()}


class SelfAttention(nn.Module):
    r"""Multi-head self-attention, :math:`\mathrm{softmax}(QK^\top/\sqrt{d_h})V` per head, then an output projection.

    The parameters are ``torch.nn.MultiheadAttention``'s (``in_proj_weight`` of shape ``(3D, D)``,
    ``in_proj_bias``, ``out_proj``) with its initialisation (Xavier-uniform input projection, zero biases).
    """

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        qkv = TF.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = TF.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d_h)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    r"""One Transformer encoder layer: self-attention and a ReLU MLP, each with a residual and a norm.

    ``placement="post"``: :math:`x \leftarrow N_1(x + A(x))`, :math:`x \leftarrow N_2(x + M(x))`.
    ``placement="pre"``: :math:`x \leftarrow x + A(N_1(x))`, :math:`x \leftarrow x + M(N_2(x))`.
    ``norm(d_model)`` builds each norm (default ``normlib.nn.LayerNorm``). No dropout.
    """

    def __init__(self, d_model: int, heads: int, placement: str = "pre",
                 norm: Callable[[int], nn.Module] = N.LayerNorm, mlp_ratio: int = 4) -> None:
        super().__init__()
        if placement not in ("pre", "post"):
            raise ValueError(f"placement must be 'pre' or 'post', got {placement!r}")
        self.placement = placement
        self.self_attn = SelfAttention(d_model, heads)
        self.linear1 = nn.Linear(d_model, mlp_ratio * d_model)
        self.linear2 = nn.Linear(mlp_ratio * d_model, d_model)
        self.norm1, self.norm2 = norm(d_model), norm(d_model)

    def mlp(self, x: Tensor) -> Tensor:
        return self.linear2(torch.relu(self.linear1(x)))

    def forward(self, x: Tensor) -> Tensor:
        if self.placement == "pre":
            x = x + self.self_attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.mlp(x))

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}"


class TinyTransformer(nn.Module):
    r"""Token and learned position embeddings, ``layers`` :class:`Block`\ s, a final norm (pre-LN), a linear head.

    Input ``(B, T)`` token ids below ``vocab``, output ``(B, T, vocab)`` logits: one prediction per position.
    ``norm`` is ``"layer"``, ``"rms"`` (normlib's LayerNorm or RMSNorm), ``"none"`` (no norm anywhere: the
    control) or a factory ``d -> module``.
    ``final_norm`` (default: only for pre-LN) adds a norm after the last block; post-LN ends with one already.
    """

    def __init__(self, vocab: int, length: int, d_model: int = 32, heads: int = 4, layers: int = 2,
                 placement: str = "pre", norm: str | Callable[[int], nn.Module] = "layer",
                 final_norm: bool | None = None) -> None:
        super().__init__()
        make = NORMS[norm] if isinstance(norm, str) else norm
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(length, d_model) * 0.02)
        self.layers = nn.ModuleList([Block(d_model, heads, placement, make) for _ in range(layers)])
        final_norm = placement == "pre" if final_norm is None else final_norm
        self.norm = make(d_model) if final_norm else nn.Identity()
        self.head = nn.Linear(d_model, vocab)
        for name, p in self.named_parameters():  # Xavier-uniform matrices, as nn.Transformer and Vaswani et al.
            if p.dim() > 1 and not name.startswith(("embed", "pos")):
                nn.init.xavier_uniform_(p)

    def forward(self, tokens: Tensor, return_stream: bool = False):
        """Logits; with ``return_stream=True`` also the residual stream after the embedding and each block."""
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        stream = [h]
        for block in self.layers:
            h = block(h)
            stream.append(h)
        logits = self.head(self.norm(h))
        return (logits, stream) if return_stream else logits


def sorting_batch(n: int, length: int = 16, vocab: int = 16, generator: torch.Generator | None = None):
    """``n`` sequences of ``length`` random tokens below ``vocab`` and, as targets, each sequence sorted.

    Position ``i`` of the target is the ``i``-th smallest token: to get it right the model has to compare
    every token with every other, which is what attention is for.
    """
    x = torch.randint(0, vocab, (n, length), generator=generator)
    return x, x.sort(dim=1).values


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up from ``lr / warmup`` to ``lr`` over ``warmup`` steps, then linear decay to 0 at ``steps``.

    ``warmup=0``: the full ``lr`` from the first step. The decay is the same with and without warm-up.
    """
    decay = 1.0 - step / steps
    return lr * decay * (min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)


def _loss_and_acc(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, float]:
    logits = model(x)
    loss = TF.cross_entropy(logits.flatten(0, 1), y.flatten())
    return loss, (logits.argmax(-1) == y).float().mean().item()


def train(model: nn.Module, *, steps: int = 300, lr: float = 1e-3, warmup: int = 0, batch_size: int = 32,
          seed: int = 0, length: int = 16, vocab: int = 16, eval_size: int = 512, record_every: int = 10,
          optimizer: str = "adam") -> dict[str, object]:
    """Train ``model`` on :func:`sorting_batch` with Adam (betas 0.9, 0.98, as Vaswani et al.; the fused
    implementation, one kernel for all parameters) and the schedule :func:`lr_at`.

    ``optimizer="radam"`` uses RAdam instead (Liu et al. 2020: Adam whose step is damped while its
    second-moment estimate rests on few gradients, the variance account of warm-up), same betas and eps.

    Batches come from a generator seeded with ``seed``; the evaluation set (``eval_size`` sequences) is the
    same for every run. A non-finite loss stops training (``diverged``). Returns ``loss`` (the training loss
    every ``record_every`` steps), ``test_loss`` and ``test_acc`` (per-token accuracy, eval mode) at the
    end, and ``diverged``.
    """
    gen = torch.Generator().manual_seed(seed)
    x_te, y_te = sorting_batch(eval_size, length, vocab, torch.Generator().manual_seed(10_000))
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9, fused=True)
    elif optimizer == "radam":
        opt = torch.optim.RAdam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'radam', got {optimizer!r}")
    history: list[float] = []
    diverged = False
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        x, y = sorting_batch(batch_size, length, vocab, gen)
        loss, _ = _loss_and_acc(model, x, y)
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % record_every == 0:
            history.append(loss.item())
    model.eval()
    with torch.no_grad():
        test_loss, test_acc = _loss_and_acc(model, x_te, y_te)
    return {"loss": history, "test_loss": test_loss.item() if not diverged else math.inf,
            "test_acc": test_acc if not diverged else 0.0, "diverged": diverged}


def grad_norms(model: TinyTransformer, x: Tensor, y: Tensor) -> dict[str, list[float]]:
    """Gradient norm of each block's weight matrices for one batch: ``{"attn": [...], "mlp": [...]}``, by layer.

    ``attn`` is the norm of the gradient of the attention's input and output projections together, ``mlp`` of
    ``linear1`` and ``linear2`` together (biases and norms left out), as in Xiong et al.'s figure 3.
    """
    model.zero_grad(set_to_none=True)
    loss, _ = _loss_and_acc(model, x, y)
    loss.backward()

    def norm(*ps: Tensor) -> float:
        return math.sqrt(sum(p.grad.square().sum().item() for p in ps))

    out = {"attn": [norm(b.self_attn.in_proj_weight, b.self_attn.out_proj.weight) for b in model.layers],
           "mlp": [norm(b.linear1.weight, b.linear2.weight) for b in model.layers]}
    model.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def residual_rms(model: TinyTransformer, x: Tensor) -> list[float]:
    """Root mean square of the residual stream after the embedding and after each block (mean over tokens)."""
    _, stream = model(x, return_stream=True)
    return [h.square().mean(-1).sqrt().mean().item() for h in stream]
