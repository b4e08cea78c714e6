"""The drill's audiences: defined before the load, checked after recovery against a
reference evaluation of the rules (independent of the Rust code) over the final users,
and the `Audience Entered`/`Exited` events replayed per (audience, user) against the
members the API lists."""
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

import stack

from .settings import DEADLINE, PARKED_USER, WORKSPACE, log

AUDIENCES_URL = f"{stack.API_URL}/api/v1/audiences"
# Over the fields the load writes (`plan`, `color`, `email`, a client's counter), every
# kind of op but the time-relative ones: the drill's users carry no dates.
RULES = {
    "pro": {"field": "plan", "op": "eq", "value": "pro"},
    "paying": {"field": "plan", "op": "in", "value": ["pro", "team"]},
    "reachable": {"field": "email", "op": "exists"},
    "teal-free": {"all": [{"field": "color", "op": "eq", "value": "teal"},
                          {"field": "plan", "op": "ne", "value": "pro"}]},
    "busy-or-blue": {"any": [{"field": "c0", "op": "gte", "value": 25},
                             {"field": "color", "op": "eq", "value": "blue"}]},
}


def call(key, method, path="", body=None):
    request = urllib.request.Request(AUDIENCES_URL + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {key}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def call_until_answered(key, method, path="", body=None):
    """The drill's faults and its rate limit answer 429/5xx now and then: retried."""
    while True:
        status, answer = call(key, method, path, body)
        if status < 429 or time.monotonic() > DEADLINE:
            return status, answer
        time.sleep(0.5)


def define(key):
    """Defines the drill's audiences (before the load: their builds see no users, every
    membership comes from changes)."""
    for audience_id, rule in RULES.items():
        status, answer = call_until_answered(key, "PUT", f"/{audience_id}", {"name": audience_id, "rule": rule})
        if status != 202:
            raise SystemExit(f"[drill] defining audience {audience_id} answered {status}: {answer}")
    log(f"{len(RULES)} audiences defined")


def redrive_parked(the_stack, sqs, chaos):
    """After the load: waits (to the deadline) until the parked user rests in the parked
    queue, lifts the fault that kept it failing, and redrives it with `vfctl` as an
    operator would. Its memberships are then checked with everyone's."""
    parked_url = the_stack.env["VF_AUDIENCE_PARKED_QUEUE_URL"]

    def waiting():
        attributes = sqs.get_queue_attributes(QueueUrl=parked_url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    while waiting() == 0 and time.monotonic() < DEADLINE:
        time.sleep(0.5)
    parked = waiting()
    chaos.release()
    command = ["cargo", "run", "-q", "--bin", "vfctl", "--", "--local", "dlq", "redrive", "--queue", "parked"]
    done = subprocess.run(command, cwd=stack.ROOT, env={**os.environ, **the_stack.env},
                          capture_output=True, text=True, timeout=300)
    redriven = json.loads(done.stdout).get("messages", 0) if done.returncode == 0 else 0
    log(f"{WORKSPACE}/{PARKED_USER}: {parked} parked, {redriven} redriven")
    return {"user": PARKED_USER, "parked": parked, "redriven": redriven}


def matches(rule, fields, now_ms=None):
    """The reference evaluation of the rule language (docs/api.md, "The rule language"),
    written apart from the Rust code: groups, `path`, every op, `email` compared
    ignoring case. `now_ms` (epoch ms) is "now" for the time-relative ops."""
    if "all" in rule:
        return all(matches(r, fields, now_ms) for r in rule["all"])
    if "any" in rule:
        return any(matches(r, fields, now_ms) for r in rule["any"])
    if "not" in rule:
        return not matches(rule["not"], fields, now_ms)
    value = fields.get(rule["field"])
    for step in rule.get("path", []):
        value = value.get(step) if isinstance(value, dict) else None
    op = rule["op"]
    # An absent field matches `not_exists` alone (`ne` and `not_in` included).
    if value is None:
        return op == "not_exists"
    if op in ("exists", "not_exists"):
        return op == "exists"
    wanted = rule["value"]
    if rule["field"] == "email" and not rule.get("path"):
        value, wanted = _folded(value), _folded(wanted)
    if op == "eq":
        return _same(value, wanted)
    if op == "ne":
        return not _same(value, wanted)
    if op == "in":
        return any(_same(value, w) for w in wanted)
    if op == "not_in":
        return not any(_same(value, w) for w in wanted)
    if op in ("gt", "gte", "lt", "lte"):
        return _compared(value, wanted, op)
    if op == "contains":
        if isinstance(value, str):
            return isinstance(wanted, str) and wanted in value
        return isinstance(value, list) and any(_same(v, wanted) for v in value)
    if op == "starts_with":
        return isinstance(value, str) and value.startswith(wanted)
    if op == "ends_with":
        return isinstance(value, str) and value.endswith(wanted)
    if op in ("within_last", "not_within_last"):
        at = _instant_ms(value)
        if at is None or now_ms is None or at > now_ms:
            return False  # not a date-time, or in the future: neither within nor before
        inside = at >= now_ms - duration_ms(wanted)
        return inside if op == "within_last" else not inside
    raise ValueError(op)


def _folded(value):
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, list):
        return [_folded(v) for v in value]
    return value


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a, b):
    """JSON equality: 1 equals 1.0, but true is not 1."""
    if _number(a) and _number(b):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _compared(value, wanted, op):
    """Numbers with numbers, date-times with date-times as instants; other pairs never."""
    if _number(value) and _number(wanted):
        a, b = value, wanted
    else:
        a, b = _instant_ms(value), _instant_ms(wanted)
        if a is None or b is None:
            return False
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]


