"""The local stack's event sources, each run as a process of its own, apart from the
functions as on AWS; all invoke the functions through the Invoke API on API_URL:

    bridge         an SQS queue → its function, as Lambda's event source mapping does
                   (`dev/stack.py bridge …`): upserts → consumer, audience builds →
                   audiences; partial-batch semantics
    stream-bridge  the users stream → each function that reads it (changes, audiences),
                   a reader each with its own position, retries, bisect and on-failure
                   handling (`dev/stack.py stream-bridge …`)
    ticker         a schedule → its function (audiences): EventBridge's scheduled event
                   every VF_TICK_SECONDS, a tick it could not deliver to the schedule's
                   dead-letter queue (`dev/stack.py ticker …`)

Each writes one JSON line per batch or tick to its log, and `[stack] …` lines for what
went wrong."""
import base64
import contextlib
import datetime
import functools
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
import uuid

from .output import emit, log
from .resources import delete_messages, emulator_session
from .settings import (ACCOUNT, API_URL, BRIDGE_POLLERS, EMULATOR_URL, REGION, RETRY_DELAY_SECONDS,
                       STREAM_RETRIES, TICK_SECONDS)
from .template import queue_arn


# --- invoking a function ---------------------------------------------------------------

# What `invoke` raises when the invocation itself failed.
INVOKE_FAILURES = (OSError, ValueError, http.client.HTTPException)


def invoke(function, event, timeout=60):
    """One synchronous invocation through the Invoke API: (the function's error type or
    None, its payload). Raises one of INVOKE_FAILURES when the invocation itself failed
    (unreachable, throttled, unknown function, cut short, an answer that is not JSON)."""
    request = urllib.request.Request(f"{API_URL}/2015-03-31/functions/{function}/invocations",
                                     data=json.dumps(event).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        error = response.headers.get("X-Amz-Function-Error")
        payload = json.load(response)
    if error is None and isinstance(payload, dict) and "errorType" in payload:
        error = "Unhandled"  # cargo lambda watch answers errors without the header
    return error, payload


def batch_item_failures(function, event, ids, who, timeout=60):
    """Invokes a function with a batch event as an event source mapping does (with
    ReportBatchItemFailures): the ids it reported failed, [] when it handled them all,
    or None when the whole batch failed. As on AWS, an answer of null, {} or an empty
    or null `batchItemFailures` is a success; an error, or a failure whose
    `itemIdentifier` is not one of `ids`, fails the whole batch."""
    try:
        error, result = invoke(function, event, timeout)
    except INVOKE_FAILURES as e:
        log(f"{who}: invocation failed, batch will be retried: {e}")
        return None
    if error:
        log(f"{who}: the function returned an error, batch will be retried: {result}")
        return None
    if result is None:
        return []
    try:
        failed = [f["itemIdentifier"] for f in result.get("batchItemFailures") or []]
        known = set(failed) <= set(ids)
    except (AttributeError, TypeError, KeyError):  # not an object, or failures of another shape
        known = False
    if not known:
        log(f"{who}: the function reported failures that are not in the batch, batch will be retried: {result}")
        return None
    return failed


# --- an SQS queue → its function --------------------------------------------------------

def bridge(queue_url, function="consumer", batch_size=10, most=BRIDGE_POLLERS, visibility=None):
    """Polls the queue and invokes `function` as Lambda's event source mapping does:
    several pollers at once (so batches run on several instances), batches of up to
    `batch_size`, and only the messages not in batchItemFailures are deleted. Like the
    mapping, it scales with its queue: BRIDGE_POLLERS always poll, and while every
    poller is busy with a batch another starts, up to `most` (the mapping's
    ScalingConfig.MaximumConcurrency: 64 time tasks sleep to their users' moments side
    by side, as on AWS); an added poller stops at its first empty poll. Received
    messages stay invisible for the queue's visibility timeout, which outlasts its
    function's longest batch as on AWS, or for `visibility` seconds (the consumer's
    bridge, which the drill kills: its batches then come back in seconds)."""
    Pollers(queue_url, function, batch_size, max(most, BRIDGE_POLLERS), visibility).run()


class Pollers:
    """A queue's pollers: BRIDGE_POLLERS for good, more while all are busy."""

    def __init__(self, queue_url, function, batch_size, most, visibility=None):
        self.queue_url, self.function, self.batch_size, self.most = queue_url, function, batch_size, most
        self.sqs = emulator_session().client("sqs", endpoint_url=EMULATOR_URL)  # boto3 clients are thread-safe
        self.extra = {"VisibilityTimeout": visibility} if visibility else {}
        self.lock = threading.Lock()
        self.running = BRIDGE_POLLERS
        self.busy = 0

    def run(self):
        run_threads([(f"poll-{self.function}", self.poll, (False,))] * BRIDGE_POLLERS)

    def poll(self, added):
        while True:
            try:
                received = poll_once(self.sqs, self.queue_url, self.function, self.batch_size, self.extra,
                                     on_batch=self.working)
            except Exception as e:  # the emulator is stopping or restarting
                log(f"{self.function} bridge: {e}")
                time.sleep(0.5)
                continue
            if added and not received:
                with self.lock:
                    self.running -= 1
                return

    @contextlib.contextmanager
    def working(self):
        with self.lock:
            self.busy += 1
            grow = self.busy >= self.running and self.running < self.most
            if grow:
                self.running += 1
        if grow:
            threading.Thread(target=self.poll, args=(True,), name=f"poll-{self.function}+", daemon=True).start()
        try:
            yield
        finally:
            with self.lock:
                self.busy -= 1


def poll_once(sqs, queue_url, function, batch_size, extra=None, on_batch=contextlib.nullcontext):
    """One long poll and, if it received messages, one invocation with them: the
    messages the function finished are deleted, the others are visible again after
    VF_BRIDGE_RETRY_SECONDS (after the queue's maxReceiveCount receives, moto moves them
    to its dead-letter queue). Returns how many messages it received."""
    received = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=min(batch_size, 10), WaitTimeSeconds=1,
        AttributeNames=["All"], MessageAttributeNames=["All"], **(extra or {}),
    ).get("Messages", [])
    if not received:
        return 0
    redelivered = sum(int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")) > 1 for m in received)
    emit(json.dumps({"batch": len(received), "redelivered": redelivered, "function": function}))
    arn = queue_arn(queue_url)
    ids = [m["MessageId"] for m in received]
    with on_batch():
        failures = batch_item_failures(function, {"Records": [sqs_record(m, arn) for m in received]}, ids,
                                       f"{function} bridge")
    failed = set(ids if failures is None else failures)
    done = [m for m in received if m["MessageId"] not in failed]
    for chunk in (done[i:i + 10] for i in range(0, len(done), 10)):
        delete_messages(sqs, queue_url, chunk)
    for m in received:
        if m["MessageId"] in failed:
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=RETRY_DELAY_SECONDS)
    return len(received)


