"""GCT: Gated Channel Transformation (Yang, Zhu, Wu, Yang, CVPR 2020).

Global context embedding, channel normalisation and a tanh gate, with three (1, C, 1, 1) parameters::

    s_c = α_c · ‖x_c‖₂                           embedding (ℓ2 over the H·W positions of channel c)
    ŝ_c = √C · s_c / ‖s‖₂                        channel normalisation
    y_c = x_c · (1 + tanh(γ_c ŝ_c + β_c))        gating

Follows the official code (``z-x-yang/GCT``, ``PyTorch/GCT.py``, ``GCT(num_channels, epsilon=1e-5, mode='l2',
after_relu=False)``; ``TensorFlow/convnet_builder.py`` computes the same), which places ε:

* l2 (default): s = α · sqrt(Σ_HW x² + ε);  n = γ / sqrt(mean_C(s²) + ε);  y = x · (1 + tanh(s · n + β)).
  sqrt(mean_C s² + ε) = sqrt(Σ s² + Cε) / √C: the paper's √C / ‖s‖₂ up to where ε sits (a shift of order ε,
  documented, not an option).  Summing instead of averaging over C would change outputs by ~1.7.
* l1: s = α · Σ_HW |x| (``after_relu=True``: Σ_HW x, no abs);  n = γ / (mean_C |s| + ε) (ε outside, no sqrt).
* ε = 1e-5; init α = 1, γ = 0, β = 0, so the block is exactly the identity at init (``init(...,
  official_init=False)`` draws them from N(0, 1), as the registry config does).  GCT-ResNets put it
  before every conv; the official README excludes β from weight decay.  An unknown mode calls ``sys.exit()``
  in the official file (without importing sys); here it is a ValueError.

Parameters (official names): ``alpha``, ``gamma``, ``beta``, each (1, C, 1, 1).  ``mode``, ``after_relu`` and
``epsilon`` are options of :func:`gct` (they do not change the parameters).
"""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import check_dtype, check_input, example
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Ints, Space, image

NAME = "gct"
MODES = ("l2", "l1")
EPSILON = 1e-5


def init(rng, channels: int, *, official_init: bool = True, dtype=np.float64) -> dict:
    """Parameters ``alpha`` = 1, ``gamma`` = 0, ``beta`` = 0, each (1, C, 1, 1) (the official init).

    ``official_init=False`` draws all three from N(0, 1) with ``rng`` instead, so that tests and golden vectors
    see more than the identity (the registry entry's config does).
    """
    if channels < 1:
        raise ValueError(f"{NAME}: channels must be positive, got {channels}")
    shape = (1, channels, 1, 1)
    if not official_init:
        return {key: backend.from_numpy(rng.standard_normal(shape).astype(dtype)) for key in ("alpha", "gamma", "beta")}
    return {"alpha": backend.from_numpy(np.ones(shape, dtype=dtype)),
            "gamma": backend.from_numpy(np.zeros(shape, dtype=dtype)),
            "beta": backend.from_numpy(np.zeros(shape, dtype=dtype))}


def _validate(params, x, mode, epsilon):
    channels = params.take("alpha", (1, None, 1, 1)).shape[1]
    for key in ("gamma", "beta"):
        params.take(key, (1, channels, 1, 1))
    x = check_input(NAME, x, channels=channels, min_size=1)
    check_dtype(NAME, x, params)
    if mode not in MODES:
        raise ValueError(f"{NAME}: mode must be one of {MODES}, got {mode!r}")
    if not (isinstance(epsilon, (int, float)) and epsilon >= 0):
        raise ValueError(f"{NAME}: epsilon must be a number >= 0, got {epsilon!r}")
    return x


def _gate(params, x, mode: str, after_relu: bool, epsilon: float):
    """1 + tanh(s · n + β): (N, C, 1, 1)."""
    alpha, gamma, beta = params["alpha"], params["gamma"], params["beta"]
    if mode == "l2":
        embedding = ag.sqrt(ag.sum_product(x, x, axis=(2, 3), keepdims=True) + epsilon) * alpha   # s = α‖x_c‖₂
        norm = gamma / ag.sqrt(ag.mean(embedding * embedding, axis=1, keepdims=True) + epsilon)   # γ/sqrt(mean s²+ε)
    else:
        magnitude = x if after_relu else ag.abs(x)
        embedding = ag.sum(magnitude, axis=(2, 3), keepdims=True) * alpha                          # s = α Σ|x_c|
        norm = gamma / (ag.mean(ag.abs(embedding), axis=1, keepdims=True) + epsilon)               # γ / (mean|s| + ε)
    return 1.0 + ag.tanh(embedding * norm + beta)


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, mode: str = "l2", after_relu: bool = False,
                   epsilon: float = EPSILON) -> ag.Tensor:
    """The channel gate 1 + tanh(γ ŝ + β) of x (N, C, H, W): (N, C, 1, 1)."""
    return _gate(params, _validate(params, x, mode, epsilon), mode, after_relu, epsilon)


@uses_params(NAME)
def gct(params, x, *, train: bool = False, mode: str = "l2", after_relu: bool = False,
        epsilon: float = EPSILON) -> ag.Tensor:
    """Apply GCT to ``x`` (N, C, H, W); returns (N, C, H, W).

    ``mode``: "l2" (official default) or "l1"; ``after_relu``: l1 without the abs (for non-negative inputs);
    ``epsilon``: ε (official 1e-5).  ``train`` has no effect.
    """
    x = _validate(params, x, mode, epsilon)
    return x * _gate(params, x, mode, after_relu, epsilon)                          # y = x (1 + tanh(γ ŝ + β))


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Yang, Zhu, Wu, Yang", "Gated Channel Transformation for Visual Recognition", "CVPR", 2020),
    init=init, apply_fn=gct, config={"channels": 16, "official_init": False},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 5, 6), dtype),),
    space=Space(config={"channels": Ints(1, 16), "official_init": False},
                options={"mode": Choice("l2", "l1"), "after_relu": Bools()}, inputs=image()),
    description="channel gate 1 + tanh(gamma * normalised l2 embedding + beta); the identity at init",
))
