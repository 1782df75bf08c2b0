"""Conv-BN(-ReLU) units shared by the mechanisms of the category, temporal, global and higher-order
families (OCR, IAUnet, RGA, GSoP all stack ``Conv2d -> BatchNorm2d [-> ReLU]``).

The convolution and the BatchNorm are named separately, because the official state_dicts name them
differently (``f_pixel.0`` / ``f_pixel.1.0`` in OCR, ``theta_spatial.0`` / ``theta_spatial.1`` in RGA,
``conv_for_DR`` / ``bn_for_DR`` in GSoP).
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import batch_norm, conv, init_batch_norm, init_conv


def init_conv_bn(rng, params: dict, conv_prefix: str, bn_prefix: str, out_channels: int, in_channels: int, *,
                 kernel_size=1, groups: int = 1, bias: bool = False, bn_weight: float = 1.0,
                 dtype=np.float64) -> None:
    """Add ``{conv_prefix}.weight (out, in/groups, kh, kw)`` [+ bias] and BatchNorm ``{bn_prefix}.*`` (out)."""
    init_conv(rng, params, conv_prefix, out_channels, in_channels, kernel_size, groups=groups, bias=bias,
              dtype=dtype)
    init_batch_norm(params, bn_prefix, out_channels, weight=bn_weight, dtype=dtype)


def conv_bn(params: dict, conv_prefix: str, bn_prefix: str, x, train: bool, *, relu: bool = True,
            stride=1, groups: int = 1) -> ag.Tensor:
    """``[relu](BN(conv(x)))`` with PyTorch's BatchNorm defaults (momentum 0.1, eps 1e-5)."""
    y = batch_norm(params, bn_prefix, conv(params, conv_prefix, x, stride=stride, groups=groups), train)
    return ag.relu(y) if relu else y
