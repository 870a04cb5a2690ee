"""Are quickstart runs bit-reproducible? The same command run in fresh processes, every file compared.

Each run is ``python -m glta_hf.cli quickstart --budget <budget> --no-progress --output-dir <new folder>`` in a fresh
process (a new ``PYTHONHASHSEED`` each time, as a user's runs get). Compared per stage, in pipeline order: the
LightGCN node embeddings, the generated texts, the item-stage and user-stage weights, the final checkpoint's weights
and user table: byte equality (sha256) and, for tensors, the largest absolute difference against the first run.
The first stage that differs is where the non-determinism enters.

    python benchmarks/perf/quickstart_determinism.py --budget tiny --runs 2
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _glta_bench_model import write_perf_result  # noqa: E402

FILES = ("work/graph/node_embeddings.safetensors", "work/texts.jsonl", "work/item/final/model.safetensors",
         "work/user/final/model.safetensors", "model.safetensors", "user_table.json")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


def _max_diff(a: Path, b: Path):
    if a.suffix != ".safetensors" or not (a.is_file() and b.is_file()):
        return None
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    if set(x) != set(y):
        return float("inf")
    return max(((x[k].double() - y[k].double()).abs().max().item() if x[k].numel() else 0.0) for k in x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", default="tiny")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="pass --threads N to the quickstart")
    p.add_argument("--out", default=str(HERE.parents[1] / "benchmarks" / "results"))
    args = p.parse_args()
    t_start = time.time()
    runs = []
    with tempfile.TemporaryDirectory(prefix="glta-qs-determinism-") as tmp:
        for n in range(args.runs):
            folder = Path(tmp) / f"run{n}"
            command = [sys.executable, "-m", "glta_hf.cli", "quickstart", "--budget", args.budget, "--no-progress",
                       "--output-dir", str(folder)] + (["--threads", str(args.threads)] if args.threads else [])
            load = os.getloadavg()
            subprocess.run(command, check=True, capture_output=True)
            runs.append({"sha256": {f: _sha(folder / f) for f in FILES}, "load_start": [round(x, 2) for x in load],
                         "load_end": [round(x, 2) for x in os.getloadavg()]})
            if n:
                runs[-1]["max_abs_diff_vs_run0"] = {f: _max_diff(Path(tmp) / "run0" / f, folder / f) for f in FILES}
            print(runs[-1], flush=True)
    identical = {f: len({r["sha256"][f] for r in runs}) == 1 for f in FILES}
    first = next((f for f in FILES if not identical[f]), None)
    write_perf_result(__file__, args, f"quickstart_determinism_{args.budget}", split="ml-latest-small quickstart",
                      metrics={"bit_identical": identical, "first_difference": first, "runs": runs},
                      t_start=t_start)


if __name__ == "__main__":
    main()
