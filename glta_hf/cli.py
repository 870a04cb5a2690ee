"""The ``glta`` console script.

Each subcommand lives in its own module, which defines ``configure_parser(parser)`` and ``run(args) -> int``
(and optionally ``check_args(parser, args)``: checks that call ``parser.error`` before ``run`` -- the data folder,
the LLM reference, the arguments the run will build); modules are imported only when their subcommand runs, and
``import glta_hf`` itself loads neither torch nor transformers, so ``glta --help`` and ``glta --version`` answer at
once. Parsers are :class:`~glta_hf.cli_args.GLTAArgumentParser` (no abbreviations, underscore spellings accepted).

Exit codes: 0 success; 2 a usage error (no command, an unknown command, an invalid flag value, an unwritable output,
an LLM that does not resolve, or a :class:`~glta_hf.errors.GLTAError` about an option, ``cli_args.USAGE_ERRORS``);
1 any other ``GLTAError`` (a malformed data file, an inconsistent checkpoint) or an ``OSError`` (a full disk). Each
is ONE ``glta COMMAND: error: ...`` line on stderr, never a traceback.
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

from .cli_args import GLTAArgumentParser, run_reporting_errors
from .cpu_threads import prefer_passive_openmp

#: subcommand -> (module, one-line help)
COMMANDS = {
    "data-stats": ("glta_hf.data.stats", "print a dataset's Table-1 statistics (users, items, interactions, density)"),
    "quickstart": ("glta_hf.quickstart", "run the whole pipeline offline on the embedded ml-latest-small + SmolLM2"),
    "benchmark": ("glta_hf.benchmark", "train and evaluate every model of the paper's comparison on one dataset"),
}


def build_parser() -> GLTAArgumentParser:
    from . import __version__

    parser = GLTAArgumentParser(prog="glta", description="Graph-Language Token Alignment recommenders.")
    parser.add_argument("--version", action="version", version=f"glta-hf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # no command: the help, as a usage error
        build_parser().print_help(sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints help / the version / the usage error and exits (0 or 2)
        return 2
    name, rest = argv[0], argv[1:]
    prefer_passive_openmp()  # before any command imports torch (glta_hf.cpu_threads says why)
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = GLTAArgumentParser(prog=f"glta {name}", description=help_text)
    module.configure_parser(parser)
    args = parser.parse_args(rest)  # invalid flags: argparse's usage error, exit code 2
    if hasattr(module, "check_args"):
        module.check_args(parser, args)
    return run_reporting_errors(f"glta {name}", lambda: module.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