def sqs_record(message, arn):
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": REGION,
    }


# --- the users stream → each of its readers ---------------------------------------------

def stream_bridge(stream_arn, readers, stop=None):
    """Reads the users table's stream for each (function, on-failure queue URL) of
    `readers`, as a DynamoDB stream's event source mappings do: each function has a
    thread of its own and its own position in every shard, so one that fails or is slow
    neither delays nor repeats another's deliveries (AWS allows two readers a shard).
    Runs until `stop` is set."""
    stop = stop or threading.Event()
    run_threads([(f"stream-{function}", read_stream, (stream_arn, function, failure_queue_url, stop))
                 for function, failure_queue_url in readers])


def read_stream(stream_arn, function, failure_queue_url, stop):
    session = emulator_session()
    streams = session.client("dynamodbstreams", endpoint_url=EMULATOR_URL)
    sqs = session.client("sqs", endpoint_url=EMULATOR_URL)
    StreamReader(stream_arn, function, streams,
                 lambda records: invoke_stream_batch(function, records),
                 lambda shard_id, records: send_failure(sqs, failure_queue_url, function, stream_arn,
                                                        shard_id, records)).run(stop)


class StreamReader:
    """One event source mapping on a stream: every shard in order from TRIM_HORIZON,
    batches of up to 100, four polls a second when idle; a batch is retried from the
    first record the function reports failed; a record that keeps failing is bisected
    down to itself and, after VF_STREAM_RETRIES retries, handed to `on_failure` (shard
    id, records) so the shard moves on. `invoke` (records → None, or the index of the
    first record to retry) is the function; `streams` a dynamodbstreams client."""

    def __init__(self, stream_arn, function, streams, invoke, on_failure, retries=None):
        self.stream_arn, self.function, self.streams = stream_arn, function, streams
        self.invoke, self.on_failure, self.retries = invoke, on_failure, retries
        self.iterators = {}

    def run(self, stop):
        while not stop.is_set():
            try:
                busy = self.poll()
            except Exception as e:  # the emulator is stopping or restarting
                log(f"stream bridge ({self.function}): {e}")
                stop.wait(0.5)
                continue
            if not busy:
                stop.wait(0.25)

    def poll(self):
        """One pass over the shards, each shard's next page delivered to the end. True
        if there were records."""
        for shard in self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"]:
            if shard["ShardId"] not in self.iterators:
                self.iterators[shard["ShardId"]] = self.streams.get_shard_iterator(
                    StreamArn=self.stream_arn, ShardId=shard["ShardId"],
                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        busy = False
        for shard_id, iterator in list(self.iterators.items()):
            if not iterator:
                continue  # a closed shard, read to its end
            page = self.streams.get_records(ShardIterator=iterator, Limit=100)
            records = [stream_record(r, self.stream_arn) for r in page["Records"]]
            if records:
                busy = True
                emit(json.dumps({"stream_batch": len(records), "function": self.function}))
                deliver(self.invoke, records, lambda batch, shard=shard_id: self.on_failure(shard, batch),
                        self.retries)
            # Past the page once it is delivered: if delivering it raised, it is read again.
            self.iterators[shard_id] = page.get("NextShardIterator")
        return busy


def on_the_wire(value):
    """An attribute value as Lambda's event JSON carries it: boto3 decodes B and BS to
    bytes, the event holds them base64-encoded (the users item's `profile` is a B)."""
    if isinstance(value, dict):
        return {kind: (base64.b64encode(data).decode() if kind == "B"
                       else [base64.b64encode(b).decode() for b in data] if kind == "BS"
                       else [on_the_wire(v) for v in data] if kind == "L"
                       else {k: on_the_wire(v) for k, v in data.items()} if kind == "M"
                       else data)
                for kind, data in value.items()}
    return value


def stream_record(record, stream_arn):
    data = dict(record["dynamodb"])
    created = data.get("ApproximateCreationDateTime")
    if hasattr(created, "timestamp"):
        data["ApproximateCreationDateTime"] = created.timestamp()
    for image in ("Keys", "NewImage", "OldImage"):
        if image in data:
            data[image] = {name: on_the_wire(value) for name, value in data[image].items()}
    return {"eventID": record["eventID"], "eventName": record["eventName"], "eventVersion": "1.1",
            "eventSource": "aws:dynamodb", "awsRegion": REGION, "dynamodb": data,
            "eventSourceARN": stream_arn}


def deliver(invoke, records, failed, retries_allowed=None):
    """Invokes until every record is done or handed to `failed`. `invoke` returns None
    when the whole batch was handled, else the index of the first record to retry."""
    allowed = STREAM_RETRIES if retries_allowed is None else retries_allowed
    retries = 0
    while records:
        failed_at = invoke(records)
        if failed_at is None:
            return
        if failed_at > 0:
            records, retries = records[failed_at:], 0
            continue
        retries += 1
        if retries <= allowed:
            time.sleep(min(0.05 * 2 ** retries, 2))
            continue
        if len(records) == 1:
            failed(records)
            return
        half = len(records) // 2
        deliver(invoke, records[:half], failed, allowed)
        deliver(invoke, records[half:], failed, allowed)
        return


def invoke_stream_batch(function, records):
    """None when the function handled every record; else the index of the first record
    to retry (0 when the invocation failed)."""
    sequence = [r["dynamodb"]["SequenceNumber"] for r in records]
    failures = batch_item_failures(function, {"Records": records}, sequence, f"stream bridge ({function})")
    if failures is None:
        return 0
    if not failures:
        return None
    return min(sequence.index(f) for f in failures)


def send_failure(sqs, queue_url, function, stream_arn, shard_id, records):
    log(f"stream bridge ({function}): records {records[0]['dynamodb']['SequenceNumber']}.."
        f"{records[-1]['dynamodb']['SequenceNumber']} sent to the failure queue")
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(
        failure_record(function, stream_arn, shard_id, records)))


