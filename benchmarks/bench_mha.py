"""Benchmark: multi-head self-attention forward+backward, npattn ``mha`` against PyTorch CPU.

Shape of issue 5: batch 8, sequence 1024, d_model 512, 8 heads, no biases (npattn's default), self-attention
without masks.  One timed call = the output plus the gradients w.r.t. the input and all four projection
matrices (tape included), for a fixed random cotangent.  Compared with

* ``torch sdpa``: ``F.linear`` projections + ``F.scaled_dot_product_attention`` (the fused CPU kernel);
* ``torch mha``: ``nn.MultiheadAttention(bias=False, batch_first=True)`` with ``need_weights=False``;
* ``torch unfused``: the same module with ``need_weights=True``: torch's explicit bmm / softmax / bmm path,
  which stores the (B, h, L, L) weights as npattn does (for reference; the targets are against the two above).

Method (shared/PERFORMANCE.md): one worker process per BLAS configuration ("as set" and "unset", i.e.
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``; when the inherited environment does not set them, the
documented project setting is forced instead of "as set"); every case is verified against torch before it
is timed; all three are warmed, then samples are interleaved (ours, sdpa, mha, ours, ...) with a 0.1 s
sleep before each; min / median / max and the ratio of medians.  Peak memory: a fresh subprocess per case,
``ru_maxrss`` after one call minus the baseline after building the inputs.  Writes benchmarks/results/mha.md.

    python benchmarks/bench_mha.py             # full run (float32 and float64)
    python benchmarks/bench_mha.py --quick     # smoke run: batch 2, sequence 128, one configuration
"""
from __future__ import annotations

import argparse
import json
import os
import time

import _harness
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "mha.md")
LIBRARIES = ("ours", "torch sdpa", "torch mha", "torch unfused")


def shape(quick: bool) -> dict:
    return dict(batch=2, length=128, d_model=512, heads=8) if quick else dict(batch=8, length=1024, d_model=512,
                                                                            heads=8)


# ---------------------------------------------------------------------------------------------
# the three implementations of one forward+backward


class Problem:
    """Inputs, weights and cotangent of one dtype, and a forward+backward callable per library."""

    def __init__(self, dtype, batch, length, d_model, heads, seed=0):
        import torch

        import autograd as ag
        from npattn.origins import transformer

        rng = np.random.default_rng(seed)
        self.heads, self.dtype = heads, np.dtype(dtype)
        self.params = transformer.init_mha(rng, d_model, dtype=self.dtype)
        self.x = rng.standard_normal((batch, length, d_model)).astype(self.dtype)
        self.cotangent = rng.standard_normal((batch, length, d_model)).astype(self.dtype)
        self.ag, self.mha = ag, transformer.mha
        # torch copies of the same numbers
        self.torch = torch
        host = {k: ag.to_numpy(v) for k, v in self.params.items()}
        self.weights = {k: torch.tensor(v, requires_grad=True) for k, v in host.items()}
        self.tx = torch.tensor(self.x, requires_grad=True)
        self.tcot = torch.tensor(self.cotangent)
        self.module = torch.nn.MultiheadAttention(d_model, heads, bias=False, batch_first=True,
                                                  dtype=self.tx.dtype)
        with torch.no_grad():
            self.module.in_proj_weight.copy_(torch.cat([torch.from_numpy(host[f"{n}.weight"])
                                                        for n in ("w_q", "w_k", "w_v")]))
            self.module.out_proj.weight.copy_(torch.from_numpy(host["w_o.weight"]))
        self.ax, self.acot = ag.from_numpy(self.x), ag.from_numpy(self.cotangent)

    def ours(self):
        """(output, {param grads}, input grad) as backend arrays."""
        out, pullback = self.ag.vjp(lambda p, x: self.mha(p, x, heads=self.heads), self.params, self.ax)
        grad_params, grad_x = pullback(self.acot)
        return out, grad_params, grad_x

    def _zero_torch_grads(self, tensors):
        for t in tensors:
            t.grad = None

    def sdpa(self):
        F, w = self.torch.nn.functional, self.weights
        self._zero_torch_grads([self.tx, *w.values()])
        batch, length, d_model = self.tx.shape

        def heads(t):
            return t.view(batch, length, self.heads, d_model // self.heads).transpose(1, 2)

        q, k, v = (heads(F.linear(self.tx, w[f"{n}.weight"])) for n in ("w_q", "w_k", "w_v"))
        context = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, d_model)
        out = F.linear(context, w["w_o.weight"])
        out.backward(self.tcot)
        return out, {k: t.grad for k, t in w.items()}, self.tx.grad

    def torch_mha(self, need_weights=False):
        self._zero_torch_grads([self.tx, *self.module.parameters()])
        out, _ = self.module(self.tx, self.tx, self.tx, need_weights=need_weights, average_attn_weights=False)
        out.backward(self.tcot)
        in_grad = self.module.in_proj_weight.grad
        d = self.tx.shape[-1]
        grads = {"w_q.weight": in_grad[:d], "w_k.weight": in_grad[d:2 * d], "w_v.weight": in_grad[2 * d:],
                 "w_o.weight": self.module.out_proj.weight.grad}
        return out, grads, self.tx.grad

    def runner(self, library):
        return {"ours": self.ours, "torch sdpa": self.sdpa, "torch mha": self.torch_mha,
                "torch unfused": lambda: self.torch_mha(need_weights=True)}[library]

    def verify(self):
        """Largest error of each torch variant against ours, relative to the largest reference magnitude."""
        out, grads, grad_x = self.ours()
        ours = [self.ag.to_numpy(out), self.ag.to_numpy(grad_x)] + [self.ag.to_numpy(grads[k]) for k in sorted(grads)]
        errors = {}
        for library in LIBRARIES[1:]:
            t_out, t_grads, t_grad_x = self.runner(library)()
            theirs = [t_out.detach().numpy(), t_grad_x.numpy()] + [t_grads[k].numpy() for k in sorted(t_grads)]
            errors[library] = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(ours, theirs))
        return errors


