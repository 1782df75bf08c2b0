"""Scaled dot-product attention with the conventions of torch, FlashAttention, xFormers, JAX and ONNX.

``scaled_dot_product_attention`` takes ``torch.nn.functional.scaled_dot_product_attention``'s arguments
with their names and meaning, plus keyword options for what the other libraries compute
(shared/specs/attention-core.md, whose decisions this module follows).  For query row i and key column j:

    S_ij = scale * (q_i . k_j)                     (1)  scale = 1/sqrt(D), D the query/key head dim (also if Dv != D)
    S_ij = c * tanh(S_ij / c)                      (2)  soft-capping, c > 0, before any bias (flash, Gemma-2, ONNX)
    S_ij = S_ij + attn_mask_ij + bias_ij + A_ij    (3)  float masks and ALiBi A (logit units, after the cap)
    S_ij = -inf where hard-masked                  (4)  boolean attn_mask (True = attend), causal, window, padding
    P_ij = softmax_j(S_ij) * keep_ij / (1 - p)     (5)  dropout from an explicit keep mask (no hidden RNG)
    O_i  = sum_j P_ij v_j                          (6)
    lse_i = log sum_j exp(S_ij)                         natural log over the final logits (FlashAttention's layout)

Alignment.  Causal masks, windows and ALiBi are placed on a diagonal j = i + off: ``'top-left'`` is off = 0
(torch ``is_causal``, JAX, xFormers ``LowerTriangularMask``), ``'bottom-right'`` is off = Lk - Lq (flash >= 2.1,
xFormers ``*FromBottomRight*``, a KV cache), an int is that offset.  With a key padding mask or varlen
batches, Lk is each sequence's own (valid) length.  Causal keeps j <= i + off; ``window=(left, right)`` keeps
i + off - left <= j <= i + off + right, -1 being an unbounded side (FlashAttention's ``window_size``).

Fully masked rows (``masked_rows``): ``'zero'`` (torch >= 2.5, flash, ONNX: output 0, gradients exactly 0),
``'nan'`` (xFormers' reference), ``'uniform'`` (JAX: the mean of V over all keys).  Their lse is +inf.

Two implementations compute the same function: a materialised one, composed of differentiable ops (the
readable oracle; grad-of-grad works through it), and a chunked online-softmax one (:mod:`._flash`) that never
forms the Lq x Lk matrix and recomputes it block by block in its backward pass.  They agree to rounding
(<= 1e-12 in float64; tests/autograd/test_attention.py).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as _np

from . import backend, nn, ops
from .backend import xp
from .tensor import Tensor

NAME = "scaled_dot_product_attention"
ALIGNMENTS = ("top-left", "bottom-right")
MASKED_ROWS = ("zero", "nan", "uniform")
ALIBI_FORMS = ("symmetric", "fairseq", "flash")
WINDOW_UNBOUNDED = ("infinite", "seqlen_k")
IMPLEMENTATIONS = ("auto", "materialised", "chunked")
#: ``implementation='auto'`` materialises the (B, H, Lq, Lk) scores up to this many elements and chunks above.
MATERIALISE_MAX_ELEMENTS = 1 << 21


# ---------------------------------------------------------------------------------------------
# argument checks


def _fail(arg: str, expected: str, got) -> ValueError:
    return ValueError(f"{NAME}: {arg} must be {expected}, got {got}")


def _as_float_tensor(x, arg: str, dtype=None) -> Tensor:
    if not isinstance(x, Tensor):
        if not (hasattr(x, "dtype") and hasattr(x, "shape")):
            raise TypeError(f"{NAME}: {arg} must be an array or Tensor, got {type(x).__name__}")
        x = Tensor(x)
    if _np.dtype(x.dtype).kind != "f":
        raise TypeError(f"{NAME}: {arg} must have a floating dtype (float32/float64), got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{NAME}: {arg} has dtype {x.dtype} but query has {dtype}; cast one of them (no silent "
                        "casting)")
    return x


def _bool_data(x, arg: str, meaning: str):
    data = x.data if isinstance(x, Tensor) else x
    if not hasattr(data, "dtype") or data.dtype != _np.bool_:
        raise TypeError(f"{NAME}: {arg} must be a boolean array ({meaning}), got "
                        f"{getattr(data, 'dtype', type(data).__name__)}")
    return data


def _as_4d(shape: tuple, target: tuple, arg: str) -> tuple:
    """``shape`` left-padded with ones to 4 axes, checked to broadcast to ``target`` (B, Hq, Lq, Lk)."""
    if len(shape) > 4:
        raise _fail(arg, f"broadcastable to (B, Hq, Lq, Lk) = {target}", f"shape {shape}")
    full = (1,) * (4 - len(shape)) + tuple(shape)
    if any(n not in (1, t) for n, t in zip(full, target)):
        raise _fail(arg, f"broadcastable to (B, Hq, Lq, Lk) = {target}", f"shape {tuple(shape)}")
    return full


def _check_window(window):
    if window is None:
        return None
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) for w in window)):
        raise _fail("window", "None or a pair of ints (left, right) (-1 = unbounded side; an int w of JAX is "
                    "(w, w), an xFormers window_size W is (W - 1, 0))", repr(window))
    left, right = int(window[0]), int(window[1])
    if left < -1 or right < -1:
        raise _fail("window", "a pair of ints >= -1 (-1 = unbounded)", repr(window))
    return left, right


def _choice(value, allowed: tuple, arg: str):
    if value not in allowed:
        raise _fail(arg, " or ".join(repr(a) for a in allowed), repr(value))
    return value


def _check_alignment(alignment):
    if alignment is None or alignment in ALIGNMENTS:
        return alignment
    if isinstance(alignment, numbers.Integral) and not isinstance(alignment, bool):
        return int(alignment)
    raise _fail("alignment", "None, 'top-left', 'bottom-right' or an int diagonal offset", repr(alignment))


@dataclass(frozen=True)
class _Options:
    """The validated keyword options of one call (no shapes yet)."""

    dropout_p: float
    is_causal: bool
    scale: float | None
    enable_gqa: bool
    alignment: object
    window: tuple | None
    window_unbounded: str
    softcap: float
    alibi_form: str
    masked_rows: str
    implementation: str
    chunk_size: tuple | None


def _options(dropout_p, is_causal, scale, enable_gqa, alignment, window, window_unbounded, softcap, alibi_form,
             masked_rows, implementation, chunk_size) -> _Options:
    if not isinstance(dropout_p, numbers.Real) or not 0.0 <= float(dropout_p) < 1.0:
        raise _fail("dropout_p", "a float in [0, 1)", repr(dropout_p))
    if not isinstance(is_causal, (bool, _np.bool_)):
        raise _fail("is_causal", "a bool", repr(is_causal))
    if scale is not None and (not isinstance(scale, numbers.Real) or not math.isfinite(scale)):
        raise _fail("scale", "None or a finite float", repr(scale))
    if not isinstance(softcap, numbers.Real) or not (softcap >= 0 and math.isfinite(softcap)):
        raise _fail("softcap", "a float >= 0 (0 = off)", repr(softcap))
    if chunk_size is not None:
        sizes = (chunk_size, chunk_size) if isinstance(chunk_size, numbers.Integral) else chunk_size
        if (not isinstance(sizes, (tuple, list)) or len(sizes) != 2
                or not all(isinstance(n, numbers.Integral) and n >= 1 for n in sizes)):
            raise _fail("chunk_size", "None, an int >= 1 or a pair (query rows, key columns) of them",
                        repr(chunk_size))
        chunk_size = (int(sizes[0]), int(sizes[1]))
    return _Options(
        dropout_p=float(dropout_p), is_causal=bool(is_causal), scale=None if scale is None else float(scale),
        enable_gqa=bool(enable_gqa), alignment=_check_alignment(alignment), window=_check_window(window),
        window_unbounded=_choice(window_unbounded, WINDOW_UNBOUNDED, "window_unbounded"), softcap=float(softcap),
        alibi_form=_choice(alibi_form, ALIBI_FORMS, "alibi_form"),
        masked_rows=_choice(masked_rows, MASKED_ROWS, "masked_rows"),
        implementation=_choice(implementation, IMPLEMENTATIONS, "implementation"), chunk_size=chunk_size)


# ---------------------------------------------------------------------------------------------
# the plan of one dense call: shapes, offsets and every mask, readable by blocks


@dataclass(frozen=True)
class Plan:
    """Everything one dense call computes besides Q, K, V, resolved against the shapes.

    Masks are kept as 4-D arrays broadcastable to (B, Hq, Lq, Lk) and read by blocks
    (:meth:`keep`, :meth:`additive`), so the chunked kernel never forms more than one block of them.
    """

    batch: int
    heads: int               # Hq
    kv_heads: int            # Hkv; query head h reads kv head h // (Hq / Hkv)
    query_length: int
    key_length: int
    scale: float
    softcap: float
    causal: bool
    window: tuple | None     # (left, right) with None = unbounded side; after the 'seqlen_k' rewrite
    offsets: object          # (B,) int host array: the diagonal of row i is column i + offsets[b]
    attn_keep: object        # bool 4-D array (True = attend) or None
    padding_keep: object     # bool (B, 1, 1, Lk) array (True = real key) or None
    attn_bias: Tensor | None  # float attn_mask, 4-D
    bias: Tensor | None      # the ``bias`` argument, 4-D
    alibi_slopes: Tensor | None  # (B or 1, Hq, 1, 1)
    alibi_form: str          # 'symmetric' or 'fairseq' (the 'flash' form resolved)
    dropout_p: float
    dropout_keep: object     # bool 4-D array or None
    masked_rows: str

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads

    # -- the structural band: causal and window ----------------------------------------------

    def band(self) -> tuple:
        """(left, up): row i of batch b keeps columns i + off_b - left <= j <= i + off_b + up (None: unbounded)."""
        left, right = self.window if self.window is not None else (None, None)
        up = right
        if self.causal:
            up = 0 if up is None else min(up, 0)
        return left, up

    def structural_keep(self, batches: slice, rows: slice, cols: slice):
        """Bool (nb or 1, 1, rows, cols) of the band and the key range, or None when nothing is cut."""
        left, up = self.band()
        if left is None and up is None:
            return None
        i = xp.arange(rows.start, rows.stop)[:, None]
        j = xp.arange(cols.start, cols.stop)[None, :]
        off = backend.from_numpy(self.offsets[batches])[:, None, None, None]
        keep = None
        if up is not None:
            keep = j <= i + off + up
        if left is not None:
            lower = j >= i + off - left
            keep = lower if keep is None else keep & lower
        return keep

    def keep(self, batches: slice, heads: slice, rows: slice, cols: slice, band: bool = True):
        """The hard mask (4): bool broadcastable to (nb, nh, rows, cols), or None when every entry is kept.

        ``band=False`` leaves out the causal/window band (for blocks the band does not cut).
        """
        keep = self.structural_keep(batches, rows, cols) if band else None
        for mask in (self.attn_keep, self.padding_keep):
            if mask is not None:
                block = mask[_block_index(mask.shape, batches, heads, rows, cols)]
                keep = block if keep is None else keep & block
        return keep

    def alibi_distance(self, batches: slice, rows: slice, cols: slice):
        """A_ij / m_h: -|i + off_b - j| ('symmetric') or +j ('fairseq'), as (nb or 1, 1, rows, cols) constants."""
        j = xp.arange(cols.start, cols.stop, dtype=self.dtype)[None, :]
        if self.alibi_form == "fairseq":
            return j[None, None]
        i = xp.arange(rows.start, rows.stop, dtype=self.dtype)[:, None]
        off = backend.from_numpy(self.offsets[batches].astype(_np.dtype(self.dtype)))[:, None, None, None]
        return -xp.abs(i + off - j)

    @property
    def dtype(self):
        return _np.dtype(self._dtype)

    _dtype: object = _np.float64


def _block_index(shape: tuple, batches: slice, heads: slice, rows: slice, cols: slice) -> tuple:
    """The index of a (B|1, Hq|1, Lq|1, Lk|1) array's block; broadcast axes stay whole."""
    return tuple(slice(None) if n == 1 else s for n, s in zip(shape, (batches, heads, rows, cols)))


