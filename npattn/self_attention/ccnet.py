"""CCNet: criss-cross attention (Huang, Wang, Huang, Huang, Wei, Liu, "CCNet: Criss-Cross Attention for
Semantic Segmentation", ICCV 2019).

Each position u = (h, w) attends to the H + W - 1 positions of its row and column (itself counted once)::

    Q = conv1x1_{C->C/8}(x)   K = conv1x1_{C->C/8}(x)   V = conv1x1_{C->C}(x)        (all with bias)
    e_col[h, w, g] = Q[:, h, w] . K[:, g, w]     g != h    (the column; self excluded)   (B, H, W, H)
    e_row[h, w, v] = Q[:, h, w] . K[:, h, v]     all v     (the row; self included)      (B, H, W, W)
    A = softmax over the H - 1 + W entries of cat[e_col, e_row]      (no scaling)
    out[:, h, w] = sum_g A_col[h, w, g] V[:, g, w] + sum_v A_row[h, w, v] V[:, h, v]
    y = gamma * out + x                                   gamma (1,), initialised to 0

RCCA applies the *same* module R times (``recurrence``, default 2 as in the paper and the training
scripts): x <- CCA(x), R times, so after two steps every position has information from every other.

Follows the official pure-PyTorch code (``speedinghzl/CCNet``, master ``cc_attention/functions.py``):
the column energies get -inf on their diagonal, which removes the self position from the column branch
(the CUDA kernel of branch ``pytorch-1.1`` stores exactly H + W - 1 logits; both agree).  Here the
column's self entry is masked out of the softmax (``autograd.softmax(mask=...)``), which gives the same
numbers without an infinite logit.  Only the attention part of ``RCCAModule`` is implemented (its conva /
convb / bottleneck convs and classifier are plain convolutions around it).

Complexity: the energies are (B, H, W, H + W), computed with batched matrix products over columns
(B*W batches of (H x Ck)(Ck x H)) and rows (B*H batches of (W x Ck)(Ck x W)): O(B*C*H*W*(H + W)) time and
O(B*H*W*(H + W)) memory.  No (HW x HW) matrix is ever built.  As in the official code, each batch of
matrices is a contiguous copy (``.contiguous().view``): BLAS needs a unit stride.

Parameters (names as the spec's ``RecurrentCCA``): ``cca.query_conv.weight (C/8, C, 1, 1)`` + bias,
``cca.key_conv.*``, ``cca.value_conv.weight (C, C, 1, 1)`` + bias, ``cca.gamma (1,)``.  ``gamma_init``
sets gamma (official 0, the block starts as the identity; the registry uses 0.5 so every parameter has a
non-zero gradient).
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, conv, conv_shapes, example, init_conv, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Choice, Ints, Space, image
from ._common import init_gamma

NAME = "ccnet"
PREFIX = "cca."


def init(rng, channels: int, *, gamma_init: float = 0.0, dtype=np.float64) -> dict:
    """Parameters of one criss-cross attention module (shared by all recurrences)."""
    key_channels = channels // 8
    if key_channels < 1:
        raise ValueError(f"{NAME}: channels must be at least 8 (query/key have C // 8), got {channels}")
    params: dict = {}
    init_conv(rng, params, f"{PREFIX}query_conv", key_channels, channels, 1, dtype=dtype)
    init_conv(rng, params, f"{PREFIX}key_conv", key_channels, channels, 1, dtype=dtype)
    init_conv(rng, params, f"{PREFIX}value_conv", channels, channels, 1, dtype=dtype)
    init_gamma(params, f"{PREFIX}gamma", gamma_init, dtype)
    return params


def _self_mask(height: int, width: int):
    """Keep-mask (H, 1, H + W) over cat[column, row]: False at the column entry g == h (self)."""
    keep = np.ones((height, 1, height + width), dtype=bool)
    keep[np.arange(height), 0, np.arange(height)] = False
    return ag.from_numpy(keep)


def _batched(t: ag.Tensor, axes: tuple) -> ag.Tensor:
    """Permute a 4-D tensor and merge its first two axes: a contiguous stack of matrices.

    Merging axes of a permuted view makes ``reshape`` copy (torch's ``.contiguous().view``), so the
    batched products below always see matrices with a unit stride.  NumPy's matmul falls back to a loop
    without BLAS for some permuted operands -- 40-100x slower at (2, 256, 64, 64).
    """
    permuted = ag.transpose(t, axes)
    a, b, m, n = permuted.shape
    return ag.reshape(permuted, (a * b, m, n))


def criss_cross_attention_map(query: ag.Tensor, key: ag.Tensor) -> ag.Tensor:
    """A = softmax(cat[e_col, e_row]) over the last axis: (B, Ck, H, W) twice -> (B, H, W, H + W).

    Entry [b, h, w, g] for g < H weighs V[:, g, w] (column; zero at g == h), entry [b, h, w, H + v]
    weighs V[:, h, v] (row).
    """
    b, _, h, w = query.shape
    energy_col = ag.matmul(_batched(query, (0, 3, 2, 1)), _batched(key, (0, 3, 1, 2)))   # (B*W, H, H): [w][h, g]
    energy_col = ag.transpose(ag.reshape(energy_col, (b, w, h, h)), (0, 2, 1, 3))          # (B, H, W, H)
    energy_row = ag.matmul(_batched(query, (0, 2, 3, 1)), _batched(key, (0, 2, 1, 3)))   # (B*H, W, W): [h][w, v]
    energy = ag.concatenate([energy_col, ag.reshape(energy_row, (b, h, w, w))], axis=3)   # (B, H, W, H + W)
    return ag.softmax(energy, axis=3, mask=_self_mask(h, w))


# OpenBLAS runs a GEMM of at most 4 * 65536 multiply-adds on one thread (GEMM_MULTITHREAD_THRESHOLD).
_SINGLE_THREAD_GEMM = 1 << 18


def _channel_group(channels: int, work_per_channel: int) -> int:
    """The largest divisor g of ``channels`` with g * work_per_channel <= _SINGLE_THREAD_GEMM (at least 1)."""
    limit = max(1, _SINGLE_THREAD_GEMM // work_per_channel)
    return max(d for d in range(1, channels + 1) if channels % d == 0 and d <= limit)


def _aggregate_lines(value: ag.Tensor, attention: ag.Tensor) -> ag.Tensor:
    """Batched (C x L') @ (L' x L) products, split into channel groups: (K, C, L'), (K, L', L) -> (K, C, L).

    The aggregation is K = B*W (or B*H) small products.  Run as they are, each is big enough for OpenBLAS
    to split it over threads, and the thread hand-offs of hundreds of small calls dominate -- up to
    10x slower than torch when other processes compete for the cores.  Channel groups small enough for
    a single thread give the same sums (each output is still one length-L' dot product) without them.
    """
    k, c, lines = value.shape
    group = _channel_group(c, lines * attention.shape[2])
    grouped = ag.reshape(value, (k, c // group, group, lines))
    return ag.reshape(ag.matmul(grouped, ag.expand_dims(attention, 1)), (k, c, attention.shape[2]))


def criss_cross_aggregate(attention: ag.Tensor, value: ag.Tensor) -> ag.Tensor:
    """out[:, h, w] = sum_g A[h, w, g] V[:, g, w] + sum_v A[h, w, H + v] V[:, h, v]: -> (B, C, H, W)."""
    b, c, h, w = value.shape
    att_col = _batched(attention[:, :, :, :h], (0, 2, 3, 1))               # (B*W, H', H): [w][g, h]
    att_row = _batched(attention[:, :, :, h:], (0, 1, 3, 2))               # (B*H, W', W): [h][v, w]
    out_col = _aggregate_lines(_batched(value, (0, 3, 1, 2)), att_col)     # (B*W, C, H)
    out_row = _aggregate_lines(_batched(value, (0, 2, 1, 3)), att_row)     # (B*H, C, W)
    return (ag.transpose(ag.reshape(out_col, (b, w, c, h)), (0, 2, 3, 1))
            + ag.transpose(ag.reshape(out_row, (b, h, c, w)), (0, 2, 1, 3)))


def criss_cross(params, x: ag.Tensor) -> ag.Tensor:
    """One criss-cross attention step: y = gamma * out + x, (B, C, H, W) -> (B, C, H, W).

    A building block (the parameters as :func:`ccnet` has checked them); :func:`ccnet` is the public entry.
    """
    query = conv(params, f"{PREFIX}query_conv", x)
    key = conv(params, f"{PREFIX}key_conv", x)
    value = conv(params, f"{PREFIX}value_conv", x)
    out = criss_cross_aggregate(criss_cross_attention_map(query, key), value)
    return params[f"{PREFIX}gamma"] * out + x


def _channels(params) -> int:
    """C, with every parameter checked: query/key (Ck, C, 1, 1), value (C, C, 1, 1), all with bias, gamma (1,)."""
    channels = params.shape(f"{PREFIX}value_conv.weight")[0]
    key_channels = params.shape(f"{PREFIX}query_conv.weight")[0]
    take_all(params, {**conv_shapes(f"{PREFIX}query_conv", key_channels, channels),
                      **conv_shapes(f"{PREFIX}key_conv", key_channels, channels),
                      **conv_shapes(f"{PREFIX}value_conv", channels, channels),
                      f"{PREFIX}gamma": (1,)})
    return channels


@uses_params(NAME)
def ccnet(params, x, *, train: bool = False, recurrence: int = 2) -> ag.Tensor:
    """Recurrent criss-cross attention: ``recurrence`` steps of one shared module on x (B, C, H, W).

    ``train`` has no effect (no BatchNorm or dropout in the attention module).
    """
    x = check_input(NAME, x, channels=_channels(params), min_size=1)
    check_dtype(NAME, x, params)
    if isinstance(recurrence, bool) or not isinstance(recurrence, (int, np.integer)) or recurrence < 1:
        raise ValueError(f"{NAME}: recurrence must be an int of at least 1, got {recurrence!r}")
    for _ in range(recurrence):
        x = criss_cross(params, x)
    return x


register(Mechanism(
    name=NAME, family="self_attention",
    paper=Paper("Huang, Wang, Huang, Huang, Wei, Liu", "CCNet: Criss-Cross Attention for Semantic Segmentation",
                "ICCV", 2019),
    init=init, apply_fn=ccnet, config={"channels": 16, "gamma_init": 0.5},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 5, 7), dtype),),
    # C // 8 >= 1 is init's rule, C from 8 up (with remainders); a one-row (or one-column) map leaves the column
    # (row) branch only the position itself; gamma 0 is the official identity start
    space=Space(config={"channels": Ints(8, 20), "gamma_init": Choice(0.5, 0.0, -1.0)},
                options={"recurrence": Ints(1, 3)}, inputs=image()),
    description="recurrent (R=2) criss-cross attention over each position's row and column",
))
