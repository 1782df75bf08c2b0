"""A²-Nets: double attention block (Chen, Kalantidis, Li, Yan, Feng, NeurIPS 2018).

Gather global features into c_n descriptors, then distribute them back to every position (L = H*W)::

    A = conv1x1_{C->c_m}(X)   B = conv1x1_{C->c_n}(X)   V = conv1x1_{C->c_n}(X)      (N, c_m | c_n, L)
    G = A softmax_L(B)^T            gather: second-order attention pooling,        (N, c_m, c_n)
                                    g_i = sum_j A[:, j] softmax_j(B[i, :])_j
    Z = G softmax_{c_n}(V)          distribute: z_j = sum_i g_i softmax_i(V[:, j])_i  (N, c_m, L)
    Y = conv1x1_{c_m->C}(Z)         conv_reconstruct                               (N, C, H, W)
    Y = X + Y                       with residual=True (how the paper places it in a ResNet block)

No official code was released. This follows the paper: softmax of B over the L positions (each of the c_n
attention maps sums to 1 over space), softmax of V over the c_n descriptors (each position's attention
vector sums to 1); every 1x1 conv has a bias; the reconstruction conv is always applied. ``residual``
defaults to False (the block alone). The circulating fightingcv ``DoubleAttention`` calls ``F.softmax``
without ``dim`` and so normalises over the *batch* axis for both softmaxes -- a bug, not reproduced.

No structure option: C, c_m and c_n are read from the shapes (``convA.weight`` is (c_m, C, 1, 1),
``convB.weight`` (c_n, C, 1, 1)) and every 1x1 kernel is checked to be 1x1.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, conv, conv_shapes, example, init_conv, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Ints, Space, image

NAME = "a2"


def init(rng, channels: int, *, c_m: int, c_n: int, dtype=np.float64) -> dict:
    """Parameters: ``convA.weight (c_m, C, 1, 1)``, ``convB.weight`` and ``convV.weight (c_n, C, 1, 1)``,
    ``conv_reconstruct.weight (C, c_m, 1, 1)``, each with a bias.
    """
    if min(channels, c_m, c_n) < 1:
        raise ValueError(f"{NAME}: channels, c_m and c_n must be positive, got {channels}, {c_m}, {c_n}")
    params: dict = {}
    init_conv(rng, params, "convA", c_m, channels, 1, dtype=dtype)
    init_conv(rng, params, "convB", c_n, channels, 1, dtype=dtype)
    init_conv(rng, params, "convV", c_n, channels, 1, dtype=dtype)
    init_conv(rng, params, "conv_reconstruct", channels, c_m, 1, dtype=dtype)
    return params


def _flat(t: ag.Tensor) -> ag.Tensor:
    n, c, h, w = t.shape
    return ag.reshape(t, (n, c, h * w))


def _validate(params, x) -> ag.Tensor:
    """x against the parameters, and every parameter's shape (C, c_m, c_n read from convA / convB)."""
    channels = params.shape("convA.weight")[1]
    x = check_input(NAME, x, channels=channels, min_size=1)
    check_dtype(NAME, x, params)
    c_m, c_n = params.shape("convA.weight")[0], params.shape("convB.weight")[0]
    take_all(params, {**conv_shapes("convA", c_m, channels), **conv_shapes("convB", c_n, channels),
                      **conv_shapes("convV", c_n, channels), **conv_shapes("conv_reconstruct", channels, c_m)},
             complete=True)
    return x


def _attention(params, x: ag.Tensor) -> tuple:
    """(gather attention softmax_L(B), distribute attention softmax_{c_n}(V)), both (N, c_n, L)."""
    gather_attention = ag.softmax(_flat(conv(params, "convB", x)), axis=2)       # over positions
    distribute_attention = ag.softmax(_flat(conv(params, "convV", x)), axis=1)   # over descriptors
    return gather_attention, distribute_attention


@uses_params(NAME)
def attention_maps(params, x) -> tuple:
    """The two attentions as (N, c_n, H, W): softmax_L(B) (each map sums to 1 over H, W) and
    softmax_{c_n}(V) (sums to 1 over the c_n axis at each position).

    Every parameter is checked (``convA`` and ``conv_reconstruct`` too, though not computed)."""
    x = _validate(params, x)
    n, _, h, w = x.shape
    return tuple(ag.reshape(a, (n, a.shape[1], h, w)) for a in _attention(params, x))


@uses_params(NAME)
def double_attention(params, x, *, train: bool = False, residual: bool = False) -> ag.Tensor:
    """Apply the double attention block to ``x`` (N, C, H, W); returns (N, C, H, W).

    ``residual=True`` adds the input (X + Y). ``train`` has no effect (no BatchNorm).
    """
    if not isinstance(residual, (bool, np.bool_)):
        raise TypeError(f"{NAME}: residual must be a bool, got {residual!r}")
    x = _validate(params, x)
    n, _, h, w = x.shape
    features = _flat(conv(params, "convA", x))                                  # A (N, c_m, L)
    gather_attention, distribute_attention = _attention(params, x)              #   (N, c_n, L)
    global_descriptors = ag.matmul(features, ag.swapaxes(gather_attention, 1, 2))  # G = A softmax(B)^T (N, c_m, c_n)
    distributed = ag.matmul(global_descriptors, distribute_attention)           # Z = G softmax(V) (N, c_m, L)
    distributed = ag.reshape(distributed, (n, distributed.shape[1], h, w))
    out = conv(params, "conv_reconstruct", distributed)                         # Y (N, C, H, W)
    return x + out if residual else out


register(Mechanism(
    name=NAME, family="hybrid",
    paper=Paper("Chen, Kalantidis, Li, Yan, Feng", "A^2-Nets: Double Attention Networks", "NeurIPS", 2018),
    init=init, apply_fn=double_attention, config={"channels": 32, "c_m": 12, "c_n": 8},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 32, 6, 7), dtype),),
    # C, c_m, c_n are independent (any positive sizes, c_m or c_n above C too); a 1x1 map makes both softmaxes
    # over one position trivial
    space=Space(config={"channels": Ints(1, 32), "c_m": Ints(1, 12), "c_n": Ints(1, 12)},
                options={"residual": Bools()}, inputs=image()),
    description="gather global descriptors by second-order attention pooling, distribute them by softmax",
))
