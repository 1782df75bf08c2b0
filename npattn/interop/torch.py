"""PyTorch interop (needs ``torch``): state_dict conversion and side-by-side comparison.

npattn's parameter names *are* PyTorch ``state_dict`` names with PyTorch layouts, so conversion is a key
mapping (identity unless the module names its layers differently) and a dtype/device move.  Two layouts
differ and are converted here:

* ``torch.nn.MultiheadAttention`` (inside ``torch.nn.Transformer*Layer`` too) stores the Q/K/V projections
  fused as ``in_proj_weight`` = cat(W_q, W_k, W_v) and the output projection as ``out_proj``, where npattn's
  ``mha`` and ``transformer`` keep ``w_q/w_k/w_v/w_o`` (the paper's matrices, one per name).  Mechanisms
  listed in :data:`TORCH_NN_ATTENTION` get that layout both ways.
* Official modules that hold one layer under two names (APNB's shared ``f_query``/``f_key``): the
  mechanisms of :data:`OFFICIAL_LAYOUTS` import through their module's ``from_official_state_dict`` (the
  two entries must be equal tensors) and export through ``official_state_dict`` (the alias added back).

::

    from npattn.interop.torch import compare
    report = compare(my_torch_cbam, "cbam", x)          # runs both, forward and backward
    assert report.ok, report

``compare`` loads the module's state_dict into npattn parameters, runs both in the module's dtype
(use float64 for a golden comparison), feeds both the same random cotangent, and compares every tensor
(the rules are in :func:`compare`): it fails, rather than passes, when it could not compare something.
"""
from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field

import numpy as np

import autograd as ag

from ..layers import track_running_stats
from ..registry import apply_keywords, get
from ..self_attention import ann
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

#: Mechanisms whose official modules list one tensor under several names: the mechanism's module, with
#: ``OFFICIAL_ALIASES`` (official prefix -> npattn prefix), ``official_state_dict`` and ``from_official_state_dict``.
OFFICIAL_LAYOUTS = {"ann-apnb": ann}


# ---------------------------------------------------------------------------------------------
# names


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


def _unfused(name: str, key: str) -> list:
    """[(npattn key, part)] held by torch key ``key``: three row blocks of a fused ``in_proj_*``, else one."""
    match = _TORCH_PROJECTION.match(key) if name in TORCH_NN_ATTENTION else None
    if not match:
        return [(key, None)]
    prefix, which, kind = match.groups()
    if which == "out_proj.":
        return [(f"{prefix}w_o.{kind}", None)]
    return [(f"{prefix}{projection}.{kind}", part) for part, projection in enumerate(PROJECTIONS)]


def _unaliased(name: str, key: str) -> str:
    """The npattn key of an official alias (APNB's ``stages.0.f_query.*`` -> ``stages.0.f_key.*``), else ``key``."""
    layout = OFFICIAL_LAYOUTS.get(name)
    for alias, shared in (layout.OFFICIAL_ALIASES.items() if layout else ()):
        if key.startswith(alias):
            return shared + key[len(alias):]
    return key


def _checked_key_map(name: str, torch_keys, key_map: dict | None) -> dict:
    """``key_map`` after checking that every key it maps is one of the state_dict's (a KeyError otherwise)."""
    key_map = dict(key_map or {})
    unknown = [k for k in key_map if k not in torch_keys]
    if unknown:
        hints = {k: difflib.get_close_matches(k, list(torch_keys), n=1) for k in unknown}
        raise KeyError(f"{name}: key_map maps {', '.join(repr(k) for k in unknown)}, which the torch state_dict does "
                       "not have" + "".join(f"; {k!r}: did you mean {h[0]!r}?" for k, h in hints.items() if h))
    return key_map


def _plan(name: str, torch_keys, key_map: dict) -> dict:
    """npattn key -> [(torch key, part)]: every torch state_dict entry that holds (a block of) that tensor."""
    plan: dict = {}
    for key in torch_keys:
        for npattn_key, part in _unfused(name, _unaliased(name, key_map.get(key, key))):
            plan.setdefault(npattn_key, []).append((key, part))
    return plan


# ---------------------------------------------------------------------------------------------
# state_dict conversion


def _settings(mech, config: dict | None) -> dict:
    return {**mech.config, **(config or {})}


