"""Separable linear maps ``rows @ x @ cols.T`` on the last two axes, with PyTorch's non-finite semantics.

Average pooling with a stride, adaptive average pooling and ``interpolate`` are linear maps, applied as
two matrix products (docs/architecture.md, "Linear maps as matrices").  In IEEE arithmetic a dense product
smears a non-finite input over the whole axis: ``0 * NaN`` and ``0 * inf`` are NaN, so one NaN pixel would
turn a whole output plane NaN, where PyTorch -- which sums each window -- gives NaN only in the outputs
whose window holds it.  So each axis of a map (:class:`AxisMap`) also says which inputs each output
*reads*, and which it reads through a weight of exactly 0, and:

* finite input (the common case) takes the plain matrix products, unchanged;
* input with a NaN or an infinity takes an exact path, one axis at a time: the same product of the input
  with its non-finite entries replaced by 0 gives every output's finite part, and products of 0/1
  matrices count, per output, which non-finite inputs it reads.  An output is then NaN where it reads a
  NaN, an infinity through a zero weight (torch computes ``0 * inf`` there), or infinities of both
  signs; else +inf or -inf where it reads infinities of one sign (weight signs included); else its
  finite part.  Applying the two axes one after the other gives the same placement as reading the 2-D
  window at once.

Detection costs one sum over the smaller of the map's input and output.  Checking the output is enough:
a non-finite input reaches every output of a dense product (through a weight or through ``0 * x``), so a
finite output proves a finite input (an overflow to inf only sends the call down the exact path, which
gives the same numbers).  The VJP of the map is the transposed map, with the same guarantee for a
non-finite cotangent.  On CuPy the check synchronises with the device once per map.
"""
from __future__ import annotations

import numpy as _np

from . import backend, ops
from .backend import xp
from .tensor import Tensor, record


class AxisMap:
    """One axis of a separable map: ``out[o] = sum over the inputs i that o reads of weights[o, i] * x[i]``.

    ``weights``: host (out, in) float64 matrix.  ``reads``: host bool (out, in), the inputs each output
    reads (default: the nonzero weights).  ``zero_reads``: host bool (out, in), the inputs an output also
    reads through a weight of exactly 0 -- torch's bilinear computes ``t0 * l0 + t1 * l1`` with both
    neighbours even when a lambda is 0, and an unchanged size as ``t * 1 + t * 0`` -- so that an
    infinity there gives NaN, as ``inf * 0`` does in torch.  A map whose weights are the identity is
    skipped on finite data (a copy) but still applied on the exact path.  Backend copies of the weights
    are made per dtype on first use.
    """

    def __init__(self, weights: _np.ndarray, reads: _np.ndarray | None = None, zero_reads: _np.ndarray | None = None):
        self.weights = weights
        self._reads, self._zero_reads = reads, zero_reads  # completed lazily: only the exact path reads them
        self._identity = None
        self._on_backend = {}
        self._transposed = None

    @property
    def reads(self) -> _np.ndarray:
        """Host bool (out, in): the inputs each output reads (the nonzero weights and the zero reads at least)."""
        reads = self.weights != 0 if self._reads is None else (self._reads | (self.weights != 0))
        return reads if self._zero_reads is None else reads | self._zero_reads

    @property
    def zero_reads(self) -> _np.ndarray:
        """Host bool (out, in): the inputs read through a weight of exactly 0."""
        return _np.zeros(self.weights.shape, dtype=bool) if self._zero_reads is None else self._zero_reads

    @property
    def is_identity(self) -> bool:
        """Whether the weights are the identity matrix (a copy on finite data)."""
        if self._identity is None:
            n, m = self.weights.shape
            self._identity = n == m and _np.array_equal(self.weights, _np.eye(n))
        return self._identity

    @property
    def shape(self) -> tuple:
        return self.weights.shape

    def matrix(self, dtype):
        """The weights as a backend array of ``dtype`` (cached)."""
        dtype = _np.dtype(dtype)
        if dtype not in self._on_backend:
            self._on_backend[dtype] = backend.from_numpy(self.weights.astype(dtype))
        return self._on_backend[dtype]

    @property
    def T(self) -> "AxisMap":  # noqa: N802 - reads like ndarray.T
        """The transposed map (the adjoint of this one), reads transposed too."""
        if self._transposed is None:
            self._transposed = AxisMap(self.weights.T, None if self._reads is None else self._reads.T,
                                       None if self._zero_reads is None else self._zero_reads.T)
            self._transposed._transposed = self
        return self._transposed

    def with_plain_adjoint(self) -> "AxisMap":
        """This map, with an adjoint (:attr:`T`) that reads only the nonzero weights -- for a kernel whose
        backward skips the zero-weight reads of its forward (PyTorch's bicubic backward is a plain copy at an
        unchanged size, where its forward reads the neighbours through weights of 0)."""
        self._transposed = AxisMap(self.weights.T)
        self._transposed._transposed = self
        return self

    def indicator(self, which: str, dtype):
        """A 0/1 backend matrix of ``dtype``: the inputs read ("reads"), read through a zero weight
        ("zero"), or through a positive ("positive") or negative ("negative") weight; None where empty."""
        mask = {"reads": self.reads, "zero": self.zero_reads,
                "positive": self.weights > 0, "negative": self.weights < 0}[which]
        if not mask.any():
            return None
        return backend.from_numpy(mask.astype(_np.dtype(dtype)))


