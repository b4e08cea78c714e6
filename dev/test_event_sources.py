"""The functions' event sources as the local stack runs them (dev/stack/bridges.py), with
fakes: a fake `bootstrap` behind the faithful runtime's Invoke API stands for the
audiences function, in-memory fakes for the queue and the stream. What they check:

- a queue bridge sends its function real SQS events of the template's batch size and
  deletes what the function finished, retrying the rest;
- the stream's readers (changes, audiences) each get every record once, in order, and
  one that fails or hangs neither stalls nor repeats the other's deliveries; what fails
  for good reaches the failure queue naming its function;
- the ticker sends EventBridge's scheduled event on a fixed grid, one at a time, a JSON
  line each, and one it could not deliver to the schedule's dead-letter queue as
  EventBridge would;
- the stack wires all of it from template.yaml: the fleet, the build, the processes."""
import http.client
import json
import os
import re
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

from moto.events.models import EventPattern

from faithful import Fleet, FunctionConfig
from stack import bridges, cli, resources, supervisor, template
from stack.settings import RETRY_DELAY_SECONDS, ROOT
from stack.supervisor import wait_for

BUILDS_URL = "http://127.0.0.1:4566/123456789012/vibefollow-local-audience-builds"
RETRIES_URL = "http://127.0.0.1:4566/123456789012/vibefollow-local-audience-retries"
TIME_URL = "http://127.0.0.1:4566/123456789012/vibefollow-local-audience-time"
STREAM_FAILURES_URL = "http://127.0.0.1:4566/123456789012/vibefollow-local-audience-stream-failures"
TICKS_DLQ_URL = "http://127.0.0.1:4566/123456789012/vibefollow-local-audience-ticks-dlq"
WEBHOOK_INTAKE_URL = "http://127.0.0.1:4566/123456789012/vibefollow-local-webhook-intake"
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/vibefollow-local-users/stream/2025-01-01T00:00:00.000"

# A custom runtime standing for the audiences function: it appends every event to
# $EVENTS_FILE and answers as the function would: an SQS record whose body is "fail" is
# reported in batchItemFailures, "crash" fails the invocation; a scheduled event gets
# null.
FAKE_AUDIENCES = '''#!{python}
import json, os, urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
while True:
    with urllib.request.urlopen(API + "/invocation/next") as response:
        request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.load(response)
    with open(os.environ["EVENTS_FILE"], "a") as events:
        events.write(json.dumps(event) + "\\n")
    bodies = [r.get("body") for r in event.get("Records", [])]
    if "crash" in bodies:
        path, answer = "/error", {{"errorType": "Crash", "errorMessage": "asked to"}}
    elif "Records" in event:
        path, answer = "/response", {{"batchItemFailures": [
            {{"itemIdentifier": r["messageId"]}} for r in event["Records"] if r["body"] == "fail"]}}
    else:
        path, answer = "/response", None
    urllib.request.urlopen(urllib.request.Request(
        API + "/invocation/" + request_id + path, data=json.dumps(answer).encode(), method="POST"))
'''


class FakeAudiences(unittest.TestCase):
    """A faithful fleet running the fake audiences function; API_URL points at it."""

    @classmethod
    def setUpClass(cls):
        workdir = tempfile.TemporaryDirectory(prefix="event-sources-test-")
        cls.addClassCleanup(workdir.cleanup)
        cls.dir = Path(workdir.name)
        bootstrap = cls.dir / "bootstrap"
        bootstrap.write_text(FAKE_AUDIENCES.format(python=sys.executable))
        bootstrap.chmod(0o755)
        cls.events_file = cls.dir / "events.jsonl"
        function = FunctionConfig("audiences", str(bootstrap), {"EVENTS_FILE": str(cls.events_file)},
                                  min_instances=1, max_instances=2)
        cls.fleet = Fleet([function], port=0, log_path=cls.dir / "functions.log", api_function="audiences").start()
        cls.addClassCleanup(cls.fleet.stop)
        patch = mock.patch.object(bridges, "API_URL", cls.fleet.url)
        patch.start()
        cls.addClassCleanup(patch.stop)

    def setUp(self):
        self.events_file.write_text("")
        self.lines = []
        patch = mock.patch.object(bridges, "emit", self.lines.append)
        patch.start()
        self.addCleanup(patch.stop)
        quiet = mock.patch.object(bridges, "log", lambda message: None)
        quiet.start()
        self.addCleanup(quiet.stop)

    def events(self):
        return [json.loads(line) for line in self.events_file.read_text().splitlines()]


# --- an SQS queue → its function ---------------------------------------------------------

