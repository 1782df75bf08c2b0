"""Efficient Channel Attention (Wang, Wu, Zhu, Li, Zuo, Hu, CVPR 2020).

    z = GAP(x)                                   squeeze:            (N, C)
    w = sigmoid(C1D_k(z))                        1-D conv across the channel axis, no bias: (N, 1, C) -> (N, 1, C)
    y = x * w                                    scale:              (N, C, H, W)
    k = psi(C) = | log2(C)/gamma + b/gamma |_odd,   gamma = 2, b = 1

C1D_k is one shared kernel of length k sliding over the channel axis, zero padded by (k - 1) // 2 at both
ends, so channel c only sees its k nearest channels: local cross-channel interaction without the SE
bottleneck.  Equivalently w = sigmoid(B z) with the banded C x C matrix B[c, c + j - (k-1)//2] = weight[j].

Follows the official code (``BangguWu/ECANet: models/eca_module.py``, ``eca_layer``):

* ``Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)`` applied to the (N, 1, C) descriptor, then a sigmoid;
  the parameter is ``conv.weight (1, 1, k)``.
* The paper's |t|_odd is "the nearest odd number to t".  The official ``eca_layer`` never computes k (the
  ResNets pass k_size explicitly); the adaptive rule is used here in its code form
  ``t = int(abs((log2(C) + b) / gamma)); k = t if t is odd else t + 1`` (:func:`kernel_size`).  It agrees
  with "nearest odd" wherever that is defined (t not an even integer; tested for C < 5000); at even integer
  t (C = 8, 128, 2048), where the paper's rule has a tie, the code form takes t + 1.
* An explicit ``k_size`` gives the fixed-k form (the official ResNets use k = 3; ``--ksize 3557``).
* Unlike timm's ``EcaModule`` there is no ``k >= 3`` floor: C = 4 gives k = 1.

ECA's parameters do not depend on C (the same kernel serves any channel count, as in the official module),
so the input's channel count is not checked against them.  ``conv.weight`` must be (1, 1, k) with k odd (an
even k would not keep C outputs); there is no structure option.
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, conv1d, example, init_conv1d
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Choice, Ints, Space, image

NAME = "eca"


def kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """Adaptive kernel size k = psi(C) in the code form: ``t = int(|(log2 C + b) / gamma|)``, odd-ified upwards."""
    if channels < 1:
        raise ValueError(f"eca: channels must be positive, got {channels}")
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def init(rng, channels: int, *, k_size: int | None = None, gamma: float = 2, b: float = 1,
         dtype=np.float64) -> dict:
    """Parameter ``conv.weight (1, 1, k)``; k = ``k_size`` if given, else :func:`kernel_size` (C, gamma, b)."""
    k = kernel_size(channels, gamma, b) if k_size is None else int(k_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"eca: k_size must be a positive odd integer (the conv keeps C outputs), got {k}")
    params: dict = {}
    init_conv1d(rng, params, "conv", 1, 1, k, bias=False, dtype=dtype)
    return params


@uses_params(NAME)
def channel_weights(params, x) -> ag.Tensor:
    """The gate w = sigmoid(C1D_k(GAP(x))): (N, C, H, W) -> (N, C)."""
    x = _check(x, params)
    return _gate(params, x)


def _kernel_size(params) -> int:
    """k of ``conv.weight`` (1, 1, k); an even k would shorten the channel axis, so it is refused."""
    k = params.take("conv.weight", (1, 1, None)).shape[2]
    if k % 2 == 0:
        raise ValueError(f"{NAME}: parameter 'conv.weight' must have shape (1, 1, k) with k odd (padding (k-1)/2 "
                         f"keeps C outputs), got {params.shape('conv.weight')}")
    return k


def _gate(params, x: ag.Tensor) -> ag.Tensor:
    n, c = x.shape[:2]
    k = _kernel_size(params)
    squeeze = ag.reshape(ag.mean(x, axis=(2, 3)), (n, 1, c))                       # z as a 1-channel sequence
    local = conv1d(params, "conv", squeeze, padding=(k - 1) // 2, bias=False, out=1)  # C1D_k(z): (N, 1, C)
    return ag.sigmoid(ag.reshape(local, (n, c)))                                    # w


def _check(x, params) -> ag.Tensor:
    x = check_input(NAME, x, min_size=1)
    check_dtype(NAME, x, params)
    return x


@uses_params(NAME)
def eca(params, x, *, train: bool = False) -> ag.Tensor:
    """Apply ECA to ``x`` (N, C, H, W); returns (N, C, H, W).  ``train`` has no effect (no BN)."""
    x = _check(x, params)
    weights = _gate(params, x)
    return x * ag.reshape(weights, weights.shape + (1, 1))          # y = x * w


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Wang, Wu, Zhu, Li, Zuo, Hu", "ECA-Net: Efficient Channel Attention for Deep Convolutional "
                "Neural Networks", "CVPR", 2020),
    init=init, apply_fn=eca, config={"channels": 16},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 5, 6), dtype),),
    channel_axis=None,  # the kernel is shared across channels: any C is valid for the same parameters
    # an explicit k wider than C pads past both ends; None = the adaptive k of C
    space=Space(config={"channels": Ints(1, 24), "k_size": Choice(None, 1, 3, 5, 7), "gamma": Choice(2, 1, 3),
                        "b": Choice(1, 0, 2)}, inputs=image()),
    description="channel gate from a 1-D convolution (adaptive kernel size) over the global-average descriptor",
))
