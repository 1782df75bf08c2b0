"""Assertions for other frameworks' test suites.

``assert_close(actual, expected)`` accepts NumPy and CuPy arrays, npattn/autograd Tensors, Python scalars
and lists, torch tensors (any device, ``requires_grad``, the conjugate/negative bits, bfloat16), and
anything exposing ``__array__`` or DLPack (a JAX array), and reports the worst elements::

    from npattn.testing import assert_close
    assert_close(torch_module(x_t), npattn_output, rtol=1e-10, atol=1e-12)

The rules are ``torch.testing.assert_close``'s, so a verdict here means what it means there: shapes must
match; dtypes must match unless ``check_dtype=False``; an element is close when ``|a - e| <= atol + rtol * |e|``
or ``a == e`` exactly, so an infinity is close only to the same infinity; NaN is close to NaN only with
``equal_nan=True``; complex values are compared as complex numbers (a real array against a complex one
keeps the imaginary part).  bfloat16 (and the other dtypes NumPy lacks) are compared after an exact
upcast to float64; ``check_dtype`` still sees the original dtype.
"""
from __future__ import annotations

import numpy as np

import autograd as ag


def _torch_to_host(tensor) -> tuple[np.ndarray, str]:
    """(host array, torch dtype name) of a torch tensor, without importing torch."""
    tensor = tensor.detach()
    if str(tensor.layout) != "torch.strided":  # sparse: compare the values it stands for
        tensor = tensor.to_dense()
    tensor = tensor.cpu().resolve_conj().resolve_neg()  # numpy() refuses the lazy conj/neg bits
    dtype = str(tensor.dtype).removeprefix("torch.")
    try:
        return tensor.numpy(), dtype
    except TypeError:  # bfloat16, float8, complex32: no NumPy dtype; every such value is exact in float64
        wide = tensor.cdouble() if tensor.is_complex() else tensor.double()
        return wide.numpy(), dtype


def host_array(value) -> tuple[np.ndarray, str]:
    """(host NumPy array, name of the value's own dtype) for the types :func:`assert_close` accepts.

    The array has a NumPy number dtype; a dtype NumPy cannot compute with (bfloat16 from torch or
    ``ml_dtypes``) is upcast exactly to float64, and the name keeps the original (``"bfloat16"``).
    """
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError("npattn.testing: masked arrays are not compared (their mask would be ignored); "
                        "pass value.filled(...) or the unmasked data")
    if isinstance(value, ag.Tensor):
        array = value.numpy()
    elif isinstance(value, np.ndarray):
        array = value
    elif ag.backend.is_array(value):  # CuPy or strict-backend arrays: the explicit conversion
        array = ag.to_numpy(value)
    elif hasattr(value, "detach") and hasattr(value, "resolve_conj"):  # torch.Tensor without importing torch
        return _torch_to_host(value)
    elif hasattr(value, "get") and type(value).__module__.startswith("cupy"):
        array = value.get()
    elif hasattr(value, "__dlpack__") and not hasattr(value, "__array__"):
        array = np.from_dlpack(value)  # np.asarray would wrap it in a 0-d object array
    else:
        array = np.asarray(value)  # lists, scalars, JAX arrays (__array__)
    dtype = array.dtype.name
    if array.dtype.kind not in "biufc":
        try:  # ml_dtypes' bfloat16 / float8 (a JAX array's host copy): exact in float64
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"npattn.testing: cannot compare values of dtype {dtype}") from None
    return array, dtype


def to_host(value) -> np.ndarray:
    """A host NumPy copy of ``value`` (Tensor, NumPy/CuPy array, torch tensor, DLPack or array-like).

    Dtypes NumPy lacks (torch's bfloat16) come back as float64 (exact).
    """
    return host_array(value)[0]


def _format(value) -> str:
    return f"{complex(value):.12g}" if np.iscomplexobj(value) else f"{float(value):.12g}"


def compare(actual, expected, rtol: float = 1e-7, atol: float = 0.0, *, equal_nan: bool = False,
            check_dtype: bool = True) -> tuple[bool, str]:
    """(ok, report) for ``|actual - expected| <= atol + rtol * |expected|`` elementwise (rules: module doc)."""
    a, a_dtype = host_array(actual)
    e, e_dtype = host_array(expected)
    if a.shape != e.shape:
        return False, f"shape mismatch: actual {a.shape}, expected {e.shape}"
    if check_dtype and a_dtype != e_dtype:
        return False, (f"dtype mismatch: actual {a_dtype}, expected {e_dtype} "
                       "(check_dtype=False compares the values across dtypes)")
    # one working dtype for both: a complex operand keeps its imaginary part, the real one gets 0j
    work = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(e) else np.float64
    a_w, e_w = np.asarray(a, dtype=work), np.asarray(e, dtype=work)
    finite = np.isfinite(a_w) & np.isfinite(e_w)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.asarray(np.abs(a_w - e_w))  # stays an array for 0-d inputs
        allowed = atol + rtol * np.abs(e_w)
        close = (a_w == e_w) | (finite & (diff <= allowed))  # +-inf: only the same infinity
    if equal_nan:
        close |= np.isnan(a_w) & np.isnan(e_w)
    bad = ~close
    finite_diff = np.where(finite, diff, 0.0)
    if not bad.any():
        return True, f"all {a.size} elements close (max |diff| {float(finite_diff.max(initial=0.0)):.3g})"
    # worst first: non-finite mismatches (inf excess), then by how far each exceeds its allowance
    with np.errstate(invalid="ignore"):
        excess = np.where(bad, np.where(finite, diff - allowed, np.inf), -np.inf).ravel()
    worst = np.argsort(-excess, kind="stable")[:5]
    non_finite = int((bad & ~finite).sum())
    lines = [
        f"{int(bad.sum())} of {a.size} elements differ (rtol={rtol:g}, atol={atol:g}, equal_nan={equal_nan}); "
        f"max |diff| {float(finite_diff.max(initial=0.0)):.3g} over finite pairs"
        + (f", {non_finite} with a non-finite value on one side or both" if non_finite else "") + "; worst:"
    ]
    for flat in worst:
        if not bad.ravel()[flat]:
            break
        index = tuple(int(i) for i in np.unravel_index(flat, a.shape)) if a.ndim else ()
        lines.append(f"  at {index}: actual {_format(a_w.ravel()[flat])}, expected {_format(e_w.ravel()[flat])}, "
                     f"|diff| {float(diff.ravel()[flat]):.3g}")
    return False, "\n".join(lines)


def assert_close(actual, expected, rtol: float = 1e-7, atol: float = 0.0, name: str = "", *,
                 equal_nan: bool = False, check_dtype: bool = True) -> None:
    """Raise AssertionError with the worst elements and their indices unless the arrays are close.

    Rules as ``torch.testing.assert_close`` (module docstring): same shape, same dtype unless
    ``check_dtype=False``, infinities equal only to themselves, NaN equal to NaN only with ``equal_nan``.
    """
    ok, report = compare(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan, check_dtype=check_dtype)
    if not ok:
        raise AssertionError(f"{name + ': ' if name else ''}{report}")
