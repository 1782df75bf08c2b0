"""OCR: object-contextual representations (Yuan, Chen, Wang, ECCV 2020).

Pixels are described by the object regions they belong to.  A coarse segmentation (the auxiliary
head's logits, K classes) gives soft object regions; each region gets a representation, and each
pixel a context built from the regions it relates to::

    M_k   = softmax_i(s * l_ki)                    soft object region k over the pixels i    (N, K, HW)
    f_k   = sum_i M_ki x_i                         object region representation              (N, C, K, 1)
    q_i   = phi(x_i),  k_k = psi(f_k)              f_pixel / f_object: 2x conv1x1-BN-ReLU    (N, Ck, .)
    w_ik  = softmax_k(Ck^-1/2 q_i . k_k)           pixel-region relation                     (N, HW, K)
    y_i   = rho(sum_k w_ik delta(f_k))             delta = f_down, rho = f_up: conv1x1-BN-ReLU  (N, C, H, W)
    z_i   = g([y_i; x_i])                          conv1x1(2C -> C_out)-BN-ReLU-Dropout2d    (N, C_out, H, W)

x: pixel features (N, C, H, W); l: coarse segmentation logits (N, K, H, W) at the same resolution;
s: ``gather_scale``; Ck: ``key_channels``.

Follows the official HRNet-OCR code (``HRNet/HRNet-Semantic-Segmentation``, branch HRNet-OCR,
``lib/models/seg_hrnet_ocr.py``: ``SpatialGather_Module`` + ``SpatialOCR_Module``), parameter names
included (``object_context_block.f_pixel.0.weight``, ``object_context_block.f_pixel.1.0.running_mean``,
``conv_bn_dropout.0.weight``, ...):

* Every conv is 1x1 **without bias**, followed by BatchNorm + ReLU (``ModuleHelper.BNReLU``, a nested
  Sequential, hence ``.1.0``).  ``f_up`` has BN + ReLU too.  The paper writes phi, psi as two transforms
  and leaves the normalisation open.
* The relation logits are scaled by Ck^-1/2 (key-channel scaling); the paper's kappa has no scale.
* The concatenation puts the context first: ``[y; x]``.
* ``SpatialGather`` softmaxes the logits over the spatial axis (dim 2), as the paper and
  ``openseg.pytorch``; one stored revision of the HRNet file softmaxes over the classes (dim 1) instead --
  not followed here.
* ``pool_scale > 1`` (official ``scale`` of the object attention block) max-pools the pixels before the
  relation and upsamples the context bilinearly with ``align_corners=True`` (HRNet's ``ALIGN_CORNERS``).
* Dropout2d zeroes whole channels of the output in training (HRNet-OCR uses p = 0.05; the module's own
  default is 0.1).  It is the identity in eval mode.  In training with ``dropout > 0`` the apply needs an
  explicit ``rng`` (numpy Generator).  The registry entry binds ``dropout=0.0`` so that its training mode
  is deterministic.  A ``dropout`` outside [0, 1) is an error in eval mode too.

Every parameter's shape is checked against (C, Ck, C_out) before anything is computed, also by
:func:`pixel_region_relation`, which takes the whole parameter dict.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import (
    batch_norm_shapes,
    check_dropout,
    check_dtype,
    check_input,
    conv_bn,
    conv_shapes,
    example,
    init_conv_bn,
    take_all,
)
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import BATCH, SIZE, Bools, Choice, Inputs, Ints, Space, bn_train

NAME = "ocr"
BLOCK = "object_context_block"
#: (conv prefix, BN prefix) of each conv-BN-ReLU unit, as in the official Sequentials.
PIXEL_UNITS = ((f"{BLOCK}.f_pixel.0", f"{BLOCK}.f_pixel.1.0"), (f"{BLOCK}.f_pixel.2", f"{BLOCK}.f_pixel.3.0"))
OBJECT_UNITS = ((f"{BLOCK}.f_object.0", f"{BLOCK}.f_object.1.0"), (f"{BLOCK}.f_object.2", f"{BLOCK}.f_object.3.0"))
DOWN_UNIT = (f"{BLOCK}.f_down.0", f"{BLOCK}.f_down.1.0")
UP_UNIT = (f"{BLOCK}.f_up.0", f"{BLOCK}.f_up.1.0")
FUSE_UNIT = ("conv_bn_dropout.0", "conv_bn_dropout.1.0")


def init(rng, in_channels: int, key_channels: int, out_channels: int, *, dtype=np.float64) -> dict:
    """Parameters of ``SpatialOCR_Module(in_channels, key_channels, out_channels)`` (official names).

    HRNet-OCR uses in = out = 512 (MID_CHANNELS) and key_channels = 256.
    """
    if min(in_channels, key_channels, out_channels) < 1:
        raise ValueError(f"{NAME}: channel counts must be positive, got {in_channels}, {key_channels}, {out_channels}")
    params: dict = {}
    for units in (PIXEL_UNITS, OBJECT_UNITS):
        init_conv_bn(rng, params, *units[0], key_channels, in_channels, dtype=dtype)
        init_conv_bn(rng, params, *units[1], key_channels, key_channels, dtype=dtype)
    init_conv_bn(rng, params, *DOWN_UNIT, key_channels, in_channels, dtype=dtype)
    init_conv_bn(rng, params, *UP_UNIT, in_channels, key_channels, dtype=dtype)
    init_conv_bn(rng, params, *FUSE_UNIT, out_channels, 2 * in_channels, dtype=dtype)
    return params


# ---------------------------------------------------------------------------------------------
# soft object regions and their representations (SpatialGather_Module: no parameters)


def soft_object_regions(coarse, *, scale: float = 1.0) -> ag.Tensor:
    """M (N, K, HW): the coarse logits (N, K, H, W) softmaxed over the pixels, after scaling by ``scale``."""
    coarse = ag.as_tensor(coarse)
    n, k, h, w = coarse.shape
    return ag.softmax(ag.reshape(coarse, (n, k, h * w)) * scale, axis=2)


def object_region_representations(feats, coarse, *, scale: float = 1.0) -> ag.Tensor:
    """f (N, C, K, 1): f_k = sum_i M_ki x_i, laid out as the official proxy feature map."""
    feats = ag.as_tensor(feats)
    n, c, h, w = feats.shape
    regions = soft_object_regions(coarse, scale=scale)                          # M (N, K, HW)
    pixels = ag.swapaxes(ag.reshape(feats, (n, c, h * w)), 1, 2)                # x (N, HW, C)
    representations = ag.swapaxes(ag.matmul(regions, pixels), 1, 2)            # f (N, C, K)
    return ag.reshape(representations, representations.shape + (1,))


# ---------------------------------------------------------------------------------------------
# object attention block


def _two_units(params, units, x, train: bool) -> ag.Tensor:
    for conv_prefix, bn_prefix in units:
        x = conv_bn(params, conv_prefix, bn_prefix, x, train)
    return x


def _relation(params, pixels, proxy, train: bool) -> ag.Tensor:
    """w (N, hw, K) = softmax_k(Ck^-1/2 phi(x_i) . psi(f_k)) for pixels (N, C, h, w), proxy (N, C, K, 1)."""
    n, _, h, w = pixels.shape
    regions = proxy.shape[2]
    key_channels = params.shape(PIXEL_UNITS[0][0] + ".weight")[0]
    query = ag.reshape(_two_units(params, PIXEL_UNITS, pixels, train), (n, key_channels, h * w))  # phi (N, Ck, hw)
    key = ag.reshape(_two_units(params, OBJECT_UNITS, proxy, train), (n, key_channels, regions))  # psi (N, Ck, K)
    energy = ag.matmul(ag.swapaxes(query, 1, 2), key) * key_channels ** -0.5                   # (N, hw, K)
    return ag.softmax(energy, axis=-1)


def _object_context(params, feats, proxy, train: bool, pool_scale: int, align_corners: bool) -> ag.Tensor:
    """y (N, C, H, W) = rho(sum_k w_ik delta(f_k))."""
    n, _, h, w = feats.shape
    pixels = ag.max_pool2d(feats, pool_scale) if pool_scale > 1 else feats      # official scale > 1
    relation = _relation(params, pixels, proxy, train)                          # w (N, hw, K)
    value = conv_bn(params, *DOWN_UNIT, proxy, train)                           # delta(f) (N, Ck, K, 1)
    value = ag.swapaxes(ag.reshape(value, value.shape[:3]), 1, 2)              # (N, K, Ck)
    context = ag.swapaxes(ag.matmul(relation, value), 1, 2)                     # (N, Ck, hw)
    context = ag.reshape(context, context.shape[:2] + pixels.shape[2:])         # (N, Ck, h, w)
    context = conv_bn(params, *UP_UNIT, context, train)                         # rho (N, C, h, w)
    if pool_scale > 1:
        context = ag.interpolate(context, size=(h, w), mode="bilinear", align_corners=align_corners)
    return context


# ---------------------------------------------------------------------------------------------
# public entry points


def _channels(params) -> int:
    """C, with every parameter checked: the 1x1 convs (no bias) and BatchNorms of the official module."""
    key_channels, channels = params.shape(PIXEL_UNITS[0][0] + ".weight")[:2]
    out_channels = params.shape(FUSE_UNIT[0] + ".weight")[0]
    units = [(PIXEL_UNITS[0], key_channels, channels), (PIXEL_UNITS[1], key_channels, key_channels),
             (OBJECT_UNITS[0], key_channels, channels), (OBJECT_UNITS[1], key_channels, key_channels),
             (DOWN_UNIT, key_channels, channels), (UP_UNIT, channels, key_channels),
             (FUSE_UNIT, out_channels, 2 * channels)]
    shapes = {}
    for (conv_prefix, bn_prefix), out, inp in units:
        shapes.update({**conv_shapes(conv_prefix, out, inp, bias=False), **batch_norm_shapes(bn_prefix, out)})
    take_all(params, shapes)
    return channels


def _checked(params, feats, coarse, pool_scale: int):
    if isinstance(pool_scale, bool) or not isinstance(pool_scale, (int, np.integer)) or pool_scale < 1:
        raise ValueError(f"{NAME}: pool_scale must be a positive integer, got {pool_scale!r}")
    feats = check_input(NAME, feats, arg="feats", channels=_channels(params), min_size=pool_scale)
    coarse = check_input(NAME, coarse, arg="coarse", layout="(N, K, H, W)")
    if coarse.shape[0] != feats.shape[0] or coarse.shape[2:] != feats.shape[2:]:
        raise ValueError(f"{NAME}: coarse {coarse.shape} must match feats {feats.shape} in batch and spatial size")
    if coarse.shape[1] < 1:
        raise ValueError(f"{NAME}: coarse must have at least one class (axis 1), got shape {coarse.shape}")
    check_dtype(NAME, feats, params, arg="feats")
    check_dtype(NAME, coarse, params, arg="coarse")
    return feats, coarse


@uses_params(NAME)
def pixel_region_relation(params, feats, coarse, *, train: bool = False, gather_scale: float = 1.0,
                          pool_scale: int = 1) -> ag.Tensor:
    """The pixel-region relation w (N, h*w, K) (h, w: the size after the optional max-pool).

    Takes the whole OCR parameter dict (every parameter checked, as by :func:`ocr`).
    """
    feats, coarse = _checked(params, feats, coarse, pool_scale)
    proxy = object_region_representations(feats, coarse, scale=gather_scale)
    pixels = ag.max_pool2d(feats, pool_scale) if pool_scale > 1 else feats
    return _relation(params, pixels, proxy, train)


def _dropout2d(x: ag.Tensor, p: float, train: bool, rng) -> ag.Tensor:
    """Zero whole channels with probability p, scale the rest by 1/(1-p) (torch's Dropout2d)."""
    p = check_dropout(NAME, p)
    if not train or p == 0.0:
        return x
    if rng is None:
        raise ValueError(f"{NAME}: train=True with dropout={p} needs an explicit rng (numpy Generator); "
                         "pass dropout=0.0 for a deterministic training step")
    channel_mask = ag.dropout(ag.xp.ones(x.shape[:2] + (1, 1), dtype=x.dtype), p, training=True, rng=rng)
    return x * channel_mask


@uses_params(NAME)
def ocr(params, feats, coarse, *, train: bool = False, gather_scale: float = 1.0, pool_scale: int = 1,
        align_corners: bool = True, dropout: float = 0.05, rng=None) -> ag.Tensor:
    """Apply OCR: pixel features ``feats`` (N, C, H, W) and coarse logits ``coarse`` (N, K, H, W) ->
    (N, C_out, H, W).

    ``gather_scale`` multiplies the logits before the spatial softmax; ``pool_scale`` max-pools the
    pixels of the relation (context upsampled back with ``align_corners``); ``dropout`` is Dropout2d's p,
    active only with ``train=True`` (then ``rng`` is required when p > 0).
    """
    feats, coarse = _checked(params, feats, coarse, pool_scale)
    proxy = object_region_representations(feats, coarse, scale=gather_scale)           # f (N, C, K, 1)
    context = _object_context(params, feats, proxy, train, pool_scale, align_corners)  # y (N, C, H, W)
    fused = conv_bn(params, *FUSE_UNIT, ag.concatenate([context, feats], axis=1), train)  # g([y; x])
    return _dropout2d(fused, dropout, train, rng)


def _inputs() -> Inputs:
    """Pixel features (N, C, H, W) and coarse logits (N, K, H, W), K from one class up."""
    dims = {"batch": BATCH, "classes": Ints(1, 5), "height": SIZE, "width": SIZE}
    return Inputs(dims, lambda rng, v, dtype: (example(rng, (v.batch, v.in_channels, v.height, v.width), dtype),
                                               example(rng, (v.batch, v.classes, v.height, v.width), dtype)))


def _pooled(v) -> int:
    """Positions of the relation's pixels: max_pool2d(pool_scale) floors H and W."""
    return (v.height // v.pool_scale) * (v.width // v.pool_scale)


# C, Ck, C_out independent; the pixels max-pooled by up to 3 (H, W >= pool_scale, check_input's rule), the
# context upsampled either way; Dropout2d's p in eval (the identity), and p = 0 in training (p > 0 needs an
# rng).  In training the BatchNorms see N h w (f_pixel, f_up), N K (f_object, f_down) and N H W (fuse)
# values per channel.
SPACE = Space(config={"in_channels": Ints(1, 16), "key_channels": Ints(1, 8), "out_channels": Ints(1, 16)},
              options={"gather_scale": Choice(1.0, 0.5, 2.0), "pool_scale": Ints(1, 3), "align_corners": Bools(),
                       "dropout": Choice(0.0, 0.05, 0.5)},
              inputs=_inputs(),
              where=(lambda v: min(v.height, v.width) >= v.pool_scale,
                     lambda v: not v.train or v.dropout == 0.0,
                     bn_train(lambda v: v.batch * _pooled(v)), bn_train(lambda v: v.batch * v.classes)))


register(Mechanism(
    name=NAME, family="category",
    paper=Paper("Yuan, Chen, Wang", "Object-Contextual Representations for Semantic Segmentation", "ECCV", 2020),
    init=init, apply_fn=ocr, config={"in_channels": 16, "key_channels": 8, "out_channels": 16},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 6, 6), dtype),
                                                 example(rng, (2, 5, 6, 6), dtype)),
    options={"dropout": 0.0}, space=SPACE,
    description="pixels augmented by soft object-region representations from a coarse segmentation",
))
