from typing import Any


def assert_idempotent_and_pure(pass_: Any, module: Any) -> None:
    """A pass run twice changes nothing the second time and leaves its input module as it was."""
    from tvm_mcu import _tvm

    snapshot = module.script()
    once = pass_(module)
    _tvm.assert_structural_equal(pass_(once), once)
    assert module.script() == snapshot
