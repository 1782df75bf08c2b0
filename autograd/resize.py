"""Resizing (``interpolate``) as separable linear maps: ``R_h @ x @ R_w^T``.

Each resampling matrix is built on the host from PyTorch's exact index rules and applied with
``matmul``, so the operation is exact, differentiable with no extra code, and identical on NumPy and
CuPy.

* ``nearest``: ``src = min(floor(dst * scale), in - 1)``, computed in single precision as PyTorch does,
  with PyTorch's shortcuts: a copy when the size is unchanged and ``dst // 2`` when it doubles.
* ``bilinear``, ``align_corners=False``: ``src = max((dst + 0.5) * scale - 0.5, 0)``;
  ``align_corners=True``: ``src = dst * (in - 1) / (out - 1)``.
* ``scale`` is ``in / out`` when ``size`` is given, and ``1 / scale_factor`` when ``scale_factor``
  is given (PyTorch's default ``recompute_scale_factor=None``); the two differ when the scale
  factor does not divide evenly.  An unchanged size is always a copy (both modes), as in PyTorch.
"""
from __future__ import annotations

import math

import numpy as _np

from . import backend, ops
from .pooling import axis_matrices
from .tensor import Tensor


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


def resize_matrix(in_size: int, out_size: int, mode: str, align_corners=None, scale=None, dtype=_np.float64):
    """The (out_size, in_size) matrix that resamples one axis (host-built, returned on the backend)."""
    matrix = _np.zeros((out_size, in_size), dtype=_np.float64)
    rows = _np.arange(out_size)
    if mode not in ("nearest", "bilinear", "linear"):
        raise ValueError(f"interpolate: mode must be 'nearest' or 'bilinear', got {mode!r}")
    if out_size == in_size:
        # PyTorch copies when the size does not change, whatever scale_factor says (e.g. 1.05 on 5 pixels)
        matrix[rows, rows] = 1.0
    elif mode == "nearest":
        matrix[rows, nearest_indices(in_size, out_size, scale)] = 1.0
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
    return backend.from_numpy(matrix.astype(dtype))


def interpolate(x, size=None, scale_factor=None, mode: str = "nearest", align_corners=None) -> Tensor:
    """Resize (N, C, H, W) (or (N, C, L)) like torch.nn.functional.interpolate.

    Give exactly one of ``size`` (int or pair) and ``scale_factor`` (float or pair).
    ``align_corners`` applies to 'bilinear' only (default False, as PyTorch).
    """
    x = ops._lift(x)
    if x.ndim == 3:
        mode_1d = "bilinear" if mode == "linear" else mode
        size1 = None if size is None else (1, _first(size))
        scale1 = None if scale_factor is None else (1.0, float(_first(scale_factor)))
        return ops.squeeze(interpolate(ops.expand_dims(x, 2), size1, scale1, mode_1d, align_corners), 2)
    if x.ndim != 4:
        raise ValueError(f"interpolate: input must be (N, C, H, W) or (N, C, L), got shape {x.shape}")
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"interpolate: mode must be 'nearest' or 'bilinear', got {mode!r}")
    if align_corners is not None and mode == "nearest":
        raise ValueError("interpolate: align_corners only applies to mode='bilinear'")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    h, w = x.shape[2:]
    if size is not None:
        oh, ow = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        scales = (None, None)
    else:
        sh, sw = (scale_factor, scale_factor) if not isinstance(scale_factor, (tuple, list)) else scale_factor
        if sh <= 0 or sw <= 0:
            raise ValueError(f"interpolate: scale_factor must be positive, got {scale_factor!r}")
        oh, ow = int(math.floor(h * sh)), int(math.floor(w * sw))
        scales = (1.0 / sh, 1.0 / sw)
    if oh < 1 or ow < 1:
        raise ValueError(f"interpolate: output size must be positive, got {(oh, ow)}")
    # an unchanged axis is copied (PyTorch's rule), so no matrix is needed
    rows = None if oh == h else Tensor(resize_matrix(h, oh, mode, align_corners, scales[0], x.dtype))
    cols = None if ow == w else Tensor(resize_matrix(w, ow, mode, align_corners, scales[1], x.dtype))
    return axis_matrices(x, rows, cols)


def _first(value):
    return value[-1] if isinstance(value, (tuple, list)) else value
