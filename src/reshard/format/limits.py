"""Bounds a reader enforces on manifest numbers (docs/FORMAT.md, "Validation")."""

MAX_NDIM = 64
MAX_DIM_SIZE = 2**48
MAX_FRAME_RAW_NBYTES = 1 << 30
MAX_FILE_OFFSET = 2**62
MAX_INT = 2**62
"""Largest byte count or offset a manifest may hold."""
