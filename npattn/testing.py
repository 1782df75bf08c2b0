"""Assertions for other frameworks' test suites.

``assert_close(actual, expected)`` accepts NumPy and CuPy arrays, npattn/autograd Tensors, and anything
exposing ``__array__`` or DLPack (a torch tensor, a JAX array), and reports the worst elements::

    from npattn.testing import assert_close
    assert_close(torch_module(x_t), npattn_output, rtol=1e-10, atol=1e-12)
"""
from __future__ import annotations

import numpy as np

import autograd as ag


def to_host(value) -> np.ndarray:
    """A host NumPy copy of ``value`` (Tensor, NumPy/CuPy array, torch tensor, DLPack or array-like)."""
    if isinstance(value, ag.Tensor):
        return value.numpy()
    if isinstance(value, np.ndarray) and type(value) is np.ndarray:
        return value
    if ag.backend.is_array(value):  # CuPy or strict-backend arrays: the explicit conversion
        return ag.to_numpy(value)
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor without importing torch
        return value.detach().cpu().numpy()
    if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
        return value.get()
    try:
        return np.asarray(value)
    except TypeError:
        return np.from_dlpack(value)


def compare(actual, expected, rtol: float = 1e-7, atol: float = 0.0) -> tuple[bool, str]:
    """(ok, report) for ``|actual - expected| <= atol + rtol * |expected|`` elementwise."""
    a, e = to_host(actual), to_host(expected)
    if a.shape != e.shape:
        return False, f"shape mismatch: actual {a.shape}, expected {e.shape}"
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    nan_mismatch = np.isnan(a64) != np.isnan(e64)
    diff = np.asarray(np.abs(a64 - e64))  # stays an array for 0-d inputs
    diff[np.isnan(a64) & np.isnan(e64)] = 0.0
    allowed = atol + rtol * np.abs(e64)
    bad = (diff > allowed) | nan_mismatch
    if not bad.any():
        return True, f"all {a.size} elements close (max |diff| {float(diff.max(initial=0.0)):.3g})"
    excess = np.where(bad, np.nan_to_num(diff - allowed, nan=np.inf), -np.inf).ravel()
    worst = np.argsort(-excess)[:5]
    lines = [
        f"{int(bad.sum())} of {a.size} elements differ (rtol={rtol:g}, atol={atol:g}); "
        f"max |diff| {float(np.max(np.where(np.isnan(diff), np.inf, diff))):.3g}; worst:"
    ]
    for flat in worst:
        if not bad.ravel()[flat]:
            break
        index = tuple(int(i) for i in np.unravel_index(flat, a.shape)) if a.ndim else ()
        lines.append(f"  at {index}: actual {a64.ravel()[flat]:.12g}, expected {e64.ravel()[flat]:.12g}, "
                     f"|diff| {diff.ravel()[flat]:.3g}")
    return False, "\n".join(lines)


def assert_close(actual, expected, rtol: float = 1e-7, atol: float = 0.0, name: str = "") -> None:
    """Raise AssertionError with the worst elements and their indices unless the arrays are close."""
    ok, report = compare(actual, expected, rtol=rtol, atol=atol)
    if not ok:
        raise AssertionError(f"{name + ': ' if name else ''}{report}")
