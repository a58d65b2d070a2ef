"""The `satchel` command line.

Only `--version` and `--help` exist so far; the daemon work adds `run`, `status`, `search` and
the rest, each speaking to the daemon's socket API.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from daemon import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every `satchel` command."""
    parser = argparse.ArgumentParser(
        prog="satchel",
        description=(
            "Satchel keeps what you read (feeds, pages from your browser) as embedded chunks "
            "and answers semantic queries from local programs."
        ),
    )
    parser.add_argument("--version", action="version", version=f"satchel {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `satchel` console script."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
