"""Swin Transformer (v1) shifted-window attention (Liu et al., ICCV 2021): the attention part of a block.

Input x (B, H, W, C) -- the block's ``norm1(x)`` as a map -- and output (B, H, W, C), before the residual::

    w, s   = the window and shift the rule gives this map (official: if min(H, W) <= w then s = 0, w = min(H, W))
    x_p    = zero-pad x at the bottom/right to multiples of w          (Hp, Wp)
    x_s    = roll(x_p, (-s, -s))                                        cyclic shift
    X      = window_partition(x_s)                                      (B nW, N, C), N = w^2
    Q, K, V = split(X W_qkv^T + b_qkv) into heads of d = C / heads     [q | k | v], heads inside each third
    A      = softmax((Q * scale) K^T + B + M)                           scale = qk_scale or d^-1/2
    B[h, i, j] = table[idx(i, j), h]                                    relative position bias
    idx(i, j) = (y_i - y_j + wh - 1)(2 ww - 1) + (x_i - x_j + ww - 1)
    M[i, j] = -100 if tokens i, j of a shifted window came from different regions, else 0  (only when s > 0)
    Y      = (A V merged) W_proj^T + b_proj, window_reverse, roll(+s, +s), crop to (H, W)

Follows ``microsoft/Swin-Transformer`` (``WindowAttention``, ``SwinTransformerBlock``) with the detection
code's zero padding before the shift for sizes that are not multiples of the window (spec sheet
section 1, and ``_windows`` for the rules).  ``rule="torchvision"`` drops the shift per axis when the
window covers the padded axis and never applies the min rule; ``rule="detection"`` always shifts.
``mask_value=-inf`` makes the masked weights exactly 0 (the official -100 leaves exp(-100) ~ 3.7e-44).
Attention and projection dropout (official default 0) are not modelled.

Parameters (the official block's ``attn.*`` names): ``attn.qkv.weight`` (3C, C) [+ ``attn.qkv.bias`` (3C)],
``attn.proj.weight`` (C, C) + bias, ``attn.relative_position_bias_table`` ((2wh-1)(2ww-1), heads) and the
int64 buffer ``attn.relative_position_index`` (N, N) -- both for the window the rule uses, which under the
official rule depends on the input size (``init(..., input_resolution=(H, W))``).  An official block's
state_dict loads by its ``attn.*`` entries (its ``attn_mask`` buffer is rebuilt here per call).
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import example, init_linear, linear, linear_shapes, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Choice, Space, channels_last
from . import _parts as parts
from . import _windows as windows_
from ._parts import merge_heads, softmax_attention, trunc_normal
from ._spaces import swin_config, swin_tables_fit

NAME = "swin"
PAPER = Paper("Liu, Lin, Cao, Hu, Wei, Zhang, Lin, Guo",
              "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", "ICCV", 2021)
TABLE = "attn.relative_position_bias_table"
INDEX = "attn.relative_position_index"


def table_rows(window: tuple) -> int:
    """(2 wh - 1)(2 ww - 1): one row per relative offset."""
    return (2 * window[0] - 1) * (2 * window[1] - 1)


def init(rng, dim: int, *, num_heads: int, window_size=7, shift_size=0, rule: str = "official",
         qkv_bias: bool = True, input_resolution=None, dtype=np.float64) -> dict:
    """Parameters of ``WindowAttention`` under ``attn.``: Linear default init, table trunc_normal(std 0.02).

    ``input_resolution`` (H, W): under the official rule a map with min(H, W) <= window_size uses a
    min(H, W) window, and the table and index are made for it (as the official block's ``__init__``).
    """
    _check_heads(dim, num_heads)
    windows_.check_rule(NAME, rule)
    window = windows_.effective_window(NAME, window_size, input_resolution, rule)
    windows_.shift_pair(NAME, shift_size, windows_.positive_pair(NAME, "window_size", window_size))
    params: dict = {}
    init_linear(rng, params, "attn.qkv", 3 * dim, dim, bias=qkv_bias, dtype=dtype)
    init_linear(rng, params, "attn.proj", dim, dim, dtype=dtype)
    params[TABLE] = trunc_normal(rng, (table_rows(window), num_heads), 0.02, dtype)
    params[INDEX] = backend.from_numpy(windows_.relative_position_index(window))
    return params


def _check_heads(dim: int, num_heads) -> None:
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"{NAME}: num_heads must be a positive int, got {num_heads!r}")
    if dim % num_heads:
        raise ValueError(f"{NAME}: dim={dim} must be divisible by num_heads={num_heads}")


def relative_position_bias(params, window: tuple, num_heads: int) -> ag.Tensor:
    """B (heads, N, N) = table[idx(i, j), h], gathered with the index the window fixes."""
    table = params.take(TABLE, (table_rows(window), num_heads))
    windows_.check_index(NAME, params, INDEX, window)
    index = backend.from_numpy(windows_.relative_position_index(window).reshape(-1))
    count = window[0] * window[1]
    return ag.transpose(ag.reshape(ag.getitem(table, index), (count, count, num_heads)), (2, 0, 1))


def attention_bias(params, window_plan: windows_.WindowPlan, num_heads: int, mask_value: float, dtype):
    """B (+ M): (heads, N, N) without a shift, (nW, heads, N, N) with it."""
    bias = relative_position_bias(params, window_plan.window, num_heads)
    if not window_plan.shifted:
        return bias
    mask = backend.from_numpy(windows_.shift_mask(window_plan, mask_value, dtype))
    return ag.add(ag.expand_dims(bias, 0), ag.expand_dims(mask, 1))


@uses_params(NAME)
def swin(params, x, *, train: bool = False, num_heads: int, window_size=7, shift_size=0, rule: str = "official",
         qkv_bias: bool = True, qk_scale=None, mask_value: float = windows_.MASK_VALUE) -> ag.Tensor:
    """Shifted-window attention of x (B, H, W, C) -> (B, H, W, C).

    ``num_heads``, ``window_size``, ``shift_size``, ``rule`` and ``qkv_bias`` as in :func:`init` (structure:
    the parameters must be those ``init`` made with the same values); ``qk_scale`` replaces d^-1/2;
    ``mask_value`` is -100 (official) or -inf.  ``train`` has no effect (no dropout, no BatchNorm).
    """
    window_plan, (q, k, v), scale, bias = _heads(params, x, num_heads, window_size, shift_size, rule, qkv_bias,
                                                 qk_scale, mask_value)
    attended = softmax_attention(q, k, v, scale=scale, bias=bias)         # (B, nW, heads, N, d)
    batch, count = attended.shape[:2]
    merged = merge_heads(ag.reshape(attended, (batch * count,) + attended.shape[2:]))
    out = linear(params, "attn.proj", merged)                                      # (B nW, N, C)
    return windows_.from_windows(out, window_plan, x.shape[1], x.shape[2])


@uses_params(NAME)
def attention_weights(params, x, *, num_heads: int, window_size=7, shift_size=0, rule: str = "official",
                      qkv_bias: bool = True, qk_scale=None, mask_value: float = windows_.MASK_VALUE):
    """(A (B, nW, heads, N, N), the :class:`WindowPlan`): each window's attention weights, windows row-major
    over the padded, shifted map and tokens row-major inside a window (for pictures; reads the whole dict)."""
    window_plan, (q, k, _), scale, bias = _heads(params, x, num_heads, window_size, shift_size, rule, qkv_bias,
                                                 qk_scale, mask_value)
    return parts.attention_weights(q, k, scale=scale, bias=bias), window_plan


def _heads(params, x, num_heads, window_size, shift_size, rule, qkv_bias, qk_scale, mask_value):
    """Every check, then (plan, [q, k, v] each (B, nW, heads, N, d), scale, bias (nW or 1, heads, N, N))."""
    channels = params.shape("attn.qkv.weight")[1]
    _check_heads(channels, num_heads)
    windows_.check_rule(NAME, rule)
    mask_value = windows_.check_mask_value(NAME, mask_value)
    scale = _scale(channels // num_heads, qk_scale)
    take_all(params, {**linear_shapes("attn.qkv", 3 * channels, channels, bias=qkv_bias),
                      **linear_shapes("attn.proj", channels, channels)})
    x = windows_.check_tokens(NAME, x, params, channels)
    batch, height, width, _ = x.shape
    window_plan = windows_.plan(NAME, height, width, window_size, shift_size, rule)
    bias = attention_bias(params, window_plan, num_heads, mask_value, x.dtype)
    tokens = windows_.to_windows(x, window_plan)                                  # (B nW, N, C)
    qkv = linear(params, "attn.qkv", tokens, bias=qkv_bias)                        # (B nW, N, 3C)
    heads = windows_.per_window(windows_.split_heads(qkv, num_heads), batch, window_plan.count)
    return window_plan, heads, scale, bias


def _scale(head_dim: int, qk_scale) -> float:
    if qk_scale is None:
        return head_dim ** -0.5
    if isinstance(qk_scale, bool) or not isinstance(qk_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"{NAME}: qk_scale must be None or a number, got {qk_scale!r}")
    if not math.isfinite(qk_scale) or qk_scale <= 0:
        raise ValueError(f"{NAME}: qk_scale must be positive and finite, got {qk_scale}")
    return float(qk_scale)


register(Mechanism(
    name=NAME, family="transformer", paper=PAPER, init=init, apply_fn=swin,
    config={"dim": 16, "num_heads": 2, "window_size": 4, "shift_size": 2},
    # 7 x 10 is no multiple of 4: zero padding, the cyclic shift and the -100 mask all take part
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 7, 10, 16), dtype),),
    channel_axis=3, min_spatial=4,
    # _spaces.swin_config; maps from 1 x 1; the official -100 mask and -inf (exact zeros)
    space=Space(config=swin_config(), options={"qk_scale": Choice(None, 0.4), "mask_value": Choice(-100.0, -np.inf)},
                inputs=channels_last(), where=(swin_tables_fit,)),
    description="shifted-window self-attention with a relative position bias table (Swin v1 block)",
))
