"""Machinery that runs PyTorch's OpInfo samples against the core (issue 14).

``torch.testing._internal.common_methods_invocations.op_db`` ships with the torch wheel: for each
operator, the sample inputs (and error inputs) PyTorch's maintainers wrote to hit its edges.  For an
OpInfo the core implements (``CORE_OPS`` in ``test_opinfo.py`` names the core function), every float64
sample is run through torch and through the core, and classified:

* ``agree``    -- same output structure, shapes and dtypes, values within ``RTOL`` (relative to the
  largest magnitude of the tensor), the same NaN/inf positions, and the same gradient w.r.t. every
  floating input under one random cotangent per floating output;
* ``rejected`` -- the core raised a clear error: a ValueError / TypeError / NotImplementedError from a
  ``raise`` statement of the core (or Python refusing an argument the core function does not take);
* ``crash``    -- any other exception (raised inside NumPy, an IndexError, an error in the backward pass);
* ``mismatch`` -- the core returned something else than torch: a silently wrong answer.

Every error input (``error_inputs``) must be ``rejected``; one the core runs is ``accepted``.

The gaps table of ``test_opinfo.py`` lists the samples the core does not support (they must be
rejected with a clear error), known bugs and the error inputs the core accepts on purpose; the test
fails for a failure no entry explains and for an entry that no longer fails.  ``python -m
tests.torch_tier.opinfo`` prints the summary (``--markdown FILE`` also writes it as a table).
"""
from __future__ import annotations

import linecache
import os
import traceback
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

import autograd as ag
from autograd.tensor import backward_pass

#: Outputs and gradients must agree to this relative error (relative to the largest magnitude in the tensor) ...
RTOL = 1e-10
#: ... plus this absolute error, for tensors whose every entry is a cancellation residue: layer_norm over two
#: values has an input gradient ~1e-5 made of O(1) terms, so float64 rounding alone leaves ~1e-15 there (the
#: OpInfo inputs are O(1)-O(10); this is 1e-13 of them).
ATOL = 1e-12
#: The exception types a clear error may have.
CLEAR_ERRORS = (ValueError, TypeError, NotImplementedError)
_CORE_DIR = os.path.dirname(os.path.abspath(ag.__file__))
_BINDING_MESSAGES = ("unexpected keyword argument", "positional argument", "required positional",
                     "required keyword-only", "multiple values for argument")


def full_name(op) -> str:
    """``name.variant`` as OpInfo test names spell it (``nn.functional.pad.reflect``)."""
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def seed_for(name: str, index: int = 0) -> int:
    """A fixed seed per (op, sample): runs are reproducible and independent of the order of the ops."""
    return (zlib.crc32(name.encode()) + 7919 * index) % (2**31)


@dataclass
class Gap:
    """One entry of the gaps table: samples (or, with ``errors=True``, error inputs) of ``op`` that use
    ``feature``, which the core lacks or gets wrong; ``applies(sample)`` picks them.  ``kind``:

    * ``"unsupported"`` -- the core lacks the feature and must reject those samples with a clear error;
    * ``"bug"``         -- a known crash, wrong value or missing rejection, tracked by an issue (any failure);
    * ``"accepted"``    -- error inputs the core accepts on purpose (a documented convenience).
    """

    op: str
    feature: str
    reason: str
    applies: Callable
    kind: str = "unsupported"
    errors: bool = False

    def __post_init__(self):
        if self.kind not in ("unsupported", "bug", "accepted"):
            raise ValueError(f"Gap {self.op}/{self.feature}: unknown kind {self.kind!r}")
        if self.kind == "accepted" and not self.errors:
            raise ValueError(f"Gap {self.op}/{self.feature}: only error inputs can be 'accepted'")


@dataclass
class Outcome:
    """What one sample (or error input) did."""

    op: str
    index: int
    is_error_input: bool
    status: str  # agree | rejected | crash | mismatch | accepted
    detail: str
    sample: object = field(repr=False)

    def describe(self) -> str:
        what = "error input" if self.is_error_input else "sample"
        return f"{self.op} {what} {self.index} [{describe_sample(self.sample)}]: {self.status}: {self.detail}"


# ---------------------------------------------------------------------------------------------
# describing samples (for messages and for the gaps table's predicates)


