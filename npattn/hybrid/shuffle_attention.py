"""Shuffle Attention, SA-Net (Zhang, Yang, ICASSP 2021).

The channels are split into G groups; each group's first half gets a channel gate, its second half a
spatial gate, and a channel shuffle mixes the halves across groups (Cg = C / 2G)::

    x_g        = x viewed (B·G, C/G, H, W);   x0, x1 = the first and second Cg channels of each group
    channel:   y0 = x0 · sigmoid(W_c · mean_HW(x0) + b_c)                     W_c, b_c: (1, Cg, 1, 1)
    spatial:   y1 = x1 · sigmoid(W_s · GN(x1) + b_s)                          GN: GroupNorm(Cg, Cg), affine
    out        = channel_shuffle([y0; y1] viewed (B, C, H, W), 2)           output channel 2m + i = input i·C/2 + m

Follows the official code (``wofmanaf/SA-Net``, ``models/sa_resnet.py``, ``sa_layer(channel, groups=64)``; the
same class in ``mmdetection/sa_resnet.py``; SA-ResNets put ``sa_layer(planes * 4)`` after bn3): GN has one
channel per group (instance normalisation, biased variance, eps 1e-5) with its own affine ``gn.weight`` /
``gn.bias``; init cweight = sweight = 0, cbias = sbias = 1 (GN at 1 / 0).  C must be divisible by 2G.  Omitting
the shuffle would change outputs by ~2.9.  ``init(..., official_init=False)`` draws the four gate parameters
from N(0, 1) (the registry config does, so that tests and golden vectors see the whole map).

Parameters (official names): ``cweight``, ``cbias``, ``sweight``, ``sbias`` (1, Cg, 1, 1); ``gn.weight``,
``gn.bias`` (Cg,).  ``groups`` (G, official 64) is a keyword of :func:`init` and :func:`shuffle_attention`
alike: the shapes give Cg only.
"""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd import backend, xp
from autograd.nn import channel_affine

from ..layers import check_dtype, check_input, example
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Derived, Ints, Space, image

NAME = "shuffle-attention"
GN_EPS = 1e-5
GATES = ("cweight", "cbias", "sweight", "sbias")


def _check_groups(channels: int, groups: int, where: str) -> None:
    if groups < 1 or channels % (2 * groups):
        raise ValueError(f"{NAME}: {where} {channels} channels are not divisible by 2·groups = {2 * groups} "
                         f"(groups={groups}; each group splits into two halves of C/2G channels)")


def init(rng, channels: int, *, groups: int = 64, official_init: bool = True, dtype=np.float64) -> dict:
    """Parameters for C = ``channels`` and G = ``groups`` (Cg = C / 2G): the four gate parameters (1, Cg, 1, 1) and
    GN's affine (Cg,).  Official init: cweight = sweight = 0, cbias = sbias = 1, GN 1 / 0."""
    _check_groups(channels, groups, "init:")
    half = channels // (2 * groups)
    shape = (1, half, 1, 1)
    if official_init:
        values = {"cweight": np.zeros(shape), "cbias": np.ones(shape), "sweight": np.zeros(shape),
                  "sbias": np.ones(shape)}
    else:
        values = {key: rng.standard_normal(shape) for key in GATES}
    values["gn.weight"], values["gn.bias"] = np.ones(half), np.zeros(half)
    return {key: backend.from_numpy(value.astype(dtype)) for key, value in values.items()}


