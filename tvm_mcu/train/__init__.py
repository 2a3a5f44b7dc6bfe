"""The training bridge: a float Relax module as a PyTorch module, trained on CPU, weights written back.

The Relax module stays the source of truth: :class:`~tvm_mcu.train.bridge.RelaxModule` evaluates its
bindings with torch (one rule per Relax op, ``torch_rules.RULES``), :func:`~tvm_mcu.train.loop.train`
fine-tunes it, and :func:`~tvm_mcu.train.bridge.write_back` returns a new IRModule with the trained
constants. ``data`` reads the data sets and needs numpy only; everything else needs PyTorch, and says so
with a :class:`~tvm_mcu.errors.BadOptionError` when it is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tvm_mcu.errors import BadOptionError

if TYPE_CHECKING:
    from tvm_mcu.train.bridge import RelaxModule, write_back
    from tvm_mcu.train.data import Dataset, load_dataset
    from tvm_mcu.train.loop import TrainLog, evaluate, train

__all__ = [
    "require_torch",
    "RelaxModule",
    "write_back",
    "Dataset",
    "load_dataset",
    "TrainLog",
    "train",
    "evaluate",
]

TORCH_MISSING = "training needs PyTorch: pip install -e '.[train]' (torch==2.13.0, CPU build)"

# Public names and their modules, imported on first use so that ``tvm_mcu.train.data`` works without torch.
_LAZY = {
    "RelaxModule": "tvm_mcu.train.bridge",
    "write_back": "tvm_mcu.train.bridge",
    "Dataset": "tvm_mcu.train.data",
    "load_dataset": "tvm_mcu.train.data",
    "TrainLog": "tvm_mcu.train.loop",
    "train": "tvm_mcu.train.loop",
    "evaluate": "tvm_mcu.train.loop",
}


def require_torch() -> ModuleType:
    """The ``torch`` module, or a BadOptionError saying how to install it."""
    try:
        import torch
    except ImportError as e:
        raise BadOptionError(TORCH_MISSING) from e
    return torch


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tvm_mcu.train' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
