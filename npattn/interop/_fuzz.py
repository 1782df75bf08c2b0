"""The framework-independent part of ``check_module``: draw configurations from a registry entry's space with
hypothesis, run one comparison per configuration, and on a mismatch report the *shrunk* configuration.

:func:`npattn.interop.torch.check_module` and :func:`npattn.interop.jax.check_module` supply ``check_one``:
build the module for a :class:`npattn.testing.strategies.Case`, load the case's parameters, and return the
comparison's :class:`~npattn.interop._verdict.Report`.  Hypothesis is derandomised by ``seed`` (the same seed
draws the same configurations in the same order), keeps no example database (nothing persists between runs),
and shrinks a failing configuration towards the lower bounds and first choices of the space, so the report
names the edge where the module stops agreeing.
"""
from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..registry import get
from ..testing.strategies import Case, cases, space_of

try:
    import hypothesis
    from hypothesis import HealthCheck, Phase, Verbosity, given
    from hypothesis import settings as hypothesis_settings
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("check_module needs hypothesis: pip install hypothesis") from exc

__all__ = ["FuzzResult", "fuzz"]


@dataclass
class FuzzResult:
    """What a passing ``check_module`` ran: the entry, the seed, and the configurations compared."""

    mechanism: str
    seed: int
    checked: list = field(default_factory=list)  # Point.describe() of every configuration that agreed

    def __str__(self) -> str:
        return (f"check_module: npattn {self.mechanism!r} agrees on {len(self.checked)} drawn configurations "
                f"(seed {self.seed})")


class _Mismatch(AssertionError):
    """Raised inside the hypothesis run for one failing case (the last one raised is the shrunk case)."""

    def __init__(self, case: Case, detail: str, worst: str):
        super().__init__(detail)
        self.case, self.detail, self.worst = case, detail, worst


_MAX_DIFF = re.compile(r"max \|diff\| ([0-9.eE+-]+|nan|inf)")


def worst_row(report) -> tuple[str, str]:
    """(tensor, element) of the worst failing row of ``report``: a row that could not be compared (a shape, a
    missing gradient) first, else the largest max |diff|; the element is that row's worst index."""
    def badness(row):
        what, ok, detail = row
        match = _MAX_DIFF.search(detail)
        return float("inf") if match is None else float(match.group(1))

    failing = [row for row in report.rows if not row[1]]
    if not failing:
        return "", ""
    what, _, detail = max(failing, key=badness)
    lines = detail.splitlines()
    element = next((line.strip() for line in lines if line.strip().startswith("at ")), lines[0] if lines else "")
    return what, element


def fuzz(check_one: Callable, name: str, *, max_examples: int, seed: int, fixed: dict, space=None,
         actual: str = "module", replay: str = "check_module(...)") -> FuzzResult:
    """Run ``check_one(case) -> Report`` on cases drawn from ``name``'s space (``fixed`` values held).

    An exception raised by ``check_one`` (the module refused a configuration npattn accepts, its state did not
    load) counts as a mismatch too.  Raises AssertionError with the shrunk configuration on a mismatch.
    """
    if max_examples < 1:
        raise ValueError(f"check_module: max_examples must be at least 1, got {max_examples}")
    mech = get(name)
    space = space or space_of(mech)
    result = FuzzResult(name, seed)

    def one(case: Case) -> None:
        try:
            report = check_one(case)
        except Exception as exc:  # noqa: BLE001 -- any refusal of a configuration npattn accepts is a finding
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            raise _Mismatch(case, f"raised {type(exc).__name__}: {exc}",
                            f"(none: raised {type(exc).__name__} at {frame.filename}:{frame.lineno})") from None
        if not report.ok:
            what, element = worst_row(report)
            raise _Mismatch(case, str(report), f"{what}: {element}")
        result.checked.append(case.point.describe())

    settings = hypothesis_settings(
        max_examples=max_examples, database=None, deadline=None, derandomize=False, report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, print_blob=False,
        phases=(Phase.generate, Phase.shrink),
    )
    run = hypothesis.seed(seed)(settings(given(cases(mech, space=space, **fixed))(one)))
    try:
        run()
    except _Mismatch as mismatch:
        raise AssertionError(_message(mismatch, name, seed, max_examples, actual, replay)) from None
    return result


def _message(mismatch: _Mismatch, name: str, seed: int, max_examples: int, actual: str, replay: str) -> str:
    case = mismatch.case
    return "\n".join([
        f"check_module: {actual} disagrees with npattn {name!r}; shrunk minimal configuration:",
        f"  {case.point.describe()}",
        f"  init config {case.config}" + (f", apply keywords {case.keywords}" if case.keywords else ""),
        f"  worst: {mismatch.worst}",
        f"  replay: {replay} with seed={seed}, max_examples={max_examples} (parameters, inputs and cotangent "
        f"from numpy.random.default_rng({case.seed}))",
        "",
        mismatch.detail,
    ])


def host_inputs(case: Case) -> list:
    """The case's inputs as host NumPy arrays."""
    from ..testing import to_host
    return [np.asarray(to_host(x)) for x in case.inputs]
