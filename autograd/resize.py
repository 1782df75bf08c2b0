"""Resizing (``interpolate``) as separable linear maps: ``R_h @ x @ R_w^T``.

Each resampling matrix is built on the host from PyTorch's exact index rules and applied with
``matmul`` (:mod:`autograd._separable`: exact for NaN/inf input too), so the operation is exact,
differentiable with no extra code, and identical on NumPy and CuPy.

* ``nearest``: ``src = min(floor(dst * scale), in - 1)`` with the precision and shortcuts of the PyTorch
  CPU kernel that runs for the shape (:func:`nearest_indices`, :func:`_nearest_rule`): in single
  precision with a copy for an unchanged size and ``dst // 2`` for a doubled one, or -- 1-D resizing and
  large 2-D outputs -- without shortcuts and, for float64, with ``dst * scale`` in double precision.
* ``bilinear``, ``align_corners=False``: ``src = max((dst + 0.5) * scale - 0.5, 0)``;
  ``align_corners=True``: ``src = dst * (in - 1) / (out - 1)``; an unchanged size is a copy.
* ``scale`` is ``in / out`` when ``size`` is given, and ``1 / scale_factor`` when ``scale_factor``
  is given (PyTorch's default ``recompute_scale_factor=None``); the two differ when the scale
  factor does not divide evenly.

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
from .tensor import Tensor


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


def _nearest_rule(dtype, channels: int, in_hw: tuple, out_hw: tuple, one_d: bool) -> dict:
    """Which of PyTorch's two nearest kernels resizes a contiguous (N, C, H, W) / (N, C, L) CPU tensor, as
    :func:`nearest_indices` arguments.  PyTorch 2.x picks the vectorised kernel for 2-D resizing of a
    channels-last tensor with C > 3 (a contiguous NCHW tensor is one only when H = W = 1) or when the
    output is small (out_H + out_W <= 128), and the generic kernel otherwise (always for 1-D)."""
    vectorised = not one_d and ((channels > 3 and in_hw == (1, 1)) or sum(out_hw) <= 128)
    if vectorised:
        return {"precision": "single", "shortcuts": True}
    return {"precision": "double" if _np.dtype(dtype) == _np.float64 else "single", "shortcuts": False}


def resize_matrix(in_size: int, out_size: int, mode: str, align_corners=None, scale=None, dtype=_np.float64,
                  nearest_rule=None):
    """The (out_size, in_size) matrix that resamples one axis (host-built, returned on the backend).

    ``nearest_rule``: :func:`nearest_indices` keyword arguments (default: the vectorised kernel's rule).
    """
    axis_map = _resize_map(in_size, out_size, mode, align_corners, scale, nearest_rule)
    return backend.from_numpy(axis_map.weights.astype(dtype))


def _resize_map(in_size: int, out_size: int, mode: str, align_corners=None, scale=None,
                nearest_rule=None) -> AxisMap:
    """One axis of resizing as an :class:`AxisMap`: its weights, the inputs PyTorch reads -- bilinear reads
    both neighbours (``lower`` and ``min(lower + 1, in - 1)``) -- and those it reads through a zero weight
    (a lambda of exactly 0, or the ``t * 0`` of an unchanged size)."""
    matrix = _np.zeros((out_size, in_size), dtype=_np.float64)
    reads = _np.zeros((out_size, in_size), dtype=bool)
    zero_reads = _np.zeros((out_size, in_size), dtype=bool)
    rows = _np.arange(out_size)
    if mode not in ("nearest", "bilinear", "linear"):
        raise ValueError(f"interpolate: mode must be 'nearest' or 'bilinear', got {mode!r}")
    if mode == "nearest":
        matrix[rows, nearest_indices(in_size, out_size, scale, **(nearest_rule or {}))] = 1.0
    elif out_size == in_size:
        # PyTorch's linear kernels copy when the size does not change, whatever scale_factor says -- as
        # t * 1 + t * 0 (the same pixel as both neighbours), so an infinity there comes out NaN
        matrix[rows, rows] = 1.0
        zero_reads[rows, rows] = True
    else:
        dst = rows.astype(_np.float64)
        if align_corners:
            step = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
            src = dst * step
        else:
            step = in_size / out_size if scale is None else scale
            src = _np.maximum((dst + 0.5) * step - 0.5, 0.0)
        lower = _np.minimum(_np.floor(src).astype(_np.int64), in_size - 1)
        upper = _np.minimum(lower + 1, in_size - 1)
        frac = _np.clip(src - lower, 0.0, 1.0)
        _np.add.at(matrix, (rows, lower), 1.0 - frac)
        _np.add.at(matrix, (rows, upper), frac)
        reads[rows, lower] = reads[rows, upper] = True
        zero_reads[rows[frac == 0.0], upper[frac == 0.0]] = True
        zero_reads[rows[frac == 1.0], lower[frac == 1.0]] = True
    return AxisMap(matrix, reads, zero_reads)


def interpolate(x, size=None, scale_factor=None, mode: str = "nearest", align_corners=None) -> Tensor:
    """Resize (N, C, H, W) (or (N, C, L)) like torch.nn.functional.interpolate.

    Give exactly one of ``size`` (int or pair of ints) and ``scale_factor`` (positive finite float or
    pair).  ``align_corners`` applies to 'bilinear' only (default False, as PyTorch).  A NaN or infinity
    reaches exactly the outputs that read it (as PyTorch; for bilinear, both neighbours are read).
    """
    return _interpolate(x, size, scale_factor, mode, align_corners, one_d=False)


def _interpolate(x, size, scale_factor, mode: str, align_corners, one_d: bool) -> Tensor:
    x = ops._lift(x)
    ops._check_float("interpolate", "input", x)
    if x.ndim == 3:
        mode_1d = "bilinear" if mode == "linear" else mode
        size1 = None if size is None else (1, _one(size, "size"))
        scale1 = None if scale_factor is None else (1.0, _one(scale_factor, "scale_factor"))
        out = _interpolate(ops.expand_dims(x, 2), size1, scale1, mode_1d, align_corners, one_d=True)
        return ops.squeeze(out, 2)
    if x.ndim != 4:
        raise ValueError(f"interpolate: input must be (N, C, H, W) or (N, C, L), got shape {x.shape}")
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"interpolate: mode must be 'nearest' or 'bilinear', got {mode!r}")
    if align_corners is not None and mode == "nearest":
        raise ValueError("interpolate: align_corners only applies to mode='bilinear'")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    h, w = x.shape[2:]
    if h == 0 or w == 0:
        raise ValueError(f"interpolate: input must have non-empty spatial axes, got shape {x.shape}")
    if size is not None:
        oh, ow = _sizes(size)
        scales = (None, None)
    else:
        sh, sw = _scale_factors(scale_factor)
        oh, ow = int(math.floor(h * sh)), int(math.floor(w * sw))
        scales = (1.0 / sh, 1.0 / sw)
    if oh < 1 or ow < 1:
        raise ValueError(f"interpolate: the output size must be positive, got {(oh, ow)} for input {(h, w)}")
    rule = _nearest_rule(x.dtype, x.shape[1], (h, w), (oh, ow), one_d) if mode == "nearest" else None
    maps = [None] if one_d else []  # 1-D resizing has no H axis to read (it is only a view here)
    for n_in, n_out, scale in ((h, oh, scales[0]), (w, ow, scales[1]))[1 if one_d else 0:]:
        axis_map = _resize_map(n_in, n_out, mode, align_corners, scale, rule)
        # an identity with no zero reads (nearest's copy) is no map at all; bilinear's copy is kept, for
        # its t * 1 + t * 0 at infinities (separable skips it on finite data)
        maps.append(None if axis_map.is_identity and not axis_map.zero_reads.any() else axis_map)
    return separable(x, *maps)


def _pair_of(value, name: str) -> tuple:
    """(value, value) for a scalar, the pair for a 2-sequence; anything else is an error naming ``name``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"interpolate: {name} must be a number or a pair for a 4-D input, got {value!r}")
        return tuple(value)
    return (value, value)


def _sizes(size) -> tuple:
    """``size`` as two positive ints (floats are a TypeError, not truncated)."""
    out = []
    for value in _pair_of(size, "size"):
        if isinstance(value, bool):
            raise TypeError(f"interpolate: size must be an int or a pair of ints, got {size!r}")
        try:
            out.append(operator.index(value))
        except TypeError:
            raise TypeError(f"interpolate: size must be an int or a pair of ints, got {size!r}") from None
    return tuple(out)


def _scale_factors(scale_factor) -> tuple:
    """``scale_factor`` as two positive finite floats."""
    out = []
    for value in _pair_of(scale_factor, "scale_factor"):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"interpolate: scale_factor must be a positive number or a pair, got {scale_factor!r}")
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"interpolate: scale_factor must be positive and finite, got {scale_factor!r}")
        out.append(value)
    return tuple(out)


def _one(value, name: str):
    """The single entry of a 1-D ``size`` / ``scale_factor`` (an int or float, or a 1-sequence)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(f"interpolate: {name} must be a number or a 1-sequence for a 3-D input, got {value!r}")
        (value,) = value
    return value
