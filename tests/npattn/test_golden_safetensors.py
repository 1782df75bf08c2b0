"""Golden vectors in safetensors: written and read without the package, verified fail-closed like .npz.

The file surgery below (split a file into header and buffer, edit, join) is written here from the format's
description, independently of npattn/_safetensors.py; the last tests check both directions against the
``safetensors`` package where it is installed.
"""
import json
import pathlib
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest

from npattn import _safetensors, cli, golden
from tests.npattn.test_golden import _error, _verdict


def split(path):
    """(header dict, buffer bytes) of a safetensors file."""
    data = open(path, "rb").read()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def join(path, header, buffer, raw_header=None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    open(path, "wb").write(struct.pack("<Q", len(text)) + text + buffer)


@pytest.fixture
def se_file(tmp_path):
    return golden.write("se", str(tmp_path), format="safetensors")




# ---------------------------------------------------------------------------------------------
# the layout


def test_the_file_is_header_length_json_header_and_buffers(se_file):
    header, buffer = split(se_file)
    data = open(se_file, "rb").read()
    assert (8 + struct.unpack("<Q", data[:8])[0]) % 8 == 0  # the header is padded so the buffer starts aligned
    meta = header.pop("__metadata__")
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["mechanism"] == "se" and json.loads(meta["format"]) == 1
    assert json.loads(meta["params"]) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]  # init's order
    assert header["param.fc1.weight"]["dtype"] == "F64" and header["param.fc1.weight"]["shape"] == [8, 32]
    begin, end = header["output"]["data_offsets"]
    out = np.frombuffer(buffer[begin:end], "<f8").reshape(header["output"]["shape"])
    _, arrays = golden.load(str(se_file))
    np.testing.assert_array_equal(out, arrays["output"])


def test_the_same_case_in_both_containers_holds_the_same_arrays_and_meta(tmp_path):
    npz = golden.write("cbam", str(tmp_path))
    st = golden.write("cbam", str(tmp_path), format="safetensors")
    meta_npz, arrays_npz = golden.load(npz)
    meta_st, arrays_st = golden.load(st)
    assert meta_npz == meta_st
    assert arrays_npz.keys() == arrays_st.keys()
    for key in arrays_npz:
        assert arrays_st[key].dtype == arrays_npz[key].dtype, key  # num_batches_tracked stays int64 (I64)
        np.testing.assert_array_equal(arrays_st[key], arrays_npz[key])


@pytest.mark.parametrize("name", ["se", "cbam", "mha", "bahdanau", "swin"])
def test_files_verify(tmp_path, name, capsys):
    path = golden.write(name, str(tmp_path), format="safetensors")
    status, line = _verdict(path, capsys)
    assert status == 0 and line.startswith("ok"), line


def test_cli_writes_safetensors(tmp_path, capsys):
    assert cli.main(["golden", "se", "-o", str(tmp_path), "--format", "safetensors", "--dtype", "float32"]) == 0
    path = tmp_path / "se_float32_seed0.safetensors"
    assert path.exists() and f"wrote {path}" in capsys.readouterr().out
    assert split(path)[0]["output"]["dtype"] == "F32"
    status, line = _verdict(path, capsys)
    assert status == 0 and "tolerance 0.0001" in line, line


def test_every_numpy_dtype_round_trips_through_the_reader():
    tensors = {name: (np.arange(6) % 2).astype(dtype).reshape(2, 3) for name, dtype in _safetensors.DTYPES.items()}
    tensors["empty"] = np.zeros((0, 4))
    tensors["scalar"] = np.array(7, np.int64)
    back, meta = _safetensors.loads(_safetensors.dumps(tensors, {"k": "v"}))
    assert meta == {"k": "v"}
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        np.testing.assert_array_equal(back[name], value)


# ---------------------------------------------------------------------------------------------
# every malformed file is an ERROR line naming the rule, never a traceback


def test_a_truncated_buffer(se_file, capsys):
    data = open(se_file, "rb").read()
    open(se_file, "wb").write(data[:-8])
    _error(se_file, capsys, "truncated")


def test_a_file_shorter_than_the_length_field(se_file, capsys):
    open(se_file, "wb").write(b"\x10\x00")
    _error(se_file, capsys, "too short")


def test_a_header_length_past_the_end(se_file, capsys):
    data = open(se_file, "rb").read()
    open(se_file, "wb").write(struct.pack("<Q", len(data)) + data[8:])
    _error(se_file, capsys, "runs past the end")


