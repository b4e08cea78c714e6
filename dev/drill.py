#!/usr/bin/env python3
"""`make drill`: load and faults against the local stack, then proof that nothing was
lost, duplicated or leaked. The code is the package `dev/drill/`, one module a role
(see its __init__.py); this file is its entry point."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drill.run import main  # noqa: E402  (the package dev/drill/: a package comes before a module)

if __name__ == "__main__":
    sys.exit(main())
