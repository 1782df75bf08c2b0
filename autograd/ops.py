"""Differentiable operations on tensors: elementwise, reductions, shape, indexing, linear algebra.

Each primitive computes its forward value on the backend namespace ``xp`` and records one VJP per
operand.  Every VJP is written with the operations of this module, so it is differentiable again.
Operands may be Tensors, backend arrays or Python scalars; the result is always a Tensor.
"""
from __future__ import annotations

import builtins as _builtins
import numbers
import operator as _operator
from typing import Sequence

import numpy as _np

from . import _threads, backend
from .backend import xp
from .tensor import Tensor, as_tensor, record

# ---------------------------------------------------------------------------------------------
# helpers


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _lift(x, like=None):
    """Operand -> Tensor.  Python scalars take the dtype of ``like`` (no silent up-casting)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, numbers.Number) and like is not None:
        dtype = _data(like).dtype
        if _scalar_fits(x, dtype):
            return Tensor(xp.asarray(x, dtype=dtype))
    return as_tensor(x)


def _scalar_fits(x, dtype) -> bool:
    """Whether Python scalar ``x`` can take ``dtype`` without losing its value's kind (0.5 -> int would be 0)."""
    kind = _np.dtype(dtype).kind
    if kind == "c":
        return True
    if kind == "f":
        return not isinstance(x, complex)
    if kind in "iu":
        return isinstance(x, numbers.Integral)
    return isinstance(x, bool)


def _binary_operands(a, b):
    if isinstance(a, numbers.Number) and not isinstance(b, numbers.Number):
        b = _lift(b)
        return _lift(a, b), b
    a = _lift(a)
    return a, _lift(b, a)


def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    out = []
    for ax in axis:
        if not -ndim <= ax < _builtins.max(ndim, 1):
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} dimensions")
        out.append(ax % _builtins.max(ndim, 1))
    return tuple(sorted(set(out)))


def sum_to(x, shape) -> Tensor:
    """Sum ``x`` down to ``shape`` (the adjoint of broadcasting ``shape`` up to ``x.shape``)."""
    x = _lift(x)
    shape = tuple(shape)
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and x.shape[i + lead] != 1
    )
    return reshape(sum(x, axis=axes), shape)


# ---------------------------------------------------------------------------------------------
# elementwise arithmetic


def add(a, b, *, alpha=1) -> Tensor:
    """``a + alpha * b`` (torch.add's ``alpha``; the product is a separate step only when alpha != 1)."""
    if alpha != 1:
        return add(a, mul(b, alpha))
    a, b = _binary_operands(a, b)
    sa, sb = a.shape, b.shape  # the VJPs read shapes only: the operands are not kept alive
    return record(a.data + b.data, ((a, lambda g: sum_to(g, sa)), (b, lambda g: sum_to(g, sb))))


def sub(a, b, *, alpha=1) -> Tensor:
    """``a - alpha * b`` (torch.sub's ``alpha``)."""
    if alpha != 1:
        return sub(a, mul(b, alpha))
    a, b = _binary_operands(a, b)
    sa, sb = a.shape, b.shape
    return record(a.data - b.data, ((a, lambda g: sum_to(g, sa)), (b, lambda g: sum_to(neg(g), sb))))


def mul(a, b) -> Tensor:
    a, b = _binary_operands(a, b)
    sa, sb = a.shape, b.shape  # a's VJP keeps b alive and b's keeps a, each only if it is recorded
    return record(a.data * b.data, ((a, lambda g: _mul_sum_to(g, b, sa)), (b, lambda g: _mul_sum_to(g, a, sb))))


def div(a, b) -> Tensor:
    a, b = _binary_operands(a, b)
    sa, sb = a.shape, b.shape
    return record(
        a.data / b.data,
        (
            (a, lambda g: sum_to(div(g, b), sa)),
            (b, lambda g: sum_to(neg(div(mul(g, a), mul(b, b))), sb)),
        ),
    )


def neg(a) -> Tensor:
    a = _lift(a)
    return record(-a.data, ((a, lambda g: neg(g)),))


def pow(a, b) -> Tensor:  # noqa: A001 - mirrors torch.pow
    """``a ** b``.  For a tensor exponent the gradient w.r.t. ``b`` is ``a**b * log(a)`` (a > 0)."""
    a, b = _binary_operands(a, b)
    sa, sb = a.shape, b.shape
    holder = []

    def vjp_base(g):
        return sum_to(mul(g, mul(b, pow(a, sub(b, 1)))), sa)

    def vjp_exponent(g):
        # the result itself (not a constant copy of its value), so that second derivatives see it
        return sum_to(mul(g, mul(holder[0], log(a))), sb)

    result = record(a.data ** b.data, ((a, vjp_base), (b, vjp_exponent)))
    holder.append(result)
    return result


def exp(a) -> Tensor:
    a = _lift(a)
    holder = []
    result = record(xp.exp(a.data), ((a, lambda g: mul(g, holder[0])),))
    holder.append(result)
    return result


def log(a) -> Tensor:
    a = _lift(a)
    return record(xp.log(a.data), ((a, lambda g: div(g, a)),))


def sqrt(a) -> Tensor:
    a = _lift(a)
    out = xp.sqrt(a.data)
    holder = []
    result = record(out, ((a, lambda g: div(g, mul(holder[0], 2.0))),))
    holder.append(result)
    return result


def abs(a) -> Tensor:  # noqa: A001
    """|a|; the gradient at 0 is 0 (the subgradient PyTorch uses)."""
    a = _lift(a)
    return record(xp.abs(a.data), ((a, lambda g: mul(g, Tensor(xp.sign(a.data)))),))


def sign(a) -> Tensor:
    """Sign of ``a`` (no gradient: it is piecewise constant)."""
    return Tensor(xp.sign(_data(a)))


