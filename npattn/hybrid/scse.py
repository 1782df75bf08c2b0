"""scSE: concurrent spatial and channel squeeze & excitation (Roy, Navab, Wachinger, MICCAI 2018).

Two gates on the same input, recombined::

    cSE(x) = x * sigmoid(W2 relu(W1 GAP(x) + b1) + b2)       W1 (C/r, C), W2 (C, C/r)      (N, C, H, W)
    sSE(x) = x * sigmoid(conv1x1_{C->1}(x))                  weight (1, C, 1, 1) + bias    (N, C, H, W)
    scSE(x) = cSE(x) + sSE(x)           MICCAI paper, segmentation_models_pytorch   (combine="add";
                                        computed as x * (channel gate + spatial gate))
    scSE(x) = max(cSE(x), sSE(x))       official code (ai-med/squeeze_and_excitation) (combine="max")

Registry entries: ``scse`` (add, r = 16 as smp), ``scse-max`` (official: ``torch.max``, reduction 2), and the
single branches ``cse`` and ``sse``. Which branches run is read from the parameters (``cse.*``, ``sse.*``).

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
from ..registry import Mechanism, Paper, register

NAME = "scse"
BRANCHES = ("cse", "sse")
COMBINES = ("add", "max")


def init(rng, channels: int, *, reduction: int = 16, branches=BRANCHES, dtype=np.float64) -> dict:
    """Parameters of the chosen branches: ``cse.fc1.weight (C//r, C)``, ``cse.fc2.weight (C, C//r)``,
    ``sse.conv.weight (1, C, 1, 1)``, each with a bias.
    """
    branches = (branches,) if isinstance(branches, str) else tuple(branches)
    if not branches or any(b not in BRANCHES for b in branches):
        raise ValueError(f"{NAME}: branches must be a non-empty subset of {BRANCHES}, got {branches!r}")
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


def _present(params: dict) -> tuple:
    return tuple(b for b, key in (("cse", "cse.fc1.weight"), ("sse", "sse.conv.weight")) if key in params)


def _name(present: tuple) -> str:
    """The name errors use: scse for both branches, else the branch's own (cse / sse)."""
    return NAME if len(present) == 2 else present[0]


def channel_gate(params: dict, x: ag.Tensor) -> ag.Tensor:
    """cSE gate sigmoid(fc2(relu(fc1(GAP(x))))): (N, C, H, W) -> (N, C, 1, 1)."""
    squeeze = ag.mean(x, axis=(2, 3))
    gate = ag.sigmoid(linear(params, "cse.fc2", ag.relu(linear(params, "cse.fc1", squeeze))))
    return ag.reshape(gate, gate.shape + (1, 1))


def spatial_gate(params: dict, x: ag.Tensor) -> ag.Tensor:
    """sSE gate sigmoid(conv1x1(x)): (N, C, H, W) -> (N, 1, H, W)."""
    return ag.sigmoid(conv(params, "sse.conv", x))


def scse(params: dict, x, *, train: bool = False, combine: str = "add") -> ag.Tensor:
    """Apply cSE, sSE or their combination to ``x`` (N, C, H, W); returns (N, C, H, W).

    ``combine``: "add" (MICCAI paper, smp) or "max" (official code); used when both branches are present.
    ``train`` has no effect (no BatchNorm).
    """
    present = _present(params)
    if not present:
        raise ValueError(f"{NAME}: the parameters hold neither cse.* nor sse.* weights")
    name = _name(present)
    channels = params["cse.fc1.weight"].shape[1] if "cse" in present else params["sse.conv.weight"].shape[1]
    x = check_input(name, x, channels=channels)
    check_dtype(name, x, params)
    if combine not in COMBINES:
        raise ValueError(f"{name}: combine must be one of {COMBINES}, got {combine!r}")
    if present == ("cse",):
        return x * channel_gate(params, x)                   # cSE(x)
    if present == ("sse",):
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


def _entry(name: str, config: dict, options: dict, description: str) -> None:
    register(Mechanism(name=name, family="hybrid", paper=PAPER, init=init, apply_fn=scse,
                       config={"channels": 32, **config}, options=options, example_input=_example,
                       description=description))


_entry("scse", {"reduction": 16}, {"combine": "add"}, "cSE + sSE (MICCAI paper, smp)")
_entry("scse-max", {"reduction": 2}, {"combine": "max"}, "max(cSE, sSE), reduction 2 (official code)")
_entry("cse", {"reduction": 16, "branches": ("cse",)}, {}, "cSE alone: spatial squeeze, channel excitation")
_entry("sse", {"branches": ("sse",)}, {}, "sSE alone: channel squeeze, spatial excitation")
