"""Swin Transformer V2 window attention (Liu et al., CVPR 2022): the attention part of a block.

The window machinery (rules, zero padding before the shift, roll, partition, -100 mask) is Swin v1's
(:mod:`npattn.transformer.swin`, ``_windows``).  Inside a window, for x (B nW, N, C)::

    q, k, v = split(x W_qkv^T + [q_bias | 0 | v_bias])        the k bias is fixed at 0 (no parameter)
    cos     = normalize(q) normalize(k)^T                        F.normalize over d, eps 1e-12
    t       = exp(min(logit_scale, log(1 / 0.01)))               logit_scale (heads, 1, 1), clamped at log 100
    B       = 16 sigmoid(cpb_mlp(c')[idx(i, j)])                 continuous position bias
    c       = (dy / (P_h - 1), dx / (P_w - 1)) * 8               P = pretrained_window_size if > 0, else the window
    c'      = sign(c) log2(1 + |c|) / log2(8)                   buffer ``relative_coords_table`` (1, 2wh-1, 2ww-1, 2)
    cpb_mlp = Linear(2, 512) -> ReLU -> Linear(512, heads, bias=False)
    A       = softmax(cos t + B + M);   y = (A v merged) W_proj^T + b_proj          no d^-1/2

Follows ``microsoft/Swin-Transformer`` ``models/swin_transformer_v2.py`` (spec sheet section 2):

* The clamp is a kink: a logit scale above log 100 gets gradient 0.  The official threshold is a float32
  tensor (``log(tensor(100.))``), 6.4e-8 above ``math.log(100)``, which is used here (as torchvision).
* The coordinate table is computed in float64 (the official buffer is float32: 3.1e-8 to 6.6e-8 away for
  windows 4 to 24).  The buffer passed in is used, after a check that it is the table of the configured
  window and ``pretrained_window_size`` to 1e-4 (so an official float32 buffer loads, and one made for
  another configuration is an error).  A window of 1 without a pretrained size divides 0 by 0 (official NaN):
  refused.
* ``normalize`` of a zero vector (a padded token with a zero ``q_bias``, the official init) is 0 with a
  clamped norm: not differentiable there, as in PyTorch.
* The block is res-post-norm, ``x + norm1(attn(x))``: the norm is not part of this module.

Parameters: ``attn.qkv.weight`` (3C, C), ``attn.q_bias``, ``attn.v_bias`` (C) (``qkv_bias``),
``attn.logit_scale`` (heads, 1, 1), ``attn.cpb_mlp.0.weight`` (512, 2) + ``.bias``, ``attn.cpb_mlp.2.weight``
(heads, 512), ``attn.proj.*``, and the buffers ``attn.relative_coords_table`` and ``attn.relative_position_index``.
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import example, init_linear, linear_shapes, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Choice, Ints, Space, channels_last
from . import _windows as windows_
from . import swin as swin_v1
from ._parts import merge_heads, softmax_attention
from ._spaces import swin_config, swin_tables_fit, swin_window

NAME = "swin-v2"
PAPER = Paper("Liu, Hu, Lin, Yao, Xie, Wei, Ning, Cao, Zhang, Dong, Wei, Guo",
              "Swin Transformer V2: Scaling Up Capacity and Resolution", "CVPR", 2022)
COORDS = "attn.relative_coords_table"
INDEX = "attn.relative_position_index"
#: log(1 / 0.01): the largest logit scale exponent (math.log(100); the official float32 value is 6.4e-8 larger).
MAX_LOGIT_SCALE = math.log(1.0 / 0.01)
NORMALIZE_EPS = 1e-12
CPB_HIDDEN = 512
COORDS_TOLERANCE = 1e-4


def coordinates_table(window: tuple, pretrained_window_size, dtype=np.float64):
    """c' (1, 2wh-1, 2ww-1, 2) on the backend: log-spaced relative coordinates, float64 arithmetic."""
    pretrained = _pretrained_pair(pretrained_window_size)
    divisors = [p - 1 if p > 0 else w - 1 for p, w in zip(pretrained, window)]
    if 0 in divisors:
        raise ValueError(f"{NAME}: the coordinate table of a {window} window divides by window - 1 = 0 (the official "
                         "code gives NaN); pass pretrained_window_size > 1 or use a larger window")
    dy = np.arange(-(window[0] - 1), window[0], dtype=np.float64) / divisors[0]
    dx = np.arange(-(window[1] - 1), window[1], dtype=np.float64) / divisors[1]
    table = np.stack(np.meshgrid(dy, dx, indexing="ij"), axis=-1)[None] * 8.0      # c in [-8, 8]
    table = np.sign(table) * np.log2(np.abs(table) + 1.0) / np.log2(8.0)            # c'
    return backend.from_numpy(table.astype(dtype))


