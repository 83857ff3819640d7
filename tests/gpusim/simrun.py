"""Runs batches of cases through the runner under GPGPU-Sim (built by scripts/gpusim/build.sh).

The cases are split into shards that run as parallel simulator processes (each process pays the
PTX extraction and ptxas start-up once for all its cases). If a process dies in the middle (a
simulator abort), the case it was running is reported as crashed with the end of its log, and the
shard goes on in a fresh process from the next case.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

from simcase import read_results, write_batch

LOG_TAIL_LINES = 40
WITH_SIM = Path(__file__).resolve().parents[2] / "scripts" / "gpusim" / "with-sim"


@dataclasses.dataclass
class Simulator:
    home: Path  # the simulator's build directory (the cache)
    runner: Path  # the runner binary, compiled with nvcc-sim

    @classmethod
    def from_environment(cls) -> Simulator:
        missing = [v for v in ("PESC_GPUSIM_HOME", "PESC_GPUSIM_RUNNER") if not os.environ.get(v)]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not set: run these tests through `make test-gpusim`")
        home, runner = Path(os.environ["PESC_GPUSIM_HOME"]), Path(os.environ["PESC_GPUSIM_RUNNER"])
        for path in (home / "source" / "env.sh", runner):
            if not path.exists():
                raise RuntimeError(f"{path} does not exist: run these tests through `make test-gpusim`")
        return cls(home, runner)

    def command(self, program: Path, *args) -> list:
        """The command line that runs `program args...` under the simulator."""
        return [str(WITH_SIM), str(self.home), "sim-run", str(program), *map(str, args)]


@dataclasses.dataclass
class Crash:
    exit_code: int
    log_tail: str


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def run_cases(sim: Simulator, cases, workdir: Path, shards: int, timeout_s: float):
    """Runs every case; returns ({id: CaseResult}, {id: Crash}, seconds). Cases costlier first
    (`case.cost`) are dealt to the least loaded shard so the shards finish together."""
    workdir.mkdir(parents=True, exist_ok=True)
    groups = [[] for _ in range(shards)]
    load = [0.0] * shards
    for case in sorted(cases, key=lambda c: -c.cost):
        i = load.index(min(load))
        groups[i].append(case)
        load[i] += case.cost
    pending = {i: g for i, g in enumerate(groups) if g}
    results, crashes, attempt = {}, {}, 0
    start = time.monotonic()
    while pending:
        procs = {}
        for i, group in pending.items():
            manifest = workdir / f"shard{i}-try{attempt}.txt"
            write_batch(group, manifest)
            prefix = workdir / f"shard{i}-try{attempt}-results"
            log = workdir / f"shard{i}-try{attempt}.log"
            with open(log, "w") as out:  # own process group: a timeout kills the program, not just its wrapper
                proc = subprocess.Popen(sim.command(sim.runner, manifest, prefix), stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            procs[i] = (proc, prefix, log)
        next_pending = {}
        for i, (proc, prefix, log) in procs.items():
            left = max(1.0, timeout_s - (time.monotonic() - start))
            try:
                code = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
            done = read_results(prefix)
            results.update(done)
            remaining = [c for c in pending[i] if c.id not in done]
            if not remaining:
                continue
            crashes[remaining[0].id] = Crash(code, _tail(log))
            if time.monotonic() - start < timeout_s:
                if remaining[1:]:
                    next_pending[i] = remaining[1:]
            else:
                for c in remaining[1:]:
                    crashes[c.id] = Crash(code, f"not run: the simulated-GPU runs passed {timeout_s:.0f} s")
        pending = next_pending
        attempt += 1
    return results, crashes, time.monotonic() - start
