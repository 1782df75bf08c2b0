"""The Tensor and its tape.

A :class:`Tensor` wraps one backend array.  When an operation receives at least one tensor that
requires a gradient (and gradient recording is on), the result remembers its *parents* and, for
each parent, a vector-Jacobian product (VJP): a function from the result's cotangent to that
parent's cotangent.  That parent list is the tape; :func:`backward_pass` walks it in reverse
topological order.

The VJPs are written with the same differentiable operations as the forward pass, so running the
backward pass with recording switched on (``create_graph=True``) records the backward computation
itself -- which is how ``grad(grad(f))`` and Hessian-vector products work without a second code path.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterable, Sequence

import numpy as _np

from . import backend
from .backend import xp

_state = threading.local()


def is_grad_enabled() -> bool:
    """Whether operations are currently recorded on the tape."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Context manager: operations inside are not recorded (results never require grad)."""
    previous = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous


@contextlib.contextmanager
def enable_grad(enabled: bool = True):
    """Context manager that switches recording on (or to ``enabled``)."""
    previous = is_grad_enabled()
    _state.enabled = enabled
    try:
        yield
    finally:
        _state.enabled = previous


def _is_float_dtype(dtype) -> bool:
    return _np.dtype(dtype).kind in "fc"


class Tensor:
    """A backend array plus, when it requires grad, its place on the tape.

    Attributes:
        data: the wrapped backend array (``numpy.ndarray`` or ``cupy.ndarray``).
        requires_grad: whether gradients flow to this tensor.
        grad: for leaf tensors after :meth:`backward`, the accumulated gradient (a backend array).
    """

    __slots__ = ("data", "requires_grad", "grad", "_parents", "name", "__weakref__")
    _node_tag = True
    # Make NumPy defer to Tensor in ``ndarray <op> Tensor`` (binary ufuncs return NotImplemented).
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        elif not backend.is_array(data):
            data = _coerce_to_backend(data)
        if requires_grad and not _is_float_dtype(data.dtype):
            raise TypeError(
                f"only floating-point tensors can require gradients; got dtype {data.dtype}"
            )
        self.data = data
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._parents: tuple = ()
        self.name = name

    # -- array-like attributes -------------------------------------------------------------
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: int(self.data.size))

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{flag})"

    def numpy(self) -> _np.ndarray:
        """The value as a host NumPy array (an explicit copy from the device for CuPy)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        """The value of a one-element tensor as a Python number."""
        return self.data.item() if hasattr(self.data, "item") else float(self.data)

    def detach(self) -> "Tensor":
        """The same value, cut from the tape."""
        return Tensor(self.data)

    @property
    def is_leaf(self) -> bool:
        return not self._parents

    def backward(self, cotangent=None, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        A non-scalar tensor needs an explicit ``cotangent`` of its own shape.
        """
        leaves = _leaves(self)
        grads = backward_pass(self, cotangent, leaves, create_graph=create_graph)
        for leaf, g in zip(leaves, grads):
            if g is None:
                continue
            value = g if create_graph else g.data
            if leaf.grad is None:
                leaf.grad = value
            else:
                leaf.grad = leaf.grad + value

    # -- operators (implemented in ops; bound at import of autograd.ops) -------------------
    def __bool__(self):
        return bool(self.data)

    def __float__(self):
        return float(self.data)

    def __int__(self):
        return int(self.data)

    def __hash__(self):
        return id(self)


def _coerce_to_backend(data):
    """Turn a Python scalar / list / host array into a backend array without changing dtype."""
    if isinstance(data, (bool, int, float, complex)) or isinstance(data, _np.generic):
        return xp.asarray(data)
    if backend.name != "numpy" and isinstance(data, _np.ndarray):
        raise TypeError(
            f"got a host NumPy array while the backend is {backend.name!r}; convert it explicitly "
            "with autograd.from_numpy(array)"
        )
    if isinstance(data, (list, tuple)):
        return backend.from_numpy(_np.asarray(data))
    return xp.asarray(data)


def as_tensor(value) -> Tensor:
    """Wrap an array / scalar as a constant tensor (tensors pass through unchanged)."""
    if isinstance(value, Tensor):
        return value
    return Tensor(value)


def record(data, parents: Sequence[tuple]) -> Tensor:
    """Create the result of an operation.

    ``parents`` is a sequence of ``(operand, vjp)`` pairs; ``vjp(cotangent) -> operand cotangent``
    takes and returns Tensors.  Operands that are not tensors requiring grad are dropped, and when
    recording is off (or nothing requires grad) the result is a plain constant tensor.
    """
    out = Tensor(data)
    if not is_grad_enabled():
        return out
    kept = tuple((p, f) for p, f in parents if isinstance(p, Tensor) and p.requires_grad)
    if kept:
        out.requires_grad = True
        out._parents = kept
    return out


def _leaves(root: Tensor) -> list:
    order = _topological_order([root])
    return [t for t in order if t.is_leaf and t.requires_grad]


def _topological_order(roots: Iterable[Tensor]) -> list:
    """Tensors reachable from ``roots`` through the tape, parents before children."""
    order, seen = [], set()
    for root in roots:
        if id(root) in seen:
            continue
        stack = [(root, iter(root._parents))]
        seen.add(id(root))
        while stack:
            node, parents = stack[-1]
            advanced = False
            for parent, _ in parents:
                if id(parent) not in seen:
                    seen.add(id(parent))
                    stack.append((parent, iter(parent._parents)))
                    advanced = True
                    break
            if not advanced:
                stack.pop()
                order.append(node)
    return order


def backward_pass(output: Tensor, cotangent, inputs: Sequence[Tensor], create_graph: bool = False):
    """Return d(output)/d(input) contracted with ``cotangent``, for each of ``inputs``.

    Returns a list aligned with ``inputs``; an input the output does not depend on gets ``None``.
    With ``create_graph=True`` the backward computation is itself recorded, so the returned
    tensors can be differentiated again.
    """
    if not isinstance(output, Tensor):
        raise TypeError(f"backward needs a Tensor output, got {type(output).__name__}")
    if cotangent is None:
        if output.size != 1:
            raise ValueError(
                f"the output has shape {output.shape}; a non-scalar output needs an explicit "
                "cotangent of the same shape (e.g. backward(ones_like(output)))"
            )
        cotangent = Tensor(xp.ones(output.shape, dtype=output.dtype))
    else:
        cotangent = as_tensor(cotangent)
        if cotangent.shape != output.shape:
            raise ValueError(
                f"cotangent has shape {cotangent.shape} but the output has shape {output.shape}"
            )
    if not output.requires_grad:
        return [None for _ in inputs]

    # Only walk the part of the tape that leads to a requested input.
    wanted = {id(t) for t in inputs}
    order = _topological_order([output])
    relevant = set()
    for node in order:  # parents come first, so one forward sweep suffices
        if id(node) in wanted or any(id(p) in relevant for p, _ in node._parents):
            relevant.add(id(node))

    grads = {id(output): cotangent}
    with enable_grad(create_graph):
        for node in reversed(order):
            g = grads.pop(id(node), None) if id(node) not in wanted else grads.get(id(node))
            if g is None or not node._parents:
                continue
            for parent, vjp in node._parents:
                if id(parent) not in relevant:
                    continue
                contribution = vjp(g)
                if contribution is None:
                    continue
                previous = grads.get(id(parent))
                grads[id(parent)] = contribution if previous is None else previous + contribution
    results = []
    for t in inputs:
        g = grads.get(id(t))
        if g is not None and not create_graph:
            g = Tensor(g.data)
        results.append(g)
    return results