def _pretrained_pair(value) -> tuple:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in pair):
        raise ValueError(f"{NAME}: pretrained_window_size must be a non-negative int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def init(rng, dim: int, *, num_heads: int, window_size=8, shift_size=0, rule: str = "official",
         qkv_bias: bool = True, pretrained_window_size=0, input_resolution=None, dtype=np.float64) -> dict:
    """Parameters as the official ``WindowAttention`` (under ``attn.``): q/v biases 0, logit scale log 10,
    Linear default init elsewhere; the buffers for the window the rule uses (``input_resolution`` as in Swin v1)."""
    swin_v1._check_heads(dim, num_heads)
    windows_.check_rule(NAME, rule)
    window = windows_.effective_window(NAME, window_size, input_resolution, rule)
    windows_.shift_pair(NAME, shift_size, windows_.positive_pair(NAME, "window_size", window_size))
    params: dict = {}
    init_linear(rng, params, "attn.qkv", 3 * dim, dim, bias=False, dtype=dtype)
    if qkv_bias:
        params["attn.q_bias"] = backend.from_numpy(np.zeros(dim, dtype=dtype))
        params["attn.v_bias"] = backend.from_numpy(np.zeros(dim, dtype=dtype))
    params["attn.logit_scale"] = backend.from_numpy(np.full((num_heads, 1, 1), math.log(10.0), dtype=dtype))
    init_linear(rng, params, "attn.cpb_mlp.0", CPB_HIDDEN, 2, dtype=dtype)
    init_linear(rng, params, "attn.cpb_mlp.2", num_heads, CPB_HIDDEN, bias=False, dtype=dtype)
    init_linear(rng, params, "attn.proj", dim, dim, dtype=dtype)
    params[COORDS] = coordinates_table(window, pretrained_window_size, dtype)
    params[INDEX] = backend.from_numpy(windows_.relative_position_index(window))
    return params


def continuous_position_bias(params, window: tuple, num_heads: int, pretrained_window_size) -> ag.Tensor:
    """B (heads, N, N) = 16 sigmoid(cpb_mlp(c')[idx(i, j), h])."""
    coords = params.take(COORDS, (1, 2 * window[0] - 1, 2 * window[1] - 1, 2))
    expected = backend.to_numpy(coordinates_table(window, pretrained_window_size, np.float64))
    if not np.allclose(backend.to_numpy(coords), expected, rtol=0, atol=COORDS_TOLERANCE):
        raise ValueError(f"{NAME}: buffer {COORDS!r} is not the coordinate table of a {window} window with "
                         f"pretrained_window_size={pretrained_window_size!r} (was it made for another configuration?)")
    windows_.check_index(NAME, params, INDEX, window)
    hidden = params.shape("attn.cpb_mlp.0.weight")[0]
    take_all(params, {**linear_shapes("attn.cpb_mlp.0", hidden, 2),
                      **linear_shapes("attn.cpb_mlp.2", num_heads, hidden, bias=False)})
    table = ag.linear(ag.relu(ag.linear(coords, params["attn.cpb_mlp.0.weight"], params["attn.cpb_mlp.0.bias"])),
                      params["attn.cpb_mlp.2.weight"])                               # (1, 2wh-1, 2ww-1, heads)
    table = ag.reshape(table, (-1, num_heads))
    count = window[0] * window[1]
    index = backend.from_numpy(windows_.relative_position_index(window).reshape(-1))
    gathered = ag.reshape(ag.getitem(table, index), (count, count, num_heads))
    return ag.mul(ag.sigmoid(ag.transpose(gathered, (2, 0, 1))), 16.0)


