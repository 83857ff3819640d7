"""Command line: ``python -m pesc_kernels info`` prints what was built and which backend each op uses."""
from __future__ import annotations

import argparse
import sys

import torch

from . import _library
from ._version import __version__


def describe_architectures(cmake_list: str) -> str:
    """Turn CMake's "80-real,90" into "sm_80, sm_90 + PTX compute_90"."""
    parts = []
    for arch in filter(None, cmake_list.split(",")):
        number, _, kind = arch.partition("-")
        if kind == "real":
            parts.append(f"sm_{number}")
        elif kind == "virtual":
            parts.append(f"PTX compute_{number}")
        else:
            parts.append(f"sm_{number} + PTX compute_{number}")
    return ", ".join(parts) or "none"


def info_lines() -> list[str]:
    build = _library.build_info()
    gpu = torch.cuda.is_available()
    lines = [
        f"pesc_kernels     {__version__}",
        f"torch            {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"extension        {'loaded' if _library.extension_loaded() else f'NOT loaded: {_library.LOAD_ERROR}'}",
        f"CUDA kernels     {'compiled' if build['cuda_compiled'] else 'not compiled'}"
        + (f" for {describe_architectures(build['cuda_architectures'])} (nvcc {build['cuda_toolkit_version']})"
           if build["cuda_compiled"] else ""),
        f"GPU visible      {torch.cuda.get_device_name() if gpu else 'no'}",
        "op backends:",
    ]
    devices = ["cpu"] + (["cuda"] if gpu or build["cuda_compiled"] else [])
    for op in _library.registered_ops() or ["(no compiled ops)"]:
        choice = ", ".join(
            f"{device}={'kernel' if _library.has_kernel(op, device) else 'reference'}" for device in devices
        )
        lines.append(f"  {op:<26} {choice}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pesc_kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print build information and the backend of each op")
    args = parser.parse_args(argv)
    if args.command == "info":
        print("\n".join(info_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
