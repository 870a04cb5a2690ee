"""The thread policy of the entry points (glta_hf.cpu_threads): passive OpenMP waiting unless the user chose."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glta_hf.cpu_threads import cpu_report, cpu_seconds, format_duration

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env_changes):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_changes, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_passive_unless_the_user_chose_a_policy():
    code = "import os; from glta_hf.cpu_threads import prefer_passive_openmp as p; print(p(), os.environ.get('OMP_WAIT_POLICY'))"
    assert _python(code).split() == ["True", "PASSIVE"]
    assert _python(code, OMP_WAIT_POLICY="ACTIVE").split() == ["True", "ACTIVE"]


def test_too_late_once_torch_is_loaded():
    """OpenMP read the variable when torch loaded: setting it now would claim a policy that is not in force."""
    code = ("import os, torch; from glta_hf.cpu_threads import prefer_passive_openmp as p; "
            "print(p(), os.environ.get('OMP_WAIT_POLICY'))")
    assert _python(code).split() == ["False", "None"]


def test_glta_commands_set_it_before_torch_loads():
    code = ("import os, sys; from glta_hf.cli import main; "
            "main(['data-stats', '--dataset', 'ml-latest-small', '--format', 'json']); "
            "print(os.environ.get('OMP_WAIT_POLICY'), file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, check=True)
    assert proc.stderr.strip().splitlines()[-1] == "PASSIVE"


def test_cpu_report_and_durations():
    start = cpu_seconds()
    sum(i * i for i in range(200_000))  # some CPU
    report = cpu_report(0.5, start)
    assert report["cpu_time_s"] >= 0 and report["wall_time_s"] == 0.5
    # cpu_time_s is rounded to 0.1 s, cpu_per_wall computed before rounding: they agree within 0.05 / 0.5 (+ its own
    # rounding to 0.01)
    assert report["cpu_per_wall"] == pytest.approx(report["cpu_time_s"] / 0.5, abs=0.11)
    assert [format_duration(s) for s in (5, 59.6, 60, 195.3)] == ["5 s", "1 min 0 s", "1 min 0 s", "3 min 15 s"]
