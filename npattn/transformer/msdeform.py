"""Multi-scale deformable attention (Zhu, Su, Lu, Li, Wang, Dai, Deformable DETR, ICLR 2021).

For query q (N, Lq, C) with reference points, and L feature levels flattened into x (N, S, C),
S = sum_l H_l W_l, with M heads of D = C / M channels and P points per head and level::

    V       = x W_v^T + b_v, padded positions set to 0, split into heads       (N, S, M, D)
    Δ       = q W_off^T + b_off  viewed (N, Lq, M, L, P, 2)                     offsets in (x, y) order
    A       = softmax over the L P (level, point) pairs of q W_A^T + b_A       joint over levels and points
    loc     = ref + Δ / (W_l, H_l)                     2-d references (x, y) in [0, 1]: the normaliser is (W, H)
    loc     = ref_xy + Δ / P * ref_wh * 0.5            4-d boxes (cx, cy, w, h)
    out_m   = sum_{l, p} A[m, l, p] * bilinear(V_{l, m}, loc[m, l, p])
    y       = concat_m(out_m) W_o^T + b_o                                       (N, Lq, C)

bilinear() is ``grid_sample(V_l, 2 loc - 1, mode="bilinear", padding_mode="zeros", align_corners=False)``:
pixel = loc W - 0.5, each corner outside the map reads 0 -- the official PyTorch core
``ms_deform_attn_core_pytorch`` (:func:`official_core`, on ``autograd.grid_sample``, one call per level).
:func:`deformable_core` computes the same sums with grid_sample's own sampler in one pass over all levels,
as the CUDA kernel does (``h_im = loc_h H - 0.5``, per-corner bounds); the two are tested equal.  The
sampled value is continuous in loc but not differentiable where loc W - 0.5 (or loc H - 0.5) is an integer.
A non-finite location or attention weight gives NaN for its query and head (grid_sample's policy).

Follows ``fundamentalvision/Deformable-DETR`` ``models/ops/modules/ms_deform_attn.py`` (spec sheet section 3):
the forward signature ``(query, reference_points, input_flatten, input_spatial_shapes,
input_level_start_index, input_padding_mask=None)``; ``input_level_start_index`` is used only by the CUDA
kernel and is checked here to be the levels' start offsets.  Padding mask: True = padded (``masked_fill``
with 0 before the heads are split).  The official init (``_reset_parameters``): sampling_offsets weight 0
and bias (p + 1) g_m with g_m = (cos θ_m, sin θ_m) / max(|cos θ_m|, |sin θ_m|), θ_m = 2π m / M, computed in
float32 (cos(π/2) ~ -4.4e-8); attention_weights weight and bias 0 (uniform A); value/output projections
xavier_uniform with zero bias.  Modules that wrap this core differ around it (mmcv adds query_pos, a
residual and dropout, and is sequence-first; HF transformers adds position embeddings): not modelled.

Parameters (the official names): ``sampling_offsets.{weight (M L P 2, C), bias}``,
``attention_weights.{weight (M L P, C), bias}``, ``value_proj.*`` and ``output_proj.*`` (C, C) + bias.
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag
from autograd import backend, gridsample
from autograd.backend import xp

from ..layers import check_dtype, check_input, example, linear, linear_shapes, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import BATCH, Choice, Derived, Inputs, Ints, Space
from ._spaces import seeded_bool

NAME = "msdeform"
PAPER = Paper("Zhu, Su, Lu, Li, Wang, Dai", "Deformable DETR: Deformable Transformers for End-to-End Object "
              "Detection", "ICLR", 2021)


# ---------------------------------------------------------------------------------------------
# parameters


def offset_bias(n_heads: int, n_levels: int, n_points: int) -> np.ndarray:
    """The official sampling_offsets bias (M L P 2,): (p + 1) g_m, computed in float32 as the official code."""
    thetas = np.arange(n_heads, dtype=np.float32) * np.float32(2.0 * math.pi / n_heads)
    grid = np.stack([np.cos(thetas), np.sin(thetas)], axis=-1)                        # (M, 2) float32
    grid = grid / np.abs(grid).max(axis=-1, keepdims=True)
    grid = np.repeat(np.repeat(grid[:, None, None, :], n_levels, axis=1), n_points, axis=2)   # (M, L, P, 2)
    grid = grid * np.arange(1, n_points + 1, dtype=np.float32)[None, None, :, None]
    return grid.reshape(-1)


def _xavier_uniform(rng, shape, dtype):
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))
    return backend.from_numpy(rng.uniform(-bound, bound, size=shape).astype(dtype))


def init(rng, d_model: int = 256, *, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
         dtype=np.float64) -> dict:
    """Parameters with the official ``_reset_parameters`` init (the offsets' and weights' linear maps at 0)."""
    _check_structure(d_model, n_levels, n_heads, n_points)
    samples = n_heads * n_levels * n_points
    zeros = lambda *shape: backend.from_numpy(np.zeros(shape, dtype=dtype))   # noqa: E731
    return {
        "sampling_offsets.weight": zeros(samples * 2, d_model),
        "sampling_offsets.bias": backend.from_numpy(offset_bias(n_heads, n_levels, n_points).astype(dtype)),
        "attention_weights.weight": zeros(samples, d_model),
        "attention_weights.bias": zeros(samples),
        "value_proj.weight": _xavier_uniform(rng, (d_model, d_model), dtype),
        "value_proj.bias": zeros(d_model),
        "output_proj.weight": _xavier_uniform(rng, (d_model, d_model), dtype),
        "output_proj.bias": zeros(d_model),
    }


def _check_structure(d_model: int, n_levels, n_heads, n_points) -> None:
    for name, value in (("n_levels", n_levels), ("n_heads", n_heads), ("n_points", n_points)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{NAME}: {name} must be a positive int, got {value!r}")
    if d_model % n_heads:
        raise ValueError(f"{NAME}: d_model={d_model} must be divisible by n_heads={n_heads}")


def _take_params(params, n_levels: int, n_heads: int, n_points: int) -> int:
    """Check every parameter's shape; returns C."""
    channels = params.shape("value_proj.weight")[1]
    _check_structure(channels, n_levels, n_heads, n_points)
    samples = n_heads * n_levels * n_points
    take_all(params, {**linear_shapes("sampling_offsets", samples * 2, channels),
                      **linear_shapes("attention_weights", samples, channels),
                      **linear_shapes("value_proj", channels, channels),
                      **linear_shapes("output_proj", channels, channels)})
    return channels


