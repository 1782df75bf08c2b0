"""Shifted-window machinery shared by Swin v1 and v2: the window/shift rules, zero padding, the cyclic
shift, window partition, the shift mask, the relative-position index, and the attention step.

Layout: token maps are channels-last (B, H, W, C); windows are (B * nW, N, C) with N = wh * ww tokens,
windows row-major over the padded map and tokens row-major inside a window (Swin's ``window_partition``).
Multi-head operands are (B * nW, heads, N, d).

Three rules decide the window and shift actually used on an H x W map (spec sheet section 1):

* ``"official"`` (microsoft/Swin-Transformer ``SwinTransformerBlock.__init__``): if min(H, W) <= w, the
  shift is 0 and the window shrinks to min(H, W) (both axes; the relative table is built for it).  Then
  zero padding to multiples of the window (the detection code's ``F.pad``; the classification code cannot
  run on non-multiples).  The window must be square.
* ``"torchvision"`` (``shifted_window_attention``): pad first, then drop the shift of each axis whose
  window covers the whole padded axis; no min rule.
* ``"detection"`` (Swin-Transformer-Object-Detection): pad, always shift; no min rule.

In every rule the padding sits at the bottom/right **before** the roll, padded tokens are zeros (not
masked: their keys and values are the projection biases), and the mask is built on the padded map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import check_dtype, check_input

RULES = ("official", "torchvision", "detection")
#: The official additive mask value between tokens of different regions of a shifted window.
MASK_VALUE = -100.0


# ---------------------------------------------------------------------------------------------
# option checks


def positive_pair(mechanism: str, name: str, value) -> tuple:
    """An int or a pair of ints -> (a, b), each positive; ValueError/TypeError naming the argument."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in pair):
        raise TypeError(f"{mechanism}: {name} must be an int or a pair of ints, got {value!r}")
    if any(v < 1 for v in pair):
        raise ValueError(f"{mechanism}: {name} must be positive, got {value!r}")
    return int(pair[0]), int(pair[1])


