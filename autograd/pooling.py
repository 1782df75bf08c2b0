"""Pooling: average / max pooling (1-D, 2-D), adaptive pooling with PyTorch's bins, global pooling, lp pooling.

* ``avg_pool2d`` / ``max_pool2d`` follow torch.nn.functional, ``ceil_mode`` and
  ``count_include_pad`` included: a window that starts inside the (left-padded) input is kept in
  ceil mode, and the average's divisor counts padding but never the ceil-mode overhang.
* ``max_pool2d``'s gradient goes to the *first* maximum of each window in row-major order, the
  element PyTorch's CPU kernel selects; ties are therefore not split (unlike :func:`autograd.max`).  In a
  window holding NaN it goes to the window's last NaN (torch's ``val > max || isnan(val)``), and
  ``return_indices=True`` returns those same elements' flat (H, W) positions, as torch.
* Adaptive average pooling is a linear map: ``A_h @ x @ A_w^T`` with the bin matrices
  ``A[i, j] = 1 / |bin_i|`` for ``j`` in ``[floor(i*H/o), ceil((i+1)*H/o))`` (bins may overlap), applied by
  :func:`autograd._separable.separable`, so a NaN or infinity reaches only the outputs whose bin holds it.
* Every pool accepts an unbatched input ((C, L), (C, H, W)) as torch does.
"""
from __future__ import annotations

import operator

import numpy as _np

from . import _conv_kernels, backend, ops
from ._conv_kernels import Geometry, Phases
from ._separable import AxisMap, separable
from ._threads import parallel_for
from .backend import xp
from .conv import _check_ndim, _pair, with_batch, without_batch
from .tensor import Tensor, is_grad_enabled, record


def _pool_geometry(size, kernel, stride, padding, dilation, ceil_mode, name="pooling"):
    """Output length and the extra right padding that ceil mode needs (PyTorch's rule)."""
    if size < 1:  # as PyTorch: "Expected 3D or 4D input with non-zero dims", even where padding would fit
        raise ValueError(f"{name}: input spatial sizes must be positive, got a size of {size}")
    span = dilation * (kernel - 1) + 1
    numerator = size + 2 * padding - span
    out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the right padding only
    # In ceil mode a window may be longer than the (padded) input: PyTorch keeps the one window that
    # starts inside it (max_pool2d(3, 2, ceil_mode=True) of a 2-row map gives 1 row, as Caffe's pooling)
    # and refuses only an empty output.
    if out < 1:
        raise ValueError(
            f"{name}: kernel_size {kernel} (dilation {dilation}) does not fit an input of size {size} "
            f"with padding {padding}" + ("" if ceil_mode else " (ceil_mode=False)")
        )
    extra = max(0, (out - 1) * stride + span - (size + 2 * padding))
    return out, extra


def _pool_args(x, kernel_size, stride, padding, dilation, name):
    """Checked pooling arguments; ``x`` must be 4-D here (unbatched inputs get their batch axis first)."""
    x = ops._lift(x)
    _check_ndim(x, 4, name)
    ops._check_float(name, "input", x)
    kernel = _pair(kernel_size, "kernel_size", op=name)
    stride = kernel if stride is None or stride == () else _pair(stride, "stride", op=name)
    padding = _pair(padding, "padding", allow_zero=True, op=name)
    dilation = _pair(dilation, "dilation", op=name)
    if any(p * 2 > k for p, k in zip(padding, kernel)):
        raise ValueError(f"{name}: padding {padding} must be at most half of kernel_size {kernel}")
    return x, kernel, stride, padding, dilation


def _geometry(x: Tensor, kernel, stride, padding, dilation, ceil_mode, name) -> Geometry:
    """Window geometry; ceil mode's overhang is extra padding at the bottom/right."""
    h, w = x.shape[2:]
    oh, extra_h = _pool_geometry(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode, name)
    ow, extra_w = _pool_geometry(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode, name)
    pads = ((padding[0], padding[0] + extra_h), (padding[1], padding[1] + extra_w))
    return Geometry(kernel, stride, dilation, pads, 1, (h, w), (oh, ow))


# ---------------------------------------------------------------------------------------------
# max pooling


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """Max pooling over (N, C, H, W) or (C, H, W); padding counts as -inf, as in PyTorch.

    A running ``maximum`` over the kh*kw windows, read as contiguous slices of the stride phases of
    the padded input (:class:`autograd._conv_kernels.Phases`, no im2col tensor).  NaN propagates as in
    PyTorch.  The gradient goes to the first maximal tap of each window in row-major order, and in a
    window holding NaN to its last NaN -- both PyTorch's rule (``val > max || isnan(val)``); a window of
    -inf only routes to its first element inside the input, as torch.

    With ``return_indices=True`` the result is ``(values, indices)``: ``indices`` (an int64 backend array
    of the output's shape) holds the flat position ``row * W + col`` of each chosen element within its
    (H, W) plane, as torch returns them.
    """
    return _max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, "max_pool2d")