class FakeQueue:
    """Just what the bridge calls of SQS: received messages are invisible until deleted
    or made visible again (at once, here)."""

    def __init__(self, bodies):
        self.messages = [{"MessageId": f"m{i}", "Body": body, "MD5OfBody": "md5", "receives": 0}
                         for i, body in enumerate(bodies)]
        self.invisible, self.deleted, self.retried, self.asked = set(), [], [], []

    def receive_message(self, QueueUrl, MaxNumberOfMessages, WaitTimeSeconds, AttributeNames,
                        MessageAttributeNames, **extra):
        self.asked.append(MaxNumberOfMessages)
        visible = [m for m in self.messages if m["MessageId"] not in self.invisible and m not in self.deleted]
        got = visible[:MaxNumberOfMessages]
        for m in got:
            m["receives"] += 1
            self.invisible.add(m["MessageId"])
        return {"Messages": [{"MessageId": m["MessageId"], "ReceiptHandle": f"{m['MessageId']}/{m['receives']}",
                              "Body": m["Body"], "MD5OfBody": m["MD5OfBody"],
                              "Attributes": {"ApproximateReceiveCount": str(m["receives"])}} for m in got]}

    def delete_message_batch(self, QueueUrl, Entries):
        for entry in Entries:
            self.deleted += [m for m in self.messages if m["MessageId"] == entry["ReceiptHandle"].split("/")[0]]

    def change_message_visibility(self, QueueUrl, ReceiptHandle, VisibilityTimeout):
        self.retried.append((ReceiptHandle.split("/")[0], VisibilityTimeout))
        self.invisible.discard(ReceiptHandle.split("/")[0])


class QueueBridge(FakeAudiences):
    def test_a_build_queue_message_reaches_the_function_alone_as_a_real_sqs_event(self):
        queue = FakeQueue(["page-1", "page-2"])
        self.assertEqual(bridges.poll_once(queue, BUILDS_URL, "audiences", 1), 1)
        self.assertEqual(bridges.poll_once(queue, BUILDS_URL, "audiences", 1), 1)
        self.assertEqual(queue.asked, [1, 1])
        [first], [second] = (event["Records"] for event in self.events())
        self.assertEqual((first["body"], second["body"]), ("page-1", "page-2"))
        self.assertEqual(first["eventSource"], "aws:sqs")
        self.assertEqual(first["eventSourceARN"], "arn:aws:sqs:us-east-1:123456789012:vibefollow-local-audience-builds")
        self.assertEqual(set(first), {"messageId", "receiptHandle", "body", "attributes", "messageAttributes",
                                      "md5OfBody", "eventSource", "eventSourceARN", "awsRegion"})
        self.assertEqual([m["Body"] for m in queue.deleted], ["page-1", "page-2"])
        self.assertEqual(self.lines, [json.dumps({"batch": 1, "redelivered": 0, "function": "audiences"})] * 2)

    def test_a_reported_failure_is_retried_and_the_rest_deleted(self):
        queue = FakeQueue(["ok", "fail", "ok too"])
        bridges.poll_once(queue, BUILDS_URL, "audiences", 10)
        self.assertEqual([m["Body"] for m in queue.deleted], ["ok", "ok too"])
        self.assertEqual(queue.retried, [("m1", RETRY_DELAY_SECONDS)])
        bridges.poll_once(queue, BUILDS_URL, "audiences", 10)
        self.assertEqual(self.lines[-1], json.dumps({"batch": 1, "redelivered": 1, "function": "audiences"}))

    def test_a_failed_invocation_retries_the_whole_batch(self):
        queue = FakeQueue(["ok", "crash"])
        bridges.poll_once(queue, BUILDS_URL, "audiences", 10)
        self.assertEqual((queue.deleted, [m for m, _ in queue.retried]), ([], ["m0", "m1"]))

    def test_nothing_received_invokes_nothing(self):
        self.assertEqual(bridges.poll_once(FakeQueue([]), BUILDS_URL, "audiences", 1), 0)
        self.assertEqual(self.events(), [])


class ThreadSafeQueue(FakeQueue):
    def __init__(self, bodies):
        super().__init__(bodies)
        self.lock = threading.Lock()

    def receive_message(self, **asked):
        with self.lock:
            return super().receive_message(**asked)

    def delete_message_batch(self, **asked):
        with self.lock:
            return super().delete_message_batch(**asked)


class QueuePollers(unittest.TestCase):
    def test_pollers_grow_while_all_are_busy_up_to_the_most_and_added_ones_stop_when_the_queue_is_empty(self):
        queue = ThreadSafeQueue([f"task-{i}" for i in range(9)])
        busy, most_busy, lock, release = [0], [0], threading.Lock(), threading.Event()

        def invoke(function, event, ids, what):
            with lock:
                busy[0] += 1
                most_busy[0] = max(most_busy[0], busy[0])
            release.wait(30)
            with lock:
                busy[0] -= 1
            return []

        with mock.patch.object(bridges, "emulator_session") as session, \
                mock.patch.object(bridges, "batch_item_failures", invoke), \
                mock.patch.object(bridges, "emit"):
            session.return_value.client.return_value = queue
            pollers = bridges.Pollers(TIME_URL, "audiences", 1, most=4)
            threading.Thread(target=pollers.run, daemon=True).start()
            wait_for(lambda: most_busy[0] == 4, "four batches at once", 10)
            self.assertEqual(pollers.running, 4, "no more pollers than the most")
            release.set()
            wait_for(lambda: len(queue.deleted) == 9, "every task done", 10)
            wait_for(lambda: pollers.running == bridges.BRIDGE_POLLERS, "the added pollers gone", 10)
        self.assertEqual(most_busy[0], 4)


