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

from .params import Params, check_shape

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
#
# Each reads its parameters from a :class:`~npattn.params.Params` view (or a plain dict), takes the
# bias / affine choice as an argument -- never from which keys exist -- and checks every parameter's
# shape against what its input implies (``out=`` pins the output width where the mechanism needs one).


def _mechanism(params) -> str:
    return getattr(params, "mechanism", "npattn")


def _take(params, key: str, shape: tuple):
    value = params[key]
    check_shape(_mechanism(params), key, value, shape)
    return value


def _weight_and_bias(params, prefix: str, weight_shape: tuple, bias: bool):
    weight = _take(params, f"{prefix}.weight", weight_shape)
    return weight, (_take(params, f"{prefix}.bias", (weight.shape[0],)) if bias else None)


def conv(params, prefix: str, x, stride=1, padding=0, dilation=1, groups: int = 1, *, bias: bool = True,
         out: int | None = None):
    """``conv2d`` with ``{prefix}.weight`` (out, C/groups, kh, kw) and, if ``bias``, ``{prefix}.bias`` (out,)."""
    weight, b = _weight_and_bias(params, prefix, (out, x.shape[1] // groups, None, None), bias)
    return ag.conv2d(x, weight, b, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv1d(params, prefix: str, x, stride=1, padding=0, dilation=1, groups: int = 1, *, bias: bool = True,
           out: int | None = None):
    """``conv1d`` with ``{prefix}.weight`` (out, C/groups, k) and, if ``bias``, ``{prefix}.bias`` (out,)."""
    weight, b = _weight_and_bias(params, prefix, (out, x.shape[1] // groups, None), bias)
    return ag.conv1d(x, weight, b, stride=stride, padding=padding, dilation=dilation, groups=groups)


def linear(params, prefix: str, x, *, bias: bool = True, out: int | None = None):
    """``linear`` with ``{prefix}.weight`` (out, in) and, if ``bias``, ``{prefix}.bias`` (out,)."""
    weight, b = _weight_and_bias(params, prefix, (out, x.shape[-1]), bias)
    return ag.linear(x, weight, b)


def layer_norm(params, prefix: str, x, normalized_shape, eps: float = 1e-5, *, affine: bool = True):
    """``layer_norm`` over the trailing ``normalized_shape`` with ``{prefix}.weight``/``.bias`` if ``affine``."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    weight = _take(params, f"{prefix}.weight", shape) if affine else None
    b = _take(params, f"{prefix}.bias", shape) if affine else None
    return ag.layer_norm(x, normalized_shape, weight, b, eps)


# ---------------------------------------------------------------------------------------------
# the shapes a configuration's parameters must have
#
# A mechanism can check every parameter up front against the shapes its configuration implies, so that an
# error names the key that is wrong (not the next layer whose input it broke), kernel sizes are checked
# too, and a public function that uses part of the block (an attention map) still reads the whole dict.


def conv_shapes(prefix: str, out_channels: int, in_channels: int, kernel_size=1, *, groups: int = 1,
                bias: bool = True) -> dict:
    """``{prefix}.weight: (out, in/groups, kh, kw)`` [and ``{prefix}.bias: (out,)``], as :func:`init_conv`."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    shapes = {f"{prefix}.weight": (out_channels, in_channels // groups, kh, kw)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_channels,)
    return shapes


def linear_shapes(prefix: str, out_features: int, in_features: int, *, bias: bool = True) -> dict:
    """``{prefix}.weight: (out, in)`` [and ``{prefix}.bias: (out,)``], as :func:`init_linear`."""
    shapes = {f"{prefix}.weight": (out_features, in_features)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_features,)
    return shapes


def batch_norm_shapes(prefix: str, channels: int) -> dict:
    """The five BatchNorm entries of :func:`init_batch_norm`: four (C,) and ``num_batches_tracked`` ()."""
    shapes = {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")}
    shapes[f"{prefix}.num_batches_tracked"] = ()
    return shapes


def take_all(params, shapes: dict, *, complete: bool = False) -> None:
    """Read every key of ``shapes`` from ``params`` and check its shape (ValueError naming the key).

    ``complete``: ``shapes`` is every key the mechanism reads, so keys left unread are reported (as the
    contract would after the call) before any shape -- parameters made for another structure (three SK
    branches given to ``branches=2``) are then named as such, not as one layer of the wrong size.
    """
    if complete and isinstance(params, Params):
        for key in shapes:
            params[key]
        params.check_all_used()
    for key, shape in shapes.items():
        _take(params, key, shape)


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


def batch_norm(params, prefix: str, x, train: bool, momentum: float = 0.1, eps: float = 1e-5, *,
               affine: bool = True):
    """BatchNorm over axis 1 with ``{prefix}.running_mean/running_var/num_batches_tracked`` (C,), (C,), ()
    and, if ``affine``, ``{prefix}.weight/bias`` (C,).

    Train mode normalises with batch statistics and reports the updated running statistics to the
    active :func:`track_running_stats` block (if any); eval mode uses the running statistics.  Training
    on one value per channel (N * H * W == 1) is a ValueError naming the layer, as in PyTorch.
    """
    channels = (x.shape[1],)
    mean, var = _take(params, f"{prefix}.running_mean", channels), _take(params, f"{prefix}.running_var", channels)
    count = _take(params, f"{prefix}.num_batches_tracked", ())
    weight = _take(params, f"{prefix}.weight", channels) if affine else None
    bias = _take(params, f"{prefix}.bias", channels) if affine else None
    values_per_channel = math.prod(x.shape) // max(x.shape[1], 1)
    if train and values_per_channel == 1:
        raise ValueError(f"{_mechanism(params)}: BatchNorm {prefix!r} in training needs more than one value per "
                         f"channel, got input shape {tuple(x.shape)} (as torch: 'Expected more than 1 value per "
                         "channel when training'); use eval mode or a larger batch/map")
    y, new_mean, new_var = ag.batch_norm(x, mean, var, weight, bias, training=train, momentum=momentum, eps=eps,
                                         return_running=True)
    updates = _running_updates.get()
    if train and updates is not None:
        updates[f"{prefix}.running_mean"] = new_mean
        updates[f"{prefix}.running_var"] = new_var
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


def check_dropout(mechanism: str, p) -> float:
    """``p`` as a float in [0, 1) (checked in eval mode too: a bad value is a bug whatever the mode)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"{mechanism}: dropout must be a number in [0, 1), got {p!r}")
    if not 0.0 <= float(p) < 1.0:                      # NaN fails both comparisons
        raise ValueError(f"{mechanism}: dropout must be in [0, 1), got {p}")
    return float(p)


def param_dtype(params):
    """The floating dtype of a parameter dict or view (all floating parameters share it)."""
    if isinstance(params, Params):
        return params.dtype
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


def conv_bn(params, conv_prefix: str, bn_prefix: str, x, train: bool, *, relu: bool = True,
            stride=1, groups: int = 1, bias: bool = False, out: int | None = None) -> ag.Tensor:
    """``[relu](BN(conv(x)))`` with PyTorch's BatchNorm defaults (momentum 0.1, eps 1e-5); ``bias`` as in
    :func:`init_conv_bn` (default without a conv bias)."""
    y = batch_norm(params, bn_prefix, conv(params, conv_prefix, x, stride=stride, groups=groups, bias=bias, out=out),
                   train)
    return ag.relu(y) if relu else y
