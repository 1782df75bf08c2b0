"""Pieces shared by the vision-transformer attention modules (Swin, ViT, neighborhood, pooling, axial,
outlook, separable, BoTNet): initialisers the shared layers lack, the dense softmax-attention step, head splitting,
and input checks for token maps.

Layout: multi-head operands are ``(B, heads, N, d)`` (timm / torch ``scaled_dot_product_attention``), so
``logits = q k^T`` is ``(B, heads, N, M)`` and the softmax runs over the last axis.
"""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import check_dtype, check_input

# ---------------------------------------------------------------------------------------------
# initialisers


def trunc_normal(rng, shape, std: float, dtype, lower: float = -2.0, upper: float = 2.0):
    """N(0, std^2) redrawn outside the *absolute* bounds [lower, upper] (timm's ``trunc_normal_(std=s)``,
    whose default bounds are +-2, not +-2 std: at std 0.02 they never bind)."""
    values = rng.normal(0.0, std, size=shape)
    outside = (values < lower) | (values > upper)
    while outside.any():
        values[outside] = rng.normal(0.0, std, size=int(outside.sum()))
        outside = (values < lower) | (values > upper)
    return backend.from_numpy(values.astype(dtype))


def normal(rng, shape, std: float, dtype, mean: float = 0.0):
    """N(mean, std^2) on the host, moved to the backend."""
    return backend.from_numpy(rng.normal(mean, std, size=shape).astype(dtype))


# ---------------------------------------------------------------------------------------------
# the attention step


def softmax_attention(query, key, value, *, scale, bias=None, mask=None,
                      masked_rows: str = "zero") -> ag.Tensor:
    """softmax(scale q k^T + bias [masked]) v: query (..., N, d), key (..., M, d), value (..., M, dv) -> (..., N, dv).

    The logits + bias + softmax step of every dense mechanism here, run by the core's
    :func:`autograd.scaled_dot_product_attention` (its materialised path: the composition
    ``softmax((q scale) k^T + bias, mask) v`` op for op, so the numbers are those of :func:`attention_weights`
    times v).  ``scale`` is a float, or a tensor broadcasting against q's leading axes (Swin v2's learned
    per-head scale), which multiplies q before the core (scale 1 there: exact).  ``bias`` is additive
    (broadcasts to (..., N, M)); ``mask`` is boolean, True = attend (the SDPA convention); a row with no True
    entry gives zeros (``masked_rows="zero"``, torch SDPA on CPU) or NaN (``"nan"``, the manual ``softmax`` of
    timm's non-fused path).  Leading axes beyond (batch, heads) are folded into the batch axis.
    """
    if mask is not None and masked_rows == "nan":
        # timm's manual softmax puts NaN on the whole tape of an empty row (into q, k, the bias and v); the core's
        # 'nan' policy is xFormers' (NaN output, NaN into v only, q and k get 0): not the same gradients.
        return ag.matmul(attention_weights(query, key, scale=scale, bias=bias, mask=mask, masked_rows=masked_rows),
                         value)
    query, key, value = ag.as_tensor(query), ag.as_tensor(key), ag.as_tensor(value)
    if isinstance(scale, ag.Tensor):
        query, scale = query * scale, 1.0                     # (t q) k^T, as timm computes (q * t) @ k^T
    lead = query.shape[:-2]
    attended = ag.scaled_dot_product_attention(
        *(_core_layout(t, lead) for t in (query, key, value)), attn_mask=_core_layout(mask, lead),
        bias=_core_layout(bias, lead), scale=scale, implementation="materialised")
    return attended if len(lead) == 2 else ag.reshape(attended, lead + attended.shape[-2:])


