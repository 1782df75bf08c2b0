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
# torch.testing._internal needs expecttest (in the torch extra): with torch present, its absence is an error,
# never a silently skipped tier
import expecttest  # noqa: E402, F401

import autograd as ag  # noqa: E402
from autograd.tensor import record  # noqa: E402

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


def _dropout(x, p=0.5, training=True, **kwargs):
    """F.dropout: torch's default is training=True (the core's is False); ``inplace`` reaches the core (no)."""
    return ag.dropout(x, p, training, **kwargs)


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
    """F.scaled_dot_product_attention: torch's is_causal is top-left aligned (query i attends keys j <= i);
    the core asks for the alignment of a non-square causal mask explicitly."""
    if is_causal:
        kwargs.setdefault("alignment", "top-left")
    return ag.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, **kwargs)


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
    "std": _variance(ag.std), "std.unbiased": lambda x, unbiased: ag.std(x, unbiased=unbiased),
    "argmax": _renamed(ag.argmax), "argmin": _renamed(ag.argmin),
    # shape and indexing
    "reshape": ag.reshape, "view": ag.reshape, "permute": ag.permute, "transpose": ag.swapaxes,
    "broadcast_to": ag.broadcast_to, "unsqueeze": ag.expand_dims, "squeeze": _renamed(ag.squeeze),
    "squeeze.multiple": _renamed(ag.squeeze), "flatten": _renamed(ag.flatten, start_dim="start_axis",
                                                                  end_dim="end_axis"),
    "cat": _renamed(ag.concatenate), "stack": _renamed(ag.stack), "split": _split, "split.list_args": _split,
    "flip": _renamed(ag.flip), "tile": ag.tile, "roll": _renamed(ag.roll),
    "repeat": ag.tile,  # torch.Tensor.repeat(sizes) is numpy.tile; the core's repeat is numpy.repeat
    "repeat_interleave": _renamed(ag.repeat), "__getitem__": ag.getitem,
    "take_along_dim": lambda x, indices, dim=None: ag.take_along_axis(x, indices, dim),  # torch's default None
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
    # sampling and attention (the vision-transformer work)
    "nn.functional.grid_sample": ag.grid_sample, "nn.functional.scaled_dot_product_attention": _sdpa,
}


# ---------------------------------------------------------------------------------------------
# the gaps table: every sample or error input the core does not handle, and why


def _squeezes_a_long_axis(s):
    dims = s.args[0] if s.args else s.kwargs.get("dim")
    dims = () if dims is None else (dims,) if isinstance(dims, int) else dims
    return s.input.ndim > 0 and any(s.input.shape[d] != 1 for d in dims)


def _number_operand(s):
    """An error input whose first or second operand is a Python number."""
    return not isinstance(s.input, torch.Tensor) or any(not isinstance(a, torch.Tensor) for a in s.args[:1])


_NUMBERS = ("the core's ops and operators take Python numbers (and arrays) on either side and lift them to "
            "tensors (DESIGN.md: a Tensor mixes with plain arrays on either side); torch requires a Tensor there")