def describe_value(value) -> str:
    if isinstance(value, torch.Tensor):
        dtype = "" if value.dtype == torch.float64 else f" {str(value.dtype).replace('torch.', '')}"
        return f"T{tuple(value.shape)}{dtype}"
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        inner = ", ".join(describe_value(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)


def describe_sample(sample) -> str:
    parts = [describe_value(sample.input)] + [describe_value(a) for a in sample.args]
    parts += [f"{k}={describe_value(v)}" for k, v in sample.kwargs.items()]
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# torch -> core


def to_core(value, leaves: dict):
    """The core's version of a torch argument.

    Floating tensors become core Tensors (requiring grad as the torch tensor does), other tensors
    backend arrays (indices, masks); a tensor passed twice becomes one core object.  ``leaves`` maps
    ``id(torch tensor)`` to ``(torch tensor, core value)``.
    """
    if isinstance(value, torch.Tensor):
        if id(value) not in leaves:
            array = ag.from_numpy(value.detach().cpu().numpy(force=True).copy())
            if value.is_floating_point():
                core = ag.Tensor(array, requires_grad=value.requires_grad)
            else:
                core = array
            leaves[id(value)] = (value, core)
        return leaves[id(value)][1]
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, torch.dtype):  # the same dtype, spelled as NumPy spells it
        return np.dtype(str(value).replace("torch.", ""))
    if isinstance(value, list):
        return [to_core(v, leaves) for v in value]
    if isinstance(value, tuple):
        return tuple(to_core(v, leaves) for v in value)
    if isinstance(value, dict):
        return {k: to_core(v, leaves) for k, v in value.items()}
    return value


def _torch_leaves(value) -> list:
    """Flat list of the outputs of a torch op (tensors, numbers)."""
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _torch_leaves(v)]
    return [value]


def _core_leaves(value) -> list:
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _core_leaves(v)]
    return [value]


