"""The self-check behind ``npattn check``: forward, backward and a gradient check per mechanism.

For each mechanism (default configuration, small float64 example input) it runs the forward pass, the
backward pass for a random cotangent (gradients w.r.t. the inputs and every parameter) and compares
the directional derivatives ``u^T J v`` with central differences along random directions ``v``
(``autograd.gradcheck``'s fast mode).  The reported error is the largest
``|analytic - numeric| / max(1, |numeric|)`` over the directions; a non-finite output, derivative or
finite difference makes it infinite (a failure), never a pass.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

import autograd as ag

from .registry import Mechanism


@dataclass
class CheckResult:
    name: str
    output_shape: tuple
    grad_error: float
    seconds: float
    ok: bool
    message: str = ""


def _split_inputs(mech: Mechanism, inputs):
    idx = mech.differentiable_inputs
    if idx is None:
        idx = tuple(i for i, x in enumerate(inputs) if np.dtype(x.dtype).kind == "f")
    return idx


def directional_error(fn, args: list, rng, n_directions: int = 3, eps: float = 1e-6) -> float:
    """max over random (u, v) of |u^T J v - FD| / max(1, |FD|) for ``fn(*args)`` (float64 pytrees)."""
    leaves, _, treedef = ag.tree_flatten(list(args))
    floats = [i for i, leaf in enumerate(leaves) if np.dtype(leaf.dtype).kind == "f"]
    out, pullback = ag.vjp(lambda *xs: fn(*ag.tree_unflatten(treedef, _merge(leaves, floats, xs))),
                           *[leaves[i] for i in floats])
    worst = 0.0
    for _ in range(n_directions):
        u = ag.from_numpy(rng.standard_normal(tuple(out.shape)))
        grads = pullback(u)
        directions = [ag.from_numpy(rng.standard_normal(tuple(leaves[i].shape))) for i in floats]
        analytic = sum(float(ag.xp.sum(g * v)) for g, v in zip(grads, directions))

        def shifted(sign):
            moved = [leaves[i] + sign * eps * v for i, v in zip(floats, directions)]
            with ag.no_grad():
                value = fn(*ag.tree_unflatten(treedef, _merge(leaves, floats, moved)))
            return float(ag.xp.sum(u * value.data))

        numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
        error = abs(analytic - numeric) / max(1.0, abs(numeric))
        if not math.isfinite(error):  # a NaN/inf derivative fails: max(0.0, nan) would silently keep 0.0
            return math.inf
        worst = max(worst, error)
    return worst


def _merge(leaves, floats, values):
    merged = list(leaves)
    for i, v in zip(floats, values):
        merged[i] = v
    return merged


def check_mechanism(mech: Mechanism, seed: int = 0, tolerance: float = 1e-6) -> CheckResult:
    """Forward + backward + directional gradient check of one mechanism in float64."""
    start = time.perf_counter()
    try:
        params = mech.default_params(seed)
        inputs = list(mech.example_input(np.random.default_rng(seed + 1), dtype=np.float64))
        diff = _split_inputs(mech, inputs)
        out = mech.apply(params, *inputs)
        if not np.all(np.isfinite(ag.to_numpy(out.data))):
            raise FloatingPointError("non-finite output")

        def fn(params, *diff_inputs):
            full = list(inputs)
            for i, value in zip(diff, diff_inputs):
                full[i] = value
            return mech.apply(params, *full)

        error = directional_error(fn, [params] + [inputs[i] for i in diff], np.random.default_rng(seed + 2))
        ok = error <= tolerance
        message = "" if ok else f"gradient error {error:.3g} > {tolerance:g}"
        return CheckResult(mech.name, tuple(out.shape), error, time.perf_counter() - start, ok, message)
    except Exception as exc:  # the table reports failures; the exit status says so too
        return CheckResult(mech.name, (), float("nan"), time.perf_counter() - start, False,
                           f"{type(exc).__name__}: {exc}")
