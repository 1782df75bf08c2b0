"""scSE: concurrent spatial and channel squeeze & excitation (Roy, Navab, Wachinger, MICCAI 2018).

Two gates on the same input, recombined::

    cSE(x) = x * sigmoid(W2 relu(W1 GAP(x) + b1) + b2)       W1 (C/r, C), W2 (C, C/r)      (N, C, H, W)
    sSE(x) = x * sigmoid(conv1x1_{C->1}(x))                  weight (1, C, 1, 1) + bias    (N, C, H, W)
    scSE(x) = cSE(x) + sSE(x)           MICCAI paper, segmentation_models_pytorch   (combine="add";
                                        computed as x * (channel gate + spatial gate))
    scSE(x) = max(cSE(x), sSE(x))       official code (ai-med/squeeze_and_excitation) (combine="max")

Registry entries: ``scse`` (add, r = 16 as smp), ``scse-max`` (official: ``torch.max``, reduction 2), and the
single branches ``cse`` and ``sse``. Which branches run is the **structure option** ``branches`` (a keyword
of :func:`init` and :func:`scse` alike; a registry entry's config gives both), never which keys exist: the
parameters must be exactly those ``init`` makes for it (npattn.params).  Errors name ``cse`` / ``sse`` for a
single branch, ``scse`` for both.

Official code (``ChannelSELayer``, ``SpatialSELayer``, ``ChannelSpatialSELayer``): both FCs and the 1x1 conv
carry biases; the combination is ``torch.max``, whose gradient is split 0.5 / 0.5 on exact ties
(``ag.maximum`` does the same). The official ``SpatialSELayer.forward(x, weights)`` few-shot path (a kernel
averaged from external weights, no bias) is not reproduced. smp's ``SCSEModule`` holds the cSE FCs as
1x1 convs: its ``cSE.1.weight (C/r, C, 1, 1)`` is ``cse.fc1.weight`` reshaped to (C/r, C).
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, conv, example, init_conv, init_linear, linear
from ..params import check_shape, uses_params
from ..registry import Mechanism, Paper, register
from ..space import Ints, Space, image

NAME = "scse"
BRANCHES = ("cse", "sse")
COMBINES = ("add", "max")


def _branches(branches) -> tuple:
    """The chosen branches in canonical order; a non-empty subset of BRANCHES."""
    chosen = (branches,) if isinstance(branches, str) else tuple(branches)
    if not chosen or any(b not in BRANCHES for b in chosen):
        raise ValueError(f"{NAME}: branches must be a non-empty subset of {BRANCHES}, got {branches!r}")
    return tuple(b for b in BRANCHES if b in chosen)


def _name(branches: tuple) -> str:
    """The name errors use: scse for both branches, else the branch's own (cse / sse)."""
    return NAME if len(branches) == 2 else branches[0]


def init(rng, channels: int, *, reduction: int = 16, branches=BRANCHES, dtype=np.float64) -> dict:
    """Parameters of the chosen branches: ``cse.fc1.weight (C//r, C)``, ``cse.fc2.weight (C, C//r)``,
    ``sse.conv.weight (1, C, 1, 1)``, each with a bias.
    """
    branches = _branches(branches)
    params: dict = {}
    if "cse" in branches:
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"{NAME}: channels={channels} // reduction={reduction} must be at least 1")
        init_linear(rng, params, "cse.fc1", hidden, channels, dtype=dtype)
        init_linear(rng, params, "cse.fc2", channels, hidden, dtype=dtype)
    if "sse" in branches:
        init_conv(rng, params, "sse.conv", 1, channels, 1, dtype=dtype)
    return params


