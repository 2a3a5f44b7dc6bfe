"""Relax (graph-level) passes."""
