"""Column checksums on boxes of any size, for tests whose tensors are small."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def column_checksums_on_small_boxes(parts: int | None) -> Iterator[None]:
    """Saves inside give every box of two or more dims column checksums in ``parts``
    parts (the variable), with tiles of about 40 bytes; None changes nothing."""
    from reshard import config
    from reshard.core import column_checks
    from reshard.transfer import write

    if parts is None:
        yield
        return
    saved = (config.COLUMN_CHECKSUM_MIN_NBYTES, write.SMALL_CHUNK_NBYTES, column_checks.TILE_NBYTES)
    config.COLUMN_CHECKSUM_MIN_NBYTES, write.SMALL_CHUNK_NBYTES, column_checks.TILE_NBYTES = 0, 0, 40
    os.environ["RESHARD_COLUMN_CHECKSUMS"] = str(parts)
    try:
        yield
    finally:
        config.COLUMN_CHECKSUM_MIN_NBYTES, write.SMALL_CHUNK_NBYTES, column_checks.TILE_NBYTES = saved
        del os.environ["RESHARD_COLUMN_CHECKSUMS"]
