"""The core against PyTorch's own OpInfo samples (issue 14).

For every OpInfo whose operator the core implements (``CORE_OPS``: OpInfo name -> the core call),
every float64 sample must give torch's output and torch's gradients (to 1e-10 relative), and every
error input must be rejected with a clear error -- except the samples and error inputs listed in
``GAPS``, the one table of what the core lacks (with the reason).  The test fails for a failure the
table does not explain, for a listed sample that now passes, and for an entry that applies to
nothing, so the table only shrinks honestly.  Machinery: ``tests/torch_tier/opinfo.py``; summary:
``python -m tests.torch_tier.opinfo``.

Adapters translate torch's calling convention only (``dim`` -> ``axis``, ``keepdim`` -> ``keepdims``,
torch's pad tuple -> NumPy's pad widths, torch's defaults where the core's differ); they never
compute anything, so an unsupported argument reaches the core, which must refuse it.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # torch.testing._internal imports it

import autograd as ag  # noqa: E402

from . import opinfo  # noqa: E402
from .opinfo import Gap  # noqa: E402

pytestmark = pytest.mark.torch

# ---------------------------------------------------------------------------------------------
# adapters: torch's calling convention -> the core's


def _renamed(fn, **extra):
    """``fn`` called with torch's keyword names: dim -> axis, keepdim -> keepdims (plus ``extra``)."""
    names = {"dim": "axis", "dims": "axis", "keepdim": "keepdims", **extra}

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return fn(*args, **{names.get(k, k): v for k, v in kwargs.items()})

    return call


def _variance(fn):
    """torch.var/std: ``(input, dim, unbiased, keepdim)`` or ``correction=``; torch's default correction is 1."""
    def call(x, dim=None, unbiased=None, keepdim=False, *, correction=None, **kwargs):
        if unbiased is not None:
            correction = int(unbiased)
        return fn(x, axis=dim, keepdims=keepdim, correction=1 if correction is None else correction, **kwargs)

    return call


def _pad_width(pad, ndim: int):
    """torch's pad tuple (last axis first: left, right, top, bottom, ...) -> NumPy's ((before, after), ...)."""
    pairs = [tuple(pad[i : i + 2]) for i in range(0, len(pad), 2)][::-1]
    return [(0, 0)] * (ndim - len(pairs)) + pairs


def _torch_pad(x, pad, mode="constant", value=None):
    return ag.pad(x, _pad_width(pad, x.ndim), 0.0 if value is None else value, mode=mode)


def _split(x, split_size_or_sections, dim=0):
    """torch.split: an int is the size of each chunk, a list the sizes -> the core's split points."""
    n = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        points = list(range(split_size_or_sections, n, split_size_or_sections))
    else:
        points = list(np.cumsum(split_size_or_sections)[:-1])
    return ag.split(x, [int(p) for p in points], axis=dim)


def _dropout(x, p=0.5, training=True, inplace=False):
    """F.dropout: torch's default is training=True (the core's is False)."""
    if inplace:
        return ag.dropout(x, p, training, inplace=True)  # the core has no in-place ops: it refuses
    return ag.dropout(x, p, training)


def _reflected(method):
    """``torch.Tensor.__rop__(self, other)`` -> the core Tensor's own reflected operator."""
    return lambda x, other: getattr(ag.Tensor, method)(x, other)


