"""Modules that are drop-ins for their ``torch.nn`` namesakes: same arguments, state_dict keys and errors."""

from normlib.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from normlib.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from normlib.nn.normalization import GroupNorm, LayerNorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
]
