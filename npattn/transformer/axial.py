"""Position-sensitive axial attention (Axial-DeepLab, Wang, Green, Adam, Yuille, Chen, ECCV 2020), the
official layer ``AxialAttention(in_planes, out_planes, groups, kernel_size, stride, width)`` of
``csrhddlam/axial-deeplab`` (``lib/models/axialnet.py``).

One layer attends along one axis of x (B, C_in, H, W): H (``width=False``) or W (``width=True``), over the
whole axis (the span K must equal its length: global axial attention).  With O output planes, G groups,
gp = O / G channels per group, for every line of the other axis::

    [q; k; v] = BN_qkv(W_qkv x)                  1x1 Conv1d C_in -> 2O, no bias; group g owns [2 gp g, 2 gp (g+1)):
                                                 q its first gp/2, k the next gp/2, v the last gp
    r[c, i, j] = relative[c, i - j + K - 1]      (2gp, K, K), split r_q (gp/2), r_k (gp/2), r_v (gp)
    logits_ij  = sum_t BN_sim([q_i.k_j ; q_i.r_q[i, j] ; k_j.r_k[j, i]])_t      BN over 3G channels t G + g
    a_ij       = softmax_j(logits_ij)            no d^-1/2
    y_i        = sum_s BN_out([sum_j a_ij v_j ; sum_j a_ij r_v[i, j]])_s       BN over 2O, interleaved 2o + s
    y          = AvgPool2d(stride)(y)            stride > 1

Note the key term: the official code transposes ``kr``, so it reads r_k at offset j - i (key - query), while
the query term reads i - j; the two offsets are not interchangeable (spec sheet: 5.0 difference).  BatchNorm
is PyTorch's (eps 1e-5, momentum 0.1); in training it normalises over the batch, the other axis and the
positions, and reports running statistics through ``npattn.track_running_stats``.

Parameters (official names): ``qkv_transform.weight`` (2O, C_in, 1), ``bn_qkv.*`` (2O), ``bn_similarity.*``
(3G), ``bn_output.*`` (2O), ``relative`` (2gp, 2K - 1).  The official module also holds the int64 buffer
``flatten_index`` (K^2,) = (i - j + K - 1) flattened, a function of K only: :func:`from_official_state_dict`
checks and drops it.  Init as official: qkv_transform ~ N(0, 1/C_in), relative ~ N(0, 1/gp), BN (1, 0).
``groups``, ``width`` and ``stride`` are the structure (keywords of :func:`init` and :func:`axial`).
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag

from ..layers import (
    batch_norm,
    batch_norm_shapes,
    check_dtype,
    check_input,
    example,
    init_batch_norm,
    take_all,
)
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Derived, Ints, Space, bn_train
from ._parts import check_positive_int, normal
from ._spaces import map_inputs

NAME = "axial"


def init(rng, in_planes: int, out_planes: int, *, groups: int = 8, kernel_size: int = 56, width: bool = False,
         stride: int = 1, dtype=np.float64) -> dict:
    """Parameters of the official ``AxialAttention``; ``kernel_size`` = the length of the attended axis."""
    groups, group_planes = _groups(in_planes, out_planes, groups)
    kernel = check_positive_int(NAME, "kernel_size", kernel_size)
    check_positive_int(NAME, "stride", stride)
    params = {"qkv_transform.weight": normal(rng, (2 * out_planes, in_planes, 1), math.sqrt(1.0 / in_planes), dtype)}
    init_batch_norm(params, "bn_qkv", 2 * out_planes, dtype=dtype)
    init_batch_norm(params, "bn_similarity", 3 * groups, dtype=dtype)
    init_batch_norm(params, "bn_output", 2 * out_planes, dtype=dtype)
    params["relative"] = normal(rng, (2 * group_planes, 2 * kernel - 1), math.sqrt(1.0 / group_planes), dtype)
    return params


def _groups(in_planes: int, out_planes: int, groups) -> tuple:
    groups = check_positive_int(NAME, "groups", groups)
    if in_planes % groups or out_planes % groups:
        raise ValueError(f"{NAME}: in_planes={in_planes} and out_planes={out_planes} must be divisible by "
                         f"groups={groups} (the official assert)")
    group_planes = out_planes // groups
    if group_planes % 2:
        raise ValueError(f"{NAME}: out_planes / groups = {group_planes} must be even (q and k get half each)")
    return groups, group_planes


def relative_index(kernel: int) -> np.ndarray:
    """(K, K) int: i - j + K - 1, the official ``flatten_index`` viewed as (K, K) (query i, key j)."""
    return np.arange(kernel)[:, None] - np.arange(kernel)[None, :] + kernel - 1


def from_official_state_dict(state_dict: dict) -> dict:
    """The official module's state_dict without its ``flatten_index`` buffer, after checking that buffer."""
    out = dict(state_dict)
    index = out.pop("flatten_index", None)
    if index is None:
        raise KeyError(f"{NAME}: the official state_dict has a 'flatten_index' buffer; it is missing")
    index = np.asarray(index.detach().cpu().numpy() if hasattr(index, "detach") else ag.to_numpy(index))
    kernel = math.isqrt(index.size)
    if kernel * kernel != index.size or not np.array_equal(index.reshape(-1), relative_index(kernel).reshape(-1)):
        raise ValueError(f"{NAME}: 'flatten_index' is not the official (i - j + K - 1) index of a K x K layer")
    return out