def tanh(a) -> Tensor:
    a = _lift(a)
    holder = []
    out = _threads.elementwise(lambda out, x: xp.tanh(x, out=out), _float_data(a))  # threads: tanh is compute-bound
    result = record(out, ((a, lambda g: _tanh_vjp(holder[0], g)),))
    holder.append(result)
    return result


def _float_data(a: Tensor):
    """``a.data``, with integers and booleans cast to the float dtype NumPy's ``exp`` would return for them."""
    data = a.data
    if data.dtype.kind in "fc":
        return data
    return data.astype(_np.exp(_np.zeros((), data.dtype)).dtype)


def _tanh_vjp(y, g) -> Tensor:
    """g * (1 - y * y), tanh's VJP from its output y, as one primitive with one output array.

    The composed rule allocates three full-size arrays (and on this VM a fresh array costs its page
    faults); this one computes the same bits into one, in cache-sized blocks on threads
    (:func:`_threads.elementwise`).  Its own VJPs (higher orders), for a cotangent a:
    g <- a * (1 - y * y) (this function again), y <- -2 a g y.
    """
    y, g = _lift(y), _lift(g)
    if g.shape != y.shape or g.dtype != y.dtype:
        return mul(g, sub(1.0, mul(y, y)))
    out = _threads.elementwise(_tanh_vjp_kernel, y.data, g.data)
    return record(out, ((g, lambda a: _tanh_vjp(y, a)), (y, lambda a: mul(mul(a, g), mul(y, -2.0)))))


def _tanh_vjp_kernel(out, y, g):
    xp.multiply(y, y, out=out)
    xp.subtract(y.dtype.type(1), out, out=out)
    xp.multiply(g, out, out=out)


def sigmoid(a) -> Tensor:
    """Logistic function 1 / (1 + exp(-a)), evaluated without overflow for large |a|.

    Computed in cache-sized blocks on threads (:func:`_threads.elementwise`): its six passes then
    stay in cache and its temporaries are block-sized (float64 (8, 256, 28, 28): 4.6 -> 2.3 ms).
    """
    a = _lift(a)
    holder = []
    result = record(_threads.elementwise(_sigmoid_kernel, _float_data(a)), ((a, lambda g: _sigmoid_vjp(holder[0], g)),))
    holder.append(result)
    return result


def _sigmoid_kernel(out, x):
    # exp of a non-positive number never overflows: with e = exp(-|x|), sigmoid is 1 / (1 + e) for
    # x >= 0 and e / (1 + e) below.  The numerator -- 1 or e -- is max(e, x >= 0) since e <= 1: no
    # per-element branch (NumPy's where costs 3x the whole function on random signs), same bits.
    e = xp.asarray(xp.abs(x))
    xp.negative(e, out=e)
    xp.exp(e, out=e)
    xp.maximum(e, x >= 0, out=out)
    e += 1
    xp.divide(out, e, out=out)


def _sigmoid_vjp(y, g) -> Tensor:
    """g * y * (1 - y), sigmoid's VJP from its output y, as one primitive with one output array.

    The same bits as the composed rule ``g * (y * (1 - y))`` with one full-size array instead of
    three, in cache-sized blocks on threads.  Its own VJPs (higher orders), for a cotangent a:
    g <- a * y * (1 - y) (this function again), y <- a * g * (1 - 2 y).
    """
    y, g = _lift(y), _lift(g)
    if g.shape != y.shape or g.dtype != y.dtype:
        return mul(g, mul(y, sub(1.0, y)))
    out = _threads.elementwise(_sigmoid_vjp_kernel, y.data, g.data)
    return record(out, ((g, lambda a: _sigmoid_vjp(y, a)), (y, lambda a: mul(mul(a, g), sub(1.0, mul(y, 2.0))))))


def _sigmoid_vjp_kernel(out, y, g):
    xp.subtract(y.dtype.type(1), y, out=out)
    xp.multiply(out, y, out=out)   # (1 - y) y: the same bits as y (1 - y)
    xp.multiply(g, out, out=out)


def relu(a) -> Tensor:
    """max(a, 0); the gradient at exactly 0 is 0, and NaN stays NaN (as PyTorch)."""
    a = _lift(a)
    mask = a.data > 0
    zero = xp.zeros((), a.data.dtype)
    return record(xp.maximum(a.data, zero), ((a, lambda g: where(mask, g, Tensor(zero))),))


def leaky_relu(a, negative_slope: float = 0.01) -> Tensor:
    a = _lift(a)
    slope = xp.where(a.data > 0, 1.0, negative_slope).astype(a.data.dtype)
    return record(a.data * slope, ((a, lambda g: mul(g, Tensor(slope))),))


