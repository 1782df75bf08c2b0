"""ANN: asymmetric non-local blocks APNB and AFNB (Zhu, Xu, Bai, Huang, Bai, "Asymmetric Non-local Neural
Networks for Semantic Segmentation", ICCV 2019).

A non-local block whose keys and values are *sampled* by a pyramid of adaptive average pools: with
sizes (1, 3, 6, 8) the S = 1 + 9 + 36 + 64 = 110 anchors replace the N = H*W key positions, so the
attention is (N x S) instead of N x N::

    P(t) = cat_s flatten(AdaptiveAvgPool_{s x s}(t))        (B, C, S), sizes in order (1, 3, 6, 8)
    q = f_query(x_q)   k = P(f_key(x_kv))   v = P(f_value(x_kv))
    A = softmax_j(Ck^-0.5 q_i^T k_j)                          (B, N, S)      [scale: official code]
    ctx = W(v A^T)                                            (B, C_out, H, W), W: 1x1 conv Cv -> C_out

APNB (self-attention, x_q = x_kv = x)::

    f_key = f_query = ReLU(BN(conv1x1_{C->Ck}(x)))   one module: query and key share every weight
    f_value = conv1x1_{C->Cv}(x)                     no BN
    out = Dropout2d(ReLU(BN(conv1x1_{2C->C}(cat[ctx, x]))))

AFNB (fusion, x_kv = low-level features, x_q = high-level features)::

    f_key = ReLU(BN(conv1x1_{C_low->Ck}(low)))   f_query = ReLU(BN(conv1x1_{C_high->Ck}(high)))
    f_value = conv1x1_{C_low->Cv}(low)
    out = Dropout2d(BN(conv1x1_{C_out+C_high->C_out}(cat[ctx, high])))        BN, no ReLU

Follows ``MendelXu/ANN: models/seg/utils/{apnb,afnb}.py``: every conv has a bias; W is initialised to 0
(weight and bias; ``zero_init=False`` keeps PyTorch's init -- the registry uses it so every parameter gets
a gradient); the Ck^-0.5 scaling is the code's (the paper does not state it).  The official ``sizes``
list builds several identical stages with a ``scale`` max-pool that the released configs never use
(``sizes=[1]``; APNB with scale > 1 would not even upsample its context): one stage, ``stages.0``.  APNB
needs C_out == C (its fusion conv takes 2C channels).  The pooled anchors do not depend on the key map's
size, so AFNB's ``low`` may have another spatial size than ``high``; the output has ``high``'s size.

The official APNB calls its shared ``f_query``/``f_key`` module twice per forward pass, so in training
mode that BatchNorm's running statistics advance twice (momentum applied twice, counter + 2).  Query and
key are one computation here and advance it once by default; ``query_key_bn_updates=2`` reproduces the
official buffers exactly.  The official state_dict lists the shared tensors under both
``stages.0.f_key.*`` and ``stages.0.f_query.*``; :func:`official_state_dict` adds the alias and
:func:`from_official_state_dict` removes it (checking that both names hold equal tensors).

Dropout2d (official p = 0.05 in the network) is off by default (``dropout=0.0``); a positive ``dropout``
in training mode needs ``rng`` (a ``numpy.random.Generator``); ``dropout`` outside [0, 1) is an error in
eval mode too.  BatchNorm: eps 1e-5, momentum 0.1.  ``psp_sizes`` is a non-empty tuple of positive ints
(an empty pyramid leaves nothing to attend to: ValueError).  Every parameter's shape is checked against
C (the fusion conv's output), Ck and Cv before anything is computed.
"""
from __future__ import annotations

import functools

import numpy as np

import autograd as ag

from ..layers import (
    batch_norm,
    batch_norm_shapes,
    check_dtype,
    check_input,
    conv,
    conv_shapes,
    example,
    init_batch_norm,
    init_conv,
    take_all,
    track_running_stats,
)
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import BATCH, SIZE, Bools, Choice, Inputs, Ints, Space, bn_train, image
from ._common import check_dropout, dot_product_attention, dropout2d, flatten_spatial, zero_conv

NAME = "ann"
PSP_SIZES = (1, 3, 6, 8)
STAGE = "stages.0"


# ---------------------------------------------------------------------------------------------
# pyramid sampling