def _max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, name):
    """:func:`max_pool2d`, its errors naming ``name`` (the 1-D pool runs on it)."""
    x, added = with_batch(x, 2, name)
    x, kernel, stride, padding, dilation = _pool_args(x, kernel_size, stride, padding, dilation, name)
    geo = _geometry(x, kernel, stride, padding, dilation, ceil_mode, name)
    out, tap = _max_pool_taps(x, geo, return_indices)
    if not return_indices:
        return without_batch(out, added)
    return without_batch((out, _tap_positions(tap, geo)), added)


def _max_pool_taps(x: Tensor, geo: Geometry, want_taps: bool):
    """(max-pooled x, each window's chosen tap or None): an (N, C, oh, ow) Tensor and int array.

    The taps are computed when the gradient needs them or ``want_taps`` asks for them.
    """
    if _conv_kernels.whole_batch(x.shape[0]):  # launch-bound backends: all samples in one pass
        out, tap = _max_pool_taps(_fold_batch(x), geo, want_taps)
        shape = tuple(x.shape[:2]) + geo.out_size
        return _unfold_batch(out, x), (None if tap is None else xp.reshape(tap, shape))
    layout = Phases(geo)
    out = xp.empty(x.shape[:2] + geo.out_size, dtype=x.dtype)
    needs_grad = x.requires_grad and is_grad_enabled()
    needs_tap = want_taps or needs_grad
    tap = xp.empty(out.shape, dtype=xp.int8 if len(layout.taps) <= 127 else xp.int32) if needs_tap else None

    def sample(n, nan_rule=False):
        windows = _tap_windows(layout, layout.split(x.data[n], -_np.inf))
        rows = xp.array(windows[0], copy=True)
        first = xp.zeros(rows.shape, dtype=tap.dtype) if needs_tap else None
        for t, window in enumerate(windows[1:], start=1):
            if needs_tap:  # taps ascend, so the last strict improvement is the first maximum
                better = window > rows
                if nan_rule:  # torch's test, val > max || isnan(val): the last NaN of the window wins
                    better |= xp.isnan(window)
                xp.maximum(first, better * tap.dtype.type(t), out=first)
            xp.maximum(rows, window, out=rows)
        out[n] = layout.crop(rows)
        if needs_tap:
            tap[n] = layout.crop(first)

    parallel_for(sample, x.shape[0], x.size)
    if needs_tap and not ops._all_finite(out):
        # a window may hold NaN: route as torch (finite data: one sum); a window of -inf kept tap 0,
        # which may be padding: torch picks its first element inside the input
        parallel_for(lambda n: sample(n, nan_rule=True), x.shape[0], x.size)
        tap = _taps_inside(tap, geo)
    if not needs_grad:
        return Tensor(out), tap
    return record(out, ((x, lambda g: _scatter_taps(g, tap, geo)),)), tap


def _tap_coordinates(tap, geo: Geometry):
    """The (row, column) of the input that each window's tap reads: two int64 arrays of tap's shape.

    Tap t is (i, j) = divmod(t, kw) (row-major); window (p, q) reads row p*sh - top + i*dh and column
    q*sw - left + j*dw (negative or past the end in the padding).
    """
    (sh, sw), (dh, dw), ((top, _), (left, _)) = geo.stride, geo.dilation, geo.pads
    oh, ow = geo.out_size
    tap = tap.astype(xp.int64)
    i, j = tap // geo.kernel[1], tap % geo.kernel[1]
    rows = xp.reshape(xp.arange(oh, dtype=xp.int64) * sh - top, (oh, 1)) + i * dh
    cols = xp.reshape(xp.arange(ow, dtype=xp.int64) * sw - left, (1, ow)) + j * dw
    return rows, cols


def _taps_inside(tap, geo: Geometry):
    """``tap`` with each tap that reads padding (only a window whose inputs are all -inf keeps one) moved
    to the window's first tap inside the input, the element torch's kernel starts from."""
    rows, cols = _tap_coordinates(tap, geo)
    (h, w) = geo.in_size
    outside = (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)
    if not bool(xp.any(outside)):
        return tap
    first = []
    for out, s, d, (lo, _), k, n in zip(geo.out_size, geo.stride, geo.dilation, geo.pads, geo.kernel, geo.in_size):
        reads = _np.arange(out)[:, None] * s - lo + _np.arange(k)[None, :] * d  # (out, k) positions read
        first.append(_np.argmax((reads >= 0) & (reads < n), axis=1))  # every window has one inside
    inside = backend.from_numpy((first[0][:, None] * geo.kernel[1] + first[1][None, :]).astype(tap.dtype))
    return xp.where(outside, inside, tap)


