"""npattn.interop.torch: state_dict conversion both ways and compare()'s report."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npattn  # noqa: E402
from npattn.interop.torch import compare, from_torch_state_dict, to_torch_state_dict  # noqa: E402

pytestmark = pytest.mark.torch


class TorchSE(torch.nn.Module):
    """An independent SE twin with npattn's parameter names."""

    def __init__(self, channels, reduction, pool="avg"):
        super().__init__()
        self.fc1 = torch.nn.Linear(channels, channels // reduction)
        self.fc2 = torch.nn.Linear(channels // reduction, channels)
        self.pool = pool

    def forward(self, x):
        z = x.mean((2, 3)) if self.pool == "avg" else x.amax((2, 3))
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(z))))[..., None, None]


def test_state_dict_roundtrip():
    params = npattn.get("se").default_params(seed=4)
    back = from_torch_state_dict("se", to_torch_state_dict(params))
    assert back.keys() == params.keys()
    for k in params:
        np.testing.assert_array_equal(npattn.testing.to_host(back[k]), npattn.testing.to_host(params[k]))


def test_missing_keys_are_an_error():
    sd = to_torch_state_dict(npattn.get("se").default_params())
    sd.pop("fc2.bias")
    with pytest.raises(KeyError, match="missing"):
        from_torch_state_dict("se", sd)


def test_compare_agrees_with_a_correct_twin():
    torch.manual_seed(0)
    module = TorchSE(32, 4).double()
    report = compare(module, "se", np.random.default_rng(0).standard_normal((2, 32, 5, 6)))
    assert report.ok, str(report)
    assert len(report.rows) == 6  # output, input grad, 4 parameter grads


def test_compare_catches_a_subtle_bug():
    torch.manual_seed(0)
    module = TorchSE(32, 4, pool="max").double()  # max instead of average squeeze
    report = compare(module, "se", np.random.default_rng(0).standard_normal((2, 32, 5, 6)))
    assert not report.ok
    assert "DISAGREE" in str(report) and "[XX] output" in str(report)
