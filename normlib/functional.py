r"""Normalization functions built from torch tensor ops, with ``torch.nn.functional``'s signatures.

Each function is the same computation: take the moments of the input over a set of
dimensions :math:`S_i` with :func:`moments`, then

.. math::

    \hat{x} = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad y = \gamma \hat{x} + \beta .

None of them calls torch's own normalization kernels: the point is to build them.
Statistics are accumulated in float32 (float64 for float64 input), with two passes
(no :math:`E[x^2] - E[x]^2` cancellation), and the output has the input's dtype.
Each function works under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "moments",
    "batch_norm",
    "instance_norm",
    "layer_norm",
    "group_norm",
    "rms_norm",
    "batch_renorm",
    "switchable_norm",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated in: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_SCALAR_TYPE_NAMES = {torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short", torch.int32: "Int",
                      torch.int64: "Long", torch.bool: "Bool", torch.complex64: "ComplexFloat",
                      torch.complex128: "ComplexDouble", torch.float16: "Half", torch.bfloat16: "BFloat16",
                      torch.float32: "Float", torch.float64: "Double"}


def _scalar_type_name(dtype: torch.dtype) -> str:
    """The name torch's C++ errors give a dtype (``torch.int64`` is ``'Long'``)."""
    if dtype in _SCALAR_TYPE_NAMES:
        return _SCALAR_TYPE_NAMES[dtype]
    return torch.empty(0, dtype=dtype).type().removeprefix("torch.").removesuffix("Tensor")


def _check_floating(input: Tensor, kernel: str) -> None:
    """Norms are defined for floating-point input only; torch's kernels say so with a NotImplementedError."""
    if not input.is_floating_point():
        raise NotImplementedError(f'"{kernel}" not implemented for \'{_scalar_type_name(input.dtype)}\'')


def _check_mixed(input: Tensor, *parameters: Tensor | None) -> None:
    """torch's rule for an input whose dtype differs from its parameters' (weight, bias, running statistics).

    The only mix allowed is float16 or bfloat16 input with float32 parameters (the output keeps the input's
    dtype); anything else, float64 input into a float32 layer included, is a RuntimeError, with torch's
    messages.
    """
    defined = [t for t in parameters if t is not None]
    if not defined or all(t.dtype == input.dtype for t in defined):
        return
    if any(t.dtype != torch.float32 for t in defined):
        raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
    if input.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")


def _float32_under_autocast() -> frozenset[tuple[str, str]]:
    """The ``(op, device type)`` pairs that torch's autocast runs in float32, read from torch's dispatcher.

    torch registers an autocast kernel for a norm only to run it in float32 (``AT_FORALL_FP32`` in
    ``aten/src/ATen/autocast_mode.h``; no norm is on a lower-precision list): on CUDA ``layer_norm``,
    ``group_norm`` and, in recent versions (2.13 has it), ``rms_norm``; on the CPU none. ``batch_norm``,
    ``instance_norm`` and dropout keep their input's dtype on both. Reading the registrations keeps this
    right for the installed torch. CUDA's side cannot be run on a machine without a GPU; the tests check
    this table against the dispatcher and the cast itself on the CPU.
    """
    pairs = set()
    for op in ("layer_norm", "group_norm", "rms_norm"):
        for device in ("cpu", "cuda", "xpu", "mps"):
            try:
                if torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{op}", f"Autocast{device.upper()}"):
                    pairs.add((op, device))
            except RuntimeError:  # an op or a dispatch key this torch does not have
                pass
    return frozenset(pairs)


_AUTOCAST_FLOAT32 = _float32_under_autocast()


