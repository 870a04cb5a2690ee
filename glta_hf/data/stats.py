"""Table-1 statistics of a dataset and the ``glta data-stats`` subcommand.

Density is the paper's: interactions / (users x items), over all splits together. ``glta data-stats`` reports the
splits the pipeline trains on: by default the validation carve of the quickstart, ``align.py`` and
``pretrain_graph.py`` (``--val-fraction`` of each user's training interactions, ``--val-seed``) is taken out of
``#Train`` into ``#Validation``; ``--val-fraction 0`` shows the loader's split as it is.
"""
from __future__ import annotations

import json
from typing import Dict, List, Sequence

from .loaders import load_dataset
from .schema import TEST, TRAIN, VALIDATION

#: the pipeline's validation carve (``glta_hf.alignment_data.prepare_data``'s default, which reads it from here)
VAL_FRACTION = 0.1

#: (key, column header) of the statistics, in table order
COLUMNS = (("dataset", "Dataset"), ("users", "#Users"), ("items", "#Items"), ("interactions", "#Interactions"),
           ("train", "#Train"), ("validation", "#Validation"), ("test", "#Test"), ("density", "Density"),
           ("split", "Split"))


def dataset_stats(data) -> Dict[str, object]:
    """Users, items, interactions (all splits), per-split sizes, density and the split policy of a RecData."""
    sizes = {name: len(data.splits[name]) if name in data.splits else 0 for name in (TRAIN, VALIDATION, TEST)}
    interactions = sum(sizes.values())
    cells = data.num_users * data.num_items
    return {
        "dataset": data.name,
        "users": data.num_users,
        "items": data.num_items,
        "interactions": interactions,
        **sizes,
        "density": interactions / cells if cells else 0.0,
        "split": data.split_policy,
    }


def _cell(key: str, value) -> str:
    if key == "density":
        return f"{value:.4%}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_markdown(rows: Sequence[Dict[str, object]]) -> str:
    """A Markdown table of several :func:`dataset_stats` results (one row each)."""
    lines = ["| " + " | ".join(header for _, header in COLUMNS) + " |",
             "|" + "|".join("---" if key in ("dataset", "split") else "---:" for key, _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row[key]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def format_text(stats: Dict[str, object]) -> str:
    width = max(len(header) for _, header in COLUMNS)
    return "\n".join(f"{header.lstrip('#'):<{width}}  {_cell(key, stats[key])}" for key, header in COLUMNS)


def configure_parser(parser) -> None:
    from ..cli_args import add_dataset_arguments, carve_fraction, non_negative_float, non_negative_int

    add_dataset_arguments(parser, seed_flag="--seed")
    parser.add_argument("--min-user-interactions", type=non_negative_int, default=None)
    parser.add_argument("--min-item-interactions", type=non_negative_int, default=None)
    parser.add_argument("--rating-threshold", type=non_negative_float, default=None)
    parser.add_argument("--val-fraction", type=carve_fraction, default=VAL_FRACTION,
                        help=f"validation carved from each user's training interactions, as the pipeline does "
                             f"(default {VAL_FRACTION}; 0 = the loader's split as is)")
    parser.add_argument("--val-seed", type=non_negative_int, default=0, help="seed of the carve (default 0)")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")


def check_args(parser, args) -> None:
    """Cross-flag checks at parse time (``glta`` calls it before :func:`run`): a folder for non-embedded data."""
    from ..cli_args import require_data_dir

    require_data_dir(parser, args.dataset, args.data_dir)


def run(args) -> int:
    from ..cli_args import dataset_options

    options = dataset_options(args, seed_attr="seed")
    options.update({key: getattr(args, key) for key in ("min_user_interactions", "min_item_interactions",
                                                         "rating_threshold") if getattr(args, key) is not None})
    data = load_dataset(args.dataset, args.data_dir, **options)
    if args.val_fraction:  # the carve prepare_data makes (glta_hf.alignment_data): what the pipeline trains on
        data = data.with_validation(fraction=args.val_fraction, seed=args.val_seed)
    stats = dataset_stats(data)
    if args.format == "json":
        print(json.dumps(stats, indent=2))
    elif args.format == "markdown":
        print(format_markdown([stats]))
    else:
        print(format_text(stats))
    return 0


__all__: List[str] = ["dataset_stats", "format_markdown", "format_text", "configure_parser", "check_args", "run", "COLUMNS"]