def test_a_header_that_is_not_json(se_file, capsys):
    header, buffer = split(se_file)
    join(se_file, header, buffer, raw_header=json.dumps(header).encode()[:-1] + b" ")
    _error(se_file, capsys, "not valid JSON")


def test_a_name_given_twice(se_file, capsys):
    header, buffer = split(se_file)
    text = json.dumps(header).encode()
    entry = json.dumps({"output": header["output"]})[1:-1].encode()
    join(se_file, header, buffer, raw_header=text[:-1] + b"," + entry + b"}")
    _error(se_file, capsys, "more than once")


def test_overlapping_offsets(se_file, capsys):
    header, buffer = split(se_file)
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    first, second = names[0], names[1]
    end = header[first]["data_offsets"][1]
    size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
    header[second]["data_offsets"] = [end - 8, end - 8 + size]
    join(se_file, header, buffer)
    _error(se_file, capsys, "overlapping offsets", repr(second))


def test_a_gap_between_tensors_and_trailing_bytes(se_file, capsys):
    header, buffer = split(se_file)
    join(se_file, header, buffer + b"\x00" * 8)
    _error(se_file, capsys, "8 bytes after the last tensor")
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    header[last]["data_offsets"] = [o + 8 for o in header[last]["data_offsets"]]
    join(se_file, header, buffer[:header[last]["data_offsets"][0] - 8] + b"\x00" * 8
         + buffer[header[last]["data_offsets"][0] - 8:])
    _error(se_file, capsys, "a gap of 8 bytes", repr(last))


@pytest.mark.parametrize("dtype, words", [("F65", "dtype 'F65' is not one of"), ("f64", "dtype 'f64'"),
                                          ("BF16", "dtype 'BF16'"), ("F32", "hold 2048 bytes"),
                                          (64, "dtype 64")])
def test_wrong_dtype_strings(se_file, capsys, dtype, words):
    header, buffer = split(se_file)
    header["param.fc1.weight"]["dtype"] = dtype
    join(se_file, header, buffer)
    _error(se_file, capsys, "param.fc1.weight", words)


@pytest.mark.parametrize("change, words", [
    ({"shape": [8, -32]}, "non-negative"), ({"shape": [8, 31]}, "needs 1984"),
    ({"data_offsets": [10]}, "data_offsets [10]"), ({"extra": 1}, "exactly the fields"),
])
def test_malformed_tensor_entries(se_file, capsys, change, words):
    header, buffer = split(se_file)
    header["param.fc1.weight"].update(change)
    join(se_file, header, buffer)
    _error(se_file, capsys, words)


def test_metadata_must_be_there_and_hold_strings(se_file, capsys):
    header, buffer = split(se_file)
    meta = header.pop("__metadata__")
    join(se_file, header, buffer)
    _error(se_file, capsys, "no __metadata__")
    join(se_file, {"__metadata__": {**meta, "format": 1}, **header}, buffer)
    _error(se_file, capsys, "string values")
    join(se_file, {"__metadata__": {**meta, "params": '["fc1.weight"'}, **header}, buffer)
    _error(se_file, capsys, "'params' must be JSON text")
    join(se_file, {"__metadata__": {**meta, "dtype": "float32"}, **header}, buffer)
    _error(se_file, capsys, "meta says dtype 'float32', but the arrays are float64")
    join(se_file, {"__metadata__": {k: v for k, v in meta.items() if k != "options"}, **header}, buffer)
    _error(se_file, capsys, "no 'options' field")


def test_a_removed_entry_and_a_meta_tensor(se_file, capsys):
    header, buffer = split(se_file)
    removed = header.pop("grad.param.fc1.bias")
    begin, end = removed["data_offsets"]
    for info in header.values():
        if "data_offsets" in info and info["data_offsets"][0] >= end:
            info["data_offsets"] = [o - (end - begin) for o in info["data_offsets"]]
    join(se_file, header, buffer[:begin] + buffer[end:])
    _error(se_file, capsys, "missing ['grad.param.fc1.bias']")
    header["meta"] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    join(se_file, header, buffer[:begin] + buffer[end:])
    _error(se_file, capsys, "'meta'")


def test_a_changed_value_fails(se_file, capsys):
    header, buffer = split(se_file)
    begin, _ = header["output"]["data_offsets"]
    value = np.frombuffer(buffer[begin:begin + 8], "<f8")[0]
    buffer = buffer[:begin] + np.array([value + 1e-6], "<f8").tobytes() + buffer[begin + 8:]
    join(se_file, header, buffer)
    status, line = _verdict(se_file, capsys)
    assert status == 1 and line.startswith("FAIL") and "output: max error" in line, line


