"""`npattn verify` fails closed: incomplete, edited, swapped or malformed golden files never pass.

Each test writes a correct file, breaks it in one way, and checks the verdict: ERROR (a malformed or
inconsistent file) or FAIL (a disagreement), a non-zero exit status, and a one-line reason without a
traceback.  The correct file passes (so each failure is caused by the one break).
"""
import json

import numpy as np
import pytest

import npattn
from npattn import cli, golden


def _arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _save(path, arrays, **meta_changes):
    meta = json.loads(str(arrays["meta"]))
    meta.update(meta_changes)
    np.savez(path, **{**arrays, "meta": np.array(json.dumps(meta))})


@pytest.fixture
def se_file(tmp_path):
    return golden.write("se", str(tmp_path))


def _verdict(path, capsys):
    """(exit status, the one printed line) of `npattn verify path`."""
    status = cli.main(["verify", str(path)])
    out = capsys.readouterr().out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    return status, out.strip()


def _error(path, capsys, *words):
    status, line = _verdict(path, capsys)
    assert status == 1 and line.startswith(f"ERROR {path}: "), line
    for word in words:
        assert word in line, line
    return line


def test_a_correct_file_passes_and_lists_what_it_compared(se_file, capsys):
    status, line = _verdict(se_file, capsys)
    assert status == 0 and line.startswith("ok"), line
    assert "output and 5 gradients compared" in line and "tolerance 1e-09" in line  # grad.input.0 + 4 params
    result = golden.verify(se_file)
    assert result.compared == ("output", "grad.input.0", "grad.param.fc1.weight", "grad.param.fc1.bias",
                               "grad.param.fc2.weight", "grad.param.fc2.bias")


@pytest.mark.parametrize("entry", ["output", "cotangent", "grad.input.0", "grad.param.fc1.bias", "param.fc2.weight",
                                   "input.0"])
def test_a_file_with_an_entry_removed_is_an_error(se_file, capsys, entry):
    arrays = _arrays(se_file)
    del arrays[entry]
    np.savez(se_file, **arrays)
    _error(se_file, capsys, entry.split(".", 1)[-1] if entry.startswith("param.") else entry)


def test_a_file_with_an_entry_it_should_not_hold_is_an_error(se_file, capsys):
    arrays = _arrays(se_file)
    arrays["grad.param.fc3.weight"] = arrays["grad.param.fc1.weight"]
    np.savez(se_file, **arrays)
    _error(se_file, capsys, "unexpected ['grad.param.fc3.weight']")
    del arrays["grad.param.fc3.weight"]
    arrays["grad_param.fc1.weight"] = arrays["grad.param.fc1.weight"]  # misspelt: would never be compared
    np.savez(se_file, **arrays)
    _error(se_file, capsys, "outside the golden format: ['grad_param.fc1.weight']")


@pytest.mark.parametrize("name", npattn.names())
def test_every_mechanism_verifies_and_fails_without_a_gradient(tmp_path, name, capsys):
    path = golden.write(name, str(tmp_path))
    assert golden.verify(path).ok
    arrays = _arrays(path)
    grads = sorted(k for k in arrays if k.startswith("grad."))
    assert grads, f"{name}: a golden file with no gradient entries"
    for removed in (grads[0], grads[-1]):
        np.savez(path, **{k: v for k, v in arrays.items() if k != removed})
        _error(path, capsys, removed)


def test_buffer_gradients_are_entries_too(tmp_path, capsys):
    path = golden.write("cbam", str(tmp_path))
    arrays = _arrays(path)
    assert "grad.param.spatial_bn.running_mean" in arrays  # eval mode: the running mean is an input of the map
    del arrays["grad.param.spatial_bn.running_mean"]
    np.savez(path, **arrays)
    _error(path, capsys, "grad.param.spatial_bn.running_mean")


# ---------------------------------------------------------------------------------------------
# tolerances come from the arrays, and metadata may not contradict them


def test_a_changed_value_fails_at_the_stored_dtypes_tolerance(se_file, capsys):
    arrays = _arrays(se_file)
    arrays["output"] = arrays["output"] * (1 + 1e-7)  # far inside float32's tolerance, far outside float64's
    np.savez(se_file, **arrays)
    status, line = _verdict(se_file, capsys)
    assert status == 1 and line.startswith("FAIL") and "output" in line, line


def test_editing_the_meta_dtype_neither_loosens_the_tolerance_nor_passes(se_file, capsys):
    arrays = _arrays(se_file)
    arrays["output"] = arrays["output"] * (1 + 1e-7)
    _save(se_file, arrays, dtype="float32")
    _error(se_file, capsys, "meta says dtype 'float32', but the arrays are float64")


def test_a_float32_file_gets_float32_tolerance(tmp_path, capsys):
    path = golden.write("se", str(tmp_path), dtype="float32")
    result = golden.verify(path)
    assert result.ok and result.tolerance == golden.TOLERANCE["float32"]
    arrays = _arrays(path)
    _save(path, arrays, dtype="float64")
    _error(path, capsys, "meta says dtype 'float64'")


def test_mixed_dtypes_are_an_error(se_file, capsys):
    arrays = _arrays(se_file)
    arrays["param.fc1.bias"] = arrays["param.fc1.bias"].astype(np.float32)
    np.savez(se_file, **arrays)
    _error(se_file, capsys, "float32", "float64")


def test_a_swapped_mechanism_is_an_error(se_file, capsys):
    _save(se_file, _arrays(se_file), mechanism="eca")  # SE's arrays, ECA's name
    _error(se_file, capsys, "'eca'")