def _sizes(params, in_planes: int, length: int, groups: int) -> tuple:
    """(O, gp) from qkv_transform, every parameter checked for an axis of ``length`` = K."""
    out_planes = params.shape("qkv_transform.weight")[0] // 2
    groups, group_planes = _groups(in_planes, out_planes, groups)
    shapes = {"qkv_transform.weight": (2 * out_planes, in_planes, 1)}
    shapes.update(batch_norm_shapes("bn_qkv", 2 * out_planes))
    shapes.update(batch_norm_shapes("bn_similarity", 3 * groups))
    shapes.update(batch_norm_shapes("bn_output", 2 * out_planes))
    take_all(params, shapes)
    expected = (2 * group_planes, 2 * length - 1)
    if params.shape("relative") != expected:
        raise ValueError(f"{NAME}: parameter 'relative' must have shape {expected} for an attended axis of length "
                         f"K = {length} (the official layer spans the whole axis: kernel_size = its length), got "
                         f"{params.shape('relative')}")
    return out_planes, group_planes


def _similarity(params, query, key, emb_query, emb_key, train: bool) -> ag.Tensor:
    """softmax_j(sum_t BN_sim([q_i.k_j ; q_i.r_q[i,j] ; k_j.r_k[j,i]])): the logits + bias + softmax step.

    query, key (L, G, gp/2, K) with L lines; emb_query, emb_key (gp/2, K, K) -> (L, G, K, K) over keys j.
    """
    lines, groups, _, length = query.shape
    qk = ag.einsum("bgci,bgcj->bgij", query, key)                               # q_i . k_j
    qr = ag.einsum("bgci,cij->bgij", query, emb_query)                          # q_i . r_q[i - j]
    kr = ag.swapaxes(ag.einsum("bgci,cij->bgij", key, emb_key), 2, 3)           # k_j . r_k[j - i]
    stacked = batch_norm(params, "bn_similarity", ag.concatenate([qk, qr, kr], axis=1), train)   # (L, 3G, K, K)
    logits = ag.sum(ag.reshape(stacked, (lines, 3, groups, length, length)), axis=1)
    return ag.softmax(logits, axis=3)


