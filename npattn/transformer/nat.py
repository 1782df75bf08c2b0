"""Neighborhood Attention (NAT, Hassani, Walton, Li, Li, Shi, CVPR 2023) and Dilated Neighborhood Attention
(DiNAT, Hassani and Shi, 2022): 2-D attention of every token over its K0 x K1 nearest neighbours, with a
relative position bias.

On x (B, H, W, C), heads h, head dim d = C / h, scale s = ``qk_scale or d**-0.5``::

    [q; k; v] = x W_qkv^T + b_qkv                                 (B, H, W, 3C), [q | k | v], heads inside
    logits_ij = (s q_i) . k_j + rpb[h, bias0(i, j), bias1(i, j)]   for the K0 K1 keys j in N(i)
    y_i       = proj( sum_{j in N(i)} softmax_j(logits_ij) v_j )

The neighbourhood N(i) follows NATTEN 0.17's reference (naive CPU) kernels, per axis independently (length
L, odd kernel K, r = K // 2, dilation d, K d <= L):

* token i lies on sub-grid g = i mod d at sub-index p = i // d; that sub-grid holds L_g = ceil((L - g) / d)
  tokens, and dilated NA is plain NA on each of the d interleaved sub-grids;
* window start s = clamp(p - r, 0, L_g - K): the window is **clamped** at the borders, not zero-padded, so
  every query sees exactly K keys per axis, off-centre near a border;
* keys (s + t) d + g for t < K, and bias index (s + t) - p + K - 1 in [0, 2K - 2]: the offset of the key
  from the query, looked up in the clamped window.

Neighbours are flattened row-major (t0, t1), as NATTEN's ``attn`` (..., K0 * K1).  NATTEN 0.17 rejects
maps smaller than K d; NATTEN <= 0.14 (and the NAT repository's first module) zero-padded the map's bottom
and right up to K d *before* the qkv projection and cropped after the attention, before ``proj``:
``pad_small=True`` does that (the padded tokens are zeros, so their keys and values are the qkv bias).

Parameters (NATTEN's ``NeighborhoodAttention2D`` names, so its state_dict loads as is): ``qkv.weight``
(3C, C) [+ ``qkv.bias`` (3C,), ``qkv_bias``], ``rpb`` (h, 2K0 - 1, 2K1 - 1) [``rel_pos_bias``; timm's
trunc_normal std 0.02 at init], ``proj.weight`` (C, C) + ``proj.bias`` (C,).  ``num_heads``,
``kernel_size``, ``qkv_bias`` and ``rel_pos_bias`` are the structure: keywords of :func:`init` and of
:func:`nat` / :func:`dinat` alike.  Dropout (0 in NAT/DiNAT) is not modelled.

Registry entries: ``nat`` (dilation 1) and ``dinat`` (dilation 2); ``dilation`` is an apply option (an int
or a pair), the same parameters serve every dilation.

Computation: keys and values are gathered into (B, h, H, K0, W, K1, d) by a pair of mutually adjoint
primitives (:func:`neighbors` and its scatter), separable per axis; the gather is an indexed take, the
scatter adds contiguous slices (the clamped window makes each offset t a shift of the map, plus the r
rows at each border that pile onto one key), so no ``add.at`` and no matrix product that would spread a
NaN beyond the queries that read it.
"""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd.backend import xp
from autograd.tensor import record

from ..layers import example, init_linear, linear, linear_shapes, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Derived, Ints, Space, channels_last
from ._parts import check_pair, check_positive_int, check_scale, check_tokens, trunc_normal

# ---------------------------------------------------------------------------------------------
# the neighbourhood, one axis at a time


def window_table(length: int, kernel: int, dilation: int = 1) -> tuple:
    """(keys, bias) int arrays (L, K): key index and bias index of neighbour t of query i along one axis.

    NATTEN 0.17's clamped windows on the dilation sub-grids (module docstring).  Requires an odd
    ``kernel`` and ``kernel * dilation <= length``.
    """
    index = np.arange(length)
    group, sub = index % dilation, index // dilation                      # sub-grid g, sub-index p
    group_length = (length - group + dilation - 1) // dilation            # L_g = ceil((L - g) / d)
    radius = kernel // 2
    start = np.clip(sub - radius, 0, group_length - kernel)               # s = clamp(p - r, 0, L_g - K)
    offset = np.arange(kernel)
    keys = (start[:, None] + offset) * dilation + group[:, None]          # (s + t) d + g
    bias = start[:, None] + offset - sub[:, None] + kernel - 1            # (s + t) - p + K - 1
    return keys, bias


