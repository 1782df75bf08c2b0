"""FcaNet: multi-spectral channel attention (Qin, Zhang, Wu, Li, ICCV 2021).

Global average pooling is, up to a constant, the lowest-frequency (0, 0) component of the 2-D DCT.
FcaNet splits the channels into n groups and gives every group one DCT frequency instead::

    x~  = adaptive_avg_pool(x, (h, w))                if (H, W) != (h, w)        (N, C, h, w)
    B_uv(i, j) = b(i, u, h) b(j, v, w)                orthonormal DCT-II basis     (h, w)
    b(t, f, L) = cos(pi f (t + 1/2) / L) / sqrt(L) * (sqrt(2) if f > 0 else 1)
    Freq_c = sum_ij x~_c(i, j) B_{u_k v_k}(i, j)      c in group k = [kC/n, (k+1)C/n)     (N, C)
    att = sigmoid(W2 relu(W1 Freq))                   W1 (C/r, C), W2 (C, C/r), no biases  (N, C)
    y   = x * att                                                                         (N, C, H, W)

The frequencies (u_k, v_k) come from the official 7x7 tables ``top`` / ``low`` / ``bot``; a method
``"top16"`` takes the first 16 pairs.  u indexes the *height* frequency, v the width frequency.

Follows the official code (``cfzd/FcaNet``, ``model/layer.py``):

* The filters are the **orthonormal** DCT-II basis (the paper's formula has no normalisation; the scale
  per frequency is absorbed by the FC).  They are built from the core's DCT basis:
  ``B_uv = outer(D_h[u], D_w[v])`` with ``D_L = ag.dct_matrix(L, type=2, norm="ortho")``.  The official
  buffer is float32 (``torch.zeros``), 1.3e-8 away from the float64 basis; ours has the parameters' dtype.
* The 7x7 frequencies are scaled to the DCT size by **integer division**: ``(u * (h // 7), v * (w // 7))``,
  so a DCT size below 7 maps every frequency to (0, 0), exactly as the official code.
* The input is adaptive-average-pooled to (h, w) only when its size differs (PyTorch's overlapping bins
  when H is not a multiple of h).  The paper assumes the feature map already has the DCT size.  We fold
  that pooling into the filters (:func:`multi_spectral_descriptor`): the same linear map, computed
  without the pooled feature map.
* Both Linear layers have no bias.

The filter bank is stored as the official buffer ``dct_layer.weight`` (C, h, w), so an official
state_dict maps 1:1 (``fc.0.weight``, ``fc.2.weight``).  The DCT size (``dct_h``, ``dct_w``, default 7 x 7)
is an option of :func:`init` and :func:`fca` alike (a registry entry's ``config`` reaches both), not read
from the buffer's shape: a reshaped buffer -- (C, 49, 1) for a 7 x 7 bank -- would otherwise be taken
for another DCT size and give a silently wrong descriptor.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, example, init_linear, linear, linear_shapes, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Choice, Derived, Ints, Space, image

NAME = "fca"

#: The official 7x7 frequency tables (x = height frequency u, y = width frequency v), in ranked order.
FREQUENCY_TABLES = {
    "top": ((0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1),
            (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3)),
    "low": ((0, 0, 1, 1, 0, 2, 2, 1, 2, 0, 3, 4, 0, 1, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4),
            (0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 0, 0, 4, 3, 1, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3)),
    "bot": ((6, 1, 3, 3, 2, 4, 1, 2, 4, 4, 5, 1, 4, 6, 2, 5, 6, 1, 6, 2, 2, 4, 3, 3, 5, 5, 6, 2, 5, 5, 3, 6),
            (6, 4, 4, 6, 6, 3, 1, 4, 4, 5, 6, 5, 2, 2, 5, 1, 4, 3, 5, 0, 3, 1, 1, 2, 4, 2, 1, 1, 5, 3, 3, 3)),
}
FREQUENCY_COUNTS = (1, 2, 4, 8, 16, 32)


def frequency_indices(method: str) -> tuple[list, list]:
    """The 7x7-grid frequencies of ``method`` (``"top16"``, ``"low4"``, ``"bot32"``, ...): (u list, v list)."""
    table, count = method[:3], method[3:]
    if table not in FREQUENCY_TABLES or not count.isdigit() or int(count) not in FREQUENCY_COUNTS:
        raise ValueError(f"{NAME}: freq_sel_method must be top/low/bot followed by one of {FREQUENCY_COUNTS} "
                         f"(e.g. 'top16'), got {method!r}")
    us, vs = FREQUENCY_TABLES[table]
    return list(us[: int(count)]), list(vs[: int(count)])


def scaled_frequencies(method: str, dct_h: int, dct_w: int) -> tuple[list, list]:
    """The frequencies of ``method`` on a (dct_h, dct_w) grid: ``u * (dct_h // 7)``, ``v * (dct_w // 7)``."""
    us, vs = frequency_indices(method)
    return [u * (dct_h // 7) for u in us], [v * (dct_w // 7) for v in vs]


def dct_filters(channels: int, dct_h: int, dct_w: int, method: str = "top16", dtype=np.float64):
    """The filter bank (C, dct_h, dct_w): channel group k holds ``outer(D_h[u_k], D_w[v_k])``.

    ``D_L = ag.dct_matrix(L, 2, "ortho")`` is the core's orthonormal DCT-II basis (row f = frequency f),
    so ``sum_ij x(i, j) B_uv(i, j)`` is coefficient (u, v) of ``scipy.fft.dctn(x, norm="ortho")``.
    """
    us, vs = scaled_frequencies(method, dct_h, dct_w)
    if channels % len(us):
        raise ValueError(f"{NAME}: channels={channels} must be divisible by the {len(us)} frequencies of {method!r}")
    basis_h = ag.dct_matrix(dct_h, type=2, norm="ortho", dtype=dtype)   # (dct_h, dct_h): [frequency, position]
    basis_w = ag.dct_matrix(dct_w, type=2, norm="ortho", dtype=dtype)
    per_frequency = basis_h[us][:, :, None] * basis_w[vs][:, None, :]   # (n, dct_h, dct_w)
    return ag.xp.repeat(per_frequency, channels // len(us), axis=0)     # group k = channels [kC/n, (k+1)C/n)


def init(rng, channels: int, dct_h: int = 7, dct_w: int = 7, *, reduction: int = 16,
         freq_sel_method: str = "top16", dtype=np.float64) -> dict:
    """Parameters: buffer ``dct_layer.weight (C, dct_h, dct_w)``, ``fc.0.weight (C//r, C)``, ``fc.2.weight (C, C//r)``.

    The official networks take the DCT size from the bottleneck width: ``{64: 56, 128: 28, 256: 14, 512: 7}``.
    """
    hidden = channels // reduction
    if hidden < 1:
        raise ValueError(f"{NAME}: channels={channels} // reduction={reduction} must be at least 1")
    if dct_h < 1 or dct_w < 1:
        raise ValueError(f"{NAME}: the DCT size must be positive, got ({dct_h}, {dct_w})")
    params = {"dct_layer.weight": dct_filters(channels, dct_h, dct_w, freq_sel_method, dtype)}
    init_linear(rng, params, "fc.0", hidden, channels, bias=False, dtype=dtype)
    init_linear(rng, params, "fc.2", channels, hidden, bias=False, dtype=dtype)
    return params


def multi_spectral_descriptor(params, x) -> ag.Tensor:
    """Freq (N, C): each channel's DCT coefficient at its group's frequency, after pooling to the DCT size.

    A building block that reads ``dct_layer.weight`` alone, its DCT size from its shape (:func:`fca`
    checks that shape against ``dct_h``, ``dct_w`` first).  Pooling is linear, x~ = R x C^T with the
    adaptive-pooling matrices R (h, H) and C (w, W), so sum_ij x~(i, j) B(i, j) = sum_hw x(h, w)
    (R^T B C)(h, w): the pooling is folded into the filters (C, H, W) and the pooled map is never formed --
    the same number up to rounding.  On (2, 256, 64, 64) pooled to 56 x 56 in float64 that cut the
    forward+backward from 35 ms to 23 ms (torch: 21 ms).
    """
    filters = params["dct_layer.weight"]
    dct_h, dct_w = filters.shape[1:]
    height, width = x.shape[2:]
    if (height, width) != (dct_h, dct_w):
        rows = ag.adaptive_avg_matrix(height, dct_h, x.dtype)           # R (h, H)
        cols = ag.adaptive_avg_matrix(width, dct_w, x.dtype)            # C (w, W)
        filters = ag.matmul(ag.matmul(ag.transpose(rows), filters), cols)   # R^T B C (C, H, W)
    return ag.einsum("nchw,chw->nc", x, filters)                         # Freq_c = sum_ij x~ B


def _excitation(params, descriptor) -> ag.Tensor:
    channels = descriptor.shape[-1]
    return ag.sigmoid(linear(params, "fc.2", ag.relu(linear(params, "fc.0", descriptor, bias=False)), bias=False,
                             out=channels))


def _checked(params, x, dct_h, dct_w) -> ag.Tensor:
    """x checked against C; every parameter checked, the filter bank against (C, dct_h, dct_w)."""
    for name, size in (("dct_h", dct_h), ("dct_w", dct_w)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{NAME}: {name} must be a positive int, got {size!r}")
    hidden, channels = params.shape("fc.0.weight")
    expected = (channels, dct_h, dct_w)
    if params.shape("dct_layer.weight") != expected:
        raise ValueError(f"{NAME}: parameter 'dct_layer.weight' must have shape {expected} (C, dct_h, dct_w), got "
                         f"{params.shape('dct_layer.weight')}; pass fca the dct_h, dct_w given to init")
    take_all(params, {**linear_shapes("fc.0", hidden, channels, bias=False),
                      **linear_shapes("fc.2", channels, hidden, bias=False)})
    x = check_input(NAME, x, channels=channels, min_size=1)
    check_dtype(NAME, x, params)
    return x


@uses_params(NAME)
def attention(params, x, *, dct_h: int = 7, dct_w: int = 7) -> ag.Tensor:
    """The channel weights att = sigmoid(W2 relu(W1 Freq)), shape (N, C) (``dct_h``, ``dct_w`` as for :func:`fca`)."""
    x = _checked(params, x, dct_h, dct_w)
    return _excitation(params, multi_spectral_descriptor(params, x))


@uses_params(NAME)
def fca(params, x, *, train: bool = False, dct_h: int = 7, dct_w: int = 7) -> ag.Tensor:
    """Apply FcaNet's multi-spectral channel attention to ``x`` (N, C, H, W); returns (N, C, H, W).

    ``dct_h``, ``dct_w``: the DCT size given to :func:`init`.  ``train`` has no effect (no BatchNorm, no dropout).
    """
    x = _checked(params, x, dct_h, dct_w)
    weights = _excitation(params, multi_spectral_descriptor(params, x))  # att (N, C)
    return x * ag.reshape(weights, weights.shape + (1, 1))                # y = x * att


_DCT_SIZES = Choice(7, 1, 2, 3, 4, 5, 6, 8, 9, 14)

register(Mechanism(
    name=NAME, family="frequency",
    paper=Paper("Qin, Zhang, Wu, Li", "FcaNet: Frequency Channel Attention Networks", "ICCV", 2021),
    init=init, apply_fn=fca,
    config={"channels": 32, "dct_h": 7, "dct_w": 7, "reduction": 4, "freq_sel_method": "top16"},
    # 9x9 input: pooled to the 7x7 DCT size through PyTorch's overlapping adaptive bins
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 32, 9, 9), dtype),),
    # C a multiple of the n frequencies (n up to 32: one channel per group) with C // r >= 1; every table;
    # DCT sizes below 7 (all frequencies collapse to (0, 0)), 7, and 14 (frequencies doubled); maps smaller,
    # equal and larger than the DCT size (adaptive pooling up or down, overlapping bins)
    space=Space(config={"_table": Choice(*FREQUENCY_TABLES), "_count": Choice(*FREQUENCY_COUNTS),
                        "_per_frequency": Ints(1, lambda v: max(1, 32 // v._count)),
                        "channels": Derived(lambda v: v._count * v._per_frequency),
                        "freq_sel_method": Derived(lambda v: f"{v._table}{v._count}"),
                        "reduction": Ints(1, lambda v: min(16, v._count * v._per_frequency)),
                        "dct_h": _DCT_SIZES, "dct_w": _DCT_SIZES},
                inputs=image()),
    description="SE-style channel gate on 2-D DCT coefficients, one frequency per channel group",
))