def separable(x, rows: AxisMap | None = None, cols: AxisMap | None = None, rows_first: bool = True) -> Tensor:
    """``rows @ x @ cols.T`` over the last two axes of x (..., H, W) -> (..., oh, ow), exact for non-finite x.

    ``rows`` (oh, H) and ``cols`` (ow, W) are :class:`AxisMap` s (None leaves that axis alone); the
    products broadcast over the leading axes.  ``rows_first`` picks the order of the two products
    (the VJP, ``rows.T @ g @ cols``, applies them in the opposite order, as the composed matmuls did).
    """
    x = ops._lift(x)
    if rows is None and cols is None:
        return x  # the identity on both axes (e.g. adaptive pooling to the input's size)
    out = _apply(x.data, rows, cols, rows_first)
    rows_t = None if rows is None else rows.T
    cols_t = None if cols is None else cols.T
    return record(out, ((x, lambda g: separable(g, rows_t, cols_t, not rows_first)),))


def _steps(rows, cols, rows_first: bool):
    """The (axis map, axis) products in order: -2 for rows (``M @ x``), -1 for cols (``x @ M.T``)."""
    steps = [(rows, -2), (cols, -1)]
    if not rows_first:
        steps.reverse()
    return [(m, axis) for m, axis in steps if m is not None]


def _apply(data, rows, cols, rows_first: bool):
    steps = _steps(rows, cols, rows_first)
    out_shape = list(data.shape)
    for m, axis in steps:
        out_shape[axis] = m.shape[0]
    out_size = int(_np.prod(out_shape, dtype=_np.int64))
    if out_size >= data.size and not ops._all_finite(data):  # check the smaller side (module docstring)
        return _exact(data, steps)
    out = data
    with _np.errstate(invalid="ignore"):  # NaN from 0 * inf here only sends the call down the exact path
        for m, axis in steps:
            if not m.is_identity:  # a copy on finite data (its zero reads only matter for infinities)
                out = _product(m.matrix(data.dtype), out, axis)
    if out is data:
        out = xp.array(data, copy=True)  # a result of its own, as every other path returns
    if out_size < data.size and not ops._all_finite(out):
        return _exact(data, steps)
    return out


def _product(matrix, data, axis: int):
    """``matrix @ data`` along axis -2, or ``data @ matrix.T`` along axis -1 (broadcast over leading axes)."""
    return xp.matmul(matrix, data) if axis == -2 else xp.matmul(data, xp.swapaxes(matrix, 0, 1))


def _exact(data, steps):
    """The map applied axis by axis with the non-finite rule of the module docstring."""
    for m, axis in steps:
        data = _exact_axis(data, m, axis)
    return data


def _exact_axis(data, m: AxisMap, axis: int):
    dtype = data.dtype
    finite = xp.isfinite(data)
    out = _product(m.matrix(dtype), xp.where(finite, data, xp.zeros((), dtype)), axis)
    if bool(xp.all(finite)):
        return out

    def hits(which, mask):
        """Per output, how many entries of ``mask`` it reads through ``which`` weights (0 when none)."""
        indicator = m.indicator(which, dtype)
        return None if indicator is None else _product(indicator, mask.astype(dtype), axis) > 0

    def either(a, b):
        return b if a is None else a if b is None else a | b

    nan, up, down = xp.isnan(data), data == xp.inf, data == -xp.inf
    reads_nan = either(hits("reads", nan), hits("zero", up | down))
    reads_up = either(hits("positive", up), hits("negative", down))
    reads_down = either(hits("positive", down), hits("negative", up))
    for reads, value in ((reads_up, xp.inf), (reads_down, -xp.inf)):
        if reads is not None:
            out = xp.where(reads, xp.asarray(value, dtype=dtype), out)
    if reads_up is not None and reads_down is not None:
        reads_nan = either(reads_nan, reads_up & reads_down)
    if reads_nan is not None:
        out = xp.where(reads_nan, xp.asarray(xp.nan, dtype=dtype), out)
    return out
