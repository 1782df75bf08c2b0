"""Helpers for the transformer family's configuration spaces (:mod:`npattn.space`): inputs whose size names
must not clash with an ``init`` keyword, and arrays drawn as ``apply`` options (masks, a second input).

An array option is a :class:`npattn.space.Derived` value computed from a drawn seed (``"_seed"``), so a point
still replays from its drawn values alone and hypothesis shrinks the seed like any other integer.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from autograd import backend

from ..layers import example
from ..space import BATCH, SIZE, Bools, Choice, Derived, Inputs, Ints, Values


def seeded_normal(shape: Callable[[Values], tuple], seed: str = "_seed") -> Derived:
    """A standard-normal backend array of ``shape(values)`` from ``numpy.random.default_rng(values[seed])``."""
    return Derived(lambda v: example(np.random.default_rng(v[seed]), shape(v)))


def seeded_bool(shape: Callable[[Values], tuple], probability: float = 0.6, seed: str = "_seed") -> Derived:
    """A boolean backend array of ``shape(values)``, each entry True with ``probability`` (seeded)."""
    return Derived(lambda v: backend.from_numpy(np.random.default_rng(v[seed]).random(shape(v)) < probability))


def map_inputs(channels: str, *, height: str = "map_height", width: str = "map_width", size=SIZE) -> Inputs:
    """One (B, C, H, W) input whose sizes are named ``height`` / ``width`` (for entries with an ``init`` keyword
    ``width``, which the sizes of :func:`npattn.space.image` would shadow)."""
    dims = {"batch": BATCH, height: size, width: size}
    return Inputs(dims, lambda rng, v, dtype: (example(rng, (v.batch, v[channels], v[height], v[width]), dtype),))


def swin_config(**extra) -> dict:
    """Swin v1/v2 ``init`` values: C = heads * d (d down to 1); every rule; under the official rule a square window
    and one shift (its requirement), under the others rectangles and a shift per axis, 0 <= shift < window (the
    official assert); windows larger than the map and not dividing it (the code zero-pads); ``input_resolution``
    is the map's (H, W), so that the official min rule builds its tables for the window it uses, or None (init's
    default: tables for ``window_size``, which fit where :func:`swin_tables_fit` holds).  d = 8 beside the
    small ones: the defaults' C = 16 with 2 heads."""
    return {"num_heads": Ints(1, 3), "_head_dim": Choice(Ints(1, 3), 8),
            "dim": Derived(lambda v: v.num_heads * v._head_dim),
            "rule": Choice("official", "torchvision", "detection"),
            "_wh": Ints(1, 5), "_ww": Ints(1, 5), "_sh": Ints(0, lambda v: v._wh - 1),
            "_sw": Ints(0, lambda v: v._ww - 1),
            "window_size": Derived(lambda v: v._wh if v.rule == "official" else (v._wh, v._ww)),
            "shift_size": Derived(lambda v: v._sh if v.rule == "official" else (v._sh, v._sw)),
            "qkv_bias": Bools(), **extra,
            "input_resolution": Choice(Derived(lambda v: (v.height, v.width)), None)}


def swin_tables_fit(v) -> bool:
    """Without ``input_resolution`` the tables are built for ``window_size``; apply refuses them where the official
    min rule shrinks the window (min(H, W) below it)."""
    return v.input_resolution is not None or v.rule != "official" or min(v.height, v.width) >= v._wh


def swin_window(v) -> tuple:
    """The window a drawn Swin point uses: the official rule's min(H, W) when min(H, W) <= the window."""
    if v.rule == "official" and min(v.height, v.width) <= v._wh:
        return (min(v.height, v.width),) * 2
    return (v._wh, v._ww) if v.rule != "official" else (v._wh, v._wh)
