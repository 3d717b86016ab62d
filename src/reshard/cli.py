"""The ``reshard`` command line.

Thin: each subcommand calls the public API. Exit codes, the same for every subcommand:
0 ok; 1 failed (a damaged checkpoint, a DST convert may not write, ...: one line on
stderr); 2 usage error (an empty path, a malformed --storage-option or one given for a
local path included); 3 no checkpoint at the path given
(missing, an empty folder, a save that never committed, a file that is not one: one line
naming the path, CheckpointNotFoundError); 4 (``verify``) no damage found but some keys
not checked; 130 on Ctrl-C; 141 (as for SIGPIPE) when the reader of the output went away
(``reshard inspect X | head``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .cli_storage import add_storage_option, local_path_refused
from .errors import CheckpointError, CheckpointNotFoundError, printable
from .interop.convert import EXIT_NOT_FOUND, add_convert_parser, path_argument
from .progress import ProgressBar

__all__ = ["EXIT_NOT_FOUND", "EXIT_UNCHECKED", "main"]

EXIT_UNCHECKED = 4
"""``reshard verify``'s exit status when nothing damaged was found but some keys could not
be checked (a DCP tensor of a dtype reshard does not read): 0 means every byte was."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reshard", description="Inspect, verify and convert reshard checkpoints.",
        epilog="Exit status (every command): 0 ok, 1 failed (damaged checkpoint, output not "
               "writable, ...), 2 usage error, 3 no checkpoint at the path given, 4 (verify) "
               "nothing damaged but some keys not checked, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_inspect_parser(sub)
    add_verify_parser(sub)
    add_convert_parser(sub)
    add_demo_parser(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except _UsageError as e:
        print(f"reshard {args.command}: {e}", file=sys.stderr)
        return 2
    except CheckpointNotFoundError as e:
        # No checkpoint at the path (mistyped, never committed, a plain file), whichever
        # command was given: not "failed" (1), which inspect said, and a script must be
        # able to tell "nothing here" from "damaged". The message names the path.
        print(f"reshard {args.command}: {printable(str(e))}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except CheckpointError as e:
        # Messages quote names and text from the checkpoint, which is not trusted: its
        # control characters are escaped here as inspect escapes key names.
        print(f"reshard {args.command}: {type(e).__name__}: {printable(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C in a long verify or convert: one line, not a traceback (a convert has
        # removed its unfinished output by now), and the shell's status for SIGINT.
        print(f"\nreshard {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `reshard inspect X | head`: the reader has what it wanted. Without this, a
        # traceback; and stdout is pointed at /dev/null so that the interpreter's final
        # flush of the unwritten rest does not raise again as it exits.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


def add_verify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="check every byte of every chunk of a checkpoint",
                       description="Read every frame of every chunk, check its CRC-32C and that it "
                       "decodes; exit 0 when intact (every key checked), 1 when damaged, 2 on a "
                       "usage error, 3 "
                       "when PATH holds no checkpoint (no manifest.json and no DCP .metadata), "
                       "4 when nothing damaged was found but some keys could not be checked "
                       "(DCP tensors of a dtype reshard does not read; each is listed).")
    p.add_argument("path", type=path_argument,
                   help="the checkpoint directory, or an fsspec URL (s3://bucket/prefix)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: for large checkpoints on a terminal)")
    _add_path_storage_option(p)
    p.set_defaults(func=cmd_verify)


STORAGE_OPTION_HELP = (
    "an fsspec storage option for PATH, a URL (repeatable): --storage-option "
    "endpoint_url=http://minio:9000 --storage-option 'client_kwargs={\"region_name\": "
    "\"eu-west-1\"}'; VALUE is read as JSON where it parses as JSON (numbers, true, "
    "null, objects), else as the string written; a KEY given twice, or any for a local "
    "PATH, is a usage error"
)


def _add_path_storage_option(p: argparse.ArgumentParser) -> None:
    add_storage_option(p, "--storage-option", "storage_options", STORAGE_OPTION_HELP)


def _storage_options(args: argparse.Namespace) -> dict[str, object] | None:
    """``args.storage_options``, or None; raises _UsageError where they were given for
    a local PATH."""
    if not args.storage_options:
        return None
    refused = local_path_refused(args.path, "--storage-option", "PATH")
    if refused is not None:
        raise _UsageError(refused)
    return dict(args.storage_options)


class _UsageError(Exception):
    """A usage error found after parsing: main prints it and exits 2."""


def cmd_verify(args: argparse.Namespace) -> int:
    from . import verify

    options = _storage_options(args)
    bar = ProgressBar("verifying", enabled=args.progress)
    try:
        # CheckpointNotFoundError (nothing here to be damaged) is main's exit 3.
        report = verify(args.path, progress=bar, storage_options=options)
    finally:
        bar.close()
    print(report.summary())
    for w in report.warnings:
        print(f"warning: {printable(str(w))}")
    for d in report.damaged:
        print(f"damaged: {printable(str(d))}")
    for u in report.unchecked:
        print(f"not checked: {printable(str(u))}")
    if not report.ok:
        return 1
    return 0 if report.intact else EXIT_UNCHECKED



def add_inspect_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("inspect", help="list the keys, dtypes, shapes and sizes of a checkpoint",
                       description="List the keys, dtypes, shapes and sizes of the reshard "
                       "checkpoint or torch.distributed.checkpoint directory at PATH; exit 0, "
                       "1 when it cannot be read, 2 on a usage error, 3 when PATH holds no "
                       "checkpoint.")
    p.add_argument("path", type=path_argument,
                   help="the checkpoint directory, or an fsspec URL (s3://bucket/prefix)")
    p.add_argument("--chunks", action="store_true", help="also list every chunk")
    _add_path_storage_option(p)
    p.set_defaults(func=cmd_inspect)


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="save on 4 local CPU ranks, load resharded on 2 and on 1",
                       description="Save a small sharded state from 4 local CPU ranks, load it "
                       "back resharded on 2 ranks and in 1 process, check every value; exit 0 "
                       "when all match, 1 on a mismatch or failure (one line on stderr), 2 on "
                       "a usage error.")
    p.add_argument("--workdir", type=path_argument, help="where to write the demo checkpoint, which is kept "
                   "(default: a temp dir, removed afterwards)")
    p.add_argument("--keep", action="store_true",
                   help="keep the checkpoint in the temp dir afterwards")
    p.set_defaults(func=cmd_demo)


def cmd_inspect(args: argparse.Namespace) -> int:
    from . import open as open_checkpoint
    from .interop import dcp

    with open_checkpoint(args.path, storage_options=_storage_options(args)) as ckpt:
        rows: list[tuple[str, ...]] = []
        refused: list[str] = []
        total_raw = total_stored = total_chunks = 0
        # By entry, each looked up by its key parts: in a DCP directory two keys may read
        # as one dotted name (a list value n = [1, 2] beside a key "n.0"), and listing
        # the names showed one of them only.
        for entry in ckpt.manifest.entries:
            info = ckpt.info(entry.key)
            shown = printable(info.key)
            if info.refused is not None:
                # A DCP tensor of a dtype reshard lacks (or a value that needs pickle)
                # read as "value": it is listed as what it is, and why loading it raises.
                refused.append(f"refused: {shown}: {printable(info.refused)}")
                if info.kind == "tensor":
                    dtype = str(info.dtype).removeprefix("torch.")
                    rows.append((shown, f"{dtype} (refused tensor)", str(list(info.shape or ())),
                                 "-", _size(info.nbytes), "-"))
                else:
                    rows.append((shown, "value (refused)", "-", "-", "-", "-"))
                continue
            if info.kind == "value":
                rows.append((shown, "value", "-", "-", "-", "-"))
                continue
            stored = sum(c.nbytes for c in info.chunks)
            total_raw += info.nbytes
            total_stored += stored
            total_chunks += len(info.chunks)
            dtype = str(info.dtype).removeprefix("torch.")
            rows.append((shown, dtype, str(list(info.shape or ())), str(len(info.chunks)),
                         _size(info.nbytes), _size(stored)))
        header = ("key", "dtype", "shape", "chunks", "bytes", "stored")
        _table(header, rows)
        m = ckpt.manifest
        if m.library_version == dcp.LIBRARY:
            # Described in memory: its world size, format version and save id are not the
            # DCP save's (they read "1 rank(s), format 1.0" and a new id on every run).
            origin = "a torch.distributed.checkpoint (DCP) directory"
        else:
            origin = (f"saved by {m.world_size} rank(s), format {m.format_version[0]}."
                      f"{m.format_version[1]}, save id {m.save_id}")
            if not dcp.records_empty_dicts(m):
                origin += ", converted from a torch.distributed.checkpoint (DCP) directory"
        print(f"\n{len(rows)} keys, {total_chunks} chunks, {_size(total_raw)} of tensor data "
              f"({_size(total_stored)} stored), {origin}")
        if refused:
            print(f"{len(refused)} of the keys cannot be loaded or read:")
            for line in refused:
                print(line)
        if args.chunks:
            for entry in ckpt.manifest.entries:
                info = ckpt.info(entry.key)
                for c in info.chunks:
                    print(f"{printable(info.key)}: offsets={list(c.offsets)} sizes={list(c.sizes)} "
                          f"{c.file} {_size(c.nbytes)} {c.codec}"
                          + (f" column checksums in {c.column_parts} parts" if c.column_parts else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .dist.local_world import WorldError

    try:
        return run_demo(workdir=args.workdir, keep=args.keep)
    except WorldError as e:
        # A rank's traceback ends with its error: show that line, not the whole traceback.
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        print(f"reshard demo: {lines[0]} {lines[-1] if len(lines) > 1 else ''}".rstrip(), file=sys.stderr)
        return 1


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {3, 4, 5}
    for r in [header, tuple("-" * w for w in widths), *rows]:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        print("  ".join(cells).rstrip())


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


if __name__ == "__main__":
    raise SystemExit(main())
