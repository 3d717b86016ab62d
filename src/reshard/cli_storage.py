"""``--storage-option KEY=VALUE`` on the command line: fsspec ``storage_options`` for a
checkpoint URL (an S3 or MinIO ``endpoint_url``, credentials, ``client_kwargs``, ...),
which ``reshard.open``, ``verify``, ``load`` and ``convert`` take from Python.

VALUE is read as JSON where it parses as JSON (``8``, ``true``, ``null``,
``{"region_name": "eu-west-1"}``), else kept as the string written: ``endpoint_url=
http://minio:9000`` is that URL, ``key=123`` the number, ``key='"123"'`` the string.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from .storage.base import local_path

__all__ = ["add_storage_option", "local_path_refused", "parse_storage_option"]


def parse_storage_option(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` as ``(KEY, VALUE)``, VALUE read as JSON where it parses as JSON;
    argparse.ArgumentTypeError (a usage error, exit 2) for text without ``=`` or with an
    empty KEY. The value is never shown in an error: it may be a secret."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (no '=')")
    if not key:
        raise argparse.ArgumentTypeError("the KEY of KEY=VALUE is empty")
    try:
        value: Any = json.loads(raw, parse_constant=_no_constant)
    except ValueError:  # not JSON: the string as written (a URL, a name, a path)
        value = raw
    return key, value


def _no_constant(word: str) -> None:
    # NaN and Infinity parse as floats in Python's json; no storage option wants one, and
    # a bucket or profile named "NaN" must stay a string.
    raise ValueError(word)


class _StorageOptions(argparse.Action):
    """Collects repeated ``KEY=VALUE`` into one dict; a KEY given twice is a usage error
    (which of the two was meant cannot be told)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
        values: str | Sequence[Any] | None, option_string: str | None = None,
    ) -> None:
        assert isinstance(values, tuple)  # parse_storage_option's (KEY, VALUE): not user input
        key, value = values
        options = dict(getattr(namespace, self.dest) or {})
        if key in options:
            parser.error(f"argument {option_string}: {key!r} given twice")
        options[key] = value
        setattr(namespace, self.dest, options)


def add_storage_option(parser: argparse.ArgumentParser, flag: str, dest: str, help: str) -> None:  # noqa: A002
    """Add the repeatable ``flag KEY=VALUE`` to ``parser``; the options collect as a dict
    in ``dest`` (None where none was given)."""
    parser.add_argument(flag, dest=dest, metavar="KEY=VALUE", type=parse_storage_option,
                        action=_StorageOptions, default=None, help=help)


def local_path_refused(path: str, flag: str, what: str) -> str | None:
    """The usage error (one line) where ``flag`` was given for ``path`` (``what``: PATH,
    SRC or DST) and ``path`` is local, else None. Refused, not ignored: storage options
    apply only to fsspec URLs, and a mistyped URL (``s3:/bucket/x``) is a local path."""
    if local_path(path) is not None:
        return (f"{flag} applies only to fsspec URLs (s3://bucket/prefix), and {what} "
                f"{path!r} is a local path")
    return None
