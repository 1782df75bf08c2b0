"""Discrete cosine transforms as multiplication by a basis matrix (differentiable for free).

The matrices match ``scipy.fft.dct`` / ``idct`` for types 2 and 3 and ``norm`` in
``{None, "backward", "ortho", "forward"}``:

    DCT-II  (unnormalised):  y_k = 2 * sum_n x_n cos(pi k (2n + 1) / (2N))
    DCT-III (unnormalised):  y_k = x_0 + 2 * sum_{n>=1} x_n cos(pi n (2k + 1) / (2N))

``norm="ortho"`` makes the matrices orthonormal (DCT-III is then the transpose of DCT-II);
``norm="forward"`` puts the 1/(2N) factor on the forward transform instead of the inverse.
"""
from __future__ import annotations

import numpy as _np

from . import backend, ops
from .tensor import Tensor

_NORMS = (None, "backward", "ortho", "forward")


def _check(type, norm):  # noqa: A002 - scipy's argument name
    if type not in (2, 3):
        raise ValueError(f"dct: only types 2 and 3 are implemented, got type={type!r}")
    if norm not in _NORMS:
        raise ValueError(f"dct: norm must be one of {_NORMS}, got {norm!r}")


def _dct2_host(n: int, norm) -> _np.ndarray:
    k = _np.arange(n)[:, None]
    i = _np.arange(n)[None, :]
    matrix = 2.0 * _np.cos(_np.pi * k * (2 * i + 1) / (2 * n))
    if norm == "ortho":
        matrix *= _np.sqrt(1.0 / (2 * n))
        matrix[0] /= _np.sqrt(2.0)
    elif norm == "forward":
        matrix /= 2 * n
    return matrix


def _dct3_host(n: int, norm) -> _np.ndarray:
    if norm == "ortho":
        return _dct2_host(n, "ortho").T
    # DCT-III = 2N * inverse(DCT-II) for the unnormalised pair.
    k = _np.arange(n)[:, None]
    i = _np.arange(n)[None, :]
    matrix = 2.0 * _np.cos(_np.pi * i * (2 * k + 1) / (2 * n))
    matrix[:, 0] = 1.0
    if norm == "forward":
        matrix /= 2 * n
    return matrix


def dct_matrix(n: int, type: int = 2, norm=None, dtype=_np.float64):  # noqa: A002
    """The (n, n) matrix M with ``dct(x) = M @ x`` (scipy.fft.dct conventions), on the backend."""
    _check(type, norm)
    host = _dct2_host(n, norm) if type == 2 else _dct3_host(n, norm)
    return backend.from_numpy(host.astype(dtype))


def idct_matrix(n: int, type: int = 2, norm=None, dtype=_np.float64):  # noqa: A002
    """The (n, n) matrix M with ``idct(x) = M @ x`` (the inverse of :func:`dct_matrix`)."""
    _check(type, norm)
    inverse_norm = {None: "forward", "backward": "forward", "forward": None, "ortho": "ortho"}[norm]
    host = _dct3_host(n, inverse_norm) if type == 2 else _dct2_host(n, inverse_norm)
    return backend.from_numpy(host.astype(dtype))


def _apply_along(x: Tensor, matrix, axis: int) -> Tensor:
    moved = ops.swapaxes(x, axis, -1)
    out = ops.matmul(moved, Tensor(matrix).T)
    return ops.swapaxes(out, axis, -1)


def _checked(x, axis, op: str):
    """(x, axis): a real floating-point x with at least one axis (scipy casts integers to float; the core
    asks for the cast explicitly), ``axis`` in range as a non-negative int."""
    x = ops._lift(x)
    ops._check_float(op, "input", x)
    if x.ndim == 0:
        raise ValueError(f"{op}: input must have at least one axis, got a 0-d tensor")
    return x, ops._one_axis(axis, x.ndim, op)


def dct(x, type: int = 2, norm=None, axis: int = -1) -> Tensor:  # noqa: A002
    """DCT along ``axis`` (scipy.fft.dct's arguments)."""
    x, axis = _checked(x, axis, "dct")
    return _apply_along(x, dct_matrix(x.shape[axis], type, norm, x.dtype), axis)


def idct(x, type: int = 2, norm=None, axis: int = -1) -> Tensor:  # noqa: A002
    """Inverse DCT along ``axis`` (scipy.fft.idct's arguments)."""
    x, axis = _checked(x, axis, "idct")
    return _apply_along(x, idct_matrix(x.shape[axis], type, norm, x.dtype), axis)


def _axes(x, axes, op: str) -> tuple:
    """``axes`` of a separable transform, each in range and named once (scipy's rule)."""
    x = ops._lift(x)
    ops._check_float(op, "input", x)
    items = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
    normalized = [ops._one_axis(ax, x.ndim, op, "axes") for ax in items]
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"{op}: axes {axes!r} name the same axis more than once")
    return x, tuple(normalized)


def dctn(x, type: int = 2, norm=None, axes=(-2, -1)) -> Tensor:  # noqa: A002
    """Separable DCT over several axes (scipy.fft.dctn); 2-D over the last two by default."""
    out, axes = _axes(x, axes, "dctn")
    for axis in axes:
        out = dct(out, type, norm, axis)
    return out


def idctn(x, type: int = 2, norm=None, axes=(-2, -1)) -> Tensor:  # noqa: A002
    """Inverse of :func:`dctn`."""
    out, axes = _axes(x, axes, "idctn")
    for axis in axes:
        out = idct(out, type, norm, axis)
    return out


def dct2(x, type: int = 2, norm=None) -> Tensor:  # noqa: A002
    """2-D DCT over the last two axes."""
    return dctn(x, type, norm, (-2, -1))


def idct2(x, type: int = 2, norm=None) -> Tensor:  # noqa: A002
    """2-D inverse DCT over the last two axes."""
    return idctn(x, type, norm, (-2, -1))
