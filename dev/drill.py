#!/usr/bin/env python3
"""`make drill`: load and faults against the local stack, then proof that nothing was
lost, duplicated or leaked.

M clients send K upserts each over a shared pool of users, with Idempotency-Keys and
retries (after a timeout, 409, 429, 5xx), while a chaos thread makes DynamoDB and SQS
calls fail or stall (the stack's fault proxy), kills and restarts the SQS → consumer
bridge mid-batch, and puts poison messages on the queue. Probes that must be refused
(422, 401, 403, 413, 415) carry markers that must never be stored. Then, with the faults
cleared, the drill waits for the queue to drain and checks:

- every 202 applied, and each user's stored state (values and per-field stamps) equals
  the in-order application of its accepted upserts, ordered by the stamps that the
  Idempotency-Key records hold (an independent re-implementation of the merge);
- nothing applied twice in effect: no stored field carries an older or unknown stamp;
- every non-202 changed nothing: no marker stored, no stamp from a refused request;
- every retried request eventually got its 202;
- the DLQ holds exactly the poison messages;
- cross-workspace reads, writes and Idempotency-Keys are refused or isolated;
- the function and bridge logs hold no API key and no email address.

Figures go to target/drill/summary.json and docs/reliability.md. Exit status 1 when a
check fails. Bounded: VF_DRILL_CLIENTS (8) × VF_DRILL_UPSERTS (50), VF_DRILL_USERS
(20) users, VF_DRILL_SEED (7); the whole drill gives up after VF_DRILL_DEADLINE (600) s.
"""
import json
import os
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402
from boto3.dynamodb.types import TypeDeserializer  # noqa: E402

CLIENTS = int(os.environ.get("VF_DRILL_CLIENTS", "8"))
UPSERTS = int(os.environ.get("VF_DRILL_UPSERTS", "50"))
USERS = int(os.environ.get("VF_DRILL_USERS", "20"))
SEED = int(os.environ.get("VF_DRILL_SEED", "7"))
DEADLINE = time.monotonic() + int(os.environ.get("VF_DRILL_DEADLINE", "600"))
# Low enough that eight clients run into it: 429s are part of the drill.
RATE_LIMIT = 15
CLIENT_TIMEOUT = 2.5
# Longer than any injected fault, so that an accepted upsert is never given up on.
GIVE_UP_AFTER = 120
WORKSPACE, OTHER_WORKSPACE = "drill-a", "drill-b"
USERS_URL = f"{stack.API_URL}/api/v1/users"
OUT = stack.ROOT / "target" / "drill"
REPORT = stack.ROOT / "docs" / "reliability.md"
FAULTS_URL = f"http://127.0.0.1:{stack.FAULT_PROXY_PORT}/__faults"
FLEET_URL = f"{stack.API_URL}/__fleet"
# Instances stay frozen and out of service for a random time after each answer.
HOLD_MS = (0, 1000)
# This share of a client's requests erase the user instead of upserting it.
DELETE_SHARE = 0.08
# After this share of 202s the client sends the same request again at once: it must be
# a replay (another instance answers it while the first is frozen), never a 409.
ECHO_SHARE = 0.3

DYNAMODB = "DynamoDB_20120810."
SQS = "AmazonSQS."
# (what, fault, seconds): the chaos thread cycles through these, two seconds apart.
FAULTS = [
    ("DynamoDB PutItem fails (500) for half the calls", {
        "operations": [DYNAMODB + "PutItem"], "status": 500, "code": "InternalServerError",
        "probability": 0.5}, 3),
    ("SQS SendMessage stalls 3.5 s (clients time out at 2.5 s)", {
        "operations": [SQS + "SendMessage"], "action": "stall", "delay_ms": 3500}, 4),
    ("SQS SendMessage fails (503)", {
        "operations": [SQS + "SendMessage"], "status": 503, "code": "ServiceUnavailable"}, 2),
    ("every DynamoDB call stalls 2 s", {
        "operations": [DYNAMODB + op for op in
                       ("PutItem", "GetItem", "BatchGetItem", "UpdateItem", "DeleteItem", "Query")],
        "action": "stall", "delay_ms": 2000}, 3),
    ("DynamoDB BatchGetItem and PutItem throttled for 70 % of the calls", {
        "operations": [DYNAMODB + "BatchGetItem", DYNAMODB + "PutItem"], "status": 400,
        "code": "ThrottlingException", "probability": 0.7}, 3),
]
POISON = ["this is not JSON", '{"version":9,"workspace_id":"drill-a"}', "[]",
          '{"version":1,"workspace_id":"drill-a","external_user_id":"u"}']
