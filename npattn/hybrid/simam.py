"""SimAM: a simple, parameter-free attention module (Yang, Zhang, Li, Xie, ICML 2021).

Each neuron t of a channel map gets the minimal energy of separating it from the other neurons of
its map (the paper's Eq. 3-5); low energy = distinctive = important::

    μ     = mean_HW(x)                       per (n, c) map
    d     = (x − μ)²                                                           (N, C, H, W)
    σ̂²    = Σ_HW d / n,   n = H·W − 1         (the paper's λ-regularised estimate; n as in the official code)
    1/e*  = d / (4(σ̂² + λ)) + 0.5            the inverse minimal energy: (t − μ)² + 2σ̂² + 2λ over 4(σ̂² + λ)
    y     = x · sigmoid(1/e*)                                                   (N, C, H, W)

Follows the official code (``ZjjConan/SimAM``, ``networks/attentions/simam_module.py``,
``simam_module(channels=None, e_lambda=1e-4)``): λ = 1e-4 and n = H·W − 1, so a 1x1 map divides 0 by 0
and its output is NaN, as the official module's is.  ``unbiased=False`` divides by n = H·W instead
(several re-implementations; it changes outputs by ~2.5e-2 on a 5x4 map).  The official ResNets put it
after conv2 of each block (before bn2), unlike SE-style modules.

No parameters: :func:`init` returns ``{}`` and any key passed to :func:`simam` is an error.  The channel
count is free.
"""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd import xp
from autograd.nn import channel_affine

from ..layers import check_input, example
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Ints, Space, image

NAME = "simam"
E_LAMBDA = 1e-4


def init(rng=None, channels: int | None = None, *, dtype=np.float64) -> dict:
    """No parameters (``channels`` and ``dtype`` are accepted for a uniform interface): returns ``{}``."""
    return {}


def _inverse_energy(x, e_lambda: float, unbiased: bool):
    """1/e* = (x − μ)² / (4(Σ(x − μ)²/n + λ)) + 0.5 per (n, c) map: (N, C, H, W) -> (N, C, H, W)."""
    n, c, h, w = x.shape
    count = h * w - int(unbiased)
    centred = x - ag.mean(x, axis=(2, 3), keepdims=True)                       # x − μ
    # Σ (x − μ)² / n; n = 0 (a 1x1 map, official n) gives 0 · NaN = NaN as the official 0/0 does
    spread = ag.sum_product(centred, centred, axis=(2, 3), keepdims=True) * (1.0 / count if count else np.nan)
    scale = 1.0 / (4.0 * (spread + e_lambda))                                 # 1 / 4(σ̂² + λ)   (N, C, 1, 1)
    # d · scale + 0.5 as one per-map affine pass: the (N·C) maps are the "channels" of channel_affine
    squared = ag.reshape(centred * centred, (1, n * c, h * w))                 # d = (x − μ)²
    half = ag.Tensor(xp.full((n * c,), 0.5, dtype=x.dtype))
    return ag.reshape(channel_affine(squared, ag.reshape(scale, (n * c,)), half), x.shape)


def _validate(x, e_lambda):
    x = check_input(NAME, x, min_size=1)
    if not (isinstance(e_lambda, (int, float)) and e_lambda >= 0):
        raise ValueError(f"{NAME}: e_lambda must be a number >= 0, got {e_lambda!r}")
    return x


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, e_lambda: float = E_LAMBDA, unbiased: bool = True):
    """The gate sigmoid(1/e*) of x (N, C, H, W): (N, C, H, W)."""
    return ag.sigmoid(_inverse_energy(_validate(x, e_lambda), e_lambda, unbiased))


@uses_params(NAME)
def simam(params, x, *, train: bool = False, e_lambda: float = E_LAMBDA, unbiased: bool = True) -> ag.Tensor:
    """Apply SimAM to ``x`` (N, C, H, W); returns (N, C, H, W).  ``params`` must be ``{}``.

    ``e_lambda``: λ (official 1e-4).  ``unbiased``: n = H·W − 1 (official) or H·W.  ``train`` has no effect.
    """
    x = _validate(x, e_lambda)
    return x * ag.sigmoid(_inverse_energy(x, e_lambda, unbiased))              # y = x · sigmoid(1/e*)


register(Mechanism(
    name=NAME, family="hybrid",
    paper=Paper("Yang, Zhang, Li, Xie", "SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural "
                "Networks", "ICML", 2021),
    init=init, apply_fn=simam, config={},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 8, 5, 4), dtype),),
    channel_axis=None,
    # any C (no parameters); a 1x1 map gives the official NaN (0/0) with n = H W - 1, and with lambda = 0
    # (accepted: lambda >= 0) the 0/0 of a zero spread: excluded as SGE's NaN points are
    space=Space(config={"_channels": Ints(1, 8)},
                options={"e_lambda": Choice(E_LAMBDA, 0.0, 1.0), "unbiased": Bools()}, inputs=image("_channels"),
                where=(lambda v: v.height * v.width > 1 or v.batch == 0 or (not v.unbiased and v.e_lambda > 0),)),
    description="parameter-free 3-D gate from each neuron's minimal energy within its channel map",
))
