"""AWS's throughput limits scaled down (dev/stack/throughput.py), on a fake clock: a key
within its limit is never throttled, one past it is until the next second, index writes
count on the index's key, batches give back what is throttled, transactions are
canceled, PutEvents has its rate, and a hot key is one past its limit in more than one
second. Then the proxy's wiring, against a fake moto."""
import json
import socket
import threading
import unittest
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from capacity import Index
from stack.proxy import FaultProxy
from stack.throughput import MIN_BURST_UNITS, PROVISIONED_THROUGHPUT_EXCEEDED, TRANSACTION_CANCELED, Throughput

DYNAMODB = "DynamoDB_20120810."
KEY_SCHEMAS = {"users": ("pk", None), "counters": ("pk", None), "members": ("pk", "sk")}
WORKSPACE_USERS = {"IndexName": "workspace-users", "Projection": {"ProjectionType": "KEYS_ONLY"},
                   "KeySchema": [{"AttributeName": "workspace_id", "KeyType": "HASH"},
                                 {"AttributeName": "pk", "KeyType": "RANGE"}]}
EMAIL_LOOKUP = {"IndexName": "email-lookup", "Projection": {"ProjectionType": "KEYS_ONLY"},
                "KeySchema": [{"AttributeName": "email_key", "KeyType": "HASH"},
                              {"AttributeName": "pk", "KeyType": "RANGE"}]}
DUE = {"IndexName": "due", "Projection": {"ProjectionType": "KEYS_ONLY"},
       "KeySchema": [{"AttributeName": "due_shard", "KeyType": "HASH"},
                     {"AttributeName": "due_at", "KeyType": "RANGE"}]}
INDEXES = {"users": [Index(WORKSPACE_USERS, ["pk"]), Index(EMAIL_LOOKUP, ["pk"])], "counters": [],
           "members": [Index(DUE, ["pk", "sk"])]}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def s(text):
    return {"S": text}


def user(pk, workspace="ws", email=None, padding=0):
    item = {"pk": s(pk), "workspace_id": s(workspace), "traits": s("x" * padding)}
    if email:
        item["email_key"] = s(f"{workspace}#{email}")
    return item


def put(table, item):
    return {"TableName": table, "Item": item}


def counter(workspace):
    return put("counters", {"pk": s(workspace), "n": {"N": "1"}})