# ---------------------------------------------------------------------------------------------
# inputs


def _spatial_shapes(spatial_shapes, n_levels: int) -> list:
    """[(H_l, W_l)] as Python ints from an (L, 2) integer array / Tensor / sequence."""
    if isinstance(spatial_shapes, ag.Tensor):
        spatial_shapes = spatial_shapes.data
    host_shapes = backend.to_numpy(spatial_shapes) if backend.is_array(spatial_shapes) else np.asarray(spatial_shapes)
    if host_shapes.ndim != 2 or host_shapes.shape[1] != 2 or host_shapes.dtype.kind not in "iu":
        raise ValueError(f"{NAME}: input_spatial_shapes must be an (L, 2) integer array of (H, W), got shape "
                         f"{host_shapes.shape} and dtype {host_shapes.dtype}")
    if host_shapes.shape[0] != n_levels:
        raise ValueError(f"{NAME}: input_spatial_shapes has {host_shapes.shape[0]} levels, the parameters are for "
                         f"n_levels={n_levels}")
    if (host_shapes < 1).any():
        raise ValueError(f"{NAME}: every level needs H, W >= 1, got input_spatial_shapes {host_shapes.tolist()}")
    return [(int(h), int(w)) for h, w in host_shapes]


def _check_start_index(level_start_index, shapes: list) -> None:
    if level_start_index is None:
        return
    if isinstance(level_start_index, ag.Tensor):
        level_start_index = level_start_index.data
    host = backend.to_numpy(level_start_index) if backend.is_array(level_start_index) else np.asarray(level_start_index)
    expected = np.cumsum([0] + [h * w for h, w in shapes[:-1]])
    if host.shape != expected.shape or host.dtype.kind not in "iu" or not np.array_equal(host, expected):
        raise ValueError(f"{NAME}: input_level_start_index must be the levels' start offsets {expected.tolist()} "
                         f"(the CUDA kernel reads it), got {host.tolist()}")


