"""Function transformations: ``grad``, ``value_and_grad``, ``vjp`` over pytrees.

A *pytree* is an array/Tensor/scalar leaf, or a dict, list or tuple of pytrees.  Gradients come back
with the structure of the differentiated argument: ``grad(loss)(params, x)`` returns a dict shaped
like ``params``.

Nesting works: when an argument is itself a Tensor that requires grad (because an outer ``grad`` is
tracing), the inner transformation records its backward pass, so ``grad(grad(f))`` and
Hessian-vector products come out of the same VJPs.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as _np

from . import ops
from .tensor import Tensor, backward_pass, enable_grad, is_grad_enabled, record

# ---------------------------------------------------------------------------------------------
# pytrees


def tree_flatten(tree, path: str = "") -> tuple[list, list, Any]:
    """Return (leaves, paths, treedef).  dict keys are visited in insertion order."""
    if isinstance(tree, dict):
        leaves, paths, defs = [], [], []
        for key, value in tree.items():
            sub_leaves, sub_paths, sub_def = tree_flatten(value, f"{path}[{key!r}]")
            leaves += sub_leaves
            paths += sub_paths
            defs.append((key, sub_def, len(sub_leaves)))
        return leaves, paths, ("dict", defs)
    if isinstance(tree, (list, tuple)):
        leaves, paths, defs = [], [], []
        for i, value in enumerate(tree):
            sub_leaves, sub_paths, sub_def = tree_flatten(value, f"{path}[{i}]")
            leaves += sub_leaves
            paths += sub_paths
            defs.append((i, sub_def, len(sub_leaves)))
        return leaves, paths, (type(tree).__name__, defs)
    return [tree], [path], None


def tree_unflatten(treedef, leaves: Sequence):
    if treedef is None:
        return leaves[0]
    kind, defs = treedef
    out, start = [], 0
    for key, sub_def, count in defs:
        out.append((key, tree_unflatten(sub_def, leaves[start : start + count])))
        start += count
    if kind == "dict":
        return dict(out)
    values = [v for _, v in out]
    return tuple(values) if kind == "tuple" else values


def tree_map(fn: Callable, tree):
    leaves, _, treedef = tree_flatten(tree)
    return tree_unflatten(treedef, [fn(leaf) for leaf in leaves])


# ---------------------------------------------------------------------------------------------
# transformations


def _is_constant_leaf(leaf) -> bool:
    """Integer and boolean array leaves inside a pytree (counters, masks) are constants, not inputs."""
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and _np.dtype(dtype).kind in "biu"


def _as_input(leaf, path: str, fname: str) -> Tensor:
    """A fresh tensor that requires grad and is connected to ``leaf`` when ``leaf`` is traced."""
    if isinstance(leaf, Tensor):
        data = leaf.data
    else:
        data = ops._lift(leaf).data
    if _np.dtype(data.dtype).kind not in "fc":
        raise TypeError(
            f"{fname}: argument{path or ''} has dtype {data.dtype}; gradients need a floating-point input"
        )
    if isinstance(leaf, Tensor) and leaf.requires_grad and is_grad_enabled():
        # identity node: the inner pass differentiates w.r.t. this node, the outer pass sees through it
        return record(data, ((leaf, lambda g: g),))
    return Tensor(data, requires_grad=True)


def _prepare(args, argnums, fname):
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    for i in nums:
        if not -len(args) <= i < len(args):
            raise ValueError(f"{fname}: argnums {i} is out of range for {len(args)} positional arguments")
    nums = tuple(i % len(args) for i in nums)
    args = list(args)
    trees = []
    for i in nums:
        leaves, paths, treedef = tree_flatten(args[i])
        # Inside a container, integer/bool leaves (BatchNorm's num_batches_tracked, masks) are passed
        # through as constants and get ``None`` as their gradient (torch: no .grad; JAX: float0 zeros).
        # A bare integer argument is still an error: asking for its gradient is a mistake.
        constant = [treedef is not None and _is_constant_leaf(leaf) for leaf in leaves]
        inputs = [leaf if const else _as_input(leaf, f"{i}{p}", fname)
                  for leaf, p, const in zip(leaves, paths, constant)]
        args[i] = tree_unflatten(treedef, inputs)
        trees.append(([t if not const else None for t, const in zip(inputs, constant)], treedef))
    return single, args, trees


def _nested(trees) -> bool:
    return any(t is not None and t.requires_grad and not t.is_leaf for inputs, _ in trees for t in inputs)


def _differentiable(trees) -> list:
    return [t for inputs, _ in trees for t in inputs if t is not None]


def _unpack(value, single, trees, grads, create_graph):
    out, start = [], 0
    for inputs, treedef in trees:
        count = sum(t is not None for t in inputs)
        chunk = grads[start : start + count]
        start += count
        filled = []
        grads_iter = iter(chunk)
        for t in inputs:
            if t is None:                      # a constant (integer/bool) leaf: no gradient
                filled.append(None)
                continue
            g = next(grads_iter)
            if g is None:
                g = Tensor(ops.mul(t, 0.0).data)
            filled.append(g if create_graph else g.data)
        out.append(tree_unflatten(treedef, filled))
    return out[0] if single else tuple(out)


def value_and_grad(f: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """Return a function computing ``(f(*args), df/d(args[argnums]))``; ``f`` must return a scalar.

    With ``has_aux=True``, ``f`` returns ``(scalar, aux)`` and the result is ``((value, aux), grads)``.
    Gradients are backend arrays (Tensors when nested inside another transformation).
    """

    def wrapped(*args, **kwargs):
        single, args, trees = _prepare(args, argnums, "grad")
        create_graph = _nested(trees)
        with enable_grad(True):
            result = f(*args, **kwargs)
        value, aux = result if has_aux else (result, None)
        if not isinstance(value, Tensor):
            value = ops._lift(value)
        if value.size != 1:
            raise ValueError(
                f"grad: the function must return a scalar, got shape {value.shape}; use vjp for "
                "non-scalar outputs"
            )
        grads = backward_pass(value, None, _differentiable(trees), create_graph=create_graph)
        grads_tree = _unpack(value, single, trees, grads, create_graph)
        out_value = value if create_graph else value.data
        return ((out_value, aux), grads_tree) if has_aux else (out_value, grads_tree)

    return wrapped


def grad(f: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """Return a function computing the gradient of scalar ``f`` w.r.t. ``args[argnums]``."""
    vg = value_and_grad(f, argnums, has_aux)

    def wrapped(*args, **kwargs):
        if has_aux:
            (_, aux), grads = vg(*args, **kwargs)
            return grads, aux
        return vg(*args, **kwargs)[1]

    return wrapped


def vjp(f: Callable, *primals, has_aux: bool = False):
    """Evaluate ``f(*primals)`` and return ``(output, vjp_fn)``.

    ``vjp_fn(cotangent)`` returns a tuple with one gradient pytree per primal.  ``f`` must return a
    single Tensor; the cotangent must have its shape.
    """
    _, args, trees = _prepare(primals, tuple(range(len(primals))), "vjp")
    create_graph = _nested(trees)
    with enable_grad(True):
        result = f(*args)
    output, aux = result if has_aux else (result, None)
    output = ops._lift(output)

    def vjp_fn(cotangent):
        grads = backward_pass(output, cotangent, _differentiable(trees), create_graph=create_graph)
        return _unpack(output, False, trees, grads, create_graph)

    out_value = output if create_graph else output.data
    return (out_value, vjp_fn, aux) if has_aux else (out_value, vjp_fn)
