"""Array backend selection.

The backend is read once, at import, from the environment variable ``NPATTN_BACKEND``:

* ``numpy`` (default) -- plain NumPy arrays on the host;
* ``cupy``  -- CuPy arrays on a CUDA GPU (the same code runs unchanged);
* ``strict`` -- a *test-only* NumPy backend whose arrays refuse implicit conversion to host
  NumPy arrays, exactly as CuPy does.  Running the test suite under it proves that no code path
  relies on ``numpy.asarray(device_array)`` or on mixing host and device arrays.

Every array operation in :mod:`autograd` goes through :data:`xp`.  Conversions between the
backend and host NumPy are explicit: :func:`to_numpy` and :func:`from_numpy`.
"""
from __future__ import annotations

import os

import numpy as _np

CHOICES = ("numpy", "cupy", "strict")


def _select(name: str):
    if name == "numpy":
        return _np
    if name == "strict":
        from . import _strict

        return _strict.namespace
    if name == "cupy":
        try:
            import cupy
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                "NPATTN_BACKEND=cupy but CuPy is not installed. Install the GPU extra "
                "(pip install 'npattn[gpu]' or a cupy-cudaXXx wheel matching your CUDA), "
                "or unset NPATTN_BACKEND to use NumPy."
            ) from exc
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no CUDA device")
        except Exception as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                "NPATTN_BACKEND=cupy but no usable CUDA GPU was found "
                f"({exc}). Unset NPATTN_BACKEND (or set it to 'numpy') to run on the CPU."
            ) from exc
        return cupy
    raise ValueError(
        f"NPATTN_BACKEND={name!r} is not a known backend; choose one of "
        f"{', '.join(CHOICES[:2])} (or 'strict', the test-only NumPy backend)."
    )


#: Name of the active backend.
name: str = os.environ.get("NPATTN_BACKEND", "numpy").strip().lower() or "numpy"
#: The active array namespace (``numpy``, ``cupy`` or the strict test namespace).
xp = _select(name)


def is_array(obj) -> bool:
    """True for an array of the active backend (NumPy arrays always count on CPU backends)."""
    if name == "cupy":
        return isinstance(obj, xp.ndarray)
    if name == "strict":
        from . import _strict

        return isinstance(obj, _strict.StrictArray)
    return isinstance(obj, _np.ndarray)


def is_host_array(obj) -> bool:
    """True for a plain host NumPy array (not a backend array on a device/strict backend)."""
    return isinstance(obj, _np.ndarray)


def from_numpy(array, dtype=None):
    """Copy a host array (or nested list / scalar) onto the active backend.

    A backend array passes through (cast to ``dtype`` if given), as ``cupy.asarray`` does.
    """
    if name == "cupy":
        return xp.asarray(array, dtype=dtype)
    if name == "strict":
        if is_array(array):
            return array if dtype is None else array.astype(dtype, copy=False)
        # a copy, as an upload to a device is: later changes to the host array must not show through
        return xp.array(_np.asarray(array, dtype=dtype))
    return _np.asarray(array, dtype=dtype)


def to_numpy(array) -> _np.ndarray:
    """Explicit conversion of a backend array (or a Tensor) to a host NumPy array."""
    data = array.data if hasattr(array, "_node_tag") else array
    if name == "cupy":
        import cupy

        if isinstance(data, cupy.ndarray):
            return cupy.asnumpy(data)
    if name == "strict":
        from . import _strict

        return _strict.unwrap(data)
    return _np.asarray(data)
