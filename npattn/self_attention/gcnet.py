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
type and the fusion types are read from which parameters exist.
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, conv, example, init_conv, init_layer_norm, layer_norm
from ..registry import Mechanism, Paper, register
from ._common import flatten_spatial, init_conv_normal, zero_conv

NAME = "gcnet"
POOLINGS = ("att", "avg")
FUSIONS = ("channel_add", "channel_mul")
LN_EPS = 1e-5


def init(rng, channels: int, *, ratio: float = 1 / 16, pooling_type: str = "att",
         fusion_types: tuple = ("channel_add",), zero_init: bool = True, dtype=np.float64) -> dict:
    """Parameters of a GC block (see the module docstring for names and the official init)."""
    if pooling_type not in POOLINGS:
        raise ValueError(f"{NAME}: pooling_type must be one of {POOLINGS}, got {pooling_type!r}")
    fusion_types = tuple(fusion_types)
    if not fusion_types or any(f not in FUSIONS for f in fusion_types):
        raise ValueError(f"{NAME}: fusion_types must be a non-empty subset of {FUSIONS}, got {fusion_types!r}")
    planes = int(channels * ratio)
    if planes < 1:
        raise ValueError(f"{NAME}: int(channels * ratio) = int({channels} * {ratio}) must be at least 1")
    params: dict = {}
    if pooling_type == "att":
        init_conv_normal(rng, params, "conv_mask", 1, channels, math.sqrt(2.0 / channels), dtype=dtype)
    for fusion in FUSIONS:                      # official construction order: add, then mul
        if fusion in fusion_types:
            prefix = f"{fusion}_conv"
            init_conv(rng, params, f"{prefix}.0", planes, channels, 1, dtype=dtype)
            init_layer_norm(params, f"{prefix}.1", (planes, 1, 1), dtype=dtype)
            init_conv(rng, params, f"{prefix}.3", channels, planes, 1, dtype=dtype)
            if zero_init:
                zero_conv(params, f"{prefix}.3")
    return params


def context_attention(params: dict, x) -> ag.Tensor:
    """alpha = softmax_j(conv_mask(x)_j): (B, C, H, W) -> (B, 1, H*W) (pooling 'att' only)."""
    return ag.softmax(flatten_spatial(conv(params, "conv_mask", x)), axis=2)


def context(params: dict, x) -> ag.Tensor:
    """The global context c: attention pooling sum_j alpha_j x_j, or the mean ('avg'): (B, C, 1, 1)."""
    if "conv_mask.weight" not in params:
        return ag.mean(x, axis=(2, 3), keepdims=True)
    n, c, _, _ = x.shape
    pooled = ag.matmul(flatten_spatial(x), ag.swapaxes(context_attention(params, x), 1, 2))  # (B, C, 1)
    return ag.reshape(pooled, (n, c, 1, 1))


def transform(params: dict, prefix: str, ctx: ag.Tensor) -> ag.Tensor:
    """T(c) = conv(ReLU(LN_{(P,1,1)}(conv(c)))): (B, C, 1, 1) -> (B, C, 1, 1)."""
    hidden = conv(params, f"{prefix}.0", ctx)
    planes = hidden.shape[1]
    hidden = ag.relu(layer_norm(params, f"{prefix}.1", hidden, (planes, 1, 1), eps=LN_EPS))
    return conv(params, f"{prefix}.3", hidden)


def gcnet(params: dict, x, *, train: bool = False) -> ag.Tensor:
    """Apply the GC block to x (B, C, H, W) -> (B, C, H, W).  ``train`` has no effect (no BN/dropout)."""
    fusions = [f for f in FUSIONS if f"{f}_conv.0.weight" in params]
    if not fusions:
        raise ValueError(f"{NAME}: the parameters have neither channel_add_conv nor channel_mul_conv")
    x = check_input(NAME, x, channels=params[f"{fusions[0]}_conv.0.weight"].shape[1])
    check_dtype(NAME, x, params)
    ctx = context(params, x)
    out = x
    if "channel_mul" in fusions:
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
    description="global context block: attention pooling, LayerNorm bottleneck, channel add",
))
