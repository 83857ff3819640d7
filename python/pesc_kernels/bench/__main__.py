"""Benchmark runner: ``python -m pesc_kernels.bench`` (console script ``pesc-bench``).

Measures every op against its reference baseline and the PESC layer against the dense FFN and the
Camelidae- and Sparsetral-style layers, alternating candidates within one run. Writes
results.json, a PNG chart and prints the table. Examples::

    pesc-bench --quick                       # CPU, float32, the quick size set (a few minutes)
    pesc-bench --device cuda --dtype bfloat16 --full --out gpu-results
    pesc-bench --families gating,permute --tiny
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import cases_for, report
from .machine import cuda_calibration, load_average, machine_info
from .runner import SIZE_BUDGETS, measure_case


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="pesc-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")
    size = parser.add_mutually_exclusive_group()
    for name in ("tiny", "quick", "full"):
        size.add_argument(f"--{name}", dest="size", action="store_const", const=name)
    size.add_argument("--gpu-set", dest="size", action="store_const", const="gpu",
                      help="the GPU target shapes (what scripts/gpu_check.sh runs)")
    parser.set_defaults(size="quick")
    parser.add_argument("--families", default=None, help="comma-separated subset, e.g. gating,permute")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    return parser.parse_args(argv)


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("pesc-bench: --device cuda but no GPU is visible")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    families = args.families.split(",") if args.families else None
    selected = [c for c in cases_for(size=args.size) if families is None or c.family in families]
    if not selected:
        raise SystemExit(f"pesc-bench: no cases for families={families} size={args.size}")
    results = {
        "schema": report.SCHEMA,
        "machine": machine_info(device),
        "settings": {"device": device.type, "dtype": str(dtype).replace("torch.", ""), "size": args.size,
                     "families": families,
                     "command": "pesc-bench " + " ".join(args.argv)},
        "calibration": cuda_calibration(device, dtype) if device.type == "cuda" else None,
        "cases": [],
    }
    from tqdm import tqdm  # present: main() checked the extra

    for case in tqdm(selected, desc="pesc-bench", unit="case"):
        result = measure_case(case, device, dtype, SIZE_BUDGETS[args.size], measure_memory=not args.no_memory)
        if results["calibration"] and result.get("achieved_GBps"):
            result["bandwidth_fraction"] = result["achieved_GBps"] / results["calibration"]["copy_bandwidth_GBps"]
        results["cases"].append(result)
    results["machine"]["load_average_end"] = load_average()
    return results


def require_bench_extra() -> None:
    """Fail before measuring anything when the ``bench`` extra (tqdm, matplotlib) is missing."""
    import importlib.util

    missing = [name for name in ("tqdm", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"pesc-bench needs {' and '.join(missing)}: pip install pesc_kernels[bench]")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    require_bench_extra()
    args.argv = argv
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "results.json", args.out / "speedups.png"
    report.write_json(results, json_path)
    report.plot(results, png_path)
    print(report.text_report(results))
    print(f"\nresults: {json_path}\nchart:   {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
