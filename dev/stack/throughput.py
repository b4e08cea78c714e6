"""AWS's per-key and per-service throughput limits, scaled down to one machine.

With `VF_SCALE` set (say 0.01), the stack's proxy (proxy.py) asks `Throughput.admit`
about every DynamoDB call and every EventBridge PutEvents before forwarding it, and
answers a call past a limit as AWS does, with a throttling error the SDK retries. The
limits, times the scale:

- each partition key value of a table, and each of a global secondary index, serves at
  most 1,000 write units and 3,000 read units a second, reads and writes apart
  (DynamoDB Developer Guide, "Key range throughput exceeded (hot partitions)"; at 0.01:
  10 and 30). Writing an item writes its index entries too, on the partition of each
  entry's index key (the old entry's and the new one's when the key changes); the units
  are capacity.py's;
- PutEvents, 10,000 requests a second per account in us-east-1 (see
  PUT_EVENTS_PER_SECOND), at least 1 a second here whatever the scale. A call is
  charged the requests its entries make at the target (TARGET_ENTRIES_PER_CALL), not
  one: the entries scale with the load, the calls do not. At the target a stream
  batch holds 10–100 records and its events leave in calls of ~5–10 entries; scaled
  down, each batch holds about one record, so each makes a call of one or two entries
  whatever the load (a floor of the shape, not of the design), and a count of calls
  would measure that floor. The calls and entries made are reported apart.

Each limit is a token bucket holding at most one second's worth, or MIN_BURST_UNITS (10)
when that is more. AWS keeps up to 300 s of a table's unused capacity as burst, but a
partition's 1,000/3,000 a second are a hard ceiling, and that ceiling is what this
models. The floor is what scaling down itself needs: requests are not scaled down with
the load (an Idempotency-Key's claim and mark write 2 units to one key, a
transactional member-list entry 2), and arrivals are not smoothed with it. A key that
averages 150 writes a second at the target sees ±10 % in a second; scaled to 0.001 it
averages 0.15, and two or three in one second (20 times its mean) are chance, not
load. So below 0.01 a key's bucket holds what it holds at 0.01, ten units (ten seconds
of its rate at 0.001): a key held above its scaled rate for longer still throttles, a
coincidence of a few requests does not. A call larger than the bucket (a 20 KB item at
0.01) passes on a full bucket and leaves it in debt for the next seconds; at scale 1 no
call is (an item is at most 400 KB: 400 units).

What a call is charged, and when:
- a read is admitted if its partition can pay the least it can cost (one item of 0
  bytes) and charged the rest once its answer shows what it read: a GetItem or
  BatchGetItem each item found, a Query the items it returned, summed, on the partition
  its key condition names, a Scan the items it returned on each item's partition (a
  Scan names no partition before);
- a single-item write is charged before it is forwarded, from the item before it (which
  the proxy reads) to the item it leaves: a PutItem's is in the request, a DeleteItem
  leaves none, an UpdateItem is charged as if it left the item unchanged and the rest
  once the item is read back; a failed condition costs the existing item on the table
  only, as capacity.py bills it; a call DynamoDB refuses is refunded;
- BatchWriteItem and TransactWriteItems are charged on what they carry, their items not
  read first: a put its item, a delete (or a transaction's update or condition check) a
  1 KB write; a transaction's writes twice ("DynamoDB read and write operations": a
  transactional write takes two write units a KB). TransactGetItems and PartiQL are
  not charged.

A call past a limit is answered as DynamoDB answers an on-demand table's hot key: 400
ProvisionedThroughputExceededException naming the table or index in ThrottlingReasons
(DynamoDB may answer ThrottlingException instead; the SDK's retry classifier,
aws-runtime's THROTTLING_ERRORS, retries both as throttling). A batch whose items are
only partly throttled is forwarded without them and answers them as UnprocessedItems /
UnprocessedKeys; all throttled, the call is. A transaction is canceled whole
(TransactionCanceledException, which the SDK does not retry: its caller must),
ThrottlingError the reason of each action on a throttled partition, None the others'.
PutEvents past its rate: 400 ThrottlingException.

Every bucket also keeps the demand it saw per second (units asked, throttled or not) for
the report: its busiest second, and the seconds in which it throttled a call (demand
past what the bucket could serve: its rate, and what it had kept).
"""
import hashlib
import json
import re
import threading
import time

