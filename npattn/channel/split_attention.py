"""Split-Attention: ResNeSt's ``SplAtConv2d`` (Zhang, Wu, Zhang, Zhu, Lin, Zhang, Sun, He, Mueller, Manmatha,
Li, Smola, "ResNeSt: Split-Attention Networks", arXiv 2004.08955, 2020; CVPR Workshops 2022).

A grouped convolution produces R radix splits in each of K cardinal groups; a softmax over the splits,
from the global context of their sum, weighs them per channel (R = radix, K = cardinality)::

    U      = ReLU(bn0(conv(x)))                  conv: Cin -> C·R, k x k, groups K·R              (B, C·R, H', W')
    U_r    = U[:, r·C : (r+1)·C]                 contiguous radix splits, r = 0 .. R-1             (B, C, H', W')
    s      = mean_HW(Σ_r U_r)                                                                      (B, C)
    z      = ReLU(bn1(fc1(s)))                   fc1: C -> D, 1x1, groups K, bias; D = max(Cin·R // 4, 32)
    logits = fc2(z)                              fc2: D -> C·R, 1x1, groups K, bias                 (B, C·R)
    a      = rSoftMax(logits)                    softmax over the R splits (R = 1: sigmoid)
    y      = Σ_r a_r · U_r                                                                          (B, C, H', W')

Follows the official code (``zhanghang1989/ResNeSt``, ``resnest/torch/models/splat.py``, ``SplAtConv2d`` and
``rSoftMax``):

* rSoftMax views the logits (B, K, R, C/K) and transposes to (B, R, K, C/K) before the softmax over R: fc2's
  channel k·(R·C/K) + r·(C/K) + j is the logit of split r, channel k·(C/K) + j -- **cardinal-major in fc2**,
  while the splits of U are **radix-major** (contiguous blocks of C).  Reading fc2 radix-major changes
  outputs by ~0.3 for K = 2.
* D = max(in_channels · R // reduction_factor, 32) with reduction_factor = 4.
* Defaults are ResNeSt's Bottleneck call: 3x3, padding = dilation = 1, **bias=False**, BatchNorm, R = 2, K = 1
  (the constructor's own default is bias=True; ``bias=True`` gives it).  ``norm=False`` drops bn0 and bn1
  (the constructor's ``norm_layer=None``).  ``rectify=True`` (the external RFConv2d) and DropBlock (which
  raises NotImplementedError in the official file) are not covered.  ``bn1`` sees (B, D, 1, 1): in training
  B = 1 is an error, as in torch.

Parameters (official names): ``conv.weight (C·R, Cin/(K·R), k, k)`` [+ ``conv.bias``], ``bn0.*`` (C·R,),
``fc1.weight (D, C/K, 1, 1)``, ``fc1.bias``, ``bn1.*`` (D,), ``fc2.weight (C·R, D/K, 1, 1)``, ``fc2.bias``.
``radix``, ``cardinality``, ``bias`` and ``norm`` are structure options of :func:`init` and
:func:`split_attention` alike (R and K cannot both be read from the shapes); ``stride``, ``padding`` and
``dilation`` are options of :func:`split_attention` (the official constructor's).
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import batch_norm, check_dtype, check_input, example, init_batch_norm, init_conv
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Derived, Ints, Space, bn_train, image

NAME = "split-attention"
REDUCTION_FACTOR = 4
MIN_INTER = 32


def _inter_channels(in_channels: int, radix: int, reduction_factor: int = REDUCTION_FACTOR) -> int:
    """D = max(Cin · R // reduction_factor, 32) (official ``inter_channels``)."""
    return max(in_channels * radix // reduction_factor, MIN_INTER)


def _check_structure(in_channels: int, channels: int, radix: int, cardinality: int, inter: int) -> None:
    if radix < 1 or cardinality < 1:
        raise ValueError(f"{NAME}: radix and cardinality must be positive, got radix={radix}, "
                         f"cardinality={cardinality}")
    if in_channels % (cardinality * radix):
        raise ValueError(f"{NAME}: in_channels={in_channels} is not divisible by cardinality·radix="
                         f"{cardinality * radix} (conv groups)")
    if channels % cardinality or inter % cardinality:
        raise ValueError(f"{NAME}: channels={channels} and the attention width D={inter} must be divisible by "
                         f"cardinality={cardinality} (fc1/fc2 groups)")


def init(rng, in_channels: int, channels: int, *, kernel_size: int = 3, radix: int = 2, cardinality: int = 1,
         bias: bool = False, norm: bool = True, reduction_factor: int = REDUCTION_FACTOR, dtype=np.float64) -> dict:
    """Parameters of ``SplAtConv2d(in_channels, channels, kernel_size, groups=cardinality, bias, radix,
    reduction_factor, norm_layer=BatchNorm2d if norm else None)`` (module docstring for the names)."""
    inter = _inter_channels(in_channels, radix, reduction_factor)
    _check_structure(in_channels, channels, radix, cardinality, inter)
    params: dict = {}
    init_conv(rng, params, "conv", channels * radix, in_channels, kernel_size, groups=cardinality * radix, bias=bias,
              dtype=dtype)
    if norm:
        init_batch_norm(params, "bn0", channels * radix, dtype=dtype)
    init_conv(rng, params, "fc1", inter, channels, 1, groups=cardinality, dtype=dtype)
    if norm:
        init_batch_norm(params, "bn1", inter, dtype=dtype)
    init_conv(rng, params, "fc2", channels * radix, inter, 1, groups=cardinality, dtype=dtype)
    return params


def _splits(params, x, train: bool, radix: int, cardinality: int, bias: bool, norm: bool, stride, padding,
            dilation):
    """U = ReLU(bn0(conv(x))): (B, C·R, H', W')."""
    groups = cardinality * radix
    weight = params.take("conv.weight", (None, x.shape[1] // groups, None, None))
    if weight.shape[0] % radix:
        raise ValueError(f"{NAME}: parameter 'conv.weight' must have shape (C·R, Cin/(K·R), k, k) with C·R divisible "
                         f"by radix={radix}, got {tuple(weight.shape)}")
    conv_bias = params.take("conv.bias", (weight.shape[0],)) if bias else None
    u = ag.conv2d(x, weight, conv_bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
    if norm:
        u = batch_norm(params, "bn0", u, train)
    return ag.relu(u)


def _attention(params, u, train: bool, radix: int, cardinality: int, norm: bool):
    """a = rSoftMax(fc2(ReLU(bn1(fc1(mean_HW Σ_r U_r))))) as (B, R, C, 1, 1), radix-major like the splits."""
    b, rc = u.shape[:2]
    channels = rc // radix
    splits = ag.reshape(u, (b, radix, channels) + u.shape[2:])                      # U_r = U[:, rC:(r+1)C]
    pooled = ag.mean(ag.sum(splits, axis=1), axis=(2, 3), keepdims=True)            # s = mean_HW(Σ_r U_r)
    fc1 = params.take("fc1.weight", (None, channels // cardinality, 1, 1))
    inter = fc1.shape[0]
    hidden = ag.conv2d(pooled, fc1, params.take("fc1.bias", (inter,)), groups=cardinality)
    if norm:
        hidden = batch_norm(params, "bn1", hidden, train)
    hidden = ag.relu(hidden)                                                         # z
    fc2 = params.take("fc2.weight", (rc, inter // cardinality, 1, 1))
    logits = ag.conv2d(hidden, fc2, params.take("fc2.bias", (rc,)), groups=cardinality)   # (B, C·R, 1, 1)
    if radix == 1:
        return ag.reshape(ag.sigmoid(logits), (b, 1, channels, 1, 1))
    # rSoftMax: fc2's channels are (K, R, C/K); the splits are (R, K, C/K) -> transpose, softmax over R
    logits = ag.swapaxes(ag.reshape(logits, (b, cardinality, radix, channels // cardinality)), 1, 2)
    weights = ag.softmax(logits, axis=1)                                             # (B, R, K, C/K)
    return ag.reshape(weights, (b, radix, channels, 1, 1))


def _validate(params, x, radix, cardinality):
    if radix < 1 or cardinality < 1:
        raise ValueError(f"{NAME}: radix and cardinality must be positive, got radix={radix}, "
                         f"cardinality={cardinality}")
    in_channels = params.shape("conv.weight")[1] * radix * cardinality
    x = check_input(NAME, x, channels=in_channels, min_size=1)
    check_dtype(NAME, x, params)
    return x


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, radix: int = 2, cardinality: int = 1, bias: bool = False,
                   norm: bool = True, stride=1, padding=1, dilation=1) -> ag.Tensor:
    """The split weights a of x (B, Cin, H, W): (B, R, C), summing to 1 over R (R > 1; R = 1: sigmoid gates)."""
    x = _validate(params, x, radix, cardinality)
    u = _splits(params, x, train, radix, cardinality, bias, norm, stride, padding, dilation)
    weights = _attention(params, u, train, radix, cardinality, norm)
    return ag.reshape(weights, weights.shape[:3])


@uses_params(NAME)
def split_attention(params, x, *, train: bool = False, radix: int = 2, cardinality: int = 1, bias: bool = False,
                    norm: bool = True, stride=1, padding=1, dilation=1) -> ag.Tensor:
    """Apply SplAtConv2d to ``x`` (B, Cin, H, W); returns (B, C, H', W').

    ``radix``, ``cardinality``, ``bias``, ``norm``: the structure, as given to :func:`init`.  ``stride``,
    ``padding``, ``dilation``: the grouped conv's geometry (ResNeSt: padding = dilation).  ``train``: the
    BatchNorms use batch statistics (reported to ``npattn.track_running_stats()``; bn1 needs B >= 2).
    """
    x = _validate(params, x, radix, cardinality)
    u = _splits(params, x, train, radix, cardinality, bias, norm, stride, padding, dilation)      # U
    weights = _attention(params, u, train, radix, cardinality, norm)                             # a  (B, R, C, 1, 1)
    b, rc = u.shape[:2]
    splits = ag.reshape(u, (b, radix, rc // radix) + u.shape[2:])
    return ag.sum(weights * splits, axis=1)                                                      # y = Σ_r a_r U_r


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Zhang, Wu, Zhang, Zhu, Lin, Zhang, Sun, He, Mueller, Manmatha, Li, Smola",
                "ResNeSt: Split-Attention Networks", "CVPR Workshops", 2022),
    init=init, apply_fn=split_attention,
    config={"in_channels": 16, "channels": 16, "radix": 2, "cardinality": 2},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 5, 6), dtype),),
    # Cin = K R (Cin / K R), C = K (C / K), D = max(Cin R // factor, 32) divisible by K
    space=Space(config={"radix": Ints(1, 3), "cardinality": Ints(1, 2), "_in": Ints(1, 4), "_out": Ints(1, 8),
                        "in_channels": Derived(lambda v: v.cardinality * v.radix * v._in),
                        "channels": Derived(lambda v: v.cardinality * v._out), "kernel_size": Choice(3, 1),
                        "bias": Bools(), "norm": Bools(), "reduction_factor": Choice(4, 1, 2)},
                options={"padding": Derived(lambda v: v.kernel_size // 2)}, inputs=image("in_channels"),
                where=(lambda v: max(v.in_channels * v.radix // v.reduction_factor, 32) % v.cardinality == 0,
                       bn_train(lambda v: v.batch if v.norm else 2))),
    description="softmax over the radix splits of a grouped conv, from the global context of their sum",
))