def _axis_index(axis: int, index) -> tuple:
    return (slice(None),) * axis + (index,)


def neighbors(x, axis: int, kernel: int, dilation: int = 1) -> ag.Tensor:
    """Gather the K neighbours along ``axis``: (..., L, ...) -> (..., L, K, ...), neighbour t at axis + 1.

    ``out[..., i, t, ...] = x[..., keys[i, t], ...]`` with :func:`window_table`'s keys.  Its VJP is
    :func:`_neighbor_scatter`, whose VJP is this gather again, so every derivative order is exact.
    """
    x = ag.as_tensor(x)
    axis = axis % x.ndim
    length = x.shape[axis]
    keys, _ = window_table(length, kernel, dilation)
    flat = xp.take(x.data, ag.from_numpy(keys.reshape(-1)), axis=axis)
    out = xp.reshape(flat, x.shape[:axis] + (length, kernel) + x.shape[axis + 1:])
    return record(out, ((x, lambda g: _neighbor_scatter(g, axis, kernel, dilation)),))


def _neighbor_scatter(g, axis: int, kernel: int, dilation: int) -> ag.Tensor:
    """The adjoint of :func:`neighbors`: (..., L, K, ...) -> (..., L, ...), each key summing what read it.

    Per sub-grid g and offset t, queries 0..r-1 all read key t, queries r..L_g-r-1 read the shifted slice
    p - r + t, and the last r queries read key L_g - K + t (sub-grid indices); so the scatter is slice
    additions in a fixed order (deterministic, no ``add.at``).
    """
    g = ag.as_tensor(g)
    length = g.shape[axis]
    radius = kernel // 2
    out = xp.zeros(g.shape[:axis + 1] + g.shape[axis + 2:], dtype=g.dtype)     # drop the K axis
    data = g.data
    for group in range(dilation):
        group_length = (length - group + dilation - 1) // dilation
        target = out[_axis_index(axis, slice(group, None, dilation))]          # a view: L_g along axis
        for t in range(kernel):
            source = data[_axis_index(axis, slice(group, None, dilation)) + (t,)]
            middle = group_length - 2 * radius
            target[_axis_index(axis, slice(t, t + middle))] += \
                source[_axis_index(axis, slice(radius, radius + middle))]
            if radius:
                target[_axis_index(axis, t)] += xp.sum(
                    source[_axis_index(axis, slice(0, radius))], axis=axis)
                target[_axis_index(axis, group_length - kernel + t)] += xp.sum(
                    source[_axis_index(axis, slice(group_length - radius, group_length))], axis=axis)
    return record(out, ((g, lambda h: neighbors(h, axis, kernel, dilation)),))


def neighborhood_2d(t, kernel: tuple, dilation: tuple) -> ag.Tensor:
    """(B, h, H, W, d) -> (B, h, H, K0, W, K1, d): the 2-D neighbourhood, one axis after the other."""
    return neighbors(neighbors(t, 2, kernel[0], dilation[0]), 4, kernel[1], dilation[1])


def relative_bias(rpb, height: int, width: int, kernel: tuple, dilation: tuple) -> ag.Tensor:
    """rpb (h, 2K0 - 1, 2K1 - 1) -> (h, H, K0, W, K1): the bias of each query and neighbour."""
    _, bias0 = window_table(height, kernel[0], dilation[0])                # (H, K0)
    _, bias1 = window_table(width, kernel[1], dilation[1])                 # (W, K1)
    index = (slice(None), ag.from_numpy(bias0[:, :, None, None]), ag.from_numpy(bias1[None, None, :, :]))
    return ag.getitem(rpb, index)


# ---------------------------------------------------------------------------------------------
# parameters