def _host(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy(force=True)
    if isinstance(value, ag.Tensor):
        return ag.to_numpy(value.data)
    if ag.backend.is_array(value):
        return ag.to_numpy(value)
    return np.asarray(value)


# ---------------------------------------------------------------------------------------------
# comparison


def compare_arrays(actual, expected, what: str) -> str | None:
    """None when ``actual`` (core) equals ``expected`` (torch), else what differs.

    Shapes must be equal; a float result must have torch's dtype; integers and booleans must be
    equal exactly; floats agree where |actual - expected| <= RTOL * (largest finite |expected|, or of
    |actual| where larger) + ATOL, with NaN and +-inf in the same places.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return f"{what}: shape {actual.shape}, torch {expected.shape}"
    if expected.dtype.kind == "f":
        if actual.dtype != expected.dtype:
            return f"{what}: dtype {actual.dtype}, torch {expected.dtype}"
        return _compare_floats(actual, expected, what)
    if expected.dtype.kind in "iub":
        if actual.dtype.kind not in ("b" if expected.dtype.kind == "b" else "iu"):
            return f"{what}: dtype {actual.dtype}, torch {expected.dtype}"
        if not np.array_equal(actual, expected):
            wrong = np.argwhere(actual != expected)[:3].tolist()
            return f"{what}: integer values differ at {wrong}"
        return None
    return f"{what}: torch returned dtype {expected.dtype}, which the harness does not compare"


def _compare_floats(actual, expected, what):
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        if not np.array_equal(test(actual), test(expected)):
            where = np.argwhere(test(actual) != test(expected))[:3].tolist()
            return f"{what}: {name} positions differ (e.g. at {where})"
    finite = np.isfinite(expected)
    if not finite.any():
        return None
    a, e = actual[finite], expected[finite]
    scale = max(np.abs(e).max(), np.abs(a).max())
    error = np.abs(a - e).max()
    if error > RTOL * scale + ATOL:
        with np.errstate(invalid="ignore"):  # inf - inf outside the finite entries
            worst = np.unravel_index(np.argmax(np.where(finite, np.abs(actual - expected), -1)), actual.shape)
        return (f"{what}: max |core - torch| = {error:.3g} > {RTOL:g} * {scale:.3g} + {ATOL:g} "
                f"(at {tuple(int(i) for i in worst)}: core {actual[worst]!r}, torch {expected[worst]!r})")
    return None


# ---------------------------------------------------------------------------------------------
# exceptions


def is_clear_error(exc: BaseException, adapter_file: str | None = None) -> bool:
    """Whether ``exc`` is a clear error of the core, not an accident inside NumPy.

    Clear: a ValueError / TypeError / NotImplementedError raised by a ``raise`` statement in the core
    package, or Python's TypeError for an argument the core function does not take (raised at the call,
    in this module or in ``adapter_file``).  Anything raised deeper (NumPy's broadcasting errors,
    IndexError, a TypeError from a builtin called by the core) is a crash.
    """
    if not isinstance(exc, CLEAR_ERRORS) or isinstance(exc, IndexError):  # NumPy's AxisError is both
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    if os.path.abspath(last.filename).startswith(_CORE_DIR + os.sep):
        line = linecache.getline(last.filename, last.lineno).strip()
        return line.startswith("raise ")
    callers = {os.path.abspath(__file__)} | ({os.path.abspath(adapter_file)} if adapter_file else set())
    if os.path.abspath(last.filename) in callers:  # the call of a core function (its frame never started)
        return isinstance(exc, TypeError) and any(m in str(exc) for m in _BINDING_MESSAGES)
    return False


def _exception_text(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:]
    where = f" at {os.path.basename(last[0].filename)}:{last[0].lineno}" if last else ""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{where}: {message[:160]}"


# ---------------------------------------------------------------------------------------------
# running one sample


def run_sample(name: str, op, adapter, sample, index: int, adapter_file: str | None = None) -> Outcome:
    """Run one float64 sample through torch and the core and classify it (see the module docstring)."""
    def outcome(status, detail):
        return Outcome(name, index, False, status, detail, sample)

    expected = op(sample.input, *sample.args, **sample.kwargs)
    leaves = {}
    try:
        core_input = to_core(sample.input, leaves)
        core_args = to_core(tuple(sample.args), leaves)
        core_kwargs = to_core(dict(sample.kwargs), leaves)
    except Exception as exc:  # noqa: BLE001 -- reported, never skipped
        return outcome("crash", f"the harness cannot convert the sample: {_exception_text(exc)}")
    try:
        actual = adapter(core_input, *core_args, **core_kwargs)
    except Exception as exc:  # noqa: BLE001 -- every exception is classified
        return outcome("rejected" if is_clear_error(exc, adapter_file) else "crash", _exception_text(exc))

    expected_leaves, actual_leaves = _torch_leaves(expected), _core_leaves(actual)
    if len(expected_leaves) != len(actual_leaves):
        return outcome("mismatch", f"core returned {len(actual_leaves)} outputs, torch {len(expected_leaves)}")
    for i, (a, e) in enumerate(zip(actual_leaves, expected_leaves)):
        problem = compare_arrays(_host(a), _host(e), f"output {i}")
        if problem:
            return outcome("mismatch", problem)

    problem = _compare_gradients(name, index, leaves, expected_leaves, actual_leaves)
    if problem is not None:
        return outcome(*problem)
    return outcome("agree", "")


def _compare_gradients(name, index, leaves, expected_leaves, actual_leaves):
    """None when the core's input gradients equal torch's under one random cotangent, else (status, detail)."""
    differentiable = [(t, c) for t, c in leaves.values()
                      if isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()]
    outputs = [(i, e) for i, e in enumerate(expected_leaves)
               if isinstance(e, torch.Tensor) and e.requires_grad and e.is_floating_point()]
    if not differentiable or not outputs:
        return None
    rng = np.random.default_rng(seed_for(name, index))
    cotangents = [rng.standard_normal(e.shape) for _, e in outputs]
    torch_grads = torch.autograd.grad([e for _, e in outputs], [t for t, _ in differentiable],
                                      [torch.from_numpy(c) for c in cotangents], allow_unused=True)
    try:
        terms = [ag.sum(ag.mul(actual_leaves[i], ag.from_numpy(c)))
                 for (i, _), c in zip(outputs, cotangents) if isinstance(actual_leaves[i], ag.Tensor)]
        core_inputs = [c for _, c in differentiable]
        core_grads = [None] * len(core_inputs)
        loss = None
        for term in terms:
            loss = term if loss is None else ag.add(loss, term)
        if loss is not None and loss.requires_grad:
            core_grads = backward_pass(loss, None, core_inputs)
    except Exception as exc:  # noqa: BLE001
        return "crash", f"backward: {_exception_text(exc)}"
    for k, ((t, _), tg, cg) in enumerate(zip(differentiable, torch_grads, core_grads)):
        expected = np.zeros(t.shape) if tg is None else _host(tg)
        actual = np.zeros(t.shape) if cg is None else _host(cg)
        problem = compare_arrays(actual, expected, f"gradient of floating input {k} {describe_value(t)}")
        if problem:
            return "mismatch", problem
    return None


def run_error_input(name: str, adapter, error_input, index: int, adapter_file: str | None = None) -> Outcome:
    """An error input must be rejected by the core with a clear error."""
    sample = error_input.sample_input
    leaves = {}
    try:
        arguments = to_core(sample.input, leaves), to_core(tuple(sample.args), leaves), to_core(dict(sample.kwargs),
                                                                                                  leaves)
    except ValueError as exc:  # e.g. a 65-axis tensor: NumPy refuses it before the core sees it
        return Outcome(name, index, True, "rejected", f"NumPy cannot hold the input: {exc}", sample)
    try:
        adapter(arguments[0], *arguments[1], **arguments[2])
    except Exception as exc:  # noqa: BLE001
        status = "rejected" if is_clear_error(exc, adapter_file) else "crash"
        return Outcome(name, index, True, status, _exception_text(exc), sample)
    return Outcome(name, index, True, "accepted", f"torch raises {error_input.error_type.__name__}: "
                   f"{error_input.error_regex[:100]}", sample)


def run_op(name: str, op, adapter, adapter_file: str | None = None) -> list:
    """Every float64 sample and every error input of one OpInfo, as Outcomes.

    Torch runs on one thread here: the samples are tiny, and on a loaded machine its thread pool's start-up
    took ~10 ms per call (the whole run 3x longer).  Warnings (deprecations, 0/0) are not outcomes.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed_for(name))
            samples = list(op.sample_inputs("cpu", torch.float64, requires_grad=True))
            outcomes = [run_sample(name, op, adapter, s, i, adapter_file) for i, s in enumerate(samples)]
            if op.error_inputs_func is not None:
                errors = list(op.error_inputs("cpu"))
                outcomes += [run_error_input(name, adapter, e, i, adapter_file) for i, e in enumerate(errors)]
    finally:
        torch.set_num_threads(threads)
    return outcomes


