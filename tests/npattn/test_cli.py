"""The command line and golden vectors: list/show/check/golden/verify, error paths."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import npattn
from npattn import cli, golden

FIRST = npattn.names()[0]


def run(*argv):
    return cli.main(list(argv))


def test_list_names_every_mechanism(capsys):
    assert run("list") == 0
    out = capsys.readouterr().out
    for mech in npattn.mechanisms():
        assert mech.name in out and str(mech.paper.year) in out


def test_show_prints_paper_params_and_source(capsys):
    assert run("show", FIRST) == 0
    out = capsys.readouterr().out
    mech = npattn.get(FIRST)
    assert mech.paper.title in out
    for key in mech.default_params():
        assert key in out
    assert "def init(" in out  # the module's own source


def test_check_one_mechanism_passes(capsys):
    assert run("check", FIRST) == 0
    out = capsys.readouterr().out
    assert FIRST in out and "1 of 1 mechanisms passed" in out


def test_check_reports_a_broken_backward(capsys, monkeypatch):
    """A wrong VJP must make `check` fail with a non-zero status."""
    import autograd as ag
    from autograd.tensor import record

    mech = npattn.get(FIRST)

    def broken(params, *inputs, train=False, **kw):
        out = mech.apply_fn(params, *inputs, train=train, **kw)
        return record(out.data * 1.0, ((out, lambda g: ag.mul(g, 1.5)),))  # wrong: d/dx is 1

    from dataclasses import replace
    monkeypatch.setitem(npattn.registry._REGISTRY, FIRST, replace(mech, apply_fn=broken))
    assert run("check", FIRST) == 1
    assert "FAIL" in capsys.readouterr().out


def test_check_reports_a_nan_gradient(capsys, monkeypatch):
    """A NaN gradient with a finite output fails `check` (max(0.0, nan) used to keep the error at 0.0)."""
    import autograd as ag
    from autograd.tensor import record

    mech = npattn.get(FIRST)

    def nan_backward(params, *inputs, train=False, **kw):
        out = mech.apply_fn(params, *inputs, train=train, **kw)
        return record(out.data * 1.0, ((out, lambda g: ag.mul(g, float("nan"))),))

    from dataclasses import replace
    monkeypatch.setitem(npattn.registry._REGISTRY, FIRST, replace(mech, apply_fn=nan_backward))
    assert run("check", FIRST) == 1
    out = capsys.readouterr().out
    assert "FAIL gradient error inf" in out and "0 of 1 mechanisms passed" in out


def test_unknown_name_suggests_close_names():
    with pytest.raises(SystemExit, match="did you mean"):
        run("check", FIRST + "x")


def test_golden_roundtrip_and_format(tmp_path, capsys):
    assert run("golden", FIRST, "-o", str(tmp_path), "--seed", "3") == 0
    (path,) = list(tmp_path.iterdir())
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        assert meta["mechanism"] == FIRST and meta["seed"] == 3 and meta["dtype"] == "float64"
        assert data["output"].shape == data["cotangent"].shape
        for key in meta["params"]:
            assert f"param.{key}" in data.files
        for i in meta["differentiable_inputs"]:
            assert data[f"grad.input.{i}"].shape == data[f"input.{i}"].shape
    assert run("verify", str(path)) == 0
    assert "ok" in capsys.readouterr().out


def test_golden_refuses_to_overwrite_without_force(tmp_path, capsys):
    assert run("golden", FIRST, "-o", str(tmp_path)) == 0
    assert run("golden", FIRST, "-o", str(tmp_path)) == 1
    assert "--force" in capsys.readouterr().err
    assert run("golden", FIRST, "-o", str(tmp_path), "--force") == 0


@pytest.mark.parametrize("flag, value, words", [
    ("--size", "0", "must be a positive integer, got 0"), ("--batch", "0", "must be a positive integer, got 0"),
    ("--batch", "-2", "must be a positive integer, got -2"), ("--size", "-1", "must be a positive integer"),
    ("--seed", "-1", "must be a non-negative integer"), ("--batch", "two", "invalid int value: 'two'"),
])
def test_golden_rejects_sizes_below_one_as_argparse_errors(tmp_path, capsys, flag, value, words):
    with pytest.raises(SystemExit) as info:
        run("golden", FIRST, "-o", str(tmp_path), flag, value)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {words}" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_golden_batch_size_and_dtype(tmp_path):
    path = golden.write(FIRST, str(tmp_path), dtype="float32", batch=3)
    with np.load(path, allow_pickle=False) as data:
        assert data["input.0"].shape[0] == 3 and data["output"].dtype == np.float32
    assert golden.verify(path).ok


def test_verify_detects_a_changed_value(tmp_path, capsys):
    path = golden.write(FIRST, str(tmp_path))
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output"] = arrays["output"] + 1e-3
    np.savez(path, **arrays)
    assert run("verify", path) == 1
    assert "output" in capsys.readouterr().out


def test_verify_corrupt_and_truncated_files(tmp_path, capsys):
    path = golden.write(FIRST, str(tmp_path))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(open(path, "rb").read()[:200])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    missing = tmp_path / "missing.npz"
    assert run("verify", str(truncated), str(garbage), str(missing)) == 1
    out = capsys.readouterr().out
    assert out.count("ERROR") == 3 and "Traceback" not in out


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "npattn", "list"], capture_output=True, text=True,
                            env={**os.environ}, timeout=120)
    assert result.returncode == 0 and FIRST in result.stdout