#: OpInfo name -> the core call.  Elementwise, reductions, shape, indexing, linear algebra, nn.
CORE_OPS = {
    # elementwise
    "abs": ag.abs, "neg": ag.neg, "exp": ag.exp, "log": ag.log, "sqrt": ag.sqrt, "tanh": ag.tanh,
    "sigmoid": ag.sigmoid, "sign": ag.sign, "sgn": ag.sign,
    "nn.functional.relu": ag.relu, "nn.functional.leaky_relu": ag.leaky_relu,
    "nn.functional.softplus": ag.softplus,
    "add": ag.add, "sub": ag.sub, "mul": ag.mul, "div.no_rounding_mode": ag.div, "true_divide": ag.div,
    "pow": ag.pow, "maximum": ag.maximum, "minimum": ag.minimum, "max.binary": ag.maximum,
    "min.binary": ag.minimum,
    "rsub": lambda x, other, **kwargs: ag.sub(other, x, **kwargs),
    "__radd__": _reflected("__radd__"), "__rsub__": _reflected("__rsub__"), "__rmul__": _reflected("__rmul__"),
    "__rdiv__": _reflected("__rtruediv__"), "__rpow__": _reflected("__rpow__"),
    "__rmatmul__": _reflected("__rmatmul__"),
    "where": lambda x, condition, other: ag.where(condition, x, other),
    "clamp": ag.clip, "clamp_min": lambda x, bound: ag.clip(x, min=bound),
    "clamp_max": lambda x, bound: ag.clip(x, max=bound),
    # reductions
    "sum": _renamed(ag.sum), "mean": _renamed(ag.mean), "amax": _renamed(ag.max), "amin": _renamed(ag.min),
    "max.reduction_no_dim": ag.max, "min.reduction_no_dim": ag.min, "logsumexp": _renamed(ag.logsumexp),
    "var": _variance(ag.var), "var.unbiased": lambda x, unbiased: ag.var(x, unbiased=unbiased),
    "std": _variance(ag.std), "std.unbiased": lambda x, unbiased: ag.std(x, unbiased=unbiased), "argmax": _renamed(ag.argmax), "argmin": _renamed(ag.argmin),
    # shape and indexing
    "reshape": ag.reshape, "view": ag.reshape, "permute": ag.permute, "transpose": ag.swapaxes,
    "broadcast_to": ag.broadcast_to, "unsqueeze": ag.expand_dims, "squeeze": _renamed(ag.squeeze),
    "squeeze.multiple": _renamed(ag.squeeze), "flatten": _renamed(ag.flatten, start_dim="start_axis",
                                                                  end_dim="end_axis"),
    "cat": _renamed(ag.concatenate), "stack": _renamed(ag.stack), "split": _split, "split.list_args": _split,
    "flip": _renamed(ag.flip), "tile": ag.tile,
    "repeat": ag.tile,  # torch.Tensor.repeat(sizes) is numpy.tile; the core's repeat is numpy.repeat
    "repeat_interleave": _renamed(ag.repeat), "__getitem__": ag.getitem,
    "take_along_dim": _renamed(ag.take_along_axis),
    "constant_pad_nd": lambda x, pad, value=0: ag.pad(x, _pad_width(pad, x.ndim), value),
    "nn.functional.pad.constant": _torch_pad, "nn.functional.pad.reflect": _torch_pad,
    "nn.functional.pad.replicate": _torch_pad, "nn.functional.pad.replicate_negative": _torch_pad,
    "nn.functional.pad.circular": _torch_pad,
    # linear algebra
    "matmul": ag.matmul, "outer": ag.outer, "einsum": lambda operands, equation: ag.einsum(equation, *operands),
    "nn.functional.linear": ag.linear,
    # nn
    "softmax": _renamed(ag.softmax), "softmax.with_dtype": _renamed(ag.softmax),
    "log_softmax": _renamed(ag.log_softmax), "log_softmax.with_dtype": _renamed(ag.log_softmax),
    "nn.functional.conv1d": ag.conv1d, "nn.functional.conv2d": ag.conv2d,
    "nn.functional.conv_transpose1d": ag.conv_transpose1d, "nn.functional.conv_transpose2d": ag.conv_transpose2d,
    "nn.functional.conv3d": ag.conv3d, "nn.functional.conv_transpose3d": ag.conv_transpose3d,
    "nn.functional.unfold": ag.unfold,
    "nn.functional.avg_pool1d": ag.avg_pool1d, "nn.functional.avg_pool2d": ag.avg_pool2d,
    "nn.functional.max_pool1d": ag.max_pool1d, "nn.functional.max_pool2d": ag.max_pool2d,
    "nn.functional.adaptive_avg_pool1d": ag.adaptive_avg_pool1d,
    "nn.functional.adaptive_avg_pool2d": ag.adaptive_avg_pool2d,
    "nn.functional.adaptive_max_pool1d": ag.adaptive_max_pool1d,
    "nn.functional.adaptive_max_pool2d": ag.adaptive_max_pool2d,
    "nn.functional.max_pool3d": ag.max_pool3d, "nn.functional.avg_pool3d": ag.avg_pool3d,
    "nn.functional.adaptive_avg_pool3d": ag.adaptive_avg_pool3d,
    "nn.functional.adaptive_max_pool3d": ag.adaptive_max_pool3d,
    "nn.functional.interpolate.nearest": ag.interpolate, "nn.functional.interpolate.nearest-exact": ag.interpolate,
    "nn.functional.interpolate.linear": ag.interpolate, "nn.functional.interpolate.bilinear": ag.interpolate,
    "nn.functional.interpolate.bicubic": ag.interpolate, "nn.functional.interpolate.trilinear": ag.interpolate,
    "nn.functional.interpolate.area": ag.interpolate,
    "nn.functional.upsample_nearest": lambda x, size=None, scale_factor=None: ag.interpolate(x, size, scale_factor),
    "nn.functional.upsample_bilinear": lambda x, size=None, scale_factor=None: ag.interpolate(
        x, size, scale_factor, mode="bilinear", align_corners=True),
    "nn.functional.batch_norm": ag.batch_norm, "nn.functional.layer_norm": ag.layer_norm,
    "nn.functional.group_norm": ag.group_norm, "nn.functional.instance_norm": ag.instance_norm,
    "nn.functional.dropout": _dropout,
}


# ---------------------------------------------------------------------------------------------
# the gaps table: every sample or error input the core does not handle, and why


def _kw(name, *values):
    """Predicate: the sample passes keyword ``name`` (with one of ``values``, when given)."""
    def applies(s):
        return name in s.kwargs and (not values or s.kwargs[name] in values)
    return applies


GAPS = [
]


# ---------------------------------------------------------------------------------------------
# running


@functools.lru_cache(maxsize=1)
def _op_db() -> dict:
    from torch.testing._internal.common_methods_invocations import op_db

    return {opinfo.full_name(op): op for op in op_db}


def run_op(name: str) -> list:
    return opinfo.run_op(name, _op_db()[name], CORE_OPS[name], adapter_file=__file__)


def run_all(names=None) -> dict:
    """{OpInfo name: outcomes} for ``names`` (default: every op of CORE_OPS)."""
    return {name: run_op(name) for name in (names or sorted(CORE_OPS))}


@pytest.mark.parametrize("name", sorted(CORE_OPS))
def test_opinfo_samples(name):
    problems = opinfo.judge(name, run_op(name), GAPS)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


def test_tables_name_real_opinfos():
    db = _op_db()
    assert not [n for n in CORE_OPS if n not in db], "CORE_OPS names an OpInfo torch does not have"
    assert not [g.op for g in GAPS if g.op not in CORE_OPS], "a gap entry names an op outside CORE_OPS"
