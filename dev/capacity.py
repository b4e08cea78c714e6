"""The capacity units DynamoDB on-demand would bill for the calls of the local stack.

moto answers `ReturnConsumedCapacity` with a constant, so the stack's proxy counts them
itself (`PUT /__capacity` starts counting, `GET /__capacity` reports) by DynamoDB's
published rules (Developer Guide, "Read/write capacity mode" and "Provisioned throughput
considerations for GSIs"):

- a write (PutItem, UpdateItem, DeleteItem) bills 1 unit per started KB of the larger of
  the item before and after, at least 1; a conditional write whose condition fails bills
  the existing item's size (1 unit if there is none), and no index writes;
- each global secondary index bills its own writes: an entry is the item's keys, the
  index keys and the projected attributes, plus 100 bytes. An entry that appears or
  disappears is one write, a changed index key two (delete + put), an entry whose
  projected attributes changed one, an untouched entry none;
- a strongly consistent read bills 1 unit per started 4 KB of each item read (GetItem,
  BatchGetItem) or of the items a Query returned together, an eventually consistent read
  half that; a read that finds nothing bills as 1 item of 0 bytes.
"""
import copy
import math
import threading

from dynamodb_limits import item_size

KB = 1024
INDEX_ENTRY_OVERHEAD = 100


def write_units(size):
    return max(1, math.ceil(size / KB))


def read_units(size, consistent):
    units = max(1, math.ceil(size / (4 * KB)))
    return units if consistent else units / 2


class Index:
    """A global secondary index as DescribeTable describes it."""

    def __init__(self, description, table_keys):
        self.name = description["IndexName"]
        self.keys = [k["AttributeName"] for k in description["KeySchema"]]
        self.partition_key = next(k["AttributeName"] for k in description["KeySchema"] if k["KeyType"] == "HASH")
        projection = description["Projection"]
        self.projection = projection["ProjectionType"]
        self.included = set(projection.get("NonKeyAttributes", []))
        self.table_keys = table_keys

    def entry(self, item):
        """The index entry of an item, or None if the item is not in the index."""
        if item is None or any(key not in item for key in self.keys):
            return None
        if self.projection == "ALL":
            return item
        kept = set(self.table_keys) | set(self.keys) | self.included
        return {name: value for name, value in item.items() if name in kept}

    def writes(self, before, after):
        """Write units this index bills when `before` becomes `after`."""
        return sum(units for _, units in self.entry_writes(before, after))

    def entry_writes(self, before, after):
        """The index entries written when `before` becomes `after`, as (entry, write
        units): what the per-key throughput limits charge to each entry's partition."""
        old, new = self.entry(before), self.entry(after)
        if old is None and new is None:
            return []
        old_size = item_size(old) + INDEX_ENTRY_OVERHEAD if old is not None else 0
        new_size = item_size(new) + INDEX_ENTRY_OVERHEAD if new is not None else 0
        if old is None:
            return [(new, write_units(new_size))]
        if new is None:
            return [(old, write_units(old_size))]
        if any(old.get(key) != new.get(key) for key in self.keys):
            return [(old, write_units(old_size)), (new, write_units(new_size))]
        return [(new, write_units(max(old_size, new_size)))] if old != new else []


def table_writes(before, after):
    sizes = [item_size(item) for item in (before, after) if item is not None]
    return write_units(max(sizes, default=0))


def items_read(items, consistent, together=False):
    """Read units of the items one call read. `together`: a Query's items are summed
    before rounding; otherwise each item bills on its own (and no item still bills one
    read)."""
    sizes = [item_size(item) for item in items]
    if together or not sizes:
        return read_units(sum(sizes), consistent)
    return sum(read_units(size, consistent) for size in sizes)


def condition_failed(status, answer):
    """Whether DynamoDB's answer is a conditional write whose condition did not hold
    (billed, unlike other refusals)."""
    return status == 400 and "ConditionalCheckFailed" in answer.get("__type", "")


class Ledger:
    """Units billed per table and per index, as `{table: {"write": …, "read": …,
    "indexes": {index: write units}}}`; safe to share between threads. `indexes` maps a
    table name to its global secondary indexes."""

    def __init__(self, indexes):
        self.indexes = indexes
        self.tables = {}
        self.lock = threading.Lock()

    def report(self):
        with self.lock:
            return copy.deepcopy(self.tables)

    def _table(self, table):
        return self.tables.setdefault(table, {"write": 0, "read": 0, "indexes": {}})

    def write(self, table, before, after):
        index_units = [(index.name, index.writes(before, after)) for index in self.indexes.get(table, [])]
        with self.lock:
            entry = self._table(table)
            entry["write"] += table_writes(before, after)
            for name, units in index_units:
                entry["indexes"][name] = entry["indexes"].get(name, 0) + units

    def failed_condition(self, table, before):
        """A conditional write whose condition did not hold: the existing item's units."""
        with self.lock:
            self._table(table)["write"] += table_writes(before, None)

    def read(self, table, items, consistent, together=False):
        """The items one call read (see items_read)."""
        units = items_read(items, consistent, together)
        with self.lock:
            self._table(table)["read"] += units
