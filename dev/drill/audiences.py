"""The drill's audiences: defined before the load, checked after recovery against a
reference evaluation of the rules (independent of the Rust code) over the final users,
and the `Audience Entered`/`Exited` events replayed per (audience, user) against the
members the API lists."""
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import stack

from .settings import DEADLINE, log

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


def matches(rule, fields):
    """The reference evaluation of the rule language (the ops the drill uses)."""
    if "all" in rule:
        return all(matches(r, fields) for r in rule["all"])
    if "any" in rule:
        return any(matches(r, fields) for r in rule["any"])
    # An absent field matches `not_exists` alone (`ne` included).
    if fields.get(rule["field"]) is None:
        return False
    value, op = fields[rule["field"]], rule["op"]
    if op == "exists":
        return True
    if op == "ne":
        return value != rule["value"]
    if op == "eq":
        return value == rule["value"]
    if op == "in":
        return value in rule["value"]
    if op == "gte":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= rule["value"]
    raise ValueError(op)


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


def replay(envelopes):
    """Members per audience from the events alone: de-duplicated by id, per (audience,
    user) in user-version order (then time); also whether they alternate as the contract
    says (Entered, Exited, Entered…)."""
    by_pair, seen = {}, set()
    for envelope in envelopes:
        detail = envelope["detail"]
        if detail["id"] not in seen:
            seen.add(detail["id"])
            by_pair.setdefault((detail["audience_id"], detail["external_user_id"]), []).append(envelope)
    members = {audience_id: [] for audience_id in RULES}
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
