"""Convolutional networks of the GroupNorm and "choosing a norm" lessons, and the channels-last LayerNorm.

:class:`LayerNorm2d` is the LayerNorm that ConvNeXt and timm put in CNNs: the statistics of each position's
``C`` channels, ``(N, C, H, W)`` normalised as ``(N, H, W, C)`` rows. :class:`ConvNet` is a small CNN whose
widths are a parameter (so that GroupNorm's number of groups can vary), and whose last convolution can run
on small feature maps (so that a BatchNorm there sees few values per statistic).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from normlib.lab.models import NormFactory

__all__ = ["ConvNet", "LayerNorm2d"]


class LayerNorm2d(nn.Module):
    r"""LayerNorm over the channels at each position of an ``(N, C, H, W)`` input, with per-channel affine.

    :math:`\mu_{nhw}, \sigma^2_{nhw}` are the moments of the ``C`` values :math:`x_{n\cdot hw}`: one
    statistic per sample and position, over ``C`` values. That is ConvNeXt's "channels_first" LayerNorm
    and timm's ``LayerNorm2d``: ``normlib.nn.LayerNorm(C)`` applied to the input permuted to
    ``(N, H, W, C)``. It is not ``GroupNorm(1, C)``, whose statistics run over all of ``(C, H, W)``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        from normlib.nn import LayerNorm

        self.norm = LayerNorm(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"LayerNorm2d expects (N, C, H, W) input, got {x.dim()}D input")
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNet(nn.Module):
    """conv3x3-norm-ReLU blocks, each but the last followed by 2x2 max-pooling, then a linear classifier.

    ``widths`` are the channels of the convolutions. ``norms`` gives one factory per convolution
    (``norm(C)``, or ``None`` for no norm there); ``conv_norm`` one factory for all of them. A convolution
    followed by a norm has no bias. ``last_map``, when given, average-pools the input of the last
    convolution to ``last_map x last_map`` positions, so that its norm takes its statistics over few
    positions (``last_map=1``: one value per channel and sample, as after a fully connected layer).
    The classifier is one linear layer on the flattened last feature maps.
    """

    def __init__(self, widths: Sequence[int], conv_norm: NormFactory | None = None,
                 norms: Sequence[NormFactory | None] | None = None, num_classes: int = 10,
                 in_channels: int = 1, image_size: int = 28, last_map: int | None = None) -> None:
        super().__init__()
        if norms is None:
            norms = [conv_norm] * len(widths)
        elif conv_norm is not None:
            raise ValueError("give conv_norm or norms, not both")
        if len(norms) != len(widths):
            raise ValueError(f"{len(widths)} convolutions but {len(norms)} norms")
        layers: list[nn.Module] = []
        size, channels = image_size, in_channels
        for i, (width, norm) in enumerate(zip(widths, norms, strict=True)):
            last = i == len(widths) - 1
            if last and last_map is not None:
                layers.append(nn.AdaptiveAvgPool2d(last_map))
                size = last_map
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=norm is None),
                       norm(width) if norm else nn.Identity(), nn.ReLU()]
            if not last:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.map_size = size  # height and width of the last feature maps
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