def softplus(a, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta a)) / beta, linear above ``threshold`` (as torch.nn.functional.softplus)."""
    a = _lift(a)
    z = a.data * beta
    linear = z > threshold
    out = xp.where(linear, a.data, xp.logaddexp(0.0, z) / beta).astype(a.data.dtype, copy=False)

    def vjp(g):
        return mul(g, where(Tensor(linear), 1.0, sigmoid(mul(a, beta))))

    return record(out, ((a, vjp),))


def maximum(a, b) -> Tensor:
    """Elementwise maximum.  On exact ties the gradient is split 0.5 / 0.5 (as torch.maximum)."""
    a, b = _binary_operands(a, b)
    out = xp.maximum(a.data, b.data)
    dtype = out.dtype
    wa = ((a.data > b.data) + 0.5 * (a.data == b.data)).astype(dtype)
    sa, sb = a.shape, b.shape
    return record(
        out,
        (
            (a, lambda g: sum_to(mul(g, Tensor(wa)), sa)),
            (b, lambda g: sum_to(mul(g, Tensor(1.0 - wa)), sb)),
        ),
    )


def minimum(a, b) -> Tensor:
    """Elementwise minimum.  On exact ties the gradient is split 0.5 / 0.5 (as torch.minimum)."""
    return neg(maximum(neg(a), neg(b)))


def where(condition, a, b) -> Tensor:
    """``a`` where ``condition`` else ``b`` (condition carries no gradient)."""
    cond = _data(condition)
    a, b = _binary_operands(a, b)
    out = _select(cond, a.data, b.data)
    zero = Tensor(xp.zeros((), out.dtype))
    sa, sb = a.shape, b.shape
    return record(
        out,
        (
            (a, lambda g: sum_to(where(cond, g, zero), sa)),
            (b, lambda g: sum_to(where(cond, zero, g), sb)),
        ),
    )


_BITS = {_np.dtype(_np.float32): _np.int32, _np.dtype(_np.float64): _np.int64}


def _select(cond, a, b):
    """``xp.where(cond, a, b)``, with an exact fast path for "values or +0" on NumPy.

    NumPy's where takes a branch per element, and a mask like a ReLU's (half True, at random) makes
    the CPU mispredict half of them: on (8, 256, 28, 28) it took 6.5 ms (float32) / 5.7 ms (float64)
    against 0.44 / 1.2 ms for ANDing the values' bits with 0 or all-ones (:func:`_keep`).  The ReLU's
    VJP and where's own VJPs are that case.
    """
    if backend.name == "numpy" and isinstance(cond, _np.ndarray) and cond.dtype == bool:
        if _positive_zero(b, a) and cond.shape == a.shape:
            return _keep(cond, a)
        if _positive_zero(a, b) and cond.shape == b.shape:
            return _keep(~cond, b)
    return xp.where(cond, a, b)


def _positive_zero(scalar, values) -> bool:
    """Whether ``scalar`` is a 0-d +0.0 of the float dtype of ``values`` (a bit path exists for it)."""
    return (scalar.ndim == 0 and scalar.dtype == values.dtype and values.dtype in _BITS
            and scalar.view(_BITS[values.dtype]) == 0)


def _keep(mask, values):
    """``values`` where ``mask`` else +0.0, bit for bit as ``where(mask, values, 0.0)`` (NaN, inf, -0.0 kept)."""
    bits = _BITS[values.dtype]
    out = mask.astype(bits)
    xp.negative(out, out=out)  # 1 -> all ones, 0 -> 0
    xp.bitwise_and(out, values.view(bits), out=out)
    return out.view(values.dtype)


def clip(a, min=None, max=None) -> Tensor:  # noqa: A002
    """Clamp to [min, max]; the gradient is 1 inside the closed interval, 0 outside (as torch.clamp)."""
    a = _lift(a)
    lo = -xp.inf if min is None else min
    hi = xp.inf if max is None else max
    inside = ((a.data >= lo) & (a.data <= hi)).astype(a.data.dtype)
    return record(xp.clip(a.data, lo, hi), ((a, lambda g: mul(g, Tensor(inside))),))


# ---------------------------------------------------------------------------------------------
# reductions


def sum(a, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    a = _lift(a)
    axes = _normalize_axis(axis, a.ndim)
    out = _sum_data(a.data, axes, keepdims)
    shape = a.shape
    return record(xp.asarray(out), ((a, lambda g: _spread(g, shape, axes)),))


def _spread(g, shape, axes) -> Tensor:
    """The cotangent of a reduction over ``axes`` broadcast back to the operand's ``shape`` (a view)."""
    return broadcast_to(reshape(g, _reduced_shape(shape, axes, True)), shape)


#: Reductions of at least this many elements go through BLAS (:func:`_blas_layout`).
BLAS_REDUCE_MIN = 1 << 15
#: ... one BLAS step sums at most this many terms: BLAS accumulates a dot product in one running sum
#: per SIMD lane, whose float32 rounding error grows with the length faster than NumPy's pairwise
#: summation, so longer sums stay with NumPy.
BLAS_REDUCE_MAX_TERMS = 1 << 16


def _blas_layout(data, axes):
    """(A, B, C) when summing ``data`` over ``axes`` is a GEMV job, else None.

    NumPy's reduction runs on one core at ~6 G elements/s; a matrix-vector product with a vector of
    ones runs in BLAS, vectorised and threaded: summing (8, 256, 28, 28) float32 over (2, 3) takes
    0.05 ms instead of 0.28.  That needs the reduced axes to be leading and/or trailing ones of a
    C-contiguous float array (the kept axes one block in the middle): viewed as (A, B, C), the sum
    over A and C is ``ones(A) @ (M (A*B, C) @ ones(C))``.  Each output is then the sum of A*C terms
    in another order than NumPy's (rounding differs in the last bits; the result is still
    deterministic).  A trailing block longer than :data:`BLAS_REDUCE_MAX_TERMS` stays with NumPy, and
    so does a leading one (:func:`_sum_rows`).
    """
    if (backend.name != "numpy" or data.dtype not in _BITS or data.size < BLAS_REDUCE_MIN
            or not data.flags.c_contiguous or not axes):
        return None
    kept = [i for i in range(data.ndim) if i not in axes]
    if kept and kept != list(range(kept[0], kept[-1] + 1)):
        return None
    first, end = (kept[0], kept[-1] + 1) if kept else (0, 0)
    lead, middle, trail = (int(_np.prod(data.shape[i:j], dtype=_np.int64))
                           for i, j in ((0, first), (first, end), (end, data.ndim)))
    if trail > BLAS_REDUCE_MAX_TERMS:
        return None
    return lead, middle, trail


