"""What every benchmark script here shares: environments, timing, BLAS description, workers, memory, tables.

The five ``bench_*.py`` scripts follow one method (shared/PERFORMANCE.md): one worker process per BLAS
configuration, both libraries warmed, samples interleaved with a sleep before each, min / median / max and
the ratio of the medians, every case verified before it is timed, peak memory in a fresh process.  The
pieces of that method that are the same in every script live here, once, so that a fix to how we time or
how a worker reports reaches all of them; what each script measures, verifies and writes stays in it.

The scripts are run as ``python benchmarks/bench_x.py``, which puts ``benchmarks/`` on ``sys.path``, so they
``import _harness``.  Nothing here imports torch, and autograd only where the BLAS is described.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# BLAS configurations

#: The variables that select OpenBLAS's kernel; "unset" removes them so OpenBLAS picks the CPU's best.
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: The project's documented setting: OpenBLAS's AVX2 kernel.
HASWELL_ENV = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}
MIB = 2.0 ** 20
#: Set in a worker's environment for the "cpu1" configuration: one thread for everyone, process CPU time.
CPU_TIME_FLAG = "NPATTN_BENCH_CPU_TIME"


def without_blas_vars(env: dict) -> dict:
    """``env`` less BLAS_VARS: what ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` would run with."""
    return {k: v for k, v in env.items() if k not in BLAS_VARS}


def haswell_forced(env: dict) -> dict:
    """``env`` with the documented Haswell setting in place of whatever BLAS_VARS it had."""
    return {**without_blas_vars(env), **HASWELL_ENV}


def blas_env() -> dict:
    """BLAS_VARS as this process sees them (None where unset), for the report of a worker."""
    return {k: os.environ.get(k) for k in BLAS_VARS}


def thread_pools(user_api: str | None = "blas") -> list:
    """threadpoolctl's records of the thread pools loaded in this process (``user_api=None``: all of them).

    Raises ImportError without threadpoolctl (a benchmark-only requirement).
    """
    from threadpoolctl import threadpool_info

    import autograd  # noqa: F401 - the BLAS as the library loads it

    np.ones((4, 4)) @ np.ones((4, 4))  # a BLAS call, so that the library is loaded and its threads exist
    return [p for p in threadpool_info() if user_api is None or p.get("user_api") == user_api]


def blas_info(library: bool = False) -> list:
    """One line per BLAS NumPy runs: ``openblas 0.3.27 kernel=Haswell threads=2`` (`` (libfile.so)`` added)."""
    rows = []
    for pool in thread_pools():
        file = f" ({os.path.basename(pool.get('filepath', ''))})" if library else ""
        rows.append(f"{pool.get('internal_api')} {pool.get('version')} kernel={pool.get('architecture')} "
                    f"threads={pool.get('num_threads')}{file}")
    return rows


# ---------------------------------------------------------------------------------------------
# timing


def sample(fn: Callable, sleep: float = 0.1, clock: Callable = time.perf_counter, sync: Callable | None = None):
    """Seconds of one call of ``fn``, after a sleep; ``sync`` (a GPU synchronisation) is timed with it.

    The sleep lets the other library's threads go idle and the machine settle, so one sample does not
    pay for the previous one's tail.  ``clock`` may be process CPU time (the load-robust supplement).
    """
    time.sleep(sleep)
    start = clock()
    fn()
    if sync is not None:
        sync()
    return clock() - start


def interleaved(functions: Sequence[Callable], samples: int, warmup: int = 2, sleep: float = 0.1,
                clock: Callable = time.perf_counter, sync: Callable | None = None) -> list:
    """Warm every function ``warmup`` times, then time them in turn (a, b, a, b, ...); one list of seconds each.

    Interleaving spreads slow phases of a shared machine over all libraries instead of one.  ``warmup=0``
    is for callers whose verification already ran each function.
    """
    for _ in range(warmup):
        for fn in functions:
            fn()
    if sync is not None:
        sync()
    times = [[] for _ in functions]
    for _ in range(samples):
        for fn, sink in zip(functions, times):
            sink.append(sample(fn, sleep, clock, sync))
    return times


def min_median_max(times) -> tuple:
    """(min, median, max) of a list of seconds."""
    return min(times), float(np.median(times)), max(times)


def stats(times) -> dict:
    """``{"min", "median", "max"}`` of a list of seconds (the JSON form)."""
    return dict(zip(("min", "median", "max"), min_median_max(times)))


def gemm_peak(dtype, sizes: Sequence[int] = (1024,), samples: int = 5, summary: Callable = min,
              asarray: Callable = np.asarray, clock: Callable = time.perf_counter, sync: Callable | None = None):
    """GEMM throughput in GF/s: per square size, ``summary`` (min or median) of timed products; the best size.

    ``asarray`` puts the operands on the backend being measured (CuPy for the GPU table).
    """
    best = 0.0
    for n in sizes:
        a = asarray(np.random.default_rng(0).standard_normal((n, n)).astype(dtype))
        b = a.T.copy()  # a second operand: NumPy would send ``a @ a.T`` on one buffer to SYRK, not GEMM
        a @ b
        if sync is not None:
            sync()
        times = [sample(lambda: a @ b, clock=clock, sync=sync) for _ in range(samples)]
        best = max(best, 2.0 * n ** 3 / float(summary(times)) / 1e9)
    return best


# ---------------------------------------------------------------------------------------------
# processes: one worker per BLAS configuration, one fresh probe per memory measurement


class WorkerFailed(subprocess.CalledProcessError):
    """A worker exited with an error; ``report`` is the JSON it had written by then (None if nothing)."""

    def __init__(self, returncode, cmd, report):
        super().__init__(returncode, cmd)
        self.report = report


def flags(args, *names: str) -> list:
    """Command-line arguments repeating ``args``' options ``names`` for a subprocess: ``--x`` for a true
    switch, ``--x value`` for a set value, nothing for an option left at a false default (False, "", 0)."""
    out = []
    for name in names:
        value = getattr(args, name.replace("-", "_"))
        if value is True:
            out.append(f"--{name}")
        elif value:
            out += [f"--{name}", str(value)]
    return out


def run_worker(script: str, worker_args: Sequence[str], env: dict, *, json_flag: str = "--json",
               json_path: str | None = None, cwd: str | None = None, stdout=None,
               announce: Callable | None = None) -> dict:
    """Run ``python script --worker <json_flag> PATH *worker_args`` with ``env``; return the JSON it wrote to PATH.

    A process of its own per BLAS configuration because OpenBLAS reads its variables once, when it loads.
    The report comes back through a file, so the worker's progress lines can go straight to the console
    (``stdout=subprocess.DEVNULL`` silences its stdout).  PATH is a temporary file unless ``json_path`` is
    given (then it stays).  ``announce(cmd)`` runs before the worker starts.  A failing worker raises
    WorkerFailed carrying whatever report it had written.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = json_path or os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(script), "--worker", json_flag, path, *worker_args]
        if announce is not None:
            announce(cmd)
        done = subprocess.run(cmd, env=env, cwd=cwd, stdout=stdout)
        if done.returncode != 0:
            raise WorkerFailed(done.returncode, cmd, _read_json(path) if os.path.exists(path) else None)
        return _read_json(path)


def write_json(report, path: str) -> None:
    """The worker's side of run_worker: its report, as JSON, at the path it was given."""
    with open(path, "w") as handle:
        json.dump(report, handle)


def _read_json(path: str):
    with open(path) as handle:
        return json.load(handle)


def run_probe(script: str, probe_args: Sequence[str], env: dict | None = None, *, cwd: str | None = None,
              check: bool = True, show_stderr: bool = False):
    """Run ``python script *probe_args`` in a fresh process; return the JSON object on its last stdout line.

    Memory is measured this way so that every case and library starts from a clean peak RSS.  With
    ``check=False`` a failure returns None (``show_stderr``: after printing the end of its stderr).
    """
    cmd = [sys.executable, os.path.abspath(script), *probe_args]
    done = subprocess.run(cmd, env=env, cwd=cwd, check=check, capture_output=True, text=True)
    if done.returncode != 0:
        if show_stderr:
            print(done.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# resident memory (Linux)


def peak_rss_bytes() -> float:
    """This process's peak resident set size so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def rss_bytes() -> float:
    """This process's resident set size now."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the peak-RSS mark to the current RSS (``/proc/self/clear_refs``); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# reports


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> list:
    """Lines of a markdown table: the header, the ``|---|`` rule, one line per row of formatted cells."""
    def line(cells):
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(row) for row in rows]


def write_text(path: str, text: str) -> None:
    """Write a report, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


# ---------------------------------------------------------------------------------------------
# verification: npattn's step and a torch twin on the same numbers


def relative_error(result, reference) -> float:
    """The worse of: max |a - ref| of the output over its max |ref|, and of every gradient over the largest
    max |ref| of all gradients.  ``result``/``reference``: (output, [gradients]) of either library; a reference
    gradient of None (a buffer: torch has no gradient for it) is skipped.

    The gradients share one scale because some have an exact value of 0 (the biases of convs that feed a
    training-mode BatchNorm, a key bias under softmax): any library returns rounding noise of the size of the
    cancelled terms there."""
    from npattn.testing import to_host

    def host(t):
        return (t.detach().numpy() if hasattr(t, "detach") else to_host(t)).astype(np.float64)

    (out, grads), (out_ref, grads_ref) = result, reference
    output_error = np.abs(host(out) - host(out_ref)).max() / np.abs(host(out_ref)).max()
    pairs = [(host(a), host(b)) for a, b in zip(grads, grads_ref) if b is not None]
    scale = max(np.abs(b).max() for _, b in pairs)
    return float(max(output_error, max(np.abs(a - b).max() for a, b in pairs) / scale))


def one_thread_if_cpu_time(torch) -> None:
    """In a "cpu1" worker (:data:`CPU_TIME_FLAG` set; OpenBLAS's threads are set in the environment): torch and
    npattn's own pool on one thread too."""
    if os.environ.get(CPU_TIME_FLAG):
        from autograd import _threads

        torch.set_num_threads(1)
        _threads.THREADS = 1


def checked_errors(runner, case: str, dtype: str) -> tuple[float, float]:
    """:func:`verify`'s errors, or SystemExit when npattn's exceeds 1e-9 in float64 (npattn = torch: the exactness
    check) or 1e-2 in float32 (a sanity bound only: one ReLU input rounding to the other side of 0 moves a gradient
    by about one cotangent entry)."""
    error, torch_error = runner.verify()
    limit = 1e-9 if dtype == "float64" else 1e-2
    if error > limit:
        raise SystemExit(f"{case} {dtype}: npattn's error {error:.2e} exceeds {limit:.2e} (torch: {torch_error:.2e})")
    return error, torch_error


def verify(runner) -> tuple[float, float]:
    """(npattn's error, torch's error) of a runner with ``ours()``, ``theirs()``, ``reference()`` and a host
    ``cotangent``: in float64 both against torch float64 (so torch's is 0); in float32 both against the float64
    twin on the same numbers (:func:`relative_error`)."""
    ours, theirs = runner.ours(), runner.theirs()
    reference = theirs if runner.cotangent.dtype == np.float64 else runner.reference()
    return relative_error(ours, reference), relative_error(theirs, reference)


class TrainingTwin:
    """A registry entry and its torch twin in training mode on the same weights and inputs: forward + backward
    of each, and the twin in float64 as the reference.  A subclass's ``__init__`` sets ``torch``, ``ag``,
    ``npattn``, ``mech``, ``options`` (apply keywords), ``params``, ``float_keys``, ``inputs`` (backend),
    ``torch_inputs``, ``module`` (in train mode), ``cotangent`` (host) and ``state`` (the twin's state_dict
    copy, restored before each torch call so its running statistics start where npattn's do)."""

    def ours(self):
        """Forward + backward; returns (output, gradients: inputs then float params)."""
        ag, params = self.ag, self.params
        rest = {k: v for k, v in params.items() if k not in self.float_keys}

        def step(float_params, *xs):
            return self.mech.apply({**rest, **float_params}, *xs, train=True, **self.options)

        with self.npattn.track_running_stats():
            out, pullback = ag.vjp(step, {k: params[k] for k in self.float_keys}, *self.inputs)
            grads = pullback(ag.from_numpy(self.cotangent))
        return out, list(grads[1:]) + [grads[0][k] for k in self.float_keys]

    def theirs(self):
        torch = self.torch
        self.module.load_state_dict(self.state)  # running stats as before (a cheap copy)
        self.module.zero_grad(set_to_none=True)
        for x in self.torch_inputs:
            x.grad = None
        out = self.module(*self.torch_inputs)
        out.backward(torch.from_numpy(self.cotangent))
        named = dict(self.module.named_parameters())
        grads = [x.grad for x in self.torch_inputs]
        grads += [named[k].grad if k in named else None for k in self.float_keys]
        return out, grads

    def reference(self):
        """The torch twin in float64 on exactly the same numbers (weights, inputs, cotangent upcast)."""
        import copy

        torch = self.torch
        module = copy.deepcopy(self.module).double()
        module.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in self.state.items()})
        inputs = [x.detach().double().requires_grad_(True) for x in self.torch_inputs]
        out = module(*inputs)
        out.backward(torch.from_numpy(self.cotangent.astype(np.float64)))
        named = dict(module.named_parameters())
        return out, [x.grad for x in inputs] + [named[k].grad if k in named else None for k in self.float_keys]

    def verify(self) -> tuple[float, float]:
        return verify(self)
