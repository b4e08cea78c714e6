"""The proxy between the functions and moto: refuses what DynamoDB would refuse for its
limits, injects the faults tests ask for, counts DynamoDB capacity units and (VF_SCALE)
throttles what AWS's throughput limits, scaled down, would."""
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import capacity
from dynamodb_limits import violation

from . import throughput
from .output import log
from .settings import REGION


class QuietServer(ThreadingHTTPServer):
    """A client that dies mid-call (the drill kills the functions) is not an error here."""
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FaultProxy:
    """Forwards AWS calls to moto, except the operations told to misbehave.

    `PUT /__faults` with `{"operations": ["AmazonSQS.SendMessage", …], "status": 503,
    "code": "ServiceUnavailable"}` makes those operations (their `X-Amz-Target`) answer
    that error; `"action": "stall", "delay_ms": 3000` holds them that long and then
    forwards them; `"action": "lose"` forwards them and answers that error instead of
    moto's answer (a write applied whose answer was lost: the SDK's retry meets its own
    write); `"times": 1` affects only that many calls; `"probability": 0.3` only that
    share of the calls;
    `"matching": "text"` only the calls whose payload contains that text; `"message"`
    sets the failure's message (AWS messages can quote the data they refuse). A JSON
    array of such objects sets several at once (the first that applies to a call
    answers it): the drill keeps one standing fault beside its changing ones.
    `DELETE /__faults` clears them; `GET /__faults` counts calls per operation (SQS's
    also per `"<operation> <QueueUrl>"`) and the faults injected. Both SDK protocols
    this service uses (DynamoDB and SQS JSON) name the operation in `X-Amz-Target`.

    `PUT /__capacity` starts counting the capacity units DynamoDB on-demand would bill
    for the calls that pass (capacity.py; it reads each written item before and after,
    so it is off unless asked for); `GET /__capacity` reports them per table and index,
    `DELETE /__capacity` stops counting. Counting is approximate under concurrent writes
    of one item (the reads around a write are not atomic with it) and never changes an
    answer: the call is answered first, and a count that fails is only logged.

    Before any fault, a DynamoDB call that DynamoDB would refuse for its limits (key and
    item sizes, numbers, empty names: see dynamodb_limits.py) is answered with
    DynamoDB's ValidationException and not forwarded, since moto would store it;
    `GET /__faults` counts these as `refused_by_limits`. `key_schemas` maps each table
    name to its (partition key, sort key or None) attribute names, `indexes` to its
    global secondary indexes (capacity.Index).

    With `scale` (VF_SCALE, e.g. 0.01), AWS's throughput limits times that factor hold
    after any fault: per partition key value of a table or index, 1,000 write and 3,000
    read units a second (0.01: 10 and 30), and 10,000 PutEvents a second
    (throughput.py). A call past them is answered as AWS answers it, not forwarded: 400
    ProvisionedThroughputExceededException (EventBridge: ThrottlingException), which
    the SDK retries; a batch's throttled items come back unprocessed, a transaction is
    canceled with ThrottlingError. Writes then cost a read of the item first, as when
    counting. `GET /__throughput` reports the calls throttled per table or index, the
    hot keys (past their limit in more than one second) and the 20 busiest keys; no
    item contents (index key values as a digest). `DELETE /__throughput` starts afresh;
    `PUT /__throughput` with `{"scale": 1}` starts afresh at another scale (make scale's
    setup, a count of work rather than a rate, runs at AWS's own limits). Without
    `scale` nothing is throttled.
    """

    def __init__(self, port, upstream, key_schemas=None, indexes=None, scale=None):
        self.faults = []
        self.calls = {}
        self.injected = {"fail": 0, "stall": 0, "lose": 0}
        self.refused_by_limits = 0
        self.key_schemas = key_schemas or {}
        self.upstream = upstream
        self.indexes = indexes or {}
        # Each index's (partition, sort) key names, for dynamodb_limits.
        self.index_schemas = {table: [(index.partition_key, next((k for k in index.keys if k != index.partition_key),
                                                                   None)) for index in listed]
                              for table, listed in self.indexes.items()}
        self.ledger = None  # a capacity.Ledger while counting
        self.scale = scale
        self.throughput = self.new_throughput()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle on, the body waits for
            # the client's delayed ACK (~40 ms a call).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def body(self):
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def answer(self, status, payload, headers=()):
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_PUT(self):
                if self.path == "/__faults":
                    faults = json.loads(self.body())
                    proxy.faults = faults if isinstance(faults, list) else [faults]
                    return self.answer(204, b"")
                if self.path == "/__capacity":
                    self.body()
                    proxy.ledger = capacity.Ledger(proxy.indexes)
                    return self.answer(204, b"")
                if self.path == "/__throughput":
                    proxy.scale = json.loads(self.body())["scale"]
                    proxy.throughput = proxy.new_throughput()
                    return self.answer(204, b"")
                self.forward()

            def do_DELETE(self):
                if self.path == "/__faults":
                    self.body()
                    proxy.faults = []
                    return self.answer(204, b"")
                if self.path == "/__capacity":
                    self.body()
                    proxy.ledger = None
                    return self.answer(204, b"")
                if self.path == "/__throughput":
                    self.body()
                    proxy.throughput = proxy.new_throughput()
                    return self.answer(204, b"")
                self.forward()

            def do_GET(self):
                if self.path == "/__faults":
                    with proxy.lock:
                        report = {"calls": proxy.calls, "injected": proxy.injected,
                                  "refused_by_limits": proxy.refused_by_limits}
                        return self.answer(200, json.dumps(report).encode(),
                                           [("Content-Type", "application/json")])
                if self.path == "/__capacity":
                    ledger = proxy.ledger
                    tables = json.dumps(ledger.report() if ledger else {}).encode()
                    return self.answer(200, tables, [("Content-Type", "application/json")])
                if self.path == "/__throughput":
                    limits = proxy.throughput
                    report = limits.report() if limits else {"scale": None, "throttled": {}, "hot_keys": [],
                                                             "busiest": []}
                    return self.answer(200, json.dumps(report).encode(), [("Content-Type", "application/json")])
                self.forward()

            def do_POST(self):
                self.forward()

            def forward(self):
                payload = self.body()
                target = self.headers.get("X-Amz-Target", "")
                refusal = proxy.refusal(target, payload)
                with proxy.lock:
                    faults = next((f for f in proxy.faults
                                   if not refusal and target and target in f.get("operations", [])
                                   and f.get("matching", "").encode() in payload
                                   and f.get("times", 1) > 0
                                   and random.random() < float(f.get("probability", 1))), {})
                    if "times" in faults:
                        faults["times"] -= 1
                action = faults.get("action", "fail") if faults else None
                queue = target.startswith("AmazonSQS.") and sqs_queue_url(payload)
                with proxy.lock:
                    proxy.calls[target] = proxy.calls.get(target, 0) + 1
                    if queue:
                        # Per queue too: a test counting one queue's sends is not moved
                        # by what the tick or the stream send meanwhile.
                        per_queue = f"{target} {queue}"
                        proxy.calls[per_queue] = proxy.calls.get(per_queue, 0) + 1
                    if refusal:
                        proxy.refused_by_limits += 1
                    if action:
                        proxy.injected[action] += 1
                if refusal:
                    error = json.dumps({"__type": "com.amazon.coral.validation#ValidationException",
                                        "message": refusal}).encode()
                    return self.answer(400, error, [("Content-Type", "application/x-amz-json-1.0")])
                if action == "fail":
                    return self.injected_error(faults)
                if action == "stall":
                    time.sleep(int(faults.get("delay_ms", 3000)) / 1000)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                counted = proxy.ledger is not None and target.startswith("DynamoDB_20120810.")
                limits = proxy.throughput if throughput.limited(target) else None
                before = proxy.item_before(target, payload) if counted or limits else None  # never raises
                admission = proxy.admit(limits, target, payload, before) if limits else None
                if admission and admission.refusal:
                    return self.answer(400, json.dumps(admission.refusal).encode(),
                                       [("Content-Type", json_content_type(target))])
                forwarded = admission.forwarded(payload) if admission else payload
                status, data, got = proxy.send(self.command, self.path, forwarded, headers)
                if admission:
                    data = admission.answered(status, data)
                if action == "lose":
                    # The call happened: its capacity counts, whatever the caller is told.
                    self.injected_error(faults)
                    if counted or admission:
                        proxy.after_answer(target, payload, before, status, data, counted, limits, admission)
                    return
                passed = [(k, v) for k, v in got.items()
                          if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server")]
                self.answer(status, data, passed)
                # Counted while a capacity run asks. The throughput charge of an answered
                # call is not settled (as since b33493e): settling every one slowed the
                # 2-core CI stack past its stall bounds on 2026-12-07; left for the
                # throughput model's own change.
                if counted:
                    proxy.after_answer(target, payload, before, status, data, counted, limits, None)

            def injected_error(self, faults):
                error = json.dumps({"__type": faults.get("code", "ServiceUnavailable"),
                                    "message": faults.get("message", "injected by the test fault proxy")}).encode()
                self.answer(int(faults.get("status", 503)), error, [("Content-Type", "application/x-amz-json-1.0")])

        self.server = QuietServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def new_throughput(self):
        """Fresh throughput limits (all keys idle, nothing reported), or None without
        a scale."""
        return throughput.Throughput(self.scale, self.key_schemas, self.indexes) if self.scale else None

    def send(self, method, path, payload, headers):
        request = urllib.request.Request(self.upstream + path, data=payload or None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers

    def current_item(self, table, key):
        """The item as moto holds it now, read by the proxy itself (moto routes by the
        credential scope of the Authorization header but checks no signature)."""
        headers = {"X-Amz-Target": "DynamoDB_20120810.GetItem", "Content-Type": "application/x-amz-json-1.0",
                   "Authorization": f"AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/dynamodb/aws4_request, "
                                    "SignedHeaders=host, Signature=0"}
        request = {"TableName": table, "Key": key, "ConsistentRead": True}
        status, data, _ = self.send("POST", "/", json.dumps(request).encode(), headers)
        return json.loads(data).get("Item") if status == 200 else None

    def item_before(self, target, payload):
        """The item a write is about to change (None for other calls, and when it cannot
        be read: moto will answer the write itself)."""
        try:
            operation, request = target.rpartition(".")[2], json.loads(payload)
            if operation not in ("PutItem", "UpdateItem", "DeleteItem"):
                return None
            return self.current_item(request["TableName"], self.written_key(request))
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            return None

    def written_key(self, request):
        if "Key" in request:
            return request["Key"]
        partition, sort = self.key_schemas.get(request["TableName"], ("pk", None))
        return {name: request["Item"][name] for name in (partition, sort) if name}

    def item_after(self, operation, request, status):
        """The item a successful single-item write left (an UpdateItem's read back);
        None for anything else."""
        if status != 200 or operation not in ("PutItem", "UpdateItem"):
            return None
        if operation == "PutItem":
            return request["Item"]
        return self.current_item(request["TableName"], request["Key"])

    def admit(self, limits, target, payload, before):
        """The throughput limits' admission of a call, or None (admitted, nothing
        charged) for a body they cannot read: moto answers it."""
        try:
            return limits.admit(target, json.loads(payload), before)
        except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as e:
            log(f"throughput: {target} not charged: {e!r}")
            return None

    def after_answer(self, target, payload, before, status, data, counted, limits, admission):
        """What follows an answer: the capacity count, the throughput charge settled
        (both with the item a write left, read once). Never fails the call: a failure
        is only logged."""
        try:
            operation, request, answer = target.rpartition(".")[2], json.loads(payload), json.loads(data or b"{}")
            after = self.item_after(operation, request, status)
            if counted:
                self.count_call(operation, request, before, after, status, answer)
            if admission:
                limits.settle(admission, status, answer, after)
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
            log(f"capacity and throughput: {target} not counted: {e!r}")

    def count_call(self, operation, request, before, after, status, answer):
        failed_condition = capacity.condition_failed(status, answer)
        ledger = self.ledger
        if ledger is None or (status != 200 and not failed_condition):
            return
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            table = request["TableName"]
            if failed_condition:
                return ledger.failed_condition(table, before)
            ledger.write(table, before, after)
        elif operation == "GetItem":
            item = answer.get("Item")
            ledger.read(request["TableName"], [item] if item else [], request.get("ConsistentRead", False))
        elif operation == "BatchGetItem":
            for table, asked in request["RequestItems"].items():
                found = answer.get("Responses", {}).get(table, [])
                missing = len(asked["Keys"]) - len(found)
                ledger.read(table, found + [{}] * missing, asked.get("ConsistentRead", False))
        elif operation == "Query":
            ledger.read(request["TableName"], answer.get("Items", []), request.get("ConsistentRead", False),
                        together=True)

    def refusal(self, target, payload):
        """DynamoDB's ValidationException message for a call that breaks its limits, or
        None. A body that is not DynamoDB JSON is left to moto, which answers it with the
        SerializationException DynamoDB would."""
        if not target.startswith("DynamoDB_20120810."):
            return None
        try:
            return violation(target, json.loads(payload), self.key_schemas, self.index_schemas)
        except (ValueError, TypeError, AttributeError):
            return None

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def sqs_queue_url(payload):
    """The QueueUrl an SQS JSON call names, or None."""
    try:
        return json.loads(payload).get("QueueUrl")
    except (ValueError, AttributeError):
        return None


def json_content_type(target):
    """The JSON protocol of a call: DynamoDB's 1.0, EventBridge's (and SQS's) 1.1."""
    return "application/x-amz-json-1.0" if target.startswith("DynamoDB_20120810.") else "application/x-amz-json-1.1"
