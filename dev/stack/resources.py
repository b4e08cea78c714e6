"""What the stack creates in moto from template.yaml: tables, queues, event buses and
the local event sink; and the session and calls the dev tools share to talk to moto."""
import json

import boto3

from .settings import ACCOUNT, EMULATOR_URL, EVENT_SINK_QUEUE, REGION
from .template import key_schemas, local_resources, resolve, table_indexes


def emulator_session():
    """A boto3 session for moto (any credentials do; these are the stack's)."""
    return boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)


def delete_messages(sqs, queue_url, messages):
    """Deletes received messages (at most 10, one DeleteMessageBatch)."""
    sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])


def queue_depth(sqs, queue_url):
    """Messages in the queue, visible or in flight (SQS's approximate counts)."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return sum(int(v) for v in attributes.values())


def create_resources(template, event_sink=False):
    names, tables, queues = local_resources(template)
    session = emulator_session()
    dynamodb = session.client("dynamodb", endpoint_url=EMULATOR_URL)
    sqs = session.client("sqs", endpoint_url=EMULATOR_URL)
    existing = set(dynamodb.list_tables()["TableNames"])
    for logical, props in tables.items():
        name = names[logical]
        if name in existing:
            continue
        args = {
            "TableName": name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props["BillingMode"],
        }
        if "GlobalSecondaryIndexes" in props:
            args["GlobalSecondaryIndexes"] = resolve(props["GlobalSecondaryIndexes"], names)
        if "StreamSpecification" in props:
            args["StreamSpecification"] = dict(props["StreamSpecification"], StreamEnabled=True)
        dynamodb.create_table(**args)
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
    # Dead-letter queues first: the queues that redrive to them need their ARNs.
    for logical, props in sorted(queues.items(), key=lambda kv: "RedrivePolicy" in kv[1]):
        attributes = {}
        for key in ("VisibilityTimeout", "MessageRetentionPeriod"):
            if key in props:
                attributes[key] = str(props[key])
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps(resolve(props["RedrivePolicy"], names))
        sqs.create_queue(QueueName=names[f"{logical}.QueueName"], Attributes=attributes)
    create_event_buses(session, names, template)
    if event_sink:
        create_event_sink(session, names)
    names["UsersTable.StreamArn"] = dynamodb.describe_table(
        TableName=names["UsersTable"])["Table"]["LatestStreamArn"]
    return names, key_schemas(tables, names), table_indexes(tables, names)


def create_event_buses(session, names, template):
    """The template's buses, then its rules on them (a rule's targets: the stack's queues)."""
    events = session.client("events", endpoint_url=EMULATOR_URL)
    resources = template["Resources"].items()
    for logical, resource in resources:
        if resource["Type"] == "AWS::Events::EventBus":
            try:
                events.create_event_bus(Name=names[logical])
            except events.exceptions.ResourceAlreadyExistsException:
                pass
    for logical, resource in resources:
        if resource["Type"] == "AWS::Events::Rule":
            props = resolve(resource["Properties"], names)
            events.put_rule(Name=logical, EventBusName=props["EventBusName"],
                            EventPattern=json.dumps(props["EventPattern"]))
            # Retry policy and dead-letter queue are EventBridge's own delivery: moto
            # sends at once or not at all.
            events.put_targets(Rule=logical, EventBusName=props["EventBusName"],
                               Targets=[{"Id": t["Id"], "Arn": t["Arn"]} for t in props["Targets"]])


# Every event, whatever its source: change events (vibefollow.users), audience events
# (vibefollow.audiences) and whatever the functions publish next.
EVERY_EVENT = {"source": [{"exists": True}]}


def create_event_sink(session, names):
    """On the change bus, a rule that delivers every event to a local sink queue
    (`vfctl --local events tail` reads it). On AWS, downstream views add their own."""
    events = session.client("events", endpoint_url=EMULATOR_URL)
    sqs = session.client("sqs", endpoint_url=EMULATOR_URL)
    sink = sqs.create_queue(QueueName=EVENT_SINK_QUEUE)["QueueUrl"]
    names["EventSink"] = sink
    subscribe(events, names["ChangeEventBus"], EVENT_SINK_QUEUE, EVERY_EVENT)


def subscribe(events, bus, queue_name, pattern):
    """A rule on `bus` that delivers the events matching `pattern` to an SQS queue."""
    events.put_rule(Name=queue_name, EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=queue_name, EventBusName=bus, Targets=[
        {"Id": "sink", "Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue_name}"}])
