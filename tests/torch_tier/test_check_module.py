"""npattn.interop.torch.check_module: a correct module passes across the space, wrong ones are caught and shrunk
to the edge configuration where they go wrong, deterministically for a seed."""
import ast
import re

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from npattn.interop.torch import check_module  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings(r"ignore:var\(\)")]


class TorchSE(torch.nn.Module):
    """An independent SE twin with npattn's parameter names (fc1, fc2)."""

    def __init__(self, channels, reduction, bias=True):
        super().__init__()
        self.fc1 = torch.nn.Linear(channels, channels // reduction, bias=bias)
        self.fc2 = torch.nn.Linear(channels // reduction, channels, bias=bias)

    def squeeze(self, x):
        return x.mean((2, 3))

    def hidden(self, z):
        return torch.relu(self.fc1(z))

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(self.hidden(self.squeeze(x))))[..., None, None]


class NoReluAtOneHidden(TorchSE):
    """Wrong only where C // r == 1 (r <= C < 2 r): the ReLU is skipped for a one-unit bottleneck."""

    def hidden(self, z):
        h = self.fc1(z)
        return torch.relu(h) if h.shape[-1] > 1 else h


class PooledSqueeze(TorchSE):
    """Wrong only at odd map sizes above 1: the mean of a 2x2 adaptive average pool (overlapping bins there)."""

    def squeeze(self, x):
        return F.adaptive_avg_pool2d(x, 2).mean((2, 3))


class RefusesOneChannel(TorchSE):
    def __init__(self, channels, reduction, bias=True):
        if channels == 1:
            raise ValueError("RefusesOneChannel: channels must be at least 2")
        super().__init__(channels, reduction, bias)


def _shrunk_config(message: str) -> dict:
    return ast.literal_eval(re.search(r"shrunk minimal configuration:\n  config (\{.*?\})", message).group(1))


def test_a_correct_module_passes():
    result = check_module(TorchSE, "se", max_examples=15)
    assert len(result.checked) == 15 and "agrees on 15" in str(result)


def test_a_one_line_test_with_fixed_values():
    check_module(lambda channels, reduction, bias: TorchSE(channels, reduction, bias=False), "se", bias=False,
                 max_examples=5)


def test_the_bottleneck_bug_is_found_and_shrunk_to_its_edge():
    with pytest.raises(AssertionError) as info:
        check_module(NoReluAtOneHidden, "se", max_examples=40)
    message = str(info.value)
    config = _shrunk_config(message)
    assert config["channels"] == config["reduction"] and config["bias"] is False, message  # C // r == 1, smallest C
    assert "input sizes {'batch': 1, 'height': 1, 'width': 1}" in message, message
    assert "worst: " in message and "seed=0" in message and "DISAGREE" in message


def test_the_odd_size_bug_is_found_and_shrunk_to_its_edge():
    with pytest.raises(AssertionError) as info:
        check_module(PooledSqueeze, "se", max_examples=40)
    message = str(info.value)
    assert "config {'reduction': 1, 'channels': 1, 'bias': False}" in message, message
    assert ("input sizes {'batch': 1, 'height': 1, 'width': 3}" in message
            or "input sizes {'batch': 1, 'height': 3, 'width': 1}" in message), message
    assert "worst: output: at (0, 0, " in message or "worst: grad" in message, message


def test_a_module_that_refuses_a_configuration_is_reported():
    with pytest.raises(AssertionError, match=r"(?s)channels': 1.*raised ValueError: RefusesOneChannel"):
        check_module(RefusesOneChannel, "se", max_examples=20)


def test_a_wrong_key_map_is_reported_not_ignored():
    with pytest.raises(AssertionError, match="raised"):
        check_module(TorchSE, "se", key_map={"fc1.weight": "fc2.weight"}, max_examples=3)


def test_deterministic_for_a_seed():
    runs = [check_module(TorchSE, "se", max_examples=6, seed=seed).checked for seed in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    messages = []
    for _ in range(2):
        with pytest.raises(AssertionError) as info:
            check_module(PooledSqueeze, "se", max_examples=30, seed=5)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_a_key_map_as_a_function_of_the_configuration():
    class Renamed(torch.nn.Module):
        def __init__(self, channels, reduction, bias=True):
            super().__init__()
            self.inner = TorchSE(channels, reduction, bias)

        def forward(self, x):
            return self.inner(x)

    def names(config):
        suffixes = ("weight", "bias") if config["bias"] else ("weight",)
        return {f"inner.{layer}.{s}": f"{layer}.{s}" for layer in ("fc1", "fc2") for s in suffixes}

    check_module(Renamed, "se", key_map=names, max_examples=6)


class TorchSRM(torch.nn.Module):
    """An independent SRM twin (official names cfc, bn); ``momentum`` of its BatchNorm."""

    def __init__(self, channels, official_init=False, momentum=0.1):
        super().__init__()
        self.cfc = torch.nn.Parameter(torch.zeros(channels, 2))
        self.bn = torch.nn.BatchNorm2d(channels, momentum=momentum)

    def forward(self, x):
        mean, std = x.mean((2, 3)), (x.var((2, 3)) + 1e-5).sqrt()
        z = mean * self.cfc[:, 0] + std * self.cfc[:, 1]
        return x * torch.sigmoid(self.bn(z[..., None, None]))


def test_running_statistics_are_compared_in_train_mode():
    """A BatchNorm momentum of 0.2 changes only the updated running statistics: caught in train mode only."""
    check_module(TorchSRM, "srm", std_mode="var_eps", max_examples=10)
    wrong = lambda channels, official_init: TorchSRM(channels, momentum=0.2)  # noqa: E731
    check_module(wrong, "srm", std_mode="var_eps", train=False, max_examples=10)
    with pytest.raises(AssertionError) as info:
        check_module(wrong, "srm", std_mode="var_eps", max_examples=20)
    message = str(info.value)
    assert "worst: running bn.running_" in message and ", train\n" in message, message
    assert "input sizes {'batch': 2, 'height': 1, 'width': 2}" in message, message


def test_worst_row_prefers_an_uncomparable_row_then_the_largest_difference():
    import numpy as np

    from npattn.interop._fuzz import worst_row
    from npattn.interop._verdict import Report

    report = Report("se")
    report.add("a", np.zeros(3), np.array([0.0, 0.0, 1.0]), rtol=0, atol=0, equal_nan=False)
    report.add("b", np.zeros(2), np.array([0.0, 5.0]), rtol=0, atol=0, equal_nan=False)
    report.add("c", np.zeros(2), np.zeros(2), rtol=0, atol=0, equal_nan=False)
    what, element = worst_row(report)
    assert what == "b" and element.startswith("at (1,)"), (what, element)
    report.fail("d", "not compared: the outputs differ in shape")
    assert worst_row(report)[0] == "d"
