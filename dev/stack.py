#!/usr/bin/env python3
"""The local stack: moto (DynamoDB + SQS + EventBridge) behind a proxy that enforces
DynamoDB's limits (and injects faults for tests), the three functions as release
binaries under the Lambda-faithful runtime (`dev/faithful`: frozen after each answer,
many instances), an SQS → consumer bridge with Lambda's partial-batch semantics, and a
users stream → changes bridge with its retry, bisect and on-failure semantics; change
events reach a local sink queue through a rule on the bus.

    stack.py up              run until Ctrl-C (what `make dev` does)
    stack.py run -- CMD...   start the stack (or reuse a running one), run CMD, stop
    stack.py bridge QUEUE_URL  the SQS → consumer bridge alone (the stack starts it)
    stack.py stream-bridge STREAM_ARN FAILURE_QUEUE_URL
                               the users stream → changes bridge alone (the same)

Tables and queues are created from template.yaml, so local and AWS share one schema.
VF_RUNTIME=watch runs the functions under `cargo lambda watch` instead (debug builds,
rebuilt on change, one never-frozen instance each: kinder than Lambda).
"""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import yaml

import capacity
from dynamodb_limits import violation
from faithful import Fleet, FleetError, FunctionConfig, Spawner
from faithful.runtime_api import signal_group

ROOT = Path(__file__).resolve().parent.parent
# VF_LOCAL_DIR lets a second stack (the clean-up test's) keep its files apart.
LOCAL = Path(os.environ.get("VF_LOCAL_DIR", ROOT / ".local"))
LOGS = LOCAL / "logs"
ENV_FILE = LOCAL / "stack.env"
# The running stack's pid and its children's process groups, to stop a stale stack.
PIDS_FILE = LOCAL / "stack.pids"
VENV_BIN = ROOT / ".venv" / "bin"

STACK_NAME = "vibefollow-local"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
EMULATOR_PORT = int(os.environ.get("VF_EMULATOR_PORT", "4566"))
API_PORT = int(os.environ.get("VF_API_PORT", "9000"))
# A proxy between the functions and moto refuses what DynamoDB would refuse and lets
# tests make chosen AWS operations fail (see FaultProxy).
FAULT_PROXY_PORT = int(os.environ.get("VF_FAULT_PROXY_PORT", "4567"))
EMULATOR_URL = f"http://127.0.0.1:{EMULATOR_PORT}"
API_URL = f"http://127.0.0.1:{API_PORT}"
# Lambda leaves a failed message invisible for the queue's visibility timeout (180 s on
# AWS); locally the bridge makes it visible again after this many seconds so retries
# and the trip to the DLQ take seconds, not minutes.
RETRY_DELAY_SECONDS = int(os.environ.get("VF_BRIDGE_RETRY_SECONDS", "1"))
# "faithful" (default): release binaries as Lambda runs them; "watch": cargo lambda watch.
RUNTIME = os.environ.get("VF_RUNTIME", "faithful")
# VF_RELEASE=1 makes `cargo lambda watch` build release binaries too.
RELEASE = RUNTIME == "faithful" or os.environ.get("VF_RELEASE") == "1"
# Instances per function under the faithful runtime (at least 4 api instances and 2
# consumers, so that retries and concurrent batches cross instances).
API_INSTANCES = (int(os.environ.get("VF_API_MIN", "4")), int(os.environ.get("VF_API_MAX", "24")))
CONSUMER_INSTANCES = (2, 4)
CHANGES_INSTANCES = (1, 2)
# Concurrent SQS pollers of the bridge: Lambda's event source mapping polls with several.
BRIDGE_POLLERS = int(os.environ.get("VF_BRIDGE_POLLERS", "2"))
# The local queue every change event is delivered to (a rule on the change bus).
EVENT_SINK_QUEUE = f"{STACK_NAME}-events-sink"
# Stream records the changes function is retried on before they go to the failure
# queue (the template allows 5 on AWS; fewer keep tests of a poison record short).
STREAM_RETRIES = int(os.environ.get("VF_STREAM_RETRIES", "2"))
DEV_WORKSPACE = "dev"
DEV_SCOPES = "users:write,users:read,users:read_pii,users:delete"


