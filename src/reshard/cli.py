"""The ``reshard`` command line.

Thin: each subcommand calls the public API. Exit codes: 0 ok, 1 check failed, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import CheckpointError

PROGRESS_MIN_NBYTES = 256 * 1024 * 1024
"""Checkpoints at least this large get a progress bar on an interactive stderr."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reshard", description="Inspect and verify reshard checkpoints.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_verify_parser(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except CheckpointError as e:
        print(f"reshard {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def add_verify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="check every byte of every chunk of a checkpoint",
                       description="Read every frame of every chunk, check its CRC-32C and that it "
                       "decodes; exit 0 when intact, 1 when damaged.")
    p.add_argument("path", help="the checkpoint directory")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: for large checkpoints on a terminal)")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from . import verify

    bar = _Bar(force=args.progress)
    report = verify(args.path, progress=bar)
    bar.done()
    print(report.summary())
    for w in report.warnings:
        print(f"warning: {w}")
    for d in report.damaged:
        print(f"damaged: {d}")
    return 0 if report.ok else 1


class _Bar:
    """A one-line progress bar on stderr."""

    def __init__(self, *, force: bool | None, width: int = 40) -> None:
        self.force, self.width, self.shown, self.last = force, width, False, -1

    def __call__(self, done: int, total: int) -> None:
        if self.force is False:
            return
        if self.force is None and (total < PROGRESS_MIN_NBYTES or not sys.stderr.isatty()):
            return
        pct = 100 if total <= 0 else done * 100 // total
        if pct == self.last:
            return
        self.last, self.shown = pct, True
        fill = self.width * pct // 100
        sys.stderr.write(f"\rverifying [{'#' * fill}{'.' * (self.width - fill)}] {pct:3d}% "
                         f"{done / 2**20:.0f}/{total / 2**20:.0f} MiB")
        sys.stderr.flush()

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


if __name__ == "__main__":
    raise SystemExit(main())
