"""conv2d as three mutually adjoint primitives, each on a fast array kernel chosen per shape.

``conv(x, w)`` is bilinear, so both of its VJPs are bilinear maps as well, and *their* VJPs are
again one of the three::

    conv(x, w)          -> y    VJP:  x <- input_grad(g, w)     w <- weight_grad(x, g)
    input_grad(g, w)    -> dx   VJP:  g <- conv(a, w)           w <- weight_grad(a, g)
    weight_grad(x, g)   -> dw   VJP:  x <- input_grad(g, b)     g <- conv(x, b)

(from ``<conv(x, w), g> = <x, input_grad(g, w)> = <w, weight_grad(x, g)>``).  Every VJP is a call
of a differentiable primitive, so derivatives of any order need no further code.

Each primitive runs one of three array kernels, picked from the shapes (:func:`_kernel_for`):

* ``_Pointwise`` -- 1x1 kernel, no padding: a plain matmul on reshaped views, no im2col at all;
* ``_Depthwise`` -- one filter per channel (groups == C_in == C_out) with a stride: kh*kw shifted
  multiply-adds on the stride phases of the input (forward and both VJPs);
* ``_Gemm`` -- everything else: im2col of a few samples at a time into one reused buffer, then one
  GEMM per group.  Chunking keeps the column buffer small (an 8-sample im2col of a 256-channel 3x3
  conv is 115 MB in float64), cache-friendly and free of page faults, and lets the weight gradient
  recompute the columns instead of keeping them alive between forward and backward.  The input
  gradient is a convolution of g as well (flipped kernel; one per stride phase when strided), so
  its GEMM contracts over C_out*kh*kw and no col2im scatter-add is needed.

Choices were made by measurement on a 2-core AVX-512 machine against PyTorch CPU (benchmarks/).

All array work goes through the backend namespace ``xp``.
"""
from __future__ import annotations

from typing import NamedTuple

from . import _threads, backend, ops
from ._threads import parallel_for
from .backend import xp
from .tensor import Tensor, record

#: Target size of one im2col buffer; a chunk holds as many samples as fit (at least one).
CHUNK_BYTES = 8 << 20
#: Launch-bound backends run every kernel over the whole batch at once.  On CuPy each array call is a
#: kernel launch costing ~10-30 us of host time, so cache-sized chunks of samples and per-sample
#: loops (right for NumPy) multiply the launches; measured on an H200, a chunked 3x3 conv ran 40-50x
#: slower than cuDNN.  The strict test backend takes the same path, so that CI exercises it on a CPU.
WHOLE_BATCH = backend.name != "numpy"
#: Cap of one im2col buffer on those backends (a larger batch is still chunked).
WHOLE_BATCH_BYTES = 1 << 30


def whole_batch(n: int) -> bool:
    """Run a per-channel kernel once over all n samples (channels independent: N samples of C channels
    are one sample of N*C) -- on launch-bound backends, when there is more than one sample."""
    return WHOLE_BATCH and n > 1


def fold_batch(array):
    """(N, C, ...) -> (1, N*C, ...): samples as extra channels, for a per-channel kernel run once."""
    return xp.reshape(array, (1, array.shape[0] * array.shape[1]) + tuple(array.shape[2:]))


class Geometry(NamedTuple):
    """Everything about a conv2d except the channel counts: sizes are (rows, cols) pairs."""

    kernel: tuple
    stride: tuple
    dilation: tuple
    pads: tuple  # ((top, bottom), (left, right))
    groups: int
    in_size: tuple
    out_size: tuple

    @property
    def padded_size(self) -> tuple:
        (top, bottom), (left, right) = self.pads
        return (self.in_size[0] + top + bottom, self.in_size[1] + left + right)

    @property
    def padded(self) -> bool:
        return any(p for pair in self.pads for p in pair)

    def window(self, i: int, j: int) -> tuple:
        """Slices of the padded input seen by kernel tap (i, j) at every output position."""
        (sh, sw), (dh, dw), (oh, ow) = self.stride, self.dilation, self.out_size
        return (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))

    def taps(self):
        """(i, j, window) for every kernel tap, in row-major order."""
        for i in range(self.kernel[0]):
            for j in range(self.kernel[1]):
                yield i, j, self.window(i, j)

    def interior(self) -> tuple:
        """Slices of the padded canvas that hold the unpadded input."""
        (top, _), (left, _) = self.pads
        h, w = self.in_size
        return (slice(top, top + h), slice(left, left + w))


# ---------------------------------------------------------------------------------------------
# the three differentiable primitives