_OUTPUT_LOCK = threading.Lock()


def emit(line, stream=sys.stdout):
    """One whole line per write: the bridge's pollers share its log, and print() writes
    the text and its newline separately, so two threads could splice their lines."""
    with _OUTPUT_LOCK:
        stream.write(line + "\n")
        stream.flush()


def log(message):
    emit(f"[stack] {message}", sys.stderr)


# --- template.yaml -------------------------------------------------------------------

class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, …) as their long form."""


def _cfn_tag(loader, tag_suffix, node):
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template():
    with open(ROOT / "template.yaml") as f:
        return yaml.load(f, Loader=CfnLoader)


def resolve(value, names):
    """Resolves the intrinsic functions the local stack needs."""
    if isinstance(value, dict):
        if "Ref" in value:
            return names[value["Ref"]]
        if "Fn::Sub" in value:
            return re.sub(r"\$\{([^}]+)\}", lambda m: names[m.group(1)], value["Fn::Sub"])
        if "Fn::GetAtt" in value:
            resource, attribute = value["Fn::GetAtt"]
            return names[f"{resource}.{attribute}"]
        if "Fn::If" in value:
            return resolve(value["Fn::If"][2], names)  # local stack: not prod
        return {k: resolve(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, names) for v in value]
    return value


def local_resources(template):
    """Tables and queues of the template, with their local names."""
    names = {"AWS::StackName": STACK_NAME, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT}
    # Parameters take their defaults, as a `sam deploy` without overrides would.
    names.update({name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()})
    tables, queues = {}, {}
    for logical, resource in template["Resources"].items():
        kind = resource["Type"]
        if kind == "AWS::DynamoDB::Table":
            props = resource["Properties"]
            tables[logical] = props
            names[logical] = resolve(props["TableName"], names)
        elif kind == "AWS::Events::EventBus":
            bus = resolve(resource["Properties"]["Name"], names)
            names[logical] = bus
            names[f"{logical}.Arn"] = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{bus}"
        elif kind == "AWS::SQS::Queue":
            props = resource["Properties"]
            queues[logical] = props
            queue_name = resolve(props["QueueName"], names)
            names[logical] = f"{EMULATOR_URL}/{ACCOUNT}/{queue_name}"
            names[f"{logical}.Arn"] = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue_name}"
            names[f"{logical}.QueueName"] = queue_name
    return names, tables, queues


# Lambda's image keeps its CA certificates in one bundle; Debian's /etc/ssl/certs also
# holds a file per CA, which the functions' TLS set-up (rustls-native-certs) would read
# one by one at every cold start unless SSL_CERT_FILE names the bundle alone.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def function_environment(template, names):
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    return {k: resolve(v, names) for k, v in variables.items()}


def key_schemas(tables, names):
    """Table name → (partition key, sort key or None), for the DynamoDB limits."""
    schemas = {}
    for logical, props in tables.items():
        keys = {k["KeyType"]: k["AttributeName"] for k in props["KeySchema"]}
        schemas[names[logical]] = (keys["HASH"], keys.get("RANGE"))
    return schemas


def table_indexes(tables, names):
    """Table name → its global secondary indexes, for counting capacity units."""
    indexes = {}
    for logical, props in tables.items():
        table_keys = [k["AttributeName"] for k in props["KeySchema"]]
        indexes[names[logical]] = [capacity.Index(index, table_keys)
                                   for index in resolve(props.get("GlobalSecondaryIndexes", []), names)]
    return indexes


def function_settings(template, logical):
    """Timeout (s) and memory (MB) of a function of the template."""
    merged = dict(template["Globals"]["Function"], **template["Resources"][logical]["Properties"])
    return int(merged.get("Timeout", 3)), int(merged.get("MemorySize", 128))


def create_resources(template, event_sink=False):
    names, tables, queues = local_resources(template)
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)
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
    events = session.client("events", endpoint_url=EMULATOR_URL)
    for logical, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Events::EventBus":
            try:
                events.create_event_bus(Name=names[logical])
            except events.exceptions.ResourceAlreadyExistsException:
                pass


def create_event_sink(session, names):
    """On the change bus, a rule that delivers every event to a local sink queue
    (`vfctl --local events tail` reads it). On AWS, downstream views add their own."""
    events = session.client("events", endpoint_url=EMULATOR_URL)
    sqs = session.client("sqs", endpoint_url=EMULATOR_URL)
    sink = sqs.create_queue(QueueName=EVENT_SINK_QUEUE)["QueueUrl"]
    names["EventSink"] = sink
    subscribe(events, names["ChangeEventBus"], EVENT_SINK_QUEUE, {"source": ["vibefollow.users"]})


def subscribe(events, bus, queue_name, pattern):
    """A rule on `bus` that delivers the events matching `pattern` to an SQS queue."""
    events.put_rule(Name=queue_name, EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=queue_name, EventBusName=bus, Targets=[
        {"Id": "sink", "Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue_name}"}])


# --- fault proxy ---------------------------------------------------------------------

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
    forwards them; `"probability": 0.3` affects only that share of the calls;
    `"matching": "text"` only the calls whose payload contains that text.
    `DELETE /__faults` clears it; `GET /__faults` counts calls per operation and the
    faults injected. Both SDK protocols this service uses (DynamoDB and SQS JSON) name
    the operation in `X-Amz-Target`.

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
    name to its (partition key, sort key or None) attribute names.
    """

    def __init__(self, port, upstream, key_schemas=None, indexes=None):
        self.faults = {}
        self.calls = {}
        self.injected = {"fail": 0, "stall": 0}
        self.refused_by_limits = 0
        self.key_schemas = key_schemas or {}
        self.upstream = upstream
        self.indexes = indexes or {}
        self.ledger = None  # a capacity.Ledger while counting
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
                    proxy.faults = json.loads(self.body())
                    return self.answer(204, b"")
                if self.path == "/__capacity":
                    self.body()
                    proxy.ledger = capacity.Ledger(proxy.indexes)
                    return self.answer(204, b"")
                self.forward()

            def do_DELETE(self):
                if self.path == "/__faults":
                    self.body()
                    proxy.faults = {}
                    return self.answer(204, b"")
                if self.path == "/__capacity":
                    self.body()
                    proxy.ledger = None
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
                self.forward()

            def do_POST(self):
                self.forward()

            def forward(self):
                payload = self.body()
                target = self.headers.get("X-Amz-Target", "")
                refusal = proxy.refusal(target, payload)
                faults = proxy.faults
                hit = (not refusal and target and target in faults.get("operations", [])
                       and faults.get("matching", "").encode() in payload
                       and random.random() < float(faults.get("probability", 1)))
                action = faults.get("action", "fail") if hit else None
                with proxy.lock:
                    proxy.calls[target] = proxy.calls.get(target, 0) + 1
                    if refusal:
                        proxy.refused_by_limits += 1
                    if action:
                        proxy.injected[action] += 1
                if refusal:
                    error = json.dumps({"__type": "com.amazon.coral.validation#ValidationException",
                                        "message": refusal}).encode()
                    return self.answer(400, error, [("Content-Type", "application/x-amz-json-1.0")])
                if action == "fail":
                    error = json.dumps({"__type": faults.get("code", "ServiceUnavailable"),
                                        "message": "injected by the test fault proxy"}).encode()
                    return self.answer(int(faults.get("status", 503)), error,
                                       [("Content-Type", "application/x-amz-json-1.0")])
                if action == "stall":
                    time.sleep(int(faults.get("delay_ms", 3000)) / 1000)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                counted = proxy.ledger is not None and target.startswith("DynamoDB_20120810.")
                before = proxy.item_before(target, payload) if counted else None  # never raises
                status, data, got = proxy.send(self.command, self.path, payload, headers)
                passed = [(k, v) for k, v in got.items()
                          if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server")]
                self.answer(status, data, passed)
                if counted:
                    proxy.count(target, payload, before, status, data)

        self.server = QuietServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

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

    def count(self, target, payload, before, status, data):
        try:
            self.count_call(target.rpartition(".")[2], json.loads(payload), before, status, data)
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
            log(f"capacity: {target} not counted: {e!r}")

    def count_call(self, operation, request, before, status, data):
        answer = json.loads(data or b"{}")
        failed_condition = status == 400 and "ConditionalCheckFailed" in answer.get("__type", "")
        ledger = self.ledger
        if ledger is None or (status != 200 and not failed_condition):
            return
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            table = request["TableName"]
            if failed_condition:
                return ledger.failed_condition(table, before)
            if operation == "PutItem":
                after = request["Item"]
            elif operation == "UpdateItem":
                after = self.current_item(table, request["Key"])
            else:
                after = None
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
            return violation(target, json.loads(payload), self.key_schemas)
        except (ValueError, TypeError, AttributeError):
            return None

    def close(self):
        self.server.shutdown()


# --- processes -----------------------------------------------------------------------

def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate, what, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"[stack] timed out after {timeout}s waiting for {what}")


