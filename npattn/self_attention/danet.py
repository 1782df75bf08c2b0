"""DANet: dual attention network (Fu, Liu, Tian, Li, Bao, Fang, Lu, CVPR 2019).

Position attention module (PAM) on A (B, C, H, W), N = H*W positions, Ck = C // 8::

    Q = conv1x1_{C->Ck}(A)   K = conv1x1_{C->Ck}(A)   V = conv1x1_{C->C}(A)     (all with bias)
    S = softmax_i(Q_j^T K_i)            s_ji, softmax over the N key positions   (B, N, N)
    E_j = alpha sum_i s_ji V_i + A_j    alpha: ``gamma`` (1,), initialised to 0

Channel attention module (CAM), no convolutions, A viewed (B, C, N)::

    energy = A A^T                                               (B, C, C)
    X = softmax(rowmax(energy) - energy)      official code; = softmax(-energy)   (B, C, C)
    E_j = beta sum_i x_ji A_i + A_j           beta: ``gamma`` (1,), initialised to 0

The official ``CAM_Module`` (``junfu1115/DANet: encoding/nn/da_att.py``) computes ``energy_new =
max(energy, -1, keepdim) - energy``; softmax is invariant to a per-row shift, so this is softmax(-energy):
CAM attends to the *least* similar channels, the opposite sign of the paper's x_ji = softmax(A_i . A_j).
``cam_form="paper"`` gives the paper's softmax(energy).  The rowmax is no stability trick: its total
gradient is exactly 0, and it is computed literally here (ties in the max share the gradient).

The head (``encoding/models/sseg/danet.py: DANetHead``) with Ci = C // 4::

    feat1 = ReLU(BN(conv3x3_{C->Ci}(x)))   -> PAM -> ReLU(BN(conv3x3_{Ci->Ci}))   (conv5a, sa, conv51)
    feat2 = ReLU(BN(conv3x3_{C->Ci}(x)))   -> CAM -> ReLU(BN(conv3x3_{Ci->Ci}))   (conv5c, sc, conv52)
    out = sa_conv + sc_conv                                                       (B, Ci, H, W)

3x3 convs without bias, padding 1.  The official head then applies three classifiers (Dropout2d(0.1) +
1x1 conv) to sa_conv, sc_conv and the sum; they are task-specific and not part of the attention, so
``variant="head"`` returns the fused feature map ``sa_conv + sc_conv`` before them.

Variants (``variant`` of :func:`init` and :func:`danet`, one parameter layout each; a registry entry's
``config`` gives both the same value, npattn.params):

* ``"head"`` (registry ``danet``): the dual head above; names ``conv5a.{0,1}``, ``conv5c.{0,1}``,
  ``sa.{query,key,value}_conv``, ``sa.gamma``, ``sc.gamma``, ``conv51.{0,1}``, ``conv52.{0,1}``.
* ``"pam"`` (``danet-pam``): PAM alone, names ``query_conv``, ``key_conv``, ``value_conv``, ``gamma``.
* ``"cam"`` (``danet-cam``): CAM alone, ``gamma`` only (so any channel count is accepted).
* ``"pam+cam"``: PAM(x) + CAM(x) - x, the two modules in parallel on one input, ``sa.*`` and ``sc.*``.

``gamma_init`` sets both gammas (official: 0, so each module starts as the identity); the registry entries
use 0.5 so that every parameter receives a non-zero gradient.

Memory: PAM's (B, N, N) attention is inherent to DANet (the torch module builds the same matrix).
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import (
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
from ..space import Choice, Ints, Space, bn_train, image
from ._common import conv_bn, dot_product_attention, flatten_spatial, init_gamma

NAME = "danet"
VARIANTS = ("head", "pam", "cam", "pam+cam")
CAM_FORMS = ("official", "paper")


def _init_pam(rng, params, prefix, channels, gamma_init, dtype):
    key_channels = channels // 8
    if key_channels < 1:
        raise ValueError(f"{NAME}: PAM needs at least 8 channels (query/key have C // 8), got {channels}")
    init_conv(rng, params, f"{prefix}query_conv", key_channels, channels, 1, dtype=dtype)
    init_conv(rng, params, f"{prefix}key_conv", key_channels, channels, 1, dtype=dtype)
    init_conv(rng, params, f"{prefix}value_conv", channels, channels, 1, dtype=dtype)
    init_gamma(params, f"{prefix}gamma", gamma_init, dtype)


def _init_conv_bn(rng, params, prefix, out_channels, in_channels, dtype):
    init_conv(rng, params, f"{prefix}.0", out_channels, in_channels, 3, bias=False, dtype=dtype)
    init_batch_norm(params, f"{prefix}.1", out_channels, dtype=dtype)


def init(rng, channels: int, *, variant: str = "head", gamma_init: float = 0.0, dtype=np.float64) -> dict:
    """Parameters of one DANet variant on ``channels`` input channels (see the module docstring)."""
    _check_variant(variant)
    params: dict = {}
    if variant == "pam":
        _init_pam(rng, params, "", channels, gamma_init, dtype)
    elif variant == "cam":
        init_gamma(params, "gamma", gamma_init, dtype)
    elif variant == "pam+cam":
        _init_pam(rng, params, "sa.", channels, gamma_init, dtype)
        init_gamma(params, "sc.gamma", gamma_init, dtype)
    else:
        inter = channels // 4
        if inter < 8:
            raise ValueError(f"{NAME}: the head needs at least 32 channels (PAM on C // 4), got {channels}")
        _init_conv_bn(rng, params, "conv5a", inter, channels, dtype)
        _init_conv_bn(rng, params, "conv5c", inter, channels, dtype)
        _init_pam(rng, params, "sa.", inter, gamma_init, dtype)
        init_gamma(params, "sc.gamma", gamma_init, dtype)
        _init_conv_bn(rng, params, "conv51", inter, inter, dtype)
        _init_conv_bn(rng, params, "conv52", inter, inter, dtype)
    return params


def _check_variant(variant):
    if variant not in VARIANTS:
        raise ValueError(f"{NAME}: variant must be one of {VARIANTS}, got {variant!r}")


# ---------------------------------------------------------------------------------------------
# the two modules


def position_attention(params, x: ag.Tensor, prefix: str = "") -> ag.Tensor:
    """PAM: E = gamma * V softmax(Q^T K)^T + A on x (B, C, H, W) -> (B, C, H, W).

    A building block (parameters as :func:`danet` checks them); :func:`danet` is the public entry.
    """
    n, c, h, w = x.shape
    query = flatten_spatial(conv(params, f"{prefix}query_conv", x))      # (B, Ck, N)
    key = flatten_spatial(conv(params, f"{prefix}key_conv", x))          # (B, Ck, N)
    value = flatten_spatial(conv(params, f"{prefix}value_conv", x))      # (B, C, N)
    out = dot_product_attention(query, key, value)                       # sum_i s_ji V_i, no scaling
    return params[f"{prefix}gamma"] * ag.reshape(out, (n, c, h, w)) + x


def channel_attention_map(x: ag.Tensor, cam_form: str = "official") -> ag.Tensor:
    """CAM's (B, C, C) attention: softmax(rowmax(A A^T) - A A^T) (official) or softmax(A A^T) (paper)."""
    if cam_form not in CAM_FORMS:
        raise ValueError(f"{NAME}: cam_form must be one of {CAM_FORMS}, got {cam_form!r}")
    flat = flatten_spatial(ag.as_tensor(x))                               # (B, C, N)
    energy = ag.matmul(flat, ag.swapaxes(flat, 1, 2))                     # (B, C, C)
    if cam_form == "official":
        energy = ag.max(energy, axis=-1, keepdims=True) - energy          # energy_new
    return ag.softmax(energy, axis=-1)


