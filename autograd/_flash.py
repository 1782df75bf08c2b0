"""Chunked attention: the online softmax of FlashAttention-2 on blocks, in O(L) memory forward and backward.

The function is :func:`autograd.attention.materialised`'s (same :class:`~autograd.attention.Plan`, same
masks); only the order of the sums changes.  Blocks of query rows r, and for each the needed blocks of key
columns c (the causal/window band decides which, so a causal call does about half the work):

forward (Dao 2023, Algorithm 1)                       backward (Algorithm 2, recomputing S and P)
    S = (scale Q_r) K_c^T [, cap, bias, masks]            P = exp(S - lse_r)
    m' = max(m, rowmax S)                                 dV_c += (P * keep)^T dO_r
    P = exp(S - m');  l' = l e^(m - m') + rowsum P        dP = (dO_r V_c^T) * keep
    acc' = acc e^(m - m') + (P * keep) V_c                dS = P * (dP - D_r + dlse_r),  D = rowsum(dO * O)
    O = acc / l,  lse = m + log l                         [cap: dS *= 1 - tanh^2(S_raw / c)]
                                                          dQ_r += scale dS K_c;  dK_c += dS^T (scale Q_r)
(keep is the dropout mask over 1 - p.)  Only one block of scores lives at a time, of at most
:data:`BLOCK_ELEMENTS` entries (several (batch, head) pairs share a block when the sequences are short).

The forward first runs a row block *unshifted*: P = exp(S), l = rowsum(P), O = acc / l, lse = log l -- the
softmax is invariant to the shift m, which only keeps exp in range.  In float64 exp(S) is accurate to relative
eps for |S| up to ~700, so when every row's l lies in :meth:`_Kernel.safe_sums` (its largest term far from
overflow and from the subnormals) this is the same function to rounding, with one pass over each block of
scores (exp) instead of three (max, subtract, exp) and no rescaling.  Otherwise (huge or tiny logits, an empty
row, a non-finite value) the row block is recomputed by the max-shifted online softmax above.

The result is recorded as one primitive whose VJP runs the backward above.  When the backward pass is itself
recorded (``create_graph``, for grad-of-grad), the VJP instead differentiates the materialised composition
(same function, differentiable to any order), which forms the score matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as _np

from . import _threads, backend
from .backend import xp
from .tensor import Tensor, backward_pass, is_grad_enabled, record

#: Largest block of scores (entries, all its (batch, head) units together): 8 MiB in float64.
BLOCK_ELEMENTS = 1 << 20
#: Default size of one unit's part of a block: 4 MiB in float64 (512 x 1024 for long sequences: 3-4 % faster
#: than 256 x 1024 at L = 2048 and 8192, one thread, float64).
UNIT_ELEMENTS = 1 << 19
#: The same under a causal mask or window: 256 x 1024, since the band wastes about half of the last rows x rows
#: corner of each row block (512 rows were 6-13 % slower causal at L = 2048).
BAND_UNIT_ELEMENTS = 1 << 18
#: Units per default block (at most BLOCK_ELEMENTS): work for every thread of the elementwise passes.
UNITS_PER_BLOCK = 2
#: Default widest block of key columns.
BLOCK_COLUMNS = 1024


@dataclass(frozen=True)
class _Block:
    """One block of work: batch and kv-head ranges (query heads ``heads``), query rows and key columns."""

    batches: slice
    kv_heads: slice
    heads: slice
    rows: slice
    cols: slice
    band: bool   # whether the causal/window band cuts this block


def _column_pieces(plan, batches: slice, rows: slice, width: int) -> list:
    """The key-column blocks row block ``rows`` needs, each flagged whether the band cuts it."""
    left, up = plan.band()
    offsets = plan.offsets[batches]
    low, high = int(offsets.min()), int(offsets.max())
    first, last = rows.start, rows.stop - 1
    start = 0 if left is None else max(0, first + low - left)
    stop = plan.key_length if up is None else min(plan.key_length, last + high + up + 1)
    if stop <= start:
        return []
    # columns that every row of the block keeps: no structural mask needed there
    full_start = start if left is None else min(stop, max(start, last + high - left))
    full_stop = stop if up is None else max(full_start, min(stop, first + low + up + 1))
    pieces = []
    for a, b, band in ((start, full_start, True), (full_start, full_stop, False), (full_stop, stop, True)):
        for c in range(a, b, width):
            pieces.append((slice(c, min(b, c + width)), band))
    return pieces


class _Kernel:
    """The arrays of one call in the kernel's layout and the block loops over them.

    q (B, Hkv, G, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv): views of the inputs (query head h = Hkv-major
    index hkv * G + g, the interleaved GQA mapping).  A block holds several (batch, kv head) units; its GEMMs
    run over all of them (BLAS threads), its elementwise passes unit by unit on :mod:`._threads`.

    Folded sums (fewer passes over a block, same arithmetic up to rounding): with ones appended to V, the
    forward's P [V | 1] gives rowsum(P) in its last column; in the backward, [scale Q | -lse] [K | 1]^T is
    S - lse and [dO | -D] [V | 1]^T is dP - D.  (Not under dropout, which scales P and dP but not the sum / D,
    nor softcap for the first backward product, whose cap applies to S itself.)
    """

    def __init__(self, plan, q, k, v, chunk_size):
        self.plan = plan
        groups = plan.groups
        self.q = xp.reshape(q, (plan.batch, plan.kv_heads, groups) + q.shape[2:])
        self.k, self.v = k, v
        self.dtype = q.dtype
        self.fold_sums = plan.dropout_keep is None
        self.fold_lse = not plan.softcap
        self._k_ones = self._v_ones = None
        budget = BLOCK_ELEMENTS
        if chunk_size is None:
            # one unit's block ~ UNIT_ELEMENTS, wide (BLAS runs these shapes near its best); then UNITS_PER_BLOCK
            # units per block (work for every thread)
            width = max(1, min(plan.key_length, BLOCK_COLUMNS))
            unit = min(BAND_UNIT_ELEMENTS if plan.band() != (None, None) else UNIT_ELEMENTS, BLOCK_ELEMENTS)
            width = max(1, min(width, unit // groups))
            rows = max(1, min(max(plan.query_length, 1), unit // (width * groups)))
            budget = min(BLOCK_ELEMENTS, UNITS_PER_BLOCK * unit)
        else:
            rows, width = chunk_size
        self.row_block, self.col_block = max(1, rows), max(1, width)
        # (batch, kv head) rectangles whose blocks fit the budget at the chosen rows x columns
        per_block = max(1, budget // (self.row_block * self.col_block * groups))
        self.units = []
        if per_block >= plan.kv_heads:
            step = max(1, per_block // plan.kv_heads)
            for b in range(0, plan.batch, step):
                self.units.append((slice(b, min(plan.batch, b + step)), slice(0, plan.kv_heads)))
        else:
            for b in range(plan.batch):
                for h in range(0, plan.kv_heads, per_block):
                    self.units.append((slice(b, b + 1), slice(h, min(plan.kv_heads, h + per_block))))

    @property
    def v_ones(self):
        """[V | 1] (B, Hkv, Lk, Dv + 1)."""
        if self._v_ones is None:
            self._v_ones = _with_column(self.v, 1.0)
        return self._v_ones

    @property
    def k_ones(self):
        """[K | 1] (B, Hkv, Lk, D + 1)."""
        if self._k_ones is None:
            self._k_ones = _with_column(self.k, 1.0)
        return self._k_ones

    def blocks(self):
        """Yield (row block, [column _Block, ...]) for every unit and row block."""
        plan, groups = self.plan, self.plan.groups
        for batches, kv_heads in self.units:
            heads = slice(kv_heads.start * groups, kv_heads.stop * groups)
            for i in range(0, plan.query_length, self.row_block):
                rows = slice(i, min(plan.query_length, i + self.row_block))
                yield [_Block(batches, kv_heads, heads, rows, cols, band)
                       for cols, band in _column_pieces(plan, batches, rows, self.col_block)], \
                    _Block(batches, kv_heads, heads, rows, slice(0, 0), False)

    # -- the pieces of one block ---------------------------------------------------------------

    def scaled_queries(self, block: _Block):
        """(nb, nh, G * rows, D): the block's queries times the scale (one GEMM operand)."""
        q = self.q[block.batches, block.kv_heads, :, block.rows]
        return xp.reshape(q * self.plan.scale, _flat_shape(q.shape))

    def quad(self, array):
        """(nb, nh, G * rows, X) -> (nb, nh * G, rows, X): query-head layout, a view."""
        nb, nh, stacked, width = array.shape
        return xp.reshape(array, (nb, nh * self.plan.groups, stacked // self.plan.groups, width))

    def scores(self, block: _Block, queries, keys, keep_tanh: bool = False):
        """S for the block (steps (1)-(4)) from ``queries @ keys[cols]^T``, in (nb, nh, G * rows, cols);
        also tanh(S_raw / c) when asked.  ``queries``/``keys`` may carry the folded columns ([Q | -lse], [K | 1])."""
        plan = self.plan
        s = xp.matmul(queries, xp.swapaxes(keys[block.batches, block.kv_heads, block.cols], -1, -2))
        tanh = None
        if plan.softcap:
            s /= plan.softcap
            xp.tanh(s, out=s)
            if keep_tanh:
                tanh = s.copy()
            s *= plan.softcap
        s4 = self.quad(s)
        index = (block.batches, block.heads, block.rows, block.cols)
        for term in (plan.attn_bias, plan.bias):
            if term is not None:
                s4 += term.data[_block_index(term.shape, *index)]
        if plan.alibi_slopes is not None:
            slopes = plan.alibi_slopes.data[_block_index(plan.alibi_slopes.shape, block.batches, block.heads,
                                                         slice(0, 1), slice(0, 1))]
            s4 += slopes * plan.alibi_distance(block.batches, block.rows, block.cols)
        keep = _keep(plan, block)
        if keep is not None:
            xp.copyto(s4, xp.asarray(-xp.inf, dtype=s.dtype), where=~keep)
        return s, tanh

    def dropout_scale(self, block: _Block):
        """keep / (1 - p) for the block in (nb, nh, G * rows, cols) layout, or None."""
        plan = self.plan
        if plan.dropout_keep is None:
            return None
        index = _block_index(plan.dropout_keep.shape, block.batches, block.heads, block.rows, block.cols)
        keep = plan.dropout_keep[index]
        shape = (block.batches.stop - block.batches.start, block.heads.stop - block.heads.start,
                 block.rows.stop - block.rows.start, block.cols.stop - block.cols.start)
        scale = xp.broadcast_to(keep, shape).astype(self.dtype) * (1.0 / (1.0 - plan.dropout_p))
        return xp.reshape(scale, (shape[0], shape[1] // plan.groups, -1, shape[3]))

    # -- forward ------------------------------------------------------------------------------

    def forward(self):
        """(O (B, Hkv, G, Lq, Dv), lse (B, Hkv, G, Lq)), one row block at a time: unshifted when its sums allow
        (:meth:`unshifted_rows`), else by the max-shifted online softmax (:meth:`online_rows`)."""
        dv = self.v.shape[-1]
        out = xp.zeros(self.q.shape[:-1] + (dv,), dtype=self.dtype)
        lse = xp.empty(self.q.shape[:-1], dtype=self.dtype)
        for pieces, whole in self.blocks():
            block = self.unshifted_rows(pieces, whole)
            block_out, block_lse = block if block is not None else self.online_rows(pieces, whole)
            index = (whole.batches, whole.kv_heads, slice(None), whole.rows)
            out[index] = xp.reshape(block_out, out[index].shape)
            lse[index] = xp.reshape(block_lse, lse[index].shape)
        return out, lse

    def safe_sums(self) -> tuple:
        """(low, high): the range of a row's sum l = sum_j exp(S_ij) in which the unshifted exponentials lose
        nothing.  Below, the row's largest term e^M >= l / Lk may sit near the subnormals (precision lost to
        underflow, or an empty row); above, the terms or l * V could overflow."""
        info = _np.finfo(_np.dtype(self.dtype))
        keys = max(self.plan.key_length, 1)
        return float(info.tiny) * 2.0 ** (info.nmant + 1) * keys * keys, float(info.max) * 2.0 ** -40

    def unshifted_rows(self, pieces, whole: _Block):
        """(O, lse) of one row block with P = exp(S) unshifted -- no running max, no rescaling, one pass (exp)
        over each block of scores -- or None when some row's sum leaves :meth:`safe_sums` (or a non-finite
        value reaches the accumulator): then the caller takes the max-shifted path.  softmax is invariant to
        the shift, so inside the range this is the same function to rounding (float64 keeps e^S exact to
        relative eps for |S| up to ~700)."""
        dv = self.v.shape[-1]
        values = self.v_ones if self.fold_sums else self.v
        q_scaled = self.scaled_queries(whole)
        total = None if self.fold_sums else xp.zeros(q_scaled.shape[:3] + (1,), dtype=self.dtype)
        acc = xp.zeros(q_scaled.shape[:3] + (values.shape[-1],), dtype=self.dtype)
        for block in pieces:
            s, _ = self.scores(block, q_scaled, self.k)

            def exp_step(s, t):
                with _np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught below
                    xp.exp(s, out=s)                                   # P = exp(S)
                    if t is not None:
                        t += xp.sum(s, axis=-1, keepdims=True)

            with _np.errstate(over="ignore", invalid="ignore"):
                _per_unit(exp_step, s, total)
                scale = self.dropout_scale(block)
                if scale is not None:
                    s *= scale
                acc += xp.matmul(s, values[block.batches, block.kv_heads, block.cols])
        if self.fold_sums:
            total = acc[..., dv:]                                      # rowsum(P) from P [V | 1]
        low, high = self.safe_sums()
        if not bool(xp.all((total >= low) & (total <= high)) and xp.all(xp.isfinite(acc))):
            return None
        return acc[..., :dv] / total, xp.log(total)

    def online_rows(self, pieces, whole: _Block):
        """(O, lse) of one row block by the online softmax: every block shifted by the running row max."""
        dv = self.v.shape[-1]
        values = self.v_ones if self.fold_sums else self.v
        zero = xp.zeros((), dtype=self.dtype)
        q_scaled = self.scaled_queries(whole)
        rows = q_scaled.shape[:3] + (1,)
        running_max = xp.full(rows, -xp.inf, dtype=self.dtype)
        rescale = xp.empty(rows, dtype=self.dtype)
        total = None if self.fold_sums else xp.zeros(rows, dtype=self.dtype)
        acc = xp.zeros(q_scaled.shape[:3] + (values.shape[-1],), dtype=self.dtype)
        for block in pieces:
            s, _ = self.scores(block, q_scaled, self.k)

            def softmax_step(s, m, r, t):
                new_max = xp.maximum(m, xp.max(s, axis=-1, keepdims=True))
                shift = xp.where(xp.isfinite(new_max), new_max, zero)
                xp.subtract(m, shift, out=r)
                xp.exp(r, out=r)                                       # e^(m - m'); 0 while m = -inf
                s -= shift
                xp.exp(s, out=s)                                       # P = exp(S - m')
                m[...] = new_max
                if t is not None:
                    t *= r
                    t += xp.sum(s, axis=-1, keepdims=True)

            _per_unit(softmax_step, s, running_max, rescale, total)
            scale = self.dropout_scale(block)
            if scale is not None:
                s *= scale
            acc *= rescale
            acc += xp.matmul(s, values[block.batches, block.kv_heads, block.cols])
        if self.fold_sums:
            total = acc[..., dv:]                                      # rowsum(P) from P [V | 1]
        empty = total == 0
        block_out = acc[..., :dv] / xp.where(empty, xp.ones((), dtype=self.dtype), total)
        block_lse = xp.where(empty, xp.asarray(xp.inf, dtype=self.dtype),
                             running_max + xp.log(xp.where(empty, xp.ones((), dtype=self.dtype), total)))
        return block_out, block_lse

    # -- backward -----------------------------------------------------------------------------

    def backward(self, out, lse, g_out, g_lse, want: dict):
        """Cotangents of (q, k, v, attn_bias, bias, alibi_slopes) for cotangents g_out (like out) and g_lse.

        ``want`` names the additive terms whose gradients are needed.  Returns a dict of arrays in the
        inputs' layouts (q, k, v as given; the terms in their 4-D plan shapes).
        """
        plan = self.plan
        dq = xp.zeros(self.q.shape, dtype=self.dtype)
        # dK and dV accumulate transposed, (B, Hkv, D, Lk): dO^T P and (scale Q)^T dS run 10-15 % faster in
        # OpenBLAS than P^T dO and dS^T (scale Q) (one thread, float64, blocks of 256 x 1024; shared/PERFORMANCE.md)
        dk_t = xp.zeros(self.k.shape[:2] + self.k.shape[:1:-1], dtype=self.dtype)
        dv_t = xp.zeros(self.v.shape[:2] + self.v.shape[:1:-1], dtype=self.dtype)
        d_terms = {name: xp.zeros(getattr(plan, name).shape, dtype=self.dtype) for name in want}
        keys = self.k_ones if self.fold_lse else self.k
        values = self.v_ones if self.fold_sums else self.v
        for pieces, whole in self.blocks():
            q_scaled = self.scaled_queries(whole)
            index = (whole.batches, whole.kv_heads, slice(None), whole.rows)
            lse_rows = _flat_rows(lse[index][..., None])
            queries = _with_column(q_scaled, -lse_rows) if self.fold_lse else q_scaled
            g_rows = d_rows = g_values = None
            if g_out is not None:
                g_rows = _flat_rows(g_out[index])
                d_rows = xp.sum(g_rows * _flat_rows(out[index]), axis=-1, keepdims=True)   # D_i = rowsum(dO * O)
                g_values = _with_column(g_rows, -d_rows) if self.fold_sums else g_rows
            glse_rows = None if g_lse is None else _flat_rows(g_lse[index][..., None])
            dq_rows = xp.zeros(q_scaled.shape, dtype=self.dtype)
            for block in pieces:
                s, tanh = self.scores(block, queries, keys, keep_tanh=True)
                if not self.fold_lse:
                    s -= lse_rows
                p = _per_unit(lambda s: xp.exp(s, out=s), s) or s         # P = exp(S - lse)
                k_block = self.k[block.batches, block.kv_heads, block.cols]
                if g_rows is not None:
                    scale = self.dropout_scale(block)
                    kept = p if scale is None else p * scale
                    dv_t[block.batches, block.kv_heads, :, block.cols] += xp.matmul(xp.swapaxes(g_rows, -1, -2), kept)
                    ds = xp.matmul(g_values, xp.swapaxes(values[block.batches, block.kv_heads, block.cols], -1, -2))

                    def ds_step(ds, p, scale, d, glse):
                        if scale is not None:
                            ds *= scale
                        if d is not None:
                            ds -= d
                        ds *= p                                         # dS = P (dP - D)
                        if glse is not None:
                            ds += p * glse

                    _per_unit(ds_step, ds, p, scale, None if self.fold_sums else d_rows, glse_rows)
                else:
                    ds = p * glse_rows                                  # d lse / dS = P
                self.accumulate_terms(d_terms, block, ds)
                if tanh is not None:
                    tanh *= tanh
                    xp.subtract(1.0, tanh, out=tanh)
                    ds *= tanh                                          # d(c tanh(x / c))/dx = 1 - tanh^2
                dq_rows += xp.matmul(ds, k_block)
                dk_t[block.batches, block.kv_heads, :, block.cols] += xp.matmul(xp.swapaxes(q_scaled, -1, -2), ds)
            dq[index] = xp.reshape(dq_rows, dq[index].shape)
        dq *= plan.scale
        # (B, Hkv, Lk, D) views of the transposed accumulators: a contiguous copy would add an L x D array per
        # gradient to the peak memory at the very end
        return {"q": dq, "k": xp.swapaxes(dk_t, -1, -2), "v": xp.swapaxes(dv_t, -1, -2), **d_terms}

    def accumulate_terms(self, d_terms: dict, block: _Block, ds) -> None:
        """Add the block's dS to the gradients of the float masks, the bias and the ALiBi slopes."""
        if not d_terms:
            return
        plan = self.plan
        ds4 = self.quad(ds)
        index = (block.batches, block.heads, block.rows, block.cols)
        for name in ("attn_bias", "bias"):
            if name in d_terms:
                target = d_terms[name]
                where = _block_index(target.shape, *index)
                target[where] += _sum_to(ds4, target[where].shape)
        if "alibi_slopes" in d_terms:
            target = d_terms["alibi_slopes"]
            distance = plan.alibi_distance(block.batches, block.rows, block.cols)
            per_head = xp.sum(ds4 * distance, axis=(2, 3), keepdims=True)         # (nb, nh, 1, 1)
            where = _block_index(target.shape, block.batches, block.heads, slice(0, 1), slice(0, 1))
            target[where] += _sum_to(per_head, target[where].shape)


def _with_column(array, value):
    """``array`` (..., X) with one more column (..., X + 1) holding ``value`` (a scalar or (..., 1))."""
    out = xp.empty(array.shape[:-1] + (array.shape[-1] + 1,), dtype=array.dtype)
    out[..., :-1] = array
    out[..., -1:] = value
    return out


def _per_unit(step, *arrays):
    """``step(*unit_slices)`` for every (batch, kv head) unit of (nb, nh, ...) arrays (None passes through),
    on the NumPy backend's threads: the elementwise passes of a block, one cache-sized unit at a time."""
    first = arrays[0]
    count = first.shape[0] * first.shape[1]
    flat = [None if a is None else xp.reshape(a, (-1,) + a.shape[2:]) if a.shape[:2] == first.shape[:2]
            else xp.reshape(xp.broadcast_to(a, first.shape[:2] + a.shape[2:]), (-1,) + a.shape[2:])
            for a in arrays]
    if not _threads.BLOCKED:
        step(*arrays)
        return None
    _threads.parallel_for(lambda u: step(*(None if a is None else a[u] for a in flat)), count, first.size)
    return None


def _flat_rows(array):
    """(nb, nh, G, rows, X) -> (nb, nh, G * rows, X)."""
    return xp.reshape(array, _flat_shape(array.shape))


def _flat_shape(shape: tuple) -> tuple:
    """(nb, nh, G, rows, X) -> (nb, nh, G * rows, X), explicit (a -1 is ambiguous when X = 0: D or Dv of 0)."""
    return tuple(shape[:2]) + (shape[2] * shape[3], shape[-1])


def _sum_to(array, shape: tuple):
    axes = tuple(i for i, (n, m) in enumerate(zip(array.shape, shape)) if m == 1 and n != 1)
    return xp.sum(array, axis=axes, keepdims=True) if axes else array


def _block_index(shape, *index):
    from .attention import _block_index as block_index
    return block_index(tuple(shape), *index)


def _keep(plan, block: _Block):
    """The block's hard mask in query-head layout (nb, nh * G, rows, cols), or None (the band only where it cuts)."""
    return plan.keep(block.batches, block.heads, block.rows, block.cols, band=block.band)


# ---------------------------------------------------------------------------------------------
# masked-row policies on the chunked result


def _empty_rows(lse):
    return backend.to_numpy(lse == xp.inf)


def _apply_policy_forward(plan, kernel: _Kernel, out, lse):
    """``out`` with the 'nan' / 'uniform' rows filled in (a copy: the backward pass reads the softmax's own
    output, 0 on those rows, for D = rowsum(dO * O), as the softmax VJP of the composed form does)."""
    if plan.masked_rows == "zero":
        return out
    empty = _empty_rows(lse)
    if not empty.any():
        return out
    out = out.copy()
    if plan.masked_rows == "nan":
        out[backend.from_numpy(empty)] = xp.nan
        return out
    for b, h, g, rows in _empty_groups(empty):
        weights = _uniform_weights(plan, kernel, b, h * plan.groups + g, rows)
        out[b, h, g, backend.from_numpy(rows)] = xp.matmul(weights, kernel.v[b, h])
    return out


def _apply_policy_backward(plan, kernel: _Kernel, lse, g_out, grads: dict) -> None:
    if plan.masked_rows == "zero" or g_out is None:
        return
    empty = _empty_rows(lse)
    if not empty.any():
        return
    for b, h, g, rows in _empty_groups(empty):
        if plan.masked_rows == "nan":       # P = NaN on the whole row: every dV entry of this kv head is NaN
            grads["v"][b, h] = xp.nan
            continue
        weights = _uniform_weights(plan, kernel, b, h * plan.groups + g, rows)
        grads["v"][b, h] += xp.matmul(xp.swapaxes(weights, -1, -2), g_out[b, h, g, backend.from_numpy(rows)])


def _empty_groups(empty):
    """(b, kv head, g, row indices) of every (batch, query head) with empty rows; ``empty`` (B, Hkv, G, Lq)."""
    import numpy as np

    for b, h, g in zip(*np.nonzero(empty.any(axis=-1))):
        yield int(b), int(h), int(g), np.nonzero(empty[b, h, g])[0]


def _uniform_weights(plan, kernel: _Kernel, b: int, head: int, rows):
    """(len(rows), Lk): 1 / Lk, times keep / (1 - p) under dropout."""
    weights = xp.full((len(rows), plan.key_length), 1.0 / max(plan.key_length, 1), dtype=kernel.dtype)
    if plan.dropout_keep is not None:
        keep = plan.dropout_keep
        block = keep[_block_index(keep.shape, slice(b, b + 1), slice(head, head + 1), slice(0, plan.query_length),
                                  slice(0, plan.key_length))]
        block = xp.broadcast_to(block, (1, 1, plan.query_length, plan.key_length))[0, 0]
        weights = weights * block[backend.from_numpy(rows)] * (1.0 / (1.0 - plan.dropout_p))
    return weights


# ---------------------------------------------------------------------------------------------
# the recorded primitive


TERMS = ("attn_bias", "bias", "alibi_slopes")


class _Gradients:
    """The joint VJP of (out, lse): every parent's cotangent from one backward run per incoming cotangent.

    The tape calls one VJP per parent with the same cotangent object; the first call computes all of them
    (as FlashAttention's backward does) and each parent takes its own.
    """

    def __init__(self, plan, kernel: _Kernel, q: Tensor, k: Tensor, v: Tensor, out, lse):
        self.plan, self.kernel, self.out, self.lse = plan, kernel, out, lse
        self.inputs = {"q": q, "k": k, "v": v, **{name: getattr(plan, name) for name in TERMS}}
        self.want = tuple(name for name in TERMS if isinstance(self.inputs[name], Tensor)
                          and self.inputs[name].requires_grad)
        self._cotangent, self._key, self._grads = None, None, {}

    def parents(self, which: str) -> tuple:
        return tuple((tensor, self._vjp(which, name)) for name, tensor in self.inputs.items()
                     if isinstance(tensor, Tensor))

    def _vjp(self, which: str, name: str):
        def vjp(g):
            key = (which, id(g))
            if self._cotangent is not g or self._key != key:
                self._cotangent, self._key = g, key
                self._grads = self._compute(which, g)
            return self._grads.pop(name, None)

        return vjp

    def _compute(self, which: str, g: Tensor) -> dict:
        if is_grad_enabled():   # the backward pass is recorded: differentiate the composed form instead
            return self._composed(which, g)
        plan, kernel = self.plan, self.kernel
        shape = kernel.q.shape[:-1]
        g_out = xp.reshape(g.data, shape + (g.shape[-1],)) if which == "out" else None
        g_lse = xp.reshape(g.data, shape) if which == "lse" else None
        grads = kernel.backward(self.out, self.lse, g_out, g_lse, self.want)
        _apply_policy_backward(plan, kernel, self.lse, g_out, grads)
        grads["q"] = xp.reshape(grads["q"], self.inputs["q"].shape)
        return {name: Tensor(value) for name, value in grads.items()}

    def _composed(self, which: str, g: Tensor) -> dict:
        from .attention import materialised

        q, k, v = self.inputs["q"], self.inputs["k"], self.inputs["v"]
        out, lse = materialised(q, k, v, self.plan)
        names = [name for name, t in self.inputs.items() if isinstance(t, Tensor) and t.requires_grad]
        grads = backward_pass(out if which == "out" else lse, g, [self.inputs[n] for n in names], create_graph=True)
        return dict(zip(names, grads))


def chunked(q: Tensor, k: Tensor, v: Tensor, plan, chunk_size):
    """(O (B, Hq, Lq, Dv), lse (B, Hq, Lq)) computed block by block; one recorded primitive for each."""
    kernel = _Kernel(plan, q.data, k.data, v.data, chunk_size)
    out, lse = kernel.forward()
    gradients = _Gradients(plan, kernel, q, k, v, out, lse)
    out_shape = (plan.batch, plan.heads, plan.query_length, v.shape[-1])
    out_t = record(xp.reshape(_apply_policy_forward(plan, kernel, out, lse), out_shape), gradients.parents("out"))
    lse_t = record(xp.reshape(lse, out_shape[:3]), gradients.parents("lse"))
    return out_t, lse_t


__all__ = ["chunked", "BLOCK_ELEMENTS", "BLOCK_COLUMNS"]
