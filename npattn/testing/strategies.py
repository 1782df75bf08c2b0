"""Hypothesis strategies over the registry entries' configuration spaces (needs ``hypothesis``).

Every registry entry declares the configurations and input sizes it accepts (:mod:`npattn.space`); these
strategies draw from them::

    from hypothesis import given
    from npattn.testing import strategies as nst

    @given(nst.cases("se"))
    def test_my_se(case):
        out = my_se(**case.config)(case.inputs[0])          # compare with case.output()

* :func:`points` draws a :class:`npattn.space.Point` (config, apply options, input sizes, train);
* :func:`cases` draws a :class:`Case`: a point plus parameters from ``init``, inputs and a cotangent for the
  output (all from one seed, itself drawn, so a failing case replays from its seed).

Failing examples shrink towards the lower bounds and the first choices of the space, i.e. towards the
smallest configuration that still fails.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import autograd as ag

from ..layers import example
from ..registry import Mechanism, apply_keywords, get
from ..space import Choice, Ints, Point, Space, resolve

try:
    from hypothesis import assume
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("npattn.testing.strategies needs hypothesis: pip install hypothesis") from exc

__all__ = ["Case", "cases", "make_case", "points", "space_of"]


def _mechanism(mech) -> Mechanism:
    return get(mech) if isinstance(mech, str) else mech


def space_of(mech) -> Space:
    """The declared space of ``mech`` (a name or a Mechanism); ValueError if the entry declares none."""
    mech = _mechanism(mech)
    if mech.space is None:
        raise ValueError(f"{mech.name}: the registry entry declares no configuration space (Mechanism.space)")
    return mech.space


def _pick(draw):
    def pick(value, values):
        if isinstance(value, Ints):
            lo, hi = value.bounds(values)
            return draw(st.integers(lo, hi))
        index = draw(st.integers(0, len(value.options) - 1))  # shrinks towards the first option
        if not isinstance(value.options[index], (Ints, Choice)):
            # a constant draws nothing more; a placeholder draw keeps the choice sequence as long as an Ints
            # option's, so the shrinker can move from a constant (Choice(Ints(1, 4), 8) at 8) to an earlier option
            draw(st.integers(0, 0))
        return index
    return pick


@st.composite
def _points(draw, space: Space) -> Point:
    point = resolve(space, _pick(draw))
    assume(point is not None)
    return point


def points(mech, space: Space | None = None, **fixed) -> st.SearchStrategy:
    """Points of ``mech``'s space (or of ``space``), with the values in ``fixed`` held (``train=False``)."""
    space = space or space_of(mech)
    return _points(space.fix(**fixed) if fixed else space)


@dataclass
class Case:
    """One drawn configuration with everything needed to run it.

    ``config`` is the entry's ``config`` updated with the drawn one (what ``init`` got); ``keywords`` the
    ``apply`` keywords that select the same variant (structure from ``config`` plus the drawn options);
    ``params``, ``inputs`` and ``cotangent`` are backend arrays drawn from ``numpy.random.default_rng(seed)``.
    """

    mechanism: Mechanism
    point: Point
    seed: int
    dtype: np.dtype
    config: dict
    keywords: dict
    params: dict
    inputs: tuple
    cotangent: object

    @property
    def train(self) -> bool:
        return self.point.train

    def apply(self, params: dict | None = None, *inputs) -> ag.Tensor:
        """npattn's output for ``params`` (default: the case's) and ``inputs`` (default: the case's)."""
        return self.mechanism.apply(self.params if params is None else params, *(inputs or self.inputs),
                                    train=self.train, **self.keywords)

    def __repr__(self) -> str:
        return f"Case({self.mechanism.name}: {self.point.describe()}, seed {self.seed})"


def make_case(mech, point: Point, seed: int = 0, dtype=np.float64) -> Case:
    """The :class:`Case` of ``point``: parameters from ``init``, inputs and a cotangent from one seeded generator."""
    mech = _mechanism(mech)
    config = {**mech.config, **point.config}
    keywords = apply_keywords(mech, config, point.options)
    rng = np.random.default_rng(seed)
    params = mech.init(rng, dtype=dtype, **config)
    inputs = point.inputs(rng, dtype)
    with ag.no_grad():
        out = mech.apply(params, *inputs, train=point.train, **keywords)
    cotangent = example(rng, tuple(out.shape), dtype)
    return Case(mech, point, seed, np.dtype(dtype), config, keywords, params, inputs, cotangent)


@st.composite
def _cases(draw, mech: Mechanism, space: Space, dtype) -> Case:
    point = draw(_points(space))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_case(mech, point, seed, dtype)


def cases(mech, dtype=np.float64, space: Space | None = None, **fixed) -> st.SearchStrategy:
    """:class:`Case`\\ s of ``mech`` (a name or a Mechanism) drawn from its space (or ``space``), ``fixed`` held."""
    mech = _mechanism(mech)
    space = space or space_of(mech)
    return _cases(mech, space.fix(**fixed) if fixed else space, dtype)
