"""The drill's checks, independent of the Rust code: the stored state against the
in-order application of the accepted upserts, the DLQ against the poison messages, the
change events replayed per user against reads, cross-workspace isolation, and the logs
scanned for keys and email addresses; and every 500 the load met was API Gateway's for an
instance the drill killed, none the service's own (answers.py)."""
import json
import re
import threading
import time
import urllib.parse
import urllib.request
import uuid

from boto3.dynamodb.types import TypeDeserializer

import stack
from stack.users_item import as_format_1, json_numbers

from . import audiences
from .answers import retry_causes, server_errors, unexplained_500s
from .chaos import POISON, SQS, fleet
from .load import get, post
from .settings import (CLIENTS, CLIENT_TIMEOUT, DEADLINE, FAULTS_URL, RATE_LIMIT, SEED, UPSERTS, USERS,
                       WORKSPACE, log)

KEY_PATTERN = re.compile(r"sk_(?:live|test)_[A-Za-z0-9]{8,}")
EMAIL_PATTERN = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


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


def stored_state(plain):
    """A users item (`users_items`) as {field: (value, stamp)}, removed fields with
    value None."""
    traits = plain.get("traits", {})
    fields = {}
    for key, text in plain.get("stamps", {}).items():
        if key.startswith("traits."):
            value = traits.get(key[len("traits."):])
        else:
            value = plain.get(key)
        fields[key] = (json_numbers(value), stamp_of(text))
    return fields


def scan(dynamodb, table):
    items, start = [], {}
    while True:
        page = dynamodb.scan(TableName=table, ConsistentRead=True, **start)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}


def drain_dlq(sqs, url):
    bodies = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not got:
            return bodies
        bodies += [m["Body"] for m in got]
        stack.delete_messages(sqs, url, got)


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
    moto's EventBridge down), keeping this workspace's change events and its audience
    events apart (the sink takes every source)."""

    def __init__(self, sqs, sink_url):
        super().__init__(daemon=True)
        self.sqs, self.sink_url = sqs, sink_url
        self.envelopes, self.audience_envelopes = [], []
        self.lock, self.stop = threading.Lock(), threading.Event()

    def audience_events(self):
        with self.lock:
            return list(self.audience_envelopes)

    def all_events(self):
        """This workspace's change and audience events, as collected so far."""
        with self.lock:
            return self.envelopes + self.audience_envelopes

    def run(self):
        while not self.stop.is_set():
            try:
                got = self.sqs.receive_message(QueueUrl=self.sink_url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1).get("Messages", [])
                if got:
                    stack.delete_messages(self.sqs, self.sink_url, got)
            except Exception as e:  # the emulator is stopping; the check reports what arrived
                log(f"event collector: {e}")
                time.sleep(0.5)
                continue
            ours = [e for e in (json.loads(m["Body"]) for m in got) if e["detail"].get("workspace_id") == WORKSPACE]
            with self.lock:
                self.envelopes += [e for e in ours if e["source"] == "vibefollow.users"]
                self.audience_envelopes += [e for e in ours if e["source"] == "vibefollow.audiences"]

    def check(self, expected):
        """Waits until replaying the events rebuilds every user as `expected` (reads)
        shows it (or the deadline passes)."""
        while True:
            with self.lock:
                envelopes = list(self.envelopes)
            rebuilt, duplicates = replay_events(envelopes)
            matched = all(rebuilt.get(user) == view for user, view in expected.items())
            if matched or time.monotonic() > DEADLINE:
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


def answered(key, path, attempts=8):
    """A read, sent again while it is refused for the rate (429) or unavailable (503),
    as a client honouring Retry-After (one second here) would: the drill's keys have
    low rates, and this check is of workspaces, not of the rate."""
    for _ in range(attempts - 1):
        status, body = get(key, path)
        if status not in (429, 503):
            return status, body
        time.sleep(1)
    return get(key, path)


