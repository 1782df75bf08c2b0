"""ViT multi-head self-attention as timm's ``Attention`` (Dosovitskiy et al., ICLR 2021; timm
``timm/layers/attention.py``), with the optional per-head query/key normalisation of ViT-22B-style models.

On tokens x (B, N, C), heads h, head dim d (``attn_head_dim``, default C / h), A = h d::

    [q; k; v] = x W_qkv^T (+ b_qkv)               (B, N, 3A): [q | k | v], heads inside each third
    q, k      = LN_q(q), LN_k(k)                  qk_norm: one LayerNorm over d, affine (d,) shared by heads
    a         = softmax(d^-1/2 q k^T + mask)      the scale after the norm (putting it first loses it)
    y         = proj(norm(merge_heads(a v)))      norm = LayerNorm(A) only with scale_norm

As timm: the norms are LayerNorms with ``norm_eps`` (ViT passes ``LayerNorm(eps=1e-6)``; default here);
``qkv_bias`` defaults to False (timm's ``Attention``; ``VisionTransformer`` builds it with True), ``proj_bias``
to True.  Masks follow ``F.scaled_dot_product_attention`` (timm's default fused path): a boolean mask is
True where a key takes part, a float mask is added to the logits (its ``-inf`` entries leave keys out), and
``is_causal`` keeps keys j <= i.  A query row with no key left gives zeros with zero gradient
(``masked_rows="zero"``: torch SDPA on CPU, 2.13), or NaN (``"nan"``: timm's manual path, whose softmax
of an all ``-inf`` row is NaN).  Attention dropout is not modelled (eval mode).

Parameters (timm's names): ``qkv.weight`` (3A, C) [+ bias], ``q_norm.weight/bias`` and ``k_norm.*`` (d,)
[``qk_norm``], ``norm.weight/bias`` (A,) [``scale_norm``], ``proj.weight`` (C_out, A) [+ bias].  The
structure -- ``num_heads``, ``attn_head_dim``, ``dim_out``, ``qkv_bias``, ``qk_norm``, ``scale_norm``,
``proj_bias`` -- is a keyword of :func:`init` and :func:`vit_attention` alike.
"""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import example, init_layer_norm, init_linear, layer_norm, linear, linear_shapes, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Derived, Ints, Space, tokens
from ._parts import (
    check_choice,
    check_positive_int,
    check_tokens,
    merge_heads,
    softmax_attention,
    split_heads,
)
from ._spaces import seeded_bool

NAME = "vit-attention"
MASKED_ROWS = ("zero", "nan")


def _widths(dim: int, num_heads: int, attn_head_dim, dim_out) -> tuple:
    """(heads, head dim d, attention width A = h d, output width) with timm's defaults."""
    heads = check_positive_int(NAME, "num_heads", num_heads)
    if attn_head_dim is None:
        if dim % heads:
            raise ValueError(f"{NAME}: dim={dim} must be divisible by num_heads={heads} (or pass attn_head_dim)")
        head_dim = dim // heads
    else:
        head_dim = check_positive_int(NAME, "attn_head_dim", attn_head_dim)
    out = dim if dim_out is None else check_positive_int(NAME, "dim_out", dim_out)
    return heads, head_dim, heads * head_dim, out


def init(rng, dim: int, *, num_heads: int, attn_head_dim: int | None = None, dim_out: int | None = None,
         qkv_bias: bool = False, qk_norm: bool = False, scale_norm: bool = False, proj_bias: bool = True,
         dtype=np.float64) -> dict:
    """Parameters of timm's ``Attention(dim, num_heads, ...)``: PyTorch's Linear init, LayerNorms at (1, 0)."""
    heads, head_dim, width, out = _widths(dim, num_heads, attn_head_dim, dim_out)
    params: dict = {}
    init_linear(rng, params, "qkv", 3 * width, dim, bias=qkv_bias, dtype=dtype)
    if qk_norm:
        init_layer_norm(params, "q_norm", head_dim, dtype=dtype)
        init_layer_norm(params, "k_norm", head_dim, dtype=dtype)
    if scale_norm:
        init_layer_norm(params, "norm", width, dtype=dtype)
    init_linear(rng, params, "proj", out, width, bias=proj_bias, dtype=dtype)
    return params


def _check_all(params, dim, head_dim, width, out, qkv_bias, qk_norm, scale_norm, proj_bias) -> None:
    shapes = linear_shapes("qkv", 3 * width, dim, bias=qkv_bias)
    for prefix, size, present in (("q_norm", head_dim, qk_norm), ("k_norm", head_dim, qk_norm),
                                  ("norm", width, scale_norm)):
        if present:
            shapes.update({f"{prefix}.weight": (size,), f"{prefix}.bias": (size,)})
    shapes.update(linear_shapes("proj", out, width, bias=proj_bias))
    take_all(params, shapes)


def _mask(attn_mask, is_causal: bool, n: int, dtype):
    """(keep mask or None, additive bias or None) from timm/SDPA's ``attn_mask`` / ``is_causal``."""
    if attn_mask is not None and is_causal:
        raise ValueError(f"{NAME}: pass attn_mask or is_causal, not both (as scaled_dot_product_attention)")
    if is_causal:
        return ag.from_numpy(np.tril(np.ones((n, n), dtype=bool))), None
    if attn_mask is None:
        return None, None
    mask = attn_mask.data if isinstance(attn_mask, ag.Tensor) else attn_mask
    if not hasattr(mask, "dtype") or mask.ndim < 2 or tuple(mask.shape[-2:]) not in ((n, n), (1, n), (n, 1), (1, 1)):
        raise ValueError(f"{NAME}: attn_mask must be an array broadcastable to (B, heads, {n}, {n}), "
                         f"got {getattr(mask, 'shape', type(mask).__name__)}")
    if mask.dtype == bool:
        return mask, None
    if np.dtype(mask.dtype) != np.dtype(dtype):
        raise TypeError(f"{NAME}: attn_mask must be boolean or of the parameters' dtype {dtype}, got {mask.dtype}")
    keep = mask != -ag.xp.inf                                   # SDPA: -inf entries leave a key out
    return keep, ag.where(keep, attn_mask, 0.0)