KEY_PATTERN = re.compile(r"sk_(?:live|test)_[A-Za-z0-9]{8,}")
EMAIL_PATTERN = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def log(message):
    print(f"[drill] {message}", file=sys.stderr, flush=True)


def post(key, body, idempotency_key=None, content_type="application/json", timeout=CLIENT_TIMEOUT,
         method="POST", path=""):
    """(status, headers) of one request (a POST unless told otherwise); status None when it
    timed out or failed to connect."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(USERS_URL + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, response.headers
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, e.headers
    except OSError:
        return None, {}


def get(key, path):
    request = urllib.request.Request(f"{USERS_URL}{path}", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


# --- clients -------------------------------------------------------------------------

def upsert_body(rng, client, seq, user):
    """A body touching a random subset of fields; `traits.last` is shared by all."""
    traits = {f"c{client}": seq, "last": f"{client}-{seq}"}
    body = {"external_user_id": user, "traits": traits}
    if rng.random() < 0.3:
        traits["plan"] = None if rng.random() < 0.2 else rng.choice(["free", "pro", "team"])
    if rng.random() < 0.2:
        body["email"] = None if rng.random() < 0.2 else f"{user}.{client}.{seq}@drill.example"
    if rng.random() < 0.2:
        traits["color"] = None if rng.random() < 0.3 else rng.choice(["teal", "red", "blue"])
    if rng.random() < 0.1:
        traits["nested"] = {"seq": seq, "list": [client, seq, {"deep": True}]}
    return body


class Client(threading.Thread):
    def __init__(self, number, key, users):
        super().__init__(daemon=True)
        self.number = number
        self.key = key
        self.users = users
        self.rng = random.Random(SEED * 1000 + number)
        self.records = []

    def run(self):
        for seq in range(UPSERTS):
            user = self.rng.choice(self.users)
            if self.rng.random() < DELETE_SHARE:
                self.records.append(self.erase(user, str(uuid.uuid4())))
                continue
            body = upsert_body(self.rng, self.number, seq, user)
            self.records.append(self.send(body, str(uuid.uuid4())))

    def erase(self, user, idempotency_key):
        status, headers, attempts = post_until_answered(
            self.key, None, idempotency_key, self.rng, method="DELETE", path=f"/{urllib.parse.quote(user)}")
        return {"user": user, "body": None, "key": idempotency_key, "attempts": attempts,
                "status": status, "echo": None, "replayed": headers.get("Idempotent-Replayed") == "true"}

    def send(self, body, idempotency_key):
        status, headers, attempts = post_until_answered(self.key, body, idempotency_key, self.rng)
        echo = None
        if status == 202 and self.rng.random() < ECHO_SHARE:
            echo_status, echo_headers, echo_attempts = post_until_answered(
                self.key, body, idempotency_key, self.rng)
            echo = {"status": echo_status, "attempts": echo_attempts,
                    "replayed": echo_headers.get("Idempotent-Replayed") == "true"}
        return {"user": body["external_user_id"], "body": body, "key": idempotency_key,
                "attempts": attempts, "status": status, "echo": echo,
                "replayed": headers.get("Idempotent-Replayed") == "true"}


def post_until_answered(key, body, idempotency_key, rng, content_type="application/json",
                        timeout=CLIENT_TIMEOUT, **request):
    """Retries with the same key and body after a timeout, 409, 429 or 5xx, honouring
    Retry-After with jitter, as the SDK does. (status, headers, attempts); status None
    when it gave up."""
    attempts = []
    started = time.monotonic()
    while time.monotonic() - started < GIVE_UP_AFTER:
        status, headers = post(key, body, idempotency_key, content_type=content_type, timeout=timeout,
                               **request)
        attempts.append(status or "timeout")
        if status is not None and status < 500 and status not in (409, 429):
            return status, headers, attempts
        retry_after = headers.get("Retry-After")
        time.sleep((float(retry_after) if retry_after else 0.5) * (0.5 + rng.random()))
    return None, {}, attempts


def probes(key, read_only_key):
    """Requests that must be refused; each carries a marker that must never be stored."""
    found = []

    rng = random.Random(SEED)

    def probe(expected, marker, body, use_key=key, content_type="application/json"):
        # Over the rate limit or during a fault the answer is 429/5xx first: retried.
        status, _, _ = post_until_answered(use_key, body, str(uuid.uuid4()), rng,
                                           content_type=content_type, timeout=30)
        found.append({"expected": expected, "status": status, "marker": marker})

    for i in range(3):
        marker = f"probe_{uuid.uuid4().hex}"
        user = f"user-{i}"
        probe(422, marker, {"external_user_id": user, "email": "not-an-address", "traits": {marker: 1}})
        probe(401, marker, {"external_user_id": user, "traits": {marker: 1}},
              use_key="sk_test_" + uuid.uuid4().hex)
        probe(403, marker, {"external_user_id": user, "traits": {marker: 1}}, use_key=read_only_key)
        probe(415, marker, json.dumps({"external_user_id": user, "traits": {marker: 1}}).encode(),
              content_type="text/plain")
        probe(413, marker, {"external_user_id": user, "traits": {marker: "x" * 40_000}})
    return found


# --- chaos ---------------------------------------------------------------------------

class Chaos(threading.Thread):
    """Faults, bridge kills and poison messages until told to stop."""

    def __init__(self, the_stack, sqs, queue_url):
        super().__init__(daemon=True)
        self.stack = the_stack
        self.sqs = sqs
        self.queue_url = queue_url
        self.stop = threading.Event()
        self.fault_windows = 0
        self.bridge_kills = 0
        self.function_kills = 0
        self.poisoned = 0
        self.last_fault_cleared = time.monotonic()

    def set_faults(self, faults):
        request = urllib.request.Request(FAULTS_URL, data=json.dumps(faults).encode(), method="PUT")
        urllib.request.urlopen(request, timeout=5).read()

    def clear_faults(self):
        urllib.request.urlopen(urllib.request.Request(FAULTS_URL, method="DELETE"), timeout=5).read()
        self.last_fault_cleared = time.monotonic()

    def run(self):
        rng = random.Random(SEED)
        step = 0
        while not self.stop.wait(2):
            if step == 1:
                for body in POISON:
                    self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)
                    self.poisoned += 1
            if step % 4 == 3:
                self.restart_functions(rng)
            elif step % 4 == 1:
                self.kill_bridge(rng)
            what, faults, seconds = FAULTS[step % len(FAULTS)]
            self.set_faults(faults)
            self.fault_windows += 1
            self.stop.wait(seconds)
            self.clear_faults()
            step += 1
        self.clear_faults()

    def kill_bridge(self, rng):
        # Mid-batch more often than not: the bridge is busy while clients are.
        time.sleep(rng.random())
        self.stack.kill_bridge()
        self.bridge_kills += 1
        time.sleep(1 + rng.random())
        self.stack.start_bridge(log_mode="a")

    def restart_functions(self, rng):
        """Instances die without warning, often mid-request: a busy api instance (its
        client loses the connection), a consumer instance (its batch is not deleted), and
        a changes instance (its stream batch is delivered again: duplicate events)."""
        time.sleep(rng.random())
        for function, states in (("api", ("busy", "any")), ("consumer", ("any",)), ("changes", ("any",))):
            for state in states:
                killed = fleet("POST", "/kill", {"function": function, "state": state, "count": 1})
                self.function_kills += len(killed.get("killed", []))
                if killed.get("killed"):
                    break


def fleet(method, path="", body=None):
    """A call to the faithful runtime's control endpoint."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(FLEET_URL + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


