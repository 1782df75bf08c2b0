"""BoTNet's multi-head self-attention with 2-D relative position logits (Srinivas, Lin, Parmar, Shlens, Abbeel,
Vaswani, "Bottleneck Transformers for Visual Recognition", CVPR 2021): the authors' TensorFlow gist
(``aravindsrinivas/56359b79f0ce4449bcb04ab4b56a57a2``: ``relative_logits``, ``relpos_self_attention``, ``MHSA``)
with timm's ``BottleneckAttn`` parameter names.

On x (B, C, H, W), heads M, q/k head dim d, v head dim d_v, scale s = d^-1/2::

    [q; k; v]          = W_qkv x (+ b)               1x1 conv C -> 2 M d + M d_v, split [q | k | v], heads inside
    logits[(x,y),(x',y')] = s (q . k' + q . (rel_h[x' - x + H - 1] + rel_w[y' - y + W - 1]))
    y                  = softmax(logits) v            (B, M d_v, H, W); then AvgPool2d(2) when stride = 2

The relative offsets are key - query (the gist's ``rel_to_abs``: out[i, j] = rel[i, j - i + L - 1]);
``rel_h`` (2H - 1, d) and ``rel_w`` (2W - 1, d) are shared by all heads.  There is no output projection.

Scaling: the gist multiplies q by s *before* both products, so the relative term is scaled too
(``scale_pos_embed=True``, the default here).  timm's default ``scale_pos_embed=False`` leaves it unscaled,
``s q.k + q.rel`` (the two differ by 0.83 on the spec sheet's check): pass ``scale_pos_embed=False`` for timm's
models.  The gist tiles the height branch by H where W is meant (right on square maps only); here H != W is
handled correctly, as timm does.

Parameters (timm's names): ``qkv.weight`` (2 M d + M d_v, C, 1, 1) [+ ``qkv.bias``, ``qkv_bias``],
``pos_embed.height_rel`` (2H - 1, d), ``pos_embed.width_rel`` (2W - 1, d): the map size is fixed by them.
d and d_v follow timm: d_v = dim_out / M, d = ``dim_head`` or make_divisible(dim_out qk_ratio, 8) / M.
Init as timm: trunc_normal with std fan_in^-1/2 (qkv) and s (the embeddings).  ``num_heads``, ``dim_out``,
``dim_head``, ``qk_ratio``, ``qkv_bias`` and ``stride`` are the structure (keywords of :func:`init` and
:func:`botnet`).
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, conv_shapes, example, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Derived, Ints, Space, image
from ._parts import check_positive_int, trunc_normal

NAME = "botnet"


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """timm's ``make_divisible``: round to a multiple of ``divisor``, never below 90% of ``value``."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def head_dims(dim: int, num_heads: int, dim_out=None, dim_head=None, qk_ratio: float = 1.0) -> tuple:
    """(M, d, d_v) as timm's BottleneckAttn computes them."""
    heads = check_positive_int(NAME, "num_heads", num_heads)
    out = dim if dim_out is None else check_positive_int(NAME, "dim_out", dim_out)
    if out % heads:
        raise ValueError(f"{NAME}: dim_out={out} must be divisible by num_heads={heads}")
    if dim_head is not None:
        qk = check_positive_int(NAME, "dim_head", dim_head)
    else:
        qk = make_divisible(out * qk_ratio, divisor=8) // heads
        if qk < 1:
            raise ValueError(f"{NAME}: qk_ratio={qk_ratio} gives a q/k head dim of 0")
    return heads, qk, out // heads


def init(rng, dim: int, feat_size, *, num_heads: int = 4, dim_out: int | None = None, dim_head: int | None = None,
         qk_ratio: float = 1.0, qkv_bias: bool = False, stride: int = 1, dtype=np.float64) -> dict:
    """Parameters of timm's ``BottleneckAttn(dim, dim_out, feat_size, stride, num_heads, ...)`` with timm's init."""
    heads, qk, v = head_dims(dim, num_heads, dim_out, dim_head, qk_ratio)
    _check_stride(stride)
    height, width = (feat_size, feat_size) if isinstance(feat_size, int) else tuple(feat_size)
    rows = 2 * heads * qk + heads * v
    params = {"qkv.weight": trunc_normal(rng, (rows, dim, 1, 1), dim ** -0.5, dtype)}
    if qkv_bias:
        params["qkv.bias"] = ag.from_numpy(rng.uniform(-dim ** -0.5, dim ** -0.5, rows).astype(dtype))
    params["pos_embed.height_rel"] = trunc_normal(rng, (2 * height - 1, qk), qk ** -0.5, dtype)
    params["pos_embed.width_rel"] = trunc_normal(rng, (2 * width - 1, qk), qk ** -0.5, dtype)
    return params


def _check_stride(stride) -> int:
    if stride not in (1, 2) or isinstance(stride, bool):
        raise ValueError(f"{NAME}: stride must be 1 or 2 (AvgPool2d(2) after the attention), got {stride!r}")
    return stride


def relative_embeddings(rel, length: int) -> ag.Tensor:
    """(2L - 1, d) -> (L, L, d) with [i, j] = rel[j - i + L - 1]: the key - query offset of ``rel_to_abs``."""
    index = np.arange(length)[None, :] - np.arange(length)[:, None] + length - 1
    return ag.getitem(rel, ag.from_numpy(index))


