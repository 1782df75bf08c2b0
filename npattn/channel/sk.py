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
  the dilated 3x3 stands in for the paper's (2m + 3) x (2m + 3) kernel.  ``dilated=False`` gives the paper's
  form: genuine 3x3, 5x5, ... kernels, dilation 1.
* The fuse "FC" ``fc`` is a 1x1 convolution without bias, then BN and ReLU; the select "FC" ``fc_select``
  is a 1x1 convolution to M C channels without bias; softmax over the branch axis (Caffe ``Reshape`` to
  (N, M, C, 1) and ``Softmax`` axis 1).
* Parameters: ``convs.{m}.weight (C, C/G, k, k)``, ``bns.{m}.*``, ``fc.weight (d, C, 1, 1)``, ``fc_bn.*``,
  ``fc_select.weight (M C, d, 1, 1)``.
* BatchNorm follows PyTorch (eps 1e-5, momentum 0.1); the Caffe model's moving-average factor is 0.95.
* ``stride`` (apply option) strides every branch, as in SKNet's downsampling blocks.

**Structure options** (keywords of :func:`init` and of :func:`sk` / :func:`attention` alike; a registry entry's
config gives both): ``branches`` (M) and ``dilated``.  G and d are read from the shapes (``convs.{m}.weight``
axis 1 is C/G, ``fc.weight`` axis 0 is d); every shape is checked before computing.  Training on one value per
channel -- the fuse BatchNorm ``fc_bn`` always sees one per sample, so a batch of one -- is a ValueError naming
the layer, as in PyTorch.

Paper defaults: M = 2, G = 32, r = 16, L = 32.
"""
from __future__ import annotations

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
)
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Derived, Ints, Space, bn_train, image

NAME = "sk"


def _check_structure(branches, dilated) -> None:
    if isinstance(branches, bool) or not isinstance(branches, (int, np.integer)) or branches < 1:
        raise ValueError(f"{NAME}: branches must be an integer >= 1, got {branches!r}")
    if not isinstance(dilated, (bool, np.bool_)):
        raise TypeError(f"{NAME}: dilated must be a bool, got {dilated!r}")


def _kernel(m: int, dilated: bool) -> int:
    """Official form: every branch is 3x3 (dilated m + 1); paper form: 3, 5, 7, ... (dilation 1)."""
    return 3 if dilated else 3 + 2 * m


def _dilation(m: int, dilated: bool) -> int:
    return m + 1 if dilated else 1


def init(rng, channels: int, *, branches: int = 2, groups: int = 32, reduction: int = 16, min_hidden: int = 32,
         dilated: bool = True, dtype=np.float64) -> dict:
    """SK parameters for C = ``channels`` in and out; d = max(C // reduction, min_hidden) (the paper's L).

    ``dilated=True`` (official): every branch is 3x3 with dilation m + 1; ``False``: kernels 3, 5, 7, ...
    """
    _check_structure(branches, dilated)
    if channels % groups:
        raise ValueError(f"sk: channels={channels} must be divisible by groups={groups}")
    hidden = max(channels // reduction, min_hidden)
    params: dict = {}
    for m in range(branches):
        init_conv(rng, params, f"convs.{m}", channels, channels, _kernel(m, dilated), groups=groups, bias=False,
                  dtype=dtype)
        init_batch_norm(params, f"bns.{m}", channels, dtype=dtype)
    init_conv(rng, params, "fc", hidden, channels, 1, bias=False, dtype=dtype)
    init_batch_norm(params, "fc_bn", hidden, dtype=dtype)
    init_conv(rng, params, "fc_select", branches * channels, hidden, 1, bias=False, dtype=dtype)
    return params


def split(params, x: ag.Tensor, train: bool, stride: int = 1, *, branches: int = 2,
          dilated: bool = True) -> list:
    """U_m = relu(BN_m(conv_m(x))) for every branch: list of M tensors (N, C, H', W')."""
    channels = x.shape[1]
    features = []
    for m in range(branches):
        kernel, dilation = _kernel(m, dilated), _dilation(m, dilated)
        groups = channels // params[f"convs.{m}.weight"].shape[1]            # axis 1 is C/G
        u = conv(params, f"convs.{m}", x, stride=stride, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                 groups=groups, bias=False, out=channels)
        features.append(ag.relu(batch_norm(params, f"bns.{m}", u, train)))
    return features


def select(params, features: list, train: bool) -> ag.Tensor:
    """Branch weights a = softmax_m(A relu(BN(W GAP(sum_m U_m)))): (N, M, C), summing to 1 over m."""
    n, c = features[0].shape[:2]
    fused = features[0]
    for u in features[1:]:
        fused = fused + u                                                   # U = sum_m U_m
    squeeze = ag.mean(fused, axis=(2, 3), keepdims=True)                    # s: (N, C, 1, 1)
    compact = ag.relu(batch_norm(params, "fc_bn", conv(params, "fc", squeeze, bias=False), train))   # z: (N, d, 1, 1)
    logits = conv(params, "fc_select", compact, bias=False, out=len(features) * c)                  # A z
    return ag.softmax(ag.reshape(logits, (n, len(features), c)), axis=1)                            # (N, M, C)


def _check(params, x, branches: int, dilated: bool, stride) -> ag.Tensor:
    """Options, input, and every parameter's shape for the structure (before anything is computed)."""
    _check_structure(branches, dilated)
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"{NAME}: stride must be a positive integer, got {stride!r}")
    channels = params.shape("fc.weight")[1]
    x = check_input(NAME, x, channels=channels, min_size=1)
    check_dtype(NAME, x, params)
    hidden = params.shape("fc.weight")[0]
    shapes = {}
    for m in range(branches):
        kernel = _kernel(m, dilated)
        shapes[f"convs.{m}.weight"] = (channels, None, kernel, kernel)
        shapes.update(batch_norm_shapes(f"bns.{m}", channels))
    shapes.update({**conv_shapes("fc", hidden, channels, bias=False), **batch_norm_shapes("fc_bn", hidden),
                   **conv_shapes("fc_select", branches * channels, hidden, bias=False)})
    take_all(params, shapes, complete=True)
    group_width = params.shape("convs.0.weight")[1]
    for m in range(branches):
        if channels % group_width or params.shape(f"convs.{m}.weight")[1] != group_width:
            raise ValueError(f"{NAME}: parameter 'convs.{m}.weight' must have shape ({channels}, C/G, k, k) with one "
                             f"C/G dividing C for all branches (C/G = {group_width} from 'convs.0.weight'), got "
                             f"{params.shape(f'convs.{m}.weight')}")
    return x


