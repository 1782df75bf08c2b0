"""``grid_sample`` (torch.nn.functional semantics, 4-D) on three mutually adjoint sampling primitives.

For every output pixel the grid holds a point (x, y) in [-1, 1] coordinates (x across W, y across H).
It becomes a source pixel coordinate -- PyTorch's unnormalisation, as its CPU kernel computes it::

    align_corners=False:  ix = (x + 1) * (W / 2) - 0.5       -1 -> the left edge of pixel 0 (-0.5)
    align_corners=True:   ix = (x + 1) * ((W - 1) / 2)       -1 -> the centre of pixel 0

then the padding rule maps it back into the image (``zeros`` leaves it; ``border`` clips it to
[0, W - 1]; ``reflection`` reflects it about the edges -- [-0.5, W - 0.5] without aligned corners,
[0, W - 1] with -- and clips), and the input is read there::

    bilinear:  out = sum over the 4 corners (x0 + a, y0 + b) of (1 - |ix - x0 - a|)(1 - |iy - y0 - b|) in[y, x]
    nearest:   out = in[round(iy), round(ix)]          (round half to even, as nearbyint)

A corner outside the image contributes 0 (``zeros``; with the other rules only the right/bottom corner
of a point on the last pixel can fall outside, with weight 0).  The gradients are PyTorch's: w.r.t. the
input, the weights scattered back; w.r.t. the grid, the derivative of the weights (the map is
piecewise linear: it jumps where a coordinate crosses an integer, and the clipping and reflection
slopes are 0 on and beyond the clipped borders); nearest sampling has a zero grid gradient.

**How it is computed.**  The weights are differentiable functions of the grid (a few composed
operations on grid-sized arrays); the integer corner indices are constants.  The sampling itself is
linear in the input and in the weights, so three primitives cover every derivative of every order,
each the adjoint of the others (as conv2d's): for values V (B, R, C) -- the image's R = H*W pixels as
rows -- weights w (B, Q, K) and indices i (B, Q, K):

    F(V, w)[b, q]    = sum_k w[b, q, k] V[b, i[b, q, k]]                 (B, Q, C)  sampling
    G(g, w)[b, r]    = sum_{q, k: i[b, q, k] = r} w[b, q, k] g[b, q]    (B, R, C)  F's adjoint in V
    H(g, V)[b, q, k] = g[b, q] . V[b, i[b, q, k]]                        (B, Q, K)  F's adjoint in w

with VJPs F: V <- G(g, w), w <- H(g, V);  G: g <- F(a, w), w <- H(g, a);  H: g <- F(V, b), V <- G(g, b).
On NumPy, F and G are products with one SciPy sparse matrix of K entries per row (its transpose for
G), and H gathers the tapped rows in cache-sized blocks for a row-wise dot; all three run serially
(on this 2-core VM, splitting them over threads was slower).  On other backends they are gathers and
``add.at`` scatters.  The image is read channels-last (rows of C values) in both cases.

``sampling_taps`` (the taps, their differentiable weights, and the non-finite points of a grid) and
``sample_rows`` are the building blocks other samplers share (multi-scale deformable attention reads all
its levels in one ``sample_rows``).

**Non-finite coordinates** (a deliberate, documented policy): a NaN source coordinate, or an infinite
one that the padding rule does not bring back into the image (``zeros``, ``reflection``), gives NaN in
every channel of that output pixel, and NaN in its grid gradient.  PyTorch's CPU kernels agree for
bilinear sampling with ``zeros`` padding, return 0 or a clipped pixel for nearest sampling, and crash
(segmentation fault, torch 2.13) for bilinear ``border``/``reflection`` sampling of a NaN.  An
infinite coordinate with ``border`` padding is clipped to the edge, as PyTorch.
"""
from __future__ import annotations

import numpy as _np

from . import backend, ops
from .backend import xp
from .tensor import Tensor, record

MODES = ("bilinear", "nearest")
PADDING_MODES = ("zeros", "border", "reflection")

# ---------------------------------------------------------------------------------------------
# the public function


