#!/usr/bin/env python3
"""How live audiences are: accepted upsert → `Audience Entered` at a subscriber, measured.

    audience_latency.py [--rates 20,40,80] [--seconds 30] [--audiences 20]
                        [--build USERS]
                        (inside a running stack: `make audience-latency`)

1. A fresh workspace with `--audiences` audiences defined (the one measured, `trials`:
   `plan eq trial`, and others over other traits and ops, a time-relative one among
   them, so that every change evaluates them all), built, and a subscriber: an
   EventBridge rule on the stack's bus for the workspace's audience events, into an SQS
   queue that a thread long-polls.
2. For each rate: new users, each `{"plan": "trial", …}`, sent at that steady rate for
   `--seconds` by a pool of senders (a fresh connection per request). For each one the
   time its 202 arrived (accepted) and the time its `Audience Entered` (`trials`) reached
   the subscriber's queue: the latency. One user in fifty is also polled (every 100 ms) through
   `GET /api/v1/users/{id}/audiences` until it lists `trials`: visible in reads.
3. A rate is sustained when every event arrives and the last one comes within 10 s of
   the last upsert (the pipeline keeps up instead of queueing).

With `--build USERS` it measures a build instead: that many users of a fresh workspace
(one in three on `plan: trial`) through the batch API, then an audience `plan eq trial`
defined over them: the time from the 202 to `status: ready`, `build.scanned` along the
way, and the members it found.

Loopback only; bounded by the counts and timeouts. Prints JSON and writes it to
target/bench/audience_latency.json.
"""
import argparse
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402
from live import Subscriber, call, quantile  # noqa: E402

OUT = stack.ROOT / "target" / "bench" / "audience_latency.json"
SENDERS = 16
DRAIN_SECONDS = 10
# Reads measured: one user in READ_SAMPLE, polled every READ_POLL_SECONDS by at most
# READ_POLLERS threads. Bounded, so that the measuring load does not become the load:
# each poll costs the emulator three calls, and polling every 20 ms from 8 threads once
# made GETs outnumber the upserts ten to one.
READ_SAMPLE, READ_POLL_SECONDS, READ_POLLERS = 50, 0.1, 2
# The other audiences: every change evaluates them too (ops of every kind, a
# time-relative one among them), but the users of the load match none, so that each
# upsert makes one membership change, the one measured.
OTHER_RULES = [
    {"field": "plan", "op": "in", "value": ["pro", "enterprise"]},
    {"field": "email", "op": "ends_with", "value": "@acme.io"},
    {"field": "seats", "op": "gte", "value": 1000},
    {"field": "signupDate", "op": "within_last", "value": "P7D"},
    {"all": [{"field": "plan", "op": "eq", "value": "trial"}, {"field": "seats", "op": "lt", "value": 0}]},
    {"any": [{"field": "role", "op": "eq", "value": "admin"}, {"field": "company", "op": "starts_with", "value": "Initech"}]},
    {"field": "email", "op": "exists"},
    {"field": "tags", "op": "contains", "value": "beta"},
    {"field": "address", "path": ["city"], "op": "eq", "value": "Lisbon"},
    {"field": "plan", "op": "eq", "value": "free"},
]


def log(message):
    print(f"[audience-latency] {message}", file=sys.stderr, flush=True)


def visible(api, key, user, deadline):
    while time.monotonic() < deadline:
        status, body = call(api, "GET", f"/api/v1/users/{user}/audiences", key)
        if status == 200 and any(a["audience_id"] == "trials" for a in body["data"]):
            return time.monotonic()
        time.sleep(READ_POLL_SECONDS)
    return None