def _check_inputs(params, query, reference_points, input_flatten, padding_mask, channels: int, shapes: list):
    query = check_input(NAME, query, arg="query", ndim=3, layout="(N, Lq, C)")
    if query.shape[-1] != channels:
        raise ValueError(f"{NAME}: query must have {channels} channels (last axis) to match the parameters, got shape "
                         f"{query.shape}")
    batch, queries = query.shape[:2]
    reference_points = check_input(NAME, reference_points, arg="reference_points", ndim=4, layout="(N, Lq, L, 2|4)")
    if reference_points.shape[:3] != (batch, queries, len(shapes)) or reference_points.shape[3] not in (2, 4):
        raise ValueError(f"{NAME}: reference_points must be ({batch}, {queries}, {len(shapes)}, 2 or 4), got shape "
                         f"{reference_points.shape}")
    input_flatten = check_input(NAME, input_flatten, arg="input_flatten", ndim=3, layout="(N, S, C)")
    total = sum(h * w for h, w in shapes)
    if input_flatten.shape != (batch, total, channels):
        raise ValueError(f"{NAME}: input_flatten must be ({batch}, {total}, {channels}) for input_spatial_shapes "
                         f"{shapes}, got shape {input_flatten.shape}")
    for arg, value in (("query", query), ("reference_points", reference_points), ("input_flatten", input_flatten)):
        check_dtype(NAME, value, params, arg=arg)
    if padding_mask is not None:
        padding_mask = padding_mask.data if isinstance(padding_mask, ag.Tensor) else padding_mask
        if not backend.is_array(padding_mask) or padding_mask.dtype != bool or tuple(padding_mask.shape) != (batch,
                                                                                                            total):
            raise ValueError(f"{NAME}: input_padding_mask must be a boolean ({batch}, {total}) array (True = padded), "
                             f"got {getattr(padding_mask, 'dtype', type(padding_mask).__name__)} "
                             f"{tuple(getattr(padding_mask, 'shape', ()))}")
    return query, reference_points, input_flatten, padding_mask


# ---------------------------------------------------------------------------------------------
# the mechanism


def sampling_points(params, query, reference_points, shapes: list, n_heads: int, n_levels: int, n_points: int):
    """(locations (N, Lq, M, L, P, 2) in [0, 1] (x, y) coordinates, weights A (N, Lq, M, L, P))."""
    batch, queries = query.shape[:2]
    offsets = ag.reshape(linear(params, "sampling_offsets", query), (batch, queries, n_heads, n_levels, n_points, 2))
    logits = ag.reshape(linear(params, "attention_weights", query), (batch, queries, n_heads, n_levels * n_points))
    weights = ag.reshape(ag.softmax(logits, axis=-1), (batch, queries, n_heads, n_levels, n_points))
    if reference_points.shape[-1] == 2:
        normalizer = ag.from_numpy(np.array([[w, h] for h, w in shapes], dtype=query.dtype))   # (L, 2) = (W, H)
        reference = ag.reshape(reference_points, (batch, queries, 1, n_levels, 1, 2))
        locations = ag.add(reference, ag.div(offsets, ag.reshape(normalizer, (1, 1, 1, n_levels, 1, 2))))
    else:
        centre = ag.reshape(ag.getitem(reference_points, (Ellipsis, slice(0, 2))), (batch, queries, 1, n_levels, 1, 2))
        size = ag.reshape(ag.getitem(reference_points, (Ellipsis, slice(2, 4))), (batch, queries, 1, n_levels, 1, 2))
        locations = ag.add(centre, ag.mul(ag.mul(ag.div(offsets, float(n_points)), size), 0.5))   # official order
    return locations, weights


