"""Squeeze-and-Excitation (Hu, Shen, Sun, CVPR 2018).

    z = GAP(x)                         squeeze:     (N, C)
    s = sigmoid(W2 relu(W1 z + b1) + b2)  excitation: W1 (C/r, C), W2 (C, C/r)
    y = s * x                          scale

Follows the official Caffe model (``hujie-frank/SENet``): both 1x1 "FC" layers carry a bias
(``bias=False`` gives the bias-free form of e.g. fightingcv's SEAttention).  The hidden width is
``C // reduction`` exactly, as the official prototxts (timm rounds it with make_divisible instead).
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, example, init_linear, linear
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Ints, Space, image

NAME = "se"


def init(rng, channels: int, *, reduction: int = 16, bias: bool = True, dtype=np.float64) -> dict:
    """Parameters ``fc1.weight (C//r, C)``, ``fc2.weight (C, C//r)`` (+ biases)."""
    hidden = channels // reduction
    if hidden < 1:
        raise ValueError(f"se: channels={channels} // reduction={reduction} must be at least 1")
    params: dict = {}
    init_linear(rng, params, "fc1", hidden, channels, bias=bias, dtype=dtype)
    init_linear(rng, params, "fc2", channels, hidden, bias=bias, dtype=dtype)
    return params


def excitation(params, descriptor, *, bias: bool = True) -> ag.Tensor:
    """s = sigmoid(fc2(relu(fc1(z)))): (N, C) -> (N, C)."""
    hidden = ag.relu(linear(params, "fc1", descriptor, bias=bias))
    return ag.sigmoid(linear(params, "fc2", hidden, bias=bias, out=descriptor.shape[-1]))


@uses_params(NAME)
def se(params, x, *, train: bool = False, bias: bool = True) -> ag.Tensor:
    """Apply SE to ``x`` (N, C, H, W); returns (N, C, H, W).  ``train`` has no effect (no BN).

    ``bias`` as in :func:`init` (the parameters must be those ``init`` makes with the same value).
    """
    channels = params.shape("fc1.weight")[1]
    x = check_input(NAME, x, channels=channels, min_size=1)
    check_dtype(NAME, x, params)
    squeeze = ag.mean(x, axis=(2, 3))                       # z = GAP(x)
    scale = excitation(params, squeeze, bias=bias)          # s
    return x * ag.reshape(scale, scale.shape + (1, 1))      # y = s * x


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Hu, Shen, Sun", "Squeeze-and-Excitation Networks", "CVPR", 2018),
    init=init, apply_fn=se, config={"channels": 32, "reduction": 4},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 32, 5, 6), dtype),),
    # C // r >= 1 is init's rule; C from r (a hidden width C // r with a remainder) up
    space=Space(config={"reduction": Ints(1, 8), "channels": Ints(lambda v: v.reduction, 32), "bias": Bools()},
                inputs=image()),
    description="channel gate from a global-average descriptor through a bottleneck MLP",
))