def channel_shuffle(x, groups: int) -> ag.Tensor:
    """(B, C, H, W) viewed (B, groups, C/groups, H, W), the two group axes swapped, flattened back."""
    b, c, h, w = x.shape
    return ag.reshape(ag.swapaxes(ag.reshape(x, (b, groups, c // groups, h, w)), 1, 2), (b, c, h, w))


def _validate(params, x, groups):
    half = params.take("cweight", (1, None, 1, 1)).shape[1]
    for key in GATES[1:]:
        params.take(key, (1, half, 1, 1))
    x = check_input(NAME, x, channels=2 * groups * half, min_size=1)
    _check_groups(x.shape[1], groups, "input x has")
    check_dtype(NAME, x, params)
    return x


def _gate_logits(params, x, groups: int):
    """The logits of both gates, as one affine map of x's centred values per (sample, channel).

    channel half:  W_c · mean_HW(x0) + b_c                      (constant over the map: scale 0)
    spatial half:  W_s · GN(x1) + b_s = (x1 − μ) · W_s γ / σ + (W_s β + b_s),   σ = sqrt(var_HW(x1) + ε)
    so logits = (x − μ) · scale + shift with (B·G, 2Cg) scales and shifts: one pass over the map instead of
    GroupNorm's and the gate's separate passes, and x is never sliced into halves.  (B, C, H, W) -> same.
    """
    b, c, h, w = x.shape
    half = c // (2 * groups)
    rows = b * groups
    grouped = ag.reshape(x, (rows, 2 * half, h * w))
    mean = ag.mean(grouped, axis=2, keepdims=True)                                   # μ   (B·G, 2Cg, 1)
    centred = grouped - mean
    variance = ag.sum_product(centred, centred, axis=2, keepdims=True) * (1.0 / (h * w))  # biased, as GroupNorm
    gn_weight = ag.reshape(params.take("gn.weight", (half,)), (1, half, 1))
    gn_bias = ag.reshape(params.take("gn.bias", (half,)), (1, half, 1))
    cweight, cbias, sweight, sbias = (ag.reshape(params[key], (1, half, 1)) for key in GATES)
    spatial_scale = sweight * gn_weight / ag.sqrt(variance[:, half:] + GN_EPS)        # W_s γ / σ
    no_scale = ag.Tensor(xp.zeros((rows, half, 1), dtype=x.dtype))                    # the channel half
    scale = ag.concatenate([no_scale, spatial_scale], axis=1)
    shift = ag.concatenate([cweight * mean[:, :half] + cbias,                         # W_c mean(x0) + b_c
                            ag.broadcast_to(sweight * gn_bias + sbias, (rows, half, 1))], axis=1)  # W_s β + b_s
    flat = (1, rows * 2 * half, h * w)                                                # channels = (sample·group, c)
    logits = channel_affine(ag.reshape(centred, flat), ag.reshape(scale, (-1,)), ag.reshape(shift, (-1,)))
    return ag.reshape(logits, x.shape)


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, groups: int = 64) -> ag.Tensor:
    """The gate of every input channel, before the shuffle: (B, C, H, W); within each group the first Cg
    channels have the channel gate (constant over the map), the next Cg the spatial gate."""
    x = _validate(params, x, groups)
    return ag.sigmoid(_gate_logits(params, x, groups))


@uses_params(NAME)
def shuffle_attention(params, x, *, train: bool = False, groups: int = 64) -> ag.Tensor:
    """Apply Shuffle Attention to ``x`` (B, C, H, W); returns (B, C, H, W).  ``groups``: G, as given to
    :func:`init`.  ``train`` has no effect (GroupNorm uses the sample's own statistics)."""
    x = _validate(params, x, groups)
    gated = x * ag.sigmoid(_gate_logits(params, x, groups))                          # [y0; y1] per group
    return channel_shuffle(gated, 2)


register(Mechanism(
    name=NAME, family="hybrid",
    paper=Paper("Zhang, Yang", "SA-Net: Shuffle Attention for Deep Convolutional Neural Networks", "ICASSP", 2021),
    init=init, apply_fn=shuffle_attention, config={"channels": 16, "groups": 2, "official_init": False},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 5, 6), dtype),),
    # C = 2 G Cg (init's rule), down to one channel per half; a 1x1 map has zero variance (GN's eps alone)
    space=Space(config={"groups": Ints(1, 4), "_half": Ints(1, 4),
                        "channels": Derived(lambda v: 2 * v.groups * v._half), "official_init": Bools()},
                inputs=image()),
    description="per-group channel gate on one half, GroupNorm spatial gate on the other, then a channel shuffle",
))
