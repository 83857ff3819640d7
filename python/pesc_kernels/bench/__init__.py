"""The benchmark runner (``pesc-bench``, ``python -m pesc_kernels.bench``) and its cases.

A case builds, for one device and dtype, the callables to time: the baselines (the pure-PyTorch
reference and the best plain-PyTorch formulations a user would write) and ours. ``pesc-bench`` times
them alternately in one run; ``benchmarks/test_benchmarks.py`` runs the same cases under
pytest-benchmark. Needs the ``bench`` extra (tqdm, matplotlib): ``pip install pesc_kernels[bench]``.
"""
from .case import Case, CaseRun
from .registry import cases_for

__all__ = ["Case", "CaseRun", "cases_for"]
