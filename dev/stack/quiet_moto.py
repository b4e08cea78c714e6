"""moto's server (`moto_server`'s arguments) without werkzeug's line per request: under
load that log was a fifth of the emulator's CPU, its threads queued on the log's lock.
Warnings and errors are still written.

And DynamoDB's atomicity: moto's server answers on many threads and its DynamoDB
backend takes no lock, so two conditional writes of one item could both pass their
condition, two `ADD`s could lose one, and a transaction could interleave with another.
DynamoDB makes each item operation, and each transaction, atomic; here every DynamoDB
item operation runs under one lock (the emulator is one process bound by one GIL: the
lock costs it no throughput)."""
import functools
import logging
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

ATOMIC = ("get_item", "query", "scan", "put_item", "update_item", "delete_item",
          "transact_write_items")


def atomic(backend, names):
    lock = threading.RLock()
    for name in names:
        original = getattr(backend, name)

        @functools.wraps(original)
        def locked(*args, _original=original, **kwargs):
            with lock:
                return _original(*args, **kwargs)

        setattr(backend, name, locked)


if __name__ == "__main__":
    # Set before werkzeug's first request: it only adds its INFO default to a logger
    # whose level is unset.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    atomic(DynamoDBBackend, ATOMIC)
    sys.exit(main())
