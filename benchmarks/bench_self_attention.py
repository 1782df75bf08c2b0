"""Benchmark of the self-attention family (Non-local, DANet, ANN, CCNet, GCNet) against PyTorch twins.

Method (shared/PERFORMANCE.md): forward + backward with gradients w.r.t. the input(s) and every
parameter, autodiff tape included.  Everything for one BLAS configuration runs in one worker process:
both libraries are warmed, then samples are interleaved (ours, torch, ours, torch, ...) with a ~0.1 s
sleep before each; we report min / median / max and the ratio of the medians.  Every case is first
verified against its torch twin in the same dtype (outputs and all gradients; the float64 1e-10
agreement is the job of tests/torch_tier/test_self_attention.py, whose twins are reused here).

Peak memory: a fresh subprocess per case and library; peak RSS (``resource.getrusage``) after one
forward + backward minus the peak after building the inputs and parameters.

The complexity section times npattn alone (time and extra memory) for Non-local (official
sub-sampled, and dense), CCNet and ANN-APNB at H = W in 16, 32, 64, 96: CCNet's O(HW(H+W)) and ANN's
O(HW*110) against Non-local's O((HW)^2).

BLAS configurations (one worker each): the environment as inherited, and with OPENBLAS_CORETYPE /
OPENBLAS_L2_SIZE unset -- or, when the inherited environment does not set them, the documented project
setting (Haswell, 512) forced.  Writes ``benchmarks/results/self_attention.md``.

    python benchmarks/bench_self_attention.py             # full run
    python benchmarks/bench_self_attention.py --quick     # smoke run: small shapes, 3 samples, one config
    python benchmarks/bench_self_attention.py --only ccnet --samples 5 --no-memory --no-complexity
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import _harness
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "self_attention.md")
GIB = 1024.0 ** 3

# ---------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    """One registry entry at one size: npattn config/options and the torch twin that matches them."""

    name: str
    entry: str
    config: dict
    shapes: tuple
    options: dict = field(default_factory=dict)
    twin: str = ""                       # expression evaluated with the twin classes in scope
    out_shape: tuple = ()                # default: the first input's shape
    state_dict: str = ""                 # "ann" for APNB's shared-key aliases


def cases(channels=256, size=64, batch=2):
    c, s, b = channels, size, batch
    x = (b, c, s, s)
    return [
        Case("nonlocal", "nonlocal", {"channels": c, "zero_init": False}, (x,),
             twin=f"TorchNonLocal({c}, {c // 2})"),
        Case("nonlocal-gaussian", "nonlocal-gaussian", {"channels": c, "mode": "gaussian", "zero_init": False}, (x,),
             {"mode": "gaussian"}, twin=f"TorchNonLocal({c}, {c // 2}, mode='gaussian')"),
        Case("nonlocal-dot", "nonlocal-dot", {"channels": c, "mode": "dot_product", "zero_init": False}, (x,),
             {"mode": "dot_product"}, twin=f"TorchNonLocal({c}, {c // 2}, mode='dot_product')"),
        Case("nonlocal-concat", "nonlocal-concat", {"channels": c, "mode": "concatenation", "zero_init": False},
             (x,), {"mode": "concatenation"},
             twin=f"TorchNonLocal({c}, {c // 2}, mode='concatenation', separable_concat=True)"),
        Case("danet (head)", "danet", {"channels": c, "gamma_init": 0.5}, (x,), twin=f"TorchDANetHead({c})",
             out_shape=(b, c // 4, s, s)),
        Case("danet-pam", "danet-pam", {"channels": c, "variant": "pam", "gamma_init": 0.5}, (x,),
             twin=f"TorchPAM({c})"),
        Case("danet-cam", "danet-cam", {"channels": c, "variant": "cam", "gamma_init": 0.5}, (x,), twin="TorchCAM()"),
        Case("ann-apnb", "ann-apnb", {"channels": c, "key_channels": c // 2, "value_channels": c // 2,
                                      "zero_init": False}, (x,),
             twin=f"TorchAPNB({c}, {c // 2}, {c // 2}, call_twice=False)", state_dict="ann"),
        Case("ann-afnb", "ann-afnb", {"low_channels": c, "high_channels": c, "key_channels": c // 2,
                                      "value_channels": c // 2, "zero_init": False}, (x, x),
             twin=f"TorchAFNB({c}, {c}, {c}, {c // 2}, {c // 2})"),
        Case("ccnet", "ccnet", {"channels": c, "gamma_init": 0.5}, (x,), twin=f"TorchRecurrentCCA({c})"),
        Case("gcnet", "gcnet", {"channels": c, "ratio": 1 / 16, "zero_init": False}, (x,),
             twin=f"TorchContextBlock({c}, 1 / 16)"),
    ]


def complexity_cases(channels=256, batch=2, sizes=(16, 32, 64, 96)):
    out = []
    for s in sizes:
        x = ((batch, channels, s, s),)
        out += [
            Case(f"nonlocal H=W={s}", "nonlocal", {"channels": channels, "zero_init": False}, x),
            Case(f"nonlocal dense H=W={s}", "nonlocal", {"channels": channels, "zero_init": False}, x,
                 {"sub_sample": False}),
            Case(f"ccnet H=W={s}", "ccnet", {"channels": channels, "gamma_init": 0.5}, x),
            Case(f"ann-apnb H=W={s}", "ann-apnb", {"channels": channels, "key_channels": channels // 2,
                                                  "value_channels": channels // 2, "zero_init": False}, x),
        ]
    return out


# ---------------------------------------------------------------------------------------------
# running one case


def _setup_ours(case, dtype):
    import autograd as ag
    import npattn

    mech = npattn.get(case.entry)
    params = mech.init(np.random.default_rng(0), dtype=dtype, **case.config)
    rng = np.random.default_rng(1)
    inputs = [ag.from_numpy(rng.standard_normal(s).astype(dtype)) for s in case.shapes]
    float_keys = [k for k, v in params.items() if np.dtype(v.dtype).kind == "f"]

    def fn(float_params, *xs):
        return mech.apply({**params, **float_params}, *xs, **case.options)

    def run(cotangent):
        out, pullback = ag.vjp(fn, {k: params[k] for k in float_keys}, *inputs)
        grads = pullback(cotangent)
        return out, grads

    return params, inputs, run


def _setup_torch(case, params, dtype):
    import torch

    sys.path.insert(0, ROOT)
    import autograd as ag
    from npattn.self_attention import ann
    from tests.torch_tier import test_self_attention as twins

    module = eval(case.twin, vars(twins))  # noqa: S307 - a constructor expression from the case table
    module = module.to(torch.float32 if dtype == np.float32 else torch.float64)
    state = ann.official_state_dict(params) if case.state_dict == "ann" else params
    module.load_state_dict({k: torch.from_numpy(ag.to_numpy(v).copy()) for k, v in state.items()}, strict=True)
    module.eval()
    rng = np.random.default_rng(1)
    inputs = [torch.from_numpy(rng.standard_normal(s).astype(dtype)).requires_grad_(True) for s in case.shapes]

    def run(cotangent):
        for p in module.parameters():
            p.grad = None
        for t in inputs:
            t.grad = None
        out = module(*inputs)
        out.backward(cotangent)
        return out

    return module, inputs, run


def _cotangent(case, dtype):
    """A fixed random cotangent of the output's shape (the same in both libraries)."""
    return np.random.default_rng(2).standard_normal(case.out_shape or case.shapes[0]).astype(dtype)


