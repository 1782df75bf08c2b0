"""The strict test backend (``NPATTN_BACKEND=strict``): NumPy arrays that refuse implicit host conversion.

CuPy arrays live on the GPU and refuse to become NumPy arrays behind the caller's back:
``numpy.asarray(cupy_array)`` raises ``TypeError``, and so does mixing a CuPy array with a NumPy array in
an operator.  Code that only ever runs on NumPy never notices such mistakes.  This module lets the test
suite notice them on a CPU-only machine: :class:`StrictArray` wraps a ``numpy.ndarray`` and

* refuses ``numpy.asarray`` / ``numpy.array`` / ``__array__`` (``TypeError``), and any NumPy function or
  ufunc called on it directly (``numpy.sum(a)``, ``numpy.exp(a)``);
* refuses to meet a plain ``numpy.ndarray`` in an operator, an index, an assignment or a namespace
  function (stricter than CuPy, which silently uploads host arrays in a few places: the project's rule is
  that every host -> backend move goes through ``autograd.from_numpy``);
* allows what CuPy allows: ``float()``, ``int()``, ``bool()``, ``.item()``, ``.tolist()``, Python and NumPy
  *scalars* as operands, and ``namespace.asarray(host_array)`` (the explicit upload).

:data:`namespace` plays the role of the ``cupy`` module: ``namespace.sum(a)``, ``namespace.add.at(...)``,
``namespace.lib.stride_tricks.as_strided(...)``, ``namespace.float64``, ``namespace.inf``.  Its functions
unwrap their arguments, call NumPy, and wrap array results again; NumPy scalar results become 0-d strict
arrays, as CuPy's reductions return 0-d arrays.  :func:`unwrap` is the explicit way back to the host (it
copies, as ``cupy.asnumpy`` does, so host and backend never alias).

This is a test tool: it is slower than plain NumPy and not meant for real work.
"""
from __future__ import annotations

import operator
import types

import numpy as _np

__all__ = ["StrictArray", "namespace", "unwrap", "wrap"]

_HINT = "convert explicitly with autograd.to_numpy(...) / autograd.from_numpy(...)"


class StrictArray:
    """A NumPy array behind a wall: usable through its own methods and :data:`namespace`, never as an ndarray."""

    __slots__ = ("_a", "__weakref__")
    # NumPy binary operators and ufuncs must not take this object: ``ndarray + StrictArray`` then falls
    # back to ``StrictArray.__radd__`` (which refuses the host operand) and ``numpy.exp(a)`` raises.
    __array_ufunc__ = None
    __hash__ = None  # mutable, like ndarray

    def __init__(self, array: _np.ndarray):
        if type(array) is not _np.ndarray:
            raise TypeError(f"StrictArray wraps a numpy.ndarray, got {type(array).__name__}")
        self._a = array

    # -- the refusals -------------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "implicit conversion of a strict-backend array to a NumPy array is not allowed (CuPy refuses it "
            f"too); {_HINT}"
        )

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(
            f"numpy.{func.__name__} was called on a strict-backend array; NumPy functions only take host "
            f"arrays. Use the backend namespace (autograd.xp.{func.__name__}) or autograd ops, or {_HINT}"
        )

    def __getattr__(self, name):
        # Never expose private/special attributes of the wrapped array (``__array_interface__`` would let
        # NumPy read the buffer directly); only the public ndarray API is delegated.
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._a, name)
        if callable(value):
            return _wrap_callable(value, f"ndarray.{name}")
        return wrap(value)

    # -- conversions CuPy allows ------------------------------------------------------------
    def __float__(self):
        return float(self._a.item()) if self._a.size == 1 else float(self._a)

    def __int__(self):
        return int(self._a.item()) if self._a.size == 1 else int(self._a)

    def __complex__(self):
        return complex(self._a.item()) if self._a.size == 1 else complex(self._a)

    def __bool__(self):
        return bool(self._a)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (wrap(item) for item in self._a)

    def __repr__(self):
        return "StrictArray(" + repr(self._a)[len("array(") :]

    def __str__(self):
        return str(self._a)

    def __copy__(self):
        return StrictArray(self._a.copy())

    def __deepcopy__(self, memo):
        return StrictArray(self._a.copy())

    def __reduce__(self):
        return (StrictArray, (self._a,))

    # -- properties that are not methods (explicit for speed and clarity) -------------------
    @property
    def shape(self):
        return self._a.shape

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def size(self):
        return self._a.size

    @property
    def T(self):
        return StrictArray(self._a.T)

    # -- indexing ---------------------------------------------------------------------------
    def __getitem__(self, key):
        return wrap(self._a[_unwrap_operand(key, "an index")])

    def __setitem__(self, key, value):
        self._a[_unwrap_operand(key, "an index")] = _unwrap_operand(value, "an assigned value")


def _binary(op, name):
    def forward(self, other):
        other = _operand(other, name)
        if other is NotImplemented:
            return NotImplemented
        return wrap(op(self._a, other))

    def reflected(self, other):
        other = _operand(other, name)
        if other is NotImplemented:
            return NotImplemented
        return wrap(op(other, self._a))

    def inplace(self, other):
        other = _operand(other, name)
        if other is NotImplemented:
            return NotImplemented
        # ``a += b`` must modify the wrapped array itself (views of it see the change, as in NumPy/CuPy)
        getattr(self._a, f"__i{name}__")(other)
        return self

    return forward, reflected, inplace


