"""Benchmark of OCR, IAUnet, FcaNet, RGA and GSoP against their PyTorch twins on CPU, at scale.

Every mechanism runs forward + backward (gradients w.r.t. the input(s) and every parameter, autodiff tape
included, BatchNorm in training mode) on (2, 256, 64, 64) features -- IAUnet on a (2, 4, 256, 32, 32) clip
of the same total size.  The twins are the independent PyTorch modules of ``tests/torch_tier/test_beyond.py``
(checked there against npattn at 1e-10 in float64).

Method (shared/PERFORMANCE.md): one worker process per BLAS configuration -- "as set" (the inherited
environment) and "unset" (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``), or, when the inherited
environment sets neither, "Haswell (forced)" (the documented project setting OPENBLAS_CORETYPE=Haswell,
OPENBLAS_L2_SIZE=512).  In it both libraries are warmed and each case is verified: in float64 npattn must
equal torch to 1e-9 (the exactness check, at the benchmark's shapes); in float32 both are compared with the
float64 twin on the same numbers and npattn's error must stay below 1e-2 -- a sanity bound, because a single
ReLU input that rounds to the other side of 0 moves a gradient by about one cotangent entry (both errors are
reported).  Then samples are interleaved (ours, torch, ours, torch, ...) with a 0.1 s sleep before each; we
report min / median / max and the ratio of the medians.  Peak memory: a fresh subprocess per case and
library, ``ru_maxrss`` after one forward + backward minus the same process's baseline after building its
inputs.
The orchestrator writes ``benchmarks/results/beyond.md``.

    python benchmarks/bench_beyond.py              # full run (~15 min on 2 cores)
    python benchmarks/bench_beyond.py --quick      # smoke run: small shapes, 3 samples, one config
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import _harness
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "beyond.md")
CASES = ("ocr", "iau", "fca", "rga", "gsop")
GIB = 1024.0


# ---------------------------------------------------------------------------------------------
# cases: (registry name, params, inputs, torch twin, apply options, description)


def build(case: str, dtype, quick: bool):
    sys.path.insert(0, ROOT)
    import npattn
    from npattn.frequency.fca import scaled_frequencies
    from tests.torch_tier import test_beyond as twins

    rng = np.random.default_rng(0)
    c, hw = (64, 16) if quick else (256, 64)  # RGA's ratios 8/8/8 need C >= 56

    def normal(shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    if case == "ocr":
        classes, key = 19, c // 2
        params = npattn.get("ocr").init(rng, c, key, c, dtype=dtype)
        return ("ocr", params, [normal((2, c, hw, hw)), normal((2, classes, hw, hw))],
                twins.TorchOCR(c, key, c), {}, f"in=out={c}, key={key}, K={classes} classes, pool_scale 1")
    if case == "iau":
        frames = 4
        params = npattn.get("iau").init(rng, c, zero_init=False, dtype=dtype)
        return ("iau", params, [normal((2, frames, c, hw // 2, hw // 2), 0.1)], twins.TorchIAU(c), {},
                f"clip (2, {frames}, {c}, {hw // 2}, {hw // 2}), 4 parts")
    if case == "fca":
        dct = 56 if not quick else 7
        params = npattn.get("fca").init(rng, c, dct, dct, reduction=16 if not quick else 4, dtype=dtype)
        us, vs = scaled_frequencies("top16", dct, dct)
        return ("fca", params, [normal((2, c, hw, hw))],
                twins.TorchFca(c, dct, dct, 16 if not quick else 4, us, vs), {"dct_h": dct, "dct_w": dct},
                f"top16, DCT {dct}x{dct}")
    if case == "rga":
        params = npattn.get("rga").init(rng, c, hw * hw, dtype=dtype)
        return ("rga", params, [normal((2, c, hw, hw))], twins.TorchRGA(c, hw * hw, True, True), {},
                "RGA-S then RGA-C, ratios 8/8/8")
    if case == "gsop":
        att = 128 if not quick else 8
        params = npattn.get("gsop").init(rng, c, att_dim=att, dtype=dtype)
        return ("gsop", params, [normal((2, c, hw, hw))], twins.TorchGSoP(c, att, covpool="centred"), {},
                f"att_dim {att}, stride 1 (torch: centred covariance, no M x M matrix)")
    raise ValueError(case)


class Runner(_harness.TrainingTwin):
    """One case in one dtype: the npattn step and the torch step on the same weights and inputs."""

    def __init__(self, case: str, dtype, quick: bool):
        import torch

        import autograd as ag
        import npattn
        from npattn.testing import to_host

        self.torch, self.ag, self.npattn = torch, ag, npattn
        name, params, inputs, module, self.options, self.description = build(case, dtype, quick)
        self.mech = npattn.get(name)
        module = module.to(torch.float64 if dtype == np.float64 else torch.float32)  # before loading: no rounding
        module.load_state_dict({k: torch.from_numpy(to_host(v).copy()) for k, v in params.items()})
        self.module = module.train(True)
        self.float_keys = [k for k, v in params.items() if np.dtype(v.dtype).kind == "f"]
        self.params = params
        self.inputs = [ag.from_numpy(x) for x in inputs]
        self.torch_inputs = [torch.tensor(x, requires_grad=True) for x in inputs]
        self.cotangent = np.random.default_rng(1).standard_normal(
            tuple(self.module(*self.torch_inputs).shape)).astype(dtype)
        self.state = {k: v.clone() for k, v in self.module.state_dict().items()}


def worker(args):
    import torch

    samples = args.samples or (3 if args.quick else 5)
    report = {"blas": _harness.blas_info(), "env": _harness.blas_env(), "load": os.getloadavg()[0],
              "torch": f"{torch.__version__}, {torch.get_num_threads()} threads", "rows": []}
    cases = [c for c in CASES if not args.filter or c in args.filter.split(",")]
    for dtype in args.dtypes.split(","):
        for case in cases:
            runner = Runner(case, np.dtype(dtype).type, args.quick)
            error, torch_error = _harness.checked_errors(runner, case, dtype)
            # no separate warm-up: verify() has just run both
            t_ours, t_theirs = _harness.interleaved([runner.ours, runner.theirs], samples, warmup=0)
            report["rows"].append({"case": case, "dtype": dtype, "what": runner.description,
                                   "error": error, "torch_error": torch_error,
                                   "ours": t_ours, "torch": t_theirs})
            print(f"  {case} {dtype}: ours {np.median(t_ours):.3f}s torch {np.median(t_theirs):.3f}s", file=sys.stderr)
            del runner
    _harness.write_json(report, args.json)


# ---------------------------------------------------------------------------------------------
# memory: one fresh process per case and library


def memory_case(args):
    dtype = np.dtype(args.dtypes).type
    runner = Runner(args.memory_case, dtype, args.quick)
    baseline = _harness.peak_rss_bytes()
    (runner.ours if args.lib == "ours" else runner.theirs)()
    peak = _harness.peak_rss_bytes()
    print(json.dumps({"extra_mib": (peak - baseline) / _harness.MIB}))


def measure_memory(quick, env, dtypes, cases):
    rows = []
    for case in cases:
        for dtype in dtypes:
            extra = {}
            for lib in ("ours", "torch"):
                probe = ["--memory-case", case, "--lib", lib, "--dtypes", dtype] + (["--quick"] if quick else [])
                extra[lib] = _harness.run_probe(__file__, probe, env)["extra_mib"]
            rows.append({"case": case, "dtype": dtype, **extra})
            print(f"  memory {case} {dtype}: ours {extra['ours']:.0f} MiB, torch {extra['torch']:.0f} MiB",
                  file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------
# orchestration and report


def run_config(label, env, args, dtypes):
    """This script's worker for one configuration; its JSON report."""
    return _harness.run_worker(__file__, ["--dtypes", dtypes, *_harness.flags(args, "quick", "samples", "filter")],
                               env, announce=lambda cmd: print(f"[{label}] {' '.join(cmd[1:])}", file=sys.stderr))


