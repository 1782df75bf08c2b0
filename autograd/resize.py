"""Resizing (``interpolate``) as separable linear maps: one resampling matrix per spatial axis.

Each matrix is built on the host from PyTorch's exact index rules and applied with ``matmul`` (``R_h @ x @
R_w^T`` for a plane, one more product along D for a volume), so every mode is exact, differentiable with no
extra code, and identical on NumPy and CuPy.  For an axis of ``in`` -> ``out`` samples, with ``scale`` =
``in / out`` when ``size`` is given (or ``recompute_scale_factor=True``) and ``1 / scale_factor`` otherwise:

* ``nearest``: ``src = min(floor(dst * scale), in - 1)`` in single precision, as PyTorch, with its
  shortcuts: a copy when the size is unchanged and ``dst // 2`` when it doubles.
* ``nearest-exact``: ``src = min(floor((dst + 0.5) * scale), in - 1)`` (the product rounded to single
  precision before the floor, as PyTorch); no shortcuts.
* ``linear`` / ``bilinear`` / ``trilinear`` (the linear family, one name per input rank):
  ``align_corners=False``: ``src = max((dst + 0.5) * scale - 0.5, 0)``; ``align_corners=True``:
  ``src = dst * (in - 1) / (out - 1)``; weights ``1 - t`` and ``t`` on ``floor(src)`` and the next sample
  (clamped); an unchanged size is a copy.
* ``bicubic`` (4-D): the same source coordinate without the clamp at 0, taps ``floor(src) - 1 .. + 2``
  clamped to ``[0, in - 1]`` (so border samples repeat), Keys' cubic convolution weights with a = -0.75;
  no copy shortcut (PyTorch has none for bicubic).
* ``area``: adaptive average pooling (PyTorch's definition): bins ``[floor(i in / out), ceil((i+1) in / out))``.
"""
from __future__ import annotations

import math
import operator

import numpy as _np

from . import backend, ops
from .pooling import adaptive_bins, axis_matrices
from .tensor import Tensor

#: Input ranks each mode accepts (``bilinear`` on (N, C, L) is the core's long-standing alias of ``linear``).
MODES = {"nearest": (3, 4, 5), "nearest-exact": (3, 4, 5), "area": (3, 4, 5), "linear": (3,), "bilinear": (3, 4),
         "trilinear": (5,), "bicubic": (4,)}
_INTERPOLATING = ("linear", "bilinear", "trilinear", "bicubic")
#: Keys' cubic convolution parameter, as PyTorch's (and OpenCV's) bicubic.
CUBIC_A = -0.75


def nearest_indices(in_size: int, out_size: int, scale=None) -> _np.ndarray:
    """Host (out_size,) source index of every output position of nearest resizing, PyTorch's rule."""
    rows = _np.arange(out_size)
    if out_size == in_size:
        return rows  # PyTorch copies when the size does not change, whatever scale_factor says
    if out_size == 2 * in_size:
        return rows // 2  # PyTorch's exact shortcut for doubling, again independent of scale_factor
    # PyTorch computes the nearest index in single precision: floorf(dst * (float)scale)
    step = _np.float32(in_size / out_size if scale is None else scale)
    return _np.minimum(_np.floor(rows.astype(_np.float32) * step).astype(_np.int64), in_size - 1)


def nearest_exact_indices(in_size: int, out_size: int, scale=None) -> _np.ndarray:
    """Host (out_size,) source index of ``nearest-exact``: floorf((dst + 0.5) * (float)scale), clamped."""
    step = _np.float32(in_size / out_size if scale is None else scale)
    product = ((_np.arange(out_size) + 0.5) * _np.float64(step)).astype(_np.float32)  # double product -> float
    return _np.minimum(_np.floor(product).astype(_np.int64), in_size - 1)


def _source_coordinates(in_size, out_size, align_corners, scale, cubic: bool) -> _np.ndarray:
    """PyTorch's ``area_pixel_compute_source_index`` for every output position, in float64."""
    dst = _np.arange(out_size, dtype=_np.float64)
    if align_corners:
        return dst * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    step = in_size / out_size if scale is None else scale
    src = (dst + 0.5) * step - 0.5
    return src if cubic else _np.maximum(src, 0.0)