def _sum_rows(rows, lead: int, middle: int):
    """(lead*middle,) partial sums -> (middle,): the leading-axes step of :func:`_blas_layout`."""
    if lead == 1:
        return rows
    if lead > BLAS_REDUCE_MAX_TERMS:
        return xp.sum(xp.reshape(rows, (lead, middle)), axis=0)
    return xp.matmul(xp.ones(lead, dtype=rows.dtype), xp.reshape(rows, (lead, middle)))


def _sum_data(data, axes: tuple, keepdims: bool):
    """``xp.sum(data, axis=axes, keepdims=keepdims)``, through BLAS where :func:`_blas_layout` allows."""
    layout = _blas_layout(data, axes)
    if layout is None:
        return xp.sum(data, axis=axes, keepdims=keepdims)
    lead, middle, trail = layout
    rows = xp.reshape(data, (lead * middle, trail))
    rows = xp.matmul(rows, xp.ones(trail, dtype=data.dtype)) if trail > 1 else xp.reshape(rows, (-1,))
    return xp.reshape(_sum_rows(rows, lead, middle), _reduced_shape(data.shape, axes, keepdims))


def _reduced_shape(shape, axes, keepdims: bool) -> tuple:
    return tuple(1 if i in axes else n for i, n in enumerate(shape) if keepdims or i not in axes)


def sum_product(a, b, axis=None, keepdims: bool = False) -> Tensor:
    """``sum(a * b, axis)`` for ``a`` and ``b`` of one shape, without the full-size product.

    The gradient of a broadcast factor -- SE's scale s in ``x * s`` gets ``sum over (H, W) of g * x`` --
    is this, and the product is the largest array of the backward pass.  Where :func:`_blas_layout`
    applies, the trailing sums are a stack of dot products (one batched matmul: (8, 256, 28, 28)
    float32 over (2, 3) in 0.18 ms instead of 0.60), else NumPy multiplies and sums.
    VJPs: a <- g * b and b <- g * a, g broadcast back over ``axis``.
    """
    a, b = _binary_operands(a, b)
    if a.shape != b.shape:
        raise ValueError(f"sum_product: a and b must have one shape, got {a.shape} and {b.shape}")
    axes = _normalize_axis(axis, a.ndim)
    layout = _blas_layout(a.data, axes) if b.data.flags.c_contiguous and a.dtype == b.dtype else None
    if layout is None:
        out = xp.sum(a.data * b.data, axis=axes, keepdims=keepdims)
    else:
        lead, middle, trail = layout
        rows = lead * middle
        dots = xp.matmul(xp.reshape(a.data, (rows, 1, trail)), xp.reshape(b.data, (rows, trail, 1)))
        out = xp.reshape(_sum_rows(xp.reshape(dots, (rows,)), lead, middle),
                         _reduced_shape(a.shape, axes, keepdims))
    shape = a.shape
    return record(xp.asarray(out), ((a, lambda g: mul(_spread(g, shape, axes), b)),
                                    (b, lambda g: mul(_spread(g, shape, axes), a))))


def _mul_sum_to(g, other, shape) -> Tensor:
    """``sum_to(g * other, shape)``: the VJP of one factor of a product; fused when it reduces."""
    g, other = _lift(g), _lift(other)
    shape = tuple(shape)
    if g.shape == other.shape and len(shape) == g.ndim and shape != g.shape:
        axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
        if not any(n not in (1, g.shape[i]) for i, n in enumerate(shape)):
            return sum_product(g, other, axis=axes, keepdims=True)
    return sum_to(mul(g, other), shape)


def mean(a, axis=None, keepdims: bool = False) -> Tensor:
    a = _lift(a)
    axes = _normalize_axis(axis, a.ndim)
    count = 1
    for ax in axes:
        count *= a.shape[ax]
    return div(sum(a, axis=axes, keepdims=keepdims), float(count))


def var(a, axis=None, keepdims: bool = False, unbiased: bool = False, *, correction=None) -> Tensor:
    """Variance ``sum((a - mean)^2) / max(n - correction, 0)`` over ``axis`` (0/0 is NaN, x/0 inf, as torch).

    ``correction`` may be any real number (torch's keyword); ``unbiased=True`` is ``correction=1``.  The
    default is 0, the biased variance (NumPy's default; torch.var's default is ``correction=1``).
    """
    a = _lift(a)
    if correction is None:
        correction = int(unbiased)
    elif unbiased:
        raise ValueError("var: give either unbiased or correction, not both")
    if not isinstance(correction, numbers.Real) or isinstance(correction, bool):
        raise TypeError(f"var: correction must be a real number, got {correction!r}")
    axes = _normalize_axis(axis, a.ndim)
    count = 1
    for ax in axes:
        count *= a.shape[ax]
    centered = sub(a, mean(a, axis=axes, keepdims=True))
    divisor = _builtins.max(count - correction, 0)
    total = sum_product(centered, centered, axis=axes, keepdims=keepdims)
    with _np.errstate(divide="ignore", invalid="ignore"):  # no degrees of freedom left: inf or NaN, as torch
        return div(total, float(divisor))


def std(a, axis=None, keepdims: bool = False, unbiased: bool = False, *, correction=None) -> Tensor:
    """Standard deviation: the square root of :func:`var` (same ``unbiased`` / ``correction``)."""
    return sqrt(var(a, axis=axis, keepdims=keepdims, unbiased=unbiased, correction=correction))