@functools.lru_cache(maxsize=64)
def pyramid_matrix(height: int, width: int, sizes: tuple = PSP_SIZES, dtype=np.float64):
    """The (H*W, S) matrix of the pyramid pooling: ``P(t) = flatten(t) @ matrix``, S = sum s^2.

    Column ``offset_s + i*s + j`` averages the bin (i, j) of ``AdaptiveAvgPool2d((s, s))`` (PyTorch's
    bins, which overlap when H is not a multiple of s): entry ``A_h[i, h] * A_w[j, w]`` at row h*W + w.
    """
    blocks = []
    for s in sizes:
        rows = ag.to_numpy(ag.adaptive_avg_matrix(height, s))    # (s, H)
        cols = ag.to_numpy(ag.adaptive_avg_matrix(width, s))     # (s, W)
        blocks.append(np.kron(rows, cols).T)                      # (H*W, s*s)
    return ag.from_numpy(np.concatenate(blocks, axis=1).astype(dtype))


def pyramid_pool(t, sizes: tuple = PSP_SIZES) -> ag.Tensor:
    """P(t): (B, C, H, W) -> (B, C, S), the concatenated flattened adaptive average pools."""
    n, c, h, w = t.shape
    return ag.matmul(flatten_spatial(t), pyramid_matrix(h, w, tuple(sizes), np.dtype(t.dtype)))


# ---------------------------------------------------------------------------------------------
# parameters


def _init_key_like(rng, params, prefix, out_channels, in_channels, dtype):
    """``Sequential(Conv2d(bias), BNReLU)``: ``{prefix}.0`` conv and ``{prefix}.1.0`` BatchNorm."""
    init_conv(rng, params, f"{prefix}.0", out_channels, in_channels, 1, dtype=dtype)
    init_batch_norm(params, f"{prefix}.1.0", out_channels, dtype=dtype)


def init_apnb(rng, channels: int, *, key_channels: int | None = None, value_channels: int | None = None,
              zero_init: bool = True, dtype=np.float64) -> dict:
    """APNB parameters: ``stages.0.{f_key,f_value,W}``, ``conv_bn_dropout.{0,1.0}``.

    ``key_channels`` / ``value_channels`` default to C // 2 (the network's APNB(512, 512, 256, 256)).
    """
    key_channels = channels // 2 if key_channels is None else key_channels
    value_channels = channels // 2 if value_channels is None else value_channels
    if min(channels, key_channels, value_channels) < 1:
        raise ValueError(f"{NAME}: channels, key_channels, value_channels must be positive, got "
                         f"{channels}, {key_channels}, {value_channels}")
    params: dict = {}
    _init_key_like(rng, params, f"{STAGE}.f_key", key_channels, channels, dtype)
    init_conv(rng, params, f"{STAGE}.f_value", value_channels, channels, 1, dtype=dtype)
    init_conv(rng, params, f"{STAGE}.W", channels, value_channels, 1, dtype=dtype)
    if zero_init:
        zero_conv(params, f"{STAGE}.W")
    init_conv(rng, params, "conv_bn_dropout.0", channels, 2 * channels, 1, dtype=dtype)
    init_batch_norm(params, "conv_bn_dropout.1.0", channels, dtype=dtype)
    return params