# ---------------------------------------------------------------------------------------------
# worker: timings of one BLAS configuration


def worker(args):
    import torch

    report = {"blas": _harness.blas_info(), "env": _harness.blas_env(),
              "torch": f"{torch.__version__}, {torch.get_num_threads()} threads", "numpy": np.__version__,
              "shape": shape(args.quick), "rows": []}
    samples = args.samples or (3 if args.quick else 7)
    for dtype in args.dtypes.split(","):
        problem = Problem(dtype, **shape(args.quick))
        errors = problem.verify()
        limit = 1e-10 if dtype == "float64" else 2e-4
        bad = {k: v for k, v in errors.items() if v > limit}
        if bad:
            raise SystemExit(f"verification failed in {dtype}: {bad} (limit {limit})")
        times = _harness.interleaved([problem.runner(lib) for lib in LIBRARIES], samples)
        report["rows"].append({"dtype": dtype, "errors": errors, "samples": samples,
                               "times": {lib: _harness.stats(t) for lib, t in zip(LIBRARIES, times)}})
        print(f"  {dtype}: " + ", ".join(f"{lib} {np.median(t) * 1e3:.0f} ms" for lib, t in zip(LIBRARIES, times)),
              flush=True)
        del problem
    _harness.write_json(report, args.json)


# ---------------------------------------------------------------------------------------------
# memory: one fresh process per (library, dtype)


def memory_worker(args):
    problem = Problem(args.dtype, **shape(args.quick))
    run = problem.runner(args.library)
    baseline = _harness.peak_rss_bytes()
    run()
    print(json.dumps({"extra_mib": (_harness.peak_rss_bytes() - baseline) / _harness.MIB}))


