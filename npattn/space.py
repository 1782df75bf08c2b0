"""Configuration spaces: which configurations and inputs each registry entry accepts, declared as data.

A registry entry's ``config`` is one configuration.  Bugs live at the others -- a channel count below the
reduction ratio, an odd map size, a batch of one or zero, one frame -- so each entry also declares its
**space**, next to its ``config``::

    space=Space(
        config={"channels": Ints(1, 40), "reduction": Ints(1, 16), "bias": Bools()},
        inputs=image(),                                   # x: (batch, channels, height, width)
        where=(lambda v: v.channels // v.reduction >= 1,),
    )

* ``config``: ``init``'s keyword arguments.  A value is a constant, :class:`Ints` (bounds may be functions of
  the values drawn before), :class:`Choice` (options may themselves be values: ``Choice(None, Ints(1, 8))``),
  :class:`Bools` or :class:`Derived` (computed from the others after everything is drawn).  Names starting with
  ``_`` are helper draws that ``init`` does not receive (``"_per_group"`` for a channel count that must be a
  multiple of the groups: ``"channels": Derived(lambda v: v.groups * v._per_group)``).
* ``options``: keywords of ``apply`` that are not ``init``'s (a dilation, a mode), drawn the same way.
* ``inputs``: an :class:`Inputs` -- the input-shape variables (``batch``, ``height``, ...) and a function building
  the input arrays from the drawn values; :func:`image`, :func:`tokens` and :func:`channels_last` cover the usual
  layouts.
* ``where``: constraints, functions of the drawn values (config, options, input sizes and ``train``) that
  must hold; they say what ``init`` and ``apply`` refuse (and what PyTorch refuses: BatchNorm in training on one
  value per channel).
* ``train``: the modes to draw (``Bools()`` by default; ``Choice(False)`` where training is stochastic).

Drawing is done by :func:`resolve` with a *picker*: :func:`npattn.testing.strategies.points` picks with
hypothesis (so failing configurations shrink towards the first choice and the lower bound),
:meth:`Space.sample` with a NumPy generator.  Every declared configuration must be accepted by ``init`` and
``apply`` (``tests/npattn/test_spaces.py`` checks each entry's space, including its edges).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .layers import example

__all__ = ["Ints", "Choice", "Bools", "Derived", "Inputs", "Space", "Point", "Values", "image", "tokens",
           "channels_last", "resolve", "bn_train", "contains", "BATCH", "SIZE"]


class Value:
    """A value of a configuration space (drawn by :func:`resolve`)."""


@dataclass(frozen=True)
class Ints(Value):
    """An integer in ``[lo, hi]`` (inclusive); either bound may be a function of the values drawn before."""

    lo: int | Callable
    hi: int | Callable

    def bounds(self, values: "Values") -> tuple[int, int]:
        lo = self.lo(values) if callable(self.lo) else self.lo
        hi = self.hi(values) if callable(self.hi) else self.hi
        return int(lo), int(hi)


@dataclass(frozen=True, init=False)
class Choice(Value):
    """One of ``options`` (the first is the simplest: failing configurations shrink towards it)."""

    options: tuple

    def __init__(self, *options):
        if not options:
            raise ValueError("Choice needs at least one option")
        object.__setattr__(self, "options", tuple(options))


def Bools() -> Choice:  # noqa: N802 -- reads as a value type beside Ints and Choice
    """False or True (False first)."""
    return Choice(False, True)


@dataclass(frozen=True)
class Derived(Value):
    """A value computed from the drawn ones, ``fn(values)``, after every other value is drawn."""

    fn: Callable


class Values(Mapping):
    """The drawn values by name, also as attributes (``v.channels``)."""

    def __init__(self, values: Mapping):
        self._values = dict(values)

    def __getattr__(self, name):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"no drawn value {name!r} (drawn: {', '.join(self.__dict__['_values'])})") from None

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __repr__(self):
        return f"Values({self._values})"


@dataclass(frozen=True)
class Inputs:
    """Input-shape variables ``dims`` (``{"batch": BATCH, "height": SIZE, ...}``) and
    ``build(rng, values, dtype) -> tuple of backend arrays`` for a drawn point."""

    dims: Mapping[str, Any]
    build: Callable


#: Batch sizes: 0 (empty, as torch) and 1 are edges nobody tries.
BATCH = Ints(0, 3)
#: Spatial sizes: odd and even, down to 1.
SIZE = Ints(1, 9)


@dataclass(frozen=True)
class Space:
    """An entry's configuration space (module docstring)."""

    config: Mapping[str, Any]
    inputs: Inputs
    options: Mapping[str, Any] = field(default_factory=dict)
    where: tuple = ()
    train: Any = field(default_factory=Bools)

    def __post_init__(self):
        seen: dict = {}
        for section, names in (("config", self.config), ("options", self.options), ("inputs", self.inputs.dims)):
            for name in names:
                if name in seen or name == "train":
                    raise ValueError(f"Space: {name!r} is declared in both {seen.get(name, 'train')} and {section} "
                                     "(one drawn value per name)")
                seen[name] = section

    def fix(self, **values) -> "Space":
        """This space with the named values (config, option, input size or ``train``) fixed to constants."""
        sections = {"config": dict(self.config), "options": dict(self.options), "dims": dict(self.inputs.dims)}
        train = self.train
        for name, value in values.items():
            if name == "train":
                train = value if isinstance(value, Value) else Choice(bool(value))
                continue
            holder = next((s for s in sections.values() if name in s), None)
            if holder is None:
                known = sorted({*self.config, *self.options, *self.inputs.dims, "train"})
                raise KeyError(f"Space.fix: {name!r} is no value of this space (values: {', '.join(known)})")
            holder[name] = value
        return Space(sections["config"], Inputs(sections["dims"], self.inputs.build), sections["options"],
                     self.where, train)

    def require(self, *constraints: Callable) -> "Space":
        """This space with more constraints (functions of the drawn values that must hold)."""
        return Space(self.config, self.inputs, self.options, self.where + tuple(constraints), self.train)

    def sample(self, rng: np.random.Generator, max_tries: int = 1000) -> "Point":
        """A point drawn uniformly with a NumPy generator (rejecting until ``where`` holds)."""
        def pick(value, values):
            if isinstance(value, Ints):
                lo, hi = value.bounds(values)
                return int(rng.integers(lo, hi + 1)) if lo <= hi else None
            return int(rng.integers(len(value.options)))

        for _ in range(max_tries):
            point = resolve(self, pick)
            if point is not None:
                return point
        raise ValueError(f"no point of the space satisfies its constraints in {max_tries} draws")


