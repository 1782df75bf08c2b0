"""Selective Kernel convolution, SKNet (Li, Wang, Hu, Yang, CVPR 2019).

    Split:   U_m = relu(BN_m(conv_m(x)))            M branches of grouped 3x3 convs, m = 0..M-1:  (N, C, H', W')
    Fuse:    U = sum_m U_m
             s = GAP(U)                             (N, C)
             z = relu(BN(W s))                      W (d, C),  d = max(C // r, L):             (N, d)
    Select:  a = softmax_m(A z)                     A (M C, d), rows m C .. (m+1) C - 1 give branch m: (N, M, C)
             V = sum_m a_m * U_m                    (N, C, H', W')

The paper writes one matrix A_m (C, d) per branch with a_c = e^{A_c z} / sum_m e^{A_m,c z}; stacking the A_m
into one (M C, d) matrix and taking the softmax over the branch axis is the same function (it is how the
official model computes it).

Follows the official model (``implus/SKNet: models/sknet50.prototxt``):

* Branch m is a 3x3 convolution with **dilation m + 1** (padding m + 1), groups G, no bias, then BN and ReLU;
  the dilated 3x3 stands in for the paper's (2m + 3) x (2m + 3) kernel.  ``init(..., dilated=False)`` gives
  the paper's form: genuine 3x3, 5x5, ... kernels, dilation 1 (the apply function reads which form from the
  kernel shapes).
* The fuse "FC" ``fc`` is a 1x1 convolution without bias, then BN and ReLU; the select "FC" ``fc_select``
  is a 1x1 convolution to M C channels without bias; softmax over the branch axis (Caffe ``Reshape`` to
  (N, M, C, 1) and ``Softmax`` axis 1).
* Parameters: ``convs.{m}.weight (C, C/G, k, k)``, ``bns.{m}.*``, ``fc.weight (d, C, 1, 1)``, ``fc_bn.*``,
  ``fc_select.weight (M C, d, 1, 1)``.
* BatchNorm follows PyTorch (eps 1e-5, momentum 0.1); the Caffe model's moving-average factor is 0.95.
* ``stride`` (apply option) strides every branch, as in SKNet's downsampling blocks.

Paper defaults: M = 2, G = 32, r = 16, L = 32.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import batch_norm, check_dtype, check_input, conv, example, init_batch_norm, init_conv
from ..registry import Mechanism, Paper, register

NAME = "sk"


def init(rng, channels: int, *, branches: int = 2, groups: int = 32, reduction: int = 16, min_hidden: int = 32,
         dilated: bool = True, dtype=np.float64) -> dict:
    """SK parameters for C = ``channels`` in and out; d = max(C // reduction, min_hidden) (the paper's L).

    ``dilated=True`` (official): every branch is 3x3 with dilation m + 1; ``False``: kernels 3, 5, 7, ...
    """
    if branches < 1:
        raise ValueError(f"sk: branches must be >= 1, got {branches}")
    if channels % groups:
        raise ValueError(f"sk: channels={channels} must be divisible by groups={groups}")
    hidden = max(channels // reduction, min_hidden)
    params: dict = {}
    for m in range(branches):
        kernel = 3 if dilated else 3 + 2 * m
        init_conv(rng, params, f"convs.{m}", channels, channels, kernel, groups=groups, bias=False, dtype=dtype)
        init_batch_norm(params, f"bns.{m}", channels, dtype=dtype)
    init_conv(rng, params, "fc", hidden, channels, 1, bias=False, dtype=dtype)
    init_batch_norm(params, "fc_bn", hidden, dtype=dtype)
    init_conv(rng, params, "fc_select", branches * channels, hidden, 1, bias=False, dtype=dtype)
    return params


def _num_branches(params: dict) -> int:
    return sum(1 for key in params if key.startswith("convs.") and key.endswith(".weight"))


def _dilation(m: int, kernel: int) -> int:
    """Official form: every kernel is 3x3 and branch m dilates by m + 1; paper form: dilation 1."""
    return m + 1 if kernel == 3 else 1


def split(params: dict, x: ag.Tensor, train: bool, stride: int = 1) -> list:
    """U_m = relu(BN_m(conv_m(x))) for every branch: list of M tensors (N, C, H', W')."""
    channels = x.shape[1]
    features = []
    for m in range(_num_branches(params)):
        weight = params[f"convs.{m}.weight"]
        kernel = weight.shape[-1]
        dilation = _dilation(m, kernel)
        groups = channels // weight.shape[1]
        u = conv(params, f"convs.{m}", x, stride=stride, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                 groups=groups)
        features.append(ag.relu(batch_norm(params, f"bns.{m}", u, train)))
    return features


def select(params: dict, features: list, train: bool) -> ag.Tensor:
    """Branch weights a = softmax_m(A relu(BN(W GAP(sum_m U_m)))): (N, M, C), summing to 1 over m."""
    n, c = features[0].shape[:2]
    fused = features[0]
    for u in features[1:]:
        fused = fused + u                                                   # U = sum_m U_m
    squeeze = ag.mean(fused, axis=(2, 3), keepdims=True)                    # s: (N, C, 1, 1)
    compact = ag.relu(batch_norm(params, "fc_bn", conv(params, "fc", squeeze), train))   # z: (N, d, 1, 1)
    logits = ag.reshape(conv(params, "fc_select", compact), (n, len(features), c))        # A z: (N, M, C)
    return ag.softmax(logits, axis=1)


def _check(params: dict, x) -> ag.Tensor:
    x = check_input(NAME, x, channels=params["convs.0.weight"].shape[0])
    check_dtype(NAME, x, params)
    return x


def attention(params: dict, x, *, train: bool = False, stride: int = 1) -> ag.Tensor:
    """The selection weights a (N, M, C) for input ``x`` (N, C, H, W)."""
    x = _check(params, x)
    return select(params, split(params, x, train, stride), train)


def sk(params: dict, x, *, train: bool = False, stride: int = 1) -> ag.Tensor:
    """Apply an SK convolution to ``x`` (N, C, H, W); returns (N, C, H', W') (H' = H for stride 1)."""
    x = _check(params, x)
    features = split(params, x, train, stride)
    weights = select(params, features, train)
    n, _, c = weights.shape
    # V = sum_m a_m * U_m, one branch at a time: stacking the U_m first would copy them all (time and memory)
    selected = None
    for m, u in enumerate(features):
        term = u * ag.reshape(weights[:, m], (n, c, 1, 1))
        selected = term if selected is None else selected + term
    return selected


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Li, Wang, Hu, Yang", "Selective Kernel Networks", "CVPR", 2019),
    init=init, apply_fn=sk, config={"channels": 32, "groups": 8, "reduction": 16, "min_hidden": 8},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 32, 6, 5), dtype),),
    description="softmax selection across conv branches of different receptive fields, from a fused descriptor",
))
