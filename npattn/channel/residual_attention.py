"""Residual Attention Network: the attention module (Wang, Jiang, Qian, Yang, Li, Zhang, Wang, Tang, CVPR 2017).

    h = pre(x)                           p pre-activation residual units            (N, C, H, W)
    T = trunk(h)                         t units                                     (N, C, H, W)
    M = sigmoid(mask(h))                 soft mask branch, values in (0, 1)          (N, C, H, W)
    H = (1 + M) * T                      attention residual learning
    y = post(H)                          p units                                     (N, C, H, W)

Soft mask branch (bottom-up / top-down, ``n_down`` max-poolings; Attention-56/92 use 3, 2, 1 in stages 1-3):

    m_0 = h
    d_l = units_r(maxpool(d_{l-1}))         l = 1 .. n_down (d_0 = h); 2r units at the lowest level
    s_l = unit(d_l)                         skip connection, l = 1 .. n_down - 1
    u_l = units_r(interp(u_{l+1}, size(d_l)) + s_l)   top-down, l = n_down - 1 .. 1  (u_{n_down} = d_{n_down})
    mask(h) = conv_b(relu(BN_b(conv_a(relu(BN_a(interp(u_1, size(h))))))))

Every unit is a pre-activation bottleneck ``unit(v) = v + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(v))))))))``
with conv1 1x1 C -> C/4, conv2 3x3 (padding 1) C/4 -> C/4 and conv3 1x1 C/4 -> C.

Follows the official model (``fwang91/residual-attention-network: imagenet_model/Attention-56-deploy.prototxt``,
module ``AttentionA_1``, with the layers of ``buptwangfei/caffe``):

* **No conv has a bias** (``bias_term: false``), including the mask's two 1x1 convs.
* **The mask branch pools from the pre-processing output** ``trunk/res1`` (here ``h``), the raw sum before
  its BN-ReLU; each unit applies its own BN-ReLU first.
* **Caffe pooling:** MAX 3x3, stride 2, no padding, ceil rounding = ``max_pool2d(3, 2, 0, ceil_mode=True)``.
  Caffe and PyTorch define it on any map of at least 2 x 2 (a window may run past the edge and is clipped:
  2 -> 1, 3 -> 1, 4 -> 2, 5 -> 2), so ``n_down`` poolings need an input of at least 2 ** n_down
  (:func:`min_input_size`); the lowest level may be a 1 x 1 map.
* **Caffe Interp** is bilinear with ``align_corners=True`` (``rheight = (H_in - 1) / (H_out - 1)``), resizing
  to the size of the skip's map, and finally to the trunk's size.
* Skip sum order, unit counts per level (r, 2r at the bottom, one skip unit) and the fusion
  ``PROD(trunk, mask) + trunk`` followed by one post unit are read from the prototxt.
* The yjxiong BN layer stores a moving average of 1/std in its 4th blob; here BN is PyTorch's (running
  variance, eps 1e-5, momentum 0.1), so converted Caffe weights need running_var = 1/blob^2 - eps.

The paper's p = 1, t = 2, r = 1 are the defaults.  The popular PyTorch port (tengshaofeng) pools with
``MaxPool2d(3, 2, padding=1)``: same output sizes for even inputs, different windows.

Parameter names: ``pre.{i}.*``, ``trunk.{i}.*``, ``down.{l}.{i}.*`` (l = 0 .. n_down-1, after pooling l + 1),
``skip.{l}.*`` and ``up.{l}.{i}.*`` (l = 0 .. n_down-2), ``mask_bn_a.*``, ``mask_conv_a.weight``,
``mask_bn_b.*``, ``mask_conv_b.weight``, ``post.{i}.*``; each unit has ``bn1 conv1 bn2 conv2 bn3 conv3``.

**Structure options** (keywords of :func:`init` and of :func:`ran` / :func:`soft_mask` alike; a registry
entry's config gives both): ``n_down``, ``p``, ``t``, ``r``.  The parameters must be exactly those ``init``
makes for them (npattn.params), every shape is checked before anything is computed (the bottleneck is C // 4,
as in the official model), and a missing unit is a KeyError, never a shallower module.  Training BatchNorm on
one value per channel (a batch of one whose lowest mask level is 1 x 1) is a ValueError naming the layer.
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
from ..space import Ints, Space, bn_train, image

NAME = "ran"


# ---------------------------------------------------------------------------------------------
# geometry (Caffe's pooling)


def pooled_size(size: int) -> int:
    """Caffe MAX pooling 3x3, stride 2, pad 0, ceil rounding: ceil((size - 3) / 2) + 1 (0: undefined, size < 2)."""
    return max(-(-(size - 3) // 2) + 1, 0)


def min_input_size(n_down: int) -> int:
    """Smallest spatial size whose ``n_down`` successive poolings are all defined (each sees at least 2 x 2).

    Caffe's and PyTorch's ceil-mode pooling give one output for a 2- or 3-long map and refuse only an empty
    one, so this is 2 ** n_down (2 -> 1, 4 -> 2 -> 1, 8 -> 4 -> 2 -> 1).
    """
    size = 1
    while True:
        current = size
        for _ in range(n_down):
            current = pooled_size(current) if current >= 2 else 0
        if current >= 1:
            return size
        size += 1


# ---------------------------------------------------------------------------------------------
# structure and parameters


def _check_counts(n_down, p, t, r) -> None:
    for name, value, minimum in (("n_down", n_down, 1), ("p", p, 0), ("t", t, 0), ("r", r, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{NAME}: {name} must be an integer >= {minimum}, got {value!r}")


def _units(n_down: int, p: int, t: int, r: int) -> dict:
    """The unit prefixes of each part of the module, in computation order."""
    return {
        "pre": [f"pre.{i}" for i in range(p)],
        "trunk": [f"trunk.{i}" for i in range(t)],
        # level l has r units (2r at the bottom level, n_down - 1), then a skip unit except at the bottom
        "down": [[f"down.{level}.{i}" for i in range(2 * r if level == n_down - 1 else r)] for level in range(n_down)],
        "skip": [f"skip.{level}" for level in range(n_down - 1)],
        "up": [[f"up.{level}.{i}" for i in range(r)] for level in range(n_down - 1)],
        "post": [f"post.{i}" for i in range(p)],
    }


def _every_unit(units: dict) -> list:
    flat = []
    for part in units.values():
        for entry in part:
            flat.extend(entry if isinstance(entry, list) else [entry])
    return flat


def _init_unit(rng, params: dict, prefix: str, channels: int, dtype) -> None:
    bottleneck = channels // 4
    init_batch_norm(params, f"{prefix}.bn1", channels, dtype=dtype)
    init_conv(rng, params, f"{prefix}.conv1", bottleneck, channels, 1, bias=False, dtype=dtype)
    init_batch_norm(params, f"{prefix}.bn2", bottleneck, dtype=dtype)
    init_conv(rng, params, f"{prefix}.conv2", bottleneck, bottleneck, 3, bias=False, dtype=dtype)
    init_batch_norm(params, f"{prefix}.bn3", bottleneck, dtype=dtype)
    init_conv(rng, params, f"{prefix}.conv3", channels, bottleneck, 1, bias=False, dtype=dtype)


def init(rng, channels: int, *, n_down: int = 2, p: int = 1, t: int = 2, r: int = 1, dtype=np.float64) -> dict:
    """Attention-module parameters: p pre/post units, t trunk units, r units per mask level, n_down poolings."""
    if channels < 4:
        raise ValueError(f"ran: channels={channels} must be at least 4 (bottleneck width C // 4)")
    _check_counts(n_down, p, t, r)
    units = _units(n_down, p, t, r)
    params: dict = {}
    for prefix in units["pre"] + units["trunk"]:
        _init_unit(rng, params, prefix, channels, dtype)
    for level in range(n_down):
        for prefix in units["down"][level]:
            _init_unit(rng, params, prefix, channels, dtype)
        if level < n_down - 1:
            _init_unit(rng, params, units["skip"][level], channels, dtype)
    for prefix in (u for level in units["up"] for u in level):
        _init_unit(rng, params, prefix, channels, dtype)
    for suffix in ("a", "b"):
        init_batch_norm(params, f"mask_bn_{suffix}", channels, dtype=dtype)
        init_conv(rng, params, f"mask_conv_{suffix}", channels, channels, 1, bias=False, dtype=dtype)
    for prefix in units["post"]:
        _init_unit(rng, params, prefix, channels, dtype)
    return params


def _unit_shapes(prefix: str, channels: int) -> dict:
    """Every parameter of one unit and the shape ``init`` gives it (bottleneck C // 4)."""
    bottleneck = channels // 4
    return {**batch_norm_shapes(f"{prefix}.bn1", channels),
            **conv_shapes(f"{prefix}.conv1", bottleneck, channels, bias=False),
            **batch_norm_shapes(f"{prefix}.bn2", bottleneck),
            **conv_shapes(f"{prefix}.conv2", bottleneck, bottleneck, 3, bias=False),
            **batch_norm_shapes(f"{prefix}.bn3", bottleneck),
            **conv_shapes(f"{prefix}.conv3", channels, bottleneck, bias=False)}


def _check_params(params, units: dict) -> int:
    """Check every parameter of the structure before computing (errors name the key at fault); returns C."""
    channels = params.shape("mask_conv_a.weight")[1]
    shapes = {}
    for suffix in ("a", "b"):
        shapes.update({**batch_norm_shapes(f"mask_bn_{suffix}", channels),
                       **conv_shapes(f"mask_conv_{suffix}", channels, channels, bias=False)})
    for prefix in _every_unit(units):
        shapes.update(_unit_shapes(prefix, channels))
    take_all(params, shapes, complete=True)
    return channels


# ---------------------------------------------------------------------------------------------
# forward


def unit(params, prefix: str, v: ag.Tensor, train: bool) -> ag.Tensor:
    """Pre-activation bottleneck: v + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(v)))))))))."""
    channels = v.shape[1]
    h = conv(params, f"{prefix}.conv1", ag.relu(batch_norm(params, f"{prefix}.bn1", v, train)), bias=False)
    h = conv(params, f"{prefix}.conv2", ag.relu(batch_norm(params, f"{prefix}.bn2", h, train)), padding=1,
             bias=False, out=h.shape[1])
    h = conv(params, f"{prefix}.conv3", ag.relu(batch_norm(params, f"{prefix}.bn3", h, train)), bias=False,
             out=channels)
    return v + h


def _chain(params, prefixes: list, v: ag.Tensor, train: bool) -> ag.Tensor:
    for prefix in prefixes:
        v = unit(params, prefix, v, train)
    return v


def _resize(v: ag.Tensor, size) -> ag.Tensor:
    """Caffe Interp: bilinear, align_corners=True, to ``size`` (H, W)."""
    return ag.interpolate(v, size=tuple(size), mode="bilinear", align_corners=True)


def _mask_logits(params, h: ag.Tensor, train: bool, units: dict) -> ag.Tensor:
    """mask(h) before the sigmoid: bottom-up pooling, top-down interpolation with skips, two 1x1 convs."""
    levels = len(units["down"])
    skips, sizes = [], []
    m = h
    for level in range(levels):                                           # bottom-up
        m = ag.max_pool2d(m, 3, stride=2, padding=0, ceil_mode=True)
        m = _chain(params, units["down"][level], m, train)
        if level < levels - 1:
            skips.append(unit(params, units["skip"][level], m, train))
            sizes.append(m.shape[2:])
    for level in reversed(range(levels - 1)):                             # top-down
        m = skips[level] + _resize(m, sizes[level])
        m = _chain(params, units["up"][level], m, train)
    m = _resize(m, h.shape[2:])
    channels = h.shape[1]
    m = conv(params, "mask_conv_a", ag.relu(batch_norm(params, "mask_bn_a", m, train)), bias=False, out=channels)
    return conv(params, "mask_conv_b", ag.relu(batch_norm(params, "mask_bn_b", m, train)), bias=False, out=channels)


def _check(params, x, n_down, p, t, r) -> tuple:
    _check_counts(n_down, p, t, r)
    units = _units(n_down, p, t, r)
    channels = _check_params(params, units)
    x = check_input(NAME, x, channels=channels, min_size=min_input_size(n_down))
    check_dtype(NAME, x, params)
    return x, units


@uses_params(NAME)
def soft_mask(params, x, *, train: bool = False, n_down: int = 2, p: int = 1, t: int = 2, r: int = 1) -> ag.Tensor:
    """The soft mask M = sigmoid(mask(pre(x))) in (0, 1): (N, C, H, W).  Structure options as :func:`ran`.

    The trunk and post-processing units are not computed, but their parameters are checked like all others.
    """
    x, units = _check(params, x, n_down, p, t, r)
    return ag.sigmoid(_mask_logits(params, _chain(params, units["pre"], x, train), train, units))


@uses_params(NAME)
def ran(params, x, *, train: bool = False, n_down: int = 2, p: int = 1, t: int = 2, r: int = 1) -> ag.Tensor:
    """Apply one attention module to ``x`` (N, C, H, W); returns (N, C, H, W).

    ``n_down`` (poolings of the mask branch), ``p`` (pre/post units), ``t`` (trunk units), ``r`` (units per
    mask level): the structure, as given to :func:`init`.  Inputs smaller than ``min_input_size(n_down)``
    (2 ** n_down) are a ValueError.
    """
    x, units = _check(params, x, n_down, p, t, r)
    h = _chain(params, units["pre"], x, train)                             # p pre-processing units
    trunk = _chain(params, units["trunk"], h, train)                       # T(x)
    mask = ag.sigmoid(_mask_logits(params, h, train, units))               # M(x)
    return _chain(params, units["post"], (1.0 + mask) * trunk, train)      # post((1 + M) * T)


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Wang, Jiang, Qian, Yang, Li, Zhang, Wang, Tang", "Residual Attention Network for Image "
                "Classification", "CVPR", 2017),
    init=init, apply_fn=ran, config={"channels": 16, "n_down": 2, "p": 1, "t": 2, "r": 1},
    # 8 x 7 -> pooled (4, 3) -> (2, 1): uneven Caffe ceil rounding and a one-column bottom map
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 8, 7), dtype),),
    min_spatial=min_input_size(2),
    # the smallest map its n_down poolings accept, odd sizes (Caffe's ceil rounding) above it
    space=Space(config={"channels": Ints(4, 16), "n_down": Ints(1, 3), "p": Ints(0, 2), "t": Ints(0, 2),
                        "r": Ints(1, 2)},
                inputs=image(height=Ints(lambda v: min_input_size(v.n_down), 9)),
                where=(bn_train(lambda v: v.batch),)),
    description="trunk features scaled by (1 + soft mask) from a bottom-up/top-down hourglass branch",
))
