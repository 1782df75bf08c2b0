"""The parts of a side-by-side comparison that do not depend on the other framework.

Both :func:`npattn.interop.torch.compare` and :func:`npattn.interop.jax.compare` build a :class:`Report`
with one row per compared tensor, check that the parameters they loaded are exactly those npattn's ``init``
makes for the configuration (:func:`check_against_init`), and run npattn on the same inputs and cotangent
(:func:`run_npattn`).  Each framework module adds the rows that depend on how its framework holds
parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import autograd as ag

from ..layers import track_running_stats
from ..testing import compare as _compare_arrays

_RUNNING_STATISTICS = (".running_mean", ".running_var", ".num_batches_tracked")
#: The detail of a gradient row that could not be compared because the outputs differ in shape.
NOT_COMPARED_FOR_SHAPE = "not compared: the outputs differ in shape, so no one cotangent drives both backward passes"


@dataclass
class Report:
    """Result of a ``compare``: one row per compared tensor (or per thing that could not be compared)."""

    mechanism: str
    rows: list = field(default_factory=list)  # (what, ok, detail)
    #: what was compared against npattn, for the first line ("torch module", "Flax module", "JAX function").
    actual: str = "torch module"

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(ok for _, ok, _ in self.rows)

    @property
    def compared(self) -> list:
        """The names of the rows (``"output"``, ``"grad input 0"``, ``"grad fc1.weight"``, ``"running ..."``)."""
        return [what for what, _, _ in self.rows]

    def add(self, what: str, actual, expected, *, rtol: float, atol: float, equal_nan: bool) -> None:
        """A row comparing ``actual`` (the module under test) with ``expected`` (npattn, the reference)."""
        ok, detail = _compare_arrays(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan)
        self.rows.append((what, ok, detail))

    def fail(self, what: str, detail: str) -> None:
        """A failing row: something the report claims to cover that could not be compared."""
        self.rows.append((what, False, detail))

    def __str__(self) -> str:
        failed = sum(not ok for _, ok, _ in self.rows)
        verdict = "AGREE" if self.ok else f"DISAGREE ({failed} of {len(self.rows)} rows fail)"
        lines = [f"{self.actual} (actual) vs npattn {self.mechanism!r} (expected): {verdict}; "
                 f"{len(self.rows)} tensors listed"]
        for what, ok, detail in self.rows:
            lines.append(f"  [{'ok' if ok else 'XX'}] {what}: {detail.splitlines()[0]}")
            lines += ["        " + line for line in detail.splitlines()[1:]]
        return "\n".join(lines)


def settings(mech, config: dict | None) -> dict:
    """The mechanism's default configuration updated with ``config``."""
    return {**mech.config, **(config or {})}


def expected_params(mech, settings: dict) -> dict:
    """The parameters npattn's ``init`` makes for ``settings`` (only their names, shapes and kinds are used)."""
    try:
        return mech.init(np.random.default_rng(0), **settings)
    except TypeError as exc:
        raise TypeError(f"{mech.name}: config {settings} is not a configuration of init: {exc}") from None


def check_against_init(mech, params: dict, settings: dict, *, source: str = "state_dict",
                       hint: str = "pass key_map={torch_key: npattn_key} for other names") -> None:
    """KeyError unless ``params`` has exactly ``init``'s keys for ``settings``; ValueError/TypeError for a
    wrong shape or kind.  ``source`` names what the parameters came from, ``hint`` how to map other names."""
    expected = expected_params(mech, settings)
    missing, unexpected = set(expected) - set(params), set(params) - set(expected)
    if missing or unexpected:
        raise KeyError(
            f"{mech.name}: {source} does not match npattn's parameters for configuration {settings}; missing "
            f"{sorted(missing)}, unexpected {sorted(unexpected)} ({hint}, config={{...}} for another configuration)"
        )
    for key, value in expected.items():
        if tuple(params[key].shape) != tuple(value.shape):
            raise ValueError(f"{mech.name}: parameter {key!r} must have shape {tuple(value.shape)} for configuration "
                             f"{settings}, got {tuple(params[key].shape)} (pass config={{...}} with the configuration "
                             "the module was built with)")
        if (np.dtype(params[key].dtype).kind == "f") != (np.dtype(value.dtype).kind == "f"):
            raise TypeError(f"{mech.name}: parameter {key!r} must be of a {np.dtype(value.dtype).kind!r}-kind dtype "
                            f"like {np.dtype(value.dtype)}, got {np.dtype(params[key].dtype)}")


def constant_buffers(mech, settings: dict, params: dict) -> dict:
    """npattn key -> the value ``init`` gives it for ``settings``, for the entries that do not depend on the seed
    (a fixed basis such as FcaNet's DCT filters) other than BatchNorm running statistics."""
    dtypes = {k: np.dtype(v.dtype) for k, v in params.items()}
    made = [mech.init(np.random.default_rng(seed), **settings) for seed in (0, 1)]
    return {k: ag.to_numpy(v).astype(dtypes[k]) for k, v in made[0].items()
            if not k.endswith(_RUNNING_STATISTICS) and np.array_equal(ag.to_numpy(v), ag.to_numpy(made[1][k]))}


@dataclass
class NpattnRun:
    """npattn's side of a comparison (backend arrays)."""

    output: object
    #: npattn key -> gradient, for every floating parameter; None when no cotangent fits npattn's output.
    grad_params: dict | None
    #: input index -> gradient, for every floating input; None as ``grad_params``.
    grad_inputs: dict | None
    #: the BatchNorm buffers a train-mode call updated (empty in eval mode).
    new_stats: dict


def run_npattn(mech, params: dict, host_inputs: list, cotangent: np.ndarray, *, train: bool,
               keywords: dict) -> NpattnRun:
    """Run ``mech.apply(params, *inputs, train=train, **keywords)`` forward and back with ``cotangent``.

    Gradients are taken w.r.t. every floating parameter and every floating input.  When the output's shape
    differs from the cotangent's (the other framework's output), the output is returned without gradients:
    the caller's output row fails on the shape, and its gradient rows must fail too.
    """
    float_idx = [i for i, x in enumerate(host_inputs) if x.dtype.kind == "f"]
    device_inputs = [ag.from_numpy(x) for x in host_inputs]
    float_keys = [k for k, v in params.items() if np.dtype(v.dtype).kind == "f"]

    def fn(float_params, *diff_inputs):
        full = list(device_inputs)
        for i, value in zip(float_idx, diff_inputs):
            full[i] = value
        return mech.apply({**params, **float_params}, *full, train=train, **keywords)

    with track_running_stats() as new_stats:
        out, pullback = ag.vjp(fn, {k: params[k] for k in float_keys}, *[device_inputs[i] for i in float_idx])
    if tuple(out.shape) != tuple(cotangent.shape):
        return NpattnRun(out, None, None, dict(new_stats))
    grads = pullback(ag.from_numpy(cotangent))
    return NpattnRun(out, grads[0], dict(zip(float_idx, grads[1:])), dict(new_stats))