import capacity

from .settings import ACCOUNT, REGION

# Per partition key value of a table or index: DynamoDB Developer Guide, "Key range
# throughput exceeded (hot partitions)" and AWS re:Post, "on-demand table throttling".
WRITE_UNITS_PER_KEY = 1000
READ_UNITS_PER_KEY = 3000
# What a key's bucket holds at least, in units: a second's worth at 0.01, so that at
# smaller factors a few coincident requests (not scaled down with the load) are not
# read as a hot key (see above).
MIN_BURST_UNITS = 10
# EventBridge User Guide, "Amazon EventBridge quotas": "PutEvents throttle limit in
# transactions per second", us-east-1: 10,000 per second (adjustable; a request carries
# up to 10 entries).
PUT_EVENTS_PER_SECOND = 10_000
PUT_EVENTS = "AWSEvents.PutEvents"
# Entries a PutEvents call carries at the target, the least the scale model counts on
# (docs/scale.md, "Every resource at the target": 11,000 events a second in at most
# 2,500 calls).
TARGET_ENTRIES_PER_CALL = 4.4
# A transactional write takes twice a plain write's units.
TRANSACTIONAL_WRITE_FACTOR = 2
# Keys listed in the report's `busiest`.
BUSIEST_KEYS = 20

PROVISIONED_THROUGHPUT_EXCEEDED = "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
TRANSACTION_CANCELED = "com.amazonaws.dynamodb.v20120810#TransactionCanceledException"
# DynamoDB's message for a throttled on-demand table or index, also a transaction's
# ThrottlingError reason's.
HOT_KEY_MESSAGE = ("Throughput exceeds the current capacity of your table or index. DynamoDB is automatically "
                   "scaling your table or index so please try again shortly. If exceptions persist, check if "
                   "you have a hot key: "
                   "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html")
CANCELED_MESSAGE = "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]"
RATE_EXCEEDED = {"__type": "ThrottlingException", "message": "Rate exceeded"}

# `name = :value` in a key condition: the partition key's equality, among others.
_EQUALITY = re.compile(r"(#?[A-Za-z0-9_]+)\s*=\s*(:[A-Za-z0-9_]+)")


def limited(target):
    """Whether a call (its X-Amz-Target) is held to these limits."""
    return target.startswith("DynamoDB_20120810.") or target == PUT_EVENTS


class Bucket:
    """One limit of `rate` units a second: the units it can still serve (at most
    `capacity`, a second's worth or one request's writes, negative in debt), the demand
    it saw per second, and the seconds in which it throttled."""
    __slots__ = ("rate", "capacity", "tokens", "updated", "second", "demand", "throttling", "peak",
                 "seconds_over")

    def __init__(self, rate, now, least=0.0):
        self.rate, self.capacity, self.updated = rate, max(rate, least), now
        self.tokens = self.capacity
        self.second, self.demand, self.throttling, self.peak, self.seconds_over = int(now), 0.0, False, 0.0, 0

    def refill(self, now):
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def can_pay(self, units):
        """A call larger than the bucket holds needs a full bucket (see the module's
        docstring)."""
        return self.tokens >= min(units, self.capacity)

    def take(self, units):
        """Takes `units` (gives them back when negative, up to what it holds)."""
        self.tokens = min(self.capacity, self.tokens - units)

    def demanded(self, units, now):
        second = int(now)
        if second != self.second:
            self.peak, self.seconds_over = self.summary()
            self.second, self.demand, self.throttling = second, 0.0, False
        self.demand = max(0.0, self.demand + units)

    def throttled(self):
        """It could not serve a call in the current second."""
        self.throttling = True

    def summary(self):
        """(the busiest second's demand, the seconds in which it throttled), the
        current second included."""
        return max(self.peak, self.demand), self.seconds_over + self.throttling