def deformable_core(value, shapes: list, locations, weights) -> ag.Tensor:
    """sum_{l, p} A * bilinear(V_l, loc): value (N, S, M, D), locations (N, Lq, M, L, P, 2), weights A
    (N, Lq, M, L, P) -> (N, Lq, M D), in one sampling over all levels (as the CUDA kernel).

    Every level's taps come from ``grid_sample``'s own sampler (``gridsample.sampling_taps``: pixel =
    loc W - 0.5, the four corners, 0 outside) at the grid 2 loc - 1; their indices are offset to the level's
    rows of the stacked value, their weights multiplied by A, and all L P 4 taps of a query are read by one
    ``sample_rows`` -- the same sums as :func:`official_core`'s one ``grid_sample`` per level (tested equal),
    without the per-level slices, channel-first copies and the stacked (N M, D, Lq, L P) samples.
    """
    batch, total, heads, depth = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    rows = gridsample.contiguous(ag.reshape(ag.transpose(value, (0, 2, 1, 3)), (batch * heads, total, depth)))
    grids = ag.transpose(ag.sub(ag.mul(locations, 2.0), 1.0), (0, 2, 1, 3, 4, 5))    # (N, M, Lq, L, P, 2)
    grids = ag.reshape(grids, (batch * heads, queries, levels, points, 2))
    attention = ag.reshape(ag.transpose(weights, (0, 2, 1, 3, 4)), (batch * heads, queries, levels, points, 1))
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    indices, valids, tap_weights, bad = [], [], [], None
    for level, (height, width) in enumerate(shapes):
        grid = ag.getitem(grids, (slice(None), slice(None), level))                   # (N M, Lq, P, 2)
        taps, bilinear, level_bad = gridsample.sampling_taps(grid, height, width)     # (N M, Lq P, 4) each
        indices.append(xp.reshape(taps.index + int(starts[level]), (batch * heads, queries, points * 4)))
        valids.append(xp.reshape(taps.valid, (batch * heads, queries, points * 4)))
        level_weights = ag.mul(ag.reshape(bilinear, (batch * heads, queries, points, 4)),
                               ag.getitem(attention, (slice(None), slice(None), level)))   # A_lp * w_k
        tap_weights.append(ag.reshape(level_weights, (batch * heads, queries, points * 4)))
        if level_bad is not None:   # a non-finite location: NaN for its query and head (grid_sample's policy)
            level_bad = ag.sum(ag.reshape(level_bad, (batch * heads, queries, points)), axis=-1, keepdims=True)
            bad = level_bad if bad is None else ag.add(bad, level_bad)
    taps = gridsample.Taps(xp.concatenate(indices, axis=-1), total, xp.concatenate(valids, axis=-1))
    sampled = gridsample.sample_rows(rows, ag.concatenate(tap_weights, axis=-1), taps)   # (N M, Lq, D)
    sampled = gridsample.nan_where(sampled, _nan_attention(attention, bad))
    out = ag.transpose(ag.reshape(sampled, (batch, heads, queries, depth)), (0, 2, 1, 3))
    return ag.reshape(out, (batch, queries, heads * depth))


def _nan_attention(attention, bad):
    """``bad`` plus NaN where an attention weight is NaN: in the official core NaN * (a sample of 0 outside
    the map) is NaN, while the sampler never reads taps outside the map."""
    broken = ~xp.isfinite(attention.data).all(axis=(2, 3))                          # (N M, Lq, 1)
    if not bool(xp.any(broken)):
        return bad
    nan = ag.Tensor(xp.where(broken, xp.asarray(xp.nan, dtype=attention.dtype), xp.zeros((), attention.dtype)))
    return nan if bad is None else ag.add(bad, nan)


