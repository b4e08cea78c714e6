#!/usr/bin/env python3
"""Accepted → change event at a sink, beside accepted → visible through GET, at a
paced rate against a running local stack (`dev/stack.py run -- .venv/bin/python
dev/event_latency.py`, or `make bench`). Each upsert creates its own user; the event is
timed when the sink's receive returns it (the subscription is a rule of this run's own,
filtered to its workspace, as a downstream view's would be). Prints JSON."""
import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stack  # noqa: E402

RATE = int(os.environ.get("VF_EVENT_BENCH_RATE", "20"))
SECONDS = int(os.environ.get("VF_EVENT_BENCH_SECONDS", "20"))


def quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def main():
    env = stack.read_env_file()
    api = env["VF_API_URL"]
    run = uuid.uuid4().hex[:8]
    workspace = f"events-bench-{run}"
    session = stack.emulator_session()
    sqs = session.client("sqs", endpoint_url=stack.EMULATOR_URL)
    events = session.client("events", endpoint_url=stack.EMULATOR_URL)
    queue_name = f"events-bench-{run}"
    queue_url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    stack.subscribe(events, env["EVENT_BUS_NAME"], queue_name,
                    {"source": ["vibefollow.users"], "detail": {"workspace_id": [workspace]}})
    key = stack.create_key(workspace, "users:write,users:read", 100000)

    accepted_at, event_ms, visible_ms = {}, {}, {}
    done = threading.Event()

    def sink():
        while not done.is_set():
            got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
            now = time.monotonic()
            for message in got:
                user = json.loads(message["Body"])["detail"]["external_user_id"]
                if user in accepted_at and user not in event_ms:
                    event_ms[user] = (now - accepted_at[user]) * 1000
            if got:
                stack.delete_messages(sqs, queue_url, got)

    def visible(user):
        while time.monotonic() - accepted_at[user] < 30:
            request = urllib.request.Request(f"{api}/api/v1/users/{user}", headers={"Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(request, timeout=10):
                    visible_ms[user] = (time.monotonic() - accepted_at[user]) * 1000
                    return
            except urllib.error.HTTPError:
                time.sleep(0.005)

    listener = threading.Thread(target=sink, daemon=True)
    listener.start()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pollers:
        for i in range(RATE * SECONDS):
            time.sleep(max(0.0, started + i / RATE - time.monotonic()))
            user = f"e{i}"
            body = json.dumps({"external_user_id": user, "traits": {"plan": "bench", "i": i}}).encode()
            request = urllib.request.Request(f"{api}/api/v1/users", data=body, method="POST", headers={
                "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 202:
                    accepted_at[user] = time.monotonic()
                    if i % 2 == 0:
                        pollers.submit(visible, user)
    deadline = time.monotonic() + 30
    while len(event_ms) < len(accepted_at) and time.monotonic() < deadline:
        time.sleep(0.1)
    done.set()
    listener.join()
    summary = {
        "rate_per_s": RATE, "accepted": len(accepted_at), "events_received": len(event_ms),
        "event_ms": {"p50": quantile(event_ms.values(), 0.5), "p99": quantile(event_ms.values(), 0.99),
                     "mean": statistics.fmean(event_ms.values()) if event_ms else None},
        "visible_ms": {"p50": quantile(visible_ms.values(), 0.5), "p99": quantile(visible_ms.values(), 0.99),
                       "samples": len(visible_ms)},
    }
    print(json.dumps(summary, indent=2))
    return 0 if len(event_ms) == len(accepted_at) else 1


if __name__ == "__main__":
    sys.exit(main())
