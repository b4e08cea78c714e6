#!/usr/bin/env python3
"""`make scale`: the scale model's load shape (docs/scale.md, "The target"), multiplied by
VF_SCALE, against a local stack whose proxy holds AWS's per-key and PutEvents limits
times the same factor (dev/stack/throughput.py); then the checks.

    VF_SCALE=0.001 dev/stack.py run -- dev/scale.py [--seconds N] [--import-rate USERS_PER_S]
                                                    [--heavy-audiences N] [--no-doc]
    dev/scale.py --doc-from target/scale/summary.json   (the docs section alone)

The plan from the factor f (`load_plan`; 0.001 by default): 10,000 × f accepted upserts
a second as keyed single POSTs, 3,000 × f of them in one heavy workspace and the rest
spread over light ones; an import of 10 million × f users into a workspace of its own
through `POST /api/v1/users/batch`; 100 audiences in the heavy workspace (ten of them
time-relative), three in each light one; a million × f time moves an hour (light users
whose `signupDate` leaves a `within_last` window while the run goes on) and 100,000 × f
users of the heavy workspace crossing a window's edge in the same minute; one poison
user, in a workspace of its own. As docs/scale.md assumes, one change in ten flips an
audience: those are the upserts whose latency is measured (accepted 202 → its `Audience
Entered` at a subscriber: an EventBridge rule into an SQS queue).

Rates scale with f, durations do not: a limit and the load on it both shrink by f, so
anything paced by a per-key limit takes as long as on AWS. Three consequences:
- every request takes a lease on one shard of its workspace's rate-limit counter (a
  rate-100 key has 16 at 0.001: RATE_LIMIT_SHARD_RATE is scaled too), one write unit,
  also when it opens its second. The plan still sizes the light workspaces as if a
  workspace got only 1,000 × f requests a second from one key: at least 9,999 × f, and
  so many that each keeps to half of that (16 at 0.44 upserts/s at 0.001; on AWS each
  light workspace's 0.7/s is far below its limits);
- the import is paced at 90 % of what one key would take of it (each imported user
  writes a transactional entry, 2 units, into the member list of the audience every
  imported user enters: 0.45 users/s at 0.001). Lists and the `workspace-shard-users`
  index are 16 keys a workspace now, so this is 1/16 of what they take; the pace stays
  there to keep the whole shape under the emulator's knee. It sends what fits in the
  phase; `--import-rate` sends faster;
- setup is a count of work, not a rate: scaled, the heavy workspace's 100 defines (~6
  units each on its audiences partition) took 20 minutes at 0.0005 for what AWS does
  in well under a second. So setup runs with the proxy at AWS's own limits
  (SETUP_SCALE); the load's phases run scaled. The driver's own requests still keep to
  the workspace's request budget (the stack's rate-limit counters stay scaled).

1. Setup: keys, the subscribers, the audiences (ready), the heavy workspace's users (a
   pool its updates go to, and the users that will cross an edge), created at 90 % of
   their hottest key once the audiences they match are put, while the rest are, all
   with the proxy at AWS's own limits; then the proxy's limits are scaled again.
2. Phase 1, `--seconds`: the light workspaces alone. Then the throughput report.
3. Phase 2, as long (starting no earlier than the edges were planned for): the same
   light load beside the heavy workspace (updates of its pool), the import, the edge
   crossings, and the poison user, whose evaluation the proxy makes fail (`PUT
   /__faults`: its GetItem calls answer ValidationException) until the audiences
   function parks it (retry queue, then its dead-letter queue "parked"); then the fault
   is cleared and `vfctl --local dlq redrive --queue parked` sends it back.
4. Drain (bounded), the throughput report, then the checks:
   - lost: every accepted upsert applied (users table), and per (workspace, audience,
     user) the members the API lists (or, for audiences nobody should be in, the
     member list itself) = the events replayed = the rule evaluated by a reference
     evaluator (dev/drill/audiences.py) over the accepted writes;
   - hot keys: keys the proxy saw past their scaled limit in more than one second;
   - light p99 beside the heavy workspace ≤ 1.5 × light p99 alone;
   - time moves: every `reason: time` event of an edge crossing arrives ≤ 60 s after
     its instant (and none is missing).

The load's clients retry as the TypeScript SDK does (3 retries, backoff); a final 429 or
503 accepted nothing. Ends with `scale: lost N, hot keys N, light p99 MS (alone MS),
time moves late N`, writes target/scale/summary.json (per workspace class: light alone,
light beside heavy, heavy, import) and the "Measured" section of docs/scale.md. Exit
status 1 when a check fails. Loopback only; every wait is bounded by counts and
timeouts that scale with the work. VF_VFCTL names a built vfctl to run instead of
`cargo run -q --bin vfctl --`.
"""
import argparse
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from boto3.dynamodb.types import TypeDeserializer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402
from drill.audiences import matches, replay  # noqa: E402
from live import Subscriber, call, create_key, quantile, retried, vfctl  # noqa: E402
from stack.users_item import as_format_1  # noqa: E402
from stack.throughput import (MIN_BURST_UNITS, PUT_EVENTS_PER_SECOND, READ_UNITS_PER_KEY,  # noqa: E402
                              WRITE_UNITS_PER_KEY)

OUT = stack.ROOT / "target" / "scale" / "summary.json"
DOC = stack.ROOT / "docs" / "scale.md"
PROXY_URL = f"http://127.0.0.1:{stack.FAULT_PROXY_PORT}"

# The target (docs/scale.md, "The target"), before the factor.
TARGET_UPSERTS_PER_S = 10_000
TARGET_WORKSPACES = 10_000
TARGET_HEAVY_PER_S = 3_000
TARGET_IMPORT_USERS = 10_000_000
TARGET_TIME_MOVES_PER_HOUR = 1_000_000
TARGET_EDGE_USERS_PER_MINUTE = 100_000
HEAVY_AUDIENCES = 100
# Shards of a member list (LIST_SHARDS in src/aws/dynamodb/audiences/mod.rs).
LIST_SHARDS = 16
BATCH_USERS = 1_000  # the batch route's most users a request

DEFAULT_FACTOR = 0.001
DEFAULT_SECONDS = 180
MIN_LIGHT_WORKSPACES = 10
# docs/scale.md: "at the steady load one change in ten flips one audience".
FLIP_SHARE = 0.1
# What the run paces to its keys' limits runs at this share of them.
KEY_MARGIN = 0.9
# Write units a new user puts on the hottest key it touches: its transactional entry in
# the member list of an audience every such user enters (docs/scale.md, "member list").
LIST_ENTRY_UNITS = 2
# Write units a request puts on its workspace's rate-limit counter, at most: one lease,
# also when it opens its second (app/rate_limit.rs, counters.rs).
COUNTER_UNITS_PER_REQUEST = 1
# A light workspace keeps to this share of its counter's request budget (room for the
# jitter of arrivals): so many light workspaces that each stays under it.
LIGHT_BUDGET_SHARE = 0.5
# The driver's own requests of setup and checks keep to this share of it.
SETUP_BUDGET_SHARE = 0.8
# Write units a define puts on its workspace's audiences partition: the transaction
# (the audience and the revision, 2 units each) and its build's records. The next define
# waits for them, rather than spend the workspace's request budget on refused attempts.
DEFINE_UNITS = 6
# The proxy's scale during setup: AWS's own limits (see the module's docstring).
SETUP_SCALE = 1
# A heavy pool user is updated at most once in this many seconds (a user's own keys —
# its item, its state — take 1,000 × f units a second).
POOL_GAP_S = 4
# Light `recent`: within the last 10 minutes; a time-moving light user signed up 10
# minutes minus LEAD_S ago, so that it leaves the window LEAD_S after its upsert.
LIGHT_WINDOW_S, LEAD_S = 600, 90
# The heavy workspace's edge: `within_last` / `not_within_last` 2 hours; its crossing
# users cross it within a minute in the middle of phase 2 (edge_offset).
HEAVY_WINDOW_S, EDGE_SPREAD_S = 7_200, 60
# The contract's bounds.
TIME_MOVE_BOUND_S = 60
LIGHT_P99_BOUND = 1.5
# The emulator's knee (docs/scale.md): ~10 upserts/s through the whole pipeline.
EMULATOR_KNEE_PER_S = 10
# Waits. A request is retried (same Idempotency-Key) for this long; the gap between the
# phases lets phase 1's events land before its throughput report is read.
GIVE_UP_S = 120
# The load's clients retry as the TypeScript SDK does (maxRetries 3), then give up: a
# final 429 or 503 accepted nothing.
CLIENT_ATTEMPTS = 4
PHASE_GAP_S = 20
SETUP_SETTLE_S = 60
PARK_TIMEOUT_S = 150
CHECK_S = 60
SENDERS = 48