def _autocast_float32(op: str, input: Tensor, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """``(input, *tensors)``, cast to float32 where torch's autocast would run ``op`` in float32 now.

    As torch's autocast does: only inside an enabled autocast region of the input's device, and only
    floating tensors other than float64 are cast (so the output is float32 for float16/bfloat16 input).
    """
    device = input.device.type
    if (op, device) not in _AUTOCAST_FLOAT32 or not torch.is_autocast_enabled(device):
        return (input, *tensors)
    return tuple(t.float() if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in (input, *tensors))


def _check_eps(eps: float, training: bool) -> None:
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def _default_rms_eps(dtype: torch.dtype) -> float:
    """RMSNorm's ``eps=None``: the machine epsilon of the dtype the statistics are computed in.

    That is float32's (``torch.finfo(torch.float32).eps``, about 1.19e-7) for float16, bfloat16 and float32
    input and float64's for float64 input, as in torch; not the input dtype's own (bfloat16's is 0.0078).
    """
    return torch.finfo(_acc_dtype(dtype)).eps


def moments(x: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    r"""Mean and biased variance of ``x`` over ``dims`` (the set :math:`S_i`), dims kept.

    :math:`\mu = \frac{1}{m}\sum_{k \in S} x_k`,
    :math:`\sigma^2 = \frac{1}{m}\sum_{k \in S} (x_k - \mu)^2`,
    computed in float32 (float64 for float64 input) in two passes over
    the data shifted by its first element :math:`K`:
    :math:`\mu = K + \overline{x - K}`. The shift costs nothing in
    accuracy and makes a constant set exact (:math:`\mu = K`,
    :math:`\sigma^2 = 0`, so :math:`x - \mu = 0`), as torch's LayerNorm
    is. This is the one place in normlib's torch code where moments are
    computed.
    """
    xf = x.to(_acc_dtype(x.dtype))
    dims = tuple(d % xf.dim() for d in dims) if xf.dim() else tuple(dims)
    if not dims or any(xf.shape[d] == 0 for d in dims):
        # nothing to shift by: an empty set's moments are NaN
        mu = xf.mean(dim=dims, keepdim=True)
        return mu, (xf - mu).square().mean(dim=dims, keepdim=True)
    first = tuple(slice(0, 1) if d in dims else slice(None) for d in range(xf.dim()))
    shift = xf[first]
    d = xf - shift
    m = d.mean(dim=dims, keepdim=True)
    var = (d - m).square().mean(dim=dims, keepdim=True)
    return shift + m, var


def _normalize(x: Tensor, mu: Tensor, var: Tensor, eps: float, weight, bias, affine_shape) -> Tensor:
    r""":math:`y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`, in the accumulation dtype."""
    y = (x.to(mu.dtype) - mu) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.reshape(affine_shape)
    if bias is not None:
        y = y + bias.reshape(affine_shape)
    return y.to(x.dtype)


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    """Shape ``(1, C, 1, ...)`` that broadcasts a per-channel vector over ``(N, C, *)``."""
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def _check_channel_vectors(input: Tensor, min_dim: int, **vectors: Tensor | None) -> int:
    """Check the input's rank and that every given per-channel vector has C elements; return C."""
    if input.dim() < min_dim:
        raise ValueError(f"expected at least {min_dim}D input (got {input.dim()}D input)")
    channels = input.shape[1]
    for name, t in vectors.items():
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()}")
    return channels


def _running_stats(running_mean: Tensor, running_var: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """The running statistics, shaped ``(1, C, 1, ...)`` and in the accumulation dtype of ``like``."""
    acc, shape = _acc_dtype(like.dtype), _channel_shape(like)
    return running_mean.to(acc).reshape(shape), running_var.to(acc).reshape(shape)


def _per_channel_count(input: Tensor) -> int:
    """How many values of ``(N, C, *)`` input each channel's batch statistics come from (0 without channels)."""
    return input.numel() // input.shape[1] if input.shape[1] else 0


def _check_batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None,
                      bias: Tensor | None, training: bool, eps: float) -> int:
    """torch.nn.functional.batch_norm's checks, in its order; return the number of channels."""
    if training:
        _verify_batch_size(input.shape)
    _check_eps(eps, training)
    if input.dim() < 2:  # torch's kernel counts no channels in such input, then fails to find dim 1
        _check_channel_vectors(input.new_empty(1, 0), 2, running_mean=running_mean, running_var=running_var,
                               weight=weight, bias=bias)
        if not training and (running_mean is None or running_var is None):
            raise RuntimeError("running_mean must be defined in evaluation mode")
        raise IndexError(f"Dimension out of range (expected to be in range of [{-max(input.dim(), 1)}, "
                         f"{max(input.dim(), 1) - 1}], but got 1)")
    channels = _check_channel_vectors(input, 2, running_mean=running_mean, running_var=running_var, weight=weight,
                                      bias=bias)
    _check_floating(input, "batch_norm")
    _check_mixed(input, weight, bias, running_mean, running_var)
    return channels


def _check_instance_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                         weight: Tensor | None, bias: Tensor | None, use_input_stats: bool) -> None:
    """torch.nn.functional.instance_norm's checks (only the affine parameters take part in the dtype rule)."""
    if use_input_stats:
        _verify_spatial_size(input.shape)
    _check_channel_vectors(input, 3, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    _check_floating(input, "batch_norm")
    _check_mixed(input, weight, bias)


def _verify_batch_size(size: Sequence[int]) -> None:
    """A batch statistic needs more than one value per channel."""
    if math.prod([size[0], *size[2:]]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def _verify_spatial_size(size: Sequence[int]) -> None:
    """An instance statistic needs more than one spatial element."""
    if math.prod(size[2:]) == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {size}")


_VMAP_RUNNING_STATS = (
    "Batch norm got a batched tensor as input while the running_mean or running_var, which will be updated in "
    "place, were not batched.\nIf you are using a module and do not need eval mode, please set "
    "`track_running_stats` to be False.If you are using a prebuilt module and do not need eval mode, please see "
    "the functorch website for resources on how to patch your module to work with vmap"
)


def _is_batched(t: Tensor) -> bool:
    """Whether ``t`` carries a ``torch.func.vmap`` batch dimension (at any level of functorch wrapping)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            return True
        t = functorch.get_unwrapped(t)
    return False


@torch.no_grad()
def _update_running(running_mean: Tensor | None, running_var: Tensor | None, mu: Tensor, var: Tensor, n: int,
                    momentum: float) -> None:
    r""":math:`\hat{s} \leftarrow (1 - m)\,\hat{s} + m\, s_t` for the mean and the *unbiased* variance.

    ``mu`` and ``var`` are per-channel batch statistics from ``n`` values each (var biased);
    nothing happens without running statistics or without values.
    """
    if running_mean is None or running_var is None or n < 1:
        return
    if torch._C._are_functorch_transforms_active() and _is_batched(mu) and not _is_batched(running_mean):
        raise RuntimeError(_VMAP_RUNNING_STATS)
    for running, value in ((running_mean, mu), (running_var, var * (n / (n - 1)))):
        running.mul_(1.0 - momentum).add_(value.reshape(-1).to(running.dtype), alpha=momentum)


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Batch Normalization of ``(N, C, *)`` input: statistics per channel over N and the spatial dims.

    Training (or no running statistics): :math:`\mu_B, \sigma_B^2` are the batch moments and
    :math:`y = \gamma (x - \mu_B)/\sqrt{\sigma_B^2 + \epsilon} + \beta`. If running statistics are
    given in training they are updated in place with the *unbiased* variance:
    :math:`\hat{\mu} \leftarrow (1-m)\hat{\mu} + m\mu_B`,
    :math:`\hat{\sigma}^2 \leftarrow (1-m)\hat{\sigma}^2 + m\,\frac{n}{n-1}\sigma_B^2`
    (``n`` values per channel). Evaluation uses :math:`\hat{\mu}, \hat{\sigma}^2` in place of the
    batch moments.
    """
    _check_batch_norm(input, running_mean, running_var, weight, bias, training, eps)
    if training:
        mu, var = moments(input, [0, *range(2, input.dim())])
        _update_running(running_mean, running_var, mu, var, _per_channel_count(input), momentum)
    elif running_mean is None or running_var is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    else:
        mu, var = _running_stats(running_mean, running_var, input)
    return _normalize(input, mu, var, eps, weight, bias, _channel_shape(input))


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Instance Normalization of ``(N, C, *)`` input: statistics per sample and channel over the spatial dims.

    :math:`y = \gamma (x - \mu_{nc}) / \sqrt{\sigma_{nc}^2 + \epsilon} + \beta`. If running statistics
    are given with ``use_input_stats`` they are updated with the batch average of the
    per-instance mean and unbiased variance; with ``use_input_stats=False`` they replace the
    instance statistics.
    """
    _check_instance_norm(input, running_mean, running_var, weight, bias, use_input_stats)
    input = input.contiguous()  # as torch's: a channels_last input gives a contiguous output
    if use_input_stats:
        mu, var = moments(input, range(2, input.dim()))
        # The running statistics follow the batch average of the per-instance statistics.
        n = math.prod(input.shape[2:]) if input.numel() else 0
        _update_running(running_mean, running_var, mu.mean(0), var.mean(0), n, momentum)
    elif running_mean is None or running_var is None:
        raise RuntimeError("Expected running_mean and running_var to be defined when use_input_stats is false")
    else:
        mu, var = _running_stats(running_mean, running_var, input)
    return _normalize(input, mu, var, eps, weight, bias, _channel_shape(input))


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int] | int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Layer Normalization: statistics of each sample over the trailing ``normalized_shape`` dims.

    :math:`y = \gamma \odot (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta`, with :math:`\gamma, \beta`
    of shape ``normalized_shape`` (elementwise), the same in training and evaluation.
    """
    input, weight, bias = _autocast_float32("layer_norm", input, weight, bias)
    normalized_shape = _check_layer_norm(input, normalized_shape, weight, bias)
    input = input.contiguous()  # as torch's: a channels_last input gives a contiguous output
    k = len(normalized_shape)
    mu, var = moments(input, range(input.dim() - k, input.dim()))
    return _normalize(input, mu, var, eps, weight, bias, normalized_shape)


def _check_group_norm(input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None) -> None:
    """torch.nn.functional.group_norm's checks, in its order."""
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    n, channels = input.shape[0], input.shape[1]
    _verify_batch_size([n * channels // num_groups, num_groups, *input.shape[2:]])
    if channels % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got input of shape "
            f"{list(input.shape)} and num_groups={num_groups}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != channels:
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in input, but got "
                f"{name} of shape {list(t.shape)} and input of shape {list(input.shape)}"
            )
    _check_mixed(input, weight, bias)
    _check_floating(input, "GroupNormKernelImpl")


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Group Normalization of ``(N, C, *)`` input: the C channels split into G groups.

    Reshape to ``(N, G, C/G, *spatial)``, take the moments over all but the first two dims, then
    apply the per-channel :math:`\gamma, \beta` (C of each, not G).
    """
    input, weight, bias = _autocast_float32("group_norm", input, weight, bias)
    _check_group_norm(input, num_groups, weight, bias)
    n, channels = input.shape[0], input.shape[1]
    grouped = input.reshape((n, num_groups, channels // num_groups, *input.shape[2:]))
    mu, var = moments(grouped, range(2, grouped.dim()))
    # One (mu, sigma^2) per group, repeated for each of its C/G channels.
    shape = _channel_shape(input)
    per_channel = (n, num_groups, channels // num_groups)
    mu = mu.reshape(n, num_groups, 1).expand(per_channel).reshape((n, channels) + shape[2:])
    var = var.reshape(n, num_groups, 1).expand(per_channel).reshape((n, channels) + shape[2:])
    return _normalize(input, mu, var, eps, weight, bias, shape)


def _check_normalized_shape(input: Tensor, normalized_shape, weight, bias, star: str = "*, ") -> tuple[int, ...]:
    """The trailing dims of ``input`` must be ``normalized_shape``; torch's messages (RMSNorm's says ``[*4]``)."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if input.dim() < k < k or tuple(input.shape[input.dim() - k:]) != normalized_shape:
        raise RuntimeError(
            f"Given normalized_shape={list(normalized_shape)}, expected input with shape "
            f"[{star}{', '.join(map(str, normalized_shape))}], but got input of size{list(input.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != normalized_shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                f"{list(t.shape)} and normalized_shape = {list(normalized_shape)}"
            )
    return normalized_shape


def _check_not_empty_shape(normalized_shape) -> None:
    if not isinstance(normalized_shape, int) and len(tuple(normalized_shape)) == 0:
        raise RuntimeError("Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one "
                           "element, but got normalized_shape = []")


def _check_layer_norm(input: Tensor, normalized_shape, weight: Tensor | None, bias: Tensor | None) -> tuple[int, ...]:
    """torch.nn.functional.layer_norm's checks, in its order; return ``normalized_shape`` as a tuple."""
    _check_not_empty_shape(normalized_shape)
    _check_mixed(input, weight, bias)
    normalized_shape = _check_normalized_shape(input, normalized_shape, weight, bias)
    _check_floating(input, "LayerNormKernelImpl")
    return normalized_shape


def _check_rms_norm(input: Tensor, normalized_shape, weight: Tensor | None) -> tuple[int, ...]:
    """torch.nn.functional.rms_norm's checks: any mix of floating dtypes is allowed, the output has the input's."""
    _check_not_empty_shape(normalized_shape)
    normalized_shape = _check_normalized_shape(input, normalized_shape, weight, None, star="*")
    _check_floating(input, "rms_norm")
    return normalized_shape


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int] | int,
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    r"""RMS Normalization: :math:`y = x / \sqrt{\frac{1}{m}\sum_k x_k^2 + \epsilon} \odot \gamma`.

    LayerNorm without the mean: no centering, no bias. The mean square is taken over the trailing
    ``normalized_shape`` dims in float32 (float64 for float64 input). ``eps=None`` means the machine
    epsilon of that computation dtype, as in torch: ``torch.finfo(torch.float32).eps`` for float16, bfloat16
    and float32 input, ``torch.finfo(torch.float64).eps`` for float64 (see :func:`_default_rms_eps`).
    """
    input, weight = _autocast_float32("rms_norm", input, weight)
    normalized_shape = _check_rms_norm(input, normalized_shape, weight)
    if eps is None:
        eps = _default_rms_eps(input.dtype)
    xf = input.to(_acc_dtype(input.dtype))
    mean_square = xf.square().mean(dim=tuple(range(input.dim() - len(normalized_shape), input.dim())), keepdim=True)
    y = xf * torch.rsqrt(mean_square + eps)
    if weight is not None:
        y = y * weight
    return y.to(input.dtype)


def batch_renorm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    r_max: float = 3.0,
    d_max: float = 5.0,
) -> Tensor:
    r"""Batch Renormalization: BatchNorm corrected towards the running statistics.

    With :math:`\sigma_B = \sqrt{\sigma_B^2 + \epsilon}` and :math:`\sigma = \sqrt{\hat{\sigma}^2 + \epsilon}`,

    .. math::
        r = \mathrm{sg}\left(\mathrm{clip}_{[1/r_{max}, r_{max}]}(\sigma_B / \sigma)\right), \quad
        d = \mathrm{sg}\left(\mathrm{clip}_{[-d_{max}, d_{max}]}((\mu_B - \hat{\mu}) / \sigma)\right), \quad
        y = \gamma \left(\frac{x - \mu_B}{\sigma_B} r + d\right) + \beta

    where sg stops the gradient. The running statistics are updated exactly as in :func:`batch_norm`.
    ``r_max=1, d_max=0`` is BatchNorm; evaluation normalizes with the running statistics.
    """
    if not training:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    _check_batch_norm(input, running_mean, running_var, weight, bias, True, eps)
    mu_b, var_b = moments(input, [0, *range(2, input.dim())])
    mu_run, var_run = _running_stats(running_mean, running_var, input)
    sigma_b, sigma_run = torch.sqrt(var_b + eps), torch.sqrt(var_run + eps)
    r = (sigma_b / sigma_run).clamp(1.0 / r_max, r_max).detach()
    d = ((mu_b - mu_run) / sigma_run).clamp(-d_max, d_max).detach()
    # (x - mu_B) / sigma_B * r + d is a normalization with mean mu_B - d sigma_B / r and std sigma_B / r.
    sigma = sigma_b / r
    y = _normalize(input, mu_b - d * sigma, sigma.square(), 0.0, weight, bias, _channel_shape(input))
    _update_running(running_mean, running_var, mu_b, var_b, _per_channel_count(input), momentum)
    return y


