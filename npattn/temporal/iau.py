"""IAUnet: the interaction-aggregation-update (IAU) block for video clips (Hou, Ma, Chang, Shan, Chen,
IEEE TNNLS 2020).

The video block runs two units on clip features x (B, C, T, H, W) -- or a (B, T, C, H, W) clip, which is
permuted first (``layout``).

CIAU (channel interaction; nodes are the C*T (channel, frame) pairs, c-major)::

    X = x viewed (B, C*T, H*W)                    no embedding, no scaling
    A = softmax_row(X X^T)                                                            (B, CT, CT)
    z = x + BN3d(conv1x1x1(A X viewed as x))      W1 (conv with bias, BN)             (B, C, T, H, W)

STIAU (spatial-temporal interaction of P = 4 body parts per frame, on z)::

    u      = mean_{t,h,w} z                                                          (B, C)
    a      = sigmoid(BN3d(conv1x1x1(z)))          SA: C -> P part maps                (B, P, T, H, W)
    p_tk   = sum_hw a_k(t, h, w) z(:, t, h, w)    part features, not normalised       (B, T, P, C)
    p, u  <- g(p), g(u)                           one shared conv1x1 C -> C/2 (bias)   (B, T, P, C/2), (B, C/2)
    e_ij   = BN(conv1x1([|p_i - p_j|; u]))        Wcompute: 2(C/2) -> 1 with bias, BN(1)   (B, TP, TP)
    W      = softmax_j(e_ij) over the allowed j   i's other parts in its own frame,
                                                  and its own part in the other frames
    s      = relu(BN(conv1x1([p; W p])))          Gconv: 2(C/2) -> C/2 (bias)          (B, TP, C/2)
    v_t    = [mean_k s_tk; u]                                                         (B, T, C)
    out    = z + BN3d(conv1x1x1(v)) viewed (B, C, T, 1, 1), broadcast over H, W      W2

Follows the official code (``blue-blue272/ImgReID-IAnet``: ``models/IAU3D.py`` ``IAUBlock3D`` with
``models/STIAU.py`` ``STIAUModule``), parameter names included (``W1.0``/``W1.1``, ``SA.conv.conv``/``SA.conv.bn``,
``g``, ``STIAU.module_w.relation.{0,1}``, ``STIAU.module_l.fsm.{0,1}``, ``W2.0``/``W2.1``):

* Official layout is (B, C, T, H, W) (Conv3d / BatchNorm3d); ``layout="btchw"`` (the registry's, a clip
  of frames) permutes to it and back; ``layout="bcthw"`` takes the official layout directly.
* The official mask subtracts 1e8 from the masked logits (``W_init`` = 1 on the diagonal and on
  different-frame-different-part pairs) and so do we: a masked weight is exp(-1e8) = 0, and a row with
  every entry masked -- only with one frame and one part (T = P = 1), where the single node has no
  allowed neighbour -- is shifted as a whole, so the softmax gives the node **its own weight 1** (the
  graph step sees [p; p]).  A boolean mask with the core's fully-masked-row policy would give it weight 0
  instead, a different output.  The mask is built from the input's T, where the official module slices a
  mask built for its ``seq_len``.
* The relation conv sees the pair difference *and* the clip descriptor u; u is concatenated after the
  (C/2)-dim parts, and after the part mean in v, as the official ``torch.cat`` calls.
* W1's and W2's BatchNorms are initialised to zero (weight and bias) officially, so the block starts as the
  identity and the gradients of everything before them start at zero; ``init(..., zero_init=False)`` keeps
  PyTorch's BN init (weight 1) instead -- the registry's small config uses it so that the gradient checks
  see every parameter.  Other convs: official normal(0, sqrt(2 / (k*k*out))); we draw PyTorch's default.
* The official forward returns (out, a); here :func:`iau` returns ``out`` and :func:`part_attention`
  returns a, shaped (B*T, P, H, W) as the official one.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import (
    batch_norm,
    batch_norm_shapes,
    check_dtype,
    check_input,
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
from ..space import BATCH, SIZE, Bools, Choice, Derived, Inputs, Ints, Space, bn_train

NAME = "iau"
LAYOUTS = ("btchw", "bcthw")
NUM_PARTS = 4  # official SpatialAttn(number=4)
RELATION = ("STIAU.module_w.relation.0", "STIAU.module_w.relation.1")
#: The official fill of the masked relation logits (``W_new - W_id * 1e8``).
MASK_FILL = 1e8
GCONV = ("STIAU.module_l.fsm.0", "STIAU.module_l.fsm.1")


def _init_pointwise3d_bn(rng, params: dict, conv_prefix: str, bn_prefix: str, out_channels: int,
                         in_channels: int, bn_weight: float, bn_bias: float, dtype) -> None:
    """Conv3d 1x1x1 with bias, weight (out, in, 1, 1, 1), and BatchNorm3d (out)."""
    init_conv(rng, params, conv_prefix, out_channels, in_channels, 1, dtype=dtype)
    params[f"{conv_prefix}.weight"] = params[f"{conv_prefix}.weight"].reshape(out_channels, in_channels, 1, 1, 1)
    init_batch_norm(params, bn_prefix, out_channels, weight=bn_weight, bias=bn_bias, dtype=dtype)


def init(rng, in_channels: int, *, num_parts: int = NUM_PARTS, zero_init: bool = True, dtype=np.float64) -> dict:
    """Parameters of ``IAUBlock3D(in_channels, seq_len)`` (official names; seq_len sizes no parameter).

    ``zero_init=True`` (official) zeroes the BN weight and bias of W1 and W2.
    """
    if in_channels < 2 or in_channels % 2:
        raise ValueError(f"{NAME}: in_channels must be even and >= 2 (inter channels C/2), got {in_channels}")
    inter = in_channels // 2
    residual_bn = 0.0 if zero_init else 1.0
    params: dict = {}
    _init_pointwise3d_bn(rng, params, "W1.0", "W1.1", in_channels, in_channels, residual_bn, 0.0, dtype)
    _init_pointwise3d_bn(rng, params, "SA.conv.conv", "SA.conv.bn", num_parts, in_channels, 1.0, 0.0, dtype)
    init_conv(rng, params, "g", inter, in_channels, 1, dtype=dtype)
    init_conv_bn(rng, params, *RELATION, 1, 2 * inter, bias=True, dtype=dtype)
    init_conv_bn(rng, params, *GCONV, inter, 2 * inter, bias=True, dtype=dtype)
    _init_pointwise3d_bn(rng, params, "W2.0", "W2.1", in_channels, in_channels, residual_bn, 0.0, dtype)
    return params


# ---------------------------------------------------------------------------------------------
# pieces


def _pointwise3d_bn(params, conv_prefix: str, bn_prefix: str, x: ag.Tensor, train: bool) -> ag.Tensor:
    """BN3d(Conv3d 1x1x1 (x)) for x (B, C, T, H, W): a 1x1 conv2d on (B, C, T*H, W)."""
    b, c, t, h, w = x.shape
    weight = params[f"{conv_prefix}.weight"]
    kernel = ag.reshape(weight, weight.shape[:2] + (1, 1))
    y = ag.conv2d(ag.reshape(x, (b, c, t * h, w)), kernel, params[f"{conv_prefix}.bias"])
    return batch_norm(params, bn_prefix, ag.reshape(y, (b, weight.shape[0], t, h, w)), train)


def _shared_g(params, features: ag.Tensor) -> ag.Tensor:
    """The official ``g`` (Conv2d 1x1, C -> C/2, bias) applied to rows (..., C): a linear map."""
    weight = params["g.weight"]
    return ag.linear(features, ag.reshape(weight, weight.shape[:2]), params["g.bias"])


def _channel_interaction(params, x: ag.Tensor, train: bool) -> ag.Tensor:
    """CIAU: z = x + W1(softmax(X X^T) X), x (B, C, T, H, W)."""
    b, c, t, h, w = x.shape
    nodes = ag.reshape(x, (b, c * t, h * w))                                    # X (B, CT, HW)
    affinity = ag.softmax(ag.matmul(nodes, ag.swapaxes(nodes, 1, 2)), axis=-1)  # A (B, CT, CT)
    aggregated = ag.reshape(ag.matmul(affinity, nodes), x.shape)                # A X
    return x + _pointwise3d_bn(params, "W1.0", "W1.1", aggregated, train)


def graph_mask(frames: int, parts: int):
    """Host bool (T*P, T*P): True where node i=(t, k) may attend to node j=(t', k'):
    same frame and another part, or another frame and the same part (the complement of ``W_init``)."""
    frame = np.repeat(np.arange(frames), parts)
    part = np.tile(np.arange(parts), frames)
    same_frame = frame[:, None] == frame[None, :]
    same_part = part[:, None] == part[None, :]
    return same_frame != same_part


def _graph_update(params, parts: ag.Tensor, context: ag.Tensor, train: bool) -> ag.Tensor:
    """STIAU's graph step on nodes (B, T, P, c) with the clip context (B, c): returns s (B, T, P, c)."""
    b, t, p, c = parts.shape
    nodes = ag.reshape(parts, (b, t * p, c))                                            # (B, TP, c)
    channels_first = ag.swapaxes(nodes, 1, 2)                                            # (B, c, TP)
    # |p_i - p_j| (B, c, TP, TP)
    difference = ag.abs(ag.expand_dims(channels_first, 3) - ag.expand_dims(channels_first, 2))
    context_map = ag.broadcast_to(ag.reshape(context, (b, c, 1, 1)), difference.shape)
    edges = ag.concatenate([difference, context_map], axis=1)                            # (B, 2c, TP, TP)
    logits = conv_bn(params, *RELATION, edges, train, relu=False, bias=True)            # e (B, 1, TP, TP)
    blocked = ag.from_numpy((~graph_mask(t, p)).astype(np.dtype(logits.dtype)) * MASK_FILL)
    adjacency = ag.softmax(ag.reshape(logits, (b, t * p, t * p)) - blocked, axis=-1)    # W (official -1e8 fill)
    neighbours = ag.matmul(adjacency, nodes)                                             # W p
    stacked = ag.reshape(ag.concatenate([nodes, neighbours], axis=2), (b * t * p, 2 * c, 1, 1))
    updated = conv_bn(params, *GCONV, stacked, train, bias=True)                        # s
    return ag.reshape(updated, (b, t, p, c))