LIGHT_RULES = {
    "trial": {"field": "plan", "op": "eq", "value": "trial"},
    "recent": {"field": "signupDate", "op": "within_last", "value": f"PT{LIGHT_WINDOW_S // 60}M"},
    "big": {"all": [{"field": "seats", "op": "gte", "value": 100},
                    {"field": "plan", "op": "in", "value": ["pro", "team"]}]},
}
IMPORT_RULES = {
    "imported": {"field": "source", "op": "eq", "value": "import"},
    "imported-pro": {"all": [{"field": "source", "op": "eq", "value": "import"},
                             {"field": "plan", "op": "eq", "value": "pro"}]},
    "imported-recent": {"field": "signupDate", "op": "within_last", "value": "P7D"},
}
POISON_RULES = {"b07": {"field": "bucket", "op": "eq", "value": 7},
                "paying": {"field": "plan", "op": "in", "value": ["pro", "enterprise"]}}
BUCKETS = 60
TIME_AUDIENCES = ("h-recent", "h-old", "h-decade", "h-day", "h-old-day", "h-seen-week", "h-lapsed", "h-renewed",
                  "h-fresh-trial", "h-trial-ending")
POOL_SIGNUP = "2020-06-01T00:00:00Z"
OLD_SIGNUP = "2025-01-01T00:00:00Z"


