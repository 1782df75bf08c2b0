"""Benchmark of issue 17's CNN attention modules against their PyTorch twins on CPU, at (8, 256, 28, 28).

Coordinate Attention, SimAM, SGE, Triplet, PSA (parallel and sequential), External Attention, CoTNet's CotLayer,
GCT, SRM, ResNeSt Split-Attention and SA-Net Shuffle Attention run forward + backward (gradients w.r.t. the input
and every parameter, autodiff tape included, BatchNorm in training mode) on (8, 256, 28, 28) features.  The twins
are the independent PyTorch modules of ``tests/torch_tier/test_cnn_beyond.py`` (written from the official code,
checked there against npattn at 1e-10 in float64).

Method (shared/PERFORMANCE.md): one worker process per configuration -- "as set" (the inherited environment),
"unset" (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``) or, when the inherited environment sets neither,
"Haswell (forced)" (the documented OPENBLAS_CORETYPE=Haswell, OPENBLAS_L2_SIZE=512), and "cpu1" (one thread in
both libraries, timed in process CPU time: the load-robust configuration that judges a target when wall times
disagree).  In each, both libraries are warmed and each case verified: in float64 npattn must equal torch to
1e-9; in float32 both are compared with the float64 twin on the same numbers and npattn's error must stay below
1e-2 (a sanity bound; both errors are reported).  Samples are interleaved (ours, torch, ...) with a 0.1 s sleep
before each; min / median / max and the ratio of the medians.  Peak memory: a fresh subprocess per case and
library, ``ru_maxrss`` after one forward + backward minus the same process's baseline after building its inputs.

    python benchmarks/bench_cnn_beyond.py              # full run, writes benchmarks/results/cnn_beyond.md
    python benchmarks/bench_cnn_beyond.py --quick      # smoke run: small shapes, 3 samples, one config
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

import _harness
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "cnn_beyond.md")
CASES = ("coord", "simam", "sge", "triplet", "psa-p", "psa-s", "external", "cot", "gct", "srm", "split-attention",
         "shuffle-attention")
#: target ratio of medians (PERFORMANCE.md): channel-only and parameter-free entries 1x, the rest 1.5x (f64) / 2x (f32)
STRICT = ("coord", "simam", "sge", "gct", "srm")
CPU_TIME_FLAG = _harness.CPU_TIME_FLAG
CLOCK = time.process_time if os.environ.get(CPU_TIME_FLAG) else time.perf_counter


def target(case: str, dtype: str) -> float:
    if case in STRICT:
        return 1.0
    return 1.5 if dtype == "float64" else 2.0


# ---------------------------------------------------------------------------------------------
# cases: (registry name, init kwargs, apply options, twin factory, description)


def build(case: str, quick: bool):
    sys.path.insert(0, ROOT)
    from tests.torch_tier import test_cnn_beyond as twins

    c = 32 if quick else 256
    table = {
        "coord": ({"channels": c}, {}, lambda: twins.TorchCoordAtt(c), f"C={c}, mip=max(8, C//32)"),
        "simam": ({}, {}, twins.TorchSimAM, "parameter-free"),
        "sge": ({"channels": c, "groups": 64 if not quick else 8, "official_init": False}, {},
                lambda: twins.TorchSGE(64 if not quick else 8), "G=64"),
        "triplet": ({}, {}, twins.TorchTriplet, "three 7x7 gates"),
        "psa-p": ({"channels": c, "layout": "parallel"}, {"layout": "parallel"}, lambda: twins.TorchPSA(c),
                  "official PSA_p"),
        "psa-s": ({"channels": c, "layout": "sequential"}, {"layout": "sequential"},
                  lambda: twins.TorchPSA(c, "sequential"), "official PSA_s"),
        "external": ({"channels": c}, {}, lambda: twins.TorchExternal(c), "S=64, official block"),
        "cot": ({"channels": c}, {}, lambda: twins.TorchCotLayer(c), "k=3 (torch: the kernel test's unfold form)"),
        "gct": ({"channels": c, "official_init": False}, {}, lambda: twins.TorchGCT(c), "l2"),
        "srm": ({"channels": c, "official_init": False}, {}, lambda: twins.TorchSRM(c), "unbiased var + eps"),
        "split-attention": ({"in_channels": c, "channels": c, "radix": 2, "cardinality": 1}, {},
                            lambda: twins.TorchSplAtConv2d(c, c), "3x3, R=2, K=1, BN (ResNeSt call)"),
        "shuffle-attention": ({"channels": c, "groups": 64 if not quick else 8, "official_init": False},
                              {"groups": 64 if not quick else 8},
                              lambda: twins.TorchShuffleAttention(c, 64 if not quick else 8), "G=64"),
    }
    return table[case]


def _randomise_bn(params, rng):
    """Random BN affine parameters and statistics (the defaults are an identity); the dtype kept."""
    import autograd as ag
    out = dict(params)
    for key, value in params.items():
        if key.endswith(".running_mean"):
            prefix, size, dtype = key[: -len(".running_mean")], value.shape[0], value.dtype
            for leaf, low, high in (("weight", 0.5, 1.5), ("bias", -0.5, 0.5), ("running_mean", -0.5, 0.5),
                                    ("running_var", 0.5, 2.0)):
                out[f"{prefix}.{leaf}"] = ag.from_numpy(rng.uniform(low, high, size).astype(dtype))
    return out


class Runner(_harness.TrainingTwin):
    """One case in one dtype: the npattn step and the torch step on the same weights and inputs."""

    def __init__(self, case: str, dtype, quick: bool):
        import torch

        import autograd as ag
        import npattn
        from npattn.testing import to_host

        self.torch, self.ag, self.npattn = torch, ag, npattn
        config, options, twin, self.description = build(case, quick)
        self.mech = npattn.get(case)
        # the structure of this config reaches apply too (it overrides the registry config's)
        keywords = inspect.signature(self.mech.apply_fn).parameters
        self.options = {**{k: v for k, v in config.items() if k in keywords}, **options}
        rng = np.random.default_rng(0)
        params = _randomise_bn(self.mech.init(rng, dtype=dtype, **config), rng)
        module = twin().to(torch.float64 if dtype == np.float64 else torch.float32)
        module.load_state_dict({k: torch.from_numpy(to_host(v).copy()) for k, v in params.items()}, strict=True)
        self.module = module.train(True)
        self.float_keys = [k for k, v in params.items() if np.dtype(v.dtype).kind == "f"]
        self.params = params
        shape = (2, 32, 14, 14) if quick else (8, 256, 28, 28)
        x = rng.standard_normal(shape).astype(dtype)
        self.inputs = [ag.from_numpy(x)]
        self.torch_inputs = [torch.tensor(x, requires_grad=True)]
        self.cotangent = rng.standard_normal(tuple(self.module(*self.torch_inputs).shape)).astype(dtype)
        self.state = {k: v.clone() for k, v in self.module.state_dict().items()}


def worker(args):
    import torch

    _harness.one_thread_if_cpu_time(torch)
    samples = args.samples or (3 if args.quick else 5)
    report = {"blas": _harness.blas_info(), "env": _harness.blas_env(), "load": os.getloadavg()[0],
              "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
              "clock": "process CPU time" if os.environ.get(CPU_TIME_FLAG) else "wall time", "rows": []}
    cases = [c for c in CASES if not args.filter or c in args.filter.split(",")]
    for dtype in args.dtypes.split(","):
        for case in cases:
            runner = Runner(case, np.dtype(dtype).type, args.quick)
            error, torch_error = _harness.checked_errors(runner, case, dtype)
            t_ours, t_theirs = _harness.interleaved([runner.ours, runner.theirs], samples, warmup=1, clock=CLOCK)
            report["rows"].append({"case": case, "dtype": dtype, "what": runner.description,
                                   "error": error, "torch_error": torch_error,
                                   "ours": t_ours, "torch": t_theirs})
            print(f"  {case} {dtype}: ours {np.median(t_ours) * 1e3:.1f} ms torch {np.median(t_theirs) * 1e3:.1f} ms",
                  file=sys.stderr)
            del runner
    _harness.write_json(report, args.json)


# ---------------------------------------------------------------------------------------------
# memory: one fresh process per case and library


def memory_case(args):
    """Peak RSS of one forward + backward minus the RSS before it (bench_mechanisms.py's method): one warm-up
    call first (thread pools, caches), then the peak mark is reset through /proc/self/clear_refs so that the
    set-up -- which runs the torch twin once -- does not hide the measured call's peak."""
    import gc

    dtype = np.dtype(args.dtypes).type
    runner = Runner(args.memory_case, dtype, args.quick)
    call = runner.ours if args.lib == "ours" else runner.theirs
    call()
    gc.collect()
    reset = _harness.reset_peak_rss()
    baseline = _harness.rss_bytes() if reset else _harness.peak_rss_bytes()
    result = call()
    peak = _harness.peak_rss_bytes()
    del result
    print(json.dumps({"extra_mib": (peak - baseline) / _harness.MIB, "reset": reset}))


def measure_memory(quick, env, dtypes, cases):
    rows = []
    for case in cases:
        for dtype in dtypes:
            extra = {}
            for lib in ("ours", "torch"):
                probe = ["--memory-case", case, "--lib", lib, "--dtypes", dtype] + (["--quick"] if quick else [])
                # a fixed mmap threshold returns every large freed array to the system: RSS follows live arrays
                result = _harness.run_probe(__file__, probe, {**env, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)})
                extra[lib] = result["extra_mib"]
                extra["reset"] = result["reset"]
            rows.append({"case": case, "dtype": dtype, **extra})
            print(f"  memory {case} {dtype}: ours {extra['ours']:.0f} MiB, torch {extra['torch']:.0f} MiB",
                  file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------
# orchestration and report


def run_config(label, env, args, dtypes):
    return _harness.run_worker(__file__, ["--dtypes", dtypes, *_harness.flags(args, "quick", "samples", "filter")],
                               env, announce=lambda cmd: print(f"[{label}] {' '.join(cmd[1:])}", file=sys.stderr))


def _stats(times):
    return " / ".join(f"{v * 1e3:.1f}" for v in _harness.min_median_max(times))


def write_report(results, memory, args):
    lines = ["# Issue 17's CNN attention modules vs PyTorch twins (CPU)", "",
             "Generated by `python benchmarks/bench_cnn_beyond.py" + (" --quick" if args.quick else "") + "` on "
             + time.strftime("%Y-%m-%d") + ". Forward + backward, gradients w.r.t. the input and every parameter, "
             "BatchNorm in training mode; features (8, 256, 28, 28). Times in ms (min / median / max of interleaved "
             "samples); ratio = median ours / median torch; target: 1x for the channel-only and parameter-free "
             "entries (coord, simam, sge, gct, srm), else 1.5x (float64) / 2x (float32). Verified before timing "
             "(\"error\"): max|a - ref| of the output over its max|ref|, and of every gradient over the largest "
             "max|ref| of all gradients, where ref is the torch twin in float64 on the same numbers; float64 rows "
             "compare npattn with torch directly (torch: 0).", ""]
    for label, report in results:
        header = ("mechanism", "dtype", "configuration", "npattn ms", "torch ms", "ratio", "target",
                  "error npattn / torch")
        table = []
        for row in report["rows"]:
            ratio = np.median(row["ours"]) / np.median(row["torch"])
            goal = target(row["case"], row["dtype"])
            table.append((row["case"], row["dtype"], row["what"], _stats(row["ours"]), _stats(row["torch"]),
                          f"{ratio:.2f}x", f"{goal:g}x {'met' if ratio <= goal else 'MISSED'}",
                          f"{row['error']:.1e} / {row['torch_error']:.1e}"))
        lines += [f"## {label}", "", "- NumPy BLAS: " + "; ".join(report["blas"]), f"- env: {report['env']}",
                  f"- torch {report['torch']}; clock: {report['clock']}",
                  f"- 1-minute load average when the worker started: {report.get('load', float('nan')):.1f}", "",
                  *_harness.markdown_table(header, table), ""]
    if memory:
        header = ("mechanism", "dtype", "npattn MiB", "torch MiB", "ratio", "target 1.5x")
        table = [(row["case"], row["dtype"], f"{row['ours']:.0f}", f"{row['torch']:.0f}",
                  f"{row['ours'] / max(row['torch'], 1.0):.2f}x",
                  "met" if row["ours"] <= 1.5 * max(row["torch"], 1.0) else "MISSED") for row in memory]
        resets = all(row.get("reset") for row in memory)
        lines += ["## Peak extra memory (fresh process per case, BLAS as set)", "",
                  "Peak RSS of one forward + backward minus the RSS before it, after a warm-up call, the peak mark "
                  "reset through /proc/self/clear_refs" + ("" if resets else " (NOT available here: the baseline is "
                  "the set-up's peak, which can hide the call's)") + ", MALLOC_MMAP_THRESHOLD_=131072.", "",
                  *_harness.markdown_table(header, table), ""]
    _harness.write_text(args.output, "\n".join(lines))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=0)
    parser.add_argument("--filter", default="", help="comma-separated registry names")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--configs", default="set,other,cpu1", help="comma-separated: set, other, cpu1")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--memory-case")
    parser.add_argument("--lib")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.memory_case:
        return memory_case(args)
    env_set = dict(os.environ)
    wanted = args.configs.split(",")
    configs = [("BLAS as set", env_set, args.dtypes)] if "set" in wanted else []
    if not args.quick and "other" in wanted:   # float32 only: the kernel choice matters most there
        if any(k in os.environ for k in _harness.BLAS_VARS):
            configs.append(("BLAS unset (OpenBLAS picks its kernel)", _harness.without_blas_vars(env_set), "float32"))
        else:
            configs.append(("BLAS Haswell (forced)", _harness.haswell_forced(env_set), "float32"))
    if not args.quick and "cpu1" in wanted:
        configs.append(("cpu1: one thread, process CPU time (BLAS as set)",
                        {**env_set, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", CPU_TIME_FLAG: "1"},
                        args.dtypes))
    results = [(label, run_config(label, env, args, dtypes)) for label, env, dtypes in configs]
    cases = [c for c in CASES if not args.filter or c in args.filter.split(",")]
    memory = [] if args.no_memory else measure_memory(args.quick, env_set, ["float64"], cases)
    write_report(results, memory, args)


if __name__ == "__main__":
    main()