def _relative_attention(query, key, value, rel_h, rel_w, height: int, width: int, scale: float,
                        scale_pos_embed: bool) -> ag.Tensor:
    """softmax(s q.k + [s] q.rel) v: the logits + bias + softmax step.

    query, key (BM, HW, d), value (BM, HW, d_v) -> (BM, HW, d_v).
    """
    batch_heads, tokens, _ = query.shape
    grid = ag.reshape(query, (batch_heads, height, width, query.shape[-1]))             # q at (x, y)
    logits_h = ag.einsum("bxyd,xzd->bxyz", grid, relative_embeddings(rel_h, height))  # q . rel_h[x' - x + H - 1]
    logits_w = ag.einsum("bxyd,yzd->bxyz", grid, relative_embeddings(rel_w, width))   # q . rel_w[y' - y + W - 1]
    relative = ag.expand_dims(logits_h, 4) + ag.expand_dims(logits_w, 3)               # (BM, H, W, H', W')
    relative = ag.reshape(relative, (batch_heads, tokens, tokens))
    # composed, not the SDPA core: timm scales the product (q.k) s, or (q.k + q.rel) s, where the core scales q
    content = ag.matmul(query, ag.swapaxes(key, 1, 2))                                 # q . k'
    logits = (content + relative) * scale if scale_pos_embed else content * scale + relative
    return ag.matmul(ag.softmax(logits, axis=-1), value)


@uses_params(NAME)
def botnet(params, x, *, train: bool = False, num_heads: int = 4, dim_out: int | None = None,
           dim_head: int | None = None, qk_ratio: float = 1.0, qkv_bias: bool = False, stride: int = 1,
           scale_pos_embed: bool = True) -> ag.Tensor:
    """BoTNet MHSA on x (B, C, H, W); returns (B, dim_out, H / stride, W / stride).

    The structure keywords as given to :func:`init`; the map must be the (H, W) of the relative embeddings.
    ``scale_pos_embed``: True (default) scales the relative logits too, as the authors' gist; False is timm's
    default.  ``train`` has no effect.
    """
    dim = params.shape("qkv.weight")[1]
    heads, qk, v = head_dims(dim, num_heads, dim_out, dim_head, qk_ratio)
    _check_stride(stride)
    x = check_input(NAME, x, channels=dim)
    check_dtype(NAME, x, params)
    batch, _, height, width = x.shape
    take_all(params, {**conv_shapes("qkv", 2 * heads * qk + heads * v, dim, bias=qkv_bias),
                      "pos_embed.height_rel": (2 * height - 1, qk), "pos_embed.width_rel": (2 * width - 1, qk)})
    qkv = ag.conv2d(x, params["qkv.weight"], params["qkv.bias"] if qkv_bias else None)   # (B, 2Md + Md_v, H, W)
    q, k, value = ag.split(qkv, [heads * qk, 2 * heads * qk], axis=1)
    query = ag.swapaxes(ag.reshape(q, (batch * heads, qk, height * width)), 1, 2)        # (BM, HW, d)
    key = ag.swapaxes(ag.reshape(k, (batch * heads, qk, height * width)), 1, 2)
    value = ag.swapaxes(ag.reshape(value, (batch * heads, v, height * width)), 1, 2)     # (BM, HW, d_v)
    out = _relative_attention(query, key, value, params["pos_embed.height_rel"], params["pos_embed.width_rel"],
                              height, width, qk ** -0.5, scale_pos_embed)
    out = ag.reshape(ag.swapaxes(out, 1, 2), (batch, heads * v, height, width))
    return ag.avg_pool2d(out, 2, 2) if stride == 2 else out


register(Mechanism(
    name=NAME, family="transformer",
    paper=Paper("Srinivas, Lin, Parmar, Shlens, Abbeel, Vaswani", "Bottleneck Transformers for Visual Recognition",
                "CVPR", 2021),
    init=init, apply_fn=botnet, config={"dim": 8, "feat_size": (4, 5), "num_heads": 2},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 8, 4, 5), dtype),),
    min_spatial=4,
    # feat_size is the map's (H, W) (the relative tables fix it), down to 1 x 1 and non-square; dim_out a multiple
    # of the heads (None = dim, then dim must be one); d from dim_head or make_divisible(dim_out qk_ratio, 8) / M;
    # stride 2 pools with AvgPool2d(2), which PyTorch refuses on a side of 1
    space=Space(config={"num_heads": Ints(1, 4), "dim": Ints(1, 12), "_v_head_dim": Ints(1, 3),
                        "dim_out": Choice(None, Derived(lambda v: v.num_heads * v._v_head_dim)),
                        "dim_head": Choice(None, Ints(1, 4)), "qk_ratio": Choice(1.0, 0.5, 2.0),
                        "qkv_bias": Bools(), "stride": Choice(1, 2),
                        "feat_size": Derived(lambda v: (v.height, v.width))},
                options={"scale_pos_embed": Bools()}, inputs=image("dim", height=Ints(1, 6)),
                where=(lambda v: v.dim_out is not None or v.dim % v.num_heads == 0,
                       lambda v: v.stride == 1 or min(v.height, v.width) >= 2)),
    description="BoTNet MHSA: content logits plus 2-D relative position logits (key - query offsets), no proj",
))