def conv(x, weight, geo: Geometry, bias=None) -> Tensor:
    """y = conv2d(x, weight) + bias: (N, C_in, H, W) x (C_out, C_in/G, kh, kw) [+ (C_out,)] -> (N, C_out, oh, ow).

    The bias is added in place to the kernel's fresh output (no second output-sized array; torch's
    kernels fuse it likewise); its VJP is the sum of g over samples and pixels.
    """
    data = _kernel_for(geo, x.shape[1], weight.shape[0], x.shape[0]).forward(x.data, weight.data, geo)
    parents = [(x, lambda g: input_grad(g, weight, geo)), (weight, lambda g: weight_grad(x, g, geo))]
    if bias is not None:
        data += xp.reshape(bias.data, (1, -1, 1, 1))
        parents.append((bias, lambda g: ops.sum(g, axis=(0, 2, 3))))
    return record(data, tuple(parents))


def input_grad(g, weight, geo: Geometry) -> Tensor:
    """dx = the adjoint of conv(., weight) applied to g: (N, C_out, oh, ow) -> (N, C_in, H, W).

    A weight holding NaN or inf takes :func:`_scatter_input_grad` (one sum over the weight decides): the
    fast kernels convolve a zero-padded g, and 0 * NaN would reach input pixels no output reads that tap
    from; PyTorch's col2im leaves them alone.
    """
    c_in = weight.shape[1] * geo.groups
    kernel = _kernel_for(geo, c_in, weight.shape[0], g.shape[0])
    if kernel not in (_Pointwise, _EmptyBatch) and weight.size and not bool(xp.isfinite(xp.sum(weight.data))):
        data = _scatter_input_grad(g.data, weight.data, geo)
    else:
        data = kernel.input_grad(g.data, weight.data, geo)
    return record(data, ((g, lambda a: conv(a, weight, geo)), (weight, lambda a: weight_grad(a, g, geo))))


def weight_grad(x, g, geo: Geometry) -> Tensor:
    """dw = the adjoint of conv(x, .) applied to g: (N, C_out, oh, ow) -> (C_out, C_in/G, kh, kw)."""
    data = _kernel_for(geo, x.shape[1], g.shape[1], x.shape[0]).weight_grad(x.data, g.data, geo)
    return record(data, ((x, lambda b: input_grad(g, b, geo)), (g, lambda b: conv(x, b, geo))))


#: _Shifted needs this many input channels (the depth of its per-tap GEMMs), or per group when grouped ...
SHIFTED_MIN_CHANNELS = 32
SHIFTED_MIN_GROUP_CHANNELS = 8
#: ... and padded rows at most this much wider than the output rows (the extra columns are computed, then cropped).
SHIFTED_MAX_WIDENING = 1.25


def _kernel_for(geo: Geometry, c_in: int, c_out: int, batch: int = 1):
    if batch == 0:
        return _EmptyBatch
    if _WholeMap.applies(geo):
        return _WholeMap
    # Depthwise with stride 1 is fastest as im2col + one GEMV per channel (the _Gemm path); with a
    # stride the windows have short strided rows and the stride-phase split of _Depthwise wins.
    if geo.groups == c_in == c_out and geo.stride != (1, 1):
        return _Depthwise
    if geo.kernel == (1, 1) and not geo.padded:
        return _Pointwise
    deep = c_in >= SHIFTED_MIN_CHANNELS if geo.groups == 1 else c_in // geo.groups >= SHIFTED_MIN_GROUP_CHANNELS
    if (not WHOLE_BATCH and geo.stride == (1, 1) and deep
            and geo.padded_size[1] <= SHIFTED_MAX_WIDENING * geo.out_size[1]):
        return _Shifted
    return _Gemm


def _zeros_padded(shape, geo: Geometry, dtype):
    return xp.zeros(tuple(shape[:2]) + geo.padded_size, dtype=dtype)


def _crop(canvas, geo: Geometry):
    """The input-sized interior of a padded canvas, as a contiguous array."""
    if not geo.padded:
        return canvas
    return xp.ascontiguousarray(canvas[(slice(None), slice(None)) + geo.interior()])


def _transposed(geo: Geometry):
    """Geometry of the input gradient as a plain convolution, or None when there is none.

    For stride 1, dx[h] = sum_i g[h + top - i*d] w[i] = sum_i' g_pad[h + i'*d] w[k-1-i']: a
    convolution of g padded by d*(k-1) - pad (per side) with the flipped kernel.  Strides > 1 (and
    paddings wider than the dilated kernel) need the scatter form instead.
    """
    if geo.stride != (1, 1):
        return None
    pads = tuple((d * (k - 1) - lo, d * (k - 1) - hi) for k, d, (lo, hi) in zip(geo.kernel, geo.dilation, geo.pads))
    if any(p < 0 for pair in pads for p in pair):
        return None
    return Geometry(geo.kernel, geo.stride, geo.dilation, pads, geo.groups, geo.out_size, geo.in_size)


