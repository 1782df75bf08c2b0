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
* **Caffe pooling:** MAX 3x3, stride 2, no padding, ceil rounding = ``max_pool2d(3, 2, 0, ceil_mode=True)``;
  every pooled map must be at least 3 x 3 (:func:`min_input_size`).
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
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import batch_norm, check_dtype, check_input, conv, example, init_batch_norm, init_conv
from ..registry import Mechanism, Paper, register

NAME = "ran"


# ---------------------------------------------------------------------------------------------
# geometry (Caffe's pooling)


def pooled_size(size: int) -> int:
    """Caffe MAX pooling 3x3, stride 2, pad 0, ceil rounding: ceil((size - 3) / 2) + 1."""
    return -(-(size - 3) // 2) + 1


def min_input_size(n_down: int) -> int:
    """Smallest spatial size whose ``n_down`` successive poolings all see at least a 3 x 3 map."""
    size = 3
    while True:
        current, fits = size, True
        for _ in range(n_down):
            if current < 3:
                fits = False
                break
            current = pooled_size(current)
        if fits:
            return size
        size += 1


# ---------------------------------------------------------------------------------------------
# parameters


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
    if n_down < 1 or r < 1 or t < 0 or p < 0:
        raise ValueError(f"ran: need n_down >= 1, r >= 1, t >= 0, p >= 0; got n_down={n_down}, r={r}, t={t}, p={p}")
    params: dict = {}
    for i in range(p):
        _init_unit(rng, params, f"pre.{i}", channels, dtype)
    for i in range(t):
        _init_unit(rng, params, f"trunk.{i}", channels, dtype)
    for level in range(n_down):
        count = 2 * r if level == n_down - 1 else r
        for i in range(count):
            _init_unit(rng, params, f"down.{level}.{i}", channels, dtype)
        if level < n_down - 1:
            _init_unit(rng, params, f"skip.{level}", channels, dtype)
    for level in range(n_down - 1):
        for i in range(r):
            _init_unit(rng, params, f"up.{level}.{i}", channels, dtype)
    for suffix in ("a", "b"):
        init_batch_norm(params, f"mask_bn_{suffix}", channels, dtype=dtype)
        init_conv(rng, params, f"mask_conv_{suffix}", channels, channels, 1, bias=False, dtype=dtype)
    for i in range(p):
        _init_unit(rng, params, f"post.{i}", channels, dtype)
    return params


def _count(params: dict, prefix: str) -> int:
    """How many units are stored under ``prefix.{i}``."""
    count = 0
    while f"{prefix}.{count}.conv1.weight" in params:
        count += 1
    return count


def _levels(params: dict) -> int:
    levels = 0
    while f"down.{levels}.0.conv1.weight" in params:
        levels += 1
    return levels


# ---------------------------------------------------------------------------------------------
# forward


def unit(params: dict, prefix: str, v: ag.Tensor, train: bool) -> ag.Tensor:
    """Pre-activation bottleneck: v + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(v)))))))))."""
    h = conv(params, f"{prefix}.conv1", ag.relu(batch_norm(params, f"{prefix}.bn1", v, train)))
    h = conv(params, f"{prefix}.conv2", ag.relu(batch_norm(params, f"{prefix}.bn2", h, train)), padding=1)
    h = conv(params, f"{prefix}.conv3", ag.relu(batch_norm(params, f"{prefix}.bn3", h, train)))
    return v + h


def _units(params: dict, prefix: str, v: ag.Tensor, train: bool) -> ag.Tensor:
    for i in range(_count(params, prefix)):
        v = unit(params, f"{prefix}.{i}", v, train)
    return v


def _resize(v: ag.Tensor, size) -> ag.Tensor:
    """Caffe Interp: bilinear, align_corners=True, to ``size`` (H, W)."""
    return ag.interpolate(v, size=tuple(size), mode="bilinear", align_corners=True)


def _mask_logits(params: dict, h: ag.Tensor, train: bool) -> ag.Tensor:
    """mask(h) before the sigmoid: bottom-up pooling, top-down interpolation with skips, two 1x1 convs."""
    levels = _levels(params)
    skips, sizes = [], []
    m = h
    for level in range(levels):                                           # bottom-up
        m = ag.max_pool2d(m, 3, stride=2, padding=0, ceil_mode=True)
        m = _units(params, f"down.{level}", m, train)
        if level < levels - 1:
            skips.append(unit(params, f"skip.{level}", m, train))
            sizes.append(m.shape[2:])
    for level in reversed(range(levels - 1)):                             # top-down
        m = skips[level] + _resize(m, sizes[level])
        m = _units(params, f"up.{level}", m, train)
    m = _resize(m, h.shape[2:])
    m = conv(params, "mask_conv_a", ag.relu(batch_norm(params, "mask_bn_a", m, train)))
    return conv(params, "mask_conv_b", ag.relu(batch_norm(params, "mask_bn_b", m, train)))


def _check(params: dict, x) -> ag.Tensor:
    x = check_input(NAME, x, channels=params["mask_conv_a.weight"].shape[0], min_size=min_input_size(_levels(params)))
    check_dtype(NAME, x, params)
    return x


def soft_mask(params: dict, x, *, train: bool = False) -> ag.Tensor:
    """The soft mask M = sigmoid(mask(pre(x))) in (0, 1): (N, C, H, W)."""
    x = _check(params, x)
    return ag.sigmoid(_mask_logits(params, _units(params, "pre", x, train), train))


def ran(params: dict, x, *, train: bool = False) -> ag.Tensor:
    """Apply one attention module to ``x`` (N, C, H, W); returns (N, C, H, W)."""
    x = _check(params, x)
    h = _units(params, "pre", x, train)                                   # p pre-processing units
    trunk = _units(params, "trunk", h, train)                             # T(x)
    mask = ag.sigmoid(_mask_logits(params, h, train))                     # M(x)
    return _units(params, "post", (1.0 + mask) * trunk, train)            # post((1 + M) * T)


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Wang, Jiang, Qian, Yang, Li, Zhang, Wang, Tang", "Residual Attention Network for Image "
                "Classification", "CVPR", 2017),
    init=init, apply_fn=ran, config={"channels": 16, "n_down": 2, "p": 1, "t": 2, "r": 1},
    # 8 x 7 -> pooled (4, 3) -> (2, 1): uneven Caffe ceil rounding and a one-column bottom map
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 8, 7), dtype),),
    min_spatial=min_input_size(2),
    description="trunk features scaled by (1 + soft mask) from a bottom-up/top-down hourglass branch",
))
