"""The one error hierarchy of tvm-mcu.

Every error a user can cause is a :class:`TvmMcuError`; ``cli.py`` prints it as one line and exits 1.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class TvmMcuError(Exception):
    """Base class: a problem with the user's input, options or machine, stated so they can act on it."""


class ModelError(TvmMcuError):
    """The model file cannot be read or is not a model we can take (corrupt, wrong format, dynamic shapes)."""


class UnsupportedOpError(TvmMcuError):
    """The model contains operators (or attributes) tvm-mcu cannot compile exactly."""


class BadOptionError(TvmMcuError):
    """An option, board name or input file given by the user is not valid."""


class BudgetError(TvmMcuError):
    """The compiled model does not fit the board or the budget the user asked for."""


class ToolchainError(TvmMcuError):
    """A required external tool (arm-none-eabi-gcc, qemu-system-arm, host gcc) is missing or failed."""


class FirmwareError(TvmMcuError):
    """The firmware built but did not run correctly on the emulator (fault, timeout, bad exit status)."""


class VerificationError(TvmMcuError):
    """The emulated output differs from the reference beyond the stated tolerance."""


class PassOrderError(TvmMcuError):
    """A tvm-mcu pass was given a function it cannot take yet: a pass it needs has not run (a user's own
    ``tvm.transform`` pipeline; ``tvm_mcu.pipeline`` lists the order and the reason for each step)."""
