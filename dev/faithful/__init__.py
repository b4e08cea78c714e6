"""Runs `bootstrap` binaries the way AWS Lambda does, for tests (see README.md)."""
from .fleet import Fleet, FleetError, FunctionConfig

__all__ = ["Fleet", "FleetError", "FunctionConfig"]