def _cubic_weights(t: _np.ndarray) -> _np.ndarray:
    """(out, 4) weights of taps floor(src) - 1 .. floor(src) + 2 at fraction t (Keys, a = CUBIC_A)."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return _np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=1)


def resize_matrix(in_size: int, out_size: int, mode: str, align_corners=None, scale=None, dtype=_np.float64):
    """The (out_size, in_size) matrix that resamples one axis (host-built, returned on the backend)."""
    return backend.from_numpy(_host_matrix(in_size, out_size, mode, align_corners, scale).astype(dtype))


def _host_matrix(in_size: int, out_size: int, mode: str, align_corners, scale) -> _np.ndarray:
    """:func:`resize_matrix` on the host, in float64."""
    if mode not in MODES:
        raise ValueError(f"interpolate: mode must be one of {sorted(MODES)}, got {mode!r}")
    matrix = _np.zeros((out_size, in_size), dtype=_np.float64)
    rows = _np.arange(out_size)
    if mode == "area":
        for i, (start, stop) in enumerate(adaptive_bins(in_size, out_size)):
            matrix[i, start:stop] = 1.0 / (stop - start)
    elif mode == "nearest-exact":
        matrix[rows, nearest_exact_indices(in_size, out_size, scale)] = 1.0
    elif mode == "bicubic":
        src = _source_coordinates(in_size, out_size, align_corners, scale, cubic=True)
        lower = _np.minimum(_np.floor(src).astype(_np.int64), in_size - 1)
        weights = _cubic_weights(_np.clip(src - lower, 0.0, 1.0))
        for tap in range(4):  # border taps are clamped: their weights pile onto the edge sample
            _np.add.at(matrix, (rows, _np.clip(lower + tap - 1, 0, in_size - 1)), weights[:, tap])
    elif out_size == in_size:
        # PyTorch copies when the size does not change, whatever scale_factor says (e.g. 1.05 on 5 pixels)
        matrix[rows, rows] = 1.0
    elif mode == "nearest":
        matrix[rows, nearest_indices(in_size, out_size, scale)] = 1.0
    else:  # the linear family
        src = _source_coordinates(in_size, out_size, align_corners, scale, cubic=False)
        lower = _np.minimum(_np.floor(src).astype(_np.int64), in_size - 1)
        upper = _np.minimum(lower + 1, in_size - 1)
        frac = _np.clip(src - lower, 0.0, 1.0)
        _np.add.at(matrix, (rows, lower), 1.0 - frac)
        _np.add.at(matrix, (rows, upper), frac)
    return matrix


def interpolate(x, size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                recompute_scale_factor=None) -> Tensor:
    """Resize (N, C, L), (N, C, H, W) or (N, C, D, H, W) like torch.nn.functional.interpolate.

    Give exactly one of ``size`` (an int or one per spatial axis) and ``scale_factor`` (a float or one per
    axis; the output is ``floor(in * scale_factor)``).  ``align_corners`` applies to the interpolating
    modes (linear, bilinear, trilinear, bicubic; default False, as PyTorch).  ``recompute_scale_factor=True``
    indexes with ``in / out`` instead of ``1 / scale_factor``.  Modes and their index rules: module docstring.
    """
    x = ops._lift(x)
    if mode not in MODES:
        raise ValueError(f"interpolate: mode must be one of {sorted(MODES)}, got {mode!r}")
    if x.ndim not in MODES[mode]:
        ranks = " or ".join(f"{r}-D" for r in MODES[mode])
        raise ValueError(f"interpolate: mode {mode!r} needs a {ranks} input (N, C, ...), got shape {x.shape}")
    if align_corners is not None and mode not in _INTERPOLATING:
        raise ValueError(f"interpolate: align_corners only applies to the modes {_INTERPOLATING}, not {mode!r}")
    spatial = x.shape[2:]
    sizes, scales = _output_sizes(spatial, size, scale_factor, recompute_scale_factor)
    out = x
    for axis, (n_in, n_out, scale) in enumerate(zip(spatial, sizes, scales)):
        matrix = _host_matrix(n_in, n_out, mode, align_corners, scale)
        if not (n_in == n_out and _np.array_equal(matrix, _np.eye(n_in))):  # a copy needs no product
            out = _along_axis(out, Tensor(backend.from_numpy(matrix.astype(x.dtype))), 2 + axis)
    return out


def _output_sizes(spatial, size, scale_factor, recompute_scale_factor):
    """(output size per axis, the scale each axis indexes with: 1 / scale_factor or None for in / out)."""
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    dims = len(spatial)
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("interpolate: recompute_scale_factor is not meaningful with an explicit size")
        sizes = _per_axis(size, dims, "size")
        try:
            sizes = tuple(operator.index(s) for s in sizes)
        except TypeError:
            raise TypeError(f"interpolate: size must be ints, got {size!r}") from None
        scales = (None,) * dims
    else:
        factors = tuple(float(f) for f in _per_axis(scale_factor, dims, "scale_factor"))
        if not all(f > 0 and math.isfinite(f) for f in factors):
            raise ValueError(f"interpolate: scale_factor must be positive and finite, got {scale_factor!r}")
        sizes = tuple(int(math.floor(n * f)) for n, f in zip(spatial, factors))
        scales = (None,) * dims if recompute_scale_factor else tuple(1.0 / f for f in factors)
    if min(sizes) < 1:
        raise ValueError(f"interpolate: output size must be positive, got {sizes}")
    return sizes, scales


def _per_axis(value, dims: int, name: str) -> tuple:
    if not isinstance(value, (tuple, list)):
        return (value,) * dims
    if len(value) == dims:
        return tuple(value)
    if dims == 1 and len(value) == 2:  # the core's (N, C, L) calls once took (1, L) pairs
        return tuple(value[-1:])
    raise ValueError(f"interpolate: {name} must be one value or {dims} (one per spatial axis), got {value!r}")


def _along_axis(x: Tensor, matrix: Tensor, axis: int) -> Tensor:
    """Apply ``matrix`` (out, in) along ``axis`` of x: the last two axes as ``axis_matrices``, D via a reshape."""
    if axis == x.ndim - 1:
        return axis_matrices(x, None, matrix)
    if axis == x.ndim - 2:
        return axis_matrices(x, matrix, None)
    # (N, C, D, H, W): (out, D) @ (N, C, D, H*W)
    shape = x.shape
    out = ops.matmul(matrix, ops.reshape(x, shape[:3] + (-1,)))
    return ops.reshape(out, shape[:2] + (matrix.shape[0],) + shape[3:])