def _part_maps(params, z: ag.Tensor, train: bool) -> ag.Tensor:
    """a = sigmoid(BN3d(conv(z))): (B, P, T, H, W)."""
    return ag.sigmoid(_pointwise3d_bn(params, "SA.conv.conv", "SA.conv.bn", z, train))


def _spatial_temporal_interaction(params, z: ag.Tensor, train: bool) -> ag.Tensor:
    """STIAU: out = z + W2([mean_k s; u]) broadcast over H, W; z (B, C, T, H, W)."""
    b, c, t, h, w = z.shape
    descriptor = ag.mean(z, axis=(2, 3, 4))                                             # u (B, C)
    maps = _part_maps(params, z, train)                                                 # a (B, P, T, H, W)
    p = maps.shape[1]
    maps = ag.reshape(ag.transpose(maps, (0, 2, 1, 3, 4)), (b * t, p, h * w))          # (BT, P, HW)
    frames = ag.reshape(ag.transpose(z, (0, 2, 1, 3, 4)), (b * t, c, h * w))           # (BT, C, HW)
    parts = ag.reshape(ag.matmul(maps, ag.swapaxes(frames, 1, 2)), (b, t, p, c))       # p_tk (B, T, P, C)
    parts, descriptor = _shared_g(params, parts), _shared_g(params, descriptor)         # g(p), g(u)
    updated = _graph_update(params, parts, descriptor, train)                           # s (B, T, P, C/2)
    inter = descriptor.shape[1]
    frame_features = ag.concatenate(
        [ag.mean(updated, axis=2), ag.broadcast_to(ag.reshape(descriptor, (b, 1, inter)), (b, t, inter))], axis=2)
    frame_features = ag.reshape(ag.swapaxes(frame_features, 1, 2), (b, c, t, 1, 1))    # v (B, C, T, 1, 1)
    return z + _pointwise3d_bn(params, "W2.0", "W2.1", frame_features, train)