def init_afnb(rng, low_channels: int, high_channels: int, *, out_channels: int | None = None,
              key_channels: int | None = None, value_channels: int | None = None, zero_init: bool = True,
              dtype=np.float64) -> dict:
    """AFNB parameters: ``stages.0.{f_key,f_query,f_value,W}``, ``conv_bn_dropout.{0,1}``.

    ``out_channels`` defaults to C_high; ``key_channels`` / ``value_channels`` to C_high // 8 (the
    network's AFNB(1024, 2048, 2048, 256, 256)).
    """
    out_channels = high_channels if out_channels is None else out_channels
    key_channels = max(high_channels // 8, 1) if key_channels is None else key_channels
    value_channels = max(high_channels // 8, 1) if value_channels is None else value_channels
    if min(low_channels, high_channels, out_channels, key_channels, value_channels) < 1:
        raise ValueError(f"{NAME}: every channel count must be positive")
    params: dict = {}
    _init_key_like(rng, params, f"{STAGE}.f_key", key_channels, low_channels, dtype)
    _init_key_like(rng, params, f"{STAGE}.f_query", key_channels, high_channels, dtype)
    init_conv(rng, params, f"{STAGE}.f_value", value_channels, low_channels, 1, dtype=dtype)
    init_conv(rng, params, f"{STAGE}.W", out_channels, value_channels, 1, dtype=dtype)
    if zero_init:
        zero_conv(params, f"{STAGE}.W")
    init_conv(rng, params, "conv_bn_dropout.0", out_channels, out_channels + high_channels, 1, dtype=dtype)
    init_batch_norm(params, "conv_bn_dropout.1", out_channels, dtype=dtype)
    return params


#: The official APNB lists its one query/key transform under two names: official alias prefix -> npattn prefix.
OFFICIAL_ALIASES = {f"{STAGE}.f_query.": f"{STAGE}.f_key."}


def official_state_dict(params: dict) -> dict:
    """APNB parameters with the shared ``f_key`` tensors also listed as ``f_query`` (the official keys)."""
    out = dict(params)
    for alias, shared in OFFICIAL_ALIASES.items():
        for key, value in params.items():
            if key.startswith(shared):
                out[alias + key[len(shared):]] = value
    return out


def from_official_state_dict(state_dict: dict) -> dict:
    """APNB parameters from an official state_dict: the inverse of :func:`official_state_dict`.

    Each ``stages.0.f_query.*`` entry is the same tensor as its ``stages.0.f_key.*`` twin in the official
    module (one ``f_key`` module, called twice); it is dropped after checking that both hold equal arrays
    (shape, dtype and values).  A differing pair is a ValueError and an alias without its twin a KeyError,
    both naming the keys: a state_dict whose query and key transforms differ is not an APNB.
    """
    out = dict(state_dict)
    for alias, shared in OFFICIAL_ALIASES.items():
        for key in [k for k in state_dict if k.startswith(alias)]:
            twin = shared + key[len(alias):]
            if twin not in state_dict:
                raise KeyError(f"{NAME}-apnb: state_dict has {key!r} but not {twin!r}, the tensor it aliases "
                               "(the official APNB shares one query/key transform)")
            if not _same_array(state_dict[key], state_dict[twin]):
                raise ValueError(f"{NAME}-apnb: {key!r} and {twin!r} differ; the official APNB shares one query/key "
                                 "transform, so they must be equal tensors")
            del out[key]
    return out


def _same_array(a, b) -> bool:
    """Equal shape, dtype and values (NaN equal to NaN) of two host, backend or torch arrays."""
    from ..testing import to_host

    a, b = to_host(a), to_host(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


# ---------------------------------------------------------------------------------------------
# the parameters a block reads


def _check_sizes(psp_sizes) -> tuple:
    """The pyramid's output sizes as a non-empty tuple of positive ints."""
    sizes = (psp_sizes,) if isinstance(psp_sizes, (int, np.integer)) else psp_sizes
    try:
        sizes = tuple(sizes)
    except TypeError:
        raise TypeError(f"{NAME}: psp_sizes must be a tuple of positive ints, got {psp_sizes!r}") from None
    if not sizes:
        raise ValueError(f"{NAME}: psp_sizes must name at least one pooled size (official (1, 3, 6, 8)), got "
                         f"{psp_sizes!r}: without anchors the attention has nothing to attend to")
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
        raise ValueError(f"{NAME}: psp_sizes must be positive ints, got {psp_sizes!r}")
    return tuple(int(s) for s in sizes)


def _key_like_shapes(prefix: str, out_channels: int, in_channels: int) -> dict:
    return {**conv_shapes(f"{prefix}.0", out_channels, in_channels), **batch_norm_shapes(f"{prefix}.1.0", out_channels)}


def _apnb_channels(params):
    """APNB's (C, Ck, Cv), all parameters checked against them; C is the fusion conv's output."""
    channels = params.shape("conv_bn_dropout.0.weight")[0]
    key_channels = params.shape(f"{STAGE}.f_key.0.weight")[0]
    value_channels = params.shape(f"{STAGE}.f_value.weight")[0]
    take_all(params, {**_key_like_shapes(f"{STAGE}.f_key", key_channels, channels),
                      **conv_shapes(f"{STAGE}.f_value", value_channels, channels),
                      **conv_shapes(f"{STAGE}.W", channels, value_channels),
                      **conv_shapes("conv_bn_dropout.0", channels, 2 * channels),
                      **batch_norm_shapes("conv_bn_dropout.1.0", channels)})
    return channels, key_channels, value_channels


def _afnb_channels(params):
    """AFNB's (C_low, C_high, C_out), all parameters checked against them."""
    out_channels = params.shape("conv_bn_dropout.0.weight")[0]
    low_channels = params.shape(f"{STAGE}.f_key.0.weight")[1]
    high_channels = params.shape(f"{STAGE}.f_query.0.weight")[1]
    key_channels = params.shape(f"{STAGE}.f_key.0.weight")[0]
    value_channels = params.shape(f"{STAGE}.f_value.weight")[0]
    take_all(params, {**_key_like_shapes(f"{STAGE}.f_key", key_channels, low_channels),
                      **_key_like_shapes(f"{STAGE}.f_query", key_channels, high_channels),
                      **conv_shapes(f"{STAGE}.f_value", value_channels, low_channels),
                      **conv_shapes(f"{STAGE}.W", out_channels, value_channels),
                      **conv_shapes("conv_bn_dropout.0", out_channels, out_channels + high_channels),
                      **batch_norm_shapes("conv_bn_dropout.1", out_channels)})
    return low_channels, high_channels, out_channels


# ---------------------------------------------------------------------------------------------
# the blocks


def _key_like(params, prefix, x, train, updates=1):
    """ReLU(BN(conv(x))) of ``{prefix}``; ``updates=2`` advances the BN statistics twice (official APNB)."""
    y = conv(params, f"{prefix}.0", x)
    bn = f"{prefix}.1.0"
    if train and updates == 2:
        with track_running_stats() as first:                  # the f_query call
            batch_norm(params, bn, y, train)
        params = params.overlay(first)                         # the f_key call starts from its result
    return ag.relu(batch_norm(params, bn, y, train))


def _context(params, query, key_map, value_map, out_shape, sizes):
    """ctx = W(P(v) softmax(Ck^-0.5 q^T P(k))^T): query (B, Ck, H, W) -> (B, C_out, H, W)."""
    key_channels = query.shape[1]
    context = dot_product_attention(flatten_spatial(query), pyramid_pool(key_map, sizes),
                                    pyramid_pool(value_map, sizes), key_channels ** -0.5)   # (B, Cv, N)
    n, _, h, w = out_shape
    return conv(params, f"{STAGE}.W", ag.reshape(context, (n, context.shape[1], h, w)))


def _check_apnb(params, x):
    channels, _, _ = _apnb_channels(params)
    x = check_input(NAME, x, channels=channels, min_size=1)
    check_dtype(NAME, x, params)
    return x


@uses_params(NAME)
def apnb_attention(params, x, *, train: bool = False, psp_sizes=PSP_SIZES) -> ag.Tensor:
    """APNB's (B, N, S) attention softmax_j(Ck^-0.5 q_i^T P(k)_j) on x (B, C, H, W).

    Takes the whole APNB parameter dict (every parameter is checked, as by :func:`ann_apnb`).
    """
    x = _check_apnb(params, x)
    sizes = _check_sizes(psp_sizes)
    key = _key_like(params, f"{STAGE}.f_key", x, train)
    return ag.softmax(ag.matmul(ag.swapaxes(flatten_spatial(key), 1, 2), pyramid_pool(key, sizes))
                      * key.shape[1] ** -0.5, axis=-1)


def _check_updates(query_key_bn_updates):
    if isinstance(query_key_bn_updates, bool) or query_key_bn_updates not in (1, 2):
        raise ValueError(f"{NAME}: query_key_bn_updates must be 1 or 2, got {query_key_bn_updates!r}")


@uses_params(NAME)
def ann_apnb(params, x, *, train: bool = False, psp_sizes=PSP_SIZES, dropout: float = 0.0, rng=None,
             query_key_bn_updates: int = 1) -> ag.Tensor:
    """Asymmetric pyramid non-local block on x (B, C, H, W) -> (B, C, H, W)."""
    x = _check_apnb(params, x)
    _check_updates(query_key_bn_updates)
    sizes = _check_sizes(psp_sizes)
    check_dropout(NAME, dropout)
    key = _key_like(params, f"{STAGE}.f_key", x, train, query_key_bn_updates)   # = query (shared module)
    value = conv(params, f"{STAGE}.f_value", x)
    context = _context(params, key, key, value, x.shape, sizes)
    fused = ag.relu(batch_norm(params, "conv_bn_dropout.1.0",
                               conv(params, "conv_bn_dropout.0", ag.concatenate([context, x], axis=1)), train))
    return dropout2d(fused, dropout, train, rng, NAME)


@uses_params(NAME)
def ann_afnb(params, low, high, *, train: bool = False, psp_sizes=PSP_SIZES, dropout: float = 0.0,
             rng=None) -> ag.Tensor:
    """Asymmetric fusion non-local block: keys/values from ``low`` (B, C_low, H', W'), queries from ``high``
    (B, C_high, H, W); returns (B, C_out, H, W).
    """
    low_channels, high_channels, _ = _afnb_channels(params)
    low = check_input(NAME, low, arg="low", channels=low_channels, min_size=1)
    high = check_input(NAME, high, arg="high", channels=high_channels, min_size=1)
    check_dtype(NAME, low, params, arg="low")
    check_dtype(NAME, high, params, arg="high")
    if low.shape[0] != high.shape[0]:
        raise ValueError(f"{NAME}: low {low.shape} and high {high.shape} must have the same batch size")
    sizes = _check_sizes(psp_sizes)
    check_dropout(NAME, dropout)
    query = _key_like(params, f"{STAGE}.f_query", high, train)
    key = _key_like(params, f"{STAGE}.f_key", low, train)
    value = conv(params, f"{STAGE}.f_value", low)
    context = _context(params, query, key, value, high.shape, sizes)
    fused = batch_norm(params, "conv_bn_dropout.1",
                       conv(params, "conv_bn_dropout.0", ag.concatenate([context, high], axis=1)), train)
    return dropout2d(fused, dropout, train, rng, NAME)


#: apply options of both blocks: the pyramid's pooled sizes (official (1, 3, 6, 8); one level, unordered, and
#: sizes above the map) and the Dropout2d probability
_PYRAMID_OPTIONS = {"psp_sizes": Choice(PSP_SIZES, (1,), (2,), (3, 1), (1, 2, 4), (8,)), "dropout": Choice(0.0, 0.3)}


def _low_high_inputs() -> Inputs:
    """AFNB's (low (B, C_low, H', W'), high (B, C_high, H, W)), the two maps' sizes drawn independently."""
    dims = {"batch": BATCH, "low_height": SIZE, "low_width": SIZE, "height": SIZE, "width": SIZE}
    return Inputs(dims, lambda rng, v, dtype: (
        example(rng, (v.batch, v.low_channels, v.low_height, v.low_width), dtype),
        example(rng, (v.batch, v.high_channels, v.height, v.width), dtype)))


_PAPER = Paper("Zhu, Xu, Bai, Huang, Bai", "Asymmetric Non-local Neural Networks for Semantic Segmentation",
               "ICCV", 2019)

register(Mechanism(
    name="ann-apnb", family="self_attention", paper=_PAPER, init=init_apnb, apply_fn=ann_apnb,
    config={"channels": 16, "key_channels": 8, "value_channels": 8, "zero_init": False},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 9, 9), dtype),),
    # Ck, Cv are free of C (1x1 convs; None = C // 2, >= 1 from C = 2); pyramids finer than the map repeat
    # PyTorch's overlapping adaptive bins; dropout only in eval (training with it needs an rng); the BNs see
    # B H W values per channel
    space=Space(config={"channels": Ints(1, 16), "key_channels": Choice(None, Ints(1, 8)),
                        "value_channels": Choice(None, Ints(1, 8)), "zero_init": Bools()},
                options=_PYRAMID_OPTIONS | {"query_key_bn_updates": Choice(1, 2)}, inputs=image(),
                where=(lambda v: v.channels >= 2 or None not in (v.key_channels, v.value_channels),
                       lambda v: not v.train or v.dropout == 0.0,
                       bn_train(lambda v: v.batch * v.height * v.width))),
    description="self-attention over 110 pyramid-pooled anchors (shared query/key transform)",
))

register(Mechanism(
    name="ann-afnb", family="self_attention", paper=_PAPER, init=init_afnb, apply_fn=ann_afnb,
    config={"low_channels": 12, "high_channels": 16, "key_channels": 8, "value_channels": 8, "zero_init": False},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 12, 9, 9), dtype),
                                                 example(rng, (2, 16, 7, 7), dtype)),
    # low and high maps of independent sizes (the anchors do not depend on the key map's size); None widths are
    # C_high / C_high // 8 (at least 1); the BNs see B H' W' (f_key) and B H W (f_query, fusion) values
    space=Space(config={"low_channels": Ints(1, 12), "high_channels": Ints(1, 16),
                        "out_channels": Choice(None, Ints(1, 6)), "key_channels": Choice(None, Ints(1, 8)),
                        "value_channels": Choice(None, Ints(1, 8)), "zero_init": Bools()},
                options=_PYRAMID_OPTIONS, inputs=_low_high_inputs(),
                where=(lambda v: not v.train or v.dropout == 0.0,
                       bn_train(lambda v: v.batch * min(v.height * v.width, v.low_height * v.low_width)))),
    description="fusion of low-level keys/values (110 pyramid anchors) with high-level queries",
))
