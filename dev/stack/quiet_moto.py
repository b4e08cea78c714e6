"""moto's server (`moto_server`'s arguments) without werkzeug's line per request: under
load that log was a fifth of the emulator's CPU, its threads queued on the log's lock.
Warnings and errors are still written.

And DynamoDB's atomicity: moto's server answers on many threads and its DynamoDB
backend takes no lock, so two conditional writes of one item could both pass their
condition, two `ADD`s could lose one, and a transaction could interleave with another.
DynamoDB makes each item operation, and each transaction, atomic; here every DynamoDB
item operation runs under one lock (the emulator is one process bound by one GIL: the
lock costs it no throughput).

And a transaction's backup: moto deep-copies every table a transaction names (once
per item of it) to roll back on failure, so each transaction cost time and memory in
proportion to its tables: a define's 67 items on the audiences table took 3 s and
gigabytes (`make scale`'s emulator was killed for memory), and every commit of the
audiences function copied the whole audiences table, slower as it grew, which no
transaction on DynamoDB is. The backup here is what a rollback needs: a copy of each
item the transaction names, and each stream's length, restored when it fails.

And a query's cost: moto reads a table's query by sorting every item of the table and
keeping those of the partition asked for, so each `Query` cost in proportion to the
whole table (13 % of the emulator's time in `make scale`, growing with the tables);
DynamoDB reads the one partition, and so does a query here. And the dispatch of a
request to its service: moto listed its own package directory on every request (12 %);
the answer for a host never changes, so it is kept."""
import copy
import functools
import logging
import sys
import threading

from moto.dynamodb import models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
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


class _TablesNotCopied:
    """`copy` as moto's DynamoDB models see it during one transaction: a table is not
    copied (its "backup" is itself; `item_backups` keeps what a rollback needs), any
    other value is (an item's old image)."""

    def deepcopy(self, value, *args, **kwargs):
        if isinstance(value, models.Table):
            return value
        return copy.deepcopy(value, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(copy, name)


def item_backups(backend, transact_items):
    """A copy of each item the transaction names (None where there is none) with its
    table and key, and each of their tables' stream length."""
    items, streams = [], {}
    for entry in transact_items:
        op = next(iter(entry.values()), None)
        table = backend.tables.get(op.get("TableName")) if isinstance(op, dict) else None
        if table is None:
            continue
        key = op.get("Item") if "Item" in op else op.get("Key", {})
        if table.hash_key_attr not in key or (table.range_key_attr and table.range_key_attr not in key):
            continue  # moto refuses the transaction before writing anything
        hash_value = DynamoType(key[table.hash_key_attr])
        range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
        items.append((table, hash_value, range_value, copy.deepcopy(table.get_item(hash_value, range_value))))
        if table.stream_shard is not None:
            streams.setdefault(table.name, (table.stream_shard, len(table.stream_shard.items)))
    return items, streams


def restore(items, streams):
    # In reverse: an item named twice (refused) ends as it was before the first.
    for table, hash_value, range_value, item in reversed(items):
        stored = table.items[hash_value] if range_value is not None else table.items
        key = range_value if range_value is not None else hash_value
        if item is None:
            stored.pop(key, None)
        else:
            stored[key] = item
    for shard, length in streams.values():
        del shard.items[length:]


def one_partition_per_query():
    """Makes Table.query on a table's own key (not an index) read that partition's items
    only: the same items in the same order as the whole table's, filtered. Queries run
    under the backend's lock (`atomic`), so no other call meets the swap."""
    original = models.Table.query

    @functools.wraps(original)
    def query(self, hash_key, *args, **kwargs):
        # moto's backend passes `index_name` eighth, after the hash key.
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        if hash_key is None or index_name is not None:
            return original(self, hash_key, *args, **kwargs)  # an index: every item
        self.all_items = functools.partial(partition_items, self, hash_key)
        try:
            return original(self, hash_key, *args, **kwargs)
        finally:
            del self.all_items

    models.Table.query = query


def partition_items(table, hash_key):
    """The items of one partition, in the order `Table.all_items` lists them."""
    partition = table.items.get(hash_key)
    if partition is None:
        return []
    if not table.range_key_attr:
        return [partition]
    return sorted(partition.values(), key=lambda item: item.range_key)


def backend_per_host_kept():
    """Keeps the service moto found for each host name (it never changes)."""
    original = DomainDispatcherApplication.get_backend_for_host
    found = {}

    @functools.wraps(original)
    def get_backend_for_host(self, host):
        if host not in found:
            found[host] = original(self, host)
        return found[host]

    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host


def item_backups_only():
    """Makes DynamoDBBackend.transact_write_items back up the items it names instead of
    whole tables. Held by the backend's lock (`atomic`), so no other call of the models
    meets the swap."""
    original = DynamoDBBackend.transact_write_items

    @functools.wraps(original)
    def transact_write_items(self, transact_items, *args, **kwargs):
        backups = item_backups(self, transact_items)
        models.copy = _TablesNotCopied()
        try:
            return original(self, transact_items, *args, **kwargs)
        except Exception:
            restore(*backups)
            raise
        finally:
            models.copy = copy

    DynamoDBBackend.transact_write_items = transact_write_items


if __name__ == "__main__":
    # Set before werkzeug's first request: it only adds its INFO default to a logger
    # whose level is unset.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    item_backups_only()
    one_partition_per_query()
    backend_per_host_kept()
    atomic(DynamoDBBackend, ATOMIC)
    sys.exit(main())