def measure_memory(args, env):
    rows = []
    for dtype in args.dtypes.split(","):
        row = {"dtype": dtype}
        for library in LIBRARIES:
            probe = ["--memory-worker", "--library", library, "--dtype", dtype, *_harness.flags(args, "quick")]
            row[library] = _harness.run_probe(__file__, probe, env)["extra_mib"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# orchestration and report


def configurations(quick):
    inherited = dict(os.environ)
    unset = _harness.without_blas_vars(inherited)
    if "OPENBLAS_CORETYPE" in inherited:
        configs = [("as set", inherited), ("unset (env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)", unset)]
    else:
        configs = [("Haswell forced (the documented setting: OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512)",
                    _harness.haswell_forced(inherited)),
                   ("unset (env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)", unset)]
    return configs[:1] if quick else configs


def run_config(label, env, args):
    """This script's worker for one configuration; its JSON report."""
    print(f"== {label}", flush=True)
    return _harness.run_worker(__file__, ["--dtypes", args.dtypes, *_harness.flags(args, "quick", "samples")], env)


def _ms(s):
    return f"{s['min'] * 1e3:.0f} / **{s['median'] * 1e3:.0f}** / {s['max'] * 1e3:.0f}"


def _kernel(report):
    return ", ".join(b.split(" kernel=")[1].split(" ")[0] for b in report["blas"])


def render(results, memory, args):
    s = results[0][1]["shape"]
    lines = [
        "# Multi-head self-attention: npattn `mha` vs PyTorch CPU", "",
        "Generated by `python benchmarks/bench_mha.py" + (" --quick" if args.quick else "") + f"` on "
        f"{time.strftime('%Y-%m-%d')}. Shape: batch {s['batch']}, sequence {s['length']}, d_model {s['d_model']}, "
        f"{s['heads']} heads, no biases, no mask. One sample = forward + backward (output and the gradients "
        "w.r.t. the input and the four projection matrices, autodiff tape included). Method: "
        "shared/PERFORMANCE.md -- one process per BLAS configuration, every library verified against ours "
        "first, all warmed, samples interleaved with a 0.1 s sleep before each. Times: min / **median** / max "
        "in ms; ratio = our median / torch's median (< 1: faster than torch).", "",
        "`torch sdpa` = `F.linear` projections + `F.scaled_dot_product_attention` (fused CPU kernel, no L x L "
        "matrix stored); `torch mha` = `nn.MultiheadAttention(bias=False, batch_first=True)`, "
        "`need_weights=False`; `torch unfused` = the same module with `need_weights=True` (explicit bmm / "
        "softmax / bmm, storing the L x L weights like npattn). Target (issue 5, PERFORMANCE.md): within 2-3x of "
        "torch in float32.", "",
        "## Summary", "",
        *_harness.markdown_table(
            ("configuration", "BLAS kernel", "dtype", "ratio vs sdpa", "ratio vs mha", "ratio vs unfused"),
            [(label.split(" (")[0], _kernel(report), row["dtype"],
              *(f"{row['times']['ours']['median'] / row['times'][lib]['median']:.2f}x" for lib in LIBRARIES[1:]))
             for label, report in results for row in report["rows"]])]
    for label, report in results:
        header = ("dtype", "samples", "ours (ms)", "torch sdpa (ms)", "torch mha (ms)", "torch unfused (ms)",
                  "max rel. error sdpa / mha / unfused")
        table = [(row["dtype"], row["samples"], *(_ms(row["times"][lib]) for lib in LIBRARIES),
                  " / ".join(f"{row['errors'][lib]:.1e}" for lib in LIBRARIES[1:])) for row in report["rows"]]
        lines += ["", f"## {label}", "",
                  f"- BLAS: {'; '.join(report['blas'])}",
                  f"- environment: {', '.join(f'{k}={v}' for k, v in report['env'].items())}",
                  f"- torch {report['torch']}; numpy {report['numpy']}", "",
                  *_harness.markdown_table(header, table)]
    if memory:
        header = ("dtype", "ours", "torch sdpa", "torch mha", "torch unfused", "ours / sdpa", "ours / unfused")
        table = [(row["dtype"], *(f"{row[lib]:.0f}" for lib in LIBRARIES), f"{row['ours'] / row['torch sdpa']:.1f}x",
                  f"{row['ours'] / row['torch unfused']:.1f}x") for row in memory]
        lines += ["", "## Peak extra memory (MiB, fresh process per case, first configuration)", "",
                  *_harness.markdown_table(header, table)]
        lines += ["", "npattn stores the (B, h, L, L) attention weights for the backward pass (the tape keeps the "
                  "softmax output), as an unfused reference does; torch's fused kernel keeps only per-row "
                  "log-sum-exp statistics and recomputes the weights in its backward."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--samples", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.memory_worker:
        return memory_worker(args)
    configs = configurations(args.quick)
    results = [(label, run_config(label, env, args)) for label, env in configs]
    memory = None if args.no_memory else measure_memory(args, configs[0][1])
    _harness.write_text(args.output, render(results, memory, args))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
