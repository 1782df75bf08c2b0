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
    assert_close(np.array([np.nan]), np.array([np.nan]))


def test_torch_tensor_input():
    torch = pytest.importorskip("torch")
    t = torch.arange(4, dtype=torch.float64, requires_grad=True) * 2
    assert_close(t, np.arange(4.0) * 2)


def test_zero_dimensional_and_backend_arrays():
    assert_close(np.array(1.0), np.array(1.0))
    with pytest.raises(AssertionError, match="at \\(\\)"):
        assert_close(np.array(1.0), np.array(2.0))
    assert_close(ag.from_numpy(np.ones(2)), np.ones(2))  # a backend (CuPy/strict) array on either side
