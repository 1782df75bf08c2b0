"""BAM: Bottleneck Attention Module (Park, Woo, Lee, Kweon, BMVC 2018).

A channel branch and a spatial branch, both broadcast to (N, C, H, W), combined into one gate::

    Mc = W_final relu(BN1d(W0 GAP(F) + b0)) + b_final                                   (N, C) -> (N, C, 1, 1)
    Ms = conv1x1_{C/r->1}( [relu(BN(conv3x3_d4(.)))]x2 ( relu(BN(conv1x1_{C->C/r}(F))) ) )   (N, 1, H, W)
    att = 1 + sigmoid(Mc * Ms)          official code ("product", default)
    att = 1 + sigmoid(Mc + Ms)          paper, M = sigma(Mc + Ms), F' = F + F * M  (combine="sum")
    F' = att * F                                                                         (N, C, H, W)

r = 16 and dilation 4 (padding 4, so H and W are kept) in the paper and code.

Follows the official code (``Jongchan/attention-module``, ``MODELS/bam.py``) where it differs from the paper:

* **Product, not sum.** ``BAM.forward`` computes ``1 + sigmoid(channel_att * spatial_att)``; the released
  weights fit it (osmr/imgclsmob#78). ``combine="sum"`` gives the paper's sigma(Mc + Ms).
* **BN placement.** The channel branch has BN1d after the hidden FC (before ReLU) and none on its output;
  the spatial branch has BN-ReLU after the reduction and after each dilated conv, and none on its final
  1x1 output. The paper puts a BN on each branch's output; that placement is not offered.
* **Global mean.** The official ``avg_pool2d(x, H, stride=H)`` is wrong for W != H; this is the true global
  average pool (identical on square maps).
* The official ``ChannelGate.__init__`` raises NameError as published (``gate_activation``); the layers
  here are what it builds once that line is removed. ``num_layers`` (hidden FC-BN-ReLU layers, default 1)
  and ``dilation_conv_num`` (default 2) are the official constructor's options: **structure options**,
  keywords of :func:`init` and of :func:`bam` / :func:`attention_maps` alike (a registry entry's config gives
  both; the parameters must be exactly those ``init`` makes for them, all shapes checked before computing).
  ``dilation`` (default 4) is an apply option.
* Training on a batch of one is a ValueError naming BatchNorm ``ch_bn0`` (BatchNorm1d on one descriptor
  per sample: one value per channel), as PyTorch refuses it.
* All convolutions and FCs carry biases; BatchNorms are PyTorch defaults (eps 1e-5, momentum 0.1).

Parameter names (official ``gate_c``/``gate_s`` Sequential names in brackets): ``ch_fc{i}`` [gate_c_fc_i],
``ch_bn{i}`` [gate_c_bn_{i+1}], ``ch_fc_final`` [gate_c_fc_final], ``sp_reduce`` [gate_s_conv_reduce0],
``sp_bn_reduce`` [gate_s_bn_reduce0], ``sp_di{i}`` [gate_s_conv_di_i], ``sp_bn_di{i}`` [gate_s_bn_di_i],
``sp_final`` [gate_s_conv_final].
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
    init_linear,
    linear,
    linear_shapes,
    take_all,
)
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Choice, Ints, Space, bn_train, image

NAME = "bam"
COMBINES = ("product", "sum")


def init(rng, channels: int, *, reduction: int = 16, num_layers: int = 1, dilation_conv_num: int = 2,
         dtype=np.float64) -> dict:
    """Parameters (Cr = C // reduction): ``ch_fc0.weight (Cr, C)``, ``ch_bn0.*`` (Cr), [``ch_fc{i}`` (Cr, Cr),
    ``ch_bn{i}`` for more hidden layers], ``ch_fc_final.weight (C, Cr)``; ``sp_reduce.weight (Cr, C, 1, 1)``,
    ``sp_bn_reduce.*``, ``sp_di{i}.weight (Cr, Cr, 3, 3)``, ``sp_bn_di{i}.*``, ``sp_final.weight (1, Cr, 1, 1)``;
    every conv and FC with a bias.
    """
    hidden = channels // reduction
    if hidden < 1:
        raise ValueError(f"{NAME}: channels={channels} // reduction={reduction} must be at least 1")
    _check_structure(num_layers, dilation_conv_num)
    params: dict = {}
    width = channels
    for i in range(num_layers):
        init_linear(rng, params, f"ch_fc{i}", hidden, width, dtype=dtype)
        init_batch_norm(params, f"ch_bn{i}", hidden, dtype=dtype)
        width = hidden
    init_linear(rng, params, "ch_fc_final", channels, hidden, dtype=dtype)
    init_conv(rng, params, "sp_reduce", hidden, channels, 1, dtype=dtype)
    init_batch_norm(params, "sp_bn_reduce", hidden, dtype=dtype)
    for i in range(dilation_conv_num):
        init_conv(rng, params, f"sp_di{i}", hidden, hidden, 3, dtype=dtype)
        init_batch_norm(params, f"sp_bn_di{i}", hidden, dtype=dtype)
    init_conv(rng, params, "sp_final", 1, hidden, 1, dtype=dtype)
    return params


def _check_structure(num_layers, dilation_conv_num) -> None:
    for name, value, minimum in (("num_layers", num_layers, 1), ("dilation_conv_num", dilation_conv_num, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{NAME}: {name} must be an integer >= {minimum}, got {value!r}")


def _schema(channels: int, hidden: int, num_layers: int, dilation_conv_num: int) -> dict:
    """Every parameter of the structure and the shape ``init`` gives it."""
    shapes, width = {}, channels
    for i in range(num_layers):
        shapes.update({**linear_shapes(f"ch_fc{i}", hidden, width), **batch_norm_shapes(f"ch_bn{i}", hidden)})
        width = hidden
    shapes.update({**linear_shapes("ch_fc_final", channels, hidden), **conv_shapes("sp_reduce", hidden, channels),
                   **batch_norm_shapes("sp_bn_reduce", hidden)})
    for i in range(dilation_conv_num):
        shapes.update({**conv_shapes(f"sp_di{i}", hidden, hidden, 3), **batch_norm_shapes(f"sp_bn_di{i}", hidden)})
    shapes.update(conv_shapes("sp_final", 1, hidden))
    return shapes


def _channel_attention(params, x: ag.Tensor, train: bool, num_layers: int) -> ag.Tensor:
    """Mc: GAP -> [FC -> BN1d -> ReLU] x num_layers -> FC, (N, C, H, W) -> (N, C)."""
    hidden = ag.mean(x, axis=(2, 3))                          # true global average pool
    for i in range(num_layers):
        hidden = ag.relu(batch_norm(params, f"ch_bn{i}", linear(params, f"ch_fc{i}", hidden), train))
    return linear(params, "ch_fc_final", hidden, out=x.shape[1])


def _spatial_attention(params, x: ag.Tensor, train: bool, dilation: int, dilation_conv_num: int) -> ag.Tensor:
    """Ms: 1x1 reduce -> [3x3 dilated] x k -> 1x1 to one map, BN-ReLU between; (N, C, H, W) -> (N, 1, H, W)."""
    hidden = ag.relu(batch_norm(params, "sp_bn_reduce", conv(params, "sp_reduce", x), train))
    for i in range(dilation_conv_num):
        # padding = dilation keeps H and W for a 3x3 kernel
        dilated = conv(params, f"sp_di{i}", hidden, padding=dilation, dilation=dilation)
        hidden = ag.relu(batch_norm(params, f"sp_bn_di{i}", dilated, train))
    return conv(params, "sp_final", hidden, out=1)


def _validate(params, x, combine: str, dilation, num_layers, dilation_conv_num) -> ag.Tensor:
    _check_structure(num_layers, dilation_conv_num)
    if combine not in COMBINES:
        raise ValueError(f"{NAME}: combine must be one of {COMBINES}, got {combine!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, (int, np.integer)) or dilation < 1:
        raise ValueError(f"{NAME}: dilation must be a positive integer, got {dilation!r}")
    channels, hidden = params.shape("ch_fc0.weight")[1], params.shape("ch_fc0.weight")[0]
    x = check_input(NAME, x, channels=channels, min_size=1)
    check_dtype(NAME, x, params)
    take_all(params, _schema(channels, hidden, num_layers, dilation_conv_num), complete=True)
    return x


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, dilation: int = 4, num_layers: int = 1,
                   dilation_conv_num: int = 2) -> tuple:
    """The raw branch outputs before the combination: ``Mc`` (N, C, 1, 1) and ``Ms`` (N, 1, H, W)."""
    x = _validate(params, x, "product", dilation, num_layers, dilation_conv_num)
    channel = _channel_attention(params, x, train, num_layers)
    return ag.reshape(channel, channel.shape + (1, 1)), _spatial_attention(params, x, train, dilation,
                                                                           dilation_conv_num)


@uses_params(NAME)
def bam(params, x, *, train: bool = False, combine: str = "product", dilation: int = 4, num_layers: int = 1,
        dilation_conv_num: int = 2) -> ag.Tensor:
    """Apply BAM to ``x`` (N, C, H, W); returns (1 + sigmoid(Mc (*|+) Ms)) * x, (N, C, H, W).

    ``combine``: "product" (official code) or "sum" (paper). ``train`` uses batch statistics in the
    BatchNorms and reports their new running statistics to ``npattn.track_running_stats()``.
    ``num_layers`` and ``dilation_conv_num``: the structure, as given to :func:`init`.
    """
    x = _validate(params, x, combine, dilation, num_layers, dilation_conv_num)
    channel = _channel_attention(params, x, train, num_layers)                  # Mc (N, C)
    channel = ag.reshape(channel, channel.shape + (1, 1))                       #    (N, C, 1, 1)
    spatial = _spatial_attention(params, x, train, dilation, dilation_conv_num)  # Ms (N, 1, H, W)
    joint = channel * spatial if combine == "product" else channel + spatial
    return (1.0 + ag.sigmoid(joint)) * x                                        # F + F * sigma(.)


register(Mechanism(
    name=NAME, family="hybrid",
    paper=Paper("Park, Woo, Lee, Kweon", "BAM: Bottleneck Attention Module", "BMVC", 2018),
    init=init, apply_fn=bam, config={"channels": 32, "reduction": 4},
    # batch 4: train-mode BatchNorm1d over a batch of 2 maps every descriptor to about +-1 and hides the
    # gradient of the channel branch's first FC
    example_input=lambda rng, dtype=np.float64: (example(rng, (4, 32, 6, 7), dtype),),
    # C // r >= 1 (init's rule), C from r up (a remainder); no dilated conv up to three; a dilation above the
    # map's size (padding = dilation keeps H, W); the channel branch's BatchNorm1d sees one value per sample
    space=Space(config={"reduction": Ints(1, 8), "channels": Ints(lambda v: v.reduction, 32),
                        "num_layers": Ints(1, 3), "dilation_conv_num": Ints(0, 3)},
                options={"combine": Choice("product", "sum"), "dilation": Ints(1, 5)}, inputs=image(),
                where=(bn_train(lambda v: v.batch),)),
    description="channel (GAP-MLP) and dilated-conv spatial branches combined into one residual gate",
))
