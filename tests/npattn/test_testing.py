"""npattn.testing.assert_close: accepted inputs and the failure report."""
import numpy as np
import pytest

import autograd as ag
from npattn.testing import assert_close


def test_accepts_tensors_arrays_and_lists():
    a = np.arange(6.0).reshape(2, 3)
    assert_close(ag.Tensor(ag.from_numpy(a)), a)
    assert_close(a.tolist(), a)


def test_report_names_worst_index_and_values():
    a = np.zeros((3, 4))
    b = a.copy()
    b[2, 1] = 1.0
    b[0, 3] = 0.5
    with pytest.raises(AssertionError) as info:
        assert_close(a, b, rtol=1e-7, atol=1e-9, name="out")
    message = str(info.value)
    assert "out:" in message and "2 of 12" in message
    assert message.index("(2, 1)") < message.index("(0, 3)")  # the worst element first


def test_shape_mismatch_and_nan():
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.zeros(3), np.zeros(4))
    with pytest.raises(AssertionError):
        assert_close(np.array([np.nan]), np.array([0.0]))
    with pytest.raises(AssertionError):
        assert_close(np.array([np.nan]), np.array([0.0]), equal_nan=True)
    with pytest.raises(AssertionError, match="equal_nan=False"):  # torch's default: NaN is not equal to NaN
        assert_close(np.array([np.nan]), np.array([np.nan]))
    assert_close(np.array([np.nan]), np.array([np.nan]), equal_nan=True)


def test_torch_tensor_input():
    torch = pytest.importorskip("torch")
    t = torch.arange(4, dtype=torch.float64, requires_grad=True) * 2
    assert_close(t, np.arange(4.0) * 2)


def test_zero_dimensional_and_backend_arrays():
    assert_close(np.array(1.0), np.array(1.0))
    with pytest.raises(AssertionError, match="at \\(\\)"):
        assert_close(np.array(1.0), np.array(2.0))
    assert_close(ag.from_numpy(np.ones(2)), np.ones(2))  # a backend (CuPy/strict) array on either side


# ---------------------------------------------------------------------------------------------
# the verdict never passes what torch.testing.assert_close would fail


def test_an_infinity_is_close_only_to_the_same_infinity():
    with pytest.raises(AssertionError, match="actual 5, expected inf"):
        assert_close(5.0, np.inf)
    with pytest.raises(AssertionError):
        assert_close(np.inf, 5.0)
    with pytest.raises(AssertionError):
        assert_close(-np.inf, np.inf)
    with pytest.raises(AssertionError):  # no tolerance makes a finite value equal to an infinity
        assert_close(np.array([1e300]), np.array([np.inf]), rtol=1e10, atol=np.inf)
    assert_close(np.array([np.inf, -np.inf, 1.0]), np.array([np.inf, -np.inf, 1.0]))


def test_complex_against_real_keeps_the_imaginary_part():
    with pytest.raises(AssertionError, match="dtype"):
        assert_close(np.array([1.0 + 0j]), np.array([1.0]))
    with pytest.raises(AssertionError, match="1 of 1"):
        assert_close(np.array([1.0 + 1e-3j]), np.array([1.0]), check_dtype=False)
    with pytest.raises(AssertionError):
        assert_close(np.array([1.0]), np.array([1.0 + 1e-3j]), check_dtype=False)
    assert_close(np.array([1.0 + 0j]), np.array([1.0]), check_dtype=False)
    with pytest.raises(AssertionError):  # an infinite imaginary part is not the finite real value
        assert_close(np.array([1.0 + 1j * np.inf]), np.array([1.0 + 0j]))


def test_check_dtype_is_the_default_and_can_be_turned_off():
    single, double = np.ones(3, np.float32), np.ones(3)
    with pytest.raises(AssertionError, match="dtype mismatch: actual float32, expected float64"):
        assert_close(single, double)
    assert_close(single, double, check_dtype=False)
    with pytest.raises(AssertionError, match="int64"):
        assert_close(np.arange(3), np.arange(3.0))
    assert_close(np.arange(3), np.arange(3.0), check_dtype=False)


def test_masked_arrays_are_refused():
    with pytest.raises(TypeError, match="masked"):
        assert_close(np.ma.masked_array([1.0, 2.0], mask=[False, True]), np.array([1.0, 5.0]))