@uses_params(NAME)
def attention(params, x, *, train: bool = False, stride: int = 1, branches: int = 2,
              dilated: bool = True) -> ag.Tensor:
    """The selection weights a (N, M, C) for input ``x`` (N, C, H, W).  Options as :func:`sk`."""
    x = _check(params, x, branches, dilated, stride)
    return select(params, split(params, x, train, stride, branches=branches, dilated=dilated), train)


@uses_params(NAME)
def sk(params, x, *, train: bool = False, stride: int = 1, branches: int = 2, dilated: bool = True) -> ag.Tensor:
    """Apply an SK convolution to ``x`` (N, C, H, W); returns (N, C, H', W') (H' = H for stride 1).

    ``branches`` (M) and ``dilated`` (official dilated 3x3 branches, or the paper's 3, 5, ... kernels): the
    structure, as given to :func:`init`.  ``stride`` strides every branch.
    """
    x = _check(params, x, branches, dilated, stride)
    features = split(params, x, train, stride, branches=branches, dilated=dilated)
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
    # d = max(C // r, L) with C below r too; the fused descriptor's BN sees one value per sample
    space=Space(config={"groups": Ints(1, 8), "_per_group": Ints(1, 4),
                        "channels": Derived(lambda v: v.groups * v._per_group), "branches": Ints(1, 3),
                        "reduction": Ints(1, 16), "min_hidden": Ints(1, 8), "dilated": Bools()},
                inputs=image(), where=(bn_train(lambda v: v.batch),)),
    description="softmax selection across conv branches of different receptive fields, from a fused descriptor",
))