def grid_sample(input, grid, mode: str = "bilinear", padding_mode: str = "zeros",  # noqa: A002 - torch's name
                align_corners: bool = False) -> Tensor:
    """Sample ``input`` (N, C, H, W) at ``grid`` (N, H_out, W_out, 2) -> (N, C, H_out, W_out).

    ``grid[..., 0]`` is x (along W), ``grid[..., 1]`` is y (along H), both in [-1, 1] for the image
    (points outside follow ``padding_mode``).  ``mode``: ``"bilinear"`` or ``"nearest"``;
    ``padding_mode``: ``"zeros"``, ``"border"`` or ``"reflection"``; ``align_corners`` as
    torch.nn.functional.grid_sample (whose default, False, this keeps).  Differentiable w.r.t.
    ``input`` and ``grid`` (nearest: the grid gradient is zero).
    """
    input, grid = _checked(input, grid, mode, padding_mode, align_corners)
    batch, channels, height, width = input.shape
    out_h, out_w = grid.shape[1:3]
    taps, weights, bad = sampling_taps(grid, height, width, mode, padding_mode, align_corners)
    # the image as rows of C values (channels-last), so a tap reads one contiguous row
    sampled = sample_rows(channels_last(input), weights, taps)                         # (N, Q, C)
    out = ops.transpose(ops.reshape(sampled, (batch, out_h, out_w, channels)), (0, 3, 1, 2))
    return nan_where(out, None if bad is None else ops.reshape(bad, (batch, 1, out_h, out_w)))


def sampling_taps(grid, height: int, width: int, mode: str = "bilinear", padding_mode: str = "zeros",
                  align_corners: bool = False):
    """What ``grid_sample`` reads for ``grid`` (N, ..., 2) on an H x W image, as (taps, weights, bad):

    * ``taps``: :class:`Taps` with the pixel indices (N, Q, K) into the image's H W rows (Q = the grid's
      points, K = 4 bilinear corners nw, ne, sw, se, or 1 nearest pixel) and which of them lie inside;
    * ``weights``: the taps' weights (N, Q, K), a differentiable function of the grid (0 outside);
    * ``bad``: a Tensor (N, Q) of the points whose source coordinate is not finite: 0 where fine, NaN
      times the coordinates there (:func:`nan_where` turns it into NaN outputs and NaN grid gradients).

    The building block of ``grid_sample`` that other samplers (deformable attention) share.
    """
    grid = ops._lift(grid)
    batch, queries = grid.shape[0], grid.size // max(2 * grid.shape[0], 1)
    flat = ops.reshape(grid, (batch, queries, 2))
    with _np.errstate(invalid="ignore"):   # inf - inf in the weights of infinite points: NaN by design
        ix = source_coordinates(ops.getitem(flat, (Ellipsis, 0)), width, padding_mode, align_corners)
        iy = source_coordinates(ops.getitem(flat, (Ellipsis, 1)), height, padding_mode, align_corners)
        if mode == "bilinear":
            index, valid, weights = _bilinear_taps(ix, iy, height, width)
        else:
            index, valid, weights = _nearest_tap(ix, iy, height, width)
    return Taps(index, height * width, valid), weights, _non_finite(ix, iy)