# ---------------------------------------------------------------------------------------------
# judging outcomes against the gaps table


def judge(name: str, outcomes: list, gaps: list) -> list:
    """The problems of one op's outcomes given the gaps table (empty when everything is explained).

    A sample must agree unless an entry applies: an ``unsupported`` entry expects a clear rejection, a
    ``bug`` entry any failure.  An error input must be rejected unless an ``accepted`` or ``bug`` entry
    applies.  An entry whose samples now pass, or that applies to no sample, is stale.
    """
    problems = []
    entries = [g for g in gaps if g.op == name]
    used = set()
    for o in outcomes:
        matching = [g for g in entries if g.errors == o.is_error_input and g.applies(o.sample)]
        used.update(id(g) for g in matching)
        gap = matching[0] if matching else None
        good = "rejected" if o.is_error_input else "agree"
        if o.status == good:
            if gap is not None:
                problems.append(f"STALE gap entry {gap.feature!r}: {o.describe()} -- the core now handles it")
        elif gap is None:
            problems.append(f"UNEXPLAINED {o.describe()}")
        elif gap.kind == "unsupported" and o.status != "rejected":
            problems.append(f"NOT CLEARLY REJECTED (gap {gap.feature!r}): {o.describe()}")
        elif gap.kind == "accepted" and o.status != "accepted":
            problems.append(f"gap {gap.feature!r} expects the core to accept it: {o.describe()}")
    for g in entries:
        if id(g) not in used:
            problems.append(f"STALE gap entry {g.op} / {g.feature!r}: it applies to no sample")
    return problems


# ---------------------------------------------------------------------------------------------
# the summary