def _offsets(options: _Options, batch: int, query_length: int, key_length: int, valid_keys, needed: bool):
    """The diagonal offset of each batch element (host int array (B,))."""
    if isinstance(options.alignment, int):
        return _np.full(batch, options.alignment, dtype=_np.int64)
    top_left = _np.zeros(batch, dtype=_np.int64)
    bottom_right = (valid_keys if valid_keys is not None else _np.full(batch, key_length)) - query_length
    bottom_right = bottom_right.astype(_np.int64)
    if options.alignment == "top-left":
        return top_left
    if options.alignment == "bottom-right":
        return bottom_right
    # alignment=None: causal needs it named unless both alignments agree; windows and ALiBi default bottom-right
    if options.is_causal and needed and not _np.array_equal(top_left, bottom_right):
        raise ValueError(
            f"{NAME}: is_causal with {query_length} queries and {'padded ' if valid_keys is not None else ''}"
            f"keys of length(s) {sorted(set((bottom_right + query_length).tolist()))} needs alignment="
            "'top-left' (torch is_causal, JAX, xFormers LowerTriangularMask) or 'bottom-right' (FlashAttention "
            ">= 2.1, xFormers *FromBottomRight*, a KV cache): the two differ here (see npattn.attention.convention)")
    return bottom_right


