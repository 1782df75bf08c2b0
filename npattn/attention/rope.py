"""Rotary position embeddings: 1-D RoPE (RoFormer) and the 2-D forms of vision transformers (EVA-02, RoPE-Mixed).

Every form rotates pairs of channels (a, b) of queries and keys by an angle theta (shared/specs/attention-core.md §3):

    y_a = x_a cos(theta) - x_b sin(theta),    y_b = x_a sin(theta) + x_b cos(theta)

The pairing is the ``layout``, which the ecosystem splits on, so it is always named:

* ``'interleaved'``: pairs (2i, 2i+1) -- RoFormer, Meta LLaMA (complex view), GPT-J ``rotate_every_two``,
  EVA-02 (its function named ``rotate_half`` rotates every two), flash-attn ``interleaved=True``,
  ONNX ``interleaved=1``;
* ``'half'``: pairs (i, i + R/2) -- GPT-NeoX, HF transformers ``rotate_half``, flash-attn's and ONNX's default.

Only the first R = 2 * (number of angles) channels rotate (partial rotary: GPT-J rotary_dim 64 of 256, Pythia
rotary_pct 0.25); the rest pass through.

1-D (:func:`rope_angles`): theta_{p,i} = p * base^(-2i/R), i < R/2, at positions p = offset + arange(L) (offset an
int, a float or one per batch row -- a KV cache's start_pos, flash-attn's ``seqlen_offsets``) or explicit
position ids.  <R(m) q, R(n) k> depends on m - n only.

2-D axial (:func:`rope_2d_angles`, EVA-02 ``VisionRotaryEmbeddingFast``, timm ``RotaryEmbeddingCat``): D/4 bands
per axis, omega_k = T^(-k/(D/4)); the angle list of a token is [axis0 * omega | axis1 * omega], axis 0 the row
('ij', EVA) or the column ('xy'); tokens row-major.  Prefix tokens (cls, registers) are not rotated.

2-D mixed (:func:`rope_mixed_angles`, Heo et al. ECCV 2024, ``naver-ai/rope-vit``, timm ``RotaryEmbeddingMixed``):
learnable F (2, depth, heads, D/2); angle[h, n, m] = t_x[n] F[0, l, h, m] + t_y[n] F[1, l, h, m] with t_x the
column and t_y the row of token n ('xy').
"""
from __future__ import annotations

import math
import numbers

import numpy as np

import autograd as ag
from autograd import backend
from autograd.tensor import record

LAYOUTS = ("interleaved", "half")


def _fail(function: str, arg: str, expected: str, got) -> ValueError:
    return ValueError(f"{function}: {arg} must be {expected}, got {got}")


def _layout(function: str, layout) -> str:
    if layout not in LAYOUTS:
        raise _fail(function, "layout", "'interleaved' (RoFormer, Meta LLaMA, GPT-J, EVA-02) or 'half' (GPT-NeoX, HF "
                    "transformers, flash-attn and ONNX defaults) -- there is no default: the ecosystem is split",
                    repr(layout))
    return layout


# ---------------------------------------------------------------------------------------------
# rotation


def rotate(x, angles, *, layout: str):
    """Rotate the first R = 2 * angles.shape[-1] channels of ``x`` (..., D) pairwise by ``angles``.

    ``angles`` (a host/backend array or a Tensor, differentiable) broadcasts to x.shape[:-1] + (R/2,).
    Returns a Tensor of x's shape; channels R.. pass through.
    """
    _layout("rotate", layout)
    x = ag.as_tensor(x)
    angles = angles if isinstance(angles, ag.Tensor) else ag.Tensor(angles)
    pairs = angles.shape[-1]
    rotary = 2 * pairs
    if rotary > x.shape[-1]:
        raise _fail("rotate", "angles", f"at most D/2 = {x.shape[-1] // 2} per position", f"{pairs}")
    cos, sin = ag.Tensor(ag.xp.cos(angles.data)), ag.Tensor(ag.xp.sin(angles.data))
    if angles.requires_grad:  # keep the tape: cos/sin of a learnable angle (RoPE-Mixed)
        cos, sin = _cos(angles), _sin(angles)
    head, rest = x[..., :rotary], x[..., rotary:]
    if layout == "half":
        a, b = head[..., :pairs], head[..., pairs:]
        rotated = ag.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    else:
        split = ag.reshape(head, head.shape[:-1] + (pairs, 2))
        a, b = split[..., 0], split[..., 1]
        rotated = ag.reshape(ag.stack([a * cos - b * sin, a * sin + b * cos], axis=-1), head.shape)
    return rotated if rotary == x.shape[-1] else ag.concatenate([rotated, rest], axis=-1)