def official_core(value, shapes: list, locations, weights) -> ag.Tensor:
    """The official ``ms_deform_attn_core_pytorch`` on ``autograd.grid_sample``, one call per level: value
    (N, S, M, D), locations (N, Lq, M, L, P, 2), weights (N, Lq, M, L, P) -> (N, Lq, M D).  The readable
    reference of :func:`deformable_core` (same numbers up to rounding; slower)."""
    batch, _, heads, depth = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    grids = ag.sub(ag.mul(locations, 2.0), 1.0)                                     # [0, 1] -> [-1, 1]
    bounds = np.cumsum([0] + [h * w for h, w in shapes])
    sampled = []
    for level, (height, width) in enumerate(shapes):
        part = ag.getitem(value, (slice(None), slice(int(bounds[level]), int(bounds[level + 1]))))
        image = ag.reshape(ag.transpose(part, (0, 2, 3, 1)), (batch * heads, depth, height, width))
        grid = ag.getitem(grids, (slice(None), slice(None), slice(None), level))          # (N, Lq, M, P, 2)
        grid = ag.reshape(ag.transpose(grid, (0, 2, 1, 3, 4)), (batch * heads, queries, points, 2))
        sampled.append(ag.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = ag.reshape(ag.stack(sampled, axis=-2), (batch * heads, depth, queries, levels * points))
    attention = ag.reshape(ag.transpose(weights, (0, 2, 1, 3, 4)), (batch * heads, 1, queries, levels * points))
    out = ag.reshape(ag.sum(ag.mul(stacked, attention), axis=-1), (batch, heads * depth, queries))
    return ag.transpose(out, (0, 2, 1))


@uses_params(NAME)
def msdeform(params, query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index=None,
             input_padding_mask=None, *, train: bool = False, n_levels: int = 4, n_heads: int = 8,
             n_points: int = 4) -> ag.Tensor:
    """Multi-scale deformable attention -> (N, Lq, C), as the official ``MSDeformAttn.forward``.

    query (N, Lq, C); reference_points (N, Lq, L, 2) points or (N, Lq, L, 4) boxes in [0, 1];
    input_flatten (N, S, C); input_spatial_shapes (L, 2) integer (H, W); input_level_start_index (L,)
    or None; input_padding_mask (N, S) boolean (True = padded) or None.  ``n_levels``, ``n_heads``,
    ``n_points`` as in :func:`init`.  ``train`` has no effect (no dropout).
    """
    channels = _take_params(params, n_levels, n_heads, n_points)
    shapes = _spatial_shapes(input_spatial_shapes, n_levels)
    _check_start_index(input_level_start_index, shapes)
    query, reference_points, input_flatten, mask = _check_inputs(params, query, reference_points, input_flatten,
                                                                 input_padding_mask, channels, shapes)
    batch, total = input_flatten.shape[:2]
    value = linear(params, "value_proj", input_flatten)                             # (N, S, C)
    if mask is not None:
        value = ag.where(mask[..., None], 0.0, value)                               # masked_fill(mask, 0)
    value = ag.reshape(value, (batch, total, n_heads, channels // n_heads))
    locations, weights = sampling_points(params, query, reference_points, shapes, n_heads, n_levels, n_points)
    return linear(params, "output_proj", deformable_core(value, shapes, locations, weights))


@uses_params(NAME)
def sampling_locations(params, query, reference_points, input_spatial_shapes, *, n_levels: int = 4,
                       n_heads: int = 8, n_points: int = 4):
    """(locations (N, Lq, M, L, P, 2), attention weights (N, Lq, M, L, P)): where each head samples, in [0, 1]
    (x, y) coordinates of each level, and with which weight (the pictures of ``examples/``).  Reads and checks
    the whole parameter dict, as :func:`msdeform`."""
    channels = _take_params(params, n_levels, n_heads, n_points)
    shapes = _spatial_shapes(input_spatial_shapes, n_levels)
    query = check_input(NAME, query, arg="query", ndim=3, layout="(N, Lq, C)")
    if query.shape[-1] != channels:
        raise ValueError(f"{NAME}: query must have {channels} channels, got shape {query.shape}")
    reference_points = check_input(NAME, reference_points, arg="reference_points", ndim=4, layout="(N, Lq, L, 2|4)")
    return sampling_points(params, query, reference_points, shapes, n_heads, n_levels, n_points)


# ---------------------------------------------------------------------------------------------
# registry

#: Three levels, one non-square (6 x 5: a swapped (H, W) normaliser shows), S = 30 + 12 + 4.
EXAMPLE_SHAPES = ((6, 5), (3, 4), (2, 2))


def _example(rng, dtype=np.float64):
    batch, queries, channels = 2, 5, 16
    total = sum(h * w for h, w in EXAMPLE_SHAPES)
    mask = np.zeros((batch, total), dtype=bool)
    mask[1, 25:30] = True      # the last row of level 0 padded in the second image
    return (example(rng, (batch, queries, channels), dtype),
            backend.from_numpy(rng.uniform(0.05, 0.95, (batch, queries, len(EXAMPLE_SHAPES), 2)).astype(dtype)),
            example(rng, (batch, total, channels), dtype),
            backend.from_numpy(np.array(EXAMPLE_SHAPES, dtype=np.int64)),
            backend.from_numpy(np.cumsum([0] + [h * w for h, w in EXAMPLE_SHAPES[:-1]]).astype(np.int64)),
            backend.from_numpy(mask))


#: the most levels a drawn configuration has (each level's (H, W) is drawn from its own helper values)
MAX_LEVELS = 3


def _level_shapes(v) -> np.ndarray:
    """(L, 2) int64 (H_l, W_l) of the first n_levels drawn level sizes."""
    return np.array([(v[f"_h{level}"], v[f"_w{level}"]) for level in range(v.n_levels)], dtype=np.int64)


def _space_inputs() -> Inputs:
    """(query (N, Lq, C), reference_points (N, Lq, L, 2 | 4) uniform in [0, 1], input_flatten (N, S, C))."""
    def build(rng, v, dtype):
        total = int(np.prod(_level_shapes(v), axis=1).sum())
        return (example(rng, (v.batch, v.queries, v.d_model), dtype),
                backend.from_numpy(rng.uniform(0.0, 1.0, (v.batch, v.queries, v.n_levels, v._reference))
                                   .astype(dtype)),
                example(rng, (v.batch, total, v.d_model), dtype))
    return Inputs({"batch": BATCH, "queries": Ints(0, 4)}, build)


def _shapes_option(v):
    return backend.from_numpy(_level_shapes(v))


def _starts_option(v):
    return backend.from_numpy(np.cumsum([0, *np.prod(_level_shapes(v), axis=1)[:-1]]).astype(np.int64))


#: C = M D (D down to 1, and 8: the default's C = 16 with 2 heads); 1 to 3 levels of 1 x 1 to 4 x 4 maps (square
#: or not, a level smaller than the sampling offsets); 1 to 3 points; 2-d points and 4-d boxes; with and without
#: the start index and a padding mask (also a whole level padded); no query at all.  The integer shapes / start
#: index are passed as apply keywords (the official names), so the drawn inputs are the three float tensors.
_SPACE = Space(
    config={"n_heads": Ints(1, 3), "_head_dim": Choice(Ints(1, 3), 8),
            "d_model": Derived(lambda v: v.n_heads * v._head_dim),
            "n_levels": Ints(1, MAX_LEVELS), "n_points": Ints(1, 3)},
    options={**{f"_{axis}{level}": Ints(1, 4) for level in range(MAX_LEVELS) for axis in "hw"},
             "_reference": Choice(2, 4), "_seed": Ints(0, 1000),
             "input_spatial_shapes": Derived(_shapes_option),
             "input_level_start_index": Choice(Derived(_starts_option), None),
             "input_padding_mask": Choice(None, seeded_bool(
                 lambda v: (v.batch, int(np.prod(_level_shapes(v), axis=1).sum())), probability=0.3))},
    inputs=_space_inputs())


register(Mechanism(
    name=NAME, family="transformer", paper=PAPER, init=init, apply_fn=msdeform,
    config={"d_model": 16, "n_levels": 3, "n_heads": 2, "n_points": 2},
    example_input=_example, channel_axis=2, space=_SPACE,
    description="multi-scale deformable attention: learned offsets around reference points, bilinear sampling",
))
