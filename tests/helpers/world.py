"""Spawned gloo worlds for tests: see reshard.dist.local_world."""

from reshard.dist.local_world import DEFAULT_TIMEOUT_S, WorldError, run_world

__all__ = ["DEFAULT_TIMEOUT_S", "WorldError", "run_world"]
