#!/usr/bin/env python3
"""The local stack's entry point: `make dev`, `make test`, the tools and the stack's own
bridge processes run this file (a stale stack is known by `stack.py` in its command
line). The code is the package `dev/stack/`, one module a role; usage in its cli.py."""
import sys

from stack.cli import main  # the package dev/stack/ (a package comes before a module)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