def _valid_keys(padding_keep, key_length: int, prefix_needed: bool):
    """Per batch element, the number of real keys (host); with bottom-right offsets they must be a prefix."""
    if padding_keep is None:
        return None
    keep = backend.to_numpy(padding_keep)[:, 0, 0, :]
    counts = keep.sum(axis=1)
    if prefix_needed:
        prefix = _np.arange(key_length)[None, :] < counts[:, None]
        if not _np.array_equal(prefix, keep):
            bad = int(_np.argmax((prefix != keep).any(axis=1)))
            raise ValueError(f"{NAME}: key_padding_mask row {bad} pads keys that are not at the end, but a "
                             "bottom-right diagonal (causal, window or ALiBi) is placed from each sequence's number "
                             "of real keys; pad on the right, or pass alignment='top-left' or an int offset")
    return counts


def _flash_window(window, key_length: int, causal: bool):
    """FlashAttention's rewrite of window_size (flash_api.cpp mha_fwd, set_params_fprop).

    Returns (window or None, causal_kernel): a side >= seqlen_k becomes -1; causal sets right = 0; the kernel is
    the causal one when left < 0 and right == 0; then a -1 next to a bounded side becomes seqlen_k.
    """
    left, right = window if window is not None else (-1, -1)
    left = -1 if left >= key_length else left
    right = -1 if right >= key_length else right
    if causal:
        right = 0
    causal_kernel = left < 0 and right == 0
    if left < 0 <= right:
        left = key_length
    if right < 0 <= left:
        right = key_length
    return (None if (left, right) == (-1, -1) else (left, right)), causal_kernel


