"""Turn runner results into the printed table, the JSON file, the PNG chart and RESULTS.md sections.

results.json (schema "pesc-bench/1"):
  {"schema", "machine": {...}, "settings": {device, dtype, size}, "calibration": {...} | null,
   "cases": [{"family", "name", "shape", "id", "baseline", "bytes_moved", "flops",
              "achieved_GBps"?, "achieved_GFLOPs"?, "bandwidth_fraction"?,
              "candidates": {label: {"median_ms", "p25_ms", "p75_ms", "min_ms", "samples",
                                     "peak_memory_bytes", "ratio_to_baseline",
                                     "memory_ratio_to_baseline"?, "pesc_speedup"?}}}]}
Layer cases (baseline "dense") are reported as overhead ratios: variant time / dense FFN time.
Op cases are reported against every baseline: one table row per (case, baseline), and a summary
of the speedup ranges per op and baseline, where a case's first candidate (its "baseline" field, the
one ratio_to_baseline refers to; for routing the lean plain-PyTorch formulation) is marked.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

SCHEMA = "pesc-bench/1"


def is_layer_case(case: dict) -> bool:
    return case["baseline"] == "dense"


def op_rows(results: dict) -> list[list[str]]:
    rows = []
    for case in results["cases"]:
        if is_layer_case(case) or "pesc" not in case["candidates"]:
            continue
        ours = case["candidates"]["pesc"]
        for label, stats in case["candidates"].items():
            if label == "pesc":
                continue
            spread = f"{ours['p25_ms']:.3g}-{ours['p75_ms']:.3g}"
            row = [case["name"], case["shape"], label, f"{stats['median_ms']:.3f}", f"{ours['median_ms']:.3f}",
                   spread, f"{stats['pesc_speedup']:.2f}x"]
            rows.append(row + [_achieved(results, case)])
    return rows


def layer_rows(results: dict) -> list[list[str]]:
    rows = []
    for case in results["cases"]:
        if not is_layer_case(case):
            continue
        dense = case["candidates"]["dense"]
        for label, stats in case["candidates"].items():
            if label == "dense":
                continue
            mem = stats.get("memory_ratio_to_baseline")
            rows.append([case["name"], case["shape"], label, f"{dense['median_ms']:.2f}", f"{stats['median_ms']:.2f}",
                         f"{stats['ratio_to_baseline']:.3f}", f"{mem:.2f}" if mem is not None else "n/a"])
    return rows


def summary_rows(results: dict) -> list[list[str]]:
    """pesc's speedup over each baseline of each op, over the op's shapes: min, median, max."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    primary: set[tuple[str, str, str]] = set()
    for case in results["cases"]:
        if is_layer_case(case) or "pesc" not in case["candidates"]:
            continue
        for label, stats in case["candidates"].items():
            if label == "pesc":
                continue
            key = (case["family"], case["name"], label)
            groups.setdefault(key, []).append(stats["pesc_speedup"])
            if label == case["baseline"]:
                primary.add(key)
    return [[family, name, label + (" (runner baseline)" if (family, name, label) in primary else ""), str(len(ratios)),
             f"{min(ratios):.2f}x", f"{statistics.median(ratios):.2f}x", f"{max(ratios):.2f}x"]
            for (family, name, label), ratios in groups.items()]


OP_HEADER = ["op", "shape", "baseline", "baseline ms", "pesc ms", "pesc p25-p75", "speedup"]
SUMMARY_HEADER = ["family", "op", "baseline", "shapes", "min speedup", "median speedup", "max speedup"]
LAYER_HEADER = ["layer", "shape", "variant", "dense FFN ms", "variant ms", "overhead ratio", "peak-mem ratio"]


def _achieved(results: dict, case: dict) -> str:
    """What pesc achieved: bandwidth as a fraction of the measured copy bandwidth (GPU), GFLOP/s."""
    parts = []
    if results.get("calibration") and case.get("bandwidth_fraction") is not None:
        parts.append(f"{case['achieved_GBps']:.0f} GB/s ({case['bandwidth_fraction']:.2f})")
    if case.get("achieved_GFLOPs"):
        parts.append(f"{case['achieved_GFLOPs']:.0f} GFLOP/s")
    return "; ".join(parts)


def _op_header(results):
    return OP_HEADER + ["achieved by pesc (GB/s: fraction of copy bw)" if results.get("calibration") else
                        "achieved by pesc"]


def format_text_table(header, rows) -> str:
    if not rows:
        return ""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_markdown_table(header, rows) -> str:
    if not rows:
        return ""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def text_report(results: dict) -> str:
    parts = []
    m, s = results["machine"], results["settings"]
    parts.append(f"pesc-bench: {s['device']} {s['dtype']} size={s['size']}  |  {m['cpu']} "
                 f"({m['torch_threads']} threads){'  |  ' + m['gpu'] if m.get('gpu') else ''}  |  torch {m['torch']}")
    if results.get("calibration"):
        c = results["calibration"]
        parts.append(f"calibration: copy {c['copy_bandwidth_GBps']:.0f} GB/s, "
                     f"{c['matmul_dtype']} matmul {c['matmul_TFLOPs']:.0f} TFLOP/s")
    for header, rows in ((_op_header(results), op_rows(results)), (SUMMARY_HEADER, summary_rows(results)),
                         (LAYER_HEADER, layer_rows(results))):
        table = format_text_table(header, rows)
        if table:
            parts += ["", table]
    return "\n".join(parts)