@dataclass(frozen=True)
class Point:
    """One drawn configuration: ``config`` for ``init``, ``options`` for ``apply``, the input ``dims`` and ``train``."""

    config: dict
    options: dict
    dims: dict
    train: bool
    values: Values
    space: Space = field(repr=False, compare=False)

    def inputs(self, rng: np.random.Generator, dtype=np.float64) -> tuple:
        """The input arrays (backend) for this point."""
        return tuple(self.space.inputs.build(rng, self.values, dtype))

    def describe(self) -> str:
        """``config {...} options {...} inputs {...} train``: what a report prints."""
        parts = [f"config {self.config}"]
        if self.options:
            parts.append(f"options {self.options}")
        parts.append(f"input sizes {self.dims}")
        parts.append("train" if self.train else "eval")
        return ", ".join(parts)


def _draw(value, values: dict, pick: Callable):
    """A raw draw of ``value`` (Derived values are left for the second pass); None rejects the point."""
    if isinstance(value, Ints):
        lo, hi = value.bounds(Values(values))
        if lo > hi:
            return _REJECT
        drawn = pick(value, Values(values))
        return _REJECT if drawn is None else drawn
    if isinstance(value, Choice):
        return _draw(value.options[pick(value, Values(values))], values, pick)
    return value  # a constant (or a Derived, resolved later)


_REJECT = object()


def resolve(space: Space, pick: Callable) -> Point | None:
    """Draw one point of ``space``: ``pick(value, values)`` returns an int in an :class:`Ints`' bounds or the
    index of a :class:`Choice`' option.  Order: config, options, input dims (each in declaration order), then
    :class:`Derived` values, then ``train``.  None when a constraint (or an empty range) rejects the point."""
    sections = {"config": space.config, "options": space.options, "dims": space.inputs.dims}
    values: dict = {}
    for section in sections.values():
        for name, value in section.items():
            drawn = _draw(value, values, pick)
            if drawn is _REJECT:
                return None
            values[name] = drawn
    for name, value in list(values.items()):
        if isinstance(value, Derived):
            values[name] = value.fn(Values(values))
    values["train"] = bool(_draw(space.train, values, pick))
    drawn = Values(values)
    if not all(constraint(drawn) for constraint in space.where):
        return None
    config = {k: values[k] for k in space.config if not k.startswith("_")}
    options = {k: values[k] for k in space.options if not k.startswith("_")}
    dims = {k: values[k] for k in space.inputs.dims if not k.startswith("_")}
    return Point(config, options, dims, values["train"], drawn, space)


