"""Scaled dot-product attention, the functional core (Vaswani et al. 2017; Shazeer 2019; Ainslie et al. 2023;
Press et al. 2022 for ALiBi), as a registry entry.

    S = QK^T / sqrt(D) [+ ALiBi -m_h |i + Lk - Lq - j|],  causal bottom-right,  O = softmax(S) V

The entry is :func:`autograd.scaled_dot_product_attention` on a small default that exercises what most often
goes wrong: grouped-query heads (query head h reads kv head h // 2), Lq = 5 != Lk = 7 with a bottom-right causal
mask (FlashAttention >= 2.1, a KV cache), Dv != D, and ALiBi slopes -- the only parameters (``alibi_slopes``
(Hq,), initialised by the official rule, differentiable).  Every other option of the core passes through
``apply`` (``mech.apply(params, q, k, v, window=(2, 0), softcap=30.0, ...)``); npattn.attention.convention gives
each library's set.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..attention import alibi_slopes
from ..layers import check_dtype, check_input, example
from ..params import uses_params
from ..registry import Mechanism, Paper, register

NAME = "sdpa"


def init(rng, heads: int = 4, *, dtype=np.float64) -> dict:
    """Parameters: ``alibi_slopes`` (heads,), the official ALiBi slopes (``rng`` is not used: they are fixed)."""
    del rng
    return {"alibi_slopes": alibi_slopes(heads, dtype=dtype)}


def _check(query, key, value, params):
    query = check_input(NAME, query, arg="query", ndim=4, layout="(B, Hq, Lq, D)")
    key = check_input(NAME, key, arg="key", ndim=4, layout="(B, Hkv, Lk, D)")
    value = check_input(NAME, value, arg="value", ndim=4, layout="(B, Hkv, Lk, Dv)")
    for arg, t in (("query", query), ("key", key), ("value", value)):
        check_dtype(NAME, t, params, arg=arg)
    return query, key, value


@uses_params(NAME)
def sdpa(params, query, key, value, *, train: bool = False, is_causal: bool = True, alignment="bottom-right",
         enable_gqa: bool = True, **options) -> ag.Tensor:
    """Attention of query (B, Hq, Lq, D) over key (B, Hkv, Lk, D), value (B, Hkv, Lk, Dv) -> (B, Hq, Lq, Dv).

    ``params['alibi_slopes']`` (Hq,) adds the ALiBi bias; ``options`` are those of
    :func:`autograd.scaled_dot_product_attention` (``train`` has no effect: no dropout without a keep mask).
    """
    del train
    query, key, value = _check(query, key, value, params)
    slopes = params.take("alibi_slopes", (query.shape[1],))
    return ag.scaled_dot_product_attention(query, key, value, is_causal=is_causal, alignment=alignment,
                                           enable_gqa=enable_gqa, alibi_slopes=slopes, **options)


def _example(rng, dtype=np.float64):
    return (example(rng, (2, 4, 5, 8), dtype), example(rng, (2, 2, 7, 8), dtype), example(rng, (2, 2, 7, 6), dtype))


register(Mechanism(
    name=NAME, family="transformer",
    paper=Paper("Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser, Polosukhin", "Attention Is All You Need",
                "NeurIPS", 2017),
    init=init, apply_fn=sdpa, config={"heads": 4}, example_input=_example, channel_axis=1,
    description="the attention core: GQA 4:2, bottom-right causal with Lq != Lk, Dv != D, ALiBi slopes",
))