def switchable_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean_weight: Tensor,
    var_weight: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Switchable Normalization of ``(N, C, *spatial)`` input: IN, LN and BN statistics mixed.

    :math:`\mu = \sum_{k} w_k \mu_k`, :math:`\sigma^2 = \sum_k w'_k \sigma_k^2` over
    :math:`k \in (\mathrm{IN}, \mathrm{LN}, \mathrm{BN})`, with :math:`w = \mathrm{softmax}(`
    ``mean_weight`` :math:`)` and :math:`w' = \mathrm{softmax}(` ``var_weight`` :math:`)`. The LN and BN
    moments are derived from the IN ones by the law of total variance, e.g.
    :math:`\sigma_{LN}^2 = \overline{\sigma_{IN}^2} + \overline{(\mu_{IN} - \mu_{LN})^2}` (averages
    over channels), which needs no :math:`E[x^2] - E[x]^2`. All variances are biased. In training the
    BN running statistics are updated as in :func:`batch_norm`; in evaluation they replace the BN
    moments (batch moments are used if there are none).
    """
    _check_channel_vectors(input, 3, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    _check_floating(input, "switchable_norm")
    _check_mixed(input, weight, bias, running_mean, running_var)
    _verify_spatial_size(input.shape)
    shape = _channel_shape(input)
    mu_in, var_in = moments(input, range(2, input.dim()))  # (N, C, 1, ...)
    mu_ln = mu_in.mean(1, keepdim=True)
    var_ln = var_in.mean(1, keepdim=True) + (mu_in - mu_ln).square().mean(1, keepdim=True)
    use_batch = training or running_mean is None or running_var is None
    if use_batch:
        if training:
            _verify_batch_size(input.shape)
        mu_bn = mu_in.mean(0, keepdim=True)
        var_bn = var_in.mean(0, keepdim=True) + (mu_in - mu_bn).square().mean(0, keepdim=True)
        if training:
            _update_running(running_mean, running_var, mu_bn, var_bn, _per_channel_count(input), momentum)
    else:
        mu_bn, var_bn = _running_stats(running_mean, running_var, input)
    w = torch.softmax(mean_weight.to(mu_in.dtype), 0)
    v = torch.softmax(var_weight.to(mu_in.dtype), 0)
    mu = w[0] * mu_in + w[1] * mu_ln + w[2] * mu_bn
    var = v[0] * var_in + v[1] * var_ln + v[2] * var_bn
    return _normalize(input, mu, var, eps, weight, bias, shape)


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------

SELU_ALPHA_PRIME = -1.7580993408473766  # -lambda * alpha of SELU: the value SELU saturates to


def _check_p(p: float) -> None:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _keep_mask(input: Tensor, p: float, per_channel: bool, generator: torch.Generator | None) -> Tensor:
    """Bernoulli(1 - p) keep mask: one draw per element, or per (sample, channel) broadcast over the rest."""
    if per_channel:
        if input.dim() < 2:
            raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
        shape = (input.shape[0], input.shape[1]) + (1,) * (input.dim() - 2)
        noise = input.new_empty(shape)
    else:
        noise = torch.empty_like(input)
    return noise.bernoulli_(1.0 - p, generator=generator)


def _dropout(input: Tensor, p: float, training: bool, inplace: bool, per_channel: bool, alpha: bool,
             generator: torch.Generator | None) -> Tensor:
    _check_p(p)
    if p == 0.0 or not training or input.numel() == 0:
        return input
    if p == 1.0:
        return input.mul_(0) if inplace else input * 0
    keep = _keep_mask(input, p, per_channel, generator)
    if not input.is_floating_point():  # where torch's in-place scaling of its integer noise fails
        raise RuntimeError(f"result type Float can't be cast to the desired output type "
                           f"{_scalar_type_name(input.dtype)}")
    if not alpha:
        # Inverted dropout: y = x * r / (1 - p), r ~ Bernoulli(1 - p), so E[y] = x and eval is identity.
        scale = keep / (1.0 - p)
        return input.mul_(scale) if inplace else input * scale
    # Alpha dropout: dropped units go to alpha', then y = a * x' + b restores mean 0 and variance 1.
    a = ((1.0 - p) * (1.0 + p * SELU_ALPHA_PRIME**2)) ** -0.5
    b = -a * SELU_ALPHA_PRIME * p
    shift = (1.0 - keep) * (a * SELU_ALPHA_PRIME) + b
    return input.mul_(keep * a).add_(shift) if inplace else input * (keep * a) + shift


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            generator: torch.Generator | None = None) -> Tensor:
    r"""Dropout: :math:`y = x \odot r / (1 - p)` with :math:`r_k \sim \mathrm{Bernoulli}(1 - p)` in training.

    ``p`` is the probability of *dropping* a unit. The scaling by :math:`1/(1-p)` happens in training
    ("inverted" dropout) so that :math:`E[y] = x` and evaluation is the identity. Identity when
    ``p == 0``, when not training, or on empty input; zeros when ``p == 1``.
    """
    return _dropout(input, p, training, inplace, per_channel=False, alpha=False, generator=generator)


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
              generator: torch.Generator | None = None) -> Tensor:
    r"""Channel dropout for ``(N, C, L)`` or unbatched ``(C, L)`` input: whole channels zeroed.

    :math:`y_{nc\cdot} = x_{nc\cdot}\, r_{nc} / (1 - p)`, one draw per sample and channel.
    """
    _check_p(p)
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input. Note that dropout1d "
            "exists to provide channel-wise dropout on inputs with 1 spatial dimension, a channel dimension, "
            "and an optional batch dimension (i.e. 2D or 3D inputs)."
        )
    return _unbatched(input, batched_dim=3, fn=lambda x: _dropout(x, p, training, inplace, True, False, generator),
                      inplace=inplace)


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
              generator: torch.Generator | None = None) -> Tensor:
    r"""Channel dropout for ``(N, C, H, W)`` input: whole feature maps zeroed, one draw per (n, c).

    Like ``torch.nn.functional.dropout2d``, a 3-D input is read as ``(N, C, L)`` (with a warning).
    """
    _check_p(p)
    if input.dim() not in (3, 4):
        warnings.warn(f"dropout2d: Received a {input.dim()}-D input to dropout2d, which is deprecated and will "
                      "result in an error in a future release. To retain the behavior and silence this warning, "
                      "please use dropout instead. Note that dropout2d exists to provide channel-wise dropout on "
                      "inputs with 2 spatial dimensions, a channel dimension, and an optional batch dimension "
                      "(i.e. 3D or 4D inputs).", stacklevel=2)
    if input.dim() == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
                      "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel dim. "
                      "This behavior will change in a future release to interpret the input as one without a "
                      "batch dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise dropout behavior, "
                      "please switch to using dropout1d instead.", stacklevel=2)
    return _dropout(input, p, training, inplace, per_channel=True, alpha=False, generator=generator)


def dropout3d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
              generator: torch.Generator | None = None) -> Tensor:
    r"""Channel dropout for ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` input: whole volumes zeroed.

    :math:`y_{nc\cdot} = x_{nc\cdot}\, r_{nc} / (1 - p)`, one draw per sample and channel.
    """
    _check_p(p)
    if input.dim() not in (4, 5):
        warnings.warn(f"dropout3d: Received a {input.dim()}-D input to dropout3d, which is deprecated and will "
                      "result in an error in a future release. To retain the behavior and silence this warning, "
                      "please use dropout instead. Note that dropout3d exists to provide channel-wise dropout on "
                      "inputs with 3 spatial dimensions, a channel dimension, and an optional batch dimension "
                      "(i.e. 4D or 5D inputs).", stacklevel=2)
    return _unbatched(input, batched_dim=5, fn=lambda x: _dropout(x, p, training, inplace, True, False, generator),
                      inplace=inplace)


def _unbatched(input: Tensor, batched_dim: int, fn, inplace: bool) -> Tensor:
    """Apply ``fn`` to ``input``, adding and removing a batch dim when ``input`` has none."""
    if input.dim() == batched_dim:
        return fn(input)
    x = input.unsqueeze_(0) if inplace else input.unsqueeze(0)
    y = fn(x)
    return y.squeeze_(0) if inplace else y.squeeze(0)


def alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False, inplace: bool = False, *,
                  generator: torch.Generator | None = None) -> Tensor:
    r"""Alpha dropout for SELU networks: keeps zero mean and unit variance.

    Dropped units are set to :math:`\alpha' = -\lambda\alpha \approx -1.7581` (SELU's saturation value),
    then :math:`y = a x' + b` with :math:`a = ((1-p)(1 + p\alpha'^2))^{-1/2}` and :math:`b = -a\alpha' p`.
    Note ``training=False`` by default, as in torch.
    """
    return _dropout(input, p, training, inplace, per_channel=False, alpha=True, generator=generator)


def feature_alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False, inplace: bool = False, *,
                          generator: torch.Generator | None = None) -> Tensor:
    r"""Alpha dropout of whole channels (one draw per sample and channel); see :func:`alpha_dropout`."""
    return _dropout(input, p, training, inplace, per_channel=True, alpha=True, generator=generator)
