"""Small helpers shared by the autograd tests.

References always run on the host (NumPy/SciPy/explicit loops); values cross the host/backend line only
through ``ag.from_numpy`` / ``ag.to_numpy`` so the suite also passes under the strict backend.
"""
from __future__ import annotations

import numpy as np

import autograd as ag


def host(x) -> np.ndarray:
    """Host copy of a Tensor or backend array."""
    return ag.to_numpy(x)


def dev(x, dtype=None):
    """Backend array from host data."""
    return ag.from_numpy(np.asarray(x), dtype=dtype)


def tensor(x, requires_grad: bool = False) -> ag.Tensor:
    return ag.Tensor(dev(x), requires_grad=requires_grad)


def assert_close(actual, expected, rtol: float = 1e-12, atol: float = 1e-12) -> None:
    """Compare a Tensor/backend array with a host reference (shapes must match exactly)."""
    actual = host(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def distinct(rng, shape, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    """Values with no ties and a gap of at least (high-low)/(2*size) between any two.

    Used where the derivative has a kink at ties (max, max pooling): a finite-difference step of 1e-6
    never reorders such values.
    """
    size = int(np.prod(shape)) if shape else 1
    grid = np.linspace(low, high, size)
    jitter = rng.uniform(-0.25, 0.25, size) * (high - low) / max(size, 1)
    return rng.permutation(grid + jitter).reshape(shape)


def away_from(rng, shape, points=(0.0,), margin: float = 0.1, low: float = -2.0, high: float = 2.0):
    """Uniform values in [low, high] at least ``margin`` away from every kink in ``points``."""
    values = rng.uniform(low, high, shape)
    for p in points:
        close = np.abs(values - p) < margin
        values = np.where(close, p + np.where(values >= p, margin, -margin) * 2, values)
    return values


def check_grads(f, *args, mode: str = "full", second_order: bool = True, **kwargs) -> None:
    """First-order gradcheck (``mode``) and, unless disabled, second-order gradgradcheck (fast)."""
    assert ag.gradcheck(f, *args, mode=mode, **kwargs)
    if second_order:
        assert ag.gradgradcheck(f, *args, mode="fast", **kwargs)
