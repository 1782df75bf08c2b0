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


def _pair(value, name: str, allow_zero: bool = False, op: str = "") -> tuple:
    """An int, a pair of ints, or (as torch) a 1-sequence, as a checked pair."""
    return _ntuple(value, 2, name, allow_zero, op)


def _ntuple(value, n: int, name: str, allow_zero: bool = False, op: str = "") -> tuple:
    """An int, ``n`` ints, or (as torch) a 1-sequence, as a checked ``n``-tuple of ints >= 1 (>= 0 with
    ``allow_zero``); floats and bools are a TypeError naming ``op`` and ``name``, never truncated."""
    where = f"{op}: " if op else ""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = (value,) * n
    elif isinstance(value, (tuple, list)) and len(value) == 1:
        value = tuple(value) * n
    what = {1: "a 1-tuple of an int", 2: "a pair of ints"}.get(n, f"a tuple of {n} ints")
    try:
        if any(isinstance(v, bool) for v in value):
            raise TypeError
        value = tuple(operator.index(v) for v in value)  # rejects 1.5 rather than truncating it
    except TypeError:
        raise TypeError(f"{where}{name} must be an int or {what}, got {value!r}") from None
    if len(value) != n:
        raise ValueError(f"{where}{name} must be an int or {what}, got {value!r}")
    low = 0 if allow_zero else 1
    if any(v < low for v in value):
        raise ValueError(f"{where}{name} must be >= {low}, got {value!r}")
    return value


def _groups(groups, op: str) -> int:
    """``groups`` as a positive int (1.5 and True are a TypeError, not truncated)."""
    if isinstance(groups, bool):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    try:
        groups = operator.index(groups)
    except TypeError:
        raise TypeError(f"{op}: groups must be an int, got {groups!r}") from None
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got groups={groups}")
    return groups


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
    ph, pw = _pair(padding, "padding", allow_zero=True, op="conv2d")
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
    ops._check_float("unfold", "input", x)
    kernel, dil, st = (_pair(kernel_size, "kernel_size", op="unfold"), _pair(dilation, "dilation", op="unfold"),
                       _pair(stride, "stride", op="unfold"))
    pads = _explicit_pads(padding)
    cols, _ = _im2col(x.data, kernel, dil, pads, st)
    size = x.shape[2:]
    return record(cols, ((x, lambda g: fold(g, size, kernel, dil, pads, st)),))


