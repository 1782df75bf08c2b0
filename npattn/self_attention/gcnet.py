"""GCNet: global context block (Cao, Xu, Lin, Wei, Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation
Networks and Beyond", ICCV 2019 workshops / TPAMI 2020).

A query-independent non-local block: one global context vector per image, transformed by a bottleneck
and fused into every position.  x (B, C, H, W), N = H*W, P = int(C * ratio)::

    context modelling   alpha = softmax_j(W_k x_j)          conv_mask: 1x1 conv C -> 1 (bias)   (B, 1, N)
                        c = sum_j alpha_j x_j                                                  (B, C, 1, 1)
                        ('avg' pooling: c = mean_j x_j, no conv_mask)
    transform           T(c) = W_v2 ReLU(LN(W_v1 c))      conv1x1 C->P (bias), LayerNorm over (P, 1, 1),
                                                          ReLU, conv1x1 P->C (bias)
    fusion              out = x * sigmoid(T_mul(c))        if 'channel_mul' in fusion_types
                        out = out + T_add(c)               if 'channel_add' in fusion_types  (mul first)

The paper's GC block is z = x + W_v2 ReLU(LN(W_v1 sum_j alpha_j x_j)) -- fusion ('channel_add',), the
default.  There is no residual inside the block beyond this add (the official code inserts it after a
bottleneck's bn3, before the identity add).

Follows ``xvjiarui/GCNet: mmdet/ops/gcb/context_block.py`` (identical to ``mmcv.cnn.ContextBlock``):
P = int(C * ratio) truncates; LayerNorm eps 1e-5 with affine weight/bias of shape (P, 1, 1); conv_mask is
Kaiming-normal (fan_in, ReLU gain: std sqrt(2 / C)) with zero bias; the *last* conv of each transform is
initialised to 0 (weight and bias), so the block starts as the identity (add) or as x * 0.5 (mul).
``zero_init=False`` keeps PyTorch's init for those convs instead; the registry entry uses it so every
parameter receives a gradient.  (timm's GlobalContext differs: LN eps 1e-6, rounded P, mul-only default.)

Parameters (official names): ``conv_mask.weight (1, C, 1, 1)`` + bias (pooling 'att' only),
``channel_add_conv.0.weight (P, C, 1, 1)`` + bias, ``channel_add_conv.1.{weight,bias} (P, 1, 1)``,
``channel_add_conv.3.weight (C, P, 1, 1)`` + bias, and the same under ``channel_mul_conv``.  The pooling
type and the fusion types are options of :func:`init` and :func:`gcnet` alike (``pooling_type``,
``fusion_types``; a registry entry's ``config`` reaches both), never read from which parameters exist.
``fusion_types`` is a tuple or list of names: a bare string such as ``"channel_add"`` is a TypeError, as
the official ``assert isinstance(fusion_types, (list, tuple))`` (iterating it would give characters).

**P = 1** (e.g. C = 16 with ratio 1/16): the LayerNorm then normalises a single value per sample, which
is always 0, so LN returns its bias and each transform is a constant -- the block adds (or multiplies by)
a fixed vector and ignores the context; the gradients of conv_mask and of the first conv are 0.  That is
what the official code computes, so it is followed, with a warning from :func:`init` and :func:`gcnet`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

import autograd as ag

from ..layers import (
    check_dtype,
    check_input,
    conv,
    conv_shapes,
    example,
    init_conv,
    init_layer_norm,
    layer_norm,
    take_all,
)
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Ints, Space, image
from ._common import flatten_spatial, init_conv_normal, zero_conv

NAME = "gcnet"
POOLINGS = ("att", "avg")
FUSIONS = ("channel_add", "channel_mul")
LN_EPS = 1e-5


def _check_structure(pooling_type, fusion_types) -> tuple:
    """The pooling type checked and the fusion types as a tuple in the official order (add, then mul)."""
    if pooling_type not in POOLINGS:
        raise ValueError(f"{NAME}: pooling_type must be one of {POOLINGS}, got {pooling_type!r}")
    if not isinstance(fusion_types, (tuple, list)):
        raise TypeError(f"{NAME}: fusion_types must be a tuple or list of names, e.g. ('channel_add',), got "
                        f"{fusion_types!r} (as the official ContextBlock's assert; a string is not one name)")
    unknown = [f for f in fusion_types if f not in FUSIONS]
    if not fusion_types or unknown or len(set(fusion_types)) != len(fusion_types):
        raise ValueError(f"{NAME}: fusion_types must be a non-empty subset of {FUSIONS} without repeats, "
                         f"got {tuple(fusion_types)!r}")
    return tuple(f for f in FUSIONS if f in fusion_types)


def _warn_single_plane(planes: int, channels: int, stacklevel: int) -> None:
    if planes == 1:
        warnings.warn(f"{NAME}: int(C * ratio) = 1 (C = {channels}): the LayerNorm over one value returns its bias, "
                      "so the transform is constant and the block ignores its input's context (as the official "
                      "code); use a larger ratio", UserWarning, stacklevel=stacklevel)


def init(rng, channels: int, *, ratio: float = 1 / 16, pooling_type: str = "att",
         fusion_types: tuple = ("channel_add",), zero_init: bool = True, dtype=np.float64) -> dict:
    """Parameters of a GC block (see the module docstring for names and the official init)."""
    fusions = _check_structure(pooling_type, fusion_types)
    planes = int(channels * ratio)
    if planes < 1:
        raise ValueError(f"{NAME}: int(channels * ratio) = int({channels} * {ratio}) must be at least 1")
    _warn_single_plane(planes, channels, stacklevel=3)       # -> init's caller
    params: dict = {}
    if pooling_type == "att":
        init_conv_normal(rng, params, "conv_mask", 1, channels, math.sqrt(2.0 / channels), dtype=dtype)
    for fusion in fusions:                      # official construction order: add, then mul
        prefix = f"{fusion}_conv"
        init_conv(rng, params, f"{prefix}.0", planes, channels, 1, dtype=dtype)
        init_layer_norm(params, f"{prefix}.1", (planes, 1, 1), dtype=dtype)
        init_conv(rng, params, f"{prefix}.3", channels, planes, 1, dtype=dtype)
        if zero_init:
            zero_conv(params, f"{prefix}.3")
    return params


def context_attention(params, x) -> ag.Tensor:
    """alpha = softmax_j(conv_mask(x)_j): (B, C, H, W) -> (B, 1, H*W) (pooling 'att' only).

    A building block (``conv_mask`` only; no whole-dict check): :func:`gcnet` is the public entry.
    """
    return ag.softmax(flatten_spatial(conv(params, "conv_mask", x, out=1)), axis=2)


def context(params, x, *, pooling_type: str = "att") -> ag.Tensor:
    """The global context c: attention pooling sum_j alpha_j x_j ('att'), or the mean ('avg'): (B, C, 1, 1)."""
    if pooling_type == "avg":
        return ag.mean(x, axis=(2, 3), keepdims=True)
    n, c, _, _ = x.shape
    pooled = ag.matmul(flatten_spatial(x), ag.swapaxes(context_attention(params, x), 1, 2))  # (B, C, 1)
    return ag.reshape(pooled, (n, c, 1, 1))


def transform(params, prefix: str, ctx: ag.Tensor) -> ag.Tensor:
    """T(c) = conv(ReLU(LN_{(P,1,1)}(conv(c)))): (B, C, 1, 1) -> (B, C, 1, 1) (a building block)."""
    hidden = conv(params, f"{prefix}.0", ctx)
    planes = hidden.shape[1]
    hidden = ag.relu(layer_norm(params, f"{prefix}.1", hidden, (planes, 1, 1), eps=LN_EPS))
    return conv(params, f"{prefix}.3", hidden, out=ctx.shape[1])


def _channels(params, pooling_type: str, fusions: tuple) -> int:
    """C, with every parameter of the structure checked (P read from the first transform)."""
    first = f"{fusions[0]}_conv.0.weight"
    planes, channels = params.shape(first)[:2]
    shapes = conv_shapes("conv_mask", 1, channels) if pooling_type == "att" else {}
    for fusion in fusions:
        prefix = f"{fusion}_conv"
        shapes.update({**conv_shapes(f"{prefix}.0", planes, channels), f"{prefix}.1.weight": (planes, 1, 1),
                       f"{prefix}.1.bias": (planes, 1, 1), **conv_shapes(f"{prefix}.3", channels, planes)})
    take_all(params, shapes)
    _warn_single_plane(planes, channels, stacklevel=5)       # -> gcnet's caller, past the uses_params wrapper
    return channels


@uses_params(NAME)
def gcnet(params, x, *, train: bool = False, pooling_type: str = "att",
          fusion_types: tuple = ("channel_add",)) -> ag.Tensor:
    """Apply the GC block to x (B, C, H, W) -> (B, C, H, W).  ``train`` has no effect (no BN/dropout).

    ``pooling_type`` and ``fusion_types``: the structure, as given to :func:`init`.
    """
    fusions = _check_structure(pooling_type, fusion_types)
    x = check_input(NAME, x, channels=_channels(params, pooling_type, fusions), min_size=1)
    check_dtype(NAME, x, params)
    ctx = context(params, x, pooling_type=pooling_type)
    out = x
    if "channel_mul" in fusions:                                       # official order: mul, then add
        out = out * ag.sigmoid(transform(params, "channel_mul_conv", ctx))
    if "channel_add" in fusions:
        out = out + transform(params, "channel_add_conv", ctx)
    return out


register(Mechanism(
    name=NAME, family="self_attention",
    paper=Paper("Cao, Xu, Lin, Wei, Hu", "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
                "ICCV Workshops", 2019),
    init=init, apply_fn=gcnet, config={"channels": 32, "ratio": 1 / 4, "zero_init": False},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 32, 6, 7), dtype),),
    # P = int(C ratio) >= 1 is init's rule (P = 1 is the official constant transform, with a warning); ratios that
    # truncate and ratios above 1; both poolings, every fusion set in either order
    space=Space(config={"channels": Ints(1, 32), "ratio": Choice(1 / 4, 1 / 16, 1 / 3, 1 / 2, 1.0, 1.5),
                        "pooling_type": Choice(*POOLINGS),
                        "fusion_types": Choice(("channel_add",), ("channel_mul",), ("channel_add", "channel_mul"),
                                               ("channel_mul", "channel_add")),
                        "zero_init": Bools()},
                inputs=image(), where=(lambda v: int(v.channels * v.ratio) >= 1,)),
    description="global context block: attention pooling, LayerNorm bottleneck, channel add",
))