def _tap_positions(tap, geo: Geometry):
    """Each window's chosen tap as the flat input position ``row * W + col`` it reads (int64, as torch)."""
    rows, cols = _tap_coordinates(tap, geo)
    return rows * geo.in_size[1] + cols


def _fold_batch(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (1, N*C, H, W): pooling treats channels independently, so samples can be channels."""
    n, c, h, w = x.shape
    return ops.reshape(x, (1, n * c, h, w))


def _unfold_batch(out: Tensor, x: Tensor) -> Tensor:
    return ops.reshape(out, tuple(x.shape[:2]) + tuple(out.shape[2:]))


def _tap_windows(layout: Phases, phases) -> list:
    """Every tap's window of one sample as a (C, oh*cols) contiguous slice of its phase."""
    return [phases[phase, :, start : start + layout.length] for _, _, phase, start in layout.taps]


def _scatter_taps(g, tap, geo: Geometry) -> Tensor:
    """Each output's cotangent added at its chosen tap (N, C, oh, ow) -> (N, C, H, W); VJP: _gather_taps."""
    g = ops._lift(g)
    layout = Phases(geo)
    dx = xp.empty(g.shape[:2] + geo.in_size, dtype=g.dtype)

    def sample(n):
        g_rows, tap_rows = layout.extend(g.data[n]), layout.extend(tap[n])
        phases = layout.zeros(g.shape[1:2], g.dtype)
        for t, window in enumerate(_tap_windows(layout, phases)):
            # an addition (not a masked copy): windows may overlap, and the zero cotangent of the
            # padding columns of g_rows may land on real pixels of the next row
            window += g_rows * (tap_rows == t)
        dx[n] = layout.merge(phases)

    parallel_for(sample, g.shape[0], g.size * len(layout.taps))
    return record(dx, ((g, lambda a: _gather_taps(a, tap, geo)),))


def _gather_taps(a, tap, geo: Geometry) -> Tensor:
    """The value of ``a`` at each window's chosen tap (N, C, H, W) -> (N, C, oh, ow); VJP: _scatter_taps."""
    a = ops._lift(a)
    layout = Phases(geo)
    out = xp.empty(a.shape[:2] + geo.out_size, dtype=a.dtype)

    def sample(n):
        tap_rows = layout.extend(tap[n])
        rows = xp.zeros((a.shape[1], layout.length), dtype=a.dtype)
        for t, window in enumerate(_tap_windows(layout, layout.split(a.data[n]))):
            rows += window * (tap_rows == t)
        out[n] = layout.crop(rows)

    parallel_for(sample, a.shape[0], a.size)
    return record(out, ((a, lambda g: _scatter_taps(g, tap, geo)),))


# ---------------------------------------------------------------------------------------------
# average pooling


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override=None) -> Tensor:
    """Average pooling over (N, C, H, W) or (C, H, W), as torch.nn.functional.avg_pool2d.

    ``divisor_override``: a nonzero int that replaces every window's divisor.  A NaN or infinity reaches
    exactly the outputs whose window holds it, whichever path (window sums or matrix products) runs.
    """
    return _avg_pool2d_named(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                             "avg_pool2d")


def _avg_pool2d_named(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, name):
    """:func:`avg_pool2d`, its errors naming ``name`` (the 1-D pool runs on it)."""
    x, added = with_batch(x, 2, name)
    x, kernel, stride, padding, dilation = _pool_args(x, kernel_size, stride, padding, 1, name)
    divisor_override = _divisor(divisor_override, name)
    geo = _geometry(x, kernel, stride, padding, dilation, ceil_mode, name)
    return without_batch(_avg_pool2d(x, geo, count_include_pad, divisor_override), added)


