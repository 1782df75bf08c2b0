"""Resizing (``interpolate``) as separable linear maps: one resampling map per spatial axis.

Each map is built on the host from PyTorch's exact index rules and applied with matrix products
(``R_h @ x @ R_w^T`` for a plane, one more product along D for a volume) by :mod:`autograd._separable`, which
is exact for NaN/inf input too: a non-finite sample reaches exactly the outputs that read it, as in PyTorch.
So every mode is exact, differentiable with no extra code, and identical on NumPy and CuPy.  For an axis of
``in`` -> ``out`` samples, with ``scale`` = ``in / out`` when ``size`` is given (or
``recompute_scale_factor=True``) and ``1 / scale_factor`` otherwise (PyTorch's default
``recompute_scale_factor=None``; the two differ when the scale factor does not divide evenly):

* ``nearest``: ``src = min(floor(dst * scale), in - 1)`` with the precision and shortcuts of the PyTorch
  CPU kernel that runs for the shape (:func:`nearest_indices`, :func:`_nearest_rule`): in single
  precision with a copy for an unchanged size and ``dst // 2`` for a doubled one, or -- 1-D and 3-D
  resizing and large 2-D outputs -- without shortcuts and, for float64, with ``dst * scale`` in double.
* ``nearest-exact``: ``src = min(floor((dst + 0.5) * scale), in - 1)``, again with each kernel's precision
  (:func:`nearest_exact_indices`); no shortcuts.
* ``linear`` / ``bilinear`` / ``trilinear`` (the linear family, one name per input rank; ``bilinear`` on
  (N, C, L) is the core's long-standing alias of ``linear``): ``align_corners=False``:
  ``src = max((dst + 0.5) * scale - 0.5, 0)``; ``align_corners=True``: ``src = dst * (in - 1) / (out - 1)``;
  weights ``1 - t`` and ``t`` on ``floor(src)`` and the next sample (clamped); an unchanged size is a copy.
  Both neighbours are read, even through a weight of 0 (an infinity there gives NaN, as ``0 * inf`` in
  PyTorch's kernel).
* ``bicubic`` (4-D): the same source coordinate without the clamp at 0, taps ``floor(src) - 1 .. + 2``
  clamped to ``[0, in - 1]`` (so border samples repeat), Keys' cubic convolution weights with a = -0.75;
  no copy shortcut in the forward (PyTorch has none for bicubic).  All four taps are read (zero weights
  included), and a border sample read by taps of both signs turns an infinity into NaN (``-w inf + w' inf``),
  as in PyTorch; PyTorch's backward, though, copies the cotangent at an unchanged size, and so does npattn's.
* ``area``: adaptive average pooling (PyTorch's definition): bins ``[floor(i in / out), ceil((i+1) in / out))``.

PyTorch's nearest *backward* always uses the single-precision rule, so where its forward took the
other kernel (e.g. float64 2 -> 82 in 1-D) its gradient is not the adjoint of its own forward; npattn's
gradient is the adjoint of the forward it computes (tests/torch_tier/test_core_semantics.py shows the
difference).
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as _np

from . import backend, ops
from ._separable import AxisMap, separable
from .pooling import adaptive_bins
from .tensor import Tensor

#: Input ranks each mode accepts (``bilinear`` on (N, C, L) is the core's long-standing alias of ``linear``).
MODES = {"nearest": (3, 4, 5), "nearest-exact": (3, 4, 5), "area": (3, 4, 5), "linear": (3,), "bilinear": (3, 4),
         "trilinear": (5,), "bicubic": (4,)}
_INTERPOLATING = ("linear", "bilinear", "trilinear", "bicubic")
_LINEAR = ("linear", "bilinear", "trilinear")
#: Keys' cubic convolution parameter, as PyTorch's (and OpenCV's) bicubic.
CUBIC_A = -0.75


# ---------------------------------------------------------------------------------------------
# index rules of the nearest modes


def nearest_indices(in_size: int, out_size: int, scale=None, precision: str = "single",
                    shortcuts: bool = True) -> _np.ndarray:
    """Host (out_size,) source index of every output position of nearest resizing, PyTorch's CPU rule.

    ``scale`` is ``1 / scale_factor`` when a scale factor was given, else None (``in / out``).  PyTorch
    has two kernels (:func:`_nearest_rule` says which one runs) and they differ where single precision
    matters (e.g. 2 -> 82 pixels, output 41):

    * the vectorised kernel (``nearest_idx``): a copy when the size is unchanged and ``dst // 2`` when it
      doubles (``shortcuts``), else ``floorf(dst * (float)scale)`` entirely in single precision;
    * the generic kernel: no shortcuts; ``scale * dst`` in the input's precision (double for float64:
      ``precision="double"``), rounded to single precision by ``floorf``.

    Both clamp to ``in_size - 1``.
    """
    rows = _np.arange(out_size)
    if shortcuts and out_size == in_size:
        return rows  # PyTorch copies when the size does not change, whatever scale_factor says
    if shortcuts and out_size == 2 * in_size:
        return rows // 2  # PyTorch's exact shortcut for doubling, again independent of scale_factor
    if precision == "double":
        step = in_size / out_size if scale is None else float(scale)
        source = (rows * step).astype(_np.float32)  # floorf's argument: the double rounded to float
    else:
        step = _np.float32(in_size) / _np.float32(out_size) if scale is None else _np.float32(scale)
        source = rows.astype(_np.float32) * step
    return _np.minimum(_np.floor(source).astype(_np.int64), in_size - 1)


def nearest_exact_indices(in_size: int, out_size: int, scale=None, precision: str = "single",
                          shortcuts: bool = True) -> _np.ndarray:
    """Host (out_size,) source index of ``nearest-exact``, PyTorch's CPU rule per kernel (no shortcuts in
    either; ``shortcuts`` only names the kernel, as :func:`_nearest_rule` gives it):

    * the vectorised kernel (``nearest_exact_idx``): ``floorf((dst + 0.5) * (float)scale)``, the product in
      double (``dst + 0.5`` is a double) rounded to single precision by ``floorf``;
    * the generic kernel: ``src = max(scale * (dst + 0.5) - 0.5, 0)`` in double, held in the input's
      precision (float32 rounds it), then ``floorf(src + 0.5)``; ``scale`` in the input's precision.

    Both clamp to ``in_size - 1``.  They differ where single precision matters: 2 -> 41 at output 20 reads
    input 1 in the generic kernel (float32 and float64), input 0 in the vectorised one;
    tests/torch_tier/test_core_semantics.py sweeps sizes on both kernels.
    """
    rows = _np.arange(out_size, dtype=_np.float64)
    if shortcuts:  # vectorised
        step = _np.float32(in_size) / _np.float32(out_size) if scale is None else _np.float32(scale)
        source = ((rows + 0.5) * _np.float64(step)).astype(_np.float32)
    else:
        if precision == "double":
            step = in_size / out_size if scale is None else float(scale)
        else:
            step = float(_np.float32(in_size) / _np.float32(out_size) if scale is None else _np.float32(scale))
        held = _np.float64 if precision == "double" else _np.float32
        src = _np.maximum((step * (rows + 0.5) - 0.5).astype(held), 0)
        source = (src + held(0.5)).astype(_np.float32)
    return _np.minimum(_np.floor(source).astype(_np.int64), in_size - 1)


def _nearest_rule(dtype, channels: int, in_sizes: tuple, out_sizes: tuple) -> dict:
    """Which of PyTorch's two nearest kernels resizes a contiguous (N, C, *S) CPU tensor, as
    :func:`nearest_indices` / :func:`nearest_exact_indices` arguments.  PyTorch 2.x picks the vectorised
    kernel for 2-D resizing of a channels-last tensor with C > 3 (a contiguous NCHW tensor is one only when
    H = W = 1) or when the output is small (out_H + out_W <= 128), and the generic kernel otherwise (always
    for 1-D and 3-D: measured over the sweeps of tests/torch_tier/test_core_semantics.py)."""
    vectorised = len(in_sizes) == 2 and ((channels > 3 and tuple(in_sizes) == (1, 1)) or sum(out_sizes) <= 128)
    if vectorised:
        return {"precision": "single", "shortcuts": True}
    return {"precision": "double" if _np.dtype(dtype) == _np.float64 else "single", "shortcuts": False}


# ---------------------------------------------------------------------------------------------
# one axis as a map


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


def resize_matrix(in_size: int, out_size: int, mode: str, align_corners=None, scale=None, dtype=_np.float64,
                  nearest_rule=None):
    """The (out_size, in_size) matrix that resamples one axis (host-built, returned on the backend).

    ``nearest_rule``: :func:`nearest_indices` keyword arguments (default: the vectorised kernel's rule).
    """
    axis_map = _resize_map(in_size, out_size, mode, align_corners, scale, nearest_rule)
    return backend.from_numpy(axis_map.weights.astype(dtype))


def _resize_map(in_size: int, out_size: int, mode: str, align_corners=None, scale=None,
                nearest_rule=None) -> AxisMap:
    """One axis of resizing as an :class:`AxisMap`: its weights, the inputs PyTorch reads, and those it reads
    in a way that turns an infinity into NaN (through a weight of exactly 0, or with weights of both signs).

    The gathers (nearest, nearest-exact) and ``area`` read exactly their nonzero weights; the linear family
    reads both neighbours (``lower`` and ``min(lower + 1, in - 1)``), an unchanged size as ``t * 1 + t * 0``;
    bicubic reads its four clamped taps.
    """
    if mode not in MODES:
        raise ValueError(f"interpolate: mode must be one of {sorted(MODES)}, got {mode!r}")
    matrix = _np.zeros((out_size, in_size), dtype=_np.float64)
    rows = _np.arange(out_size)
    if mode == "area":
        for i, (start, stop) in enumerate(adaptive_bins(in_size, out_size)):
            matrix[i, start:stop] = 1.0 / (stop - start)
        return AxisMap(matrix)
    if mode in ("nearest", "nearest-exact"):
        indices = nearest_indices if mode == "nearest" else nearest_exact_indices
        matrix[rows, indices(in_size, out_size, scale, **(nearest_rule or {}))] = 1.0
        return AxisMap(matrix)
    if mode == "bicubic":
        return _cubic_map(in_size, out_size, align_corners, scale)
    reads = _np.zeros((out_size, in_size), dtype=bool)
    zero_reads = _np.zeros((out_size, in_size), dtype=bool)
    if out_size == in_size:
        # PyTorch's linear kernels copy when the size does not change, whatever scale_factor says -- as
        # t * 1 + t * 0 (the same pixel as both neighbours), so an infinity there comes out NaN
        matrix[rows, rows] = 1.0
        zero_reads[rows, rows] = True
        return AxisMap(matrix, reads, zero_reads)
    src = _source_coordinates(in_size, out_size, align_corners, scale, cubic=False)
    lower = _np.minimum(_np.floor(src).astype(_np.int64), in_size - 1)
    upper = _np.minimum(lower + 1, in_size - 1)
    frac = _np.clip(src - lower, 0.0, 1.0)
    _np.add.at(matrix, (rows, lower), 1.0 - frac)
    _np.add.at(matrix, (rows, upper), frac)
    reads[rows, lower] = reads[rows, upper] = True
    zero_reads[rows[frac == 0.0], upper[frac == 0.0]] = True
    zero_reads[rows[frac == 1.0], lower[frac == 1.0]] = True
    return AxisMap(matrix, reads, zero_reads)


def _cubic_map(in_size: int, out_size: int, align_corners, scale) -> AxisMap:
    """Bicubic's axis map: four taps per output, clamped to the axis (border weights pile up on the edge).

    An input is read "to NaN" (an infinity there gives NaN, as in PyTorch's ``sum of x[tap] * w[tap]``)
    where a tap reading it has a weight of exactly 0, or where taps of both signs read it.
    """
    rows = _np.arange(out_size)
    src = _source_coordinates(in_size, out_size, align_corners, scale, cubic=True)
    lower = _np.minimum(_np.floor(src).astype(_np.int64), in_size - 1)
    weights = _cubic_weights(_np.clip(src - lower, 0.0, 1.0))
    matrix = _np.zeros((out_size, in_size), dtype=_np.float64)
    reads = _np.zeros((out_size, in_size), dtype=bool)
    positive = _np.zeros((out_size, in_size), dtype=bool)
    negative = _np.zeros((out_size, in_size), dtype=bool)
    zero = _np.zeros((out_size, in_size), dtype=bool)
    for tap in range(4):
        column = _np.clip(lower + tap - 1, 0, in_size - 1)
        weight = weights[:, tap]
        _np.add.at(matrix, (rows, column), weight)
        reads[rows, column] = True
        positive[rows[weight > 0], column[weight > 0]] = True
        negative[rows[weight < 0], column[weight < 0]] = True
        zero[rows[weight == 0], column[weight == 0]] = True
    axis_map = AxisMap(matrix, reads, zero | (positive & negative))
    # PyTorch's bicubic backward copies the cotangent when the size is unchanged (its forward does not)
    return axis_map.with_plain_adjoint() if in_size == out_size else axis_map


# ---------------------------------------------------------------------------------------------
# interpolate


def interpolate(x, size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                recompute_scale_factor=None) -> Tensor:
    """Resize (N, C, L), (N, C, H, W) or (N, C, D, H, W) like torch.nn.functional.interpolate.

    Give exactly one of ``size`` (an int or one per spatial axis) and ``scale_factor`` (a positive finite
    number or one per axis; the output is ``floor(in * scale_factor)``).  ``align_corners`` applies to the
    interpolating modes (linear, bilinear, trilinear, bicubic; default False, as PyTorch).
    ``recompute_scale_factor=True`` indexes with ``in / out`` instead of ``1 / scale_factor``.  Modes and
    their index rules: module docstring.  A NaN or infinity reaches exactly the outputs that read it.
    """
    x = ops._lift(x)
    ops._check_float("interpolate", "input", x)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"interpolate: mode must be one of {sorted(MODES)}, got {mode!r}")
    if x.ndim not in MODES[mode]:
        ranks = " or ".join(f"{r}-D" for r in MODES[mode])
        raise ValueError(f"interpolate: mode {mode!r} needs a {ranks} input (N, C, ...), got shape {x.shape}")
    if align_corners is not None and mode not in _INTERPOLATING:
        raise ValueError(f"interpolate: align_corners only applies to the modes {_INTERPOLATING}, not {mode!r}")
    spatial = tuple(x.shape[2:])
    if 0 in spatial or 0 in x.shape[1:2]:
        raise ValueError(f"interpolate: input must have non-empty channel and spatial axes, got shape {x.shape}")
    sizes, scales = _output_sizes(x.shape, size, scale_factor, recompute_scale_factor)
    rule = _nearest_rule(x.dtype, x.shape[1], spatial, sizes) if mode in ("nearest", "nearest-exact") else None
    maps = []
    for n_in, n_out, scale in zip(spatial, sizes, scales):
        axis_map = _resize_map(n_in, n_out, mode, align_corners, scale, rule)
        # an identity with no NaN reads (nearest's copy) is no map at all; the linear family's copy is kept
        # for its t * 1 + t * 0 at infinities, bicubic's for its zero-weight taps (skipped on finite data)
        maps.append(None if axis_map.is_identity and not axis_map.zero_reads.any() else axis_map)
    return _apply_maps(x, maps)


def _apply_maps(x: Tensor, maps: list) -> Tensor:
    """One map (or None) per spatial axis of x (N, C, *S), by :func:`autograd._separable.separable`."""
    if len(maps) == 1:  # (N, C, L): a unit row
        return ops.squeeze(separable(ops.expand_dims(x, 2), None, maps[0]), 2)
    if len(maps) == 2:
        return separable(x, *maps)
    # (N, C, D, H, W): D as the rows of (N, C, D, H*W), then the planes
    n, c, d, h, w = x.shape
    out = separable(ops.reshape(x, (n, c, d, h * w)), maps[0], None)
    depth = out.shape[2]
    out = separable(ops.reshape(out, (n, c * depth, h, w)), maps[1], maps[2])
    return ops.reshape(out, (n, c, depth) + tuple(out.shape[2:]))


def _output_sizes(shape, size, scale_factor, recompute_scale_factor):
    """(output size per spatial axis of an input of ``shape``, the scale each axis indexes with: 1 / scale_factor
    or None for in / out)."""
    spatial = tuple(shape[2:])
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    dims = len(spatial)
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("interpolate: recompute_scale_factor is not meaningful with an explicit size")
        sizes = tuple(_size(value, size) for value in _per_axis(size, shape, "size"))
        scales = (None,) * dims
    else:
        factors = tuple(_scale_factor(value, scale_factor) for value in _per_axis(scale_factor, shape, "scale_factor"))
        sizes = tuple(int(math.floor(n * f)) for n, f in zip(spatial, factors))
        scales = (None,) * dims if recompute_scale_factor else tuple(1.0 / f for f in factors)
    if min(sizes) < 1:
        raise ValueError(f"interpolate: the output size must be positive, got {sizes} for input {spatial}")
    return sizes, scales


def _per_axis(value, shape: tuple, name: str) -> tuple:
    """One value per spatial axis of an input of ``shape``: a scalar for all of them, or one per axis."""
    dims = len(shape) - 2
    if not isinstance(value, (tuple, list)):
        return (value,) * dims
    if len(value) == dims:
        return tuple(value)
    raise ValueError(f"interpolate: {name} must be one value or {dims} (one per spatial axis of the {len(shape)}-D "
                     f"input of shape {tuple(shape)}), got {value!r}")


def _size(value, size) -> int:
    """One entry of ``size`` as an int (floats and bools are a TypeError, not truncated)."""
    if isinstance(value, bool):
        raise TypeError(f"interpolate: size must be an int or one int per spatial axis, got {size!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"interpolate: size must be an int or one int per spatial axis, got {size!r}") from None


def _scale_factor(value, scale_factor) -> float:
    """One entry of ``scale_factor`` as a positive finite float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"interpolate: scale_factor must be a positive number or one per spatial axis, "
                        f"got {scale_factor!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"interpolate: scale_factor must be positive and finite, got {scale_factor!r}")
    return value
