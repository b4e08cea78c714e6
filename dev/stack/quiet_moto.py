"""moto's server (`moto_server`'s arguments) without werkzeug's line per request: under
load that log was a fifth of the emulator's CPU, its threads queued on the log's lock.
Warnings and errors are still written.

And DynamoDB's atomicity: moto's server answers on many threads and its DynamoDB
backend takes no lock, so two conditional writes of one item could both pass their
condition, two `ADD`s could lose one, and a transaction could interleave with another.
DynamoDB makes each item operation, and each transaction, atomic; here every DynamoDB
item operation runs under one lock (the emulator is one process bound by one GIL: the
lock costs it no throughput).

And one backup of a table per transaction: moto deep-copies a table before a
transaction once per item of the transaction (the same table again for every item),
so a define's 67 items on the audiences table took 3 s and gigabytes that the cyclic
collector freed late (`make scale`'s emulator was killed for memory). One copy of each
table is the same backup."""
import copy
import functools
import logging
import sys
import threading

from moto.dynamodb import models
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


class _CopiedOnce:
    """`copy` as moto's DynamoDB models see it during one transaction: a deep copy of
    the same object made once."""

    def __init__(self):
        self.copies = {}

    def deepcopy(self, value):
        if id(value) not in self.copies:
            self.copies[id(value)] = copy.deepcopy(value)
        return self.copies[id(value)]

    def __getattr__(self, name):
        return getattr(copy, name)


def one_backup_per_table():
    """Makes DynamoDBBackend.transact_write_items back each table up once. Held by the
    backend's lock (`atomic`), so no other call of the models meets the swap."""
    original = DynamoDBBackend.transact_write_items

    @functools.wraps(original)
    def transact_write_items(*args, **kwargs):
        models.copy = _CopiedOnce()
        try:
            return original(*args, **kwargs)
        finally:
            models.copy = copy

    DynamoDBBackend.transact_write_items = transact_write_items


if __name__ == "__main__":
    # Set before werkzeug's first request: it only adds its INFO default to a logger
    # whose level is unset.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    one_backup_per_table()
    atomic(DynamoDBBackend, ATOMIC)
    sys.exit(main())