def _avg_pool2d(x: Tensor, geo: Geometry, count_include_pad, divisor_override) -> Tensor:
    """Average pooling of a checked (N, C, H, W) input over the windows of ``geo``."""
    kernel, stride, padding = geo.kernel, geo.stride, (geo.pads[0][0], geo.pads[1][0])
    extra = (geo.pads[0][1] - padding[0], geo.pads[1][1] - padding[1])
    if _separable_avg(kernel, stride):
        # a window average is separable: (rows of window averages) @ x @ (columns of them).T
        # (a window sum over a given divisor: weights 1 / divisor on the rows, 1 on the columns)
        scales = (None, None) if divisor_override is None else (1.0 / divisor_override, 1.0)
        rows, cols = (_window_map(*axis, count_include_pad, scale)
                      for *axis, scale in zip(x.shape[2:], kernel, stride, padding, extra, scales))
        return separable(x, rows, cols)
    if _conv_kernels.whole_batch(x.shape[0]):  # launch-bound backends: all samples in one pass
        return _unfold_batch(_avg_pool2d(_fold_batch(x), geo, count_include_pad, divisor_override), x)
    total = _window_sum(x, geo)
    if divisor_override is not None:
        return ops.div(total, float(divisor_override))
    divisor = _avg_divisor(x.shape[2:], kernel, stride, padding, extra, count_include_pad, x.dtype)
    return ops.div(total, Tensor(divisor))


def _divisor(divisor_override, name: str = "avg_pool2d"):
    """``divisor_override`` validated: None or a nonzero int (torch's rule; 0 would divide by zero)."""
    if divisor_override is None:
        return None
    if isinstance(divisor_override, bool):
        raise TypeError(f"{name}: divisor_override must be a nonzero int or None, got {divisor_override!r}")
    try:
        value = operator.index(divisor_override)
    except TypeError:
        raise TypeError(f"{name}: divisor_override must be a nonzero int or None, "
                        f"got {divisor_override!r}") from None
    if value == 0:
        raise ValueError(f"{name}: divisor_override must be a nonzero int or None, got 0")
    return value


#: Average pools with a stride of 2 or more, or at least this many taps per window, are two matrix
#: products (:func:`autograd._separable.separable`) rather than tap-by-tap window sums (:func:`_window_sum`).
SEPARABLE_MIN_TAPS = 16


def _separable_avg(kernel, stride) -> bool:
    """Whether average pooling runs as ``rows @ x @ cols.T`` with per-axis window matrices.

    Measured forward+backward on 2 cores, interleaved (float32 / float64, ms): 7x7 stride 4 on
    (8, 256, 28, 28) 11.4 / 17.1 -> 2.2 / 3.5; 3x3 stride 2 on (8, 64, 56, 56) 7.1 / 10.6 -> 4.6 / 8.4;
    2x2 on (8, 256, 28, 28) 5.4 / 6.9 -> 3.0 / 5.7.  At stride 1 the matrices are (H, H) bands and the
    window sums win (3x3 on (8, 64, 56, 56): 10.3 / 15.4 against 11.6 / 20.7).
    """
    return min(stride) >= 2 or kernel[0] * kernel[1] >= SEPARABLE_MIN_TAPS


def _window_map(size: int, k: int, s: int, p: int, extra: int, count_include_pad, scale=None) -> AxisMap:
    """(out, size) map of one axis of average pooling: row i weights the input positions in window i.

    The weights are 1 / (window i's divisor) -- PyTorch's count, with or without the padding
    (``count_include_pad``) -- or ``scale`` where one is given.  Each window reads exactly its inputs.
    """
    counts, windows = _axis_windows(size, k, s, p, extra, count_include_pad)
    matrix = _np.zeros((len(windows), size), dtype=_np.float64)
    for i, (start, stop) in enumerate(windows):
        matrix[i, start:stop] = 1.0 / counts[i] if scale is None else scale
    return AxisMap(matrix)


def _axis_windows(n: int, k: int, s: int, p: int, e: int, count_include_pad: bool):
    """Per window of one axis: PyTorch's divisor, and the [start, stop) input positions it covers.

    Window i covers padded positions [i*s, i*s + k) of n + 2p + e (e: the ceil-mode overhang); padding
    counts towards the divisor with ``count_include_pad``, the overhang never.
    """
    positions = _np.arange(n + 2 * p + e)
    if count_include_pad:
        valid = positions < n + 2 * p
    else:
        valid = (positions >= p) & (positions < n + p)
    out = (n + 2 * p + e - k) // s + 1
    counts = _np.array([valid[i * s : i * s + k].sum() for i in range(out)], dtype=_np.float64)
    windows = [(min(max(i * s - p, 0), n), min(max(i * s - p + k, 0), n)) for i in range(out)]
    return counts, windows


def _window_sum(x, geo: Geometry) -> Tensor:
    """Sum of each zero-padded window, tap by tap in row-major order (PyTorch's order); VJP: its adjoint."""
    x = ops._lift(x)
    layout = Phases(geo)
    out = xp.empty(x.shape[:2] + geo.out_size, dtype=x.dtype)

    def sample(n):
        windows = _tap_windows(layout, layout.split(x.data[n]))
        rows = xp.array(windows[0], copy=True)
        for window in windows[1:]:
            rows += window
        out[n] = layout.crop(rows)

    parallel_for(sample, x.shape[0], x.size)
    return record(out, ((x, lambda g: _window_sum_adjoint(g, geo)),))