def channel_attention(params, x: ag.Tensor, prefix: str = "", cam_form: str = "official") -> ag.Tensor:
    """CAM: E = gamma * attention A + A on x (B, C, H, W) -> (B, C, H, W) (a building block, as PAM's)."""
    attention = channel_attention_map(x, cam_form)
    out = ag.reshape(ag.matmul(attention, flatten_spatial(x)), x.shape)   # sum_i x_ji A_i
    return params[f"{prefix}gamma"] * out + x


# ---------------------------------------------------------------------------------------------
# the entry point


def _pam_shapes(prefix: str, channels: int, key_channels: int) -> dict:
    return {**conv_shapes(f"{prefix}query_conv", key_channels, channels),
            **conv_shapes(f"{prefix}key_conv", key_channels, channels),
            **conv_shapes(f"{prefix}value_conv", channels, channels), f"{prefix}gamma": (1,)}


def _conv_bn_shapes(prefix: str, out_channels: int, in_channels: int) -> dict:
    return {**conv_shapes(f"{prefix}.0", out_channels, in_channels, 3, bias=False),
            **batch_norm_shapes(f"{prefix}.1", out_channels)}


def _channels(params, variant: str):
    """The input channels the variant's parameters imply (None for CAM alone), every parameter checked."""
    if variant == "cam":
        take_all(params, {"gamma": (1,)})
        return None
    if variant in ("pam", "pam+cam"):
        prefix = "" if variant == "pam" else "sa."
        channels = params.shape(f"{prefix}value_conv.weight")[0]
        shapes = _pam_shapes(prefix, channels, params.shape(f"{prefix}query_conv.weight")[0])
        take_all(params, shapes if variant == "pam" else {**shapes, "sc.gamma": (1,)})
        return channels
    channels, inter = params.shape("conv5a.0.weight")[1], params.shape("conv5a.0.weight")[0]
    take_all(params, {**_conv_bn_shapes("conv5a", inter, channels), **_conv_bn_shapes("conv5c", inter, channels),
                      **_pam_shapes("sa.", inter, params.shape("sa.query_conv.weight")[0]), "sc.gamma": (1,),
                      **_conv_bn_shapes("conv51", inter, inter), **_conv_bn_shapes("conv52", inter, inter)})
    return channels


