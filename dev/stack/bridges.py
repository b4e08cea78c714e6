"""The two event source mappings of the local stack, each run as a process of its own
(`dev/stack.py bridge …`, `dev/stack.py stream-bridge …`): the SQS → consumer bridge with
Lambda's partial-batch semantics, and the users stream → changes bridge with its retry,
bisect and on-failure semantics."""
import json
import os
import threading
import time
import urllib.request

from .output import emit, log
from .resources import delete_messages, emulator_session
from .settings import (ACCOUNT, API_URL, BRIDGE_POLLERS, EMULATOR_URL, REGION, RETRY_DELAY_SECONDS,
                       STREAM_RETRIES)


# --- the SQS → consumer bridge ---------------------------------------------------------

def bridge(queue_url):
    """Polls the queue and invokes the consumer as Lambda's event source mapping does:
    several pollers at once (so batches run on several consumer instances), batches of
    up to 10, and only the messages not in batchItemFailures are deleted. Received
    messages stay invisible for the queue's visibility timeout, or for
    VF_BRIDGE_VISIBILITY_SECONDS (the drill shortens it so that batches of a killed
    bridge come back in seconds)."""
    pollers = [threading.Thread(target=poll, args=(queue_url,), daemon=True) for _ in range(BRIDGE_POLLERS)]
    for poller in pollers:
        poller.start()
    for poller in pollers:
        poller.join()


def poll(queue_url):
    session = emulator_session()
    sqs = session.client("sqs", endpoint_url=EMULATOR_URL)
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue_url.rsplit('/', 1)[1]}"
    invoke_url = f"{API_URL}/2015-03-31/functions/consumer/invocations"
    visibility = os.environ.get("VF_BRIDGE_VISIBILITY_SECONDS")
    extra = {"VisibilityTimeout": int(visibility)} if visibility else {}
    while True:
        try:
            received = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                AttributeNames=["All"], MessageAttributeNames=["All"], **extra,
            ).get("Messages", [])
        except Exception as e:  # the emulator is stopping or restarting
            log(f"bridge: receive failed: {e}")
            time.sleep(0.5)
            continue
        if not received:
            continue
        redelivered = sum(int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")) > 1 for m in received)
        emit(json.dumps({"batch": len(received), "redelivered": redelivered}))
        event = {"Records": [sqs_record(m, arn) for m in received]}
        failed = invoke_consumer(invoke_url, event, {m["MessageId"] for m in received})
        done = [m for m in received if m["MessageId"] not in failed]
        retry = [m for m in received if m["MessageId"] in failed]
        for chunk in (done[i:i + 10] for i in range(0, len(done), 10)):
            delete_messages(sqs, queue_url, chunk)
        for m in retry:
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=RETRY_DELAY_SECONDS)


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


def batch_item_failures(url, event, who, timeout=60):
    """Invokes a function with a batch event, as an event source mapping does: the
    `itemIdentifier`s it reported failed, or None when the invocation itself failed."""
    request = urllib.request.Request(url, data=json.dumps(event).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            result = json.load(response)
    except (OSError, ValueError) as e:
        log(f"{who}: invocation failed, batch will be retried: {e}")
        return None
    if not isinstance(result, dict) or "errorType" in result:
        log(f"{who}: the function returned an error, batch will be retried: {result}")
        return None
    return [f["itemIdentifier"] for f in result.get("batchItemFailures") or []]


def invoke_consumer(url, event, all_ids, timeout=60):
    """The ids the consumer reported failed; all of them if the invocation failed."""
    failures = batch_item_failures(url, event, "bridge", timeout)
    return all_ids if failures is None else set(failures)


# --- the users stream → changes bridge -------------------------------------------------

def stream_bridge(stream_arn, failure_queue_url):
    """Polls the users table's stream and invokes the changes function as Lambda's
    event source mapping does: each shard in order, batches of up to 100, four polls a
    second when idle; a batch is retried from the first record the function reports
    failed; a record that keeps failing is bisected down to itself and, after
    VF_STREAM_RETRIES retries, handed to the failure queue (batch metadata, as on AWS)
    so the shard moves on."""
    session = emulator_session()
    streams = session.client("dynamodbstreams", endpoint_url=EMULATOR_URL)
    sqs = session.client("sqs", endpoint_url=EMULATOR_URL)
    invoke_url = f"{API_URL}/2015-03-31/functions/changes/invocations"
    iterators = {}
    while True:
        try:
            for shard in streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]:
                shard_id = shard["ShardId"]
                if shard_id not in iterators:
                    iterators[shard_id] = streams.get_shard_iterator(
                        StreamArn=stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            idle = True
            for shard_id, iterator in list(iterators.items()):
                if not iterator:
                    continue
                page = streams.get_records(ShardIterator=iterator, Limit=100)
                iterators[shard_id] = page.get("NextShardIterator")
                records = [stream_record(r, stream_arn) for r in page["Records"]]
                if records:
                    idle = False
                    emit(json.dumps({"stream_batch": len(records)}))
                    deliver(lambda batch: invoke_changes(invoke_url, batch), records,
                            lambda batch: on_failure(sqs, failure_queue_url, stream_arn, shard_id, batch))
        except Exception as e:  # the emulator is stopping or restarting
            log(f"stream bridge: {e}")
            time.sleep(0.5)
            continue
        if idle:
            time.sleep(0.25)


def stream_record(record, stream_arn):
    data = dict(record["dynamodb"])
    created = data.get("ApproximateCreationDateTime")
    if hasattr(created, "timestamp"):
        data["ApproximateCreationDateTime"] = created.timestamp()
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


def invoke_changes(url, records):
    """None when the function handled every record; else the index of the first record
    to retry (0 when the invocation failed)."""
    failures = batch_item_failures(url, {"Records": records}, "stream bridge")
    if failures is None:
        return 0
    if not failures:
        return None
    sequence = [r["dynamodb"]["SequenceNumber"] for r in records]
    return min((sequence.index(f) for f in failures if f in sequence), default=0)


def on_failure(sqs, queue_url, stream_arn, shard_id, records):
    """What Lambda's on-failure destination receives for a stream batch: where the
    records are, not the records."""
    first, last = records[0]["dynamodb"], records[-1]["dynamodb"]
    log(f"stream bridge: records {first['SequenceNumber']}..{last['SequenceNumber']} sent to the failure queue")
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({
        "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": STREAM_RETRIES + 1},
        "DDBStreamBatchInfo": {"shardId": shard_id, "startSequenceNumber": first["SequenceNumber"],
                               "endSequenceNumber": last["SequenceNumber"], "streamArn": stream_arn,
                               "batchSize": len(records)}}))
