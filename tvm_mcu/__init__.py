"""tvm-mcu: compile CNNs with Apache TVM to bare-metal C with a static memory plan."""

__version__ = "0.1.0"