def _cos(angle: ag.Tensor) -> ag.Tensor:
    """cos on the tape (d cos = -sin), so gradients reach learnable angles (RoPE-Mixed)."""
    return record(ag.xp.cos(angle.data), ((angle, lambda g: -(g * _sin(angle))),))


def _sin(angle: ag.Tensor) -> ag.Tensor:
    """sin on the tape (d sin = cos); autograd has no trigonometric primitives of its own."""
    return record(ag.xp.sin(angle.data), ((angle, lambda g: g * _cos(angle)),))


# ---------------------------------------------------------------------------------------------
# 1-D


def inverse_frequencies(rotary_dim: int, base: float = 10000.0, dtype=np.float64):
    """inv_freq_i = base^(-2i/R), i < R/2 (host array)."""
    if not isinstance(rotary_dim, numbers.Integral) or rotary_dim < 2 or rotary_dim % 2:
        raise _fail("rope", "rotary_dim", "an even int >= 2", repr(rotary_dim))
    if not base > 0:
        raise _fail("rope", "base", "> 0", repr(base))
    return (base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)).astype(dtype)


def rope_angles(length: int, rotary_dim: int, *, base: float = 10000.0, offset=0, positions=None,
                dtype=np.float64):
    """theta (L, R/2), or (B, L, R/2) for per-row offsets / position ids, as a backend array.

    ``positions`` (L,) or (B, L) (ints or floats) replaces offset + arange(L); ``offset`` is a number or (B,).
    """
    inv_freq = inverse_frequencies(rotary_dim, base)
    if positions is not None:
        pos = np.asarray(backend.to_numpy(positions) if backend.is_array(positions) else positions, dtype=np.float64)
        if pos.ndim not in (1, 2) or pos.shape[-1] != length:
            raise _fail("rope", "positions", f"(L,) or (B, L) with L = {length}", f"shape {pos.shape}")
    else:
        start = np.asarray(backend.to_numpy(offset) if backend.is_array(offset) else offset, dtype=np.float64)
        if start.ndim > 1:
            raise _fail("rope", "offset", "a number or one per batch row (B,)", f"shape {start.shape}")
        pos = start[..., None] + np.arange(length, dtype=np.float64)
    return backend.from_numpy((pos[..., None] * inv_freq).astype(dtype))


def apply_rope(x, *, layout: str, base: float = 10000.0, rotary_dim: int | None = None, offset=0, positions=None):
    """RoPE on x (B, H, L, D) or (B, L, D) or (L, D): pairs of the first ``rotary_dim`` (default D) channels.

    ``layout`` is required ('interleaved' or 'half', module docstring).  Per-row offsets/positions (B, ...) apply
    along axis 0.
    """
    _layout("apply_rope", layout)
    x = ag.as_tensor(x)
    if x.ndim < 2:
        raise _fail("apply_rope", "x", "(..., L, D)", f"shape {x.shape}")
    rotary = x.shape[-1] if rotary_dim is None else rotary_dim
    if rotary > x.shape[-1]:
        raise _fail("apply_rope", "rotary_dim", f"<= D = {x.shape[-1]}", rotary)
    angles = rope_angles(x.shape[-2], rotary, base=base, offset=offset, positions=positions, dtype=x.dtype)
    if angles.ndim == 3:    # one row of positions per batch element: (B, L, R/2) -> (B, 1.., L, R/2)
        if x.ndim < 3 or x.shape[0] != angles.shape[0]:
            raise _fail("apply_rope", "offset/positions", f"one row per batch element of x {x.shape}",
                        f"{angles.shape[0]} rows")
        angles = ag.xp.reshape(angles, (angles.shape[0],) + (1,) * (x.ndim - 3) + angles.shape[1:])
    return rotate(x, angles, layout=layout)