def _window_sum_adjoint(g, geo: Geometry) -> Tensor:
    """Every window receives its output's cotangent: (N, C, oh, ow) -> (N, C, H, W); VJP: _window_sum."""
    g = ops._lift(g)
    layout = Phases(geo)
    dx = xp.empty(g.shape[:2] + geo.in_size, dtype=g.dtype)

    def sample(n):
        g_rows = layout.extend(g.data[n])
        phases = layout.zeros(g.shape[1:2], g.dtype)
        for window in _tap_windows(layout, phases):
            window += g_rows
        dx[n] = layout.merge(phases)

    parallel_for(sample, g.shape[0], g.size * len(layout.taps))
    return record(dx, ((g, lambda a: _window_sum(a, geo)),))


def _avg_divisor(size, kernel, stride, padding, extra, count_include_pad, dtype):
    """Per-output-position divisor (oh, ow), computed on the host once and moved to the backend."""
    counts = [_axis_windows(n, k, s, p, e, count_include_pad)[0]
              for n, k, s, p, e in zip(size, kernel, stride, padding, extra)]
    divisor = _np.outer(counts[0], counts[1]).astype(_np.dtype(dtype))
    return backend.from_numpy(divisor)


# ---------------------------------------------------------------------------------------------
# max over one axis, gathers along an axis


def take_max(a, axis: int, nan: str = "first") -> Tensor:
    """Max over one axis, routing the gradient to the first maximal element (torch.max(dim) rule).

    Where the axis holds NaN the result is NaN and the gradient goes to the first NaN (``torch.max(dim)``),
    or with ``nan="last"`` to the last one (PyTorch's adaptive max pooling, ``val > max || isnan(val)``).
    """
    return _take_max(a, axis, nan)[0]


def _take_max(a, axis: int, nan: str = "first"):
    """(max over ``axis``, the position along it of the element chosen): :func:`take_max` and its index."""
    a = ops._lift(a)
    if nan not in ("first", "last"):
        raise ValueError(f"take_max: nan must be 'first' or 'last', got {nan!r}")
    if a.dtype.kind == "c":
        raise TypeError(f"take_max: input must be real (complex numbers have no order), got dtype {a.dtype}")
    axis = ops._one_axis(axis, a.ndim, "take_max")
    if a.ndim == 0:
        return a, xp.zeros((), dtype=xp.int64)
    if a.shape[axis] == 0:
        raise ValueError(f"take_max: cannot take the maximum over axis {axis} of size 0 (shape {a.shape})")
    index = xp.expand_dims(xp.argmax(a.data, axis=axis), axis)  # the first maximum, or the first NaN
    picked = xp.take_along_axis(a.data, index, axis=axis)
    if nan == "last" and a.dtype.kind == "f" and not ops._all_finite(picked):
        # a row holds NaN exactly where its pick is NaN (one sum over the picks): take its last NaN
        last = a.shape[axis] - 1 - xp.argmax(xp.flip(xp.isnan(a.data), axis=axis), axis=axis, keepdims=True)
        index = xp.where(xp.any(xp.isnan(a.data), axis=axis, keepdims=True), last, index)
        picked = xp.take_along_axis(a.data, index, axis=axis)
    shape = a.shape
    out = record(picked, ((a, lambda g: _put_along_axis_add(shape, index, g, axis)),))
    return ops.squeeze(out, axis), xp.squeeze(index, axis)


def take_along_axis(a, indices, axis) -> Tensor:
    """numpy.take_along_axis (indices broadcast against ``a`` off ``axis``; ``axis=None``: of the flattened
    tensor and indices, as NumPy and torch.take_along_dim); the VJP scatters back, duplicates accumulating."""
    a = ops._lift(a)
    indices = indices.data if isinstance(indices, Tensor) else indices
    if axis is None:
        return take_along_axis(ops.reshape(a, (a.size,)), xp.reshape(indices, (-1,)), 0)
    axis = ops._one_axis(axis, a.ndim, "take_along_axis")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"take_along_axis: indices must be integers, got dtype {indices.dtype}")
    if indices.ndim != a.ndim:
        raise ValueError(f"take_along_axis: indices must have as many axes as the input ({a.ndim}), got shape "
                         f"{tuple(indices.shape)}")
    out = xp.take_along_axis(a.data, indices, axis=axis)
    shape = a.shape
    return record(out, ((a, lambda g: _put_along_axis_add(shape, indices, g, axis)),))