def shift_pair(mechanism: str, value, window: tuple) -> tuple:
    """The shift as a pair with 0 <= s < w per axis (the official assert), TypeError/ValueError otherwise."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in pair):
        raise TypeError(f"{mechanism}: shift_size must be an int or a pair of ints, got {value!r}")
    if any(not 0 <= s < w for s, w in zip(pair, window)):
        raise ValueError(f"{mechanism}: shift_size must satisfy 0 <= shift < window per axis, got shift {value!r} "
                         f"for window {window}")
    return int(pair[0]), int(pair[1])


def check_rule(mechanism: str, rule) -> str:
    if rule not in RULES:
        raise ValueError(f"{mechanism}: rule must be one of {RULES}, got {rule!r}")
    return rule


def check_mask_value(mechanism: str, value) -> float:
    """A negative float or -inf (the official -100, or -inf for exact zeros)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{mechanism}: mask_value must be a number (e.g. -100.0 or -inf), got {value!r}")
    if math.isnan(value) or value >= 0:
        raise ValueError(f"{mechanism}: mask_value must be negative (-100.0 official, or -inf), got {value}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# the plan of one call


@dataclass(frozen=True)
class WindowPlan:
    """How an H x W map is cut: the window and shift actually used, and the padded size."""

    window: tuple   # (wh, ww)
    shift: tuple    # (sh, sw)
    padded: tuple   # (Hp, Wp), multiples of the window

    @property
    def tokens(self) -> int:
        return self.window[0] * self.window[1]

    @property
    def count(self) -> int:
        """nW: windows per image."""
        return (self.padded[0] // self.window[0]) * (self.padded[1] // self.window[1])

    @property
    def shifted(self) -> bool:
        return any(self.shift)


def plan(mechanism: str, height: int, width: int, window_size, shift_size, rule: str) -> WindowPlan:
    """The window, shift and padded size ``rule`` gives an H x W map (see the module docstring)."""
    window = positive_pair(mechanism, "window_size", window_size)
    shift = shift_pair(mechanism, shift_size, window)
    if rule == "official":
        if window[0] != window[1] or shift[0] != shift[1]:
            raise ValueError(f"{mechanism}: the official rule takes a square window and one shift, got window "
                             f"{window_size!r}, shift {shift_size!r}; use rule='torchvision' for rectangles")
        if min(height, width) <= window[0]:   # the min rule of SwinTransformerBlock.__init__
            window, shift = (min(height, width),) * 2, (0, 0)
    padded = tuple(math.ceil(n / w) * w for n, w in zip((height, width), window))
    if rule == "torchvision":
        shift = tuple(0 if w >= p else s for s, w, p in zip(shift, window, padded))
    return WindowPlan(window, shift, padded)


def effective_window(mechanism: str, window_size, input_resolution, rule: str) -> tuple:
    """The window the relative tables are built for: ``window_size``, or the official min rule's min(H, W)."""
    window = positive_pair(mechanism, "window_size", window_size)
    if input_resolution is None or rule != "official":
        return window
    height, width = positive_pair(mechanism, "input_resolution", input_resolution)
    return plan(mechanism, height, width, window, 0, rule).window


# ---------------------------------------------------------------------------------------------
# index, mask, windows


def relative_position_index(window: tuple) -> np.ndarray:
    """Host (N, N) int64: idx(i, j) = (y_i - y_j + wh - 1) * (2 ww - 1) + (x_i - x_j + ww - 1).

    Tokens are row-major in the window; the row stride is 2 ww - 1 (official ``WindowAttention``).
    """
    wh, ww = window
    ys, xs = np.divmod(np.arange(wh * ww), ww)
    dy = ys[:, None] - ys[None, :] + wh - 1
    dx = xs[:, None] - xs[None, :] + ww - 1
    return (dy * (2 * ww - 1) + dx).astype(np.int64)


def region_labels(padded: int, window: int, shift: int) -> np.ndarray:
    """Host (padded,) region of each coordinate along one axis: 0 on [0, P - w), 1 on [P - w, P - s), 2 after."""
    labels = np.zeros(padded, dtype=np.int64)
    labels[padded - window:] = 1
    labels[padded - shift:] = 2 if shift else 1
    return labels


def shift_mask(window_plan: WindowPlan, mask_value: float, dtype) -> np.ndarray:
    """Host (nW, N, N): ``mask_value`` between tokens of one window from different regions, else 0.

    Each coordinate of the padded (shifted) map gets a (row label, column label); tokens with different
    pairs were not neighbours before the cyclic shift (official ``attn_mask``, built on the padded map).
    """
    (wh, ww), (sh, sw), (hp, wp) = window_plan.window, window_plan.shift, window_plan.padded
    rows, cols = region_labels(hp, wh, sh), region_labels(wp, ww, sw)
    region = rows[:, None] * 3 + cols[None, :]                                       # (Hp, Wp)
    windows = region.reshape(hp // wh, wh, wp // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
    different = windows[:, :, None] != windows[:, None, :]
    return np.where(different, mask_value, 0.0).astype(dtype)


def to_windows(x, window_plan: WindowPlan) -> ag.Tensor:
    """(B, H, W, C) -> (B * nW, N, C): zero-pad bottom/right, roll by (-sh, -sw), partition."""
    batch, height, width, channels = x.shape
    (hp, wp), shift = window_plan.padded, window_plan.shift
    if (hp, wp) != (height, width):
        x = ag.pad(x, ((0, 0), (0, hp - height), (0, wp - width), (0, 0)))
    if window_plan.shifted:
        x = ag.roll(x, (-shift[0], -shift[1]), (1, 2))
    windows = ag.window_partition(x, window_plan.window)
    return ag.reshape(windows, (windows.shape[0], window_plan.tokens, channels))


def from_windows(windows, window_plan: WindowPlan, height: int, width: int) -> ag.Tensor:
    """(B * nW, N, C) -> (B, H, W, C): reverse the partition, roll back by (+sh, +sw), crop the padding."""
    (wh, ww), (hp, wp), shift = window_plan.window, window_plan.padded, window_plan.shift
    x = ag.window_reverse(ag.reshape(windows, (windows.shape[0], wh, ww, windows.shape[-1])), (wh, ww), hp, wp)
    if window_plan.shifted:
        x = ag.roll(x, shift, (1, 2))
    if (hp, wp) != (height, width):
        x = ag.getitem(x, (slice(None), slice(0, height), slice(0, width)))
    return x


def split_heads(tokens, heads: int) -> ag.Tensor:
    """(B', N, 3 C) fused [q | k | v] -> (3, B', heads, N, d): head h holds columns [h d, (h + 1) d) of each third."""
    windows, count, width = tokens.shape
    return ag.transpose(ag.reshape(tokens, (windows, count, 3, heads, width // (3 * heads))), (2, 0, 3, 1, 4))


def per_window(qkv, batch: int, count: int) -> list:
    """(3, B nW, heads, N, d) -> [q, k, v], each (B, nW, heads, N, d), so that a (nW, heads, N, N) bias broadcasts."""
    shape = (batch, count) + qkv.shape[2:]
    return [ag.reshape(ag.getitem(qkv, i), shape) for i in range(3)]


def check_tokens(mechanism: str, x, params, channels: int) -> ag.Tensor:
    """x (B, H, W, C) as a Tensor of the parameters' dtype; errors name the mechanism."""
    t = check_input(mechanism, x, ndim=4, layout="(B, H, W, C)")
    if t.shape[-1] != channels:
        raise ValueError(f"{mechanism}: x must have {channels} channels (last axis) to match the parameters, "
                         f"got shape {t.shape}")
    if 0 in t.shape[1:3]:
        raise ValueError(f"{mechanism}: x must have a non-empty map (H, W >= 1), got shape {t.shape}")
    check_dtype(mechanism, t, params)
    return t


def check_index(mechanism: str, params, key: str, window: tuple) -> None:
    """Read the index buffer: shape (N, N), and the values the window fixes (a ValueError otherwise)."""
    count = window[0] * window[1]
    index = params.take(key, (count, count))
    if not np.array_equal(backend.to_numpy(index), relative_position_index(window)):
        raise ValueError(f"{mechanism}: buffer {key!r} does not hold the relative-position index of a {window} "
                         "window (built from the window size; was the state_dict made for another window?)")