def _resolved_window(options: _Options, key_length: int, seqlen_k: int):
    """(window with None for unbounded sides, whether flash would run its causal kernel)."""
    flash_window, causal_kernel = _flash_window(options.window, seqlen_k, options.is_causal)
    window = flash_window if options.window_unbounded == "seqlen_k" else options.window
    if window is None:
        return None, causal_kernel
    left, right = (None if w < 0 else w for w in window)
    return ((left, right) if (left, right) != (None, None) else None), causal_kernel


def _plan(options: _Options, q: Tensor, k: Tensor, v: Tensor, masks: dict, seqlen_k: int | None = None) -> Plan:
    """Check shapes and resolve every option of one dense call (query (B, Hq, Lq, D))."""
    batch, heads, query_length, dim = q.shape
    kv_heads, key_length = k.shape[1], k.shape[2]
    target = (batch, heads, query_length, key_length)
    scale = options.scale
    if scale is None:
        if dim == 0:
            raise _fail("query", "of head dim D >= 1 when scale is None (scale = 1/sqrt(D))", f"shape {q.shape}")
        scale = 1.0 / math.sqrt(dim)

    attn_keep = attn_bias = None
    attn_mask = masks.get("attn_mask")
    if attn_mask is not None:
        data = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
        if getattr(data, "dtype", None) == _np.bool_:
            attn_keep = xp.reshape(data, _as_4d(tuple(data.shape), target, "attn_mask"))
        else:
            attn_mask = _as_float_tensor(attn_mask, "attn_mask (bool: True = attend, or float: added)", q.dtype)
            attn_bias = ops.reshape(attn_mask, _as_4d(attn_mask.shape, target, "attn_mask"))
    bias = masks.get("bias")
    if bias is not None:
        bias = _as_float_tensor(bias, "bias", q.dtype)
        bias = ops.reshape(bias, _as_4d(bias.shape, target, "bias"))

    padding_keep = None
    key_padding_mask = masks.get("key_padding_mask")
    if key_padding_mask is not None:
        data = _bool_data(key_padding_mask, "key_padding_mask", "True = padding, as nn.MultiheadAttention")
        if tuple(data.shape) != (batch, key_length):
            raise _fail("key_padding_mask", f"of shape (B, Lk) = {(batch, key_length)}", f"shape {tuple(data.shape)}")
        padding_keep = xp.reshape(~data, (batch, 1, 1, key_length))

    window, causal_kernel = _resolved_window(options, key_length, key_length if seqlen_k is None else seqlen_k)
    slopes = masks.get("alibi_slopes")
    alibi_form = options.alibi_form
    if alibi_form == "flash":  # flash-attn's mask.h: +m*j in the causal kernel, -m*|i + off - j| otherwise
        alibi_form = "fairseq" if causal_kernel else "symmetric"
    if slopes is not None:
        slopes = _as_float_tensor(slopes, "alibi_slopes", q.dtype)
        if slopes.shape not in ((heads,), (batch, heads)):
            raise _fail("alibi_slopes", f"of shape (Hq,) = ({heads},) or (B, Hq) = {(batch, heads)}",
                        f"shape {slopes.shape}")
        slopes = ops.reshape(slopes, (-1, heads, 1, 1))

    diagonal_used = options.is_causal or window is not None or (slopes is not None and alibi_form == "symmetric")
    bottom_right = options.alignment == "bottom-right" or (options.alignment is None and diagonal_used)
    valid = _valid_keys(padding_keep, key_length, prefix_needed=diagonal_used and bottom_right)
    offsets = _offsets(options, batch, query_length, key_length, valid, diagonal_used)

    dropout_keep = masks.get("dropout_mask")
    if options.dropout_p > 0:
        if dropout_keep is None:
            raise ValueError(f"{NAME}: dropout_p={options.dropout_p} needs dropout_mask, the boolean keep mask "
                             "(True = keep) broadcastable to (B, Hq, Lq, Lk): npattn draws no hidden random numbers")
        data = _bool_data(dropout_keep, "dropout_mask", "True = keep")
        dropout_keep = xp.reshape(data, _as_4d(tuple(data.shape), target, "dropout_mask"))
    elif dropout_keep is not None:
        raise _fail("dropout_p", "> 0 when a dropout_mask is given (P * keep / (1 - p))", options.dropout_p)

    return Plan(batch=batch, heads=heads, kv_heads=kv_heads, query_length=query_length, key_length=key_length,
                scale=scale, softcap=options.softcap, causal=options.is_causal, window=window, offsets=offsets,
                attn_keep=attn_keep, padding_keep=padding_keep, attn_bias=attn_bias, bias=bias, alibi_slopes=slopes,
                alibi_form=alibi_form, dropout_p=options.dropout_p, dropout_keep=dropout_keep,
                masked_rows=options.masked_rows, _dtype=q.dtype)


