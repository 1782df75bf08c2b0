"""``npattn fuzz NAME --against module:factory``: exit 0 on agreement, 1 with the shrunk report on a mismatch."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

from npattn import cli  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings(r"ignore:var\(\)")]

MODULE = textwrap.dedent('''
    import torch

    class SE(torch.nn.Module):
        def __init__(self, channels, reduction, bias=True):
            super().__init__()
            self.fc1 = torch.nn.Linear(channels, channels // reduction, bias=bias)
            self.fc2 = torch.nn.Linear(channels // reduction, channels, bias=bias)

        def forward(self, x):
            return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))[..., None, None]

    class Renamed(torch.nn.Module):
        def __init__(self, channels, reduction, bias=True):
            super().__init__()
            self.squeeze = torch.nn.Linear(channels, channels // reduction, bias=bias)
            self.excite = torch.nn.Linear(channels // reduction, channels, bias=bias)

        def forward(self, x):
            return x * torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3))))))[..., None, None]

    class OddSizeBug(SE):
        def forward(self, x):
            z = torch.nn.functional.adaptive_avg_pool2d(x, 2).mean((2, 3))
            return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(z))))[..., None, None]

    def biasless(channels, reduction, bias):
        return SE(channels, reduction, bias=False)
''')


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "fuzz_factories.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fuzz_factories", None)
    return tmp_path


def run(*argv):
    return cli.main(list(argv))


def test_agreement_exits_0(factories, capsys):
    assert run("fuzz", "se", "--against", "fuzz_factories:SE", "--max-examples", "5") == 0
    assert "agrees on 5 drawn configurations (seed 0)" in capsys.readouterr().out


def test_a_mismatch_exits_1_with_the_shrunk_configuration(factories, capsys):
    assert run("fuzz", "se", "--against", "fuzz_factories:OddSizeBug", "--seed", "2") == 1
    out = capsys.readouterr().out
    assert "shrunk minimal configuration" in out and "seed=2" in out and "worst: " in out, out
    assert "'batch': 1" in out and ("'height': 3" in out or "'width': 3" in out), out


def test_key_map_and_fixed_values(factories, capsys):
    key_map = '{"squeeze.weight": "fc1.weight", "squeeze.bias": "fc1.bias", "excite.weight": "fc2.weight", ' \
              '"excite.bias": "fc2.bias"}'
    assert run("fuzz", "se", "--against", "fuzz_factories:Renamed", "--key-map", key_map, "--fix", "bias=true",
               "--max-examples", "4") == 0
    assert run("fuzz", "se", "--against", "fuzz_factories:biasless", "--fix", "bias=false", "--max-examples", "4") == 0
    # without the fix the bias-free module cannot hold npattn's biases: a mismatch, not a pass
    assert run("fuzz", "se", "--against", "fuzz_factories:biasless", "--max-examples", "4") == 1
    capsys.readouterr()


def test_usage_errors(factories, capsys):
    with pytest.raises(SystemExit, match="module:factory"):
        run("fuzz", "se", "--against", "fuzz_factories")
    with pytest.raises(SystemExit, match="cannot load"):
        run("fuzz", "se", "--against", "fuzz_factories:Nope")
    with pytest.raises(SystemExit, match="not valid JSON"):
        run("fuzz", "se", "--against", "fuzz_factories:SE", "--key-map", "{oops")
    assert run("fuzz", "se", "--against", "fuzz_factories:SE", "--fix", "nonsense=1") == 2
    assert "nonsense" in capsys.readouterr().err


def test_as_a_command(factories):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(factories), os.getcwd()])}
    done = subprocess.run([sys.executable, "-m", "npattn", "fuzz", "se", "--against", "fuzz_factories:OddSizeBug"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "shrunk minimal configuration" in done.stdout, done.stdout + done.stderr
