"""PyTorch interop (needs ``torch``): state_dict conversion and side-by-side comparison.

npattn's parameter names *are* PyTorch ``state_dict`` names with PyTorch layouts, so conversion is a key
mapping (identity unless the module names its layers differently) and a dtype/device move.  One layout
differs and is converted here: ``torch.nn.MultiheadAttention`` (inside ``torch.nn.Transformer*Layer``
too) stores the Q/K/V projections fused as ``in_proj_weight`` = cat(W_q, W_k, W_v) and the output
projection as ``out_proj``, where npattn's ``mha`` and ``transformer`` keep ``w_q/w_k/w_v/w_o`` (the
paper's matrices, one per name).  Mechanisms listed in :data:`TORCH_NN_ATTENTION` get that layout both ways::

    from npattn.interop.torch import compare
    report = compare(my_torch_cbam, "cbam", x)          # runs both, forward and backward
    assert report.ok, report

``compare`` loads the module's state_dict into npattn parameters, runs both in the module's dtype
(use float64 for a golden comparison), feeds both the same random cotangent, and compares the
outputs, the input gradients and every parameter gradient.
"""
from __future__ import annotations

import re
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


#: Mechanisms whose attention parameters use torch.nn.MultiheadAttention's fused layout on the torch side.
TORCH_NN_ATTENTION = ("mha", "transformer")
PROJECTIONS = ("w_q", "w_k", "w_v")
_NPATTN_PROJECTION = re.compile(r"^(.*?)(w_q|w_k|w_v|w_o)\.(weight|bias)$")
_TORCH_PROJECTION = re.compile(r"^(.*?)(in_proj_|out_proj\.)(weight|bias)$")


def torch_key(name: str, key: str) -> tuple:
    """(torch ``state_dict`` key, part) of npattn parameter ``key`` of mechanism ``name``.

    ``part`` is None when the tensors are the same, else the index (0, 1, 2 = Q, K, V) of the equal
    row block of a fused ``in_proj_*`` tensor that holds it.
    """
    match = _NPATTN_PROJECTION.match(key) if name in TORCH_NN_ATTENTION else None
    if not match:
        return key, None
    prefix, projection, kind = match.groups()
    if projection == "w_o":
        return f"{prefix}out_proj.{kind}", None
    return f"{prefix}in_proj_{kind}", PROJECTIONS.index(projection)


def _split_torch_entry(name: str, key: str, array: np.ndarray) -> list:
    """[(npattn key, array)] for one torch state_dict entry (three for a fused in_proj tensor)."""
    match = _TORCH_PROJECTION.match(key) if name in TORCH_NN_ATTENTION else None
    if not match:
        return [(key, array)]
    prefix, which, kind = match.groups()
    if which == "out_proj.":
        return [(f"{prefix}w_o.{kind}", array)]
    if array.shape[0] % 3:
        raise ValueError(f"{name}: {key} has {array.shape[0]} rows, not a multiple of 3 (fused Q, K, V)")
    return [(f"{prefix}{projection}.{kind}", block)
            for projection, block in zip(PROJECTIONS, np.split(array, 3, axis=0))]


def from_torch_state_dict(name: str, state_dict: dict, key_map: dict | None = None, config: dict | None = None) -> dict:
    """npattn parameters (backend arrays) for mechanism ``name`` from a torch ``state_dict``.

    ``key_map`` maps torch keys to npattn keys where they differ (applied first); fused attention tensors
    are split for the mechanisms of :data:`TORCH_NN_ATTENTION`.  Every parameter npattn's ``init`` makes
    for the mechanism's default configuration updated with ``config`` (e.g. ``{"num_layers": 6}``,
    ``{"attn_bias": True}``) must be found, and unknown keys are an error (no silent drops).
    """
    mech = get(name)
    key_map = key_map or {}
    params = {}
    for key, value in state_dict.items():
        host = value.detach().cpu().numpy()
        for npattn_key, array in _split_torch_entry(name, key_map.get(key, key), host):
            params[npattn_key] = ag.from_numpy(np.array(array, copy=True))
    settings = {**mech.config, **(config or {})}
    expected = set(mech.init(np.random.default_rng(0), **settings))
    missing, unexpected = expected - set(params), set(params) - expected
    if missing or unexpected:
        raise KeyError(
            f"{name}: state_dict does not match npattn's parameters for configuration {settings}; missing "
            f"{sorted(missing)}, unexpected {sorted(unexpected)} (pass key_map={{torch_key: npattn_key}} for "
            "other names, config={...} for another configuration)"
        )
    return params


def to_torch_state_dict(params: dict, key_map: dict | None = None, name: str | None = None) -> dict:
    """A torch ``state_dict`` (CPU tensors) from npattn parameters; ``key_map`` maps npattn -> torch keys.

    With ``name`` in :data:`TORCH_NN_ATTENTION`, Q/K/V projections are fused into ``in_proj_*`` and
    ``w_o`` becomes ``out_proj`` (torch.nn.MultiheadAttention's layout).
    """
    key_map = key_map or {}
    state, fused = {}, {}
    for key, value in params.items():
        target, part = torch_key(name, key) if name else (key, None)
        if part is None:
            state[key_map.get(key, target)] = torch.from_numpy(ag.to_numpy(value).copy())
        else:
            fused.setdefault(target, [None] * len(PROJECTIONS))[part] = ag.to_numpy(value)
    for target, parts in fused.items():
        if any(p is None for p in parts):
            raise KeyError(f"{name}: {target} needs all of {PROJECTIONS}; some are missing")
        state[key_map.get(target, target)] = torch.from_numpy(np.concatenate(parts, axis=0))
    return state


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


def compare(module, name: str, *inputs, train: bool = False, key_map: dict | None = None, config: dict | None = None,
            rtol: float = 1e-10, atol: float = 1e-12, seed: int = 0, **options) -> Report:
    """Run torch ``module`` and npattn mechanism ``name`` on the same inputs and compare everything.

    ``inputs`` are NumPy arrays or torch tensors; gradients are taken w.r.t. every floating input and
    every module parameter, for one random cotangent.  ``options`` go to the npattn ``apply``; ``key_map``
    and ``config`` as in :func:`from_torch_state_dict`.
    """
    mech = get(name)
    host_inputs = [to_host(x) for x in inputs]
    params = from_torch_state_dict(name, module.state_dict(), key_map, config)
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
        target, part = torch_key(name, key)
        target = inverse.get(target, target)
        if target in torch_params:
            tensor = torch_params[target]
            grad = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
            if part is not None:  # this projection's rows of the fused in_proj gradient
                grad = torch.chunk(grad, len(PROJECTIONS), dim=0)[part]
            add(f"grad {key if part is not None else target}", grad, grads[0][key])
    return report