def channel_gate(params, x: ag.Tensor) -> ag.Tensor:
    """cSE gate sigmoid(fc2(relu(fc1(GAP(x))))): (N, C, H, W) -> (N, C, 1, 1)."""
    squeeze = ag.mean(x, axis=(2, 3))
    hidden = ag.relu(linear(params, "cse.fc1", squeeze))
    gate = ag.sigmoid(linear(params, "cse.fc2", hidden, out=x.shape[1]))
    return ag.reshape(gate, gate.shape + (1, 1))


def spatial_gate(params, x: ag.Tensor) -> ag.Tensor:
    """sSE gate sigmoid(conv1x1(x)): (N, C, H, W) -> (N, 1, H, W)."""
    check_shape(_mechanism(params), "sse.conv.weight", params["sse.conv.weight"], (1, x.shape[1], 1, 1))
    return ag.sigmoid(conv(params, "sse.conv", x, out=1))


def _mechanism(params) -> str:
    return getattr(params, "mechanism", NAME)


def scse(params, x, *, train: bool = False, combine: str = "add", branches=BRANCHES) -> ag.Tensor:
    """Apply cSE, sSE or their combination to ``x`` (N, C, H, W); returns (N, C, H, W).

    ``branches``: the structure, as given to :func:`init` ("cse", "sse" or both).  ``combine``: "add" (MICCAI
    paper, smp) or "max" (official code); used when both branches run.  ``train`` has no effect (no BatchNorm).
    """
    branches = _branches(branches)
    return uses_params(_name(branches))(_scse)(params, x, combine, branches)


def _scse(params, x, combine: str, branches: tuple) -> ag.Tensor:
    name = params.mechanism
    channels = params.shape("cse.fc1.weight")[1] if "cse" in branches else params.shape("sse.conv.weight")[1]
    x = check_input(name, x, channels=channels, min_size=1)
    check_dtype(name, x, params)
    if combine not in COMBINES:
        raise ValueError(f"{name}: combine must be one of {COMBINES}, got {combine!r}")
    if branches == ("cse",):
        return x * channel_gate(params, x)                   # cSE(x)
    if branches == ("sse",):
        return x * spatial_gate(params, x)                   # sSE(x)
    if combine == "add":
        # cSE(x) + sSE(x) = x * (channel gate + spatial gate): one full-size product instead of two plus a sum
        return x * (channel_gate(params, x) + spatial_gate(params, x))
    channel_out, spatial_out = x * channel_gate(params, x), x * spatial_gate(params, x)
    return ag.maximum(channel_out, spatial_out)              # torch.max(a, b): ties split the gradient


PAPER = Paper("Roy, Navab, Wachinger",
              "Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks",
              "MICCAI", 2018)


def _example(rng, dtype=np.float64):
    return (example(rng, (2, 32, 6, 7), dtype),)


def _space(branches: tuple) -> Space:
    """C // r >= 1 (init's rule) with C from r up where cSE runs; sSE alone takes any C and has no reduction.
    The combination is the entry's (its ``options``)."""
    if "cse" not in branches:
        return Space(config={"channels": Ints(1, 32), "branches": branches}, inputs=image())
    return Space(config={"reduction": Ints(1, 16), "channels": Ints(lambda v: v.reduction, 32), "branches": branches},
                 inputs=image())


def _entry(name: str, config: dict, options: dict, description: str) -> None:
    register(Mechanism(name=name, family="hybrid", paper=PAPER, init=init, apply_fn=scse,
                       config={"channels": 32, **config}, options=options, example_input=_example,
                       space=_space(_branches(config.get("branches", BRANCHES))), description=description))


_entry("scse", {"reduction": 16}, {"combine": "add"}, "cSE + sSE (MICCAI paper, smp)")
_entry("scse-max", {"reduction": 2}, {"combine": "max"}, "max(cSE, sSE), reduction 2 (official code)")
_entry("cse", {"reduction": 16, "branches": ("cse",)}, {}, "cSE alone: spatial squeeze, channel excitation")
_entry("sse", {"branches": ("sse",)}, {}, "sSE alone: channel squeeze, spatial excitation")