def _torch_results(module, inputs_t, run, cotangent):
    """Output and every gradient of a torch run, as float64 host arrays keyed like npattn's."""
    out = run(cotangent)
    results = {"output": out.detach().double().numpy()}
    for i, t in enumerate(inputs_t):
        results[f"grad input {i}"] = t.grad.double().numpy()
    for key, p in module.named_parameters():
        results[f"grad {key}"] = p.grad.double().numpy() if p.grad is not None else np.zeros(tuple(p.shape))
    return results


def verify(case, dtype, ours, theirs):
    """Check npattn against the torch twin before timing; returns the worst relative errors.

    float64: npattn vs the twin, every output/gradient within 1e-9 relative to its largest value.
    float32: both libraries' float32 results are compared with the float64 twin run on the same
    (float32) numbers; npattn's error must stay below 1e-2 -- a sanity bound that catches a wrong
    formula (errors of order 1), not a precision test: one ReLU input that rounds to the other side of 0
    in one library's float32 (DANet's head at (2, 256, 64, 64): a single flip moves the input gradient
    by ~1e-3 relative) legitimately separates the two float32 results.  Exactness is the float64 check
    at the same shapes.  Analytically zero gradients (a key bias under softmax, a bias before train-mode
    BN) are rounding noise: every error is measured against at least 1e-3 of the largest gradient.
    """
    import copy

    import torch

    import autograd as ag

    params, inputs, run_ours = ours
    module, inputs_t, run_torch = theirs
    cot = _cotangent(case, dtype)
    out, (grad_params, *grad_inputs) = run_ours(ag.from_numpy(cot))
    mine = {"output": ag.to_numpy(out.data).astype(np.float64)}
    mine.update({f"grad input {i}": ag.to_numpy(g.data).astype(np.float64) for i, g in enumerate(grad_inputs)})
    mine.update({f"grad {k}": ag.to_numpy(grad_params[k]).astype(np.float64) for k, _ in module.named_parameters()})
    theirs_res = _torch_results(module, inputs_t, run_torch, torch.from_numpy(cot))
    if dtype == np.float64:
        reference, theirs_err = theirs_res, None
    else:
        module64 = copy.deepcopy(module).double()
        inputs64 = [t.detach().double().requires_grad_(True) for t in inputs_t]

        def run64(c):
            out64 = module64(*inputs64)
            out64.backward(c)
            return out64

        reference = _torch_results(module64, inputs64, run64, torch.from_numpy(cot.astype(np.float64)))
    floor = 1e-3 * max(float(np.abs(v).max()) for k, v in reference.items() if k != "output")
    worst_ours, worst_theirs = 0.0, 0.0
    for key, ref in reference.items():
        scale = max(float(np.abs(ref).max()), floor, 1e-30)
        err = float(np.abs(mine[key] - ref).max()) / scale
        worst_ours = max(worst_ours, err)
        if dtype == np.float64:
            if err > 1e-9:
                raise AssertionError(f"{case.name}: {key} differs from torch by {err:.2e} (relative to max)")
            continue
        theirs_err = float(np.abs(theirs_res[key] - ref).max()) / scale
        worst_theirs = max(worst_theirs, theirs_err)
        if err > 1e-2:
            raise AssertionError(f"{case.name}: float32 {key} is off the float64 twin by {err:.2e}, torch's "
                                 f"float32 by {theirs_err:.2e}")
    return {"ours": worst_ours, "torch": worst_theirs if dtype == np.float32 else None}