def summarize(results: dict) -> dict:
    """Totals over {op name: outcomes}."""
    samples = [o for outs in results.values() for o in outs if not o.is_error_input]
    errors = [o for outs in results.values() for o in outs if o.is_error_input]

    def count(items, status):
        return sum(o.status == status for o in items)

    return {
        "ops": len(results), "samples": len(samples), "agree": count(samples, "agree"),
        "rejected": count(samples, "rejected"), "crash": count(samples, "crash"),
        "mismatch": count(samples, "mismatch"), "error_inputs": len(errors),
        "error_rejected": count(errors, "rejected"), "error_crash": count(errors, "crash"),
        "error_accepted": count(errors, "accepted"),
    }


def explained(results: dict, gaps: list) -> dict:
    """How the gaps table explains the outcomes that are not ``agree`` / ``rejected``-error-input:
    {(samples or error inputs, status, gap kind or "unexplained"): count}."""
    counts = {}
    for name, outcomes in results.items():
        entries = [g for g in gaps if g.op == name]
        for o in outcomes:
            if o.status == ("rejected" if o.is_error_input else "agree"):
                continue
            kind = next((g.kind for g in entries if g.errors == o.is_error_input and g.applies(o.sample)),
                        "unexplained")
            key = ("error inputs" if o.is_error_input else "samples", o.status, kind)
            counts[key] = counts.get(key, 0) + 1
    return counts


def format_explained(counts: dict) -> str:
    return "\n".join(f"  {what}, {status}: {n} ({kind})" for (what, status, kind), n in sorted(counts.items()))


def format_summary(results: dict, markdown: bool = False) -> str:
    rows = []
    header = ("op", "samples", "agree", "rejected", "crash", "mismatch", "error inputs", "err rejected",
              "err crash", "err accepted")
    for name, outs in sorted(results.items()):
        t = summarize({name: outs})
        rows.append((name, t["samples"], t["agree"], t["rejected"], t["crash"], t["mismatch"], t["error_inputs"],
                     t["error_rejected"], t["error_crash"], t["error_accepted"]))
    t = summarize(results)
    total = ("TOTAL", t["samples"], t["agree"], t["rejected"], t["crash"], t["mismatch"], t["error_inputs"],
             t["error_rejected"], t["error_crash"], t["error_accepted"])
    share = 100.0 * t["agree"] / max(t["samples"], 1)
    line = (f"{t['ops']} OpInfos, {t['samples']} float64 samples: {t['agree']} agree ({share:.1f}%), "
            f"{t['rejected']} rejected as unsupported, {t['crash']} crash, {t['mismatch']} mismatch; "
            f"{t['error_inputs']} error inputs: {t['error_rejected']} rejected, {t['error_crash']} crash, "
            f"{t['error_accepted']} silently accepted")
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows + [total]]
        return line + "\n\n" + "\n".join(out) + "\n"
    width = max(len(r[0]) for r in rows + [total])
    out = [f"{header[0]:<{width}} " + " ".join(f"{h:>8}" for h in ("samples", "agree", "reject", "crash", "mismatch",
                                                                     "errors", "err-rej", "err-crash", "err-acc"))]
    out += [f"{r[0]:<{width}} " + " ".join(f"{v:>8}" for v in r[1:]) for r in rows + [total]]
    return "\n".join(out) + "\n\n" + line


def main(argv=None) -> int:
    """Print the summary; ``--markdown FILE`` also writes it; ``--details`` lists every failing sample."""
    import argparse

    from tests.torch_tier import test_opinfo

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--markdown", help="also write the summary as a Markdown table to this file")
    parser.add_argument("--details", action="store_true", help="list every sample that does not agree")
    parser.add_argument("ops", nargs="*", help="only these OpInfos (default: all the core implements)")
    args = parser.parse_args(argv)
    results = test_opinfo.run_all(args.ops or None)
    if args.details:
        for outs in results.values():
            for o in outs:
                if o.status != ("rejected" if o.is_error_input else "agree"):
                    print(o.describe())
    print(format_summary(results))
    breakdown = format_explained(explained(results, test_opinfo.GAPS))
    print("\nby the gaps table (unsupported: refused on purpose; bug: a known defect; accepted: a convenience):\n"
          + breakdown)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_summary(results, markdown=True) + "\nBy the gaps table:\n\n```\n" + breakdown + "\n```\n")
    problems = [p for name, outs in results.items() for p in judge(name, outs, test_opinfo.GAPS)]
    print(f"\n{len(problems)} problems against the gaps table" + "".join(f"\n  {p}" for p in problems))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