def _head_unit(params, prefix, x, train):
    """ReLU(BN(conv3x3(x))), no conv bias: conv5a / conv5c / conv51 / conv52."""
    return conv_bn(params, f"{prefix}.0", f"{prefix}.1", x, train, padding=1, bias=False)


@uses_params(NAME)
def danet(params, x, *, train: bool = False, variant: str = "head", cam_form: str = "official") -> ag.Tensor:
    """Apply a DANet variant to ``x`` (B, C, H, W).

    Returns (B, C, H, W) for ``pam``, ``cam`` and ``pam+cam``, and (B, C // 4, H, W) for ``head``
    (``train`` only matters there: its BatchNorms).  ``variant`` is the structure, as given to
    :func:`init`; ``cam_form="paper"`` gives the paper's CAM sign.
    """
    _check_variant(variant)
    if cam_form not in CAM_FORMS:
        raise ValueError(f"{NAME}: cam_form must be one of {CAM_FORMS}, got {cam_form!r}")
    x = check_input(NAME, x, channels=_channels(params, variant), min_size=1)
    check_dtype(NAME, x, params)
    if variant == "pam":
        return position_attention(params, x)
    if variant == "cam":
        return channel_attention(params, x, cam_form=cam_form)
    if variant == "pam+cam":
        return position_attention(params, x, "sa.") + channel_attention(params, x, "sc.", cam_form) - x
    sa_conv = _head_unit(params, "conv51", position_attention(params, _head_unit(params, "conv5a", x, train), "sa."),
                         train)
    sc_feat = channel_attention(params, _head_unit(params, "conv5c", x, train), "sc.", cam_form)
    return sa_conv + _head_unit(params, "conv52", sc_feat, train)


_PAPER = Paper("Fu, Liu, Tian, Li, Bao, Fang, Lu", "Dual Attention Network for Scene Segmentation", "CVPR", 2019)


def _space(variant: str, channels: Ints | Choice) -> Space:
    """``variant`` fixed, both CAM forms, gamma 0 (official identity start) too; the head's BNs see B H W values."""
    return Space(config={"channels": channels, "variant": variant, "gamma_init": Choice(0.5, 0.0)},
                 options={} if variant == "pam" else {"cam_form": Choice(*CAM_FORMS)}, inputs=image(),
                 where=(bn_train(lambda v: v.batch * v.height * v.width),) if variant == "head" else ())


def _entry(name, variant, channels, shape, description, space, channel_axis=1):
    register(Mechanism(
        name=name, family="self_attention", paper=_PAPER, init=init, apply_fn=danet,
        config={"channels": channels, "variant": variant, "gamma_init": 0.5},
        example_input=lambda rng, dtype=np.float64: (example(rng, shape, dtype),),
        channel_axis=channel_axis, space=space, description=description,
    ))


# channel ranges from init's minimum: the head's PAM runs on C // 4 >= 8 channels, PAM needs C // 8 >= 1, CAM has
# no parameter (any C); the head's default 64 as a choice beside the small ones
_entry(NAME, "head", 64, (2, 64, 6, 6), "dual attention head: conv-BN-ReLU, PAM / CAM, conv-BN-ReLU, summed",
       _space("head", Choice(Ints(32, 40), 64)))
_entry("danet-pam", "pam", 16, (2, 16, 6, 6), "position attention module: softmax over positions, gamma residual",
       _space("pam", Ints(8, 20)))
_entry("danet-cam", "cam", 16, (2, 16, 6, 6), "channel attention module (official max-minus-energy form)",
       _space("cam", Ints(1, 16)), channel_axis=None)
