"""Reading a persistent prefix store: entry checksums (index format 3) vs whole-shard checksums (format 2).

A store of ``--entries`` prefixes of SmolLM2-135M's shape (30 layers x 3 KV heads x 64, ``--tokens`` tokens each:
amazon-scientific's ~109-token tails), written ``--shard-entries`` to a shard as training writes them, is read by a
fresh ``PrefixStore`` (nothing in memory) twice per repeat, once with each index: format 3 (this version: each
entry's sha256, checked as it is read) and format 2 (the same shards, the index of the previous version: each
shard's sha256, checked whole when the shard is first opened); each entry served is copied once, as the LLM's use
of it reads it. Two reads: ``subset`` (``--read-fraction`` of the
users, in random order: a validation pass of 500 of 8,317 users, or a server's first requests) and ``all`` (every
entry: a test pass), each ``warm`` (the store in the page cache: hashing only) and ``cold`` (its shards dropped from
the page cache first, ``posix_fadvise(DONTNEED)``: a store not yet in memory, read from disk). A store larger than
memory (where format 2 reads a shard's bytes twice, once to hash it and once to serve it, evicted in between):
run the script in a memory cgroup smaller than the store (the limit is recorded, ``--name`` keeps both results).
``os.getloadavg()`` is recorded with every figure.

    python benchmarks/perf/prefix_store_read.py
    mkdir /sys/fs/cgroup/memory/glta && echo 1G > /sys/fs/cgroup/memory/glta/memory.limit_in_bytes &&
      (echo $BASHPID > /sys/fs/cgroup/memory/glta/cgroup.procs && exec python benchmarks/perf/prefix_store_read.py
       --name prefix_store_read_1gb_memory)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _glta_bench_model import write_perf_result  # noqa: E402

from glta_hf.checkpoint import file_sha256  # noqa: E402
from glta_hf.prefix_cache import INDEX_NAME, PrefixKey, PrefixKV, PrefixStore  # noqa: E402


def build_store(folder: Path, args) -> list:
    keys = [PrefixKey(user, f"text{user}", "llm", "torch.float32", "text_first") for user in range(args.entries)]
    shape = (30, 1, 3, args.tokens, 64)
    gen = torch.Generator().manual_seed(0)

    def rows(positions):
        n = len(positions)
        return PrefixKV(torch.randn(shape[:1] + (n,) + shape[2:], generator=gen),
                        torch.randn(shape[:1] + (n,) + shape[2:], generator=gen), torch.ones(n, args.tokens, dtype=torch.long))

    with PrefixStore(max_bytes=0, folder=folder) as store:
        for start in range(0, len(keys), args.shard_entries):
            store.get_or_compute(keys[start:start + args.shard_entries], rows)
    return keys


def as_format_2(index: dict, folder: Path) -> dict:
    """The previous version's index of the same shards: no entry checksums, each shard's whole sha256."""
    return {"format": "glta-prefix-index-2",
            "entries": [{k: v for k, v in entry.items() if k != "sha256"} for entry in index["entries"]],
            "heads": index["heads"],
            "shards": {shard: {"size": record["size"], "sha256": file_sha256(folder / shard)}
                       for shard, record in index["shards"].items()}}


def never(positions):
    raise AssertionError(f"recomputed {positions}: the store should serve them")


def memory_limit_bytes():
    """This process's memory cgroup limit (v1 or v2), None when unlimited or unknown."""
    cgroups = Path("/proc/self/cgroup")
    for line in cgroups.read_text().splitlines() if cgroups.exists() else []:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # v1
            limit = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes"
        elif controllers == "":  # v2
            limit = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max"
        else:
            continue
        value = limit.read_text().strip() if limit.exists() else ""
        if value.isdigit() and int(value) < 1 << 60:  # v1 writes a huge number for "unlimited", v2 "max"
            return int(value)
    return None


def drop_from_page_cache(folder: Path) -> None:
    for shard in folder.glob("prefix-*.safetensors"):
        fd = os.open(shard, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_read(folder: Path, keys: list, cold: bool) -> dict:
    if cold:
        drop_from_page_cache(folder)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    store = PrefixStore(max_bytes=0, folder=folder)
    for key in keys:
        for entry in store.get_or_compute([key], never):  # used, as the LLM uses it: a shard's tensors are
            entry.keys.clone(), entry.values.clone()       # memory-mapped, read only when touched
    return {"s": round(time.perf_counter() - start, 3), "load_start": round(load, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=400)
    p.add_argument("--tokens", type=int, default=109, help="tokens per entry (amazon-scientific's mean tail)")
    p.add_argument("--shard-entries", type=int, default=14, help="entries per shard (a training batch's new ones)")
    p.add_argument("--read-fraction", type=float, default=0.06, help="the subset read (500 / 8,317 users)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="prefix_store_read", help="the result file's name")
    p.add_argument("--out", default=str(HERE.parents[1] / "benchmarks" / "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="glta-prefix-read-") as tmp:
        folder = Path(tmp) / "store"
        keys = build_store(folder, args)
        index_path = folder / INDEX_NAME
        indexes = {"format_3": index_path.read_text()}
        indexes["format_2"] = json.dumps(as_format_2(json.loads(indexes["format_3"]), folder))
        store_bytes = sum(f.stat().st_size for f in folder.glob("prefix-*.safetensors"))
        order = random.Random(0)
        runs = {f"{read}_{cache}_{fmt}": [] for read in ("subset", "all") for cache in ("warm", "cold") for fmt in indexes}
        for repeat in range(args.repeats):
            subset = order.sample(keys, max(1, round(args.read_fraction * len(keys))))
            everything = order.sample(keys, len(keys))
            for read, chosen in (("subset", subset), ("all", everything)):
                for cache in ("warm", "cold"):
                    for fmt in (("format_3", "format_2") if repeat % 2 == 0 else ("format_2", "format_3")):
                        index_path.write_text(indexes[fmt])
                        name = f"{read}_{cache}_{fmt}"
                        runs[name].append(timed_read(folder, chosen, cold=cache == "cold"))
                        print(repeat, name, runs[name][-1], flush=True)

    def best(name):
        return min(run["s"] for run in runs[name])

    metrics = {"store_gb": round(store_bytes / 1e9, 2), "shards": -(-args.entries // args.shard_entries),
               "subset_entries": max(1, round(args.read_fraction * args.entries)),
               **{f"{read}_{cache}_format_2_over_format_3":
                  round(best(f"{read}_{cache}_format_2") / best(f"{read}_{cache}_format_3"), 2)
                  for read in ("subset", "all") for cache in ("warm", "cold")}, "runs": runs}
    write_perf_result(__file__, args, args.name, split="synthetic store, SmolLM2-135M's KV shape",
                      metrics=metrics, t_start=t_start, memory_limit_bytes=memory_limit_bytes())


if __name__ == "__main__":
    main()