def _check_qkv(query, key, value, options: _Options, varlen: bool):
    q = _as_float_tensor(query, "query")
    k = _as_float_tensor(key, "key", q.dtype)
    v = _as_float_tensor(value, "value", q.dtype)
    ndim, layout = (3, "(H, total, D)") if varlen else (4, "(B, H, L, D)")
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.ndim != ndim:
            raise _fail(name, f"{ndim}-D {layout}" + ("" if varlen else " (add axes for a missing batch or head)"),
                        f"shape {t.shape}")
    lead = 0 if varlen else 1
    if not varlen and not q.shape[0] == k.shape[0] == v.shape[0]:
        raise _fail("key and value", f"of the query's batch size {q.shape[0]}", f"{k.shape[0]} and {v.shape[0]}")
    if k.shape[-1] != q.shape[-1]:
        raise _fail("key", f"of the query's head dim {q.shape[-1]} (last axis)", f"shape {k.shape}")
    if v.shape[:-1] != k.shape[:-1]:
        raise _fail("value", f"of shape {k.shape[:-1]} + (Dv,) to match key", f"shape {v.shape}")
    heads, kv_heads = q.shape[lead], k.shape[lead]
    if kv_heads == 0 or heads % kv_heads:
        raise _fail("key", f"with a number of heads that divides the query's {heads}", f"{kv_heads} heads")
    if heads != kv_heads and not options.enable_gqa:
        raise ValueError(f"{NAME}: query has {heads} heads and key/value {kv_heads}; grouped-query attention needs "
                         "enable_gqa=True (query head h reads kv head h // (Hq / Hkv), as torch, flash, JAX, ONNX)")
    return q, k, v


# ---------------------------------------------------------------------------------------------
# the materialised path: steps (1)-(6) composed of differentiable operations


