"""PyTorch interop (needs ``torch``): state_dict conversion and side-by-side comparison.

npattn's parameter names *are* PyTorch ``state_dict`` names with PyTorch layouts, so conversion is a key
mapping (identity unless the module names its layers differently) and a dtype/device move::

    from npattn.interop.torch import compare
    report = compare(my_torch_cbam, "cbam", x)          # runs both, forward and backward
    assert report.ok, report

``compare`` loads the module's state_dict into npattn parameters, runs both in the module's dtype
(use float64 for a golden comparison), feeds both the same random cotangent, and compares the
outputs, the input gradients and every parameter gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import autograd as ag

from ..registry import get
from ..testing import compare as _compare_arrays
from ..testing import to_host

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("npattn.interop.torch needs PyTorch: pip install 'npattn[torch]'") from exc


def from_torch_state_dict(name: str, state_dict: dict, key_map: dict | None = None) -> dict:
    """npattn parameters (backend arrays) for mechanism ``name`` from a torch ``state_dict``.

    ``key_map`` maps torch keys to npattn keys where they differ; every npattn parameter of the
    mechanism's default layout must be found, and unknown keys are an error (no silent drops).
    """
    mech = get(name)
    key_map = key_map or {}
    params = {}
    for key, value in state_dict.items():
        params[key_map.get(key, key)] = ag.from_numpy(value.detach().cpu().numpy().copy())
    expected = set(mech.default_params())
    missing, unexpected = expected - set(params), set(params) - expected
    if missing or unexpected:
        raise KeyError(
            f"{name}: state_dict does not match npattn's parameters; missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)} (pass key_map={{torch_key: npattn_key}})"
        )
    return params


def to_torch_state_dict(params: dict, key_map: dict | None = None) -> dict:
    """A torch ``state_dict`` (CPU tensors) from npattn parameters; ``key_map`` maps npattn -> torch keys."""
    key_map = key_map or {}
    return {key_map.get(k, k): torch.from_numpy(ag.to_numpy(v).copy()) for k, v in params.items()}


@dataclass
class Report:
    """Result of :func:`compare`: one line per compared tensor."""

    mechanism: str
    rows: list = field(default_factory=list)  # (what, ok, detail)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.rows)

    def __str__(self) -> str:
        lines = [f"torch module (actual) vs npattn {self.mechanism!r} (expected): {'AGREE' if self.ok else 'DISAGREE'}"]
        for what, ok, detail in self.rows:
            lines.append(f"  [{'ok' if ok else 'XX'}] {what}: {detail.splitlines()[0]}")
            lines += ["        " + line for line in detail.splitlines()[1:]]
        return "\n".join(lines)


def compare(module, name: str, *inputs, train: bool = False, key_map: dict | None = None, rtol: float = 1e-10,
            atol: float = 1e-12, seed: int = 0, **options) -> Report:
    """Run torch ``module`` and npattn mechanism ``name`` on the same inputs and compare everything.

    ``inputs`` are NumPy arrays or torch tensors; gradients are taken w.r.t. every floating input and
    every module parameter, for one random cotangent.  ``options`` go to the npattn ``apply``.
    """
    mech = get(name)
    host_inputs = [to_host(x) for x in inputs]
    params = from_torch_state_dict(name, module.state_dict(), key_map)
    inverse = {v: k for k, v in (key_map or {}).items()}

    # torch side
    module.train(train)
    torch_inputs = [torch.tensor(x, requires_grad=x.dtype.kind == "f") for x in host_inputs]
    out_t = module(*torch_inputs)
    cotangent = np.random.default_rng(seed).standard_normal(tuple(out_t.shape)).astype(host_inputs[0].dtype)
    module.zero_grad(set_to_none=True)
    out_t.backward(torch.from_numpy(cotangent))

    # npattn side
    float_idx = [i for i, x in enumerate(host_inputs) if x.dtype.kind == "f"]
    device_inputs = [ag.from_numpy(x) for x in host_inputs]
    float_keys = [k for k, v in params.items() if np.dtype(v.dtype).kind == "f"]

    def fn(float_params, *diff_inputs):
        full = list(device_inputs)
        for i, value in zip(float_idx, diff_inputs):
            full[i] = value
        return mech.apply({**params, **float_params}, *full, train=train, **options)

    out, pullback = ag.vjp(fn, {k: params[k] for k in float_keys}, *[device_inputs[i] for i in float_idx])
    grads = pullback(ag.from_numpy(cotangent))

    report = Report(name)

    def add(what, torch_value, npattn_value):
        # the module under test is "actual", npattn (the reference) is "expected"
        ok, detail = _compare_arrays(torch_value, npattn_value, rtol=rtol, atol=atol)
        report.rows.append((what, ok, detail))

    add("output", out_t, out)
    for i, g in zip(float_idx, grads[1:]):
        add(f"grad input {i}", torch_inputs[i].grad, g)
    torch_params = dict(module.named_parameters())
    for key in float_keys:
        torch_key = inverse.get(key, key)
        if torch_key in torch_params:
            expected = torch_params[torch_key].grad
            add(f"grad {torch_key}", expected if expected is not None else torch.zeros_like(torch_params[torch_key]),
                grads[0][key])
    return report
