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
    """Every raw value ``value`` can take given ``values``, simplest first (a Derived stays itself)."""
    if isinstance(value, Ints):
        lo, hi = value.bounds(Values(values))
        return list(range(lo, hi + 1))
    if isinstance(value, Choice):
        return [c for option in value.options for c in _candidates(option, values)]
    return [value]


def _target_candidates(value, target, values: dict) -> list:
    """The raw values by which ``value`` can give ``target``: ``target`` itself where a constant, an Ints or a
    Choice' option admits it, and each Derived option (whose result is compared with ``target`` once drawn)."""
    if isinstance(value, Derived):
        return [value]
    if isinstance(value, Choice):
        found = [c for option in value.options for c in _target_candidates(option, target, values)]
        constants = [c for c in found if not isinstance(c, Derived)]
        return constants[:1] + [c for c in found if isinstance(c, Derived)]
    if isinstance(value, Ints):
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
            return []
        lo, hi = value.bounds(Values(values))
        return [target] if lo <= int(target) <= hi else []
    return [target] if _equal(value, target) else []


def _equal(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


class _Membership:
    """The search behind :func:`contains`: the variables of ``space`` in :func:`resolve`'s order (config,
    options, input dims, then ``train``), each named config value fixed to its target."""

    def __init__(self, space: Space, target: dict):
        self.space, self.target = space, target
        self.order = [(k, v) for section in (space.config, space.options, space.inputs.dims)
                      for k, v in section.items()] + [("train", space.train)]

    def candidates(self, i: int, values: dict) -> list:
        name, value = self.order[i]
        if name in self.target:
            return _target_candidates(value, self.target[name], values)
        return _candidates(value, values)

    def member(self, values: dict) -> bool:
        """True when the complete draw ``values`` is a point with the target config: exactly :func:`resolve`'s
        second pass (Derived values in declaration order), the targets of Derived values, the constraints."""
        values = dict(values)
        train = bool(values.pop("train"))
        for name, value in list(values.items()):
            if isinstance(value, Derived):
                values[name] = value.fn(Values(values))
        if not all(_equal(values[k], self.target[k]) for k in self.target):
            return False
        drawn = Values({**values, "train": train})
        return all(constraint(drawn) for constraint in self.space.where)

    def refuted(self, values: dict) -> bool:
        """True when the partial draw ``values`` can have no completion: a Derived config value computable from
        it misses its target, or a constraint computable from it fails.  Only what evaluates without reading an
        undrawn (or not yet computed) value counts, so a refutation holds for every completion."""
        known = {k: v for k, v in values.items() if not isinstance(v, Derived)}
        for name in self.space.config:
            value = values.get(name)
            if isinstance(value, Derived):
                try:
                    known[name] = value.fn(Values(known))
                except Exception:  # reads an undrawn value: decided later
                    break
        if any(k in known and not _equal(known[k], self.target[k]) for k in self.target):
            return True
        partial = Values(known)
        for constraint in self.space.where:
            try:
                if not constraint(partial):
                    return True
            except Exception:  # reads an undrawn value
                continue
        return False

    def exhaustive(self, budget: int) -> bool | None:
        """Depth-first over every candidate, simplest first, pruning refuted partial draws: True or False when
        decided within ``budget`` visited draws, None when the budget runs out first."""
        left = [budget]

        def search(i: int, values: dict):
            if i == len(self.order):
                return self.member(values)
            for candidate in self.candidates(i, values):
                left[0] -= 1
                if left[0] < 0:
                    return None
                drawn = {**values, self.order[i][0]: candidate}
                if self.refuted(drawn):
                    continue
                found = search(i + 1, drawn)
                if found is None or found:
                    return found
            return False

        return search(0, {})

    def sampled(self, rng: np.random.Generator, samples: int) -> bool:
        """True when one of ``samples`` uniformly drawn completions is a point (False: none found)."""
        for _ in range(samples):
            values: dict = {}
            for i, (name, _) in enumerate(self.order):
                options = self.candidates(i, values)
                if not options:
                    break
                values[name] = options[int(rng.integers(len(options)))]
            else:
                if self.member(values):
                    return True
        return False


def contains(space: Space, config: Mapping, defaults: Mapping | None = None, max_points: int = 20_000,
             samples: int = 2_000, seed: int = 0) -> bool:
    """True when ``config`` (``init``'s keywords) is a configuration of ``space``: each of its values is one its
    declaration allows, and some helper draws, options, input sizes and mode complete it to a point (Derived
    values equal to ``config``'s, constraints holding).

    A value of the space that ``config`` does not name must equal ``defaults[name]`` (``init``'s default); a name
    of ``config`` that the space does not declare makes it not a member.

    True is always certain: it is returned only for a complete point that :func:`resolve` could draw (every value
    within its declaration, the Derived values computed as resolve computes them and equal to ``config``'s, every
    constraint holding).  The search is depth-first over every completion, simplest first (lower bounds, first
    choices), skipping partial draws that a Derived config value or a constraint already refutes (one that
    evaluates without reading an undrawn value); when it ends within ``max_points`` visited draws, False is
    certain too.  Past that budget it tries ``samples`` uniformly drawn completions (NumPy generator seeded with
    ``seed``, so the answer is deterministic), and False then means only "no completion found", not "none
    exists": a space whose completions are that rare should declare them more narrowly.
    """
    defaults = dict(defaults or {})
    named = [k for k in space.config if not k.startswith("_")]
    if set(config) - set(named):
        return False
    target = {k: config[k] if k in config else defaults.get(k, _MISSING) for k in named}
    if any(v is _MISSING for v in target.values()):
        return False
    search = _Membership(space, target)
    decided = search.exhaustive(max_points)
    if decided is not None:
        return decided
    return search.sampled(np.random.default_rng(seed), samples)


_MISSING = object()
