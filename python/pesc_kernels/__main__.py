"""Command line.

    python -m pesc_kernels info                      what was built and which backend each op uses
    python -m pesc_kernels convert SRC DST --to X    rewrite a PESC checkpoint directory as X: pesc
                                                     (ours), camelidae, sparsetral or qwen2idae
                                                     (the official layouts); see pesc_kernels.checkpoints.convert
"""
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
    from .checkpoints.convert import TARGETS

    convert = sub.add_parser("convert", help="rewrite a PESC checkpoint directory in another layout, streaming "
                             "one tensor at a time (the output appears under DST only when complete)")
    convert.add_argument("src", metavar="SRC", help="checkpoint directory: pesc_kernels or official PESC")
    convert.add_argument("dst", metavar="DST", help="new output directory (must not exist, or be empty)")
    convert.add_argument("--to", required=True, choices=TARGETS, help="layout to write")
    convert.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.command == "info":
        print("\n".join(info_lines()))
    elif args.command == "convert":
        return run_convert(args)
    return 0


def run_convert(args) -> int:
    from .checkpoints.convert import convert

    try:
        out = convert(args.src, args.dst, args.to, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.to} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
