"""Benchmark of the vision-transformer attention entries (NAT, DiNAT, ViT attention, CLIP attention pooling,
Axial-DeepLab, VOLO outlook, MobileViT-v2, BoTNet) against their PyTorch twins on CPU, at realistic sizes.

Every entry runs forward + backward (gradients w.r.t. the input and every parameter, autodiff tape included,
eval mode) at a size its model uses (the table in :func:`build`).  The twins are the torch modules of
``tests/torch_tier/test_transformer_*.py``, written from the official code and checked there against npattn at
1e-10 in float64; the ViT twin runs timm's default fused path (``F.scaled_dot_product_attention``).

Method (shared/PERFORMANCE.md), as ``bench_beyond.py``: one worker process per configuration -- "as set" (the
inherited environment), "unset" (``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` removed; or, when the inherited
environment sets neither, the documented Haswell setting forced) and "cpu1" (one thread for NumPy's BLAS,
npattn's thread pool and torch, timed in process CPU time: the supplement that stays meaningful on a loaded
machine).  In a worker both libraries are warmed and each case verified -- float64: npattn equals torch to
1e-9; float32: both against the float64 twin on the same numbers, npattn's error below 1e-2 (a sanity bound)
-- then samples are interleaved (ours, torch, ...) with a 0.1 s sleep before each; min / median / max and
the ratio of the medians.  Peak memory: a fresh subprocess per case and library, ``ru_maxrss`` after one
forward + backward minus the same process's baseline after building its inputs.
Writes ``benchmarks/results/vision_attention.md``.

    python benchmarks/bench_vision_attention.py              # full run
    python benchmarks/bench_vision_attention.py --quick      # smoke run: small shapes, 3 samples, one config
    python benchmarks/bench_vision_attention.py --filter nat,botnet --dtypes float64 --no-memory
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
RESULTS = os.path.join(HERE, "results", "vision_attention.md")
CASES = ("nat", "dinat", "vit-attention", "attention-pool", "axial", "outlook", "mobilevit-v2", "botnet")
CPU_TIME_FLAG = _harness.CPU_TIME_FLAG
CLOCK = time.process_time if os.environ.get(CPU_TIME_FLAG) else time.perf_counter


# ---------------------------------------------------------------------------------------------
# cases: (registry name, params, input, torch twin, state_dict for the twin, apply options, description)


def build(case: str, dtype, quick: bool):
    sys.path.insert(0, ROOT)
    import npattn
    from tests.torch_tier import test_transformer_attention_pool as pool_twins
    from tests.torch_tier import test_transformer_axial as axial_twins
    from tests.torch_tier import test_transformer_botnet as botnet_twins
    from tests.torch_tier import test_transformer_mobilevit as mobilevit_twins
    from tests.torch_tier import test_transformer_nat as nat_twins
    from tests.torch_tier import test_transformer_outlook as outlook_twins
    from tests.torch_tier import test_transformer_vit as vit_twins

    rng = np.random.default_rng(0)
    configs = build.configs = {}

    def init(name, **config):
        """Parameters for the entry's default config updated with ``config`` (as ``interop.torch.compare``);
        its structure reaches apply too (``registry.apply_keywords``)."""
        mech = npattn.get(name)
        configs[name] = {**mech.config, **config}
        return mech.init(rng, dtype=dtype, **configs[name])

    def normal(shape):
        return rng.standard_normal(shape).astype(dtype)

    if case in ("nat", "dinat"):       # NAT-T / DiNAT-T stage 1 at 224: 56 x 56 x 64, 2 heads, kernel 7
        size, dim = (14, 32) if quick else (56, 64)
        dilation = (2 if quick else 8) if case == "dinat" else 1
        params = init(case, dim=dim, num_heads=2, kernel_size=7)
        twin = nat_twins.TorchNeighborhoodAttention2D(dim, 2, 7, dilation=dilation)
        return (case, params, normal((1, size, size, dim)), twin, None, {"dilation": dilation},
                f"(1, {size}, {size}, {dim}), 2 heads, kernel 7, dilation {dilation}")
    if case == "vit-attention":        # ViT-B/16 at 224: 197 tokens x 768, 12 heads
        tokens, dim, heads = (50, 192, 3) if quick else (197, 768, 12)
        params = init(case, dim=dim, num_heads=heads, qkv_bias=True, qk_norm=False)
        twin = vit_twins.TimmAttention(dim, heads, qkv_bias=True)
        return (case, params, normal((1, tokens, dim)), twin, None, {},
                f"(1, {tokens}, {dim}), {heads} heads, qkv bias; torch: fused SDPA path")
    if case == "attention-pool":       # CLIP RN50: 7 x 7 x 2048, 32 heads, output 1024
        side, dim, heads, out = (7, 256, 4, 128) if quick else (7, 2048, 32, 1024)
        params = init(case, spacial_dim=side, embed_dim=dim, num_heads=heads, output_dim=out)
        twin = pool_twins.ClipAttentionPool2d(side, dim, heads, out)
        return (case, params, normal((8, dim, side, side)), twin, None, {},
                f"(8, {dim}, {side}, {side}), {heads} heads, output {out}")
    if case == "axial":                # Axial-DeepLab axial50s layer1: 64 planes on 56 x 56, 8 groups
        size, planes = (14, 32) if quick else (56, 64)
        params = init(case, in_planes=planes, out_planes=planes, groups=8, kernel_size=size)
        twin = axial_twins.OfficialAxialAttention(planes, planes, 8, size, persistent_index=False)
        return (case, params, normal((1, planes, size, size)), twin, None, {},
                f"(1, {planes}, {size}, {size}), along H, 8 groups, eval-mode BN")
    if case == "outlook":              # VOLO-D1 stage 1: 28 x 28 x 192, 6 heads, k 3, stride 2
        size, dim, heads = (14, 48, 2) if quick else (28, 192, 6)
        params = init(case, dim=dim, num_heads=heads, kernel_size=3, padding=1, stride=2)
        twin = outlook_twins.OfficialOutlookAttention(dim, heads, 3, 1, 2)
        return (case, params, normal((1, size, size, dim)), twin, None,
                {},
                f"(1, {size}, {size}, {dim}), {heads} heads, k 3, stride 2")
    if case == "mobilevit-v2":         # MobileViTv2-1.0 at 256: 32 x 32 x 128 in 2 x 2 patches: (1, 128, 4, 256)
        dim, patches = (32, 64) if quick else (128, 256)
        from npattn.transformer.mobilevit import cvnets_key_map

        params = init(case, embed_dim=dim)
        to_cvnets = {v: k for k, v in cvnets_key_map().items()}
        twin = mobilevit_twins.CvnetsLinearSelfAttention(dim)
        return (case, params, normal((1, dim, 4, patches)), twin, {to_cvnets[k]: v for k, v in params.items()},
                {}, f"(1, {dim}, 4, {patches}): 2 x 2 patches of a 32 x 32 map")
    if case == "botnet":               # BoT c5 at 224: 14 x 14 x 512, 4 heads
        size, dim = (7, 64) if quick else (14, 512)
        params = init(case, dim=dim, feat_size=(size, size), num_heads=4)
        twin = botnet_twins.TimmBottleneckAttn(dim, feat_size=(size, size), num_heads=4, scale_pos_embed=True)
        return (case, params, normal((2, dim, size, size)), twin, None, {},
                f"(2, {dim}, {size}, {size}), 4 heads, relative logits scaled (gist)")
    raise ValueError(case)


class Runner:
    """One case in one dtype: the npattn step and the torch step on the same weights and inputs."""

    def __init__(self, case: str, dtype, quick: bool):
        import torch

        import autograd as ag
        import npattn
        from npattn.testing import to_host

        self.torch, self.ag = torch, ag
        name, params, x, module, state, options, self.description = build(case, dtype, quick)
        self.mech = npattn.get(name)
        self.options = npattn.registry.apply_keywords(self.mech, build.configs[name], options)
        module = module.to(torch.float64 if dtype == np.float64 else torch.float32)
        module.load_state_dict({k: torch.from_numpy(to_host(v).copy()) for k, v in (state or params).items()})
        self.module = module.eval()
        self.params = params
        self.float_keys = [k for k, v in params.items() if np.dtype(v.dtype).kind == "f"]
        self.x = ag.from_numpy(x)
        self.x_torch = torch.tensor(x, requires_grad=True)
        self.torch_names = list(dict(module.named_parameters()))
        to_npattn = {} if state is None else dict(zip(state, params))
        self.torch_keys = [to_npattn.get(k, k) for k in self.torch_names]
        with torch.no_grad():
            shape = tuple(self.module(self.x_torch).shape)
        self.cotangent = np.random.default_rng(1).standard_normal(shape).astype(dtype)
        self.cotangent_ours = ag.from_numpy(self.cotangent)
        self.cotangent_torch = torch.from_numpy(self.cotangent)

    def ours(self):
        """Forward + backward; returns (output, [input gradient, parameter gradients in the twin's order])."""
        rest = {k: v for k, v in self.params.items() if k not in self.float_keys}

        def step(float_params, x):
            return self.mech.apply({**rest, **float_params}, x, **self.options)

        out, pullback = self.ag.vjp(step, {k: self.params[k] for k in self.float_keys}, self.x)
        grads = pullback(self.cotangent_ours)
        return out, [grads[1]] + [grads[0][k] for k in self.torch_keys]

    def theirs(self):
        self.module.zero_grad(set_to_none=True)
        self.x_torch.grad = None
        out = self.module(self.x_torch)
        out.backward(self.cotangent_torch)
        named = dict(self.module.named_parameters())
        return out, [self.x_torch.grad] + [named[k].grad for k in self.torch_names]

    def reference(self):
        """The torch twin in float64 on exactly the same numbers (weights, inputs, cotangent upcast)."""
        import copy

        module = copy.deepcopy(self.module).double()
        x = self.x_torch.detach().double().requires_grad_(True)
        out = module(x)
        out.backward(self.torch.from_numpy(self.cotangent.astype(np.float64)))
        named = dict(module.named_parameters())
        return out, [x.grad] + [named[k].grad for k in self.torch_names]

    def verify(self) -> tuple:
        """(npattn's error, torch's error) against torch float64 (float64 rows: torch itself)."""
        return _harness.verify(self)


def worker(args):
    import torch

    _harness.one_thread_if_cpu_time(torch)
    samples = args.samples or (3 if args.quick else 7)
    report = {"blas": _harness.blas_info(), "env": _harness.blas_env(), "load_start": os.getloadavg()[0],
              "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
              "clock": "process CPU time" if os.environ.get(CPU_TIME_FLAG) else "wall", "rows": []}
    cases = [c for c in CASES if not args.filter or c in args.filter.split(",")]
    for dtype in args.dtypes.split(","):
        for case in cases:
            runner = Runner(case, np.dtype(dtype).type, args.quick)
            error, torch_error = _harness.checked_errors(runner, case, dtype)
            t_ours, t_theirs = _harness.interleaved([runner.ours, runner.theirs], samples, warmup=1, clock=CLOCK)
            report["rows"].append({"case": case, "dtype": dtype, "what": runner.description, "error": error,
                                   "torch_error": torch_error, "ours": t_ours, "torch": t_theirs})
            report["load_end"] = os.getloadavg()[0]
            _harness.write_json(report, args.json)          # after every case: a partial report survives
            print(f"  {case} {dtype}: ours {np.median(t_ours) * 1e3:.1f} ms, torch {np.median(t_theirs) * 1e3:.1f} ms",
                  file=sys.stderr, flush=True)
            del runner


# ---------------------------------------------------------------------------------------------
# memory: one fresh process per case and library


def memory_case(args):
    """Peak extra RSS of one forward + backward in this fresh process.  A small instance of the case runs
    first, so one-time costs (torch's autograd engine and thread pools, lazy imports, BLAS buffers) are not
    charged to it."""
    import gc

    dtype = np.dtype(args.dtypes).type
    warm = Runner(args.memory_case, dtype, True)
    (warm.ours if args.lib == "ours" else warm.theirs)()
    del warm
    gc.collect()
    runner = Runner(args.memory_case, dtype, args.quick)
    gc.collect()
    baseline = _harness.peak_rss_bytes()
    (runner.ours if args.lib == "ours" else runner.theirs)()
    print(json.dumps({"extra_mib": (_harness.peak_rss_bytes() - baseline) / _harness.MIB}))


def measure_memory(quick, env, dtype, cases):
    rows = []
    for case in cases:
        extra = {}
        for lib in ("ours", "torch"):
            probe = ["--memory-case", case, "--lib", lib, "--dtypes", dtype] + (["--quick"] if quick else [])
            result = _harness.run_probe(__file__, probe, env, cwd=ROOT, check=False, show_stderr=True)
            extra[lib] = float("nan") if result is None else result["extra_mib"]
        rows.append({"case": case, "dtype": dtype, **extra})
        print(f"  memory {case} {dtype}: ours {extra['ours']:.0f} MiB, torch {extra['torch']:.0f} MiB",
              file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# orchestration and report


def configurations(quick: bool, dtypes: str, names: str) -> list:
    """[(label, env, dtypes)] for the configurations named in ``names`` ("set", "other", "cpu1")."""
    inherited = dict(os.environ)
    configs = {"set": ("as set", inherited, dtypes)}
    if any(k in os.environ for k in _harness.BLAS_VARS):
        configs["other"] = ("unset (OpenBLAS picks its kernel)", _harness.without_blas_vars(inherited), "float32")
    else:
        configs["other"] = ("Haswell (forced)", _harness.haswell_forced(inherited), "float32")
    configs["cpu1"] = ("cpu1: one thread, process CPU time",
                       {**inherited, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", CPU_TIME_FLAG: "1"}, dtypes)
    return [configs[name] for name in (["set"] if quick else names.split(","))]


def run_config(label, env, args, dtypes):
    return _harness.run_worker(__file__, ["--dtypes", dtypes, *_harness.flags(args, "quick", "samples", "filter")],
                               env, cwd=ROOT,
                               announce=lambda cmd: print(f"[{label}] {' '.join(cmd[1:])}", file=sys.stderr))


def _stats(times):
    return " / ".join(f"{v * 1e3:.1f}" for v in _harness.min_median_max(times))


def write_report(results, memory, args):
    lines = ["# Vision-transformer attention entries vs PyTorch twins (CPU)", "",
             "Generated by `python benchmarks/bench_vision_attention.py" + (" --quick" if args.quick else "")
             + "` on " + time.strftime("%Y-%m-%d") + ". Forward + backward, gradients w.r.t. the input and every "
             "parameter, eval mode. Times in ms (min / median / max of interleaved samples); ratio = median ours / "
             "median torch. Verified before timing (\"error\"): max|a - ref| of the output over its max|ref|, and of "
             "every gradient over the largest max|ref| of all gradients (the worse), ref = the torch twin in float64 "
             "on the same numbers; float64 rows compare npattn with torch directly (torch: 0).", ""]
    for label, report in results:
        header = ("entry", "dtype", "size", "npattn ms", "torch ms", "ratio", "error npattn / torch")
        table = [(row["case"], row["dtype"], row["what"], _stats(row["ours"]), _stats(row["torch"]),
                  f"{np.median(row['ours']) / np.median(row['torch']):.2f}x",
                  f"{row['error']:.1e} / {row['torch_error']:.1e}") for row in report["rows"]]
        lines += [f"## {label}", "", "- NumPy BLAS: " + "; ".join(report["blas"]), f"- env: {report['env']}",
                  f"- torch {report['torch']}; clock: {report['clock']}",
                  f"- 1-minute load average: {report['load_start']:.1f} at the start, "
                  f"{report.get('load_end', float('nan')):.1f} at the end", "",
                  *_harness.markdown_table(header, table), ""]
    if memory:
        header = ("entry", "dtype", "npattn MiB", "torch MiB", "ratio")
        table = [(row["case"], row["dtype"], f"{row['ours']:.0f}", f"{row['torch']:.0f}",
                  f"{row['ours'] / max(row['torch'], 1.0):.2f}x") for row in memory]
        lines += ["## Peak extra memory (fresh process per case and library, BLAS as set)", "",
                  *_harness.markdown_table(header, table), ""]
    _harness.write_text(args.output, "\n".join(lines))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=0)
    parser.add_argument("--filter", default="", help="comma-separated entries: " + ",".join(CASES))
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--configs", default="set,other,cpu1", help="of set, other (unset / Haswell), cpu1")
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
    results = [(label, run_config(label, env, args, dtypes))
               for label, env, dtypes in configurations(args.quick, args.dtypes, args.configs)]
    cases = [c for c in CASES if not args.filter or c in args.filter.split(",")]
    memory = [] if args.no_memory else measure_memory(args.quick, dict(os.environ), "float64", cases)
    write_report(results, memory, args)


if __name__ == "__main__":
    main()
