"""A small job runner for benchmarks that train: one-thread processes, ``parallel`` at a time.

Each job is a command line run with one thread (``OMP_NUM_THREADS=1``), so that a CPU-time budget
means one core; its output goes to ``<work>/<name>.log``, and its wall time, CPU time and peak
resident memory are recorded in ``job.facts``.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass
class Job:
    name: str
    command: list[str]
    after: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


def run_jobs(jobs: list[Job], work: Path, parallel: int) -> dict[str, Job]:
    """Run the jobs, ``parallel`` at a time, each after the jobs it names; record wall, CPU and peak RSS.

    A job that fails stops the runner with its log's last lines (the jobs still running go on).
    """
    env = {**os.environ, **ONE_THREAD}
    pending, done, running = list(jobs), {}, {}
    while pending or running:
        for job in [j for j in pending if all(a in done for a in j.after)][: parallel - len(running)]:
            pending.remove(job)
            log = open(work / f"{job.name}.log", "a")
            proc = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            running[proc.pid] = (job, log, time.perf_counter())
            print(f"  {time.strftime('%H:%M:%S')} start {job.name}", flush=True)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        job, log, start = running.pop(pid)
        log.close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            tail = (work / f"{job.name}.log").read_text().splitlines()[-15:]
            raise SystemExit(f"{job.name} failed (exit {code}):\n" + "\n".join(tail))
        job.facts.update(command=shlex.join(job.command), wall_seconds=round(time.perf_counter() - start, 1),
                         cpu_seconds=round(usage.ru_utime + usage.ru_stime, 1), peak_rss_mb=round(usage.ru_maxrss / 1024, 1))
        done[job.name] = job
        print(f"  {time.strftime('%H:%M:%S')} done  {job.name}: {job.facts['cpu_seconds']:.0f} CPU-s", flush=True)
    return done
