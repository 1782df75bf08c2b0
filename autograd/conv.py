"""Convolution: the ``unfold`` / ``fold`` adjoint pair, and conv1d / conv2d on top of them.

Semantics follow ``torch.nn.functional``: inputs are NCHW (NCL for 1-D), weights are
``(out_channels, in_channels // groups, kh, kw)``, and the output size is
``floor((H + pad_top + pad_bottom - dilation * (kh - 1) - 1) / stride) + 1``.

``conv2d`` runs on :mod:`autograd._conv_kernels`: three mutually adjoint primitives (the convolution
and its two VJPs, each one the others' VJP, so gradients of any order need no extra code) on fast
array kernels picked per shape -- a plain matmul for 1x1 kernels, shifted multiply-adds for strided
depthwise convolutions, chunked im2col + one GEMM per group otherwise.
"""
from __future__ import annotations

import operator
from typing import Sequence

from . import _conv_kernels as _kernels
from . import ops
from .backend import xp
from .tensor import Tensor, record

# ---------------------------------------------------------------------------------------------
# argument normalisation


def _pair(value, name: str, allow_zero: bool = False) -> tuple:
    """An int, a pair of ints, or (as torch) a 1-sequence, as a checked pair."""
    return _ntuple(value, 2, name, allow_zero)


def _ntuple(value, n: int, name: str, allow_zero: bool = False) -> tuple:
    """An int, ``n`` ints, or (as torch) a 1-sequence, as a checked ``n``-tuple of ints >= 1 (>= 0 with
    ``allow_zero``)."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = (value,) * n
    elif isinstance(value, (tuple, list)) and len(value) == 1:
        value = tuple(value) * n
    what = "a pair" if n == 2 else f"{n}"
    try:
        value = tuple(operator.index(v) for v in value)  # rejects 1.5 rather than truncating it
    except TypeError:
        raise TypeError(f"{name} must be an int or {what} of ints, got {value!r}") from None
    if len(value) != n:
        raise ValueError(f"{name} must be an int or {what} of ints, got {value!r}")
    low = 0 if allow_zero else 1
    if any(v < low for v in value):
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return value


def _padding2d(padding, kernel, dilation, stride) -> tuple:
    """Return ((top, bottom), (left, right)) from an int, a pair, 'same' or 'valid'."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is only supported with stride 1 (as in PyTorch)")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid'; got {padding!r}")
    ph, pw = _pair(padding, "padding", allow_zero=True)
    return ((ph, ph), (pw, pw))


def _output_size(size, pads, kernel, dilation, stride) -> int:
    return (size + pads[0] + pads[1] - dilation * (kernel - 1) - 1) // stride + 1


# ---------------------------------------------------------------------------------------------
# raw (array-level) im2col / col2im


def _im2col(x, kernel, dilation, pads, stride):
    """(N, C, H, W) array -> (N, C*kh*kw, oh*ow) array; channel-major like torch.unfold."""
    n, c, h, w = x.shape
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, stride
    oh = _output_size(h, pads[0], kh, dh, sh)
    ow = _output_size(w, pads[1], kw, dw, sw)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"input of spatial size {(h, w)} is too small for kernel {kernel} with dilation "
            f"{dilation} and padding {pads}"
        )
    if any(p for pair in pads for p in pair):
        x = xp.pad(x, ((0, 0), (0, 0)) + tuple(pads))
    cols = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh,
                                 j * dw : j * dw + sw * (ow - 1) + 1 : sw]
    return cols.reshape(n, c * kh * kw, oh * ow), (oh, ow)


def _col2im(cols, size, kernel, dilation, pads, stride):
    """Adjoint of :func:`_im2col`: kh*kw strided-slice additions (no np.add.at)."""
    h, w = size
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, stride
    oh = _output_size(h, pads[0], kh, dh, sh)
    ow = _output_size(w, pads[1], kw, dw, sw)
    n = cols.shape[0]
    c = cols.shape[1] // (kh * kw)
    if cols.shape[1] != c * kh * kw or cols.shape[2] != oh * ow:
        raise ValueError(
            f"fold: input of shape {tuple(cols.shape)} does not match output_size {size}, kernel "
            f"{kernel}: expected (N, C*{kh * kw}, {oh * ow})"
        )
    cols = cols.reshape(n, c, kh, kw, oh, ow)
    hp, wp = h + pads[0][0] + pads[0][1], w + pads[1][0] + pads[1][1]
    out = xp.zeros((n, c, hp, wp), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh,
                j * dw : j * dw + sw * (ow - 1) + 1 : sw] += cols[:, :, i, j]
    return out[:, :, pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + w]


