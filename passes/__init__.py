"""Compiler passes of tvm-mcu: Relax (graph) passes in ``relax``, TIR (tensor) passes in ``tir``."""