def tool_env(extra=None):
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


class Stack:
    def __init__(self, reload, log_level="TRACE", event_sink=False):
        # Tests and the drill run the functions at the most verbose level the template
        # allows, so that the log checks cover every line a deployment could write.
        self.reload = reload
        self.log_level = log_level
        # A queue that every change event reaches (make dev, the drill). Tests subscribe
        # with rules of their own instead: a sink nobody drains slows moto's EventBridge
        # down as it fills (its SendMessage recounts the queue).
        self.event_sink = event_sink
        self.spawner = Spawner()
        self.proxy = None
        self.fleet = None
        self.processes = []

    def spawn(self, name, args, env=None, log_to_terminal=False, log_mode="w"):
        """A child in a process group of its own that the kernel kills when the stack
        dies, however it dies (parent-death signal)."""
        log_file = open(LOGS / f"{name}.log", log_mode)
        process = self.spawner.spawn(
            args, cwd=ROOT, env=tool_env(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if log_to_terminal else log_file, stderr=subprocess.STDOUT,
            text=True,
        )
        if log_to_terminal:
            threading.Thread(target=tee, args=(process.stdout, log_file), daemon=True).start()
        self.processes.append((name, process))
        self.record_pids()
        return process

    def record_pids(self):
        PIDS_FILE.write_text(json.dumps({"stack": os.getpid(), "root": str(ROOT),
                                         "groups": [p.pid for _, p in self.processes]}))

    def start(self):
        LOGS.mkdir(parents=True, exist_ok=True)
        stop_stale_stack()
        if port_open(EMULATOR_PORT) or port_open(API_PORT):
            raise SystemExit(f"[stack] port {EMULATOR_PORT} or {API_PORT} is in use: is another stack running?")
        log(f"starting moto on {EMULATOR_URL}")
        self.spawn("moto", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(EMULATOR_PORT)])
        wait_for(lambda: port_open(EMULATOR_PORT), "moto", 30)
        self.template = load_template()
        names, schemas, indexes = create_resources(self.template, self.event_sink)
        env = function_environment(self.template, names)
        self.proxy = FaultProxy(FAULT_PROXY_PORT, EMULATOR_URL, schemas, indexes)
        env.update({
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{FAULT_PROXY_PORT}", "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "DLQ_URL": names["UpsertDeadLetterQueue"], "VF_RUNTIME": RUNTIME,
            "VF_USERS_STREAM_ARN": names["UsersTable.StreamArn"],
            "VF_CHANGES_FAILURE_QUEUE_URL": names["ChangesFailureQueue"],
            "AWS_LAMBDA_LOG_LEVEL": self.log_level,
        })
        if "EventSink" in names:
            env["VF_EVENT_SINK_URL"] = names["EventSink"]
        if CA_BUNDLE.exists():
            env["SSL_CERT_FILE"] = str(CA_BUNDLE)
        ENV_FILE.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.env = env
        log(f"building the functions{' (release)' if RELEASE else ''}; the first time takes a few minutes")
        profile = ["--release"] if RELEASE else []
        subprocess.run(["cargo", "build", "--quiet", "--bin", "api", "--bin", "consumer", "--bin", "changes", *profile],
                       cwd=ROOT, check=True)
        self.start_functions()
        self.bridge = None
        self.start_bridge()
        self.start_stream_bridge()
        log(f"API on {API_URL}/api/v1/users; logs in {LOGS}")

    def start_functions(self, log_mode="w"):
        if RUNTIME == "faithful":
            self.start_fleet()
        else:
            self.start_watch(log_mode)
        # The consumer starts on its first event (under watch: builds, after a change).
        invoke_consumer(f"{API_URL}/2015-03-31/functions/consumer/invocations", {"Records": []}, set(), timeout=600)

    def start_fleet(self):
        functions = []
        for name, logical, (least, most) in (("api", "ApiFunction", API_INSTANCES),
                                              ("consumer", "ConsumerFunction", CONSUMER_INSTANCES),
                                              ("changes", "ChangesFunction", CHANGES_INSTANCES)):
            timeout, memory = function_settings(self.template, logical)
            functions.append(FunctionConfig(name, str(ROOT / "target" / "release" / name), self.env,
                                            min_instances=least, max_instances=most,
                                            timeout_s=timeout, memory_mb=memory))
        (LOGS / "functions.log").write_text("")
        self.fleet = Fleet(functions, port=API_PORT, log_path=str(LOGS / "functions.log"))
        try:
            self.fleet.start()
        except FleetError as e:
            raise SystemExit(f"[stack] the functions did not start: {e}")

    def start_watch(self, log_mode):
        profile = ["--release"] if RELEASE else []
        watch = ["cargo", "lambda", "watch", "--invoke-address", "127.0.0.1",
                 "--invoke-port", str(API_PORT), "--env-file", str(ENV_FILE), *profile]
        if not self.reload:
            watch.append("--ignore-changes")
        self.functions = self.spawn("functions", watch, log_to_terminal=self.reload, log_mode=log_mode)
        wait_for(lambda: port_open(API_PORT), "cargo lambda watch", 120)
        wait_for(api_answers, "the api function", 300)

    def start_bridge(self, log_mode="w"):
        """The SQS → consumer bridge runs as its own process, so that the drill can kill
        it mid-batch as a crashed poller would die."""
        self.bridge = self.spawn("bridge", [sys.executable, str(Path(__file__).resolve()), "bridge",
                                            self.env["UPSERT_QUEUE_URL"]], log_mode=log_mode)

    def start_stream_bridge(self, log_mode="w"):
        self.spawn("stream-bridge", [sys.executable, str(Path(__file__).resolve()), "stream-bridge",
                                     self.env["VF_USERS_STREAM_ARN"], self.env["VF_CHANGES_FAILURE_QUEUE_URL"]],
                   log_mode=log_mode)

    def kill_bridge(self):
        self.kill("bridge", self.bridge)

    def kill(self, name, process):
        signal_group(process.pid, signal.SIGKILL)
        process.wait()
        self.processes.remove((name, process))
        self.record_pids()

    def create_key(self, workspace=DEV_WORKSPACE, scopes=DEV_SCOPES, rate_limit=None):
        return create_key(workspace, scopes, rate_limit)

    def stop(self):
        """Everything stops within a few seconds: SIGTERM to every child at once, then
        SIGKILL to what is left after a shared grace period."""
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.fleet:
            self.fleet.stop()
        for _, process in self.processes:
            signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _, process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            signal_group(process.pid, signal.SIGKILL)
        if self.proxy:
            self.proxy.close()
        self.spawner.close()
        ENV_FILE.unlink(missing_ok=True)
        PIDS_FILE.unlink(missing_ok=True)


