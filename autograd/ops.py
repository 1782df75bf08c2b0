"""Differentiable operations on tensors: elementwise, reductions, shape, indexing, linear algebra.

Each primitive computes its forward value on the backend namespace ``xp`` and records one VJP per
operand.  Every VJP is written with the operations of this module, so it is differentiable again.
Operands may be Tensors, backend arrays or Python scalars; the result is always a Tensor.
"""
from __future__ import annotations

import builtins as _builtins
import math as _math
import numbers
import operator
from typing import Sequence

import numpy as _np

from . import _threads, backend
from .backend import xp
from .tensor import Tensor, as_tensor, is_grad_enabled, record

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


def _binary_operands(a, b, op: str = "operation"):
    """Both operands as Tensors of one dtype family: see :func:`_match_dtypes`."""
    if isinstance(a, numbers.Number) and not isinstance(b, numbers.Number):
        b = _lift(b)
        a = _lift(a, b)
    else:
        a = _lift(a)
        b = _lift(b, a)
    if a.dtype != b.dtype:
        a, b = _match_dtypes(op, a, b)
    return a, b


def _match_dtypes(op: str, *tensors, names=None) -> list:
    """The operands of one operation, with the core's dtype rule applied (docs/architecture.md, "dtypes").

    * Two different floating-point dtypes (float32 and float64, float16 and float32, ...) are a TypeError
      naming both: the core never promotes one float dtype to another, as conv2d, matmul and linear
      in PyTorch do not.  Cast explicitly with :func:`astype` (its gradient comes back in the source dtype).
    * Integer and boolean operands meeting a floating-point one take its dtype, as in PyTorch
      (``float32 * int64`` is float32, where NumPy would give float64).  They carry no gradient.
    * Anything else (integers of two widths, complex) follows NumPy's promotion.
    """
    floats = []
    for t in tensors:
        if t.dtype.kind == "f" and t.dtype not in floats:
            floats.append(t.dtype)
    if len(floats) > 1:
        labels = names or [f"operand {i}" for i in range(len(tensors))]
        described = ", ".join(f"{label} {t.dtype}" for label, t in zip(labels, tensors))
        raise TypeError(f"{op}: operands have different floating-point dtypes ({described}); the core does not "
                        "promote between float dtypes -- cast one explicitly with autograd.astype")
    if not floats:
        return list(tensors)
    return [Tensor(t.data.astype(floats[0])) if t.dtype.kind in "biu" else t for t in tensors]


def _check_float(op: str, arg: str, tensor) -> None:
    """TypeError unless ``tensor`` holds real floating-point values (the ops that compute in floats:
    convolution, pooling, resizing, DCT, softmax, matmul, normalisation).  Integer input would be
    truncated (an average) or meet -inf padding, booleans give logical results, and complex values
    have no ordering and their gradients a conjugation convention the core does not implement."""
    dtype = tensor.dtype
    if _np.dtype(dtype).kind != "f":
        raise TypeError(f"{op}: {arg} must be a real floating-point tensor (float16, float32 or float64), "
                        f"got dtype {dtype}")


def _check_operands(op: str, **operands) -> None:
    """Every given operand (Tensors; None skipped) real floating-point and of one dtype: the core's dtype
    rule for the operations with several float operands (conv, linear, normalisation), a TypeError naming
    the operation, the arguments and their dtypes."""
    given = {name: t for name, t in operands.items() if t is not None}
    for name, t in given.items():
        _check_float(op, name, t)
    _match_dtypes(op, *given.values(), names=list(given))


def _axis_index(ax, op: str, arg: str) -> int:
    """``ax`` as an int (bools, floats and other non-integers are a TypeError naming the argument)."""
    if isinstance(ax, bool):
        raise TypeError(f"{op}: {arg} must be an int, got {ax!r}")
    try:
        return operator.index(ax)
    except TypeError:
        raise TypeError(f"{op}: {arg} must be an int or a tuple of ints, got {ax!r}") from None


def _normalize_axis(axis, ndim: int, op: str = "reduction", arg: str = "axis") -> tuple:
    """``axis`` (None, an int or a sequence of ints) as a sorted tuple of non-negative axes.

    As NumPy and torch: an axis outside ``[-ndim, ndim)`` and an axis named twice are errors (never
    wrapped or merged).  As torch, a 0-d tensor accepts axis 0 and -1, which reduce over nothing
    (``sum(scalar, axis=0)`` is the scalar): the result is then ``()``.
    """
    if axis is None:
        return tuple(range(ndim))
    items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    rank = _builtins.max(ndim, 1)
    out = []
    for ax in items:
        ax = _axis_index(ax, op, arg)
        if not -rank <= ax < rank:
            raise ValueError(f"{op}: {arg} {ax} is out of range for a tensor with {ndim} dimensions "
                             f"(expected {-rank} <= {arg} < {rank})")
        out.append(ax % rank)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: {arg} {axis!r} names the same axis more than once")
    return () if ndim == 0 else tuple(sorted(out))


