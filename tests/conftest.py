"""Shared fixtures: backend information and hypothesis profiles.

The whole suite runs on the backend chosen by NPATTN_BACKEND (numpy, strict, or cupy on a GPU
machine).  Reference computations (SciPy, explicit loops) always run on the host, so tests convert
explicitly with ``autograd.to_numpy`` / ``autograd.from_numpy``.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import autograd as ag

settings.register_profile(
    "ci", max_examples=int(os.environ.get("NPATTN_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow], derandomize=True,
)
settings.load_profile("ci")


def host(x):
    """Host float64/int copy of a Tensor or backend array (explicit conversion)."""
    return ag.to_numpy(x.data if isinstance(x, ag.Tensor) else x)


def dev(x, dtype=None):
    """Backend array from a host array."""
    return ag.from_numpy(np.asarray(x), dtype=dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
