"""Benchmark result files: ``benchmarks/results/<dataset>/<run>.json``, one per run, with provenance.

Each file records what was run (``command``, ``config``), on what code (``commit``, ``-dirty`` when the tree had
uncommitted changes) and on what machine (``hardware``), so a number in BENCHMARKS.md can be traced and re-run.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

from .io_utils import write_json


def git_commit(cwd=None) -> str:
    """``git rev-parse HEAD`` plus ``-dirty`` when tracked files differ; ``"unknown"`` outside a checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def load_average() -> str:
    """The 1 / 5 / 15-minute load averages as ``"2.60 2.89 2.25"``: recorded beside every timing (2-core machines)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def hardware_info() -> Dict[str, Any]:
    """CPU model, core count, torch version and GPU name (if CUDA is available)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: Dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def write_run_result(
    results_dir,
    dataset: str,
    run: str,
    *,
    model: str,
    split: str,
    metrics: Dict[str, Any],
    command: str,
    wall_time_s: float,
    config: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write ``<results_dir>/<dataset>/<run>.json`` atomically and return its path."""
    path = Path(results_dir) / dataset / f"{run}.json"
    record = {
        "model": model,
        "dataset": dataset,
        "split": split,
        "metrics": metrics,
        "command": command,
        "commit": git_commit(),
        "hardware": hardware_info(),
        "wall_time_s": round(float(wall_time_s), 3),
        "config": config or {},
    }
    write_json(path, record)
    return path