class BatchItemFailures(unittest.TestCase):
    """What an event source mapping makes of a function's answer (AWS's rules)."""

    def answer(self, error, payload):
        with mock.patch.object(bridges, "invoke", return_value=(error, payload)), \
                mock.patch.object(bridges, "log", lambda message: None):
            return bridges.batch_item_failures("audiences", {"Records": []}, ["a", "b"], "test")

    def test_answers(self):
        for payload, expected in ((None, []), ({}, []), ({"batchItemFailures": None}, []),
                                  ({"batchItemFailures": []}, []),
                                  ({"batchItemFailures": [{"itemIdentifier": "b"}]}, ["b"]),
                                  ({"batchItemFailures": [{"itemIdentifier": "zz"}]}, None),
                                  ({"batchItemFailures": [{"itemIdentifier": ""}]}, None),
                                  ({"batchItemFailures": [{"id": "a"}]}, None),
                                  ({"batchItemFailures": [{"itemIdentifier": {"a": 1}}]}, None),
                                  ("done", None), ([], None)):
            with self.subTest(payload=payload):
                self.assertEqual(self.answer(None, payload), expected)
        self.assertIsNone(self.answer("Unhandled", {"errorType": "Crash"}))

    def test_an_unreachable_function_or_an_answer_cut_short_fails_the_batch(self):
        for failure in (ConnectionRefusedError("refused"), http.client.IncompleteRead(b"{")):
            with mock.patch.object(bridges, "invoke", side_effect=failure), \
                    mock.patch.object(bridges, "log", lambda message: None):
                self.assertIsNone(bridges.batch_item_failures("audiences", {}, ["a"], "test"))


# --- the users stream → each of its readers ----------------------------------------------

class FakeStream:
    """A dynamodbstreams client over one shard of records the test appends to."""

    def __init__(self, count):
        self.records = []
        self.add(count)

    def add(self, count):
        start = len(self.records)
        self.records += [{"eventID": str(i), "eventName": "INSERT",
                          "dynamodb": {"SequenceNumber": f"{100 + i}", "Keys": {"pk": {"S": f"w#u{i}"}}}}
                         for i in range(start, start + count)]

    def describe_stream(self, StreamArn):
        return {"StreamDescription": {"Shards": [{"ShardId": "shard-1"}]}}

    def get_shard_iterator(self, StreamArn, ShardId, ShardIteratorType):
        assert ShardIteratorType == "TRIM_HORIZON"
        return {"ShardIterator": "0"}

    def get_records(self, ShardIterator, Limit):
        start = int(ShardIterator)
        page = self.records[start:start + Limit]
        return {"Records": page, "NextShardIterator": str(start + len(page))}


class Function:
    """A stream reader's function: handles records in order; `failing` makes every
    invocation fail, `gate` makes invocations wait until it is set."""

    def __init__(self, failing=False, gate=None):
        self.failing, self.gate = failing, gate
        self.handled, self.calls = [], 0

    def __call__(self, records):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait()
        if self.failing:
            return 0
        self.handled += [r["dynamodb"]["SequenceNumber"] for r in records]
        return None


def sequence(first, count):
    return [f"{100 + i}" for i in range(first, first + count)]