# ---------------------------------------------------------------------------------------------
# differentiable unfold / fold


def _check_ndim(x, ndim: int, op: str, arg: str = "input", layout: str = "(N, C, H, W)"):
    if x.ndim != ndim:
        raise ValueError(f"{op}: {arg} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")


def unfold(x, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """Extract sliding blocks: (N, C, H, W) -> (N, C*kh*kw, L), as torch.nn.functional.unfold.

    ``padding`` may also be ((top, bottom), (left, right)).
    """
    x = ops._lift(x)
    _check_ndim(x, 4, "unfold")
    kernel, dil, st = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation"), _pair(stride, "stride")
    pads = _explicit_pads(padding)
    cols, _ = _im2col(x.data, kernel, dil, pads, st)
    size = x.shape[2:]
    return record(cols, ((x, lambda g: fold(g, size, kernel, dil, pads, st)),))


def fold(cols, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """Combine sliding blocks: (N, C*kh*kw, L) -> (N, C, H, W), summing overlaps (torch fold)."""
    cols = ops._lift(cols)
    _check_ndim(cols, 3, "fold", layout="(N, C*kh*kw, L)")
    size = _pair(output_size, "output_size")
    kernel, dil, st = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation"), _pair(stride, "stride")
    pads = _explicit_pads(padding)
    out = _col2im(cols.data, size, kernel, dil, pads, st)
    return record(out, ((cols, lambda g: unfold(g, kernel, dil, pads, st)),))


def _explicit_pads(padding):
    if isinstance(padding, tuple) and len(padding) == 2 and all(isinstance(p, tuple) for p in padding):
        return tuple((int(a), int(b)) for a, b in padding)
    ph, pw = _pair(padding, "padding", allow_zero=True)
    return ((ph, ph), (pw, pw))


# ---------------------------------------------------------------------------------------------
# conv2d


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """2-D cross-correlation, as torch.nn.functional.conv2d.

    Args:
        x: (N, C_in, H, W).
        weight: (C_out, C_in // groups, kh, kw).
        bias: (C_out,) or None.
        stride, dilation: int or pair.  padding: int, pair, 'same' or 'valid'.
        groups: C_in and C_out must both be divisible by it.

    Returns:
        (N, C_out, H_out, W_out).
    """
    x, weight = ops._lift(x), ops._lift(weight)
    _check_ndim(x, 4, "conv2d")
    _check_ndim(weight, 4, "conv2d", "weight", "(C_out, C_in/groups, kh, kw)")
    if x.dtype != weight.dtype:
        raise TypeError(f"conv2d: input dtype {x.dtype} differs from weight dtype {weight.dtype}")
    st, dil = _pair(stride, "stride"), _pair(dilation, "dilation")
    c_out, c_in_g, kh, kw = weight.shape
    groups = int(groups)
    if groups < 1 or x.shape[1] % groups or c_out % groups:
        raise ValueError(
            f"conv2d: groups={groups} must divide both input channels ({x.shape[1]}) and output "
            f"channels ({c_out})"
        )
    if x.shape[1] // groups != c_in_g:
        raise ValueError(
            f"conv2d: weight expects {c_in_g * groups} input channels "
            f"(weight shape {weight.shape}, groups={groups}), input has {x.shape[1]} (shape {x.shape})"
        )
    if bias is not None:
        bias = ops._lift(bias)
        if bias.shape != (c_out,):
            raise ValueError(f"conv2d: bias must have shape ({c_out},), got {bias.shape}")
        if bias.dtype != weight.dtype:
            raise TypeError(f"conv2d: bias dtype {bias.dtype} differs from weight dtype {weight.dtype}")
    pads = _padding2d(padding, (kh, kw), dil, st)
    return _conv2d_primitive(x, weight, st, pads, dil, groups, bias)


def _conv2d_primitive(x: Tensor, weight: Tensor, stride, pads, dilation, groups, bias=None) -> Tensor:
    """conv2d on the fast kernels of :mod:`autograd._conv_kernels` (VJPs included)."""
    h, w = x.shape[2:]
    kernel = weight.shape[2:]
    out_size = (_output_size(h, pads[0], kernel[0], dilation[0], stride[0]),
                _output_size(w, pads[1], kernel[1], dilation[1], stride[1]))
    if out_size[0] < 1 or out_size[1] < 1:
        raise ValueError(
            f"conv2d: input of spatial size {(h, w)} is too small for kernel {kernel} with dilation "
            f"{dilation} and padding {pads}"
        )
    geometry = _kernels.Geometry(kernel, stride, dilation, pads, groups, (h, w), out_size)
    return _kernels.conv(x, weight, geometry, bias)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """1-D cross-correlation, as torch.nn.functional.conv1d: x (N, C_in, L), weight (C_out, C_in/groups, k)."""
    x, weight = ops._lift(x), ops._lift(weight)
    _check_ndim(x, 3, "conv1d", layout="(N, C, L)")
    _check_ndim(weight, 3, "conv1d", "weight", "(C_out, C_in/groups, k)")
    if isinstance(padding, str):
        pad2 = padding
    else:
        (p,) = _single(padding, "padding")
        pad2 = (0, p)
    out = conv2d(
        ops.expand_dims(x, 2), ops.expand_dims(weight, 2), bias,
        stride=(1, _single(stride, "stride")[0]), padding=pad2,
        dilation=(1, _single(dilation, "dilation")[0]), groups=groups,
    )
    return ops.squeeze(out, 2)


def _single(value, name):
    if isinstance(value, Sequence):
        if len(value) != 1:
            raise ValueError(f"{name} must be an int or a 1-tuple for conv1d, got {value!r}")
        return (int(value[0]),)
    return (int(value),)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1) -> Tensor:
    """Transposed convolution (groups=1), as torch.nn.functional.conv_transpose2d.

    weight: (C_in, C_out, kh, kw).  It is the adjoint of the conv2d that maps (C_out, out_h, out_w)
    to (C_in, h, w) with the same weight, so it runs on that conv2d's input-gradient primitive.
    ``output_padding`` must be smaller than ``stride`` (PyTorch also accepts it below ``dilation``).
    """
    x, weight = ops._lift(x), ops._lift(weight)
    _check_ndim(x, 4, "conv_transpose2d")
    _check_ndim(weight, 4, "conv_transpose2d", "weight", "(C_in, C_out, kh, kw)")
    n, c_in, h, w = x.shape
    if weight.shape[0] != c_in:
        raise ValueError(
            f"conv_transpose2d: weight {weight.shape} expects {weight.shape[0]} input channels, got {c_in}"
        )
    _, c_out, kh, kw = weight.shape
    st, dil = _pair(stride, "stride"), _pair(dilation, "dilation")
    ph, pw = _pair(padding, "padding", allow_zero=True)
    oph, opw = _pair(output_padding, "output_padding", allow_zero=True)
    if oph >= st[0] or opw >= st[1]:
        raise ValueError(f"conv_transpose2d: output_padding {(oph, opw)} must be smaller than stride {st}")
    out_h = (h - 1) * st[0] - 2 * ph + dil[0] * (kh - 1) + oph + 1
    out_w = (w - 1) * st[1] - 2 * pw + dil[1] * (kw - 1) + opw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"conv_transpose2d: output size {(out_h, out_w)} is empty (padding {(ph, pw)} too large)")
    # output_padding is already part of (out_h, out_w); the canvas around it is padded symmetrically
    geometry = _kernels.Geometry((kh, kw), st, dil, ((ph, ph), (pw, pw)), 1, (out_h, out_w), (h, w))
    out = _kernels.input_grad(x, weight, geometry)
    if bias is not None:
        out = ops.add(out, ops.reshape(ops._lift(bias), (1, c_out, 1, 1)))
    return out