def materialised(q: Tensor, k: Tensor, v: Tensor, plan: Plan, need_lse: bool = True):
    """(O (B, Hq, Lq, Dv), lse (B, Hq, Lq)) by the equations, the whole score matrix at once.

    ``need_lse=False`` returns (O, None) and skips the passes over the score matrix that only the lse and the
    'nan' / 'uniform' row policies read (the softmax already gives an empty row zero weights and gradients).
    """
    if plan.key_length == 0:   # no keys at all: every row is empty (and a softmax over nothing has no max)
        fill = xp.nan if plan.masked_rows == "nan" else 0.0
        out = xp.full((plan.batch, plan.heads, plan.query_length, v.shape[-1]), fill, dtype=q.dtype)
        lse = Tensor(xp.full(out.shape[:-1], xp.inf, dtype=q.dtype)) if need_lse else None
        return Tensor(out), lse
    everything = (slice(0, plan.batch), slice(0, plan.heads), slice(0, plan.query_length), slice(0, plan.key_length))
    if plan.groups > 1:   # query head h reads kv head h // groups (torch enable_gqa, flash, JAX, Meta repeat_kv)
        k, v = ops.repeat(k, plan.groups, axis=1), ops.repeat(v, plan.groups, axis=1)
    scores = ops.matmul(ops.mul(q, plan.scale), ops.swapaxes(k, -1, -2))                   # (1)
    if plan.softcap:
        scores = ops.mul(ops.tanh(ops.div(scores, plan.softcap)), plan.softcap)            # (2)
    for term in (plan.attn_bias, plan.bias):                                                # (3)
        if term is not None:
            scores = ops.add(scores, term)
    if plan.alibi_slopes is not None:
        distance = Tensor(plan.alibi_distance(everything[0], everything[2], everything[3]))
        scores = ops.add(scores, ops.mul(plan.alibi_slopes, distance))
    keep = plan.keep(*everything)                                                           # (4)
    finite_below = scores.data != -xp.inf     # a -inf float mask entry counts as masked (torch's _safe_softmax)
    present = finite_below if keep is None else finite_below & keep
    # the -inf logits join the keep-mask: the core softmax gives a row of -inf only NaN (torch's softmax),
    # a fully masked row its zeros -- the policy below starts from those zeros.  Without -inf logits the
    # softmax gets `keep` as given (broadcast, not expanded), so the numbers are the composed step's bit for bit.
    mask = keep if bool(xp.all(finite_below)) else present
    weights = nn.softmax(scores, axis=-1, mask=mask)                                        # (5)
    if not need_lse and plan.masked_rows == "zero":     # the masked softmax already gives an empty row zeros
        return _dropped_times_values(weights, v, plan), None

    empty = ~xp.any(present, axis=-1, keepdims=True)      # (B, Hq, Lq, 1); NaN logits count as present
    if plan.masked_rows == "nan":
        weights = ops.where(empty, xp.asarray(xp.nan, dtype=q.dtype), weights)
    elif plan.masked_rows == "uniform" and plan.key_length:
        weights = ops.where(empty, xp.asarray(1.0 / plan.key_length, dtype=q.dtype), weights)
    out = _dropped_times_values(weights, v, plan)
    if not need_lse:
        return out, None

    masked_scores = ops.where(empty | ~present, xp.asarray(-xp.inf, dtype=q.dtype), scores)
    finite_rows = ops.where(empty, xp.zeros((), dtype=q.dtype), masked_scores)   # no exp(-inf - -inf) on the tape
    lse = ops.where(empty[..., 0], xp.asarray(xp.inf, dtype=q.dtype), ops.logsumexp(finite_rows, axis=-1))
    return out, lse


def _dropped_times_values(weights: Tensor, v: Tensor, plan: Plan) -> Tensor:
    """(P * keep / (1 - p)) V: steps (5)'s dropout and (6)."""
    if plan.dropout_keep is not None:
        keep_scale = (plan.dropout_keep / (1.0 - plan.dropout_p)).astype(weights.dtype)
        weights = ops.mul(weights, Tensor(xp.broadcast_to(keep_scale, weights.shape)))
    return ops.matmul(weights, v)                                                           # (6)


