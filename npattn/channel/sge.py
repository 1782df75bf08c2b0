"""SGE: Spatial Group-wise Enhance (Li, Hu, Yang, arXiv 1905.09646, 2019).

The channels are split into G groups (semantic sub-features); each group gets one spatial gate from how
well each position's vector matches the group's average vector::

    x_g   = x[:, g·C/G : (g+1)·C/G]          contiguous channel groups                      (N, G, C/G, H, W)
    c_i   = Σ_k x_g[k, i] · mean_HW(x_g[k])   similarity of position i with the group's mean  (N, G, H, W)
    t     = (c − mean_HW c) / (std_HW(c) + ε) normalised over the positions, ε = 1e-5
    a     = sigmoid(γ_g · t + β_g)            one affine pair per group
    y     = x_g · a                           the gate is shared by the group's C/G channels  (N, C, H, W)

Follows the official code (``implus/PytorchInsight``, ``classification/models/imagenet/resnet_sge.py``,
``SpatialGroupEnhance(groups=64)``): the standard deviation is **unbiased** (``Tensor.std``, divisor
H·W − 1) and ε is added to the std, not the variance; init γ = ``weight`` = 0, β = ``bias`` = 1 (the gate
starts at sigmoid(1) everywhere; ``init(..., official_init=False)`` draws them from N(0, 1), as the registry
config does).  A 1x1 map has no unbiased std: its output is NaN, as the official
module's is.  ``unbiased=False`` uses the biased std (changes outputs by ~1e-2 on a 5x6 map).  In
SGE-ResNets the module sits after bn3 with G = 64, before the residual add.

Parameters (official names): ``weight (1, G, 1, 1)``, ``bias (1, G, 1, 1)``; G is read from their shape and
C must be divisible by G.
"""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import check_dtype, check_input, example
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Derived, Ints, Space, image

NAME = "sge"
EPS = 1e-5


def _check_groups(channels: int, groups: int, where: str) -> None:
    if groups < 1 or channels % groups:
        raise ValueError(f"{NAME}: {where} {channels} channels are not divisible by groups={groups} "
                         "(the official view (N*G, C/G, H, W) needs C % G == 0)")


def init(rng, channels: int, *, groups: int = 64, official_init: bool = True, dtype=np.float64) -> dict:
    """Parameters ``weight`` (1, G, 1, 1) = 0 and ``bias`` (1, G, 1, 1) = 1 (the official init).

    ``official_init=False`` draws both from N(0, 1) with ``rng`` instead, so that every part of the map shows in
    tests and golden vectors (the registry entry's config does).
    """
    _check_groups(channels, groups, "init:")
    shape = (1, groups, 1, 1)
    weight = np.zeros(shape) if official_init else rng.standard_normal(shape)
    bias = np.ones(shape) if official_init else rng.standard_normal(shape)
    return {"weight": backend.from_numpy(weight.astype(dtype)), "bias": backend.from_numpy(bias.astype(dtype))}


def _normalised_similarity(x, groups: int, unbiased: bool):
    """t = (c − mean c) / (std c + ε) per (n, g): x (N, C, H, W) -> (N, G, H·W)."""
    n, c, h, w = x.shape
    grouped = ag.reshape(x, (n, groups, c // groups, h * w))                         # (N, G, C/G, HW)
    group_mean = ag.mean(grouped, axis=3, keepdims=True)                             # mean_HW(x_g)  (N, G, C/G, 1)
    similarity = ag.matmul(ag.swapaxes(group_mean, 2, 3), grouped)                   # c = Σ_k x_k·mean_k (N, G, 1, HW)
    similarity = ag.reshape(similarity, (n, groups, h * w))
    centred = similarity - ag.mean(similarity, axis=2, keepdims=True)               # c − mean c
    count = h * w - int(unbiased)
    # unbiased variance of one position: 0 · NaN = NaN, as torch's std of a single value
    variance = ag.sum_product(centred, centred, axis=2, keepdims=True) * (1.0 / count if count else np.nan)
    return centred / (ag.sqrt(variance) + EPS)                                       # ε on the std


def _validate(params, x):
    groups = params.take("weight", (1, None, 1, 1)).shape[1]
    params.take("bias", (1, groups, 1, 1))
    x = check_input(NAME, x, min_size=1)
    _check_groups(x.shape[1], groups, "input x has")
    check_dtype(NAME, x, params)
    return x, groups


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, unbiased: bool = True) -> ag.Tensor:
    """The spatial gate of each group, a = sigmoid(γ t + β): (N, G, H, W)."""
    x, groups = _validate(params, x)
    n, _, h, w = x.shape
    t = _normalised_similarity(x, groups, unbiased)
    gate = ag.sigmoid(t * ag.reshape(params["weight"], (1, groups, 1)) + ag.reshape(params["bias"], (1, groups, 1)))
    return ag.reshape(gate, (n, groups, h, w))


@uses_params(NAME)
def sge(params, x, *, train: bool = False, unbiased: bool = True) -> ag.Tensor:
    """Apply SGE to ``x`` (N, C, H, W); returns (N, C, H, W).  ``unbiased``: the std's divisor H·W − 1
    (official) or H·W.  ``train`` has no effect."""
    gate = attention_maps(params, x, unbiased=unbiased)                            # a  (N, G, H, W)
    x = check_input(NAME, x, min_size=1)
    n, c, h, w = x.shape
    groups = gate.shape[1]
    grouped = ag.reshape(x, (n, groups, c // groups, h, w))
    return ag.reshape(grouped * ag.reshape(gate, (n, groups, 1, h, w)), (n, c, h, w))   # y = x_g · a


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Li, Hu, Yang", "Spatial Group-wise Enhance: Improving Semantic Feature Learning in "
                "Convolutional Networks", "arXiv 1905.09646", 2019),
    init=init, apply_fn=sge, config={"channels": 16, "groups": 4, "official_init": False},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 5, 6), dtype),),
    # C = G * (C / G); a 1x1 map (and a one-position group) gives the official NaN of std over one value
    space=Space(config={"groups": Ints(1, 6), "_per_group": Ints(1, 4),
                        "channels": Derived(lambda v: v.groups * v._per_group), "official_init": False},
                options={"unbiased": Bools()}, inputs=image(),
                where=(lambda v: v.height * v.width > 1 or v.batch == 0,)),
    description="one spatial gate per channel group from each position's similarity to the group mean",
))
