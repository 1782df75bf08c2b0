"""Separable self-attention of MobileViT-v2 (Mehta, Rastegari, "Separable Self-attention for Mobile Vision
Transformers", TMLR 2023; ``apple/ml-cvnets`` ``cvnets/layers/linear_attention.py`` ``LinearSelfAttention``):
attention linear in the number of patches, through one latent query.

On unfolded patches x (B, C, P, N) -- P pixels per patch, N patches (:func:`unfold_patches`)::

    [i; K; V] = W_qkv x + b                     1x1 conv C -> 1 + 2C: channel 0 is i, then C of K, then C of V
    c         = softmax_n(i)                    (B, 1, P, N): over the N patches, separately per pixel p
    cv        = sum_n K c                       (B, C, P, 1): the context vector
    y         = W_out (ReLU(V) * cv) + b_out    (B, C, P, N)

No heads, no scale.  Cross-attention (``x_prev`` (B, C, P, M)): i and K come from x_prev through the first
1 + C rows of ``qkv_proj``, V from x through the last C rows (the official ``_forward_cross_attn``).

Patches: timm's ``MobileVitV2Block`` unfolds a (B, C, H, W) map whose sides are multiples of the patch
(ph, pw) with ``F.unfold(kernel = stride = (ph, pw))``: pixels row-major inside a patch, patches row-major
(:func:`unfold_patches` / :func:`fold_patches`, an exact permutation and its inverse).  It first resizes other
sizes (bilinear, align_corners=True); that resize is not part of the attention and is left to the caller.

Parameters (timm's names; ml-cvnets nests the convs: ``qkv_proj.block.conv.weight``, see
:func:`cvnets_key_map`): ``qkv_proj.weight`` (1 + 2C, C, 1, 1), ``out_proj.weight`` (C, C, 1, 1), and with
``bias`` (default True, structure: a keyword of :func:`init` and :func:`mobilevit_v2`) their biases.
Attention dropout (0 by default) is not modelled.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, conv, conv_shapes, example, init_conv, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import BATCH, Bools, Choice, Inputs, Ints, Space
from ._parts import check_pair
from ._spaces import seeded_normal

NAME = "mobilevit-v2"


def init(rng, embed_dim: int, *, bias: bool = True, dtype=np.float64) -> dict:
    """Parameters of ``LinearSelfAttention(embed_dim, bias)`` with PyTorch's conv init.

    (ml-cvnets re-initialises its convs with Kaiming/Xavier by its ``--model.layer.conv-init``; timm keeps
    PyTorch's default.)
    """
    params: dict = {}
    init_conv(rng, params, "qkv_proj", 1 + 2 * embed_dim, embed_dim, 1, bias=bias, dtype=dtype)
    init_conv(rng, params, "out_proj", embed_dim, embed_dim, 1, bias=bias, dtype=dtype)
    return params


def cvnets_key_map(bias: bool = True) -> dict:
    """``key_map`` for :func:`npattn.interop.torch.from_torch_state_dict` from ml-cvnets' nested names."""
    kinds = ("weight", "bias") if bias else ("weight",)
    return {f"{layer}.block.conv.{kind}": f"{layer}.{kind}" for layer in ("qkv_proj", "out_proj") for kind in kinds}


def unfold_patches(x, patch_size) -> ag.Tensor:
    """(B, C, H, W) -> (B, C, P, N), P = ph pw pixels row-major in a patch, N = (H/ph)(W/pw) patches row-major.

    timm's ``F.unfold(x, kernel_size=patch, stride=patch).reshape(B, C, P, N)``, as reshapes and a transpose.
    """
    ph, pw = check_pair(NAME, "patch_size", patch_size)
    x = ag.as_tensor(x)
    b, c, h, w = x.shape
    if h % ph or w % pw:
        raise ValueError(f"{NAME}: the map {(h, w)} must be a multiple of patch_size {(ph, pw)} (timm resizes first)")
    t = ag.reshape(x, (b, c, h // ph, ph, w // pw, pw))
    return ag.reshape(ag.transpose(t, (0, 1, 3, 5, 2, 4)), (b, c, ph * pw, (h // ph) * (w // pw)))


def fold_patches(t, output_size, patch_size) -> ag.Tensor:
    """(B, C, P, N) -> (B, C, H, W): the inverse of :func:`unfold_patches`."""
    ph, pw = check_pair(NAME, "patch_size", patch_size)
    h, w = output_size
    t = ag.as_tensor(t)
    b, c = t.shape[:2]
    t = ag.reshape(t, (b, c, ph, pw, h // ph, w // pw))
    return ag.reshape(ag.transpose(t, (0, 1, 4, 2, 5, 3)), (b, c, h, w))


def _context_vector(query, key) -> ag.Tensor:
    """cv = sum_n K softmax_n(i): the one-query logits + softmax step.  query (B, 1, P, N), key (B, C, P, N)."""
    scores = ag.softmax(query, axis=-1)                               # c = softmax over the patches
    return ag.sum(key * scores, axis=-1, keepdims=True)               # (B, C, P, 1)


@uses_params(NAME)
def mobilevit_v2(params, x, *, train: bool = False, bias: bool = True, x_prev=None) -> ag.Tensor:
    """Separable self-attention on patches x (B, C, P, N); returns (B, C, P, N).

    ``bias`` as given to :func:`init`; ``x_prev`` (B, C, P, M) makes it cross-attention (query and keys
    from ``x_prev``).  ``train`` has no effect (no dropout).
    """
    dim = params.shape("out_proj.weight")[0]
    take_all(params, {**conv_shapes("qkv_proj", 1 + 2 * dim, dim, bias=bias),
                      **conv_shapes("out_proj", dim, dim, bias=bias)})
    x = check_input(NAME, x, channels=dim, layout="(B, C, P, N)")
    check_dtype(NAME, x, params)
    if x_prev is None:
        qkv = conv(params, "qkv_proj", x, bias=bias, out=1 + 2 * dim)                 # [i; K; V]
        query, key, value = qkv[:, :1], qkv[:, 1:1 + dim], qkv[:, 1 + dim:]
    else:
        x_prev = check_input(NAME, x_prev, arg="x_prev", channels=dim, layout="(B, C, P, M)")
        check_dtype(NAME, x_prev, params, arg="x_prev")
        if x_prev.shape[0] != x.shape[0] or x_prev.shape[2] != x.shape[2]:
            raise ValueError(f"{NAME}: x_prev {x_prev.shape} must have the batch size and pixels per patch P of "
                             f"x {x.shape}")
        weight = ag.as_tensor(params["qkv_proj.weight"])
        b = ag.as_tensor(params["qkv_proj.bias"]) if bias else None
        query_key = ag.conv2d(x_prev, weight[:1 + dim], None if b is None else b[:1 + dim])   # [i; K] of x_prev
        value = ag.conv2d(x, weight[1 + dim:], None if b is None else b[1 + dim:])          # V of x
        query, key = query_key[:, :1], query_key[:, 1:]
    context = _context_vector(query, key)
    return conv(params, "out_proj", ag.relu(value) * context, bias=bias, out=dim)      # W_out (ReLU(V) cv)


def _patches() -> Inputs:
    """x (B, C, P, N): P pixels per patch, N patches, both down to 1 (one patch: a softmax over one value; the 1x1
    convs refuse an empty P or N, as PyTorch's)."""
    dims = {"batch": BATCH, "pixels": Ints(1, 6), "patches": Ints(1, 6)}
    return Inputs(dims, lambda rng, v, dtype: (example(rng, (v.batch, v.embed_dim, v.pixels, v.patches), dtype),))


register(Mechanism(
    name=NAME, family="transformer",
    paper=Paper("Mehta, Rastegari", "Separable Self-attention for Mobile Vision Transformers", "TMLR", 2023),
    init=init, apply_fn=mobilevit_v2, config={"embed_dim": 8, "bias": True},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 8, 4, 5), dtype),),
    # self- and cross-attention (x_prev (B, C, P, M), M patches of its own, drawn from a seed)
    space=Space(config={"embed_dim": Ints(1, 12), "bias": Bools()},
                options={"_seed": Ints(0, 1000), "_prev_patches": Ints(1, 6),
                         "x_prev": Choice(None, seeded_normal(lambda v: (v.batch, v.embed_dim, v.pixels,
                                                                         v._prev_patches)))},
                inputs=_patches()),
    description="MobileViT-v2 separable self-attention: one latent query, softmax over patches, ReLU(V) gating",
))
