"""Benchmarks with their targets; run each file as a script (see its docstring)."""