def markdown_section(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    where = m["gpu"] or m["cpu"]
    families = f"; {', '.join(s['families'])} only" if s.get("families") else ""
    lines = [f"### {s['device'].upper()} {s['dtype']} ({s['size']} size set{families}), {m['date'][:10]}", "",
             f"Machine: {where}; {m['cpu_count']} CPUs, {m['torch_threads']} torch threads; torch {m['torch']}; "
             f"pesc_kernels {m['pesc_kernels']} (CUDA kernels compiled: {m['build'].get('cuda_compiled')}).", "",
             f"Command: `{s['command']}`", ""]
    if m.get("load_average"):
        end = m.get("load_average_end")
        lines += [f"Load average (1 min) at the start of the run: {m['load_average'][0]:g}"
                  + (f", at the end: {end[0]:g}" if end else "") + f" (on {m['cpu_count']} CPUs).", ""]
    if m.get("op_backends"):  # the layer uses whichever ops have kernels; the rest run the reference
        lines += ["Op backends on " + s["device"] + ": " + ", ".join(f"`{op}` {kind}" for op, kind in
                                                                  m["op_backends"].items()) + ".", ""]
    if results.get("calibration"):
        c = results["calibration"]
        lines += [f"Calibration in the same run: device-to-device copy {c['copy_bandwidth_GBps']:.0f} GB/s "
                  f"(read + write), {c['matmul_dtype']} matmul {c['matmul_TFLOPs']:.0f} TFLOP/s.", ""]
    ops_table = format_markdown_table(_op_header(results), op_rows(results))
    if ops_table:
        lines += ["Ops (speedup = baseline median / pesc median, same run):", "", ops_table, ""]
        lines += ["Speedup of pesc over each baseline, across each op's shapes (runner baseline: the case's first "
                  "candidate, which `ratio_to_baseline` refers to):", "",
                  format_markdown_table(SUMMARY_HEADER, summary_rows(results)), ""]
    layer_table = format_markdown_table(LAYER_HEADER, layer_rows(results))
    if layer_table:
        lines += ["Layer (overhead ratio = variant fwd+bwd time / dense FFN fwd+bwd time; peak-mem ratio = peak "
                  "memory of one training step / the dense FFN's):", "", layer_table, ""]
    return "\n".join(lines)


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=2))


def load_json(path: Path) -> dict:
    results = json.loads(Path(path).read_text())
    if results.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a pesc-bench results file (schema {results.get('schema')!r})")
    return results


def plot(results: dict, path: Path) -> None:
    """Bar charts: pesc speedup over each baseline (log scale), and layer overhead ratios."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    op_bars = [(f"{c['name']} [{c['shape']}] vs {label}", s["pesc_speedup"])
               for c in results["cases"] if not is_layer_case(c) and "pesc" in c["candidates"]
               for label, s in c["candidates"].items() if label != "pesc"]
    layer_cases = [c for c in results["cases"] if is_layer_case(c)]
    panels = (1 if op_bars else 0) + (1 if layer_cases else 0)
    height = max(3.0, 0.32 * max(len(op_bars), 1) + 1.5) if op_bars else 4.0
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(8 * max(panels, 1), height), squeeze=False)
    axes = list(axes[0])
    if op_bars:
        ax = axes.pop(0)
        labels, values = zip(*op_bars)
        colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(min(0.5, min(values) / 1.3), max(2.0, max(values) * 1.6))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.axvline(1.0, color="black", linewidth=0.8)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}x", va="center", fontsize=7)
        ax.set_xlabel("pesc speedup over baseline (medians, same run)")
        ax.set_title("ops")
    if layer_cases:
        ax = axes.pop(0)
        variants = [v for v in layer_cases[0]["candidates"] if v != "dense"]
        width = 0.8 / max(len(variants), 1)
        for j, variant in enumerate(variants):
            vals = [c["candidates"][variant]["ratio_to_baseline"] for c in layer_cases]
            xs = [i + j * width for i in range(len(layer_cases))]
            bars = ax.bar(xs, vals, width, label=variant)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(layer_cases))],
                      [c["shape"] for c in layer_cases], fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel("fwd+bwd time / dense FFN (lower is better)")
        ax.set_title("layer overhead ratio")
        ax.legend(fontsize=7)
    m, s = results["machine"], results["settings"]
    fig.suptitle(f"pesc_kernels on {m['gpu'] or m['cpu']} ({s['device']}, {s['dtype']}, {s['size']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