def cross_workspace(key, other_key, accepted, stored):
    """Reads, writes and Idempotency-Keys of another workspace: refused or isolated. Each
    read is also made with the owner's key, so that a check that cannot fail fails."""
    get = answered
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
    status, headers, _ = post(other_key, {"external_user_id": sample["user"], "traits": {marker: 1}},
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


def own(item):
    """A users item of the drill's workspace: its key is `<workspace>#<user>` (new items
    carry no `workspace_id`, only their index shard)."""
    return item["pk"].split("#", 1)[0] == WORKSPACE


def users_items(dynamodb, env):
    """The users table's items, deserialized, each in format 1's layout whatever it
    holds: stamps and values readable, so a marker stored anywhere is found."""
    deserialize = TypeDeserializer().deserialize
    return [as_format_1({k: deserialize(v) for k, v in item.items()})
            for item in scan(dynamodb, env["USERS_TABLE"])]


def stored_users(dynamodb, env):
    return {i["external_user_id"]: stored_state(i) for i in users_items(dynamodb, env) if own(i)}


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
        drained = stack.queue_depth(sqs, env["UPSERT_QUEUE_URL"]) == 0
        if (stored == expected and drained) or time.monotonic() > DEADLINE:
            break
        time.sleep(0.5)
    recovery_seconds = time.monotonic() - chaos.last_fault_cleared
    # Poison messages reach the DLQ after the queue's five receives.
    while stack.queue_depth(sqs, env["DLQ_URL"]) < len(POISON) and time.monotonic() < DEADLINE:
        time.sleep(0.5)
    dlq = drain_dlq(sqs, env["DLQ_URL"])
    log("waiting for the change events to rebuild every user")
    # Read once for both checks: the drill's key has a low rate limit, and the
    # cross-workspace reads below must not meet it.
    views = read_views(keys["write"], sorted({r["user"] for r in records}))
    events = load["collector"].check(views)
    log("waiting for the audiences to equal their rules over the final users")
    audience_check = audiences.check(keys["audiences"], views, load["collector"])
    webhook_figures, webhook_checks = load["webhooks"].check(keys["webhooks"], load["collector"])
    # A wake or an event that ended there is work no worker will pick up by itself.
    webhook_figures["dead_lettered"] = {queue: stack.queue_depth(sqs, env[variable]) for queue, variable in
                                        (("intake", "VF_WEBHOOK_INTAKE_DLQ_URL"), ("wakes", "VF_WEBHOOK_WAKE_DLQ_URL"))}
    load["collector"].stop.set()
    cross, cross_marker = cross_workspace(keys["write"], keys["other_workspace"], accepted, stored)
    all_items = json.dumps(users_items(dynamodb, env), default=str)
    own_items = json.dumps([i for i in users_items(dynamodb, env) if own(i)], default=str)

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
    probe_results = load["probes"]
    # Every attempt of the load: requests, their repeats after a 202, the probes.
    every_attempt = [*attempts, *(a for e in echoes for a in e["attempts"]),
                     *(a for p in probe_results for a in p["attempts"])]
    unexplained = unexplained_500s(every_attempt)
    instances = fleet("GET")["functions"]
    proxy = json.load(urllib.request.urlopen(FAULTS_URL, timeout=5))
    logs = scan_logs()
    markers = [p["marker"] for p in probe_results]
    checks = {
        "every 202 applied (lost = 0)": lost == 0,
        "final state = in-order application of the accepted upserts": stored == expected,
        "nothing applied twice in effect (no stale or foreign stamp)": stale_fields == foreign_stamps == 0,
        "every probe refused with its status": all(p["status"] == p["expected"] for p in probe_results),
        "no refused request changed anything (markers stored: 0)":
            not any(m in all_items for m in markers),
        "every retried request eventually got its 202": all(r["status"] == 202 for r in records),
        "every 500 was API Gateway's for an instance the drill killed (none the service's own, no crash)":
            not unexplained,
        "a request repeated after its 202 is replayed, never 409":
            all(e["status"] == 202 and e["replayed"] and 409 not in e["attempts"] for e in echoes),
        "queue drained": stack.queue_depth(sqs, env["UPSERT_QUEUE_URL"]) == 0,
        "DLQ holds exactly the poison messages": sorted(dlq) == sorted(POISON),
        "cross-workspace write isolated (this workspace's users unchanged)": cross_marker not in own_items,
        **{f"cross-workspace: {k}": v for k, v in cross.items()},
        "logs: 0 API keys, 0 email addresses": logs == {"api_keys": 0, "email_addresses": 0},
        "change events, replayed per user in version order, rebuild every user": events["matched"],
        "audiences: members = the rules over the final users": audience_check["members_equal_rules"],
        "audiences: Entered/Exited replayed per (audience, user) = the members":
            audience_check["events_replay_to_members"],
        "audiences: per (audience, user) events alternate in version order": audience_check["events_alternate"],
        "audiences: a user whose evaluation kept failing was parked, then redriven and settled":
            load["parked"]["parked"] >= 1 and load["parked"]["redriven"] >= 1
            and audience_check["members_equal_rules"],
        **webhook_checks,
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
            "retry_causes": retry_causes(attempts),
            "probes": len(probe_results),
            "repeated_after_202": len(echoes),
            "repeats_replayed": sum(e["status"] == 202 and e["replayed"] for e in echoes),
            "repeats_409": sum(e["attempts"].count(409) for e in echoes),
            "repeat_retry_causes": retry_causes([a for e in echoes for a in e["attempts"][:-1]]),
            # Every 5xx of every attempt (requests, repeats, probes) by who answered and why.
            "server_errors": server_errors(every_attempt),
            "unexplained_500s": len(unexplained),
            "unexplained_500_examples": [
                *({"user": r["user"], "key": r["key"], "attempts": r["attempts"],
                   "repeat_attempts": r["echo"] and r["echo"]["attempts"]} for r in records
                  if unexplained_500s(r["attempts"] + (r["echo"]["attempts"] if r["echo"] else []))),
                *({"probe": p["expected"], "attempts": p["attempts"]} for p in probe_results
                  if unexplained_500s(p["attempts"]))][:3],
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
        "audiences": {**audience_check, "parked": load["parked"]},
        "webhooks": webhook_figures,
        "logs": logs,
        "checks": checks,
    }