def _core_layout(t, lead: tuple):
    """An operand (..., X, Y) of queries with leading axes ``lead`` in the core's 4-D (batch, heads, X, Y) layout:
    missing leading axes become ones and the axes before the heads are folded into the batch axis (a mask or
    bias is broadcast over them first, unless it is 1 along all of them)."""
    if t is None or (len(lead) == 2 and t.ndim == 4):
        return t
    tensor = isinstance(t, ag.Tensor)
    reshape, broadcast_to = (ag.reshape, ag.broadcast_to) if tensor else (ag.xp.reshape, ag.xp.broadcast_to)
    shape = (1,) * (max(4, len(lead) + 2) - t.ndim) + tuple(t.shape)
    folded = len(shape) - 3                                   # the axes before (heads, X, Y)
    if all(n == 1 for n in shape[:folded]):
        return reshape(t, (1,) + shape[folded:])
    target = tuple(lead[:folded]) + shape[folded:]
    return reshape(broadcast_to(t, target), (-1,) + shape[folded:])


def attention_weights(query, key, *, scale: float, bias=None, mask=None, masked_rows: str = "zero") -> ag.Tensor:
    """softmax_j(scale q_i . k_j + bias_ij) over the keys: (..., N, d), (..., M, d) -> (..., N, M).

    ``mask`` (boolean, True = attend) leaves out keys; a row without any key is all zeros with zero gradient
    (``masked_rows="zero"``) or NaN (``"nan"``).
    """
    logits = ag.matmul(query * scale, ag.swapaxes(key, -1, -2))          # (q scale) k^T: the scale on q first
    if bias is not None:
        logits = logits + bias
    if mask is not None and masked_rows == "nan":
        keep = mask.data if isinstance(mask, ag.Tensor) else mask
        return _manual_softmax(logits + ag.where(keep, 0.0, ag.from_numpy(np.array(-np.inf, dtype=logits.dtype))))
    return ag.softmax(logits, axis=-1, mask=mask)


def _manual_softmax(logits) -> ag.Tensor:
    """exp(x - max) / sum over the last axis, composed, as an unmasked framework softmax: a row of -inf is
    exp(-inf + inf) = NaN, forward and backward (timm's manual path; the core's softmax gives 0 there).
    No keys (an empty last axis): the empty result, as torch's softmax."""
    if logits.shape[-1] == 0:
        return logits * 0.0
    shift = ag.Tensor(ag.xp.max(logits.data, axis=-1, keepdims=True))          # a constant, as in torch
    with np.errstate(invalid="ignore"):
        exps = ag.exp(logits - shift)
        return exps / ag.sum(exps, axis=-1, keepdims=True)


def split_heads(t, heads: int) -> ag.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d): head h holds feature columns [h d, (h + 1) d)."""
    b, n, width = t.shape
    return ag.transpose(ag.reshape(t, (b, n, heads, width // heads)), (0, 2, 1, 3))


def merge_heads(t) -> ag.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d), the inverse of :func:`split_heads`."""
    b, heads, n, d = t.shape
    return ag.reshape(ag.transpose(t, (0, 2, 1, 3)), (b, n, heads * d))


# ---------------------------------------------------------------------------------------------
# checks


def check_positive_int(mechanism: str, name: str, value) -> int:
    """``value`` as a positive int (bools refused); TypeError / ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{mechanism}: {name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{mechanism}: {name} must be a positive integer, got {value}")
    return int(value)


def check_pair(mechanism: str, name: str, value) -> tuple:
    """An int or a pair of ints -> (a, b), each positive."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"{mechanism}: {name} must be an int or a pair of ints, got {value!r}")
    return tuple(check_positive_int(mechanism, name, v) for v in pair)


def check_choice(mechanism: str, name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{mechanism}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_scale(mechanism: str, value):
    """``qk_scale``: None (d^-1/2) or a positive finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{mechanism}: qk_scale must be None or a number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{mechanism}: qk_scale must be positive and finite, got {value}")
    return float(value)


def check_tokens(mechanism: str, x, params, *, channels: int, ndim: int, layout: str, channel_axis: int = -1):
    """Validate a channels-last input (B, ..., C) and return it as a Tensor of the parameters' dtype."""
    t = check_input(mechanism, x, ndim=ndim, layout=layout)
    if t.shape[channel_axis] != channels:
        raise ValueError(f"{mechanism}: x must have {channels} channels (axis {channel_axis}) to match the "
                         f"parameters, got shape {t.shape}")
    check_dtype(mechanism, t, params)
    return t