# ---------------------------------------------------------------------------------------------
# 2-D: axial (EVA-02 / timm RotaryEmbeddingCat) and mixed (RoPE-Mixed)


def _grid_axes(grid_shape, indexing: str):
    if indexing not in ("ij", "xy"):
        raise _fail("rope_2d", "indexing", "'ij' (axis 0 = row, EVA-02) or 'xy' (axis 0 = column)", repr(indexing))
    if len(grid_shape) != 2 or min(grid_shape) < 1:
        raise _fail("rope_2d", "grid_shape", "(H, W) with H, W >= 1", repr(grid_shape))
    rows, cols = np.meshgrid(np.arange(grid_shape[0], dtype=np.float64), np.arange(grid_shape[1], dtype=np.float64),
                             indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)          # tokens row-major
    return (rows, cols) if indexing == "ij" else (cols, rows)


def rope_2d_angles(grid_shape, head_dim: int, *, base: float = 10000.0, indexing: str = "ij",
                   ref_feat_shape=None, grid_offset: float = 0.0, in_pixels: bool = False, max_res: int = 224,
                   linear_bands: bool = False, dtype=np.float64):
    """Axial 2-D angles (H * W, D/2) = [axis0 * omega | axis1 * omega] per token, row-major.

    Defaults are EVA-02's: index grid (+ ``grid_offset``), omega_k = base^(-k/(D/4)), 'ij'.  ``ref_feat_shape``
    rescales coordinates t = idx / f * r (EVA's fine-tuning at other sizes, pt_seq_len 16 for 224/14).
    ``in_pixels=True`` is timm's pixel form: coordinates linspace(-1, 1, f) and bands pi * linspace(1, max_res/2)
    (``linear_bands``) or pi * 2^linspace(0, log2(max_res) - 1) -- timm ``RotaryEmbeddingCat``'s default.
    """
    if not isinstance(head_dim, numbers.Integral) or head_dim < 4 or head_dim % 4:
        raise _fail("rope_2d", "head_dim", "a multiple of 4 (D/4 bands per axis)", repr(head_dim))
    bands_count = head_dim // 4
    if in_pixels:
        if linear_bands:
            bands = np.linspace(1.0, max_res / 2, bands_count)
        else:
            bands = 2.0 ** np.linspace(0.0, math.log2(max_res) - 1, bands_count)
        bands = bands * np.pi
    else:
        bands = base ** (-np.arange(bands_count, dtype=np.float64) / bands_count)
    shape = tuple(int(s) for s in grid_shape)
    axes = list(_grid_axes(shape, indexing))
    sizes = shape if indexing == "ij" else shape[::-1]
    ref = None if ref_feat_shape is None else tuple(ref_feat_shape)
    if ref is not None and indexing == "xy":
        ref = ref[::-1]
    for a, size in enumerate(sizes):
        coords = np.linspace(-1.0, 1.0, size)[axes[a].astype(int)] if in_pixels else axes[a] + grid_offset
        if ref is not None:
            coords = coords / size * ref[a]
        axes[a] = coords
    angles = np.concatenate([axes[0][:, None] * bands, axes[1][:, None] * bands], axis=-1)
    return backend.from_numpy(angles.astype(dtype))


