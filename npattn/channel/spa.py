"""Spatial Pyramid Attention, SPA-Net (Guo, Ma, et al., ICME 2020).

    v = [ GAP_1(x) ; flatten(APool_2(x)) ; flatten(APool_4(x)) ]     descriptor:  (N, 21 C)
    s = sigmoid(W2 relu(W1 v))                                        excitation:  W1 (C/r, 21C), W2 (C, C/r)
    y = x * s                                                         scale:       (N, C, H, W)

APool_s is adaptive average pooling to s x s with PyTorch's bins [floor(iH/s), ceil((i+1)H/s)): when s does
not divide H the bins overlap (H = 6, s = 4: rows {0,1}, {1,2}, {3,4}, {4,5}), and for H < s rows repeat.
The 21 bin averages of each channel are computed together, as one product with an (H W, 21) averaging matrix.

Follows the official code (``ma-xu/SPANet: models/spp_se_resnet.py``, ``SPPSELayer``):

* ``AdaptiveAvgPool2d(1/2/4)`` outputs are flattened with ``.view(b, s*s*c)``, i.e. **channel-major**
  (index ``c * s*s + i * s + j``), and concatenated in the order [1, 2, 4].
* ``Linear(21C, C // r, bias=False)`` -> ReLU -> ``Linear(C // r, C, bias=False)`` -> sigmoid; parameters
  ``fc1.weight (C_in // r, 21 C_in)`` and ``fc2.weight (C, C_in // r)``.  r = 16 in the official ResNets.
* PSPPSE (``models/p_spp_se_resnet.py``) computes the gate from the residual block's *input* (``in_channels``
  channels, possibly another spatial size) and scales the block's output: ``init(..., in_channels=C_in)``
  and ``spa(params, x, source)``, where ``source`` is the block input and ``x`` the tensor being scaled.

The paper and the official code agree (the paper gives no bias and no flattening order; both come from the
code), so there is no paper-form option.  There is no structure option either: C_in (``fc1.weight`` is
(hidden, 21 C_in)), the hidden width and C are read from the shapes, and checked against the inputs.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, example, init_linear, linear
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Ints, Space, image

NAME = "spa"
#: pyramid levels, in the official concatenation order
LEVELS = (1, 2, 4)


def init(rng, channels: int, *, reduction: int = 16, in_channels: int | None = None, dtype=np.float64) -> dict:
    """Parameters ``fc1.weight (C_in // r, 21 C_in)`` and ``fc2.weight (C, C_in // r)``; C_in defaults to C."""
    in_channels = channels if in_channels is None else in_channels
    hidden = in_channels // reduction
    if hidden < 1:
        raise ValueError(f"spa: in_channels={in_channels} // reduction={reduction} must be at least 1")
    width = sum(s * s for s in LEVELS) * in_channels
    params: dict = {}
    init_linear(rng, params, "fc1", hidden, width, bias=False, dtype=dtype)
    init_linear(rng, params, "fc2", channels, hidden, bias=False, dtype=dtype)
    return params


def pyramid_matrix(height: int, width: int, dtype=np.float64):
    """The (H W, 21) matrix whose column k averages pyramid bin k over a row-major flattened map.

    Columns: the 1x1 bin, then the 2x2 and the 4x4 bins row-major, each ``1 / area`` on its
    ``adaptive_avg_pool2d`` bin (PyTorch's bins, :func:`autograd.adaptive_bins`).  Built on the host.
    """
    columns = []
    for s in LEVELS:
        for top, bottom in ag.adaptive_bins(height, s):
            for left, right in ag.adaptive_bins(width, s):
                cell = np.zeros((height, width))
                cell[top:bottom, left:right] = 1.0 / ((bottom - top) * (right - left))
                columns.append(cell.ravel())
    return ag.from_numpy(np.stack(columns, axis=1).astype(dtype))


def pyramid_descriptor(x) -> ag.Tensor:
    """v = [GAP(x); APool_2(x); APool_4(x)], each flattened channel-major: (N, C, H, W) -> (N, 21 C).

    All 21 bin averages of every channel come from one matrix product with :func:`pyramid_matrix`
    (one pass over x, and one full-size gradient instead of one per level).
    """
    x = x if isinstance(x, ag.Tensor) else ag.Tensor(x)
    n, c, h, w = x.shape
    bins = ag.matmul(ag.reshape(x, (n * c, h * w)), pyramid_matrix(h, w, x.dtype))     # (N C, 21)
    bins = ag.reshape(bins, (n, c, bins.shape[1]))
    parts, start = [], 0
    for s in LEVELS:                                      # level s: (N, C, s*s) -> (N, C s s), channel-major
        parts.append(ag.reshape(bins[:, :, start:start + s * s], (n, c * s * s)))
        start += s * s
    return ag.concatenate(parts, axis=1)


def excitation(params, descriptor, channels: int) -> ag.Tensor:
    """s = sigmoid(W2 relu(W1 v)), both FCs bias-free: (N, 21 C_in) -> (N, C)."""
    hidden = ag.relu(linear(params, "fc1", descriptor, bias=False))
    return ag.sigmoid(linear(params, "fc2", hidden, bias=False, out=channels))


@uses_params(NAME)
def channel_weights(params, x, source=None) -> ag.Tensor:
    """The gate s = sigmoid(W2 relu(W1 v(source))): (N, C) (``source`` defaults to ``x``)."""
    x, source = _check(params, x, source)
    return excitation(params, pyramid_descriptor(source), x.shape[1])


def _source_channels(params) -> int:
    """C_in from ``fc1.weight`` (hidden, 21 C_in)."""
    levels = sum(s * s for s in LEVELS)
    width = params.shape("fc1.weight")[1]
    if width % levels or width == 0:
        raise ValueError(f"{NAME}: parameter 'fc1.weight' must have shape (C_in // r, {levels} * C_in) (the "
                         f"pyramid's {levels} bins per channel), got {params.shape('fc1.weight')}")
    return width // levels


def _check(params, x, source):
    in_channels = _source_channels(params)
    if source is None:
        x = check_input(NAME, x, min_size=1)
        if x.shape[1] != in_channels:
            psppse = params.shape("fc2.weight")[0] != in_channels
            raise ValueError(f"{NAME}: without `source`, x is the source: it must have the {in_channels} channels "
                             f"(axis 1) that 'fc1.weight' reads, got shape {x.shape}"
                             + ("; these parameters are the PSPPSE form (C_in != C): pass the block input as "
                                "`source`" if psppse else ""))
        check_dtype(NAME, x, params)
        return x, x
    x = check_input(NAME, x, channels=params.shape("fc2.weight")[0], min_size=1)
    check_dtype(NAME, x, params)
    source = check_input(NAME, source, arg="source", channels=in_channels, min_size=1)
    check_dtype(NAME, source, params, arg="source")
    if source.shape[0] != x.shape[0]:
        raise ValueError(f"spa: source batch {source.shape[0]} does not match x batch {x.shape[0]}")
    return x, source


@uses_params(NAME)
def spa(params, x, source=None, *, train: bool = False) -> ag.Tensor:
    """Apply SPA: ``x`` (N, C, H, W) scaled by the gate of ``source`` (N, C_in, H', W'; default ``x``).

    Returns (N, C, H, W).  ``train`` has no effect (no BN).  Without ``source`` the parameters must read a
    C-channel source (C_in = C); the PSPPSE form (C_in != C) needs ``source``.
    """
    x, source = _check(params, x, source)
    scale = excitation(params, pyramid_descriptor(source), x.shape[1])   # s: (N, C)
    return x * ag.reshape(scale, scale.shape + (1, 1))                    # y = x * s


register(Mechanism(
    name=NAME, family="channel",
    paper=Paper("Guo, Ma, et al.", "SPANet: Spatial Pyramid Attention Network for Enhanced Image Recognition",
                "ICME", 2020),
    init=init, apply_fn=spa, config={"channels": 32, "reduction": 4},
    # H = 6, W = 7: the 4x4 bins overlap, the 2x2 bins overlap along W
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 32, 6, 7), dtype),),
    # maps smaller than 4x4 repeat pyramid bins (adaptive pooling's overlapping bins)
    space=Space(config={"reduction": Ints(1, 6), "channels": Ints(lambda v: v.reduction, 32)}, inputs=image()),
    description="channel gate from a 1/2/4 spatial-pyramid average descriptor through a bias-free MLP",
))