def test_a_missing_file(tmp_path, capsys):
    _error(tmp_path / "absent.safetensors", capsys, "no such file")


# ---------------------------------------------------------------------------------------------
# against the safetensors package


def test_files_written_by_npattn_load_with_the_package(se_file):
    numpy_io = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    loaded = numpy_io.load_file(str(se_file))
    _, arrays = golden.load(str(se_file))
    assert loaded.keys() == arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(loaded[key], arrays[key])
    with safe_open(str(se_file), framework="np") as file:
        assert file.metadata() == split(se_file)[0]["__metadata__"]


def test_files_written_by_the_package_verify(se_file, tmp_path, capsys):
    numpy_io = pytest.importorskip("safetensors.numpy")
    header, _ = split(se_file)
    _, arrays = golden.load(str(se_file))
    path = tmp_path / "by_the_package.safetensors"
    numpy_io.save_file(arrays, str(path), metadata=header["__metadata__"])
    status, line = _verdict(path, capsys)
    assert status == 0 and line.startswith("ok"), line


def test_every_dtype_both_ways_with_the_package(tmp_path):
    numpy_io = pytest.importorskip("safetensors.numpy")
    tensors = {name: (np.arange(6) % 3).astype(dtype).reshape(3, 2) for name, dtype in _safetensors.DTYPES.items()}
    tensors["scalar"] = np.array(1.5)
    ours = _safetensors.dumps(tensors, {"a": "b"})
    theirs = numpy_io.load(ours)
    back, meta = _safetensors.loads(numpy_io.save(tensors, metadata={"a": "b"}))
    assert meta == {"a": "b"}
    for name, value in tensors.items():
        np.testing.assert_array_equal(theirs[name], value)
        assert theirs[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == value.dtype


@pytest.mark.parametrize("break_it", ["truncated", "overlap", "dtype", "trailing"])
def test_the_package_refuses_what_npattn_refuses(se_file, break_it):
    numpy_io = pytest.importorskip("safetensors.numpy")
    header, buffer = split(se_file)
    if break_it == "truncated":
        buffer = buffer[:-8]
    elif break_it == "overlap":
        first, second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])[:2]
        size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
        end = header[first]["data_offsets"][1]
        header[second]["data_offsets"] = [end - 8, end - 8 + size]
    elif break_it == "dtype":
        header["output"]["dtype"] = "F65"
    else:
        buffer += b"\x00" * 8
    join(se_file, header, buffer)
    data = open(se_file, "rb").read()
    with pytest.raises(_safetensors.FormatError):
        _safetensors.loads(data)
    with pytest.raises(Exception):  # noqa: B017 -- the package's own error types differ by version
        numpy_io.load(data)


# ---------------------------------------------------------------------------------------------
# the C++ reader printed in docs/golden.md


DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "golden.md"
CPP_MAIN = r"""
#include <iostream>
int main(int argc, char** argv) {
    std::vector<int64_t> shape;
    const auto values = read_f64(argv[1], argv[2], shape);
    std::cout.precision(17);
    for (auto d : shape) std::cout << d << " ";
    std::cout << "\n";
    for (auto v : values) std::cout << v << "\n";
}
"""


@pytest.mark.slow
def test_the_cpp_reader_of_docs_golden_reads_a_file(se_file, tmp_path):
    compiler = shutil.which("g++")
    if compiler is None or not any(pathlib.Path(d, "nlohmann", "json.hpp").exists()
                                   for d in ("/usr/include", "/usr/local/include")):
        pytest.skip("needs g++ and nlohmann/json")
    source = re.search(r"```cpp\n(.*?)```", DOCS.read_text(), re.S).group(1)
    (tmp_path / "read.cpp").write_text(source + CPP_MAIN)
    subprocess.run([compiler, "-std=c++17", "-O0", "-o", str(tmp_path / "read"), str(tmp_path / "read.cpp")],
                   check=True, capture_output=True, timeout=300)
    lines = subprocess.run([str(tmp_path / "read"), str(se_file), "output"], check=True, capture_output=True,
                           text=True, timeout=60).stdout.split("\n")
    _, arrays = golden.load(str(se_file))
    assert tuple(int(d) for d in lines[0].split()) == arrays["output"].shape
    values = np.array([float(v) for v in lines[1:] if v])
    np.testing.assert_array_equal(values, arrays["output"].ravel())  # 17 digits: every float64 exactly
