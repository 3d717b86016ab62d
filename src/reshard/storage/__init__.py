"""Where checkpoint bytes live."""

from .base import Store, open_store
from .local import LocalStore

__all__ = ["LocalStore", "Store", "open_store"]
