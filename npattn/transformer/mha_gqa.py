"""Grouped-query attention layer, LLaMA-style (Ainslie et al., "GQA", EMNLP 2023; Shazeer 2019 for MQA;
Touvron et al. 2023), as Meta's ``llama3/llama/model.py`` ``Attention`` computes it (HEAD a0940f9, L90-190):

    q = x Wq^T (B, L, H*hd),  k = x Wk^T,  v = x Wv^T (B, L, Hkv*hd)           hd = dim // H unless head_dim
    q, k = RoPE(q), RoPE(k) at positions start_pos + arange(L)                  interleaved (Meta's complex view)
    k, v = cat(cache_k, k), cat(cache_v, v)                                     the cache holds rotated keys
    O = softmax(q k^T / sqrt(hd) + mask) v,   query head h reads kv head h // (H / Hkv)     (repeat_kv)
    out = merge_heads(O) Wo^T                                                   no bias anywhere
    mask = hstack(zeros(L, start_pos), triu(-inf, 1)): causal, bottom-right

Parameters (Meta's names): ``wq.weight`` (H*hd, dim), ``wk.weight`` / ``wv.weight`` (Hkv*hd, dim), ``wo.weight``
(dim, H*hd).  Structure options (keywords of ``init`` and ``apply``, npattn.params): ``n_heads``, ``n_kv_heads``
(default n_heads; 1 = MQA), ``head_dim``, ``bias=True`` adds Qwen2-style biases on the q/k/v projections only,
``qk_norm``: ``'per-head'`` (Qwen3: RMSNorm over hd, one weight (hd,) shared by the heads, ``q_norm.weight``/
``k_norm.weight``) or ``'full'`` (OLMo-2: RMSNorm over the whole projection, (H*hd,) / (Hkv*hd,), before the head
split); both before RoPE, weights initialised to 1, RMSNorm(x) = x * rsqrt(mean(x^2) + eps) * w.
Apply options: ``rope`` (default on), ``rope_layout`` ('interleaved', Meta; 'half' for HF checkpoints, whose
wq/wk rows are permuted per head), ``rope_theta`` (LLaMA-3: 500000), ``norm_eps``.

The softmax runs in the working dtype (Meta's ``scores.float()`` and HF's upcast are precision choices).
:func:`mha_gqa_cached` takes and returns the KV cache for decoding.
"""
from __future__ import annotations

import numbers

import numpy as np

import autograd as ag

from ..attention import apply_rope
from ..layers import check_dtype, check_input, example, init_linear, linear
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Derived, Ints, Space, tokens

NAME = "mha-gqa"
QK_NORMS = ("none", "per-head", "full")
PAPER = Paper("Ainslie, Lee-Thorp, de Jong, Zemlyanskiy, Lebron, Sanghai",
              "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints", "EMNLP", 2023)


def _heads(dim: int, n_heads, n_kv_heads, head_dim) -> tuple:
    """(H, Hkv, hd), validated."""
    if not isinstance(n_heads, numbers.Integral) or n_heads < 1:
        raise ValueError(f"{NAME}: n_heads must be a positive int, got {n_heads!r}")
    kv = n_heads if n_kv_heads is None else n_kv_heads
    if not isinstance(kv, numbers.Integral) or kv < 1 or n_heads % kv:
        raise ValueError(f"{NAME}: n_kv_heads must be a positive divisor of n_heads={n_heads}, got {n_kv_heads!r}")
    hd = dim // n_heads if head_dim is None else head_dim
    if not isinstance(hd, numbers.Integral) or hd < 1:
        raise ValueError(f"{NAME}: head_dim must be a positive int (default dim // n_heads), got {hd!r} for "
                         f"dim={dim}, n_heads={n_heads}")
    return int(n_heads), int(kv), int(hd)


def _qk_norm(qk_norm) -> str:
    if qk_norm not in QK_NORMS:
        raise ValueError(f"{NAME}: qk_norm must be one of {QK_NORMS}, got {qk_norm!r}")
    return qk_norm