def _expected_params(mech, settings: dict) -> dict:
    """The parameters npattn's ``init`` makes for ``settings`` (only their names, shapes and kinds are used)."""
    try:
        return mech.init(np.random.default_rng(0), **settings)
    except TypeError as exc:
        raise TypeError(f"{mech.name}: config {settings} is not a configuration of init: {exc}") from None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def from_torch_state_dict(name: str, state_dict: dict, key_map: dict | None = None, config: dict | None = None) -> dict:
    """npattn parameters (backend arrays) for mechanism ``name`` from a torch ``state_dict``.

    ``key_map`` maps torch keys to npattn keys where they differ (applied first; mapping a key the
    state_dict does not have is a KeyError); fused attention tensors are split for the mechanisms of
    :data:`TORCH_NN_ATTENTION`, and official aliases resolved for those of :data:`OFFICIAL_LAYOUTS`.  Several
    torch entries that become one npattn tensor (an alias) must hold equal arrays, else a ValueError.  The
    result must be exactly the parameters npattn's ``init`` makes for the mechanism's default configuration
    updated with ``config`` (e.g. ``{"num_layers": 6}``, ``{"attn_bias": True}``), with their shapes:
    a missing or unknown key is a KeyError, a wrong shape a ValueError (no silent drops).
    """
    mech = get(name)
    key_map = _checked_key_map(name, state_dict, key_map)
    renamed, origin = {}, {}
    for key, value in state_dict.items():
        target, host = key_map.get(key, key), np.array(to_host(value), copy=True)
        if target in renamed:  # two torch entries mapped to one name: an alias, so one tensor
            if not _same(renamed[target], host):
                raise ValueError(f"{name}: key_map sends {origin[target]!r} and {key!r} to {target!r}, but they hold "
                                 "different arrays (one npattn tensor can only alias equal tensors)")
            continue
        renamed[target], origin[target] = host, key
    if name in OFFICIAL_LAYOUTS:
        renamed = OFFICIAL_LAYOUTS[name].from_official_state_dict(renamed)
    params = {}
    for key, array in renamed.items():
        parts = _unfused(name, key)
        if len(parts) > 1 and array.shape[0] % len(parts):
            raise ValueError(f"{name}: {key} has {array.shape[0]} rows, not a multiple of 3 (fused Q, K, V)")
        blocks = np.split(array, len(parts), axis=0) if len(parts) > 1 else [array]
        for (npattn_key, _), block in zip(parts, blocks):
            params[npattn_key] = ag.from_numpy(block.copy())  # a contiguous copy (0-d stays 0-d)
    _check_against_init(mech, params, _settings(mech, config))
    return params


def _check_against_init(mech, params: dict, settings: dict) -> None:
    expected = _expected_params(mech, settings)
    missing, unexpected = set(expected) - set(params), set(params) - set(expected)
    if missing or unexpected:
        raise KeyError(
            f"{mech.name}: state_dict does not match npattn's parameters for configuration {settings}; missing "
            f"{sorted(missing)}, unexpected {sorted(unexpected)} (pass key_map={{torch_key: npattn_key}} for "
            "other names, config={...} for another configuration)"
        )
    for key, value in expected.items():
        if tuple(params[key].shape) != tuple(value.shape):
            raise ValueError(f"{mech.name}: parameter {key!r} must have shape {tuple(value.shape)} for configuration "
                             f"{settings}, got {tuple(params[key].shape)} (pass config={{...}} with the configuration "
                             "the module was built with)")
        if (np.dtype(params[key].dtype).kind == "f") != (np.dtype(value.dtype).kind == "f"):
            raise TypeError(f"{mech.name}: parameter {key!r} must be of a {np.dtype(value.dtype).kind!r}-kind dtype "
                            f"like {np.dtype(value.dtype)}, got {np.dtype(params[key].dtype)}")


def to_torch_state_dict(params: dict, key_map: dict | None = None, name: str | None = None) -> dict:
    """A torch ``state_dict`` (CPU tensors) from npattn parameters; ``key_map`` maps npattn -> torch keys.

    With ``name`` in :data:`TORCH_NN_ATTENTION`, Q/K/V projections are fused into ``in_proj_*`` and
    ``w_o`` becomes ``out_proj`` (torch.nn.MultiheadAttention's layout); with ``name`` in
    :data:`OFFICIAL_LAYOUTS`, the official aliases are added (APNB's ``f_query`` = ``f_key``).
    """
    key_map = key_map or {}
    if name in OFFICIAL_LAYOUTS:
        params = OFFICIAL_LAYOUTS[name].official_state_dict(params)
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


