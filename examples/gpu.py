"""The same computation on NumPy and on CuPy (NPATTN_BACKEND=cupy), timed side by side.

    python examples/gpu.py              # conv3x3 + SE on (8, 128, 64, 64) float32, forward + backward
    python examples/gpu.py --quick      # small sizes (CI: on a machine without a GPU it says so and exits 0)

The backend is chosen once per process, so each backend runs in its own subprocess of this script
(``--worker``); both compute the same seeded inputs and the script checks that they agree.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def worker(size: int, channels: int, repeats: int) -> dict:
    import autograd as ag
    import npattn

    mech = npattn.get("se")
    params = mech.init(np.random.default_rng(0), channels, reduction=4, dtype=np.float32)
    rng = np.random.default_rng(1)
    x = ag.from_numpy(rng.standard_normal((8, channels, size, size)).astype(np.float32))
    weight = ag.from_numpy((rng.standard_normal((channels, channels, 3, 3)) / (3 * channels ** 0.5)).astype(np.float32))

    def loss(params, weight, x):
        h = ag.relu(ag.conv2d(x, weight, padding=1))
        return ag.mean(mech.apply(params, h) ** 2)

    step = ag.value_and_grad(loss, argnums=(0, 1))
    value, _ = step(params, weight, x)  # warm-up (CuPy compiles kernels on first use)
    times = []
    for _ in range(repeats):
        if ag.backend.name == "cupy":
            ag.xp.cuda.Device().synchronize()
        start = time.perf_counter()
        value, grads = step(params, weight, x)
        float(value)  # forces completion on the device
        times.append(time.perf_counter() - start)
    return {"backend": ag.backend.name, "loss": float(value), "median_s": float(np.median(times))}


def run(backend: str, args) -> dict | str:
    env = {**os.environ, "NPATTN_BACKEND": backend}
    cmd = [sys.executable, __file__, "--worker", "--size", str(args.size), "--channels", str(args.channels),
           "--repeats", str(args.repeats)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.size, args.channels, args.repeats)))
        return 0
    if args.quick:
        args.size, args.channels, args.repeats = 16, 32, 2
    cpu = run("numpy", args)
    if isinstance(cpu, str):
        print(f"numpy run failed: {cpu}")
        return 1
    print(f"numpy: loss {cpu['loss']:.6f}, forward+backward {cpu['median_s'] * 1e3:.1f} ms (median)")
    gpu = run("cupy", args)
    if isinstance(gpu, str):
        print(f"cupy: not available here ({gpu})")
        return 0
    print(f"cupy:  loss {gpu['loss']:.6f}, forward+backward {gpu['median_s'] * 1e3:.1f} ms (median), "
          f"speed-up {cpu['median_s'] / gpu['median_s']:.1f}x")
    if not np.isclose(cpu["loss"], gpu["loss"], rtol=1e-4):
        print("the two backends disagree")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