class Admission:
    """What becomes of one call. `refusal`: the error body to answer (400) instead of
    forwarding it. Otherwise `request` is forwarded (a batch's without the items
    throttled here, which `unprocessed` keeps for the answer), and `charges` are the
    units it took, per (table or index, partition key value, "read"/"write"/"requests")."""

    def __init__(self, operation, request, before=None, charges=None, refusal=None, unprocessed=None):
        self.operation, self.request, self.before = operation, request, before
        self.charges, self.refusal, self.unprocessed = charges or {}, refusal, unprocessed

    def forwarded(self, payload):
        """The body to forward: the original bytes unless items were taken out."""
        return json.dumps(self.request).encode() if self.unprocessed else payload

    def answered(self, status, data):
        """The answer to send back: a batch's, with the items throttled here added to
        those DynamoDB left unprocessed."""
        if not self.unprocessed or status != 200:
            return data
        answer = json.loads(data)
        if self.operation == "BatchGetItem":
            left = answer.get("UnprocessedKeys") or {}
            for table, asked in self.unprocessed.items():
                left.setdefault(table, dict(asked, Keys=[]))["Keys"].extend(asked["Keys"])
            answer["UnprocessedKeys"] = left
        else:
            left = answer.get("UnprocessedItems") or {}
            for table, writes in self.unprocessed.items():
                left.setdefault(table, []).extend(writes)
            answer["UnprocessedItems"] = left
        return json.dumps(answer).encode()


