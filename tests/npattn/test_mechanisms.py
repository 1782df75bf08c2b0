"""The per-mechanism test matrix: every registered mechanism, the same checks.

Adding a mechanism to the registry adds it here: output shape/dtype, determinism, float32 vs float64,
gradcheck (fast, float64) w.r.t. inputs and every parameter (eval and, with BatchNorm, train mode),
BatchNorm running statistics and untouched caller arrays, and clear errors for bad input.
"""
import numpy as np
import pytest

import autograd as ag
import npattn
from tests.conftest import host

MECHANISMS = npattn.mechanisms()
IDS = [m.name for m in MECHANISMS]


def _inputs(mech, dtype=np.float64, seed=7):
    return mech.example_input(np.random.default_rng(seed), dtype=dtype)


def _params(mech, dtype=np.float64, seed=0):
    return mech.init(np.random.default_rng(seed), dtype=dtype, **mech.config)


def _has_bn(params):
    return any(k.endswith("running_mean") for k in params)


def _float_keys(params):
    return [k for k, v in params.items() if np.dtype(v.dtype).kind == "f"]


def _diff_inputs(mech, inputs):
    idx = mech.differentiable_inputs
    if idx is None:
        idx = tuple(i for i, x in enumerate(inputs) if np.dtype(x.dtype).kind == "f")
    return idx


def _snapshot(tree):
    return {k: host(v).copy() for k, v in tree.items()} if isinstance(tree, dict) else [host(v).copy() for v in tree]


def test_registry_is_populated():
    assert len(MECHANISMS) >= 1
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_entry_contract(mech):
    assert mech.name == mech.name.lower() and mech.family in npattn.FAMILIES
    assert mech.paper.year > 1900 and mech.paper.authors and mech.paper.venue
    assert npattn.get(mech.name) is mech
    assert mech.apply_fn.__doc__ and mech.init.__doc__, "public functions need docstrings"
    assert ".".join(mech.module.split(".")[:2]).startswith("npattn.")


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_output_shape_and_dtype(mech):
    for dtype in (np.float64, np.float32):
        params = _params(mech, dtype)
        for key in _float_keys(params):
            assert params[key].dtype == dtype, f"{key} has dtype {params[key].dtype}, expected {dtype}"
        out = mech.apply(params, *_inputs(mech, dtype))
        assert isinstance(out, ag.Tensor)
        assert out.dtype == dtype
        assert np.all(np.isfinite(host(out)))


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_deterministic(mech):
    p1, p2 = _params(mech), _params(mech)
    assert p1.keys() == p2.keys()
    for k in p1:
        assert np.array_equal(host(p1[k]), host(p2[k])), k
    a = host(mech.apply(p1, *_inputs(mech)))
    b = host(mech.apply(p2, *_inputs(mech)))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_float32_agrees_with_float64(mech):
    out64 = host(mech.apply(_params(mech, np.float64), *_inputs(mech, np.float64)))
    out32 = host(mech.apply(_params(mech, np.float32), *_inputs(mech, np.float32)))
    scale = max(1.0, float(np.abs(out64).max()))
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-4 * scale)


def _loss_fn(mech, inputs, idx, train):
    def f(params, *diff):
        full = list(inputs)
        for i, value in zip(idx, diff):
            full[i] = value
        return mech.apply(params, *full, train=train)

    return f


def _off_kinks(params, seed=3):
    """``params`` with every BatchNorm's running statistics moved off their init values (eval mode).

    At PyTorch's init (bias 0, running mean 0, running var 1) an eval-mode BN after a ReLU maps a pixel the
    ReLU zeroed to exactly 0, the next ReLU's kink, where finite differences see half a slope (OCR's f_pixel
    did: gradcheck's fast mode compares J v per output and caught it).  DESIGN.md: tests draw inputs away
    from kinks.  Training mode normalises with batch statistics and is unaffected.
    """
    rng = np.random.default_rng(seed)
    moved = dict(params)
    for key in params:
        if key.endswith("running_mean"):
            shape, dtype = tuple(params[key].shape), np.dtype(params[key].dtype)
            moved[key] = ag.from_numpy(rng.uniform(-0.5, 0.5, shape).astype(dtype))
            var_key = key[: -len("running_mean")] + "running_var"
            moved[var_key] = ag.from_numpy(rng.uniform(0.5, 1.5, shape).astype(dtype))
    return moved


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_gradcheck_eval(mech):
    params, inputs = _off_kinks(_params(mech)), _inputs(mech)
    idx = _diff_inputs(mech, inputs)
    assert ag.gradcheck(_loss_fn(mech, inputs, idx, False), params, *[inputs[i] for i in idx],
                        mode="fast", n_directions=3)