def _put_along_axis_add(shape, indices, values, axis) -> Tensor:
    """Zeros of ``shape`` with ``values`` (the shape of take_along_axis's output) added where they were taken.

    The index grid is built on the output's (broadcast) shape: off ``axis`` an output position reads the
    input at the same position, or at 0 where the input has size 1 and was broadcast.
    """
    values = ops._lift(values)
    out_shape = values.shape
    grids = []
    for i, n in enumerate(out_shape):
        if i == axis:
            grids.append(xp.broadcast_to(indices, out_shape))
            continue
        position = xp.arange(n) if shape[i] == n else xp.zeros(n, dtype=xp.int64)
        grids.append(xp.reshape(position, (1,) * i + (n,) + (1,) * (len(out_shape) - i - 1)))
    return ops.index_add(shape, tuple(grids), values)


# ---------------------------------------------------------------------------------------------
# 1-D and lp pooling


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """Max pooling over (N, C, L) or (C, L); ``return_indices`` as :func:`max_pool2d` (positions along L)."""
    op = "max_pool1d"
    x, added = with_batch(x, 1, op)
    stride = kernel_size if stride is None or stride == () else stride
    out = _max_pool2d(ops.expand_dims(x, 2), (1, _int(kernel_size, "kernel_size", op)), (1, _int(stride, "stride", op)),
                      (0, _int(padding, "padding", op)), (1, _int(dilation, "dilation", op)), ceil_mode,
                      return_indices, op)
    if return_indices:  # a (1, L) plane: the flat position is the column
        return without_batch((ops.squeeze(out[0], 2), out[1][:, :, 0]), added)
    return without_batch(ops.squeeze(out, 2), added)


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """Average pooling over (N, C, L) or (C, L)."""
    op = "avg_pool1d"
    x, added = with_batch(x, 1, op)
    stride = kernel_size if stride is None or stride == () else stride
    out = _avg_pool2d_named(ops.expand_dims(x, 2), (1, _int(kernel_size, "kernel_size", op)),
                            (1, _int(stride, "stride", op)), (0, _int(padding, "padding", op)), ceil_mode,
                            count_include_pad, None, op)
    return without_batch(ops.squeeze(out, 2), added)


def _int(value, name: str, op: str) -> int:
    """An int, or the single entry of a 1-tuple (the 1-D pooling functions accept both)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(f"{op}: {name} must be an int or a 1-tuple, got {value!r}")
        (value,) = value
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a 1-tuple, got {value!r}") from None


def lp_pool2d(x, norm_type: float, kernel_size, stride=None, ceil_mode: bool = False) -> Tensor:
    """Power-average pooling ``(sum over the window of x^p)^(1/p)`` of (N, C, H, W) or (C, H, W).

    Composed exactly as torch.nn.functional.lp_pool2d: ``avg_pool2d(x^p) * kh * kw``, passed through
    ``sign(s) * relu(|s|)`` (so a window summing to 0 passes gradient 0, not NaN), then ``^(1/p)``.  As in
    torch, a ceil-mode window that overhangs the input is the average over its in-bounds part times kh * kw.
    """
    op = "lp_pool2d"
    x = _lp_input(x, norm_type, op)
    kh, kw = _pair(kernel_size, "kernel_size", op=op)
    pooled = _avg_pool2d_named(ops.pow(x, norm_type), (kh, kw), stride, 0, ceil_mode, True, None, op)
    return _lp_root(pooled, kh * kw, norm_type)


def lp_pool1d(x, norm_type: float, kernel_size, stride=None, ceil_mode: bool = False) -> Tensor:
    """Power-average pooling of (N, C, L) or (C, L), as torch.nn.functional.lp_pool1d (see :func:`lp_pool2d`)."""
    op = "lp_pool1d"
    x = _lp_input(x, norm_type, op)
    k = _int(kernel_size, "kernel_size", op)
    x, added = with_batch(x, 1, op)
    stride = k if stride is None or stride == () else _int(stride, "stride", op)
    pooled = _avg_pool2d_named(ops.expand_dims(ops.pow(x, norm_type), 2), (1, k), (1, stride), 0, ceil_mode, True,
                               None, op)
    return without_batch(ops.squeeze(_lp_root(pooled, k, norm_type), 2), added)


def _lp_input(x, norm_type, op: str) -> Tensor:
    """The checked input of an lp pool (real floating point) and a real ``norm_type``."""
    x = ops._lift(x)
    ops._check_float(op, "input", x)
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float, _np.integer, _np.floating)):
        raise TypeError(f"{op}: norm_type must be a real number, got {norm_type!r}")
    return x


def _lp_root(pooled: Tensor, taps: int, norm_type: float) -> Tensor:
    """torch's tail of lp_pool: (sign(s) * relu(|s|) * taps) ** (1 / p)."""
    total = ops.mul(ops.mul(ops.sign(pooled), ops.relu(ops.abs(pooled))), float(taps))
    return ops.pow(total, 1.0 / norm_type)


