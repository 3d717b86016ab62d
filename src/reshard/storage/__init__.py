"""Where checkpoint bytes live: a local directory, or any fsspec filesystem (object stores)."""

from .base import Store, is_remote, new_file, open_store
from .local import LocalStore

__all__ = ["LocalStore", "Store", "is_remote", "new_file", "open_store"]