def time_case(case, dtype, samples, with_torch=True):
    import torch

    import autograd as ag

    ours = _setup_ours(case, dtype)
    cot = _cotangent(case, dtype)
    cot_ours = ag.from_numpy(cot)
    run_ours = lambda: ours[2](cot_ours)  # noqa: E731
    result = {"case": case.name, "dtype": np.dtype(dtype).name}
    if with_torch:
        theirs = _setup_torch(case, ours[0], dtype)
        try:
            result["verified"] = verify(case, dtype, ours, theirs)
        except AssertionError as exc:                 # keep going; the report marks the case
            result["verify_error"] = str(exc)
        cot_t = torch.from_numpy(cot)
        run_theirs = lambda: theirs[2](cot_t)  # noqa: E731
        t_ours, t_theirs = _harness.interleaved([run_ours, run_theirs], samples, warmup=1)
        result.update(ours=t_ours, torch=t_theirs)
    else:
        result["ours"] = _harness.interleaved([run_ours], samples, warmup=1)[0]
    return result


def time_interleaved(table, dtype, samples):
    """npattn alone, several cases of one size: warmed, then sampled in turn (a, b, c, a, b, c, ...)."""
    import autograd as ag

    runs = []
    for case in table:
        _, _, run = _setup_ours(case, dtype)
        cot = ag.from_numpy(_cotangent(case, dtype))
        runs.append((case, (lambda run=run, cot=cot: run(cot))))
        runs[-1][1]()                                  # warmed as it is set up
    times = _harness.interleaved([fn for _, fn in runs], samples, warmup=0)
    return [{"case": case.name, "dtype": np.dtype(dtype).name, "ours": t} for (case, _), t in zip(runs, times)]