@uses_params(NAME)
def axial(params, x, *, train: bool = False, groups: int = 8, width: bool = False, stride: int = 1) -> ag.Tensor:
    """The official AxialAttention layer on x (B, C_in, H, W); returns (B, O, H / stride, W / stride).

    ``groups``, ``width`` (attend along W instead of H) and ``stride`` as given to :func:`init`; the
    attended axis must have the length K of ``relative`` (2K - 1 columns).  ``train`` uses batch
    statistics in the three BatchNorms.
    """
    stride = check_positive_int(NAME, "stride", stride)
    x = check_input(NAME, x)
    check_dtype(NAME, x, params)
    in_planes = params.shape("qkv_transform.weight")[1]
    if x.shape[1] != in_planes:
        raise ValueError(f"{NAME}: x must have {in_planes} channels (axis 1) to match the parameters, got shape "
                         f"{x.shape}")
    batch = x.shape[0]
    lines = ag.transpose(x, (0, 2, 1, 3) if width else (0, 3, 1, 2))      # (B, other axis, C, K)
    other, length = lines.shape[1], lines.shape[3]
    out_planes, group_planes = _sizes(params, in_planes, length, groups)
    lines = ag.reshape(lines, (batch * other, in_planes, length))
    qkv = ag.conv1d(lines, params["qkv_transform.weight"])                   # (L, 2O, K), no bias
    qkv = batch_norm(params, "bn_qkv", qkv, train)
    qkv = ag.reshape(qkv, (batch * other, groups, 2 * group_planes, length))
    half = group_planes // 2
    query, key, value = qkv[:, :, :half], qkv[:, :, half:group_planes], qkv[:, :, group_planes:]
    embeddings = ag.getitem(params["relative"], (slice(None), ag.from_numpy(relative_index(length))))  # (2gp, K, K)
    emb_query, emb_key, emb_value = embeddings[:half], embeddings[half:group_planes], embeddings[group_planes:]
    attention = _similarity(params, query, key, emb_query, emb_key, train)   # (L, G, K, K)
    context = ag.einsum("bgij,bgcj->bgci", attention, value)                   # sum_j a_ij v_j
    positional = ag.einsum("bgij,cij->bgci", attention, emb_value)             # sum_j a_ij r_v[i - j]
    stacked = ag.reshape(ag.concatenate([context, positional], axis=-1), (batch * other, 2 * out_planes, length))
    stacked = batch_norm(params, "bn_output", stacked, train)                  # channel 2o + s
    out = ag.sum(ag.reshape(stacked, (batch, other, out_planes, 2, length)), axis=3)    # (B, other, O, K)
    out = ag.transpose(out, (0, 2, 1, 3) if width else (0, 2, 3, 1))           # (B, O, H, W)
    if stride > 1:
        out = ag.avg_pool2d(out, stride, stride)
    return out


register(Mechanism(
    name=NAME, family="transformer",
    paper=Paper("Wang, Zhu, Green, Adam, Yuille, Chen",
                "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", "ECCV", 2020),
    init=init, apply_fn=axial,
    config={"in_planes": 6, "out_planes": 8, "groups": 2, "kernel_size": 5},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 6, 5, 4), dtype),),
    min_spatial=5,
    # groups dividing C_in and O with an even O / G (init's rules); the span K is the attended axis's length (the
    # official layer is global), down to 1; AvgPool2d(stride) needs a map of at least the stride (PyTorch refuses
    # an empty output); the BNs see B H W values per channel (bn_similarity B H W K)
    space=Space(config={"groups": Ints(1, 3), "_in_per_group": Ints(1, 3), "_half_per_group": Ints(1, 2),
                        "in_planes": Derived(lambda v: v.groups * v._in_per_group),
                        "out_planes": Derived(lambda v: v.groups * 2 * v._half_per_group), "width": Bools(),
                        "stride": Ints(1, 3),
                        "kernel_size": Derived(lambda v: v.map_width if v.width else v.map_height)},
                inputs=map_inputs("in_planes"),
                where=(lambda v: min(v.map_height, v.map_width) >= v.stride,
                       bn_train(lambda v: v.batch * v.map_height * v.map_width))),
    description="position-sensitive axial attention along H: BN'd q.k + q.r_q + k.r_k logits, values with r_v",
))