def max(a, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Maximum over ``axis``.  Ties share the gradient equally (as torch.amax)."""
    a = _lift(a)
    axes = _normalize_axis(axis, a.ndim)
    out = xp.max(a.data, axis=axes, keepdims=True)
    hit = (a.data == out).astype(a.data.dtype)
    share = hit / xp.sum(hit, axis=axes, keepdims=True)
    shape = a.shape
    value = out if keepdims else xp.reshape(out, _reduced_shape(shape, axes, False))
    return record(value, ((a, lambda g: mul(_spread(g, shape, axes), Tensor(share))),))


def min(a, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Minimum over ``axis``.  Ties share the gradient equally (as torch.amin)."""
    return neg(max(neg(a), axis=axis, keepdims=keepdims))


def logsumexp(a, axis=None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(a))) over ``axis``, stable for large inputs (the max is shifted out)."""
    a = _lift(a)
    axes = _normalize_axis(axis, a.ndim)
    shift = xp.max(a.data, axis=axes, keepdims=True)
    shift = xp.where(xp.isfinite(shift), shift, xp.zeros((), shift.dtype))
    shifted = sub(a, Tensor(shift))
    total = log(sum(exp(shifted), axis=axes, keepdims=True))
    out = add(total, Tensor(shift))
    if not keepdims:
        out = reshape(out, tuple(n for i, n in enumerate(a.shape) if i not in axes))
    return out


def argmax(a, axis=None, keepdims: bool = False):
    """Index of the (first) maximum over ``axis`` or the flattened tensor (a backend int array; no gradient).

    ``keepdims`` keeps the reduced axis with length 1 (with ``axis=None``, every axis, as NumPy).
    """
    return _arg_reduce(xp.argmax, a, axis, keepdims, "argmax")


def argmin(a, axis=None, keepdims: bool = False):
    """Index of the (first) minimum; as :func:`argmax`."""
    return _arg_reduce(xp.argmin, a, axis, keepdims, "argmin")


def _arg_reduce(reduce, a, axis, keepdims: bool, name: str):
    data = _data(a)
    if axis is not None:
        try:
            axis = _operator.index(axis)
        except TypeError:
            raise TypeError(f"{name}: axis must be an int or None, got {axis!r}") from None
        if data.ndim == 0 and axis in (0, -1):  # a scalar is its own (only) element along axis 0, as torch
            return xp.zeros((), dtype=xp.int64)
        (axis,) = _normalize_axis(axis, data.ndim)
    if data.ndim == 0:
        return xp.zeros((), dtype=xp.int64)
    if (data.size if axis is None else data.shape[axis]) == 0:
        raise ValueError(f"{name}: the reduction over an empty axis (shape {tuple(data.shape)}, axis {axis}) "
                         "has no index")
    return reduce(data, axis=axis, keepdims=keepdims)


# ---------------------------------------------------------------------------------------------
# shape


def reshape(a, shape) -> Tensor:
    a = _lift(a)
    if isinstance(shape, int):
        shape = (shape,)
    if tuple(shape) == a.shape:
        return a
    out = xp.reshape(a.data, tuple(shape))
    source = a.shape
    return record(out, ((a, lambda g: reshape(g, source)),))


def transpose(a, axes=None) -> Tensor:
    """Permute axes (reverse them when ``axes`` is None), like numpy.transpose / torch.permute."""
    a = _lift(a)
    if axes is None:
        axes = tuple(range(a.ndim))[::-1]
    axes = tuple(ax % a.ndim for ax in axes)
    inverse = tuple(_np.argsort(axes))
    return record(xp.transpose(a.data, axes), ((a, lambda g: transpose(g, inverse)),))


permute = transpose


def swapaxes(a, axis1: int, axis2: int) -> Tensor:
    a = _lift(a)
    axes = list(range(a.ndim))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(a, axes)


def broadcast_to(a, shape) -> Tensor:
    a = _lift(a)
    shape = tuple(shape)
    if a.shape == shape:
        return a
    source = a.shape
    return record(xp.broadcast_to(a.data, shape), ((a, lambda g: sum_to(g, source)),))


def expand_dims(a, axis) -> Tensor:
    a = _lift(a)
    return reshape(a, xp.expand_dims(a.data, axis).shape)


unsqueeze = expand_dims


def squeeze(a, axis=None) -> Tensor:
    a = _lift(a)
    if axis is None:
        shape = tuple(n for n in a.shape if n != 1)
    else:
        axes = _normalize_axis(axis, a.ndim)
        for ax in axes:
            if a.shape[ax] != 1:
                raise ValueError(f"cannot squeeze axis {ax} of size {a.shape[ax]}")
        shape = tuple(n for i, n in enumerate(a.shape) if i not in axes)
    return reshape(a, shape)


def flatten(a, start_axis: int = 0, end_axis: int = -1) -> Tensor:
    """Merge axes ``start_axis..end_axis`` into one (as torch.flatten)."""
    a = _lift(a)
    start, end = start_axis % a.ndim, end_axis % a.ndim
    merged = 1
    for n in a.shape[start : end + 1]:
        merged *= n
    return reshape(a, a.shape[:start] + (merged,) + a.shape[end + 1 :])


def concatenate(tensors: Sequence, axis: int = 0) -> Tensor:
    tensors = [_lift(t) for t in tensors]
    if not tensors:
        raise ValueError("concatenate needs at least one tensor")
    axis = axis % tensors[0].ndim
    out = xp.concatenate([t.data for t in tensors], axis=axis)
    bounds = _np.cumsum([0] + [t.shape[axis] for t in tensors])

    def piece(i):
        index = (slice(None),) * axis + (slice(int(bounds[i]), int(bounds[i + 1])),)
        return lambda g: getitem(g, index)

    return record(out, tuple((t, piece(i)) for i, t in enumerate(tensors)))


cat = concatenate


def stack(tensors: Sequence, axis: int = 0) -> Tensor:
    tensors = [_lift(t) for t in tensors]
    return concatenate([expand_dims(t, axis) for t in tensors], axis=axis)


def split(a, indices_or_sections, axis: int = 0) -> list:
    """Split like numpy.split: an int gives equal sections, a list gives split points."""
    a = _lift(a)
    axis = axis % a.ndim
    n = a.shape[axis]
    if isinstance(indices_or_sections, int):
        if n % indices_or_sections:
            raise ValueError(f"axis of size {n} cannot be split into {indices_or_sections} equal parts")
        step = n // indices_or_sections
        points = list(range(step, n, step))
    else:
        points = list(indices_or_sections)
    edges = [0] + points + [n]
    return [
        getitem(a, (slice(None),) * axis + (slice(edges[i], edges[i + 1]),))
        for i in range(len(edges) - 1)
    ]


PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad(a, pad_width, value: float = 0.0, mode: str = "constant") -> Tensor:
    """Pad each axis by ``pad_width`` = ((before, after), ...) (NumPy's layout; torch's ``F.pad`` lists the
    last axis first); a negative width crops, as in torch.

    Modes (torch.nn.functional.pad's): ``constant`` (``value``), ``reflect`` (mirror without repeating the
    edge: width < axis length), ``replicate`` (repeat the edge), ``circular`` (wrap around what is left
    after cropping the negative widths: width <= that length).  The non-constant modes are index maps --
    output position j reads input position ``source(j)`` -- so they are a gather whose VJP is a scatter-add
    (repeated sources accumulate).
    """
    a = _lift(a)
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {PAD_MODES}, got {mode!r}")
    try:
        pad_width = tuple((_operator.index(lo), _operator.index(hi)) for lo, hi in pad_width)
    except (TypeError, ValueError):
        raise TypeError(f"pad: pad_width must be ((before, after), ...) of ints, got {pad_width!r}") from None
    if len(pad_width) != a.ndim:
        raise ValueError(f"pad: pad_width has {len(pad_width)} entries for a tensor with {a.ndim} axes")
    for (lo, hi), n in zip(pad_width, a.shape):
        if n + lo + hi < 0:
            raise ValueError(f"pad: widths {pad_width} give a negative size for an axis of {n} (shape {a.shape})")
    if mode == "constant":
        return _pad_constant(a, pad_width, value)
    for axis, ((lo, hi), n) in enumerate(zip(pad_width, a.shape)):
        if lo or hi:
            index = (slice(None),) * axis + (backend.from_numpy(_pad_source(n, lo, hi, mode)),)
            a = getitem(a, index)
    return a


def _pad_constant(a: Tensor, pad_width, value) -> Tensor:
    """Crop the negative widths (a view), then pad the positive ones with ``value``; VJP: the interior."""
    if any(lo < 0 or hi < 0 for lo, hi in pad_width):
        kept = tuple(slice(_builtins.max(-lo, 0), n - _builtins.max(-hi, 0)) for (lo, hi), n in zip(pad_width, a.shape))
        a = getitem(a, kept)
        pad_width = tuple((_builtins.max(lo, 0), _builtins.max(hi, 0)) for lo, hi in pad_width)
    if not any(lo or hi for lo, hi in pad_width):
        return a
    out = xp.pad(a.data, pad_width, mode="constant", constant_values=value)
    index = tuple(slice(lo, lo + n) for (lo, _), n in zip(pad_width, a.shape))
    return record(out, ((a, lambda g: getitem(g, index)),))


def _pad_source(n: int, lo: int, hi: int, mode: str) -> _np.ndarray:
    """Host (n + lo + hi,) input position read by each output position of one padded axis."""
    positions = _np.arange(-lo, n + hi)
    if mode == "replicate":
        if n == 0:
            raise ValueError("pad: mode 'replicate' needs a non-empty axis")
        return _np.clip(positions, 0, n - 1)
    if mode == "reflect":
        if _builtins.max(lo, hi) >= n:
            raise ValueError(f"pad: mode 'reflect' needs widths smaller than the axis ({n}), got ({lo}, {hi})")
        reflected = _np.abs(positions)  # -j -> j: the edge itself is not repeated
        return _np.where(reflected > n - 1, 2 * (n - 1) - reflected, reflected)
    # circular, as torch: crop the negative widths first, then wrap around what is left
    start, kept = _builtins.max(-lo, 0), n - _builtins.max(-lo, 0) - _builtins.max(-hi, 0)
    if _builtins.max(lo, hi) > kept:
        raise ValueError(f"pad: mode 'circular' needs widths at most the (cropped) axis ({kept}), got ({lo}, {hi})")
    return _np.arange(-_builtins.max(lo, 0), kept + _builtins.max(hi, 0)) % kept + start


def flip(a, axis=None) -> Tensor:
    a = _lift(a)
    axes = _normalize_axis(axis, a.ndim)
    return record(xp.flip(a.data, axis=axes), ((a, lambda g: flip(g, axes)),))


def repeat(a, repeats: int, axis=None) -> Tensor:
    """Repeat each element ``repeats`` times along ``axis`` (numpy.repeat with an int; ``axis=None`` repeats
    the flattened tensor, as numpy.repeat and torch.repeat_interleave)."""
    a = _lift(a)
    if axis is None:
        return repeat(reshape(a, (a.size,)), repeats, 0)
    axis = axis % a.ndim
    out = xp.repeat(a.data, repeats, axis=axis)
    split_shape = a.shape[: axis + 1] + (repeats,) + a.shape[axis + 1 :]
    return record(out, ((a, lambda g: sum(reshape(g, split_shape), axis=axis + 1)),))


def tile(a, reps) -> Tensor:
    """Tile like numpy.tile (the adjoint sums the copies).

    As in NumPy, ``a`` is promoted to ``len(reps)`` axes when ``reps`` is longer, and ``reps`` is
    padded with leading 1s when it is shorter.
    """
    a = _lift(a)
    reps = (reps,) if isinstance(reps, int) else tuple(reps)
    shape = (1,) * (len(reps) - a.ndim) + a.shape
    reps = (1,) * (len(shape) - len(reps)) + reps
    out = xp.tile(a.data, reps)
    split_shape = ()
    for r, n in zip(reps, shape):
        split_shape += (r, n)
    copy_axes = tuple(range(0, 2 * len(shape), 2))
    source = a.shape

    def vjp(g):
        return reshape(sum(reshape(g, split_shape), axis=copy_axes), source)

    return record(out, ((a, vjp),))


# ---------------------------------------------------------------------------------------------
# indexing


def _index_data(index):
    if isinstance(index, tuple):
        return tuple(_index_data(i) for i in index)
    if isinstance(index, Tensor):
        return index.data
    return index


def getitem(a, index) -> Tensor:
    """``a[index]`` with basic and integer/boolean-array indexing; the VJP scatter-adds."""
    a = _lift(a)
    index = _index_data(index)
    out = a.data[index]
    source = a.shape
    return record(out, ((a, lambda g: index_add(source, index, g)),))


def index_add(shape, index, values) -> Tensor:
    """Zeros of ``shape`` with ``values`` scatter-added at ``index`` (the adjoint of getitem).

    Repeated integer indices accumulate (numpy.add.at semantics).
    """
    values = _lift(values)
    out = xp.zeros(tuple(shape), dtype=values.data.dtype)
    if _is_basic_index(index):
        out[index] += values.data  # a view: no duplicates possible
    else:
        xp.add.at(out, index, values.data)
    return record(out, ((values, lambda g: getitem(g, index)),))


def _is_basic_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


# ---------------------------------------------------------------------------------------------
# linear algebra


def matmul(a, b) -> Tensor:
    """Batched, broadcasting matrix product (numpy.matmul semantics, 1-D operands included)."""
    a, b = _binary_operands(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul does not accept scalars; use mul")
    out = xp.matmul(a.data, b.data)
    # The VJPs work on matrices: a 1-D ``a`` is a row (1, k), a 1-D ``b`` a column (k, 1), and the
    # cotangent gets back the axes numpy.matmul dropped for them.
    a_shape, b_shape = a.shape, b.shape  # vjp_a keeps b alive and vjp_b keeps a, not their own operand
    a_matrix_shape = (1,) + a_shape if len(a_shape) == 1 else a_shape
    b_matrix_shape = b_shape + (1,) if len(b_shape) == 1 else b_shape

    def matrix_cotangent(g):
        if len(a_shape) == 1:
            g = expand_dims(g, -1 if len(b_shape) == 1 else -2)
        if len(b_shape) == 1:
            g = expand_dims(g, -1)
        return g

    def vjp_a(g):
        grad = matmul(matrix_cotangent(g), swapaxes(reshape(b, b_matrix_shape), -1, -2))
        return reshape(sum_to(grad, a_matrix_shape), a_shape)

    def vjp_b(g):
        grad = matmul(swapaxes(reshape(a, a_matrix_shape), -1, -2), matrix_cotangent(g))
        return reshape(sum_to(grad, b_matrix_shape), b_shape)

    return record(out, ((a, vjp_a), (b, vjp_b)))


def einsum(subscripts: str, *operands) -> Tensor:
    """Einstein summation, as torch.einsum / numpy.einsum; each operand's VJP is an einsum.

    Explicit (``'ij,jk->ik'``) or implicit (``'ij,jk'``: the output is the indices that appear once, in
    alphabetical order) form; ``...`` stands for the broadcast leading axes (right-aligned across operands;
    left out of the output, they are summed).  An index repeated within one operand takes the diagonal
    (``'ii->i'``).  Axes of length 1 broadcast against the same index elsewhere.
    """
    operands = [_lift(o) for o in operands]
    in_specs, output = _einsum_specs(subscripts, operands)
    operands, in_specs = zip(*[_einsum_diagonal(o, spec) for o, spec in zip(operands, in_specs)]) or ((), ())
    sizes = {}
    for spec, op in zip(in_specs, operands):
        for ch, n in zip(spec, op.shape):
            if 1 != sizes.get(ch, 1) != n != 1:
                raise ValueError(f"einsum: index {ch!r} has sizes {sizes[ch]} and {n} in {subscripts!r}")
            sizes[ch] = _builtins.max(sizes.get(ch, 1), n)
    operands = [broadcast_to(o, tuple(sizes[ch] for ch in spec)) for o, spec in zip(operands, in_specs)]
    return _einsum_explicit(list(in_specs), output, operands, sizes)


def _einsum_specs(subscripts: str, operands) -> tuple:
    """(one index string per operand, the output's) with ``...`` spelled out as letters and the output explicit."""
    if not isinstance(subscripts, str):
        raise TypeError(f"einsum: subscripts must be a string, got {type(subscripts).__name__}")
    text = subscripts.replace(" ", "")
    inputs, arrow, output = text.partition("->")
    in_specs = inputs.split(",")
    if len(in_specs) != len(operands):
        raise ValueError(f"einsum got {len(operands)} operands for {len(in_specs)} subscripts in {subscripts!r}")
    letters = set(text) - set(",->.")
    if not all(ch.isalpha() and ch.isascii() for ch in letters):
        raise ValueError(f"einsum: indices must be ASCII letters, got {subscripts!r}")
    spare = (ch for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if ch not in letters)
    counts = [_ellipsis_axes(spec, op.ndim, subscripts) for spec, op in zip(in_specs, operands)]
    ellipsis = "".join(next(spare) for _ in range(_builtins.max([c for c in counts if c is not None], default=0)))
    in_specs = [spec if c is None else spec.replace("...", ellipsis[len(ellipsis) - c:])
                for spec, c in zip(in_specs, counts)]
    if not arrow:  # implicit: the broadcast axes, then the indices used once, alphabetically
        used = "".join(in_specs)
        output = ellipsis + "".join(sorted(ch for ch in letters if used.count(ch) == 1))
    elif "." in output:
        if output.count("...") != 1 or output.count(".") != 3:
            raise ValueError(f"einsum: malformed ellipsis in the output of {subscripts!r}")
        output = output.replace("...", ellipsis)
    if len(set(output)) != len(output) or not set(output) <= set("".join(in_specs)):
        raise ValueError(f"einsum: the output {output!r} repeats an index or names one no operand has")
    return in_specs, output


def _ellipsis_axes(spec: str, ndim: int, subscripts: str):
    """How many axes ``...`` stands for in one operand's spec (None if it has none)."""
    if "." not in spec:
        if len(spec) != ndim:
            raise ValueError(f"einsum: subscript {spec!r} does not match an operand with {ndim} axes")
        return None
    if spec.count("...") != 1 or spec.count(".") != 3:
        raise ValueError(f"einsum: malformed ellipsis in {spec!r} of {subscripts!r}")
    count = ndim - (len(spec) - 3)
    if count < 0:
        raise ValueError(f"einsum: subscript {spec!r} has more indices than the operand's {ndim} axes")
    return count


def _einsum_diagonal(operand: Tensor, spec: str):
    """An index repeated within one operand takes the diagonal: (operand's diagonal, spec without repeats)."""
    while len(set(spec)) != len(spec):
        ch = next(c for c in spec if spec.count(c) > 1)
        axes = [i for i, c in enumerate(spec) if c == ch]
        if len({operand.shape[i] for i in axes}) != 1:
            raise ValueError(f"einsum: the repeated index {ch!r} has different sizes {operand.shape} in {spec!r}")
        rest = [i for i in range(operand.ndim) if i not in axes]
        moved = transpose(operand, rest + axes)  # the repeated axes last, then one index array for all
        diagonal = xp.arange(operand.shape[axes[0]])
        operand = getitem(moved, (Ellipsis,) + (diagonal,) * len(axes))
        spec = "".join(spec[i] for i in rest) + ch
    return operand, spec


def _einsum_explicit(in_specs: list, output: str, operands: list, sizes: dict) -> Tensor:
    """einsum with explicit letters only: no ellipsis, no index repeated within an operand, equal sizes."""
    subscripts = ",".join(in_specs) + "->" + output
    out = xp.einsum(subscripts, *[o.data for o in operands], optimize=True)

    def vjp_for(i):
        # operand i's VJP keeps the other operands alive, never operand i itself
        others = [operands[j] for j in range(len(operands)) if j != i]
        other_specs = [in_specs[j] for j in range(len(operands)) if j != i]
        target, target_shape = in_specs[i], operands[i].shape

        def vjp(g):
            missing = [ch for ch in target if ch not in output and ch not in "".join(other_specs)]
            spec = ",".join([output] + other_specs) + "->" + "".join(ch for ch in target if ch not in missing)
            grad = _einsum_explicit([output] + other_specs, spec.split("->")[1], [g] + others, sizes)
            if missing:  # an index summed away by this operand alone: broadcast back
                shape = tuple(1 if ch in missing else sizes[ch] for ch in target)
                grad = broadcast_to(reshape(grad, shape), target_shape)
            return grad

        return vjp

    return record(xp.asarray(out), tuple((o, vjp_for(i)) for i, o in enumerate(operands)))


def outer(a, b) -> Tensor:
    return mul(expand_dims(_lift(a), -1), _lift(b))


# ---------------------------------------------------------------------------------------------
# Tensor methods and operators


def _rev(fn):
    return lambda self, other: fn(other, self)


def _install_operators():
    T = Tensor
    T.__add__, T.__radd__ = add, _rev(add)
    T.__sub__, T.__rsub__ = sub, _rev(sub)
    T.__mul__, T.__rmul__ = mul, _rev(mul)
    T.__truediv__, T.__rtruediv__ = div, _rev(div)
    T.__pow__, T.__rpow__ = pow, _rev(pow)
    T.__matmul__, T.__rmatmul__ = matmul, _rev(matmul)
    T.__neg__ = neg
    T.__pos__ = lambda self: self
    T.__abs__ = abs
    T.__getitem__ = getitem
    for name, op in (("__lt__", "less"), ("__le__", "less_equal"), ("__gt__", "greater"),
                     ("__ge__", "greater_equal")):
        setattr(T, name, (lambda fn: lambda self, other: Tensor(fn(self.data, _data(other))))(getattr(xp, op)))
    T.eq = lambda self, other: Tensor(self.data == _data(other))
    T.T = property(lambda self: transpose(self))
    T.reshape = lambda self, *shape: reshape(self, shape[0] if len(shape) == 1 else shape)
    T.transpose = lambda self, *axes: transpose(self, (axes[0] if len(axes) == 1 else axes) or None)
    T.sum = lambda self, axis=None, keepdims=False: sum(self, axis, keepdims)
    T.mean = lambda self, axis=None, keepdims=False: mean(self, axis, keepdims)
    T.max = lambda self, axis=None, keepdims=False: max(self, axis, keepdims)
    T.min = lambda self, axis=None, keepdims=False: min(self, axis, keepdims)
    T.exp, T.log, T.sqrt, T.tanh, T.sigmoid, T.relu = exp, log, sqrt, tanh, sigmoid, relu
    T.astype = lambda self, dtype: astype(self, dtype)


def astype(a, dtype) -> Tensor:
    """Cast; the gradient is cast back to the operand's dtype."""
    a = _lift(a)
    if a.dtype == _np.dtype(dtype):
        return a
    source = a.dtype
    return record(a.data.astype(dtype), ((a, lambda g: astype(g, source)),))


_install_operators()
