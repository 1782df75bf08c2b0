"""The parameter contract: a mechanism's ``apply`` reads exactly the parameters its ``init`` makes.

A reference that silently drops a layer is the worst bug an oracle can have, so every public apply
function of a mechanism is wrapped by :func:`uses_params`, which hands it a :class:`Params` view of
the caller's dict instead of the dict itself:

* a key the mechanism reads that ``params`` lacks is a :class:`ParameterKeyError` (a ``KeyError``)
  naming the mechanism, the key and the closest key that ``params`` holds and nothing reads;
* a key of ``params`` that the mechanism never read is a :class:`ParameterKeyError` too, with the
  closest name the mechanism did read (``fc1.bais`` -> ``fc1.bias``?);
* a parameter of the wrong shape is a ``ValueError`` naming the key, the expected and the received shape
  (:meth:`Params.take`, and the layers of :mod:`npattn.layers`, which know the shape their input implies);
* values that are not arrays, integer or boolean values outside the integer buffers
  (``num_batches_tracked``), and floating parameters of mixed dtypes are ``TypeError``\\ s.

Which keys exist never chooses a variant: ``key in params`` on a view is a ``TypeError``.  A structural
choice (a bias, an optional branch, a number of layers) is a keyword of ``init`` *and* of ``apply`` with
the same name and default; a registry entry's ``config`` value reaches both (:class:`npattn.Mechanism`).
"""
from __future__ import annotations

import difflib
import functools
from typing import Callable, Mapping

import numpy as np

#: Parameter-dict entries that are integer buffers (no gradient), by the last component of their name:
#: BatchNorm's counter, and the relative-position index of windowed attention (Swin's official buffer).
INTEGER_BUFFERS = ("num_batches_tracked", "relative_position_index")
#: Buffers: state, not trainable parameters (BatchNorm's running statistics).
BUFFERS = ("running_mean", "running_var") + INTEGER_BUFFERS