def init(rng, dim: int, *, num_heads: int, kernel_size, qkv_bias: bool = True, rel_pos_bias: bool = True,
         dtype=np.float64) -> dict:
    """Parameters of ``NeighborhoodAttention2D(dim, num_heads, kernel_size)``: qkv, rpb, proj.

    Linear layers take PyTorch's default init; ``rpb`` timm's trunc_normal(std=0.02) (as NATTEN).
    """
    kernel = _check_kernel("nat", kernel_size)
    heads = check_positive_int("nat", "num_heads", num_heads)
    if dim % heads:
        raise ValueError(f"nat: dim={dim} must be divisible by num_heads={heads}")
    params: dict = {}
    init_linear(rng, params, "qkv", 3 * dim, dim, bias=qkv_bias, dtype=dtype)
    if rel_pos_bias:
        params["rpb"] = trunc_normal(rng, (heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1), 0.02, dtype)
    init_linear(rng, params, "proj", dim, dim, dtype=dtype)
    return params


def _check_kernel(name: str, kernel_size) -> tuple:
    kernel = check_pair(name, "kernel_size", kernel_size)
    if any(k % 2 == 0 or k < 2 for k in kernel):
        raise ValueError(f"{name}: kernel_size must be odd and > 1 (NATTEN 0.17), got {kernel_size!r}")
    return kernel


def _sizes(params, heads: int, kernel: tuple, qkv_bias: bool, rel_pos_bias: bool) -> int:
    """C, every parameter checked against the shapes it implies."""
    name = params.mechanism
    dim = params.shape("qkv.weight")[-1]
    if dim % heads:
        raise ValueError(f"{name}: the width C={dim} of qkv.weight must be divisible by num_heads={heads}")
    shapes = linear_shapes("qkv", 3 * dim, dim, bias=qkv_bias)
    if rel_pos_bias:
        shapes["rpb"] = (heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1)
    shapes.update(linear_shapes("proj", dim, dim))
    take_all(params, shapes)
    return dim


# ---------------------------------------------------------------------------------------------
# the mechanism


def _neighborhood_weights(query, keys, bias) -> ag.Tensor:
    """softmax over the K0 K1 neighbours of q_i . k_j + bias: the logits + bias + softmax step.

    query (B, h, H, W, d) (already scaled), keys (B, h, H, K0, W, K1, d), bias (h, H, K0, W, K1) or None
    -> weights (B, h, H, K0, W, K1), summing to 1 over (K0, K1).
    """
    b, heads, height, k0, width, k1, _ = keys.shape
    logits = ag.sum(ag.expand_dims(ag.expand_dims(query, 3), 5) * keys, axis=-1)   # q_i . k_j
    if bias is not None:
        logits = logits + bias                                                      # + rpb[h, bias0, bias1]
    # softmax over the neighbours: bring (K0, K1) last, flatten row-major (t0, t1) as NATTEN
    logits = ag.reshape(ag.transpose(logits, (0, 1, 2, 4, 3, 5)), (b, heads, height, width, k0 * k1))
    weights = ag.softmax(logits, axis=-1)
    return ag.transpose(ag.reshape(weights, (b, heads, height, width, k0, k1)), (0, 1, 2, 4, 3, 5))