def test_array_protocols_jax_like():
    """JAX arrays reach assert_close through ``__array__`` (or DLPack); objects offering only one work."""

    class ArrayOnly:
        def __init__(self, data):
            self.data = data

        def __array__(self, dtype=None, copy=None):
            return self.data

    class DLPackOnly:
        def __init__(self, data):
            self.data = data

        def __dlpack__(self, **kwargs):
            return self.data.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.data.__dlpack_device__()

    a = np.arange(4.0)
    assert_close(ArrayOnly(a), a)
    assert_close(DLPackOnly(a), a)
    with pytest.raises(AssertionError):
        assert_close(DLPackOnly(a + 1), a)


def test_ml_dtypes_bfloat16_arrays_are_upcast():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    half = np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16)  # what a JAX bfloat16 array gives on the host
    assert_close(half, half)
    with pytest.raises(AssertionError, match="bfloat16"):
        assert_close(half, np.array([1.5, -2.25], np.float32))
    assert_close(half, np.array([1.5, -2.25], np.float32), check_dtype=False)
    with pytest.raises(AssertionError):
        assert_close(half, np.array([1.5, -2.0], np.float32), check_dtype=False)


def test_torch_bfloat16_conjugate_and_negative_bits():
    torch = pytest.importorskip("torch")
    half = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    assert_close(half, half.clone())
    with pytest.raises(AssertionError, match="actual bfloat16, expected float32"):
        assert_close(half, np.array([1.5, -2.25], np.float32))
    assert_close(half, np.array([1.5, -2.25], np.float32), check_dtype=False)
    z = torch.tensor([1 + 2j, -3 - 1j], dtype=torch.complex128)
    conj = z.conj()  # a lazy view: the conjugate bit is set, the memory still holds z
    assert conj.is_conj()
    assert_close(conj, np.array([1 - 2j, -3 + 1j]))
    with pytest.raises(AssertionError):
        assert_close(conj, np.array([1 + 2j, -3 - 1j]))
    negated = -conj
    assert_close(negated, np.array([-1 + 2j, 3 - 1j]))


CASES = [  # (actual, expected, kwargs) in float64 unless said otherwise
    ([5.0], [np.inf], {}),
    ([np.inf], [np.inf], {}),
    ([-np.inf], [np.inf], {}),
    ([np.nan], [np.nan], {}),
    ([np.nan], [np.nan], {"equal_nan": True}),
    ([np.nan], [1.0], {"equal_nan": True}),
    ([1.0, 2.0], [1.0, 2.0 + 2e-7], {"rtol": 1e-7, "atol": 0.0}),
    ([1.0, 2.0], [1.0, 2.0 + 1e-6], {"rtol": 1e-7, "atol": 0.0}),
    ([0.0], [1e-9], {"rtol": 0.0, "atol": 1e-8}),
    ([1 + 1e-3j], [1.0 + 0j], {"rtol": 1e-4, "atol": 0.0}),
    ([1 + 1e-5j], [1.0 + 0j], {"rtol": 1e-4, "atol": 0.0}),
    ([complex(np.inf, 0)], [complex(np.inf, 0)], {}),
    ([complex(np.inf, 1)], [complex(np.inf, 0)], {}),
    (np.float32([1.0]), [1.0], {}),
    (np.float32([1.0]), [1.0], {"check_dtype": False}),
    ([1 + 0j], [1.0], {"check_dtype": False}),
    ([1 + 1j], [1.0], {"check_dtype": False}),
]


@pytest.mark.parametrize("actual, expected, kwargs", CASES)
def test_the_verdict_is_torch_testing_assert_closes(actual, expected, kwargs):
    """The same verdict as torch.testing.assert_close on every case above (torch as the independent reference)."""
    torch = pytest.importorskip("torch")
    kwargs = {"rtol": 1e-7, "atol": 1e-7, **kwargs}
    a, e = np.asarray(actual), np.asarray(expected)
    try:
        torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(e), **kwargs)
        torch_ok = True
    except AssertionError:
        torch_ok = False
    try:
        assert_close(a, e, **kwargs)
        ours_ok = True
    except AssertionError:
        ours_ok = False
    assert ours_ok == torch_ok