class Throughput:
    """The buckets of the stack's calls, safe to share between threads: `admit` before
    a call is forwarded, `settle` once it is answered, `report` for GET /__throughput.
    `key_schemas` and `indexes` are template.py's (table → (partition, sort) key names;
    table → its capacity.Index list); `clock` gives seconds."""

    def __init__(self, scale, key_schemas, indexes, clock=time.monotonic):
        if not scale > 0:
            raise ValueError(f"the throughput scale must be > 0, not {scale!r}")
        self.scale = scale
        self.key_schemas = key_schemas
        self.indexes = {table: {index.name: index for index in listed} for table, listed in indexes.items()}
        self.clock = clock
        self.rates = {"write": WRITE_UNITS_PER_KEY * scale, "read": READ_UNITS_PER_KEY * scale,
                      "requests": max(1.0, PUT_EVENTS_PER_SECOND * scale)}
        self.buckets = {}
        self.throttled = {}
        # PutEvents calls and their entries: the account's rate counts calls, so how full
        # they are says how far the callers are from it.
        self.put_events = {"calls": 0, "entries": 0}
        self.lock = threading.Lock()

    # --- admission ----------------------------------------------------------------

    def admit(self, target, request, before=None):
        """The Admission of a call (`target` its X-Amz-Target, `request` its parsed
        body); `before` is the item a single-item write replaces, as the proxy read it."""
        operation = target.rpartition(".")[2]
        with self.lock:
            now = self.clock()
            if operation in ("BatchGetItem", "BatchWriteItem"):
                return self._admit_each(operation, request, now)
            if target == PUT_EVENTS:
                self.put_events["calls"] += 1
                self.put_events["entries"] += len(request.get("Entries", []))
            parts = self._parts(target, operation, request, before)
            charges = _merged(parts)
            short = self._short(charges, now)
            if not short:
                self._take(charges)
                return Admission(operation, request, before, charges)
            self._count_throttled(short)
            if operation == "TransactWriteItems":
                refusal = _canceled([not short.isdisjoint(part) for part in parts])
            elif target == PUT_EVENTS:
                refusal = RATE_EXCEEDED
            else:
                refusal = _throughput_exceeded(short)
            return Admission(operation, request, before, refusal=refusal)

    def _parts(self, target, operation, request, before):
        """The charges of a call taken whole: one per action of a transaction, one for
        anything else."""
        if target == PUT_EVENTS:
            entries = max(1, len(request.get("Entries", [])))
            return [{("PutEvents", REGION, "requests"): entries / TARGET_ENTRIES_PER_CALL}]
        if operation == "TransactWriteItems":
            return [self._transactional_write(*next(iter(action.items()))) for action in request["TransactItems"]]
        if operation == "GetItem":
            return [self._least_read(_table(request), request["Key"], request.get("ConsistentRead", False))]
        if operation == "Query":
            queried = self._queried(request)
            return [{(*queried, "read"): capacity.items_read([], request.get("ConsistentRead", False))}
                    if queried else {}]
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            written = request["Item"] if operation == "PutItem" else request["Key"]
            # An UpdateItem's result is known once it is applied: charged as if it left
            # the item unchanged, settled after.
            after = {"PutItem": request.get("Item"), "UpdateItem": before, "DeleteItem": None}[operation]
            return [self._write(_table(request), written, before, after)]
        return [{}]  # a Scan is charged once answered; the rest (DescribeTable…) not at all

    def _admit_each(self, operation, request, now):
        """A batch: each item admitted on its own, in order; those throttled go back
        unprocessed, unless all are, which throttles the call."""
        kept, unprocessed, refused, taken = {}, {}, set(), []
        for table, item, charges in self._batch_items(operation, request):
            short = self._short(charges, now)
            if short:
                self._count_throttled(short)
                refused |= short
                _batch_add(operation, unprocessed, table, request["RequestItems"][table], item)
            else:
                self._take(charges)
                taken.append(charges)
                _batch_add(operation, kept, table, request["RequestItems"][table], item)
        if refused and not kept:
            return Admission(operation, request, refusal=_throughput_exceeded(refused))
        trimmed = dict(request, RequestItems=kept) if unprocessed else request
        return Admission(operation, trimmed, charges=_merged(taken), unprocessed=unprocessed or None)

    def _batch_items(self, operation, request):
        """(table, item as the request carries it, its charges) of each item of a batch."""
        for table, asked in request["RequestItems"].items():
            if operation == "BatchGetItem":
                consistent = asked.get("ConsistentRead", False)
                for key in asked["Keys"]:
                    yield table, key, self._least_read(table, key, consistent)
            else:
                for write in asked:
                    if "PutRequest" in write:
                        item = write["PutRequest"]["Item"]
                        yield table, write, self._write(table, item, None, item)
                    else:
                        yield table, write, self._write(table, write["DeleteRequest"]["Key"], None, None)

    def _short(self, charges, now):
        """The buckets that cannot pay their charge now; every charge counts as demand,
        paid or not."""
        short = set()
        for bucket_id, units in charges.items():
            bucket = self._bucket(bucket_id, now)
            bucket.refill(now)
            bucket.demanded(units, now)
            if not bucket.can_pay(units):
                bucket.throttled()
                short.add(bucket_id)
        return short

    def _take(self, charges):
        for bucket_id, units in charges.items():
            self.buckets[bucket_id].take(units)

    def _count_throttled(self, short):
        for resource in {resource for resource, _, _ in short}:
            self.throttled[resource] = self.throttled.get(resource, 0) + 1

    def _bucket(self, bucket_id, now):
        bucket = self.buckets.get(bucket_id)
        if bucket is None:
            kind = bucket_id[2]
            least = MIN_BURST_UNITS if kind in ("read", "write") else 0
            bucket = self.buckets[bucket_id] = Bucket(self.rates[kind], now, least)
        return bucket

    # --- what calls cost ------------------------------------------------------------

    def _least_read(self, table, key, consistent):
        """A read of one item, before it is known: as if it found nothing."""
        partition = self._partition_key(table)
        if partition is None:
            return {}
        return {(table, _text(key[partition]), "read"): capacity.items_read([], consistent)}

    def _write(self, table, written, before, after, factor=1):
        """A write of the item whose key (or whole item) is `written`: the table's
        units on its partition, each index's on the partition of each entry written."""
        partition = self._partition_key(table)
        if partition is None:
            return {}
        charges = {(table, _text(written[partition]), "write"): factor * capacity.table_writes(before, after)}
        for index in self.indexes.get(table, {}).values():
            for entry, units in index.entry_writes(before, after):
                _add(charges, (_index_resource(table, index.name), _text(entry[index.partition_key]), "write"),
                     factor * units)
        return charges

    def _transactional_write(self, action, details):
        """A transaction's action (Put, Update, Delete, ConditionCheck), on what the
        request carries."""
        table = _table(details)
        if action == "Put":
            return self._write(table, details["Item"], None, details["Item"], TRANSACTIONAL_WRITE_FACTOR)
        return self._write(table, details["Key"], None, None, TRANSACTIONAL_WRITE_FACTOR)

    def _queried(self, request):
        """(table or index, partition key value) a Query reads, or None when its key
        condition does not say (legacy KeyConditions) or the table is unknown."""
        resource, partition = self._read_through(_table(request), request.get("IndexName"))
        names = request.get("ExpressionAttributeNames", {})
        values = request.get("ExpressionAttributeValues", {})
        for name, placeholder in _EQUALITY.findall(request.get("KeyConditionExpression", "")):
            if partition and names.get(name, name) == partition and placeholder in values:
                return resource, _text(values[placeholder])
        return None

    def _partition_key(self, table):
        schema = self.key_schemas.get(table)
        return schema[0] if schema else None

    def _read_through(self, table, index_name):
        """(table or index, its partition key's name or None if unknown) of a read of
        `table`, through the index `index_name` if any."""
        if not index_name:
            return table, self._partition_key(table)
        index = self.indexes.get(table, {}).get(index_name)
        return _index_resource(table, index_name), index.partition_key if index else None

    # --- settling -------------------------------------------------------------------

    def settle(self, admission, status, answer, after=None):
        """Charges what an admitted call really cost, once answered (`answer` parsed;
        `after` the item a successful single-item write left)."""
        used = self._used(admission, status, answer, after)
        with self.lock:
            now = self.clock()
            for bucket_id in admission.charges.keys() | used.keys():
                delta = used.get(bucket_id, 0) - admission.charges.get(bucket_id, 0)
                if delta:
                    bucket = self._bucket(bucket_id, now)
                    bucket.refill(now)
                    bucket.take(delta)
                    bucket.demanded(delta, now)

    def _used(self, admission, status, answer, after):
        operation, request = admission.operation, admission.request
        if capacity.condition_failed(status, answer) and operation in ("PutItem", "UpdateItem", "DeleteItem"):
            table = _table(request)
            partition = self._partition_key(table)
            written = request["Item"] if operation == "PutItem" else request["Key"]
            return {(table, _text(written[partition]), "write"): capacity.table_writes(admission.before, None)}
        if operation == "PutEvents":
            return admission.charges  # a request is a request, whatever its answer
        if status != 200:
            return {}
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            written = request["Item"] if operation == "PutItem" else request["Key"]
            return self._write(_table(request), written, admission.before, after)
        consistent = request.get("ConsistentRead", False)
        if operation == "GetItem":
            item = answer.get("Item")
            return self._items_read(_table(request), None, [item] if item else [], consistent) or admission.charges
        if operation == "BatchGetItem":
            return self._batch_read(request, answer)
        if operation == "Query":
            return {bucket_id: capacity.items_read(answer.get("Items", []), consistent, together=True)
                    for bucket_id in admission.charges}
        if operation == "Scan":
            return self._items_read(_table(request), request.get("IndexName"), answer.get("Items", []), consistent)
        return admission.charges

    def _items_read(self, table, index_name, items, consistent):
        """Read units of items read together, on each item's partition (of the index
        when it was read through one)."""
        resource, partition = self._read_through(table, index_name)
        by_partition = {}
        for item in items:
            if partition in item:
                by_partition.setdefault(_text(item[partition]), []).append(item)
        return {(resource, key, "read"): capacity.items_read(found, consistent, together=True)
                for key, found in by_partition.items()}

    def _batch_read(self, request, answer):
        """A BatchGetItem's keys, each as one item read (its size when found, 0 bytes
        when not)."""
        used = {}
        for table, asked in request["RequestItems"].items():
            consistent = asked.get("ConsistentRead", False)
            least = capacity.items_read([], consistent)
            for key in asked["Keys"]:
                for bucket_id, units in self._least_read(table, key, consistent).items():
                    _add(used, bucket_id, units)
            partition = self._partition_key(table)
            for item in answer.get("Responses", {}).get(table, []):
                if partition in item:
                    _add(used, (table, _text(item[partition]), "read"), capacity.items_read([item], consistent) - least)
        return used

    # --- the report -----------------------------------------------------------------

    def report(self):
        """GET /__throughput: throttled calls (and batch items) per table or index,
        the hot keys (throttling in more than one second), the busiest keys and the
        PutEvents calls made (throttled ones too) with their entries. Index key values can be item contents (the email index's are emails):
        they are shown as a digest."""
        with self.lock:
            rows = [(bucket_id, bucket.rate, *bucket.summary()) for bucket_id, bucket in self.buckets.items()]
            throttled = dict(self.throttled)
            put_events = dict(self.put_events)
        hot = [dict(_shown(bucket_id), seconds_over=over, max_demand_per_s=peak, limit_per_s=rate)
               for bucket_id, rate, peak, over in rows if over > 1]
        hot.sort(key=lambda row: (-row["seconds_over"], -row["max_demand_per_s"]))
        busiest = sorted(rows, key=lambda row: -row[2])[:BUSIEST_KEYS]
        return {"scale": self.scale, "throttled": throttled, "hot_keys": hot, "put_events": put_events,
                "busiest": [dict(_shown(bucket_id), peak_per_s=peak, limit_per_s=rate)
                            for bucket_id, rate, peak, _ in busiest]}


