"""Pooling: average / max pooling (1-D, 2-D), adaptive pooling with PyTorch's bins, global pooling.

* ``avg_pool2d`` / ``max_pool2d`` follow torch.nn.functional, ``ceil_mode`` and
  ``count_include_pad`` included: a window that starts inside the (left-padded) input is kept in
  ceil mode, and the average's divisor counts padding but never the ceil-mode overhang.
* ``max_pool2d``'s gradient goes to the *first* maximum of each window in row-major order, the
  element PyTorch's CPU kernel selects; ties are therefore not split (unlike :func:`autograd.max`).
* Adaptive average pooling is a linear map: ``A_h @ x @ A_w^T`` with the bin matrices
  ``A[i, j] = 1 / |bin_i|`` for ``j`` in ``[floor(i*H/o), ceil((i+1)*H/o))`` (bins may overlap).
"""
from __future__ import annotations

import operator

import numpy as _np

from . import _conv_kernels, backend, ops
from ._conv_kernels import Geometry, Phases
from ._separable import AxisMap, separable
from ._threads import parallel_for
from .backend import xp
from .conv import _check_ndim, _pair
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


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max pooling over (N, C, H, W); padding counts as -inf, as in PyTorch.

    A running ``maximum`` over the kh*kw windows, read as contiguous slices of the stride phases of
    the padded input (:class:`autograd._conv_kernels.Phases`, no im2col tensor).  NaN propagates as in
    PyTorch.  The gradient goes to the first maximal tap of each window in row-major order, and in a
    window holding NaN to its last NaN -- both PyTorch's rule (``val > max || isnan(val)``).
    """
    x, kernel, stride, padding, dilation = _pool_args(x, kernel_size, stride, padding, dilation, "max_pool2d")
    geo = _geometry(x, kernel, stride, padding, dilation, ceil_mode, "max_pool2d")
    if _conv_kernels.whole_batch(x.shape[0]):  # launch-bound backends: all samples in one pass
        return _unfold_batch(max_pool2d(_fold_batch(x), kernel, stride, padding, dilation, ceil_mode), x)
    layout = Phases(geo)
    out = xp.empty(x.shape[:2] + geo.out_size, dtype=x.dtype)
    needs_tap = x.requires_grad and is_grad_enabled()
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
    if not needs_tap:
        return Tensor(out)
    if not ops._all_finite(out):  # a window may hold NaN: route as torch (finite data: one sum)
        parallel_for(lambda n: sample(n, nan_rule=True), x.shape[0], x.size)
    return record(out, ((x, lambda g: _scatter_taps(g, tap, geo)),))


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


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override=None) -> Tensor:
    """Average pooling over (N, C, H, W), as torch.nn.functional.avg_pool2d.

    ``divisor_override``: a nonzero int that replaces every window's divisor.  A NaN or infinity reaches
    exactly the outputs whose window holds it, whichever path (window sums or matrix products) runs.
    """
    x, kernel, stride, padding, dilation = _pool_args(x, kernel_size, stride, padding, 1, "avg_pool2d")
    divisor_override = _divisor(divisor_override)
    geo = _geometry(x, kernel, stride, padding, dilation, ceil_mode, "avg_pool2d")
    extra = (geo.pads[0][1] - padding[0], geo.pads[1][1] - padding[1])
    if _separable_avg(kernel, stride):
        # a window average is separable: (rows of window averages) @ x @ (columns of them).T
        # (a window sum over a given divisor: weights 1 / divisor on the rows, 1 on the columns)
        scales = (None, None) if divisor_override is None else (1.0 / divisor_override, 1.0)
        rows, cols = (_window_map(*axis, count_include_pad, scale)
                      for *axis, scale in zip(x.shape[2:], kernel, stride, padding, extra, scales))
        return separable(x, rows, cols)
    if _conv_kernels.whole_batch(x.shape[0]):  # launch-bound backends: all samples in one pass
        folded = avg_pool2d(_fold_batch(x), kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        return _unfold_batch(folded, x)
    total = _window_sum(x, geo)
    if divisor_override is not None:
        return ops.div(total, float(divisor_override))
    divisor = _avg_divisor(x.shape[2:], kernel, stride, padding, extra, count_include_pad, x.dtype)
    return ops.div(total, Tensor(divisor))


def _divisor(divisor_override):
    """``divisor_override`` validated: None or a nonzero int (torch's rule; 0 would divide by zero)."""
    if divisor_override is None:
        return None
    if isinstance(divisor_override, bool):
        raise TypeError(f"avg_pool2d: divisor_override must be a nonzero int or None, got {divisor_override!r}")
    try:
        value = operator.index(divisor_override)
    except TypeError:
        raise TypeError(f"avg_pool2d: divisor_override must be a nonzero int or None, "
                        f"got {divisor_override!r}") from None
    if value == 0:
        raise ValueError("avg_pool2d: divisor_override must be a nonzero int or None, got 0")
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


def take_max(a, axis: int, nan: str = "first") -> Tensor:
    """Max over one axis, routing the gradient to the first maximal element (torch.max(dim) rule).

    Where the axis holds NaN the result is NaN and the gradient goes to the first NaN (``torch.max(dim)``),
    or with ``nan="last"`` to the last one (PyTorch's adaptive max pooling, ``val > max || isnan(val)``).
    """
    a = ops._lift(a)
    if a.dtype.kind == "c":
        raise TypeError(f"take_max: input must be real (complex numbers have no order), got dtype {a.dtype}")
    axis = ops._one_axis(axis, a.ndim, "take_max")
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
    return ops.squeeze(out, axis)


def take_along_axis(a, indices, axis: int) -> Tensor:
    """numpy.take_along_axis (indices broadcast against ``a`` off ``axis``); the VJP scatters back, duplicates
    accumulating."""
    a = ops._lift(a)
    indices = indices.data if isinstance(indices, Tensor) else indices
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


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max pooling over (N, C, L)."""
    x = _input_1d(x, "max_pool1d")
    stride = kernel_size if stride is None else stride
    op = "max_pool1d"
    out = max_pool2d(ops.expand_dims(x, 2), (1, _int(kernel_size, "kernel_size", op)), (1, _int(stride, "stride", op)),
                     (0, _int(padding, "padding", op)), (1, _int(dilation, "dilation", op)), ceil_mode)
    return ops.squeeze(out, 2)


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """Average pooling over (N, C, L)."""
    x = _input_1d(x, "avg_pool1d")
    stride = kernel_size if stride is None else stride
    op = "avg_pool1d"
    out = avg_pool2d(ops.expand_dims(x, 2), (1, _int(kernel_size, "kernel_size", op)), (1, _int(stride, "stride", op)),
                     (0, _int(padding, "padding", op)), ceil_mode, count_include_pad)
    return ops.squeeze(out, 2)


def _input_1d(x, op: str) -> Tensor:
    """A checked (N, C, L) real floating-point input of a 1-D pooling op (errors name the 1-D op)."""
    x = ops._lift(x)
    _check_ndim(x, 3, op, layout="(N, C, L)")
    ops._check_float(op, "input", x)
    return x


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


def _output_pair(output_size, h, w, op: str):
    """(oh, ow) from an int, a pair (None keeps the input size) -- ints only, 0 allowed (an empty output)."""
    pair = (output_size, output_size) if not isinstance(output_size, (tuple, list)) else tuple(output_size)
    if len(pair) != 2:
        raise ValueError(f"{op}: output_size must be an int or a pair, got {output_size!r}")
    sizes = []
    for value, size in zip(pair, (h, w)):
        if value is None:
            sizes.append(size)
            continue
        if isinstance(value, bool):
            raise TypeError(f"{op}: output_size must hold ints (or None), got {output_size!r}")
        try:
            sizes.append(operator.index(value))
        except TypeError:
            raise TypeError(f"{op}: output_size must hold ints (or None), got {output_size!r}") from None
    if min(sizes) < 0:
        raise ValueError(f"{op}: output_size must be >= 0, got {output_size!r}")
    return tuple(sizes)


def _adaptive_args(x, output_size, op: str):
    """Checked input (N, C, H, W) with H, W >= 1 (a bin of an empty axis has no mean), and (oh, ow)."""
    x = ops._lift(x)
    _check_ndim(x, 4, op)
    ops._check_float(op, "input", x)
    h, w = x.shape[2:]
    if h == 0 or w == 0:
        raise ValueError(f"{op}: input must have non-empty spatial axes, got shape {x.shape}")
    return x, _output_pair(output_size, h, w, op)


def adaptive_avg_pool2d(x, output_size) -> Tensor:
    """Adaptive average pooling (N, C, H, W) -> (N, C, oh, ow) as two matrix products (exact at NaN/inf)."""
    x, (oh, ow) = _adaptive_args(x, output_size, "adaptive_avg_pool2d")
    h, w = x.shape[2:]
    if (oh, ow) == (1, 1):
        return _spatial_mean(x, keepdims=True)
    rows = None if oh == h else AxisMap(_adaptive_avg_host(h, oh))
    cols = None if ow == w else AxisMap(_adaptive_avg_host(w, ow))
    return separable(x, rows, cols)


def adaptive_max_pool2d(x, output_size) -> Tensor:
    """Adaptive max pooling; the gradient goes to the first maximum of each bin, or its last NaN (as PyTorch).

    Vectorised: every bin is gathered into a fixed-length window (bins of one axis differ in length
    by at most one, shorter ones are padded with -inf), then one ``take_max`` runs over all windows.
    """
    x, (oh, ow) = _adaptive_args(x, output_size, "adaptive_max_pool2d")
    n, c, h, w = x.shape
    if oh == 0 or ow == 0:
        return ops.getitem(x, (slice(None), slice(None), slice(0, oh), slice(0, ow)))  # empty, zero gradient
    if (oh, ow) == (1, 1):
        return ops.reshape(take_max(ops.reshape(x, (n, c, h * w)), axis=2, nan="last"), (n, c, 1, 1))
    if h % oh == 0 and w % ow == 0 and (h // oh) * (w // ow) <= 64:
        # equal, disjoint bins: max pooling with kernel = stride = bin size, same routing
        return max_pool2d(x, (h // oh, w // ow))
    rows, rows_valid = _bin_windows(h, oh)
    cols, cols_valid = _bin_windows(w, ow)
    gathered = x[:, :, backend.from_numpy(rows)][..., backend.from_numpy(cols)]  # (N, C, oh, Lh, ow, Lw)
    valid = rows_valid[:, :, None, None] & cols_valid[None, None, :, :]
    if not valid.all():
        gathered = ops.where(backend.from_numpy(valid), gathered, -_np.inf)
    windows = ops.reshape(ops.transpose(gathered, (0, 1, 2, 4, 3, 5)),
                          (n, c, oh, ow, rows.shape[1] * cols.shape[1]))
    return take_max(windows, axis=4, nan="last")  # row-major order inside a bin, as PyTorch scans it


def _bin_windows(size: int, out: int):
    """Host (out, L) indices of each adaptive bin, padded to the longest bin, and their validity mask."""
    bins = adaptive_bins(size, out)
    length = max(stop - start for start, stop in bins)
    offsets = _np.arange(length)
    starts = _np.array([start for start, _ in bins])[:, None]
    stops = _np.array([stop for _, stop in bins])[:, None]
    valid = starts + offsets < stops
    return _np.where(valid, starts + offsets, starts), valid


def adaptive_avg_pool1d(x, output_size: int) -> Tensor:
    """Adaptive average pooling (N, C, L) -> (N, C, output_size)."""
    x = _input_1d(x, "adaptive_avg_pool1d")
    size = _int(output_size, "output_size", "adaptive_avg_pool1d")
    return ops.squeeze(adaptive_avg_pool2d(ops.expand_dims(x, 2), (1, size)), 2)


def adaptive_max_pool1d(x, output_size: int) -> Tensor:
    """Adaptive max pooling (N, C, L) -> (N, C, output_size)."""
    x = _input_1d(x, "adaptive_max_pool1d")
    size = _int(output_size, "output_size", "adaptive_max_pool1d")
    return ops.squeeze(adaptive_max_pool2d(ops.expand_dims(x, 2), (1, size)), 2)


def global_avg_pool2d(x, keepdims: bool = True) -> Tensor:
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1) (or (N, C))."""
    x, _ = _adaptive_args(x, 1, "global_avg_pool2d")
    return _spatial_mean(x, keepdims)


def _spatial_mean(x: Tensor, keepdims: bool) -> Tensor:
    """Mean over H and W as one tape node (``ops.mean`` is two: sum, then div); the sum takes ops.sum's
    BLAS path on NumPy.  The VJP spreads g / (H*W) as a broadcast view."""
    n, c, h, w = x.shape
    total = ops._sum_data(x.data, (2, 3), keepdims=True)
    mean = record(total / (h * w), ((x, lambda g: ops.broadcast_to(ops.div(g, float(h * w)), (n, c, h, w))),))
    return mean if keepdims else ops.reshape(mean, (n, c))


def global_max_pool2d(x, keepdims: bool = True) -> Tensor:
    """Max over H and W, gradient to the first maximum or the last NaN (as adaptive_max_pool2d(x, 1))."""
    x, _ = _adaptive_args(x, 1, "global_max_pool2d")
    out = adaptive_max_pool2d(x, 1)
    return out if keepdims else ops.reshape(out, out.shape[:2])