# --- checks --------------------------------------------------------------------------

def stamp_of(text):
    accepted_at, request_id = text.split("/", 1)
    return int(accepted_at), request_id


def touched_fields(body):
    """{stored field: value} of what a drill body sets or removes (`plan` is a profile
    attribute, other traits live under `traits.`)."""
    fields = {"email": body["email"]} if "email" in body else {}
    for name, value in body["traits"].items():
        fields["plan" if name == "plan" else f"traits.{name}"] = value
    return fields


def expected_state(accepted):
    """The in-order application of accepted upserts and erasures: per field, the greatest
    stamp wins; an erasure clears every field of its user."""
    users = {}
    for record in sorted(accepted, key=lambda r: r["stamp"]):
        if record["body"] is None:
            users[record["user"]] = {}
            continue
        fields = users.setdefault(record["user"], {})
        for field, value in touched_fields(record["body"]).items():
            fields[field] = (value, record["stamp"])
    return users


def stored_state(item):
    """The user item as {field: (value, stamp)}, removed fields with value None."""
    plain = {k: TypeDeserializer().deserialize(v) for k, v in item.items()}
    traits = plain.get("traits", {})
    fields = {}
    for key, text in plain.get("stamps", {}).items():
        if key.startswith("traits."):
            value = traits.get(key[len("traits."):])
        else:
            value = plain.get(key)
        fields[key] = (normalize(value), stamp_of(text))
    return fields