class ParameterKeyError(KeyError):
    """A missing or unused parameter key.  ``str()`` is the message itself (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _leaf_name(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def is_buffer(key: str) -> bool:
    """True for BatchNorm buffers (running statistics, ``num_batches_tracked``) by their state_dict name."""
    return _leaf_name(key) in BUFFERS


def trainable(params: Mapping) -> dict:
    """The trainable entries of a parameter dict: every floating parameter that is not a buffer.

    Gradients of the trainable parameters only, in one line::

        grads = ag.grad(lambda p: loss({**params, **p}))(npattn.trainable(params))
    """
    return {k: v for k, v in params.items() if not is_buffer(k) and np.dtype(v.dtype).kind == "f"}


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions and adjacent transpositions."""
    previous2, previous = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def _close_names(name: str, candidates, n: int = 3) -> list:
    """Up to ``n`` candidates that look like misspellings of ``name``, most likely first.

    A candidate with the same letters (a transposition: ``bais`` / ``bias``) ranks first, then by edit
    distance, so a typo beats a sibling layer's name (``fc2.bias``) that differs by one substitution too.
    """
    letters = sorted(name)
    limit = max(2, len(name) // 4)
    scored = []
    for candidate in candidates:
        distance = _edit_distance(name, candidate)
        if distance <= limit:
            similarity = difflib.SequenceMatcher(None, name, candidate).ratio()
            scored.append((sorted(candidate) != letters, distance, -similarity, candidate))
    return [c for *_, c in sorted(scored)[:n]]


def _closest(name: str, candidates) -> str:
    close = _close_names(name, candidates, n=1)
    return close[0] if close else ""


class Params:
    """Read-only view of a parameter dict that records which keys a mechanism reads.

    ``p[key]`` returns the caller's value (an array or a Tensor, untouched) and marks it read;
    ``p.take(key, shape)`` also checks its shape; :meth:`overlay` gives a view in which some entries
    are replaced (e.g. running statistics advanced by a first call) and that shares the record.
    """

    __slots__ = ("mechanism", "_values", "_read", "dtype")

    def __init__(self, mechanism: str, params: Mapping, _read: set | None = None):
        if isinstance(params, Params):
            params = params._values
        if not isinstance(params, Mapping):
            raise TypeError(f"{mechanism}: params must be a dict of arrays (name -> array), "
                            f"got {type(params).__name__}")
        self.mechanism = mechanism
        self._values = params
        self._read = set() if _read is None else _read
        self.dtype = _check_values(mechanism, params)

    # -- reading ---------------------------------------------------------------------------------

    def __getitem__(self, key: str):
        try:
            value = self._values[key]
        except KeyError:
            raise ParameterKeyError(self._missing_message(key)) from None
        self._read.add(key)
        if np.dtype(value.dtype).kind != "f" and _leaf_name(key) not in INTEGER_BUFFERS:
            raise TypeError(f"{self.mechanism}: parameter {key!r} must be floating-point, got dtype {value.dtype}")
        return value

    def take(self, key: str, shape: tuple):
        """``p[key]`` checked to have ``shape`` (``None`` entries match any size)."""
        value = self[key]
        check_shape(self.mechanism, key, value, shape)
        return value

    def shape(self, key: str) -> tuple:
        """The shape of ``p[key]`` (reading a shape counts as reading the key)."""
        return tuple(self[key].shape)

    def overlay(self, updates: Mapping) -> "Params":
        """A view with ``updates`` replacing entries of the same names; reads are recorded in this view."""
        unknown = [k for k in updates if k not in self._values]
        if unknown:
            raise ParameterKeyError(f"{self.mechanism}: overlay of keys the parameters lack: {unknown}")
        return Params(self.mechanism, {**self._values, **updates}, _read=self._read)

    def __contains__(self, key):
        raise TypeError(f"{self.mechanism}: which parameters exist never selects a variant (asked for {key!r}); "
                        "choose it with an option of init and apply")

    def __iter__(self):
        raise TypeError(f"{self.mechanism}: a parameter view is not iterated; read keys by name")

    def __len__(self) -> int:
        return len(self._values)

    # -- the contract ----------------------------------------------------------------------------

    def unused(self) -> list:
        return [k for k in self._values if k not in self._read]

    def check_all_used(self) -> None:
        """Raise :class:`ParameterKeyError` for every key of ``params`` that the mechanism did not read."""
        unused = self.unused()
        if not unused:
            return
        hints = []
        for key in unused:
            close = _closest(key, self._read)
            hints.append(f"{key!r}" + (f" (did you mean {close!r}?)" if close else ""))
        raise ParameterKeyError(
            f"{self.mechanism}: params has {len(unused)} key(s) this configuration does not use: "
            f"{', '.join(hints)}. Remove them, or pass the option that builds the layer they belong to"
        )

    def _missing_message(self, key: str) -> str:
        # Keys not read *yet* may still be read later, so name the few closest, not one verdict.
        close = _close_names(key, [k for k in self._values if k not in self._read])
        hint = f" (params has {', '.join(map(repr, close))}, not read so far: a misspelling?)" if close else ""
        return (f"{self.mechanism}: parameter {key!r} is missing{hint}; a variant without it is chosen by an "
                f"option of init and apply, never by leaving keys out")


def _check_values(mechanism: str, params: Mapping):
    """Every value an array/Tensor; floating values share one dtype; returns it (float64 when none)."""
    dtype, first = None, None
    for key, value in params.items():
        if not isinstance(key, str):
            raise TypeError(f"{mechanism}: parameter names are strings, got {key!r}")
        if not hasattr(value, "dtype") or not hasattr(value, "shape"):
            raise TypeError(f"{mechanism}: parameter {key!r} must be an array or Tensor, got {type(value).__name__}")
        kind = np.dtype(value.dtype).kind
        if kind == "f":
            if dtype is None:
                dtype, first = np.dtype(value.dtype), key
            elif np.dtype(value.dtype) != dtype:
                raise TypeError(f"{mechanism}: parameters must share one floating dtype; {first!r} is {dtype} "
                                f"but {key!r} is {np.dtype(value.dtype)}")
        elif _leaf_name(key) in INTEGER_BUFFERS:
            if kind not in "iu":
                raise TypeError(f"{mechanism}: buffer {key!r} must be an integer count, got dtype {value.dtype}")
        else:
            raise TypeError(f"{mechanism}: parameter {key!r} must be floating-point (float32/float64), "
                            f"got dtype {value.dtype}")
    return np.float64 if dtype is None else dtype


def check_shape(mechanism: str, key: str, value, shape) -> None:
    """ValueError naming the key, expected and received shape unless ``value.shape`` matches ``shape``."""
    got = tuple(value.shape)
    if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got)):
        expected = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{mechanism}: parameter {key!r} must have shape {expected}, got {got}")


def uses_params(mechanism: str) -> Callable:
    """Decorate a mechanism's public function ``f(params, *inputs, **options)`` with the contract.

    The function receives a :class:`Params` view; when it returns, every key of ``params`` must have
    been read.  A view passed in (one mechanism function calling another) is used as it is, and the
    outermost call checks the whole dict.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def apply(params, *args, **kwargs):
            if isinstance(params, Params):
                return fn(params, *args, **kwargs)
            view = Params(mechanism, params)
            out = fn(view, *args, **kwargs)
            view.check_all_used()
            return out

        apply.__wrapped_mechanism__ = mechanism
        return apply

    return decorate
