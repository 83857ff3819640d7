"""Benchmark cases shared by the pytest-benchmark files in benchmarks/ and the benchmark runner.

A case builds, for one device and dtype, the callables to time: a baseline (the pure-PyTorch
reference or another public formulation) and ours. Keeping shapes and candidates here means the
pytest-benchmark suite and any runner time exactly the same work.
"""
from .cases import Case, CaseRun, cases_for

__all__ = ["Case", "CaseRun", "cases_for"]
