"""Finite-difference gradient checking -- a product feature, not only a test helper.

``gradcheck(f, *args)`` compares the VJPs of :mod:`autograd` with central differences, in float64:

* ``mode="full"``: the whole numerical Jacobian, one input coordinate at a time (small inputs only:
  2 evaluations of ``f`` per coordinate);
* ``mode="fast"``: for ``n_directions`` random directions ``v`` (input side), two evaluations of ``f``
  whatever the input size, compared two ways: the projection ``u^T J v`` for a random ``u`` (output
  side), and ``J v`` output by output.  A projection dilutes an error in one Jacobian entry by the
  size of the input (a 0.5% error at one element of a 16k-element input passed it 9 times in 10);
  ``J v`` per output does not.  The analytic ``J v`` is the derivative of the VJP with respect to its
  cotangent (the VJP is linear in it), so it needs VJPs written with differentiable operations, as
  every core op's are; ``per_output=False`` keeps the projection alone.

``gradgradcheck`` applies the same check to the VJP itself (second order).  Both return True or raise
:class:`GradcheckError`, whose message names the argument (its pytree path), the worst elements,
the analytic and numeric values and the tolerances.

Non-differentiable points (ReLU at 0, max ties, |x| at 0) make finite differences meaningless;
draw inputs away from them rather than loosening tolerances.
"""
from __future__ import annotations

from typing import Callable

import numpy as _np

from . import backend, ops
from .backend import xp
from .functional import tree_flatten, tree_unflatten, vjp
from .tensor import Tensor, backward_pass, enable_grad, no_grad


class GradcheckError(AssertionError):
    """Analytic and numerical derivatives disagree (the message says where and by how much)."""


def _host64(x) -> _np.ndarray:
    return backend.to_numpy(x.data if isinstance(x, Tensor) else x).astype(_np.float64)


def _is_float_leaf(leaf) -> bool:
    data = leaf.data if isinstance(leaf, Tensor) else leaf
    return hasattr(data, "dtype") and _np.dtype(data.dtype).kind == "f"


def _setup(args, argnums):
    """Flatten the checked arguments into float64 host leaves, remembering where they go."""
    nums = tuple(range(len(args))) if argnums is None else ((argnums,) if isinstance(argnums, int) else tuple(argnums))
    slots = []  # (argnum, treedef, leaves, paths, checked-flags)
    for i in nums:
        leaves, paths, treedef = tree_flatten(args[i])
        checked = [_is_float_leaf(leaf) for leaf in leaves]
        for leaf in leaves:
            data = leaf.data if isinstance(leaf, Tensor) else leaf
            if _is_float_leaf(leaf) and _np.dtype(data.dtype) != _np.float64:
                raise TypeError(
                    f"gradcheck: argument {i}{paths[leaves.index(leaf)]} has dtype {data.dtype}; "
                    "finite differences need float64 inputs"
                )
        slots.append((i, treedef, leaves, [f"args[{i}]{p}" for p in paths], checked))
    return slots


def _rebuild(args, slots, values):
    """Arguments with the checked leaves replaced by ``values`` (backend arrays or Tensors)."""
    args = list(args)
    k = 0
    for i, treedef, leaves, _, checked in slots:
        new = []
        for leaf, is_checked in zip(leaves, checked):
            if is_checked:
                new.append(values[k])
                k += 1
            else:
                new.append(leaf)
        args[i] = tree_unflatten(treedef, new)
    return args


def _checked_leaves(slots):
    out = []
    for _, _, leaves, paths, checked in slots:
        out += [(leaf, p) for leaf, p, c in zip(leaves, paths, checked) if c]
    return out


def _evaluate(f, args, slots, values):
    with no_grad():
        out = f(*_rebuild(args, slots, values))
    return _host64(out)


def _analytic(f, args, slots, cotangent_host):
    """The VJP of f at args for one cotangent: a list of host float64 arrays, one per leaf."""
    leaves = _checked_leaves(slots)
    base = [backend.from_numpy(_host64(leaf)) for leaf, _ in leaves]

    def wrapped(*checked_values):
        return ops._lift(f(*_rebuild(args, slots, list(checked_values))))

    out, pullback = vjp(wrapped, *base)
    cot = backend.from_numpy(cotangent_host.reshape(_host64(out).shape))
    grads = pullback(cot)
    return [_host64(g) for g in grads], _host64(out)