class StreamReaders(unittest.TestCase):
    def setUp(self):
        self.lines, self.failed = [], []
        for name, fake in (("emit", self.lines.append), ("log", lambda message: None)):
            patch = mock.patch.object(bridges, name, fake)
            patch.start()
            self.addCleanup(patch.stop)

    def run_readers(self, stream, functions):
        """A reader thread per function, as the stream bridge runs them."""
        stop = threading.Event()
        threads = []
        for name, function in functions.items():
            reader = bridges.StreamReader(STREAM_ARN, name, stream, function,
                                          lambda shard, records, name=name: self.failed.append((name, shard, records)),
                                          retries=1)
            threads.append(threading.Thread(target=reader.run, args=(stop,), daemon=True))
            threads[-1].start()
        self.addCleanup(lambda: [stop.set(), *(t.join(5) for t in threads)])
        return stop

    def wait_until(self, predicate):
        wait_for(predicate, "the readers", 10)

    def test_both_readers_get_every_record_once_in_order(self):
        stream = FakeStream(5)
        changes, audiences = Function(), Function()
        self.run_readers(stream, {"changes": changes, "audiences": audiences})
        self.wait_until(lambda: len(changes.handled) == len(audiences.handled) == 5)
        stream.add(3)
        self.wait_until(lambda: len(changes.handled) == len(audiences.handled) == 8)
        time.sleep(0.3)
        self.assertEqual(changes.handled, sequence(0, 8))
        self.assertEqual(audiences.handled, sequence(0, 8))
        self.assertEqual(self.failed, [])
        self.assertIn(json.dumps({"stream_batch": 5, "function": "audiences"}), self.lines)
        self.assertIn(json.dumps({"stream_batch": 5, "function": "changes"}), self.lines)

    def test_a_hung_reader_does_not_stall_the_other(self):
        for hung, other in (("audiences", "changes"), ("changes", "audiences")):
            with self.subTest(hung=hung):
                gate = threading.Event()
                stream = FakeStream(4)
                functions = {hung: Function(gate=gate), other: Function()}
                stop = self.run_readers(stream, functions)
                self.wait_until(lambda: len(functions[other].handled) == 4)
                stream.add(2)
                self.wait_until(lambda: len(functions[other].handled) == 6)
                self.assertEqual(functions[hung].handled, [])
                gate.set()
                self.wait_until(lambda: len(functions[hung].handled) == 6)
                self.assertEqual(functions[other].handled, sequence(0, 6))
                self.assertEqual(functions[hung].handled, sequence(0, 6))
                stop.set()

    def test_a_failing_reader_goes_to_the_failure_queue_alone_and_the_other_is_untouched(self):
        for failing, other in (("audiences", "changes"), ("changes", "audiences")):
            with self.subTest(failing=failing):
                self.failed = []
                stream = FakeStream(4)
                functions = {failing: Function(failing=True), other: Function()}
                stop = self.run_readers(stream, functions)
                self.wait_until(lambda: len(self.failed) == 4)
                self.assertEqual(functions[other].handled, sequence(0, 4))
                self.assertEqual({name for name, _, _ in self.failed}, {failing})
                self.assertEqual([r[0]["dynamodb"]["SequenceNumber"] for _, _, r in self.failed], sequence(0, 4))
                self.assertEqual({shard for _, shard, _ in self.failed}, {"shard-1"})
                # Retried and bisected down to each record, then the shard moved on.
                stream.add(1)
                self.wait_until(lambda: len(self.failed) == 5)
                self.assertEqual(functions[other].handled, sequence(0, 5))
                stop.set()

    def test_the_stream_bridge_runs_a_reader_per_function_to_the_failure_queue(self):
        """stream_bridge itself, with fake clients: changes handles every record while
        every invocation of audiences crashes; audiences' records reach the failure
        queue one by one, named as its."""
        stream, sent, seen = FakeStream(3), [], {"changes": [], "audiences": []}

        class Session:
            def client(self, service, endpoint_url):
                return {"dynamodbstreams": stream, "sqs": mock.Mock(send_message=lambda **m: sent.append(m))}[service]

        def invoke(function, event, timeout):
            seen[function] += [r["dynamodb"]["SequenceNumber"] for r in event["Records"]]
            return ("Unhandled", {"errorType": "Crash"}) if function == "audiences" else (None, {})

        stop = threading.Event()
        with mock.patch.object(bridges, "emulator_session", Session), mock.patch.object(bridges, "invoke", invoke), \
                mock.patch.object(bridges, "STREAM_RETRIES", 0):
            thread = threading.Thread(target=bridges.stream_bridge, args=(
                STREAM_ARN, [("changes", "changes-failures"), ("audiences", "changes-failures")], stop))
            thread.start()
            self.wait_until(lambda: len(sent) == 3)
            stop.set()
            thread.join(5)
        self.assertFalse(thread.is_alive())
        self.assertEqual(seen["changes"], sequence(0, 3))
        self.assertEqual(self.lines.count(json.dumps({"stream_batch": 3, "function": "changes"})), 1)
        bodies = [json.loads(m["MessageBody"]) for m in sent]
        self.assertEqual({m["QueueUrl"] for m in sent}, {"changes-failures"})
        self.assertEqual({b["requestContext"]["functionArn"].rsplit(":", 1)[1] for b in bodies}, {"audiences"})
        self.assertEqual([b["DDBStreamBatchInfo"]["startSequenceNumber"] for b in bodies], sequence(0, 3))

    def test_a_page_whose_delivery_raised_is_read_again(self):
        stream = FakeStream(2)
        function = Function(failing=True)
        refusals = []

        def on_failure(shard, records):
            if not refusals:
                refusals.append(records)
                raise OSError("the failure queue is down")
            self.failed.append(records)

        reader = bridges.StreamReader(STREAM_ARN, "audiences", stream, function, on_failure, retries=0)
        with self.assertRaises(OSError):
            reader.poll()
        reader.poll()
        self.assertEqual([r[0]["dynamodb"]["SequenceNumber"] for r in self.failed], sequence(0, 2))

    def test_the_failure_record_names_the_function_and_the_records_position(self):
        records = [bridges.stream_record(r, STREAM_ARN) for r in FakeStream(3).records]
        record = bridges.failure_record("audiences", STREAM_ARN, "shard-1", records)
        self.assertEqual(record["requestContext"]["functionArn"],
                         "arn:aws:lambda:us-east-1:123456789012:function:audiences")
        self.assertEqual(record["requestContext"]["condition"], "RetryAttemptsExhausted")
        self.assertEqual(record["DDBStreamBatchInfo"], {
            "shardId": "shard-1", "startSequenceNumber": "100", "endSequenceNumber": "102",
            "streamArn": STREAM_ARN, "batchSize": 3})
        self.assertRegex(record["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# --- a schedule → its function ------------------------------------------------------------

RULE_ARN = "arn:aws:events:us-east-1:123456789012:rule/vibefollow-local-tick"


class Ticker(FakeAudiences):
    def test_the_function_gets_eventbridges_scheduled_event(self):
        entry = bridges.send_tick("audiences", bridges.scheduled_event(RULE_ARN, bridges.utc_now()), 0)
        [event] = self.events()
        self.assertEqual(set(event), {"version", "id", "detail-type", "source", "account", "time", "region",
                                      "resources", "detail"})
        self.assertEqual({k: event[k] for k in ("version", "detail-type", "source", "account", "region",
                                                "resources", "detail")},
                         {"version": "0", "detail-type": "Scheduled Event", "source": "aws.events",
                          "account": "123456789012", "region": "us-east-1", "resources": [RULE_ARN], "detail": {}})
        self.assertRegex(event["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertRegex(event["id"], r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")
        self.assertEqual((entry["status"], entry["id"], entry["tick"], entry["function"], entry["missed"]),
                         ("ok", event["id"], event["time"], "audiences", 0))

    def test_a_failing_or_missing_function_is_a_line_not_a_crash(self):
        def crash(function, event, timeout):
            return "Unhandled", {"errorType": "Runtime.ExitError", "errorMessage": "signal: killed"}

        event = bridges.scheduled_event(RULE_ARN, bridges.utc_now())
        entry = bridges.send_tick("audiences", event, 0, crash)
        self.assertEqual((entry["status"], entry["error"]), ("function error", "Runtime.ExitError"))
        entry = bridges.send_tick("nobody", event, 0)
        self.assertEqual((entry["status"], entry["error_code"]), ("invocation failed", "NO_RESOURCE"))
        self.assertIn("404", entry["error"])

        def cut_short(function, event, timeout):
            raise http.client.IncompleteRead(b"{")

        self.assertEqual(bridges.send_tick("audiences", event, 0, cut_short)["status"], "invocation failed")

    def test_a_tick_that_could_not_be_delivered_goes_to_the_dead_letter_queue_as_eventbridge_puts_it(self):
        sent = []

        class Sqs:
            def send_message(self, **message):
                sent.append(message)

        def unreachable(function, event, timeout):
            raise ConnectionRefusedError(111, "Connection refused")

        dead_letter = lambda event, entry: bridges.dead_letter_tick(Sqs(), TICKS_DLQ_URL, event, entry)  # noqa: E731
        lines, stop = [], threading.Event()
        with mock.patch.object(bridges, "emit", lambda line: (lines.append(json.loads(line)), stop.set())):
            bridges.tick("audiences", "vibefollow-local-tick", 0.01, stop, unreachable, dead_letter)
        [line] = lines
        self.assertEqual((line["status"], line["error_code"], line["dead_lettered"]),
                         ("invocation failed", "CONNECTION_FAILURE", True))
        [message] = sent
        self.assertEqual(message["QueueUrl"], TICKS_DLQ_URL)
        event = json.loads(message["MessageBody"])
        self.assertEqual((event["id"], event["detail-type"], event["resources"]),
                         (line["id"], "Scheduled Event", [RULE_ARN]))
        self.assertEqual({name: value["StringValue"] for name, value in message["MessageAttributes"].items()}, {
            "RULE_ARN": RULE_ARN, "TARGET_ARN": "arn:aws:lambda:us-east-1:123456789012:function:audiences",
            "ERROR_CODE": "CONNECTION_FAILURE", "ERROR_MESSAGE": line["error"],
            "EXHAUSTED_RETRY_CONDITION": "MaximumRetryAttempts", "RETRY_ATTEMPTS": "0"})

    def test_a_function_error_is_not_dead_lettered_nor_is_a_tick_of_a_schedule_without_a_queue(self):
        dead_lettered, lines, stop = [], [], threading.Event()

        def crash(function, event, timeout):
            return "Unhandled", {"errorType": "Crash"}

        with mock.patch.object(bridges, "emit", lambda line: (lines.append(json.loads(line)), stop.set())):
            bridges.tick("audiences", "vibefollow-local-tick", 0.01, stop, crash,
                         lambda event, entry: dead_lettered.append(event))
        self.assertEqual((lines[0]["status"], dead_lettered), ("function error", []))
        self.assertNotIn("dead_lettered", lines[0])

    def test_a_dead_letter_queue_that_fails_is_a_line_not_the_tickers_end(self):
        def refuse(event, entry):
            raise OSError("moto is down")

        entry = {"status": "invocation failed", "error": "x", "error_code": "CONNECTION_FAILURE"}
        self.assertFalse(bridges.deliver_dead_letter(refuse, {"id": "e"}, entry))


class TickLoop(unittest.TestCase):
    def run_ticks(self, interval, count, duration=lambda call: 0):
        """`count` ticks of a fake function whose call number n takes duration(n) s;
        the JSON lines and the (start, end) of each call."""
        lines, calls, stop = [], [], threading.Event()

        def invoke(function, event, timeout):
            started = time.monotonic()
            time.sleep(duration(len(calls)))
            calls.append((started, time.monotonic(), event))
            if len(calls) == count:
                stop.set()
            return None, None

        with mock.patch.object(bridges, "emit", lines.append):
            thread = threading.Thread(target=bridges.tick, args=("audiences", "vibefollow-local-tick", interval,
                                                                 stop, invoke))
            thread.start()
            thread.join(10)
        self.assertFalse(thread.is_alive())
        return [json.loads(line) for line in lines], calls

    def test_ticks_come_every_interval_one_line_each(self):
        started = time.monotonic()
        lines, calls = self.run_ticks(0.05, 4)
        self.assertEqual([line["status"] for line in lines], ["ok"] * 4)
        self.assertEqual([line["missed"] for line in lines], [0] * 4)
        self.assertEqual(len({line["id"] for line in lines}), 4)
        self.assertEqual([call[2]["resources"] for call in calls], [[RULE_ARN]] * 4)
        # On the grid: the nth tick comes n intervals after the start, never before.
        for n, (start, _, _) in enumerate(calls, 1):
            self.assertGreaterEqual(start - started, n * 0.05 - 0.005)

    def test_a_slow_tick_delays_the_next_without_overlap(self):
        lines, calls = self.run_ticks(0.2, 2, duration=lambda n: 0.3 if n == 0 else 0)
        self.assertGreaterEqual(calls[1][0], calls[0][1], "two ticks overlapped")
        # The tick due during the slow one goes as soon as it ends, not at the next due time.
        self.assertLess(calls[1][0] - calls[0][1], 0.08)
        self.assertEqual([line["missed"] for line in lines], [0, 0])

    def test_ticks_that_passed_during_a_slow_one_are_counted_not_sent(self):
        lines, calls = self.run_ticks(0.05, 2, duration=lambda n: 0.18 if n == 0 else 0)
        self.assertLess(calls[1][0] - calls[0][1], 0.04, "the overdue tick waited")
        self.assertEqual(lines[0]["missed"], 0)
        self.assertGreaterEqual(lines[1]["missed"], 2)


# --- the stack's wiring, from template.yaml ------------------------------------------------

class Wiring(unittest.TestCase):
    def setUp(self):
        self.template = template.load_template()
        self.names = template.local_resources(self.template)[0]
        self.names["UsersTable.StreamArn"] = STREAM_ARN
        self.env = dict(template.function_environment(self.template, self.names), VF_USERS_STREAM_ARN=STREAM_ARN)

    def test_the_functions_environment_names_the_audiences_resources(self):
        self.assertEqual(
            {k: self.env[k] for k in ("AUDIENCES_TABLE", "AUDIENCE_MEMBERS_TABLE", "AUDIENCE_BUILD_QUEUE_URL")},
            {"AUDIENCES_TABLE": "vibefollow-local-audiences",
             "AUDIENCE_MEMBERS_TABLE": "vibefollow-local-audience-members",
             "AUDIENCE_BUILD_QUEUE_URL": BUILDS_URL})

    def test_the_fleet_runs_the_audiences_release_binary_as_the_template_says(self):
        functions = {f.name: f for f in supervisor.fleet_functions(self.template, self.env)}
        self.assertEqual(set(functions), {"api", "consumer", "changes", "audiences", "webhooks"})
        audiences = functions["audiences"]
        self.assertEqual(audiences.binary, str(ROOT / "target" / "release" / "audiences"))
        self.assertEqual((audiences.min_instances, audiences.max_instances), (1, 80))
        self.assertEqual((audiences.timeout_s, audiences.memory_mb), (60, 128))
        self.assertIs(audiences.env, functions["changes"].env)
        command = supervisor.build_command()
        self.assertEqual([command[i + 1] for i, arg in enumerate(command) if arg == "--bin"],
                         ["api", "consumer", "changes", "audiences", "webhooks"])

    def started_event_sources(self, environ=None):
        """The stack, and the command of each process its event sources start (by name)
        with `environ` set."""
        stack = supervisor.Stack(reload=False)
        self.addCleanup(stack.spawner.close)
        stack.template, stack.names, stack.env = self.template, self.names, self.env
        spawned = {}
        stack.spawn = lambda name, args, log_mode="w": spawned.setdefault(name, args[2:])
        with mock.patch.dict(os.environ, environ or {}):
            if not environ:
                os.environ.pop("VF_BRIDGE_VISIBILITY_SECONDS", None)
            stack.start_event_sources()
        return stack, spawned

    def test_every_event_source_is_a_process_of_the_stack(self):
        stack, spawned = self.started_event_sources()
        failures = "http://127.0.0.1:4566/123456789012/vibefollow-local-changes-failures"
        self.assertEqual(spawned, {
            # A MaximumConcurrency the template gives as a number is the bridge's most
            # pollers; one it takes from a parameter leaves the local default (2).
            "bridge": ["bridge", self.env["UPSERT_QUEUE_URL"], "consumer", "10", "2"],
            "audiences-builds-bridge": ["bridge", BUILDS_URL, "audiences", "1", "2"],
            "audiences-timemoves-bridge": ["bridge", TIME_URL, "audiences", "1", "64"],
            "audiences-retries-bridge": ["bridge", RETRIES_URL, "audiences", "10", "5"],
            "audiences-streamfailures-bridge": ["bridge", STREAM_FAILURES_URL, "audiences", "1", "2"],
            "webhooks-intake-bridge": ["bridge", WEBHOOK_INTAKE_URL, "webhooks", "10", "2"],
            "webhooks-wakes-bridge": ["bridge", self.env["WEBHOOK_WAKE_QUEUE_URL"], "webhooks", "10", "2"],
            "stream-bridge": ["stream-bridge", STREAM_ARN, f"changes={failures}", f"audiences={STREAM_FAILURES_URL}"],
            "ticker": ["ticker", f"audiences=vibefollow-local-tick,{TICKS_DLQ_URL}"],
        })
        self.assertEqual(stack.bridge, spawned["bridge"], "the drill kills and restarts the consumer's bridge")

    def test_only_the_consumers_bridge_shortens_the_visibility(self):
        # The drill kills the consumer's bridge: its batches must come back in seconds.
        # The others keep their queue's visibility, longer than their function's batch
        # (a webhooks batch may wait 15 s on an endpoint), as on AWS: a shorter one hands
        # a batch's messages to a second worker while the first still runs.
        _, spawned = self.started_event_sources({"VF_BRIDGE_VISIBILITY_SECONDS": "4"})
        self.assertEqual(spawned["bridge"], ["bridge", self.env["UPSERT_QUEUE_URL"], "consumer", "10", "2", "4"])
        self.assertEqual(spawned["webhooks-wakes-bridge"],
                         ["bridge", self.env["WEBHOOK_WAKE_QUEUE_URL"], "webhooks", "10", "2"])
        with mock.patch.object(cli, "bridge") as started:
            self.assertEqual(cli.main(spawned["bridge"]), 0)
        started.assert_called_once_with(self.env["UPSERT_QUEUE_URL"], "consumer", 10, 2, 4)

    def test_the_command_line_starts_each_event_source(self):
        for argv, name, args in (
                (["bridge", BUILDS_URL, "audiences", "1"], "bridge", (BUILDS_URL, "audiences", 1)),
                (["bridge", TIME_URL, "audiences", "1", "64"], "bridge", (TIME_URL, "audiences", 1, 64)),
                (["bridge", BUILDS_URL], "bridge", (BUILDS_URL,)),
                (["stream-bridge", STREAM_ARN, "changes=q1", "audiences=q2"], "stream_bridge",
                 (STREAM_ARN, [("changes", "q1"), ("audiences", "q2")])),
                (["ticker", "audiences=vibefollow-local-tick"], "ticker", ([("audiences", "vibefollow-local-tick")],)),
                (["ticker", f"audiences=vibefollow-local-tick,{TICKS_DLQ_URL}"], "ticker",
                 ([("audiences", f"vibefollow-local-tick,{TICKS_DLQ_URL}")],))):
            with self.subTest(argv=argv), mock.patch.object(cli, name) as started:
                self.assertEqual(cli.main(argv), 0)
                started.assert_called_once_with(*args)
        with mock.patch("sys.stderr"):
            for argv in (["stream-bridge", STREAM_ARN, "q1"], ["ticker"], ["ticker", "audiences"]):
                self.assertEqual(cli.main(argv), 2)

    def test_the_ticks_dead_letter_queue_exists_locally_named_as_the_other_queues(self):
        names, _, queues = template.local_resources(self.template)
        self.assertIn("AudienceTickDeadLetterQueue", queues)
        self.assertEqual(names["AudienceTickDeadLetterQueue"], TICKS_DLQ_URL)
        # Named as the others: the stack's name, then the template's, `-dlq` last.
        dead_letter_queues = sorted(names[f"{q}.QueueName"] for q in queues if q.endswith("DeadLetterQueue"))
        self.assertEqual(dead_letter_queues, ["vibefollow-local-audience-builds-dlq",
                                              "vibefollow-local-audience-stream-failures-dlq",
                                              "vibefollow-local-audience-ticks-dlq", "vibefollow-local-upserts-dlq",
                                              "vibefollow-local-webhook-intake-dlq",
                                              "vibefollow-local-webhook-wakes-dlq"])
        [tick] = template.event_sources(self.template, names, "Schedule", "audiences")
        self.assertEqual(template.queue_url(tick.properties["DeadLetterConfig"]["Arn"]), TICKS_DLQ_URL)

    def created_resources(self):
        """What `create_resources` asks of the emulator (its calls, in order), and the
        names it returns."""
        created = []

        class Client:
            def __getattr__(self, name):
                return lambda **args: (created.append((name, args)), {
                    "TableNames": [], "Table": {"LatestStreamArn": STREAM_ARN}, "QueueUrl": "u"})[1]

        class Session:
            def client(self, service, endpoint_url=None):
                return Client()

        with mock.patch.object(resources, "emulator_session", Session):
            names = resources.create_resources(self.template)[0]
        return created, names

    def test_the_stack_creates_the_ticks_dead_letter_queue_and_names_it_to_the_tools(self):
        created, names = self.created_resources()
        queues = [args["QueueName"] for name, args in created if name == "create_queue"]
        self.assertIn("vibefollow-local-audience-ticks-dlq", queues)
        self.assertEqual(supervisor.failure_queue_variables(names)["VF_AUDIENCE_TICK_DLQ_URL"], TICKS_DLQ_URL)

    def test_the_stack_creates_the_templates_rules_on_its_bus_with_their_queue_targets(self):
        created, _ = self.created_resources()
        [rule] = [args for name, args in created if name == "put_rule"]
        [targets] = [args for name, args in created if name == "put_targets"]
        self.assertEqual((rule["Name"], rule["EventBusName"]), ("WebhookEventsRule", "vibefollow-local-users"))
        pattern = EventPattern.load(rule["EventPattern"])
        self.assertTrue(pattern.matches_event({"source": "vibefollow.audiences", "detail-type": "Audience Entered",
                                               "detail": {"webhooks": True}}))
        self.assertFalse(pattern.matches_event({"source": "vibefollow.audiences", "detail-type": "Audience Entered",
                                                "detail": {}}), "a workspace without webhooks")
        self.assertFalse(pattern.matches_event({"source": "vibefollow.users", "detail-type": "Webhook Disabled",
                                                "detail": {"webhooks": True}}))
        self.assertEqual(targets["Targets"], [{"Id": "webhook-intake", "Arn": template.queue_arn(WEBHOOK_INTAKE_URL)}])

    def test_the_local_sink_takes_change_and_audience_events(self):
        pattern = EventPattern.load(json.dumps(resources.EVERY_EVENT))
        for source in ("vibefollow.users", "vibefollow.audiences"):
            self.assertTrue(pattern.matches_event({"source": source, "detail-type": "x", "detail": {}}), source)

    def test_the_template_still_has_the_sources_the_stack_bridges(self):
        """Sources the stack would not run fail here rather than go silently unbridged."""
        kinds = {kind: {(s.function, s.event) for s in template.event_sources(self.template, self.names, kind)}
                 for kind in ("SQS", "DynamoDB", "Schedule")}
        self.assertEqual(kinds, {"SQS": {("consumer", "Upserts"), ("audiences", "Builds"), ("audiences", "TimeMoves"),
                                         ("audiences", "Retries"), ("audiences", "StreamFailures"),
                                         ("webhooks", "Intake"), ("webhooks", "Wakes")},
                                 "DynamoDB": {("changes", "UserWrites"), ("audiences", "UserWrites")},
                                 "Schedule": {("audiences", "Tick")}})
        handled = {f["Type"] for r in self.template["Resources"].values() if r["Type"] == "AWS::Serverless::Function"
                   for f in r["Properties"].get("Events", {}).values()}
        self.assertLessEqual(handled, {"SQS", "DynamoDB", "Schedule", "HttpApi"})
        self.assertTrue(re.fullmatch(r"rate\(1 minutes?\)", template.event_sources(
            self.template, self.names, "Schedule", "audiences")[0].properties["Schedule"]))


if __name__ == "__main__":
    unittest.main()
