"""Coordinate Attention (Hou, Zhou, Feng, CVPR 2021).

Two direction-aware descriptors, a shared bottleneck, two gates::

    z^h = mean_W(x)          (N, C, H)      one value per row
    z^w = mean_H(x)          (N, C, W)      one value per column
    f   = δ(BN(F1([z^h; z^w])))             F1: 1x1 conv C -> mip, on the (H + W)-long strip   (N, mip, H + W)
    g^h = σ(F_h(f^h)),  g^w = σ(F_w(f^w))   F_h, F_w: 1x1 convs mip -> C                     (N, C, H), (N, C, W)
    y   = x · g^w · g^h                                                                        (N, C, H, W)

Follows the official code (``houqb/CoordAttention``, ``coordatt.py``, ``CoordAtt(inp, oup, reduction=32)``):

* mip = max(min_mip, C // reduction) with min_mip = 8, reduction = 32 (floor division);
* the three 1x1 convs carry biases (``bias=False`` gives timm's ``CoordAttn`` default);
* δ = h_swish(t) = t · ReLU6(t + 3) / 6, whose gradient is 0 at t = -3 and 1 at t = +3 (ReLU6's
  gradient is 0 at both ends of [0, 6], as PyTorch's hardtanh); ``act="hardswish"`` names the same
  function as ``nn.Hardswish`` (identical values and kink gradients, kept for timm users);
* one BatchNorm ``bn1`` over the concatenated strip, so in training its batch statistics mix the N·(H + W)
  positions of both directions;
* out = identity · a_w · a_h, in that order; the output width equals the input width (oup = inp).

The paper's block diagram has the same layers; it does not state the width rule, the biases or δ.

Parameters (the official state_dict names): ``conv1.weight (mip, C, 1, 1)``, ``conv1.bias (mip,)``,
``bn1.*`` (mip,), ``conv_h.weight (C, mip, 1, 1)``, ``conv_h.bias (C,)``, ``conv_w.weight (C, mip, 1, 1)``,
``conv_w.bias (C,)``.  ``bias`` is a structure option of :func:`init` and :func:`coord` alike.
"""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd import xp

from ..layers import batch_norm, check_dtype, check_input, example, init_batch_norm, init_conv
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Ints, Space, bn_train, image

NAME = "coord"
ACTIVATIONS = ("h_swish", "hardswish")


