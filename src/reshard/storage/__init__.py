"""Where checkpoint bytes live: a local directory, or any fsspec filesystem (object stores)."""

from .base import Store, new_file, open_store
from .local import LocalStore

__all__ = ["LocalStore", "Store", "new_file", "open_store"]
