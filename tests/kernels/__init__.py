"""Kernel tests: reference kernels against float64 loop oracles (oracles.py), and the SSM basics."""
