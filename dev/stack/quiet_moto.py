"""moto's server (`moto_server`'s arguments) without werkzeug's line per request: under
load that log was a fifth of the emulator's CPU, its threads queued on the log's lock.
Warnings and errors are still written."""
import logging
import sys

from moto.server import main

if __name__ == "__main__":
    # Set before werkzeug's first request: it only adds its INFO default to a logger
    # whose level is unset.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    sys.exit(main())