def fold(cols, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """Combine sliding blocks: (N, C*kh*kw, L) -> (N, C, H, W), summing overlaps (torch fold)."""
    cols = ops._lift(cols)
    _check_ndim(cols, 3, "fold", layout="(N, C*kh*kw, L)")
    ops._check_float("fold", "input", cols)
    size = _pair(output_size, "output_size", op="fold")
    kernel, dil, st = (_pair(kernel_size, "kernel_size", op="fold"), _pair(dilation, "dilation", op="fold"),
                       _pair(stride, "stride", op="fold"))
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
        x: (N, C_in, H, W), or unbatched (C_in, H, W).
        weight: (C_out, C_in // groups, kh, kw).
        bias: (C_out,) or None.
        stride, dilation: int or pair.  padding: int, pair, 'same' or 'valid'.
        groups: C_in and C_out must both be divisible by it.

    Returns:
        (N, C_out, H_out, W_out) (or (C_out, H_out, W_out)).
    """
    x, added, weight, bias, groups = _conv_operands(x, weight, bias, groups, 2, "conv2d")
    st, dil = _pair(stride, "stride", op="conv2d"), _pair(dilation, "dilation", op="conv2d")
    pads = _padding2d(padding, weight.shape[2:], dil, st)
    return without_batch(_conv2d_primitive(x, weight, st, pads, dil, groups, bias), added)


_KERNEL_LAYOUTS = {1: "k", 2: "kh, kw", 3: "kd, kh, kw"}


def _conv_operands(x, weight, bias, groups, spatial: int, name: str, transposed: bool = False):
    """Checked operands of a convolution: (x with a batch axis, whether it was added, weight, bias, groups).

    ``weight`` is (C_out, C_in/groups, *k) -- or (C_in, C_out/groups, *k) when ``transposed``; the input,
    weight and bias share one dtype (no silent promotion).
    """
    x, weight = ops._lift(x), ops._lift(weight)
    layout = ("(C_in, C_out/groups, " if transposed else "(C_out, C_in/groups, ") + _KERNEL_LAYOUTS[spatial] + ")"
    _check_ndim(weight, spatial + 2, name, "weight", layout)
    x, added = with_batch(x, spatial, name)
    bias = None if bias is None else ops._lift(bias)
    ops._check_operands(name, input=x, weight=weight, bias=bias)  # real floats of one dtype (no promotion)
    groups = _groups(groups, name)
    c_in = x.shape[1]
    c_out = weight.shape[1] * groups if transposed else weight.shape[0]
    if c_in % groups or c_out % groups or (transposed and weight.shape[0] % groups):
        raise ValueError(f"{name}: groups={groups} must divide both input channels ({c_in}) and output "
                         f"channels ({c_out})")
    expected_in = weight.shape[0] if transposed else weight.shape[1] * groups
    if c_in != expected_in:
        raise ValueError(f"{name}: weight expects {expected_in} input channels (weight shape {weight.shape}, "
                         f"groups={groups}), input has {c_in} (shape {x.shape})")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"{name}: bias must have shape ({c_out},), got {bias.shape}")
    return x, added, weight, bias, groups


def with_batch(x, spatial: int, name: str):
    """(x with a batch axis, whether one was added): (C, *S) -> (1, C, *S); (N, C, *S) stays.

    As torch, an unbatched input is accepted wherever a batched one is, and every non-batch axis must be
    non-empty (a batch of 0 is fine).
    """
    x = ops._lift(x)
    unbatched, batched = _LAYOUTS[spatial]
    if x.ndim not in (spatial + 1, spatial + 2):
        raise ValueError(f"{name}: input must be {spatial + 1}-D {unbatched} or {spatial + 2}-D {batched}, "
                         f"got shape {x.shape}")
    if 0 in x.shape[-spatial - 1:]:
        raise ValueError(f"{name}: every non-batch axis of the input must be non-empty, got shape {x.shape}")
    if x.ndim == spatial + 1:
        return ops.expand_dims(x, 0), True
    return x, False


_LAYOUTS = {1: ("(C, L)", "(N, C, L)"), 2: ("(C, H, W)", "(N, C, H, W)"), 3: ("(C, D, H, W)", "(N, C, D, H, W)")}


def without_batch(result, added: bool):
    """Undo :func:`with_batch` on an output (or on each of a tuple of outputs: values, indices)."""
    if not added:
        return result
    if isinstance(result, tuple):
        return tuple(without_batch(r, True) for r in result)
    return ops.squeeze(result, 0) if isinstance(result, Tensor) else result[0]


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
    """1-D cross-correlation, as torch.nn.functional.conv1d: x (N, C_in, L) or (C_in, L), weight (C_out,
    C_in/groups, k); a conv2d over a unit row."""
    op = "conv1d"
    x, added, weight, bias, groups = _conv_operands(x, weight, bias, groups, 1, op)
    pad2 = padding if isinstance(padding, str) else (0, _single(padding, "padding", op, allow_zero=True))
    out = conv2d(ops.expand_dims(x, 2), ops.expand_dims(weight, 2), bias, stride=(1, _single(stride, "stride", op)),
                 padding=pad2, dilation=(1, _single(dilation, "dilation", op)), groups=groups)
    return without_batch(ops.squeeze(out, 2), added)


def _single(value, name, op: str, allow_zero: bool = False) -> int:
    """An int or a 1-sequence (the 1-D functions accept both), checked (1.5 and True are a TypeError)."""
    if isinstance(value, Sequence) and len(value) != 1:
        raise ValueError(f"{op}: {name} must be an int or a 1-tuple, got {value!r}")
    return _ntuple(value, 1, name, allow_zero, op)[0]


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1,
                     dilation=1) -> Tensor:
    """Transposed convolution, as torch.nn.functional.conv_transpose2d (same argument order).

    x: (N, C_in, h, w) or (C_in, h, w); weight: (C_in, C_out/groups, kh, kw).  It is the adjoint of the
    conv2d that maps (C_out, out_h, out_w) to (C_in, h, w) with the same weight (per group), so it runs on
    that conv2d's input-gradient primitive.  ``output_padding`` must be smaller than ``stride`` or
    ``dilation`` (as PyTorch); it extends the bottom/right of the output.
    """
    op = "conv_transpose2d"
    x, added, weight, bias, groups = _conv_operands(x, weight, bias, groups, 2, op, transposed=True)
    st, dil = _pair(stride, "stride", op=op), _pair(dilation, "dilation", op=op)
    padding = _pair(padding, "padding", allow_zero=True, op=op)
    extra = _pair(output_padding, "output_padding", allow_zero=True, op=op)
    if any(e >= s and e >= d for e, s, d in zip(extra, st, dil)):
        raise ValueError(f"conv_transpose2d: output_padding {extra} must be smaller than stride {st} or "
                         f"dilation {dil}")
    sizes = [(n - 1) * s - 2 * p + d * (k - 1) + e + 1
             for n, s, p, d, k, e in zip(x.shape[2:], st, padding, dil, weight.shape[2:], extra)]
    if min(sizes) < 1:
        raise ValueError(f"conv_transpose2d: output size {tuple(sizes)} is empty (padding {padding} too large)")
    if all(e < s for e, s in zip(extra, st)):
        # output_padding is part of the output size; the canvas around it is padded symmetrically
        geometry = _kernels.Geometry(weight.shape[2:], st, dil, tuple((p, p) for p in padding), groups,
                                     tuple(sizes), x.shape[2:])
        out = _kernels.input_grad(x, weight, geometry)
    else:
        # output_padding >= stride (allowed below the dilation): the output is not a conv2d geometry; take the
        # unpadded transposed conv (the whole canvas) and crop `padding` on top/left, extend or crop bottom/right
        full = conv_transpose2d(x, weight, None, st, 0, 0, groups, dil)
        out = ops.pad(full, ((0, 0), (0, 0)) + tuple((-p, size - (n - p))
                                                     for p, size, n in zip(padding, sizes, full.shape[2:])))
    if bias is not None:
        out = ops.add(out, ops.reshape(bias, (1, -1, 1, 1)))
    return without_batch(out, added)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1,
                     dilation=1) -> Tensor:
    """Transposed 1-D convolution, as torch.nn.functional.conv_transpose1d: x (N, C_in, L) or (C_in, L),
    weight (C_in, C_out/groups, k); a conv_transpose2d over a unit row."""
    op = "conv_transpose1d"
    x, added, weight, bias, groups = _conv_operands(x, weight, bias, groups, 1, op, transposed=True)
    out = conv_transpose2d(ops.expand_dims(x, 2), ops.expand_dims(weight, 2), bias,
                           (1, _single(stride, "stride", op)), (0, _single(padding, "padding", op, allow_zero=True)),
                           (0, _single(output_padding, "output_padding", op, allow_zero=True)), groups,
                           (1, _single(dilation, "dilation", op)))
    return without_batch(ops.squeeze(out, 2), added)