def normalize(value):
    """DynamoDB numbers come back as Decimal."""
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, Decimal):
        return int(value) if value == int(value) else float(value)
    return value


def scan(dynamodb, table):
    items, start = [], {}
    while True:
        page = dynamodb.scan(TableName=table, ConsistentRead=True, **start)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}


def queue_depth(sqs, url):
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def drain_dlq(sqs, url):
    bodies = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not got:
            return bodies
        bodies += [m["Body"] for m in got]
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])


# --- change events -------------------------------------------------------------------

def read_views(key, users):
    """What a read shows of each user: email + traits by name, None when there is none."""
    views = {}
    for user in users:
        status, body = get(key, f"/{urllib.parse.quote(user, safe='')}")
        # The drill's key has a low rate limit: a 429 is waited out, never read as "no user".
        while status == 429:
            time.sleep(1)
            status, body = get(key, f"/{urllib.parse.quote(user, safe='')}")
        if status == 200:
            fields = dict(body["data"]["traits"])
            if "email" in body["data"]:
                fields["email"] = body["data"]["email"]
            views[user] = fields
        elif status == 404:
            views[user] = None
        else:
            raise SystemExit(f"[drill] reading {user} answered {status}")
    return views


def replay_events(envelopes):
    """Each user's events, de-duplicated by id, replayed in version order: what a
    downstream view that only reads events would hold."""
    by_user, seen, duplicates = {}, set(), 0
    for envelope in envelopes:
        detail = envelope["detail"]
        if detail["id"] in seen:
            duplicates += 1
            continue
        seen.add(detail["id"])
        by_user.setdefault(detail["external_user_id"], []).append(envelope)
    views = {}
    for user, events in by_user.items():
        fields = None
        for event in sorted(events, key=lambda e: e["detail"]["version"]):
            if event["detail-type"] == "User Deleted":
                fields = None
                continue
            fields = dict(fields or {})
            for name, change in event["detail"]["changed"].items():
                if "new" in change:
                    fields[name] = change["new"]
                else:
                    fields.pop(name, None)
        views[user] = fields
    return views, duplicates


