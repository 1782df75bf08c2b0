"""The Tensor and its tape.

A :class:`Tensor` wraps one backend array.  When an operation receives at least one tensor that
requires a gradient (and gradient recording is on), the result gets a :class:`_Node` that remembers
its parents' nodes and, for each parent, a vector-Jacobian product (VJP): a function from the
result's cotangent to that parent's cotangent.  Those nodes are the tape; :func:`backward_pass`
walks it in reverse topological order.

The tape links *nodes*, not tensors, and a node holds no array.  So an intermediate result lives
only as long as the caller or a VJP closure holds it -- the closures capture exactly the values
their backward rule reads (as PyTorch's saved tensors), and an intermediate no rule reads (the sum
inside a residual, the input of a ReLU whose rule reads a mask) is freed during the forward pass.

The VJPs are written with the same differentiable operations as the forward pass, so running the
backward pass with recording switched on (``create_graph=True``) records the backward computation
itself -- which is how ``grad(grad(f))`` and Hessian-vector products work without a second code path.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import weakref
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


def _check_trainable(dtype) -> None:
    if not _is_float_dtype(dtype):
        raise TypeError(f"only floating-point tensors can require gradients; got dtype {dtype}")


class _Node:
    """A tensor's place on the tape: ``parents`` is a tuple of ``(parent node, vjp)`` pairs.

    A leaf's node has no parents and a weak reference to its tensor (for ``Tensor.backward``, which
    writes ``leaf.grad``); a result's node references no tensor, so it keeps no array alive.
    """

    __slots__ = ("parents", "_leaf", "__weakref__")

    def __init__(self, parents: tuple = (), leaf=None):
        self.parents = parents
        self._leaf = None if leaf is None else weakref.ref(leaf)

    def leaf_tensor(self):
        """The leaf tensor of this node, or None (a result's node, or a leaf since freed)."""
        return None if self._leaf is None else self._leaf()


class Tensor:
    """A backend array plus, when it requires grad, its place on the tape.

    Attributes:
        data: the wrapped backend array (``numpy.ndarray`` or ``cupy.ndarray``).
        requires_grad: whether gradients flow to this tensor.
        grad: for leaf tensors after :meth:`backward`, the accumulated gradient (a backend array).
    """

    __slots__ = ("data", "grad", "_node", "name", "__weakref__")
    _node_tag = True
    # Make NumPy defer to Tensor in ``ndarray <op> Tensor`` (binary ufuncs return NotImplemented).
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        elif not backend.is_array(data):
            data = _coerce_to_backend(data)
        if requires_grad:
            _check_trainable(data.dtype)
        self.data = data
        self.grad = None
        self._node = _Node(leaf=self) if requires_grad else None
        self.name = name

    @property
    def requires_grad(self) -> bool:
        """Whether gradients flow to this tensor (it has a place on the tape)."""
        return self._node is not None

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        """Make a leaf (un)trainable, as ``torch.Tensor.requires_grad = ...``; results of ops stay on the tape."""
        if not self.is_leaf:
            raise ValueError("requires_grad can only be changed on a leaf tensor; use .detach() to cut a result "
                             "from the tape")
        if value and self._node is None:
            _check_trainable(self.data.dtype)
            self._node = _Node(leaf=self)
        elif not value:
            self._node = None

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
        """True for a tensor no recorded operation produced (constants included, as in PyTorch)."""
        return self._node is None or not self._node.parents

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
    kept = tuple((p._node, f) for p, f in parents if isinstance(p, Tensor) and p._node is not None)
    if kept:
        out._node = _Node(kept)
    return out


def _leaves(root: Tensor) -> list:
    """The live leaf tensors that require grad and ``root`` depends on."""
    if root._node is None:
        return []
    leaves = (node.leaf_tensor() for node in _topological_order([root._node]) if not node.parents)
    return [t for t in leaves if t is not None]


def _topological_order(roots: Iterable[_Node]) -> list:
    """Nodes reachable from ``roots`` through the tape, parents before children."""
    order, seen = [], set()
    for root in roots:
        if id(root) in seen:
            continue
        stack = [(root, iter(root.parents))]
        seen.add(id(root))
        while stack:
            node, parents = stack[-1]
            advanced = False
            for parent, _ in parents:
                if id(parent) not in seen:
                    seen.add(id(parent))
                    stack.append((parent, iter(parent.parents)))
                    advanced = True
                    break
            if not advanced:
                stack.pop()
                order.append(node)
    return order


def _ownership_refs(t: Tensor) -> tuple:
    """Reference counts along ``t.data``'s chain of bases: (the array, its base, the base's base, ...)."""
    counts = [sys.getrefcount(t.data)]
    base = t.data.base
    while base is not None:
        counts.append(sys.getrefcount(base))
        base = base.base
    return tuple(counts)


def _calibrate_ownership_refs():
    """What :func:`_ownership_refs` reports when a tensor alone holds its array (and a view's base is
    held by that view alone): measured through the same function, so the comparison does not depend
    on how an interpreter version counts references held by frames and arguments."""
    if _INPLACE_TYPE is None:
        return None
    owner = _ownership_refs(Tensor(xp.empty(2)))
    view = _ownership_refs(Tensor(xp.reshape(xp.empty(2), (1, 2))))
    return owner[0], view[1]


# The array type whose ``base`` tells views from owners (the strict test backend's wrapper has none).
_INPLACE_TYPE = {"numpy": _np.ndarray, "cupy": getattr(xp, "ndarray", None)}.get(backend.name)
_SOLE_REFS = _calibrate_ownership_refs()


def _unshared(t: Tensor, other: Tensor) -> bool:
    """Whether ``t.data += other.data`` is invisible to everyone else (see :func:`_accumulate`)."""
    data = t.data
    if not (type(data) is _INPLACE_TYPE and getattr(data.flags, "writeable", True)
            and (data.flags.c_contiguous or data.flags.f_contiguous)  # no element aliases another
            and data.shape == other.data.shape and data.dtype == other.data.dtype):
        return False
    del data
    array_refs, *base_refs = _ownership_refs(t)
    return array_refs <= _SOLE_REFS[0] and all(n <= _SOLE_REFS[1] for n in base_refs)


def _accumulate(previous: Tensor, contribution: Tensor) -> Tensor:
    """previous + contribution, in place in ``previous`` when nothing else can see its array.

    A tensor used several times (x in three 1x1 convs, a residual input) gets one gradient per use.
    Summing them into a new array keeps three full-size arrays alive at once; PyTorch adds into the
    first buffer when no one else holds it.  Here that is: a plain NumPy/CuPy array, writeable and
    contiguous (so no element aliases another: not a broadcast), referenced by this tensor alone, and,
    if it is a view, whose base is referenced by that view alone -- no other tensor, view or closure
    holds any of it (CPython's reference counts say so).  Then no caller can observe the write.
    Anything else takes the out-of-place sum.
    """
    if _unshared(previous, contribution):
        xp.add(previous.data, contribution.data, out=previous.data)
        return previous
    return Tensor(previous.data + contribution.data)


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
        if (cotangent.dtype != output.dtype and _np.dtype(cotangent.dtype).kind == "f"
                and _np.dtype(output.dtype).kind == "f"):
            # the core's dtype rule (ops._match_dtypes): no float dtype is silently cast to another
            raise TypeError(f"cotangent has dtype {cotangent.dtype} but the output has dtype {output.dtype}; "
                            "cast the cotangent explicitly")
    if not output.requires_grad:
        return [None for _ in inputs]

    # Only walk the part of the tape that leads to a requested input.
    wanted = {id(t._node) for t in inputs if t._node is not None}
    order = _topological_order([output._node])
    relevant = set()
    for node in order:  # parents come first, so one forward sweep suffices
        if id(node) in wanted or any(id(p) in relevant for p, _ in node.parents):
            relevant.add(id(node))

    grads = {id(output._node): cotangent}
    with enable_grad(create_graph):
        for node in reversed(order):
            g = grads.pop(id(node), None) if id(node) not in wanted else grads.get(id(node))
            if g is None or not node.parents:
                continue
            for parent, vjp in node.parents:
                if id(parent) not in relevant:
                    continue
                contribution = vjp(g)
                if contribution is None:
                    continue
                previous = grads.pop(id(parent), None)
                if create_graph:
                    grads[id(parent)] = contribution if previous is None else previous + contribution
                elif previous is None:
                    # a Tensor of our own: a VJP may return its cotangent (or a captured tensor) itself,
                    # and two gradients must never be one object (see _accumulate)
                    grads[id(parent)] = Tensor(contribution.data)
                else:
                    grads[id(parent)] = _accumulate(previous, contribution)
    results = []
    for t in inputs:
        g = None if t._node is None else grads.get(id(t._node))
        if g is not None and not create_graph:
            g = Tensor(g.data)
        results.append(g)
    return results