def _qkv(params, x, heads: int, qkv_bias: bool) -> tuple:
    """q, k, v (B, h, H, W, d) from x (B, H, W, C): [q | k | v] thirds, heads inside each."""
    b, height, width, dim = x.shape
    qkv = linear(params, "qkv", x, bias=qkv_bias, out=3 * dim)
    qkv = ag.transpose(ag.reshape(qkv, (b, height, width, 3, heads, dim // heads)), (3, 0, 4, 1, 2, 5))
    return qkv[0], qkv[1], qkv[2]


def _attend(params, x, *, num_heads, kernel_size, dilation, qkv_bias, rel_pos_bias, qk_scale, pad_small):
    name = params.mechanism
    heads = check_positive_int(name, "num_heads", num_heads)
    kernel = _check_kernel(name, kernel_size)
    dilation = check_pair(name, "dilation", dilation)
    scale = check_scale(name, qk_scale)
    dim = _sizes(params, heads, kernel, qkv_bias, rel_pos_bias)
    x = check_tokens(name, x, params, channels=dim, ndim=4, layout="(B, H, W, C)")
    batch, height, width, _ = x.shape
    span = (kernel[0] * dilation[0], kernel[1] * dilation[1])
    if pad_small:                                   # NATTEN <= 0.14: zero-pad bottom/right up to K d
        pads = (max(span[0] - height, 0), max(span[1] - width, 0))
        if any(pads):
            x = ag.pad(x, ((0, 0), (0, pads[0]), (0, pads[1]), (0, 0)))
    elif height < span[0] or width < span[1]:
        raise ValueError(f"{name}: x spatial size ({height}, {width}) is smaller than kernel_size * dilation = "
                         f"{span} (NATTEN 0.17 rejects it; pad_small=True zero-pads as NATTEN <= 0.14)")
    padded_h, padded_w = x.shape[1], x.shape[2]
    query, key, value = _qkv(params, x, heads, qkv_bias)
    head_dim = dim // heads
    query = query * (head_dim ** -0.5 if scale is None else scale)                  # q <- q s
    bias = relative_bias(params["rpb"], padded_h, padded_w, kernel, dilation) if rel_pos_bias else None
    weights = _neighborhood_weights(query, neighborhood_2d(key, kernel, dilation), bias)
    values = neighborhood_2d(value, kernel, dilation)                               # (B, h, H, K0, W, K1, d)
    context = ag.sum(ag.expand_dims(weights, -1) * values, axis=(3, 5))             # sum_j a_ij v_j
    context = ag.reshape(ag.transpose(context, (0, 2, 3, 1, 4)), (batch, padded_h, padded_w, dim))
    context = context[:, :height, :width]                                           # crop the padding
    return linear(params, "proj", context, out=dim)


_DOC = """Apply {what} to x (B, H, W, C); returns (B, H, W, C).

    ``num_heads``, ``kernel_size`` (odd int or pair), ``qkv_bias``, ``rel_pos_bias``: the structure, as
    given to :func:`init`.  ``dilation`` (int or pair, default {dilation}); ``qk_scale`` replaces d^-1/2;
    ``pad_small`` zero-pads maps smaller than kernel_size * dilation (NATTEN <= 0.14) instead of the
    ValueError of NATTEN 0.17.  ``train`` has no effect (no dropout, no normalisation).
    """


@uses_params("nat")
def nat(params, x, *, train: bool = False, num_heads: int, kernel_size, dilation=1, qkv_bias: bool = True,
        rel_pos_bias: bool = True, qk_scale=None, pad_small: bool = False) -> ag.Tensor:
    return _attend(params, x, num_heads=num_heads, kernel_size=kernel_size, dilation=dilation, qkv_bias=qkv_bias,
                   rel_pos_bias=rel_pos_bias, qk_scale=qk_scale, pad_small=pad_small)


@uses_params("dinat")
def dinat(params, x, *, train: bool = False, num_heads: int, kernel_size, dilation=2, qkv_bias: bool = True,
          rel_pos_bias: bool = True, qk_scale=None, pad_small: bool = False) -> ag.Tensor:
    return _attend(params, x, num_heads=num_heads, kernel_size=kernel_size, dilation=dilation, qkv_bias=qkv_bias,
                   rel_pos_bias=rel_pos_bias, qk_scale=qk_scale, pad_small=pad_small)


nat.__doc__ = _DOC.format(what="neighborhood attention (NAT)", dilation=1)
dinat.__doc__ = _DOC.format(what="dilated neighborhood attention (DiNAT)", dilation=2)


@uses_params("nat")
def attention_maps(params, x, *, num_heads: int, kernel_size, dilation=1, qkv_bias: bool = True,
                   rel_pos_bias: bool = True, qk_scale=None) -> tuple:
    """(weights (B, h, H, W, K0 * K1), keys (H, W, K0 * K1) flat key positions) of the NA layer on x.

    Reads and checks the whole parameter dict (``proj`` too), as :func:`nat`.  ``keys[i, j, n]`` is the
    flat position row * W + col of neighbour n of query (i, j), neighbours row-major as NATTEN's ``attn``.
    """
    name = params.mechanism
    heads = check_positive_int(name, "num_heads", num_heads)
    kernel, dilation = _check_kernel(name, kernel_size), check_pair(name, "dilation", dilation)
    scale = check_scale(name, qk_scale)
    dim = _sizes(params, heads, kernel, qkv_bias, rel_pos_bias)
    x = check_tokens(name, x, params, channels=dim, ndim=4, layout="(B, H, W, C)")
    batch, height, width, _ = x.shape
    if height < kernel[0] * dilation[0] or width < kernel[1] * dilation[1]:
        raise ValueError(f"{name}: x spatial size ({height}, {width}) is smaller than kernel_size * dilation")
    query, key, _ = _qkv(params, x, heads, qkv_bias)
    query = query * ((dim // heads) ** -0.5 if scale is None else scale)
    bias = relative_bias(params["rpb"], height, width, kernel, dilation) if rel_pos_bias else None
    weights = _neighborhood_weights(query, neighborhood_2d(key, kernel, dilation), bias)
    neighbours = kernel[0] * kernel[1]
    weights = ag.reshape(ag.transpose(weights, (0, 1, 2, 4, 3, 5)), (batch, heads, height, width, neighbours))
    rows, _ = window_table(height, kernel[0], dilation[0])
    cols, _ = window_table(width, kernel[1], dilation[1])
    flat = rows[:, None, :, None] * width + cols[None, :, None, :]                  # (H, W, K0, K1)
    return weights, flat.reshape(height, width, -1)


def _example(shape):
    return lambda rng, dtype=np.float64: (example(rng, shape, dtype),)


def _space(dilations: Choice) -> Space:
    """C = heads * d (d down to 1); odd kernels > 1 (NATTEN 0.17's rule), square or not; every ``dilation`` in
    ``dilations`` (ints and pairs); maps up to 12 x 12, at least kernel * dilation per axis unless ``pad_small``
    zero-pads them (then down to 1 x 1)."""
    return Space(config={"num_heads": Ints(1, 3), "_head_dim": Ints(1, 4),
                         "dim": Derived(lambda v: v.num_heads * v._head_dim),
                         "_k0": Choice(3, 5, 7), "_k1": Choice(3, 5, 7), "_square": Bools(),
                         "kernel_size": Derived(lambda v: v._k0 if v._square else (v._k0, v._k1)),
                         "qkv_bias": Bools(), "rel_pos_bias": Bools()},
                 options={"dilation": dilations, "qk_scale": Choice(None, 0.5), "pad_small": Bools()},
                 inputs=channels_last(height=Ints(1, 12)),
                 where=(lambda v: v.pad_small or _fits(v),))


def _fits(v) -> bool:
    """kernel * dilation <= the map, per axis."""
    kernel = check_pair("nat", "kernel_size", v.kernel_size)
    dilation = check_pair("nat", "dilation", v.dilation)
    return v.height >= kernel[0] * dilation[0] and v.width >= kernel[1] * dilation[1]


_PAPER_NAT = Paper("Hassani, Walton, Li, Li, Shi", "Neighborhood Attention Transformer", "CVPR", 2023)
_PAPER_DINAT = Paper("Hassani, Shi", "Dilated Neighborhood Attention Transformer", "arXiv:2209.15001", 2022)

register(Mechanism(
    name="nat", family="transformer", paper=_PAPER_NAT, init=init, apply_fn=nat,
    config={"dim": 8, "num_heads": 2, "kernel_size": 3},
    example_input=_example((2, 5, 6, 8)), channel_axis=3, min_spatial=3,
    space=_space(Choice(1, 2, (1, 2))),
    description="2-D neighborhood attention: each token attends to its clamped K x K window, with "
                "relative position bias (NATTEN 0.17 semantics)",
))

register(Mechanism(
    name="dinat", family="transformer", paper=_PAPER_DINAT, init=init, apply_fn=dinat,
    config={"dim": 8, "num_heads": 2, "kernel_size": 3}, options={"dilation": 2},
    example_input=_example((2, 7, 9, 8)), channel_axis=3, min_spatial=6,
    # dilations that do and do not divide the map, per axis different, and 1 (plain NA)
    space=_space(Choice(2, 3, 1, (2, 1), (1, 3), (3, 2))),
    description="dilated neighborhood attention: NA on each of the d x d interleaved sub-grids",
))
