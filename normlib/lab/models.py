"""Small models the lessons train, with the norm layer as a parameter."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

NormFactory = Callable[[int], nn.Module]


class GhostNorm(nn.Module):
    """A batch-dependent norm applied to each group of ``group_size`` consecutive samples on its own (ghost batches).

    Hoffer et al. (2017) take BatchNorm's statistics over small "ghost" batches inside a larger optimizer
    batch. That isolates one cause: the optimizer batch (and so the gradient noise and the number of steps)
    stays fixed while the number of samples per statistic varies. In training, the input is split along the
    batch dimension and ``norm`` runs on each piece; in eval mode, and when ``group_size`` covers the batch,
    ``norm`` sees the whole input. The wrapped layer is ``.norm``, so its state_dict keys gain a ``norm.``
    prefix.

    The running statistics must not change with the group size too: updated once per piece with the
    layer's momentum :math:`a`, they would move :math:`1 - (1 - a)^k` per optimizer step over :math:`k`
    pieces (81% at :math:`a = 0.1, k = 16`) and average far fewer images. So each piece updates them with
    the momentum :math:`1 - (1 - a)^{1/k}`: over one optimizer step they move by :math:`a`, as the plain
    norm's do, towards the pieces' statistics weighted almost equally. (A cumulative average,
    ``momentum=None``, weighs every piece equally already and is left alone.)
    """

    def __init__(self, norm: nn.Module, group_size: int) -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        self.norm, self.group_size = norm, group_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or x.shape[0] <= self.group_size:
            return self.norm(x)
        pieces = x.split(self.group_size)
        momentum = getattr(self.norm, "momentum", None)
        if momentum is None:
            return torch.cat([self.norm(piece) for piece in pieces])
        self.norm.momentum = 1 - (1 - momentum) ** (1 / len(pieces))
        try:
            return torch.cat([self.norm(piece) for piece in pieces])
        finally:
            self.norm.momentum = momentum

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


def ghost(factory: NormFactory, group_size: int) -> NormFactory:
    """``factory`` with each layer it builds wrapped in :class:`GhostNorm` (statistics over ``group_size`` samples)."""
    return lambda width: GhostNorm(factory(width), group_size)


class LeNet(nn.Module):
    """LeNet-5 for small images: conv-norm-relu-pool twice, then fc-norm-relu, fc-relu, fc.

    ``image_size`` is the input's height and width (8 for the digits, 28 for Fashion-MNIST); the 3x3
    convolutions keep it and each pooling halves it, so the first fully connected layer sees
    ``16 * (image_size // 4) ** 2`` values.

    ``conv_norm(C)`` builds the layer after each convolution (e.g. ``normlib.nn.BatchNorm2d``),
    ``fc_norm(F)`` the one after the first fully connected layer (e.g. ``normlib.nn.BatchNorm1d``);
    ``None`` leaves the place empty. When a norm follows a layer, that layer has no bias of its own:
    the norm's :math:`\\beta` takes its place (a per-channel bias cancels exactly where the statistics stay
    within one channel, as in BatchNorm and InstanceNorm; under LayerNorm, or GroupNorm with several channels
    per group, only its mean over the set cancels, and :math:`\\beta` is a stand-in, not an exact one).
    ``norm_after_activation=True`` puts each norm after its ReLU instead.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 conv_norm: NormFactory | None = None, fc_norm: NormFactory | None = None,
                 norm_after_activation: bool = False, image_size: int = 8) -> None:
        super().__init__()

        def block(layer: Callable[[bool], nn.Module], width: int, norm: NormFactory | None) -> list[nn.Module]:
            if norm_after_activation:  # layer -> ReLU -> norm: the layer keeps its bias
                return [layer(True), nn.ReLU(), norm(width) if norm else nn.Identity()]
            return [layer(norm is None), norm(width) if norm else nn.Identity(), nn.ReLU()]

        self.features = nn.Sequential(
            *block(lambda b: nn.Conv2d(in_channels, 6, 3, padding=1, bias=b), 6, conv_norm),
            nn.MaxPool2d(2),  # 8x8 -> 4x4 (28x28 -> 14x14)
            *block(lambda b: nn.Conv2d(6, 16, 3, padding=1, bias=b), 16, conv_norm),
            nn.MaxPool2d(2),  # 4x4 -> 2x2 (14x14 -> 7x7)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            *block(lambda b: nn.Linear(16 * (image_size // 4) ** 2, 120, bias=b), 120, fc_norm),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def mlp(sizes: list[int], activation: Callable[[], nn.Module] = nn.ReLU, dropout: float = 0.0,
        dropout_layer: Callable[[float], nn.Module] | None = None) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` on flattened input.

    Each hidden layer is Linear, activation, then dropout (``dropout_layer(p)``, by default
    ``normlib.nn.Dropout``) when ``dropout > 0``. The output layer is a plain Linear.
    """
    from normlib.nn import Dropout

    dropout_layer = dropout_layer or Dropout
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
            if dropout > 0:
                layers.append(dropout_layer(dropout))
    return nn.Sequential(*layers)


class NormRNN(nn.Module):
    r"""An Elman RNN classifier with a norm on the pre-activation, :math:`h_t = \tanh(N(W x_t + U h_{t-1}))`.

    Input ``(B, T, 2)``: a value and a 1/0 flag marking real steps versus padding (as made by
    :func:`normlib.lab.data.variable_length_sums`); a sequence's state stops changing after its last step.
    ``norm`` is ``None``, ``"layer"`` (one ``LayerNorm(hidden)`` shared by all steps: statistics of each
    sample's own hidden vector) or ``"batch"`` (one ``BatchNorm1d(hidden)`` *per time step*, over the
    sequences still running at that step; steps beyond ``max_len`` reuse the last one, as they must for
    sequences longer than any seen in training).
    """

    def __init__(self, hidden: int = 32, num_classes: int = 2, norm: str | None = "layer", max_len: int = 32) -> None:
        super().__init__()
        from normlib import nn as N

        if norm not in (None, "layer", "batch"):
            raise ValueError(f"norm must be None, 'layer' or 'batch', got {norm!r}")
        self.inp = nn.Linear(1, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=norm is None)
        self.norm = norm
        steps = {None: 0, "layer": 1, "batch": max_len}[norm]
        make = (lambda: N.LayerNorm(hidden)) if norm == "layer" else (lambda: N.BatchNorm1d(hidden))
        self.norms = nn.ModuleList([make() for _ in range(steps)])
        self.out = nn.Linear(hidden, num_classes)
        self.hidden = hidden

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            active = x[:, t, 1] > 0
            if not active.any():
                break
            pre = self.inp(x[active, t, :1]) + self.rec(h[active])
            if self.norm is not None and (not self.training or self.norm == "layer" or int(active.sum()) > 1):
                pre = self.norms[min(t, len(self.norms) - 1)](pre)
            h = h.clone()
            h[active] = torch.tanh(pre)
        return self.out(h)


def norm_mlp(sizes: list[int], norm: NormFactory | None = None, activation: Callable[[], nn.Module] = nn.ReLU,
             norm_after_activation: bool = False) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` on flattened input, a norm in each hidden layer.

    Each hidden layer is Linear, ``norm(width)``, activation (or Linear, activation, norm with
    ``norm_after_activation=True``); ``norm=None`` leaves the norm out. A Linear followed by a norm has
    no bias (the norm's :math:`\\beta` replaces it). The output layer is a plain Linear.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i == len(sizes) - 2:
            layers.append(nn.Linear(n_in, n_out))
        elif norm is None:
            layers += [nn.Linear(n_in, n_out), activation()]
        elif norm_after_activation:
            layers += [nn.Linear(n_in, n_out), activation(), norm(n_out)]
        else:
            layers += [nn.Linear(n_in, n_out, bias=False), norm(n_out), activation()]
    return nn.Sequential(*layers)


@torch.no_grad()
def he_init(model: nn.Module) -> nn.Module:
    r"""He (Kaiming) initialisation of every ``Linear`` and ``Conv`` weight for ReLU, biases zero; in place.

    torch's default init draws weights with variance :math:`1/(3\,\text{fan\_in})`, a factor
    :math:`\sqrt{6}` below the :math:`2/\text{fan\_in}` that keeps a ReLU network's activations at a
    constant scale through depth (He et al. 2015). A network with a norm after each layer does not care
    (the norm rescales); a plain one starts with shrinking activations and gradients. Comparing a norm
    with no norm is fair only when the plain network gets the init that suits it. Returns the model.
    """
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
