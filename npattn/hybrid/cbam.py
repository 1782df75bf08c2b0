"""CBAM: Convolutional Block Attention Module (Woo, Park, Lee, Kweon, ECCV 2018).

Channel attention, then spatial attention, each a sigmoid gate applied to the features::

    Mc  = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))        MLP = W1 relu(W0 . + b0) + b1, shared   (N, C)
    F'  = Mc * F                                                                                  (N, C, H, W)
    Ms  = sigmoid(BN(conv7x7([MaxPool_c(F'); AvgPool_c(F')])))                                    (N, 1, H, W)
    F'' = Ms * F'                                                                                 (N, C, H, W)

W0: (C/r, C), W1: (C, C/r); the 7x7 convolution maps 2 channels to 1 with padding 3 (any H, W works).

Follows the official code (``Jongchan/attention-module``, ``MODELS/cbam.py``) where it differs from the
paper:

* The MLP's two Linear layers carry biases (``mlp.0``, ``mlp.2``).
* ``ChannelPool`` concatenates [max; mean] over channels -- the paper writes [avg; max]. Option
  ``spatial_order="mean-max"`` gives the paper's order (and timm's ``CbamModule``).
* The spatial 7x7 conv has no bias and is followed by BatchNorm (eps 1e-5, **momentum 0.01**, affine);
  the paper has no BN. ``init(..., spatial_bn=False)`` gives the paper's BN-free gate (``spatial_bias=True``
  adds a conv bias, as fightingcv's CBAMBlock has).
* ``pool_types`` (default ``("avg", "max")``) also accepts the official extras ``"lp"`` (``lp_pool2d`` with
  p = 2 over the whole map, i.e. the L2 norm of each channel; on an all-zero channel its gradient is 0, as
  ``F.lp_pool2d``'s) and ``"lse"`` (log-sum-exp over the map).
  Every descriptor goes through the shared MLP and the raw outputs are summed before the sigmoid.
* The max descriptors route their gradient to the first maximum, as ``F.max_pool2d`` and ``torch.max(dim)``.

``init(..., no_spatial=True)`` builds the channel-only variant (official ``no_spatial``, registry entry
``cbam-channel``); :func:`cbam` takes the same ``no_spatial``, ``spatial_bn`` and ``spatial_bias`` options
(the parameters must be exactly those ``init`` makes with them: npattn.params).

Parameter names vs the official state_dict: ``ChannelGate.mlp.1.*`` -> ``mlp.0.*``, ``ChannelGate.mlp.3.*`` ->
``mlp.2.*``, ``SpatialGate.spatial.conv.weight`` -> ``spatial_conv.weight``, ``SpatialGate.spatial.bn.*`` ->
``spatial_bn.*``.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import (
    batch_norm,
    check_dtype,
    check_input,
    conv,
    example,
    init_batch_norm,
    init_conv,
    init_linear,
    linear,
)
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Ints, Space, bn_train, image

NAME = "cbam"
POOL_TYPES = ("avg", "max", "lp", "lse")
SPATIAL_ORDERS = ("max-mean", "mean-max")
#: The official BasicConv builds its BatchNorm with momentum 0.01 (PyTorch convention), eps 1e-5.
SPATIAL_BN_MOMENTUM = 0.01
SPATIAL_BN_EPS = 1e-5


def init(rng, channels: int, *, reduction: int = 16, no_spatial: bool = False, kernel_size: int = 7,
         spatial_bn: bool = True, spatial_bias: bool = False, dtype=np.float64) -> dict:
    """Parameters: ``mlp.0.weight (C//r, C)``, ``mlp.2.weight (C, C//r)`` (+ biases); unless ``no_spatial``,
    ``spatial_conv.weight (1, 2, k, k)`` [+ bias if ``spatial_bias``] and ``spatial_bn.*`` (1) if ``spatial_bn``.
    """
    hidden = channels // reduction
    if hidden < 1:
        raise ValueError(f"{NAME}: channels={channels} // reduction={reduction} must be at least 1")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{NAME}: kernel_size must be odd and positive (padding (k-1)/2 keeps H, W), "
                         f"got {kernel_size}")
    params: dict = {}
    init_linear(rng, params, "mlp.0", hidden, channels, dtype=dtype)
    init_linear(rng, params, "mlp.2", channels, hidden, dtype=dtype)
    if not no_spatial:
        init_conv(rng, params, "spatial_conv", 1, 2, kernel_size, bias=spatial_bias, dtype=dtype)
        if spatial_bn:
            init_batch_norm(params, "spatial_bn", 1, dtype=dtype)
    return params


# ---------------------------------------------------------------------------------------------
# channel gate


def _channel_descriptor(x: ag.Tensor, pool_type: str) -> ag.Tensor:
    """One global descriptor per channel: (N, C, H, W) -> (N, C)."""
    n, c, h, w = x.shape
    flat = ag.reshape(x, (n, c, h * w))
    if pool_type == "avg":
        return ag.mean(flat, axis=2)
    if pool_type == "max":
        return ag.take_max(flat, axis=2)                      # gradient to the first maximum, as max_pool2d
    if pool_type == "lp":
        return _l2_norm(ag.sum(flat * flat, axis=2))          # lp_pool2d, p = 2, window = whole map
    return ag.logsumexp(flat, axis=2)                         # "lse"


def _l2_norm(squares: ag.Tensor) -> ag.Tensor:
    """sqrt(sum of squares) with F.lp_pool2d's gradient at an all-zero window: 0, not sqrt's inf times 0 = NaN.

    torch computes ``(sign(s) * relu(|s|) * k) ** 0.5`` and the ReLU's backward zeroes the inf there; here
    sqrt only ever sees a positive argument (1 where s == 0, whose output is then replaced by 0), so no
    infinity is formed at all.  A NaN or inf sum is not 0 and propagates.
    """
    empty = squares.data == 0
    return ag.where(empty, 0.0, ag.sqrt(ag.where(empty, 1.0, squares)))


def _check_pool_types(pool_types) -> tuple:
    pool_types = (pool_types,) if isinstance(pool_types, str) else tuple(pool_types)
    unknown = [p for p in pool_types if p not in POOL_TYPES]
    if not pool_types or unknown:
        raise ValueError(f"{NAME}: pool_types must be a non-empty subset of {POOL_TYPES}, got {pool_types!r}")
    return pool_types


def _channel_attention(params, x: ag.Tensor, pool_types: tuple) -> ag.Tensor:
    """Mc = sigmoid(sum_p MLP(pool_p(F))): (N, C, H, W) -> (N, C)."""
    # All descriptors through the shared MLP in one batch: (P, N, C) -> (P, N, C), then summed over P.
    descriptors = ag.stack([_channel_descriptor(x, p) for p in pool_types], axis=0)
    raw = linear(params, "mlp.2", ag.relu(linear(params, "mlp.0", descriptors)), out=x.shape[1])
    return ag.sigmoid(ag.sum(raw, axis=0))


# ---------------------------------------------------------------------------------------------
# spatial gate


def _channel_pool(x: ag.Tensor, spatial_order: str) -> ag.Tensor:
    """ChannelPool: max and mean over channels, (N, C, H, W) -> (N, 2, H, W), official order [max; mean]."""
    channel_max = ag.take_max(x, axis=1)                      # torch.max(x, 1)[0]
    channel_mean = ag.mean(x, axis=1)
    pair = (channel_max, channel_mean) if spatial_order == "max-mean" else (channel_mean, channel_max)
    return ag.stack(pair, axis=1)


def _spatial_attention(params, refined: ag.Tensor, train: bool, spatial_order: str, spatial_bn: bool,
                       spatial_bias: bool) -> ag.Tensor:
    """Ms = sigmoid(BN(conv7x7(ChannelPool(F')))): (N, C, H, W) -> (N, 1, H, W)."""
    kernel = params.shape("spatial_conv.weight")[-1]
    if kernel % 2 == 0 or params.shape("spatial_conv.weight")[-2] != kernel:
        raise ValueError(f"{NAME}: parameter 'spatial_conv.weight' must be a square kernel of odd size (1, 2, k, k), "
                         f"got {params.shape('spatial_conv.weight')}")
    logits = conv(params, "spatial_conv", _channel_pool(refined, spatial_order), padding=(kernel - 1) // 2,
                  bias=spatial_bias, out=1)
    if spatial_bn:
        logits = batch_norm(params, "spatial_bn", logits, train, momentum=SPATIAL_BN_MOMENTUM, eps=SPATIAL_BN_EPS)
    return ag.sigmoid(logits)


# ---------------------------------------------------------------------------------------------
# the module


def _validate(params, x, pool_types, spatial_order):
    x = check_input(NAME, x, channels=params.shape("mlp.0.weight")[1], min_size=1)
    check_dtype(NAME, x, params)
    if spatial_order not in SPATIAL_ORDERS:
        raise ValueError(f"{NAME}: spatial_order must be one of {SPATIAL_ORDERS}, got {spatial_order!r}")
    return x, _check_pool_types(pool_types)


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, pool_types=("avg", "max"), spatial_order: str = "max-mean",
                   no_spatial: bool = False, spatial_bn: bool = True, spatial_bias: bool = False) -> tuple:
    """The two gates: ``Mc`` (N, C) and ``Ms`` (N, 1, H, W) (``None`` for the channel-only variant).

    ``Ms`` is computed from the channel-refined features F' = Mc * F, as in :func:`cbam`.
    """
    x, pool_types = _validate(params, x, pool_types, spatial_order)
    channel_gate = _channel_attention(params, x, pool_types)
    if no_spatial:
        return channel_gate, None
    refined = x * ag.reshape(channel_gate, channel_gate.shape + (1, 1))
    return channel_gate, _spatial_attention(params, refined, train, spatial_order, spatial_bn, spatial_bias)


@uses_params(NAME)
def cbam(params, x, *, train: bool = False, pool_types=("avg", "max"), spatial_order: str = "max-mean",
         no_spatial: bool = False, spatial_bn: bool = True, spatial_bias: bool = False) -> ag.Tensor:
    """Apply CBAM to ``x`` (N, C, H, W); returns F'' (N, C, H, W).

    ``train`` switches the spatial BatchNorm to batch statistics (new running statistics go to
    ``npattn.track_running_stats()``). ``pool_types``: descriptors of the channel gate (see module
    docstring). ``spatial_order``: "max-mean" (official ChannelPool) or "mean-max" (paper, timm).
    ``no_spatial``, ``spatial_bn``, ``spatial_bias``: the structure, as given to :func:`init`.
    """
    x, pool_types = _validate(params, x, pool_types, spatial_order)
    channel_gate = _channel_attention(params, x, pool_types)             # Mc  (N, C)
    refined = x * ag.reshape(channel_gate, channel_gate.shape + (1, 1))  # F' = Mc * F
    if no_spatial:                                                       # channel-only CBAM
        return refined
    spatial_gate = _spatial_attention(params, refined, train, spatial_order, spatial_bn, spatial_bias)  # Ms
    return refined * spatial_gate                                        # F'' = Ms * F'


PAPER = Paper("Woo, Park, Lee, Kweon", "CBAM: Convolutional Block Attention Module", "ECCV", 2018)


def _example(rng, dtype=np.float64):
    return (example(rng, (2, 32, 6, 7), dtype),)


#: every non-empty set of descriptors, the official pair first
_POOL_SETS = tuple(tuple(p for i, p in enumerate(POOL_TYPES) if mask >> i & 1) for mask in range(1, 16))
_POOL_SETS = (("avg", "max"),) + tuple(s for s in _POOL_SETS if s != ("avg", "max"))


def _space(no_spatial: bool) -> Space:
    """C // r >= 1 (init's rule) with C from r up; every descriptor set; the spatial gate's odd kernels up to wider
    than the map (zero padding); its BatchNorm2d(1) sees N H W values in training."""
    config = {"reduction": Ints(1, 8), "channels": Ints(lambda v: v.reduction, 32), "no_spatial": no_spatial}
    options = {"pool_types": Choice(*_POOL_SETS)}
    where = ()
    if not no_spatial:
        config.update({"kernel_size": Choice(7, 1, 3, 5, 9), "spatial_bn": Bools(), "spatial_bias": Bools()})
        options["spatial_order"] = Choice(*SPATIAL_ORDERS)
        where = (lambda v: not v.spatial_bn or bn_train(lambda v: v.batch * v.height * v.width)(v),)
    return Space(config=config, options=options, inputs=image(), where=where)


register(Mechanism(
    name=NAME, family="hybrid", paper=PAPER, init=init, apply_fn=cbam,
    config={"channels": 32, "reduction": 8}, example_input=_example, space=_space(no_spatial=False),
    description="channel gate (shared MLP over avg- and max-pooled descriptors) then a 7x7 spatial gate",
))

register(Mechanism(
    name="cbam-channel", family="hybrid", paper=PAPER, init=init, apply_fn=cbam,
    config={"channels": 32, "reduction": 8, "no_spatial": True}, example_input=_example,
    space=_space(no_spatial=True),
    description="CBAM's channel gate alone (official no_spatial=True)",
))