class _JacobianVectorProducts:
    """``J_k v`` for each checked leaf k, from one recorded VJP: the derivative of ``<J_k^T g, v>`` with
    respect to the cotangent g (the VJP is linear in g, so this is exact and independent of g)."""

    def __init__(self, f, args, slots):
        leaves = _checked_leaves(slots)
        self.inputs = [Tensor(backend.from_numpy(_host64(leaf)), requires_grad=True) for leaf, _ in leaves]
        with enable_grad(True):
            out = ops._lift(f(*_rebuild(args, slots, list(self.inputs))))
            self.shape = out.shape
            self.cotangent = Tensor(xp.zeros(out.shape, dtype=out.dtype), requires_grad=True)
            self.vjps = backward_pass(out, self.cotangent, self.inputs, create_graph=True)

    def __call__(self, k: int, direction) -> _np.ndarray:
        """Host float64 ``J_k v`` for a host direction v of leaf k's shape."""
        vjp_k = self.vjps[k]
        if vjp_k is None or not vjp_k.requires_grad:  # the output does not depend on this leaf (or on g)
            return _np.zeros(self.shape)
        with enable_grad(True):
            pairing = ops.sum(ops.mul(vjp_k, Tensor(backend.from_numpy(direction.astype(_np.dtype(vjp_k.dtype))))))
        (jv,) = backward_pass(pairing, None, [self.cotangent])
        return _np.zeros(self.shape) if jv is None else _host64(jv)


def _report(path, analytic, numeric, atol, rtol, what):
    analytic = _np.asarray(analytic, dtype=_np.float64)
    numeric = _np.asarray(numeric, dtype=_np.float64)
    error = _np.abs(analytic - numeric)
    allowed = atol + rtol * _np.abs(numeric)
    bad = error > allowed
    if not bad.any():
        return None
    order = _np.argsort(-(error - allowed).ravel())[:5]
    lines = [f"gradcheck failed for {path} ({what}); tolerance |analytic - numeric| <= {atol:g} + {rtol:g} * |numeric|"]
    lines.append(f"  {int(bad.sum())} of {bad.size} entries out of tolerance; worst:")
    for flat in order:
        idx = _np.unravel_index(flat, analytic.shape) if analytic.ndim else ()
        lines.append(
            f"    index {tuple(int(i) for i in idx)}: analytic {analytic.ravel()[flat]:.10g}, "
            f"numeric {numeric.ravel()[flat]:.10g}, |diff| {error.ravel()[flat]:.3g}"
        )
    return "\n".join(lines)


def gradcheck(f: Callable, *args, argnums=None, mode: str = "full", eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, n_directions: int = 3, seed: int = 0, per_output: bool = True) -> bool:
    """Check the reverse-mode derivatives of ``f`` against central differences.

    Args:
        f: a function of ``args`` returning one Tensor/array (any shape).
        args: pytrees of float64 arrays; integer/bool leaves are passed through unchecked.
        argnums: which arguments to check (default: all).
        mode: "full" (every Jacobian entry) or "fast" (random projections u^T J v).
        eps: finite-difference step.  atol, rtol: tolerance on each compared quantity.
        n_directions: number of random (u, v) pairs in fast mode.
        seed: seed of the random projections.
        per_output: in fast mode, also compare ``J v`` output by output (module docstring).

    Returns True, or raises GradcheckError naming the argument path and the worst elements.
    """
    return _check(f, args, argnums, mode, eps, atol, rtol, n_directions, seed, per_output=per_output)