def apply_rope_2d(x, angles, *, num_prefix_tokens: int = 1, layout: str = "interleaved"):
    """Rotate the patch tokens of x (..., P + N, D) by ``angles`` (N, D/2) or (heads, N, D/2); the P prefix
    tokens (cls, registers) pass through unrotated, as EVA-02 (``q[:, :, 1:]``) and timm (``num_prefix_tokens``).

    The layout defaults to 'interleaved' (EVA-02, rope-vit); timm's ``half=True`` paths use 'half'.
    """
    _layout("apply_rope_2d", layout)
    x = ag.as_tensor(x)
    tokens = angles.shape[-2]
    if not isinstance(num_prefix_tokens, numbers.Integral) or num_prefix_tokens < 0:
        raise _fail("apply_rope_2d", "num_prefix_tokens", "an int >= 0", repr(num_prefix_tokens))
    if x.ndim < 2 or x.shape[-2] != num_prefix_tokens + tokens:
        raise _fail("apply_rope_2d", "x", f"(..., {num_prefix_tokens} prefix + {tokens} patch tokens, D)",
                    f"shape {x.shape}")
    patches = rotate(x[..., num_prefix_tokens:, :], angles, layout=layout)
    if not num_prefix_tokens:
        return patches
    return ag.concatenate([x[..., :num_prefix_tokens, :], patches], axis=-2)


def init_rope_mixed(rng, depth: int, heads: int, head_dim: int, *, theta: float = 10.0, rotate: bool = True,
                    dtype=np.float64):
    """RoPE-Mixed frequencies F (2, depth, heads, D/2) by the official init (rope-vit ``init_random_2d_freqs``).

    mag_k = theta^(-4k/D), k < D/4; one angle a ~ U(0, 2 pi) per (block, head);
    F[0] = [mag cos a | mag cos(a + pi/2)], F[1] = [mag sin a | mag sin(a + pi/2)].
    """
    if not isinstance(head_dim, numbers.Integral) or head_dim < 4 or head_dim % 4:
        raise _fail("init_rope_mixed", "head_dim", "a multiple of 4", repr(head_dim))
    magnitude = theta ** (-np.arange(0, head_dim, 4, dtype=np.float64) / head_dim)
    angle = rng.uniform(0.0, 2 * np.pi, (depth, heads, 1)) if rotate else np.zeros((depth, heads, 1))
    fx = np.concatenate([magnitude * np.cos(angle), magnitude * np.cos(angle + np.pi / 2)], axis=-1)
    fy = np.concatenate([magnitude * np.sin(angle), magnitude * np.sin(angle + np.pi / 2)], axis=-1)
    return backend.from_numpy(np.stack([fx, fy]).astype(dtype))


def mixed_from_official(freqs, heads: int):
    """The official rope-vit parameter (2, depth, heads * D/2) as (2, depth, heads, D/2) (head-major)."""
    freqs = ag.as_tensor(freqs)
    if freqs.ndim != 3 or freqs.shape[0] != 2 or freqs.shape[2] % heads:
        raise _fail("mixed_from_official", "freqs", f"(2, depth, heads * D/2) with heads = {heads}",
                    f"shape {freqs.shape}")
    return ag.reshape(freqs, (2, freqs.shape[1], heads, freqs.shape[2] // heads))


def rope_mixed_angles(freqs, grid_shape, *, indexing: str = "xy"):
    """angle (heads, H * W, D/2) = t_x F[0] + t_y F[1] for one block's F (2, heads, D/2) (differentiable in F).

    'xy' (official): t_x is the column n mod W, t_y the row n // W of token n (row-major); 'ij' swaps them
    (timm's ``get_mixed_grid`` with ``grid_indexing='ij'``).
    """
    freqs = ag.as_tensor(freqs)
    if freqs.ndim != 3 or freqs.shape[0] != 2:
        raise _fail("rope_mixed_angles", "freqs", "(2, heads, D/2) for one block", f"shape {freqs.shape}")
    t_x, t_y = _grid_axes(tuple(int(s) for s in grid_shape), indexing)
    t_x = ag.Tensor(backend.from_numpy(t_x.astype(freqs.dtype))[None, :, None])
    t_y = ag.Tensor(backend.from_numpy(t_y.astype(freqs.dtype))[None, :, None])
    return t_x * ag.expand_dims(freqs[0], 1) + t_y * ag.expand_dims(freqs[1], 1)


__all__ = ["LAYOUTS", "apply_rope", "apply_rope_2d", "init_rope_mixed", "inverse_frequencies", "mixed_from_official",
           "rope_2d_angles", "rope_angles", "rope_mixed_angles", "rotate"]