def init(rng, dim: int, *, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None,
         qk_norm: str = "none", bias: bool = False, dtype=np.float64) -> dict:
    """``wq/wk/wv/wo.weight`` (torch Linear init), q/k/v biases if ``bias``, ``q_norm/k_norm.weight`` (ones)."""
    heads, kv_heads, hd = _heads(dim, n_heads, n_kv_heads, head_dim)
    _qk_norm(qk_norm)
    params: dict = {}
    init_linear(rng, params, "wq", heads * hd, dim, bias=bias, dtype=dtype)
    init_linear(rng, params, "wk", kv_heads * hd, dim, bias=bias, dtype=dtype)
    init_linear(rng, params, "wv", kv_heads * hd, dim, bias=bias, dtype=dtype)
    init_linear(rng, params, "wo", dim, heads * hd, bias=False, dtype=dtype)
    if qk_norm != "none":
        q_size, k_size = (hd, hd) if qk_norm == "per-head" else (heads * hd, kv_heads * hd)
        params["q_norm.weight"] = ag.from_numpy(np.ones(q_size, dtype=dtype))
        params["k_norm.weight"] = ag.from_numpy(np.ones(k_size, dtype=dtype))
    return params


def _rms_norm(params, key: str, x, eps: float):
    """x * rsqrt(mean(x^2) + eps) * w over the last axis (w = ``params[key]`` of x.shape[-1:])."""
    weight = params.take(key, (x.shape[-1],))
    return x * ag.pow(ag.mean(x * x, axis=-1, keepdims=True) + eps, -0.5) * weight


def _split(x, heads: int, hd: int):
    """(B, L, heads*hd) -> (B, heads, L, hd)."""
    batch, length = x.shape[:2]
    return ag.transpose(ag.reshape(x, (batch, length, heads, hd)), (0, 2, 1, 3))


def _project(params, x, *, n_heads, n_kv_heads, head_dim, qk_norm, bias, norm_eps):
    """q (B, H, L, hd), k, v (B, Hkv, L, hd) after the projections and the qk-norm (before RoPE)."""
    dim = x.shape[-1]
    heads, kv_heads, hd = _heads(dim, n_heads, n_kv_heads, head_dim)
    q = linear(params, "wq", x, bias=bias, out=heads * hd)
    k = linear(params, "wk", x, bias=bias, out=kv_heads * hd)
    v = linear(params, "wv", x, bias=bias, out=kv_heads * hd)
    if _qk_norm(qk_norm) == "full":           # OLMo-2: over the whole projection, before the head split
        q, k = _rms_norm(params, "q_norm.weight", q, norm_eps), _rms_norm(params, "k_norm.weight", k, norm_eps)
    q, k, v = _split(q, heads, hd), _split(k, kv_heads, hd), _split(v, kv_heads, hd)
    if qk_norm == "per-head":                 # Qwen3: over hd, one weight shared by the heads
        q, k = _rms_norm(params, "q_norm.weight", q, norm_eps), _rms_norm(params, "k_norm.weight", k, norm_eps)
    return q, k, v


def _check_x(params, x):
    x = check_input(NAME, x, ndim=3, layout="(B, L, dim)")
    check_dtype(NAME, x, params)
    dim = params.shape("wq.weight")[1]
    if x.shape[-1] != dim:
        raise ValueError(f"{NAME}: x must have dim = {dim} features (last axis) to match wq.weight, "
                         f"got shape {x.shape}")
    return x