def _normalize(t) -> ag.Tensor:
    """F.normalize over the last axis: t / max(||t||, eps), as sqrt(max(||t||^2, eps^2)) (no 0/0 in the VJP)."""
    squared = ag.sum(ag.mul(t, t), axis=-1, keepdims=True)
    return ag.div(t, ag.sqrt(ag.maximum(squared, NORMALIZE_EPS ** 2)))


@uses_params(NAME)
def swin_v2(params, x, *, train: bool = False, num_heads: int, window_size=8, shift_size=0, rule: str = "official",
            qkv_bias: bool = True, pretrained_window_size=0, mask_value: float = windows_.MASK_VALUE) -> ag.Tensor:
    """Swin v2 shifted-window cosine attention of x (B, H, W, C) -> (B, H, W, C).

    ``num_heads``, ``window_size``, ``shift_size``, ``rule``, ``qkv_bias`` and ``pretrained_window_size`` as in
    :func:`init`; ``mask_value`` -100 (official) or -inf.  ``train`` has no effect.
    """
    channels = params.shape("attn.qkv.weight")[1]
    swin_v1._check_heads(channels, num_heads)
    windows_.check_rule(NAME, rule)
    mask_value = windows_.check_mask_value(NAME, mask_value)
    shapes = {"attn.qkv.weight": (3 * channels, channels), "attn.logit_scale": (num_heads, 1, 1),
              **linear_shapes("attn.proj", channels, channels)}
    if qkv_bias:
        shapes.update({"attn.q_bias": (channels,), "attn.v_bias": (channels,)})
    take_all(params, shapes)
    x = windows_.check_tokens(NAME, x, params, channels)
    batch, height, width, _ = x.shape
    window_plan = windows_.plan(NAME, height, width, window_size, shift_size, rule)
    bias = continuous_position_bias(params, window_plan.window, num_heads, pretrained_window_size)
    if window_plan.shifted:
        mask = backend.from_numpy(windows_.shift_mask(window_plan, mask_value, x.dtype))
        bias = ag.add(ag.expand_dims(bias, 0), ag.expand_dims(mask, 1))            # (nW, heads, N, N)
    tokens = windows_.to_windows(x, window_plan)                                    # (B nW, N, C)
    qkv = ag.linear(tokens, params["attn.qkv.weight"], _qkv_bias(params, channels, qkv_bias))
    q, k, v = windows_.per_window(windows_.split_heads(qkv, num_heads), batch, window_plan.count)
    logit_scale = ag.exp(ag.clip(params["attn.logit_scale"], max=MAX_LOGIT_SCALE))  # t (heads, 1, 1)
    attended = softmax_attention(_normalize(q), _normalize(k), v, scale=logit_scale, bias=bias)
    merged = merge_heads(ag.reshape(attended, (tokens.shape[0],) + attended.shape[2:]))
    out = ag.linear(merged, params["attn.proj.weight"], params["attn.proj.bias"])
    return windows_.from_windows(out, window_plan, height, width)


def _qkv_bias(params, channels: int, qkv_bias: bool):
    """cat(q_bias, 0, v_bias) (3C,), or None."""
    if not qkv_bias:
        return None
    zeros = ag.Tensor(ag.xp.zeros(channels, dtype=params.dtype))
    return ag.concatenate([params["attn.q_bias"], zeros, params["attn.v_bias"]])


register(Mechanism(
    name=NAME, family="transformer", paper=PAPER, init=init, apply_fn=swin_v2,
    config={"dim": 16, "num_heads": 2, "window_size": 4, "shift_size": 2},
    # 8 x 12 (multiples of 4): with the official zero q_bias a padded token's q would be 0, normalize's kink
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 8, 12, 16), dtype),),
    channel_axis=3, min_spatial=4,
    # _spaces.swin_config, plus pretrained sizes 0 (the window itself) or > 1; the coordinate table divides by
    # (pretrained or window) - 1, so a window of 1 (also the official min rule's on a one-row map) needs a
    # pretrained size (the official code gives NaN; refused here)
    space=Space(config=swin_config(pretrained_window_size=Choice(0, Ints(2, 6))),
                options={"mask_value": Choice(-100.0, -np.inf)}, inputs=channels_last(),
                where=(lambda v: v.pretrained_window_size > 1 or min(swin_window(v)) > 1, swin_tables_fit)),
    description="Swin v2 shifted-window cosine attention with a continuous (log-spaced) position bias MLP",
))
