"""Triplet Attention (Misra, Nalamada, Arasanipalai, Hou, WACV 2021).

Three branches, each a CBAM-style spatial gate on one plane of the (C, H, W) tensor, pooled over the
remaining axis; the branch outputs are averaged::

    gate(u) = sigmoid(BN(conv7x7([max_D u; mean_D u])))      u: (N, D, P, Q), gate on the (P, Q) plane
    cw:  pool over H, gate on the (C, W) plane   s_cw (N, 1, C, W)  ->  x · s_cw[n, 0, c, w]
    hc:  pool over W, gate on the (H, C) plane   s_hc (N, 1, H, C)  ->  x · s_hc[n, 0, h, c]
    hw:  pool over C, gate on the (H, W) plane   s_hw (N, 1, H, W)  ->  x · s_hw[n, 0, h, w]
    y = (1/3)(hw + cw + hc)          no_spatial:  y = (1/2)(cw + hc)

Follows the official code (``landskape-ai/triplet-attention``, root ``triplet_attention.py``:
``TripletAttention(no_spatial=False)`` of ``AttentionGate``\\ s):

* Z-pool is [max; mean] (max first); the max sends its gradient to the first maximum (``torch.max(dim)``);
* the 7x7 conv maps 2 -> 1 channels with padding 3 and **no bias**, then BatchNorm2d(1) with eps 1e-5 and
  **momentum 0.01**; no ReLU;
* the ``cw`` branch works on x.permute(0, 2, 1, 3) (rows C, columns W) and ``hc`` on x.permute(0, 3, 2, 1)
  (rows H, columns C).  The orientation matters for loading weights: transposing ``hc``'s plane changes
  outputs by ~0.3.  Zero padding along the channel axis means the gate of channel c sees channels c-3 .. c+3.
The paper has the same three branches; its figure omits the BN.  Gates here multiply x directly (the
official permute-gate-permute-back gives the same numbers), and the three gates are summed before the one
product with x -- y = x · (s_hw + s_cw + s_hc) / 3 -- which equals the official sum of products to rounding.

Parameters, for b in ``cw``, ``hc`` (and ``hw`` unless ``no_spatial``): ``b.conv.conv.weight (1, 2, k, k)`` and
``b.conv.bn.{weight, bias, running_mean, running_var, num_batches_tracked}`` (1,) -- the root file's
state_dict names.  The older ``MODELS/triplet_attention.py`` (used by ``MODELS/resnet.py``) names them
``ChannelGateH`` = cw, ``ChannelGateW`` = hc, ``SpatialGate`` = hw with submodule ``spatial`` for ``conv``:
:func:`models_key_map` gives that map for ``npattn.interop.torch.from_torch_state_dict``.  No parameter depends
on C.  ``no_spatial`` is a structure option of :func:`init` and :func:`triplet` alike.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import batch_norm, check_dtype, check_input, example, init_batch_norm, init_conv
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Ints, Space, bn_train, image

NAME = "triplet"
BN_MOMENTUM = 0.01        # the official BasicConv's BatchNorm2d(momentum=0.01), eps 1e-5
BN_EPS = 1e-5
#: root-file branch name -> MODELS/ file name
MODELS_NAMES = {"cw": "ChannelGateH", "hc": "ChannelGateW", "hw": "SpatialGate"}


def _branches(no_spatial: bool) -> tuple:
    return ("cw", "hc") if no_spatial else ("cw", "hc", "hw")


def init(rng, channels: int | None = None, *, no_spatial: bool = False, kernel_size: int = 7,
         dtype=np.float64) -> dict:
    """Parameters of the branches' gates: ``{b}.conv.conv.weight (1, 2, k, k)`` and BatchNorm ``{b}.conv.bn.*`` (1)
    for b in cw, hc[, hw].  ``channels`` is accepted for a uniform interface (nothing depends on it)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{NAME}: kernel_size must be odd and positive (padding (k-1)/2 keeps the plane), "
                         f"got {kernel_size}")
    params: dict = {}
    for branch in _branches(no_spatial):
        init_conv(rng, params, f"{branch}.conv.conv", 1, 2, kernel_size, bias=False, dtype=dtype)
        init_batch_norm(params, f"{branch}.conv.bn", 1, dtype=dtype)
    return params


def models_key_map(no_spatial: bool = False) -> dict:
    """{``MODELS/triplet_attention.py`` state_dict key: npattn key} for ``from_torch_state_dict(key_map=...)``."""
    key_map = {}
    for branch in _branches(no_spatial):
        old = MODELS_NAMES[branch]
        key_map[f"{old}.spatial.conv.weight"] = f"{branch}.conv.conv.weight"
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            key_map[f"{old}.spatial.bn.{leaf}"] = f"{branch}.conv.bn.{leaf}"
    return key_map