@uses_params(NAME)
def mha_gqa_cached(params, x, cache=None, *, n_heads: int, n_kv_heads: int | None = None,
                   head_dim: int | None = None, qk_norm: str = "none", bias: bool = False, rope: bool = True,
                   rope_layout: str = "interleaved", rope_theta: float = 500000.0, norm_eps: float = 1e-6):
    """One step with a KV cache: x (B, L, dim), cache None or (keys, values) each (B, Hkv, P, hd) holding the
    *rotated* keys of positions 0..P-1 -> (out (B, L, dim), (keys, values) (B, Hkv, P + L, hd)).

    The new tokens sit at positions start_pos = P ..; the causal mask is bottom-right (Meta's hstack of zeros
    and triu): query i sees the whole cache and the new keys up to itself.
    """
    x = _check_x(params, x)
    q, k, v = _project(params, x, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, qk_norm=qk_norm,
                       bias=bias, norm_eps=norm_eps)
    start = 0
    if cache is not None:
        past_k, past_v = (ag.as_tensor(c) for c in cache)
        if past_k.ndim != 4 or past_k.shape[:2] != k.shape[:2] or past_k.shape[3] != k.shape[3] \
                or past_v.shape != past_k.shape:
            raise ValueError(f"{NAME}: cache must be (keys, values) of shape (B, Hkv, P, hd) = "
                             f"{k.shape[:2] + ('P',) + k.shape[3:]}, got {past_k.shape} and {past_v.shape}")
        start = past_k.shape[2]
    if rope:
        q = apply_rope(q, layout=rope_layout, base=rope_theta, offset=start)
        k = apply_rope(k, layout=rope_layout, base=rope_theta, offset=start)
    if cache is not None:
        k, v = ag.concatenate([past_k, k], axis=2), ag.concatenate([past_v, v], axis=2)
    heads = ag.scaled_dot_product_attention(q, k, v, is_causal=True, alignment="bottom-right", enable_gqa=True,
                                            implementation="materialised")
    batch, heads_count, length, hd = heads.shape
    merged = ag.reshape(ag.transpose(heads, (0, 2, 1, 3)), (batch, length, heads_count * hd))
    return linear(params, "wo", merged, bias=False, out=x.shape[-1]), (k, v)


@uses_params(NAME)
def mha_gqa(params, x, *, train: bool = False, n_heads: int, n_kv_heads: int | None = None,
            head_dim: int | None = None, qk_norm: str = "none", bias: bool = False, rope: bool = True,
            rope_layout: str = "interleaved", rope_theta: float = 500000.0, norm_eps: float = 1e-6) -> ag.Tensor:
    """Causal grouped-query self-attention of x (B, L, dim) -> (B, L, dim) (no cache: positions 0..L-1).

    ``train`` has no effect (no dropout in LLaMA attention).
    """
    del train
    out, _ = mha_gqa_cached(params, x, None, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                            qk_norm=qk_norm, bias=bias, rope=rope, rope_layout=rope_layout, rope_theta=rope_theta,
                            norm_eps=norm_eps)
    return out


def _example(rng, dtype=np.float64):
    return (example(rng, (2, 6, 16), dtype),)


def _space(*qk_norms: str) -> Space:
    """Hkv dividing H (1 = MQA, H = MHA); hd = head_dim or dim // H, down to 1; RoPE rotates pairs, so it needs an
    even hd (Meta's view_as_complex; npattn refuses an odd one); sequences of 0 and 1 tokens."""
    norm_options = {} if qk_norms == ("none",) else {"norm_eps": Choice(1e-6, 1e-5)}
    return Space(config={"dim": Ints(1, 16), "n_kv_heads": Ints(1, 3), "_groups": Ints(1, 4),
                         "n_heads": Derived(lambda v: v.n_kv_heads * v._groups),
                         "head_dim": Choice(None, Ints(1, 6)), "qk_norm": Choice(*qk_norms), "bias": Bools()},
                 options={"rope": Bools(), "rope_layout": Choice("interleaved", "half"),
                          "rope_theta": Choice(500000.0, 10000.0), **norm_options},
                 inputs=tokens(length=Ints(0, 7)),
                 where=(lambda v: _head_dim(v) >= 1, lambda v: not v.rope or _head_dim(v) % 2 == 0))


def _head_dim(v) -> int:
    return v.dim // v.n_heads if v.head_dim is None else v.head_dim


register(Mechanism(
    name=NAME, family="transformer", paper=PAPER, init=init, apply_fn=mha_gqa,
    config={"dim": 16, "n_heads": 4, "n_kv_heads": 2}, example_input=_example, channel_axis=2,
    space=_space("none"),
    description="LLaMA-style grouped-query attention: RoPE (interleaved), causal, query head h -> kv head h // 2",
))

register(Mechanism(
    name="mha-gqa-qk-norm", family="transformer", paper=PAPER, init=init, apply_fn=mha_gqa,
    config={"dim": 16, "n_heads": 4, "n_kv_heads": 1, "head_dim": 6, "qk_norm": "per-head", "bias": True},
    example_input=_example, channel_axis=2, space=_space("per-head", "full"),
    description="multi-query attention with Qwen3-style per-head qk RMSNorm, q/k/v biases and head_dim != dim/H",
))
