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
from autograd import backend

from ..attention import alibi_slopes
from ..layers import check_dtype, check_input, example
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import BATCH, Bools, Choice, Derived, Inputs, Ints, Space
from ._spaces import seeded_bool, seeded_normal

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


def _space_inputs() -> Inputs:
    """query (B, Hq, Lq, D), key (B, Hkv, Lk, D), value (B, Hkv, Lk, Dv): Lq != Lk, D != Dv, each of them 0 too
    (D = 0 only with an explicit scale: the default 1/sqrt(D) is refused there)."""
    dims = {"batch": BATCH, "kv_heads": Ints(1, 3), "query_length": Ints(0, 5), "key_length": Ints(0, 5),
            "head_dim": Ints(0, 4), "value_dim": Ints(0, 4)}
    return Inputs(dims, lambda rng, v, dtype: (
        example(rng, (v.batch, v.heads, v.query_length, v.head_dim), dtype),
        example(rng, (v.batch, v.kv_heads, v.key_length, v.head_dim), dtype),
        example(rng, (v.batch, v.kv_heads, v.key_length, v.value_dim), dtype)))


def _padded_keys(v) -> np.ndarray:
    """Per batch row, how many keys are right padding (0 .. Lk, cycling over the rows from ``_pad``)."""
    return (v._pad + np.arange(v.batch)) % (v.key_length + 1)


def _key_padding_mask(v):
    """(B, Lk) bool, True = padding, on the right of each row (a prefix of real keys, as bottom-right needs)."""
    return backend.from_numpy(np.arange(v.key_length)[None, :] >= v.key_length - _padded_keys(v)[:, None])


def _score_shape(v) -> tuple:
    return (v.batch, v.heads, v.query_length, v.key_length)


def _float_mask(v):
    """An additive attn_mask: -inf (a left-out key) where the seeded boolean mask is False, else a finite bias."""
    keep = backend.to_numpy(seeded_bool(_score_shape).fn(v))
    return backend.from_numpy(np.where(keep, np.random.default_rng(v._seed + 1).normal(size=keep.shape), -np.inf))


def _causal_alignment_agrees(v) -> bool:
    """alignment=None with is_causal needs top-left == bottom-right: every row's real keys number Lq."""
    padded = _padded_keys(v) if v.key_padding_mask is not None else np.zeros(v.batch, dtype=int)
    return bool(np.all(v.key_length - padded == v.query_length))        # vacuous for an empty batch


#: Every option of the core: GQA groups (enable_gqa off only where Hq = Hkv), each alignment (None where it is
#: unambiguous), windows with unbounded sides and flash's seqlen_k rewrite, softcap, explicit scale, the three ALiBi
#: forms, the three policies for rows left without keys (causal bottom-right with Lq > Lk, windows, masks, Lk = 0),
#: boolean / additive attn_mask, a float bias, right key padding, dropout from an explicit keep mask, both
#: implementations with small chunks.  Arrays are drawn from ``_seed`` (float ones in float64).
_SPACE = Space(
    config={"_groups": Ints(1, 3), "heads": Derived(lambda v: v.kv_heads * v._groups)},
    options={"is_causal": Bools(), "alignment": Choice("bottom-right", "top-left", None, Ints(-2, 2)),
             "enable_gqa": Bools(), "_left": Ints(-1, 3), "_right": Ints(-1, 3),
             "window": Choice(None, Derived(lambda v: (v._left, v._right))),
             "window_unbounded": Choice("infinite", "seqlen_k"), "softcap": Choice(0.0, 1.5),
             "scale": Choice(None, 0.5), "alibi_form": Choice("symmetric", "fairseq", "flash"),
             "masked_rows": Choice("zero", "uniform", "nan"), "_seed": Ints(0, 1000), "_pad": Ints(0, 5),
             "attn_mask": Choice(None, seeded_bool(_score_shape), Derived(_float_mask)),
             "bias": Choice(None, seeded_normal(lambda v: (1, v.heads, v.query_length, v.key_length))),
             "key_padding_mask": Choice(None, Derived(_key_padding_mask)),
             "_dropout": Bools(), "dropout_p": Derived(lambda v: 0.25 if v._dropout else 0.0),
             "dropout_mask": Derived(lambda v: seeded_bool(_score_shape, 0.75).fn(v) if v._dropout else None),
             "implementation": Choice("auto", "materialised", "chunked"), "chunk_size": Choice(None, Ints(1, 3))},
    inputs=_space_inputs(),
    where=(lambda v: v.enable_gqa or v.heads == v.kv_heads, lambda v: v.head_dim > 0 or v.scale is not None,
           lambda v: v.alignment is not None or not v.is_causal or _causal_alignment_agrees(v)))


register(Mechanism(
    name=NAME, family="transformer",
    paper=Paper("Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser, Polosukhin", "Attention Is All You Need",
                "NeurIPS", 2017),
    init=init, apply_fn=sdpa, config={"heads": 4}, example_input=_example, channel_axis=1, space=_SPACE,
    description="the attention core: GQA 4:2, bottom-right causal with Lq != Lk, Dv != D, ALiBi slopes",
))
