"""PSA: Polarized Self-Attention, parallel (PSA_p) and sequential (PSA_s) layouts (Liu, Xu, Lu, Mei, Xu,
arXiv 2107.00782, 2021).

A channel-only and a spatial-only branch, each keeping full resolution along the axis it gates
(C = channels, IC = C/2, N = H·W)::

    channel-only:  z    = W_v(X) · softmax_N(W_q(X))ᵀ           W_v: C -> IC, W_q: C -> 1      (B, IC, 1, 1)
                   A_ch = sigmoid(W_z(z))                        W_z: IC -> C                    (B, C, 1, 1)
    spatial-only:  g    = GAP(W_q'(U)),  t = W_v'(U)             W_q', W_v': C -> IC   (B, 1, IC), (B, IC, N)
                   A_sp = sigmoid(g · t)                                                          (B, 1, H, W)
    PSA_p:  Z = X ⊙ A_ch(X) + X ⊙ A_sp(X)            PSA_s:  U = X ⊙ A_ch(X),  Z = U ⊙ A_sp(U)

Follows the official code by default (``DeLightCMU/PSA``, ``semantic-segmentation/network/PSA.py``,
``PSA_p(inplanes, planes)`` and ``PSA_s``; planes = inplanes = C), where the paper and the code differ:

* PSA_p: W_z is ``conv_up`` (IC -> C) alone, **no LayerNorm**; the spatial gate is
  sigmoid(**softmax_N(g · t)**) -- the softmax over positions comes after the product, so the gate lies in
  (0.5, 0.731) and tends to 0.5 as N grows.
* PSA_s: W_z is ``conv_up`` = Conv(IC -> IC/4, bias) -> LayerNorm([IC/4, 1, 1]) -> ReLU -> Conv(IC/4 -> C,
  bias) (so C >= 8); the spatial gate is sigmoid(g · **softmax_N(t)**), each of the IC rows of t softmaxed
  over positions.
* The q/v convs are 1x1 **without bias** (kaiming-normal fan_in init).
* g = GAP(W_q'(U)) is computed as W_q' GAP(U) (+ b): the conv is linear, the values agree to rounding.
* The official method names are swapped (``spatial_pool`` computes the channel-only branch,
  ``channel_pool`` the spatial-only one; DeLightCMU/PSA#5); the parameter names are kept as they are.

``form="paper"`` gives the paper's equations for either layout: A_ch = sigmoid(LN(W_z(z))) with
``conv_up.0`` (IC -> C) and LayerNorm([C, 1, 1]) ``conv_up.1``, and A_sp = sigmoid(softmax_IC(g) · t), the
softmax over the IC channels of the pooled query before the product.  ``qkv_bias=True`` puts a bias on
every 1x1 conv (fightingcv-attention's form has them); the official PSA_s ``conv_up`` convs always have one.
The three spatial gates differ by 0.2-0.65 on a 5x6 map.

Parameters (official names): ``conv_q_right.weight (1, C, 1, 1)``, ``conv_v_right.weight``,
``conv_q_left.weight``, ``conv_v_left.weight`` (IC, C, 1, 1); PSA_p ``conv_up.weight (C, IC, 1, 1)``; PSA_s
``conv_up.0.weight (IC/4, IC, 1, 1)``, ``conv_up.0.bias``, ``conv_up.1.weight/.bias (IC/4, 1, 1)``,
``conv_up.3.weight (C, IC/4, 1, 1)``, ``conv_up.3.bias``; paper form ``conv_up.0.weight (C, IC, 1, 1)``,
``conv_up.1.weight/.bias (C, 1, 1)``.  ``layout``, ``form`` and ``qkv_bias`` are structure options of
:func:`init` and :func:`psa` alike (registry entries ``psa-p`` and ``psa-s``).
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import check_dtype, check_input, example, init_conv, init_layer_norm, layer_norm
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Ints, Space, image

NAME = "psa"
LAYOUTS = ("parallel", "sequential")
FORMS = ("official", "paper")
SQUEEZE = 4          # PSA_s: conv_up's hidden width IC // 4 (official ``ratio = 4``)
LN_EPS = 1e-5


def _check_structure(layout: str, form: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"{NAME}: layout must be one of {LAYOUTS}, got {layout!r}")
    if form not in FORMS:
        raise ValueError(f"{NAME}: form must be one of {FORMS}, got {form!r}")


def _up_layers(layout: str, form: str, channels: int, inter: int) -> list:
    """conv_up's layers as (kind, name, out, in): the channel branch's W_z for this structure."""
    if form == "paper":
        return [("conv", "conv_up.0", channels, inter), ("ln", "conv_up.1", channels, None)]
    if layout == "parallel":
        return [("conv", "conv_up", channels, inter)]
    hidden = inter // SQUEEZE
    return [("conv", "conv_up.0", hidden, inter), ("ln", "conv_up.1", hidden, None), ("relu", None, None, None),
            ("conv", "conv_up.3", channels, hidden)]


def _up_bias(layout: str, form: str, qkv_bias: bool) -> bool:
    """The official PSA_s conv_up convs have biases; every other conv has one only with ``qkv_bias``."""
    return qkv_bias or (form == "official" and layout == "sequential")


def _kaiming_fan_in(rng, params: dict, prefix: str, out_channels: int, in_channels: int, bias: bool, dtype) -> None:
    """The official kaiming_init(mode='fan_in'): N(0, 2 / fan_in) weights (relu gain), zero bias."""
    std = math.sqrt(2.0 / in_channels)
    params[f"{prefix}.weight"] = backend.from_numpy((rng.standard_normal((out_channels, in_channels, 1, 1)) * std)
                                                    .astype(dtype))
    if bias:
        params[f"{prefix}.bias"] = backend.from_numpy(np.zeros(out_channels, dtype=dtype))


def init(rng, channels: int, *, layout: str = "parallel", form: str = "official", qkv_bias: bool = False,
         dtype=np.float64) -> dict:
    """Parameters for C = ``channels`` (IC = C // 2): the four q/v convs and ``conv_up`` (module docstring)."""
    _check_structure(layout, form)
    inter = channels // 2
    if inter < 1 or (form == "official" and layout == "sequential" and inter // SQUEEZE < 1):
        raise ValueError(f"{NAME}: channels={channels} too few for layout={layout!r}, form={form!r} "
                         f"(IC = C // 2 must be >= 1, and >= {SQUEEZE} for the official PSA_s)")
    params: dict = {}
    _kaiming_fan_in(rng, params, "conv_q_right", 1, channels, qkv_bias, dtype)
    for prefix in ("conv_v_right", "conv_q_left", "conv_v_left"):
        _kaiming_fan_in(rng, params, prefix, inter, channels, qkv_bias, dtype)
    for kind, name, out, inp in _up_layers(layout, form, channels, inter):
        if kind == "conv":
            init_conv(rng, params, name, out, inp, 1, bias=_up_bias(layout, form, qkv_bias), dtype=dtype)
        elif kind == "ln":
            init_layer_norm(params, name, (out, 1, 1), dtype=dtype)
    return params


# ---------------------------------------------------------------------------------------------
# the two branches


def _projections(params, x, prefixes: tuple, widths: tuple, bias: bool) -> list:
    """Several 1x1 convs of the same input as one GEMM: x (B, C, H, W) -> [(B, width_i, H·W)]."""
    b, c, h, w = x.shape
    weights = [ag.reshape(params.take(f"{p}.weight", (width, c, 1, 1)), (width, c))
               for p, width in zip(prefixes, widths)]
    stacked = ag.matmul(ag.concatenate(weights, axis=0), ag.reshape(x, (b, c, h * w)))    # (B, Σ widths, HW)
    if bias:
        biases = [params.take(f"{p}.bias", (width,)) for p, width in zip(prefixes, widths)]
        stacked = stacked + ag.reshape(ag.concatenate(biases, axis=0), (1, -1, 1))
    if len(widths) == 1:
        return [stacked]
    return ag.split(stacked, [int(i) for i in np.cumsum(widths)[:-1]], axis=1)


def _channel_gate(params, value, query, layout: str, form: str, qkv_bias: bool):
    """A_ch = sigmoid(W_z(W_v(X) · softmax_N(W_q(X))ᵀ)): value (B, IC, N), query (B, 1, N) -> (B, C, 1, 1)."""
    channels = params.shape("conv_q_right.weight")[1]
    z = ag.matmul(value, ag.swapaxes(ag.softmax(query, axis=-1), 1, 2))           # (B, IC, 1)
    z = ag.expand_dims(z, 3)                                                       # (B, IC, 1, 1)
    for kind, name, out, _ in _up_layers(layout, form, channels, value.shape[1]):
        if kind == "conv":
            bias = _up_bias(layout, form, qkv_bias)
            weight = params.take(f"{name}.weight", (out, z.shape[1], 1, 1))
            z = ag.conv2d(z, weight, params.take(f"{name}.bias", (out,)) if bias else None)
        elif kind == "ln":
            z = layer_norm(params, name, z, (out, 1, 1), eps=LN_EPS)
        else:
            z = ag.relu(z)
    return ag.sigmoid(z)


def _spatial_gate(params, query, value, shape, layout: str, form: str):
    """A_sp from the pooled query g (B, 1, IC) and the values t (B, IC, N): (B, 1, H, W)."""
    if form == "paper":
        logits = ag.matmul(ag.softmax(query, axis=-1), value)                      # softmax_IC(g) · t
    elif layout == "parallel":
        logits = ag.softmax(ag.matmul(query, value), axis=-1)                      # softmax_N(g · t)
    else:
        logits = ag.matmul(query, ag.softmax(value, axis=-1))                      # g · softmax_N(t)
    b, _, h, w = shape
    return ag.reshape(ag.sigmoid(logits), (b, 1, h, w))


def _pooled_query(params, u, inter: int, bias: bool):
    """g = GAP(W_q'(U)) laid out as a row: (B, C, H, W) -> (B, 1, IC).

    Computed as W_q' GAP(U) (+ b): the 1x1 conv is linear, so pooling first gives the same values up to
    rounding without the (B, IC, H·W) projection (a third of the GEMM, and its memory).
    """
    b, c = u.shape[:2]
    weight = ag.reshape(params.take("conv_q_left.weight", (inter, c, 1, 1)), (inter, c))
    pooled = ag.matmul(weight, ag.reshape(ag.mean(u, axis=(2, 3)), (b, c, 1)))    # (B, IC, 1)
    if bias:
        pooled = pooled + ag.reshape(params.take("conv_q_left.bias", (inter,)), (1, inter, 1))
    return ag.swapaxes(pooled, 1, 2)


def _validate(params, x, layout, form):
    _check_structure(layout, form)
    x = check_input(NAME, x, channels=params.shape("conv_q_right.weight")[1], min_size=1)
    check_dtype(NAME, x, params)
    return x


def _gates(params, x, layout: str, form: str, qkv_bias: bool) -> tuple:
    """(A_ch (B, C, 1, 1), A_sp (B, 1, H, W), the spatial branch's input U)."""
    inter = params.shape("conv_v_right.weight")[0]
    if layout == "parallel":   # the three full-size convs of X as one GEMM
        q_right, v_right, v_left = _projections(
            params, x, ("conv_q_right", "conv_v_right", "conv_v_left"), (1, inter, inter), qkv_bias)
        channel_gate = _channel_gate(params, v_right, q_right, layout, form, qkv_bias)
        query = _pooled_query(params, x, inter, qkv_bias)
        return channel_gate, _spatial_gate(params, query, v_left, x.shape, layout, form), x
    q_right, v_right = _projections(params, x, ("conv_q_right", "conv_v_right"), (1, inter), qkv_bias)
    channel_gate = _channel_gate(params, v_right, q_right, layout, form, qkv_bias)
    refined = x * channel_gate                                                     # U = X ⊙ A_ch(X)
    (v_left,) = _projections(params, refined, ("conv_v_left",), (inter,), qkv_bias)
    query = _pooled_query(params, refined, inter, qkv_bias)
    return channel_gate, _spatial_gate(params, query, v_left, x.shape, layout, form), refined


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, layout: str = "parallel", form: str = "official",
                   qkv_bias: bool = False) -> tuple:
    """(A_ch (B, C, 1, 1), A_sp (B, 1, H, W)); in the sequential layout A_sp is computed from U = X ⊙ A_ch."""
    channel_gate, spatial_gate, _ = _gates(params, _validate(params, x, layout, form), layout, form, qkv_bias)
    return channel_gate, spatial_gate


@uses_params(NAME)
def psa(params, x, *, train: bool = False, layout: str = "parallel", form: str = "official",
        qkv_bias: bool = False) -> ag.Tensor:
    """Apply Polarized Self-Attention to ``x`` (B, C, H, W); returns (B, C, H, W).

    ``layout``, ``form``, ``qkv_bias``: the structure, as given to :func:`init`.  ``train`` has no effect.
    """
    x = _validate(params, x, layout, form)
    channel_gate, spatial_gate, refined = _gates(params, x, layout, form, qkv_bias)
    if layout == "parallel":
        return x * spatial_gate + x * channel_gate                                 # Z = X ⊙ A_sp + X ⊙ A_ch
    return refined * spatial_gate                                                  # Z = U ⊙ A_sp(U)


PAPER = Paper("Liu, Xu, Lu, Mei, Xu", "Polarized Self-Attention: Towards High-quality Pixel-wise Regression",
              "arXiv 2107.00782", 2021)


def _example(rng, dtype=np.float64):
    return (example(rng, (2, 16, 5, 6), dtype),)


def _space(layout: str) -> Space:
    """IC = C // 2 >= 1 (odd C drops a channel from IC), and IC // 4 >= 1 (C >= 8) for the official PSA_s; a 1x1
    map makes the softmaxes over positions trivial."""
    def smallest(v):
        return 2 * SQUEEZE if layout == "sequential" and v.form == "official" else 2
    return Space(config={"layout": layout, "form": Choice(*FORMS), "qkv_bias": Bools(),
                         "channels": Ints(smallest, 24)}, inputs=image())


register(Mechanism(
    name="psa-p", family="hybrid", paper=PAPER, init=init, apply_fn=psa,
    config={"channels": 16, "layout": "parallel"}, example_input=_example, space=_space("parallel"),
    description="polarized channel-only and spatial-only self-attention gates, summed (official PSA_p)",
))

register(Mechanism(
    name="psa-s", family="hybrid", paper=PAPER, init=init, apply_fn=psa,
    config={"channels": 16, "layout": "sequential"}, example_input=_example, space=_space("sequential"),
    description="polarized channel-only then spatial-only self-attention (official PSA_s)",
))
