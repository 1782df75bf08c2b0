"""Backend selection, explicit conversions, and the strict backend's CuPy-like refusals.

The strict-array tests build StrictArrays directly from ``autograd._strict`` so they run under every
backend; the tests that need a *fresh* interpreter (backend chosen at import) use a subprocess.
"""
import copy
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import autograd as ag
from autograd import _strict, backend

from .helpers import dev, host

S = _strict.namespace


def _run(code: str, env_backend: str | None = None, extra_path: str | None = None):
    env = dict(os.environ)
    env.pop("NPATTN_BACKEND", None)
    if env_backend is not None:
        env["NPATTN_BACKEND"] = env_backend
    if extra_path is not None:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=extra_path or os.getcwd(), timeout=120)


# ---------------------------------------------------------------------------------------------
# backend selection


def test_unknown_backend_names_the_choices():
    result = _run("import autograd", env_backend="tensorflow")
    assert result.returncode != 0
    assert "ValueError" in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "tensorflow" in message
    for choice in ("numpy", "cupy", "strict"):
        assert choice in message


def test_cupy_backend_without_cupy_names_the_fix():
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here; the missing-CuPy message cannot be provoked")
    except ImportError:
        pass
    result = _run("import autograd", env_backend="cupy")
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "CuPy is not installed" in message and "NPATTN_BACKEND" in message


def test_backend_name_is_read_once_and_exposed():
    assert backend.name in backend.CHOICES
    assert ag.xp is backend.xp
    result = _run("import autograd; print(autograd.backend.name, type(autograd.xp).__name__)", env_backend="strict")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["strict", "_Namespace"]


def test_backend_value_is_case_and_space_insensitive():
    result = _run("import autograd; print(autograd.backend.name)", env_backend="  NumPy ")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"


# ---------------------------------------------------------------------------------------------
# explicit conversions on the active backend


def test_to_numpy_from_numpy_round_trip(rng):
    values = rng.standard_normal((3, 4))
    on_backend = ag.from_numpy(values)
    assert backend.is_array(on_backend)
    back = ag.to_numpy(on_backend)
    assert type(back) is np.ndarray
    np.testing.assert_array_equal(back, values)
    assert ag.to_numpy(ag.Tensor(on_backend)).tolist() == values.tolist()
    assert ag.Tensor(on_backend).numpy().dtype == np.float64


def test_from_numpy_dtype_and_nested_lists():
    a = ag.from_numpy([[1, 2], [3, 4]], dtype=np.float32)
    assert a.dtype == np.float32 and a.shape == (2, 2)
    assert ag.to_numpy(a).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert ag.from_numpy(np.arange(3)).dtype.kind == "i"


def test_from_numpy_passes_backend_arrays_through():
    a = dev(np.arange(4.0))
    assert host(ag.from_numpy(a)).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert ag.from_numpy(a, dtype=np.float32).dtype == np.float32


def test_tensor_numpy_is_a_host_array():
    t = ag.Tensor(dev(np.ones((2, 2))))
    out = t.numpy()
    assert type(out) is np.ndarray and out.shape == (2, 2)


def test_host_array_in_tensor_under_non_numpy_backend_is_a_clear_type_error():
    code = """
        import numpy as np, autograd as ag
        try:
            ag.Tensor(np.ones(3))
        except TypeError as exc:
            print("TypeError:", exc)
        try:
            ag.exp(np.ones(3))
        except TypeError as exc:
            print("TypeError:", exc)
        print(ag.Tensor(ag.from_numpy(np.ones(3))).shape)
    """
    result = _run(code, env_backend="strict")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines[:2]:
        assert line.startswith("TypeError:") and "from_numpy" in line and "strict" in line
    assert lines[2] == "(3,)"


