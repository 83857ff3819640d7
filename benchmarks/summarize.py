"""Print baseline/ours ratios from a pytest-benchmark JSON file (one row per case).

    pytest benchmarks --benchmark-json out.json && python benchmarks/summarize.py out.json

speedup = baseline median / ours median, both measured in the same run. Layer cases (family
"layer") also get a table of overhead = variant median / dense median and memory = variant peak
step bytes / dense peak step bytes.
"""
import json
import sys
from collections import defaultdict


def summarize(path):
    data = json.load(open(path))
    groups = defaultdict(dict)
    work = {}  # group -> (flops, bytes_moved) per iteration
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        groups[bench["group"]][info["candidate"]] = bench["stats"]["median"]
        work[bench["group"]] = (info.get("flops", 0), info.get("bytes_moved", 0))
    rows = []
    for group, times in groups.items():
        ours = times.get("pesc")
        for baseline, t in times.items():
            if baseline != "pesc" and ours:
                rows.append((group, baseline, t * 1e3, ours * 1e3, t / ours))
    width = max((len(r[0]) for r in rows), default=10)
    print(f"{'case':<{width}}  {'baseline':<16} {'base ms':>9} {'pesc ms':>9} {'speedup':>8}")
    for group, baseline, t_base, t_ours, ratio in rows:
        print(f"{group:<{width}}  {baseline:<16} {t_base:9.3f} {t_ours:9.3f} {ratio:7.2f}x")
    achieved = [(g, t["pesc"], *work[g]) for g, t in groups.items() if "pesc" in t and any(work[g])]
    if achieved:
        print(f"\n{'achieved by pesc':<{width}}  {'ms':>9} {'GFLOP/s':>9} {'GB/s':>9}")
        for group, t, flops, moved in achieved:
            print(f"{group:<{width}}  {t * 1e3:9.3f} {flops / t / 1e9:9.1f} {moved / t / 1e9:9.1f}")
    summarize_layers(data)
    machine = data.get("machine_info", {})
    print(f"\nmachine: {machine.get('cpu', {}).get('brand_raw', '?')}, {data.get('datetime', '')}")


def summarize_layers(data):
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if info.get("family") == "layer":
            groups[bench["group"]][info["candidate"]] = (bench["stats"]["median"], info.get("peak_bytes"))
    for group, results in groups.items():
        if "dense" not in results:
            continue
        dense_time, dense_peak = results["dense"]
        print(f"\n{group}\n  {'variant':<12} {'ms':>9} {'overhead':>9} {'peak MiB':>9} {'memory':>7}")
        for name, (t, peak) in results.items():
            memory = f"{peak / dense_peak:6.2f}x" if peak and dense_peak else "      -"
            peak_mib = f"{peak / 2**20:9.1f}" if peak is not None else "        -"
            print(f"  {name:<12} {t * 1e3:9.1f} {t / dense_time:8.3f}x {peak_mib} {memory}")


if __name__ == "__main__":
    summarize(sys.argv[1])
