"""npattn -- a NumPy-only reference implementation of the attention mechanisms of computer vision.

    import npattn
    mech = npattn.get("se")
    params = mech.default_params(seed=0)
    (x,) = mech.example_input(np.random.default_rng(0))
    y = mech.apply(params, x)

Mechanisms live one module each in a subpackage per family of the survey
(``npattn.channel.se``, ``npattn.self_attention.ccnet``, ...).
"""
from __future__ import annotations

import importlib as _importlib

__version__ = "0.1.0"


def _check_core():
    import autograd

    if not getattr(autograd, "__npattn_core__", False):
        where = getattr(autograd, "__file__", "?")
        raise ImportError(
            f"'import autograd' found a different package at {where} -- probably the PyPI project "
            "'autograd' (HIPS autograd), which shares the import name with npattn's core. Uninstall it "
            "(pip uninstall autograd) or use a separate virtual environment, then reinstall npattn."
        )


_check_core()

from .layers import track_running_stats  # noqa: E402
from .params import ParameterKeyError, trainable  # noqa: E402
from .registry import FAMILIES, Mechanism, Paper, get, mechanisms, names, register  # noqa: E402

# Importing a family subpackage registers its mechanisms.
for _family in ("origins", "channel", "hybrid", "self_attention", "category", "temporal", "frequency",
                "global_", "higher_order", "transformer"):
    try:
        _importlib.import_module(f"{__name__}.{_family}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_family}":
            raise

__all__ = ["FAMILIES", "Mechanism", "Paper", "ParameterKeyError", "get", "mechanisms", "names", "register",
           "track_running_stats", "trainable"]