def _scatter_input_grad(g, w, geo: Geometry):
    """The input gradient as the adjoint's scatter form (PyTorch's col2im): per group and kernel tap,
    ``W_tap^T @ g`` added into that tap's window of a zero canvas, which is then cropped.

    kh*kw small GEMMs and strided additions: slower than the convolution forms, but no weight ever meets
    the canvas's padding, so a non-finite weight reaches exactly the pixels read through it.
    """
    n, c_out = g.shape[:2]
    groups, c_in_g = geo.groups, w.shape[1]
    out_g = c_out // groups
    canvas = _zeros_padded((n, c_in_g * groups), geo, g.dtype)
    for group in range(groups):
        g_group = g[:, group * out_g : (group + 1) * out_g]
        channels = slice(group * c_in_g, (group + 1) * c_in_g)
        for i, j, (rows, cols) in geo.taps():
            tap = w[group * out_g : (group + 1) * out_g, :, i, j]  # (C_out/G, C_in/G)
            canvas[:, channels, rows, cols] += xp.einsum("oc,nohw->nchw", tap, g_group)
    return _crop(canvas, geo)


def _flip_transpose(w, groups: int):
    """(C_out, C_in/G, kh, kw) -> (C_in, C_out/G, kh, kw): per group, in/out swapped and taps flipped."""
    c_out, c_in_g, kh, kw = w.shape
    per_group = xp.reshape(w, (groups, c_out // groups, c_in_g, kh, kw))
    swapped = xp.swapaxes(per_group, 1, 2)[..., ::-1, ::-1]
    return xp.reshape(xp.ascontiguousarray(swapped), (groups * c_in_g, c_out // groups, kh, kw))


def _subpixel_input_grad(g, w, geo: Geometry):
    """Strided (dilation 1) input gradient as one stride-1 convolution per phase of the padded canvas.

    Canvas row a + s*r receives g[oh] * w[i] exactly when i = a + s*q and r = oh + q, so phase a of the
    canvas is a stride-1 transposed convolution of g with the sub-kernel w[a::s] -- a convolution
    with its flip (see :func:`_transposed`).  Each phase is written with one strided copy: no
    scatter-add, and the GEMMs contract over C_out*taps instead of producing a (C_in*kh*kw, L) matrix.
    """
    (sh, sw), (oh, ow), groups = geo.stride, geo.out_size, geo.groups
    hp, wp = geo.padded_size
    canvas = xp.zeros((g.shape[0], w.shape[1] * groups, hp, wp), dtype=g.dtype)
    for a in range(min(sh, geo.kernel[0])):  # phases past the kernel receive nothing
        for b in range(min(sw, geo.kernel[1])):
            sub_kernel = w[:, :, a::sh, b::sw]
            ka, kb = sub_kernel.shape[2:]
            rows, cols = -(-(hp - a) // sh), -(-(wp - b) // sw)
            pads = ((ka - 1, rows - oh), (kb - 1, cols - ow))
            phase = Geometry((ka, kb), (1, 1), (1, 1), pads, groups, (oh, ow), (rows, cols))
            canvas[:, :, a::sh, b::sw] = _Gemm.forward(g, _flip_transpose(sub_kernel, groups), phase)
    return _crop(canvas, geo)


# ---------------------------------------------------------------------------------------------
# 1x1 kernels: matmul on reshaped views


class _Pointwise:
    """1x1 kernel without padding: y[n] = W @ x[n] on (C, H*W) views (strided input subsampled first)."""

    @staticmethod
    def _subsample(x, geo):
        (sh, sw), (oh, ow) = geo.stride, geo.out_size
        if (sh, sw) == (1, 1):
            return x
        return x[:, :, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw]

    @staticmethod
    def forward(x, w, geo):
        n, c_in = x.shape[:2]
        groups, (oh, ow) = geo.groups, geo.out_size
        columns = xp.reshape(_Pointwise._subsample(x, geo), (n, groups, c_in // groups, oh * ow))
        weight = xp.reshape(w, (groups, w.shape[0] // groups, c_in // groups))
        out = xp.matmul(weight[0], columns[:, 0]) if groups == 1 else xp.matmul(weight, columns)
        return xp.reshape(out, (n, w.shape[0], oh, ow))

    @staticmethod
    def input_grad(g, w, geo):
        n, c_out = g.shape[:2]
        groups, (oh, ow) = geo.groups, geo.out_size
        c_in = w.shape[1] * groups
        weight_t = xp.swapaxes(xp.reshape(w, (groups, c_out // groups, c_in // groups)), 1, 2)
        g_cols = xp.reshape(g, (n, groups, c_out // groups, oh * ow))
        dx = xp.matmul(weight_t[0], g_cols[:, 0]) if groups == 1 else xp.matmul(weight_t, g_cols)
        dx = xp.reshape(dx, (n, c_in, oh, ow))
        if geo.stride == (1, 1):
            return dx
        full = xp.zeros((n, c_in) + geo.in_size, dtype=g.dtype)
        full[:, :, geo.window(0, 0)[0], geo.window(0, 0)[1]] = dx
        return full

    @staticmethod
    def weight_grad(x, g, geo):
        n, c_in = x.shape[:2]
        c_out = g.shape[1]
        groups, (oh, ow) = geo.groups, geo.out_size
        columns = xp.reshape(_Pointwise._subsample(x, geo), (n, groups, c_in // groups, oh * ow))
        g_cols = xp.reshape(g, (n, groups, c_out // groups, oh * ow))
        if WHOLE_BATCH:  # one batched GEMM, then the sum over samples
            dw = xp.sum(xp.matmul(g_cols, xp.swapaxes(columns, -1, -2)), axis=0)
            return xp.reshape(dw, (c_out, c_in // groups, 1, 1))
        # sum over samples of (C_out/G, L) @ (L, C_in/G), one sample at a time (no (N, C_out, C_in) temporary)
        dw = xp.matmul(g_cols[0], xp.swapaxes(columns[0], -1, -2))
        for i in range(1, n):
            dw += xp.matmul(g_cols[i], xp.swapaxes(columns[i], -1, -2))
        return xp.reshape(dw, (c_out, c_in // groups, 1, 1))


# ---------------------------------------------------------------------------------------------
# depthwise kernels: shifted multiply-adds


class _Depthwise:
    """groups == C_in == C_out with a stride: y[:, c] = sum over taps of w[c, tap] * (shifted x[:, c]).

    NumPy's elementwise loops are fast over long contiguous runs only, and strided windows of a small
    feature map have short, strided rows.  So the padded input is split into its stride phases
    x_pad[:, a::sh, b::sw], each stored with its rows end to end (:class:`Phases`): every tap then
    reads (forward, weight gradient) or updates (input gradient) one contiguous slice per channel,
    computed over full phase rows -- the few extra columns are cropped from the output and are zero
    in the cotangent, so they never reach a result.  One sample at a time keeps the working set in
    cache, and samples run on several threads.
    """

    @staticmethod
    def forward(x, w, geo):
        if whole_batch(x.shape[0]):
            out = _Depthwise.forward(fold_batch(x), xp.tile(w, (x.shape[0], 1, 1, 1)), geo)
            return xp.reshape(out, x.shape[:2] + geo.out_size)
        layout = Phases(geo)
        out = xp.empty(x.shape[:2] + geo.out_size, dtype=x.dtype)

        def sample(n):
            phases = layout.split(x[n])
            rows = xp.empty((x.shape[1], layout.length), dtype=x.dtype)
            scratch = xp.empty_like(rows)
            for t, (i, j, phase, start) in enumerate(layout.taps):
                window = phases[phase, :, start : start + layout.length]
                xp.multiply(window, w[:, 0, i, j][:, None], out=scratch if t else rows)
                if t:
                    rows += scratch
            out[n] = layout.crop(rows)

        parallel_for(sample, x.shape[0], x.size)
        return out

    @staticmethod
    def input_grad(g, w, geo):
        if whole_batch(g.shape[0]):
            dx = _Depthwise.input_grad(fold_batch(g), xp.tile(w, (g.shape[0], 1, 1, 1)), geo)
            return xp.reshape(dx, g.shape[:2] + geo.in_size)
        layout = Phases(geo)
        dx = xp.empty(g.shape[:2] + geo.in_size, dtype=g.dtype)

        def sample(n):
            g_rows = layout.extend(g[n])
            phases = layout.zeros(g.shape[1:2], g.dtype)
            scratch = xp.empty_like(g_rows)
            for i, j, phase, start in layout.taps:
                xp.multiply(g_rows, w[:, 0, i, j][:, None], out=scratch)
                phases[phase, :, start : start + layout.length] += scratch
            dx[n] = layout.merge(phases)

        parallel_for(sample, g.shape[0], g.size * len(layout.taps))
        return dx

    @staticmethod
    def weight_grad(x, g, geo):
        n, c = x.shape[:2]
        if whole_batch(n):
            per_channel = _Depthwise.weight_grad(fold_batch(x), fold_batch(g), geo)  # (N*C, 1, kh, kw)
            return xp.sum(xp.reshape(per_channel, (n, c, 1) + geo.kernel), axis=0)
        layout = Phases(geo)
        per_sample = xp.empty((x.shape[0], x.shape[1], len(layout.taps)), dtype=x.dtype)

        def sample(n):
            phases, g_rows = layout.split(x[n]), layout.extend(g[n])
            for t, (_, _, phase, start) in enumerate(layout.taps):
                per_sample[n, :, t] = xp.einsum("cl,cl->c", g_rows, phases[phase, :, start : start + layout.length])

        parallel_for(sample, x.shape[0], x.size)
        # summed over samples in a fixed order: the result does not depend on the thread count
        return xp.reshape(xp.sum(per_sample, axis=0), (x.shape[1], 1) + geo.kernel)


class Phases:
    """One sample's padded input split into stride phases, each a flat (rows end to end) array.

    Phase (a, b) holds x_pad[:, a::sh, b::sw] as a (rows x cols) plane, flattened; planes are padded
    to a common size plus slack.  Tap (i, j) reads phase ((i*dh) % sh, (j*dw) % sw) from row
    (i*dh)//sh and column (j*dw)//sw on, so output row r (all ``cols`` columns of it) is the slice
    ``start + r*cols + [0, cols)``, and the whole output is one slice of ``length = oh*cols``.
    Arrays here are (C, ...) -- one sample.
    """

    def __init__(self, geo: Geometry):
        (sh, sw), (dh, dw) = geo.stride, geo.dilation
        hp, wp = geo.padded_size
        self.geo = geo
        self.rows, self.cols = -(-hp // sh), -(-wp // sw)
        self.length = geo.out_size[0] * self.cols
        self.taps = [(i, j, ((i * dh) % sh) * sw + (j * dw) % sw, ((i * dh) // sh) * self.cols + (j * dw) // sw)
                     for i, j, _ in geo.taps()]
        self.size = max(self.rows * self.cols, max(start for *_, start in self.taps) + self.length)

    def zeros(self, channels, dtype, fill=0):
        count = self.geo.stride[0] * self.geo.stride[1]
        return xp.full((count,) + tuple(channels) + (self.size,), fill, dtype=dtype)

    def _blocks(self):
        """(phase, input rows/cols slices, plane rows/cols slices) for the input pixels of each phase."""
        (sh, sw), ((top, _), (left, _)), (h, w) = self.geo.stride, self.geo.pads, self.geo.in_size
        for a in range(sh):
            for b in range(sw):
                r0, c0 = (a - top) % sh, (b - left) % sw  # first input row/col landing in this phase
                nr, nc = len(range(r0, h, sh)), len(range(c0, w, sw))
                if nr and nc:
                    pr, pc = (r0 + top) // sh, (c0 + left) // sw
                    yield (a * sw + b, (slice(r0, h, sh), slice(c0, w, sw)),
                           (slice(pr, pr + nr), slice(pc, pc + nc)))

    def _plane(self, phases, phase):
        return xp.reshape(phases[phase, :, : self.rows * self.cols], (phases.shape[1], self.rows, self.cols))

    def split(self, x, fill=0):
        """x (C, H, W) -> phases (P, C, size), ``fill`` where x_pad is padding."""
        phases = self.zeros(x.shape[:1], x.dtype, fill)
        for phase, (rows, cols), (prows, pcols) in self._blocks():
            self._plane(phases, phase)[:, prows, pcols] = x[:, rows, cols]
        return phases

    def merge(self, phases):
        """Adjoint of :meth:`split`: the input pixels back from their phases, (C, H, W)."""
        out = xp.empty(phases.shape[1:2] + self.geo.in_size, dtype=phases.dtype)
        for phase, (rows, cols), (prows, pcols) in self._blocks():
            out[:, rows, cols] = self._plane(phases, phase)[:, prows, pcols]
        return out

    def extend(self, g):
        """(C, oh, ow) -> (C, oh*cols): rows widened to the phase width with zeros."""
        c, oh, ow = g.shape
        rows = xp.zeros((c, oh, self.cols), dtype=g.dtype)
        rows[..., :ow] = g
        return xp.reshape(rows, (c, oh * self.cols))

    def crop(self, rows):
        """Adjoint of :meth:`extend`: (C, oh*cols) -> (C, oh, ow)."""
        oh, ow = self.geo.out_size
        return xp.reshape(rows, (rows.shape[0], oh, self.cols))[..., :ow]


# ---------------------------------------------------------------------------------------------
# general kernels: chunked im2col + one GEMM per group


class _EmptyBatch:
    """An empty batch (N = 0): empty outputs and input gradients, a zero weight gradient (a sum over no
    samples), as torch -- the kernels below reshape with ``-1`` and index sample 0, which N = 0 breaks."""

    @staticmethod
    def forward(x, w, geo):
        return xp.zeros((0, w.shape[0]) + geo.out_size, dtype=x.dtype)

    @staticmethod
    def input_grad(g, w, geo):
        return xp.zeros((0, w.shape[1] * geo.groups) + geo.in_size, dtype=g.dtype)

    @staticmethod
    def weight_grad(x, g, geo):
        return xp.zeros((g.shape[1], x.shape[1] // geo.groups) + geo.kernel, dtype=x.dtype)


class _WholeMap:
    """A kernel exactly the size of the unpadded input (one output pixel): each group is a matrix product.

    y[n, g, o] = W[g, o, :] . x[n, g, :] with x and W flattened over (C_in/G, kh, kw): no im2col, one
    batched GEMM over the groups in each direction.  GSoP's row-wise conv (a (d, 1) kernel on the (d, 1)
    rows of a covariance matrix, groups = d) took 77 ms forward+backward on the tap-by-tap im2col path
    (torch: 4 ms).
    """

    @staticmethod
    def applies(geo: Geometry) -> bool:
        return (geo.kernel == geo.in_size and not geo.padded and geo.dilation == (1, 1)
                and geo.out_size == (1, 1))

    @staticmethod
    def _grouped(a, groups):
        """(N, C, ...) -> (G, N, C/G * ...): the samples of each group as rows."""
        return xp.swapaxes(xp.reshape(a, (a.shape[0], groups, -1)), 0, 1)

    @staticmethod
    def forward(x, w, geo):
        weight = xp.reshape(w, (geo.groups, w.shape[0] // geo.groups, -1))               # (G, O/G, K)
        out = xp.matmul(_WholeMap._grouped(x, geo.groups), xp.swapaxes(weight, 1, 2))   # (G, N, O/G)
        return xp.reshape(xp.swapaxes(out, 0, 1), (x.shape[0], w.shape[0], 1, 1))

    @staticmethod
    def input_grad(g, w, geo):
        weight = xp.reshape(w, (geo.groups, w.shape[0] // geo.groups, -1))               # (G, O/G, K)
        dx = xp.matmul(_WholeMap._grouped(g, geo.groups), weight)                       # (G, N, K)
        return xp.reshape(xp.swapaxes(dx, 0, 1), (g.shape[0], w.shape[1] * geo.groups) + geo.in_size)

    @staticmethod
    def weight_grad(x, g, geo):
        rows = xp.swapaxes(_WholeMap._grouped(g, geo.groups), 1, 2)                     # (G, O/G, N)
        dw = xp.matmul(rows, _WholeMap._grouped(x, geo.groups))                         # (G, O/G, K)
        return xp.reshape(dw, (g.shape[1], x.shape[1] // geo.groups) + geo.kernel)


class _Gemm:
    """im2col in chunks of samples, laid out (C_in*kh*kw, chunk*oh*ow) so each group is one GEMM."""

    @staticmethod
    def _chunk(x_shape, geo, itemsize):
        oh, ow = geo.out_size
        per_sample = x_shape[1] * geo.kernel[0] * geo.kernel[1] * oh * ow * itemsize
        budget = WHOLE_BATCH_BYTES if WHOLE_BATCH else CHUNK_BYTES
        return max(1, min(x_shape[0], budget // per_sample))

    @staticmethod
    def _columns(x, geo):
        """Yield (start, stop, columns (G, K/G, m*L)) per chunk of m samples; one buffer is reused."""
        n, c = x.shape[:2]
        kh, kw = geo.kernel
        oh, ow = geo.out_size
        chunk = _Gemm._chunk(x.shape, geo, x.dtype.itemsize)
        buffer = xp.empty(c * kh * kw * chunk * oh * ow, dtype=x.dtype)
        canvas = _zeros_padded((chunk, c), geo, x.dtype) if geo.padded else None
        # channel blocks for the threads (one block when the loop will not be threaded)
        parts = min(_threads.THREADS, c) if _threads.threaded(c, c * kh * kw * chunk * oh * ow) else 1
        blocks = [slice(k * c // parts, (k + 1) * c // parts) for k in range(parts)]
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            m = stop - start
            cols = xp.reshape(buffer[: c * kh * kw * m * oh * ow], (c, kh, kw, m, oh, ow))

            def fill(k):  # im2col of one block of channels (the blocks run on separate threads)
                channels = blocks[k]
                if canvas is None:
                    source = x[start:stop, channels]
                else:
                    source = canvas[:m, channels]
                    source[(slice(None), slice(None)) + geo.interior()] = x[start:stop, channels]
                for i, j, (rows, columns) in geo.taps():
                    cols[channels, i, j] = xp.swapaxes(source[:, :, rows, columns], 0, 1)

            parallel_for(fill, len(blocks), cols.size)
            yield start, stop, xp.reshape(cols, (geo.groups, c * kh * kw // geo.groups, m * oh * ow))

    @staticmethod
    def _g_columns(g, start, stop, groups):
        """Cotangent chunk as (G, C_out/G, m*L) (a view when m == 1)."""
        m, c_out = stop - start, g.shape[1]
        block = xp.reshape(g[start:stop], (m, c_out, -1))
        if m > 1:
            block = xp.swapaxes(block, 0, 1)
        return xp.reshape(block, (groups, c_out // groups, -1))

    @staticmethod
    def forward(x, w, geo):
        n, c_out, groups = x.shape[0], w.shape[0], geo.groups
        oh, ow = geo.out_size
        weight = xp.reshape(w, (groups, c_out // groups, -1))
        out = xp.empty((n, c_out, oh, ow), dtype=x.dtype)
        for start, stop, cols in _Gemm._columns(x, geo):
            if stop - start == 1:  # write straight into the output
                xp.matmul(weight, cols, out=xp.reshape(out[start], (groups, c_out // groups, oh * ow)))
            else:
                block = xp.reshape(xp.matmul(weight, cols), (c_out, stop - start, oh, ow))
                out[start:stop] = xp.swapaxes(block, 0, 1)
        return out

    @staticmethod
    def input_grad(g, w, geo):
        transposed = _transposed(geo)
        if transposed is not None:  # a gather (im2col of g) + GEMM beats GEMM + scatter
            kernel = _kernel_for(transposed, g.shape[1], w.shape[1] * geo.groups)
            return kernel.forward(g, _flip_transpose(w, geo.groups), transposed)
        if geo.groups > 1 and geo.dilation == (1, 1):  # thin per-group GEMMs: gathers win here too
            return _subpixel_input_grad(g, w, geo)
        return _Gemm._col2im_input_grad(g, w, geo)

    @staticmethod
    def _col2im_input_grad(g, w, geo):
        n, c_out, groups = g.shape[0], g.shape[1], geo.groups
        kh, kw = geo.kernel
        oh, ow = geo.out_size
        c_in = w.shape[1] * groups
        weight_t = xp.swapaxes(xp.reshape(w, (groups, c_out // groups, -1)), 1, 2)
        chunk = _Gemm._chunk((n, c_in), geo, g.dtype.itemsize)
        dx = xp.empty((n, c_in) + geo.in_size, dtype=g.dtype)
        canvas = _zeros_padded((chunk, c_in), geo, g.dtype)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            m = stop - start
            d_cols = xp.matmul(weight_t, _Gemm._g_columns(g, start, stop, groups))
            d_cols = xp.reshape(d_cols, (c_in, kh, kw, m, oh, ow))
            target = canvas[:m]
            target[...] = 0
            for i, j, (rows, cols) in geo.taps():  # col2im: kh*kw strided-slice additions
                target[:, :, rows, cols] += xp.swapaxes(d_cols[:, i, j], 0, 1)
            dx[start:stop] = target[(slice(None), slice(None)) + geo.interior()]
        return dx

    @staticmethod
    def weight_grad(x, g, geo):
        c_out, groups = g.shape[1], geo.groups
        c_in = x.shape[1]
        kh, kw = geo.kernel
        dw = xp.zeros((groups, c_out // groups, c_in // groups * kh * kw), dtype=x.dtype)
        for start, stop, cols in _Gemm._columns(x, geo):
            dw += xp.matmul(_Gemm._g_columns(g, start, stop, groups), xp.swapaxes(cols, 1, 2))
        return xp.reshape(dw, (c_out, c_in // groups, kh, kw))


# ---------------------------------------------------------------------------------------------
# stride-1 kernels: one GEMM per tap (batched over groups) on shifted views, no im2col


class _Shifted(_Gemm):
    """Stride 1: y = sum over taps (i, j) of W[:, :, i, j] @ (x shifted by (i*dh, j*dw)), per group.

    With a padded sample stored flat, row after row of width Wp, tap (i, j) of every output pixel reads
    one contiguous slice starting at i*dh*Wp + j*dw, of length oh*Wp: each output row followed by
    Wp - ow columns that fall on the padding (computed, then cropped).  So the forward is a sum of
    GEMMs (C_out, C_in) @ (C_in, oh*Wp) over the taps, per sample, without an im2col buffer.

    Ungrouped convs stack the kw taps of a kernel row along the GEMM depth: the flat sample is stored
    kw times, copy j shifted left by j*dw (``stacked[j, c, p] = x_pad_flat[c, p + j*dw]``), so kernel
    row i is one GEMM (C_out, kw*C_in) @ stacked[:, :, i*dh*Wp : i*dh*Wp + oh*Wp] -- kh deeper GEMMs
    and kh - 1 accumulations instead of kh*kw and kh*kw - 1.  Grouped convs keep one GEMM per tap
    (batched over the groups): their GEMMs are tiny and the copies would cost more than they save.
    Measured on (8, 64, 56, 56) -> 64, 3x3: per-tap GEMMs 1.5x faster than im2col + GEMM in float64
    (67 vs 44 GF/s, 1.1x in float32), stacked rows another 8-12% (fwd+bwd, both dtypes; neutral at
    256 channels); for groups=32 with 8 channels per group (SK) per-tap GEMMs 1.4-1.8x im2col in float32,
    3.7x in float64, while stacking them was 1.2x slower in float64.  Used when C_in (per group) is
    deep enough and the padded rows are not much wider than the output rows (:func:`_kernel_for`); the
    stride-1 input gradient takes it too (it is a forward convolution of g).  The weight gradient is
    the adjoint on the same views: dW[:, :, i, j-block] = sum over samples of g_ext @ slice^T, with
    g_ext = g widened to Wp columns by zeros (so the cropped columns contribute nothing).
    """

    @staticmethod
    def _stacked_taps(geo):
        """How many taps of a kernel row one GEMM covers (kw, or 1 for grouped convs)."""
        return geo.kernel[1] if geo.groups == 1 else 1

    @staticmethod
    def _layout(c_in, geo, dtype):
        """The flat zero-padded sample, stored S = :meth:`_stacked_taps` times shifted: (its
        (G, S*C_in/G, flat) view, a writer of one sample into it, the slice length oh*Wp, the offset
        of each GEMM's slice, in the order (kernel row i, block of S taps))."""
        (hp, wp), (oh, _) = geo.padded_size, geo.out_size
        (kh, kw), (dh, dw), groups = geo.kernel, geo.dilation, geo.groups
        stack, flat = _Shifted._stacked_taps(geo), hp * wp
        # copy 0 is the padded sample itself; its zero slack covers the slices of the last taps
        stacked = xp.zeros((groups, stack, c_in // groups, flat + (kw - 1) * dw), dtype=dtype)
        plane = xp.reshape(stacked[:, 0, :, :flat], (groups, c_in // groups, hp, wp))  # a view
        interior = (slice(None), slice(None)) + geo.interior()

        def load(sample):  # the padding stays zero from one sample to the next
            plane[interior] = xp.reshape(sample, (groups, c_in // groups) + tuple(sample.shape[1:]))
            for j in range(1, stack):
                stacked[:, j, :, :flat] = stacked[:, 0, :, j * dw: j * dw + flat]

        per_group = xp.reshape(stacked, (groups, stack * c_in // groups, -1))
        offsets = [i * dh * wp + j * dw for i in range(kh) for j in range(0, kw, stack)]
        return per_group, load, oh * wp, offsets

    @staticmethod
    def _gemm_weights(w, geo):
        """(C_out, C_in/G, kh, kw) -> (kh*kw/S, G, C_out/G, S*C_in/G): each GEMM's weights, stacked order."""
        c_out, c_in_g, kh, kw = w.shape
        groups, stack = geo.groups, _Shifted._stacked_taps(geo)
        split = xp.reshape(w, (groups, c_out // groups, c_in_g, kh, kw // stack, stack))
        ordered = xp.transpose(split, (3, 4, 0, 1, 5, 2))
        return xp.ascontiguousarray(xp.reshape(ordered, (kh * kw // stack, groups, c_out // groups, stack * c_in_g)))

    @staticmethod
    def forward(x, w, geo):
        n = x.shape[0]
        c_out = w.shape[0]
        (oh, ow), wp = geo.out_size, geo.padded_size[1]
        stacked, load, length, offsets = _Shifted._layout(x.shape[1], geo, x.dtype)
        weights = _Shifted._gemm_weights(w, geo)
        acc = xp.empty((geo.groups, c_out // geo.groups, length), dtype=x.dtype)
        partial = xp.empty_like(acc)
        out = xp.empty((n, c_out, oh, ow), dtype=x.dtype)
        for sample in range(n):
            load(x[sample])
            xp.matmul(weights[0], stacked[:, :, offsets[0]: offsets[0] + length], out=acc)
            for weight, offset in zip(weights[1:], offsets[1:]):
                xp.matmul(weight, stacked[:, :, offset: offset + length], out=partial)
                acc += partial
            out[sample] = xp.reshape(acc, (c_out, oh, wp))[:, :, :ow]
        return out

    @staticmethod
    def weight_grad(x, g, geo):
        n, c_in = x.shape[:2]
        c_out = g.shape[1]
        (oh, ow), wp = geo.out_size, geo.padded_size[1]
        (kh, kw), groups, stack = geo.kernel, geo.groups, _Shifted._stacked_taps(geo)
        stacked, load, length, offsets = _Shifted._layout(c_in, geo, x.dtype)
        widened = xp.zeros((c_out, oh, wp), dtype=g.dtype)   # columns ow..wp stay zero
        g_flat = xp.reshape(widened, (groups, c_out // groups, length))
        dw = xp.zeros((len(offsets), groups, c_out // groups, stack * c_in // groups), dtype=x.dtype)
        partial = xp.empty(dw.shape[1:], dtype=x.dtype)
        for sample in range(n):
            load(x[sample])
            widened[:, :, :ow] = g[sample]
            for k, offset in enumerate(offsets):
                xp.matmul(g_flat, xp.swapaxes(stacked[:, :, offset: offset + length], 1, 2), out=partial)
                dw[k] += partial
        # (kh, kw/S, G, C_out/G, S, C_in/G) -> (C_out, C_in/G, kh, kw): the inverse of _gemm_weights
        dw = xp.reshape(dw, (kh, kw // stack, c_out, stack, c_in // groups))
        return xp.reshape(xp.transpose(dw, (2, 4, 0, 1, 3)), (c_out, c_in // groups, kh, kw))
