"""The ``glta`` console script.

Each subcommand lives in its own module, which defines ``configure_parser(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so ``glta --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .errors import GLTAError

#: subcommand -> (module, one-line help)
COMMANDS = {
    "data-stats": ("glta_hf.data.stats", "print a dataset's Table-1 statistics (users, items, interactions, density)"),
    "quickstart": ("glta_hf.quickstart", "run the whole pipeline offline on the embedded ml-latest-small + SmolLM2"),
    "benchmark": ("glta_hf.benchmark", "train and evaluate every model of the paper's comparison on one dataset"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glta", description="Graph-Language Token Alignment recommenders.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        build_parser().parse_args(argv or ["--help"])  # prints help / the usage error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"glta {name}", description=help_text)
    module.configure_parser(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except GLTAError as err:
        print(f"glta {name}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
