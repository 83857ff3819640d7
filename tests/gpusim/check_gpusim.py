"""Every CUDA launcher under functional GPU simulation (GPGPU-Sim, sm_75 PTX), checked against the
CPU kernels. Run it with `make test-gpusim`, which builds the simulator and the runner and sets
PESC_GPUSIM_HOME / PESC_GPUSIM_RUNNER.

The file is not named test_*.py on purpose: `pytest tests` (make test) must not collect it; the
Makefile runs it by name. Each case is generated here (seeded inputs, odd shapes), all selected
cases run in one batch of simulator processes (session fixture), and each test then checks the
outputs of its case. PESC_GPUSIM_JOBS sets the number of parallel simulator processes (default 2).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cases_adapter
import cases_gating
import cases_permute
import cases_routing
import pytest
from simrun import Simulator, run_cases

ALL_CASES = cases_gating.cases() + cases_permute.cases() + cases_adapter.cases() + cases_routing.cases()
assert len({c.id for c in ALL_CASES}) == len(ALL_CASES), "case ids must be unique"
TIMEOUT_S = float(os.environ.get("PESC_GPUSIM_TIMEOUT", 1500))


@pytest.fixture(scope="session")
def simulated(request, tmp_path_factory):
    selected = [item.callspec.params["case"] for item in request.session.items
                if hasattr(item, "callspec") and "case" in item.callspec.params]
    sim = Simulator.from_environment()
    results, crashes, seconds = run_cases(sim, selected, tmp_path_factory.mktemp("gpusim"),
                                          shards=int(os.environ.get("PESC_GPUSIM_JOBS", 2)), timeout_s=TIMEOUT_S)
    print(f"\nsimulated {len(selected)} cases in {seconds:.0f} s")
    return results, crashes


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_simulated(case, simulated):
    results, crashes = simulated
    if case.id in crashes:
        crash = crashes[case.id]
        pytest.fail(f"the simulator process died (exit {crash.exit_code}) running this case; end of its log:\n"
                    f"{crash.log_tail}")
    case.check(results[case.id])


REPROS = sorted(p.name for p in (Path(__file__).parent / "repro").iterdir() if any(p.glob("*.cu")))


@pytest.mark.parametrize("name", REPROS)
def test_simulator_reproducer(name):
    """The simulator itself: each reproducer of a simulator bug that scripts/gpusim/gpgpusim-pesc.patch
    fixes must pass (a simulator built without that patch fails here, not in a kernel case)."""
    sim = Simulator.from_environment()
    program = Path(os.environ.get("PESC_GPUSIM_REPROS", "")) / name
    assert program.exists(), f"{program} not built: run through `make test-gpusim`"
    run = subprocess.run(sim.command(program), capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith(("RESULT", "PASS", "FAIL"))]
    assert run.returncode == 0 and lines[-1:] == ["PASS"], "\n".join(lines) or run.stdout[-3000:]
