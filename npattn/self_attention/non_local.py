"""Non-local block (Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018).

A generic non-local operation and its residual block, with x (B, C, H, W), N = H*W query positions and
M key positions (M = N, or (H//2)*(W//2) with sub-sampling), inter channels Ci = C // 2::

    y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)          g(x) = W_g x + b_g         (B, Ci, M)
    z_i = BN(W_z y_i + b_z) + x_i                  W_z: 1x1 conv Ci -> C, then BatchNorm

and the four pairwise functions of the paper (``mode``)::

    embedded_gaussian   f = exp(s theta_i^T phi_j),  C = sum_j f   -> softmax_j(s theta^T phi)
    gaussian            f = exp(s x_i^T x_j),        C = sum_j f   -> softmax_j(s x^T x)
    dot_product         f = theta_i^T phi_j,         C = M
    concatenation       f = ReLU(w_f^T [theta_i; phi_j]),  C = M   (w_f: ``concat_project``, no bias)

theta/phi/g are 1x1 convs C -> Ci with bias.  ``gaussian`` has no theta/phi convs (theta = x, phi = x).

Follows the official Caffe2 code (``facebookresearch/video-nonlocal-net: lib/models/nonlocal_helper.py``),
which differs from the paper in two places:

* ``use_scale=True`` (official USE_SCALE): the embedded-Gaussian logits are multiplied by s = Ci^-0.5.
  The paper and the popular PyTorch port (AlexHex7) use s = 1 (``use_scale=False``); ``scale=`` sets s
  explicitly for either softmax mode (timm's NonLocalAttn is ``sub_sample=False, scale=C**-0.5``).
* ``pool_first=True`` (official USE_MAXPOOL): sub-sampling max-pools x (2x2, stride 2, floor mode)
  *before* the phi and g convs.  The paper's Fig. 2, AlexHex7 and mmcv apply the conv first and pool
  after (``pool_first=False``); the two orders give different outputs, not a rounding difference.
  In ``gaussian`` mode phi is the pooled x itself, so only g depends on the order.

The dot-product form divides by the number M of phi positions, a constant (official StopGradient).  The
official code has only the embedded-Gaussian and dot-product forms; ``gaussian`` and ``concatenation``
follow the paper and AlexHex7's port (conv bias on theta/phi/g, ``concat_project`` = 1x1 conv 2Ci -> 1
without bias, then ReLU, then / M).

W_z's BatchNorm has gamma initialised to 0 (official BN_INIT_GAMMA=0), so the block starts as the
identity; ``zero_init=False`` keeps PyTorch's BN init (gamma 1) instead, which the registry entries use so
that every parameter receives a non-zero gradient.  Without BN (``bn_layer=False``) ``zero_init`` zeroes
the W conv instead (AlexHex7 / mmcv).  Convs are initialised like PyTorch's (uniform); ``conv_std=0.01``
gives the official GaussianFill N(0, 0.01^2) with zero bias.  BN eps is PyTorch's 1e-5 (official:
1.0000001e-5; the difference is ~1e-12 relative); momentum 0.1 (Caffe2's 0.9).

Parameters (PyTorch-style names): ``theta.weight (Ci, C, 1, 1)``, ``phi.weight``, ``g.weight`` (+ biases),
``concat_project.weight (1, 2Ci, 1, 1)`` (concatenation only), ``W.weight (C, Ci, 1, 1)`` + bias,
``W_bn.*`` BatchNorm(C) (``bn_layer=True`` only).  ``mode`` and ``bn_layer`` are the structure: options of
:func:`init` and of :func:`non_local` / :func:`pairwise` alike (a registry entry's ``config`` reaches both),
never read from which parameters exist.

Memory and time: the softmax modes hold one (B, N, M) matrix (sub-sampling makes M = N/4) through an
in-place fused attention primitive, so (2, 256, 64, 64) in float32 runs forward and backward in well under
1 GiB.  The dot-product form is linear in g, so it is evaluated by associativity,
y_i = theta_i^T (sum_j phi_j g_j^T) / M: O(N Ci^2) with a (Ci x Ci) matrix instead of O(N M Ci) with an
N x M one -- the same function (rounding aside); :func:`pairwise` still returns the N x M weights.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import (
    batch_norm,
    batch_norm_shapes,
    check_dtype,
    check_input,
    conv,
    conv_shapes,
    example,
    init_batch_norm,
    init_conv,
    take_all,
)
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Ints, Space, bn_train, image
from ._common import aggregate, attention_map, dot_product_attention, flatten_spatial, init_conv_normal, zero_conv

NAME = "nonlocal"
MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
SOFTMAX_MODES = ("embedded_gaussian", "gaussian")


def init(rng, channels: int, *, inter_channels: int | None = None, mode: str = "embedded_gaussian",
         bn_layer: bool = True, zero_init: bool = True, conv_std: float | None = None, dtype=np.float64) -> dict:
    """Parameters of a non-local block on ``channels`` input channels.

    ``inter_channels`` defaults to max(C // 2, 1).  ``mode`` decides which convs exist (``gaussian`` has no
    theta/phi, ``concatenation`` adds ``concat_project``).  ``zero_init`` (default, official) sets the W
    BatchNorm's gamma to 0 (or the W conv to 0 without BN) so the block starts as the identity.
    ``conv_std`` draws conv weights from N(0, conv_std^2) with zero bias (official: 0.01) instead of
    PyTorch's default uniform init.
    """
    _check_mode(mode)
    inter = max(channels // 2, 1) if inter_channels is None else int(inter_channels)
    if channels < 1 or inter < 1:
        raise ValueError(f"{NAME}: channels ({channels}) and inter_channels ({inter}) must be positive")
    params: dict = {}

    def add_conv(prefix, out_ch, in_ch, bias=True):
        if conv_std is None:
            init_conv(rng, params, prefix, out_ch, in_ch, 1, bias=bias, dtype=dtype)
        else:
            init_conv_normal(rng, params, prefix, out_ch, in_ch, conv_std, bias=bias, dtype=dtype)

    if mode != "gaussian":
        add_conv("theta", inter, channels)
        add_conv("phi", inter, channels)
    add_conv("g", inter, channels)
    if mode == "concatenation":
        add_conv("concat_project", 1, 2 * inter, bias=False)
    add_conv("W", channels, inter)
    if bn_layer:
        init_batch_norm(params, "W_bn", channels, weight=0.0 if zero_init else 1.0, dtype=dtype)
    elif zero_init:
        zero_conv(params, "W")
    return params


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{NAME}: mode must be one of {MODES}, got {mode!r}")


def _subsample(t: ag.Tensor) -> ag.Tensor:
    """2x2 max-pool, stride 2, floor mode (official MaxPool kernel [1, 2, 2], no padding)."""
    return ag.max_pool2d(t, 2, 2)


def _projection(params, prefix, x, pooled, sub_sample, pool_first):
    """phi or g: conv(pool(x)) [official], pool(conv(x)) [paper / AlexHex7], or conv(x)."""
    if not sub_sample:
        return conv(params, prefix, x)
    if pool_first:
        return conv(params, prefix, pooled)
    return _subsample(conv(params, prefix, x))


def _logit_scale(mode, inter, use_scale, scale) -> float:
    if scale is not None:
        if mode not in SOFTMAX_MODES:
            raise ValueError(f"{NAME}: scale only applies to the softmax modes, not {mode!r}")
        return float(scale)
    return inter ** -0.5 if (use_scale and mode == "embedded_gaussian") else 1.0


def _operands(params, x, mode, sub_sample, pool_first):
    """theta (B, C|Ci, N), phi (B, C|Ci, M) and g (B, Ci, M) of x (B, C, H, W)."""
    needs_pooled_x = sub_sample and (pool_first or mode == "gaussian")
    pooled = _subsample(x) if needs_pooled_x else None                          # max-pool x once
    if mode == "gaussian":
        theta, phi = x, (pooled if sub_sample else x)                           # theta = x, phi = x
    else:
        theta = conv(params, "theta", x)
        phi = _projection(params, "phi", x, pooled, sub_sample, pool_first)
    g = _projection(params, "g", x, pooled, sub_sample, pool_first)
    return flatten_spatial(theta), flatten_spatial(phi), flatten_spatial(g)


def _linear_weights(params, theta, phi, mode):
    """f(x_i, x_j) / M of the dot-product and concatenation forms: (B, N, M).

    The constant 1/M is applied to the (B, C, N) / (B, N) operands rather than to the N x M matrix
    (relu(t) / M = relu(t / M) for M > 0), which saves two passes over that matrix.
    """
    count = float(phi.shape[2])                                                 # C(x) = M, a constant
    if mode == "dot_product":
        return ag.matmul(ag.swapaxes(theta / count, 1, 2), phi)                 # theta^T phi / M
    # concatenation: w_f^T [theta_i; phi_j] = w_theta . theta_i + w_phi . phi_j (separable: no N x M x 2Ci)
    inter = theta.shape[1]
    w_f = ag.reshape(params["concat_project.weight"], (2 * inter,)) / count
    theta_term = ag.einsum("c,bcn->bn", w_f[:inter], theta)                     # (B, N)
    phi_term = ag.einsum("c,bcm->bm", w_f[inter:], phi)                         # (B, M)
    return ag.relu(ag.expand_dims(theta_term, 2) + ag.expand_dims(phi_term, 1))


def _sizes(params, mode: str, bn_layer: bool) -> tuple:
    """(C, Ci), every parameter of the structure checked against them."""
    channels, inter = params.shape("W.weight")[0], params.shape("g.weight")[0]
    shapes = {}
    if mode != "gaussian":
        shapes.update({**conv_shapes("theta", inter, channels), **conv_shapes("phi", inter, channels)})
    shapes.update(conv_shapes("g", inter, channels))
    if mode == "concatenation":
        shapes.update(conv_shapes("concat_project", 1, 2 * inter, bias=False))
    shapes.update(conv_shapes("W", channels, inter))
    if bn_layer:
        shapes.update(batch_norm_shapes("W_bn", channels))
    take_all(params, shapes)
    return channels, inter


def _validate(params, x, mode, sub_sample, bn_layer):
    _check_mode(mode)
    channels, inter = _sizes(params, mode, bn_layer)
    x = check_input(NAME, x, channels=channels, min_size=2 if sub_sample else 1)
    check_dtype(NAME, x, params)
    return x, inter


@uses_params(NAME)
def pairwise(params, x, *, mode: str = "embedded_gaussian", sub_sample: bool = True, pool_first: bool = True,
             use_scale: bool = True, scale: float | None = None, bn_layer: bool = True) -> ag.Tensor:
    """The normalised pairwise weights f(x_i, x_j) / C(x): (B, N, M); rows sum to 1 in the softmax modes.

    Takes the whole block's parameters (``mode``, ``bn_layer`` as given to :func:`init`; all checked).
    """
    x, inter = _validate(params, x, mode, sub_sample, bn_layer)
    theta, phi, _ = _operands(params, x, mode, sub_sample, pool_first)
    if mode in SOFTMAX_MODES:
        return attention_map(theta, phi, _logit_scale(mode, inter, use_scale, scale))
    _logit_scale(mode, None, use_scale, scale)                                  # rejects a stray scale
    return _linear_weights(params, theta, phi, mode)


@uses_params(NAME)
def non_local(params, x, *, train: bool = False, mode: str = "embedded_gaussian", sub_sample: bool = True,
              pool_first: bool = True, use_scale: bool = True, scale: float | None = None,
              bn_layer: bool = True) -> ag.Tensor:
    """Apply the non-local block to ``x`` (B, C, H, W); returns z (B, C, H, W).

    ``train`` switches W's BatchNorm to batch statistics.  Sub-sampling needs H, W >= 2.  ``mode`` and
    ``bn_layer``: the structure, as given to :func:`init`.
    """
    x, inter = _validate(params, x, mode, sub_sample, bn_layer)
    theta, phi, value = _operands(params, x, mode, sub_sample, pool_first)
    if mode in SOFTMAX_MODES:                                                  # y_i = sum_j softmax_j(.) g_j
        y = dot_product_attention(theta, phi, value, _logit_scale(mode, inter, use_scale, scale))
    elif mode == "dot_product":                                                # y_i = theta_i^T (sum_j phi_j g_j^T) / M
        _logit_scale(mode, inter, use_scale, scale)
        summary = ag.matmul(value, ag.swapaxes(phi, 1, 2)) / float(phi.shape[2])   # (B, Ci, Ci): g phi^T / M
        y = ag.matmul(summary, theta)                                              # (B, Ci, N)
    else:                                                                      # y_i = sum_j f_ij g_j / M
        _logit_scale(mode, inter, use_scale, scale)
        y = aggregate(_linear_weights(params, theta, phi, mode), value)
    n, c, h, w = x.shape
    y = ag.reshape(y, (n, inter, h, w))
    out = conv(params, "W", y)                                                 # W_z y
    if bn_layer:
        out = batch_norm(params, "W_bn", out, train)
    return out + x                                                             # z = W_z y + x


def _space(mode: str) -> Space:
    """``mode`` fixed; Ci free of C (None = max(C // 2, 1)); both sub-sampling orders, which need H, W >= 2 (the
    2x2 max-pool); the explicit ``scale`` only in the softmax modes; W's BN sees B H W values per channel."""
    options = {"sub_sample": Bools(), "pool_first": Bools(), "use_scale": Bools()}
    if mode in SOFTMAX_MODES:
        options["scale"] = Choice(None, 0.5)
    return Space(config={"channels": Ints(1, 16), "inter_channels": Choice(None, Ints(1, 8)), "mode": mode,
                         "bn_layer": Bools(), "zero_init": Bools(), "conv_std": Choice(None, 0.01)},
                 options=options, inputs=image(),
                 where=(lambda v: not v.sub_sample or min(v.height, v.width) >= 2,
                        bn_train(lambda v: v.batch * v.height * v.width if v.bn_layer else 2)))


def _entry(name, mode, description):
    register(Mechanism(
        name=name, family="self_attention",
        paper=Paper("Wang, Girshick, Gupta, He", "Non-local Neural Networks", "CVPR", 2018),
        init=init, apply_fn=non_local,
        config={"channels": 16, "mode": mode, "zero_init": False},
        example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 6, 6), dtype),),
        min_spatial=2, space=_space(mode), description=description,
    ))


_entry(NAME, "embedded_gaussian", "embedded-Gaussian non-local block (official: Ci^-0.5 scale, pool then conv)")
_entry("nonlocal-gaussian", "gaussian", "non-local block with the Gaussian pairwise function softmax(x^T x)")
_entry("nonlocal-dot", "dot_product", "non-local block with the dot-product pairwise function / M")
_entry("nonlocal-concat", "concatenation",
       "non-local block with the concatenation pairwise function ReLU(w^T[theta;phi]) / M")
