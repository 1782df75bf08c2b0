"""CLIP's attention pooling (``AttentionPool2d``, Radford et al., "Learning Transferable Visual Models From
Natural Language Supervision", ICML 2021; ``openai/CLIP`` ``clip/model.py``): the global average pool of the
ModifiedResNet replaced by one multi-head attention query.

On x (B, C, H, W) with H = W = s (``spacial_dim``), heads h, d = C / h::

    t      = [mean_n x_n ; x_1 .. x_HW] + P        (B, HW + 1, C): the mean of the *raw* tokens first, then
                                                   the positional embedding P (HW + 1, C) on every token
    q      = q_proj(t_0)                           one query: the mean token
    k, v   = k_proj(t), v_proj(t)                  all HW + 1 tokens
    y      = c_proj(merge_heads(softmax(d^-1/2 q k^T) v))      (B, output_dim)

(``F.multi_head_attention_forward`` with separate q/k/v weights and in_proj_bias = [q | k | v] biases, as
the official code; it takes every token as a query and keeps token 0, which is the same output.)  The grid
is fixed: P is learnt for s x s, so any other map size is a ValueError (timm's variant resamples P).

Parameters (CLIP's names): ``positional_embedding`` (s^2 + 1, C), ``q_proj.*``, ``k_proj.*``,
``v_proj.*`` (C, C) + bias, ``c_proj.weight`` (output_dim, C) + bias.  Init as CLIP's ModifiedResNet:
P ~ N(0, 1) / sqrt(C), the four projection weights ~ N(0, C^-1), biases PyTorch's default.  ``num_heads`` and
``output_dim`` are the structure (keywords of :func:`init` and :func:`attention_pool`).
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import check_dtype, check_input, example, init_linear, linear, linear_shapes, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Choice, Derived, Ints, Space, image
from ._parts import check_positive_int, merge_heads, normal, softmax_attention, split_heads

NAME = "attention-pool"
PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def init(rng, spacial_dim: int, embed_dim: int, *, num_heads: int, output_dim: int | None = None,
         dtype=np.float64) -> dict:
    """Parameters of ``AttentionPool2d(spacial_dim, embed_dim, num_heads, output_dim)`` with CLIP's init."""
    side = check_positive_int(NAME, "spacial_dim", spacial_dim)
    heads, out = _widths(embed_dim, num_heads, output_dim)
    params = {"positional_embedding": backend.from_numpy(
        (rng.standard_normal((side * side + 1, embed_dim)) / math.sqrt(embed_dim)).astype(dtype))}
    std = embed_dim ** -0.5
    for prefix, width in (("k_proj", embed_dim), ("q_proj", embed_dim), ("v_proj", embed_dim), ("c_proj", out)):
        init_linear(rng, params, prefix, width, embed_dim, dtype=dtype)          # bias: Linear's default init
        params[f"{prefix}.weight"] = normal(rng, (width, embed_dim), std, dtype)
    return params


def _widths(embed_dim: int, num_heads: int, output_dim) -> tuple:
    heads = check_positive_int(NAME, "num_heads", num_heads)
    if embed_dim % heads:
        raise ValueError(f"{NAME}: embed_dim={embed_dim} must be divisible by num_heads={heads}")
    return heads, embed_dim if output_dim is None else check_positive_int(NAME, "output_dim", output_dim)


@uses_params(NAME)
def attention_pool(params, x, *, train: bool = False, num_heads: int, output_dim: int | None = None) -> ag.Tensor:
    """CLIP ``AttentionPool2d`` on x (B, C, s, s); returns (B, output_dim).

    ``num_heads`` and ``output_dim`` as given to :func:`init`; the map must be the s x s grid of
    ``positional_embedding`` (s^2 + 1 rows).  ``train`` has no effect (dropout 0, no normalisation).
    """
    dim = params.shape("q_proj.weight")[-1]
    heads, out = _widths(dim, num_heads, output_dim)
    x = check_input(NAME, x, channels=dim)
    check_dtype(NAME, x, params)
    batch, _, height, width = x.shape
    if height != width:
        raise ValueError(f"{NAME}: x must be a square s x s map (CLIP's fixed grid), got spatial size "
                         f"{(height, width)}")
    shapes = {"positional_embedding": (height * width + 1, dim)}
    for prefix in PROJECTIONS:
        shapes.update(linear_shapes(prefix, dim, dim))
    shapes.update(linear_shapes("c_proj", out, dim))
    take_all(params, shapes)                # a map of another size than P's grid: P's shape error names it
    tokens = ag.swapaxes(ag.reshape(x, (batch, dim, height * width)), 1, 2)            # (B, HW, C)
    tokens = ag.concatenate([ag.mean(tokens, axis=1, keepdims=True), tokens], axis=1)  # [mean; x], raw tokens
    tokens = tokens + params["positional_embedding"]                                  # + P on every token
    query = split_heads(linear(params, "q_proj", tokens[:, :1]), heads)              # (B, h, 1, d): mean token
    key = split_heads(linear(params, "k_proj", tokens), heads)                        # (B, h, HW + 1, d)
    value = split_heads(linear(params, "v_proj", tokens), heads)
    pooled = softmax_attention(query, key, value, scale=(dim // heads) ** -0.5)      # softmax(d^-1/2 q k^T) v
    return linear(params, "c_proj", merge_heads(pooled)[:, 0], out=out)


register(Mechanism(
    name=NAME, family="transformer",
    paper=Paper("Radford, Kim, Hallacy, Ramesh, Goh, Agarwal, Sastry, Askell, Mishkin, Clark, Krueger, Sutskever",
                "Learning Transferable Visual Models From Natural Language Supervision", "ICML", 2021),
    init=init, apply_fn=attention_pool,
    config={"spacial_dim": 3, "embed_dim": 16, "num_heads": 4, "output_dim": 12},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 3, 3), dtype),),
    min_spatial=3,
    # the map is P's s x s grid (any other size is refused), down to 1 x 1; C = heads * d with d = 1; an
    # output_dim other than C (None = C)
    space=Space(config={"spacial_dim": Derived(lambda v: v.height), "num_heads": Ints(1, 4), "_head_dim": Ints(1, 4),
                        "embed_dim": Derived(lambda v: v.num_heads * v._head_dim),
                        "output_dim": Choice(None, Ints(1, 12))},
                inputs=image("embed_dim", height=Ints(1, 5), width=Derived(lambda v: v.height)),
                where=(lambda v: v.width == v.height,)),
    description="CLIP attention pooling: the mean token queries all tokens (+ learnt positions) through MHA",
))
