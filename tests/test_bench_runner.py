"""The benchmark runner on the tiny size set: JSON schema, chart and RESULTS.md rendering (no timings asserted)."""
import json
import subprocess
import sys
from pathlib import Path

from pesc_kernels.bench import __main__ as bench_cli
from pesc_kernels.bench import cases_for, report

ROOT = Path(__file__).resolve().parents[1]
CANDIDATE_KEYS = {"median_ms", "p25_ms", "p75_ms", "min_ms", "samples", "peak_memory_bytes", "ratio_to_baseline"}


def test_every_family_has_tiny_and_quick_cases():
    families = {c.family for c in cases_for(size="full")}
    for size in ("tiny", "quick"):
        assert families == {c.family for c in cases_for(size=size)}, size


def test_runner_writes_schema_and_chart(tmp_path, capsys):
    assert bench_cli.main(["--tiny", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and str(tmp_path / "speedups.png") in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["schema"] == report.SCHEMA
    assert {"date", "cpu", "torch", "build", "gpu", "op_backends"} <= set(results["machine"])
    assert set(results["machine"]["op_backends"].values()) <= {"kernel", "reference"}
    assert results["settings"]["size"] == "tiny" and results["settings"]["command"].startswith("pesc-bench")
    assert results["calibration"] is None  # CPU run
    assert {c.id for c in cases_for(size="tiny")} == {c["id"] for c in results["cases"]}
    for case in results["cases"]:
        assert case["baseline"] in case["candidates"]
        for stats in case["candidates"].values():
            assert CANDIDATE_KEYS <= set(stats), stats
            assert stats["samples"] >= 2 and stats["median_ms"] > 0
    png = (tmp_path / "speedups.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    # RESULTS.md rendering from that file (into a temporary copy of the script's folder layout).
    section = report.markdown_section(results)
    assert "| op | shape | baseline |" in section and results["settings"]["command"] in section
    assert "Op backends on cpu: `topk_gating` kernel" in section and "Load average (1 min)" in section
    assert "| layer | shape | variant |" in section


def test_make_results_script(tmp_path):
    out = tmp_path / "out"
    assert bench_cli.main(["--tiny", "--families", "gating", "--no-memory", "--out", str(out)]) == 0
    script = tmp_path / "benchmarks" / "make_results.py"
    script.parent.mkdir()
    script.write_text((ROOT / "benchmarks" / "make_results.py").read_text().replace(
        'HERE.parent / "python"', f'Path({str(ROOT / "python")!r})'))
    subprocess.run([sys.executable, str(script), str(out / "results.json")], check=True, capture_output=True)
    text = (script.parent / "RESULTS.md").read_text()
    assert "## CPU" in text and "topk_gating" in text and "No GPU figures yet" in text