def _gate(params, branch: str, pooled_max, pooled_mean, train: bool):
    """sigmoid(BN(conv([max; mean]))) on one plane: two (N, P, Q) maps -> (N, P, Q)."""
    weight = params.take(f"{branch}.conv.conv.weight", (1, 2, None, None))
    kernel = weight.shape[-1]
    if kernel % 2 == 0 or weight.shape[-2] != kernel:
        raise ValueError(f"{NAME}: parameter '{branch}.conv.conv.weight' must be a square kernel of odd size "
                         f"(1, 2, k, k), got {tuple(weight.shape)}")
    z = ag.stack([pooled_max, pooled_mean], axis=1)                                # Z-pool [max; mean]  (N, 2, P, Q)
    logits = ag.conv2d(z, weight, padding=(kernel - 1) // 2)                       # 7x7, no bias       (N, 1, P, Q)
    logits = batch_norm(params, f"{branch}.conv.bn", logits, train, momentum=BN_MOMENTUM, eps=BN_EPS)
    return ag.sigmoid(logits)[:, 0]


def _branch_gates(params, x, train: bool, no_spatial: bool) -> dict:
    """Each branch's gate broadcast against x (N, C, H, W): cw (N, C, 1, W), hc (N, C, H, 1), hw (N, 1, H, W)."""
    gates = {}
    # cw: u = x.permute(0, 2, 1, 3) (N, H, C, W); pooling over H leaves the (C, W) plane
    s_cw = _gate(params, "cw", ag.take_max(x, axis=2), ag.mean(x, axis=2), train)                # (N, C, W)
    gates["cw"] = ag.expand_dims(s_cw, 2)
    # hc: u = x.permute(0, 3, 2, 1) (N, W, H, C); pooling over W leaves the (H, C) plane, rows H
    s_hc = _gate(params, "hc", ag.swapaxes(ag.take_max(x, axis=3), 1, 2), ag.swapaxes(ag.mean(x, axis=3), 1, 2),
                 train)                                                                           # (N, H, C)
    gates["hc"] = ag.expand_dims(ag.swapaxes(s_hc, 1, 2), 3)
    if not no_spatial:
        # hw: pooling over C, CBAM's spatial gate on (H, W)
        gates["hw"] = ag.expand_dims(_gate(params, "hw", ag.take_max(x, axis=1), ag.mean(x, axis=1), train), 1)
    return gates


def _validate(params, x):
    x = check_input(NAME, x, min_size=1)
    check_dtype(NAME, x, params)
    return x


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, no_spatial: bool = False) -> dict:
    """The branches' gates, shaped to broadcast against x:
    {"cw": (N, C, 1, W), "hc": (N, C, H, 1)[, "hw": (N, 1, H, W)]}."""
    return _branch_gates(params, _validate(params, x), train, no_spatial)


@uses_params(NAME)
def triplet(params, x, *, train: bool = False, no_spatial: bool = False) -> ag.Tensor:
    """Apply Triplet Attention to ``x`` (N, C, H, W); returns (N, C, H, W).

    ``train``: the gates' BatchNorms use batch statistics and report running statistics to
    ``npattn.track_running_stats()``.  ``no_spatial``: the structure, as given to :func:`init`.
    """
    x = _validate(params, x)
    gates = _branch_gates(params, x, train, no_spatial)
    if no_spatial:
        return x * ((gates["cw"] + gates["hc"]) * 0.5)                       # y = (1/2)(cw + hc)
    return x * ((gates["hw"] + gates["cw"] + gates["hc"]) * (1 / 3))          # y = (1/3)(hw + cw + hc)


register(Mechanism(
    name=NAME, family="hybrid",
    paper=Paper("Misra, Nalamada, Arasanipalai, Hou", "Rotate to Attend: Convolutional Triplet Attention Module",
                "WACV", 2021),
    init=init, apply_fn=triplet, config={},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 6, 5, 7), dtype),),
    channel_axis=None,
    # any C (no parameter depends on it); odd kernels up to wider than the planes (zero padding); in training
    # each gate's BatchNorm2d(1) sees N C W (cw), N H C (hc) and N H W (hw) values
    space=Space(config={"_channels": Ints(1, 8), "kernel_size": Choice(7, 1, 3, 5, 9), "no_spatial": Bools()},
                inputs=image("_channels"),
                where=(bn_train(lambda v: v.batch * v._channels * v.width),
                       bn_train(lambda v: v.batch * v.height * v._channels),
                       lambda v: v.no_spatial or bn_train(lambda v: v.batch * v.height * v.width)(v))),
    description="three Z-pool + 7x7 conv gates on the (C, W), (H, C) and (H, W) planes, averaged",
))