@uses_params(NAME)
def vit_attention(params, x, *, train: bool = False, num_heads: int, attn_head_dim: int | None = None,
                  dim_out: int | None = None, qkv_bias: bool = False, qk_norm: bool = False, scale_norm: bool = False,
                  proj_bias: bool = True, norm_eps: float = 1e-6, attn_mask=None, is_causal: bool = False,
                  masked_rows: str = "zero") -> ag.Tensor:
    """timm ``Attention`` on tokens x (B, N, C); returns (B, N, C_out).

    The structure keywords as given to :func:`init`; ``norm_eps`` of the q/k (and scale) LayerNorms;
    ``attn_mask`` (boolean, True = attend, or additive float) broadcastable to (B, heads, N, N);
    ``is_causal``; ``masked_rows`` ("zero" | "nan") for a query that no key is left to.  ``train`` has no
    effect (no dropout).
    """
    check_choice(NAME, "masked_rows", masked_rows, MASKED_ROWS)
    dim = params.shape("qkv.weight")[-1]
    heads, head_dim, width, out = _widths(dim, num_heads, attn_head_dim, dim_out)
    _check_all(params, dim, head_dim, width, out, qkv_bias, qk_norm, scale_norm, proj_bias)
    x = check_tokens(NAME, x, params, channels=dim, ndim=3, layout="(B, N, C)")
    keep, bias = _mask(attn_mask, is_causal, x.shape[1], params.dtype)
    qkv = linear(params, "qkv", x, bias=qkv_bias, out=3 * width)                     # (B, N, 3A)
    query, key, value = (split_heads(part, heads) for part in ag.split(qkv, 3, axis=-1))   # (B, h, N, d)
    if qk_norm:
        query = layer_norm(params, "q_norm", query, head_dim, norm_eps)               # LN over d, shared by heads
        key = layer_norm(params, "k_norm", key, head_dim, norm_eps)
    context = softmax_attention(query, key, value, scale=head_dim ** -0.5, bias=bias, mask=keep,
                                masked_rows=masked_rows)                              # softmax(d^-1/2 q k^T) v
    context = merge_heads(context)                                                    # (B, N, A)
    if scale_norm:
        context = layer_norm(params, "norm", context, width, norm_eps)
    return linear(params, "proj", context, bias=proj_bias, out=out)


#: attn_mask shapes broadcastable to (B, heads, N, N): per pair, per sample and head, per key (a padding mask),
#: per query (whole rows masked)
_MASK_SHAPES = {"pairs": lambda v: (v.length, v.length),
                "per_head": lambda v: (v.batch, v.num_heads, v.length, v.length),
                "keys": lambda v: (1, v.length), "queries": lambda v: (v.length, 1)}


def _attn_mask(kind: str) -> Derived:
    """The boolean mask of a ``_mask_shape`` (True = attend), or the additive float one (-inf where False, else
    a finite bias in [-1, 1), the SDPA convention), from the drawn seed."""
    keep = seeded_bool(lambda v: _MASK_SHAPES[v._mask_shape](v))

    def build(v):
        mask = keep.fn(v)
        if kind == "bool":
            return mask
        bias = np.random.default_rng(v._seed + 1).uniform(-1.0, 1.0, mask.shape)
        return backend.from_numpy(np.where(backend.to_numpy(mask), bias, -np.inf))
    return Derived(build)


register(Mechanism(
    name=NAME, family="transformer",
    paper=Paper("Dosovitskiy, Beyer, Kolesnikov, Weissenborn, Zhai, Unterthiner, Dehghani, Minderer, Heigold, "
                "Gelly, Uszkoreit, Houlsby", "An Image is Worth 16x16 Words: Transformers for Image Recognition "
                "at Scale", "ICLR", 2021),
    init=init, apply_fn=vit_attention,
    config={"dim": 16, "num_heads": 4, "qkv_bias": True, "qk_norm": True},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 7, 16), dtype),),
    channel_axis=2,
    # d = attn_head_dim, or C / h (then h must divide C), down to 1; C_out != C; every norm and bias; masks of
    # every broadcast shape, boolean and additive, with fully masked rows (both policies); causal; 1 token
    space=Space(config={"num_heads": Ints(1, 4), "dim": Ints(1, 16), "attn_head_dim": Choice(None, Ints(1, 4)),
                        "dim_out": Choice(None, Ints(1, 8)), "qkv_bias": Bools(), "qk_norm": Bools(),
                        "scale_norm": Bools(), "proj_bias": Bools()},
                options={"norm_eps": Choice(1e-6, 1e-5), "is_causal": Bools(), "masked_rows": Choice("zero", "nan"),
                         "_seed": Ints(0, 1000), "_mask_shape": Choice(*_MASK_SHAPES),
                         "attn_mask": Choice(None, _attn_mask("bool"), _attn_mask("float"))},
                # down to an empty sequence (0 tokens: torch's softmax over an empty axis is the empty result)
                inputs=tokens(length=Ints(0, 7)),
                where=(lambda v: v.attn_head_dim is not None or v.dim % v.num_heads == 0,
                       lambda v: not (v.is_causal and v.attn_mask is not None))),
    description="timm ViT multi-head self-attention: fused qkv, optional per-head LayerNorm of q and k",
))
