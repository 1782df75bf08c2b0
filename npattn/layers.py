"""Building blocks shared by the mechanisms: parameter initialisers, layers that read their weights
from a flat parameter dict by prefix, BatchNorm's running-statistics channel, and input validation.

Parameter dicts are flat and named like a PyTorch ``state_dict``::

    {"fc1.weight": (C//r, C), "fc1.bias": (C//r,), "bn.weight": (C,), "bn.running_mean": (C,), ...}

Initialisers draw on the host from an explicit ``numpy.random.Generator`` (so one seed gives the same
parameters on every backend) and return backend arrays.  Their defaults are PyTorch's: conv/linear
weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; BatchNorm weight 1, bias 0, running mean 0,
running variance 1.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np

import autograd as ag
from autograd import backend

# ---------------------------------------------------------------------------------------------
# initialisers (host RNG -> backend arrays)


def _uniform(rng, shape, bound, dtype):
    return backend.from_numpy(rng.uniform(-bound, bound, size=shape).astype(dtype))


def init_conv(rng, params: dict, prefix: str, out_channels: int, in_channels: int, kernel_size,
              groups: int = 1, bias: bool = True, dtype=np.float64) -> None:
    """Add ``{prefix}.weight`` (out, in/groups, kh, kw) [and ``{prefix}.bias``] to ``params``."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    fan_in = (in_channels // groups) * kh * kw
    bound = 1.0 / math.sqrt(fan_in)
    params[f"{prefix}.weight"] = _uniform(rng, (out_channels, in_channels // groups, kh, kw), bound, dtype)
    if bias:
        params[f"{prefix}.bias"] = _uniform(rng, (out_channels,), bound, dtype)


def init_conv1d(rng, params: dict, prefix: str, out_channels: int, in_channels: int, kernel_size: int,
                bias: bool = True, dtype=np.float64) -> None:
    """Add ``{prefix}.weight`` (out, in, k) [and bias] to ``params``."""
    bound = 1.0 / math.sqrt(in_channels * kernel_size)
    params[f"{prefix}.weight"] = _uniform(rng, (out_channels, in_channels, kernel_size), bound, dtype)
    if bias:
        params[f"{prefix}.bias"] = _uniform(rng, (out_channels,), bound, dtype)


def init_linear(rng, params: dict, prefix: str, out_features: int, in_features: int, bias: bool = True,
                dtype=np.float64) -> None:
    """Add ``{prefix}.weight`` (out, in) [and ``{prefix}.bias``] to ``params``."""
    bound = 1.0 / math.sqrt(in_features)
    params[f"{prefix}.weight"] = _uniform(rng, (out_features, in_features), bound, dtype)
    if bias:
        params[f"{prefix}.bias"] = _uniform(rng, (out_features,), bound, dtype)


def init_batch_norm(params: dict, prefix: str, channels: int, weight: float = 1.0, bias: float = 0.0,
                    dtype=np.float64) -> None:
    """Add BatchNorm parameters and buffers (PyTorch's state_dict names) to ``params``."""
    params[f"{prefix}.weight"] = backend.from_numpy(np.full(channels, weight, dtype=dtype))
    params[f"{prefix}.bias"] = backend.from_numpy(np.full(channels, bias, dtype=dtype))
    params[f"{prefix}.running_mean"] = backend.from_numpy(np.zeros(channels, dtype=dtype))
    params[f"{prefix}.running_var"] = backend.from_numpy(np.ones(channels, dtype=dtype))
    params[f"{prefix}.num_batches_tracked"] = backend.from_numpy(np.zeros((), dtype=np.int64))


def init_layer_norm(params: dict, prefix: str, shape, dtype=np.float64) -> None:
    """Add LayerNorm ``{prefix}.weight`` (ones) and ``{prefix}.bias`` (zeros) of ``shape``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    params[f"{prefix}.weight"] = backend.from_numpy(np.ones(shape, dtype=dtype))
    params[f"{prefix}.bias"] = backend.from_numpy(np.zeros(shape, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# layers that read their weights by prefix


def conv(params: dict, prefix: str, x, stride=1, padding=0, dilation=1, groups: int = 1):
    """``conv2d`` with ``{prefix}.weight`` and (if present) ``{prefix}.bias``."""
    return ag.conv2d(x, params[f"{prefix}.weight"], params.get(f"{prefix}.bias"), stride=stride,
                     padding=padding, dilation=dilation, groups=groups)


def conv1d(params: dict, prefix: str, x, stride=1, padding=0, dilation=1, groups: int = 1):
    """``conv1d`` with ``{prefix}.weight`` and (if present) ``{prefix}.bias``."""
    return ag.conv1d(x, params[f"{prefix}.weight"], params.get(f"{prefix}.bias"), stride=stride,
                     padding=padding, dilation=dilation, groups=groups)


def linear(params: dict, prefix: str, x):
    """``linear`` with ``{prefix}.weight`` (out, in) and (if present) ``{prefix}.bias``."""
    return ag.linear(x, params[f"{prefix}.weight"], params.get(f"{prefix}.bias"))


def layer_norm(params: dict, prefix: str, x, normalized_shape, eps: float = 1e-5):
    return ag.layer_norm(x, normalized_shape, params.get(f"{prefix}.weight"), params.get(f"{prefix}.bias"), eps)


# ---------------------------------------------------------------------------------------------
# BatchNorm and the running-statistics channel

_running_updates: contextvars.ContextVar = contextvars.ContextVar("npattn_running_updates", default=None)


@contextlib.contextmanager
def track_running_stats():
    """Collect the BatchNorm running statistics that train-mode calls inside the block produce.

    Nothing is updated in place: the block yields a dict that fills with the *new* buffers, named as
    in the parameter dict (``"bn.running_mean"``, ``"bn.running_var"``, ``"bn.num_batches_tracked"``)::

        with npattn.track_running_stats() as new_stats:
            y = mech.apply(params, x, train=True)
        params = {**params, **new_stats}        # what torch's module would hold after forward
    """
    updates: dict = {}
    token = _running_updates.set(updates)
    try:
        yield updates
    finally:
        _running_updates.reset(token)


def batch_norm(params: dict, prefix: str, x, train: bool, momentum: float = 0.1, eps: float = 1e-5):
    """BatchNorm over axis 1 with ``{prefix}.weight/bias/running_mean/running_var``.

    Train mode normalises with batch statistics and reports the updated running statistics to the
    active :func:`track_running_stats` block (if any); eval mode uses the running statistics.
    """
    y, new_mean, new_var = ag.batch_norm(
        x, params[f"{prefix}.running_mean"], params[f"{prefix}.running_var"], params.get(f"{prefix}.weight"),
        params.get(f"{prefix}.bias"), training=train, momentum=momentum, eps=eps, return_running=True,
    )
    updates = _running_updates.get()
    if train and updates is not None:
        updates[f"{prefix}.running_mean"] = new_mean
        updates[f"{prefix}.running_var"] = new_var
        count = params.get(f"{prefix}.num_batches_tracked")
        if count is not None:
            updates[f"{prefix}.num_batches_tracked"] = count + 1
    return y


# ---------------------------------------------------------------------------------------------
# input validation


def check_input(mechanism: str, x, *, arg: str = "x", ndim: int = 4, channels: int | None = None,
                min_size: int | None = None, layout: str = "(N, C, H, W)"):
    """Validate one input and return it as a Tensor; errors name the mechanism and argument.

    Raises TypeError for a non-floating dtype, ValueError for a wrong ndim, channel count or a
    spatial size below ``min_size``.
    """
    t = x if isinstance(x, ag.Tensor) else None
    if t is None:
        if not hasattr(x, "dtype") or not hasattr(x, "shape"):
            raise TypeError(f"{mechanism}: {arg} must be an array or Tensor {layout}, got {type(x).__name__}")
        t = ag.Tensor(x)
    if np.dtype(t.dtype).kind != "f":
        raise TypeError(f"{mechanism}: {arg} must have a floating dtype (float32/float64), got {t.dtype}")
    if t.ndim != ndim:
        raise ValueError(f"{mechanism}: {arg} must be {ndim}-D {layout}, got shape {t.shape}")
    if channels is not None and t.shape[1] != channels:
        raise ValueError(
            f"{mechanism}: {arg} must have {channels} channels (axis 1) to match the parameters, "
            f"got shape {t.shape}"
        )
    if min_size is not None and min(t.shape[2:]) < min_size:
        raise ValueError(
            f"{mechanism}: {arg} spatial size {t.shape[2:]} is too small; this configuration needs at "
            f"least {min_size}"
        )
    return t


def param_dtype(params: dict):
    """The floating dtype of a parameter dict (all floating parameters share it)."""
    for value in params.values():
        if np.dtype(value.dtype).kind == "f":
            return value.dtype
    return np.float64


def check_dtype(mechanism: str, x, params: dict, arg: str = "x"):
    """Inputs and parameters must share one floating dtype (no silent casting)."""
    expected = param_dtype(params)
    if x.dtype != expected:
        raise TypeError(f"{mechanism}: {arg} has dtype {x.dtype} but the parameters are {expected}; cast one of them")


def example(rng, shape, dtype=np.float64):
    """A standard-normal example input of ``shape`` (host RNG, moved to the backend)."""
    return backend.from_numpy(rng.standard_normal(shape).astype(dtype))


# ---------------------------------------------------------------------------------------------
# Conv-BN(-ReLU) units (OCR, IAUnet, RGA, GSoP all stack Conv2d -> BatchNorm2d [-> ReLU]).  The conv and
# the BatchNorm are named separately because the official state_dicts name them differently
# (``f_pixel.0`` / ``f_pixel.1.0`` in OCR, ``theta_spatial.0`` / ``theta_spatial.1`` in RGA,
# ``conv_for_DR`` / ``bn_for_DR`` in GSoP).


def init_conv_bn(rng, params: dict, conv_prefix: str, bn_prefix: str, out_channels: int, in_channels: int, *,
                 kernel_size=1, groups: int = 1, bias: bool = False, bn_weight: float = 1.0,
                 dtype=np.float64) -> None:
    """Add ``{conv_prefix}.weight (out, in/groups, kh, kw)`` [+ bias] and BatchNorm ``{bn_prefix}.*`` (out)."""
    init_conv(rng, params, conv_prefix, out_channels, in_channels, kernel_size, groups=groups, bias=bias,
              dtype=dtype)
    init_batch_norm(params, bn_prefix, out_channels, weight=bn_weight, dtype=dtype)


def conv_bn(params: dict, conv_prefix: str, bn_prefix: str, x, train: bool, *, relu: bool = True,
            stride=1, groups: int = 1) -> ag.Tensor:
    """``[relu](BN(conv(x)))`` with PyTorch's BatchNorm defaults (momentum 0.1, eps 1e-5)."""
    y = batch_norm(params, bn_prefix, conv(params, conv_prefix, x, stride=stride, groups=groups), train)
    return ag.relu(y) if relu else y