STOP_GRACE_SECONDS = 3


def create_key(workspace=DEV_WORKSPACE, scopes=DEV_SCOPES, rate_limit=None):
    """A key of the running local stack, made with `vfctl --local`."""
    limit = ["--rate-limit", str(rate_limit)] if rate_limit else []
    out = subprocess.run(
        ["cargo", "run", "--quiet", "--bin", "vfctl", "--", "--local", "keys", "create",
         "--workspace", workspace, "--scopes", scopes, *limit],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def stop_stale_stack():
    """A stack of this checkout whose `stack.py` died without cleaning up (SIGKILL)
    leaves its pids behind: its process groups are stopped, not refused."""
    if not PIDS_FILE.exists():
        return
    try:
        recorded = json.loads(PIDS_FILE.read_text())
    except ValueError:
        recorded = {}
    if pid_alive(recorded.get("stack")) and "stack.py" in cmdline(recorded["stack"]):
        raise SystemExit(f"[stack] another stack of this checkout is running (pid {recorded['stack']})")
    groups = [g for g in recorded.get("groups", []) if pid_alive(g)]
    if groups:
        log(f"stopping a stale stack of this checkout: process groups {groups}")
    for group in groups:
        signal_group(group, signal.SIGKILL)
    wait_for(lambda: not port_open(EMULATOR_PORT) and not port_open(API_PORT), "the stale stack's ports", 10)
    PIDS_FILE.unlink(missing_ok=True)


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid):
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def tee(stream, log_file):
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        log_file.write(line)
        log_file.flush()