def _instant_ms(value):
    """An RFC 3339 date-time as epoch ms, or None."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        return None
    try:
        return round(datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
                     .timestamp() * 1000)
    except ValueError:
        return None


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def duration_ms(text):
    """An ISO 8601 duration of days, hours, minutes and seconds (`P1DT2H30M`) in ms."""
    found = _DURATION.match(text)
    if not found or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"not a duration of days, hours, minutes and seconds: {text!r}")
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60_000 + seconds * 1000


def expected_members(views):
    """Each audience's members under the reference evaluation of the users as read."""
    return {audience_id: sorted(user for user, fields in views.items()
                                if fields is not None and matches(rule, fields))
            for audience_id, rule in RULES.items()}


def listed_members(key):
    members = {}
    for audience_id in RULES:
        listed, cursor = [], None
        while True:
            query = urllib.parse.urlencode({"limit": 100, **({"cursor": cursor} if cursor else {})})
            status, page = call_until_answered(key, "GET", f"/{audience_id}/members?{query}")
            if status != 200:
                raise SystemExit(f"[drill] members of {audience_id} answered {status}")
            listed += [m["external_user_id"] for m in page["data"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        members[audience_id] = sorted(listed)
    return members


def replay(envelopes, audience_ids=RULES):
    """Members per audience from the events alone: de-duplicated by id, per (audience,
    user) in user-version order (then time); also whether they alternate as the contract
    says (Entered, Exited, Entered…). Every audience of `audience_ids` is listed."""
    by_pair, seen = {}, set()
    for envelope in envelopes:
        detail = envelope["detail"]
        if detail["id"] not in seen:
            seen.add(detail["id"])
            by_pair.setdefault((detail["audience_id"], detail["external_user_id"]), []).append(envelope)
    members = {audience_id: [] for audience_id in audience_ids}
    alternating = True
    for (audience_id, user), events in by_pair.items():
        events.sort(key=lambda e: (e["detail"]["user_version"], e["detail"]["at"]))
        kinds = [e["detail-type"] == "Audience Entered" for e in events]
        alternating &= all(kind == (i % 2 == 0) for i, kind in enumerate(kinds))
        if kinds[-1]:
            members.setdefault(audience_id, []).append(user)
    return {a: sorted(users) for a, users in members.items()}, alternating, len(seen)


def check(key, views, collector):
    """Waits (to the drill's deadline) until the listed members equal the reference
    evaluation over the final users and the replayed events equal the members."""
    expected = expected_members(views)
    while True:
        listed = listed_members(key)
        replayed, alternating, events = replay(collector.audience_events())
        done = listed == expected and replayed == listed
        if done or time.monotonic() > DEADLINE:
            break
        time.sleep(1)
    differ = {a: {"expected": expected[a], "listed": listed[a], "replayed": replayed.get(a)}
              for a in RULES if not expected[a] == listed[a] == replayed.get(a)}
    return {"audiences": len(RULES), "members": {a: len(m) for a, m in listed.items()}, "events": events,
            "members_equal_rules": listed == expected, "events_replay_to_members": replayed == listed,
            "events_alternate": alternating, "differ": dict(list(differ.items())[:2])}
