"""The ``reshard`` command line. Thin: subcommands call the public API.

Exit codes: 0 ok, 1 the command failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys

from .interop.convert import add_convert_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reshard", description="reshard checkpoint tools")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