def _one_axis(axis, ndim: int, op: str, arg: str = "axis") -> int:
    """One axis in ``[-ndim, ndim)`` as a non-negative int (0-d tensors accept 0 and -1, as torch)."""
    ax = _axis_index(axis, op, arg)
    rank = _builtins.max(ndim, 1)
    if not -rank <= ax < rank:
        raise ValueError(f"{op}: {arg} {ax} is out of range for a tensor with {ndim} dimensions "
                         f"(expected {-rank} <= {arg} < {rank})")
    return ax % rank


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
    if type(alpha) is not int or alpha != 1:  # (a bool or a tensor alpha is refused by _alpha)
        return add(a, mul(b, _alpha(alpha, "add")))
    a, b = _binary_operands(a, b, "add")
    sa, sb = a.shape, b.shape  # the VJPs read shapes only: the operands are not kept alive
    return record(a.data + b.data, ((a, lambda g: sum_to(g, sa)), (b, lambda g: sum_to(g, sb))))


def _alpha(alpha, op: str):
    """torch.add/sub's ``alpha``: a real number (a bool or a tensor is a TypeError, as for float tensors in torch)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{op}: alpha must be a real number, got {alpha!r}")
    return alpha


def sub(a, b, *, alpha=1) -> Tensor:
    """``a - alpha * b`` (torch.sub's ``alpha``)."""
    if type(alpha) is not int or alpha != 1:  # (a bool or a tensor alpha is refused by _alpha)
        return sub(a, mul(b, _alpha(alpha, "sub")))
    a, b = _binary_operands(a, b, "sub")
    sa, sb = a.shape, b.shape
    # b's VJP negates after reducing: the same bits, and no full-size negation when b was broadcast
    return record(a.data - b.data, ((a, lambda g: sum_to(g, sa)), (b, lambda g: neg(sum_to(g, sb)))))


def mul(a, b) -> Tensor:
    a, b = _binary_operands(a, b, "mul")
    if a is b:   # a square: one VJP (2 g) a -- the same values as g a + g a, without the accumulation pass
        return record(a.data * a.data, ((a, lambda g: mul(mul(g, 2.0), a)),))
    sa, sb = a.shape, b.shape  # a's VJP keeps b alive and b's keeps a, each only if it is recorded
    return record(a.data * b.data, ((a, lambda g: _mul_sum_to(g, b, sa)), (b, lambda g: _mul_sum_to(g, a, sb))))


def div(a, b) -> Tensor:
    a, b = _binary_operands(a, b, "div")
    sa, sb = a.shape, b.shape
    return record(
        a.data / b.data,
        (
            (a, lambda g: sum_to(div(g, b), sa)),
            (b, lambda g: neg(sum_to(div(mul(g, a), mul(b, b)), sb))),   # negated after reducing (same bits)
        ),
    )


def neg(a) -> Tensor:
    """``-a`` (a boolean tensor is a TypeError, as in torch: use logical_not)."""
    a = _lift(a)
    if a.dtype == bool:
        raise TypeError("neg: a boolean tensor cannot be negated (use logical_not / ~), got dtype bool")
    return record(-a.data, ((a, lambda g: neg(g)),))


def pow(a, b) -> Tensor:  # noqa: A001 - mirrors torch.pow
    """``a ** b``, with torch's gradient conventions at the edges.

    d/da = b * a**(b-1), except 0 where ``b == 0`` (the constant 1 = a**0, even at a = 0 where the formula
    reads 0 * inf); d/db = a**b * log(a), except 0 where ``a == 0`` and ``b >= 0`` (0**b is constant there,
    where the formula reads 0 * -inf).  A negative base gives NaN for d/db, as in torch.
    """
    a, b = _binary_operands(a, b, "pow")
    sa, sb = a.shape, b.shape
    holder = []

    def vjp_base(g):
        return sum_to(_zero_where(b.data == 0, mul(g, mul(b, pow(a, sub(b, 1))))), sa)

    def vjp_exponent(g):
        # the result itself (not a constant copy of its value), so that second derivatives see it
        with _np.errstate(divide="ignore", invalid="ignore"):
            log_a = log(a)
        flat_zero = (a.data == 0) & (b.data >= 0)
        return sum_to(_zero_where(flat_zero, mul(g, mul(holder[0], log_a))), sb)

    result = record(a.data ** b.data, ((a, vjp_base), (b, vjp_exponent)))
    holder.append(result)
    return result


def _zero_where(condition, value) -> Tensor:
    """``value`` with zeros where ``condition`` (a backend bool array) holds; ``value`` itself when it never
    does (a 0-d condition is decided on the host, an array one by one reduction)."""
    if not bool(xp.any(condition)):
        return value
    return where(condition, Tensor(xp.zeros((), value.dtype)), value)


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
    """|a|; the gradient is g * sign(a): 0 at a = 0 and at NaN (torch's sgn gives 0 there)."""
    a = _lift(a)
    return record(xp.abs(a.data), ((a, lambda g: mul(g, Tensor(_sign_data(a.data)))),))


def sign(a) -> Tensor:
    """Sign of ``a``: -1, 0 or 1, and 0 for NaN (as torch.sign; NumPy's sign gives NaN).

    Piecewise constant: its gradient is zero everywhere (recorded, as in torch, so a loss through it
    still has a gradient -- of zeros), even for a non-finite cotangent (torch's ``zeros_like(grad)``: an
    infinite cotangent times 0 would be NaN, e.g. in lp pooling's ``sign(s) * relu(|s|)`` at s = 0).
    """
    a = _lift(a)
    shape = a.shape
    return record(_sign_data(a.data), ((a, lambda g: Tensor(xp.zeros(shape, g.dtype))),))


def _sign_data(data):
    """torch.sign on a backend array: NaN -> 0 (one extra pass only when the input holds NaN)."""
    out = xp.sign(data)
    if data.dtype.kind == "f" and not _all_finite(out):
        out = xp.where(xp.isnan(out), xp.zeros((), out.dtype), out)
    return out


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
    """max(a, 0); the gradient is 0 where a <= 0 and passes g through elsewhere -- NaN included (as torch,
    whose rule is ``result <= 0 ? 0 : g``)."""
    a = _lift(a)
    zero = xp.zeros((), a.data.dtype)
    out = xp.maximum(a.data, zero)
    mask = out != 0  # the same cost as a > 0, and True at NaN: not (a <= 0)
    return record(out, ((a, lambda g: where(mask, g, Tensor(zero))),))


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
    """Elementwise maximum (NaN propagates).  Gradients as torch.maximum: on exact ties split 0.5 / 0.5;
    where an operand is NaN (the comparison fails both ways) each operand receives the whole g."""
    a, b = _binary_operands(a, b, "maximum")
    out = xp.maximum(a.data, b.data)
    if not (is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        return Tensor(out)
    dtype = out.dtype
    tie = a.data == b.data
    any_tie = bool(xp.any(tie))
    # an operand's weight: 1 where it does not lose (NaN loses nowhere: both comparisons fail), 1/2 on ties
    loses_a = a.data < b.data if a.requires_grad else None
    loses_b = a.data > b.data if b.requires_grad else None

    def weight(loses) -> Tensor:
        w = xp.logical_not(loses).astype(dtype)
        if any_tie:
            w -= (0.5 * tie).astype(dtype)
        return Tensor(w)

    sa, sb = a.shape, b.shape
    return record(
        out,
        (
            (a, lambda g: sum_to(mul(g, weight(loses_a)), sa)),
            (b, lambda g: sum_to(mul(g, weight(loses_b)), sb)),
        ),
    )


def minimum(a, b) -> Tensor:
    """Elementwise minimum; gradients as :func:`maximum` (ties split, NaN: each operand gets g)."""
    a, b = _binary_operands(a, b, "minimum")
    return neg(maximum(neg(a), neg(b)))


def where(condition, a, b) -> Tensor:
    """``a`` where ``condition`` else ``b`` (condition carries no gradient)."""
    cond = _data(condition)
    a, b = _binary_operands(a, b, "where")
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
    # (a 0-d condition takes xp.where: ~cond of a 0-d array is a NumPy scalar, not an array to write into)
    if backend.name == "numpy" and isinstance(cond, _np.ndarray) and cond.dtype == bool and cond.ndim:
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
    """Clamp to [min, max], as torch.clamp: ``minimum(maximum(a, min), max)`` (so ``max`` wins where
    min > max, and NaN in ``a`` or a bound propagates).  The bounds may be numbers or tensors
    (broadcasting), and tensor bounds receive gradients.  Gradients (torch's rule):

    * a: g where ``min <= a <= max`` (the closed interval; 0 at NaN);
    * min: g where ``a < min`` and ``min < max`` (with no ``max``: where ``a < min``);
    * max: g where ``a > max`` or ``max < min`` (with no ``min``: where ``a > max``).
    """
    a = _lift(a)
    if min is None and max is None:
        raise ValueError("clip: give at least one of min and max (both are None)")
    lo = None if min is None else _lift(min, a)
    hi = None if max is None else _lift(max, a)
    bounds = [t for t in (lo, hi) if t is not None]
    names = ["a"] + [n for n, t in (("min", lo), ("max", hi)) if t is not None]
    matched = iter(_match_dtypes("clip", a, *bounds, names=names)[1:])
    lo = None if lo is None else next(matched)
    hi = None if hi is None else next(matched)
    out = a.data
    if lo is not None:
        out = xp.maximum(out, lo.data)
    if hi is not None:
        out = xp.minimum(out, hi.data)
    if out is a.data:
        out = xp.array(out, copy=True)
    dtype = out.dtype
    inside = None if lo is None else a.data >= lo.data
    if hi is not None:
        inside = a.data <= hi.data if inside is None else inside & (a.data <= hi.data)
    parents = [(a, _masked_vjp(inside, a.shape, dtype))]
    if lo is not None:
        below = a.data < lo.data
        if hi is not None:
            below = below & (lo.data < hi.data)
        parents.append((lo, _masked_vjp(below, lo.shape, dtype)))
    if hi is not None:
        above = a.data > hi.data
        if lo is not None:
            above = above | (hi.data < lo.data)
        parents.append((hi, _masked_vjp(above, hi.shape, dtype)))
    return record(out, tuple(parents))


clamp = clip


def _masked_vjp(mask, shape, dtype):
    """The VJP ``g -> sum_to(g * mask, shape)`` of one clip operand (``mask`` a bool backend array)."""
    weights = Tensor(mask.astype(dtype))
    return lambda g: sum_to(mul(g, weights), shape)


# ---------------------------------------------------------------------------------------------
# reductions


def sum(a, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    a = _lift(a)
    axes = _normalize_axis(axis, a.ndim, "sum")
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


def _all_finite(data) -> bool:
    """Whether a float array holds no NaN or infinity, from one sum (through BLAS where :func:`_blas_layout`
    allows); a sum that overflows only answers False, so callers must treat False as "maybe"."""
    if data.size == 0:
        return True
    if data.dtype == _np.float16:  # a float16 sum overflows at 65504: sum in float32
        return bool(xp.isfinite(xp.sum(data, dtype=_np.float32)))
    if data.ndim >= 2:
        data = _sum_data(data, (data.ndim - 2, data.ndim - 1), False)
    return bool(xp.isfinite(xp.sum(data)))


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
    a, b = _binary_operands(a, b, "sum_product")
    if a.shape != b.shape:
        raise ValueError(f"sum_product: a and b must have one shape, got {a.shape} and {b.shape}")
    axes = _normalize_axis(axis, a.ndim, "sum_product")
    layout = _blas_layout(a.data, axes) if b.data.flags.c_contiguous and a.dtype == b.dtype else None
    terms = int(_np.prod([a.shape[i] for i in axes], dtype=_np.int64))
    if (layout is None and backend.name == "numpy" and a.dtype == b.dtype and axes and a.ndim <= 26
            and terms <= BLAS_REDUCE_MAX_TERMS):
        # other layouts (a middle axis: the gradient of a (N, C, 1, W) gate): einsum's sum-of-products
        # loop, without the full-size product that ``sum(a * b)`` would allocate (its running sums are
        # not pairwise: as for the BLAS path, only up to BLAS_REDUCE_MAX_TERMS terms)
        letters = "abcdefghijklmnopqrstuvwxyz"[: a.ndim]
        kept = "".join(c for i, c in enumerate(letters) if i not in axes)
        out = xp.einsum(f"{letters},{letters}->{kept}", a.data, b.data)
        if keepdims:
            out = xp.reshape(out, _reduced_shape(a.shape, axes, True))
    elif layout is None:
        out = xp.sum(a.data * b.data, axis=axes, keepdims=keepdims)
    else:
        lead, middle, trail = layout
        rows = lead * middle
        dots = xp.matmul(xp.reshape(a.data, (rows, 1, trail)), xp.reshape(b.data, (rows, trail, 1)))
        out = xp.reshape(_sum_rows(xp.reshape(dots, (rows,)), lead, middle),
                         _reduced_shape(a.shape, axes, keepdims))
    shape = a.shape
    if a is b:   # a sum of squares (var, norms): one VJP 2 g a -- the same bits as g a + g a, one pass fewer
        return record(xp.asarray(out), ((a, lambda g: mul(_spread(mul(g, 2.0), shape, axes), a)),))
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
    """Mean over ``axis`` of a floating-point (or complex) tensor; an integer or boolean one is a TypeError, as
    in torch (its mean has no dtype to be computed in: cast explicitly with :func:`astype`)."""
    a = _lift(a)
    if a.dtype.kind in "biu":
        raise TypeError(f"mean: input must be a floating-point or complex tensor, got dtype {a.dtype} "
                        "(cast it with autograd.astype first)")
    axes = _normalize_axis(axis, a.ndim, "mean")
    count = 1
    for ax in axes:
        count *= a.shape[ax]
    return div(sum(a, axis=axes, keepdims=keepdims), float(count))


def var(a, axis=None, keepdims: bool = False, unbiased: bool = False, *, correction=None) -> Tensor:
    """Variance ``sum((a - mean)^2) / max(n - correction, 0)`` over ``axis`` (0/0 is NaN, x/0 inf, as torch);
    real floating-point input.

    ``correction`` may be any real number (torch's keyword); ``unbiased=True`` is ``correction=1``.  The
    default is 0, the biased variance (NumPy's default; torch.var's default is ``correction=1``).
    """
    a = _lift(a)
    _check_float("var", "input", a)
    if correction is None:
        correction = int(unbiased)
    elif unbiased:
        raise ValueError("var: give either unbiased or correction, not both")
    if not isinstance(correction, numbers.Real) or isinstance(correction, bool):
        raise TypeError(f"var: correction must be a real number, got {correction!r}")
    axes = _normalize_axis(axis, a.ndim, "var")
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
    axes = _normalize_axis(axis, a.ndim, "max")
    _check_nonempty(a, axes, "max/min")
    out = xp.max(a.data, axis=axes, keepdims=True)
    hit = (a.data == out).astype(a.data.dtype)
    share = hit / xp.sum(hit, axis=axes, keepdims=True)
    shape = a.shape
    value = out if keepdims else xp.reshape(out, _reduced_shape(shape, axes, False))
    return record(value, ((a, lambda g: mul(_spread(g, shape, axes), Tensor(share))),))


def _check_nonempty(a: Tensor, axes, op: str) -> None:
    """A reduction with no identity (max, min) over an axis of size 0 is an error, as in torch and NumPy."""
    for ax in axes:
        if a.shape[ax] == 0:
            raise ValueError(f"{op}: cannot reduce over axis {ax} of size 0 (input shape {a.shape}); the "
                             "maximum of nothing is undefined")


def min(a, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Minimum over ``axis``.  Ties share the gradient equally (as torch.amin)."""
    return neg(max(neg(a), axis=axis, keepdims=keepdims))


def logsumexp(a, axis=None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(a))) over ``axis``, stable for large inputs (the max is shifted out)."""
    a = _lift(a)
    _check_float("logsumexp", "input", a)
    axes = _normalize_axis(axis, a.ndim, "logsumexp")
    if any(a.shape[ax] == 0 for ax in axes):  # the log of an empty sum is -inf (torch); a's gradient is empty
        shape = a.shape
        empty_sum = xp.full(_reduced_shape(shape, axes, keepdims), -xp.inf, dtype=_float_data(a).dtype)
        return record(empty_sum, ((a, lambda g: Tensor(xp.zeros(shape, g.dtype))),))
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
        axis = _one_axis(axis, data.ndim, name)  # a 0-d tensor accepts 0 and -1, as torch
    if data.ndim == 0:  # a scalar is its own (only) element
        return xp.zeros((), dtype=xp.int64)
    if (data.size if axis is None else data.shape[axis]) == 0:
        raise ValueError(f"{name}: the reduction over an empty axis (shape {tuple(data.shape)}, axis {axis}) "
                         "has no index")
    return reduce(data, axis=axis, keepdims=keepdims)


# ---------------------------------------------------------------------------------------------
# shape


def reshape(a, shape) -> Tensor:
    """``a`` with a new ``shape`` of the same size (one entry may be -1: inferred), as numpy/torch.reshape."""
    a = _lift(a)
    if isinstance(shape, int):
        shape = (shape,)
    target = _reshape_target(shape, a.shape)
    if target == a.shape:
        return a
    out = xp.reshape(a.data, target)
    source = a.shape
    return record(out, ((a, lambda g: reshape(g, source)),))


def _reshape_target(shape, source: tuple) -> tuple:
    """``shape`` checked against a tensor of shape ``source``, its -1 resolved (errors name reshape)."""
    dims = tuple(shape)
    if not all(type(d) is int for d in dims):  # (the common case skips this: plain ints, no bools)
        try:
            if any(isinstance(d, bool) for d in dims):
                raise TypeError
            dims = tuple(operator.index(d) for d in dims)
        except TypeError:
            raise TypeError(f"reshape: shape must be an int or a sequence of ints, got {shape!r}") from None
    size = _math.prod(source)
    if -1 not in dims and all(d >= 0 for d in dims) and _math.prod(dims) == size:
        return dims
    unknown = [i for i, d in enumerate(dims) if d == -1]
    if len(unknown) > 1 or any(d < -1 for d in dims):
        raise ValueError(f"reshape: shape {dims} may hold one -1 and otherwise sizes >= 0 (input shape {source})")
    known = _math.prod(d for d in dims if d != -1)
    if not unknown:
        raise ValueError(f"reshape: cannot reshape a tensor of shape {source} ({size} elements) into {dims} "
                         f"({known} elements)")
    if known == 0 or size % known:
        raise ValueError(f"reshape: cannot reshape a tensor of shape {source} ({size} elements) into {dims}"
                         + (": the -1 could be any size" if known == 0 else ""))
    return dims[: unknown[0]] + (size // known,) + dims[unknown[0] + 1 :]


def transpose(a, axes=None) -> Tensor:
    """Permute axes (reverse them when ``axes`` is None), like numpy.transpose / torch.permute.

    ``axes`` must name every axis once (a 0-d tensor accepts ``()``, ``(0,)`` and ``(-1,)``, as torch).
    """
    a = _lift(a)
    if axes is None:
        axes = tuple(range(a.ndim))[::-1]
    elif a.ndim == 0:
        _normalize_axis(axes, 0, "transpose", "axes")
        return a
    else:
        if not isinstance(axes, (tuple, list)) or len(axes) != a.ndim:
            raise ValueError(f"transpose: axes must name each of the {a.ndim} axes once, got {axes!r}")
        normalized = [_one_axis(ax, a.ndim, "transpose", "axes") for ax in axes]
        if sorted(normalized) != list(range(a.ndim)):
            raise ValueError(f"transpose: axes must name each of the {a.ndim} axes once, got {axes!r}")
        axes = tuple(normalized)
    inverse = tuple(_np.argsort(axes))
    return record(xp.transpose(a.data, axes), ((a, lambda g: transpose(g, inverse)),))


permute = transpose


def swapaxes(a, axis1: int, axis2: int) -> Tensor:
    """Exchange two axes (as torch.transpose(a, axis1, axis2)); a 0-d tensor accepts 0 and -1."""
    a = _lift(a)
    axis1 = _one_axis(axis1, a.ndim, "swapaxes", "axis1")
    axis2 = _one_axis(axis2, a.ndim, "swapaxes", "axis2")
    if a.ndim == 0:
        return a
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
    """Insert axes of size 1 at ``axis`` (an int or a tuple, positions in the result, as numpy.expand_dims)."""
    a = _lift(a)
    count = len(axis) if isinstance(axis, (tuple, list)) else 1
    new_axes = _normalize_axis(axis, a.ndim + count, "expand_dims")
    sizes = iter(a.shape)
    return reshape(a, tuple(1 if i in new_axes else next(sizes) for i in range(a.ndim + count)))


unsqueeze = expand_dims


def squeeze(a, axis=None) -> Tensor:
    """Remove axes of size 1 (all of them, or those in ``axis``, which must have size 1)."""
    a = _lift(a)
    if axis is None:
        shape = tuple(n for n in a.shape if n != 1)
    else:
        axes = _normalize_axis(axis, a.ndim, "squeeze")
        for ax in axes:
            if a.shape[ax] != 1:
                raise ValueError(f"squeeze: cannot squeeze axis {ax} of size {a.shape[ax]} (input shape {a.shape})")
        shape = tuple(n for i, n in enumerate(a.shape) if i not in axes)
    return reshape(a, shape)


def flatten(a, start_axis: int = 0, end_axis: int = -1) -> Tensor:
    """Merge axes ``start_axis..end_axis`` into one (as torch.flatten; a 0-d tensor becomes shape (1,))."""
    a = _lift(a)
    start = _one_axis(start_axis, a.ndim, "flatten", "start_axis")
    end = _one_axis(end_axis, a.ndim, "flatten", "end_axis")
    if a.ndim == 0:
        return reshape(a, (1,))
    if start > end:
        raise ValueError(f"flatten: start_axis {start_axis} comes after end_axis {end_axis} "
                         f"(tensor with {a.ndim} dimensions)")
    merged = 1
    for n in a.shape[start : end + 1]:
        merged *= n
    return reshape(a, a.shape[:start] + (merged,) + a.shape[end + 1 :])


def concatenate(tensors: Sequence, axis: int = 0) -> Tensor:
    """Join tensors along an existing ``axis`` (numpy.concatenate / torch.cat); each gets its slice of g.

    Operands of two floating-point dtypes are a TypeError (the core's dtype rule, :func:`_match_dtypes`);
    each gradient has its own operand's dtype.  As torch's legacy rule, an empty 1-D tensor (shape (0,))
    among tensors of more axes is skipped (its gradient is empty).
    """
    tensors = [_lift(t) for t in tensors]
    if not tensors:
        raise ValueError("concatenate: needs at least one tensor, got an empty sequence")
    if len({t.dtype for t in tensors}) > 1:
        tensors = _match_dtypes("concatenate", *tensors, names=[f"tensors[{i}]" for i in range(len(tensors))])
    if any(t.shape == (0,) for t in tensors) and any(t.ndim > 1 for t in tensors):
        kept = [t for t in tensors if t.shape != (0,)]
        skipped = [(t, lambda g: Tensor(xp.zeros((0,), g.dtype))) for t in tensors if t.shape == (0,)]
        out = concatenate(kept, axis)
        return record(out.data, ((out, lambda g: g),) + tuple(skipped))
    first = tensors[0]
    if first.ndim == 0:
        raise ValueError("concatenate: 0-d tensors cannot be concatenated (use stack)")
    axis = _one_axis(axis, first.ndim, "concatenate")
    for i, t in enumerate(tensors):
        if t.ndim != first.ndim or any(n != m for k, (n, m) in enumerate(zip(t.shape, first.shape)) if k != axis):
            raise ValueError(f"concatenate: tensors[{i}] has shape {t.shape}, which does not match tensors[0]'s "
                             f"{first.shape} outside axis {axis}")
    out = xp.concatenate([t.data for t in tensors], axis=axis)
    bounds = _np.cumsum([0] + [t.shape[axis] for t in tensors])

    def piece(i):
        index = (slice(None),) * axis + (slice(int(bounds[i]), int(bounds[i + 1])),)
        return lambda g: getitem(g, index)

    return record(out, tuple((t, piece(i)) for i, t in enumerate(tensors)))


cat = concatenate


def stack(tensors: Sequence, axis: int = 0) -> Tensor:
    """Join tensors of one shape along a new ``axis`` (numpy.stack / torch.stack)."""
    tensors = [_lift(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: needs at least one tensor, got an empty sequence")
    if len({t.dtype for t in tensors}) > 1:
        tensors = _match_dtypes("stack", *tensors, names=[f"tensors[{i}]" for i in range(len(tensors))])
    axis = _one_axis(axis, tensors[0].ndim + 1, "stack")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: tensors[{i}] has shape {t.shape}, tensors[0] {tensors[0].shape}; "
                             "stacked tensors must have one shape")
    return concatenate([expand_dims(t, axis) for t in tensors], axis=axis)


def split(a, indices_or_sections, axis: int = 0) -> list:
    """Split like numpy.split: an int gives equal sections, a list gives split points."""
    a = _lift(a)
    axis = _one_axis(axis, a.ndim, "split")
    n = a.shape[axis]
    if isinstance(indices_or_sections, numbers.Integral) and not isinstance(indices_or_sections, bool):
        sections = int(indices_or_sections)
        if sections < 1:
            raise ValueError(f"split: the number of sections must be >= 1, got {sections}")
        if n % sections:
            raise ValueError(f"split: axis {axis} of size {n} cannot be split into {sections} equal parts")
        step = n // sections
        points = list(range(step, n, step))
    else:
        points = [_axis_index(p, "split", "indices_or_sections") for p in indices_or_sections]
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
        pad_width = tuple((operator.index(lo), operator.index(hi)) for lo, hi in pad_width)
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
    """Reverse the order of elements along ``axis`` (all axes when None)."""
    a = _lift(a)
    axes = _normalize_axis(axis, a.ndim, "flip")
    return record(xp.flip(a.data, axis=axes), ((a, lambda g: flip(g, axes)),))


def roll(a, shifts, axis=None) -> Tensor:
    """Cyclic shift, as torch.roll / numpy.roll: element i moves to (i + shift) mod n along each axis.

    ``shifts`` and ``axis`` are ints or equal-length tuples of ints; ``axis=None`` rolls the flattened
    tensor (one int shift).  VJP: the inverse permutation, a roll by ``-shifts``.
    """
    a = _lift(a)
    single = not isinstance(shifts, (tuple, list))
    amounts = tuple(_axis_index(s, "roll", "shifts") for s in ((shifts,) if single else shifts))
    if axis is None:
        if not single:
            raise ValueError(f"roll: with axis=None, shifts must be one int, got {shifts!r}")
        axes = None
    else:
        one_axis = not isinstance(axis, (tuple, list))
        if a.ndim == 0:  # as torch: a scalar has no axis to roll along (axis=None rolls it as one element)
            raise ValueError(f"roll: a 0-d tensor has no axis {axis!r} to roll along (use axis=None)")
        axes = tuple(_one_axis(ax, a.ndim, "roll") for ax in ((axis,) if one_axis else axis))
        if single != one_axis or len(axes) != len(amounts):
            raise ValueError(f"roll: shifts and axis must both be ints or tuples of one length, got {shifts!r}, "
                             f"{axis!r}")
    shift = amounts[0] if axes is None else amounts
    back = -shift if axes is None else tuple(-s for s in shift)
    return record(xp.roll(a.data, shift, axis=axes), ((a, lambda g: roll(g, back, axes)),))


def window_partition(x, window_size) -> Tensor:
    """(B, H, W, C) -> (B * H/wh * W/ww, wh, ww, C): non-overlapping windows, row-major windows of row-major
    tokens (Swin's ``window_partition``; a reshape and a transpose, so the VJP is the inverse permutation).

    ``window_size`` is an int or (wh, ww) and must divide (H, W).
    """
    x = _lift(x)
    wh, ww = _pair("window_partition", window_size)
    if x.ndim != 4:
        raise ValueError(f"window_partition: x must be 4-D (B, H, W, C), got shape {x.shape}")
    batch, height, width, channels = x.shape
    if height % wh or width % ww:
        raise ValueError(f"window_partition: window ({wh}, {ww}) must divide the map ({height}, {width})")
    blocks = reshape(x, (batch, height // wh, wh, width // ww, ww, channels))
    count = batch * (height // wh) * (width // ww)
    return reshape(transpose(blocks, (0, 1, 3, 2, 4, 5)), (count, wh, ww, channels))


def window_reverse(windows, window_size, height: int, width: int) -> Tensor:
    """The inverse of :func:`window_partition`: (B * H/wh * W/ww, wh, ww, C) -> (B, H, W, C)."""
    windows = _lift(windows)
    wh, ww = _pair("window_reverse", window_size)
    if height % wh or width % ww:
        raise ValueError(f"window_reverse: window ({wh}, {ww}) must divide the map ({height}, {width})")
    per_image = (height // wh) * (width // ww)
    if windows.ndim != 4 or windows.shape[1:3] != (wh, ww) or windows.shape[0] % per_image:
        raise ValueError(f"window_reverse: windows must be (B * {per_image}, {wh}, {ww}, C), got shape {windows.shape}")
    channels = windows.shape[-1]
    batch = windows.shape[0] // per_image
    blocks = reshape(windows, (batch, height // wh, width // ww, wh, ww, channels))
    return reshape(transpose(blocks, (0, 1, 3, 2, 4, 5)), (batch, height, width, channels))


def _pair(op: str, size) -> tuple:
    pair = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
    if len(pair) != 2 or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in pair):
        raise ValueError(f"{op}: window_size must be a positive int or a pair of them, got {size!r}")
    return int(pair[0]), int(pair[1])


def repeat(a, repeats, axis=None) -> Tensor:
    """Repeat each element along ``axis`` (numpy.repeat / torch.repeat_interleave); ``axis=None`` repeats the
    flattened tensor, as both do.

    ``repeats`` is a non-negative int, or one non-negative int per position of ``axis`` (a sequence, a
    host array or a backend integer array).  VJP: the sum over each element's copies.
    """
    a = _lift(a)
    if axis is None:
        return repeat(reshape(a, (a.size,)), repeats, 0)
    axis = _one_axis(axis, a.ndim, "repeat")
    if a.ndim == 0:
        a = reshape(a, (1,))
    n = a.shape[axis]
    if isinstance(repeats, numbers.Integral) and not isinstance(repeats, bool):
        count = int(repeats)
        if count < 0:
            raise ValueError(f"repeat: repeats must be non-negative, got {count}")
        out = xp.repeat(a.data, count, axis=axis)
        split_shape = a.shape[: axis + 1] + (count,) + a.shape[axis + 1 :]
        return record(out, ((a, lambda g: sum(reshape(g, split_shape), axis=axis + 1)),))
    counts = _repeat_counts(repeats, n)
    # per-position counts: a gather of positions [0]*c0 + [1]*c1 + ..., whose VJP scatter-adds the copies
    positions = backend.from_numpy(_np.repeat(_np.arange(n), counts))
    return getitem(a, (slice(None),) * axis + (positions,))


def _repeat_counts(repeats, n: int) -> _np.ndarray:
    """Per-position ``repeats`` as a host int array of length ``n`` (one int broadcasts), validated."""
    if isinstance(repeats, Tensor):
        repeats = repeats.data
    host = backend.to_numpy(repeats) if backend.is_array(repeats) else _np.asarray(repeats)
    if host.dtype.kind not in "iu" or host.ndim > 1:
        raise TypeError(f"repeat: repeats must be an int or a 1-D sequence of ints, got {repeats!r}")
    if host.ndim == 1 and host.size == 1:
        host = _np.full(n, host[0])
    if host.ndim == 0:
        host = _np.full(n, int(host))
    if host.shape != (n,):
        raise ValueError(f"repeat: repeats has {host.size} entries for an axis of size {n}")
    if (host < 0).any():
        raise ValueError(f"repeat: repeats must be non-negative, got {host.tolist()}")
    return host


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
    _check_float("matmul", "a", _lift(a, b if isinstance(b, Tensor) else None))
    _check_float("matmul", "b", _lift(b, a if isinstance(a, Tensor) else None))
    a, b = _binary_operands(a, b, "matmul")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least one axis (use mul for scalars), got shapes "
                         f"{a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else -1]:
        raise ValueError(f"matmul: a's last axis ({a.shape[-1]}) must match b's "
                         f"{'second-to-last' if b.ndim > 1 else 'only'} axis; got shapes {a.shape} and {b.shape}")
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
    operands = _match_dtypes("einsum", *[_lift(o) for o in operands])
    for i, o in enumerate(operands):
        _check_float("einsum", f"operand {i}", o)
    in_specs, output = _einsum_specs(subscripts, operands)
    operands, in_specs = zip(*[_einsum_diagonal(o, spec) for o, spec in zip(operands, in_specs)])
    sizes = {}
    for spec, op in zip(in_specs, operands):
        for ch, n in zip(spec, op.shape):
            seen = sizes.setdefault(ch, n)
            if seen == 1:  # a size-1 axis broadcasts against the index's size elsewhere (0 included)
                sizes[ch] = n
            elif n not in (1, seen):
                raise ValueError(f"einsum: index {ch!r} has sizes {seen} and {n} in {subscripts!r}")
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
