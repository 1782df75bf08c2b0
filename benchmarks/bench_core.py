"""Benchmark of the autograd core against PyTorch CPU: conv2d, pooling, softmax.

Method (shared/PERFORMANCE.md): everything for one BLAS configuration runs in one process; both
libraries are warmed, then samples are interleaved (ours, torch, ours, torch, ...) with a ~0.1 s
sleep before each, and we report min / median / max and the ratio of the medians.  Every case is
verified against torch (outputs and all gradients) before it is timed.

The orchestrating process starts one worker subprocess per BLAS configuration:

* "as set": the environment exactly as inherited;
* "unset": ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` (OpenBLAS picks the CPU's best kernel);
* "Haswell (forced)": only when the inherited environment does not set OPENBLAS_CORETYPE -- it
  reproduces the documented project environment (OPENBLAS_CORETYPE=Haswell, OPENBLAS_L2_SIZE=512).

Each worker reports the BLAS kernel (threadpoolctl), NumPy's GEMM peak and the timings as JSON.
Peak memory is measured in a fresh subprocess per case (``resource.getrusage`` minus the baseline).
The orchestrator writes ``benchmarks/results/core.md``.

    python benchmarks/bench_core.py            # full run (~15 min on 2 cores)
    python benchmarks/bench_core.py --quick    # smoke run: small shapes, 3 samples, one config
    python benchmarks/bench_core.py --gpu      # the same table for CuPy (NPATTN_BACKEND=cupy) vs PyTorch CUDA

On the GPU (``--gpu``) the worker runs with ``NPATTN_BACKEND=cupy`` and torch on ``cuda``; each timed call
ends with a synchronisation of both libraries' streams, TF32 is off in torch (CuPy does not use it
either), and the report goes to ``benchmarks/results/core_gpu.md``.  Peak memory is not measured there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import _harness
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "core.md")
RESULTS_GPU = os.path.join(HERE, "results", "core_gpu.md")
RESULTS_ALONE = os.path.join(HERE, "results", "core_alone.md")
GPU_FLAG = "NPATTN_BENCH_GPU"
GPU = bool(os.environ.get(GPU_FLAG))
# The "cpu1" configuration: everything on one thread, timed in process CPU time.  Not PERFORMANCE.md's
# method (which is wall time with all threads); a supplement that stays meaningful when other processes
# load the machine, since CPU time does not count the time a busy scheduler keeps us waiting.
CPU_TIME_FLAG = _harness.CPU_TIME_FLAG
CLOCK = time.process_time if os.environ.get(CPU_TIME_FLAG) else time.perf_counter

# ---------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    """One benchmarked operation: input shapes and the same computation in both libraries.

    ``ours(ag, arrays)`` / ``theirs(F, tensors)`` compute the output from the inputs (the first
    input is x; the others are parameters).  ``grad_inputs`` says which inputs get gradients.
    """

    name: str
    group: str  # "conv", "pool", "softmax"
    shapes: tuple
    ours: Callable
    theirs: Callable
    flops: float = 0.0  # forward multiply-adds x 2 (conv only)
    gemm_share: str = ""  # "3x3" / "1x1": report the forward as a share of GEMM peak
    params: dict = field(default_factory=dict)


def conv_case(name, x_shape, out_channels, kernel, stride=1, padding=0, dilation=1, groups=1, share=""):
    n, c, h, w = x_shape
    w_shape = (out_channels, c // groups, kernel, kernel)
    oh = (h + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    ow = (w + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    flops = 2.0 * n * out_channels * oh * ow * (c // groups) * kernel * kernel
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return Case(
        name=name, group="conv", shapes=(x_shape, w_shape, (out_channels,)),
        ours=lambda ag, a: ag.conv2d(a[0], a[1], a[2], **kwargs),
        theirs=lambda F, t: F.conv2d(t[0], t[1], t[2], **kwargs),
        flops=flops, gemm_share=share, params=kwargs,
    )


def conv_cases(batch=8, scale=1):
    """The six shapes of the core issue (scale > 1 shrinks channels and sizes for --quick)."""
    s = scale
    return [
        conv_case("conv 3x3 (N,64,56,56)->64", (batch, 64 // s, 56 // s, 56 // s), 64 // s, 3, padding=1, share="3x3"),
        conv_case("conv 3x3 (N,256,28,28)->256", (batch, 256 // s, 28 // s, 28 // s), 256 // s, 3, padding=1,
                  share="3x3"),
        conv_case("conv 1x1 (N,512,14,14)->512", (batch, 512 // s, 14, 14), 512 // s, 1, share="1x1"),
        conv_case("conv 7x7 (N,2,56,56)->1", (batch, 2, 56 // s, 56 // s), 1, 7, padding=3),
        conv_case("depthwise 3x3 s2 (N,256,28,28)", (batch, 256 // s, 28 // s, 28 // s), 256 // s, 3, stride=2,
                  padding=1, groups=256 // s),
        conv_case("groups=32 3x3 d2 (N,256,28,28)", (batch, 256 // s, 28 // s, 28 // s), 256 // s, 3, padding=2,
                  dilation=2, groups=32),
    ]


def pool_cases(batch=8, scale=1):
    s = scale
    big, deep = (batch, 64 // s, 56 // s, 56 // s), (batch, 256 // s, 28 // s, 28 // s)
    return [
        Case("max_pool 3x3 s2 p1 (N,64,56,56)", "pool", (big,),
             lambda ag, a: ag.max_pool2d(a[0], 3, 2, 1), lambda F, t: F.max_pool2d(t[0], 3, 2, 1)),
        Case("max_pool 2x2 (N,256,28,28)", "pool", (deep,),
             lambda ag, a: ag.max_pool2d(a[0], 2), lambda F, t: F.max_pool2d(t[0], 2)),
        Case("avg_pool 3x3 s2 p1 (N,64,56,56)", "pool", (big,),
             lambda ag, a: ag.avg_pool2d(a[0], 3, 2, 1), lambda F, t: F.avg_pool2d(t[0], 3, 2, 1)),
        Case("avg_pool 2x2 (N,256,28,28)", "pool", (deep,),
             lambda ag, a: ag.avg_pool2d(a[0], 2), lambda F, t: F.avg_pool2d(t[0], 2)),
        Case("adaptive_avg_pool ->7x7 (N,256,28,28)", "pool", (deep,),
             lambda ag, a: ag.adaptive_avg_pool2d(a[0], 7), lambda F, t: F.adaptive_avg_pool2d(t[0], 7)),
        Case("adaptive_avg_pool ->1 (N,256,28,28)", "pool", (deep,),
             lambda ag, a: ag.adaptive_avg_pool2d(a[0], 1), lambda F, t: F.adaptive_avg_pool2d(t[0], 1)),
        Case("adaptive_max_pool ->7x7 (N,256,28,28)", "pool", (deep,),
             lambda ag, a: ag.adaptive_max_pool2d(a[0], 7), lambda F, t: F.adaptive_max_pool2d(t[0], 7)),
        Case("adaptive_max_pool ->1 (N,256,28,28)", "pool", (deep,),
             lambda ag, a: ag.adaptive_max_pool2d(a[0], 1), lambda F, t: F.adaptive_max_pool2d(t[0], 1)),
    ]


def softmax_cases(batch=2, scale=1):
    shape = (batch, 8, 1024 // scale, 1024 // scale)
    name = f"softmax last axis ({batch},8,{shape[2]},{shape[3]})"
    return [Case(name, "softmax", (shape,), lambda ag, a: ag.softmax(a[0], axis=-1),
                 lambda F, t: F.softmax(t[0], dim=-1))]


def all_cases(quick: bool):
    if quick:
        return conv_cases(batch=2, scale=4) + pool_cases(batch=2, scale=4) + softmax_cases(batch=1, scale=4)
    return conv_cases() + pool_cases() + softmax_cases()


# ---------------------------------------------------------------------------------------------
# running one case in both libraries


def make_inputs(case: Case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape).astype(dtype) for shape in case.shapes]
    if case.group == "conv":  # keep activations O(1) whatever the fan-in
        fan_in = int(np.prod(case.shapes[1][1:]))
        arrays[1] /= np.sqrt(fan_in).astype(dtype)
    return arrays


class Runner:
    """Forward and forward+backward closures for both libraries on one case and dtype."""

    def __init__(self, case: Case, dtype):
        import torch
        import torch.nn.functional as F

        import autograd as ag

        self.ag, self.torch, self.F, self.case = ag, torch, F, case
        host = make_inputs(case, dtype)
        device = "cuda" if GPU else "cpu"
        self.arrays = [ag.from_numpy(a) for a in host]
        self.tensors = [torch.from_numpy(a).to(device) for a in host]
        with torch.no_grad():
            out_shape = tuple(case.theirs(F, self.tensors).shape)
        cotangent = np.random.default_rng(1).standard_normal(out_shape).astype(dtype)
        self.cotangent = ag.from_numpy(cotangent)
        self.cotangent_t = torch.from_numpy(cotangent).to(device)

    def ours_forward(self):
        return self.case.ours(self.ag, self.arrays).data

    def theirs_forward(self):
        with self.torch.no_grad():
            return self.case.theirs(self.F, self.tensors)

    def ours_backward(self):
        out, vjp_fn = self.ag.vjp(lambda *a: self.case.ours(self.ag, a), *self.arrays)
        return out, vjp_fn(self.cotangent)

    def theirs_backward(self):
        leaves = [t.detach().requires_grad_(True) for t in self.tensors]
        out = self.case.theirs(self.F, leaves)
        grads = self.torch.autograd.grad(out, leaves, self.cotangent_t)
        return out, grads

    def verify(self, rtol):
        """Max relative error (to the reference's max magnitude) over the output and every gradient."""
        out, grads = self.ours_backward()
        ref_out, ref_grads = self.theirs_backward()
        pairs = [(out, ref_out)] + list(zip(grads, ref_grads))
        worst = 0.0
        for ours, ref in pairs:
            ours, ref = self.ag.to_numpy(ours), ref.detach().cpu().numpy()
            if ours.shape != ref.shape:
                raise AssertionError(f"{self.case.name}: shape {ours.shape} != torch {ref.shape}")
            scale = max(float(np.abs(ref).max()), 1e-30)
            worst = max(worst, float(np.abs(ours - ref).max()) / scale)
        ref_out = ref_out.detach().cpu().numpy()
        forward_error = float(np.abs(self.ag.to_numpy(self.ours_forward()) - ref_out).max())
        worst = max(worst, forward_error / max(float(np.abs(ref_out).max()), 1e-30))
        if not worst <= rtol:
            raise AssertionError(f"{self.case.name}: relative error {worst:.3g} > {rtol:g} against torch")
        return worst


def synchronize():
    """Wait for both libraries' GPU work (no-op on the CPU): a timed call ends when its kernels have run."""
    if GPU:
        import cupy
        import torch

        cupy.cuda.get_current_stream().synchronize()
        torch.cuda.synchronize()


def gemm_peak(dtype, samples):
    """The backend's GEMM throughput (GF/s; NumPy, or CuPy with --gpu): the best median over square sizes."""
    import autograd as ag

    return _harness.gemm_peak(dtype, (2048, 4096, 8192) if GPU else (1536, 2048, 3072), samples,
                              summary=np.median, asarray=ag.from_numpy, clock=CLOCK, sync=synchronize)


def blas_info():
    if GPU:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return [f"cupy {cupy.__version__} kernel=GPU device={name} (CUDA runtime "
                f"{cupy.cuda.runtime.runtimeGetVersion()})"]
    return _harness.blas_info(library=True)


def worker(args):
    """Run every case in this process (one BLAS configuration) and dump JSON."""
    import torch

    if os.environ.get(CPU_TIME_FLAG):
        from autograd import _threads

        torch.set_num_threads(1)
        _threads.THREADS = 1
    if GPU:  # compare like with like: CuPy's GEMMs do not use TF32, torch's cuDNN convs do by default
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cases = [c for c in all_cases(args.quick) if not args.filter or args.filter in (c.name, c.group)
             or args.filter in c.name]
    samples = args.samples or (3 if args.quick else 7)
    report = {
        "blas": blas_info(),
        "env": _harness.blas_env(),
        "torch": (f"{torch.__version__} on {torch.cuda.get_device_name(0)}, TF32 off" if GPU
                  else f"{torch.__version__}, {torch.get_num_threads()} threads"),
        "numpy": np.__version__,
        "peak": {},
        "rows": [],
        "load_start": os.getloadavg(),
    }
    for dtype in args.dtypes.split(","):
        report["peak"][dtype] = gemm_peak(np.dtype(dtype), samples)
        for case in cases:
            runner = Runner(case, np.dtype(dtype))
            error = runner.verify(1e-10 if dtype == "float64" else 2e-4)
            for mode, ours, theirs in (("fwd", runner.ours_forward, runner.theirs_forward),
                                       ("fwd+bwd", runner.ours_backward, runner.theirs_backward)):
                # on this configuration's clock (CPU time for "cpu1"), each call ending with a GPU sync
                t_ours, t_theirs = _harness.interleaved([ours, theirs], samples, sleep=0.02 if GPU else 0.1,
                                                        clock=CLOCK, sync=synchronize)
                row = {"case": case.name, "group": case.group, "dtype": dtype, "mode": mode,
                       "ours": _harness.stats(t_ours), "torch": _harness.stats(t_theirs), "error": error,
                       "share": case.gemm_share, "flops": case.flops}
                row["ratio"] = row["ours"]["median"] / row["torch"]["median"]
                report["rows"].append(row)
                print(f"{dtype:8s} {mode:8s} {case.name:42s} ours {row['ours']['median'] * 1e3:8.2f} ms  "
                      f"torch {row['torch']['median'] * 1e3:8.2f} ms  ratio {row['ratio']:5.2f}", flush=True)
    report["load_end"] = os.getloadavg()
    _harness.write_json(report, args.json)


# ---------------------------------------------------------------------------------------------
# peak memory: one fresh subprocess per (case, dtype, library)


def memory_worker(args):
    """Peak RSS growth (MiB) of one forward+backward, over the baseline after inputs and warm-up."""
    case = next(c for c in all_cases(args.quick) if c.name == args.case)
    dtype = np.dtype(args.dtypes)
    arrays = make_inputs(case, dtype)
    if args.lib == "ours":
        import autograd as ag

        _warm_ours(ag, case, arrays)
        cotangent = np.random.default_rng(1).standard_normal(case.ours(ag, arrays).shape).astype(dtype)
        base = _harness.peak_rss_bytes()
        out, vjp_fn = ag.vjp(lambda *a: case.ours(ag, a), *arrays)
        grads = vjp_fn(cotangent)
    else:
        import torch
        import torch.nn.functional as F

        tensors = [torch.from_numpy(a) for a in arrays]
        with torch.no_grad():
            cotangent = torch.from_numpy(
                np.random.default_rng(1).standard_normal(tuple(case.theirs(F, tensors).shape)).astype(dtype))
        _warm_theirs(torch, F, case, tensors)
        base = _harness.peak_rss_bytes()
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        out = case.theirs(F, leaves)
        grads = torch.autograd.grad(out, leaves, cotangent)
    peak = _harness.peak_rss_bytes()
    del out, grads
    print(json.dumps({"extra_mib": (peak - base) / _harness.MIB}))


def _warm_ours(ag, case, arrays):
    """Exercise the code paths once on a small input so that one-off costs are not counted."""
    small = [arrays[0][:1]] + arrays[1:]
    out, vjp_fn = ag.vjp(lambda *a: case.ours(ag, a), *small)
    vjp_fn(np.ones(out.shape, dtype=out.dtype))


def _warm_theirs(torch, F, case, tensors):
    small = [tensors[0][:1]] + tensors[1:]
    leaves = [t.detach().requires_grad_(True) for t in small]
    out = case.theirs(F, leaves)
    torch.autograd.grad(out, leaves, torch.ones_like(out))


def measure_memory(quick, env):
    rows = []
    for case in all_cases(quick):
        if case.group != "conv":
            continue
        for dtype in ("float64", "float32"):
            extra = {}
            for lib in ("ours", "torch"):
                probe = ["--memory-case", case.name, "--lib", lib, "--dtypes", dtype] + (["--quick"] if quick else [])
                extra[lib] = _harness.run_probe(__file__, probe, env)["extra_mib"]
            rows.append({"case": case.name, "dtype": dtype, **extra})
            print(f"memory {dtype} {case.name}: ours {extra['ours']:.1f} MiB, torch {extra['torch']:.1f} MiB",
                  flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# orchestration and report


def configurations(gpu=False):
    inherited = dict(os.environ)
    if gpu:
        return {"gpu": ("GPU: CuPy (NPATTN_BACKEND=cupy) vs PyTorch CUDA",
                        {**inherited, "NPATTN_BACKEND": "cupy", GPU_FLAG: "1"})}
    unset = _harness.without_blas_vars(inherited)
    configs = {"set": ("as set", inherited),
               "unset": ("unset (env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)", unset)}
    if "OPENBLAS_CORETYPE" not in inherited:
        configs["haswell"] = ("Haswell forced (OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512)",
                              _harness.haswell_forced(inherited))
    configs["cpu1"] = ("one thread, CPU time (supplement, as set otherwise)",
                       {**inherited, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", CPU_TIME_FLAG: "1"})
    return configs


def run_config(label, env, args):
    """This script's worker for one configuration; its JSON report."""
    print(f"== {label}", flush=True)
    worker_args = ["--dtypes", args.dtypes, *_harness.flags(args, "quick", "filter", "samples")]
    return _harness.run_worker(__file__, worker_args, env)


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _ms(s):
    return f"{s['min'] * 1e3:.2f} / **{s['median'] * 1e3:.2f}** / {s['max'] * 1e3:.2f}"


def render(results, memory, args):
    title = "# autograd core on CuPy vs PyTorch CUDA" if args.gpu else "# autograd core vs PyTorch CPU"
    lines = [title, "",
             "Generated by `python benchmarks/bench_core.py" + (" --quick" if args.quick else "")
             + (" --gpu" if args.gpu else "") + "`"
             f" on {time.strftime('%Y-%m-%d')}. Method: shared/PERFORMANCE.md (one process per BLAS "
             "configuration, both libraries warmed, interleaved samples with a "
             + ("0.02 s sleep before each and a synchronisation of both libraries' GPU streams after each; "
                if args.gpu else "0.1 s sleep before each; ")
             + "times are min / **median** / max in ms; ratio = our median / torch's median, < 1 means faster "
             "than torch). Forward+backward = output and the gradients w.r.t. the input and every parameter "
             "(conv: weight and bias), tape included. Every case was verified against torch first (max error "
             "relative to the largest reference magnitude: <= 1e-10 in float64, <= 2e-4 in float32).", ""]
    if args.gpu:
        lines += ["At these shapes both libraries are bound by per-call host overhead rather than by the GPU: "
                  "a trivial torch pooling call takes ~0.3 ms with its synchronisation, and the conv throughputs "
                  "are a few per cent of the GEMM peak on both sides.  The ratios compare that overhead (our "
                  "tape and the number of kernel launches per op) more than arithmetic.  PERFORMANCE.md sets no "
                  "GPU targets.", ""]
    loaded = [label for label, report in results if _loaded(label, report)]
    if loaded:
        lines += [f"**Read with care: the machine was loaded during the wall-clock runs ({', '.join(loaded)}): "
                  "1-minute load average above 1 on 2 cores, and NumPy's GEMM peak measured in the same process "
                  "far below the machine's (PERFORMANCE.md: 224 GF/s f64 / 516 f32 with AVX-512).  Their times "
                  "and ratios mostly measure the other processes.  The one-thread CPU-time configuration does "
                  "not count time spent waiting for a core and is the load-robust comparison of the two "
                  "implementations; rerun on an idle machine for the wall-clock targets.**", ""]
    lines += summary_table(results)
    for label, report in results:
        lines += config_section(label, report)
    if memory:
        lines += memory_section(memory)
    return "\n".join(lines) + "\n"


# PERFORMANCE.md targets: conv2d fwd+bwd (geometric mean, worst shape) per dtype and BLAS kernel class,
# dense 3x3 / 1x1 forward as a share of the GEMM peak, pooling / softmax, conv memory
CONV_TARGETS = {("float64", "AVX-512"): (1.0, 1.5), ("float64", "AVX2"): (1.0, 1.5),
                ("float32", "AVX-512"): (1.5, 3.0), ("float32", "AVX2"): (2.5, 3.5)}
SHARE_TARGETS = {"3x3": 0.65, "1x1": 0.80}
POOL_SOFTMAX_TARGET = 2.0
MEMORY_TARGET = 2.0


def kernel_class(report) -> str:
    """'AVX2' or 'AVX-512' from the OpenBLAS core name threadpoolctl reported."""
    names = [b.split(" kernel=")[1].split(" ")[0] for b in report["blas"]]
    if any(n in ("Haswell", "Zen") for n in names):
        return "AVX2"
    if any(n in ("SkylakeX", "Cooperlake", "SapphireRapids") for n in names):
        return "AVX-512"
    if "GPU" in names:
        return "GPU"
    return "/".join(names) or "unknown"


def _mark(value, limit, below=True) -> str:
    if math.isnan(limit):
        return "no target"  # PERFORMANCE.md sets none (the GPU table)
    met = value <= limit if below else value >= limit
    return "met" if met else "**missed**"


def _versus(value, target) -> str:
    return "no target" if math.isnan(target) else f"<= {target}: {_mark(value, target)}"


def summary_table(results):
    header = ("configuration", "dtype", "BLAS kernel", "geomean ratio (target)", "worst ratio (target, shape)",
              "dense 3x3 fwd share of GEMM peak (>= 65%)", "1x1 fwd share (>= 80%)")
    table = []
    for label, report in results:
        kind = kernel_class(report)
        for dtype in report["peak"]:
            rows = [r for r in report["rows"] if r["group"] == "conv" and r["dtype"] == dtype]
            bwd = [r for r in rows if r["mode"] == "fwd+bwd"]
            if not bwd:
                continue
            worst = max(bwd, key=lambda r: r["ratio"])
            mean = geomean([r["ratio"] for r in bwd])
            mean_target, worst_target = CONV_TARGETS.get((dtype, kind), (float("nan"), float("nan")))
            shares = share_of_peak(rows, report["peak"][dtype], targets=kind != "GPU")
            table.append((label.split(' (')[0], dtype, kind, f"{mean:.2f}x ({_versus(mean, mean_target)})",
                          f"{worst['ratio']:.2f}x ({_versus(worst['ratio'], worst_target)}; {worst['case']})",
                          shares.get('3x3', '-'), shares.get('1x1', '-')))
    lines = ["## Summary: conv2d forward+backward against the targets of PERFORMANCE.md", "",
             *_harness.markdown_table(header, table),
             "", "Pooling and softmax forward+backward (target <= 2x torch):", ""]
    for label, report in results:
        for dtype in report["peak"]:
            others = [r for r in report["rows"]
                      if r["group"] != "conv" and r["dtype"] == dtype and r["mode"] == "fwd+bwd"]
            if others:
                worst = max(others, key=lambda r: r["ratio"])
                target = float("nan") if kernel_class(report) == "GPU" else POOL_SOFTMAX_TARGET
                lines.append(f"- {label.split(' (')[0]}, {dtype}: worst {worst['ratio']:.2f}x ({worst['case']}; "
                             f"{_mark(worst['ratio'], target)}), geometric mean "
                             f"{geomean([r['ratio'] for r in others]):.2f}x")
    lines.append("")
    return lines


def share_of_peak(rows, peak, targets=True):
    """'3x3' / '1x1' -> 'a% (GF/s; met)' forward throughput as a share of the GEMM peak."""
    shares = {}
    for r in rows:
        if r["mode"] == "fwd" and r["share"]:
            gflops = r["flops"] / r["ours"]["median"] / 1e9
            share = gflops / peak
            shares.setdefault(r["share"], []).append(
                f"{100 * share:.0f}% ({gflops:.0f} GF/s; {_mark(share, SHARE_TARGETS[r['share']] if targets else float('nan'), below=False)})")
    return {k: ", ".join(v) for k, v in shares.items()}


def _loaded(label, report) -> bool:
    """A CPU wall-clock run started with more runnable processes than half the cores (GPU runs excepted)."""
    return report["load_start"][0] > (os.cpu_count() or 2) / 2 and "CPU time" not in label and "GPU" not in label


def config_section(label, report):
    lines = [f"## BLAS configuration: {label}", "",
             f"- environment: {', '.join(f'{k}={v}' for k, v in report['env'].items())}",
             *[f"- {'array backend' if 'GPU' in label else 'NumPy BLAS'}: {b}" for b in report["blas"]],
             f"- NumPy {report['numpy']}; torch {report['torch']}",
             "- load average (1/5/15 min) at start: " + " / ".join(f"{v:.1f}" for v in report["load_start"])
             + ", at end: " + " / ".join(f"{v:.1f}" for v in report["load_end"]),
             *(["- **the machine was loaded during this run** (other processes on the 2 cores): wall-clock "
                "times and ratios are distorted; see the one-thread CPU-time section"]
               if _loaded(label, report) else []),
             ("- CuPy GEMM peak (best median of square 2048/4096/8192 matmuls): " if "GPU" in label else
              "- NumPy GEMM peak (best median of square 1536/2048/3072 matmuls): ")
             + ", ".join(f"{d} {p:.0f} GF/s" for d, p in report["peak"].items()), ""]
    for dtype in report["peak"]:
        table = [(r["case"], r["mode"], _ms(r["ours"]), _ms(r["torch"]), f"{r['ratio']:.2f}x")
                 for r in report["rows"] if r["dtype"] == dtype]
        lines += [f"### {dtype}", "",
                  *_harness.markdown_table(("case", "mode", "ours (ms)", "torch (ms)", "ratio"), table)]
        for group in ("conv", "pool", "softmax"):
            for mode in ("fwd", "fwd+bwd"):
                ratios = [r["ratio"] for r in report["rows"]
                          if r["dtype"] == dtype and r["group"] == group and r["mode"] == mode]
                if ratios:
                    lines.append(f"\n{group} {mode}: geometric mean {geomean(ratios):.2f}x, worst {max(ratios):.2f}x")
        lines.append("")
    return lines


def memory_section(memory):
    table = []
    for r in memory:
        # below 1 MiB the difference is allocator noise: count it as 1 MiB on both sides
        ratio = max(r["ours"], 1.0) / max(r["torch"], 1.0)
        table.append((r["case"], r["dtype"], f"{r['ours']:.1f}", f"{r['torch']:.1f}",
                      f"{ratio:.2f}x ({_mark(ratio, MEMORY_TARGET)})"))
    header = ("case", "dtype", "ours (MiB)", "torch (MiB)", "ratio (target <= 2x)")
    return ["## Peak extra memory, conv2d forward+backward", "",
            "Fresh subprocess per case and library; `ru_maxrss` after forward+backward minus `ru_maxrss` "
            "after building the inputs and a warm-up call on one sample (environment as set).", "",
            *_harness.markdown_table(header, table), ""]

# ---------------------------------------------------------------------------------------------
# diagnostic (--alone): each library timed alone in a fresh process, NumPy's huge pages on and off

ALONE_CASES = ("softmax last axis", "adaptive_avg_pool ->1")
#: (label, library, extra environment): NumPy reads NUMPY_MADVISE_HUGEPAGE once, at import
ALONE_SETTINGS = (
    ("npattn", "ours", {}),
    ("npattn, NUMPY_MADVISE_HUGEPAGE=0", "ours", {"NUMPY_MADVISE_HUGEPAGE": "0"}),
    ("torch", "torch", {}),
)


def alone_worker(args):
    """Forward+backward of one case in one library only (verified against torch first), as JSON on stdout."""
    case = next(c for c in all_cases(args.quick) if c.name == args.alone_case)
    runner = Runner(case, np.dtype(args.dtypes))
    runner.verify(1e-10 if args.dtypes == "float64" else 2e-4)
    fn = runner.ours_backward if args.lib == "ours" else runner.theirs_backward
    (times,) = _harness.interleaved([fn], args.samples or (3 if args.quick else 9))
    print(json.dumps({"stats": _harness.stats(times), "hugepage": _numpy_hugepage()}))


def _numpy_hugepage():
    """Whether NumPy madvises huge pages for large arrays in this process (private NumPy switch: read
    by setting it to its own value)."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:
        return None
    state = _set_madvise_hugepage(True)
    _set_madvise_hugepage(state)
    return bool(state)


def run_alone(args):
    """The --alone table: which of our losses to torch go away when NumPy's huge-page advice is off."""
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip() if os.path.exists(
        "/sys/kernel/mm/transparent_hugepage/enabled") else "n/a"
    names = [c.name for c in all_cases(args.quick) if any(c.name.startswith(p) for p in ALONE_CASES)
             and (not args.filter or args.filter in c.name)]
    rows = []
    for name in names:
        for dtype in args.dtypes.split(","):
            cells = [name, dtype]
            for label, lib, extra in ALONE_SETTINGS:
                probe = ["--alone-worker", name, "--lib", lib, "--dtypes", dtype] + _harness.flags(args, "quick", "samples")
                result = _harness.run_probe(__file__, probe, {**os.environ, **extra})
                mid = result["stats"]["median"] * 1e3
                cells.append(_ms(result["stats"]) + (
                    "" if lib != "ours" else f" (huge pages {'on' if result['hugepage'] else 'off'})"))
                print(f"{dtype:8s} {name:40s} {label:36s} {mid:8.2f} ms", flush=True)
            rows.append(cells)
    lines = [
        "# Diagnostic: each library alone, NumPy's huge pages on and off", "",
        f"Generated by `python benchmarks/bench_core.py --alone` on {time.strftime('%Y-%m-%d')}. "
        "Forward+backward of the cases that miss the <= 2x target in `core.md`, each library timed alone "
        "in a fresh process (no other library's allocations or threads in between), verified against torch "
        "first, then samples with a 0.1 s sleep before each (min / **median** / max, ms). BLAS as inherited. "
        f"Transparent huge pages: `{thp}`. NumPy advises huge pages (madvise) for arrays of 4 MB and more "
        "unless `NUMPY_MADVISE_HUGEPAGE=0` is set before it is imported; torch does not advise them.", "",
    ] + _harness.markdown_table(["case", "dtype"] + [label for label, _, _ in ALONE_SETTINGS], rows)
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes, 3 samples, one config")
    parser.add_argument("--filter", default="", help="only cases whose name contains this text")
    parser.add_argument("--samples", type=int, default=0, help="timed samples per library (default 7, quick 3)")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--configs", default="", help="comma-separated subset of set,unset,haswell")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--gpu", action="store_true", help="CuPy vs PyTorch CUDA (needs a GPU, CuPy, torch+CUDA)")
    parser.add_argument("--output", help=f"markdown report path (default {os.path.relpath(RESULTS)}; "
                        "--quick prints it instead)")
    parser.add_argument("--alone", action="store_true", help="diagnostic: softmax and global pooling fwd+bwd, "
                        "each library alone in a fresh process, NumPy's huge pages on and off "
                        f"(writes {os.path.relpath(RESULTS_ALONE)})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--alone-worker", dest="alone_case", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--memory-case", dest="case", help=argparse.SUPPRESS)
    parser.add_argument("--lib", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.case:
        return memory_worker(args)
    if args.alone_case:
        return alone_worker(args)
    if args.alone:
        return _deliver(run_alone(args), args, RESULTS_ALONE)
    available = configurations(args.gpu)
    names = (args.configs.split(",") if args.configs and not args.gpu
             else (["set"] if args.quick and not args.gpu else list(available)))
    configs = [available[name] for name in names if name in available]
    results = [(label, run_config(label, env, args)) for label, env in configs]
    memory = [] if args.no_memory or args.filter or args.gpu else measure_memory(args.quick, configs[0][1])
    _deliver(render(results, memory, args), args, RESULTS_GPU if args.gpu else RESULTS)


def _deliver(report: str, args, default_path: str) -> None:
    """Write the report to --output, else to ``default_path``; a --quick run without --output prints it."""
    output = args.output or (None if args.quick else default_path)
    if output is None:
        print(report)
        return
    _harness.write_text(output, report)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
