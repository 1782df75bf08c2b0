"""ALiBi slopes (Press, Smith and Lewis, "Train Short, Test Long", ICLR 2022).

The bias itself is an option of :func:`autograd.scaled_dot_product_attention` (``alibi_slopes``, ``alibi_form``):
-m_h |i + off - j| ('symmetric', flash-attn outside its causal kernel) or +m_h j ('fairseq', the official code and
flash's causal kernel), added to the scaled (and soft-capped) logits, never scaled by 1/sqrt(d).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from autograd import backend


def _power_of_two_slopes(n: int) -> list:
    """m_h = 2^(-8h/n), h = 1..n: the geometric sequence starting (and stepping) at 2^(-8/n)."""
    return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]


def alibi_slopes(n_heads: int, dtype=np.float64):
    """The official slopes (ofirpress/attention_with_linear_biases, fairseq/models/transformer.py L742-752).

    For n = 2^a heads, m_h = 2^(-8h/n).  Otherwise, with c = 2^floor(log2 n): the c slopes of c heads, then
    every other slope of 2c heads (``[0::2]``), the first n - c of them.  12 heads: 2^-1 ... 2^-8, then
    2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.  Returns a (n_heads,) backend array.
    """
    if not isinstance(n_heads, numbers.Integral) or isinstance(n_heads, bool) or n_heads < 1:
        raise ValueError(f"alibi_slopes: n_heads must be a positive int, got {n_heads!r}")
    return backend.from_numpy(np.asarray(_slopes(int(n_heads)), dtype=dtype))


def _slopes(n: int) -> list:
    if math.log2(n).is_integer():
        return _power_of_two_slopes(n)
    closest = 2 ** math.floor(math.log2(n))
    return _power_of_two_slopes(closest) + _slopes(2 * closest)[0::2][: n - closest]