#: Every sample or error input the core does not handle as torch does, and why: (op, feature, reason, which).
GAPS = [
    # --- features the core does not have (it must refuse them with a clear error) ---
    Gap("nn.functional.dropout", "training=True with p > 0 (torch's default training=True included)",
        "torch draws the mask from its own generator, which cannot be reproduced: the core's dropout takes its "
        "mask from an explicit numpy Generator (rng=) and refuses training mode without one",
        lambda s: s.kwargs.get("training", True) and s.kwargs.get("p", 0.5) != 0),
    Gap("squeeze", "squeeze an axis whose length is not 1",
        "torch makes it a no-op; the core follows numpy.squeeze and refuses (a silent no-op hides a wrong axis)",
        _squeezes_a_long_axis),
    Gap("squeeze.multiple", "squeeze axes whose length is not 1", "as squeeze", _squeezes_a_long_axis),
    Gap("nn.functional.batch_norm", "a 1-D input (no channel axis)",
        "torch accepts an empty 1-D input with empty statistics; the core requires (N, C, ...)",
        lambda s: s.input.ndim < 2),
    Gap("repeat_interleave", "output_size=", "a torch hint for the output length (to avoid a device sync); "
        "the core computes the length itself and has no such argument", lambda s: "output_size" in s.kwargs),
    Gap("nn.functional.grid_sample", "mode='bicubic'", "the core's grid_sample has bilinear and nearest only",
        lambda s: s.kwargs.get("mode") == "bicubic"),
    Gap("nn.functional.grid_sample", "5-D (volumetric) input", "the core's grid_sample samples (N, C, H, W) maps",
        lambda s: s.input.ndim == 5),
    Gap("nn.functional.scaled_dot_product_attention", "inputs other than 4-D (B, H, L, D)",
        "torch takes any leading batch axes (and broadcasts them between query, key and value); the core's SDPA "
        "takes (B, H, L, D) and asks for the axes to be added", lambda s: any(
            t.ndim != 4 for t in (s.input, *s.args[:2]) if isinstance(t, torch.Tensor))),
    Gap("nn.functional.scaled_dot_product_attention", "dropout_p > 0",
        "torch draws the dropout mask from its own generator; the core's SDPA takes an explicit dropout_mask",
        lambda s: s.kwargs.get("dropout_p", 0.0) > 0),
    # --- error inputs the core accepts on purpose (Python-number conveniences) ---
    *[Gap(op, "error input: a Python number as an operand", _NUMBERS, _number_operand, "accepted", errors=True)
      for op in ("__radd__", "__rdiv__", "__rmul__", "__rpow__", "__rsub__", "rsub", "pow", "maximum", "minimum",
                 "max.binary", "min.binary", "clamp_min", "clamp_max")],
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


# ---------------------------------------------------------------------------------------------
# the harness catches what it is meant to catch


def _statuses(name, adapter, errors=False):
    """The statuses of the op's samples that hold at least one value (or of its error inputs)."""
    outcomes = opinfo.run_op(name, _op_db()[name], adapter, adapter_file=__file__)
    return [o.status for o in outcomes if o.is_error_input == errors and (errors or _non_empty(o.sample))]


def _non_empty(sample):
    return sample.input.numel() > 0


def test_compare_arrays_catches_wrong_values_dtypes_shapes_and_nan():
    expected = np.array([1.0, -2.0, 3.0, np.nan, np.inf])
    assert opinfo.compare_arrays(expected * (1 + 1e-12), expected, "x") is None
    assert "max |core - torch|" in opinfo.compare_arrays(expected * (1 + 1e-9), expected, "x")
    assert "NaN positions" in opinfo.compare_arrays(np.array([1.0, -2.0, 3.0, 0.0, np.inf]), expected, "x")
    assert "inf positions" in opinfo.compare_arrays(np.array([1.0, -2.0, 3.0, np.nan, -np.inf]), expected, "x")
    assert "dtype float32" in opinfo.compare_arrays(expected.astype(np.float32), expected, "x")
    assert "shape" in opinfo.compare_arrays(expected[:4], expected, "x")
    assert "integer values differ" in opinfo.compare_arrays(np.array([0, 2]), np.array([0, 1]), "x")
    assert "dtype" in opinfo.compare_arrays(np.array([0.0, 1.0]), np.array([0, 1]), "x")


def test_a_wrong_forward_or_gradient_is_a_mismatch():
    assert set(_statuses("exp", ag.exp)) == {"agree"}
    assert set(_statuses("exp", lambda x: ag.mul(ag.exp(x), 1 + 1e-8))) == {"mismatch"}

    def exp_with_wrong_gradient(x):  # the right values, the VJP of the identity
        return record(ag.xp.exp(x.data), ((x, lambda g: g),))

    statuses = _statuses("exp", exp_with_wrong_gradient)
    assert statuses and set(statuses) == {"mismatch"}


def test_a_wrong_number_of_outputs_is_a_mismatch():
    assert set(_statuses("nn.functional.max_pool1d", lambda *a, **k: ag.max_pool1d(
        *a, **dict(k, return_indices=False)))) >= {"mismatch"}


def test_crashes_and_clear_errors_are_told_apart():
    def numpy_error(x):
        return ag.Tensor(ag.xp.reshape(x.data, (7, 7, 7)))  # raised inside NumPy

    def core_error(x):
        return ag.pad(x, ((1, 1),) * (x.ndim + 1))  # a ``raise`` of the core

    assert set(_statuses("exp", numpy_error)) == {"crash"}
    assert set(_statuses("exp", core_error)) == {"rejected"}
    assert set(_statuses("exp", lambda x: ag.exp(x, base=2))) == {"rejected"}  # an argument exp does not take


def test_an_accepted_error_input_is_reported():
    statuses = _statuses("nn.functional.conv2d", lambda *a, **k: a[0], errors=True)  # accepts anything
    assert statuses and set(statuses) == {"accepted"}


def test_judge_flags_unexplained_stale_and_unclear_outcomes():
    outcomes = opinfo.run_op("exp", _op_db()["exp"], ag.exp)
    assert opinfo.judge("exp", outcomes, []) == []
    stale = [Gap("exp", "everything", "a test", lambda s: True)]
    problems = opinfo.judge("exp", outcomes, stale)
    assert problems and all(p.startswith("STALE") for p in problems)
    unused = [Gap("exp", "nothing", "a test", lambda s: False)]
    assert any("applies to no sample" in p for p in opinfo.judge("exp", outcomes, unused))
    wrong = [o for o in opinfo.run_op("exp", _op_db()["exp"], lambda x: ag.mul(ag.exp(x), 2.0))
             if _non_empty(o.sample)]  # (an empty sample agrees whatever the op computes)
    assert wrong and all(p.startswith("UNEXPLAINED") for p in opinfo.judge("exp", wrong, []))
    as_unsupported = [Gap("exp", "everything", "a test", lambda s: True)]
    assert all(p.startswith("NOT CLEARLY REJECTED") for p in opinfo.judge("exp", wrong, as_unsupported))
    as_bug = [Gap("exp", "everything", "a test", lambda s: True, "bug")]
    assert opinfo.judge("exp", wrong, as_bug) == []


def test_the_summary_counts_every_outcome():
    results = {"exp": opinfo.run_op("exp", _op_db()["exp"], ag.exp),
               "neg": opinfo.run_op("neg", _op_db()["neg"], ag.neg)}
    totals = opinfo.summarize(results)
    assert totals["samples"] == sum(not o.is_error_input for outs in results.values() for o in outs)
    assert totals["agree"] + totals["rejected"] + totals["crash"] + totals["mismatch"] == totals["samples"]
    assert totals["error_inputs"] == totals["error_rejected"] + totals["error_crash"] + totals["error_accepted"]
    assert "2 OpInfos" in opinfo.format_summary(results)
    counts = opinfo.explained(results, [Gap("neg", "error input: anything", "a test", lambda s: True, "bug",
                                            errors=True)])
    failing = sum(o.status != ("rejected" if o.is_error_input else "agree") for outs in results.values() for o in outs)
    assert sum(counts.values()) == failing
    assert all(kind in ("bug", "unexplained") for _, _, kind in counts)