class EventCollector(threading.Thread):
    """Drains the stack's event sink for the whole drill (a sink left to fill slows
    moto's EventBridge down), keeping this workspace's envelopes."""

    def __init__(self, sqs, sink_url):
        super().__init__(daemon=True)
        self.sqs, self.sink_url = sqs, sink_url
        self.envelopes, self.lock, self.stop = [], threading.Lock(), threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                got = self.sqs.receive_message(QueueUrl=self.sink_url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1).get("Messages", [])
                if got:
                    self.sqs.delete_message_batch(QueueUrl=self.sink_url, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
            except Exception as e:  # the emulator is stopping; the check reports what arrived
                log(f"event collector: {e}")
                time.sleep(0.5)
                continue
            with self.lock:
                self.envelopes += [e for e in (json.loads(m["Body"]) for m in got)
                                   if e["detail"]["workspace_id"] == WORKSPACE]

    def check(self, key, users):
        """Waits until replaying the events rebuilds every user as a read shows it (or
        the deadline passes)."""
        expected = read_views(key, users)
        while True:
            with self.lock:
                envelopes = list(self.envelopes)
            rebuilt, duplicates = replay_events(envelopes)
            matched = all(rebuilt.get(user) == view for user, view in expected.items())
            if matched or time.monotonic() > DEADLINE:
                self.stop.set()
                mismatched = [{"user": u, "read": v, "rebuilt": rebuilt.get(u), "events": [
                    [e["detail"]["version"], e["detail-type"], e["detail"].get("changed")]
                    for e in sorted(envelopes, key=lambda e: e["detail"]["version"])
                    if e["detail"]["external_user_id"] == u]}
                    for u, v in expected.items() if rebuilt.get(u) != v]
                return {"events": len(envelopes), "duplicates_dropped": duplicates,
                        "user_deleted": sum(e["detail-type"] == "User Deleted" for e in envelopes),
                        "users_rebuilt": len(expected) - len(mismatched),
                        "users": len(expected), "matched": matched, "mismatched": mismatched[:3]}
            time.sleep(0.5)


def cross_workspace(key, other_key, accepted, stored):
    """Reads, writes and Idempotency-Keys of another workspace: refused or isolated. Each
    read is also made with the owner's key, so that a check that cannot fail fails."""
    sample = accepted[0]
    results = {}
    own, _ = get(key, f"/{sample['user']}")
    other, _ = get(other_key, f"/{sample['user']}")
    results["read of the other workspace's user: 404 (200 for its owner)"] = (own, other) == (200, 404)
    email = next((fields["email"][0] for fields in stored.values()
                  if fields.get("email", (None,))[0]), None)
    if email:
        query = f"?email={urllib.request.quote(email)}"
        own, own_found = get(key, query)
        other, other_found = get(other_key, query)
        results["email lookup in the other workspace: none found (one for its owner)"] = (
            own == other == 200 and len(own_found["data"]) == 1 and other_found["data"] == [])
    marker = f"probe_{uuid.uuid4().hex}"
    status, headers = post(other_key, {"external_user_id": sample["user"], "traits": {marker: 1}},
                           sample["key"], timeout=30)
    results["other workspace reusing a key with another body: 202, not replayed"] = (
        status == 202 and headers.get("Idempotent-Replayed") != "true")
    landed = False
    for _ in range(40):
        found, body = get(other_key, f"/{sample['user']}")
        landed = found == 200 and marker in body["data"].get("traits", {})
        if landed:
            break
        time.sleep(0.25)
    results["other workspace's write landed in its own user"] = landed
    return results, marker


def scan_logs():
    found = {"api_keys": 0, "email_addresses": 0}
    for path in sorted(stack.LOGS.glob("*.log")):
        if path.name == "moto.log":
            continue  # the emulator's request log is not ours to keep clean
        text = path.read_text(errors="replace")
        found["api_keys"] += len(KEY_PATTERN.findall(text))
        found["email_addresses"] += len(EMAIL_PATTERN.findall(text))
    return found


def bridge_deliveries():
    batches = delivered = redelivered = 0
    for line in (stack.LOGS / "bridge.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            batches += 1
            delivered += entry["batch"]
            redelivered += entry["redelivered"]
    return {"batches": batches, "messages_delivered": delivered, "redelivered": redelivered}


# --- the drill -----------------------------------------------------------------------

def drill(the_stack):
    session = stack.boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                          region_name=stack.REGION)
    aws = {"dynamodb": session.client("dynamodb", endpoint_url=stack.EMULATOR_URL),
           "sqs": session.client("sqs", endpoint_url=stack.EMULATOR_URL)}
    keys = {"write": the_stack.create_key(WORKSPACE, stack.DEV_SCOPES, RATE_LIMIT),
            "read_only": the_stack.create_key(WORKSPACE, "users:read"),
            "other_workspace": the_stack.create_key(OTHER_WORKSPACE, stack.DEV_SCOPES)}
    load = run_load(the_stack, aws, keys)
    return verify(the_stack.env, aws, keys, load)


def run_load(the_stack, aws, keys):
    """Clients, probes and chaos together, until every client is done."""
    users = [f"user-{i}" for i in range(USERS)]
    chaos = Chaos(the_stack, aws["sqs"], the_stack.env["UPSERT_QUEUE_URL"])
    collector = EventCollector(aws["sqs"], the_stack.env["VF_EVENT_SINK_URL"])
    collector.start()
    clients = [Client(i, keys["write"], users) for i in range(CLIENTS)]
    log(f"{CLIENTS} clients x {UPSERTS} upserts over {USERS} users, with faults")
    fleet("PUT", "/hold", {"min_ms": HOLD_MS[0], "max_ms": HOLD_MS[1]})
    started = time.monotonic()
    chaos.start()
    for client in clients:
        client.start()
    probe_results = probes(keys["write"], keys["read_only"])
    for client in clients:
        client.join(max(1, DEADLINE - time.monotonic()))
    seconds = time.monotonic() - started
    chaos.stop.set()
    chaos.join()
    fleet("PUT", "/hold", {"min_ms": 0, "max_ms": 0})
    if any(c.is_alive() for c in clients):
        raise SystemExit("[drill] clients did not finish before the deadline")
    if the_stack.bridge.poll() is not None:
        the_stack.start_bridge(log_mode="a")
    return {"records": [r for c in clients for r in c.records], "probes": probe_results,
            "chaos": chaos, "collector": collector, "seconds": seconds}


def stored_users(dynamodb, env):
    return {i["external_user_id"]["S"]: stored_state(i) for i in scan(dynamodb, env["USERS_TABLE"])
            if i["workspace_id"]["S"] == WORKSPACE}


def verify(env, aws, keys, load):
    dynamodb, sqs = aws["dynamodb"], aws["sqs"]
    records, chaos = load["records"], load["chaos"]
    accepted = [r for r in records if r["status"] == 202]
    idempotency = {item["pk"]["S"]: item for item in scan(dynamodb, env["IDEMPOTENCY_TABLE"])}
    for record in accepted:
        item = idempotency.get(f"{WORKSPACE}#{record['key']}")
        record["stamp"] = (int(item["accepted_at"]["N"]), item["request_id"]["S"]) if item else None
    expected = expected_state([r for r in accepted if r["stamp"]])

    log("faults cleared; waiting for the queue to drain and every user to match")
    while True:
        stored = stored_users(dynamodb, env)
        drained = queue_depth(sqs, env["UPSERT_QUEUE_URL"]) == 0
        if (stored == expected and drained) or time.monotonic() > DEADLINE:
            break
        time.sleep(0.5)
    recovery_seconds = time.monotonic() - chaos.last_fault_cleared
    # Poison messages reach the DLQ after the queue's five receives.
    while queue_depth(sqs, env["DLQ_URL"]) < len(POISON) and time.monotonic() < DEADLINE:
        time.sleep(0.5)
    dlq = drain_dlq(sqs, env["DLQ_URL"])
    log("waiting for the change events to rebuild every user")
    events = load["collector"].check(keys["write"], sorted({r["user"] for r in records}))
    cross, cross_marker = cross_workspace(keys["write"], keys["other_workspace"], accepted, stored)
    all_items = scan(dynamodb, env["USERS_TABLE"])
    own_items = json.dumps([i for i in all_items if i["workspace_id"]["S"] == WORKSPACE])

    # Applied: every field the upsert touched holds its stamp or a later one, unless a
    # later erasure cleared it.
    lost = sum(1 for r in accepted if not r["stamp"] or r["body"] is not None and any(
        f not in stored.get(r["user"], {}) or stored[r["user"]][f][1] < r["stamp"]
        for f in touched_fields(r["body"]) if f in expected.get(r["user"], {})))
    stale_fields = sum(1 for user, fields in stored.items() for f, value_and_stamp in fields.items()
                       if expected.get(user, {}).get(f) != value_and_stamp)
    accepted_ids = {r["stamp"][1] for r in accepted if r["stamp"]}
    foreign_stamps = sum(1 for fields in stored.values() for _, stamp in fields.values()
                         if stamp[1] not in accepted_ids)
    attempts = [a for r in records for a in r["attempts"]]
    echoes = [r["echo"] for r in records if r["echo"]]
    instances = fleet("GET")["functions"]
    proxy = json.load(urllib.request.urlopen(FAULTS_URL, timeout=5))
    logs = scan_logs()
    probe_results = load["probes"]
    markers = [p["marker"] for p in probe_results]
    checks = {
        "every 202 applied (lost = 0)": lost == 0,
        "final state = in-order application of the accepted upserts": stored == expected,
        "nothing applied twice in effect (no stale or foreign stamp)": stale_fields == foreign_stamps == 0,
        "every probe refused with its status": all(p["status"] == p["expected"] for p in probe_results),
        "no refused request changed anything (markers stored: 0)":
            not any(m in json.dumps(all_items) for m in markers),
        "every retried request eventually got its 202": all(r["status"] == 202 for r in records),
        "a request repeated after its 202 is replayed, never 409":
            all(e["status"] == 202 and e["replayed"] and 409 not in e["attempts"] for e in echoes),
        "queue drained": queue_depth(sqs, env["UPSERT_QUEUE_URL"]) == 0,
        "DLQ holds exactly the poison messages": sorted(dlq) == sorted(POISON),
        "cross-workspace write isolated (this workspace's users unchanged)": cross_marker not in own_items,
        **{f"cross-workspace: {k}": v for k, v in cross.items()},
        "logs: 0 API keys, 0 email addresses": logs == {"api_keys": 0, "email_addresses": 0},
        "change events, replayed per user in version order, rebuild every user": events["matched"],
    }
    return {
        "config": {"clients": CLIENTS, "upserts_per_client": UPSERTS, "users": USERS, "seed": SEED,
                   "rate_limit_per_s": RATE_LIMIT, "client_timeout_s": CLIENT_TIMEOUT},
        "requests": {
            "upserts": len(records), "accepted": len(accepted),
            "erasures": sum(r["body"] is None for r in records),
            "answered_replayed": sum(r["replayed"] for r in accepted),
            "http_attempts": len(attempts),
            "retried_upserts": sum(1 for r in records if len(r["attempts"]) > 1),
            "retry_causes": {str(k): attempts.count(k) for k in ("timeout", 409, 429, 500, 503)},
            "probes": len(probe_results),
            "repeated_after_202": len(echoes),
            "repeats_replayed": sum(e["status"] == 202 and e["replayed"] for e in echoes),
            "repeats_409": sum(e["attempts"].count(409) for e in echoes),
            "repeat_retry_causes": {str(k): sum(e["attempts"][:-1].count(k) for e in echoes)
                                    for k in ("timeout", 429, 500, 503)},
            "load_seconds": round(load["seconds"], 1),
        },
        "outcome": {"lost": lost, "stale_or_duplicated_fields": stale_fields,
                    "fields_with_foreign_stamps": foreign_stamps, "users": len(stored),
                    "fields_checked": sum(len(f) for f in stored.values())},
        "faults": {"windows": chaos.fault_windows, "calls_failed": proxy["injected"]["fail"],
                   "calls_stalled": proxy["injected"]["stall"], "bridge_kills": chaos.bridge_kills,
                   "function_kills": chaos.function_kills, "poison_messages": chaos.poisoned,
                   "sqs_send_message_calls": proxy["calls"].get(SQS + "SendMessage", 0),
                   "dlq_messages": len(dlq), **bridge_deliveries()},
        "instances": {name: {k: f[k] for k in ("cold_starts", "invocations", "kills", "crashes", "timeouts")}
                      for name, f in instances.items()},
        "recovery_seconds": round(recovery_seconds, 1),
        "events": events,
        "logs": logs,
        "checks": checks,
    }


def write_report(summary):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    req, out, faults, cfg = summary["requests"], summary["outcome"], summary["faults"], summary["config"]
    inst = summary["instances"]
    causes = ", ".join(f"{v} × {k}" for k, v in req["retry_causes"].items() if v)
    repeat_causes = ", ".join(f"{v} × {k}" for k, v in req["repeat_retry_causes"].items() if v)
    rows = "\n".join(f"| {name} | {'pass' if ok else '**FAIL**'} |" for name, ok in summary["checks"].items())
    windows = "\n".join(f"- {what} ({seconds} s)" for what, _, seconds in FAULTS)
    REPORT.write_text(f"""# Reliability

Written by `make drill` (`dev/drill.py`): {cfg['clients']} clients × {cfg['upserts_per_client']} upserts
over {cfg['users']} shared users against the local stack, with faults; seed {cfg['seed']}. Rerun it
to regenerate this page (figures vary a little from run to run with timing).

## Figures

| | |
|---|---|
| requests sent | {req['upserts']}, of which {req['erasures']} erasures (HTTP attempts: {req['http_attempts']}) |
| accepted (202) | {req['accepted']} ({req['answered_replayed']} answered as replays) |
| lost | {out['lost']} |
| applied twice in effect (stale or foreign stamps) | {out['stale_or_duplicated_fields'] + out['fields_with_foreign_stamps']} of {out['fields_checked']} stored fields |
| upserts that needed retries | {req['retried_upserts']} ({causes}) |
| refused probes (422/401/403/415/413) | {req['probes']}, none stored |
| fault windows | {faults['windows']}: {faults['calls_failed']} AWS calls failed, {faults['calls_stalled']} stalled |
| repeated at once after a 202 (another instance, the first frozen) | {req['repeated_after_202']}: {req['repeats_replayed']} answered as replays, {req['repeats_409']} × 409 (retries of the repeats: {repeat_causes or 'none'}) |
| kills | bridge (SIGKILL, often mid-batch, back 1–2 s later): {faults['bridge_kills']}; function instances (SIGKILL: busy api instances mid-request, consumer and changes instances): {faults['function_kills']} |
| instances | api: {inst['api']['cold_starts']} cold starts, {inst['api']['invocations']} invocations; consumer: {inst['consumer']['cold_starts']} cold starts, {inst['consumer']['invocations']} invocations |
| SQS SendMessage calls by the api | {faults['sqs_send_message_calls']} for {req['accepted']} accepted upserts |
| messages delivered to the consumer | {faults['messages_delivered']} in {faults['batches']} batches, {faults['redelivered']} redeliveries |
| poison messages injected / in the DLQ | {faults['poison_messages']} / {faults['dlq_messages']} |
| load phase | {req['load_seconds']} s |
| recovery (last fault cleared → queue drained, every user correct) | {summary['recovery_seconds']} s |
| change events (this workspace) | {summary['events']['events']} received, {summary['events']['duplicates_dropped']} duplicates dropped by id, {summary['events']['user_deleted']} × User Deleted; replayed per user in version order they rebuild {summary['events']['users_rebuilt']} of {summary['events']['users']} users |
| log scan (functions, bridge) | {summary['logs']['api_keys']} API keys, {summary['logs']['email_addresses']} email addresses |

## Checks

| check | result |
|---|---|
{rows}

## How

- Clients retry with the same Idempotency-Key and body after a timeout ({cfg['client_timeout_s']} s), 409,
  429 and 5xx, honouring `Retry-After`, as the TypeScript SDK does. The drill's key has a rate
  limit of {cfg['rate_limit_per_s']}/s so that 429s happen.
- Faults come from the stack's fault proxy between the functions and moto, cycled two seconds
  apart while the clients run:
{windows}
- The functions run as Lambda runs them, under the stack's faithful runtime (`dev/faithful`):
  release binaries, each instance frozen (SIGSTOP) the moment it answers and resumed only
  for its next event, several api and consumer instances at once (at least 4 and 2), each
  held frozen for a random 0–1 s after every answer, so retries land on other instances.
  After {int(ECHO_SHARE * 100)} % of the 202s the client repeats the request at once: it must be replayed.
- The SQS → consumer bridge is a process of its own; the drill SIGKILLs it (often mid-batch)
  and restarts it. It also SIGKILLs function instances without warning (a busy api
  instance: its client loses the connection; a consumer instance: its batch is not
  deleted); the next events cold-start new ones. Received messages stay invisible for 4 s locally
  (`VF_BRIDGE_VISIBILITY_SECONDS`), and a failed message comes back after 3 s
  (`VF_BRIDGE_RETRY_SECONDS`), so five receives span longer than any fault window; on AWS both
  are the queue's 180 s visibility timeout.
- About {int(DELETE_SHARE * 100)} % of the requests erase their user (`DELETE`) instead of upserting it.
- Change events: the drill drains the stack's event sink (a rule on the change bus) and, for
  each user, drops duplicate ids, applies `User Changed` (set `new`, remove when there is no
  `new`) and `User Deleted` in `version` order, and compares the result with what a read of
  the user shows.
- The oracle is independent of the Rust code: the drill reads each accepted request's stamp
  (`accepted_at`, request id) from its Idempotency-Key record, applies the accepted bodies and
  erasures in stamp order in Python, and compares values and per-field stamps with the users table.
  A field whose stored stamp is older than expected would be a lost or re-applied upsert; a
  stamp of no accepted request would be a refused request that changed something.
- Parser fuzzing is separate: `make fuzz` (in CI) runs the property tests over arbitrary
  bytes and JSON with more cases.
""")


def main():
    os.environ.setdefault("VF_BRIDGE_RETRY_SECONDS", "3")
    os.environ.setdefault("VF_BRIDGE_VISIBILITY_SECONDS", "4")
    the_stack = stack.Stack(reload=False, event_sink=True)
    try:
        the_stack.start()
        summary = drill(the_stack)
    finally:
        the_stack.stop()
    write_report(summary)
    print(json.dumps(summary, indent=2))
    failed = [name for name, ok in summary["checks"].items() if not ok]
    if failed:
        log("FAILED: " + "; ".join(failed))
        return 1
    log(f"all checks passed; report in {REPORT.relative_to(stack.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
