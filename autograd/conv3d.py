"""3-D convolution and its transpose, composed of the 2-D ones.

conv3d: output depth o reads input depths ``o*sd - pd + i*dd`` for taps i < kd.  Gathering those kd depth
slices as extra channels -- the *depth unfold* U: (N, C, D, H, W) -> (N*od, C*kd, H, W), channel c*kd + i
holding tap i of channel c -- turns the 3-D convolution into one 2-D convolution with the weight
(C_out, C_in/G, kd, kh, kw) read as (C_out, C_in/G * kd, kh, kw) (the same order, so groups stay contiguous):

    conv3d(x, w) = conv2d(U(x), w2)

The transposed convolution is that map's adjoint in x:

    conv_transpose3d(y, w) = U^T(conv_transpose2d(y, w2))

where U^T scatter-adds every tap's slice back to its depth (:func:`autograd.ops.index_add`, the adjoint of
the gather).  Both are compositions of differentiable ops: no new VJP.
"""
from __future__ import annotations

import numpy as np

from . import backend, ops
from .conv import _conv_operands, _ntuple, conv2d, conv_transpose2d, without_batch
from .tensor import Tensor


def _depth_taps(depth: int, kernel: int, stride: int, dilation: int, pads) -> tuple:
    """Host (od, kd) padded depth read by each (output depth, tap), and od."""
    out = (depth + pads[0] + pads[1] - dilation * (kernel - 1) - 1) // stride + 1
    return np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * dilation, out


def _padding3d(padding, kernel, dilation, stride):
    """((front, back), (top, bottom), (left, right)) from an int, a triple, 'same' or 'valid'."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * 3
        if padding == "same":
            if stride != (1, 1, 1):
                raise ValueError("conv3d: padding='same' is only supported with stride 1 (as in PyTorch)")
            return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))
        raise ValueError(f"conv3d: padding must be an int, a triple, 'same' or 'valid'; got {padding!r}")
    return tuple((p, p) for p in _ntuple(padding, 3, "padding", allow_zero=True, op="conv3d"))


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """3-D cross-correlation, as torch.nn.functional.conv3d.

    Args:
        x: (N, C_in, D, H, W), or unbatched (C_in, D, H, W).
        weight: (C_out, C_in // groups, kd, kh, kw); bias: (C_out,) or None.
        stride, dilation: int or triple.  padding: int, triple, 'same' or 'valid'.

    Returns:
        (N, C_out, D_out, H_out, W_out) (or without N).
    """
    x, added, weight, bias, groups = _conv_operands(x, weight, bias, groups, 3, "conv3d")
    stride, dilation = _ntuple(stride, 3, "stride", op="conv3d"), _ntuple(dilation, 3, "dilation", op="conv3d")
    kernel = weight.shape[2:]
    pads = _padding3d(padding, kernel, dilation, stride)
    n, c, d = x.shape[:3]
    taps, od = _depth_taps(d, kernel[0], stride[0], dilation[0], pads[0])
    if od < 1:
        raise ValueError(f"conv3d: input depth {d} is too small for kernel depth {kernel[0]} with dilation "
                         f"{dilation[0]} and padding {pads[0]}")
    padded = ops.pad(x, ((0, 0), (0, 0), pads[0], (0, 0), (0, 0)))
    columns = ops.getitem(padded, (slice(None), slice(None), backend.from_numpy(taps)))  # (N, C, od, kd, H, W)
    columns = ops.reshape(ops.transpose(columns, (0, 2, 1, 3, 4, 5)), (n * od, c * kernel[0]) + x.shape[3:])
    flat_weight = ops.reshape(weight, (weight.shape[0], weight.shape[1] * kernel[0]) + kernel[1:])
    out = conv2d(columns, flat_weight, bias, stride[1:], _explicit(pads[1:], padding), dilation[1:], groups)
    out = ops.transpose(ops.reshape(out, (n, od) + out.shape[1:]), (0, 2, 1, 3, 4))
    return without_batch(out, added)


def _explicit(pads, padding):
    """The (H, W) padding for conv2d: 'same'/'valid' as given (conv2d computes the same pads), else a pair."""
    return padding if isinstance(padding, str) else tuple(p for p, _ in pads)


def conv_transpose3d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1,
                     dilation=1) -> Tensor:
    """Transposed 3-D convolution, as torch.nn.functional.conv_transpose3d (same argument order).

    x: (N, C_in, d, h, w) or unbatched; weight: (C_in, C_out/groups, kd, kh, kw).  The adjoint of conv3d's
    input map (module docstring); ``output_padding`` (< stride or < dilation) extends the back/bottom/right.
    """
    x, added, weight, bias, groups = _conv_operands(x, weight, bias, groups, 3, "conv_transpose3d",
                                                    transposed=True)
    op = "conv_transpose3d"
    stride, dilation = _ntuple(stride, 3, "stride", op=op), _ntuple(dilation, 3, "dilation", op=op)
    padding = _ntuple(padding, 3, "padding", allow_zero=True, op=op)
    extra = _ntuple(output_padding, 3, "output_padding", allow_zero=True, op=op)
    if any(e >= s and e >= d for e, s, d in zip(extra, stride, dilation)):
        raise ValueError(f"conv_transpose3d: output_padding {extra} must be smaller than stride {stride} or "
                         f"dilation {dilation}")
    n, c_in, depth = x.shape[:3]
    kd = weight.shape[2]
    c_out = weight.shape[1] * groups
    out_depth = (depth - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kd - 1) + extra[0] + 1
    if out_depth < 1:
        raise ValueError(f"conv_transpose3d: output depth {out_depth} is empty (padding {padding} too large)")
    planes = ops.reshape(ops.transpose(x, (0, 2, 1, 3, 4)), (n * depth, c_in) + x.shape[3:])
    flat_weight = ops.reshape(weight, (c_in, weight.shape[1] * kd) + weight.shape[3:])
    columns = conv_transpose2d(planes, flat_weight, None, stride[1:], padding[1:], extra[1:], groups, dilation[1:])
    columns = ops.transpose(ops.reshape(columns, (n, depth, c_out, kd) + columns.shape[2:]), (0, 2, 1, 3, 4, 5))
    # U^T: tap i of input depth j lands on canvas depth j*sd + i*dd of the unpadded (full) canvas
    full_depth = (depth - 1) * stride[0] + dilation[0] * (kd - 1) + 1
    taps, _ = _depth_taps(full_depth, kd, stride[0], dilation[0], (0, 0))
    canvas = ops.index_add((n, c_out, full_depth) + columns.shape[4:],
                           (slice(None), slice(None), backend.from_numpy(taps)), columns)
    # crop the padding in front; the back is cropped (or extended by output_padding) to the output depth
    front = padding[0]
    out = ops.pad(canvas, ((0, 0), (0, 0), (-front, out_depth - (full_depth - front)), (0, 0), (0, 0)))
    if bias is not None:
        out = ops.add(out, ops.reshape(bias, (1, -1, 1, 1, 1)))
    return without_batch(out, added)