# ---------------------------------------------------------------------------------------------
# adaptive pooling


def adaptive_bins(size: int, out: int) -> list:
    """PyTorch's adaptive-pool bins: [floor(i*size/out), ceil((i+1)*size/out)) for i < out."""
    if out < 0:
        raise ValueError(f"adaptive pooling: output_size must be >= 0, got {out}")
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _adaptive_avg_host(size: int, out: int) -> _np.ndarray:
    """The host (out, size) float64 averaging matrix of adaptive average pooling."""
    matrix = _np.zeros((out, size), dtype=_np.float64)
    for i, (start, stop) in enumerate(adaptive_bins(size, out)):
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix


def adaptive_avg_matrix(size: int, out: int, dtype=_np.float64):
    """The (out, size) averaging matrix of adaptive average pooling, on the backend."""
    return backend.from_numpy(_adaptive_avg_host(size, out).astype(dtype))


def adaptive_avg_map(size: int, out: int):
    """The :class:`AxisMap` of one axis of adaptive average pooling (None when ``out == size``: the identity)."""
    return None if out == size else AxisMap(_adaptive_avg_host(size, out))


def output_sizes(output_size, sizes, name: str) -> tuple:
    """An adaptive pool's output size per spatial axis: an int for all, or one int (or None: keep) per axis.

    Ints only (1.5 and True are a TypeError); 0 is allowed and gives an empty output, as in torch.
    """
    if not isinstance(output_size, (tuple, list)):
        output_size = (output_size,) * len(sizes)
    if len(output_size) != len(sizes):
        raise ValueError(f"{name}: output_size must be an int or {len(sizes)} ints (or None), got {output_size!r}")
    out = []
    for value, size in zip(output_size, sizes):
        if value is None:
            out.append(size)
            continue
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name}: output_size must hold ints (or None), got {output_size!r}") from None
        if value < 0:
            raise ValueError(f"{name}: output_size must be >= 0, got {output_size!r}")
        out.append(value)
    return tuple(out)


def _adaptive_args(x, output_size, op: str, spatial: int):
    """(x with a batch axis, whether one was added, the output sizes): a checked real floating-point input
    with non-empty non-batch axes (a bin of an empty axis has no mean)."""
    x, added = with_batch(x, spatial, op)
    ops._check_float(op, "input", x)
    return x, added, output_sizes(output_size, x.shape[2:], op)


def adaptive_avg_pool2d(x, output_size) -> Tensor:
    """Adaptive average pooling (N, C, H, W) -> (N, C, oh, ow) (or unbatched (C, H, W)) as two matrix
    products (exact at NaN/inf: :func:`autograd._separable.separable`)."""
    x, added, (oh, ow) = _adaptive_args(x, output_size, "adaptive_avg_pool2d", 2)
    h, w = x.shape[2:]
    if (oh, ow) == (1, 1):
        return without_batch(_spatial_mean(x, keepdims=True), added)
    return without_batch(separable(x, adaptive_avg_map(h, oh), adaptive_avg_map(w, ow)), added)