def test_host_array_is_accepted_under_numpy_backend():
    result = _run("import numpy as np, autograd as ag; print(ag.exp(np.zeros(2)).numpy().tolist())",
                  env_backend="numpy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1.0, 1.0]"


# ---------------------------------------------------------------------------------------------
# the autograd name collision (HIPS autograd on PyPI)


def test_foreign_autograd_package_is_reported(tmp_path):
    fake = tmp_path / "autograd"
    fake.mkdir()
    (fake / "__init__.py").write_text("# stands in for HIPS autograd\nfrom builtins import abs as grad\n")
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        sys.path.insert(1, {repo_root!r})
        import autograd
        assert autograd.__file__.startswith({str(tmp_path)!r}), autograd.__file__
        import npattn
    """
    result = _run(code, extra_path=str(tmp_path))
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError")
    assert "HIPS" in message and "pip uninstall autograd" in message and str(fake) in message


# ---------------------------------------------------------------------------------------------
# the strict backend's arrays


@pytest.fixture
def strict_array():
    return S.asarray(np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("convert", [np.asarray, np.array, np.ascontiguousarray, lambda a: a.__array__(),
                                     lambda a: np.array(a, dtype=np.float32), lambda a: np.asarray([a, a])])
def test_strict_arrays_refuse_implicit_host_conversion(strict_array, convert):
    with pytest.raises(TypeError, match="implicit conversion|strict-backend"):
        convert(strict_array)


@pytest.mark.parametrize("call", [np.sum, np.exp, np.mean, np.transpose, lambda a: np.concatenate([a, a]),
                                  lambda a: np.where(a > 0, a, 0.0), lambda a: np.einsum("ij->j", a),
                                  lambda a: np.add.at(a, 0, 1.0)])
def test_strict_arrays_refuse_numpy_functions(strict_array, call):
    with pytest.raises(TypeError):
        call(strict_array)


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "@", "<", "=="])
def test_strict_arrays_refuse_host_operands_on_either_side(strict_array, op):
    host_array = np.ones((3, 3)) if op == "@" else np.ones(3)
    with pytest.raises(TypeError, match="host"):
        eval(f"a {op} h", {"a": strict_array, "h": host_array})
    if op not in ("<", "=="):
        with pytest.raises(TypeError, match="host"):
            eval(f"h {op} a", {"a": strict_array, "h": host_array[:2] if op == "@" else host_array})


def test_strict_arrays_refuse_host_arrays_in_indices_assignments_and_functions(strict_array):
    with pytest.raises(TypeError, match="from_numpy"):
        strict_array[np.array([0, 1])]
    with pytest.raises(TypeError, match="from_numpy"):
        strict_array[0] = np.zeros(3)
    with pytest.raises(TypeError, match="from_numpy"):
        S.matmul(strict_array, np.ones((3, 2)))
    with pytest.raises(TypeError, match="from_numpy"):
        S.concatenate([strict_array, np.ones((1, 3))])
    with pytest.raises(TypeError, match="host"):
        strict_array += np.ones(3)


def test_strict_arrays_allow_what_cupy_allows(strict_array):
    one = strict_array[0, 1]
    assert type(one) is _strict.StrictArray and one.shape == ()  # scalars stay on the "device", as in CuPy
    assert float(one) == 1.0 and int(strict_array[1, 2]) == 5 and bool(one) and one.item() == 1.0
    assert strict_array.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert _strict.unwrap(2.0 * strict_array + np.float64(1.0)).tolist() == [[1.0, 3.0, 5.0], [7.0, 9.0, 11.0]]
    assert _strict.unwrap(np.float32(2.0) * strict_array)[1, 0] == 6.0
    assert len(strict_array) == 2 and [r.shape for r in strict_array] == [(3,), (3,)]
    assert strict_array.shape == (2, 3) and strict_array.ndim == 2 and strict_array.size == 6
    assert strict_array.dtype == np.float64 and strict_array.T.shape == (3, 2)


def test_strict_reductions_and_scalars_are_0d_strict_arrays(strict_array):
    for value in (S.sum(strict_array), strict_array.max(), strict_array.sum(axis=None),
                  S.float64(1.0) * strict_array[0, 0]):
        assert type(value) is _strict.StrictArray and value.shape == ()
    assert float(S.sum(strict_array)) == 15.0


def test_strict_in_place_updates_reach_the_wrapped_array_and_views(strict_array):
    flat = strict_array.reshape(6)  # a view, as in NumPy/CuPy
    flat[:2] = S.zeros(2)
    strict_array[1] += 1.0
    strict_array[:, 2] *= S.asarray([10.0, 10.0])
    assert _strict.unwrap(strict_array).tolist() == [[0.0, 0.0, 20.0], [4.0, 5.0, 60.0]]
    S.add.at(flat, S.asarray([0, 0, 1]), 1.0)
    assert _strict.unwrap(strict_array)[0].tolist() == [2.0, 1.0, 20.0]
    before = id(strict_array)
    strict_array += 1.0
    assert id(strict_array) == before


def test_strict_namespace_passes_dtypes_constants_and_submodules():
    assert S.float64 is np.float64 and S.bool_ is np.bool_ and S.inf == np.inf and S.pi == np.pi
    assert S.newaxis is None and S.ndarray is _strict.StrictArray
    a = S.arange(5.0)
    windows = S.lib.stride_tricks.sliding_window_view(a, 3)
    assert type(windows) is _strict.StrictArray and windows.shape == (3, 3)
    assert abs(float(S.linalg.norm(a)) - np.sqrt(30.0)) < 1e-12
    assert type(S.fft.rfft(a)) is _strict.StrictArray
    grids = S.ix_(S.arange(2), S.arange(3))
    assert isinstance(grids, tuple) and all(type(g) is _strict.StrictArray for g in grids)
    assert S.result_type(a, np.float32) == np.float64
    assert S.maximum.reduce(a).shape == ()


def test_strict_unwrap_copies_and_upload_copies():
    values = np.arange(3.0)
    uploaded = S.array(values)
    values[0] = 100.0
    assert _strict.unwrap(uploaded)[0] == 0.0
    back = _strict.unwrap(uploaded)
    back[1] = -1.0
    assert _strict.unwrap(uploaded)[1] == 1.0


def test_strict_arrays_defer_to_tensors(strict_array):
    t = ag.Tensor(ag.from_numpy(np.ones((2, 3)))) if backend.name == "strict" else None
    if t is None:
        pytest.skip("a Tensor holds a strict array only under NPATTN_BACKEND=strict")
    for result in (strict_array + t, t + strict_array, strict_array * t, strict_array @ t.T):
        assert isinstance(result, ag.Tensor)


def test_strict_arrays_copy_and_compare(strict_array):
    duplicate = copy.deepcopy(strict_array)
    assert type(duplicate) is _strict.StrictArray
    duplicate[0, 0] = 9.0
    assert float(strict_array[0, 0]) == 0.0
    assert bool((copy.copy(strict_array) == strict_array).all())
    with pytest.raises(TypeError):
        hash(strict_array)
    with pytest.raises(AttributeError):
        strict_array.__array_interface__  # noqa: B018 - the buffer must stay hidden from NumPy


def test_strict_wraps_only_plain_ndarrays():
    with pytest.raises(TypeError):
        _strict.StrictArray([1.0, 2.0])
