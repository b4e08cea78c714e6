"""Runs `bootstrap` binaries the way AWS Lambda does, for tests (see README.md)."""
from .fleet import Fleet, FleetError, FunctionConfig
from .runtime_api import Spawner

__all__ = ["Fleet", "FleetError", "FunctionConfig", "Spawner"]
