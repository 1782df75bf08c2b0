"""3-D pooling (N, C, D, H, W), composed of the 2-D and 1-D pools: every 3-D pool here is separable.

* Max: the maximum over a (d, h, w) window is the maximum over the d-taps of the maxima over the (h, w)
  windows of each depth slice.  So ``max_pool3d`` runs ``max_pool2d`` on every depth slice, then
  ``max_pool1d`` along D.  The gradient still reaches PyTorch's element -- the first maximum of the window
  in (d, h, w) row-major order: the 1-D stage picks the first depth whose slice maximum is the window's
  maximum (the smallest d holding it), the 2-D stage the first (h, w) of that slice.  In a window holding
  NaN both stages take the last NaN (torch's ``val > max || isnan(val)``), which composes to the last NaN
  of the window in (d, h, w) order, torch's element there too.
* Average: a box average is the product of per-axis averages, and PyTorch's divisor is the product of
  the per-axis counts (with or without padding), so it is three per-axis window maps, applied by
  :func:`autograd._separable.separable` (depth) and ``avg_pool2d`` (the plane): a NaN or infinity reaches
  exactly the outputs whose (d, h, w) window holds it.
* Adaptive: the bins of a 3-D adaptive pool are products of per-axis bins, so the same two stages (max)
  and three bin maps (average) apply.

Indices (``return_indices=True``) are torch's: the flat position ``(d * H + h) * W + w`` of each chosen
element within its (D, H, W) volume.
"""
from __future__ import annotations

from . import ops
from ._separable import separable
from .backend import xp
from .conv import _ntuple
from .pooling import (
    _adaptive_args,
    _divisor,
    _lp_input,
    _lp_root,
    _pool_geometry,
    _window_map,
    adaptive_avg_map,
    adaptive_max_pool1d,
    adaptive_max_pool2d,
    avg_pool2d,
    max_pool1d,
    max_pool2d,
    with_batch,
    without_batch,
)
from .tensor import Tensor


def _pool3d_args(x, kernel_size, stride, padding, dilation, ceil_mode, name):
    """Checked triples, and the output size per axis (an error names ``name`` if a kernel does not fit);
    x: (N, C, D, H, W) real floating point."""
    ops._check_float(name, "input", x)
    kernel = _ntuple(kernel_size, 3, "kernel_size", op=name)
    stride = kernel if stride is None or stride == () else _ntuple(stride, 3, "stride", op=name)
    padding = _ntuple(padding, 3, "padding", allow_zero=True, op=name)
    dilation = _ntuple(dilation, 3, "dilation", op=name)
    if any(p * 2 > k for p, k in zip(padding, kernel)):
        raise ValueError(f"{name}: padding {padding} must be at most half of kernel_size {kernel}")
    geometry = [_pool_geometry(n, k, s, p, d, ceil_mode, name)
                for n, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation)]
    return kernel, stride, padding, dilation, geometry


def _depth_last(x: Tensor) -> Tensor:
    """(N, C, D, oh, ow) -> (N, C*oh*ow, D): each depth column a row of a 1-D pool."""
    n, c, d, oh, ow = x.shape
    return ops.reshape(ops.transpose(x, (0, 1, 3, 4, 2)), (n, c * oh * ow, d))


def _depth_back(y, shape) -> Tensor:
    """Inverse of :func:`_depth_last` for the pooled depth: (N, C*oh*ow, od) -> (N, C, od, oh, ow)."""
    n, c, oh, ow = shape
    if isinstance(y, Tensor):
        return ops.transpose(ops.reshape(y, (n, c, oh, ow, y.shape[-1])), (0, 1, 4, 2, 3))
    return xp.transpose(xp.reshape(y, (n, c, oh, ow, y.shape[-1])), (0, 1, 4, 2, 3))


def _volume_positions(plane_index, depth_index, h: int, w: int):
    """Torch's flat (D, H, W) positions from the 2-D stage's (N, C, D, oh, ow) plane positions and the
    1-D stage's chosen depth (N, C, od, oh, ow): depth * H * W + the plane position at that depth."""
    at_depth = xp.take_along_axis(plane_index, depth_index, axis=2)
    return depth_index * (h * w) + at_depth


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """Max pooling over (N, C, D, H, W) or (C, D, H, W), as torch.nn.functional.max_pool3d.

    Padding counts as -inf; the gradient goes to the first maximum in (d, h, w) row-major order, or the
    window's last NaN (see the module docstring).  With ``return_indices=True``: ``(values, indices)``,
    indices int64 flat positions in the (D, H, W) volume.
    """
    x, added = with_batch(x, 3, "max_pool3d")
    kernel, stride, padding, dilation, _ = _pool3d_args(x, kernel_size, stride, padding, dilation, ceil_mode,
                                                        "max_pool3d")
    n, c, d, h, w = x.shape
    planes = max_pool2d(ops.reshape(x, (n, c * d, h, w)), kernel[1:], stride[1:], padding[1:], dilation[1:],
                        ceil_mode, return_indices)
    planes, plane_index = planes if return_indices else (planes, None)
    oh, ow = planes.shape[2:]
    planes = ops.reshape(planes, (n, c, d, oh, ow))
    pooled = max_pool1d(_depth_last(planes), kernel[0], stride[0], padding[0], dilation[0], ceil_mode,
                        return_indices)
    if not return_indices:
        return without_batch(_depth_back(pooled, (n, c, oh, ow)), added)
    values, depth_index = (_depth_back(p, (n, c, oh, ow)) for p in pooled)
    plane_index = xp.reshape(plane_index, (n, c, d, oh, ow))
    return without_batch((values, _volume_positions(plane_index, depth_index, h, w)), added)


