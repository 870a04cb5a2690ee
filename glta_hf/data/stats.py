"""Table-1 statistics of a dataset and the ``glta data-stats`` subcommand.

Density is the paper's: interactions / (users x items), over all splits together.
"""
from __future__ import annotations

import json
from typing import Dict, List, Sequence

from .loaders import DATASETS, load_dataset
from .schema import TEST, TRAIN, VALIDATION

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
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", default=None,
                        help="dataset folder (default: the embedded copy, for ml-latest-small)")
    parser.add_argument("--split", choices=("fixed", "random", "loo"), default=None,
                        help="default: fixed for ml-1m, random elsewhere")
    parser.add_argument("--test-fraction", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--min-user-interactions", type=int, default=None)
    parser.add_argument("--min-item-interactions", type=int, default=None)
    parser.add_argument("--rating-threshold", type=float, default=None)
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")


def run(args) -> int:
    options = {key: getattr(args, key) for key in ("split", "test_fraction", "seed", "min_user_interactions",
                                                   "min_item_interactions", "rating_threshold")}
    options = {k: v for k, v in options.items() if v is not None}
    stats = dataset_stats(load_dataset(args.dataset, args.data_dir, **options))
    if args.format == "json":
        print(json.dumps(stats, indent=2))
    elif args.format == "markdown":
        print(format_markdown([stats]))
    else:
        print(format_text(stats))
    return 0


__all__: List[str] = ["dataset_stats", "format_markdown", "format_text", "configure_parser", "run", "COLUMNS"]