# ---------------------------------------------------------------------------------------------
# memory (fresh subprocess per case and library)


def _run_once(case, lib, dtype):
    """Set up ``case`` in one library; return the function running one forward + backward."""
    ours = _setup_ours(case, dtype)
    cot = _cotangent(case, dtype)
    if lib == "torch":
        import torch

        theirs = _setup_torch(case, ours[0], dtype)
        del ours
        cot_t = torch.from_numpy(cot)
        return lambda: theirs[2](cot_t)
    import autograd as ag

    cot_ours = ag.from_numpy(cot)
    return lambda: ours[2](cot_ours)


def memory_worker(case_name, lib, dtype_name, quick, complexity):
    """Peak extra RSS of one forward + backward of one case in this (fresh) process.

    A tiny instance of the same entry runs first, so one-time costs (torch's autograd engine and thread
    pools, lazily imported modules, BLAS buffers) are not charged to the case.
    """
    import gc

    dtype = np.dtype(dtype_name).type
    table = complexity_cases(**_complexity_sizes(quick)) if complexity else cases(**_sizes(quick))
    case = next(c for c in table if c.name == case_name)
    warm = next(c for c in cases(channels=32, size=8) if c.entry == case.entry)
    warm = dataclasses.replace(warm, options=case.options)
    _run_once(warm, lib, dtype)()
    gc.collect()
    run = _run_once(case, lib, dtype)
    gc.collect()
    baseline = _harness.peak_rss_bytes()
    run()
    print(json.dumps({"extra_bytes": _harness.peak_rss_bytes() - baseline}))


def measure_memory(case, lib, dtype, quick, complexity=False, env=None):
    probe = ["--memory-worker", case.name, "--lib", lib, "--dtype", np.dtype(dtype).name]
    probe += (["--quick"] if quick else []) + (["--complexity"] if complexity else [])
    result = _harness.run_probe(__file__, probe, env, cwd=ROOT, check=False)
    return float("nan") if result is None else result["extra_bytes"]


# ---------------------------------------------------------------------------------------------
# one BLAS configuration (worker) and the report


def _sizes(quick):
    return {"channels": 64, "size": 24} if quick else {"channels": 256, "size": 64}


def _complexity_sizes(quick):
    return {"channels": 32, "sizes": (8, 16)} if quick else {"channels": 256, "sizes": (16, 32, 64, 96)}


def blas_info():
    try:
        return ", ".join(f"{d.get('internal_api')} {d.get('architecture')} ({d.get('num_threads')} threads)"
                         for d in _harness.thread_pools())
    except ImportError:
        return "unknown (threadpoolctl missing)"


def worker(args):
    only = set(args.only.split(",")) if args.only else None
    table = [c for c in cases(**_sizes(args.quick)) if not only or c.entry in only or c.name in only]
    dtypes = [np.float32] if (args.quick or args.f32_only) else [np.float32, np.float64]
    report = {"blas": blas_info(), "gemm_f32": _harness.gemm_peak(np.float32),
              "gemm_f64": _harness.gemm_peak(np.float64), "env": _harness.blas_env(), "timings": [],
              "complexity": [], "load_start": os.getloadavg()[0]}

    def save():  # after every case: a worker that fails part-way still leaves what it finished
        report["load_end"] = os.getloadavg()[0]
        if args.json_out:
            _harness.write_json(report, args.json_out)

    for dtype in dtypes:
        for case in table:
            report["timings"].append(time_case(case, dtype, args.samples))
            save()
            print(f"  {case.name} {np.dtype(dtype).name}: done", file=sys.stderr, flush=True)
    if not args.no_complexity and args.complexity_here:
        table = [c for c in complexity_cases(**_complexity_sizes(args.quick)) if not only or c.entry in only]
        for size in sorted({c.shapes[0][-1] for c in table}):
            report["complexity"] += time_interleaved([c for c in table if c.shapes[0][-1] == size], np.float32,
                                                     args.samples)
            save()
            print(f"  complexity H=W={size}: done", file=sys.stderr, flush=True)
    print(json.dumps(report))