def _check(f, args, argnums, mode, eps, atol, rtol, n_directions, seed, names=None, order="", per_output=False):
    """gradcheck's body; ``names`` replaces the reported argument paths (gradgradcheck passes the
    paths of the original arguments), ``order`` labels the report."""
    if mode not in ("full", "fast"):
        raise ValueError(f"gradcheck: mode must be 'full' or 'fast', got {mode!r}")
    slots = _setup(args, argnums)
    leaves = _checked_leaves(slots)
    if not leaves:
        raise ValueError("gradcheck: no floating-point argument to check")
    if names is not None:
        leaves = [(leaf, name) for (leaf, _), name in zip(leaves, names)]
    base = [_host64(leaf) for leaf, _ in leaves]
    rng = _np.random.default_rng(seed)

    def at(values_host):
        return _evaluate(f, args, slots, [backend.from_numpy(v) for v in values_host])

    out0 = at(base)
    if mode == "full":
        numerics = []
        for k, value in enumerate(base):
            numeric = _np.zeros(out0.shape + value.shape)
            for index in _np.ndindex(value.shape):
                plus = [v.copy() for v in base]
                minus = [v.copy() for v in base]
                plus[k][index] += eps
                minus[k][index] -= eps
                numeric[(...,) + index] = (at(plus) - at(minus)) / (2 * eps)
            numerics.append(numeric)
        analytics = [_np.zeros_like(n) for n in numerics]
        for out_index in _np.ndindex(out0.shape):
            cot = _np.zeros(out0.shape)
            cot[out_index] = 1.0
            grads, _ = _analytic(f, args, slots, cot)
            for k, g in enumerate(grads):
                analytics[k][out_index] = g
        failures = [
            m for m in (
                _report(path, a, n, atol, rtol, f"{order}Jacobian, output index first")
                for a, n, (_, path) in zip(analytics, numerics, leaves)
            ) if m
        ]
        if failures:
            raise GradcheckError("\n".join(failures))
        return True

    failures = []
    products = _JacobianVectorProducts(f, args, slots) if per_output else None
    for d in range(n_directions):
        u = rng.standard_normal(out0.shape)
        directions = [rng.standard_normal(v.shape) for v in base]
        grads, _ = _analytic(f, args, slots, u)
        for k, (value, (_, path)) in enumerate(zip(base, leaves)):
            plus = [v.copy() for v in base]
            minus = [v.copy() for v in base]
            plus[k] = plus[k] + eps * directions[k]
            minus[k] = minus[k] - eps * directions[k]
            numeric_jv = (at(plus) - at(minus)) / (2 * eps)
            numeric = float(_np.sum(u * numeric_jv))
            analytic = float(_np.sum(grads[k] * directions[k]))
            scale = max(1.0, _np.sqrt(value.size))
            message = _report(path, analytic, numeric, atol * scale, rtol, f"{order}random direction {d}: u^T J v")
            if message is None and products is not None:
                message = _report(path, products(k, directions[k]), numeric_jv, atol, rtol,
                                  f"{order}random direction {d}: J v per output, the VJP differentiated in its "
                                  "cotangent")
            if message:
                failures.append(message)
    if failures:
        raise GradcheckError("\n".join(failures))
    return True


def gradgradcheck(f: Callable, *args, argnums=None, mode: str = "fast", eps: float = 1e-6, atol: float = 1e-5,
                  rtol: float = 1e-3, n_directions: int = 3, seed: int = 0) -> bool:
    """Second-order check: gradcheck of ``(args, u) -> VJP_f(args)(u)`` for a fixed random cotangent ``u``.

    The VJP is computed with the backward pass recorded, so this checks the derivatives of every
    backward rule that ``f`` uses.
    """
    slots = _setup(args, argnums)
    leaves = _checked_leaves(slots)
    base_values = [backend.from_numpy(_host64(leaf)) for leaf, _ in leaves]
    out0 = _evaluate(f, args, slots, base_values)
    rng = _np.random.default_rng(seed + 1)
    cot = backend.from_numpy(rng.standard_normal(out0.shape))

    def first_order(*checked_values):
        def inner(*values):
            return ops._lift(f(*_rebuild(args, slots, list(values))))

        _, pullback = vjp(inner, *checked_values)
        grads = pullback(cot)
        return ops.concatenate([ops.reshape(g, (-1,)) for g in grads])

    return _check(first_order, base_values, None, mode, eps, atol, rtol, n_directions, seed,
                  names=[path for _, path in leaves], order="second order, VJP's ")