class Limits(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.limits = Throughput(0.01, KEY_SCHEMAS, INDEXES, self.clock)

    def admit(self, operation, request, before=None):
        target = operation if "." in operation else DYNAMODB + operation
        return self.limits.admit(target, request, before)

    def admitted(self, operation, request, before=None):
        return self.admit(operation, request, before).refusal is None

    def test_scale_0_01_gives_10_write_units_a_second_per_key(self):
        self.assertEqual((self.limits.rates["write"], self.limits.rates["read"]), (10, 30))
        self.assertTrue(all(self.admitted("PutItem", counter("ws")) for _ in range(10)))
        self.assertFalse(self.admitted("PutItem", counter("ws")))
        self.assertTrue(self.admitted("PutItem", counter("another-ws")), "a limit is per key")

    def test_a_key_within_its_limit_is_never_throttled(self):
        for _ in range(60):
            self.assertTrue(all(self.admitted("PutItem", counter("ws")) for _ in range(10)))
            self.clock.advance(1)
        report = self.limits.report()
        self.assertEqual((report["throttled"], report["hot_keys"]), ({}, []))

    def test_a_key_over_its_limit_is_throttled_then_admitted_the_next_second(self):
        for _ in range(10):
            self.admit("PutItem", counter("ws"))
        refusal = self.admit("PutItem", counter("ws")).refusal
        self.assertEqual(refusal["__type"], PROVISIONED_THROUGHPUT_EXCEEDED)
        self.assertEqual(refusal["ThrottlingReasons"], [
            {"reason": "TableWriteKeyRangeThroughputExceeded",
             "resource": "arn:aws:dynamodb:us-east-1:123456789012:table/counters"}])
        self.clock.advance(0.5)
        self.assertEqual([self.admitted("PutItem", counter("ws")) for _ in range(6)], [True] * 5 + [False])
        self.clock.advance(1)
        self.assertTrue(self.admitted("PutItem", counter("ws")))
        self.assertEqual(self.limits.report()["throttled"], {"counters": 2})

    def test_an_item_larger_than_a_second_s_worth_passes_on_a_full_bucket_and_leaves_a_debt(self):
        big = put("counters", {"pk": s("ws"), "blob": s("x" * 20 * 1024)})  # 21 units, 10 a second
        self.assertTrue(self.admitted("PutItem", big))
        self.clock.advance(1)
        self.assertFalse(self.admitted("PutItem", counter("ws")), "still 1 unit in debt")
        self.clock.advance(0.25)
        self.assertTrue(self.admitted("PutItem", counter("ws")))

    def test_index_writes_count_on_the_index_key(self):
        new_users = [put("users", user(f"ws#u{i}")) for i in range(11)]
        self.assertEqual([self.admitted("PutItem", request) for request in new_users], [True] * 10 + [False])
        refusal = self.admit("PutItem", put("users", user("ws#u99"))).refusal
        self.assertEqual([reason["reason"] for reason in refusal["ThrottlingReasons"]],
                         ["IndexWriteKeyRangeThroughputExceeded"])
        self.assertTrue(refusal["ThrottlingReasons"][0]["resource"].endswith(":table/users/index/workspace-users"))
        self.assertTrue(self.admitted("PutItem", put("users", user("ws#u1", padding=10)), before=user("ws#u1")),
                        "a keys-only entry whose key stays is not written")
        self.assertTrue(self.admitted("PutItem", put("users", user("other#u1", workspace="other"))),
                        "another workspace")
        self.assertEqual(self.limits.report()["throttled"], {"users/index/workspace-users": 2})

    def test_a_changed_index_key_writes_the_old_and_the_new_partition(self):
        charges = self.admit("PutItem", put("users", user("ws#u1", email="b@x")),
                             before=user("ws#u1", email="a@x")).charges
        self.assertEqual(charges, {("users", "ws#u1", "write"): 1,
                                   ("users/index/email-lookup", "ws#a@x", "write"): 1,
                                   ("users/index/email-lookup", "ws#b@x", "write"): 1})

    def test_an_update_is_settled_with_the_item_it_left_and_a_failed_condition_with_the_table_only(self):
        update = {"TableName": "users", "Key": {"pk": s("ws#u1")}}
        admission = self.admit("UpdateItem", update, before=user("ws#u1"))
        self.assertEqual(admission.charges, {("users", "ws#u1", "write"): 1})
        self.limits.settle(admission, 200, {}, after=user("ws#u1", padding=5000))
        self.assertEqual(self.limits.buckets[("users", "ws#u1", "write")].tokens, 10 - 5)
        admission = self.admit("PutItem", put("users", user("ws#u2")))
        failed = {"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"}
        self.limits.settle(admission, 400, failed)
        self.assertEqual(self.limits.buckets[("users/index/workspace-users", "ws", "write")].tokens, 10,
                         "the index entry was not written: given back")

    def test_reads_are_admitted_on_the_least_they_cost_and_charged_what_they_read(self):
        get = {"TableName": "users", "Key": {"pk": s("ws#u1")}, "ConsistentRead": True}
        for _ in range(3):
            admission = self.admit("GetItem", get)
            self.assertEqual(admission.charges, {("users", "ws#u1", "read"): 1})
            self.limits.settle(admission, 200, {"Item": user("ws#u1", padding=39 * 1024)})  # 10 units
        self.assertFalse(self.admitted("GetItem", get))
        eventually = dict(get, ConsistentRead=False)
        self.assertEqual(self.admit("GetItem", dict(eventually, Key={"pk": s("ws#u2")})).charges,
                         {("users", "ws#u2", "read"): 0.5})

    def test_a_query_reads_the_partition_its_key_condition_names(self):
        query = {"TableName": "members", "IndexName": "due", "KeyConditionExpression": "#s = :shard AND due_at <= :t",
                 "ExpressionAttributeNames": {"#s": "due_shard"},
                 "ExpressionAttributeValues": {":shard": s("3"), ":t": {"N": "5"}}}
        admission = self.admit("Query", query)
        self.assertEqual(admission.charges, {("members/index/due", "3", "read"): 0.5})
        items = [{"pk": s(f"ws#u{i}"), "sk": s("state"), "due_shard": s("3"), "due_at": {"N": "1"}} for i in range(4)]
        self.limits.settle(admission, 200, {"Items": items})
        self.assertEqual(self.limits.buckets[("members/index/due", "3", "read")].tokens, 30 - 0.5)

    def test_a_batch_gives_back_its_throttled_items_unprocessed(self):
        for _ in range(10):
            self.admit("PutItem", counter("hot"))
        writes = [{"PutRequest": {"Item": {"pk": s(pk)}}} for pk in ("hot", "cold")]
        admission = self.admit("BatchWriteItem", {"RequestItems": {"counters": writes}})
        self.assertIsNone(admission.refusal)
        self.assertEqual(admission.request["RequestItems"], {"counters": [writes[1]]})
        answer = json.loads(admission.answered(200, b'{"UnprocessedItems": {}}'))
        self.assertEqual(answer["UnprocessedItems"], {"counters": [writes[0]]})

        all_hot = self.admit("BatchWriteItem", {"RequestItems": {"counters": writes[:1]}})
        self.assertEqual(all_hot.refusal["__type"], PROVISIONED_THROUGHPUT_EXCEEDED, "all throttled: the call is")

    def test_a_batch_get_gives_back_its_throttled_keys_with_their_table_s_settings(self):
        get = {"TableName": "users", "Key": {"pk": s("ws#hot")}, "ConsistentRead": True}
        for _ in range(30):
            self.admit("GetItem", get)
        asked = {"Keys": [{"pk": s("ws#hot")}, {"pk": s("ws#cold")}], "ConsistentRead": True}
        admission = self.admit("BatchGetItem", {"RequestItems": {"users": asked}})
        self.assertEqual(admission.request["RequestItems"]["users"]["Keys"], [{"pk": s("ws#cold")}])
        answer = json.loads(admission.answered(200, b'{"Responses": {"users": []}, "UnprocessedKeys": {}}'))
        self.assertEqual(answer["UnprocessedKeys"], {"users": {"Keys": [{"pk": s("ws#hot")}], "ConsistentRead": True}})

    def test_a_transaction_on_a_throttled_partition_is_canceled_with_throttling_error(self):
        for _ in range(10):
            self.admit("PutItem", counter("ws"))
        transaction = {"TransactItems": [{"Update": {"TableName": "counters", "Key": {"pk": s("ws")}}},
                                         {"Put": {"TableName": "counters", "Item": {"pk": s("other")}}}]}
        refusal = self.admit("TransactWriteItems", transaction).refusal
        self.assertEqual(refusal["__type"], TRANSACTION_CANCELED)
        self.assertEqual([reason["Code"] for reason in refusal["CancellationReasons"]], ["ThrottlingError", "None"])
        self.assertEqual(refusal["Message"], "Transaction cancelled, please refer cancellation reasons for "
                                             "specific reasons [ThrottlingError, None]")
        self.assertEqual(self.limits.buckets[("counters", "other", "write")].tokens, 10, "nothing taken")
        self.clock.advance(1)
        self.assertEqual(self.admit("TransactWriteItems", transaction).charges,
                         {("counters", "ws", "write"): 2, ("counters", "other", "write"): 2},
                         "a transactional write takes twice the units")

    def test_put_events_has_its_rate_and_at_least_one_a_second(self):
        full = {"Entries": [{"Detail": "{}"}] * 10}
        # 100 requests a second at 0.01, a full call of 10 entries charged 10 / 4.4.
        self.assertTrue(all(self.admitted("AWSEvents.PutEvents", full) for _ in range(44)))
        self.assertEqual(self.admit("AWSEvents.PutEvents", full).refusal,
                         {"__type": "ThrottlingException", "message": "Rate exceeded"})
        tiny = Throughput(0.00001, KEY_SCHEMAS, INDEXES, self.clock)
        one = {"Entries": [{"Detail": "{}"}]}
        self.assertEqual([tiny.admit("AWSEvents.PutEvents", one).refusal is None for _ in range(5)],
                         [True] * 4 + [False])

    def test_put_events_calls_are_charged_by_their_entries_at_the_targets_packing(self):
        one = {"Entries": [{"Detail": "{}"}]}
        # Calls of one entry (a scaled-down batch's floor): 4.4 of them make one request,
        # so a second's 100 requests (at 0.01) take 440 (439 if the sum rounds up).
        passed = sum(self.admitted("AWSEvents.PutEvents", one) for _ in range(500))
        self.assertIn(passed, (439, 440))

    def test_the_report_counts_put_events_calls_and_their_entries_throttled_or_not(self):
        entries = lambda n: {"Entries": [{"Detail": "{}"}] * n}
        for n in [10] * 100 + [3]:  # the 101st call is past the rate
            self.admit("AWSEvents.PutEvents", entries(n))
        self.assertEqual(self.limits.report()["put_events"], {"calls": 101, "entries": 1003})

    def test_a_few_coincident_requests_pass_at_any_factor_and_a_sustained_excess_does_not(self):
        tiny = Throughput(0.001, KEY_SCHEMAS, INDEXES, self.clock)  # 1 unit a second
        admitted = lambda: tiny.admit("DynamoDB_20120810.PutItem", counter("ws")).refusal is None
        # Four requests of two writes at once (a claim and its mark each), every ten
        # seconds, for five minutes: never throttled.
        for _ in range(30):
            self.assertEqual([admitted() for _ in range(8)], [True] * 8)
            self.clock.advance(10)
        self.assertEqual((tiny.report()["throttled"], tiny.report()["hot_keys"]), ({}, []))
        # Two a second, sustained: throttled once the bucket is spent, and hot.
        results = []
        for _ in range(2 * MIN_BURST_UNITS):
            results += [admitted(), admitted()]
            self.clock.advance(1)
        self.assertIn(False, results)
        self.assertEqual([h["key"] for h in tiny.report()["hot_keys"]], ["ws"])

    def test_a_hot_key_is_over_its_limit_in_more_than_one_second(self):
        for _ in range(12):
            self.admit("PutItem", counter("ws"))
        self.clock.advance(1)
        self.admit("PutItem", counter("ws"))
        self.assertEqual(self.limits.report()["hot_keys"], [], "one second over is a burst")
        self.clock.advance(1)
        for _ in range(15):
            self.admit("PutItem", counter("ws"))
        report = self.limits.report()
        self.assertEqual(report["hot_keys"], [{"table": "counters", "key": "ws", "kind": "write", "seconds_over": 2,
                                               "max_demand_per_s": 15, "limit_per_s": 10}])
        self.assertEqual(report["busiest"][0], {"table": "counters", "key": "ws", "kind": "write",
                                                "peak_per_s": 15, "limit_per_s": 10})

    def test_the_report_shows_index_key_values_as_a_digest(self):
        self.admit("PutItem", put("users", user("ws#u1", email="jane@acme.io")))
        shown = json.dumps(self.limits.report())
        self.assertIn("ws#u1", shown)
        self.assertNotIn("jane", shown)


class FakeMoto(BaseHTTPRequestHandler):
    """Answers every call as moto would a table without items; records what reached it."""
    protocol_version = "HTTP/1.1"
    received = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        target = self.headers["X-Amz-Target"]
        FakeMoto.received.append((target, body))
        answer = {"AWSEvents.PutEvents": {"FailedEntryCount": 0, "Entries": [{"EventId": "1"}]},
                  DYNAMODB + "BatchGetItem": {"Responses": {}, "UnprocessedKeys": {}}}.get(target, {})
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProxyWiring(unittest.TestCase):
    def start(self, scale):
        moto = ThreadingHTTPServer(("127.0.0.1", 0), FakeMoto)
        threading.Thread(target=moto.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.addCleanup(moto.server_close)
        self.addCleanup(moto.shutdown)
        FakeMoto.received = []
        port = free_port()
        proxy = FaultProxy(port, f"http://127.0.0.1:{moto.server_address[1]}", KEY_SCHEMAS, INDEXES, scale)
        self.addCleanup(proxy.close)
        self.url = f"http://127.0.0.1:{port}"

    def call(self, target, request):
        http = urllib.request.Request(self.url + "/", data=json.dumps(request).encode(), method="POST",
                                      headers={"X-Amz-Target": target})
        try:
            with urllib.request.urlopen(http, timeout=10) as response:
                return response.status, response.headers["Content-Type"], json.loads(response.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers["Content-Type"], json.loads(e.read())

    def report(self, method="GET", body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + "/__throughput", data=data, method=method)
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read() or b"null")

    def test_a_throttled_write_is_answered_as_dynamodb_does_and_reported(self):
        # 0.01 write units a second per key, MIN_BURST_UNITS held: the bucket takes 100 s
        # to earn a unit back, so a slow machine's calls cannot refill it between them.
        self.start(scale=0.00001)
        for _ in range(MIN_BURST_UNITS):
            self.assertEqual(self.call(DYNAMODB + "PutItem", counter("ws"))[0], 200)
        status, content_type, error = self.call(DYNAMODB + "PutItem", counter("ws"))
        self.assertEqual((status, content_type, error["__type"]),
                         (400, "application/x-amz-json-1.0", PROVISIONED_THROUGHPUT_EXCEEDED))
        self.assertEqual([target for target, _ in FakeMoto.received].count(DYNAMODB + "PutItem"), MIN_BURST_UNITS)
        self.assertEqual(self.report()["throttled"], {"counters": 1})
        self.report("DELETE")
        self.assertEqual(self.report()["throttled"], {})
        self.assertEqual(self.call(DYNAMODB + "PutItem", counter("ws"))[0], 200, "reset: the key is idle again")

    def test_the_scale_can_be_changed_and_starts_afresh(self):
        self.start(scale=0.00001)
        for _ in range(MIN_BURST_UNITS):
            self.call(DYNAMODB + "PutItem", counter("ws"))
        self.assertEqual(self.call(DYNAMODB + "PutItem", counter("ws"))[0], 400)
        self.report("PUT", {"scale": 1})  # AWS's own limits: 1,000 units a second a key
        self.assertEqual(self.report()["scale"], 1)
        self.assertTrue(all(self.call(DYNAMODB + "PutItem", counter("ws"))[0] == 200 for _ in range(50)))
        self.report("PUT", {"scale": 0.00001})
        self.assertEqual(self.report()["throttled"], {}, "afresh")

    def test_a_partly_throttled_batch_reaches_moto_without_its_throttled_keys(self):
        # 0.03 read units a second per key, MIN_BURST_UNITS held: 33 s to earn a unit back.
        self.start(scale=0.00001)
        for _ in range(MIN_BURST_UNITS):
            self.call(DYNAMODB + "GetItem", {"TableName": "users", "Key": {"pk": s("ws#hot")}, "ConsistentRead": True})
        asked = {"Keys": [{"pk": s("ws#hot")}, {"pk": s("ws#cold")}]}
        status, _, answer = self.call(DYNAMODB + "BatchGetItem", {"RequestItems": {"users": asked}})
        self.assertEqual(status, 200)
        self.assertEqual(answer["UnprocessedKeys"], {"users": {"Keys": [{"pk": s("ws#hot")}]}})
        self.assertEqual(FakeMoto.received[-1][1]["RequestItems"], {"users": {"Keys": [{"pk": s("ws#cold")}]}})

    def test_put_events_over_its_rate_is_a_throttling_exception(self):
        self.start(scale=0.00001)  # at least 1 a second; a call of 5 entries is more
        five = {"Entries": [{"Detail": "{}"}] * 5}
        self.assertEqual(self.call("AWSEvents.PutEvents", five)[0], 200)
        self.assertEqual(self.call("AWSEvents.PutEvents", five),
                         (400, "application/x-amz-json-1.1",
                          {"__type": "ThrottlingException", "message": "Rate exceeded"}))

    def test_a_lost_answer_reaches_moto_and_answers_an_error_as_many_times_as_asked(self):
        self.start(scale=None)
        fault = {"operations": [DYNAMODB + "UpdateItem"], "action": "lose", "times": 1, "matching": "ws#1"}
        request = urllib.request.Request(self.url + "/__faults", data=json.dumps(fault).encode(), method="PUT")
        urllib.request.urlopen(request).close()
        update = {"TableName": "counters", "Key": {"pk": s("ws#1")}}
        FakeMoto.received.clear()
        self.assertEqual(self.call(DYNAMODB + "UpdateItem", update)[0], 503, "its answer lost")
        self.assertEqual(len(FakeMoto.received), 1, "but applied")
        self.assertEqual(self.call(DYNAMODB + "UpdateItem", update)[0], 200, "once only")

    def test_without_a_scale_nothing_is_throttled(self):
        self.start(scale=None)
        self.assertTrue(all(self.call(DYNAMODB + "PutItem", counter("ws"))[0] == 200 for _ in range(20)))
        self.assertEqual(self.report(), {"scale": None, "throttled": {}, "hot_keys": [], "busiest": []})


if __name__ == "__main__":
    unittest.main()
