"""Modules that are drop-ins for their ``torch.nn`` namesakes: same arguments, state_dict keys and errors."""

from normlib.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from normlib.nn.dropout import AlphaDropout, Dropout, Dropout1d, Dropout2d, Dropout3d, FeatureAlphaDropout
from normlib.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from normlib.nn.normalization import GroupNorm, LayerNorm, RMSNorm
from normlib.nn.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, renorm_limits, set_renorm_limits
from normlib.nn.switchable import SwitchableNorm1d, SwitchableNorm2d, SwitchableNorm3d
from normlib.nn.syncbatchnorm import SyncBatchNorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "renorm_limits",
    "set_renorm_limits",
    "SwitchableNorm1d",
    "SwitchableNorm2d",
    "SwitchableNorm3d",
    "SyncBatchNorm",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
]
