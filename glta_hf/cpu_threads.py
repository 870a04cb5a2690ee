"""CPU thread policy of the entry points: OpenMP threads that sleep when they wait, and the run's CPU time.

torch's CPU kernels run on an OpenMP pool with one thread per core. libgomp's default wait policy lets a thread that
finished its share spin on the core before sleeping; on a machine where another process wants that core, the
spinning thread competes with it and with its own sibling, so the same work costs several times the CPU.
Measured on SmolLM2-135M's shapes (``benchmarks/perf/thread_scaling.py``, BENCHMARKS.md "Threads"): with one busy
process on a 2-core machine, 2 threads cost 3.8x the CPU (2.4x the wall time) of 1 thread for a training step under
the default policy, and 1.1x the CPU (1.0x the wall time) with ``OMP_WAIT_POLICY=PASSIVE``; on a quiet machine the
passive pool keeps most of the 2-thread speed-up. So the ``glta`` commands and the training scripts ask for the
passive policy unless the user chose one.

OpenMP reads the variable once, when torch loads its thread pool, so :func:`prefer_passive_openmp` must run before
``import torch``; it says whether it could. This module imports nothing heavy.
"""
from __future__ import annotations

import os
import sys
from typing import Dict

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"


def prefer_passive_openmp() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy; True when the policy in force is the one
    the environment now names (False: torch was imported first, so its pool keeps the policy it started with)."""
    torch_loaded = "torch" in sys.modules
    if WAIT_POLICY_ENV not in os.environ and not torch_loaded:
        os.environ[WAIT_POLICY_ENV] = DEFAULT_WAIT_POLICY
    return not torch_loaded


def wait_policy() -> str:
    """The OpenMP wait policy named by the environment (``default``: libgomp's spin-then-sleep)."""
    return os.environ.get(WAIT_POLICY_ENV, "default")


def cpu_seconds() -> float:
    """CPU time (user + system, every thread, and finished child processes) of this process so far."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def cpu_report(wall_s: float, cpu_start_s: float = 0.0) -> Dict[str, float]:
    """``{"wall_time_s", "cpu_time_s", "cpu_per_wall"}`` of a run that took ``wall_s`` and started at
    ``cpu_start_s`` (a :func:`cpu_seconds` reading)."""
    cpu = cpu_seconds() - cpu_start_s
    return {"wall_time_s": round(wall_s, 1), "cpu_time_s": round(cpu, 1),
            "cpu_per_wall": round(cpu / wall_s, 2) if wall_s > 0 else float("nan")}


def format_duration(seconds: float) -> str:
    """``95.2`` -> ``1 min 35 s`` (the README's spelling of times)."""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