def heavy_rules(count=HEAVY_AUDIENCES):
    """The heavy workspace's audiences (100): 60 buckets (its updates move users from one
    to the next), 10 time-relative ones (its edge among them), 30 of every other op.
    Fewer (a quick run): fewer buckets (at least 8) and others."""
    window = f"PT{HEAVY_WINDOW_S // 3600}H"
    buckets = min(BUCKETS, max(8, count - 40))
    if count < buckets + 10:
        raise ValueError(f"the heavy workspace needs at least {buckets + 10} audiences, not {count}")
    rules = {f"b{k:02d}": {"field": "bucket", "op": "eq", "value": k} for k in range(buckets)}
    rules.update({
        "h-recent": {"field": "signupDate", "op": "within_last", "value": window},
        "h-old": {"field": "signupDate", "op": "not_within_last", "value": window},
        "h-decade": {"field": "signupDate", "op": "within_last", "value": "P3650D"},
        "h-day": {"field": "signupDate", "op": "within_last", "value": "P1D"},
        "h-old-day": {"field": "signupDate", "op": "not_within_last", "value": "P1D"},
        "h-seen-week": {"field": "lastSeen", "op": "within_last", "value": "P7D"},
        "h-lapsed": {"field": "lastSeen", "op": "not_within_last", "value": "P30D"},
        "h-renewed": {"field": "renewedAt", "op": "within_last", "value": "PT12H"},
        "h-fresh-trial": {"all": [{"field": "plan", "op": "eq", "value": "trial"},
                                  {"field": "signupDate", "op": "within_last", "value": "P14D"}]},
        "h-trial-ending": {"all": [{"field": "plan", "op": "eq", "value": "trial"},
                                   {"field": "trialEnds", "op": "not_within_last", "value": "P1DT2H30M"}]},
        "h-paying": {"field": "plan", "op": "in", "value": ["pro", "enterprise"]},
        "h-not-paying": {"field": "plan", "op": "not_in", "value": ["free", "trial"]},
        "h-not-pro": {"not": {"field": "plan", "op": "eq", "value": "pro"}},
        "h-acme": {"field": "email", "op": "ends_with", "value": "@ACME.io"},
        "h-has-email": {"field": "email", "op": "exists"},
        "h-no-plan": {"field": "plan", "op": "not_exists"},
        "h-seats-10": {"field": "seats", "op": "gte", "value": 10},
        "h-seats-100": {"field": "seats", "op": "gt", "value": 100},
        "h-seats-small": {"field": "seats", "op": "lte", "value": 2},
        "h-initech": {"field": "company", "op": "starts_with", "value": "Initech"},
        "h-admin": {"field": "role", "op": "eq", "value": "admin"},
        "h-not-admin": {"field": "role", "op": "ne", "value": "admin"},
        "h-beta": {"field": "tags", "op": "contains", "value": "beta"},
        "h-lisbon": {"field": "address", "path": ["city"], "op": "eq", "value": "Lisbon"},
        "h-low": {"field": "bucket", "op": "lt", "value": BUCKETS // 2},
        "h-edge-buckets": {"field": "bucket", "op": "in", "value": [0, 1, BUCKETS - 1]},
        "h-score": {"field": "score", "op": "gt", "value": 90},
        "h-any": {"any": [{"field": "role", "op": "eq", "value": "owner"},
                          {"field": "seats", "op": "lt", "value": 0}]},
        "h-nested": {"all": [{"any": [{"field": "plan", "op": "eq", "value": "pro"},
                                      {"field": "plan", "op": "eq", "value": "team"}]},
                             {"not": {"field": "seats", "op": "gte", "value": 1000}}]},
        "h-page": {"field": "lastPage", "op": "eq", "value": "/pricing"},
    })
    for plan in ("team", "starter", "legacy", "partner", "edu", "nonprofit", "internal", "churned", "paused",
                 "cohort-x"):
        rules[f"h-plan-{plan}"] = {"field": "plan", "op": "eq", "value": plan}
    first = [a for a in rules if a.startswith("b") or a in TIME_AUDIENCES]
    return {a: rules[a] for a in first + [a for a in rules if a not in first][:count - len(first)]}


def bucket_count(rules):
    return sum(1 for a in rules if a[0] == "b" and a[1:].isdigit())


# --- the plan: pure -------------------------------------------------------------------

def load_plan(factor, seconds, import_rate=None, heavy_audiences=HEAVY_AUDIENCES):
    """What the run sends at `factor` for phases of `seconds` (rates a second)."""
    if not factor > 0 or not seconds > 0:
        raise ValueError(f"factor and seconds must be > 0, not {factor!r}, {seconds!r}")
    total = TARGET_UPSERTS_PER_S * factor
    heavy = TARGET_HEAVY_PER_S * factor
    light = total - heavy
    write_limit = WRITE_UNITS_PER_KEY * factor
    requests = KEY_MARGIN * write_limit / COUNTER_UNITS_PER_REQUEST  # a workspace's requests a second
    workspaces = max(MIN_LIGHT_WORKSPACES, round((TARGET_WORKSPACES - 1) * factor),
                     math.ceil(light / (LIGHT_BUDGET_SHARE * requests) - 1e-9))
    new_users = KEY_MARGIN * write_limit / LIST_ENTRY_UNITS
    import_pace = import_rate or new_users
    import_planned = round(TARGET_IMPORT_USERS * factor)
    time_moves = TARGET_TIME_MOVES_PER_HOUR * factor / 3600
    return {
        "factor": factor, "seconds": seconds, "upserts_per_s": round(total, 6),
        "within_emulator_knee": total <= EMULATOR_KNEE_PER_S,
        "limits": {"write_units_per_key_per_s": round(write_limit, 6),
                   "requests_per_workspace_per_s": round(requests, 6),
                   "read_units_per_key_per_s": round(READ_UNITS_PER_KEY * factor, 6),
                   "put_events_per_s": max(1.0, PUT_EVENTS_PER_SECOND * factor)},
        "light": {"workspaces": workspaces, "rate_per_s": round(light, 6),
                  "rate_per_workspace_per_s": round(light / workspaces, 6), "flip_share": FLIP_SHARE,
                  "time_move_share": round(min(1.0, time_moves / light), 6), "audiences": len(LIGHT_RULES)},
        "heavy": {"rate_per_s": round(heavy, 6), "flip_share": FLIP_SHARE,
                  "pool_users": max(10, math.ceil(heavy * POOL_GAP_S)),
                  "edge_users": max(1, round(TARGET_EDGE_USERS_PER_MINUTE * factor)),
                  "new_users_per_s": round(new_users, 6), "audiences": heavy_audiences},
        "import": {"planned_users": import_planned, "rate_per_s": round(import_pace, 6),
                   "users": min(import_planned, int(import_pace * seconds)),
                   "batch_users": max(1, min(BATCH_USERS, round(BATCH_USERS * factor))),
                   "whole_import_s": round(import_planned / import_pace)},
        "time_moves": {"per_hour": round(TARGET_TIME_MOVES_PER_HOUR * factor), "per_s": round(time_moves, 6)},
    }


def schedule(rate, seconds, offset=0.0):
    """Send offsets (s) of a steady `rate` a second for `seconds`, the first at `offset`."""
    return [offset + i / rate for i in range(int(rate * seconds + 1e-9))] if rate > 0 else []


def picked(i, share):
    """Whether the i-th of a sequence is among an even `share` of it (every 10th at 0.1)."""
    return math.floor((i + 1) * share + 1e-9) > math.floor(i * share + 1e-9)


def ambiguous(status):
    """Whether a final answer leaves it open if the write was accepted: none came, 409
    (an earlier attempt still in flight) or a 5xx other than 503 ("nothing was
    accepted", as 429)."""
    return status is None or status == 409 or (status >= 500 and status != 503)


def outcome(statuses):
    """A request's answer from its attempts' statuses: the last one, or None (open) when
    it accepted nothing but an earlier attempt may have been applied after its answer was
    lost (a last 429 or 503 only says that the last attempt was not)."""
    last = statuses[-1]
    if last not in (202, 207) and any(ambiguous(s) for s in statuses):
        return None
    return last


def backoff(attempt, base=0.5, cap=8.0):
    """Seconds to wait after the `attempt`-th failed try: exponential, capped, full
    jitter from half of it."""
    return min(cap, base * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


class Pacer:
    """At most `rate` calls a second, whatever thread makes them: `wait()` before each.
    An `urgent` caller takes the next free slot before any other caller waiting."""

    def __init__(self, rate, clock=time.monotonic):
        self.gap, self.clock = 1 / rate, clock
        self.next = clock()
        self.urgent = 0
        self.turn = threading.Condition()

    def wait(self, urgent=False):
        with self.turn:
            if urgent:
                self.urgent += 1
            while True:
                now = self.clock()
                if (urgent or not self.urgent) and now >= self.next:
                    self.next = max(self.next, now) + self.gap
                    if urgent:
                        self.urgent -= 1
                    self.turn.notify_all()
                    return
                self.turn.wait(max(0.01, self.next - now) if urgent or not self.urgent else None)


def edge_offset(seconds):
    """How far into phase 2 the first edge is: the spread of edges centred in the phase
    (room for setup to end off its plan), at least 5 s and at most 60 s in."""
    return min(60.0, max(5.0, (seconds - EDGE_SPREAD_S) / 2))


def iso(ms):
    """Epoch ms as an RFC 3339 UTC date-time with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def light_body(user, index, plan, now_ms):
    """A light workspace's new user: on `trial` (it enters `trial`: the measured flip) one
    time in ten; signed up long ago, or — a time-moving user — 10 minutes minus LEAD_S
    ago, so that it enters `recent` now and leaves it by time LEAD_S later. (body, the
    instant it leaves `recent` or None)."""
    flip = picked(index, plan["flip_share"])
    moving = picked(index, plan["time_move_share"])
    signup = now_ms - (LIGHT_WINDOW_S - LEAD_S) * 1000 if moving else None
    traits = {"plan": "trial" if flip else "free", "seats": index % 150,
              "signupDate": iso(signup) if moving else OLD_SIGNUP}
    edge = signup + LIGHT_WINDOW_S * 1000 if moving else None
    return {"external_user_id": user, "traits": traits}, flip, edge


def fields_of(bodies):
    """A user as a read shows it after these accepted bodies, in order: traits merged
    name by name, `email` beside them."""
    fields = {}
    for body in bodies:
        fields.update(body.get("traits", {}))
        if "email" in body:
            fields["email"] = body["email"]
    return {k: v for k, v in fields.items() if v is not None}


def expected_members(rules, users, now_ms):
    """{audience: set of users} of the reference evaluation over users' fields."""
    return {audience: {user for user, fields in users.items() if matches(rule, fields, now_ms)}
            for audience, rule in rules.items()}


def wrong_memberships(expected, listed, replayed, ignore=()):
    """(audience, user) pairs where the members listed or the events replayed differ from
    the reference evaluation; users in `ignore` (an upsert with no answer: applied or
    not) are left out."""
    wrong = []
    for audience, want in expected.items():
        have, events = set(listed.get(audience, ())), set(replayed.get(audience, ()))
        for user in sorted((want | have | events) - set(ignore)):
            if not (user in want) == (user in have) == (user in events):
                wrong.append({"audience": audience, "user": user, "expected": user in want,
                              "listed": user in have, "replayed": user in events})
    return wrong


def time_moves(expected, events, bound_s=TIME_MOVE_BOUND_S):
    """Expected moves across an edge — (audience, user, detail-type, edge ms) — against
    the `reason: time` events received — (audience, user, detail-type, arrived ms). Each
    is late when it arrived more than `bound_s` after its edge, missing when none came;
    events no edge explains are `unexpected`."""
    arrived = {}
    for audience, user, kind, at_ms in events:
        arrived.setdefault((audience, user, kind), []).append(at_ms)
    lateness, missing = [], 0
    for audience, user, kind, edge_ms in expected:
        found = sorted(arrived.pop((audience, user, kind), []))
        if not found:
            missing += 1
            continue
        lateness.append((found[0] - edge_ms) / 1000)
    return {"expected": len(expected), "arrived": len(lateness), "missing": missing,
            "late": sum(s > bound_s for s in lateness), "early": sum(s < 0 for s in lateness),
            "p50_s": quantile(lateness, 0.5), "p99_s": quantile(lateness, 0.99),
            "max_s": round(max(lateness), 1) if lateness else None,
            "unexpected": sum(len(v) for v in arrived.values())}


def latency(pairs):
    """p50/p99/max (ms) of (accepted, arrived) monotonic pairs."""
    ms = [(arrived - accepted) * 1000 for accepted, arrived in pairs]
    return {"p50_ms": quantile(ms, 0.5), "p99_ms": quantile(ms, 0.99), "max_ms": quantile(ms, 1.0)}


def final_line(summary):
    """`scale: lost N, hot keys N, light p99 MS (alone MS), time moves late N`."""
    def ms(value):
        return "n/a" if value is None else str(round(value))

    return (f"scale: lost {summary['lost']}, hot keys {len(summary['hot_keys'])}, "
            f"light p99 {ms(summary['classes']['light_beside_heavy']['p99_ms'])} "
            f"(alone {ms(summary['classes']['light_alone']['p99_ms'])}), "
            f"time moves late {summary['time_moves']['late']}")


def failed_checks(summary):
    """The contract's checks a summary fails, by name."""
    alone = summary["classes"]["light_alone"]["p99_ms"]
    beside = summary["classes"]["light_beside_heavy"]["p99_ms"]
    checks = {
        "nothing lost": summary["lost"] == 0,
        "no hot key": not summary["hot_keys"],
        f"light p99 beside the heavy workspace within {LIGHT_P99_BOUND}x of alone":
            alone is not None and beside is not None and beside <= LIGHT_P99_BOUND * alone,
        f"time moves within {TIME_MOVE_BOUND_S} s": summary["time_moves"]["late"] == 0
        and summary["time_moves"]["missing"] == 0,
    }
    return [name for name, ok in checks.items() if not ok]


def digest(text):
    """How the proxy's report shows an index key value (throughput._shown)."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def label(row, tables, workspaces):
    """What a key of the proxy's report is, and whose: {"what", "workspace"}. `tables`
    maps table names to their role (users, audiences, …), `workspaces` workspace ids to
    their class."""
    table, key = row["table"], row["key"]
    base, _, index = table.partition("/index/")
    role = tables.get(base, base)
    if table == "PutEvents":
        return {"what": "EventBridge PutEvents (the account's rate)", "workspace": None}
    if index:
        for workspace in workspaces:
            if key == digest(workspace):
                return {"what": f"{role} index {index}: the key of workspace {workspace}", "workspace": workspace}
            for n in range(16):
                if key == digest(f"{workspace}#{n}"):
                    return {"what": f"{role} index {index}: shard {n} of workspace {workspace}",
                            "workspace": workspace}
        shards = {digest(str(n)): n for n in range(64)}
        if key in shards:
            return {"what": f"{role} index {index}: shard {shards[key]} (all workspaces)", "workspace": None}
        return {"what": f"{role} index {index}", "workspace": None}
    if role == "rate-limits":
        key = key.removeprefix("c#")  # the counters' layout (counters.rs)
    parts = key.split("#")
    prefix = parts[0] if role == "audience-members" and len(parts) > 2 else None
    workspace = parts[1] if prefix else parts[0]
    if role == "audiences" and len(parts) > 1:  # audiences/copies.rs, a build's progress
        workspace = parts[1] if parts[0] == "b" else parts[0]
        what = "an audience's build progress" if parts[0] == "b" else \
            f"copy {parts[1]} of a workspace's audience definitions"
        return {"what": f"{role}: {what}", "workspace": workspace if workspace in workspaces else None}
    what = {"u": "a user's audience state", "a": "an audience's member list",
            "n": "a member-count shard"}.get(prefix) if prefix else {
        "users": "a user item", "audiences": "a workspace's audience definitions",
        "rate-limits": "a workspace's rate-limit counter", "idempotency": "an Idempotency-Key record",
        "api-keys": "an API key"}.get(role, role)
    return {"what": f"{role}: {what}", "workspace": workspace if workspace in workspaces else None}


def applied(items, expected):
    """Users whose accepted upserts are not all in the users table: missing, or (a heavy
    pool user) not at its last accepted `lastPage`. `items` are the table's items as
    TypeDeserializer gives them, `expected` {(workspace, user): fields}."""
    # The workspace is the key's first part (a user's item names it nowhere else since
    # its workspace's users are listed in shards).
    stored = {(item["pk"].split("#", 1)[0], item["external_user_id"]): item for item in items
              if "pk" in item and "external_user_id" in item}
    lost = []
    for (workspace, user), fields in sorted(expected.items()):
        item = stored.get((workspace, user))
        page = (item or {}).get("traits", {}).get("lastPage")
        if item is None or ("lastPage" in fields and page != fields["lastPage"]):
            lost.append({"workspace": workspace, "user": user, "stored": item is not None})
    return lost


# --- the run --------------------------------------------------------------------------

def log(message):
    print(f"[scale] {message}", file=sys.stderr, flush=True)


def proxy(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(PROXY_URL + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


class Run:
    def __init__(self, env, plan, seed):
        self.env, self.plan = env, plan
        self.api = env["VF_API_URL"]
        run = random.Random(seed).choice("abcdefghjkmnpqrstuvwxyz") + uuid.uuid4().hex[:5]
        self.light = [f"sl{run}-{i:03d}" for i in range(plan["light"]["workspaces"])]
        self.heavy, self.importer = f"sh{run}", f"si{run}"
        # The poison user has a workspace of its own: the heavy one's requests are
        # throttled (its rate-limit counter), and its upsert must get through.
        self.poisoned, self.poison = f"sp{run}", f"poison-{run}"
        self.classes = {**{w: "light" for w in self.light}, self.heavy: "heavy", self.importer: "import",
                        self.poisoned: "poison"}
        self.rules = {**{w: LIGHT_RULES for w in self.light}, self.heavy: heavy_rules(plan["heavy"]["audiences"]),
                      self.importer: IMPORT_RULES, self.poisoned: POISON_RULES}
        self.bucket_count = bucket_count(self.rules[self.heavy])
        self.keys, self.subscribers = {}, {}
        self.lock = threading.Lock()
        self.bodies = {}  # (workspace, user) -> accepted bodies, in order
        self.unanswered = set()  # (workspace, user) whose upsert got no answer: applied or not
        self.measured = []  # {"class", "workspace", "audience", "user", "accepted"}
        self.counts = {}  # class -> {"sent", "accepted", "retried"}
        self.edges = []  # (workspace, audience, user, detail-type, edge ms, class)
        self.moving = {}  # (workspace, user) -> (edge ms, class) of light users leaving `recent`
        self.user_locks = {}
        # Each request to a workspace takes a lease on its rate-limit counter: a
        # workspace's requests of setup and checks keep to 90 % of that key.
        # (A share of it: the api's own retries of a throttled counter write add to it.)
        self.pacers = {w: Pacer(SETUP_BUDGET_SHARE * plan["limits"]["requests_per_workspace_per_s"])
                       for w in self.classes}
        self.buckets = {}
        self.poison_report = {}
        self.unlisted = []  # audiences whose members the API did not list (read from the table)
        self.figures = {"setup": {}}
        self.session = stack.emulator_session()
        self.sqs = self.session.client("sqs", endpoint_url=stack.EMULATOR_URL)
        self.dynamodb = self.session.client("dynamodb", endpoint_url=stack.EMULATOR_URL)

    # --- requests ---------------------------------------------------------------------

    def count(self, cls, **more):
        with self.lock:
            counts = self.counts.setdefault(cls, {"sent": 0, "accepted": 0, "retried": 0})
            for name, n in more.items():
                counts[name] += n

    def send(self, workspace, method, path, body, cls=None, keyed=True, paced=False, give_up=GIVE_UP_S,
             attempts_at_most=None):
        """One request with its retries (the same Idempotency-Key when `keyed`) until
        answered, `give_up` s or `attempts_at_most`: (status, answer, accepted monotonic
        or None). `paced`: every attempt waits its turn in the workspace's request budget
        (setup, checks)."""
        key = self.keys[workspace]
        idempotency_key = str(uuid.uuid4()) if keyed else None
        started = time.monotonic()
        statuses = []
        while True:
            if paced:
                self.pacers[workspace].wait(urgent=paced == "urgent")
            status, answer = call(self.api, method, path, key, body, idempotency_key)
            statuses.append(status)
            attempts = len(statuses)
            if not retried(status) or time.monotonic() - started > give_up or attempts == attempts_at_most:
                break
            # Backing off as the SDK does: each attempt costs the workspace's rate-limit
            # counter and the Idempotency-Key record a write, on keys of 1,000 × f units/s.
            time.sleep(backoff(attempts))
        status = outcome(statuses)
        answer = answer if status is not None else None
        if cls:
            self.count(cls, sent=1, retried=int(attempts > 1), accepted=int(status in (202, 207)))
        return status, answer, time.monotonic() if status in (202, 207) else None

    def upsert(self, workspace, body, cls, measure=None, paced=False, attempts_at_most=None):
        """A keyed single upsert; `measure`: the audience its `Entered` is timed into."""
        user = body["external_user_id"]
        status, _, accepted = self.send(workspace, "POST", "/api/v1/users", body, cls, paced=paced,
                                        attempts_at_most=attempts_at_most)
        with self.lock:
            if status == 202:
                self.bodies.setdefault((workspace, user), []).append(body)
                if measure:
                    self.measured.append({"class": cls, "workspace": workspace, "audience": measure, "user": user,
                                          "accepted": accepted})
            elif ambiguous(status):
                self.unanswered.add((workspace, user))
            elif not retried(status):
                log(f"{workspace}/{user}: answered {status}")
        return status == 202

    # --- setup ------------------------------------------------------------------------

    def setup(self):
        """Keys, subscribers, every workspace's audiences; the heavy workspace's users
        while its last audiences are defined (those users match none of them: a build
        over users entering its audience at once would be a burst on one member list)."""
        started = time.monotonic()
        scale = proxy("GET", "/__throughput")["scale"]
        if not scale or abs(scale - self.plan["factor"]) > 1e-12:
            raise SystemExit(f"[scale] the stack's proxy holds AWS's limits × {scale}, not × {self.plan['factor']}: "
                             "start it with the same VF_SCALE (make scale does)")
        proxy("PUT", "/__throughput", {"scale": SETUP_SCALE})
        scopes = "users:write,users:read,audiences:write,audiences:read"
        for workspace in self.classes:
            self.keys[workspace] = create_key(workspace, scopes)
        log(f"{len(self.keys)} workspaces: {len(self.light)} light, {self.heavy} (heavy), {self.importer} (import)")
        # One subscriber for the light workspaces (a rule naming them all), one for each
        # other; straight to moto: their long polls are not the stack's calls.
        light = Subscriber(self.env, self.light, prefix="scale", endpoint=stack.EMULATOR_URL, name=self.light[0])
        self.subscribers = {w: light for w in self.light}
        for workspace in (self.heavy, self.importer, self.poisoned):
            self.subscribers[workspace] = Subscriber(self.env, workspace, prefix="scale", endpoint=stack.EMULATOR_URL)
        for subscriber in set(self.subscribers.values()):
            subscriber.start()
        pool, crossing = self.setup_users()
        first = [a for a in self.rules[self.heavy] if any(
            matches(self.rules[self.heavy][a], fields, time.time() * 1000) for fields in pool + crossing)]
        order = first + [a for a in self.rules[self.heavy] if a not in first]
        self.defining = {"done": 0, "first": len(first), "started": time.monotonic(), "all_put": None}
        log(f"defining {sum(len(r) for r in self.rules.values())} audiences ({len(order)} in {self.heavy}, "
            f"one after another on its partition key: the {len(first)} its users match first)")
        with ThreadPoolExecutor(len(self.classes)) as defines:
            futures = [defines.submit(self.define, w, order if w == self.heavy else list(self.rules[w]))
                       for w in self.classes]
            self.create_heavy_users(pool, crossing, futures[list(self.classes).index(self.heavy)])
            for future in futures:
                future.result()  # each bounded by its own waits
        self.figures["setup"]["audiences_ready_s"] = round(time.monotonic() - self.defining["started"], 1)
        self.wait_for_setup_users()
        self.figures["setup"]["seconds"] = round(time.monotonic() - started, 1)
        self.figures["setup"]["throughput"] = proxy("GET", "/__throughput")
        proxy("PUT", "/__throughput", {"scale": self.plan["factor"]})

    def define(self, workspace, audiences):
        """The workspace's audiences, one after another (they share a partition key),
        then ready. No Idempotency-Key: a PUT replaces, and a keyed attempt the proxy
        throttles would hold its key for 30 s."""
        for audience in audiences:
            status, answer, _ = self.send(workspace, "PUT", f"/api/v1/audiences/{audience}",
                                          {"name": audience, "rule": self.rules[workspace][audience]}, keyed=False,
                                          paced="urgent", give_up=5 * GIVE_UP_S)
            if status != 202:
                raise SystemExit(f"[scale] defining {workspace}/{audience} answered {status}: {answer}")
            if workspace == self.heavy:
                self.defining["done"] += 1
            time.sleep(DEFINE_UNITS / (WRITE_UNITS_PER_KEY * SETUP_SCALE))
        if workspace == self.heavy:
            self.defining["all_put"] = time.monotonic()
        # The list reads the workspace's whole partition (3,000 × f read units a second).
        pause = 10 if len(audiences) > 10 else 3
        deadline = time.monotonic() + GIVE_UP_S + 5 * len(audiences)
        while time.monotonic() < deadline:
            self.pacers[workspace].wait(urgent=True)
            status, answer = call(self.api, "GET", "/api/v1/audiences", self.keys[workspace])
            if status == 200 and len(answer["data"]) == len(audiences) and all(
                    a["status"] == "ready" for a in answer["data"]):
                return
            time.sleep(pause)
        raise SystemExit(f"[scale] the audiences of {workspace} were not ready in time")

    def setup_users(self):
        """The fields of the heavy workspace's pool users and of its edge-crossing users
        (their `signupDate` is set when they are sent)."""
        pool = [{"plan": "pro", "bucket": i % self.bucket_count, "seats": 5, "signupDate": POOL_SIGNUP, "lastPage": "/"}
                for i in range(self.plan["heavy"]["pool_users"])]
        crossing = [{"plan": "cohort", "seats": 1, "signupDate": iso(time.time() * 1000 - 3_600_000)}]
        return pool, crossing * self.plan["heavy"]["edge_users"]

    def heavy_defines_eta(self):
        """When the heavy workspace's audiences will all be put, at the pace so far."""
        d = self.defining
        if d["all_put"] is not None:
            return d["all_put"]
        left = len(self.rules[self.heavy]) - d["done"]
        each = (time.monotonic() - d["started"]) / max(1, d["done"])
        return time.monotonic() + left * each

    def create_heavy_users(self, pool, crossing, heavy_defines):
        """Once the audiences they match are put: the pool, then the edge-crossing users,
        while the others are defined; one at a time at 90 % of their hottest key (two
        units a user on the member list of an audience they all enter). Phase 1 is
        planned SETUP_SETTLE_S after both (the defines' end estimated at their pace so
        far, plus a quarter), the edges in the middle of phase 2."""
        pace = self.plan["heavy"]["new_users_per_s"]
        seconds = self.plan["seconds"]
        while self.defining["done"] < self.defining["first"] and not heavy_defines.done():
            time.sleep(1)
        jobs = []
        for i, fields in enumerate(pool):
            self.buckets[f"p{i:03d}"] = fields["bucket"]
            jobs.append((i / pace, "setup", self.upsert, (
                self.heavy, {"external_user_id": f"p{i:03d}", "traits": fields}, "setup", f"b{fields['bucket']:02d}",
                True)))
        self.dispatch(jobs, time.monotonic())
        # They share the workspace's request budget with the defines.
        cohort_s = len(crossing) / (SETUP_BUDGET_SHARE * self.plan["limits"]["requests_per_workspace_per_s"] * 0.7)
        started = time.monotonic()
        eta = self.heavy_defines_eta()
        setup_s = max(cohort_s, 1.25 * (eta - started) + 20) + SETUP_SETTLE_S
        # Phase 2 starts no earlier than planned here (phase 1 as soon as setup is done).
        self.phase2_wall = time.time() + setup_s + seconds + PHASE_GAP_S
        first_edge = self.phase2_wall + edge_offset(seconds)
        log(f"{len(pool)} pool users sent; now {len(crossing)} users that will cross an edge within "
            f"{EDGE_SPREAD_S} s ({edge_offset(seconds):.0f} s into phase 2), at most {pace} new users/s; "
            f"phase 1 in about {setup_s:.0f} s")
        jobs = []
        for i, fields in enumerate(crossing):
            edge_ms = round((first_edge + i * EDGE_SPREAD_S / len(crossing)) * 1000)
            user = f"c{i:05d}"
            body = {"external_user_id": user, "traits": dict(fields, signupDate=iso(edge_ms - HEAVY_WINDOW_S * 1000))}
            jobs.append((i / pace, "setup", self.upsert, (self.heavy, body, "setup", "h-recent", True)))
            self.edges += [(self.heavy, "h-recent", user, "Audience Exited", edge_ms, "heavy"),
                           (self.heavy, "h-old", user, "Audience Entered", edge_ms, "heavy")]
        self.dispatch(jobs, started)

    def wait_for_setup_users(self):
        measured = [m for m in self.measured if m["class"] == "setup"]
        self.wait_for(measured, time.monotonic() + SETUP_SETTLE_S + 60)
        self.figures["setup"]["heavy_users"] = {
            "sent": self.counts.get("setup", {}).get("sent", 0), "accepted": len(measured),
            "evaluated": sum(self.arrival(m) is not None for m in measured)}

    # --- the load ---------------------------------------------------------------------

    def dispatch(self, jobs, start):
        """Runs (offset s, sender, fn, args) jobs at start + offset, each sender (a class
        of the load) on threads of its own, so that one class's retries never hold up
        another's sends; returns once all are done. Late starts are measured."""
        lateness = {}
        pools = {sender: ThreadPoolExecutor(SENDERS) for sender in {job[1] for job in jobs}}
        try:
            for offset, sender, fn, args in sorted(jobs, key=lambda job: job[0]):
                # A job starts when its sender runs it: lateness is measured there.
                pools[sender].submit(self.guarded, start + offset, lateness.setdefault(sender, []), fn, *args)
                delay = start + offset - time.monotonic()
                if delay > 1:
                    time.sleep(delay - 1)
        finally:
            for pool in pools.values():
                pool.shutdown(wait=True)
        return {sender: {"jobs": sum(job[1] == sender for job in jobs),
                         "started_late_over_1s": sum(s > 1 for s in late),
                         "max_start_lag_s": round(max(late, default=0.0), 1)} for sender, late in lateness.items()}

    @staticmethod
    def guarded(at, lateness, fn, *args):
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            lateness.append(-delay)
        try:
            fn(*args)
        except Exception as e:  # one request's failure is counted by its class, not fatal
            log(f"{fn.__name__}: {e!r}")

    def light_jobs(self, phase, cls, seconds):
        plan = self.plan["light"]
        rate = plan["rate_per_workspace_per_s"]
        jobs = []
        for w, workspace in enumerate(self.light):
            for i, offset in enumerate(schedule(rate, seconds, w / (len(self.light) * rate))):
                # Flips and time moves picked over all light upserts in send order.
                index = i * len(self.light) + w
                jobs.append((offset, "light", self.light_upsert, (workspace, f"{phase}{w:03d}-{i:05d}", index, cls)))
        return jobs

    def light_upsert(self, workspace, user, index, cls):
        body, flip, edge = light_body(user, index, self.plan["light"], round(time.time() * 1000))
        if self.upsert(workspace, body, cls, "trial" if flip else None, attempts_at_most=CLIENT_ATTEMPTS) and edge:
            with self.lock:
                self.moving[(workspace, user)] = (edge, cls)

    def heavy_update(self, i):
        """An update of the pool: one in ten moves the user to its next bucket (an Exited
        and an Entered; the Entered is measured), the others change a trait no rule reads."""
        pool = self.plan["heavy"]["pool_users"]
        # Every user in turn, shifted by one each round, so that the flips (every tenth
        # update) go round the pool too.
        user = f"p{(i + i // pool) % pool:03d}"
        flip = picked(i, self.plan["heavy"]["flip_share"])
        with self.lock:
            lock = self.user_locks.setdefault(user, threading.Lock())
        with lock:  # a user's writes in order: its expected state is their order
            traits = {"lastPage": f"/p{i}"}
            if flip:
                traits["bucket"] = (self.buckets[user] + 1) % self.bucket_count
            if self.upsert(self.heavy, {"external_user_id": user, "traits": traits}, "heavy",
                           f"b{traits['bucket']:02d}" if flip else None, attempts_at_most=CLIENT_ATTEMPTS) and flip:
                self.buckets[user] = traits["bucket"]

    def import_batch(self, first, count):
        """One batch of the import; entries answered `unavailable` are sent again, in a
        batch of their own (bounded)."""
        entries = [{"external_user_id": f"m{i:06d}", "traits": {
            "source": "import", "plan": "pro" if i % 3 == 0 else "free", "seats": i % 40,
            "signupDate": OLD_SIGNUP}} for i in range(first, first + count)]
        for attempt in range(3):
            status, answer, accepted = self.send(self.importer, "POST", "/api/v1/users/batch", {"users": entries})
            rejected = {r["index"] for r in (answer or {}).get("data", {}).get("rejected", [])} \
                if status == 207 else set()
            self.count("import", sent=len(entries) if attempt == 0 else 0, retried=len(rejected),
                       accepted=len(entries) - len(rejected) if status in (202, 207) else 0)
            with self.lock:
                for index, entry in enumerate(entries):
                    user = entry["external_user_id"]
                    if status in (202, 207) and index not in rejected:
                        self.bodies.setdefault((self.importer, user), []).append(entry)
                        self.measured.append({"class": "import", "workspace": self.importer, "audience": "imported",
                                              "user": user, "accepted": accepted})
                    elif ambiguous(status):
                        self.unanswered.add((self.importer, user))
            if status != 207 or not rejected:
                return
            entries = [entries[index] for index in sorted(rejected)]

    def import_jobs(self, seconds):
        imp = self.plan["import"]
        batch = imp["batch_users"]
        starts = list(range(0, imp["users"], batch))
        return [(i * batch / imp["rate_per_s"], "import", self.import_batch, (first, min(batch, imp["users"] - first)))
                for i, first in enumerate(starts) if i * batch / imp["rate_per_s"] < seconds]

    def run_poison(self, at):
        """Phase 2's poison user: its evaluation fails (injected) until it is parked,
        then it is sent back with the fault cleared."""
        report = self.poison_report
        time.sleep(max(0.0, at - time.monotonic()))
        fault = {"operations": ["DynamoDB_20120810.GetItem"], "status": 400, "code": "ValidationException",
                 "matching": self.poison}
        try:
            proxy("PUT", "/__faults", fault)
            started = time.monotonic()
            body = {"external_user_id": self.poison, "traits": {"plan": "pro", "bucket": 7, "seats": 5,
                                                                "signupDate": POOL_SIGNUP}}
            report["accepted"] = self.upsert(self.poisoned, body, "poison")
            report["accepted_after_s"] = round(time.monotonic() - started, 1)
            parked, slow = None, 0
            deadline = time.monotonic() + PARK_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    status = json.loads(vfctl("dlq", "status", "--queue", "parked", timeout=60))
                except subprocess.TimeoutExpired:  # it looks at every message: slow when many wait
                    slow += 1
                    continue
                users = status.get("users") or []
                if any(u["external_user_id"] == self.poison for u in users):
                    parked = users
                    report["parked_messages"] = status.get("messages")
                    break
                time.sleep(3)
            report["status_timeouts"] = slow
            report["parked_after_s"] = round(time.monotonic() - started, 1) if parked is not None else None
            report["others_parked"] = [u for u in parked or [] if u["external_user_id"] != self.poison]
            report["injected_failures"] = proxy("GET", "/__faults")["injected"]["fail"]
        except Exception as e:
            report["error"] = repr(e)
        finally:
            proxy("DELETE", "/__faults")
        try:
            report["redrive"] = json.loads(vfctl("dlq", "redrive", "--queue", "parked", timeout=600))
            report["redriven_at"] = time.monotonic()
        except Exception as e:
            report["redrive_error"] = repr(e)
        log(f"poison user: {json.dumps({k: v for k, v in report.items() if k != 'redriven_at'})}")

    def phases(self):
        seconds = self.plan["seconds"]
        start1 = time.monotonic()
        log(f"phase 1: {len(self.light)} light workspaces alone, {self.plan['light']['rate_per_s']} upserts/s "
            f"for {seconds} s")
        self.figures["phase1"] = {"dispatch": self.dispatch(self.light_jobs("a", "light_alone", seconds), start1)}
        self.figures["phase1"]["seconds"] = round(time.monotonic() - start1, 1)
        start2 = max(start1 + seconds + PHASE_GAP_S, time.monotonic() + self.phase2_wall - time.time())
        if start2 > start1 + seconds + PHASE_GAP_S + 1:
            log(f"waiting {start2 - start1 - seconds:.0f} s for phase 2: the edges were planned for it")
        elif time.time() > self.phase2_wall + 5:
            log(f"phase 2 starts {time.time() - self.phase2_wall:.0f} s after its plan: the edges come earlier in it")
        time.sleep(max(0.0, start2 - time.monotonic()))
        self.figures["phase1"]["throughput"] = proxy("GET", "/__throughput")
        proxy("DELETE", "/__throughput")
        start2 = time.monotonic()
        heavy = self.plan["heavy"]["rate_per_s"]
        jobs = self.light_jobs("b", "light_beside_heavy", seconds)
        jobs += [(offset, "heavy", self.heavy_update, (i,)) for i, offset in enumerate(schedule(heavy, seconds))]
        jobs += self.import_jobs(seconds)
        log(f"phase 2: the same beside the heavy workspace ({heavy}/s), the import "
            f"({self.plan['import']['users']} users at {self.plan['import']['rate_per_s']}/s), "
            f"{len(self.edges) // 2} edge crossings and a poison user, for {seconds} s")
        poison = threading.Thread(target=self.run_poison, args=(start2 + min(10, seconds / 4),), daemon=True)
        poison.start()
        self.figures["phase2"] = {"dispatch": self.dispatch(jobs, start2)}
        self.figures["phase2"]["seconds"] = round(time.monotonic() - start2, 1)
        return poison

    # --- drain ------------------------------------------------------------------------

    def arrival(self, measured):
        """When the measured upsert's `Entered` reached its subscriber (monotonic), or None."""
        at = self.subscribers[measured["workspace"]].arrival(
            "Audience Entered", measured["workspace"], measured["audience"], measured["user"])
        return at if at is not None and at >= measured["accepted"] - 1 else None

    def wait_for(self, measured, deadline):
        while time.monotonic() < deadline and any(self.arrival(m) is None for m in measured):
            time.sleep(0.5)

    def expected_edges(self):
        """Every expected move across an edge: the heavy workspace's crossings, and the
        light users that entered `recent` by their change before its edge (one evaluated
        after it never enters: nothing to move)."""
        edges = list(self.edges)
        with self.lock:
            moving = dict(self.moving)
        entered = {}
        for workspace in {workspace for workspace, _ in moving}:
            for _, wall, e in self.subscribers[workspace].received(workspace):
                if e["detail-type"] == "Audience Entered" and e["detail"]["audience_id"] == "recent":
                    entered.setdefault((workspace, e["detail"]["external_user_id"]), wall)
        for (workspace, user), (edge_ms, cls) in moving.items():
            if (workspace, user) in entered and entered[(workspace, user)] * 1000 < edge_ms - 5000:
                edges.append((workspace, "recent", user, "Audience Exited", edge_ms, cls))
        return edges

    def queues_idle(self):
        urls = [self.env[name] for name in ("UPSERT_QUEUE_URL", "AUDIENCE_BUILD_QUEUE_URL", "AUDIENCE_RETRY_QUEUE_URL")
                if name in self.env]
        return all(stack.queue_depth(self.sqs, url) == 0 for url in urls)

    def drain(self, poison):
        seconds = self.plan["seconds"]
        limit = time.monotonic() + max(120, seconds)
        last_edge = max((e[4] for e in self.edges), default=0) / 1000
        edge_deadline = time.monotonic() + max(0.0, last_edge + TIME_MOVE_BOUND_S + 15 - time.time())
        log("draining: the measured events, the edges' moves, the poison user and the queues")
        drained = time.monotonic()
        poison.join(max(1.0, limit - time.monotonic() + PARK_TIMEOUT_S))
        measured = [m for m in self.measured if m["class"] != "setup"]
        if self.poison_report.get("redriven_at"):  # its standings, settled after the redrive
            measured.append({"workspace": self.poisoned, "audience": "b07", "user": self.poison,
                             "accepted": self.poison_report["redriven_at"]})
        self.wait_for(measured, limit)
        while time.monotonic() < max(limit, edge_deadline):
            moves, edges = self.received_time_moves(), self.expected_edges()
            passed = all(edge / 1000 < time.time() for *_, edge, _ in edges)
            if passed and all((w, a, u, k) in moves for w, a, u, k, _, _ in edges) and self.queues_idle():
                break
            time.sleep(2)
        self.figures["drain_s"] = round(time.monotonic() - drained, 1)
        self.figures["phase2"]["throughput"] = proxy("GET", "/__throughput")

    def received_time_moves(self):
        """{(workspace, audience, user, detail-type): first arrival (wall ms)} of the
        `reason: time` events received."""
        moves = {}
        for workspace, subscriber in self.subscribers.items():
            for _, wall, e in subscriber.received(workspace):
                d = e["detail"]
                if d.get("reason") == "time":
                    moves.setdefault((workspace, d["audience_id"], d["external_user_id"], e["detail-type"]),
                                     round(wall * 1000))
        return moves

    # --- checks -----------------------------------------------------------------------

    def listed(self, workspace, audiences):
        """{audience: [users]} the API lists (retried on 429/5xx, bounded), each request
        in the workspace's request budget."""
        listed = {}
        for audience in audiences:
            users, cursor = [], None
            while True:
                query = urllib.parse.urlencode({"limit": 1000, **({"cursor": cursor} if cursor else {})})
                deadline = time.monotonic() + GIVE_UP_S
                while True:
                    self.pacers[workspace].wait()
                    status, page = call(self.api, "GET", f"/api/v1/audiences/{audience}/members?{query}",
                                        self.keys[workspace])
                    if not retried(status) or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                if status != 200:
                    log(f"members of {workspace}/{audience} answered {status}: read from its member list instead")
                    self.unlisted.append(f"{workspace}/{audience}")
                    users = self.stored_members(workspace, audience)
                    break
                users += [m["external_user_id"] for m in page["data"]]
                cursor = page.get("next_cursor")
                if not cursor:
                    break
            listed[audience] = users
        return listed

    def membership(self):
        """Per workspace, the pairs where listed members, replayed events and the
        reference evaluation disagree (re-read until they agree, or CHECK_S)."""
        deadline = time.monotonic() + CHECK_S
        with self.lock:
            users = {}
            for (workspace, user), bodies in self.bodies.items():
                users.setdefault(workspace, {})[user] = fields_of(bodies)
            unanswered = set(self.unanswered)
        while True:
            now_ms = round(time.time() * 1000)
            expected, replayed, events = {}, {}, {}
            for workspace, rules in self.rules.items():
                expected[workspace] = expected_members(rules, users.get(workspace, {}), now_ms)
                replayed[workspace], alternating, count = replay(
                    [e for _, _, e in self.subscribers[workspace].received(workspace)], list(rules))
                events[workspace] = {"events": count, "alternate": alternating}
            # Through the API: every audience someone should be in or has events for; the
            # others (most of the heavy workspace's 100, at its budget of requests) are
            # confirmed empty in the members table itself.
            asked = {w: [a for a in rules if expected[w][a] or replayed[w].get(a) or len(rules) <= 10]
                     for w, rules in self.rules.items()}
            with ThreadPoolExecutor(len(self.rules)) as pool:
                listed = dict(zip(self.rules, pool.map(self.listed, self.rules, asked.values())))
            wrong = {}
            for workspace, rules in self.rules.items():
                for audience in rules:
                    if audience not in listed[workspace]:
                        listed[workspace][audience] = self.stored_members(workspace, audience)
                ignore = {u for w, u in unanswered if w == workspace}
                wrong[workspace] = wrong_memberships(expected[workspace], listed[workspace], replayed[workspace],
                                                     ignore)
            if not any(wrong.values()) or time.monotonic() > deadline:
                return wrong, events
            time.sleep(3)

    def stored_members(self, workspace, audience):
        """An audience's members as its member list holds them (entries not `gone`): its
        one list, or its 16 shards (src/aws/dynamodb/audiences/mod.rs)."""
        members = []
        for pk in [f"a#{workspace}#{audience}"] + [f"a#{workspace}#{audience}#{n}" for n in range(LIST_SHARDS)]:
            start = {}
            while True:
                page = self.dynamodb.query(TableName=self.env["AUDIENCE_MEMBERS_TABLE"], ConsistentRead=True,
                                           KeyConditionExpression="pk = :pk",
                                           ExpressionAttributeValues={":pk": {"S": pk}}, **start)
                members += [item["sk"]["S"] for item in page["Items"] if not item.get("gone", {}).get("BOOL")]
                if "LastEvaluatedKey" not in page:
                    break
                start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
        return members

    def stored(self):
        items, start = [], {}
        deserialize = TypeDeserializer().deserialize
        while True:
            page = self.dynamodb.scan(TableName=self.env["USERS_TABLE"], ConsistentRead=True, **start)
            items += [as_format_1({k: deserialize(v) for k, v in item.items()}) for item in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return items
            start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}

    def summary(self, wrong, events, started):
        with self.lock:
            expected_users = {key: fields_of(bodies) for key, bodies in self.bodies.items()
                              if key not in self.unanswered}
            counts = {cls: dict(c) for cls, c in self.counts.items()}
        lost_upserts = applied(self.stored(), expected_users)
        edges = self.expected_edges()
        moves = self.received_time_moves()
        tables = {self.env[name]: role for name, role in (
            ("USERS_TABLE", "users"), ("AUDIENCES_TABLE", "audiences"), ("AUDIENCE_MEMBERS_TABLE", "audience-members"),
            ("RATE_LIMITS_TABLE", "rate-limits"), ("IDEMPOTENCY_TABLE", "idempotency"),
            ("API_KEYS_TABLE", "api-keys")) if name in self.env}
        hot = []
        for phase in ("phase1", "phase2"):
            for row in self.figures[phase]["throughput"]["hot_keys"]:
                named = label(row, tables, self.classes)
                hot.append(dict(row, phase=phase, **named))
        lost_by_class = {}
        for workspace, pairs in wrong.items():
            for pair in pairs:
                cls = self.user_class(workspace, pair["user"])
                lost_by_class[cls] = lost_by_class.get(cls, 0) + 1
        for lost in lost_upserts:
            cls = self.user_class(lost["workspace"], lost["user"])
            lost_by_class[cls] = lost_by_class.get(cls, 0) + 1
        classes = {}
        for cls, phase in (("light_alone", "phase1"), ("light_beside_heavy", "phase2"), ("heavy", "phase2"),
                           ("import", "phase2")):
            measured = [m for m in self.measured if m["class"] == cls]
            pairs = [(m["accepted"], at) for m in measured if (at := self.arrival(m)) is not None]
            cls_edges = [(f"{w}/{a}", u, k, edge) for w, a, u, k, edge, c in edges if c == cls]
            cls_moves = [(f"{w}/{a}", u, k, at) for (w, a, u, k), at in moves.items() if self.user_class(w, u) == cls]
            workspace_class = {"light_alone": "light", "light_beside_heavy": "light"}.get(cls, cls)
            classes[cls] = {
                **counts.get(cls, {"sent": 0, "accepted": 0, "retried": 0}),
                "measured": len(measured), "entered": len(pairs), **latency(pairs),
                "lost": lost_by_class.get(cls, 0),
                "time_moves": time_moves(cls_edges, cls_moves),
                "hot_keys": [h for h in hot if h["phase"] == phase and (
                    h["workspace"] is None or self.classes.get(h["workspace"]) == workspace_class)],
                "throttled": self.figures[phase]["throughput"]["throttled"],
                "run_seconds": self.figures[phase]["seconds"],
            }
        every_edge = [(f"{w}/{a}", u, k, edge) for w, a, u, k, edge, _ in edges]
        every_move = [(f"{w}/{a}", u, k, at) for (w, a, u, k), at in moves.items()]
        poison = {k: v for k, v in self.poison_report.items() if k != "redriven_at"}
        redriven = self.poison_report.get("redriven_at")
        settled = self.subscribers[self.poisoned].arrival("Audience Entered", self.poisoned, "b07", self.poison)
        poison["settled_after_redrive_s"] = round(settled - redriven, 1) if settled and redriven else None
        distinct_hot = {(h["table"], h["key"], h["kind"]) for h in hot}
        try:
            parked = json.loads(vfctl("dlq", "status", "--queue", "parked", timeout=180))
        except Exception as e:
            parked = {"error": repr(e)}
        return {
            "plan": self.plan,
            "workspaces": {"light": self.light, "heavy": self.heavy, "import": self.importer,
                           "poison": self.poisoned},
            "lost": sum(len(p) for p in wrong.values()) + len(lost_upserts),
            "lost_memberships": {w: p[:5] for w, p in wrong.items() if p},
            "lost_upserts": lost_upserts[:20], "lost_upserts_count": len(lost_upserts),
            "unanswered_upserts": len(self.unanswered),
            "members_not_listed_by_the_api": self.unlisted,
            "refused_upserts": {cls: c["sent"] - c["accepted"] for cls, c in counts.items()},
            "hot_keys": sorted(distinct_hot), "hot_key_detail": hot,
            "time_moves": time_moves(every_edge, every_move),
            "classes": classes,
            "events": events,
            "poison": poison,
            "parked_at_end": {"messages": parked.get("messages"), "users": parked.get("users", [])[:20],
                              **({"error": parked["error"]} if "error" in parked else {})},
            "queues_at_end": {name: stack.queue_depth(self.sqs, self.env[name]) for name in (
                "UPSERT_QUEUE_URL", "DLQ_URL", "AUDIENCE_BUILD_QUEUE_URL", "VF_AUDIENCE_BUILD_DLQ_URL",
                "AUDIENCE_RETRY_QUEUE_URL", "VF_AUDIENCE_PARKED_QUEUE_URL", "VF_CHANGES_FAILURE_QUEUE_URL")
                if name in self.env},
            "setup": self.figures["setup"] | {"throughput": {
                k: self.figures["setup"]["throughput"][k] for k in ("throttled", "hot_keys")}},
            "dispatch": {"phase1": self.figures["phase1"]["dispatch"], "phase2": self.figures["phase2"]["dispatch"]},
            "busiest": {p: self.figures[p]["throughput"]["busiest"][:10] for p in ("phase1", "phase2")},
            "put_events": {p: self.figures[p]["throughput"].get("put_events") for p in ("phase1", "phase2")},
            "drain_s": self.figures.get("drain_s"),
            "subscriber_errors": sum(s.errors for s in set(self.subscribers.values())),
            "run_seconds": round(time.monotonic() - started),
        }

    def user_class(self, workspace, user):
        cls = self.classes.get(workspace)
        if cls == "light":
            return "light_alone" if user.startswith("a") else "light_beside_heavy"
        return cls


# --- the report -----------------------------------------------------------------------

def measured_section(summary):
    """docs/scale.md's "## Measured" section, from a summary."""
    plan = summary["plan"]
    rows = []
    for name, title in (("light_alone", "light, alone"), ("light_beside_heavy", "light, beside the heavy one"),
                        ("heavy", "heavy"), ("import", "import")):
        c = summary["classes"][name]
        moves = c["time_moves"]
        rows.append(f"| {title} | {c['sent']} | {c['accepted']} | {c['entered']} of {c['measured']} | "
                    f"{c['p50_ms']} | {c['p99_ms']} | {c['lost']} | {moves['late']} of {moves['expected']} | "
                    f"{len(c['hot_keys'])} |")
    hot = "\n".join(f"- phase {g['phase'][-1]}, {g['whose']}: {g['what']} ({g['kind']}): {g['keys']} "
                    f"key{'s' if g['keys'] > 1 else ''}, up to {g['seconds_over']} s over, peak "
                    f"{g['max_demand_per_s']:g} units/s against {g['limit_per_s']:g}"
                    for g in grouped_hot_keys(summary)) or "- none"
    limit = plan["limits"]["write_units_per_key_per_s"]
    burst = "" if limit >= MIN_BURST_UNITS else (
        f"\nAt this factor a key takes {limit:g} write unit{'s' if limit != 1 else ''} a second: one request "
        "writes up to 2 to one key, and requests are neither scaled down nor smoothed with the load, so a few "
        f"arriving in one second are chance. A key's bucket holds {MIN_BURST_UNITS} units (a second's worth at "
        "0.01; dev/stack/throughput.py): a key held above its scaled rate for longer still throttles, and a key is "
        "hot when it throttles in more than one second.\n")
    throttled = "; ".join(f"phase {p[-1]}: " + (", ".join(f"`{t}` {n}" for t, n in sorted(
        summary["classes"][c]["throttled"].items())) or "none")
        for p, c in (("phase1", "light_alone"), ("phase2", "heavy")))
    calls = "; ".join(f"phase {p[-1]}: {c['calls']} calls of {c['entries']} entries "
                      f"({c['entries'] / max(c['calls'], 1):.1f} a call)"
                      for p, c in summary.get("put_events", {}).items() if c)
    t = summary["time_moves"]
    poison = summary["poison"]
    return f"""## Measured

`make scale` (`dev/scale.py`), VF_SCALE={plan['factor']}, phases of {plan['seconds']} s, on the
local stack (2 cores, moto); {datetime.now(timezone.utc).strftime('%Y-%m-%d')}, {summary['run_seconds']} s in all. Written by the run.

    {final_line(summary)}

| class | sent | accepted | entered (measured) | p50 ms | p99 ms | lost | time moves late | hot keys |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Load: {plan['upserts_per_s']} upserts/s, {plan['light']['workspaces']} light workspaces at
{plan['light']['rate_per_workspace_per_s']}/s each, the heavy one at {plan['heavy']['rate_per_s']}/s (updates of
{plan['heavy']['pool_users']} users; {plan['heavy']['audiences']} audiences), one change in ten flipping an audience (those are
measured: accepted → `Audience Entered` at a subscriber). The import: {summary['classes']['import']['sent']} batches,
{plan['import']['users']} of the planned {plan['import']['planned_users']} users, paced at
{plan['import']['rate_per_s']} users/s (90 % of its hottest key: 2 units a user in one member list); the whole
import would take {plan['import']['whole_import_s']} s at this factor as at 1.0, since rates scale and durations
do not. Time moves: {t['expected']} expected ({plan['heavy']['edge_users']} heavy users crossing an edge in one
minute, twice each, and light users leaving a window), {t['arrived']} arrived, {t['missing']} missing, lateness p50
{t['p50_s']} s, p99 {t['p99_s']} s, max {t['max_s']} s. Poison user: parked after {poison.get('parked_after_s')} s,
settled {poison.get('settled_after_redrive_s')} s after the redrive.

Hot keys (past their scaled limit in more than one second):

{hot}

{burst}
Throttled calls: {throttled}. `PutEvents`: {calls or 'not counted'}. Setup (not counted above): {summary['setup'].get('seconds')} s, of which
{summary['setup'].get('audiences_ready_s')} s for the audiences to be ready. Users parked at the end:
{summary.get('parked_at_end', {}).get('messages')}.
"""



def grouped_hot_keys(summary):
    """Hot keys grouped by phase, kind of key and whose (a workspace class, or "shared"):
    how many keys, the most seconds over, the busiest second."""
    classes = {w: cls for cls, ws in summary["workspaces"].items() for w in ([ws] if isinstance(ws, str) else ws)}
    groups = {}
    for h in summary["hot_key_detail"]:
        whose = classes.get(h["workspace"], "shared")
        what = h["what"].replace(f"workspace {h['workspace']}", "its workspace") if h["workspace"] else h["what"]
        group = groups.setdefault((h["phase"], whose, what, h["kind"]), {
            "phase": h["phase"], "whose": whose, "what": what, "kind": h["kind"], "keys": 0, "seconds_over": 0,
            "max_demand_per_s": 0, "limit_per_s": h["limit_per_s"]})
        group["keys"] += 1
        group["seconds_over"] = max(group["seconds_over"], h["seconds_over"])
        group["max_demand_per_s"] = max(group["max_demand_per_s"], h["max_demand_per_s"])
    return sorted(groups.values(), key=lambda g: (g["phase"], -g["seconds_over"]))


def with_measured(text, section):
    """`text` (docs/scale.md) with its "## Measured" section, the last, replaced by
    `section` (or `section` added at the end)."""
    head = text.split("\n## Measured\n", 1)[0].rstrip("\n")
    return head + "\n\n" + section


def write_doc(summary):
    DOC.write_text(with_measured(DOC.read_text(), measured_section(summary)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("VF_SCALE_SECONDS", DEFAULT_SECONDS)))
    parser.add_argument("--import-rate", type=float, help="import users a second (default: paced to its hottest key)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--heavy-audiences", type=int, default=HEAVY_AUDIENCES,
                        help="audiences of the heavy workspace (fewer: a quicker setup, for trying the run out)")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/scale.md's Measured section")
    parser.add_argument("--doc-from", metavar="SUMMARY", help="only write docs/scale.md's Measured section from a "
                        "summary.json (no stack needed)")
    args = parser.parse_args()
    if args.doc_from:
        write_doc(json.loads(Path(args.doc_from).read_text()))
        return 0
    factor = float(os.environ.get("VF_SCALE") or DEFAULT_FACTOR)
    env = os.environ if "VF_API_URL" in os.environ else stack.read_env_file()
    if not env["VF_API_URL"].startswith(("http://127.0.0.1:", "http://localhost:")):
        raise SystemExit(f"scale.py runs against a local stack only, not {env['VF_API_URL']}")
    plan = load_plan(factor, args.seconds, args.import_rate, args.heavy_audiences)
    if not plan["within_emulator_knee"]:
        log(f"{plan['upserts_per_s']} upserts/s is past the emulator's knee (~{EMULATOR_KNEE_PER_S}/s): "
            "latencies will be the emulator's")
    started = time.monotonic()
    run = Run(env, plan, args.seed)
    try:
        run.setup()
        poison = run.phases()
        run.drain(poison)
        log("checking: members, replayed events, reference evaluation, stored users")
        wrong, events = run.membership()
        summary = run.summary(wrong, events, started)
    finally:
        for subscriber in set(run.subscribers.values()):
            subscriber.stop.set()
        try:
            proxy("DELETE", "/__faults")
        except OSError:
            pass
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if not args.no_doc:
        write_doc(summary)
    failed = failed_checks(summary)
    if failed:
        log("FAILED: " + "; ".join(failed))
    log(f"summary in {OUT.relative_to(stack.ROOT)}")
    print(final_line(summary), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