# ---------------------------------------------------------------------------------------------
# compare


@dataclass
class Report:
    """Result of :func:`compare`: one row per compared tensor (or per thing that could not be compared)."""

    mechanism: str
    rows: list = field(default_factory=list)  # (what, ok, detail)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(ok for _, ok, _ in self.rows)

    @property
    def compared(self) -> list:
        """The names of the rows (``"output"``, ``"grad input 0"``, ``"grad fc1.weight"``, ``"running ..."``)."""
        return [what for what, _, _ in self.rows]

    def __str__(self) -> str:
        failed = sum(not ok for _, ok, _ in self.rows)
        verdict = "AGREE" if self.ok else f"DISAGREE ({failed} of {len(self.rows)} rows fail)"
        lines = [f"torch module (actual) vs npattn {self.mechanism!r} (expected): {verdict}; "
                 f"{len(self.rows)} tensors listed"]
        for what, ok, detail in self.rows:
            lines.append(f"  [{'ok' if ok else 'XX'}] {what}: {detail.splitlines()[0]}")
            lines += ["        " + line for line in detail.splitlines()[1:]]
        return "\n".join(lines)


def _same_tensor(a, b) -> bool:
    """True when torch tensors ``a`` and ``b`` are one tensor (the same object, or the same memory and view)."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype)


def compare(module, name: str, *inputs, train: bool = False, key_map: dict | None = None, config: dict | None = None,
            rtol: float = 1e-10, atol: float = 1e-12, seed: int = 0, equal_nan: bool = False, **options) -> Report:
    """Run torch ``module`` and npattn mechanism ``name`` on the same inputs and compare everything.

    ``inputs`` are NumPy arrays or torch tensors; gradients are taken w.r.t. every floating input and
    every module parameter (on a copy of the module: the caller's module, its mode, gradients and
    buffers are left as they were), for one random cotangent.  ``config`` is the configuration the
    module was built with (``init``'s keywords, e.g. ``{"bias": False}``); its structural entries reach
    ``apply`` too.  ``options`` go to the npattn ``apply``; ``key_map`` as in :func:`from_torch_state_dict`.

    The report has one row per tensor, and fails closed: ``output``; ``grad input i`` per floating
    input; ``grad <key>`` per npattn parameter held by a torch parameter (every one of them; a fused
    ``in_proj`` gradient is split into its Q/K/V rows; names that alias one npattn tensor must be one
    torch parameter, else a failing row); ``running <key>`` per buffer in train mode (the updated
    statistics) and ``buffer <key>`` in eval mode (unchanged by the forward pass); ``constant <key>`` for a
    buffer that ``init`` fixes for the configuration (FcaNet's DCT filters: the module's must be npattn's).
    Every torch state_dict entry must map to an npattn parameter and back, else :func:`from_torch_state_dict`'s
    KeyError.
    """
    mech = get(name)
    settings = _settings(mech, config)
    keywords = apply_keywords(mech, settings if config else {}, options)
    module = copy.deepcopy(module)  # train(), backward() and train-mode BN would change the caller's module
    state = module.state_dict(keep_vars=True)
    params = from_torch_state_dict(name, state, key_map, config)
    plan = _plan(name, state, _checked_key_map(name, state, key_map))
    torch_params = dict(module.named_parameters(remove_duplicate=False))
    for tensor in torch_params.values():
        tensor.requires_grad_(True)  # a frozen parameter's gradient is compared too

    host_inputs = [to_host(x) for x in inputs]
    out_t, torch_inputs, cotangent = _run_torch(module, host_inputs, train, seed)
    buffers_after = dict(module.named_buffers(remove_duplicate=False))

    float_idx = [i for i, x in enumerate(host_inputs) if x.dtype.kind == "f"]
    device_inputs = [ag.from_numpy(x) for x in host_inputs]
    float_keys = [k for k, v in params.items() if np.dtype(v.dtype).kind == "f"]

    def fn(float_params, *diff_inputs):
        full = list(device_inputs)
        for i, value in zip(float_idx, diff_inputs):
            full[i] = value
        return mech.apply({**params, **float_params}, *full, train=train, **keywords)

    with track_running_stats() as new_stats:
        out, pullback = ag.vjp(fn, {k: params[k] for k in float_keys}, *[device_inputs[i] for i in float_idx])
    grads = pullback(ag.from_numpy(cotangent))

    constants = _constant_buffers(mech, settings, params)
    report = Report(name)

    def add(what, torch_value, npattn_value):
        # the module under test is "actual", npattn (the reference) is "expected"
        ok, detail = _compare_arrays(torch_value, npattn_value, rtol=rtol, atol=atol, equal_nan=equal_nan)
        report.rows.append((what, ok, detail))

    add("output", out_t, out)
    for i, g in zip(float_idx, grads[1:]):
        grad = torch_inputs[i].grad
        add(f"grad input {i}", grad if grad is not None else torch.zeros_like(torch_inputs[i]), g)
    for key in params:
        sources = plan[key]
        label = key if [k for k, _ in sources] == [key] else f"{key} (torch {', '.join(k for k, _ in sources)})"
        tensors = [torch_params.get(k, buffers_after.get(k)) for k, _ in sources]
        if any(t is None for t in tensors):
            report.rows.append((f"tensor {label}", False, "a state_dict entry that is neither a parameter nor a "
                                "buffer of the module; nothing to compare"))
        elif any(not _same_tensor(t, tensors[0]) for t in tensors):
            report.rows.append((f"tensor {label}", False, "npattn holds one tensor here, the module separate ones "
                                "(not tied: equal now, but their gradients and updates are not one)"))
        elif all(k in torch_params for k, _ in sources):
            if key not in grads[0]:
                report.rows.append((f"grad {label}", False, f"npattn's {key} is not floating-point; no gradient"))
                continue
            grad = tensors[0].grad if tensors[0].grad is not None else torch.zeros_like(tensors[0])
            part = sources[0][1]
            if part is not None:  # this projection's rows of the fused in_proj gradient
                grad = torch.chunk(grad, len(PROJECTIONS), dim=0)[part]
            add(f"grad {label}", grad, grads[0][key])
        elif all(k in buffers_after for k, _ in sources):
            if train:  # npattn reports the new statistics; a buffer it leaves alone keeps its value
                add(f"running {label}", tensors[0], new_stats.get(key, params[key]))
            else:
                add(f"buffer {label} (eval: unchanged)", tensors[0], params[key])
            if key in constants:  # fixed by the configuration (FcaNet's DCT filters): loading it proves nothing
                add(f"constant {label} (npattn's init for config)", params[key], constants[key])
        else:
            report.rows.append((f"tensor {label}", False, "held by both parameters and buffers of the module"))
    for key in sorted(set(new_stats) - set(params)):
        report.rows.append((f"running {key}", False, "npattn updated a buffer the module does not have"))
    return report


_RUNNING_STATISTICS = (".running_mean", ".running_var", ".num_batches_tracked")


def _constant_buffers(mech, settings: dict, params: dict) -> dict:
    """npattn key -> the value ``init`` gives it for ``settings``, for the entries that do not depend on the seed
    (a fixed basis such as FcaNet's DCT filters) other than BatchNorm running statistics."""
    dtypes = {k: np.dtype(v.dtype) for k, v in params.items()}
    made = [mech.init(np.random.default_rng(seed), **settings) for seed in (0, 1)]
    return {k: ag.to_numpy(v).astype(dtypes[k]) for k, v in made[0].items()
            if not k.endswith(_RUNNING_STATISTICS) and np.array_equal(ag.to_numpy(v), ag.to_numpy(made[1][k]))}


def _run_torch(module, host_inputs: list, train: bool, seed: int):
    """(output, input tensors with .grad, cotangent) of the torch module, forward and backward."""
    module.train(train)
    torch_inputs = [torch.tensor(x, requires_grad=x.dtype.kind == "f") for x in host_inputs]
    out_t = module(*torch_inputs)
    if not isinstance(out_t, torch.Tensor):
        raise TypeError(f"compare: the module returned {type(out_t).__name__}, not one tensor; wrap it in a module "
                        "that returns the output npattn's apply returns")
    cotangent = np.random.default_rng(seed).standard_normal(tuple(out_t.shape)).astype(host_inputs[0].dtype)
    module.zero_grad(set_to_none=True)
    out_t.backward(torch.from_numpy(cotangent))
    return out_t, torch_inputs, cotangent