def _stats(times):
    return " / ".join(f"{v * 1e3:.0f}" for v in _harness.min_median_max(times))


def write_report(results, memory, args):
    lines = ["# OCR, IAUnet, FcaNet, RGA, GSoP vs PyTorch twins (CPU)", "",
             "Generated by `python benchmarks/bench_beyond.py" + (" --quick" if args.quick else "") + "` on "
             + time.strftime("%Y-%m-%d") + ". Forward + backward, gradients w.r.t. the input(s) and every "
             "parameter, BatchNorm in training mode; features (2, 256, 64, 64), IAUnet a (2, 4, 256, 32, 32) clip. "
             "Times in ms (min / median / max of interleaved samples); ratio = median ours / median torch. "
             "Verified before timing (\"error\"): max|a - ref| of the output over its max|ref|, and of every gradient "
             "over the largest max|ref| of all gradients (the worse of the two), where ref is the torch twin in "
             "float64 on the same numbers; float64 rows compare npattn with torch directly (torch: 0).", ""]
    for label, report in results:
        header = ("mechanism", "dtype", "configuration", "npattn ms", "torch ms", "ratio", "error npattn / torch")
        table = [(row["case"], row["dtype"], row["what"], _stats(row["ours"]), _stats(row["torch"]),
                  f"{np.median(row['ours']) / np.median(row['torch']):.2f}x",
                  f"{row['error']:.1e} / {row['torch_error']:.1e}") for row in report["rows"]]
        lines += [f"## BLAS {label}", "", "- NumPy BLAS: " + "; ".join(report["blas"]),
                  f"- env: {report['env']}", f"- torch {report['torch']}",
                  f"- 1-minute load average when the worker started: {report.get('load', float('nan')):.1f}", "",
                  *_harness.markdown_table(header, table), ""]
    if memory:
        header = ("mechanism", "dtype", "npattn MiB", "torch MiB", "ratio", "< 8 GiB")
        table = [(row["case"], row["dtype"], f"{row['ours']:.0f}", f"{row['torch']:.0f}",
                  f"{row['ours'] / max(row['torch'], 1.0):.2f}x", "yes" if row["ours"] < 8 * GIB else "NO")
                 for row in memory]
        lines += ["## Peak extra memory (fresh process per case, BLAS as set)", "",
                  *_harness.markdown_table(header, table), ""]
    _harness.write_text(args.output, "\n".join(lines))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=0)
    parser.add_argument("--filter", default="", help="comma-separated cases (ocr,iau,fca,rga,gsop)")
    parser.add_argument("--dtypes", default="float32,float64")
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
    configs = [("as set", env_set, args.dtypes)]
    if not args.quick:  # float32 only: the kernel choice matters most there, and float64 RGA is slow
        if any(k in os.environ for k in _harness.BLAS_VARS):
            configs.append(("unset (OpenBLAS picks its kernel)", _harness.without_blas_vars(env_set), "float32"))
        else:  # the inherited environment is already "unset": reproduce the documented project setting
            configs.append(("Haswell (forced)", _harness.haswell_forced(env_set), "float32"))
    results = [(label, run_config(label, env, args, dtypes)) for label, env, dtypes in configs]
    cases = [c for c in CASES if not args.filter or c in args.filter.split(",")]
    memory = [] if args.no_memory else measure_memory(args.quick, env_set, ["float32"], cases)
    write_report(results, memory, args)


if __name__ == "__main__":
    main()