def bn_train(count: Callable) -> Callable:
    """The constraint "a BatchNorm in training sees more than one value per channel" (PyTorch and npattn refuse
    one; none is an empty batch, which both accept): ``count(values)`` is the number of values per channel."""
    return lambda v: not v.train or count(v) != 1


# ---------------------------------------------------------------------------------------------
# input builders


def _size(v: Values, spec):
    return v[spec] if isinstance(spec, str) else int(spec)


def image(channels="channels", *, batch=BATCH, height=SIZE, width=None) -> Inputs:
    """One (batch, C, height, width) standard-normal input; ``channels`` names a config value (or is a number).
    ``width`` defaults to an independent draw from the same range as ``height``."""
    dims = {"batch": batch, "height": height, "width": height if width is None else width}
    return Inputs(dims, lambda rng, v, dtype: (
        example(rng, (v.batch, _size(v, channels), v.height, v.width), dtype),))


def channels_last(channels="dim", *, batch=BATCH, height=SIZE, width=None) -> Inputs:
    """One (batch, height, width, C) input (the transformer family's token grids)."""
    dims = {"batch": batch, "height": height, "width": height if width is None else width}
    return Inputs(dims, lambda rng, v, dtype: (
        example(rng, (v.batch, v.height, v.width, _size(v, channels)), dtype),))


def tokens(dim="dim", *, batch=BATCH, length=SIZE) -> Inputs:
    """One (batch, length, D) token sequence."""
    return Inputs({"batch": batch, "length": length}, lambda rng, v, dtype: (
        example(rng, (v.batch, v.length, _size(v, dim)), dtype),))


# ---------------------------------------------------------------------------------------------
# membership


def _candidates(value, values: dict) -> list:
    """Every raw value ``value`` can take given ``values`` (a Derived stays itself, computed later)."""
    if isinstance(value, Ints):
        lo, hi = value.bounds(Values(values))
        return list(range(lo, hi + 1))
    if isinstance(value, Choice):
        return [c for option in value.options for c in _candidates(option, values)]
    return [value]


def _admits(value, target, values: dict) -> bool:
    """True when ``value`` (a constant, Ints or Choice) can take the value ``target`` given ``values``."""
    if isinstance(value, Ints):
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
            return False
        lo, hi = value.bounds(Values(values))
        return lo <= int(target) <= hi
    if isinstance(value, Choice):
        return any(_admits(option, target, values) for option in value.options)
    if isinstance(value, Derived):
        return True  # checked once every value is drawn
    return _equal(value, target)


def _equal(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def contains(space: Space, config: Mapping, defaults: Mapping | None = None, max_points: int = 200_000) -> bool:
    """True when ``config`` (``init``'s keywords) is a configuration of ``space``: each of its values is one its
    declaration allows, and some helper draws, options, input sizes and mode satisfy the constraints.

    A value of the space that ``config`` does not name must equal ``defaults[name]`` (``init``'s default); a name
    of ``config`` that the space does not declare makes it not a member.  The search is exhaustive over the
    helper draws, options, input sizes and mode (``max_points`` of them at most, then a ValueError: the space is
    too large to decide).
    """
    defaults = dict(defaults or {})
    named = [k for k in space.config if not k.startswith("_")]
    if set(config) - set(named):
        return False
    target = {k: config[k] if k in config else defaults.get(k, _MISSING) for k in named}
    if any(v is _MISSING for v in target.values()):
        return False
    order = [(k, v) for section in (space.config, space.options, space.inputs.dims) for k, v in section.items()]
    budget = [max_points]

    def finish(values: dict) -> bool:
        for name, value in list(values.items()):
            if isinstance(value, Derived):
                values[name] = value.fn(Values(values))
        if any(isinstance(space.config[k], Derived) and not _equal(values[k], target[k]) for k in named):
            return False
        for train in _candidates(space.train, values):
            drawn = Values({**values, "train": bool(train)})
            budget[0] -= 1
            if budget[0] < 0:
                raise ValueError(f"contains: more than {max_points} points to search; cannot decide")
            if all(constraint(drawn) for constraint in space.where):
                return True
        return False

    def search(i: int, values: dict) -> bool:
        if i == len(order):
            return finish(dict(values))
        name, value = order[i]
        if name in target:
            if not _admits(value, target[name], values):
                return False
            options = [value if isinstance(value, Derived) else target[name]]
        else:
            options = _candidates(value, values)
        return any(search(i + 1, {**values, name: option}) for option in options)

    return search(0, {})


_MISSING = object()
