"""The mechanism registry: one entry per mechanism, driving the CLI, golden vectors and test matrix.

Each mechanism module registers itself at import::

    register(Mechanism(
        name="se", family="channel", paper=Paper("Hu, Shen, Sun", "Squeeze-and-Excitation Networks",
                                               "CVPR", 2018),
        init=init, apply=se, config={"channels": 32, "reduction": 16},
        example_input=lambda rng, dtype=np.float64: (normal(rng, (2, 32, 8, 8), dtype),),
    ))

``npattn.mechanisms()`` lists them (in the survey's family order), ``npattn.get(name)`` returns one.
"""
from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

#: The survey's families, in its order (the registry lists mechanisms in this order), then ``transformer``:
#: the attention core with every major library's conventions and the vision-transformer attention after it.
FAMILIES = ("origins", "channel", "hybrid", "self_attention", "category", "temporal", "frequency",
            "global", "higher_order", "transformer")


@dataclass(frozen=True)
class Paper:
    authors: str
    title: str
    venue: str
    year: int

    def __str__(self) -> str:
        return f"{self.authors}. {self.title}. {self.venue} {self.year}"


@dataclass(frozen=True)
class Mechanism:
    """A registered mechanism.

    Attributes:
        name: short lowercase registry name (``"se"``, ``"scse-max"``).
        family: one of :data:`FAMILIES`.
        paper: the paper it implements.
        init: ``init(rng, **config) -> dict`` of parameters (PyTorch layout, dotted names).
        apply_fn: the pure apply function ``apply_fn(params, *inputs, train=False, **options)``.
        config: default keyword arguments of ``init`` (small, for tests and the CLI).
        options: keyword arguments bound to ``apply_fn`` for this entry (e.g. ``combine="max"``).
        example_input: ``example_input(rng, dtype=np.float64) -> tuple of backend arrays`` valid for
            ``config``.
        differentiable_inputs: indices of the inputs that gradients are taken for (default: all
            floating-point inputs).
        stochastic: True when ``apply`` needs an explicit ``rng`` in training mode.
        channel_axis: channel axis of the first input (None if it has none), for the bad-input tests.
        min_spatial: smallest accepted spatial size of the first input under ``config``.
        space: the configuration space (:class:`npattn.space.Space`): ranges, choices and constraints of
            ``init``'s arguments, ``apply``'s options and the input sizes, for differential testing across
            configurations (:mod:`npattn.testing.strategies`, ``check_module``).

    ``apply`` returns one Tensor (the mechanism's output); attention maps and auxiliary outputs come
    from separate, documented functions of the mechanism's module.
    """

    name: str
    family: str
    paper: Paper
    init: Callable
    apply_fn: Callable
    config: dict
    example_input: Callable
    options: dict = field(default_factory=dict)
    differentiable_inputs: tuple | None = None
    stochastic: bool = False
    description: str = ""
    #: axis of the input channels of the first input (None when it has no channel axis).
    channel_axis: int | None = 1
    #: smallest spatial size (min of H, W) the default config accepts; smaller must raise ValueError.
    min_spatial: int = 1
    #: the configurations and input sizes the entry accepts (:mod:`npattn.space`); ``config`` is one of them.
    space: object = None

    def apply(self, params, *inputs, train: bool = False, **kwargs):
        """Run the mechanism: ``apply_fn(params, *inputs, train=train, **structure, **options, **kwargs)``.

        ``structure`` is the part of ``config`` that ``apply_fn`` also takes as keywords (a bias, an
        optional branch, a layer count: see :mod:`npattn.params`), so the entry's variant reaches both
        ``init`` and ``apply`` from one place; ``kwargs`` override it for parameters of another configuration.
        """
        return self.apply_fn(params, *inputs, train=train, **{**self.structure, **self.options, **kwargs})

    @property
    def structure(self) -> dict:
        """The entries of ``config`` that are keyword arguments of ``apply_fn`` too."""
        return _structure(self.apply_fn, self.config)

    @property
    def module(self) -> str:
        return self.apply_fn.__module__

    def default_params(self, seed: int = 0, dtype=np.float64) -> dict:
        """Parameters of the default configuration from ``numpy.random.default_rng(seed)``."""
        return self.init(np.random.default_rng(seed), dtype=dtype, **self.config)


@functools.lru_cache(maxsize=None)
def _keywords(fn: Callable) -> frozenset:
    parameters = inspect.signature(fn).parameters.values()
    return frozenset(p.name for p in parameters if p.kind == p.KEYWORD_ONLY)


def _structure(apply_fn: Callable, config: dict) -> dict:
    """The entries of ``config`` that ``apply_fn`` also takes as keyword-only arguments."""
    accepted = _keywords(apply_fn)
    return {k: v for k, v in config.items() if k in accepted}


_REGISTRY: dict[str, Mechanism] = {}


def register(mechanism: Mechanism) -> Mechanism:
    if mechanism.name in _REGISTRY:
        raise ValueError(f"mechanism {mechanism.name!r} is registered twice")
    if mechanism.family not in FAMILIES:
        raise ValueError(f"mechanism {mechanism.name!r}: unknown family {mechanism.family!r}; use one of {FAMILIES}")
    if mechanism.name != mechanism.name.lower():
        raise ValueError(f"registry names are lowercase, got {mechanism.name!r}")
    _REGISTRY[mechanism.name] = mechanism
    return mechanism


def mechanisms(family: str | None = None) -> list[Mechanism]:
    """Every registered mechanism (optionally of one family), in the survey's family order."""
    entries = [m for m in _REGISTRY.values() if family is None or m.family == family]
    return sorted(entries, key=lambda m: (FAMILIES.index(m.family), m.name))


def names() -> list[str]:
    return [m.name for m in mechanisms()]


def get(name: str) -> Mechanism:
    """The mechanism registered as ``name``; an unknown name is a KeyError suggesting close names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown mechanism {name!r}{hint} (npattn.names() lists all)") from None


def apply_keywords(mech: Mechanism, config: dict | None = None, options: dict | None = None) -> dict:
    """The keywords that make ``mech.apply`` run the variant ``mech.init(**config)`` built, plus ``options``.

    A structural option (a bias, an optional branch, a variant) is a keyword of both ``init`` and
    ``apply_fn`` with the same name; the entries of ``config`` that ``apply_fn`` accepts are passed on, so
    parameters made for another configuration are applied as that configuration (the verdict tools use
    this for the configuration a user's module or a golden file was built with).  ``options`` may not
    contradict ``config``: ``config={"bias": False}`` with ``options={"bias": True}`` is a ValueError.
    """
    config, options = dict(config or {}), dict(options or {})
    structure = _structure(mech.apply_fn, config)
    clashes = {k: (structure[k], options[k]) for k in structure.keys() & options.keys() if structure[k] != options[k]}
    if clashes:
        raise ValueError(f"{mech.name}: config and options disagree on {', '.join(clashes)}: "
                         + ", ".join(f"config {k}={c!r}, options {k}={o!r}" for k, (c, o) in clashes.items()))
    return {**structure, **options}
