"""Outlook attention (VOLO, Yuan, Hou, Jiang, Feng, Yan, "VOLO: Vision Outlooker for Visual Recognition",
TPAMI 2022; ``sail-sg/volo`` ``models/volo.py`` ``OutlookAttention``): every window's k^2 x k^2 mixing weights are
predicted from its centre token by a linear layer -- there is no query-key product.

On x (B, H, W, C), kernel k, padding p, stride s, heads M, d = C / M, h = ceil(H / s), w = ceil(W / s)::

    v      = unfold_{k,p,s}(x W_v^T (+ b_v))                 (B, M, hw, k^2, d): the k x k window of every centre
    a      = softmax(scale * W_a AvgPool_s(x) + b_a)         (B, M, hw, k^2, k^2), softmax over the last axis;
                                                             pooling: kernel = stride = s, ceil mode
    y      = proj(fold_{k,p,s}(a v))                         overlapping windows are **summed**, then proj

scale = ``qk_scale or d**-0.5`` as the official code (the paper writes the softmax without it).  The
unfolded grid must be h x w (official reshape), i.e. floor((H + 2p - k) / s) + 1 = ceil(H / s) per axis
(p = floor(k / 2) satisfies it); other geometries are a ValueError.  A partial ceil-mode pooling window
is divided by its in-bounds size (PyTorch's AvgPool2d with padding 0).

Parameters (official names): ``v.weight`` (C, C) [+ ``v.bias``, ``qkv_bias``], ``attn.weight`` (k^4 M, C) +
``attn.bias``, ``proj.weight`` (C, C) + ``proj.bias``; PyTorch's Linear init (VOLO's model re-initialises
them with trunc_normal(0.02) and zero biases).  ``num_heads``, ``kernel_size``, ``padding``, ``stride`` and
``qkv_bias`` are the structure: keywords of :func:`init` and of :func:`outlook` alike.  Dropout (0 by
default) is not modelled.
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag

from ..layers import example, init_linear, linear, linear_shapes, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Derived, Ints, Space, channels_last
from ._parts import check_positive_int, check_scale, check_tokens

NAME = "outlook"


def init(rng, dim: int, *, num_heads: int, kernel_size: int = 3, padding: int = 1, stride: int = 1,
         qkv_bias: bool = False, dtype=np.float64) -> dict:
    """Parameters of ``OutlookAttention(dim, num_heads, kernel_size, padding, stride, qkv_bias)``."""
    heads, kernel = _structure(dim, num_heads, kernel_size, padding, stride)
    params: dict = {}
    init_linear(rng, params, "v", dim, dim, bias=qkv_bias, dtype=dtype)
    init_linear(rng, params, "attn", kernel ** 4 * heads, dim, dtype=dtype)
    init_linear(rng, params, "proj", dim, dim, dtype=dtype)
    return params


def _structure(dim: int, num_heads, kernel_size, padding, stride) -> tuple:
    heads = check_positive_int(NAME, "num_heads", num_heads)
    kernel = check_positive_int(NAME, "kernel_size", kernel_size)
    check_positive_int(NAME, "stride", stride)
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"{NAME}: padding must be a non-negative integer, got {padding!r}")
    if dim % heads:
        raise ValueError(f"{NAME}: dim={dim} must be divisible by num_heads={heads}")
    return heads, kernel


def _grid(size: tuple, kernel: int, padding: int, stride: int) -> tuple:
    """(h, w) = ceil(size / s), checked against the unfold grid the official reshape needs."""
    grid = tuple(math.ceil(n / stride) for n in size)
    blocks = tuple((n + 2 * padding - kernel) // stride + 1 for n in size)
    if grid != blocks:
        raise ValueError(f"{NAME}: kernel_size={kernel}, padding={padding}, stride={stride} on a {size} map give a "
                         f"{blocks} grid of windows, but outlook attention needs ceil(size / stride) = {grid} "
                         "(padding = kernel_size // 2 gives it)")
    return grid


def _outlook_weights(params, centres, heads: int, kernel: int, scale: float) -> ag.Tensor:
    """softmax(scale * attn(centres)): the logits + softmax step, with no key.

    centres (B, h, w, C) -> (B, M, hw, k^2, k^2): row i mixes the k^2 values of the window into position i.
    """
    batch, h, w, _ = centres.shape
    logits = linear(params, "attn", centres, out=kernel ** 4 * heads)            # (B, h, w, k^4 M)
    logits = ag.transpose(ag.reshape(logits, (batch, h * w, heads, kernel ** 2, kernel ** 2)), (0, 2, 1, 3, 4))
    return ag.softmax(logits * scale, axis=-1)


@uses_params(NAME)
def outlook(params, x, *, train: bool = False, num_heads: int, kernel_size: int = 3, padding: int = 1,
            stride: int = 1, qkv_bias: bool = False, qk_scale=None) -> ag.Tensor:
    """Outlook attention on x (B, H, W, C); returns (B, H, W, C).

    The structure keywords as given to :func:`init`; ``qk_scale`` replaces d^-1/2.  ``train`` has no effect
    (no dropout).
    """
    dim = params.shape("v.weight")[-1]
    heads, kernel = _structure(dim, num_heads, kernel_size, padding, stride)
    scale = check_scale(NAME, qk_scale)
    take_all(params, {**linear_shapes("v", dim, dim, bias=qkv_bias), **linear_shapes("attn", kernel ** 4 * heads, dim),
                      **linear_shapes("proj", dim, dim)})
    x = check_tokens(NAME, x, params, channels=dim, ndim=4, layout="(B, H, W, C)")
    batch, height, width, _ = x.shape
    h, w = _grid((height, width), kernel, padding, stride)
    head_dim = dim // heads
    value = ag.transpose(linear(params, "v", x, bias=qkv_bias, out=dim), (0, 3, 1, 2))          # (B, C, H, W)
    value = ag.unfold(value, kernel, padding=padding, stride=stride)                             # (B, C k^2, hw)
    value = ag.transpose(ag.reshape(value, (batch, heads, head_dim, kernel ** 2, h * w)), (0, 1, 4, 3, 2))
    centres = x
    if stride > 1:                                             # AvgPool2d(s, s, ceil_mode=True) on (B, C, H, W)
        pooled = ag.avg_pool2d(ag.transpose(x, (0, 3, 1, 2)), stride, stride, ceil_mode=True)
        centres = ag.transpose(pooled, (0, 2, 3, 1))
    weights = _outlook_weights(params, centres, heads, kernel, head_dim ** -0.5 if scale is None else scale)
    mixed = ag.matmul(weights, value)                                                              # a v
    mixed = ag.reshape(ag.transpose(mixed, (0, 1, 4, 3, 2)), (batch, dim * kernel ** 2, h * w))
    out = ag.fold(mixed, (height, width), kernel, padding=padding, stride=stride)                  # sum overlaps
    return linear(params, "proj", ag.transpose(out, (0, 2, 3, 1)), out=dim)


register(Mechanism(
    name=NAME, family="transformer",
    paper=Paper("Yuan, Hou, Jiang, Feng, Yan", "VOLO: Vision Outlooker for Visual Recognition", "IEEE TPAMI", 2022),
    init=init, apply_fn=outlook,
    config={"dim": 8, "num_heads": 2, "kernel_size": 3, "padding": 1, "stride": 2},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 5, 6, 8), dtype),),
    channel_axis=3,
    # C = heads * d (d down to 1); kernels, paddings and strides whose unfold grid is ceil(size / stride) on both
    # axes (the official reshape's requirement, refused otherwise), windows larger than the map included
    space=Space(config={"num_heads": Ints(1, 3), "_head_dim": Ints(1, 4),
                        "dim": Derived(lambda v: v.num_heads * v._head_dim), "kernel_size": Ints(1, 5),
                        "padding": Ints(0, 3), "stride": Ints(1, 3), "qkv_bias": Bools()},
                options={"qk_scale": Choice(None, 0.7)}, inputs=channels_last(),
                where=(lambda v: all(math.ceil(n / v.stride) == (n + 2 * v.padding - v.kernel_size) // v.stride + 1
                                     for n in (v.height, v.width)),)),
    description="VOLO outlook attention: each centre token predicts its window's k^2 x k^2 mixing; windows summed",
))