# ---------------------------------------------------------------------------------------------
# public entry points


def _structure(params) -> tuple:
    """(C, P) with every parameter checked; C is even (g maps C -> C/2 and v = [s; u] has 2 * C/2 = C rows)."""
    channels, parts = params.shape("W1.0.weight")[1], params.shape("SA.conv.conv.weight")[0]
    if channels % 2:
        raise ValueError(f"{NAME}: parameter 'W1.0.weight' must have shape (C, C, 1, 1, 1) with C even (inter "
                         f"channels C/2), got {params.shape('W1.0.weight')}")
    inter = channels // 2
    shapes = {}
    for conv_prefix, bn_prefix, out in (("W1.0", "W1.1", channels), ("SA.conv.conv", "SA.conv.bn", parts),
                                        ("W2.0", "W2.1", channels)):
        shapes.update({f"{conv_prefix}.weight": (out, channels, 1, 1, 1), f"{conv_prefix}.bias": (out,),
                       **batch_norm_shapes(bn_prefix, out)})
    shapes.update(conv_shapes("g", inter, channels))
    for (conv_prefix, bn_prefix), out in ((RELATION, 1), (GCONV, inter)):
        shapes.update({**conv_shapes(conv_prefix, out, 2 * inter), **batch_norm_shapes(bn_prefix, out)})
    take_all(params, shapes)
    return channels, parts