# ---------------------------------------------------------------------------------------------
# the public function


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None, enable_gqa: bool = False, *, alignment=None,
                                 window=None, window_unbounded: str = "infinite", softcap: float = 0.0, bias=None,
                                 alibi_slopes=None, alibi_form: str = "symmetric", key_padding_mask=None,
                                 dropout_mask=None, masked_rows: str = "zero", return_lse: bool = False,
                                 cu_seqlens_q=None, cu_seqlens_k=None, implementation: str = "auto",
                                 chunk_size=None):
    """Attention(Q, K, V) with torch's arguments and every major library's options (module docstring).

    Shapes: query (B, Hq, Lq, D), key (B, Hkv, Lk, D), value (B, Hkv, Lk, Dv) -> output (B, Hq, Lq, Dv) and,
    with ``return_lse``, lse (B, Hq, Lq).  With ``cu_seqlens_q``/``cu_seqlens_k`` (int (N+1,), starting at 0,
    FlashAttention's varlen API and xFormers' ``BlockDiagonal*`` masks) the inputs are packed sequences
    query (Hq, total_q, D), key (Hkv, total_k, D), value (Hkv, total_k, Dv) -> (Hq, total_q, Dv), lse (Hq, total_q);
    sequence n holds rows cu_seqlens[n]:cu_seqlens[n+1] and attends only inside itself, with its own offsets.

    torch's arguments:
        attn_mask: bool (True = attend) or float (added to the logits), broadcastable to (B, Hq, Lq, Lk).
            It may be combined with ``is_causal`` (torch refuses that; JAX allows it): both apply.
        dropout_p: the dropout probability p; needs ``dropout_mask``.
        is_causal: keep j <= i + off.  With Lq != Lk (per sequence) the alignment must be named.
        scale: the logit scale (default 1/sqrt(D)).
        enable_gqa: allow Hq = G * Hkv; query head h reads kv head h // G (interleaved, not tiled).

    Options (shared/specs/attention-core.md; ``npattn.attention.convention(name)`` gives each library's set):
        alignment: None, 'top-left', 'bottom-right' or an int offset off; None requires the two alignments to
            agree for causal masks, and means 'bottom-right' for windows and ALiBi.
        window: (left, right), FlashAttention's ``window_size``: keep i + off - left <= j <= i + off + right, -1 an
            unbounded side.  window_unbounded='seqlen_k' applies flash_api.cpp's rewrite (a side >= Lk is -1,
            a -1 beside a bounded side becomes Lk; varlen: the longest key sequence).
        softcap: c > 0 caps the scaled logits at c * tanh(S / c) before any bias (step 2); 0 = off.
        bias: float, broadcastable to (B, Hq, Lq, Lk), added after the cap (differentiable).
        alibi_slopes: (Hq,) or (B, Hq) slopes m_h (differentiable; ``npattn.attention.alibi_slopes``).
            alibi_form: 'symmetric' -m|i + off - j| (flash outside its causal kernel; equals the paper's -m(i - j)
            under a causal mask), 'fairseq' +m*j (the official code; flash's causal kernel), 'flash' picks as
            flash does (its causal kernel: is_causal without a bounded window).
        key_padding_mask: bool (B, Lk), True = padding (nn.MultiheadAttention's convention).  Bottom-right
            offsets then use each row's number of real keys, which must be a prefix (right padding).
        dropout_mask: bool keep mask (True = keep) broadcastable to (B, Hq, Lq, Lk): P * keep / (1 - p).
        masked_rows: 'zero' (default; zero output and gradients), 'nan' or 'uniform' (mean of V over all keys).
        return_lse: also return log sum_j exp(S_ij) over the final logits (+inf for an empty row).
        implementation: 'materialised' (the composed oracle; grad-of-grad), 'chunked' (online softmax in blocks
            of ``chunk_size`` = (query rows, key columns), never the whole score matrix) or 'auto'.
    """
    options = _options(dropout_p, is_causal, scale, enable_gqa, alignment, window, window_unbounded, softcap,
                       alibi_form, masked_rows, implementation, chunk_size)
    masks = {"attn_mask": attn_mask, "bias": bias, "alibi_slopes": alibi_slopes,
             "key_padding_mask": key_padding_mask, "dropout_mask": dropout_mask}
    if cu_seqlens_q is not None or cu_seqlens_k is not None:
        out, lse = _varlen(query, key, value, options, masks, cu_seqlens_q, cu_seqlens_k, bool(return_lse))
    else:
        q, k, v = _check_qkv(query, key, value, options, varlen=False)
        out, lse = _dense(q, k, v, _plan(options, q, k, v, masks), options, bool(return_lse))
    return (out, lse) if return_lse else out