def test_a_swapped_entry_of_the_same_module_is_an_error(tmp_path, capsys):
    path = golden.write("scse", str(tmp_path))  # the same parameters as scse-max; combine="add"
    arrays = _arrays(path)
    _save(path, arrays, mechanism="scse-max")
    _error(path, capsys, "options", "scse-max")
    _save(path, arrays, mechanism="scse-max", options={"combine": "max"})  # consistent lie: the numbers differ
    status, line = _verdict(path, capsys)
    assert status == 1 and line.startswith("FAIL"), line


@pytest.mark.parametrize("change, words", [
    ({"differentiable_inputs": []}, ("differentiable_inputs", "[0]")),
    ({"differentiable_inputs": [0, 1]}, ("differentiable_inputs",)),
    ({"params": ["fc1.weight"]}, ("meta 'params'",)),
    ({"inputs": 2}, ("input entries",)),
    ({"config": {"channels": 32, "reduction": 8}}, ("param.fc1.weight has shape (8, 32)", "makes (4, 32)")),
    ({"config": {"channels": 32, "kernel": 3}}, ("not a configuration of 'se'",)),
])
def test_metadata_that_contradicts_the_arrays_is_an_error(se_file, capsys, change, words):
    _save(se_file, _arrays(se_file), **change)
    _error(se_file, capsys, *words)


@pytest.mark.parametrize("meta", ["[1, 2]", '"se"', "3", "{not json"], ids=["list", "string", "number", "corrupt"])
def test_meta_that_is_not_a_json_object_is_an_error(se_file, capsys, meta):
    arrays = _arrays(se_file)
    arrays["meta"] = np.array(meta)
    np.savez(se_file, **arrays)
    _error(se_file, capsys, "meta")


@pytest.mark.parametrize("field, value", [("config", "channels=32"), ("options", []), ("inputs", "1"),
                                          ("inputs", True), ("params", "fc1.weight"), ("differentiable_inputs", [True]),
                                          ("mechanism", 7), ("dtype", None)])
def test_meta_fields_of_the_wrong_json_type_are_an_error(se_file, capsys, field, value):
    _save(se_file, _arrays(se_file), **{field: value})
    _error(se_file, capsys, repr(field))


def test_meta_that_is_not_a_string_entry_is_an_error(se_file, capsys):
    arrays = _arrays(se_file)
    arrays["meta"] = np.arange(3.0)
    np.savez(se_file, **arrays)
    _error(se_file, capsys, "'meta' must be a 0-d unicode string")


# ---------------------------------------------------------------------------------------------
# wrong shapes and malformed files: ERROR lines, never a traceback


def test_a_wrong_shaped_parameter_is_an_error(se_file, capsys):
    arrays = _arrays(se_file)
    arrays["param.fc1.weight"] = arrays["param.fc1.weight"].T.copy()
    np.savez(se_file, **arrays)
    _error(se_file, capsys, "param.fc1.weight has shape (32, 8)", "makes (8, 32)")


def test_a_wrong_shaped_input_is_an_error(se_file, capsys):
    arrays = _arrays(se_file)
    arrays["input.0"] = arrays["input.0"][:, :16].copy()  # 16 channels for an SE of 32
    arrays["grad.input.0"] = arrays["grad.input.0"][:, :16].copy()
    np.savez(se_file, **arrays)
    _error(se_file, capsys, "cannot recompute", "ValueError")
    arrays["grad.input.0"] = _arrays(se_file)["grad.input.0"][:, :8].copy()  # not even its input's shape
    np.savez(se_file, **arrays)
    _error(se_file, capsys, "grad.input.0 has shape")


def test_an_input_of_another_size_with_the_old_cotangent_is_an_error(se_file, capsys):
    arrays = _arrays(se_file)
    arrays["input.0"] = arrays["input.0"][:, :, :-1].copy()  # a valid input, but output != cotangent shape
    arrays["grad.input.0"] = arrays["grad.input.0"][:, :, :-1].copy()
    np.savez(se_file, **arrays)
    _error(se_file, capsys, "cotangent has shape")


def test_a_wrong_shaped_cotangent_is_an_error(se_file, capsys):
    arrays = _arrays(se_file)
    arrays["cotangent"] = arrays["cotangent"][:1].copy()
    np.savez(se_file, **arrays)
    _error(se_file, capsys, "cotangent has shape")


def test_a_single_npy_file_and_a_corrupt_member_are_errors(tmp_path, se_file, capsys):
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as handle:
        np.save(handle, np.zeros(3))
    _error(npy, capsys, "single .npy array")
    raw = bytearray(open(se_file, "rb").read())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\x00" * 64  # zeros in the middle of a member
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(raw))
    status, line = _verdict(corrupt, capsys)
    assert status == 1 and (line.startswith(f"ERROR {corrupt}: ") or line.startswith("FAIL")), line


def test_a_stored_nan_never_agrees(se_file, capsys):
    arrays = _arrays(se_file)
    arrays["output"] = arrays["output"].copy()
    arrays["output"][0, 0, 0, 0] = np.nan
    np.savez(se_file, **arrays)
    status, line = _verdict(se_file, capsys)
    assert status == 1 and line.startswith("FAIL") and "output" in line, line


def test_golden_write_rejects_non_positive_sizes(tmp_path):
    for kwargs in ({"batch": 0}, {"batch": -2}, {"size": 0}, {"batch": 1.5}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            golden.write("se", str(tmp_path), **kwargs)