def _to_official(params, x, layout: str) -> ag.Tensor:
    if layout not in LAYOUTS:
        raise ValueError(f"{NAME}: layout must be one of {LAYOUTS}, got {layout!r}")
    shape_text = "(B, T, C, H, W)" if layout == "btchw" else "(B, C, T, H, W)"
    channels, _ = _structure(params)
    x = check_input(NAME, x, ndim=5, layout=shape_text)
    axis = 2 if layout == "btchw" else 1
    if x.shape[axis] != channels:
        raise ValueError(f"{NAME}: x must have {channels} channels (axis {axis} of {shape_text}) to match the "
                         f"parameters, got shape {x.shape}")
    frames = x.shape[3 - axis]
    if frames < 1 or min(x.shape[3:]) < 1:
        raise ValueError(f"{NAME}: x must have at least one frame and a non-empty H x W {shape_text}, got shape "
                         f"{x.shape}")
    check_dtype(NAME, x, params)
    return ag.swapaxes(x, 1, 2) if layout == "btchw" else x


@uses_params(NAME)
def part_attention(params, x, *, train: bool = False, layout: str = "btchw") -> ag.Tensor:
    """The STIAU part maps a (B*T, P, H, W), as the official block's second output.

    Takes the whole IAU parameter dict (every parameter checked, as by :func:`iau`).
    """
    clip = _to_official(params, x, layout)
    maps = _part_maps(params, _channel_interaction(params, clip, train), train)        # (B, P, T, H, W)
    b, p, t, h, w = maps.shape
    return ag.reshape(ag.swapaxes(maps, 1, 2), (b * t, p, h, w))


@uses_params(NAME)
def iau(params, x, *, train: bool = False, layout: str = "btchw") -> ag.Tensor:
    """Apply the IAU block (CIAU, then STIAU) to a clip ``x``; returns the same shape and layout.

    ``layout="btchw"``: x is (B, T, C, H, W); ``"bcthw"``: the official (B, C, T, H, W).
    """
    clip = _to_official(params, x, layout)
    z = _channel_interaction(params, clip, train)                                       # CIAU
    out = _spatial_temporal_interaction(params, z, train)                               # STIAU
    return ag.swapaxes(out, 1, 2) if layout == "btchw" else out


def _clip(rng, v, dtype):
    """One clip in the drawn layout, scaled by 0.5 as the example (CIAU's unscaled softmax saturates)."""
    shape = (v.batch, v.frames, v.in_channels, v.height, v.width)
    if v.layout == "bcthw":
        shape = (v.batch, v.in_channels, v.frames, v.height, v.width)
    return (example(rng, shape, dtype) * 0.5,)


# C even (C/2 inter channels, up to the default's 16), P from one part up (T = P = 1: the node with no allowed
# neighbour), one frame up, both layouts.  In training the BatchNorms see B T H W (W1, SA), B (T P)^2
# (relation), B T P (Gconv) and B T (W2) values per channel: B T > 1 covers them all.
SPACE = Space(config={"_half": Ints(1, 8), "in_channels": Derived(lambda v: 2 * v._half), "num_parts": Ints(1, 5),
                      "zero_init": Bools()},
              options={"layout": Choice(*LAYOUTS)},
              inputs=Inputs({"batch": BATCH, "frames": Ints(1, 4), "height": SIZE, "width": SIZE}, _clip),
              where=(bn_train(lambda v: v.batch * v.frames),))


register(Mechanism(
    name=NAME, family="temporal",
    paper=Paper("Hou, Ma, Chang, Shan, Chen", "IAUnet: Global Context-Aware Feature Learning for Person "
                "Re-Identification", "IEEE TNNLS", 2020),
    init=init, apply_fn=iau, config={"in_channels": 16, "zero_init": False},
    # a (B, T, C, H, W) clip; scaled by 0.5 so that CIAU's unscaled softmax is not saturated
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 3, 16, 4, 4), dtype) * 0.5,),
    channel_axis=2, space=SPACE,
    description="video IAU block: channel interaction (CIAU) then part-based spatial-temporal graph (STIAU)",
))