def run_rate(api, key, subscriber, rate, seconds):
    accepted, seen = {}, {}
    run = uuid.uuid4().hex[:6]
    count = int(rate * seconds)
    started = time.monotonic()
    pollers = ThreadPoolExecutor(max_workers=READ_POLLERS)
    polls = []

    def send(i):
        user = f"r{rate}-{run}-{i:05d}"
        at = started + i / rate
        time.sleep(max(0.0, at - time.monotonic()))
        status, _ = call(api, "POST", "/api/v1/users", key, {"external_user_id": user, "traits": {
            "plan": "trial", "seats": i % 20, "company": "Acme Inc." if i % 3 == 0 else "Other"}})
        if status == 202:
            accepted[user] = time.monotonic()
            if i % READ_SAMPLE == 0:
                polls.append((user, pollers.submit(visible, api, key, user, time.monotonic() + 30)))

    with ThreadPoolExecutor(max_workers=SENDERS) as senders:
        list(senders.map(send, range(count)))
    last_sent = time.monotonic()
    deadline = last_sent + 60
    while time.monotonic() < deadline:
        if all(u in subscriber.arrivals("Audience Entered", "trials") for u in accepted):
            break
        time.sleep(0.1)
    for user, future in polls:
        seen[user] = future.result()
    pollers.shutdown()
    entered = subscriber.arrivals("Audience Entered", "trials")
    arrived = {u: entered[u] - t for u, t in accepted.items() if u in entered}
    last_event = max((entered[u] for u in accepted if u in entered), default=last_sent)
    latencies = [ms * 1000 for ms in arrived.values()]
    reads = [(seen[u] - accepted[u]) * 1000 for u in seen if seen[u] is not None]
    return {
        "rate": rate, "seconds": seconds, "sent": count, "accepted": len(accepted), "entered": len(arrived),
        "p50_ms": quantile(latencies, 0.5), "p99_ms": quantile(latencies, 0.99),
        "max_ms": quantile(latencies, 1.0),
        "visible_in_reads_p50_ms": quantile(reads, 0.5), "visible_in_reads_p99_ms": quantile(reads, 0.99),
        "sustained": len(arrived) == count and last_event - last_sent <= DRAIN_SECONDS,
    }


def measure_build(api, key, users):
    """Seconds from defining an audience over `users` existing users to ready."""
    started = time.monotonic()
    batch = 1000

    def post(first):
        entries = [{"external_user_id": f"b{i:07d}", "traits": {"plan": "trial" if i % 3 == 0 else "pro"}}
                   for i in range(first, min(first + batch, users))]
        status, _ = call(api, "POST", "/api/v1/users/batch", key, {"users": entries})
        assert status == 202, status

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(post, range(0, users, batch)))
    last = f"b{users - 1:07d}"
    while call(api, "GET", f"/api/v1/users/{last}", key)[0] != 200:
        time.sleep(1)
    imported = time.monotonic() - started
    log(f"{users} users imported in {imported:.0f} s")
    defined = time.monotonic()
    status, _ = call(api, "PUT", "/api/v1/audiences/build", key,
                     {"name": "build", "rule": {"field": "plan", "op": "eq", "value": "trial"}})
    assert status == 202, status
    progress = []
    while True:
        status, body = call(api, "GET", "/api/v1/audiences/build", key)
        audience = body["data"]
        elapsed = round(time.monotonic() - defined, 1)
        if audience["status"] == "ready":
            break
        progress.append((elapsed, audience.get("build", {}).get("scanned")))
        time.sleep(5)
    return {"users": users, "import_s": round(imported, 1), "build_s": elapsed,
            "members": audience["members"], "expected_members": (users + 2) // 3,
            "scanned_every_5s": progress}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="20,40,80", help="upserts a second, comma-separated")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--audiences", type=int, default=20)
    parser.add_argument("--build", type=int, help="measure a build over this many users instead")
    args = parser.parse_args()
    env = os.environ if "VF_API_URL" in os.environ else stack.read_env_file()
    api = env["VF_API_URL"]
    if not api.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise SystemExit(f"audience_latency.py runs against a local stack only, not {api}")
    workspace = f"lat{uuid.uuid4().hex[:12]}"
    key = stack.create_key(workspace, "users:write,users:read,audiences:write,audiences:read", 100000)
    if args.build:
        report = measure_build(api, key, args.build)
        out = OUT.with_name("audience_build.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return
    subscriber = Subscriber(env, workspace)
    subscriber.start()
    ids = ["trials"] + [f"a{i:02d}" for i in range(1, args.audiences)]
    for i, audience in enumerate(ids):
        rule = {"field": "plan", "op": "eq", "value": "trial"} if i == 0 else OTHER_RULES[(i - 1) % len(OTHER_RULES)]
        status, _ = call(api, "PUT", f"/api/v1/audiences/{audience}", key, {"name": audience, "rule": rule})
        assert status == 202, (audience, status)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, body = call(api, "GET", "/api/v1/audiences", key)
        if status == 200 and all(a["status"] == "ready" for a in body["data"]) and len(body["data"]) == len(ids):
            break
        time.sleep(0.2)
    else:
        raise SystemExit("the audiences did not become ready")
    log(f"{len(ids)} audiences ready in workspace {workspace}")
    results = []
    for rate in [int(r) for r in args.rates.split(",")]:
        log(f"{rate} upserts/s for {args.seconds} s")
        result = run_rate(api, key, subscriber, rate, args.seconds)
        log(json.dumps(result))
        results.append(result)
    subscriber.stop.set()
    sustained = [r["rate"] for r in results if r["sustained"]]
    report = {"audiences": len(ids), "runs": results, "highest_sustained_rate": max(sustained, default=None)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
