"""``torch.export`` programs (.pt2) in: a trained ``nn.Module`` to verified firmware through TVM's
``from_exported_program``, checked against PyTorch itself; what cannot be compiled is refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tvm_mcu import api
from tvm_mcu.errors import UnsupportedOpError
from tvm_mcu.frontend import load_model

pytestmark = pytest.mark.emulator


def _export(module: object, shape: tuple[int, ...], path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    program = torch.export.export(module.eval(), (torch.randn(*shape),))  # type: ignore[attr-defined]
    torch.export.save(program, str(path))
    return path


def _cnn() -> object:
    """Conv + BatchNorm + ReLU, max pooling, a depthwise conv with ReLU6, global average, linear."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, groups=8),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def _branches() -> object:
    """A residual addition, a concatenation, average pooling, sigmoid gating and a softmax head."""
    import torch
    from torch import nn

    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 1)
            self.c = nn.Conv2d(3, 4, 1)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(12 * 4 * 4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.a(x))
            y = y + self.b(y) * torch.sigmoid(y)
            y = torch.cat([y, self.c(x)], dim=1)
            y = self.pool(y).flatten(1)
            return torch.softmax(self.fc(y), dim=1)

    return Branches()


def _reductions() -> object:
    """Tanh, dropout (evaluation: none), a mean over the map, view and reshape."""
    import torch
    from torch import nn

    class Reductions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 6, 3, stride=2, padding=1)
            self.drop = nn.Dropout(0.3)
            self.fc = nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.drop(torch.tanh(self.conv(x)))
            y = y.mean(dim=(2, 3)).view(1, 6)
            return self.fc(y).reshape(1, 2, 2)

    return Reductions()


MODULES = [(_cnn, (1, 1, 12, 12)), (_branches, (1, 3, 8, 8)), (_reductions, (1, 2, 9, 9))]


# Each module on the M4F (hardware float); the first also on the M3 (soft float).
CASES = [(m, s, "mps2-an386") for m, s in MODULES] + [(*MODULES[0], "mps2-an385")]


@pytest.mark.parametrize(("make", "shape", "board"), CASES, ids=["cnn", "branches", "reductions", "cnn-m3"])
def test_an_exported_module_runs_as_pytorch_runs_it(make, shape, board: str, tmp_path: Path) -> None:
    path = _export(make(), shape, tmp_path / "model.pt2")
    model = load_model(path)
    assert model.format == "pt2" and model.inputs[0].shape == shape
    v = api.verify(path, board, tmp_path / "out", seed=1)
    assert v.passed, v.report.worst_difference
    assert v.report.reference == "pytorch"
    assert v.report.max_abs_error <= 1e-4


def test_an_operator_without_a_lowering_is_refused_by_name(tmp_path: Path) -> None:
    from torch import nn

    path = _export(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU()), (1, 1, 6, 6), tmp_path / "gelu.pt2")
    with pytest.raises(UnsupportedOpError, match=r"aten\.gelu\.default \(node 'gelu'\): no lowering"):
        load_model(path)


def test_a_file_that_is_not_an_exported_program_is_a_model_error(tmp_path: Path) -> None:
    from tvm_mcu.errors import ModelError

    path = tmp_path / "junk.pt2"
    path.write_bytes(np.arange(64, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match=r"not a readable torch.export program"):
        load_model(path)


def test_every_accepted_aten_operator_is_exercised(tmp_path: Path) -> None:
    """Each operator the frontend accepts appears in one of the modules above (compiled and checked
    against PyTorch there): nothing is accepted untested."""
    from tvm_mcu.frontend import load_exported_program, support

    seen = set()
    for k, (make, shape) in enumerate(MODULES):
        path = _export(make(), shape, tmp_path / f"m{k}.pt2")
        program = load_exported_program(path.read_bytes(), path)
        seen |= {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert set(support.ATEN_RULES) <= seen, sorted(set(support.ATEN_RULES) - seen)
