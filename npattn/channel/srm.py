"""SRM: Style-based Recalibration Module (Lee, Kim, Nam, ICCV 2019).

Style pooling (the mean and standard deviation of each channel), a channel-wise fully connected layer
on the two style features, BatchNorm and a sigmoid gate::

    μ_c = mean_HW(x_c),   σ_c = sqrt(var_HW(x_c) + ε)        style pooling, t = [μ, σ]        (N, C, 2)
    z_c = w_c0 · μ_c + w_c1 · σ_c                            style integration: CFC, no bias  (N, C)
    g   = sigmoid(BN(z))                                     BatchNorm2d(C) on (N, C, 1, 1)
    y   = x · g                                                                                (N, C, H, W)

Follows the official code (``hyunjaelee410/style-based-recalibration-module``,
``models/recalibration_modules.py``, ``SRMLayer(channel)``, as fixed in commit f6221c7 "FIX : style pooling"):
the variance is **unbiased** (divisor H·W − 1) and ε = 1e-5 is added to it before the square root.  The
initial commit used ``std`` without ε (NaN gradient on a constant channel): ``std_mode="std"``.  A biased
variance would change outputs by ~1e-2. A 1x1 map has no unbiased variance: the output is NaN, as the official
module's is. Init: cfc = 0 (BN at PyTorch's defaults); ``init(..., official_init=False)`` draws cfc from N(0, 1)
instead (the registry config does, so that tests and golden vectors see the whole map). SRM-ResNets put it after
the last BN of the residual branch. ``bn`` sees (N, C, 1, 1): in training each channel has N values, and N = 1
is an error, as in torch. Re-implementations often write the CFC as Conv1d(C, C, 2, groups=C, bias=False)
(weight (C, 1, 2) = cfc[:, None, :]) with BatchNorm1d: the same maths.

Parameters (official names): ``cfc (C, 2)``, ``bn.*`` (C,).
"""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import batch_norm, check_dtype, check_input, example, init_batch_norm
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Choice, Ints, Space, bn_train, image

NAME = "srm"
EPS = 1e-5
STD_MODES = ("var_eps", "std")


def init(rng, channels: int, *, official_init: bool = True, dtype=np.float64) -> dict:
    """Parameters ``cfc`` (C, 2) and BatchNorm ``bn.*`` (C,).

    ``official_init``: cfc = 0 (official); False draws cfc from N(0, 1) with ``rng`` so that every part of
    the map shows in tests and golden vectors (the registry entry's config does).
    """
    if channels < 1:
        raise ValueError(f"{NAME}: channels must be positive, got {channels}")
    cfc = np.zeros((channels, 2)) if official_init else rng.standard_normal((channels, 2))
    params = {"cfc": backend.from_numpy(cfc.astype(dtype))}
    init_batch_norm(params, "bn", channels, dtype=dtype)
    return params


def _style(x, std_mode: str):
    """(μ, σ) per channel: x (N, C, H, W) -> two (N, C) tensors."""
    count = x.shape[2] * x.shape[3]
    mean = ag.mean(x, axis=(2, 3))                                                  # μ
    centred = x - ag.reshape(mean, mean.shape + (1, 1))
    # unbiased variance; one value per map gives 0 · NaN = NaN, as torch's var of a single value
    variance = ag.sum_product(centred, centred, axis=(2, 3)) * (1.0 / (count - 1) if count > 1 else np.nan)
    std = ag.sqrt(variance + EPS) if std_mode == "var_eps" else ag.sqrt(variance)  # σ
    return mean, std


def _channels(params) -> int:
    """C as most of the C-sized parameters give it; the odd one out is then a shape error naming it."""
    sizes = [params.shape(key)[0] for key in ("cfc", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")]
    channels = max(sorted(set(sizes)), key=sizes.count)
    params.take("cfc", (channels, 2))
    return channels


def _validate(params, x, std_mode):
    x = check_input(NAME, x, channels=_channels(params), min_size=1)
    check_dtype(NAME, x, params)
    if std_mode not in STD_MODES:
        raise ValueError(f"{NAME}: std_mode must be one of {STD_MODES}, got {std_mode!r}")
    return x


def _gate(params, x, train: bool, std_mode: str):
    """g = sigmoid(BN(cfc₀ μ + cfc₁ σ)): (N, C, 1, 1)."""
    mean, std = _style(x, std_mode)
    cfc = params["cfc"]
    z = mean * cfc[:, 0] + std * cfc[:, 1]                                          # z = w₀ μ + w₁ σ  (N, C)
    z = ag.reshape(z, z.shape + (1, 1))
    return ag.sigmoid(batch_norm(params, "bn", z, train))


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, std_mode: str = "var_eps") -> ag.Tensor:
    """The channel gate g of x (N, C, H, W): (N, C, 1, 1)."""
    return _gate(params, _validate(params, x, std_mode), train, std_mode)


@uses_params(NAME)
def srm(params, x, *, train: bool = False, std_mode: str = "var_eps") -> ag.Tensor:
    """Apply SRM to ``x`` (N, C, H, W); returns (N, C, H, W).

    ``train``: ``bn`` uses batch statistics (reported to ``npattn.track_running_stats()``; needs N >= 2).
    ``std_mode``: "var_eps" (official, sqrt(unbiased var + 1e-5)) or "std" (the initial commit's std).
    """
    x = _validate(params, x, std_mode)
    return x * _gate(params, x, train, std_mode)                                     # y = x · g


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Lee, Kim, Nam", "SRM: A Style-based Recalibration Module for Convolutional Neural Networks",
                "ICCV", 2019),
    init=init, apply_fn=srm, config={"channels": 16, "official_init": False},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 5, 6), dtype),),
    # the std over one position is the official NaN (unbiased variance); BN over the batch in training
    space=Space(config={"channels": Ints(1, 16), "official_init": False},
                options={"std_mode": Choice("var_eps", "std")},
                inputs=image(), where=(lambda v: v.height * v.width > 1 or v.batch == 0, bn_train(lambda v: v.batch))),
    description="channel gate from each channel's mean and std through a channel-wise FC and BatchNorm",
))
