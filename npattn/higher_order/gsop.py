"""GSoP: global second-order pooling channel attention (Gao, Xie, Wang, Li, CVPR 2019).

The channel weights come from the *covariance* of a reduced feature map instead of its mean
(GSoP-Net1, channel mode '1' -- the official default)::

    t   = relu(BN(conv1x1(relu(x))))            conv C -> d with bias, stride s            (N, d, h, w)
    S   = X I~ X^T,  I~ = (I - 11^T/M) / M      X = t viewed (N, d, M), M = h*w            (N, d, d)
    S'  = row_BN(S viewed (N, d, d, 1))         BatchNorm2d(d): one statistic per row
    r   = rowconv(S')                           Conv2d(d -> 4d, kernel (d, 1), groups=d)   (N, 4d, 1, 1)
    att = sigmoid(conv1x1(r))                   Conv2d(4d -> C) with bias                  (N, C, 1, 1)
    y   = x * att                                                                          (N, C, H, W)

S is the biased (1/M) covariance of the d reduced channels over the M positions; the row-wise
convolution gives every row of S (one channel's covariances) its own 4 filters -- a grouped conv.

Follows the official code (``ZilinGao/Global-Second-order-Pooling-Convolutional-Networks``,
``torchvision/models/resnet.py``: ``Bottleneck.chan_att``; ``MPNCOV.CovpoolLayer``), with the official
parameter names (``conv_for_DR``, ``bn_for_DR``, ``row_bn``, ``row_conv_group``, ``fc_adapt_channels``):

* The input of the block is the bottleneck's bn3 output (pre-ReLU); the attention branch ReLUs it first
  (``relu_normal``) but the gate multiplies the un-ReLU'd input.
* The reduction conv has a bias and stride ``stride`` -- the official network uses 2 in layer1
  (planes <= 64) and 1 elsewhere; here it is an apply option, default 1.
* There is no ReLU between the row-wise conv and the final 1x1 conv in channel mode (the position mode
  has one).
* ``MPNCOV.CovpoolLayer`` computes X I~ X^T with an (M, M) matrix; we centre X instead
  (``(X - mean)(X - mean)^T / M``), the same number without the M x M matrix.  Its hand-written backward
  ``(G + G^T) X I~`` is the analytic gradient, which our tape reproduces.
* Official init is kaiming-normal (fan_out) for every conv; we draw PyTorch's default conv init (the
  numbers a given set of weights produces do not depend on it).
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
    conv_bn,
    conv_shapes,
    example,
    init_batch_norm,
    init_conv,
    init_conv_bn,
    take_all,
)
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Ints, Space, bn_train, image

NAME = "gsop"
ROW_FILTERS = 4  # output channels of the row-wise conv per covariance row (official 4*d)


def init(rng, channels: int, *, att_dim: int = 128, dtype=np.float64) -> dict:
    """Parameters (official names): ``conv_for_DR (d, C, 1, 1)`` + bias, ``bn_for_DR`` (d), ``row_bn`` (d),
    ``row_conv_group (4d, 1, d, 1)`` + bias, ``fc_adapt_channels (C, 4d, 1, 1)`` + bias; d = ``att_dim``."""
    if att_dim < 1 or channels < 1:
        raise ValueError(f"{NAME}: channels and att_dim must be positive, got {channels}, {att_dim}")
    params: dict = {}
    init_conv_bn(rng, params, "conv_for_DR", "bn_for_DR", att_dim, channels, bias=True, dtype=dtype)
    init_batch_norm(params, "row_bn", att_dim, dtype=dtype)
    init_conv(rng, params, "row_conv_group", ROW_FILTERS * att_dim, att_dim, (att_dim, 1), groups=att_dim,
              dtype=dtype)
    init_conv(rng, params, "fc_adapt_channels", channels, ROW_FILTERS * att_dim, 1, dtype=dtype)
    return params


def covariance_pool(x) -> ag.Tensor:
    """S = X I~ X^T (N, d, d) of x (N, d, h, w): the biased covariance of the channels over the h*w positions."""
    x = ag.as_tensor(x)
    n, d, h, w = x.shape
    features = ag.reshape(x, (n, d, h * w))                                    # X (N, d, M)
    centred = features - ag.mean(features, axis=2, keepdims=True)             # X (I - 11^T/M)
    return ag.matmul(centred, ag.swapaxes(centred, 1, 2)) / float(h * w)      # X I~ X^T


@uses_params(NAME)
def attention(params, x, *, train: bool = False, stride: int = 1) -> ag.Tensor:
    """The channel weights att (N, C, 1, 1) of ``x`` (N, C, H, W)."""
    x = _checked(params, x, stride)
    return _attention(params, x, train, stride)


def _attention(params, x: ag.Tensor, train: bool, stride: int) -> ag.Tensor:
    att_dim = params.shape("row_bn.weight")[0]
    reduced = conv_bn(params, "conv_for_DR", "bn_for_DR", ag.relu(x), train, stride=stride, bias=True)  # t
    covariance = covariance_pool(reduced)                                                # S (N, d, d)
    rows = batch_norm(params, "row_bn", ag.reshape(covariance, covariance.shape + (1,)), train)  # S' (N, d, d, 1)
    row_features = conv(params, "row_conv_group", rows, groups=att_dim)                  # r (N, 4d, 1, 1)
    return ag.sigmoid(conv(params, "fc_adapt_channels", row_features, out=x.shape[1]))   # att (N, C, 1, 1)


def _checked(params, x, stride) -> ag.Tensor:
    """x checked against C, every parameter against (C, d) read from the reduction conv."""
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"{NAME}: stride must be a positive int, got {stride!r}")
    att_dim, channels = params.shape("conv_for_DR.weight")[:2]
    take_all(params, {**conv_shapes("conv_for_DR", att_dim, channels), **batch_norm_shapes("bn_for_DR", att_dim),
                      **batch_norm_shapes("row_bn", att_dim),
                      **conv_shapes("row_conv_group", ROW_FILTERS * att_dim, att_dim, (att_dim, 1), groups=att_dim),
                      **conv_shapes("fc_adapt_channels", channels, ROW_FILTERS * att_dim)})
    x = check_input(NAME, x, channels=channels, min_size=1)
    check_dtype(NAME, x, params)
    return x


@uses_params(NAME)
def gsop(params, x, *, train: bool = False, stride: int = 1) -> ag.Tensor:
    """Apply the GSoP channel attention to ``x`` (N, C, H, W); returns x * att, (N, C, H, W).

    ``stride`` is the reduction conv's stride (official: 2 when the bottleneck has planes <= 64).
    ``train`` switches the three BatchNorms to batch statistics (running stats reported to
    :func:`npattn.track_running_stats`).
    """
    x = _checked(params, x, stride)
    return x * _attention(params, x, train, stride)                            # y = x * att


register(Mechanism(
    name=NAME, family="higher_order",
    paper=Paper("Gao, Xie, Wang, Li", "Global Second-order Pooling Convolutional Networks", "CVPR", 2019),
    init=init, apply_fn=gsop, config={"channels": 32, "att_dim": 8},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 32, 6, 6), dtype),),
    # C and d independent (d above C too); strides up to past the map (one reduced position: a zero
    # covariance).  In training bn_for_DR sees N h w values per channel (h = ceil(H / s)), row_bn N d
    space=Space(config={"channels": Ints(1, 32), "att_dim": Ints(1, 8)}, options={"stride": Ints(1, 3)},
                inputs=image(),
                where=(bn_train(lambda v: v.batch * -(-v.height // v.stride) * -(-v.width // v.stride)),
                       bn_train(lambda v: v.batch * v.att_dim))),
    description="channel gate from the covariance of reduced features through a row-wise (grouped) conv",
))