def init(rng, channels: int, *, reduction: int = 32, min_mip: int = 8, bias: bool = True,
         dtype=np.float64) -> dict:
    """Parameters for C = ``channels``: ``conv1`` (mip, C, 1, 1), ``bn1`` (mip), ``conv_h``/``conv_w``
    (C, mip, 1, 1), with biases unless ``bias=False``; mip = max(min_mip, C // reduction)."""
    if channels < 1 or reduction < 1 or min_mip < 1:
        raise ValueError(f"{NAME}: channels, reduction and min_mip must be positive, got channels={channels}, "
                         f"reduction={reduction}, min_mip={min_mip}")
    mip = max(min_mip, channels // reduction)
    params: dict = {}
    init_conv(rng, params, "conv1", mip, channels, 1, bias=bias, dtype=dtype)
    init_batch_norm(params, "bn1", mip, dtype=dtype)
    init_conv(rng, params, "conv_h", channels, mip, 1, bias=bias, dtype=dtype)
    init_conv(rng, params, "conv_w", channels, mip, 1, bias=bias, dtype=dtype)
    return params


def _pointwise(params, prefix: str, strip, out: int, bias: bool):
    """A 1x1 conv on a strip (N, C_in, L, 1): weight (out, C_in, 1, 1) [+ bias (out,)] -> (N, out, L, 1)."""
    weight = params.take(f"{prefix}.weight", (out, strip.shape[1], 1, 1))
    b = params.take(f"{prefix}.bias", (out,)) if bias else None
    return ag.conv2d(strip, weight, b)


def _relu6_open(u):
    """ReLU6 with PyTorch's hardtanh gradient: 1 strictly inside (0, 6), 0 at and beyond both ends."""
    inside = (u.data > 0) & (u.data < 6)
    clipped = ag.Tensor(xp.clip(u.data, 0, 6))           # constant where the gradient is 0 (NaN stays NaN)
    return ag.where(inside, u, clipped)


def h_swish(t):
    """h_swish(t) = t · ReLU6(t + 3) / 6 (official ``h_swish``; ``nn.Hardswish`` has the same values)."""
    return t * (_relu6_open(t + 3.0) / 6.0)


def _check_act(act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"{NAME}: act must be one of {ACTIVATIONS}, got {act!r}")


def _gates(params, x, train: bool, bias: bool):
    """(a_h (N, C, H, 1), a_w (N, C, 1, W)) for x (N, C, H, W)."""
    c, h = x.shape[1], x.shape[2]
    mip = params.shape("conv1.weight")[0]
    z_h = ag.mean(x, axis=3, keepdims=True)                              # z^h: pool over W   (N, C, H, 1)
    z_w = ag.swapaxes(ag.mean(x, axis=2, keepdims=True), 2, 3)           # z^w: pool over H   (N, C, W, 1)
    strip = ag.concatenate([z_h, z_w], axis=2)                           # [z^h; z^w]         (N, C, H + W, 1)
    f = _pointwise(params, "conv1", strip, mip, bias)                    # F1
    f = h_swish(batch_norm(params, "bn1", f, train))                     # f = δ(BN(F1(.)))
    f_h, f_w = f[:, :, :h], f[:, :, h:]                                  # split back: (N, mip, H, 1), (N, mip, W, 1)
    a_h = ag.sigmoid(_pointwise(params, "conv_h", f_h, c, bias))         # g^h = σ(F_h(f^h))  (N, C, H, 1)
    a_w = ag.sigmoid(_pointwise(params, "conv_w", f_w, c, bias))         # g^w = σ(F_w(f^w))  (N, C, W, 1)
    return a_h, ag.swapaxes(a_w, 2, 3)                                   # a_w as (N, C, 1, W)


def _validate(params, x, act):
    x = check_input(NAME, x, channels=params.shape("conv1.weight")[1], min_size=1)
    check_dtype(NAME, x, params)
    _check_act(act)
    return x


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, bias: bool = True, act: str = "h_swish") -> tuple:
    """The two gates of x (N, C, H, W): ``a_h`` (N, C, H, 1) and ``a_w`` (N, C, 1, W)."""
    return _gates(params, _validate(params, x, act), train, bias)


@uses_params(NAME)
def coord(params, x, *, train: bool = False, bias: bool = True, act: str = "h_swish") -> ag.Tensor:
    """Apply Coordinate Attention to ``x`` (N, C, H, W); returns (N, C, H, W).

    ``train``: ``bn1`` uses batch statistics (over N·(H + W) strip positions) and reports its running
    statistics to ``npattn.track_running_stats()``.  ``bias``: the structure, as given to :func:`init`.
    ``act``: "h_swish" (official) or "hardswish" (the same function).
    """
    x = _validate(params, x, act)
    a_h, a_w = _gates(params, x, train, bias)
    return x * a_w * a_h                                                 # y = x · g^w · g^h (official order)


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Hou, Zhou, Feng", "Coordinate Attention for Efficient Mobile Network Design", "CVPR", 2021),
    init=init, apply_fn=coord, config={"channels": 16, "reduction": 4, "min_mip": 2},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 5, 7), dtype),),
    # mip = max(min_mip, C // r); BN over the [H; W] strip of every sample
    space=Space(config={"channels": Ints(1, 24), "reduction": Ints(1, 32), "min_mip": Ints(1, 8), "bias": Bools()},
                options={"act": Choice("h_swish", "hardswish")}, inputs=image(),
                where=(bn_train(lambda v: v.batch * (v.height + v.width)),)),
    description="direction-aware gates from row and column means through a shared 1x1 bottleneck",
))