def _fmt_s(value):
    return f"{value * 1e3:.0f} ms" if value >= 0.0995 else f"{value * 1e3:.1f} ms"


def _fmt_gib(value):
    return "n/a" if value != value else (f"{value / GIB:.2f} GiB" if value >= GIB / 10 else
                                         f"{value / 2 ** 20:.0f} MiB")


def _fmt_verified(row):
    if "verify_error" in row:
        return f"FAILED: {row['verify_error']}"
    v = row["verified"]
    if v["torch"] is None:
        return f"{v['ours']:.1e}"
    return f"{v['ours']:.1e} (torch f32: {v['torch']:.1e})"


def _attention_entries(case_name):
    """Entries of one sample's attention matrix for a complexity case ("<entry> [dense] H=W=<s>")."""
    s = int(case_name.rsplit("=", 1)[1])
    n = s * s
    if case_name.startswith("ccnet"):
        return n * (2 * s - 1)                     # H + W - 1 per position
    if case_name.startswith("ann"):
        return n * 110                             # the pyramid anchors
    return n * n if "dense" in case_name else n * (s // 2) ** 2


def render(configs, memory, complexity_memory, quick, started):
    lines = ["# Self-attention family vs PyTorch twins (CPU)", "",
             f"Generated by `benchmarks/bench_self_attention.py{' --quick' if quick else ''}` on {started}. "
             "Forward + backward, gradients w.r.t. the input(s) and every parameter (autodiff tape included), "
             "eval mode.  Interleaved samples (ours, torch, ...), 0.1 s sleep before each; min / median / max; "
             "ratio = median(npattn) / median(torch).  Each case was verified first (`verified`: max error relative "
             "to the largest value; float64 against the torch twin, float32 against the float64 twin on the same "
             "numbers, next to torch's own float32 error; a ReLU input that rounds across 0 in one library makes "
             "~1e-3 differences legitimate there, so float32 is a sanity bound (1e-2) and float64 the exact check).",
             ""]
    sizes = _sizes(quick)
    lines.append(f"Input (2, {sizes['channels']}, {sizes['size']}, {sizes['size']}); machine: "
                 f"{os.cpu_count()} cores; torch threads: {_torch_threads()}.")
    lines.append("")
    for label, report in configs:
        ratios, timings = {}, []
        for row in report["timings"]:
            o, t = _harness.min_median_max(row["ours"]), _harness.min_median_max(row["torch"])
            ratios.setdefault(row["dtype"], []).append(o[1] / t[1])
            timings.append((row["case"], row["dtype"], " / ".join(_fmt_s(v) for v in o),
                            " / ".join(_fmt_s(v) for v in t), f"**{o[1] / t[1]:.2f}x**", _fmt_verified(row)))
        header = ("case", "dtype", "npattn min / median / max", "torch min / median / max", "ratio", "verified")
        lines += [f"## BLAS: {label}", "",
                  f"Kernel: {report['blas']}; env {report['env']}; NumPy GEMM peak (1024^3) "
                  f"{report['gemm_f32']:.0f} GF/s f32, {report['gemm_f64']:.0f} GF/s f64.  1-minute load average "
                  f"{report.get('load_start', float('nan')):.1f} at the start, "
                  f"{report.get('load_end', float('nan')):.1f} at the end (other tenants share the "
                  f"{os.cpu_count()} cores).", "",
                  *_harness.markdown_table(header, timings), ""]
        for dtype, values in ratios.items():
            lines.append(f"- {dtype}: worst ratio {max(values):.2f}x, geometric mean "
                         f"{float(np.exp(np.mean(np.log(values)))):.2f}x over {len(values)} cases.")
        lines.append("")
    if memory:
        table = []
        for name, ours, theirs in memory:
            ratio = ours / theirs if theirs and theirs == theirs and theirs > 0 else float("nan")
            table.append((name, _fmt_gib(ours), _fmt_gib(theirs), f"{ratio:.2f}x"))
        lines += ["## Peak extra memory (fresh subprocess per case, float32, first BLAS configuration)", "",
                  *_harness.markdown_table(("case", "npattn", "torch", "ratio"), table), ""]
    comp = configs[0][1].get("complexity") if configs else None
    if comp:
        lines += ["## Complexity: time and extra memory against H = W (npattn, float32, first BLAS configuration)",
                  "", "Non-local is the official block (2x2 max-pool sub-sampling: M = HW/4 keys) and the dense "
                  "one (M = HW); CCNet attends to H + W - 1 positions (R = 2), ANN-APNB to 110 pyramid anchors.",
                  "`attention entries` is the size of one sample's attention (positions x keys).", "",
                  "Times: the four blocks of one size are sampled in turn (interleaved), min / median.", ""]
        mem, table = dict(complexity_memory), []
        for row in comp:
            low, mid, _ = _harness.min_median_max(row["ours"])
            table.append((row["case"], f"{_attention_entries(row['case']):,}", f"{_fmt_s(low)} / {_fmt_s(mid)}",
                          _fmt_gib(mem.get(row["case"], float("nan")))))
        header = ("case", "attention entries", "min / median time", "extra memory")
        lines += [*_harness.markdown_table(header, table), ""]
    return "\n".join(lines) + "\n"


def _torch_threads():
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return "n/a"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated registry names / case names")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--f32-only", action="store_true", help="time float32 only")
    parser.add_argument("--one-config", action="store_true", help="only the inherited BLAS configuration")
    parser.add_argument("--no-complexity", action="store_true")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--complexity-here", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--complexity", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lib", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.samples is None:
        args.samples = 3 if args.quick else 7
    sys.path.insert(0, ROOT)
    if args.memory_worker:
        return memory_worker(args.memory_worker, args.lib, args.dtype, args.quick, args.complexity)
    if args.worker:
        return worker(args)

    started = time.strftime("%Y-%m-%d %H:%M")
    inherited = dict(os.environ)
    if all(k in inherited for k in _harness.BLAS_VARS):
        plan = [("as set", inherited), ("unset (OpenBLAS picks its kernel)", _harness.without_blas_vars(inherited))]
    else:
        plan = [("as inherited (OPENBLAS_CORETYPE unset)", inherited),
                ("Haswell forced (the documented project setting)", _harness.haswell_forced(inherited))]
    if args.quick or args.one_config:
        plan = plan[:1]
    configs = []
    for i, (label, env) in enumerate(plan):
        print(f"BLAS configuration: {label}", file=sys.stderr, flush=True)
        worker_args = ["--samples", str(args.samples), *_harness.flags(args, "quick", "only", "f32-only")]
        worker_args += ["--complexity-here"] if (i == 0 and not args.no_complexity) else ["--no-complexity"]
        json_out = os.path.join(tempfile.gettempdir(), f"bench_self_attention_{os.getpid()}_{i}.json")
        try:  # the worker also prints its report on stdout, for a direct call: not needed here
            report = _harness.run_worker(__file__, worker_args, env, json_flag="--json-out", json_path=json_out,
                                         cwd=ROOT, stdout=subprocess.DEVNULL)
        except _harness.WorkerFailed as failed:
            print(f"worker failed for {label}; reporting what it finished ({json_out})", file=sys.stderr)
            if failed.report is None:
                continue
            label, report = label + " (worker failed part-way)", failed.report
        configs.append((label, report))
    memory, complexity_memory = [], []
    if not args.no_memory:
        only = set(args.only.split(",")) if args.only else None
        for case in cases(**_sizes(args.quick)):
            if only and case.entry not in only and case.name not in only:
                continue
            ours = measure_memory(case, "ours", np.float32, args.quick, env=plan[0][1])
            theirs = measure_memory(case, "torch", np.float32, args.quick, env=plan[0][1])
            memory.append((case.name, ours, theirs))
            print(f"  memory {case.name}: {_fmt_gib(ours)} vs {_fmt_gib(theirs)}", file=sys.stderr, flush=True)
        if not args.no_complexity:
            for case in complexity_cases(**_complexity_sizes(args.quick)):
                if only and case.entry not in only:
                    continue
                complexity_memory.append((case.name, measure_memory(case, "ours", np.float32, args.quick,
                                                                    complexity=True, env=plan[0][1])))
    text = render(configs, memory, complexity_memory, args.quick, started)
    _harness.write_text(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