@pytest.mark.parametrize("mech", [m for m in MECHANISMS if _has_bn(_params(m))],
                         ids=[m.name for m in MECHANISMS if _has_bn(_params(m))])
def test_gradcheck_train(mech):
    params, inputs = _params(mech), _inputs(mech)
    idx = _diff_inputs(mech, inputs)
    assert ag.gradcheck(_loss_fn(mech, inputs, idx, True), params, *[inputs[i] for i in idx],
                        mode="fast", n_directions=3)


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_caller_arrays_untouched(mech):
    params, inputs = _params(mech), _inputs(mech)
    before_p, before_x = _snapshot(params), _snapshot(list(inputs))
    idx = _diff_inputs(mech, inputs)
    floats = {k: params[k] for k in _float_keys(params)}  # integer buffers (num_batches_tracked) have no gradient
    for train in (False, True):
        with npattn.track_running_stats():
            ag.grad(lambda fp: ag.sum(mech.apply({**params, **fp}, *inputs, train=train,
                                                 **_rng_kw(mech, train))))(floats)
    for k in params:
        assert np.array_equal(host(params[k]), before_p[k]), f"parameter {k} was modified"
    for i, x in enumerate(inputs):
        assert np.array_equal(host(x), before_x[i]), f"input {i} was modified"
    assert idx is not None


def _rng_kw(mech, train):
    return {"rng": np.random.default_rng(3)} if (mech.stochastic and train) else {}


@pytest.mark.parametrize("mech", [m for m in MECHANISMS if _has_bn(_params(m))],
                         ids=[m.name for m in MECHANISMS if _has_bn(_params(m))])
def test_batchnorm_train_vs_eval(mech):
    params, inputs = _params(mech), _inputs(mech)
    bn_prefixes = [k[: -len(".running_mean")] for k in params if k.endswith(".running_mean")]
    with npattn.track_running_stats() as new_stats:
        y_train = host(mech.apply(params, *inputs, train=True))
    # every BN layer reports new statistics, and the counter moves by one
    for prefix in bn_prefixes:
        assert f"{prefix}.running_mean" in new_stats, f"{prefix} did not report running stats"
        assert not np.array_equal(host(new_stats[f"{prefix}.running_mean"]), host(params[f"{prefix}.running_mean"]))
        tracked = f"{prefix}.num_batches_tracked"
        assert int(host(new_stats[tracked])) == int(host(params[tracked])) + 1
        var = host(new_stats[f"{prefix}.running_var"])
        assert np.all(var > 0)
    y_eval = host(mech.apply(params, *inputs, train=False))
    assert not np.allclose(y_train, y_eval), "train and eval mode should differ with BatchNorm"
    # outside a tracking block nothing is collected and nothing changes
    mech.apply(params, *inputs, train=True)


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_bad_input_wrong_ndim(mech):
    params, inputs = _params(mech), list(_inputs(mech))
    inputs[0] = inputs[0][None]
    with pytest.raises(ValueError, match=mech.name.split("-")[0]):
        mech.apply(params, *inputs)


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_bad_input_integer_dtype(mech):
    params, inputs = _params(mech), list(_inputs(mech))
    inputs[0] = inputs[0].astype(np.int64)
    with pytest.raises(TypeError, match=mech.name.split("-")[0]):
        mech.apply(params, *inputs)


@pytest.mark.parametrize("mech", [m for m in MECHANISMS if m.channel_axis is not None],
                         ids=[m.name for m in MECHANISMS if m.channel_axis is not None])
def test_bad_input_wrong_channels(mech):
    params, inputs = _params(mech), list(_inputs(mech))
    x = inputs[0]
    inputs[0] = ag.xp.concatenate([x, x[(slice(None),) * mech.channel_axis + (slice(0, 1),)]], axis=mech.channel_axis)
    with pytest.raises(ValueError, match=mech.name.split("-")[0]):
        mech.apply(params, *inputs)


@pytest.mark.parametrize("mech", [m for m in MECHANISMS if m.min_spatial > 1],
                         ids=[m.name for m in MECHANISMS if m.min_spatial > 1])
def test_bad_input_too_small(mech):
    params, inputs = _params(mech), list(_inputs(mech))
    x = inputs[0]
    small = mech.min_spatial - 1
    inputs[0] = x[..., :small, :small]
    with pytest.raises(ValueError, match=mech.name.split("-")[0]):
        mech.apply(params, *inputs)


def test_unknown_name_suggests():
    with pytest.raises(KeyError, match="did you mean"):
        npattn.get(IDS[0] + "x")


# ---------------------------------------------------------------------------------------------
# The parameter contract (npattn.params): apply reads exactly the keys init makes, checks their shapes,
# and names the mechanism and the key in every error.