def failure_record(function, stream_arn, shard_id, records):
    """What Lambda's on-failure destination receives for a stream batch: which function
    failed and where the records are, not the records."""
    first, last = records[0]["dynamodb"], records[-1]["dynamodb"]
    return {
        "requestContext": {"requestId": str(uuid.uuid4()), "functionArn": function_arn(function),
                           "condition": "RetryAttemptsExhausted", "approximateInvokeCount": STREAM_RETRIES + 1},
        "version": "1.0",
        "timestamp": utc_now().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "DDBStreamBatchInfo": {"shardId": shard_id, "startSequenceNumber": first["SequenceNumber"],
                               "endSequenceNumber": last["SequenceNumber"], "streamArn": stream_arn,
                               "batchSize": len(records)},
    }


def function_arn(function):
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}"


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def run_threads(calls):
    """Runs each (name, target, args) of `calls` in a thread of its own and waits for
    them all (the process's pollers, readers or tickers, which run until it ends)."""
    threads = [threading.Thread(target=target, args=args, name=name, daemon=True) for name, target, args in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- a schedule → its function ---------------------------------------------------------

# Long enough for an instance's cold start, a wait for a busy one and the function's own
# timeout; under cargo lambda watch, for a build on the first tick too.
TICK_INVOKE_TIMEOUT = 600


def ticker(schedules, interval=None):
    """Invokes each function of `schedules`, (function, target) pairs, with
    EventBridge's scheduled event every `interval` seconds (VF_TICK_SECONDS), a thread
    each. A target is the rule's name, or `RULE_NAME,DEAD_LETTER_QUEUE_URL` when the
    schedule has a dead-letter queue (its DeadLetterConfig)."""
    sqs = None
    calls = []
    for function, target in schedules:
        rule, _, dead_letter_url = target.partition(",")
        dead_letter = None
        if dead_letter_url:
            sqs = sqs or emulator_session().client("sqs", endpoint_url=EMULATOR_URL)
            dead_letter = functools.partial(dead_letter_tick, sqs, dead_letter_url)
        calls.append((f"tick-{function}", tick, (function, rule, interval or TICK_SECONDS, threading.Event(), invoke,
                                                 dead_letter)))
    run_threads(calls)


def tick(function, rule, interval, stop, invoke=invoke, dead_letter=None):
    """Every `interval` seconds on a fixed grid until `stop` is set, one invocation at a
    time and one JSON line each. A tick that comes due while the previous one runs is
    sent as soon as it ends; any more are skipped and counted (`missed`): a 5 s tick of
    a function that may run 60 s would pile up, which rate(1 minute) does not on AWS.
    A tick that could not be delivered (`invocation failed`) goes to `dead_letter`
    (event, entry), when the schedule has a dead-letter queue."""
    rule_arn = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule}"
    due, missed = time.monotonic() + interval, 0
    while not stop.wait(max(due - time.monotonic(), 0)):
        event = scheduled_event(rule_arn, utc_now())
        entry = send_tick(function, event, missed, invoke)
        if dead_letter and entry["status"] == "invocation failed":
            entry["dead_lettered"] = deliver_dead_letter(dead_letter, event, entry)
        emit(json.dumps(entry))
        due += interval
        missed = max(int((time.monotonic() - due) // interval), 0)
        due += missed * interval


def scheduled_event(rule_arn, at):
    """The event EventBridge sends a function for a schedule rule."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": ACCOUNT, "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "region": REGION,
            "resources": [rule_arn], "detail": {}}


def send_tick(function, event, missed, invoke=invoke):
    """Invokes `function` with one scheduled event; the tick's log entry. As EventBridge
    does not wait for the answer, nothing is retried: the next tick comes. An invocation
    that failed carries EventBridge's `error_code` for it."""
    started = time.monotonic()
    entry = {"tick": event["time"], "function": function, "id": event["id"]}
    try:
        error, payload = invoke(function, event, TICK_INVOKE_TIMEOUT)
    except INVOKE_FAILURES as e:
        entry.update(status="invocation failed", error=str(e) or type(e).__name__, error_code=delivery_error(e))
    else:
        entry.update(status="function error" if error else "ok")
        if error:
            entry["error"] = payload.get("errorType", error) if isinstance(payload, dict) else error
    entry.update(ms=round((time.monotonic() - started) * 1000), missed=missed)
    return entry


def delivery_error(failure):
    """The ERROR_CODE EventBridge gives a target call that failed so."""
    if isinstance(failure, urllib.error.HTTPError):
        return {404: "NO_RESOURCE", 403: "NO_PERMISSIONS", 429: "THROTTLING"}.get(failure.code, "SDK_CLIENT_ERROR")
    if isinstance(failure, TimeoutError) or isinstance(getattr(failure, "reason", None), TimeoutError):
        return "TIMEOUT"
    if isinstance(failure, (ConnectionError, urllib.error.URLError, http.client.HTTPException)):
        return "CONNECTION_FAILURE"
    return "SDK_CLIENT_ERROR"


def deliver_dead_letter(dead_letter, event, entry):
    """Hands a tick to its dead-letter queue: whether it got there (a failure is a line,
    not the ticker's end)."""
    try:
        dead_letter(event, entry)
        return True
    except Exception as e:  # noqa: BLE001 (moto down, …): the tick's line says so
        log(f"tick {event['id']} not dead-lettered: {e}")
        return False


def dead_letter_tick(sqs, queue_url, event, entry):
    """What EventBridge puts in a rule target's dead-letter queue: the event as it would
    have been sent, with the attributes it documents. Locally the tick is not retried
    first (the next one is seconds away), so the retry policy counts as exhausted at 0."""
    attributes = {
        "RULE_ARN": event["resources"][0],
        "TARGET_ARN": function_arn(entry["function"]),
        "ERROR_CODE": entry["error_code"],
        "ERROR_MESSAGE": entry["error"][:1000],
        "EXHAUSTED_RETRY_CONDITION": "MaximumRetryAttempts",
        "RETRY_ATTEMPTS": "0",
    }
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event), MessageAttributes={
        name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()})