def avg_pool3d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override=None) -> Tensor:
    """Average pooling over (N, C, D, H, W) or (C, D, H, W), as torch.nn.functional.avg_pool3d.

    The depth axis is a window map (its weights 1 / the depth count, or 1 / ``divisor_override``), the
    (H, W) plane :func:`avg_pool2d` with divisor 1 when ``divisor_override`` is given.
    """
    x, added = with_batch(x, 3, "avg_pool3d")
    kernel, stride, padding, _, geometry = _pool3d_args(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool3d")
    divisor_override = _divisor(divisor_override, "avg_pool3d")
    n, c, d, h, w = x.shape
    (od, extra), scale = geometry[0], None if divisor_override is None else 1.0 / divisor_override
    depth = _window_map(d, kernel[0], stride[0], padding[0], extra, count_include_pad, scale)
    pooled = separable(ops.reshape(x, (n, c, d, h * w)), depth, None)  # (od, D) @ (N, C, D, H*W)
    planes = avg_pool2d(ops.reshape(pooled, (n, c * od, h, w)), kernel[1:], stride[1:], padding[1:], ceil_mode,
                        count_include_pad, None if divisor_override is None else 1)
    return without_batch(ops.reshape(planes, (n, c, od) + tuple(planes.shape[2:])), added)


def adaptive_avg_pool3d(x, output_size) -> Tensor:
    """Adaptive average pooling of (N, C, D, H, W) or (C, D, H, W): three bin maps (exact at NaN/inf)."""
    x, added, (od, oh, ow) = _adaptive_args(x, output_size, "adaptive_avg_pool3d", 3)
    n, c, d, h, w = x.shape
    out = separable(ops.reshape(x, (n, c, d, h * w)), adaptive_avg_map(d, od), None)
    out = separable(ops.reshape(out, (n, c * od, h, w)), adaptive_avg_map(h, oh), adaptive_avg_map(w, ow))
    return without_batch(ops.reshape(out, (n, c, od, oh, ow)), added)


def adaptive_max_pool3d(x, output_size, return_indices: bool = False):
    """Adaptive max pooling of (N, C, D, H, W) or (C, D, H, W): per-slice adaptive 2-D pools, then 1-D along D.

    The gradient goes to the first maximum of each bin in (d, h, w) order, or its last NaN, as torch;
    ``return_indices`` gives torch's flat (D, H, W) positions.
    """
    x, added, (od, oh, ow) = _adaptive_args(x, output_size, "adaptive_max_pool3d", 3)
    n, c, d, h, w = x.shape
    planes = adaptive_max_pool2d(ops.reshape(x, (n, c * d, h, w)), (oh, ow), return_indices)
    planes, plane_index = planes if return_indices else (planes, None)
    pooled = adaptive_max_pool1d(_depth_last(ops.reshape(planes, (n, c, d, oh, ow))), od, return_indices)
    if not return_indices:
        return without_batch(_depth_back(pooled, (n, c, oh, ow)), added)
    values, depth_index = (_depth_back(p, (n, c, oh, ow)) for p in pooled)
    plane_index = xp.reshape(plane_index, (n, c, d, oh, ow))
    return without_batch((values, _volume_positions(plane_index, depth_index, h, w)), added)


def lp_pool3d(x, norm_type: float, kernel_size, stride=None, ceil_mode: bool = False) -> Tensor:
    """Power-average pooling of (N, C, D, H, W) or (C, D, H, W), as torch.nn.functional.lp_pool3d."""
    x = _lp_input(x, norm_type, "lp_pool3d")
    kernel = _ntuple(kernel_size, 3, "kernel_size", op="lp_pool3d")
    pooled = avg_pool3d(ops.pow(x, norm_type), kernel, stride, 0, ceil_mode)
    return _lp_root(pooled, kernel[0] * kernel[1] * kernel[2], norm_type)