def _name_pattern(mech):
    return mech.name.split("-")[0]


#: Registry-wide checks that are wrong for an entry *by its semantics* (the check is not weakened for it):
#: {(test, entry): reason}.  Each reason names where the entry's own test covers the point instead.
EXEMPT = {
    ("nan_input", "ram"): "hard attention reads only the glimpsed patches and the example's NaN pixel lies outside "
                          "all three (test_origins_vision.py::test_ram_nan_reaches_the_output_only_inside_a_glimpse)",
}

#: Entries whose init makes no parameters: there is no key to misspell or to give another dtype (an unknown
#: key is still checked for them).  Each entry says why; the tests assert the dict really is empty.
PARAMETER_FREE = {
    "ge-theta-minus": "GE-theta-minus gathers by average pooling; init returns {}",
    "itti": "a fixed saliency model; an extra key is a KeyError saying it has none "
            "(test_origins_vision.py::test_itti_rejects_any_parameter)",
    "simam": "SimAM is parameter-free (official simam_module); init returns {} "
             "(test_cnn_beyond.py::test_simam_rejects_parameters_and_bad_lambda)",
}


def _skip_if_exempt(test, mech):
    reason = EXEMPT.get((test, mech.name))
    if reason:
        pytest.skip(f"exempt: {reason}")


def test_exemptions_name_registered_entries_and_real_tests():
    names = set(IDS)
    tests = {name for name in globals() if name.startswith("test_")}
    for test, entry in EXEMPT:
        assert entry in names, f"EXEMPT names {entry!r}, which is not registered"
        assert any(test in name for name in tests), f"EXEMPT names test {test!r}, which does not exist"
    assert set(PARAMETER_FREE) <= names


def _parameter_free(mech, params) -> bool:
    if mech.name in PARAMETER_FREE:
        assert not params, f"{mech.name} is in PARAMETER_FREE but init made {sorted(params)}"
        return True
    return False


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_every_missing_key_is_a_key_error(mech):
    params, inputs = _params(mech), _inputs(mech)
    for key in params:
        partial = {k: v for k, v in params.items() if k != key}
        with pytest.raises(KeyError) as info:
            mech.apply(partial, *inputs)
        message = str(info.value)
        assert _name_pattern(mech) in message and repr(key) in message, f"dropping {key!r}: {message}"


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_unknown_key_is_a_key_error_with_a_suggestion(mech):
    params, inputs = _params(mech), _inputs(mech)
    if _parameter_free(mech, params):
        with pytest.raises(KeyError, match=f"{_name_pattern(mech)}.*'extra_layer.weight'"):
            mech.apply({"extra_layer.weight": ag.from_numpy(np.ones(3))}, *inputs)
        return
    key = sorted(params)[0]
    with pytest.raises(KeyError, match=f"{_name_pattern(mech)}.*'extra_layer.weight'"):
        mech.apply({**params, "extra_layer.weight": params[key]}, *inputs)
    # a misspelt key: the missing one is named, and the message points at the misspelling
    typo = key[:-2] + key[-1] + key[-2]
    renamed = {(typo if k == key else k): v for k, v in params.items()}
    with pytest.raises(KeyError) as info:
        mech.apply(renamed, *inputs)
    assert repr(key) in str(info.value) and repr(typo) in str(info.value), str(info.value)


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_every_wrong_shaped_parameter_names_a_parameter(mech):
    params, inputs = _params(mech), _inputs(mech)
    for key, value in params.items():
        if value.ndim == 0:
            wrong = value[None]
        else:
            wrong = ag.xp.concatenate([value, value[:1]], axis=0)
        with pytest.raises(ValueError, match=rf"{_name_pattern(mech)}.*parameter '.*' must have shape") as info:
            mech.apply({**params, key: wrong}, *inputs)
        assert "got" in str(info.value), f"{key}: {info.value}"


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_parameters_of_another_dtype_are_a_type_error(mech):
    params, inputs = _params(mech), _inputs(mech)
    if _parameter_free(mech, params):
        pytest.skip(PARAMETER_FREE[mech.name])
    key = _float_keys(params)[-1]
    with pytest.raises(TypeError, match=rf"{_name_pattern(mech)}.*float32"):
        mech.apply({**params, key: params[key].astype(np.float32)}, *inputs)
    with pytest.raises(TypeError, match=rf"{_name_pattern(mech)}.*{key}"):
        mech.apply({**params, key: params[key].astype(np.int64)}, *inputs)


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_grad_over_the_whole_parameter_dict(mech):
    """``ag.grad(loss)(params)`` works with integer buffers in the dict (their gradient is None)."""
    params, inputs = _params(mech), _inputs(mech)
    grads = ag.grad(lambda p: ag.sum(mech.apply(p, *inputs)))(params)
    assert grads.keys() == params.keys()
    for key, value in params.items():
        if np.dtype(value.dtype).kind == "f":
            assert grads[key].shape == value.shape
        else:
            assert grads[key] is None, key
    trainable = npattn.trainable(params)
    assert not any(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in trainable)
    grads = ag.grad(lambda p: ag.sum(mech.apply({**params, **p}, *inputs)))(trainable)
    assert grads.keys() == trainable.keys()