def _dense(q: Tensor, k: Tensor, v: Tensor, plan: Plan, options: _Options, need_lse: bool = True):
    """(out, lse); lse may be None when not ``need_lse`` (the chunked kernel computes it anyway)."""
    implementation = options.implementation
    if implementation == "auto":
        elements = plan.batch * plan.heads * plan.query_length * plan.key_length
        implementation = "materialised" if elements <= MATERIALISE_MAX_ELEMENTS else "chunked"
    if implementation == "materialised":
        return materialised(q, k, v, plan, need_lse)
    from ._flash import chunked
    return chunked(q, k, v, plan, options.chunk_size)


# ---------------------------------------------------------------------------------------------
# variable-length (packed) batches


def _cu_seqlens(cu, total: int, arg: str):
    if cu is None:
        raise _fail(arg, "given together with the other cu_seqlens (int (N+1,))", None)
    data = backend.to_numpy(cu.data if isinstance(cu, Tensor) else xp.asarray(cu) if isinstance(cu, list) else cu)
    if data.ndim != 1 or data.size < 1 or _np.dtype(data.dtype).kind not in "iu":
        raise _fail(arg, "a 1-D integer array (N+1,) of sequence starts", f"{data.dtype} of shape {data.shape}")
    starts = data.astype(_np.int64)
    if starts[0] != 0 or starts[-1] != total or _np.any(_np.diff(starts) < 0):
        raise _fail(arg, f"non-decreasing from 0 to the packed length {total}", starts.tolist())
    return starts


def _slice_mask(mask, rows: slice, cols: slice, arg: str):
    """A mask broadcastable to (Hq, total_q, total_k) cut to one sequence's (rows, cols) block."""
    if mask is None:
        return None
    shape = tuple(mask.shape)
    if len(shape) > 3:
        raise _fail(arg, "broadcastable to (Hq, total_q, total_k) with cu_seqlens", f"shape {shape}")
    cuts = (rows, cols)[2 - min(len(shape), 2):]
    index = (Ellipsis,) + tuple(slice(None) if n == 1 else c for n, c in zip(shape[-len(cuts):], cuts))
    return ops.getitem(mask, index) if isinstance(mask, Tensor) else mask[index]


def _varlen(query, key, value, options: _Options, masks: dict, cu_seqlens_q, cu_seqlens_k, need_lse: bool = True):
    q, k, v = _check_qkv(query, key, value, options, varlen=True)
    starts_q = _cu_seqlens(cu_seqlens_q, q.shape[1], "cu_seqlens_q")
    starts_k = _cu_seqlens(cu_seqlens_k, k.shape[1], "cu_seqlens_k")
    if len(starts_q) != len(starts_k):
        raise _fail("cu_seqlens_k", f"of the same number of sequences as cu_seqlens_q ({len(starts_q) - 1})",
                    len(starts_k) - 1)
    if masks["key_padding_mask"] is not None:
        raise ValueError(f"{NAME}: key_padding_mask does not apply to varlen batches; cu_seqlens_k gives each "
                         "sequence's keys")
    slopes = masks["alibi_slopes"]
    longest_k = int(_np.max(_np.diff(starts_k), initial=0))
    outputs, lses = [], []
    for n in range(len(starts_q) - 1):
        rows, cols = slice(starts_q[n], starts_q[n + 1]), slice(starts_k[n], starts_k[n + 1])
        q_n, k_n, v_n = (ops.getitem(t, (slice(None), s))[None] for t, s in ((q, rows), (k, cols), (v, cols)))
        seq_masks = {name: _slice_mask(masks[name], rows, cols, name) for name in ("attn_mask", "bias", "dropout_mask")}
        if slopes is not None and getattr(slopes, "ndim", 1) == 2:
            seq_masks["alibi_slopes"] = ops.getitem(slopes, n) if isinstance(slopes, Tensor) else slopes[n]
        else:
            seq_masks["alibi_slopes"] = slopes
        plan = _plan(options, q_n, k_n, v_n, seq_masks, seqlen_k=longest_k)
        out, lse = _dense(q_n, k_n, v_n, plan, options, need_lse)
        outputs.append(ops.getitem(out, 0))
        lses.append(None if lse is None else ops.getitem(lse, 0))
    if not outputs:
        empty_out = Tensor(xp.zeros((q.shape[0], 0, v.shape[-1]), dtype=q.dtype))
        return empty_out, Tensor(xp.zeros((q.shape[0], 0), dtype=q.dtype))
    lse = ops.concatenate(lses, axis=1) if need_lse else None
    return ops.concatenate(outputs, axis=1), lse


__all__ = ["scaled_dot_product_attention", "materialised", "Plan"]