def _table(request):
    """A request's table name (a table may be named by its ARN)."""
    return request["TableName"].rpartition("/")[2]


def _index_resource(table, index_name):
    """An index's name in charges and reports: its ARN's resource, after `table/`."""
    return f"{table}/index/{index_name}"


def _text(value):
    """A key attribute value (S, N or B as the JSON protocol carries it) as text."""
    return str(next(iter(value.values())))


def _add(charges, bucket_id, units):
    charges[bucket_id] = charges.get(bucket_id, 0) + units


def _merged(parts):
    merged = {}
    for part in parts:
        for bucket_id, units in part.items():
            _add(merged, bucket_id, units)
    return merged


def _batch_add(operation, request_items, table, asked, item):
    """Adds a batch item to a RequestItems map: a key to the table's KeysAndAttributes
    (with the table's other fields), a write to the table's list."""
    if operation == "BatchGetItem":
        request_items.setdefault(table, dict(asked, Keys=[]))["Keys"].append(item)
    else:
        request_items.setdefault(table, []).append(item)


def _arn(resource):
    return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{resource}"


def _throughput_exceeded(short):
    """DynamoDB's answer to a call on a partition past its limit."""
    reasons = sorted({(("Index" if "/index/" in resource else "Table") + kind.capitalize()
                       + "KeyRangeThroughputExceeded", _arn(resource)) for resource, _, kind in short})
    return {"__type": PROVISIONED_THROUGHPUT_EXCEEDED, "message": HOT_KEY_MESSAGE,
            "ThrottlingReasons": [{"reason": reason, "resource": arn} for reason, arn in reasons]}


def _canceled(throttled):
    """DynamoDB's answer to a transaction whose actions (True: throttled) it cancels."""
    reasons = [{"Code": "ThrottlingError", "Message": HOT_KEY_MESSAGE} if hit else {"Code": "None"}
               for hit in throttled]
    return {"__type": TRANSACTION_CANCELED, "CancellationReasons": reasons,
            "Message": CANCELED_MESSAGE.format(", ".join(reason["Code"] for reason in reasons))}


def _shown(bucket_id):
    resource, key, kind = bucket_id
    if "/index/" in resource:
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return {"table": resource, "key": key, "kind": kind}