def _operand(other, name):
    """The NumPy value to combine with a strict array, or NotImplemented for foreign types (e.g. Tensor)."""
    if isinstance(other, StrictArray):
        return other._a
    if isinstance(other, _np.ndarray):
        raise TypeError(
            f"unsupported operand: a strict-backend array and a host numpy.ndarray in '{name}' (CuPy refuses "
            f"to mix device and host arrays too); {_HINT}"
        )
    if isinstance(other, (bool, int, float, complex, _np.generic)):
        return other
    return NotImplemented


for _name, _op in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("floordiv", operator.floordiv), ("mod", operator.mod),
                   ("pow", operator.pow), ("matmul", operator.matmul), ("and", operator.and_),
                   ("or", operator.or_), ("xor", operator.xor), ("lshift", operator.lshift),
                   ("rshift", operator.rshift)):
    _f, _r, _i = _binary(_op, _name)
    setattr(StrictArray, f"__{_name}__", _f)
    setattr(StrictArray, f"__r{_name}__", _r)
    setattr(StrictArray, f"__i{_name}__", _i)

for _name, _op in (("lt", operator.lt), ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge),
                   ("eq", operator.eq), ("ne", operator.ne)):
    setattr(StrictArray, f"__{_name}__", _binary(_op, _name)[0])

for _name, _op in (("neg", operator.neg), ("pos", operator.pos), ("abs", operator.abs),
                   ("invert", operator.invert)):
    setattr(StrictArray, f"__{_name}__", (lambda fn: lambda self: wrap(fn(self._a)))(_op))


# ---------------------------------------------------------------------------------------------
# wrapping and unwrapping


def wrap(value):
    """NumPy results -> strict: arrays are wrapped, NumPy scalars become 0-d arrays, containers recurse."""
    if type(value) is _np.ndarray:
        return StrictArray(value)
    if isinstance(value, _np.generic):
        return StrictArray(_np.asarray(value))
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(wrap(v) for v in value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def _unwrap_operand(value, what: str, allow_host: bool = False):
    """Strict arrays -> their ndarray (recursively through tuples/lists/dicts); host ndarrays refused."""
    if isinstance(value, StrictArray):
        return value._a
    if isinstance(value, _np.ndarray):
        if allow_host:
            return value
        raise TypeError(
            f"a host numpy.ndarray was passed as {what} to the strict backend; host arrays must be moved "
            "explicitly with autograd.from_numpy(...)"
        )
    if isinstance(value, tuple):
        return tuple(_unwrap_operand(v, what, allow_host) for v in value)
    if isinstance(value, list):
        return [_unwrap_operand(v, what, allow_host) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap_operand(v, what, allow_host) for k, v in value.items()}
    return value


def unwrap(value) -> _np.ndarray:
    """Explicit conversion to a host NumPy array (a copy, as ``cupy.asnumpy``)."""
    if isinstance(value, StrictArray):
        return value._a.copy()
    return _np.asarray(value)


# Functions that upload host data to the "device" explicitly (``cupy.asarray(numpy_array)`` works).
_UPLOADS = frozenset({"asarray", "array", "asanyarray", "ascontiguousarray", "asfortranarray"})


def _wrap_callable(fn, qualname: str, allow_host: bool = False):
    def strict_call(*args, **kwargs):
        args = _unwrap_operand(args, f"an argument of {qualname}", allow_host)
        kwargs = _unwrap_operand(kwargs, f"an argument of {qualname}", allow_host)
        return wrap(fn(*args, **kwargs))

    strict_call.__name__ = getattr(fn, "__name__", qualname)
    strict_call.__qualname__ = qualname
    strict_call.__doc__ = getattr(fn, "__doc__", None)
    return strict_call


class _UFunc:
    """A NumPy ufunc seen through the strict backend: call it, or use ``.at`` / ``.reduce`` / ``.outer``."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return _wrap_callable(self._ufunc, self.__name__)(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._ufunc, name)
        return _wrap_callable(value, f"{self.__name__}.{name}") if callable(value) else value


class _Namespace:
    """A NumPy module seen through the strict backend (the stand-in for ``cupy`` / ``cupy.linalg`` ...)."""

    def __init__(self, module: types.ModuleType):
        self._module = module
        self.__name__ = "strict:" + module.__name__

    def __repr__(self):
        return f"<strict backend namespace over {self._module.__name__}>"

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self._module, name)
        if name == "ndarray":
            translated = StrictArray
        elif isinstance(value, types.ModuleType):
            translated = _Namespace(value)
        elif isinstance(value, _np.ufunc):
            translated = _UFunc(value)
        elif isinstance(value, type):
            translated = value  # dtypes (float64, bool_), finfo, errstate, ...: host objects, no arrays
        elif callable(value):
            translated = _wrap_callable(value, f"{self._module.__name__}.{name}", allow_host=name in _UPLOADS)
        else:
            translated = value  # constants: inf, pi, newaxis, ...
        object.__setattr__(self, name, translated)  # cache
        return translated


#: The strict backend's array namespace (what ``autograd.xp`` is under ``NPATTN_BACKEND=strict``).
namespace = _Namespace(_np)