def _batch_slice(mech, inputs, stop):
    """Every input cut to its first ``stop`` samples along the batch axis of the first input (axis 0)."""
    batch = inputs[0].shape[0]
    return [x[:stop] if getattr(x, "ndim", 0) and x.shape[0] == batch else x for x in inputs]


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_batch_of_one_and_of_zero(mech):
    params, inputs = _params(mech), _inputs(mech)
    full = host(mech.apply(params, *inputs))
    one = host(mech.apply(params, *_batch_slice(mech, inputs, 1)))
    np.testing.assert_allclose(one, full[:1], rtol=1e-12, atol=1e-12)
    empty = mech.apply(params, *_batch_slice(mech, inputs, 0))
    assert empty.shape == (0,) + full.shape[1:]
    empty_inputs = _batch_slice(mech, inputs, 0)
    grads = ag.grad(lambda p: ag.sum(mech.apply({**params, **p}, *empty_inputs)))(npattn.trainable(params))
    for key, g in grads.items():
        assert np.all(host(g) == 0), f"{key}: an empty batch gives a zero gradient"


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_read_only_and_non_contiguous_arrays(mech):
    params, inputs = _params(mech), _inputs(mech)
    expected = host(mech.apply(params, *inputs))
    if ag.backend.name == "numpy":
        frozen = {}
        for k, v in params.items():
            v = v.copy()
            v.flags.writeable = False
            frozen[k] = v
        ro_inputs = []
        for x in inputs:
            x = np.array(x)
            x.flags.writeable = False
            ro_inputs.append(x)
        np.testing.assert_array_equal(host(mech.apply(frozen, *ro_inputs)), expected)
    # the first input as a non-contiguous view with the same values
    x = inputs[0]
    strided = ag.xp.flip(ag.xp.flip(x, axis=-1).copy(), axis=-1)
    assert np.array_equal(host(strided), host(x))
    np.testing.assert_allclose(host(mech.apply(params, strided, *inputs[1:])), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mech", MECHANISMS, ids=IDS)
def test_nan_input_reaches_the_output(mech):
    """A NaN in the input never comes back as a finite, silently wrong result everywhere."""
    _skip_if_exempt("nan_input", mech)
    params, inputs = _params(mech), list(_inputs(mech))
    x = host(inputs[0]).copy()
    x.flat[x.size // 2] = np.nan
    inputs[0] = ag.from_numpy(x)
    out = host(mech.apply(params, *inputs))
    assert np.isnan(out).any()


# ---------------------------------------------------------------------------------------------
# training on an empty batch (torch's semantics): empty output, zero gradients, running statistics unchanged
# and num_batches_tracked + 1 (the module counts the call)

_WITH_BN = [m for m in npattn.mechanisms() if any(k.endswith("running_mean") for k in m.default_params())]


@pytest.mark.parametrize("mech", _WITH_BN, ids=lambda m: m.name)
def test_training_on_an_empty_batch(mech):
    params = mech.default_params()
    inputs = mech.example_input(np.random.default_rng(0))
    empty = [ag.from_numpy(np.zeros((0,) + tuple(x.shape[1:]))) for x in inputs]
    trainable = npattn.trainable(params)
    with npattn.track_running_stats() as stats:
        out, grads = ag.value_and_grad(lambda p: ag.sum(mech.apply({**params, **p}, *empty, train=True)))(trainable)
    assert float(host(out)) == 0.0
    for key, g in grads.items():
        assert np.array_equal(host(g), np.zeros(params[key].shape)), key
    bn = [k[: -len(".running_mean")] for k in params if k.endswith(".running_mean")]
    assert bn and {k.rsplit(".", 1)[0] for k in stats} == set(bn)
    for prefix in bn:
        for leaf in ("running_mean", "running_var"):
            np.testing.assert_array_equal(host(stats[f"{prefix}.{leaf}"]), host(params[f"{prefix}.{leaf}"]))
        count = f"{prefix}.num_batches_tracked"
        assert int(host(stats[count])) == int(host(params[count])) + 1
    full = mech.apply(params, *inputs).shape
    assert mech.apply(params, *empty, train=True).shape == (0,) + tuple(full[1:])