def api_answers():
    """True once the api function answers (401 without a key)."""
    try:
        urllib.request.urlopen(f"{API_URL}/api/v1/users/ping", timeout=60)
    except urllib.error.HTTPError as e:
        return e.code == 401
    except OSError:
        return False
    return False


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
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)
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
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)])
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
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)
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


# --- entry points --------------------------------------------------------------------

def up():
    stack = Stack(reload=True, log_level=os.environ.get("VF_LOG_LEVEL", "INFO"), event_sink=True)
    # Ctrl-C even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        stack.start()
        key = stack.create_key()
        print(f"\nVibeFollow Users is running at {API_URL}/api/v1/users", flush=True)
        print(f"Dev API key (workspace '{DEV_WORKSPACE}', all scopes):\n\n    export VF_KEY={key}\n", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while all(p.poll() is None for _, p in stack.processes):
            time.sleep(0.5)
        log("a process of the stack exited; stopping")
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


def run(command):
    if ENV_FILE.exists() and port_open(API_PORT) and port_open(EMULATOR_PORT):
        env = read_env_file()
        if env.get("VF_RUNTIME") != "faithful":
            raise SystemExit("[stack] the running stack uses cargo lambda watch; the tests need "
                             "the Lambda-faithful runtime: stop it (or start it without VF_RUNTIME)")
        log("reusing the running stack")
        return subprocess.run(command, cwd=ROOT, env=tool_env(env)).returncode
    stack = Stack(reload=False)
    try:
        stack.start()
        return subprocess.run(command, cwd=ROOT, env=tool_env(test_env(stack.env))).returncode
    finally:
        stack.stop()


def test_env(env):
    """What the tests are told of the stack, beside the functions' own variables."""
    return dict(env, VF_API_URL=API_URL, VF_FUNCTION_LOG=str(LOGS / "functions.log"),
                VF_FAULT_PROXY_URL=f"http://127.0.0.1:{FAULT_PROXY_PORT}/__faults")


def read_env_file():
    pairs = (line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
    return test_env({k: v for k, v in pairs})


def main(argv):
    if argv[:1] == ["up"]:
        up()
        return 0
    if argv[:1] == ["bridge"] and len(argv) == 2:
        bridge(argv[1])
        return 0
    if argv[:1] == ["stream-bridge"] and len(argv) == 3:
        stream_bridge(argv[1], argv[2])
        return 0
    if argv[:1] == ["run"] and "--" in argv:
        return run(argv[argv.index("--") + 1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