def _checked(input, grid, mode, padding_mode, align_corners):  # noqa: A002
    input, grid = ops._lift(input), ops._lift(grid)
    if mode not in MODES:
        raise ValueError(f"grid_sample: mode must be one of {MODES}, got {mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"grid_sample: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if not isinstance(align_corners, (bool, _np.bool_)):
        raise TypeError(f"grid_sample: align_corners must be a bool, got {align_corners!r}")
    for name, value in (("input", input), ("grid", grid)):
        if _np.dtype(value.dtype).kind != "f":
            raise TypeError(f"grid_sample: {name} must be floating-point, got dtype {value.dtype}")
    if input.ndim != 4:
        raise ValueError(f"grid_sample: input must be 4-D (N, C, H, W), got shape {input.shape}")
    if grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(f"grid_sample: grid must be (N, H_out, W_out, 2), got shape {grid.shape}")
    if grid.shape[0] != input.shape[0]:
        raise ValueError(f"grid_sample: grid and input must have the same batch size, got input {input.shape} "
                         f"and grid {grid.shape}")
    if input.dtype != grid.dtype:
        raise TypeError(f"grid_sample: input ({input.dtype}) and grid ({grid.dtype}) must have the same dtype")
    if 0 in input.shape[2:]:
        raise ValueError(f"grid_sample: input must have non-empty spatial dimensions, got shape {input.shape}")
    return input, grid


# ---------------------------------------------------------------------------------------------
# grid -> source pixel coordinates (differentiable; PyTorch's CPU formulas)


def source_coordinates(coordinate, size: int, padding_mode: str = "zeros", align_corners: bool = False) -> Tensor:
    """Grid coordinates in [-1, 1] -> source pixel coordinates along an axis of ``size`` pixels.

    Unnormalised as PyTorch's CPU kernel does (``(x + 1) * (size / 2) - 0.5``, or ``(x + 1) * ((size - 1) / 2)``
    with ``align_corners``), then clipped (``border``) or reflected and clipped (``reflection``).
    """
    coordinate = ops._lift(coordinate)
    if align_corners:
        pixel = ops.mul(ops.add(coordinate, 1.0), (size - 1) / 2)
    else:
        pixel = ops.sub(ops.mul(ops.add(coordinate, 1.0), size / 2), 0.5)
    if padding_mode == "border":
        return _clip(pixel, size)
    if padding_mode == "reflection":
        return _clip(_reflect(pixel, size, align_corners), size)
    return pixel


def _piecewise_linear(x: Tensor, value, slope) -> Tensor:
    """A piecewise-linear map of ``x`` with the given ``value`` and constant ``slope`` (VJP g * slope).

    Clipping and reflection are such maps; computing the value directly keeps PyTorch's bits (an
    offset added to ``slope * x`` would round differently).  Their second derivative is zero.
    """
    slope = Tensor(slope)
    return record(value, ((x, lambda g: ops.mul(g, slope)),))


def _clip(x: Tensor, size: int) -> Tensor:
    """Clip to [0, size - 1]; slope 1 strictly inside, 0 on and beyond the borders (PyTorch's rule).

    NaN stays NaN (PyTorch's CPU kernel crashes on it in bilinear mode; see the module docstring).
    """
    data, top = x.data, x.data.dtype.type(size - 1)
    inside = (data > 0) & (data < top)
    return _piecewise_linear(x, xp.clip(data, 0, top), inside.astype(data.dtype))


def _reflect(x: Tensor, size: int, align_corners: bool) -> Tensor:
    """Reflect about [0, size - 1] (aligned corners) or [-0.5, size - 0.5]; slope +1 or -1.

    As PyTorch's CPU kernel: with ``low`` the lower bound and ``span`` twice the interval's length,
    ``d = |x - low|``, ``e = d - trunc(d / span) * span``, result ``min(e, span - e) + low``.
    A one-pixel axis with aligned corners has an empty interval: every point maps to 0, slope 0.
    """
    data = x.data
    dtype = data.dtype.type
    if align_corners and size <= 1:
        return _piecewise_linear(x, xp.zeros_like(data), xp.zeros_like(data))
    low = dtype(0.0) if align_corners else dtype(-0.5)
    span = dtype(2 * (size - 1)) if align_corners else dtype(2 * size)
    shifted = data - low
    distance = xp.abs(shifted)
    extra = distance - xp.trunc(distance / span) * span
    flipped = span - extra
    one_more_flip = extra > flipped
    value = xp.where(one_more_flip, flipped, extra) + low
    slope = xp.where(one_more_flip ^ (shifted < 0), dtype(-1.0), dtype(1.0))
    return _piecewise_linear(x, value, slope)


# ---------------------------------------------------------------------------------------------
# taps: which pixels an output reads, with which (differentiable) weights


def _corner_index(corner, size: int):
    """(valid, index): whether an integer-valued float corner lies in [0, size), and it as int (0 if not)."""
    valid = (corner > -1) & (corner < size)      # False for NaN and +-inf: no int cast of those
    return valid, xp.where(valid, corner, 0).astype(_np.int64)


def _bilinear_taps(ix: Tensor, iy: Tensor, height: int, width: int):
    """(index (N, Q, 4), valid (N, Q, 4), weights Tensor (N, Q, 4)) of the corners nw, ne, sw, se.

    Weights as PyTorch's CPU kernel: with fx = ix - floor(ix) and fy likewise,
    nw = (1 - fy)(1 - fx), ne = (1 - fy) fx, sw = fy (1 - fx), se = fy fx; a corner outside the image
    gets weight 0 (and no gradient).
    """
    batch, queries = ix.shape[0], ix.size // max(ix.shape[0], 1)
    west, north = xp.floor(ix.data), xp.floor(iy.data)
    frac_x, frac_y = ops.sub(ix, Tensor(west)), ops.sub(iy, Tensor(north))   # d frac / d coordinate = 1
    east_w, south_w = ops.sub(1.0, frac_x), ops.sub(1.0, frac_y)
    indices, valids, weights = [], [], []
    zero = Tensor(xp.zeros((), ix.dtype))
    for dy, weight_y in ((0, south_w), (1, frac_y)):
        valid_y, row = _corner_index(north + dy, height)
        for dx, weight_x in ((0, east_w), (1, frac_x)):
            valid_x, col = _corner_index(west + dx, width)
            valid = valid_x & valid_y
            indices.append(xp.where(valid, row * width + col, 0))
            valids.append(valid)
            weights.append(ops.where(valid, ops.mul(weight_y, weight_x), zero))
    index = xp.reshape(xp.stack(indices, axis=-1), (batch, queries, 4))
    valid = xp.reshape(xp.stack(valids, axis=-1), (batch, queries, 4))
    return index, valid, ops.reshape(ops.stack(weights, axis=-1), (batch, queries, 4))


def _nearest_tap(ix: Tensor, iy: Tensor, height: int, width: int):
    """(index, valid, constant weights), each (N, Q, 1): the nearest pixel (round half to even), 0 outside."""
    batch, queries = ix.shape[0], ix.size // max(ix.shape[0], 1)
    valid_x, col = _corner_index(xp.rint(ix.data), width)
    valid_y, row = _corner_index(xp.rint(iy.data), height)
    valid = valid_x & valid_y
    index = xp.reshape(xp.where(valid, row * width + col, 0), (batch, queries, 1))
    valid = xp.reshape(valid, (batch, queries, 1))
    return index, valid, Tensor(valid.astype(ix.dtype))


def _non_finite(ix: Tensor, iy: Tensor):
    """(N, Q): ``nan * (ix + iy)`` where a source coordinate is not finite (ix, iy kept there), 0 elsewhere
    (where they are replaced by 0); None when every coordinate is finite."""
    bad = ~(xp.isfinite(ix.data) & xp.isfinite(iy.data))
    if not bool(xp.any(bad)):
        return None
    nan = xp.where(bad, xp.asarray(xp.nan, dtype=ix.dtype), xp.zeros((), ix.dtype))
    return ops.mul(Tensor(nan), ops.add(ops.where(bad, ix, 0.0), ops.where(bad, iy, 0.0)))


def nan_where(out: Tensor, bad) -> Tensor:
    """``out + bad`` (``bad`` from :func:`sampling_taps`, broadcast): NaN in every channel of the outputs of
    non-finite points, with a NaN grid gradient there; ``out`` itself when there are none."""
    return out if bad is None else ops.add(out, bad)


# ---------------------------------------------------------------------------------------------
# layouts


def channels_last(image) -> Tensor:
    """(N, C, H, W) -> a C-contiguous (N, H W, C): the image as rows of C values, one copy (the sampling
    kernels read rows); VJP: the transpose back (a view)."""
    image = ops._lift(image)
    batch, channels, height, width = image.shape
    data = xp.ascontiguousarray(xp.transpose(image.data, (0, 2, 3, 1))).reshape(batch, height * width, channels)

    def vjp(g):
        return ops.transpose(ops.reshape(g, (batch, height, width, channels)), (0, 3, 1, 2))

    return record(data, ((image, vjp),))


def contiguous(t) -> Tensor:
    """``t`` with C-contiguous data (a copy only when needed; VJP: the identity)."""
    t = ops._lift(t)
    if backend.name != "numpy" or t.data.flags.c_contiguous:
        return t
    return record(_np.ascontiguousarray(t.data), ((t, lambda g: g),))


class _ContiguousOnce:
    """``t`` as a C-contiguous Tensor, copied once however many VJPs ask for the same cotangent (the
    cotangent of a sampling arrives as a transposed view; its adjoints in the image and the weights both
    read it as rows).  The copy is an identity on the tape."""

    __slots__ = ("source", "value")

    def __init__(self):
        self.source = self.value = None

    def __call__(self, t) -> Tensor:
        t = ops._lift(t)
        if backend.name != "numpy" or t.data.flags.c_contiguous:
            return t
        if self.source is not t:
            self.source, self.value = t, record(_np.ascontiguousarray(t.data), ((t, lambda a: a),))
        return self.value


# ---------------------------------------------------------------------------------------------
# the three sampling primitives


class Taps:
    """The fixed part of a sampling: integer row indices (B, Q, K) into B images of ``rows`` rows each, and
    which taps are real (``valid``; None = all).  A tap outside the image has weight 0 and is never read:
    0 * NaN would put a NaN pixel into outputs that do not sample it.

    On NumPy it also builds the block-diagonal sparse matrix S (B*Q, B*R) of the valid taps -- row (b, q)
    holds output q of image b -- so that sampling is ``S @ V`` and its adjoint ``S.T @ g``.
    """

    __slots__ = ("index", "rows", "valid", "_columns", "_structure")

    def __init__(self, index, rows: int, valid=None):
        self.index, self.rows, self.valid = index, int(rows), valid
        self._columns = self._structure = None

    @property
    def shape(self) -> tuple:
        return tuple(self.index.shape)

    def columns(self):
        """(B*Q, K) host column indices of S: the row of the (B*R, C) stack of all images each tap reads."""
        if self._columns is None:
            batch, queries, taps = self.shape
            offsets = _np.arange(batch, dtype=_np.int64)[:, None, None] * self.rows
            self._columns = (self.index + offsets).reshape(batch * queries, taps)
        return self._columns

    def _csr_structure(self):
        """(which entries of the flattened (B*Q*K,) taps are kept, their columns, indptr) of S."""
        if self._structure is None:
            batch, queries, taps = self.shape
            columns = self.columns().reshape(-1)
            if self.valid is None:
                keep = None
                indptr = _np.arange(0, batch * queries * taps + 1, taps, dtype=_np.int64)
            else:
                keep = self.valid.reshape(-1)
                columns = columns[keep]
                indptr = _np.concatenate([[0], _np.cumsum(self.valid.reshape(batch * queries, taps).sum(axis=1))])
            self._structure = keep, columns, indptr
        return self._structure

    def sparse(self, data):
        """S with the entries ``data`` (B, Q, K) at the valid taps (NumPy only): a SciPy CSR matrix (B*Q, B*R)."""
        import scipy.sparse

        batch, queries, _ = self.shape
        keep, columns, indptr = self._csr_structure()
        data = _np.ascontiguousarray(data).reshape(-1)
        return scipy.sparse.csr_matrix((data if keep is None else data[keep], columns, indptr),
                                       shape=(batch * queries, batch * self.rows))

    def flat(self):
        """The row indices into the (B*R, C) stack of all images, (B*Q*K,)."""
        batch = self.shape[0]
        offsets = xp.reshape(xp.arange(batch, dtype=self.index.dtype) * self.rows, (batch, 1, 1))
        return xp.reshape(self.index + offsets, (-1,))

    def gather(self, values):
        """values (B, R, C) at every tap, 0 at the invalid ones (generic path): (B, Q, K, C)."""
        batch, queries, count = self.shape
        channels = values.shape[-1]
        stacked = xp.reshape(values, (batch * self.rows, channels))
        gathered = xp.reshape(xp.take(stacked, self.flat(), axis=0), (batch, queries, count, channels))
        if self.valid is None:
            return gathered
        return xp.where(self.valid[..., None], gathered, xp.zeros((), gathered.dtype))


#: Outputs per block when :func:`tap_products` gathers the taps' rows (K * C values each).
GATHER_BLOCK = 1024


def _sparse_path(*arrays) -> bool:
    return backend.name == "numpy" and all(a.size for a in arrays)


def sample_rows(values, weights, taps: Taps) -> Tensor:
    """F: out[b, q] = sum_k weights[b, q, k] * values[b, index[b, q, k]]; values (B, R, C) -> (B, Q, C)."""
    values, weights = ops._lift(values), ops._lift(weights)
    batch, queries, _ = taps.shape
    channels = values.shape[-1]
    v, w = values.data, weights.data
    if _sparse_path(v, w):
        stacked = _np.ascontiguousarray(v).reshape(batch * taps.rows, channels)
        out = (taps.sparse(w) @ stacked).reshape(batch, queries, channels)
    else:
        gathered = taps.gather(v)
        out = xp.sum(gathered * w[..., None], axis=2) if gathered.size else xp.zeros(
            (batch, queries, channels), dtype=v.dtype)
    rows = _ContiguousOnce()
    return record(out, ((values, lambda g: scatter_rows(rows(g), weights, taps)),
                        (weights, lambda g: tap_products(rows(g), values, taps))))


def scatter_rows(grad, weights, taps: Taps) -> Tensor:
    """G: the adjoint of F in its values: out[b, r] = sum over taps reading row r of weight * grad[b, q] (B, R, C)."""
    grad, weights = ops._lift(grad), ops._lift(weights)
    batch, queries, _ = taps.shape
    channels = grad.shape[-1]
    g, w = grad.data, weights.data
    if _sparse_path(g, w):
        # S.T is SciPy's CSC view of S: its product scatters each row of g into the rows its taps read,
        # in one pass (serial; converting to CSR to split rows among threads costs more than it saves)
        stacked = _np.ascontiguousarray(g).reshape(batch * queries, channels)
        out = (taps.sparse(w).T @ stacked).reshape(batch, taps.rows, channels)
    else:
        out = xp.zeros((batch * taps.rows, channels), dtype=g.dtype)
        contributions = g[:, :, None, :] * w[..., None]
        if taps.valid is not None:   # an invalid tap writes nothing (its weight is 0, but g may hold NaN)
            contributions = xp.where(taps.valid[..., None], contributions, xp.zeros((), g.dtype))
        if contributions.size:
            xp.add.at(out, taps.flat(), xp.reshape(contributions, (w.size, channels)))
        out = xp.reshape(out, (batch, taps.rows, channels))
    return record(out, ((grad, lambda a: sample_rows(a, weights, taps)),
                        (weights, lambda a: tap_products(grad, a, taps))))


def tap_products(grad, values, taps: Taps) -> Tensor:
    """H: the adjoint of F in its weights: out[b, q, k] = grad[b, q] . values[b, index[b, q, k]] (B, Q, K)."""
    grad, values = ops._lift(grad), ops._lift(values)
    batch, queries, count = taps.shape
    channels = values.shape[-1]
    g, v = grad.data, values.data
    if _sparse_path(g, v):
        out = _np.empty((batch * queries, count), dtype=v.dtype)
        stacked = _np.ascontiguousarray(v).reshape(batch * taps.rows, channels)
        flat_grad = _np.ascontiguousarray(g).reshape(batch * queries, channels)
        columns = taps.columns()
        # gather the taps' rows block by block (cache-sized, not one (B*Q*K, C) array), then dot with grad
        for first in range(0, batch * queries, GATHER_BLOCK):
            last = min(batch * queries, first + GATHER_BLOCK)
            gathered = _np.take(stacked, columns[first:last], axis=0)          # (q, K, C)
            out[first:last] = _np.einsum("qkc,qc->qk", gathered, flat_grad[first:last])
        out = out.reshape(batch, queries, count)
        if taps.valid is not None:   # an invalid tap read row 0 in place of nothing: its product is 0
            out = _np.where(taps.valid, out, out.dtype.type(0))
    else:
        gathered = taps.gather(v)
        out = xp.sum(gathered * g[:, :, None, :], axis=-1) if gathered.size else xp.zeros(
            (batch, queries, count), dtype=v.dtype)
    return record(out, ((grad, lambda b: sample_rows(values, b, taps)),
                        (values, lambda b: scatter_rows(grad, b, taps))))