def adaptive_max_pool2d(x, output_size, return_indices: bool = False):
    """Adaptive max pooling of (N, C, H, W) or (C, H, W); the gradient goes to the first maximum of each bin,
    or its last NaN (as PyTorch).

    Vectorised: every bin is gathered into a fixed-length window (bins of one axis differ in length
    by at most one, shorter ones are padded with -inf), then one ``take_max`` runs over all windows.
    ``return_indices=True`` also returns the flat position ``row * W + col`` of each chosen element (as torch).
    """
    x, added, (oh, ow) = _adaptive_args(x, output_size, "adaptive_max_pool2d", 2)
    n, c, h, w = x.shape
    if oh == 0 or ow == 0:
        values = ops.getitem(x, (slice(None), slice(None), slice(0, oh), slice(0, ow)))  # empty, zero gradient
        result = (values, xp.zeros(values.shape, dtype=xp.int64)) if return_indices else values
        return without_batch(result, added)
    if (oh, ow) == (1, 1):  # one bin: the plane flattened, whose index is already the flat position
        values, chosen = _take_max(ops.reshape(x, (n, c, h * w)), axis=2, nan="last")
        values = ops.reshape(values, (n, c, 1, 1))
        result = (values, xp.reshape(chosen, (n, c, 1, 1)).astype(xp.int64)) if return_indices else values
        return without_batch(result, added)
    if h % oh == 0 and w % ow == 0 and (h // oh) * (w // ow) <= 64:
        # equal, disjoint bins: max pooling with kernel = stride = bin size, same routing (NaN included)
        return without_batch(max_pool2d(x, (h // oh, w // ow), return_indices=return_indices), added)
    rows, rows_valid = _bin_windows(h, oh)
    cols, cols_valid = _bin_windows(w, ow)
    gathered = x[:, :, backend.from_numpy(rows)][..., backend.from_numpy(cols)]  # (N, C, oh, Lh, ow, Lw)
    valid = rows_valid[:, :, None, None] & cols_valid[None, None, :, :]
    if not valid.all():
        gathered = ops.where(backend.from_numpy(valid), gathered, -_np.inf)
    windows = ops.reshape(ops.transpose(gathered, (0, 1, 2, 4, 3, 5)),
                          (n, c, oh, ow, rows.shape[1] * cols.shape[1]))
    values, chosen = _take_max(windows, axis=4, nan="last")  # row-major order inside a bin, as PyTorch scans it
    if not return_indices:
        return without_batch(values, added)
    # window entry k of bin (p, q) is (a, b) = divmod(k, Lw): input row rows[p, a], column cols[q, b]
    a, b = chosen // cols.shape[1], chosen % cols.shape[1]
    row_of = backend.from_numpy(rows)[xp.reshape(xp.arange(oh), (oh, 1)), a]
    col_of = backend.from_numpy(cols)[xp.reshape(xp.arange(ow), (1, ow)), b]
    return without_batch((values, (row_of * w + col_of).astype(xp.int64)), added)


def _bin_windows(size: int, out: int):
    """Host (out, L) indices of each adaptive bin, padded to the longest bin, and their validity mask."""
    bins = adaptive_bins(size, out)
    length = max(stop - start for start, stop in bins)
    offsets = _np.arange(length)
    starts = _np.array([start for start, _ in bins])[:, None]
    stops = _np.array([stop for _, stop in bins])[:, None]
    valid = starts + offsets < stops
    return _np.where(valid, starts + offsets, starts), valid


def adaptive_avg_pool1d(x, output_size) -> Tensor:
    """Adaptive average pooling of (N, C, L) or (C, L)."""
    x, added, (size,) = _adaptive_args(x, output_size, "adaptive_avg_pool1d", 1)
    return without_batch(ops.squeeze(adaptive_avg_pool2d(ops.expand_dims(x, 2), (1, size)), 2), added)


def adaptive_max_pool1d(x, output_size, return_indices: bool = False):
    """Adaptive max pooling of (N, C, L) or (C, L); ``return_indices`` gives positions along L."""
    x, added, (size,) = _adaptive_args(x, output_size, "adaptive_max_pool1d", 1)
    out = adaptive_max_pool2d(ops.expand_dims(x, 2), (1, size), return_indices)
    if return_indices:
        return without_batch((ops.squeeze(out[0], 2), out[1][:, :, 0]), added)
    return without_batch(ops.squeeze(out, 2), added)


# ---------------------------------------------------------------------------------------------
# global pooling


def _global_input(x, op: str) -> Tensor:
    """A checked (N, C, H, W) real floating-point input with non-empty spatial axes."""
    x = ops._lift(x)
    _check_ndim(x, 4, op)
    ops._check_float(op, "input", x)
    if 0 in x.shape[2:]:
        raise ValueError(f"{op}: input must have non-empty spatial axes, got shape {x.shape}")
    return x


def global_avg_pool2d(x, keepdims: bool = True) -> Tensor:
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1) (or (N, C))."""
    return _spatial_mean(_global_input(x, "global_avg_pool2d"), keepdims)


def _spatial_mean(x: Tensor, keepdims: bool) -> Tensor:
    """Mean over H and W as one tape node (``ops.mean`` is two: sum, then div); the sum takes ops.sum's
    BLAS path on NumPy.  The VJP spreads g / (H*W) as a broadcast view."""
    n, c, h, w = x.shape
    total = ops._sum_data(x.data, (2, 3), keepdims=True)
    mean = record(total / (h * w), ((x, lambda g: ops.broadcast_to(ops.div(g, float(h * w)), (n, c, h, w))),))
    return mean if keepdims else ops.reshape(mean, (n, c))


def global_max_pool2d(x, keepdims: bool = True) -> Tensor:
    """Max over H and W, gradient to the first maximum or the last NaN (as adaptive_max_pool2d(x, 1))."""
    out = adaptive_max_pool2d(_global_input(x, "global_max_pool2d"), 1)
    return out if keepdims else ops.reshape(out, out.shape[:2])
